/* The process: worker threads each running a libuv loop with their own
 * listeners, pools and counters, and the control thread (the main thread)
 * that owns signals, reload, drain and, later, the admin server. */
#ifndef FICUS_SERVER_H
#define FICUS_SERVER_H

#include "ficus/buf.h"
#include "ficus/config.h"
#include "ficus/io.h"
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

struct server;
struct pool_set;
struct conn;
struct state_table;
struct admin;
struct divlog;
struct comparison;
struct shadow_worker;

/* Per-worker counters: written only by their worker, read by the control
 * thread with relaxed atomic loads (no lock on the request path). */
struct worker_counters {
    atomic_ulong conns_active;
    atomic_ulong conns_idle;
    atomic_ulong requests;
};

struct worker {
    int id;
    struct server *srv;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t async; /* wakes the loop for a config swap or a stop */

    struct config *cfg;     /* the snapshot new requests use (one reference) */
    struct pool_set *pools; /* upstream pools of cfg's backends */
    struct rbuf_pool rbufs;

    uv_tcp_t *listeners;
    size_t n_listeners;
    struct conn *conns; /* every open client connection, for drain */
    uint64_t rng;       /* xorshift state for sampling and keyless buckets */

    struct buf access_buf; /* access log lines waiting for the next flush */
    uv_timer_t flush_timer;

    uv_mutex_t lock;            /* guards the two fields below */
    struct config *pending_cfg; /* set by the control thread, taken by the worker */
    int pending_stop;           /* 1: drain; 2: close everything now */
    bool draining;
    bool stopped;

    struct worker_counters counters;
    struct comparison *comparisons;   /* running on this worker, for shutdown */
    int diff_jobs;                    /* comparisons waiting for or in a diff batch */
    struct shadow_worker *shadow;     /* the worker's diff batches (shadow.c), lazily made */
    struct exchange *spare_exchanges; /* conn.c's, kept for the next requests */
    int n_spare_exchanges;
};

struct server {
    const char *config_path;
    struct config *cfg; /* the control thread's current snapshot */
    uv_loop_t *loop;    /* the control loop */
    struct worker *workers;
    int n_workers;
    uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
    uv_timer_t drain_timer;
    uv_timer_t tick_timer;  /* once a second: sampler, guard, ramp */
    uv_async_t worker_done; /* a worker's loop ended */
    atomic_int workers_running;
    atomic_long conns_total; /* client connections across workers, for limits.max_connections */
    bool draining;
    int access_fd; /* -1: no access log */
    int exit_code;
    struct state_table *state; /* live route state (percentages, counters) */
    struct admin *admin;       /* NULL without an admin listener */
    struct divlog *divlog;     /* divergence records (control thread) */
    int64_t started_at;        /* unix seconds */
};

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

/* A pseudo-random 64-bit number from the worker's generator. */
uint64_t worker_random(struct worker *w);

/* Appends an access log line (the worker flushes it). */
void worker_access_log(struct worker *w, const char *line, size_t len);

#endif
