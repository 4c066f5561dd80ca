#include "ficus/readiness.h"
#include "ficus/common.h"
#include "ficus/noise.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What rt's endpoint table is built from. */
static void table_config(const struct route_cfg *rt, struct endpoint_config *out)
{
    out->templates = rt->endpoints;
    out->n_templates = rt->n_endpoints;
    out->max_endpoints = rt->max_endpoints;
    out->window_ms = rt->guard_window_ms;
    /* The warm-up is the time noise is learnt in: without noise learning
     * there is nothing to wait for. */
    out->warmup = rt->noise ? rt->noise_warmup : 0;
}

/* rs's table for rt, made (again) when missing or built from another
 * configuration; NULL when out of memory. Under rs->noise_lock. */
static struct endpoint_table *table_for(struct route_state *rs, const struct route_cfg *rt)
{
    struct endpoint_config cfg;
    table_config(rt, &cfg);
    if (rs->endpoints != NULL && endpoint_table_matches(rs->endpoints, &cfg))
        return rs->endpoints;
    struct endpoint_table *t = endpoint_table_new(&cfg);
    if (t == NULL)
        return rs->endpoints; /* keep counting on the old one */
    endpoint_table_free(rs->endpoints);
    rs->endpoints = t;
    return t;
}

static bool noise_kind(enum diff_kind k)
{
    return k == DIFF_JSON || k == DIFF_ADDED || k == DIFF_REMOVED;
}

void readiness_compare(struct route_state *rs, const struct route_cfg *rt, const char *method,
                       const char *target, const struct diff_result *res,
                       const struct diff_result *twin, const struct readiness_sides *sides,
                       struct readiness_result *out)
{
    struct endpoint_item items[DIFF_MAX_ITEMS];
    size_t n_acks;
    memset(out, 0, sizeof(*out));
    snprintf(out->endpoint, sizeof(out->endpoint), "%s", ENDPOINT_OTHER);

    struct state_acks *snap = state_acks_hold(rs);
    const struct endpoint_ack *acks = state_acks_view(snap, &n_acks);
    uv_mutex_lock(&rs->noise_lock);
    if (rt->noise && rs->noise == NULL)
        rs->noise = noise_new(rt->noise_threshold);
    struct endpoint_table *t = table_for(rs, rt);
    int id = ENDPOINT_NEW;
    if (t != NULL) {
        id = endpoint_classify(t, method, strlen(method), target, strlen(target));
        const char *name = endpoint_name(t, id);
        if (name != NULL)
            snprintf(out->endpoint, sizeof(out->endpoint), "%s", name);
        out->warming = endpoint_warming_up(t, id);
    }
    if (twin != NULL && rs->noise != NULL)
        noise_observe_in(rs->noise, out->endpoint, twin);
    for (size_t i = 0; i < res->n; i++) {
        const struct diff_item *it = &res->items[i];
        const char *path = it->kind == DIFF_BODY ? "" : it->path;
        out->noise[i] = rs->noise != NULL && noise_kind(it->kind) &&
                        noise_is_noise_in(rs->noise, out->endpoint, it->path);
        for (size_t a = 0; a < n_acks && !out->noise[i] && !out->acked[i]; a++)
            out->acked[i] =
                endpoint_ack_matches(&acks[a], out->endpoint, diff_kind_name(it->kind), path);
        out->n_noise += out->noise[i];
        out->n_acked += out->acked[i];
        out->counted = out->counted || (!out->noise[i] && !out->acked[i]);
        items[i] = (struct endpoint_item){it->kind, it->path, out->noise[i]};
    }
    if (t != NULL) {
        const struct endpoint_sample s = {
            .legacy_status = sides->legacy_status,
            .new_status = sides->new_status,
            .legacy_error = sides->legacy_error,
            .new_error = sides->new_error,
            .legacy_ms = sides->legacy_ms,
            .new_ms = sides->new_ms,
            .items = items,
            .n_items = res->n,
        };
        endpoint_record(t, id, &s, acks, n_acks, state_now_ms());
    }
    uv_mutex_unlock(&rs->noise_lock);
    state_acks_drop(snap);
}

bool readiness_wants_twin(struct route_state *rs, const struct route_cfg *rt, struct span method,
                          struct span target)
{
    if (!rt->noise || rt->noise_warmup == 0)
        return false;
    uv_mutex_lock(&rs->noise_lock);
    bool warming = true; /* no table yet: every endpoint is new */
    if (rs->endpoints != NULL) {
        int id = endpoint_find(rs->endpoints, method.p, method.len, target.p, target.len);
        warming = endpoint_warming_up(rs->endpoints, id);
    }
    uv_mutex_unlock(&rs->noise_lock);
    return warming;
}

void readiness_limits(const struct route_cfg *rt, struct endpoint_limits *out)
{
    /* config.c gives every route the guard's defaults, guard or not. */
    out->min_comparisons = (unsigned)rt->guard_min_comparisons;
    out->max_divergence_rate = rt->guard_max_divergence_rate;
    out->max_error_rate = rt->guard_max_error_rate;
}

