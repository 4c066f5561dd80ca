#include "ficus/metrics.h"
#include "ficus/common.h"
#include "ficus/discovery.h"
#include "ficus/divlog.h"
#include "ficus/log.h"
#include "ficus/readiness.h"
#include "ficus/worker.h"
#include "ficus/upstream.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the sampler ------------------------------------------------------------------ */

struct sample {
    unsigned long long comparisons, divergent, new_requests, new_errors;
    unsigned long long guard_comparisons, guard_divergent;
};

struct ring {
    size_t next;  /* where the next sample goes */
    size_t count; /* samples held, up to METRICS_WINDOW_SAMPLES */
    struct sample s[METRICS_WINDOW_SAMPLES];
};

static void take_sample(struct route_state *rs, void *arg)
{
    struct server *srv = arg;
    struct ring *r = rs->samples;
    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return;
        rs->samples = r;
        /* Counters start at zero with the entry: that zero is the first sample, so
         * that what happened before the first tick is inside the window too. */
        r->next = 1;
        r->count = 1;
    }
    struct route_totals t;
    state_totals(srv->state, rs, &t);
    struct sample *s = &r->s[r->next];
    s->comparisons = t.comparisons;
    s->divergent = t.divergent;
    s->guard_comparisons = t.guard_comparisons;
    s->guard_divergent = t.guard_divergent;
    /* A fallback counts new's failed attempt under new (conn.c), so new's
     * error rate sees it. */
    s->new_requests = 0;
    for (int k = 0; k < CODE_N; k++)
        s->new_requests += t.requests[1][k];
    s->new_errors = t.requests[1][CODE_5XX] + t.requests[1][CODE_ERROR];
    r->next = (r->next + 1) % METRICS_WINDOW_SAMPLES;
    if (r->count < METRICS_WINDOW_SAMPLES)
        r->count++;
}

void metrics_sample(struct server *srv)
{
    state_each(srv->state, take_sample, srv);
}

/* The sample taken `back` seconds before the newest (0: the newest). */
static const struct sample *sample_at(const struct ring *r, size_t back)
{
    size_t idx = (r->next + METRICS_WINDOW_SAMPLES - 1 - back) % METRICS_WINDOW_SAMPLES;
    return &r->s[idx];
}

void metrics_window(const struct route_state *rs, int64_t window_ms, struct window_counts *out)
{
    memset(out, 0, sizeof(*out));
    const struct ring *r = rs->samples;
    if (r == NULL || r->count < 2)
        return;
    size_t back = (size_t)(window_ms / 1000);
    if (back >= r->count)
        back = r->count - 1;
    const struct sample *now = sample_at(r, 0), *then = sample_at(r, back);
    out->comparisons = now->comparisons - then->comparisons;
    out->divergent = now->divergent - then->divergent;
    out->new_requests = now->new_requests - then->new_requests;
    out->new_errors = now->new_errors - then->new_errors;
    out->guard_comparisons = now->guard_comparisons - then->guard_comparisons;
    out->guard_divergent = now->guard_divergent - then->guard_divergent;
    out->seconds = (double)back;
}

static double ratio(unsigned long long a, unsigned long long b)
{
    return b ? (double)a / (double)b : 0.0;
}

void metrics_route_windows(struct server *srv, const struct route_state *rs, json_t *route)
{
    (void)srv;
    struct window_counts w;
    metrics_window(rs, 60000, &w);
    json_object_set_new(route, "window",
                        json_pack("{s:f,s:I,s:I,s:f,s:f}", "seconds", w.seconds, "comparisons",
                                  (json_int_t)w.comparisons, "divergences", (json_int_t)w.divergent,
                                  "divergence_rate", ratio(w.divergent, w.comparisons),
                                  "new_error_rate", ratio(w.new_errors, w.new_requests)));
    /* Divergence rate per 10-second step over the last 10 minutes, oldest first.
     * The steps end now (the oldest may be shorter), so that the chart holds
     * every comparison the window counts. */
    json_t *hist = json_array();
    const struct ring *r = rs->samples;
    if (r != NULL && r->count >= 2) {
        size_t span = r->count - 1 < 600 ? r->count - 1 : 600;
        for (size_t end = (span - 1) / 10 * 10 + 10; end >= 10; end -= 10) {
            size_t back = end > span ? span : end;
            const struct sample *a = sample_at(r, back), *b = sample_at(r, end - 10);
            json_array_append_new(
                hist,
                json_pack("{s:i,s:I,s:I,s:f}", "ago_s", (int)(end - 10), "comparisons",
                          (json_int_t)(b->comparisons - a->comparisons), "divergences",
                          (json_int_t)(b->divergent - a->divergent), "rate",
                          ratio(b->divergent - a->divergent, b->comparisons - a->comparisons)));
        }
    }
    json_object_set_new(route, "history", hist);
}

