/* The control thread's once-a-second work: sample counters, hand this
 * instance's guard window counts to the state store, and for each route run
 * the guard (roll back when divergence or errors of new pass their limits,
 * over the counts of every live instance of a fleet) and the ramp (raise
 * new_percent step by step while the guard holds, on the one instance that
 * drives the ramp). Changes go through the state table's writer: the state
 * file, or etcd for a fleet. */
#include "ficus/control.h"
#include "ficus/common.h"
#include "ficus/divlog.h"
#include "ficus/log.h"
#include "ficus/metrics.h"
#include "ficus/state.h"
#include "ficus/store.h"
#include "ficus/worker.h"

#include <stdio.h>
#include <stdlib.h>

/* Routes whose counts one tick publishes at most (a fleet value's bound). */
#define CONTROL_ROUTES_MAX FLEET_ROUTES_MAX

static void on_guard_written(void *ctx, int result, const char *why)
{
    const char *route = ctx;
    /* FICUS_EFULL: a write of the route is under way; the next tick decides again. */
    if (result != 0 && result != FICUS_EFULL)
        log_warn("control", "guard rollback not written to the state store route=%s err=%s (%s)",
                 route, ficus_strerror(result), why);
}

/* This instance's counts over the guard's window, plus those the other live
 * instances of a fleet published. */
static void guard_counts(struct server *srv, const struct route_cfg *rt, struct fleet_counts *sum,
                         size_t *instances)
{
    struct window_counts w;
    metrics_window(rt->state, rt->guard_window_ms, &w);
    struct fleet_counts others;
    *instances = 1 + store_fleet_counts(srv->store, rt->name, rt->guard_window_ms, &others);
    /* Comparisons of endpoints still warming up and differences that are
     * noise or acknowledged are not counted (readiness.h). */
    sum->comparisons = w.guard_comparisons + others.comparisons;
    sum->divergent = w.guard_divergent + others.divergent;
    sum->new_requests = w.new_requests + others.new_requests;
    sum->new_errors = w.new_errors + others.new_errors;
}

static void guard_check(struct server *srv, const struct route_cfg *rt)
{
    struct route_state *rs = rt->state;
    if (!rt->guard || atomic_load(&rs->new_percent) <= 0)
        return;
    struct fleet_counts c;
    size_t instances;
    guard_counts(srv, rt, &c, &instances);
    char detail[FLEET_DETAIL_MAX + 1] = "";
    if (c.comparisons >= (unsigned long long)rt->guard_min_comparisons) {
        double r = (double)c.divergent / (double)c.comparisons;
        if (r > rt->guard_max_divergence_rate)
            snprintf(detail, sizeof(detail), "divergence rate %.4f > %.4f over %llu comparisons%s",
                     r, rt->guard_max_divergence_rate, (unsigned long long)c.comparisons,
                     instances > 1 ? " of the fleet" : "");
    }
    if (detail[0] == '\0' && c.new_requests >= (unsigned long long)rt->guard_min_comparisons) {
        double r = (double)c.new_errors / (double)c.new_requests;
        if (r > rt->guard_max_error_rate)
            snprintf(detail, sizeof(detail), "new error rate %.4f > %.4f over %llu requests%s", r,
                     rt->guard_max_error_rate, (unsigned long long)c.new_requests,
                     instances > 1 ? " of the fleet" : "");
    }
    if (detail[0] == '\0')
        return;
    struct fleet_change ch;
    fleet_change_init(&ch, FLEET_CHANGE_ROLLBACK);
    ch.rollback = FLEET_ROLLBACK_GUARD;
    ch.detail = detail;
    /* The route's name outlives the write: the entry stays across reloads. */
    state_change(srv->state, rs, &ch, STATE_SRC_GUARD, on_guard_written, rs->name);
}

static void on_ramp_written(void *ctx, int result, const char *why)
{
    const char *route = ctx;
    if (result != 0 && result != FICUS_EFULL)
        log_info("control", "ramp step not taken route=%s err=%s (%s); tried again later", route,
                 ficus_strerror(result), why);
}

