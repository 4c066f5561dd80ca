/* The keys and values a fleet shares in the state store; the formats are
 * written at the top of include/ficus/fleet.h.
 *
 * Values are read with jansson (duplicate keys refused) and checked the way
 * config.c checks a configuration: every key known, every field of its type
 * and in its range, the reason as "location: what is wrong". Unlike a
 * configuration, a value is all or nothing and the first problem is the
 * reason: the caller keeps its last good value. Decoded strings are copied
 * into the struct's arena. */
#include "ficus/fleet.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
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

#define KIND_ROUTE    "ficus.route"
#define KIND_DRIVER   "ficus.ramp_driver"
#define KIND_INSTANCE "ficus.instance"

#define RAMP_STEP_MAX    100000   /* far beyond any configuration's list of steps */
#define WINDOW_MS_MAX    86400000 /* routes[].guard.window_ms's bound */
#define VERSION_TEXT_MAX 32

/* The diff kinds of divergence records (CONFIG-CONTRACT): what an
 * acknowledgement may name. */
static const char *const ack_kinds[] = {"status",  "header", "json", "added",
                                        "removed", "body",   "error"};

/* ------------------------------------------------------------------------ */
/* Names and keys                                                           */

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

bool fleet_name_valid(struct span s, size_t max)
{
    if (s.len == 0 || s.len > max)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        if (!name_char(s.p[i]))
            return false;
    }
    return true;
}

static bool has_prefix(struct span s, const char *p, size_t n)
{
    return s.len >= n && memcmp(s.p, p, n) == 0;
}

enum fleet_key_kind fleet_key_parse(struct span prefix, struct span key, struct span *name)
{
    *name = (struct span){"", 0};
    if (!has_prefix(key, prefix.p, prefix.len))
        return FLEET_KEY_FOREIGN;
    struct span rest = {key.p + prefix.len, key.len - prefix.len};
    const size_t nr = strlen(FLEET_ROUTES_DIR), ni = strlen(FLEET_INSTANCES_DIR);
    if (has_prefix(rest, FLEET_ROUTES_DIR, nr)) {
        struct span n = {rest.p + nr, rest.len - nr};
        if (!fleet_name_valid(n, FLEET_NAME_MAX))
            return FLEET_KEY_FOREIGN;
        *name = n;
        return FLEET_KEY_ROUTE;
    }
    if (has_prefix(rest, FLEET_INSTANCES_DIR, ni)) {
        struct span n = {rest.p + ni, rest.len - ni};
        if (!fleet_name_valid(n, FLEET_ID_MAX))
            return FLEET_KEY_FOREIGN;
        *name = n;
        return FLEET_KEY_INSTANCE;
    }
    if (span_eq(rest, FLEET_DRIVER_KEY))
        return FLEET_KEY_RAMP_DRIVER;
    return FLEET_KEY_FOREIGN;
}

int fleet_key_route(struct buf *b, const char *prefix, const char *route)
{
    return buf_printf(b, "%s" FLEET_ROUTES_DIR "%s", prefix, route);
}

int fleet_key_ramp_driver(struct buf *b, const char *prefix)
{
    return buf_printf(b, "%s" FLEET_DRIVER_KEY, prefix);
}

int fleet_key_instance(struct buf *b, const char *prefix, const char *id)
{
    return buf_printf(b, "%s" FLEET_INSTANCES_DIR "%s", prefix, id);
}

void fleet_instance_id(char *out, const char *host, long pid, uint64_t random)
{
    char suffix[32];
    int n = snprintf(suffix, sizeof(suffix), "-%ld-%04x", pid < 0 ? -pid : pid,
                     (unsigned)(random & 0xffff));
    size_t room = FLEET_ID_MAX - (size_t)n;
    size_t h = 0;
    if (host == NULL || host[0] == '\0')
        host = "ficus";
    for (; host[h] != '\0' && h < room; h++)
        out[h] = name_char(host[h]) ? host[h] : '-';
    memcpy(out + h, suffix, (size_t)n + 1);
}

/* ------------------------------------------------------------------------ */
/* Times: proleptic Gregorian calendar, days from 1970-01-01 (H. Hinnant's
 * days_from_civil and civil_from_days).                                    */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

#define DAY_MS      86400000LL
#define TIME_MAX_MS (days_from_civil(10000, 1, 1) * DAY_MS - 1)

/* Writes v as n decimal digits, zero-padded. */
static char *put_digits(char *o, unsigned v, int n)
{
    for (int i = n - 1; i >= 0; i--, v /= 10)
        o[i] = (char)('0' + v % 10);
    return o + n;
}

void fleet_time_format(int64_t unix_ms, char *out)
{
    if (unix_ms < 0)
        unix_ms = 0;
    if (unix_ms > TIME_MAX_MS)
        unix_ms = TIME_MAX_MS;
    int64_t days = unix_ms / DAY_MS, y;
    unsigned ms = (unsigned)(unix_ms % DAY_MS), m, d;
    civil_from_days(days, &y, &m, &d);
    char *o = put_digits(out, (unsigned)y, 4);
    *o++ = '-';
    o = put_digits(o, m, 2);
    *o++ = '-';
    o = put_digits(o, d, 2);
    *o++ = 'T';
    o = put_digits(o, ms / 3600000, 2);
    *o++ = ':';
    o = put_digits(o, ms / 60000 % 60, 2);
    *o++ = ':';
    o = put_digits(o, ms / 1000 % 60, 2);
    *o++ = '.';
    o = put_digits(o, ms % 1000, 3);
    *o++ = 'Z';
    *o = '\0';
}