double metrics_quantile_ms(const unsigned long long hist[STATE_HIST_BUCKETS], double q)
{
    unsigned long long total = 0;
    for (int k = 0; k < STATE_HIST_BUCKETS; k++)
        total += hist[k];
    if (total == 0)
        return 0;
    double want = q * (double)total, seen = 0;
    for (int k = 0; k < STATE_HIST_BUCKETS; k++) {
        if (seen + (double)hist[k] >= want && hist[k] > 0) {
            double lo = k == 0 ? 0 : state_hist_bounds[k - 1];
            double hi = k < STATE_HIST_BUCKETS - 1 ? state_hist_bounds[k] : lo * 2;
            double frac = ((want - seen) / (double)hist[k]);
            return (lo + (hi - lo) * frac) * 1000.0;
        }
        seen += (double)hist[k];
    }
    return state_hist_bounds[STATE_HIST_BUCKETS - 2] * 1000.0;
}

/* ---- Prometheus exposition ------------------------------------------------------------- */

static void head(struct buf *out, const char *name, const char *type, const char *help)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

struct render_ctx {
    struct server *srv;
    struct buf *out;
    int pass;
};

static const char *const roles[2] = {"legacy", "new"};
static const char *const classes[CODE_N] = {"2xx", "3xx", "4xx", "5xx", "error", "1xx"};
static const char *const interrupts[INTR_N] = {"upstream_reset", "upstream_timeout", "client_abort",
                                               "shutdown"};
static const char *const outcomes[SHADOW_N] = {"compared",       "skipped_inflight", "skipped_body",
                                               "skipped_method", "timeout",          "error",
                                               "skipped_queue",  "skipped_memory"};

