/* etcd's v3 JSON gateway: request bodies, answers and the watch stream. How the
 * gateway behaves is written at the top of include/ficus/etcdv3.h.
 *
 * Answers are read with jansson and copied into the answer's (or the watch
 * message's) arena: keys and values decoded from base64, everything else as
 * numbers. Fields etcd adds in later versions are ignored; a field ficus reads
 * must have the type etcd gives it, or the answer is refused with a reason. */
#include "ficus/etcdv3.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETURN_IF(x)                                                                               \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_ != 0)                                                                              \
            return rc_;                                                                            \
    } while (0)

/* Pending bytes beyond this are given back after each message, so one big
 * message does not pin its buffer for the life of the watch. */
#define PENDING_KEEP (64 * 1024)

static const struct {
    const char *path;
    const char *method;
} calls[] = {
    [ETCDV3_VERSION] = {"/version", "GET"},
    [ETCDV3_RANGE] = {"/v3/kv/range", "POST"},
    [ETCDV3_PUT] = {"/v3/kv/put", "POST"},
    [ETCDV3_TXN] = {"/v3/kv/txn", "POST"},
    [ETCDV3_LEASE_GRANT] = {"/v3/lease/grant", "POST"},
    [ETCDV3_LEASE_KEEPALIVE] = {"/v3/lease/keepalive", "POST"},
    [ETCDV3_LEASE_REVOKE] = {"/v3/lease/revoke", "POST"},
    [ETCDV3_WATCH] = {"/v3/watch", "POST"},
};
_Static_assert(ARRAY_SIZE(calls) == ETCDV3_CALL_N, "a path for every call");

const char *etcdv3_path(enum etcdv3_call call)
{
    return (unsigned)call < ETCDV3_CALL_N ? calls[call].path : "";
}

const char *etcdv3_method(enum etcdv3_call call)
{
    return (unsigned)call < ETCDV3_CALL_N ? calls[call].method : "";
}

/* ------------------------------------------------------------------------ */
/* base64 (RFC 4648 section 4, with padding: Go's StdEncoding)              */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t etcdv3_b64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

int etcdv3_b64_append(struct buf *b, const void *p, size_t n)
{
    size_t out_len = etcdv3_b64_len(n);
    RETURN_IF(buf_reserve(b, out_len));
    const unsigned char *in = p;
    char *o = b->data + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = '=';
    }
    b->len += out_len;
    b->data[b->len] = '\0';
    return 0;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int etcdv3_b64_decode(const char *p, size_t n, char *out, size_t *out_len)
{
    *out_len = 0;
    if (n % 4 != 0)
        return FICUS_EBADRESP;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int v[4];
        size_t pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = p[i + (size_t)k];
            if (c == '=' && last && k >= 2) {
                pad++;
                v[k] = 0;
                continue;
            }
            if (pad > 0) /* a character after "=" */
                return FICUS_EBADRESP;
            v[k] = b64_value(c);
            if (v[k] < 0)
                return FICUS_EBADRESP;
        }
        uint32_t x =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        /* The bits padding drops must be zero: one text per byte string. */
        if ((pad == 1 && (x & 0xff) != 0) || (pad == 2 && (x & 0xffff) != 0))
            return FICUS_EBADRESP;
        out[o++] = (char)(x >> 16);
        if (pad < 2)
            out[o++] = (char)(x >> 8);
        if (pad < 1)
            out[o++] = (char)x;
    }
    *out_len = o;
    return 0;
}

void etcdv3_prefix_end(struct span prefix, char *out, size_t *out_len)
{
    size_t n = prefix.len;
    while (n > 0 && (unsigned char)prefix.p[n - 1] == 0xff)
        n--;
    if (n == 0) {
        out[0] = '\0';
        *out_len = 1;
        return;
    }
    memcpy(out, prefix.p, n);
    out[n - 1] = (char)((unsigned char)out[n - 1] + 1);
    *out_len = n;
}

/* ------------------------------------------------------------------------ */
/* Request bodies                                                           */

/* ,"name":"<base64 of v>" (without the comma when first). */
static int field_b64(struct buf *b, bool first, const char *name, struct span v)
{
    RETURN_IF(buf_puts(b, first ? "\"" : ",\""));
    RETURN_IF(buf_puts(b, name));
    RETURN_IF(buf_puts(b, "\":\""));
    RETURN_IF(etcdv3_b64_append(b, v.p, v.len));
    return buf_puts(b, "\"");
}

/* ,"name":"v": int64 as a string, as etcd writes them. */
static int field_i64(struct buf *b, const char *name, int64_t v)
{
    RETURN_IF(buf_puts(b, ",\""));
    RETURN_IF(buf_puts(b, name));
    RETURN_IF(buf_puts(b, "\":\""));
    RETURN_IF(buf_put_int(b, v));
    return buf_puts(b, "\"");
}