/* n digits at s as a number, or -1. */
static int digits(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

bool fleet_time_parse(const char *s, size_t n, int64_t *unix_ms)
{
    static const unsigned char mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (n < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
        s[n - 1] != 'Z')
        return false;
    int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
    int h = digits(s + 11, 2), mi = digits(s + 14, 2), se = digits(s + 17, 2);
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h < 0 || h > 23 || mi < 0 ||
        mi > 59 || se < 0 || se > 59)
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return false;
    int ms = 0;
    if (n > 20) { /* a fraction: "." and 1 to 9 digits before the Z */
        size_t nf = n - 21;
        if (s[19] != '.' || nf < 1 || nf > 9 || digits(s + 20, nf) < 0)
            return false;
        for (size_t i = 0; i < 3; i++)
            ms = ms * 10 + (i < nf ? s[20 + i] - '0' : 0);
    }
    *unix_ms =
        (days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se) * 1000 +
        ms;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Reading values                                                           */

struct vd {
    char *why;
    struct arena *arena;
    bool nomem;
};

static bool vfail(struct vd *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Keeps the first reason; returns false so that readers can return it. */
static bool vfail(struct vd *d, const char *fmt, ...)
{
    if (d->why[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->why, FLEET_WHY_MAX, fmt, ap);
        va_end(ap);
    }
    return false;
}

/* A key of a value in a reason: printable ASCII, cut with "..." to fit size. */
static const char *shown(const char *key, char *out, size_t size)
{
    size_t i = 0;
    for (; key[i] != '\0' && i + 4 < size; i++)
        out[i] = key[i] >= 0x20 && key[i] < 0x7f ? key[i] : '?';
    if (key[i] != '\0') {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

/* Reports the first member of obj not in keys (NULL-terminated). */
static bool known_keys(struct vd *d, const json_t *obj, const char *loc, const char *const *keys)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        bool known = false;
        for (size_t i = 0; keys[i] != NULL && !known; i++)
            known = strcmp(keys[i], key) == 0;
        if (!known) {
            char k[48];
            return vfail(d, "%s%sunknown key \"%s\"", loc, loc[0] ? ": " : "",
                         shown(key, k, sizeof(k)));
        }
    }
    return true;
}

/* Parses a value, checks its kind, version and keys. Returns the document
 * (the caller's reference) or NULL with the reason. */
static json_t *load_value(struct vd *d, const char *p, size_t len, const char *kind,
                          const char *const *keys)
{
    if (len > FLEET_VALUE_MAX) {
        vfail(d, "bigger than %d bytes", FLEET_VALUE_MAX);
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadb(p, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (root == NULL) {
        vfail(d, "not JSON (line %d, column %d): %s", je.line, je.column, je.text);
        return NULL;
    }
    const json_t *k = json_object_get(root, "kind");
    const json_t *v = json_object_get(root, "version");
    if (!json_is_object(root)) {
        vfail(d, "not a JSON object");
    } else if (!json_is_string(k)) {
        vfail(d, "no \"kind\": not a ficus value");
    } else if (strcmp(json_string_value(k), kind) != 0) {
        char s[48];
        vfail(d, "a \"%s\" value where a \"%s\" belongs", shown(json_string_value(k), s, sizeof(s)),
              kind);
    } else if (!json_is_integer(v)) {
        vfail(d, "version: must be an integer");
    } else if (json_integer_value(v) > FLEET_FORMAT) {
        vfail(d, "format version %lld is newer than this ficus reads (%d)",
              (long long)json_integer_value(v), FLEET_FORMAT);
    } else if (json_integer_value(v) < 1) {
        vfail(d, "format version %lld was never written by ficus",
              (long long)json_integer_value(v));
    } else if (known_keys(d, root, "", keys)) {
        return root;
    }
    json_decref(root);
    return NULL;
}

/* "loc.name" or "name". */
static const char *at(char *out, size_t size, const char *loc, const char *name)
{
    snprintf(out, size, "%s%s%s", loc, loc[0] ? "." : "", name);
    return out;
}

static bool read_percent(struct vd *d, const json_t *obj, const char *loc, const char *name,
                         bool required, double *out)
{
    char l[96];
    const json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return required ? vfail(d, "%s: is required", at(l, sizeof(l), loc, name)) : true;
    double x = json_number_value(v);
    if (!json_is_number(v) || !(x >= 0 && x <= 100))
        return vfail(d, "%s: must be a number from 0 to 100", at(l, sizeof(l), loc, name));
    *out = x;
    return true;
}

static bool read_int(struct vd *d, const json_t *obj, const char *loc, const char *name,
                     bool required, long long lo, long long hi, long long *out)
{
    char l[96];
    const json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return required ? vfail(d, "%s: is required", at(l, sizeof(l), loc, name)) : true;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        if (hi == LLONG_MAX)
            return vfail(d, "%s: must be an integer >= %lld", at(l, sizeof(l), loc, name), lo);
        return vfail(d, "%s: must be an integer from %lld to %lld", at(l, sizeof(l), loc, name), lo,
                     hi);
    }
    *out = json_integer_value(v);
    return true;
}

static bool read_bool(struct vd *d, const json_t *obj, const char *loc, const char *name, bool *out)
{
    char l[96];
    const json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return true;
    if (!json_is_boolean(v))
        return vfail(d, "%s: must be true or false", at(l, sizeof(l), loc, name));
    *out = json_is_true(v);
    return true;
}

/* A time; null is 0 when nullable. */
static bool read_time(struct vd *d, const json_t *obj, const char *loc, const char *name,
                      bool required, bool nullable, int64_t *out)
{
    char l[96];
    const json_t *v = json_object_get(obj, name);
    if (v == NULL)
        return required ? vfail(d, "%s: is required", at(l, sizeof(l), loc, name)) : true;
    if (nullable && json_is_null(v)) {
        *out = 0;
        return true;
    }
    if (!json_is_string(v) || !fleet_time_parse(json_string_value(v), json_string_length(v), out))
        return vfail(d, "%s: must be a UTC time such as \"2026-11-22T10:00:00.000Z\"%s",
                     at(l, sizeof(l), loc, name), nullable ? " or null" : "");
    return true;
}

/* A string of at most max bytes without control characters, copied into the
 * arena; "" when absent. */
static bool read_text(struct vd *d, const json_t *obj, const char *loc, const char *name,
                      bool required, size_t max, const char **out)
{
    char l[96];
    const json_t *v = json_object_get(obj, name);
    *out = "";
    if (v == NULL)
        return required ? vfail(d, "%s: is required", at(l, sizeof(l), loc, name)) : true;
    if (!json_is_string(v) || (required && json_string_length(v) == 0))
        return vfail(d, "%s: must be a%s string", at(l, sizeof(l), loc, name),
                     required ? " non-empty" : "");
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n > max)
        return vfail(d, "%s: longer than %zu bytes", at(l, sizeof(l), loc, name), max);
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return vfail(d, "%s: must not hold control characters", at(l, sizeof(l), loc, name));
    }
    char *copy = arena_strndup(d->arena, s, n);
    if (copy == NULL) {
        d->nomem = true;
        return false;
    }
    *out = copy;
    return true;
}

/* An instance id, copied into the arena ("" when absent and not required). */
static bool read_id(struct vd *d, const json_t *obj, const char *name, bool required,
                    const char **out)
{
    const json_t *v = json_object_get(obj, name);
    *out = "";
    if (v == NULL)
        return required ? vfail(d, "%s: is required", name) : true;
    struct span s = {json_string_value(v), json_string_length(v)};
    if (!json_is_string(v) || !fleet_name_valid(s, FLEET_ID_MAX))
        return vfail(d, "%s: must be an instance id (1 to %d letters, digits, '_', '.', '-')", name,
                     FLEET_ID_MAX);
    char *copy = arena_strndup(d->arena, s.p, s.len);
    if (copy == NULL) {
        d->nomem = true;
        return false;
    }
    *out = copy;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Writing values                                                           */

/* A number in its shortest form that reads back the same (15 or 17 digits),
 * an integer when it is one. */
static int put_number(struct buf *b, double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        return buf_put_int(b, (int64_t)v);
    char tmp[40];
    snprintf(tmp, sizeof(tmp), "%.15g", v);
    return buf_json_real(b, v, strtod(tmp, NULL) == v ? 15 : 17);
}

static int put_time(struct buf *b, int64_t ms)
{
    char t[FLEET_TIME_LEN + 1];
    fleet_time_format(ms, t);
    return buf_printf(b, "\"%s\"", t);
}

/* ,"name":"text" */
static int put_text(struct buf *b, const char *name, const char *s)
{
    RETURN_IF(buf_printf(b, ",\"%s\":", name));
    return buf_json_string(b, s, strlen(s));
}

static bool text_ok(const char *s, size_t max, bool nonempty)
{
    if (s == NULL)
        return !nonempty;
    size_t n = strlen(s);
    if (n > max || (nonempty && n == 0))
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    }
    return true;
}

static bool id_ok(const char *s, bool required)
{
    if (s == NULL || s[0] == '\0')
        return !required;
    return fleet_name_valid((struct span){s, strlen(s)}, FLEET_ID_MAX);
}

bool fleet_ack_kind_valid(const char *k)
{
    for (size_t i = 0; k != NULL && i < ARRAY_SIZE(ack_kinds); i++) {
        if (strcmp(k, ack_kinds[i]) == 0)
            return true;
    }
    return false;
}

static bool ack_kind_ok(const char *k)
{
    return fleet_ack_kind_valid(k);
}

void fleet_ack_id(const char *path, const char *kind, const char *endpoint, char *out)
{
    /* The three texts with a NUL after each, so that ("a", "b") and ("ab", "")
     * differ. */
    uint64_t h = FNV_SEED;
    const char *parts[3] = {path ? path : "", kind ? kind : "", endpoint ? endpoint : ""};
    for (size_t i = 0; i < 3; i++)
        h = hash_fnv1a(parts[i], strlen(parts[i]) + 1, h);
    snprintf(out, FLEET_ACK_ID_MAX + 1, "%016llx", (unsigned long long)h);
}

static bool ack_id_ok(const char *s)
{
    return s != NULL && fleet_name_valid((struct span){s, strlen(s)}, FLEET_ACK_ID_MAX);
}

/* ------------------------------------------------------------------------ */
/* ficus.route                                                              */

const char *fleet_rollback_name(enum fleet_rollback r)
{
    switch (r) {
    case FLEET_ROLLBACK_GUARD:
        return "guard";
    case FLEET_ROLLBACK_MANUAL:
        return "manual";
    default:
        return "";
    }
}

void fleet_route_init(struct fleet_route *r)
{
    memset(r, 0, sizeof(*r));
    r->shadow_percent = -1;
    r->ramp_step = -1;
    r->rollback = FLEET_ROLLBACK_NONE;
    r->rollback_detail = "";
    r->updated_by = "";
    arena_init(&r->arena);
}

void fleet_route_dispose(struct fleet_route *r)
{
    if (r == NULL)
        return;
    arena_dispose(&r->arena);
    fleet_route_init(r);
}

static bool route_ok(const struct fleet_route *r)
{
    if (!(r->new_percent >= 0 && r->new_percent <= 100))
        return false;
    if (r->shadow_percent != -1 && !(r->shadow_percent >= 0 && r->shadow_percent <= 100))
        return false;
    if (r->ramp_step < -1 || r->ramp_step > RAMP_STEP_MAX || r->ramp_next_at < 0)
        return false;
    if (r->rollback != FLEET_ROLLBACK_NONE && r->rollback != FLEET_ROLLBACK_MANUAL &&
        r->rollback != FLEET_ROLLBACK_GUARD)
        return false;
    if (r->rollback != FLEET_ROLLBACK_NONE &&
        (!text_ok(r->rollback_detail, FLEET_DETAIL_MAX, false) || r->rollback_at <= 0))
        return false;
    if (r->n_acks > FLEET_ACKS_MAX || (r->n_acks > 0 && r->acks == NULL))
        return false;
    for (size_t i = 0; i < r->n_acks; i++) {
        const struct fleet_ack *a = &r->acks[i];
        if (!text_ok(a->path, FLEET_ACK_TEXT_MAX, true) || !ack_kind_ok(a->kind) ||
            !text_ok(a->endpoint, FLEET_ACK_TEXT_MAX, false) ||
            !text_ok(a->note, FLEET_ACK_TEXT_MAX, false) ||
            (a->id != NULL && a->id[0] != '\0' && !ack_id_ok(a->id)) || a->at < 0)
            return false;
    }
    return id_ok(r->updated_by, false) && r->updated_at >= 0;
}

int fleet_route_encode(struct buf *b, const struct fleet_route *r)
{
    if (!route_ok(r))
        return -EINVAL;
    RETURN_IF(buf_puts(b, "{\"kind\":\"" KIND_ROUTE "\",\"version\":"));
    RETURN_IF(buf_put_int(b, FLEET_FORMAT));
    RETURN_IF(buf_puts(b, ",\"new_percent\":"));
    RETURN_IF(put_number(b, r->new_percent));
    if (r->shadow_percent >= 0) {
        RETURN_IF(buf_puts(b, ",\"shadow_percent\":"));
        RETURN_IF(put_number(b, r->shadow_percent));
    }
    RETURN_IF(buf_puts(b, ",\"ramp_step\":"));
    RETURN_IF(buf_put_int(b, r->ramp_step));
    RETURN_IF(buf_puts(b, ",\"ramp_next_at\":"));
    RETURN_IF(r->ramp_next_at > 0 ? put_time(b, r->ramp_next_at) : buf_puts(b, "null"));
    RETURN_IF(buf_puts(b, r->ramp_stopped ? ",\"ramp_stopped\":true" : ",\"ramp_stopped\":false"));
    RETURN_IF(buf_puts(b, ",\"rollback\":"));
    if (r->rollback == FLEET_ROLLBACK_NONE) {
        RETURN_IF(buf_puts(b, "null"));
    } else {
        RETURN_IF(buf_printf(b, "{\"reason\":\"%s\"", fleet_rollback_name(r->rollback)));
        RETURN_IF(put_text(b, "detail", r->rollback_detail ? r->rollback_detail : ""));
        RETURN_IF(buf_puts(b, ",\"at\":"));
        RETURN_IF(put_time(b, r->rollback_at));
        RETURN_IF(buf_puts(b, "}"));
    }
    RETURN_IF(buf_puts(b, ",\"acknowledgements\":["));
    for (size_t i = 0; i < r->n_acks; i++) {
        const struct fleet_ack *a = &r->acks[i];
        char id[FLEET_ACK_ID_MAX + 1];
        if (a->id != NULL && a->id[0] != '\0')
            snprintf(id, sizeof(id), "%s", a->id);
        else
            fleet_ack_id(a->path, a->kind, a->endpoint, id);
        RETURN_IF(buf_puts(b, i ? ",{\"id\":" : "{\"id\":"));
        RETURN_IF(buf_json_string(b, id, strlen(id)));
        RETURN_IF(put_text(b, "path", a->path));
        RETURN_IF(put_text(b, "kind", a->kind));
        if (a->endpoint != NULL && a->endpoint[0] != '\0')
            RETURN_IF(put_text(b, "endpoint", a->endpoint));
        if (a->note != NULL && a->note[0] != '\0')
            RETURN_IF(put_text(b, "note", a->note));
        if (a->at > 0) {
            RETURN_IF(buf_puts(b, ",\"at\":"));
            RETURN_IF(put_time(b, a->at));
        }
        RETURN_IF(buf_puts(b, "}"));
    }
    RETURN_IF(buf_puts(b, "]"));
    if (r->updated_by != NULL && r->updated_by[0] != '\0')
        RETURN_IF(put_text(b, "updated_by", r->updated_by));
    if (r->updated_at > 0) {
        RETURN_IF(buf_puts(b, ",\"updated_at\":"));
        RETURN_IF(put_time(b, r->updated_at));
    }
    return buf_puts(b, "}");
}

static bool read_rollback(struct vd *d, const json_t *root, struct fleet_route *r)
{
    static const char *const keys[] = {"reason", "detail", "at", NULL};
    const json_t *rb = json_object_get(root, "rollback");
    if (rb == NULL || json_is_null(rb))
        return true;
    if (!json_is_object(rb))
        return vfail(d, "rollback: must be an object or null");
    if (!known_keys(d, rb, "rollback", keys))
        return false;
    const json_t *reason = json_object_get(rb, "reason");
    const char *rs = json_is_string(reason) ? json_string_value(reason) : "";
    if (strcmp(rs, "guard") == 0)
        r->rollback = FLEET_ROLLBACK_GUARD;
    else if (strcmp(rs, "manual") == 0)
        r->rollback = FLEET_ROLLBACK_MANUAL;
    else
        return vfail(d, "rollback.reason: must be \"guard\" or \"manual\"");
    return read_text(d, rb, "rollback", "detail", false, FLEET_DETAIL_MAX, &r->rollback_detail) &&
           read_time(d, rb, "rollback", "at", true, false, &r->rollback_at);
}

static bool read_acks(struct vd *d, const json_t *root, struct fleet_route *r)
{
    static const char *const keys[] = {"id", "path", "kind", "endpoint", "note", "at", NULL};
    const json_t *acks = json_object_get(root, "acknowledgements");
    if (acks == NULL)
        return true;
    if (!json_is_array(acks))
        return vfail(d, "acknowledgements: must be an array");
    size_t n = json_array_size(acks);
    if (n > FLEET_ACKS_MAX)
        return vfail(d, "acknowledgements: more than %d", FLEET_ACKS_MAX);
    if (n == 0)
        return true;
    struct fleet_ack *out = arena_alloc(d->arena, n * sizeof(*out));
    if (out == NULL) {
        d->nomem = true;
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_array_get(acks, i);
        char loc[40];
        snprintf(loc, sizeof(loc), "acknowledgements[%zu]", i);
        if (!json_is_object(a))
            return vfail(d, "%s: must be an object", loc);
        out[i].at = 0;
        if (!known_keys(d, a, loc, keys) ||
            !read_text(d, a, loc, "id", false, FLEET_ACK_ID_MAX, &out[i].id) ||
            !read_text(d, a, loc, "path", true, FLEET_ACK_TEXT_MAX, &out[i].path) ||
            !read_text(d, a, loc, "kind", true, 16, &out[i].kind) ||
            !read_text(d, a, loc, "endpoint", false, FLEET_ACK_TEXT_MAX, &out[i].endpoint) ||
            !read_text(d, a, loc, "note", false, FLEET_ACK_TEXT_MAX, &out[i].note) ||
            !read_time(d, a, loc, "at", false, false, &out[i].at))
            return false;
        if (!ack_kind_ok(out[i].kind))
            return vfail(d,
                         "%s.kind: must be one of status, header, json, added, removed, body, "
                         "error",
                         loc);
        if (out[i].id[0] == '\0') {
            char *id = arena_alloc_bytes(d->arena, FLEET_ACK_ID_MAX + 1);
            if (id == NULL) {
                d->nomem = true;
                return false;
            }
            fleet_ack_id(out[i].path, out[i].kind, out[i].endpoint, id);
            out[i].id = id;
        } else if (!ack_id_ok(out[i].id)) {
            return vfail(d, "%s.id: must be 1 to %d letters, digits, '_', '.', '-'", loc,
                         FLEET_ACK_ID_MAX);
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(out[j].id, out[i].id) == 0)
                return vfail(d, "%s.id: \"%s\" appears twice", loc, out[i].id);
        }
    }
    r->acks = out;
    r->n_acks = n;
    return true;
}

