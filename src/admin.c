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
#include "ficus/readiness.h"
#include "ficus/state.h"
#include "ficus/store.h"
#include "ficus/worker.h"

#include <errno.h>
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

/* ---- the live state's store (issue 13): what a route's JSON and the routes'
 * top level add --------------------------------------------------------------------------- */

static json_t *acks_json(const struct route_state *rs)
{
    size_t n;
    const struct fleet_ack *a = state_acks(rs, &n);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s,s:s,s:s}", "id", a[i].id, "path", a[i].path, "kind", a[i].kind);
        json_object_set_new(o, "endpoint",
                            a[i].endpoint[0] ? json_string(a[i].endpoint) : json_null());
        json_object_set_new(o, "note", json_string(a[i].note));
        if (a[i].at > 0) {
            char t[FLEET_TIME_LEN + 1];
            fleet_time_format(a[i].at, t);
            json_object_set_new(o, "at", json_string(t));
        } else {
            json_object_set_new(o, "at", json_null());
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

/* The acknowledged differences and the ramp's schedule of a route. */
static void admin_route_store_json(const struct route_state *rs, json_t *j)
{
    json_object_set_new(j, "acknowledgements", acks_json(rs));
    json_t *ramp = json_object_get(j, "ramp");
    if (json_is_object(ramp)) {
        char t[FLEET_TIME_LEN + 1];
        if (rs->ramp_next_at > 0 && !rs->ramp_stopped)
            fleet_time_format(rs->ramp_next_at, t);
        json_object_set_new(ramp, "next_at",
                            rs->ramp_next_at > 0 && !rs->ramp_stopped ? json_string(t)
                                                                      : json_null());
    }
}

/* shadow.correlate's map of the route: its bounds and counts, or null. */
static json_t *admin_correlation_json(const struct route_cfg *rt)
{
    struct correlate_stats cs;
    if (!rt->shadow_correlate.enabled || rt->state->correlate == NULL)
        return json_null();
    correlate_stats(rt->state->correlate, (int64_t)(io_now_us() / 1000), &cs);
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "size", (json_int_t)cs.size,
                     "max_entries", (json_int_t)cs.max_entries, "ttl_ms", (json_int_t)cs.ttl_ms,
                     "learnt", (json_int_t)cs.learnt, "rewritten", (json_int_t)cs.rewritten,
                     "matched", (json_int_t)cs.matched, "evicted", (json_int_t)cs.evicted,
                     "expired", (json_int_t)cs.expired);
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
    json_object_set_new(j, "correlation", admin_correlation_json(rt));
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
    admin_route_store_json(rs, j);

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
    json_object_set_new(j, "acknowledged", json_integer((json_int_t)t.acknowledged));
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
               json_pack("{s:o,s:b,s:o,s:o,s:o,s:o}", "routes", routes, "persisted",
                         store_persists(a->srv->store), "listen", listen, "redact_headers",
                         strings_json(cfg->redact_headers, cfg->n_redact_headers), "state_store",
                         store_status_json(a->srv->store, true), "backends",
                         admin_backends_json(a)));
}

/* ---- changes of the live state (issue 13): answered once the store took them ----------- */

enum admin_op_kind { OP_PATCH, OP_ROLLBACK, OP_ACK_ADD, OP_ACK_DELETE };

/* A change on its way through the state store; its answer is deferred. */
struct admin_op {
    struct server *srv;
    enum admin_op_kind kind;
    char route[128];
    struct httpserv_later *later;
    json_t *ack;  /* the acknowledgement added or removed, for the answer */
    bool existed; /* OP_ACK_ADD: it was there already */
};

static void reply_to_httpserv(struct reply *r, struct httpserv_reply *out)
{
    out->status = r->status;
    out->ctype = r->ctype;
    if (r->allow != NULL)
        httpserv_reply_header(out, "allow", r->allow);
    buf_dispose(&out->body);
    out->body = r->body; /* the server sends and frees it */
    buf_init(&r->body, 0);
}

