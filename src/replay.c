/* The pure half of replay: the request member of a record, reading records
 * back, filters, the verdict on a replayed pair, the summary. */
#include "ficus/replay.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/etcdv3.h"
#include "ficus/http1.h"
#include "ficus/redact.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- writing --------------------------------------------------------------------------------- */

/* Headers a record leaves out: hop-by-hop and framing ones (replay frames the
 * body itself) and the shadow's own mark. */
static bool header_left_out(struct span name)
{
    static const char *const names[] = {
        "connection", "keep-alive",     "proxy-connection", "te",    "trailer", "transfer-encoding",
        "upgrade",    "content-length", "x-ficus-shadow",   "expect"};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (span_ieq(name, names[i]))
            return true;
    }
    return false;
}

static int put_member(struct buf *out, const char *name, const char *value, size_t n)
{
    int rc = buf_printf(out, ",\"%s\":", name);
    return rc != 0 ? rc : buf_json_text(out, value, n);
}

static size_t count_marks(const char *p, size_t n)
{
    size_t count = 0, ml = strlen(REDACT_TEXT);
    for (size_t i = 0; i + ml <= n; i++) {
        if (memcmp(p + i, REDACT_TEXT, ml) == 0)
            count++;
    }
    return count;
}

/* The body as a record may show it: with redact_json patterns or the values
 * of the request's redacted headers to hide, redact_excerpt's text; *redacted
 * says whether it hid anything (then that text is what the record keeps),
 * else the body is kept as it is. Returns 0 or a buf error. */
static int mask_body(struct buf *out, const struct config *cfg, const struct http_head *h,
                     const char *body, size_t body_len, size_t n, bool *redacted)
{
    struct redact_secrets sec;
    redact_secrets_init(&sec);
    bool is_json = false;
    for (size_t i = 0; i < h->n_headers; i++) {
        const struct http_header *hd = &h->headers[i];
        if (config_is_redacted(cfg, hd->name.p, hd->name.len))
            redact_secrets_add(&sec, hd->name.p, hd->name.len, hd->value.p, hd->value.len);
        if (span_ieq(hd->name, "content-type"))
            is_json = memmem(hd->value.p, hd->value.len, "json", 4) != NULL;
    }
    struct redact rd = {cfg->redact_json, cfg->n_redact_json, &sec};
    int rc = 0;
    if (redact_active(&rd)) {
        rc = redact_excerpt(out, &rd, body, body_len, n, is_json);
        *redacted = rc == 0 && count_marks(out->data, out->len) > count_marks(body, n);
    }
    redact_secrets_dispose(&sec);
    return rc;
}

int replay_request_json(struct buf *out, const struct config *cfg, const char *head,
                        size_t head_len, const char *body, size_t body_len)
{
    struct http_head *h = malloc(sizeof(*h));
    if (h == NULL)
        return FICUS_ENOMEM;
    if (http1_parse_head(h, head, head_len, true) != 0) {
        free(h);
        return FICUS_EBADREQ;
    }
    size_t mark = out->len;
    int rc = buf_printf(out, "\"request\":{\"v\":%d", REPLAY_VERSION);
    if (rc == 0)
        rc = put_member(out, "method", h->method.p, h->method.len);
    if (rc == 0)
        rc = put_member(out, "target", h->target.p, h->target.len);
    if (rc == 0)
        rc = buf_puts(out, ",\"headers\":[");
    bool first = true;
    for (size_t i = 0; i < h->n_headers && rc == 0; i++) {
        const struct http_header *hd = &h->headers[i];
        if (header_left_out(hd->name))
            continue;
        rc = buf_puts(out, first ? "[" : ",[");
        first = false;
        if (rc == 0)
            rc = buf_json_text(out, hd->name.p, hd->name.len);
        if (rc == 0)
            rc = buf_puts(out, ",");
        if (rc == 0 && config_is_redacted(cfg, hd->name.p, hd->name.len))
            rc = buf_puts(out, "\"" REPLAY_REDACTED "\"");
        else if (rc == 0)
            rc = buf_json_text(out, hd->value.p, hd->value.len);
        if (rc == 0)
            rc = buf_puts(out, "]");
    }
    if (rc == 0)
        rc = buf_puts(out, "],\"body\":");
    size_t n =
        body_len < cfg->divlog_request_body_bytes ? body_len : cfg->divlog_request_body_bytes;
    struct buf masked = {0};
    bool redacted = false;
    if (rc == 0 && n > 0)
        rc = mask_body(&masked, cfg, h, body, body_len, n, &redacted);
    const char *bp = redacted ? masked.data : body;
    size_t bn = redacted ? masked.len : n;
    bool b64 = false;
    if (rc == 0) {
        rc = buf_json_string(out, bn ? bp : "", bn);
        if (rc == -EINVAL) { /* not UTF-8 (or cut inside a character): base64 */
            b64 = true;
            rc = buf_puts(out, "\"");
            if (rc == 0)
                rc = etcdv3_b64_append(out, bp, bn);
            if (rc == 0)
                rc = buf_puts(out, "\"");
        }
    }
    if (rc == 0 && b64)
        rc = buf_puts(out, ",\"body_encoding\":\"base64\"");
    if (rc == 0)
        rc = buf_printf(out, ",\"body_bytes\":%zu", body_len);
    if (rc == 0 && n < body_len)
        rc = buf_puts(out, ",\"body_truncated\":true");
    if (rc == 0 && redacted)
        rc = buf_puts(out, ",\"body_redacted\":true");
    buf_dispose(&masked);
    if (rc == 0)
        rc = buf_puts(out, "}");
    if (rc != 0)
        out->len = mark;
    free(h);
    return rc;
}