int fleet_route_decode(const char *p, size_t len, struct fleet_route *r, char *why)
{
    static const char *const keys[] = {"kind",           "version",    "new_percent",
                                       "shadow_percent", "ramp_step",  "ramp_next_at",
                                       "ramp_stopped",   "rollback",   "acknowledgements",
                                       "updated_by",     "updated_at", NULL};
    fleet_route_dispose(r);
    why[0] = '\0';
    struct vd d = {.why = why, .arena = &r->arena};
    json_t *root = load_value(&d, p, len, KIND_ROUTE, keys);
    if (root == NULL)
        return FICUS_EBADRESP;
    long long step = -1;
    bool ok = read_percent(&d, root, "", "new_percent", true, &r->new_percent) &&
              read_percent(&d, root, "", "shadow_percent", false, &r->shadow_percent) &&
              read_int(&d, root, "", "ramp_step", false, -1, RAMP_STEP_MAX, &step) &&
              read_time(&d, root, "", "ramp_next_at", false, true, &r->ramp_next_at) &&
              read_bool(&d, root, "", "ramp_stopped", &r->ramp_stopped) &&
              read_rollback(&d, root, r) && read_acks(&d, root, r) &&
              read_id(&d, root, "updated_by", false, &r->updated_by) &&
              read_time(&d, root, "", "updated_at", false, false, &r->updated_at);
    r->ramp_step = (int)step;
    json_decref(root);
    if (!ok) {
        fleet_route_dispose(r);
        return d.nomem ? FICUS_ENOMEM : FICUS_EBADRESP;
    }
    return 0;
}