/* The store's answer to a change: the admin answer. */
static void on_op_done(void *ctx, int result, const char *why)
{
    struct admin_op *op = ctx;
    struct reply r = {0};
    buf_init(&r.body, 0);
    const struct route_cfg *rt = find_route(op->srv, op->route, strlen(op->route));
    if (rt == NULL) {
        reply_error(&r, 404, "no such route (the configuration was reloaded meanwhile)");
    } else if (result == 0) {
        struct route_state *rs = rt->state;
        if (op->kind == OP_PATCH)
            log_info("admin", "route changed route=%s new_percent=%g shadow_percent=%g", rt->name,
                     atomic_load(&rs->new_percent), atomic_load(&rs->shadow_percent));
        if (op->kind == OP_ACK_ADD || op->kind == OP_ACK_DELETE) {
            json_t *j = json_pack("{s:s,s:O,s:o}", "route", rt->name, "acknowledgement", op->ack,
                                  "acknowledgements", acks_json(rs));
            reply_json(&r, op->kind == OP_ACK_ADD && !op->existed ? 201 : 200, j);
        } else {
            json_t *out = admin_route_json(op->srv, rt);
            json_object_set_new(out, "persisted", json_boolean(store_persists(op->srv->store)));
            reply_json(&r, 200, out);
        }
    } else if (result == FICUS_ECONFLICT) {
        reply_json(&r, 409,
                   json_pack("{s:s,s:o}", "error", why, "route", admin_route_json(op->srv, rt)));
    } else if (result == FICUS_EUNAVAILABLE) {
        reply_error(&r, 503, why[0] ? why : "the state store is unreachable; nothing was changed");
    } else if (result == -EINVAL) {
        reply_error(&r, 400, why[0] ? why : "the change is not valid");
    } else {
        reply_error(&r, 500, why[0] ? why : ficus_strerror(result));
    }
    reply_to_httpserv(&r, httpserv_later_reply(op->later));
    buf_dispose(&r.body);
    httpserv_later_send(op->later);
    json_decref(op->ack);
    free(op);
}

/* Starts a change of rt whose answer comes from on_op_done. Returns the
 * operation, or NULL with an answer in r (out of memory). */
static struct admin_op *op_begin(struct admin *a, const struct route_cfg *rt,
                                 enum admin_op_kind kind, struct httpserv_reply *out,
                                 struct reply *r)
{
    struct admin_op *op = calloc(1, sizeof(*op));
    if (op != NULL)
        op->later = httpserv_defer(out);
    if (op == NULL || op->later == NULL) {
        free(op);
        reply_error(r, 500, "out of memory");
        return NULL;
    }
    op->srv = a->srv;
    op->kind = kind;
    snprintf(op->route, sizeof(op->route), "%s", rt->name);
    return op;
}

static void patch_route(struct admin *a, const struct route_cfg *rt, const char *body, size_t len,
                        struct httpserv_reply *out, struct reply *r)
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
    struct admin_op *op = op_begin(a, rt, OP_PATCH, out, r);
    if (op == NULL)
        return;
    struct fleet_change ch;
    fleet_change_init(&ch, FLEET_CHANGE_PERCENT);
    ch.new_percent = np;
    ch.shadow_percent = sp;
    state_change(a->srv->state, rs, &ch, STATE_SRC_ADMIN, on_op_done, op);
}

static void post_rollback(struct admin *a, const struct route_cfg *rt, struct httpserv_reply *out,
                          struct reply *r)
{
    struct admin_op *op = op_begin(a, rt, OP_ROLLBACK, out, r);
    if (op == NULL)
        return;
    struct fleet_change ch;
    fleet_change_init(&ch, FLEET_CHANGE_ROLLBACK);
    ch.rollback = FLEET_ROLLBACK_MANUAL;
    ch.detail = "rolled back through the admin API";
    state_change(a->srv->state, rt->state, &ch, STATE_SRC_ADMIN, on_op_done, op);
}

/* ---- acknowledged differences (issue 14's API, stored with the live state) --------------- */

static json_t *ack_entry_json(const struct fleet_ack *k)
{
    json_t *o = json_pack("{s:s,s:s,s:s}", "id", k->id, "path", k->path, "kind", k->kind);
    json_object_set_new(o, "endpoint",
                        k->endpoint && k->endpoint[0] ? json_string(k->endpoint) : json_null());
    json_object_set_new(o, "note", json_string(k->note ? k->note : ""));
    char t[FLEET_TIME_LEN + 1];
    fleet_time_format(k->at, t);
    json_object_set_new(o, "at", k->at > 0 ? json_string(t) : json_null());
    return o;
}

/* Reads a text field of an acknowledgement into *out ("" when absent and
 * optional). Returns false with the reply set when it is invalid. */