/* ---- reading --------------------------------------------------------------------------------- */

void replay_record_init(struct replay_record *r)
{
    memset(r, 0, sizeof(*r));
    arena_init(&r->arena);
    r->ts_ms = INT64_MIN;
}

void replay_record_dispose(struct replay_record *r)
{
    arena_dispose(&r->arena);
    replay_record_init(r);
}

static const char *str_member(const struct jv *o, const char *key)
{
    const struct jv *v = jv_get(o, key, strlen(key));
    return v != NULL && v->type == JV_STRING ? v->u.s : NULL;
}

static int foreign(char *why, size_t size, const char *fmt, const char *arg)
{
    snprintf(why, size, fmt, arg);
    return REPLAY_FOREIGN;
}

static int kind_of(const char *name)
{
    for (int k = 0; k < DIFF_KIND_N; k++) {
        if (strcmp(diff_kind_name((enum diff_kind)k), name) == 0)
            return k;
    }
    return -1;
}

int replay_record_from_jv(struct replay_record *r, const struct jv *v, char *why, size_t why_size)
{
    if (v == NULL || v->type != JV_OBJECT)
        return foreign(why, why_size, "%s", "not a divergence record (not an object)");
    static const char *const required[] = {"id", "route", "method", "target"};
    for (size_t i = 0; i < ARRAY_SIZE(required); i++) {
        if (str_member(v, required[i]) == NULL)
            return foreign(why, why_size, "not a divergence record (no \"%s\")", required[i]);
    }
    const struct jv *req = jv_get(v, "request", 7);
    if (req == NULL || req->type == JV_NULL)
        return foreign(why, why_size, "%s",
                       "no \"request\" member (recorded by a ficus without replay)");
    const struct jv *ver = jv_get(req, "v", 1);
    int64_t version = 0;
    if (req->type != JV_OBJECT || ver == NULL || ver->type != JV_INT ||
        jv_int64(ver, &version) != 0 || version != REPLAY_VERSION) {
        char n[32] = "?";
        if (ver != NULL && jv_is_number(ver))
            snprintf(n, sizeof(n), "%.20s", ver->u.num);
        return foreign(why, why_size, "request of another version (v %s; this ficus reads 1)", n);
    }
    r->id = str_member(v, "id");
    r->route = str_member(v, "route");
    r->ts = str_member(v, "ts");
    if (r->ts == NULL || replay_parse_time(r->ts, &r->ts_ms) != 0)
        r->ts_ms = INT64_MIN;
    r->endpoint = str_member(v, "endpoint");
    r->method = str_member(req, "method");
    r->target = str_member(req, "target");
    if (r->method == NULL || r->target == NULL || r->method[0] == '\0' || r->target[0] == '\0')
        return foreign(why, why_size, "%s", "request without a method or a target");
    const struct jv *hs = jv_get(req, "headers", 7);
    if (hs == NULL || hs->type != JV_ARRAY || hs->n > REPLAY_HEADERS_MAX)
        return foreign(why, why_size, "%s", "request headers missing or not a list");
    r->headers = arena_alloc(&r->arena, sizeof(*r->headers) * (hs->n ? hs->n : 1));
    if (r->headers == NULL)
        return foreign(why, why_size, "%s", "out of memory");
    for (size_t i = 0; i < hs->n; i++) {
        const struct jv *p = &hs->u.items[i];
        if (p->type != JV_ARRAY || p->n != 2 || p->u.items[0].type != JV_STRING ||
            p->u.items[1].type != JV_STRING || p->u.items[0].n == 0)
            return foreign(why, why_size, "%s", "a request header is not a [name, value] pair");
        struct replay_header *h = &r->headers[r->n_headers++];
        h->name = p->u.items[0].u.s;
        h->value = p->u.items[1].u.s;
        h->value_len = p->u.items[1].n;
        h->redacted = strcmp(h->value, REPLAY_REDACTED) == 0;
    }
    const struct jv *body = jv_get(req, "body", 4);
    const char *enc = str_member(req, "body_encoding");
    if (body != NULL && body->type != JV_STRING)
        return foreign(why, why_size, "%s", "request body is not a string");
    if (body != NULL && enc != NULL && strcmp(enc, "base64") == 0) {
        char *dec = arena_alloc_bytes(&r->arena, body->n / 4 * 3 + 1);
        if (dec == NULL)
            return foreign(why, why_size, "%s", "out of memory");
        if (etcdv3_b64_decode(body->u.s, body->n, dec, &r->body_len) != 0)
            return foreign(why, why_size, "%s", "request body is not valid base64");
        r->body = dec;
    } else if (enc != NULL) {
        return foreign(why, why_size, "unknown body_encoding \"%s\"", enc);
    } else if (body != NULL) {
        r->body = body->u.s;
        r->body_len = body->n;
    }
    const struct jv *t = jv_get(req, "body_truncated", 14);
    r->body_truncated = t != NULL && t->type == JV_TRUE;
    const struct jv *red = jv_get(req, "body_redacted", 13);
    r->body_redacted = red != NULL && red->type == JV_TRUE;
    const struct jv *diffs = jv_get(v, "diffs", 5);
    for (size_t i = 0; diffs != NULL && diffs->type == JV_ARRAY && i < diffs->n; i++) {
        const char *k = str_member(&diffs->u.items[i], "kind");
        int kind = k != NULL ? kind_of(k) : -1;
        if (kind >= 0)
            r->kinds |= 1u << kind;
    }
    const struct jv *noise = jv_get(v, "noise", 5);
    if (noise != NULL && noise->type == JV_ARRAY && noise->n > 0) {
        r->noise = arena_alloc(&r->arena, sizeof(*r->noise) * noise->n);
        if (r->noise == NULL)
            return foreign(why, why_size, "%s", "out of memory");
        for (size_t i = 0; i < noise->n; i++) {
            if (noise->u.items[i].type == JV_STRING)
                r->noise[r->n_noise++] = noise->u.items[i].u.s;
        }
    }
    return REPLAY_PARSED;
}