/* Copies the n acknowledgements at src into arena; NULL when out of memory. */
static struct fleet_ack *copy_acks(struct arena *a, const struct fleet_ack *src, size_t n)
{
    struct fleet_ack *out = arena_alloc(a, n * sizeof(*out));
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const struct fleet_ack *s = &src[i];
        char id[FLEET_ACK_ID_MAX + 1];
        if (s->id != NULL && s->id[0] != '\0')
            snprintf(id, sizeof(id), "%s", s->id);
        else
            fleet_ack_id(s->path, s->kind, s->endpoint, id);
        out[i].id = arena_strndup(a, id, strlen(id));
        out[i].path = arena_strndup(a, s->path ? s->path : "", s->path ? strlen(s->path) : 0);
        out[i].kind = arena_strndup(a, s->kind ? s->kind : "", s->kind ? strlen(s->kind) : 0);
        out[i].endpoint =
            arena_strndup(a, s->endpoint ? s->endpoint : "", s->endpoint ? strlen(s->endpoint) : 0);
        out[i].note = arena_strndup(a, s->note ? s->note : "", s->note ? strlen(s->note) : 0);
        out[i].at = s->at;
        if (out[i].id == NULL || out[i].path == NULL || out[i].kind == NULL ||
            out[i].endpoint == NULL || out[i].note == NULL)
            return NULL;
    }
    return out;
}

