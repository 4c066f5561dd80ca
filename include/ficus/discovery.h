/* What the control thread knows of every backend's servers, and how the
 * workers learn it: their host names followed in DNS (one resolver for the
 * process, on the control loop), each of their addresses probed (health
 * checks: an HTTP GET of health.path, else a connect), and the per-address
 * view that readiness, metrics and the admin API show.
 *
 * Workers hear of a changed address set or health result through a table
 * under a lock and their uv_async: the control thread writes the latest state
 * (latest wins, so nothing queues up), wakes the workers, and each applies
 * what changed to its own pools (discovery_apply, from its async callback).
 * The request path never takes the lock.
 *
 * Everything but discovery_apply runs on the control thread. */
#ifndef FICUS_DISCOVERY_H
#define FICUS_DISCOVERY_H

#include "ficus/buf.h"
#include "ficus/config.h"
#include "ficus/state.h"
#include <jansson.h>
#include <stdbool.h>

struct server;
struct worker;
struct discovery;

/* Resolves every server of every backend of cfg (start and reload, before cfg
 * is used): a name the running discovery d (NULL at start) follows already
 * takes its current addresses; the others are looked up now with cfg's
 * resolvers (or the system's), blocking for a few seconds at most. Fills
 * servers[i].addrs and be->resolved. A server without an address is a
 * warning when another server of its backend has one, an error line in errs
 * when none has. Returns 0 or FICUS_ECONFIG. */
int discovery_resolve_config(struct discovery *d, struct config *cfg, struct config_errors *errs);

/* Starts following srv->cfg's backends (watches and health checks) on
 * srv->loop; srv->workers must exist (their count is fixed for the process).
 * Returns 0 and sets srv->discovery, or a negative error. */
int discovery_start(struct server *srv);

/* Moves to cfg (a reload that passed; before the workers get cfg): names that
 * stay keep their watches, new ones are watched, gone ones forgotten; health
 * results of addresses that stay are kept. */
void discovery_reload(struct discovery *d, struct config *cfg);

/* Stops every lookup and health check (drain). The data stays readable. */
void discovery_stop(struct discovery *d);

/* Frees d after discovery_stop, once no worker runs any more. Accepts NULL. */
void discovery_free(struct discovery *d);

/* Worker w's thread: applies the address sets and health results that
 * changed since its last call to its current pools, when they belong to its
 * current configuration. */
void discovery_apply(struct discovery *d, struct worker *w);

/* One address of a backend as readiness, metrics and the API see it. */
struct discovery_addr {
    const char *backend;
    const char *server; /* "10.0.0.1:8080" */
    int status;         /* lb_status from the workers' view (upstats), UPSTATS_GONE: none yet */
    int reachable;      /* the last health check: 1 passed, 0 failed, -1 none yet */
    bool current;       /* in the backend's current address set */
    bool up;            /* current, reachable and up or probing on some worker */
    int active;
    unsigned long long requests[CODE_N];
    unsigned long long failures, ejections;
    int64_t ejected_for_ms; /* while ejected: how much longer */
};

/* Every address of every backend of the current configuration, and every one
 * the workers counted requests for since the start; sorted by backend then
 * address. Returns the count (*out malloc'd, the caller frees it; the strings
 * live until the next reload), or -1 when out of memory. */
int discovery_addresses(struct discovery *d, struct discovery_addr **out);

/* Is at least one address of backend (an index into the current
 * configuration's backends) up? */
bool discovery_backend_up(struct discovery *d, int backend);

/* The admin API's view of the backends: {name: {lb, servers: [{url, host,
 * weight, resolve: {state, error}, addresses: [...]}]}}. */
json_t *discovery_backends_json(struct discovery *d);

#endif