static void render_route(struct route_state *rs, void *arg)
{
    struct render_ctx *rc = arg;
    struct buf *out = rc->out;
    struct route_totals t;
    state_totals(rc->srv->state, rs, &t);
#define LABEL_ROUTE()                                                                              \
    do {                                                                                           \
        buf_puts(out, "{route=\"");                                                                \
        buf_prom_label(out, rs->name);                                                             \
        buf_puts(out, "\"");                                                                       \
    } while (0)
    switch (rc->pass) {
    case 0:
        for (int b = 0; b < 2; b++) {
            for (int k = 0; k < CODE_N; k++) {
                buf_puts(out, "ficus_requests_total");
                LABEL_ROUTE();
                buf_printf(out, ",backend=\"%s\",code=\"%s\"} %llu\n", roles[b], classes[k],
                           t.requests[b][k]);
            }
        }
        break;
    case 1:
        for (int b = 0; b < 2; b++) {
            unsigned long long cum = 0;
            for (int k = 0; k < STATE_HIST_BUCKETS; k++) {
                cum += t.hist[b][k];
                buf_puts(out, "ficus_request_duration_seconds_bucket");
                LABEL_ROUTE();
                if (k < STATE_HIST_BUCKETS - 1)
                    buf_printf(out, ",backend=\"%s\",le=\"%g\"} %llu\n", roles[b],
                               state_hist_bounds[k], cum);
                else
                    buf_printf(out, ",backend=\"%s\",le=\"+Inf\"} %llu\n", roles[b], cum);
            }
            buf_puts(out, "ficus_request_duration_seconds_sum");
            LABEL_ROUTE();
            buf_printf(out, ",backend=\"%s\"} %.6f\n", roles[b], (double)t.latency_us_sum[b] / 1e6);
            buf_puts(out, "ficus_request_duration_seconds_count");
            LABEL_ROUTE();
            buf_printf(out, ",backend=\"%s\"} %llu\n", roles[b], cum);
        }
        break;
    case 2:
        for (int k = 0; k < SHADOW_N; k++) {
            buf_puts(out, "ficus_shadow_total");
            LABEL_ROUTE();
            buf_printf(out, ",outcome=\"%s\"} %llu\n", outcomes[k], t.shadow[k]);
        }
        break;
    case 3:
        buf_puts(out, "ficus_comparisons_total");
        LABEL_ROUTE();
        buf_printf(out, "} %llu\n", t.comparisons);
        break;
    case 4:
        for (int k = 0; k < DIFF_KIND_N; k++) {
            buf_puts(out, "ficus_divergences_total");
            LABEL_ROUTE();
            buf_printf(out, ",kind=\"%s\"} %llu\n", diff_kind_name((enum diff_kind)k),
                       t.divergences[k]);
        }
        break;
    case 5:
        buf_puts(out, "ficus_noise_total");
        LABEL_ROUTE();
        buf_printf(out, "} %llu\n", t.noise);
        break;
    case 6:
        buf_puts(out, "ficus_fallbacks_total");
        LABEL_ROUTE();
        buf_printf(out, "} %llu\n", t.fallbacks);
        break;
    case 7:
        buf_puts(out, "ficus_route_new_percent");
        LABEL_ROUTE();
        buf_printf(out, "} %g\n", atomic_load(&rs->new_percent));
        break;
    case 8:
        buf_puts(out, "ficus_rollbacks_total");
        LABEL_ROUTE();
        buf_printf(out, ",reason=\"manual\"} %llu\n", rs->rollbacks_manual);
        buf_puts(out, "ficus_rollbacks_total");
        LABEL_ROUTE();
        buf_printf(out, ",reason=\"guard\"} %llu\n", rs->rollbacks_guard);
        break;
    case 9:
        for (int b = 0; b < 2; b++) {
            for (int k = 0; k < INTR_N; k++) {
                buf_puts(out, "ficus_requests_interrupted_total");
                LABEL_ROUTE();
                buf_printf(out, ",backend=\"%s\",outcome=\"%s\"} %llu\n", roles[b], interrupts[k],
                           t.interrupted[b][k]);
            }
        }
        break;
    case 10:
    case 11: {
        /* shadow.correlate's map: only routes that have one. */
        struct correlate_stats cs;
        if (rs->correlate == NULL)
            break;
        correlate_stats(rs->correlate, (int64_t)(io_now_us() / 1000), &cs);
        if (rc->pass == 11) {
            buf_puts(out, "ficus_correlation_entries");
            LABEL_ROUTE();
            buf_printf(out, "} %zu\n", cs.size);
            break;
        }
        const struct {
            const char *event;
            unsigned long long n;
        } ev[] = {{"learnt", cs.learnt},
                  {"rewritten", cs.rewritten},
                  {"matched", cs.matched},
                  {"evicted", cs.evicted},
                  {"expired", cs.expired}};
        for (size_t k = 0; k < ARRAY_SIZE(ev); k++) {
            buf_puts(out, "ficus_correlation_total");
            LABEL_ROUTE();
            buf_printf(out, ",event=\"%s\"} %llu\n", ev[k].event, ev[k].n);
        }
        break;
    }
    default:
        break;
    }
#undef LABEL_ROUTE
}

static long count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return 0;
    long n = 0;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n > 2 ? n - 3 : 0; /* ".", ".." and the directory's own descriptor */
}

static long resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * sysconf(_SC_PAGESIZE);
}

/* ---- backend servers (issue 19) ------------------------------------------------------- */