static const char *copy_text(struct arena *a, const char *s, bool *nomem)
{
    if (s == NULL)
        return "";
    char *c = arena_strndup(a, s, strlen(s));
    if (c == NULL) {
        *nomem = true;
        return "";
    }
    return c;
}

int fleet_route_copy(struct fleet_route *dst, const struct fleet_route *src)
{
    fleet_route_dispose(dst);
    bool nomem = false;
    dst->new_percent = src->new_percent;
    dst->shadow_percent = src->shadow_percent;
    dst->ramp_step = src->ramp_step;
    dst->ramp_next_at = src->ramp_next_at;
    dst->ramp_stopped = src->ramp_stopped;
    dst->rollback = src->rollback;
    dst->rollback_detail = copy_text(&dst->arena, src->rollback_detail, &nomem);
    dst->rollback_at = src->rollback_at;
    dst->updated_by = copy_text(&dst->arena, src->updated_by, &nomem);
    dst->updated_at = src->updated_at;
    if (src->n_acks > 0) {
        dst->acks = copy_acks(&dst->arena, src->acks, src->n_acks);
        dst->n_acks = src->n_acks;
        nomem = nomem || dst->acks == NULL;
    }
    if (nomem) {
        fleet_route_dispose(dst);
        return FICUS_ENOMEM;
    }
    return 0;
}

