/* Live route state, apart from the immutable configuration: percentages that
 * operators, the guard and the ramp change at runtime, and the per-worker
 * counters of each route. Entries are keyed by route name and outlive reloads.
 * Workers read percentages and bump their own counters without locks; the
 * control thread changes percentages, sums counters and persists overrides. */
#ifndef FICUS_STATE_H
#define FICUS_STATE_H

#include "ficus/config.h"
#include "ficus/fleet.h"
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
    atomic_ullong acknowledged; /* acknowledged diff items (readiness.h) */
    /* What the guard counts: comparisons of endpoints past their warm-up, and
     * those of them with a difference neither noise nor acknowledged. */
    atomic_ullong guard_comparisons;
    atomic_ullong guard_divergent;
} __attribute__((aligned(64)));

struct state_acks;
struct endpoint_ack;
struct endpoint_table;

struct route_state {
    char name[128];
    _Atomic double new_percent;
    _Atomic double shadow_percent;
    atomic_int shadow_inflight; /* across workers, for shadow.max_inflight */
    /* shadow.correlate's map (its own lock inside), made by state_table_bind
     * for a route that has one and kept across reloads; NULL: none. */
    struct correlate *correlate;
    /* Control thread only: */
    bool overridden; /* new/shadow percent come from the admin API, guard, ramp or the store */
    bool present;    /* the current configuration has this route */
    unsigned long long rollbacks_manual, rollbacks_guard;
    char last_rollback[224];      /* "2026-...Z guard: divergence rate 0.12 > 0.01", or "" */
    enum fleet_rollback rollback; /* the last rollback (NONE: none), as last_rollback says */
    char rollback_detail[FLEET_DETAIL_MAX + 1];
    int64_t rollback_at; /* unix ms; 0 without a rollback */
    int ramp_step;       /* index into ramp_steps of the current step, -1: none */
    bool ramp_stopped;
    int64_t ramp_next_at;            /* unix ms when the next step is due; 0: not scheduled */
    struct state_acks *acks;         /* acknowledged differences; NULL: none */
    struct route_counters *counters; /* one per worker */
    void *samples;                   /* the metrics sampler's ring, freed with the entry */
    struct noise_stats *noise;       /* legacy-vs-legacy statistics, under noise_lock */
    /* The route's comparison statistics lock: noise, endpoints and acks_pub.
     * Taken around one update on the threadpool, for a read on the control
     * thread, and briefly by a worker deciding a noise twin. */
    uv_mutex_t noise_lock;
    struct endpoint_table *endpoints; /* under noise_lock; NULL until the first comparison */
    struct state_acks *acks_pub;      /* under noise_lock: the snapshot comparisons match */
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
    unsigned long long acknowledged;
    unsigned long long guard_comparisons, guard_divergent;
};

struct state_table;

/* Where a change of the live state came from, for ficus_state_changes_total:
 * this instance's admin API, guard or ramp, or the state store (a value
 * another instance or an operator wrote, read from etcd). */
enum state_source {
    STATE_SRC_ADMIN,
    STATE_SRC_GUARD,
    STATE_SRC_RAMP,
    STATE_SRC_STORE,
    STATE_SRC_N,
    STATE_SRC_QUIET = STATE_SRC_N /* applied without counting (an undo, the cache) */
};

/* "admin", "guard", "ramp", "store". Static. */
const char *state_source_name(enum state_source s);

/* The wall clock in unix milliseconds (ramp times and rollbacks are wall
 * times: they are shared between machines). */
int64_t state_now_ms(void);

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

/* ---- changes ------------------------------------------------------------ */

/* Hears how a change ended: 0 (applied), FICUS_ECONFLICT (another writer
 * changed the route first: nothing was written and the current state is
 * applied), FICUS_EUNAVAILABLE (the state store cannot be reached: nothing
 * was changed, except a guard's rollback, applied here at once), -EINVAL (the
 * change is not valid), or another error; why says it in words for an API
 * answer or a log ("" for 0; a static string or one that lives until cb
 * returns). */
typedef void (*state_change_cb)(void *ctx, int result, const char *why);