static void ramp_step(struct server *srv, const struct route_cfg *rt)
{
    struct route_state *rs = rt->state;
    if (!rt->ramp || rs->ramp_stopped || !store_ramp_driver(srv->store))
        return;
    int64_t now = state_now_ms();
    if (rs->ramp_next_at == 0) {
        /* The ramp goes on from wherever the route is now (a restart and a new
         * driver included); the first step comes every_ms from now. */
        double cur = atomic_load(&rs->new_percent);
        rs->ramp_step = -1;
        for (size_t i = 0; i < rt->n_ramp_steps; i++) {
            if (rt->ramp_steps[i] <= cur)
                rs->ramp_step = (int)i;
        }
        rs->ramp_next_at = now + rt->ramp_every_ms;
        return;
    }
    if (now < rs->ramp_next_at)
        return;
    struct fleet_change ch;
    fleet_change_init(&ch, FLEET_CHANGE_RAMP);
    if (rs->ramp_step + 1 >= (int)rt->n_ramp_steps) {
        log_info("control", "ramp finished route=%s new_percent=%g", rt->name,
                 atomic_load(&rs->new_percent));
        if (!store_shared(srv->store)) {
            rs->ramp_stopped = true; /* the last step is reached */
            return;
        }
        /* The fleet hears that the ramp is over. */
        ch.ramp_step = rs->ramp_step;
        ch.ramp_next_at = 0;
        ch.ramp_stopped = true;
        state_change(srv->state, rs, &ch, STATE_SRC_RAMP, on_ramp_written, rs->name);
        return;
    }
    ch.new_percent = rt->ramp_steps[rs->ramp_step + 1];
    ch.ramp_step = rs->ramp_step + 1;
    ch.ramp_next_at = now + rt->ramp_every_ms;
    ch.ramp_stopped = false;
    log_info("control", "ramp step route=%s step=%d new_percent=%g", rt->name, ch.ramp_step,
             ch.new_percent);
    state_change(srv->state, rs, &ch, STATE_SRC_RAMP, on_ramp_written, rs->name);
}

/* Hands this instance's guard window counts of every guarded route to the
 * store (a fleet publishes them for the others' guards). */
static void publish_counts(struct server *srv)
{
    size_t n = 0;
    struct fleet_route_counts *c = NULL;
    if (store_shared(srv->store) && srv->cfg->n_routes > 0) {
        size_t want =
            srv->cfg->n_routes < CONTROL_ROUTES_MAX ? srv->cfg->n_routes : CONTROL_ROUTES_MAX;
        c = calloc(want, sizeof(*c));
        for (size_t i = 0; c != NULL && i < srv->cfg->n_routes && n < want; i++) {
            const struct route_cfg *rt = &srv->cfg->routes[i];
            if (!rt->guard)
                continue;
            struct window_counts w;
            metrics_window(rt->state, rt->guard_window_ms, &w);
            c[n].route = rt->name;
            c[n].window_ms = rt->guard_window_ms;
            c[n].c.comparisons = w.guard_comparisons;
            c[n].c.divergent =
                w.guard_divergent <= w.guard_comparisons ? w.guard_divergent : w.guard_comparisons;
            c[n].c.new_requests = w.new_requests;
            c[n].c.new_errors = w.new_errors <= w.new_requests ? w.new_errors : w.new_requests;
            n++;
        }
    }
    store_tick(srv->store, c, n);
    free(c);
}

void control_tick(struct server *srv)
{
    metrics_sample(srv);
    if (srv->divlog != NULL)
        divlog_tick(srv->divlog);
    if (srv->draining)
        return;
    publish_counts(srv);
    for (size_t i = 0; i < srv->cfg->n_routes; i++) {
        const struct route_cfg *rt = &srv->cfg->routes[i];
        guard_check(srv, rt);
        ramp_step(srv, rt);
    }
}