void fleet_change_init(struct fleet_change *ch, enum fleet_change_kind kind)
{
    memset(ch, 0, sizeof(*ch));
    ch->kind = kind;
    ch->new_percent = -1;
    ch->shadow_percent = -1;
    ch->rollback = FLEET_ROLLBACK_NONE;
    ch->detail = "";
    ch->ramp_step = -1;
}

int fleet_route_change(const struct fleet_route *cur, const struct fleet_change *ch, int64_t now_ms,
                       const char *by, struct fleet_route *out)
{
    int rc = fleet_route_copy(out, cur);
    if (rc != 0)
        return rc;
    bool nomem = false;
    switch (ch->kind) {
    case FLEET_CHANGE_PERCENT:
        if (ch->new_percent >= 0)
            out->new_percent = ch->new_percent;
        if (ch->shadow_percent >= 0)
            out->shadow_percent = ch->shadow_percent;
        if ((ch->new_percent >= 0 && ch->new_percent > 100) ||
            (ch->shadow_percent >= 0 && ch->shadow_percent > 100))
            rc = -EINVAL;
        break;
    case FLEET_CHANGE_ROLLBACK:
        if (ch->rollback != FLEET_ROLLBACK_MANUAL && ch->rollback != FLEET_ROLLBACK_GUARD) {
            rc = -EINVAL;
            break;
        }
        out->new_percent = 0;
        out->ramp_stopped = true;
        out->ramp_next_at = 0;
        out->rollback = ch->rollback;
        out->rollback_detail = copy_text(&out->arena, ch->detail, &nomem);
        out->rollback_at = now_ms > 0 ? now_ms : 1;
        break;
    case FLEET_CHANGE_RAMP:
        if (ch->new_percent >= 0)
            out->new_percent = ch->new_percent;
        out->ramp_step = ch->ramp_step;
        out->ramp_next_at = ch->ramp_next_at;
        out->ramp_stopped = ch->ramp_stopped;
        if (ch->new_percent > 100)
            rc = -EINVAL;
        break;
    case FLEET_CHANGE_ACKS:
        if (ch->n_acks > FLEET_ACKS_MAX || (ch->n_acks > 0 && ch->acks == NULL)) {
            rc = -EINVAL;
            break;
        }
        out->acks = ch->n_acks > 0 ? copy_acks(&out->arena, ch->acks, ch->n_acks) : NULL;
        out->n_acks = ch->n_acks;
        nomem = ch->n_acks > 0 && out->acks == NULL;
        break;
    default:
        rc = -EINVAL;
        break;
    }
    if (rc == 0 && !nomem) {
        out->updated_by = copy_text(&out->arena, by, &nomem);
        out->updated_at = now_ms > 0 ? now_ms : 0;
    }
    if (rc == 0 && nomem)
        rc = FICUS_ENOMEM;
    if (rc == 0 && !route_ok(out))
        rc = -EINVAL;
    if (rc != 0)
        fleet_route_dispose(out);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* ficus.ramp_driver                                                        */

int fleet_driver_encode(struct buf *b, const struct fleet_driver *d)
{
    if (!id_ok(d->id, true) || d->since <= 0)
        return -EINVAL;
    RETURN_IF(buf_puts(b, "{\"kind\":\"" KIND_DRIVER "\",\"version\":"));
    RETURN_IF(buf_put_int(b, FLEET_FORMAT));
    RETURN_IF(put_text(b, "id", d->id));
    RETURN_IF(buf_puts(b, ",\"since\":"));
    RETURN_IF(put_time(b, d->since));
    return buf_puts(b, "}");
}

int fleet_driver_decode(const char *p, size_t len, struct fleet_driver *out, char *why)
{
    static const char *const keys[] = {"kind", "version", "id", "since", NULL};
    struct arena arena;
    arena_init(&arena);
    why[0] = '\0';
    memset(out, 0, sizeof(*out));
    struct vd d = {.why = why, .arena = &arena};
    json_t *root = load_value(&d, p, len, KIND_DRIVER, keys);
    const char *id = "";
    bool ok = root != NULL && read_id(&d, root, "id", true, &id) &&
              read_time(&d, root, "", "since", true, false, &out->since);
    if (ok)
        snprintf(out->id, sizeof(out->id), "%s", id);
    else
        memset(out, 0, sizeof(*out));
    json_decref(root);
    arena_dispose(&arena);
    return ok ? 0 : d.nomem ? FICUS_ENOMEM : FICUS_EBADRESP;
}

/* ------------------------------------------------------------------------ */
/* ficus.instance                                                           */

void fleet_instance_init(struct fleet_instance *in)
{
    memset(in, 0, sizeof(*in));
    in->id = "";
    in->ficus_version = "";
    arena_init(&in->arena);
}

void fleet_instance_dispose(struct fleet_instance *in)
{
    if (in == NULL)
        return;
    arena_dispose(&in->arena);
    fleet_instance_init(in);
}

static bool counts_ok(const struct fleet_route_counts *rc)
{
    const struct fleet_counts *c = &rc->c;
    return rc->route != NULL &&
           fleet_name_valid((struct span){rc->route, strlen(rc->route)}, FLEET_NAME_MAX) &&
           rc->window_ms >= 1 && rc->window_ms <= WINDOW_MS_MAX && c->divergent <= c->comparisons &&
           c->new_errors <= c->new_requests && c->comparisons <= INT64_MAX &&
           c->new_requests <= INT64_MAX;
}

int fleet_instance_encode(struct buf *b, const struct fleet_instance *in)
{
    if (!id_ok(in->id, true) || in->at <= 0 || in->started_at < 0 ||
        !text_ok(in->ficus_version, VERSION_TEXT_MAX, false) || in->n_routes > FLEET_ROUTES_MAX ||
        (in->n_routes > 0 && in->routes == NULL))
        return -EINVAL;
    for (size_t i = 0; i < in->n_routes; i++) {
        if (!counts_ok(&in->routes[i]))
            return -EINVAL;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(in->routes[i].route, in->routes[j].route) == 0)
                return -EINVAL;
        }
    }
    RETURN_IF(buf_puts(b, "{\"kind\":\"" KIND_INSTANCE "\",\"version\":"));
    RETURN_IF(buf_put_int(b, FLEET_FORMAT));
    RETURN_IF(put_text(b, "id", in->id));
    if (in->ficus_version != NULL && in->ficus_version[0] != '\0')
        RETURN_IF(put_text(b, "ficus", in->ficus_version));
    if (in->started_at > 0) {
        RETURN_IF(buf_puts(b, ",\"started_at\":"));
        RETURN_IF(put_time(b, in->started_at));
    }
    RETURN_IF(buf_puts(b, ",\"at\":"));
    RETURN_IF(put_time(b, in->at));
    RETURN_IF(buf_puts(b, ",\"routes\":{"));
    for (size_t i = 0; i < in->n_routes; i++) {
        const struct fleet_route_counts *rc = &in->routes[i];
        RETURN_IF(buf_printf(
            b,
            "%s\"%s\":{\"window_ms\":%lld,\"comparisons\":%llu,\"divergent\":%llu,"
            "\"new_requests\":%llu,\"new_errors\":%llu}",
            i ? "," : "", rc->route, (long long)rc->window_ms,
            (unsigned long long)rc->c.comparisons, (unsigned long long)rc->c.divergent,
            (unsigned long long)rc->c.new_requests, (unsigned long long)rc->c.new_errors));
    }
    return buf_puts(b, "}}");
}

