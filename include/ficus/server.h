/* The process's lifecycle: loading the configuration, starting the worker
 * threads and the control thread's services (admin server, divergence log,
 * guard and ramp tick), reloading, draining and stopping. The data the running
 * parts share is in worker.h. */
#ifndef FICUS_SERVER_H
#define FICUS_SERVER_H

#include "ficus/config.h"
#include "ficus/worker.h"

/* Runs the proxy with the configuration at path until a signal stops it.
 * Returns the process exit code. */
int server_run(const char *path);

/* Loads, validates and resolves the configuration at path (the control thread
 * only). Returns a snapshot or NULL with errors added. */
struct config *server_load_config(const char *path, struct config_errors *errs);

/* Validates the file and, when good, hands it to every worker. Returns 0 or
 * FICUS_ECONFIG with errs filled; the running configuration stays then. */
int server_reload(struct server *srv, struct config_errors *errs);

/* Starts a graceful stop: listeners close, in-flight requests finish up to
 * timeouts.drain_ms. */
void server_stop(struct server *srv);

#endif
