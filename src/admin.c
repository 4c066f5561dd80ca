/* The admin server: a small HTTP/1.1 server on the control loop. It reuses the
 * strict head scanner of the data path, takes bodies of at most 64 KiB with a
 * Content-Length, and answers JSON. */
#include "ficus/admin.h"
#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/http1.h"
#include "ficus/log.h"
#include "ficus/metrics.h"
#include "ficus/state.h"
#include "ficus/worker.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>
#include <string.h>

#define ADMIN_MAX_BODY (64 * 1024)
#define ADMIN_MAX_HEAD (16 * 1024)
#define ADMIN_IDLE_MS  30000

extern const unsigned char dashboard_html[];
extern const size_t dashboard_html_len;

struct admin_conn;

struct admin {
    struct server *srv;
    uv_tcp_t listener;
    struct admin_conn *conns;
    int open_handles;
    bool stopping;
};

struct admin_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct admin *a;
    struct admin_conn *prev, *next;
    struct buf in;
    struct head_scan scan;
    int open_handles;
    bool closing;
    bool close_after_write;
    int writes;
};

/* What a handler answers. */
struct reply {
    int status;
    const char *ctype;
    struct buf body;
    const char *allow; /* for 405 */
};

static void reply_json(struct reply *r, int status, json_t *j)
{
    r->status = status;
    r->ctype = "application/json";
    char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(j);
    if (s != NULL) {
        buf_puts(&r->body, s);
        buf_puts(&r->body, "\n");
        free(s);
    }
}

static void reply_error(struct reply *r, int status, const char *msg)
{
    reply_json(r, status, json_pack("{s:s}", "error", msg));
}

/* ---- connections ------------------------------------------------------------------ */

static void admin_maybe_free(struct admin *a)
{
    if (a->stopping && a->open_handles == 0 && a->conns == NULL)
        free(a);
}

static void on_admin_conn_closed(uv_handle_t *h)
{
    struct admin_conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    struct admin *a = c->a;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    buf_dispose(&c->in);
    free(c);
    admin_maybe_free(a);
}

static void admin_conn_close(struct admin_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_admin_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_admin_conn_closed);
}

struct admin_wreq {
    uv_write_t req;
    struct admin_conn *c;
    char *data;
};

static void on_admin_written(uv_write_t *req, int status)
{
    struct admin_wreq *w = (struct admin_wreq *)req;
    struct admin_conn *c = w->c;
    free(w->data);
    free(w);
    c->writes--;
    if (status != 0 || (c->close_after_write && c->writes == 0))
        admin_conn_close(c);
}

static void admin_send(struct admin_conn *c, struct reply *r, bool keep_alive)
{
    struct buf out;
    buf_init(&out, 0);
    buf_printf(&out,
               "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
               "cache-control: no-store\r\nx-content-type-options: nosniff\r\n",
               r->status, http1_reason(r->status), r->ctype ? r->ctype : "application/json",
               r->body.len);
    if (r->allow != NULL)
        buf_printf(&out, "allow: %s\r\n", r->allow);
    if (!keep_alive)
        buf_puts(&out, "connection: close\r\n");
    buf_puts(&out, "\r\n");
    buf_append(&out, r->body.data, r->body.len);
    struct admin_wreq *w = malloc(sizeof(*w));
    if (w == NULL || out.data == NULL) {
        free(w);
        buf_dispose(&out);
        admin_conn_close(c);
        return;
    }
    w->c = c;
    w->data = out.data;
    uv_buf_t ub = uv_buf_init(out.data, (unsigned)out.len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, on_admin_written) != 0) {
        free(out.data);
        free(w);
        admin_conn_close(c);
        return;
    }
    c->writes++;
    if (!keep_alive)
        c->close_after_write = true;
}

/* ---- handlers ------------------------------------------------------------------------ */