static bool ack_text(json_t *body, const char *name, bool required, const char **out,
                     struct reply *r)
{
    json_t *v = json_object_get(body, name);
    char msg[160];
    *out = "";
    if (v == NULL || (json_is_null(v) && !required)) {
        if (!required)
            return true;
        snprintf(msg, sizeof(msg), "%s is required", name);
        reply_error(r, 400, msg);
        return false;
    }
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    size_t n = s != NULL ? json_string_length(v) : 0;
    bool ok = s != NULL && n <= FLEET_ACK_TEXT_MAX && (!required || n > 0) && strlen(s) == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)s[i] >= 0x20 && s[i] != 0x7f;
    if (!ok) {
        snprintf(msg, sizeof(msg),
                 "%s must be a%s string of at most %d bytes without control characters", name,
                 required ? " non-empty" : "", FLEET_ACK_TEXT_MAX);
        reply_error(r, 400, msg);
        return false;
    }
    *out = s;
    return true;
}

static void post_ack(struct admin *a, const struct route_cfg *rt, const char *body, size_t len,
                     struct httpserv_reply *out, struct reply *r)
{
    static const char *const keys[] = {"path", "kind", "endpoint", "note", NULL};
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        reply_error(r, 400,
                    "body must be a JSON object like {\"path\": \"/id\", \"kind\": "
                    "\"json\", \"endpoint\": \"GET /posts/{id}\", \"note\": \"...\"}");
        return;
    }
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v)
    {
        bool known = false;
        for (size_t i = 0; keys[i] != NULL; i++)
            known = known || strcmp(keys[i], key) == 0;
        if (!known) {
            json_decref(j);
            reply_error(r, 400,
                        "unknown key: an acknowledgement has path, kind, endpoint and note");
            return;
        }
    }
    struct fleet_ack k = {0};
    if (!ack_text(j, "path", true, &k.path, r) || !ack_text(j, "kind", true, &k.kind, r) ||
        !ack_text(j, "endpoint", false, &k.endpoint, r) ||
        !ack_text(j, "note", false, &k.note, r)) {
        json_decref(j);
        return; /* the reply says why */
    }
    if (!fleet_ack_kind_valid(k.kind)) {
        json_decref(j);
        reply_error(r, 400,
                    "kind must be one of status, header, json, added, removed, body, error");
        return;
    }
    char id[FLEET_ACK_ID_MAX + 1];
    fleet_ack_id(k.path, k.kind, k.endpoint, id);
    k.id = id;
    k.at = state_now_ms();
    size_t n;
    const struct fleet_ack *cur = state_acks(rt->state, &n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(cur[i].id, id) == 0) {
            /* Acknowledged already: the same entry. */
            json_t *o =
                json_pack("{s:s,s:o,s:o}", "route", rt->name, "acknowledgement",
                          ack_entry_json(&cur[i]), "acknowledgements", acks_json(rt->state));
            json_decref(j);
            reply_json(r, 200, o);
            return;
        }
    }
    if (n >= FLEET_ACKS_MAX) {
        json_decref(j);
        reply_error(r, 400, "a route holds at most 256 acknowledgements: remove one first");
        return;
    }
    struct fleet_ack *next = calloc(n + 1, sizeof(*next));
    struct admin_op *op = next != NULL ? op_begin(a, rt, OP_ACK_ADD, out, r) : NULL;
    if (op == NULL) {
        free(next);
        json_decref(j);
        if (r->status == 0)
            reply_error(r, 500, "out of memory");
        return;
    }
    if (n > 0)
        memcpy(next, cur, n * sizeof(*next));
    next[n] = k;
    op->ack = ack_entry_json(&k);
    /* Copied by the store before this returns. */
    state_acks_replace(a->srv->state, rt->state, next, n + 1, STATE_SRC_ADMIN, on_op_done, op);
    free(next);
    json_decref(j);
}

