/* Numbers about the proxy: Prometheus exposition of the summed per-worker
 * counters, windowed rates from a once-a-second sampler on the control
 * thread, readiness, and the JSON views of recent divergences. Control thread
 * only. */
#ifndef FICUS_METRICS_H
#define FICUS_METRICS_H

#include "ficus/buf.h"
#include "ficus/state.h"
#include <jansson.h>

struct server;

/* Seconds of history the sampler keeps (and the longest window it can rate). */
#define METRICS_WINDOW_SAMPLES 3600

/* Appends the Prometheus text exposition (format 0.0.4) to out. */
void metrics_render(struct server *srv, struct buf *out);

/* The q-quantile (0..1) in milliseconds of a latency histogram with the
 * state_hist_bounds buckets (linear inside a bucket); 0 when empty. */
double metrics_quantile_ms(const unsigned long long hist[STATE_HIST_BUCKETS], double q);

/* Takes one sample of every route's counters (call once a second). */
void metrics_sample(struct server *srv);

/* Counts over the last window_ms for a route, from the samples. */
struct window_counts {
    unsigned long long comparisons, divergent, new_requests, new_errors;
    /* What the guard counts: comparisons of endpoints past their warm-up and
     * those with a difference neither noise nor acknowledged. */
    unsigned long long guard_comparisons, guard_divergent;
    double seconds; /* how much history the counts cover */
};
void metrics_window(const struct route_state *rs, int64_t window_ms, struct window_counts *out);

/* Adds "window" (last minute rates) and "history" (per-minute divergence
 * rates, for the chart) to a route's JSON object. */
void metrics_route_windows(struct server *srv, const struct route_state *rs, json_t *route);

/* {"ready": bool, "listeners": bool, "backends": {name: bool}}: a backend is
 * ready when at least one of its server addresses is up. */
json_t *metrics_readiness(struct server *srv);

/* Appends {"divergences": [...]}: recent divergence records, newest first
 * (route NULL for all), each as written, so values keep every digit. Returns 0
 * or a buf error. The admin API should answer with this text. */
int metrics_divergences_write(struct server *srv, const char *route, int limit, struct buf *out);
/* The same as a jansson tree: LOSSY for numbers (see divlog_recent); kept
 * until the admin module calls metrics_divergences_write. */
json_t *metrics_divergences_json(struct server *srv, const char *route, int limit);
/* Per diff path: count, rate, noise, example id. */
json_t *metrics_summary_json(struct server *srv, const char *route);

#endif