/* Does the request carry the admin token? Sets the reply when not. */
static bool authorized(struct admin *a, const struct http_head *h, struct reply *r)
{
    const struct config *cfg = a->srv->cfg;
    const char *token = cfg->admin_token_env ? getenv(cfg->admin_token_env) : NULL;
    if (token == NULL || token[0] == '\0') {
        reply_error(r, 403, "mutating calls are disabled: no admin token is configured");
        return false;
    }
    const struct http_header *auth = http1_find(h, "authorization");
    size_t tl = strlen(token);
    if (auth == NULL || auth->value.len != 7 + tl ||
        strncasecmp(auth->value.p, "Bearer ", 7) != 0 ||
        CRYPTO_memcmp(auth->value.p + 7, token, tl) != 0) {
        reply_error(r, 401, "missing or wrong bearer token");
        return false;
    }
    return true;
}

static json_t *strings_json(const char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static double rate(unsigned long long part, unsigned long long whole)
{
    return whole ? (double)part / (double)whole : 0.0;
}

static json_t *admin_route_json(struct server *srv, const struct route_cfg *rt)
{
    const struct config *cfg = srv->cfg;
    struct route_state *rs = rt->state;
    json_t *match = json_object();
    if (rt->match.path_prefix)
        json_object_set_new(match, "path_prefix", json_string(rt->match.path_prefix));
    if (rt->match.n_methods)
        json_object_set_new(match, "methods", strings_json(rt->match.methods, rt->match.n_methods));
    if (rt->match.host)
        json_object_set_new(match, "host", json_string(rt->match.host));
    if (rt->match.n_headers) {
        json_t *hs = json_object();
        for (size_t i = 0; i < rt->match.n_headers; i++)
            json_object_set_new(hs, rt->match.headers[i].name,
                                json_string(rt->match.headers[i].value));
        json_object_set_new(match, "headers", hs);
    }
    json_t *j = json_object();
    json_object_set_new(j, "name", json_string(rt->name));
    json_object_set_new(j, "match", match);
    json_object_set_new(j, "legacy", json_string(cfg->backends[rt->legacy].name));
    json_object_set_new(j, "new", json_string(cfg->backends[rt->new_].name));
    json_object_set_new(j, "new_percent", json_real(atomic_load(&rs->new_percent)));
    json_object_set_new(j, "config_new_percent", json_real(rt->new_percent));
    json_object_set_new(j, "overridden", json_boolean(rs->overridden));
    json_object_set_new(j, "override_header",
                        rt->override_header ? json_string(rt->override_header) : json_null());
    json_object_set_new(j, "guard",
                        rt->guard
                            ? json_pack("{s:f,s:f,s:i,s:i}", "max_divergence_rate",
                                        rt->guard_max_divergence_rate, "max_error_rate",
                                        rt->guard_max_error_rate, "min_comparisons",
                                        rt->guard_min_comparisons, "window_ms", rt->guard_window_ms)
                            : json_null());
    if (rt->shadow) {
        json_object_set_new(
            j, "shadow",
            json_pack("{s:f,s:o,s:i,s:i,s:I}", "percent", atomic_load(&rs->shadow_percent),
                      "methods", strings_json(rt->shadow_methods, rt->n_shadow_methods),
                      "max_inflight", rt->shadow_max_inflight, "timeout_ms", rt->shadow_timeout_ms,
                      "max_body_bytes", (json_int_t)rt->shadow_max_body_bytes));
    } else {
        json_object_set_new(j, "shadow", json_null());
    }
    if (rt->ramp) {
        json_t *steps = json_array();
        for (size_t i = 0; i < rt->n_ramp_steps; i++)
            json_array_append_new(steps, json_real(rt->ramp_steps[i]));
        json_object_set_new(j, "ramp",
                            json_pack("{s:o,s:I,s:i,s:b}", "steps", steps, "every_ms",
                                      (json_int_t)rt->ramp_every_ms, "step", rs->ramp_step,
                                      "active", !rs->ramp_stopped));
    } else {
        json_object_set_new(j, "ramp", json_null());
    }
    json_object_set_new(j, "last_rollback",
                        rs->last_rollback[0] ? json_string(rs->last_rollback) : json_null());

    struct route_totals t;
    state_totals(srv->state, rs, &t);
    json_t *backends = json_object();
    static const char *const roles[2] = {"legacy", "new"};
    for (int b = 0; b < 2; b++) {
        unsigned long long total = 0;
        for (int k = 0; k < CODE_N; k++)
            total += t.requests[b][k];
        json_object_set_new(
            backends, roles[b],
            json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:f}", "requests", (json_int_t)total, "2xx",
                      (json_int_t)t.requests[b][CODE_2XX], "3xx",
                      (json_int_t)t.requests[b][CODE_3XX], "4xx",
                      (json_int_t)t.requests[b][CODE_4XX], "5xx",
                      (json_int_t)t.requests[b][CODE_5XX], "errors",
                      (json_int_t)t.requests[b][CODE_ERROR], "error_rate",
                      rate(t.requests[b][CODE_5XX] + t.requests[b][CODE_ERROR], total), "p50_ms",
                      metrics_quantile_ms(t.hist[b], 0.50), "p99_ms",
                      metrics_quantile_ms(t.hist[b], 0.99)));
    }
    json_object_set_new(j, "backends", backends);
    json_object_set_new(j, "comparisons", json_integer((json_int_t)t.comparisons));
    json_object_set_new(j, "divergences", json_integer((json_int_t)t.divergent));
    json_object_set_new(j, "divergence_rate", json_real(rate(t.divergent, t.comparisons)));
    json_object_set_new(j, "fallbacks", json_integer((json_int_t)t.fallbacks));
    metrics_route_windows(srv, rs, j);
    return j;
}