static bool read_counts(struct vd *d, const char *route, const json_t *v,
                        struct fleet_route_counts *out)
{
    static const char *const keys[] = {"window_ms",    "comparisons", "divergent",
                                       "new_requests", "new_errors",  NULL};
    char loc[FLEET_NAME_MAX + 16];
    snprintf(loc, sizeof(loc), "routes.%s", route);
    if (!json_is_object(v))
        return vfail(d, "%s: must be an object", loc);
    long long w = 0, c = 0, dv = 0, nr = 0, ne = 0;
    if (!known_keys(d, v, loc, keys) ||
        !read_int(d, v, loc, "window_ms", true, 1, WINDOW_MS_MAX, &w) ||
        !read_int(d, v, loc, "comparisons", true, 0, LLONG_MAX, &c) ||
        !read_int(d, v, loc, "divergent", true, 0, LLONG_MAX, &dv) ||
        !read_int(d, v, loc, "new_requests", true, 0, LLONG_MAX, &nr) ||
        !read_int(d, v, loc, "new_errors", true, 0, LLONG_MAX, &ne))
        return false;
    if (dv > c)
        return vfail(d, "%s: divergent is more than comparisons", loc);
    if (ne > nr)
        return vfail(d, "%s: new_errors is more than new_requests", loc);
    out->window_ms = w;
    out->c = (struct fleet_counts){(uint64_t)c, (uint64_t)dv, (uint64_t)nr, (uint64_t)ne};
    return true;
}