static void server_labels(struct buf *out, const char *name, const struct discovery_addr *a)
{
    buf_printf(out, "%s{backend=\"", name);
    buf_prom_label(out, a->backend);
    buf_puts(out, "\",server=\"");
    buf_prom_label(out, a->server);
    buf_puts(out, "\"");
}

/* Per server address: whether it is up (current addresses only), and its
 * answers by code class (every address the workers sent requests to since
 * the start, so that counters never go back). */
static void render_upstream_servers(struct server *srv, struct buf *out)
{
    struct discovery_addr *rows = NULL;
    int n = srv->discovery != NULL ? discovery_addresses(srv->discovery, &rows) : 0;
    head(out, "ficus_upstream_server_up", "gauge",
         "1 when a backend server address passes its checks and is in rotation (not ejected, "
         "not down).");
    for (int i = 0; i < n; i++) {
        if (!rows[i].current)
            continue;
        server_labels(out, "ficus_upstream_server_up", &rows[i]);
        buf_printf(out, "} %d\n", rows[i].up ? 1 : 0);
    }
    head(out, "ficus_upstream_server_requests_total", "counter",
         "Requests sent to a backend server address, by code class of its answer (error: no "
         "answer).");
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < CODE_N; k++) {
            server_labels(out, "ficus_upstream_server_requests_total", &rows[i]);
            buf_printf(out, ",code=\"%s\"} %llu\n", classes[k], rows[i].requests[k]);
        }
    }
    head(out, "ficus_upstream_server_ejections_total", "counter",
         "Times a backend server address was ejected after consecutive failures.");
    for (int i = 0; i < n; i++) {
        server_labels(out, "ficus_upstream_server_ejections_total", &rows[i]);
        buf_printf(out, "} %llu\n", rows[i].ejections);
    }
    head(out, "ficus_upstream_server_active_requests", "gauge",
         "Requests in flight to a backend server address.");
    for (int i = 0; i < n; i++) {
        server_labels(out, "ficus_upstream_server_active_requests", &rows[i]);
        buf_printf(out, "} %d\n", rows[i].active);
    }
    free(rows);
}

/* ---- the exposition ------------------------------------------------------------------------ */