static const struct route_cfg *find_route(struct server *srv, const char *name, size_t len)
{
    for (size_t i = 0; i < srv->cfg->n_routes; i++) {
        const struct route_cfg *rt = &srv->cfg->routes[i];
        if (strlen(rt->name) == len && memcmp(rt->name, name, len) == 0)
            return rt;
    }
    return NULL;
}

static void get_routes(struct admin *a, struct reply *r)
{
    json_t *routes = json_array();
    for (size_t i = 0; i < a->srv->cfg->n_routes; i++)
        json_array_append_new(routes, admin_route_json(a->srv, &a->srv->cfg->routes[i]));
    const struct config *cfg = a->srv->cfg;
    json_t *listen = json_array();
    for (size_t i = 0; i < cfg->n_listens; i++)
        json_array_append_new(listen, json_pack("{s:s,s:b}", "address", cfg->listens[i].addr.text,
                                                "tls", cfg->listens[i].tls));
    reply_json(r, 200,
               json_pack("{s:o,s:b,s:o,s:o}", "routes", routes, "persisted",
                         state_persisted(a->srv->state), "listen", listen, "redact_headers",
                         strings_json(cfg->redact_headers, cfg->n_redact_headers)));
}

static void patch_route(struct admin *a, const struct route_cfg *rt, const char *body, size_t len,
                        struct reply *r)
{
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        reply_error(r, 400, "body must be a JSON object like {\"new_percent\": 10}");
        return;
    }
    double np = -1, sp = -1;
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v)
    {
        double *dst = strcmp(key, "new_percent") == 0      ? &np
                      : strcmp(key, "shadow_percent") == 0 ? &sp
                                                           : NULL;
        if (dst == NULL) {
            json_decref(j);
            reply_error(r, 400, "unknown key: only new_percent and shadow_percent can be changed");
            return;
        }
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100) {
            json_decref(j);
            reply_error(r, 400, "new_percent and shadow_percent must be numbers from 0 to 100");
            return;
        }
        *dst = json_number_value(v);
    }
    json_decref(j);
    if (np < 0 && sp < 0) {
        reply_error(r, 400, "nothing to change: give new_percent and/or shadow_percent");
        return;
    }
    if (sp >= 0 && !rt->shadow) {
        reply_error(r, 400, "route has no shadow configuration");
        return;
    }
    struct route_state *rs = rt->state;
    if (np >= 0 && rt->ramp && !rs->ramp_stopped) {
        reply_error(r, 409, "route is under an active ramp: roll it back to stop the ramp first");
        return;
    }
    if (state_set(a->srv->state, rs, np, sp) != 0) {
        reply_error(r, 500, "could not write the state file; nothing was changed");
        return;
    }
    log_info("admin", "route changed route=%s new_percent=%g shadow_percent=%g", rt->name,
             atomic_load(&rs->new_percent), atomic_load(&rs->shadow_percent));
    json_t *out = admin_route_json(a->srv, rt);
    json_object_set_new(out, "persisted", json_boolean(state_persisted(a->srv->state)));
    reply_json(r, 200, out);
}