/* The members of a RangeRequest, PutRequest or DeleteRangeRequest (no braces). */
static int range_members(struct buf *b, struct span key, struct span range_end, int64_t limit,
                         int64_t revision)
{
    RETURN_IF(field_b64(b, true, "key", key));
    if (range_end.len > 0)
        RETURN_IF(field_b64(b, false, "range_end", range_end));
    if (limit > 0)
        RETURN_IF(field_i64(b, "limit", limit));
    if (revision > 0)
        RETURN_IF(field_i64(b, "revision", revision));
    return 0;
}

static int put_members(struct buf *b, struct span key, struct span value, int64_t lease)
{
    RETURN_IF(field_b64(b, true, "key", key));
    RETURN_IF(field_b64(b, false, "value", value));
    if (lease != 0)
        RETURN_IF(field_i64(b, "lease", lease));
    return 0;
}

int etcdv3_range_body(struct buf *b, struct span key, struct span range_end, int64_t limit,
                      int64_t revision)
{
    RETURN_IF(buf_puts(b, "{"));
    RETURN_IF(range_members(b, key, range_end, limit, revision));
    return buf_puts(b, "}");
}

int etcdv3_put_body(struct buf *b, struct span key, struct span value, int64_t lease)
{
    RETURN_IF(buf_puts(b, "{"));
    RETURN_IF(put_members(b, key, value, lease));
    return buf_puts(b, "}");
}

static int compare_json(struct buf *b, const struct etcdv3_compare *c)
{
    static const char *const targets[] = {
        [ETCDV3_CMP_VERSION] = "VERSION",
        [ETCDV3_CMP_CREATE] = "CREATE",
        [ETCDV3_CMP_MOD] = "MOD",
        [ETCDV3_CMP_LEASE] = "LEASE",
    };
    static const char *const fields[] = {
        [ETCDV3_CMP_VERSION] = "version",
        [ETCDV3_CMP_CREATE] = "create_revision",
        [ETCDV3_CMP_MOD] = "mod_revision",
        [ETCDV3_CMP_LEASE] = "lease",
    };
    static const char *const results[] = {
        [ETCDV3_CMP_EQUAL] = "EQUAL",
        [ETCDV3_CMP_GREATER] = "GREATER",
        [ETCDV3_CMP_LESS] = "LESS",
        [ETCDV3_CMP_NOT_EQUAL] = "NOT_EQUAL",
    };
    if ((unsigned)c->target >= ARRAY_SIZE(targets) || (unsigned)c->result >= ARRAY_SIZE(results))
        return -EINVAL;
    RETURN_IF(buf_puts(b, "{"));
    RETURN_IF(field_b64(b, true, "key", c->key));
    RETURN_IF(buf_printf(b, ",\"target\":\"%s\",\"result\":\"%s\"", targets[c->target],
                         results[c->result]));
    RETURN_IF(field_i64(b, fields[c->target], c->value));
    return buf_puts(b, "}");
}

static int op_json(struct buf *b, const struct etcdv3_op *op)
{
    switch (op->kind) {
    case ETCDV3_OP_RANGE:
        RETURN_IF(buf_puts(b, "{\"request_range\":{"));
        RETURN_IF(range_members(b, op->key, op->range_end, 0, 0));
        break;
    case ETCDV3_OP_PUT:
        RETURN_IF(buf_puts(b, "{\"request_put\":{"));
        RETURN_IF(put_members(b, op->key, op->value, op->lease));
        break;
    case ETCDV3_OP_DELETE:
        RETURN_IF(buf_puts(b, "{\"request_delete_range\":{"));
        RETURN_IF(range_members(b, op->key, op->range_end, 0, 0));
        break;
    default:
        return -EINVAL;
    }
    return buf_puts(b, "}}");
}

static int ops_json(struct buf *b, const char *name, const struct etcdv3_op *ops, size_t n)
{
    RETURN_IF(buf_printf(b, ",\"%s\":[", name));
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            RETURN_IF(buf_puts(b, ","));
        RETURN_IF(op_json(b, &ops[i]));
    }
    return buf_puts(b, "]");
}

int etcdv3_txn_body(struct buf *b, const struct etcdv3_compare *cmp, size_t n_cmp,
                    const struct etcdv3_op *success, size_t n_success,
                    const struct etcdv3_op *failure, size_t n_failure)
{
    RETURN_IF(buf_puts(b, "{\"compare\":["));
    for (size_t i = 0; i < n_cmp; i++) {
        if (i > 0)
            RETURN_IF(buf_puts(b, ","));
        RETURN_IF(compare_json(b, &cmp[i]));
    }
    RETURN_IF(buf_puts(b, "]"));
    RETURN_IF(ops_json(b, "success", success, n_success));
    RETURN_IF(ops_json(b, "failure", failure, n_failure));
    return buf_puts(b, "}");
}