void metrics_render(struct server *srv, struct buf *out)
{
    static const struct {
        const char *name, *type, *help;
    } fams[] = {
        {"ficus_requests_total", "counter", "Requests answered, by route, backend and code class."},
        {"ficus_request_duration_seconds", "histogram", "Time to the end of the response."},
        {"ficus_shadow_total", "counter", "Shadow requests by outcome."},
        {"ficus_comparisons_total", "counter", "Responses compared."},
        {"ficus_divergences_total", "counter", "Differences found, by kind."},
        {"ficus_noise_total", "counter", "Differences classed as noise."},
        {"ficus_fallbacks_total", "counter", "Requests retried on legacy after new failed."},
        {"ficus_route_new_percent", "gauge", "Share of keys routed to new."},
        {"ficus_rollbacks_total", "counter", "Rollbacks of new_percent to 0, by reason."},
        {"ficus_requests_interrupted_total", "counter",
         "Requests whose response did not end whole (also counted in ficus_requests_total)."},
        {"ficus_correlation_total", "counter",
         "shadow.correlate: id pairs learnt, ids rewritten, diff items matched, pairs evicted "
         "and expired."},
        {"ficus_correlation_entries", "gauge", "shadow.correlate: id pairs remembered."},
    };
    struct render_ctx rc = {.srv = srv, .out = out};
    for (size_t i = 0; i < ARRAY_SIZE(fams); i++) {
        head(out, fams[i].name, fams[i].type, fams[i].help);
        rc.pass = (int)i;
        state_each(srv->state, render_route, &rc);
    }
    readiness_render_metrics(srv->state, out);

    head(out, "ficus_upstream_connections", "gauge", "Upstream connections, by state.");
    /* Pools belong to workers; their sizes are read without a lock and may be
     * a moment old, which is fine for a gauge. */
    for (size_t b = 0; b < srv->cfg->n_backends; b++) {
        int active = 0, idle = 0;
        for (int w = 0; w < srv->n_workers; w++) {
            struct pool_set *ps = srv->workers[w].pools;
            if (ps == NULL || b >= srv->workers[w].cfg->n_backends)
                continue;
            int a = 0, i = 0;
            upstream_counts(ps, (int)b, &a, &i);
            active += a;
            idle += i;
        }
        buf_puts(out, "ficus_upstream_connections{backend=\"");
        buf_prom_label(out, srv->cfg->backends[b].name);
        buf_printf(out, "\",state=\"active\"} %d\n", active);
        buf_puts(out, "ficus_upstream_connections{backend=\"");
        buf_prom_label(out, srv->cfg->backends[b].name);
        buf_printf(out, "\",state=\"idle\"} %d\n", idle);
    }
    render_upstream_servers(srv, out);

    unsigned long long active = 0, idle = 0;
    for (int w = 0; w < srv->n_workers; w++) {
        active +=
            atomic_load_explicit(&srv->workers[w].counters.conns_active, memory_order_relaxed);
        idle += atomic_load_explicit(&srv->workers[w].counters.conns_idle, memory_order_relaxed);
    }
    head(out, "ficus_connections", "gauge", "Client connections, by state.");
    buf_printf(out, "ficus_connections{state=\"active\"} %llu\n", active - idle);
    buf_printf(out, "ficus_connections{state=\"idle\"} %llu\n", idle);

    unsigned long long tunnels = 0;
    for (int w = 0; w < srv->n_workers; w++)
        tunnels +=
            atomic_load_explicit(&srv->workers[w].counters.tunnels_open, memory_order_relaxed);
    head(out, "ficus_tunnels_open", "gauge",
         "Upgraded connections (WebSocket and the like) carried as tunnels now.");
    buf_printf(out, "ficus_tunnels_open %llu\n", tunnels);

    head(out, "ficus_divergence_records_dropped_total", "counter",
         "Divergence records lost: the record queue was full or memory ran out.");
    buf_printf(out, "ficus_divergence_records_dropped_total %llu\n",
               srv->divlog != NULL ? divlog_dropped(srv->divlog) : 0ULL);

    head(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    buf_printf(out, "process_resident_memory_bytes %ld\n", resident_bytes());
    head(out, "process_open_fds", "gauge", "Number of open file descriptors.");
    buf_printf(out, "process_open_fds %ld\n", count_fds());
    head(out, "process_start_time_seconds", "gauge", "Start time since the epoch in seconds.");
    buf_printf(out, "process_start_time_seconds %lld\n", (long long)srv->started_at);
}

/* ---- readiness ------------------------------------------------------------------------------ */

json_t *metrics_readiness(struct server *srv)
{
    /* A backend is ready when one of its addresses is: it passes its checks
     * and some worker has it in rotation (discovery.c). */
    json_t *backends = json_object();
    bool all = true;
    for (size_t i = 0; i < srv->cfg->n_backends; i++) {
        bool up = discovery_backend_up(srv->discovery, (int)i);
        json_object_set_new(backends, srv->cfg->backends[i].name, json_boolean(up));
        all = all && up;
    }
    bool listeners = atomic_load(&srv->workers_running) == srv->n_workers && !srv->draining;
    return json_pack("{s:b,s:b,s:o}", "ready", listeners && all, "listeners", listeners, "backends",
                     backends);
}

/* ---- divergence views --------------------------------------------------------------------------
 */

int metrics_divergences_write(struct server *srv, const char *route, int limit, struct buf *out)
{
    if (srv->divlog == NULL)
        return buf_puts(out, "{\"divergences\":[]}");
    return divlog_recent_write(srv->divlog, route, limit, out);
}

json_t *metrics_divergences_json(struct server *srv, const char *route, int limit)
{
    if (srv->divlog == NULL)
        return json_pack("{s:[]}", "divergences");
    return divlog_recent(srv->divlog, route, limit);
}

json_t *metrics_summary_json(struct server *srv, const char *route)
{
    if (srv->divlog == NULL)
        return json_pack("{s:[]}", "paths");
    return divlog_summary(srv->divlog, route);
}