static void post_rollback(struct admin *a, const struct route_cfg *rt, struct reply *r)
{
    state_rollback(a->srv->state, rt->state, "manual", "rolled back through the admin API");
    json_t *out = admin_route_json(a->srv, rt);
    json_object_set_new(out, "persisted", json_boolean(state_persisted(a->srv->state)));
    reply_json(r, 200, out);
}

static void post_reload(struct admin *a, struct reply *r)
{
    struct config_errors errs = {0};
    if (a->srv->reload(a->srv, &errs) != 0) {
        json_t *lines = json_array();
        for (size_t i = 0; i < errs.n; i++)
            json_array_append_new(lines, json_string(errs.lines[i]));
        reply_json(r, 400,
                   json_pack("{s:s,s:o}", "error",
                             "invalid configuration; the running "
                             "configuration stays",
                             "errors", lines));
    } else {
        reply_json(r, 200,
                   json_pack("{s:s,s:i}", "status", "ok", "routes", (int)a->srv->cfg->n_routes));
    }
    config_errors_dispose(&errs);
}

/* Returns the query parameter name of target's query, or an empty span. */
static struct span query_param(struct span query, const char *name)
{
    size_t nl = strlen(name), i = 0;
    while (i < query.len) {
        size_t end = i;
        while (end < query.len && query.p[end] != '&')
            end++;
        if (end - i > nl && memcmp(query.p + i, name, nl) == 0 && query.p[i + nl] == '=')
            return (struct span){query.p + i + nl + 1, end - i - nl - 1};
        i = end + 1;
    }
    return (struct span){NULL, 0};
}

