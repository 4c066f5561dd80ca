/* Live route state, apart from the immutable configuration: percentages that
 * operators, the guard and the ramp change at runtime, and the per-worker
 * counters of each route. Entries are keyed by route name and outlive reloads.
 * Workers read percentages and bump their own counters without locks; the
 * control thread changes percentages, sums counters and persists overrides. */
#ifndef FICUS_STATE_H
#define FICUS_STATE_H

#include "ficus/config.h"
#include "ficus/noise.h"
#include <uv.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define STATE_MAX_WORKERS  256
#define STATE_HIST_BUCKETS 15 /* 14 bounds from 0.5 ms to 10 s, then +Inf */

/* Code classes of answered requests; 1xx is a 101 that opened a tunnel. */
enum code_class { CODE_2XX, CODE_3XX, CODE_4XX, CODE_5XX, CODE_ERROR, CODE_1XX, CODE_N };
enum shadow_outcome {
    SHADOW_COMPARED,
    SHADOW_SKIPPED_INFLIGHT,
    SHADOW_SKIPPED_BODY,
    SHADOW_SKIPPED_METHOD,
    SHADOW_TIMEOUT,
    SHADOW_ERROR,
    SHADOW_SKIPPED_QUEUE,  /* the comparison queue was full */
    SHADOW_SKIPPED_MEMORY, /* limits.shadow_memory_bytes was spent */
    SHADOW_N
};

/* How a request ended that did not end with its whole response: counted once,
 * beside its code class (the response cut by the backend is code "error", a
 * client that left is a 499, a 4xx). */
enum interrupt_kind {
    INTR_UPSTREAM_RESET,   /* the backend closed, reset or sent bad framing mid-response */
    INTR_UPSTREAM_TIMEOUT, /* the backend stalled mid-response */
    INTR_CLIENT_ABORT,     /* the client left before its response was complete */
    INTR_SHUTDOWN,         /* cut by the drain deadline */
    INTR_N
};

/* The upper bounds of the latency histogram, in seconds. */
extern const double state_hist_bounds[STATE_HIST_BUCKETS - 1];

/* One worker's counters for one route. Only that worker writes them (relaxed
 * stores); the control thread reads them. Aligned so workers never share a
 * cache line. */
struct route_counters {
    atomic_ullong requests[2][CODE_N]; /* [legacy=0/new=1][class] */
    atomic_ullong interrupted[2][INTR_N];
    atomic_ullong hist[2][STATE_HIST_BUCKETS];
    atomic_ullong latency_us_sum[2];
    atomic_ullong shadow[SHADOW_N];
    atomic_ullong comparisons;
    atomic_ullong divergences[DIFF_KIND_N]; /* by enum diff_kind */
    atomic_ullong divergent;                /* comparisons with at least one diff */
    atomic_ullong noise;
    atomic_ullong fallbacks;
} __attribute__((aligned(64)));

struct route_state {
    char name[128];
    _Atomic double new_percent;
    _Atomic double shadow_percent;
    atomic_int shadow_inflight; /* across workers, for shadow.max_inflight */
    /* Control thread only: */
    bool overridden; /* new/shadow percent come from the admin API, guard or ramp */
    bool present;    /* the current configuration has this route */
    unsigned long long rollbacks_manual, rollbacks_guard;
    char last_rollback[160]; /* "2026-...Z guard: divergence rate 0.12 > 0.01", or "" */
    int ramp_step;           /* index into ramp_steps of the current step, -1: none */
    bool ramp_stopped;
    int64_t ramp_next_ms;            /* when the next step is due (uv_now of the control loop) */
    struct route_counters *counters; /* one per worker */
    void *samples;                   /* the metrics sampler's ring, freed with the entry */
    struct noise_stats *noise;       /* legacy-vs-legacy statistics, under noise_lock */
    uv_mutex_t noise_lock;           /* taken on the threadpool only, around one update */
};

/* Sums of a route's counters over every worker. */
struct route_totals {
    unsigned long long requests[2][CODE_N];
    unsigned long long interrupted[2][INTR_N];
    unsigned long long hist[2][STATE_HIST_BUCKETS];
    unsigned long long latency_us_sum[2];
    unsigned long long shadow[SHADOW_N];
    unsigned long long comparisons;
    unsigned long long divergences[DIFF_KIND_N];
    unsigned long long divergent;
    unsigned long long noise;
    unsigned long long fallbacks;
};

struct state_table;

/* Returns a table for n_workers workers that persists to path (NULL: memory
 * only), or NULL when out of memory. */
struct state_table *state_table_new(int n_workers, const char *path);
void state_table_free(struct state_table *t);

/* Loads the state file into the table's overrides. A missing file is fine
 * (returns 0); an unreadable or corrupt one is an error line in errs and
 * FICUS_ECONFIG, so a cutover is never silently reset. First removes the
 * temporary files "<state_file>.tmp.PID" that crashed saves left, except one
 * a live other process wrote in the last minute (a save in progress). */
int state_table_load(struct state_table *t, struct config_errors *errs);

/* Binds cfg's routes to entries (creating them), sets cfg->routes[i].state, and
 * gives routes without an override the configuration's percentages. Entries
 * of routes no longer configured stay, marked absent. Control thread only,
 * before cfg is handed to the workers. Returns 0 or FICUS_ENOMEM. */
int state_table_bind(struct state_table *t, struct config *cfg);

/* The entry of a route, or NULL. */
struct route_state *state_find(struct state_table *t, const char *name);

/* Sets a route's percentages (a negative value leaves that one as it is), marks
 * it overridden, and persists the table. Returns 0, or a negative error when
 * the state file could not be written (the change is then not applied). */
int state_set(struct state_table *t, struct route_state *rs, double new_percent,
              double shadow_percent);

/* Rolls a route back: new_percent to 0 at once (even when the state file cannot
 * be written), its ramp stopped, the rollback counted and described in
 * last_rollback ("TIME reason: detail"). reason is "manual" or "guard". Control
 * thread only. */
void state_rollback(struct state_table *t, struct route_state *rs, const char *reason,
                    const char *detail);

/* Writes every overridden route to the state file atomically (temp file,
 * fsync, rename, fsync of the directory). 0 without a state file. */
int state_save(struct state_table *t);

/* Is there a state file? */
bool state_persisted(const struct state_table *t);

/* Sums the counters of rs over the workers. */
void state_totals(const struct state_table *t, const struct route_state *rs,
                  struct route_totals *out);

/* Calls fn for every entry. */
void state_each(struct state_table *t, void (*fn)(struct route_state *rs, void *arg), void *arg);

/* Reads a state file for `ficus check`: prints one line per override to out.
 * Returns 0, or FICUS_ECONFIG with a line in errs. */
int state_describe(const char *path, struct config_errors *errs, char **out);

/* Counter helpers for the worker that owns c: a relaxed load and store, no
 * read-modify-write needed with a single writer. */
static inline void counter_add(atomic_ullong *c, unsigned long long n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* The class of a status code (0 for a failure without one). */
enum code_class state_code_class(int status);

/* Records one request's outcome and latency on worker's counters. */
void state_count_request(struct route_counters *c, int backend_is_new, int status,
                         uint64_t latency_us);

#endif