int etcdv3_cas_body(struct buf *b, struct span key, struct span value, int64_t lease,
                    int64_t expect_mod_revision)
{
    struct etcdv3_compare cmp = {key, ETCDV3_CMP_MOD, ETCDV3_CMP_EQUAL, expect_mod_revision};
    struct etcdv3_op put = {.kind = ETCDV3_OP_PUT, .key = key, .value = value, .lease = lease};
    struct etcdv3_op get = {.kind = ETCDV3_OP_RANGE, .key = key};
    return etcdv3_txn_body(b, &cmp, 1, &put, 1, &get, 1);
}

int etcdv3_lease_grant_body(struct buf *b, int64_t ttl_s, int64_t id)
{
    RETURN_IF(buf_puts(b, "{\"TTL\":\""));
    RETURN_IF(buf_put_int(b, ttl_s));
    RETURN_IF(buf_puts(b, "\""));
    if (id != 0)
        RETURN_IF(field_i64(b, "ID", id));
    return buf_puts(b, "}");
}

int etcdv3_lease_id_body(struct buf *b, int64_t id)
{
    RETURN_IF(buf_puts(b, "{\"ID\":\""));
    RETURN_IF(buf_put_int(b, id));
    return buf_puts(b, "\"}");
}

int etcdv3_watch_create_body(struct buf *b, const struct etcdv3_watch_create *w)
{
    RETURN_IF(buf_puts(b, "{\"create_request\":{"));
    RETURN_IF(field_b64(b, true, "key", w->key));
    if (w->range_end.len > 0)
        RETURN_IF(field_b64(b, false, "range_end", w->range_end));
    if (w->start_revision > 0)
        RETURN_IF(field_i64(b, "start_revision", w->start_revision));
    if (w->prev_kv)
        RETURN_IF(buf_puts(b, ",\"prev_kv\":true"));
    if (w->progress_notify)
        RETURN_IF(buf_puts(b, ",\"progress_notify\":true"));
    if (w->fragment)
        RETURN_IF(buf_puts(b, ",\"fragment\":true"));
    return buf_puts(b, "}}");
}

int etcdv3_watch_cancel_body(struct buf *b, int64_t watch_id)
{
    RETURN_IF(buf_puts(b, "{\"cancel_request\":{\"watch_id\":\""));
    RETURN_IF(buf_put_int(b, watch_id));
    return buf_puts(b, "\"}}");
}

/* ------------------------------------------------------------------------ */
/* Reading answers                                                          */

/* Where decoded bytes go and where the first problem is written. */
struct dec {
    struct arena *arena;
    char *why;
    bool nomem;
};

static bool dec_fail(struct dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Keeps the first reason; returns false so that callers can `return dec_fail(..)`. */
static bool dec_fail(struct dec *d, const char *fmt, ...)
{
    if (d->why[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->why, ETCDV3_WHY_MAX, fmt, ap);
        va_end(ap);
    }
    return false;
}

/* A decimal in a JSON string (etcd's int64 and uint64) or a JSON integer. */
static bool parse_u64_text(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool json_i64(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (!json_is_string(v))
        return false;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    bool neg = n > 0 && s[0] == '-';
    uint64_t u;
    if (!parse_u64_text(s + neg, n - neg, &u))
        return false;
    if (neg ? u > (uint64_t)INT64_MAX + 1 : u > (uint64_t)INT64_MAX)
        return false;
    *out = neg ? (int64_t)(0 - u) : (int64_t)u;
    return true;
}

static bool json_u64(const json_t *v, uint64_t *out)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return true;
    }
    return json_is_string(v) && parse_u64_text(json_string_value(v), json_string_length(v), out);
}

/* Member name of obj as an int64 into *out (left alone when absent). */
static bool get_i64(struct dec *d, const json_t *obj, const char *where, const char *name,
                    int64_t *out)
{
    const json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return true;
    if (!json_i64(v, out))
        return dec_fail(d, "%s.%s is not a 64-bit integer", where, name);
    return true;
}

static bool get_u64(struct dec *d, const json_t *obj, const char *where, const char *name,
                    uint64_t *out)
{
    const json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return true;
    if (!json_u64(v, out))
        return dec_fail(d, "%s.%s is not an unsigned 64-bit integer", where, name);
    return true;
}

static bool get_bool(struct dec *d, const json_t *obj, const char *where, const char *name,
                     bool *out)
{
    const json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return true;
    if (!json_is_boolean(v))
        return dec_fail(d, "%s.%s is not true or false", where, name);
    *out = json_is_true(v);
    return true;
}