int replay_record_parse(struct replay_record *r, const char *line, size_t len, char *why,
                        size_t why_size)
{
    replay_record_dispose(r);
    if (len > REPLAY_LINE_MAX) {
        snprintf(why, why_size, "line longer than %d bytes", REPLAY_LINE_MAX);
        return REPLAY_INVALID;
    }
    const struct jv *v = NULL;
    int rc = jdoc_parse(&r->arena, line, len, &v);
    if (rc != 0) {
        snprintf(why, why_size, "%s",
                 rc == FICUS_ENOMEM ? "out of memory" : "not JSON (a truncated or corrupt line)");
        return REPLAY_INVALID;
    }
    return replay_record_from_jv(r, v, why, why_size);
}

/* ---- time, endpoint names, filters ----------------------------------------------------------- */

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

int replay_parse_time(const char *s, int64_t *ms)
{
    int y, mo, d, h, mi, se;
    if (strlen(s) < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
        s[7] != '-' || !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
        !digits(s + 17, 2, &se))
        return -EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60)
        return -EINVAL;
    const char *p = s + 19;
    int64_t frac = 0;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (isdigit((unsigned char)*p)) {
            if (nd < 3)
                frac = frac * 10 + (*p - '0');
            nd++;
            p++;
        }
        if (nd == 0)
            return -EINVAL;
        for (; nd < 3; nd++)
            frac *= 10;
    }
    int64_t off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return -EINVAL;
        off = (int64_t)(oh * 60 + om) * 60 * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return -EINVAL;
    }
    if (*p != '\0')
        return -EINVAL;
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - off) * 1000 + frac;
    return 0;
}

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