static void delete_ack(struct admin *a, const struct route_cfg *rt, struct span id,
                       struct httpserv_reply *out, struct reply *r)
{
    size_t n;
    const struct fleet_ack *cur = state_acks(rt->state, &n);
    size_t at = n;
    for (size_t i = 0; i < n; i++) {
        if (span_eq(id, cur[i].id))
            at = i;
    }
    if (at == n) {
        reply_error(r, 404, "no such acknowledgement");
        return;
    }
    struct fleet_ack *next = n > 1 ? calloc(n - 1, sizeof(*next)) : NULL;
    if (n > 1 && next == NULL) {
        reply_error(r, 500, "out of memory");
        return;
    }
    for (size_t i = 0, k = 0; i < n; i++) {
        if (i != at)
            next[k++] = cur[i];
    }
    json_t *gone = ack_entry_json(&cur[at]);
    struct admin_op *op = op_begin(a, rt, OP_ACK_DELETE, out, r);
    if (op == NULL) {
        json_decref(gone);
        free(next);
        return;
    }
    op->ack = gone;
    state_acks_replace(a->srv->state, rt->state, next, n - 1, STATE_SRC_ADMIN, on_op_done, op);
    free(next);
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

/* /api/v1/routes/{name}/acknowledgements[/{id}]: true when sub is one of
 * them (and r or the deferral answers). */
static bool admin_route_sub(struct admin *a, const struct http_head *h, struct span name,
                            struct span sub, const char *body, size_t blen,
                            struct httpserv_reply *out, struct reply *r)
{
    static const char acks[] = "/acknowledgements";
    const size_t al = sizeof(acks) - 1;
    if (sub.len < al || memcmp(sub.p, acks, al) != 0 || (sub.len > al && sub.p[al] != '/'))
        return false;
    struct span id = {sub.p + al + 1, sub.len > al ? sub.len - al - 1 : 0};
    bool one = sub.len > al;
    bool get = span_eq(h->method, "GET") || span_eq(h->method, "HEAD");
    const char *want = one ? "DELETE" : "POST";
    if (!get && !span_eq(h->method, want)) {
        r->allow = one ? "GET, DELETE" : "GET, POST";
        reply_error(r, 405, "method not allowed");
        return true;
    }
    const struct route_cfg *rt = find_route(a->srv, name.p, name.len);
    if (rt == NULL) {
        reply_error(r, 404, "no such route");
        return true;
    }
    if (one && (id.len == 0 || id.len > FLEET_ACK_ID_MAX || memchr(id.p, '/', id.len) != NULL)) {
        reply_error(r, 404, "no such acknowledgement");
        return true;
    }
    if (get) {
        if (!one) {
            reply_json(r, 200,
                       json_pack("{s:s,s:o}", "route", rt->name, "acknowledgements",
                                 acks_json(rt->state)));
            return true;
        }
        size_t n;
        const struct fleet_ack *cur = state_acks(rt->state, &n);
        for (size_t i = 0; i < n; i++) {
            if (span_eq(id, cur[i].id)) {
                reply_json(r, 200, ack_entry_json(&cur[i]));
                return true;
            }
        }
        reply_error(r, 404, "no such acknowledgement");
        return true;
    }
    if (!authorized(a, h, r))
        return true;
    if (one)
        delete_ack(a, rt, id, out, r);
    else
        post_ack(a, rt, body, blen, out, r);
    return true;
}

/* GET /api/v1/routes/{name}/endpoints: per-endpoint readiness (readiness.h). */
static void get_endpoints(struct admin *a, const struct http_head *h, struct span name,
                          struct reply *r)
{
    if (!span_eq(h->method, "GET") && !span_eq(h->method, "HEAD")) {
        r->allow = "GET, HEAD";
        reply_error(r, 405, "method not allowed");
        return;
    }
    const struct route_cfg *rt = find_route(a->srv, name.p, name.len);
    json_t *j = rt != NULL ? readiness_endpoints_json(rt) : NULL;
    if (rt == NULL)
        reply_error(r, 404, "no such route");
    else if (j == NULL)
        reply_error(r, 500, "out of memory");
    else
        reply_json(r, 200, j);
}

static void dispatch(struct admin *a, const struct http_head *h, const char *body, size_t blen,
                     struct httpserv_reply *out, struct reply *r)
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
            /* A store outage never makes an instance unready (it would take the
             * whole fleet out of its load balancer): shown, not counted. */
            json_object_set_new(j, "state_store", store_status_json(a->srv->store, false));
            reply_json(r, ready ? 200 : 503, j);
        } else if (span_eq(p, "/metrics")) {
            r->status = 200;
            r->ctype = "text/plain; version=0.0.4; charset=utf-8";
            metrics_render(a->srv, &r->body);
            store_render_metrics(a->srv->store, &r->body);
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
            struct span sub = {slash, (size_t)(name + nlen - slash)};
            if (span_eq(sub, "/endpoints")) {
                get_endpoints(a, h, (struct span){name, (size_t)(slash - name)}, r);
                return;
            }
            if (admin_route_sub(a, h, (struct span){name, (size_t)(slash - name)}, sub, body, blen,
                                out, r))
                return;
            if (!span_eq(sub, "/rollback")) {
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
            post_rollback(a, rt, out, r);
        else
            patch_route(a, rt, body, blen, out, r);
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
    dispatch(ctx, h, body.p, body.len, out, &r);
    reply_to_httpserv(&r, out); /* ignored when the answer was deferred */
    buf_dispose(&r.body);
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