static void dispatch(struct admin *a, const struct http_head *h, const char *body, size_t blen,
                     struct reply *r)
{
    struct span p = h->path;
    bool get = span_eq(h->method, "GET") || span_eq(h->method, "HEAD");
    if (span_eq(p, "/")) {
        if (!get) {
            r->allow = "GET, HEAD";
            reply_error(r, 405, "method not allowed");
            return;
        }
        r->status = 200;
        r->ctype = "text/html; charset=utf-8";
        buf_append(&r->body, dashboard_html, dashboard_html_len);
        return;
    }
    if (span_eq(p, "/healthz") || span_eq(p, "/readyz") || span_eq(p, "/metrics") ||
        span_eq(p, "/api/v1/routes") || span_eq(p, "/api/v1/divergences") ||
        span_eq(p, "/api/v1/divergences/summary")) {
        if (!get) {
            r->allow = "GET, HEAD";
            reply_error(r, 405, "method not allowed");
            return;
        }
        if (span_eq(p, "/healthz")) {
            reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
        } else if (span_eq(p, "/readyz")) {
            json_t *j = metrics_readiness(a->srv);
            bool ready = json_is_true(json_object_get(j, "ready"));
            reply_json(r, ready ? 200 : 503, j);
        } else if (span_eq(p, "/metrics")) {
            r->status = 200;
            r->ctype = "text/plain; version=0.0.4; charset=utf-8";
            metrics_render(a->srv, &r->body);
        } else if (span_eq(p, "/api/v1/routes")) {
            get_routes(a, r);
        } else {
            struct span route = query_param(h->query, "route");
            struct span limit = query_param(h->query, "limit");
            char rname[128] = "";
            if (route.len >= sizeof(rname)) {
                reply_error(r, 400, "route name too long");
                return;
            }
            memcpy(rname, route.p ? route.p : "", route.len);
            rname[route.len] = '\0';
            long lim = 50;
            if (limit.len) {
                char tmp[16] = "";
                memcpy(tmp, limit.p, limit.len < 15 ? limit.len : 15);
                char *end;
                lim = strtol(tmp, &end, 10);
                if (*end != '\0' || lim < 1 || lim > 1000) {
                    reply_error(r, 400, "limit must be a number from 1 to 1000");
                    return;
                }
            }
            json_t *j = span_eq(p, "/api/v1/divergences")
                            ? metrics_divergences_json(a->srv, rname[0] ? rname : NULL, (int)lim)
                            : metrics_summary_json(a->srv, rname[0] ? rname : NULL);
            reply_json(r, 200, j);
        }
        return;
    }
    if (span_eq(p, "/api/v1/reload")) {
        if (!span_eq(h->method, "POST")) {
            r->allow = "POST";
            reply_error(r, 405, "method not allowed");
            return;
        }
        if (authorized(a, h, r))
            post_reload(a, r);
        return;
    }
    static const char prefix[] = "/api/v1/routes/";
    if (p.len > sizeof(prefix) - 1 && memcmp(p.p, prefix, sizeof(prefix) - 1) == 0) {
        const char *name = p.p + sizeof(prefix) - 1;
        size_t nlen = p.len - (sizeof(prefix) - 1);
        const char *slash = memchr(name, '/', nlen);
        bool rollback = false;
        if (slash != NULL) {
            if (!span_eq((struct span){slash, (size_t)(name + nlen - slash)}, "/rollback")) {
                reply_error(r, 404, "not found");
                return;
            }
            rollback = true;
            nlen = (size_t)(slash - name);
        }
        const struct route_cfg *rt = find_route(a->srv, name, nlen);
        const char *want = rollback ? "POST" : "PATCH";
        if (!span_eq(h->method, want) && !(!rollback && get)) {
            r->allow = rollback ? "POST" : "GET, PATCH";
            reply_error(r, 405, "method not allowed");
            return;
        }
        if (rt == NULL) {
            reply_error(r, 404, "no such route");
            return;
        }
        if (get) {
            reply_json(r, 200, admin_route_json(a->srv, rt));
            return;
        }
        if (!authorized(a, h, r))
            return;
        if (rollback)
            post_rollback(a, rt, r);
        else
            patch_route(a, rt, body, blen, r);
        return;
    }
    reply_error(r, 404, "not found");
}

/* ---- input ------------------------------------------------------------------------------ */