static bool read_instance_routes(struct vd *d, const json_t *root, struct fleet_instance *in)
{
    const json_t *routes = json_object_get(root, "routes");
    if (routes == NULL)
        return vfail(d, "routes: is required");
    if (!json_is_object(routes))
        return vfail(d, "routes: must be an object of route name to counts");
    size_t n = json_object_size(routes);
    if (n > FLEET_ROUTES_MAX)
        return vfail(d, "routes: more than %d", FLEET_ROUTES_MAX);
    if (n == 0)
        return true;
    struct fleet_route_counts *out = arena_alloc(d->arena, n * sizeof(*out));
    if (out == NULL) {
        d->nomem = true;
        return false;
    }
    size_t i = 0;
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)routes, name, v)
    {
        if (!fleet_name_valid((struct span){name, strlen(name)}, FLEET_NAME_MAX)) {
            char k[48];
            return vfail(d, "routes: \"%s\" is not a route name", shown(name, k, sizeof(k)));
        }
        out[i].route = arena_strndup(d->arena, name, strlen(name));
        if (out[i].route == NULL) {
            d->nomem = true;
            return false;
        }
        if (!read_counts(d, name, v, &out[i]))
            return false;
        i++;
    }
    in->routes = out;
    in->n_routes = n;
    return true;
}

int fleet_instance_decode(const char *p, size_t len, struct fleet_instance *in, char *why)
{
    static const char *const keys[] = {"kind",       "version", "id",     "ficus",
                                       "started_at", "at",      "routes", NULL};
    fleet_instance_dispose(in);
    why[0] = '\0';
    struct vd d = {.why = why, .arena = &in->arena};
    json_t *root = load_value(&d, p, len, KIND_INSTANCE, keys);
    if (root == NULL)
        return FICUS_EBADRESP;
    bool ok = read_id(&d, root, "id", true, &in->id) &&
              read_text(&d, root, "", "ficus", false, VERSION_TEXT_MAX, &in->ficus_version) &&
              read_time(&d, root, "", "started_at", false, false, &in->started_at) &&
              read_time(&d, root, "", "at", true, false, &in->at) &&
              read_instance_routes(&d, root, in);
    json_decref(root);
    if (!ok) {
        fleet_instance_dispose(in);
        return d.nomem ? FICUS_ENOMEM : FICUS_EBADRESP;
    }
    return 0;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

size_t fleet_sum(const struct fleet_instance *const *inst, size_t n, const char *route,
                 int64_t window_ms, int64_t now_ms, int64_t max_age_ms, struct fleet_counts *out)
{
    size_t counted = 0;
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        const struct fleet_instance *in = inst[i];
        if (in == NULL || in->at < now_ms - max_age_ms || in->at > now_ms + max_age_ms)
            continue;
        for (size_t k = 0; k < in->n_routes; k++) {
            const struct fleet_route_counts *rc = &in->routes[k];
            if (strcmp(rc->route, route) != 0 || rc->window_ms != window_ms)
                continue;
            out->comparisons = add_sat(out->comparisons, rc->c.comparisons);
            out->divergent = add_sat(out->divergent, rc->c.divergent);
            out->new_requests = add_sat(out->new_requests, rc->c.new_requests);
            out->new_errors = add_sat(out->new_errors, rc->c.new_errors);
            counted++;
            break;
        }
    }
    return counted;
}