/* Copies a JSON string into the arena. */
static bool get_string(struct dec *d, const json_t *obj, const char *where, const char *name,
                       const char **out)
{
    const json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return true;
    if (!json_is_string(v))
        return dec_fail(d, "%s.%s is not a string", where, name);
    char *s = arena_strndup(d->arena, json_string_value(v), json_string_length(v));
    if (s == NULL) {
        d->nomem = true;
        return false;
    }
    *out = s;
    return true;
}

/* Decodes the base64 member name of obj into the arena (NUL-terminated). */
static bool get_bytes(struct dec *d, const json_t *obj, const char *where, const char *name,
                      bool required, const char **out, size_t *out_len)
{
    const json_t *v = json_object_get(obj, name);
    *out = "";
    *out_len = 0;
    if (v == NULL)
        return required ? dec_fail(d, "%s has no %s", where, name) : true;
    if (!json_is_string(v))
        return dec_fail(d, "%s.%s is not a base64 string", where, name);
    size_t n = json_string_length(v);
    char *o = arena_alloc_bytes(d->arena, n / 4 * 3 + 1);
    if (o == NULL) {
        d->nomem = true;
        return false;
    }
    size_t len;
    if (etcdv3_b64_decode(json_string_value(v), n, o, &len) != 0)
        return dec_fail(d, "%s.%s is not base64", where, name);
    o[len] = '\0';
    *out = o;
    *out_len = len;
    return true;
}

static bool dec_header(struct dec *d, const json_t *obj, struct etcdv3_header *h, bool required)
{
    const json_t *hd = json_object_get(obj, "header");
    if (hd == NULL)
        return required ? dec_fail(d, "no header: not an answer of etcd") : true;
    if (!json_is_object(hd))
        return dec_fail(d, "header is not an object");
    return get_u64(d, hd, "header", "cluster_id", &h->cluster_id) &&
           get_u64(d, hd, "header", "member_id", &h->member_id) &&
           get_i64(d, hd, "header", "revision", &h->revision) &&
           get_u64(d, hd, "header", "raft_term", &h->raft_term);
}

static bool dec_kv(struct dec *d, const json_t *o, const char *where, struct etcdv3_kv *kv)
{
    memset(kv, 0, sizeof(*kv));
    if (!json_is_object(o))
        return dec_fail(d, "%s is not an object", where);
    return get_bytes(d, o, where, "key", true, &kv->key, &kv->key_len) &&
           get_bytes(d, o, where, "value", false, &kv->value, &kv->value_len) &&
           get_i64(d, o, where, "create_revision", &kv->create_revision) &&
           get_i64(d, o, where, "mod_revision", &kv->mod_revision) &&
           get_i64(d, o, where, "version", &kv->version) &&
           get_i64(d, o, where, "lease", &kv->lease);
}

/* The "kvs" member of obj (absent: none). */
static bool dec_kvs(struct dec *d, const json_t *obj, const char *where, struct etcdv3_kv **out,
                    size_t *n_out)
{
    const json_t *kvs = json_object_get(obj, "kvs");
    *out = NULL;
    *n_out = 0;
    if (kvs == NULL)
        return true;
    if (!json_is_array(kvs))
        return dec_fail(d, "%s.kvs is not an array", where);
    size_t n = json_array_size(kvs);
    if (n == 0)
        return true;
    struct etcdv3_kv *a = arena_alloc(d->arena, n * sizeof(*a));
    if (a == NULL) {
        d->nomem = true;
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char w[48];
        snprintf(w, sizeof(w), "%s.kvs[%zu]", where, i);
        if (!dec_kv(d, json_array_get(kvs, i), w, &a[i]))
            return false;
    }
    *out = a;
    *n_out = n;
    return true;
}

/* Copies printable ASCII of text into out (size bytes, cut there), so that an
 * error message from anywhere can go into a log line as it is. */