/* Handles every complete request in c->in. */
static void admin_process(struct admin_conn *c)
{
    while (!c->closing && !c->close_after_write && c->in.len > 0) {
        int rs = http1_scan_head(&c->scan, c->in.data, c->in.len, ADMIN_MAX_HEAD);
        if (rs == 0)
            return;
        struct reply r = {0};
        buf_init(&r.body, 0);
        if (rs < 0) {
            reply_error(&r, rs == FICUS_EHEADTOOBIG ? 431 : 400, "bad request");
            admin_send(c, &r, false);
            buf_dispose(&r.body);
            return;
        }
        size_t head_len = c->scan.pos;
        struct http_head *h = malloc(sizeof(*h));
        if (h == NULL || http1_parse_head(h, c->in.data, head_len, true) != 0 || h->chunked) {
            reply_error(&r, 400, h && h->chunked ? "send a content-length" : "bad request");
            admin_send(c, &r, false);
            buf_dispose(&r.body);
            free(h);
            return;
        }
        int64_t cl = h->content_length > 0 ? h->content_length : 0;
        if (cl > ADMIN_MAX_BODY) {
            reply_error(&r, 413, "body over 64 KiB");
            admin_send(c, &r, false);
            buf_dispose(&r.body);
            free(h);
            return;
        }
        if (c->in.len < head_len + (size_t)cl) {
            free(h);
            return; /* the body is still coming; the head is scanned again then */
        }
        dispatch(c->a, h, c->in.data + head_len, (size_t)cl, &r);
        if (h->is_head)
            r.body.len = 0;
        bool keep = h->keep_alive && !c->a->stopping;
        admin_send(c, &r, keep);
        buf_dispose(&r.body);
        free(h);
        buf_consume(&c->in, head_len + (size_t)cl);
        memset(&c->scan, 0, sizeof(c->scan));
    }
}

static void admin_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)h;
    (void)suggested;
    static char slab[16384]; /* the control thread reads one connection at a time */
    *out = uv_buf_init(slab, sizeof(slab));
}

static void on_admin_timer(uv_timer_t *t)
{
    admin_conn_close(t->data);
}

static void on_admin_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    struct admin_conn *c = s->data;
    if (nread < 0) {
        admin_conn_close(c);
        return;
    }
    if (nread == 0 || c->closing)
        return;
    uv_timer_start(&c->timer, on_admin_timer, ADMIN_IDLE_MS, 0);
    if (buf_append(&c->in, ub->base, (size_t)nread) != 0) {
        struct reply r = {0};
        buf_init(&r.body, 0);
        reply_error(&r, 413, "request too large");
        admin_send(c, &r, false);
        buf_dispose(&r.body);
        uv_read_stop(s);
        return;
    }
    /* A partial head is scanned again from its start with the new bytes. */
    memset(&c->scan, 0, sizeof(c->scan));
    admin_process(c);
}

static void on_admin_connection(uv_stream_t *listener, int status)
{
    struct admin *a = listener->data;
    if (status != 0)
        return;
    struct admin_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->a = a;
    uv_tcp_init(listener->loop, &c->tcp);
    uv_timer_init(listener->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    buf_init(&c->in, ADMIN_MAX_HEAD + ADMIN_MAX_BODY);
    c->next = a->conns;
    if (a->conns != NULL)
        a->conns->prev = c;
    a->conns = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        admin_conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_admin_timer, ADMIN_IDLE_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, admin_alloc, on_admin_read);
}

static void on_admin_listener_closed(uv_handle_t *h)
{
    struct admin *a = h->data;
    a->open_handles--;
    admin_maybe_free(a);
}

int admin_start(struct server *srv, uv_loop_t *loop, struct admin **out)
{
    struct admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return UV_ENOMEM;
    a->srv = srv;
    uv_tcp_init(loop, &a->listener);
    a->listener.data = a;
    a->open_handles = 1;
    const struct config_addr *addr = &srv->cfg->admin_addr;
    int rc = uv_tcp_bind(&a->listener, (const struct sockaddr *)&addr->ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->listener, 128, on_admin_connection);
    if (rc != 0) {
        a->stopping = true;
        uv_close((uv_handle_t *)&a->listener, on_admin_listener_closed);
        return rc;
    }
    log_info("admin", "listening address=%s", addr->text);
    *out = a;
    return 0;
}

void admin_stop(struct admin *a)
{
    if (a == NULL || a->stopping)
        return;
    a->stopping = true;
    uv_close((uv_handle_t *)&a->listener, on_admin_listener_closed);
    for (struct admin_conn *c = a->conns; c != NULL; c = c->next)
        admin_conn_close(c);
}
