/* The control thread's once-a-second work: sample counters, and for each
 * route run the guard (roll back when divergence or errors of new pass their
 * limits) and the ramp (raise new_percent step by step while the guard holds). */
#include "ficus/control.h"
#include "ficus/common.h"
#include "ficus/divlog.h"
#include "ficus/log.h"
#include "ficus/metrics.h"
#include "ficus/state.h"
#include "ficus/worker.h"

#include <stdio.h>

static void guard_check(struct server *srv, const struct route_cfg *rt)
{
    struct route_state *rs = rt->state;
    if (!rt->guard || atomic_load(&rs->new_percent) <= 0)
        return;
    struct window_counts w;
    metrics_window(rs, rt->guard_window_ms, &w);
    char detail[128];
    if (w.comparisons >= (unsigned long long)rt->guard_min_comparisons) {
        double r = (double)w.divergent / (double)w.comparisons;
        if (r > rt->guard_max_divergence_rate) {
            snprintf(detail, sizeof(detail), "divergence rate %.4f > %.4f over %llu comparisons", r,
                     rt->guard_max_divergence_rate, w.comparisons);
            state_rollback(srv->state, rs, "guard", detail);
            return;
        }
    }
    if (w.new_requests >= (unsigned long long)rt->guard_min_comparisons) {
        double r = (double)w.new_errors / (double)w.new_requests;
        if (r > rt->guard_max_error_rate) {
            snprintf(detail, sizeof(detail), "new error rate %.4f > %.4f over %llu requests", r,
                     rt->guard_max_error_rate, w.new_requests);
            state_rollback(srv->state, rs, "guard", detail);
        }
    }
}

static void ramp_step(struct server *srv, const struct route_cfg *rt)
{
    struct route_state *rs = rt->state;
    if (!rt->ramp || rs->ramp_stopped)
        return;
    int64_t now = (int64_t)uv_now(srv->loop);
    if (rs->ramp_next_ms == 0) {
        /* The ramp goes on from wherever the route is now (a restart included). */
        double cur = atomic_load(&rs->new_percent);
        rs->ramp_step = -1;
        for (size_t i = 0; i < rt->n_ramp_steps; i++) {
            if (rt->ramp_steps[i] <= cur)
                rs->ramp_step = (int)i;
        }
        rs->ramp_next_ms = now + rt->ramp_every_ms;
        return;
    }
    if (now < rs->ramp_next_ms)
        return;
    if (rs->ramp_step + 1 >= (int)rt->n_ramp_steps) {
        rs->ramp_stopped = true; /* the last step is reached */
        log_info("control", "ramp finished route=%s new_percent=%g", rt->name,
                 atomic_load(&rs->new_percent));
        return;
    }
    double next = rt->ramp_steps[rs->ramp_step + 1];
    if (state_set(srv->state, rs, next, -1) != 0)
        return; /* tried again at the next tick */
    rs->ramp_step++;
    rs->ramp_next_ms = now + rt->ramp_every_ms;
    log_info("control", "ramp step route=%s new_percent=%g", rt->name, next);
}

void control_tick(struct server *srv)
{
    metrics_sample(srv);
    if (srv->divlog != NULL)
        divlog_tick(srv->divlog);
    if (srv->draining)
        return;
    for (size_t i = 0; i < srv->cfg->n_routes; i++) {
        const struct route_cfg *rt = &srv->cfg->routes[i];
        guard_check(srv, rt);
        ramp_step(srv, rt);
    }
}