static void copy_text(char *out, size_t size, const char *text, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < size; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\n' && i + 1 == n)
            break;
        out[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[o] = '\0';
}

/* Fills e from the error object of a stream ({"grpc_code":..,"http_code":..,
 * "message":..}) or from a unary error answer ({"error":"..","code":..,
 * "message":".."}). Returns false when obj is neither. */
static bool dec_error(const json_t *obj, struct etcdv3_error *e)
{
    const json_t *err = json_object_get(obj, "error");
    const json_t *msg, *code;
    if (json_is_object(err)) { /* a stream's */
        code = json_object_get(err, "grpc_code");
        msg = json_object_get(err, "message");
        const json_t *http = json_object_get(err, "http_code");
        if (json_is_integer(http) && e->http_status == 0)
            e->http_status = (int)json_integer_value(http);
    } else if (json_is_string(err)) {
        code = json_object_get(obj, "code");
        msg = json_object_get(obj, "message");
        if (!json_is_string(msg))
            msg = err;
    } else {
        return false;
    }
    e->grpc_code = json_is_integer(code) ? (int)json_integer_value(code) : -1;
    if (json_is_string(msg))
        copy_text(e->message, sizeof(e->message), json_string_value(msg), json_string_length(msg));
    return true;
}

/* An answer with a non-2xx status: JSON from etcd or its gateway, or the text
 * of something else (a plain 404 or 405, or not etcd at all). */
static void parse_error(int status, const char *body, size_t len, struct etcdv3_error *e)
{
    e->http_status = status;
    e->grpc_code = -1;
    e->message[0] = '\0';
    json_t *root = json_loadb(body, len, 0, NULL);
    if (root == NULL || !dec_error(root, e)) {
        e->grpc_code = -1;
        copy_text(e->message, sizeof(e->message), body, len);
    }
    json_decref(root);
}

static int parse_version(const char *body, size_t len, struct etcdv3_answer *a)
{
    struct dec d = {.arena = &a->arena, .why = a->why};
    json_t *root = json_loadb(body, len, 0, NULL);
    const json_t *server = json_object_get(root, "etcdserver");
    const json_t *cluster = json_object_get(root, "etcdcluster");
    int rc = FICUS_EBADRESP;
    unsigned major, minor;
    if (!json_is_string(server) || !json_is_string(cluster)) {
        dec_fail(&d, "GET /version did not answer {\"etcdserver\":..}: not an etcd endpoint");
        goto out;
    }
    copy_text(a->server_version, sizeof(a->server_version), json_string_value(server),
              json_string_length(server));
    copy_text(a->cluster_version, sizeof(a->cluster_version), json_string_value(cluster),
              json_string_length(cluster));
    if (sscanf(a->server_version, "%u.%u", &major, &minor) != 2) {
        dec_fail(&d, "etcd version \"%s\" is not major.minor.patch", a->server_version);
        goto out;
    }
    if (major < 3 || (major == 3 && minor < 4)) {
        dec_fail(&d, "etcd %s is too old: ficus needs 3.4 or newer (the /v3 gateway)",
                 a->server_version);
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* The JSON object of a keepalive answer: the stream's one line, unwrapped from
 * {"result":..}. Returns a new reference or NULL (why set, or e filled and
 * *is_error set for {"error":..}). */
static json_t *load_stream_answer(struct dec *d, const char *body, size_t len,
                                  struct etcdv3_error *e, bool *is_error)
{
    const char *nl = memchr(body, '\n', len);
    size_t n = nl ? (size_t)(nl - body) : len;
    for (size_t i = n; nl != NULL && i < len; i++) {
        if (body[i] != '\n' && body[i] != ' ' && body[i] != '\r' && body[i] != '\t') {
            dec_fail(d, "more than one message in a one-shot stream answer");
            return NULL;
        }
    }
    json_error_t je;
    json_t *root = json_loadb(body, n, 0, &je);
    if (root == NULL) {
        dec_fail(d, "not JSON: %s", je.text);
        return NULL;
    }
    json_t *result = json_object_get(root, "result");
    if (json_is_object(result)) {
        json_incref(result);
        json_decref(root);
        return result;
    }
    if (json_is_object(root) && dec_error(root, e)) {
        *is_error = true;
    } else {
        dec_fail(d, "a stream answer without \"result\"");
    }
    json_decref(root);
    return NULL;
}

/* The txn's responses: how many, and the kvs of the first range among them. */
static bool dec_txn_responses(struct dec *d, const json_t *root, struct etcdv3_answer *a)
{
    const json_t *rs = json_object_get(root, "responses");
    if (rs == NULL)
        return true;
    if (!json_is_array(rs))
        return dec_fail(d, "responses is not an array");
    bool have_range = false;
    for (size_t i = 0; i < json_array_size(rs); i++) {
        const json_t *r = json_array_get(rs, i);
        char w[40];
        snprintf(w, sizeof(w), "responses[%zu]", i);
        if (!json_is_object(r) || json_object_size(r) != 1)
            return dec_fail(d, "%s is not an object with one response", w);
        const json_t *range = json_object_get(r, "response_range");
        if (range != NULL) {
            if (!json_is_object(range))
                return dec_fail(d, "%s.response_range is not an object", w);
            if (!have_range) {
                have_range = true;
                if (!dec_kvs(d, range, w, &a->kvs, &a->n_kvs) ||
                    !get_bool(d, range, w, "more", &a->more) ||
                    !get_i64(d, range, w, "count", &a->count))
                    return false;
            }
        } else if (json_object_get(r, "response_put") == NULL &&
                   json_object_get(r, "response_delete_range") == NULL &&
                   json_object_get(r, "response_txn") == NULL) {
            return dec_fail(d, "%s is no response etcd knows", w);
        }
    }
    a->n_responses = json_array_size(rs);
    return true;
}

void etcdv3_answer_init(struct etcdv3_answer *a)
{
    memset(a, 0, sizeof(*a));
    arena_init(&a->arena);
}

void etcdv3_answer_dispose(struct etcdv3_answer *a)
{
    if (a == NULL)
        return;
    arena_dispose(&a->arena);
    etcdv3_answer_init(a);
}

int etcdv3_parse(enum etcdv3_call call, int status, const char *body, size_t len,
                 struct etcdv3_answer *a)
{
    etcdv3_answer_dispose(a);
    a->call = call;
    struct dec d = {.arena = &a->arena, .why = a->why};

    if (status < 200 || status > 299) {
        parse_error(status, body, len, &a->error);
        return FICUS_ESTORE;
    }
    if (call == ETCDV3_VERSION)
        return parse_version(body, len, a);
    if ((unsigned)call >= ETCDV3_CALL_N || call == ETCDV3_WATCH) {
        dec_fail(&d, "a watch answer is a stream: read it with etcdv3_stream");
        return FICUS_EBADRESP;
    }

    json_t *root;
    if (call == ETCDV3_LEASE_KEEPALIVE) {
        bool is_error = false;
        root = load_stream_answer(&d, body, len, &a->error, &is_error);
        if (is_error) {
            if (a->error.http_status == 0)
                a->error.http_status = status;
            return FICUS_ESTORE;
        }
    } else {
        json_error_t je;
        root = json_loadb(body, len, 0, &je);
        if (root == NULL)
            dec_fail(&d, "not JSON: %s", je.text);
    }
    if (root == NULL)
        return FICUS_EBADRESP;

    int rc = FICUS_EBADRESP;
    bool ok = json_is_object(root) ? dec_header(&d, root, &a->header, true)
                                   : dec_fail(&d, "not a JSON object");
    if (!ok)
        goto out;
    switch (call) {
    case ETCDV3_RANGE:
        ok = dec_kvs(&d, root, "range", &a->kvs, &a->n_kvs) &&
             get_bool(&d, root, "range", "more", &a->more) &&
             get_i64(&d, root, "range", "count", &a->count);
        break;
    case ETCDV3_PUT: {
        const json_t *prev = json_object_get(root, "prev_kv");
        if (prev == NULL)
            break;
        a->kvs = arena_alloc(&a->arena, sizeof(*a->kvs));
        if (a->kvs == NULL) {
            d.nomem = true;
            ok = false;
            break;
        }
        ok = dec_kv(&d, prev, "prev_kv", a->kvs);
        a->n_kvs = ok ? 1 : 0;
        break;
    }
    case ETCDV3_TXN:
        ok =
            get_bool(&d, root, "txn", "succeeded", &a->succeeded) && dec_txn_responses(&d, root, a);
        break;
    case ETCDV3_LEASE_GRANT: {
        const json_t *err = json_object_get(root, "error");
        if (json_is_string(err) && json_string_length(err) > 0) {
            a->error.http_status = status;
            a->error.grpc_code = -1;
            copy_text(a->error.message, sizeof(a->error.message), json_string_value(err),
                      json_string_length(err));
            rc = FICUS_ESTORE;
            goto out;
        }
        ok = get_i64(&d, root, "lease", "ID", &a->lease_id) &&
             get_i64(&d, root, "lease", "TTL", &a->ttl);
        if (ok && (a->lease_id == 0 || a->ttl <= 0))
            ok = dec_fail(&d, "a lease grant without ID or TTL");
        break;
    }
    case ETCDV3_LEASE_KEEPALIVE:
        ok = get_i64(&d, root, "lease", "ID", &a->lease_id) &&
             get_i64(&d, root, "lease", "TTL", &a->ttl);
        if (ok && a->lease_id == 0)
            ok = dec_fail(&d, "a keepalive answer without ID");
        break;
    default: /* revoke: the header is all */
        break;
    }
    rc = d.nomem ? FICUS_ENOMEM : ok ? 0 : FICUS_EBADRESP;
out:
    json_decref(root);
    return rc;
}

enum etcdv3_error_kind etcdv3_error_kind(const struct etcdv3_error *e)
{
    const char *m = e->message;
    switch (e->grpc_code) {
    case 11: /* OutOfRange */
        if (strstr(m, "compacted") != NULL)
            return ETCDV3_ERR_COMPACTED;
        if (strstr(m, "future revision") != NULL)
            return ETCDV3_ERR_FUTURE_REVISION;
        return ETCDV3_ERR_REQUEST; /* a lease TTL too large */
    case 5:                        /* NotFound */
        return strstr(m, "lease not found") != NULL ? ETCDV3_ERR_LEASE_NOT_FOUND : ETCDV3_ERR_OTHER;
    case 7:  /* PermissionDenied */
    case 16: /* Unauthenticated */
        return ETCDV3_ERR_AUTH;
    case 3: /* InvalidArgument */
    case 9: /* FailedPrecondition: a lease ID in use */
        return ETCDV3_ERR_REQUEST;
    case 1:  /* Canceled: the member is closing */
    case 4:  /* DeadlineExceeded */
    case 8:  /* ResourceExhausted: too many requests, or the space quota */
    case 14: /* Unavailable: no leader, timed out, stopping */
        return ETCDV3_ERR_UNAVAILABLE;
    case 2: /* Unknown: what a put or grant without quorum says */
        return strstr(m, "deadline exceeded") != NULL ? ETCDV3_ERR_UNAVAILABLE : ETCDV3_ERR_OTHER;
    case -1: /* not the gateway's JSON */
        if (e->http_status == 404 || e->http_status == 405)
            return ETCDV3_ERR_NOT_ETCD;
        return e->http_status >= 500 ? ETCDV3_ERR_UNAVAILABLE : ETCDV3_ERR_OTHER;
    default:
        return ETCDV3_ERR_OTHER;
    }
}

const char *etcdv3_error_kind_name(enum etcdv3_error_kind k)
{
    static const char *const names[] = {
        [ETCDV3_ERR_UNAVAILABLE] = "unavailable",
        [ETCDV3_ERR_COMPACTED] = "compacted",
        [ETCDV3_ERR_FUTURE_REVISION] = "future_revision",
        [ETCDV3_ERR_LEASE_NOT_FOUND] = "lease_not_found",
        [ETCDV3_ERR_AUTH] = "auth",
        [ETCDV3_ERR_NOT_ETCD] = "not_etcd",
        [ETCDV3_ERR_REQUEST] = "request",
        [ETCDV3_ERR_OTHER] = "other",
    };
    return (unsigned)k < ARRAY_SIZE(names) ? names[k] : "other";
}

/* ------------------------------------------------------------------------ */
/* The watch stream                                                         */

void etcdv3_stream_init(struct etcdv3_stream *s, size_t max_message)
{
    memset(s, 0, sizeof(*s));
    s->max = max_message ? max_message : ETCDV3_MSG_MAX_DEFAULT;
    buf_init(&s->pending, s->max);
    arena_init(&s->arena);
}

void etcdv3_stream_dispose(struct etcdv3_stream *s)
{
    if (s == NULL)
        return;
    buf_dispose(&s->pending);
    arena_dispose(&s->arena);
}

static bool dec_event(struct dec *d, const json_t *o, size_t i, struct etcdv3_event *ev)
{
    char w[40];
    snprintf(w, sizeof(w), "events[%zu]", i);
    memset(ev, 0, sizeof(*ev));
    if (!json_is_object(o))
        return dec_fail(d, "%s is not an object", w);
    const json_t *type = json_object_get(o, "type");
    if (type == NULL || (json_is_string(type) && strcmp(json_string_value(type), "PUT") == 0))
        ev->type = ETCDV3_EVENT_PUT;
    else if (json_is_string(type) && strcmp(json_string_value(type), "DELETE") == 0)
        ev->type = ETCDV3_EVENT_DELETE;
    else
        return dec_fail(d, "%s.type is neither PUT nor DELETE", w);
    const json_t *kv = json_object_get(o, "kv");
    if (kv == NULL)
        return dec_fail(d, "%s has no kv", w);
    char kw[48];
    snprintf(kw, sizeof(kw), "%s.kv", w);
    if (!dec_kv(d, kv, kw, &ev->kv))
        return false;
    const json_t *prev = json_object_get(o, "prev_kv");
    if (prev != NULL) {
        snprintf(kw, sizeof(kw), "%s.prev_kv", w);
        ev->has_prev = true;
        return dec_kv(d, prev, kw, &ev->prev);
    }
    return true;
}

static bool dec_result(struct dec *d, const json_t *r, struct etcdv3_watch_msg *m)
{
    bool created = false, canceled = false;
    if (!dec_header(d, r, &m->header, false) ||
        !get_i64(d, r, "result", "watch_id", &m->watch_id) ||
        !get_bool(d, r, "result", "created", &created) ||
        !get_bool(d, r, "result", "canceled", &canceled) ||
        !get_bool(d, r, "result", "fragment", &m->fragment) ||
        !get_i64(d, r, "result", "compact_revision", &m->compact_revision) ||
        !get_string(d, r, "result", "cancel_reason", &m->cancel_reason))
        return false;
    const json_t *events = json_object_get(r, "events");
    if (events != NULL && !json_is_array(events))
        return dec_fail(d, "result.events is not an array");
    size_t n = json_array_size(events);
    if (n > 0) {
        m->events = arena_alloc(d->arena, n * sizeof(*m->events));
        if (m->events == NULL) {
            d->nomem = true;
            return false;
        }
        for (size_t i = 0; i < n; i++) {
            if (!dec_event(d, json_array_get(events, i), i, &m->events[i]))
                return false;
            if (m->events[i].kv.mod_revision > m->last_revision)
                m->last_revision = m->events[i].kv.mod_revision;
        }
        m->n_events = n;
    }
    if (canceled)
        m->kind = ETCDV3_MSG_CANCELED;
    else if (created)
        m->kind = ETCDV3_MSG_CREATED;
    else if (n > 0)
        m->kind = ETCDV3_MSG_EVENTS;
    else
        m->kind = ETCDV3_MSG_PROGRESS;
    return true;
}

/* Parses one message (a line without its newline) into m, in s's arena. */
static int parse_message(struct etcdv3_stream *s, const char *p, size_t n,
                         struct etcdv3_watch_msg *m)
{
    struct dec d = {.arena = &s->arena, .why = s->why};
    memset(m, 0, sizeof(*m));
    m->cancel_reason = "";
    json_error_t je;
    json_t *root = json_loadb(p, n, 0, &je);
    if (root == NULL) {
        dec_fail(&d, "watch message %llu is not JSON: %s", (unsigned long long)s->messages + 1,
                 je.text);
        return FICUS_EBADRESP;
    }
    bool ok;
    const json_t *result = json_object_get(root, "result");
    if (json_is_object(result)) {
        ok = dec_result(&d, result, m);
    } else if (json_is_object(root) && json_object_get(root, "error") != NULL &&
               dec_error(root, &m->error)) {
        m->kind = ETCDV3_MSG_ERROR;
        ok = true;
    } else {
        ok = dec_fail(&d, "watch message %llu has neither \"result\" nor \"error\"",
                      (unsigned long long)s->messages + 1);
    }
    json_decref(root);
    return d.nomem ? FICUS_ENOMEM : ok ? 0 : FICUS_EBADRESP;
}

static bool blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return false;
    }
    return true;
}

static int stream_fail(struct etcdv3_stream *s, int err)
{
    s->error = err;
    buf_dispose(&s->pending);
    buf_init(&s->pending, s->max);
    return err;
}

/* Delivers the message at p (n bytes, no newline). */
static int deliver(struct etcdv3_stream *s, const char *p, size_t n, etcdv3_watch_cb cb, void *arg)
{
    if (blank(p, n))
        return 0;
    struct etcdv3_watch_msg m;
    int rc = parse_message(s, p, n, &m);
    if (rc != 0) {
        arena_dispose(&s->arena);
        arena_init(&s->arena);
        return stream_fail(s, rc);
    }
    s->messages++;
    rc = cb(arg, &m);
    arena_dispose(&s->arena);
    arena_init(&s->arena);
    return rc;
}

static void pending_done(struct etcdv3_stream *s)
{
    if (s->pending.cap > PENDING_KEEP) {
        buf_dispose(&s->pending);
        buf_init(&s->pending, s->max);
    } else {
        buf_reset(&s->pending);
    }
}

int etcdv3_stream_feed(struct etcdv3_stream *s, const char *p, size_t len, etcdv3_watch_cb cb,
                       void *arg)
{
    if (s->error != 0)
        return s->error;
    while (len > 0) {
        const char *nl = memchr(p, '\n', len);
        size_t take = nl != NULL ? (size_t)(nl - p) : len;
        if (take > s->max - s->pending.len) {
            snprintf(s->why, sizeof(s->why), "a watch message longer than %zu bytes", s->max);
            return stream_fail(s, FICUS_ETOOBIG);
        }
        if (nl == NULL) {
            int rc = buf_append(&s->pending, p, take);
            return rc != 0 ? stream_fail(s, rc) : 0;
        }
        int rc;
        if (s->pending.len == 0) {
            rc = deliver(s, p, take, cb, arg);
        } else {
            rc = buf_append(&s->pending, p, take);
            if (rc != 0)
                return stream_fail(s, rc);
            rc = deliver(s, s->pending.data, s->pending.len, cb, arg);
            if (s->error == 0)
                pending_done(s);
        }
        if (rc != 0)
            return rc;
        p += take + 1;
        len -= take + 1;
    }
    return 0;
}

int etcdv3_stream_end(struct etcdv3_stream *s, etcdv3_watch_cb cb, void *arg)
{
    if (s->error != 0)
        return s->error;
    if (s->pending.len == 0)
        return 0;
    int rc = deliver(s, s->pending.data, s->pending.len, cb, arg);
    if (s->error == 0)
        pending_done(s);
    return rc;
}
