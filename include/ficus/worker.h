/* The running process as its modules see it: the workers (one thread and one
 * libuv loop each, with their listeners, pools and counters) and what the
 * control thread shares with them (struct server). This module holds the data
 * and the small services every worker needs (random numbers, the access log);
 * starting, reloading, draining and stopping them is server.c's, and nothing
 * here calls into the modules that use it. Each module keeps its own per-worker
 * data behind an opaque pointer here (conn.c's, shadow.c's). */
#ifndef FICUS_WORKER_H
#define FICUS_WORKER_H

#include "ficus/buf.h"
#include "ficus/config.h"
#include "ficus/io.h"
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

struct server;
struct pool_set;
struct conn_worker;
struct shadow_worker;
struct state_table;
struct admin;
struct divlog;
struct store;
struct discovery;
struct upstats;

/* Per-worker counters: written only by their worker, read by the control
 * thread with relaxed atomic loads (no lock on the request path). */
struct worker_counters {
    atomic_ulong conns_active;
    atomic_ulong conns_idle;
    atomic_ulong requests;
    atomic_ulong tunnels_open; /* upgraded connections (WebSocket and the like) */
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
    uint64_t rng; /* xorshift state for sampling and keyless buckets */

    struct buf access_buf; /* access log lines waiting for the next flush */
    uv_timer_t flush_timer;

    uv_mutex_t lock;            /* guards the two fields below */
    struct config *pending_cfg; /* set by the control thread, taken by the worker */
    int pending_stop;           /* 1: drain; 2: close everything now */
    bool draining;
    bool stopped;

    struct worker_counters counters;
    struct conn_worker *conns;    /* conn.c's: client connections, recycled exchanges */
    struct shadow_worker *shadow; /* shadow.c's: comparisons and their diff batches */
    struct upstats *upstats;      /* its pools' counters per backend server address */
};

/* What the control thread shares with the workers and the admin server. */
struct server {
    const char *config_path;
    struct config *cfg; /* the control thread's current snapshot */
    uv_loop_t *loop;    /* the control loop */
    struct worker *workers;
    int n_workers;
    uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
    uv_timer_t drain_timer;
    uv_timer_t tick_timer;    /* once a second: sampler, guard, ramp */
    uv_fs_poll_t config_poll; /* reload_on_change: the file's stat, once a second */
    bool config_polling;
    uint64_t config_hash;   /* of the bytes last loaded or tried, so a touch reloads nothing */
    uv_async_t worker_done; /* a worker's loop ended */
    atomic_int workers_running;
    atomic_long conns_total;    /* client connections across workers, for limits.max_connections */
    atomic_llong shadow_memory; /* bytes comparisons hold, for limits.shadow_memory_bytes */
    bool draining;
    int access_fd; /* -1: no access log */
    int exit_code;
    struct state_table *state;   /* live route state (percentages, counters) */
    struct store *store;         /* where the live state lives: the state file or etcd */
    struct admin *admin;         /* NULL without an admin listener */
    struct divlog *divlog;       /* divergence records (control thread) */
    struct discovery *discovery; /* backend servers: DNS, health checks, what workers apply */
    int64_t started_at;          /* unix seconds */
    /* Validates the configuration file and hands it to every worker (the
     * admin API's reload; set by server.c). Returns 0 or FICUS_ECONFIG with
     * errs filled; the running configuration stays then. */
    int (*reload)(struct server *srv, struct config_errors *errs);
    /* Starts a graceful stop (set by server.c), for the modules below it that
     * find the process cannot go on (the state store's endpoint is no etcd). */
    void (*stop)(struct server *srv);
};

/* A pseudo-random 64-bit number from the worker's generator (no lock). */
uint64_t worker_random(struct worker *w);

/* Appends an access log line; it is written at the next flush, or now when the
 * buffer is full. Worker thread only. */
void worker_access_log(struct worker *w, const char *line, size_t len);
/* Writes the buffered access log lines (a broken log never stops the proxy). */
void worker_flush_access(struct worker *w);

#endif