json_t *readiness_endpoints_json(const struct route_cfg *rt)
{
    struct route_state *rs = rt->state;
    struct endpoint_limits lim;
    readiness_limits(rt, &lim);
    json_t *j = NULL;
    uv_mutex_lock(&rs->noise_lock);
    /* A route never compared gets no table of its own for being looked at. */
    struct endpoint_table *tmp = NULL, *t = rs->endpoints;
    if (t != NULL) {
        t = table_for(rs, rt);
    } else {
        struct endpoint_config cfg;
        table_config(rt, &cfg);
        t = tmp = endpoint_table_new(&cfg);
    }
    if (t != NULL)
        j = endpoint_table_json(t, &lim, state_now_ms());
    uv_mutex_unlock(&rs->noise_lock);
    endpoint_table_free(tmp);
    if (j == NULL)
        return NULL;
    json_object_set_new(j, "route", json_string(rt->name));
    json_object_set_new(j, "limits",
                        json_pack("{s:i,s:f,s:f}", "min_comparisons", (int)lim.min_comparisons,
                                  "max_divergence_rate", lim.max_divergence_rate, "max_error_rate",
                                  lim.max_error_rate));
    return j;
}

/* ---- metrics ------------------------------------------------------------------------ */

struct render {
    struct buf *out;
    const char *route;
    int pass; /* 0: comparisons, 1: divergences */
};

static void render_endpoint(const char *endpoint, unsigned long long comparisons,
                            unsigned long long divergent, void *arg)
{
    struct render *r = arg;
    buf_puts(r->out, r->pass == 0 ? "ficus_endpoint_comparisons_total{route=\""
                                  : "ficus_endpoint_divergences_total{route=\"");
    buf_prom_label(r->out, r->route);
    buf_puts(r->out, "\",endpoint=\"");
    buf_prom_label(r->out, endpoint);
    buf_printf(r->out, "\"} %llu\n", r->pass == 0 ? comparisons : divergent);
}

static void render_route(struct route_state *rs, void *arg)
{
    struct render *r = arg;
    r->route = rs->name;
    uv_mutex_lock(&rs->noise_lock);
    endpoint_table_each(rs->endpoints, render_endpoint, r);
    uv_mutex_unlock(&rs->noise_lock);
}

void readiness_render_metrics(struct state_table *t, struct buf *out)
{
    static const char *const help[2][2] = {
        {"ficus_endpoint_comparisons_total", "Responses compared, by route and endpoint."},
        {"ficus_endpoint_divergences_total",
         "Comparisons with a difference neither noise nor acknowledged, by route and endpoint."},
    };
    for (int pass = 0; pass < 2; pass++) {
        buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", help[pass][0], help[pass][1],
                   help[pass][0]);
        struct render r = {out, NULL, pass};
        state_each(t, render_route, &r);
    }
}

/* ---- what a record shows ----------------------------------------------------------- */

void readiness_secrets(struct redact_secrets *secrets, const struct config *cfg, const char *head,
                       size_t len, struct http_head *scratch)
{
    if (cfg->n_redact_headers == 0 || head == NULL || len == 0)
        return;
    if (http1_parse_head(scratch, head, len, true) != 0) {
        secrets->overflow = true;
        return;
    }
    for (size_t i = 0; i < scratch->n_headers; i++) {
        const struct http_header *h = &scratch->headers[i];
        if (config_is_redacted(cfg, h->name.p, h->name.len) &&
            redact_secrets_add(secrets, h->name.p, h->name.len, h->value.p, h->value.len) != 0)
            return; /* overflow is set */
    }
}

static int member_text(struct buf *out, const char *name, const char *v, const struct redact *r)
{
    int rc = buf_puts(out, name);
    if (rc != 0 || !redact_active(r))
        return rc != 0 ? rc : buf_json_text(out, v, strlen(v));
    struct buf tmp;
    buf_init(&tmp, 0);
    rc = redact_mask(&tmp, r, v, strlen(v));
    if (rc == 0)
        rc = buf_json_text(out, tmp.data != NULL ? tmp.data : "", tmp.len);
    buf_dispose(&tmp);
    return rc;
}

int readiness_item_json(struct buf *out, const struct config *cfg, const struct redact *r,
                        const struct diff_item *it, bool acked)
{
    bool hidden = it->kind == DIFF_HEADER && config_is_redacted(cfg, it->path, strlen(it->path));
    bool in_body = it->kind == DIFF_JSON || it->kind == DIFF_ADDED || it->kind == DIFF_REMOVED;
    int rc = member_text(out, "{\"kind\":", diff_kind_name(it->kind), NULL);
    if (rc == 0)
        rc = member_text(out, ",\"path\":", it->path, r);
    const struct jv *sides[2] = {it->legacy, it->new_};
    for (int i = 0; i < 2 && rc == 0; i++) {
        rc = buf_puts(out, i == 0 ? ",\"legacy\":" : ",\"new\":");
        if (rc != 0)
            break;
        if (hidden)
            rc = buf_puts(out, "\"" REDACT_TEXT "\"");
        else if (sides[i] == NULL)
            rc = buf_puts(out, "null");
        else if (!redact_active(r))
            rc = jv_write(out, sides[i], 17);
        else if (it->kind == DIFF_BODY)
            rc = redact_write_fragment(out, r, sides[i]);
        else
            rc = redact_write_value(out, r, in_body ? it->path : NULL, sides[i]);
    }
    if (rc == 0 && acked)
        rc = buf_puts(out, ",\"acknowledged\":true");
    return rc != 0 ? rc : buf_puts(out, "}");
}

bool readiness_is_json(const struct http_head *h)
{
    for (size_t i = 0; h != NULL && i < h->n_headers; i++) {
        const struct http_header *x = &h->headers[i];
        if (!span_ieq(x->name, "content-type"))
            continue;
        const char *p = x->value.p, *e = p + x->value.len, *semi = memchr(p, ';', x->value.len);
        if (semi != NULL)
            e = semi;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        struct span t = {p, (size_t)(e - p)};
        return span_ieq(t, "application/json") ||
               (t.len > 5 && strncasecmp(t.p + t.len - 5, "+json", 5) == 0);
    }
    return false;
}