/* Digits, a UUID (8-4-4-4-12 hex) or 16+ hex digits. */
static bool looks_like_id(const char *s, size_t n)
{
    if (n == 0)
        return false;
    bool all_digits = true;
    for (size_t i = 0; i < n; i++)
        all_digits = all_digits && isdigit((unsigned char)s[i]);
    if (all_digits)
        return true;
    if (n == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-')
        return is_hex(s, 8) && is_hex(s + 9, 4) && is_hex(s + 14, 4) && is_hex(s + 19, 4) &&
               is_hex(s + 24, 12);
    return n >= 16 && is_hex(s, n);
}

void replay_endpoint_name(const char *method, const char *target, char *out, size_t size)
{
    if (size == 0)
        return;
    struct buf b;
    buf_init(&b, 0);
    out[0] = '\0';
    const char *p = target;
    /* Absolute form: the path starts after the authority. */
    const char *scheme = strstr(target, "://");
    if (scheme != NULL && scheme < target + strcspn(target, "/?")) {
        p = strchr(scheme + 3, '/');
        if (p == NULL)
            p = "/";
    }
    size_t plen = strcspn(p, "?#");
    int rc = buf_puts(&b, method);
    if (rc == 0)
        rc = buf_puts(&b, " ");
    size_t i = 0;
    while (rc == 0 && i < plen && b.len < size) {
        if (p[i] == '/') {
            rc = buf_append(&b, "/", 1);
            i++;
            continue;
        }
        size_t n = strcspn(p + i, "/?#");
        if (i + n > plen)
            n = plen - i;
        rc = looks_like_id(p + i, n) ? buf_puts(&b, "{id}") : buf_append(&b, p + i, n);
        i += n;
    }
    size_t n = b.len < size - 1 ? b.len : size - 1;
    if (n > 0)
        memcpy(out, b.data, n);
    out[n] = '\0';
    buf_dispose(&b);
}

void replay_filter_init(struct replay_filter *f)
{
    memset(f, 0, sizeof(*f));
    f->since_ms = INT64_MIN;
    f->until_ms = INT64_MAX;
}

static bool in_list(const char **list, size_t n, const char *s)
{
    if (n == 0)
        return true;
    for (size_t i = 0; s != NULL && i < n; i++) {
        if (strcmp(list[i], s) == 0)
            return true;
    }
    return false;
}

bool replay_filter_match(const struct replay_filter *f, const struct replay_record *r,
                         const char *endpoint)
{
    if (!in_list(f->routes, f->n_routes, r->route) || !in_list(f->ids, f->n_ids, r->id) ||
        !in_list(f->endpoints, f->n_endpoints, endpoint))
        return false;
    if (f->kinds != 0 && (f->kinds & r->kinds) == 0)
        return false;
    if (f->since_ms != INT64_MIN || f->until_ms != INT64_MAX) {
        if (r->ts_ms == INT64_MIN || r->ts_ms < f->since_ms || r->ts_ms > f->until_ms)
            return false;
    }
    return true;
}

/* ---- comparing ------------------------------------------------------------------------------- */

const char *replay_outcome_name(enum replay_outcome o)
{
    static const char *const names[REPLAY_OUTCOME_N] = {"equal", "diverging", "error", "skipped"};
    return o < REPLAY_OUTCOME_N ? names[o] : "?";
}

static bool is_noise(const char *const *noise, size_t n, const char *path)
{
    char a[256], b[256];
    diff_normalize_path(path, a, sizeof(a));
    for (size_t i = 0; i < n; i++) {
        if (diff_pointer_match(noise[i], path))
            return true;
        diff_normalize_path(noise[i], b, sizeof(b));
        if (strcmp(a, b) == 0)
            return true;
    }
    return false;
}

int replay_compare(const struct diff_rules *rules, const struct diff_response *legacy,
                   const struct diff_response *new_, const char *const *noise, size_t n_noise,
                   const struct endpoint_ack *acks, size_t n_acks, const char *endpoint,
                   struct replay_verdict *out)
{
    memset(out, 0, sizeof(*out));
    struct diff_result res;
    int rc = diff_responses(rules, legacy, new_, &res);
    if (rc != 0) {
        diff_result_dispose(&res);
        return rc;
    }
    bool failed = legacy->error != NULL || new_->error != NULL;
    out->truncated = res.truncated;
    for (size_t i = 0; i < res.n; i++) {
        const struct diff_item *it = &res.items[i];
        const char *kind = diff_kind_name(it->kind);
        bool json = it->kind == DIFF_JSON || it->kind == DIFF_ADDED || it->kind == DIFF_REMOVED;
        if (json && is_noise(noise, n_noise, it->path)) {
            out->n_noise++;
            continue;
        }
        bool acked = false;
        for (size_t k = 0; k < n_acks && !acked; k++)
            acked = endpoint_ack_matches(&acks[k], endpoint, kind, it->path);
        if (acked && !failed) {
            out->n_acked++;
            continue;
        }
        if (out->n_items < REPLAY_VERDICT_ITEMS) {
            out->items[out->n_items].kind = it->kind;
            snprintf(out->items[out->n_items].path, sizeof(out->items[0].path), "%s", it->path);
            out->n_items++;
        }
        out->n_diffs++;
    }
    out->outcome = failed ? REPLAY_ERROR : out->n_diffs > 0 ? REPLAY_DIVERGING : REPLAY_EQUAL;
    diff_result_dispose(&res);
    return 0;
}

/* ---- the summary ----------------------------------------------------------------------------- */

struct summary_row {
    char *route;
    char *endpoint;
    size_t n[REPLAY_OUTCOME_N];
};

struct replay_summary {
    struct summary_row *rows;
    size_t n, cap;
    size_t totals[REPLAY_OUTCOME_N];
};

struct replay_summary *replay_summary_new(void)
{
    return calloc(1, sizeof(struct replay_summary));
}

void replay_summary_free(struct replay_summary *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->rows[i].route);
        free(s->rows[i].endpoint);
    }
    free(s->rows);
    free(s);
}