/* What carries changes to where the live state lives: a state store above
 * this module registers one (state_set_writer). It applies ch to rs as the
 * store agrees, then calls cb exactly once, later or before it returns. */
struct state_writer {
    void (*change)(void *wctx, struct route_state *rs, const struct fleet_change *ch,
                   enum state_source src, state_change_cb cb, void *ctx);
};

/* Registers the writer (w and wctx outlive the table's use; NULL: the built-in
 * one, which applies at once and writes the state file). */
void state_set_writer(struct state_table *t, const struct state_writer *w, void *wctx);

/* Changes a route's live state (percentages, rollback, ramp position or
 * acknowledgements) through the table's writer; cb (may be NULL) hears the
 * end, exactly once, perhaps before this returns. The built-in writer applies
 * the change to every worker at once and writes the state file; when the file
 * cannot be written the change is undone (FICUS_E... of the write), except a
 * rollback, which stays applied. Control thread only. */
void state_change(struct state_table *t, struct route_state *rs, const struct fleet_change *ch,
                  enum state_source src, state_change_cb cb, void *ctx);

/* Replaces a route's acknowledged differences with the n at acks (copied)
 * through the writer, as state_change. */
void state_acks_replace(struct state_table *t, struct route_state *rs, const struct fleet_ack *acks,
                        size_t n, enum state_source src, state_change_cb cb, void *ctx);

/* A route's acknowledged differences: sets *n and returns them (NULL when
 * none); they live until the route's next change. */
const struct fleet_ack *state_acks(const struct route_state *rs, size_t *n);

/* The acknowledgements comparisons match, as an immutable snapshot the
 * control thread publishes whenever a route's list changes (state_apply,
 * state_reset: the admin API, the state file, the store's watch): any thread
 * takes a reference (NULL: none), reads it through state_acks_view and drops
 * it. Takes rs->noise_lock: not to be called with it held. */
struct state_acks *state_acks_hold(struct route_state *rs);
void state_acks_drop(struct state_acks *a);
/* The snapshot's entries as endpoint_ack_matches takes them; *n their count. */
const struct endpoint_ack *state_acks_view(const struct state_acks *a, size_t *n);

/* The live state of rs as a value (out initialised; strings copied into its
 * arena). Returns 0 or FICUS_ENOMEM. */
int state_value(const struct route_state *rs, struct fleet_route *out);

/* Applies the value v to rs: percentages to every worker at once (a
 * shadow_percent of -1 becomes cfg_shadow, or stays as it is when cfg_shadow
 * is negative too), ramp position, rollback and acknowledgements; marks it
 * overridden. A rollback newer than the table is counted and logged. Counted
 * in the changes of src. Returns 0 or FICUS_ENOMEM (nothing applied then). */
int state_apply(struct state_table *t, struct route_state *rs, const struct fleet_route *v,
                double cfg_shadow, enum state_source src);

/* The route's live state is gone from the store: back to the configuration's
 * percentages (rt NULL: as they are), not overridden, no ramp position, no
 * rollback, no acknowledgements. Counted in the changes of src. */
void state_reset(struct state_table *t, struct route_state *rs, const struct route_cfg *rt,
                 enum state_source src);

/* Changes applied since the start, by where they came from. */
unsigned long long state_changes(const struct state_table *t, enum state_source src);
/* Counts a change of src that was applied already (quietly, as the store's
 * watch brought this instance's own write back before the write's answer). */
void state_count_change(struct state_table *t, enum state_source src);

/* ---- the state file ----------------------------------------------------- */

/* Writes every overridden route to the state file atomically (temp file,
 * fsync, rename, fsync of the directory). 0 without a state file. */
int state_save(struct state_table *t);

/* The state store's revision the file reflects, written at the top of the
 * state file by the next state_save (0: none, the file store). */
void state_set_revision(struct state_table *t, int64_t revision);
/* The revision the loaded state file named (0: none). */
int64_t state_loaded_revision(const struct state_table *t);

/* Marks the table changed without writing it: the etcd store writes its
 * cache at most once a second (state_save_if_dirty). */
void state_mark_dirty(struct state_table *t);
/* Writes the file when changed since the last write. Returns state_save's. */
int state_save_if_dirty(struct state_table *t);

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
