/* The admin server: the small HTTP/1.1 server of httpserv on the control
 * loop, with the strict head scanner of the data path, bodies of at most
 * 64 KiB with a Content-Length, and JSON answers. */
#include "ficus/admin.h"
#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/discovery.h"
#include "ficus/http1.h"
#include "ficus/httpserv.h"
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
/* Operators' tools and the dashboard send a request in one write on a local
 * network: a head still incomplete after a few seconds is a stuck or hostile
 * client, not a slow one. */
#define ADMIN_HEAD_MS 5000
#define ADMIN_BODY_MS 10000
/* A keep-alive connection without a request: the dashboard polls every 2 s,
 * so its connections stay; anything else is let go (Apache's default is 5 s). */
#define ADMIN_IDLE_MS 10000
#define ADMIN_SEND_MS 10000
/* A refused request's body is read and dropped so that its client, which
 * may send the whole body before reading, gets the 413 rather than a reset:
 * up to 32 MiB (a 20 MiB upload is answered) and 5 s in all (nginx's
 * lingering close gives up after 5 s without a read). */
#define ADMIN_DRAIN_MS    5000
#define ADMIN_DRAIN_BYTES (32 * 1024 * 1024)
/* The dashboard opens up to 6 connections per browser. */
#define ADMIN_MAX_CONNS 256

extern const unsigned char dashboard_html[];
extern const size_t dashboard_html_len;

struct admin {
    struct server *srv;
    struct httpserv *http;
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

/* ---- backend servers (issue 19) ---------------------------------------------------- */

/* Each backend's servers and addresses: state, checks, load and errors. */
static json_t *admin_backends_json(struct admin *a)
{
    return discovery_backends_json(a->srv->discovery);
}

/* ---- routes ----------------------------------------------------------------------------- */

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
               json_pack("{s:o,s:b,s:o,s:o,s:o}", "routes", routes, "persisted",
                         state_persisted(a->srv->state), "listen", listen, "redact_headers",
                         strings_json(cfg->redact_headers, cfg->n_redact_headers), "backends",
                         admin_backends_json(a)));
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

static void on_admin_request(void *ctx, const struct http_head *h, struct span body,
                             struct httpserv_reply *out)
{
    struct reply r = {0};
    buf_init(&r.body, 0);
    dispatch(ctx, h, body.p, body.len, &r);
    out->status = r.status;
    out->ctype = r.ctype;
    if (r.allow != NULL)
        httpserv_reply_header(out, "allow", r.allow);
    buf_dispose(&out->body);
    out->body = r.body; /* the server sends and frees it */
}

int admin_start(struct server *srv, uv_loop_t *loop, struct admin **out)
{
    struct admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return UV_ENOMEM;
    a->srv = srv;
    const struct httpserv_opts o = {
        .name = "admin",
        .headers = "cache-control: no-store\r\nx-content-type-options: nosniff\r\n",
        .max_head = ADMIN_MAX_HEAD,
        .max_body = ADMIN_MAX_BODY,
        .max_conns = ADMIN_MAX_CONNS,
        .idle_ms = ADMIN_IDLE_MS,
        .head_ms = ADMIN_HEAD_MS,
        .body_ms = ADMIN_BODY_MS,
        .send_ms = ADMIN_SEND_MS,
        .drain_ms = ADMIN_DRAIN_MS,
        .drain_bytes = ADMIN_DRAIN_BYTES,
        .on_request = on_admin_request,
        .ctx = a,
    };
    const struct config_addr *addr = &srv->cfg->admin_addr;
    int rc = httpserv_start(loop, (const struct sockaddr *)&addr->ss, &o, &a->http);
    if (rc != 0) {
        free(a);
        return rc;
    }
    log_info("admin", "listening address=%s", addr->text);
    *out = a;
    return 0;
}

void admin_stop(struct admin *a)
{
    if (a == NULL)
        return;
    httpserv_stop(a->http); /* calls no handler after this */
    free(a);
}