static struct summary_row *row_find(struct replay_summary *s, const char *route,
                                    const char *endpoint)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->rows[i].route, route) == 0 && strcmp(s->rows[i].endpoint, endpoint) == 0)
            return &s->rows[i];
    }
    return NULL;
}

int replay_summary_add(struct replay_summary *s, const char *route, const char *endpoint,
                       enum replay_outcome o)
{
    if (o >= REPLAY_OUTCOME_N)
        return 0;
    route = route != NULL ? route : "";
    endpoint = endpoint != NULL ? endpoint : "";
    struct summary_row *row = row_find(s, route, endpoint);
    if (row == NULL && s->n >= REPLAY_ENDPOINTS_MAX) {
        endpoint = ENDPOINT_OTHER;
        row = row_find(s, route, endpoint);
    }
    if (row == NULL) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 16;
            struct summary_row *rows = realloc(s->rows, cap * sizeof(*rows));
            if (rows == NULL)
                return FICUS_ENOMEM;
            s->rows = rows;
            s->cap = cap;
        }
        row = &s->rows[s->n];
        memset(row, 0, sizeof(*row));
        row->route = strdup(route);
        row->endpoint = strdup(endpoint);
        if (row->route == NULL || row->endpoint == NULL) {
            free(row->route);
            free(row->endpoint);
            return FICUS_ENOMEM;
        }
        s->n++;
    }
    row->n[o]++;
    s->totals[o]++;
    return 0;
}

static int row_cmp(const void *a, const void *b)
{
    const struct summary_row *x = a, *y = b;
    int c = strcmp(x->route, y->route);
    return c != 0 ? c : strcmp(x->endpoint, y->endpoint);
}

static const char *verdict(const size_t n[REPLAY_OUTCOME_N])
{
    if (n[REPLAY_DIVERGING] > 0)
        return "diverging";
    if (n[REPLAY_ERROR] > 0)
        return "error";
    if (n[REPLAY_EQUAL] > 0)
        return "equal";
    return "skipped";
}

int replay_summary_write(const struct replay_summary *s, struct buf *out)
{
    if (s->n > 1)
        qsort(s->rows, s->n, sizeof(*s->rows), row_cmp);
    int rc = buf_printf(out, "%-10s %-16s %-40s %6s %9s %6s %7s\n", "verdict", "route", "endpoint",
                        "equal", "diverging", "error", "skipped");
    for (size_t i = 0; i < s->n && rc == 0; i++) {
        const struct summary_row *r = &s->rows[i];
        rc = buf_printf(out, "%-10s %-16s %-40s %6zu %9zu %6zu %7zu\n", verdict(r->n), r->route,
                        r->endpoint, r->n[REPLAY_EQUAL], r->n[REPLAY_DIVERGING], r->n[REPLAY_ERROR],
                        r->n[REPLAY_SKIPPED]);
    }
    if (rc == 0)
        rc = buf_printf(out, "total: %zu equal, %zu diverging, %zu error, %zu skipped\n",
                        s->totals[REPLAY_EQUAL], s->totals[REPLAY_DIVERGING],
                        s->totals[REPLAY_ERROR], s->totals[REPLAY_SKIPPED]);
    return rc;
}

size_t replay_summary_count(const struct replay_summary *s, enum replay_outcome o)
{
    return o < REPLAY_OUTCOME_N ? s->totals[o] : 0;
}

int replay_summary_exit_code(const struct replay_summary *s)
{
    return s->totals[REPLAY_DIVERGING] > 0 || s->totals[REPLAY_ERROR] > 0 ? 1 : 0;
}
