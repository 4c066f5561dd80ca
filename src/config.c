/* Configuration: reads the JSON file, checks it against the schema of SPEC
 * "Configuration (JSON)" and builds an immutable, reference-counted snapshot.
 *
 * Validation never stops at the first problem: every reader reports what is
 * wrong with its value, leaves the default in place and carries on, so that
 * `ficus check` shows every error of a file at once. A snapshot is returned
 * only when nothing was wrong.
 *
 * Ownership: the snapshot keeps the jansson document (cfg->root) and points
 * into it for every string that is used as written. Everything else it holds
 * (the arrays of listeners, backends, routes, methods..., the lower-cased
 * copies of header names and the host names cut out of backend URLs) comes
 * from cfg->arena. config_unref frees both at once; nothing is freed piecemeal. */
#include "ficus/config.h"
#include "ficus/common.h"
#include "ficus/endpoint.h"
#include "ficus/replay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define LOC_MAX         512                /* a JSON location in an error line */
#define ERRORS_SHOWN    200                /* error lines beyond this are counted, not kept */
#define CONFIG_FILE_MAX (16 * 1024 * 1024) /* a bigger file is surely a mistake */
#define KIB             1024LL
#define MIB             (1024LL * 1024)
#define GIB             (1024LL * 1024 * 1024)
#define WORKERS_MAX     256
#define RESOLVERS_MAX   16 /* c-ares tries them in order; more is a mistake */

/* ------------------------------------------------------------------------ */
/* Error lists                                                              */

void config_errors_add(struct config_errors *e, const char *fmt, ...)
{
    if (e == NULL)
        return;
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 8;
        char **lines = realloc(e->lines, cap * sizeof(*lines));
        if (lines == NULL)
            return; /* out of memory: the line is lost, the caller still gets NULL */
        e->lines = lines;
        e->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    char *line = malloc((size_t)n + 1);
    if (line == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(line, (size_t)n + 1, fmt, ap);
    va_end(ap);
    /* A line may quote the file's own bytes (a key, a name, jansson's "near
     * '...'"): control bytes become \xHH, so that an error is one line. */
    size_t ctl = 0;
    for (int i = 0; i < n; i++)
        ctl += (unsigned char)line[i] < 0x20 || line[i] == 0x7f;
    char *esc = ctl ? malloc((size_t)n + 3 * ctl + 1) : NULL;
    if (esc != NULL) {
        size_t o = 0;
        for (int i = 0; i <= n; i++) {
            unsigned char c = (unsigned char)line[i];
            if (i < n && (c < 0x20 || c == 0x7f))
                o += (size_t)sprintf(esc + o, "\\x%02x", c);
            else
                esc[o++] = (char)c;
        }
        free(line);
        line = esc;
    }
    e->lines[e->n++] = line;
}

void config_errors_dispose(struct config_errors *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->n; i++)
        free(e->lines[i]);
    free(e->lines);
    e->lines = NULL;
    e->n = 0;
    e->cap = 0;
}

/* ------------------------------------------------------------------------ */
/* Defaults: the only place where a default value is written down. Each
 * function runs before the JSON of its object is read; a key that is present
 * and valid then overwrites the default. */

static const char *default_redact_headers[] = {"authorization", "cookie", "set-cookie",
                                               "proxy-authorization"};
static const char *default_diff_headers[] = {"content-type"};
static const char *default_shadow_methods[] = {"GET", "HEAD", "OPTIONS"};

#define DEFAULT_ADMIN_ADDRESS "127.0.0.1:9901"
#define DEFAULT_LEGACY        "legacy" /* backend names a route uses when it names none */
#define DEFAULT_NEW           "new"

static const char *parse_addr(const char *text, struct config_addr *out);

static void defaults_config(struct config *cfg)
{
    cfg->workers = 0;
    /* Without an "admin" object the admin API still runs, on loopback: the
     * dashboard and the rollback button must be there when they are needed. */
    cfg->admin = true;
    parse_addr(DEFAULT_ADMIN_ADDRESS, &cfg->admin_addr);
    cfg->admin_token_env = NULL;
    cfg->state_file = NULL;
    cfg->reload_on_change = false;
    cfg->state_store.type = STATE_STORE_FILE;
    cfg->state_store.timeout_ms = 5000;
    cfg->state_store.lease_ttl_s = 10;
    cfg->state_store.verify = true;

    cfg->divlog_path = NULL;
    cfg->divlog_max_bytes = 100 * MIB;
    cfg->divlog_keep = 5;
    cfg->divlog_body_bytes = 4096;
    cfg->divlog_request_body_bytes = REPLAY_BODY_BYTES_DEFAULT;
    /* Never modified: the snapshot replaces the pointer when it adds names. */
    cfg->redact_headers = default_redact_headers;
    cfg->n_redact_headers = ARRAY_SIZE(default_redact_headers);
    cfg->redact_json = NULL;
    cfg->n_redact_json = 0;

    cfg->access_log_path = "-";

    cfg->max_connections = 10000;
    cfg->max_header_bytes = 65536;
    cfg->max_request_body_bytes = 100 * MIB;

    cfg->connect_ms = 2000;
    cfg->upstream_ms = 30000;
    cfg->client_idle_ms = 60000;
    cfg->drain_ms = 10000;
    cfg->shadow_memory_bytes = 256 * MIB;
    cfg->tunnel_idle_ms = 300000;
}

static void defaults_backend(struct backend_cfg *b)
{
    b->lb.policy = LB_ROUND_ROBIN;
    b->lb.eject_failures = 5;
    b->lb.eject_base_ms = 10000;
    b->lb.eject_max_ms = 300000; /* or base_ms when that is longer */
    b->min_resolve_ms = 1000;
    b->max_resolve_ms = 60000; /* or min_resolve_interval_ms when that is longer */
    b->max_connections = 256;
    b->verify = true;
    b->ca_file = NULL;
    b->server_name = NULL;
    b->health_path = NULL;
    b->health_interval_ms = 2000;
}

static void defaults_route(struct route_cfg *rt)
{
    rt->legacy = -1; /* resolved from DEFAULT_LEGACY / DEFAULT_NEW when not named */
    rt->new_ = -1;
    rt->new_percent = 0;
    rt->sticky = STICKY_IP;
    rt->sticky_name = NULL;
    rt->override_header = NULL;

    rt->shadow = false;
    rt->shadow_percent = 100;
    rt->shadow_methods = default_shadow_methods;
    rt->n_shadow_methods = ARRAY_SIZE(default_shadow_methods);
    rt->shadow_max_inflight = 100;
    rt->shadow_timeout_ms = 5000;
    rt->shadow_max_body_bytes = 1024 * 1024;
    rt->shadow_correlate.max_entries = CORRELATE_DEFAULT_ENTRIES;
    rt->shadow_correlate.ttl_ms = CORRELATE_DEFAULT_TTL_MS;

    rt->diff.headers = default_diff_headers;
    rt->diff.n_headers = ARRAY_SIZE(default_diff_headers);
    rt->diff.tolerance = 0;
    rt->noise = false;
    rt->noise_percent = 2;
    rt->noise_threshold = 0.05;
    rt->noise_warmup = ENDPOINT_WARMUP_DEFAULT;

    rt->fallback = 0;
    rt->allow_upgrade = true;

    rt->guard = false;
    rt->guard_max_divergence_rate = 0.01;
    rt->guard_max_error_rate = 0.02;
    rt->guard_min_comparisons = 200;
    rt->guard_window_ms = 60000;

    rt->ramp = false;

    rt->endpoints = NULL;
    rt->n_endpoints = 0;
    rt->max_endpoints = ENDPOINT_MAX_DEFAULT;
}

/* ------------------------------------------------------------------------ */
/* The parser: error reporting, locations and memory                        */

struct parser {
    const char *fname;
    struct config_errors *errs; /* may be NULL: errors are only counted */
    struct config *cfg;
    size_t n_errors;
    bool nomem;
};

static void fail(struct parser *p, const char *loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Adds "FILE: loc: reason". */
static void fail(struct parser *p, const char *loc, const char *fmt, ...)
{
    char reason[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (++p->n_errors <= ERRORS_SHOWN)
        config_errors_add(p->errs, "%s: %s: %s", p->fname, loc, reason);
}

/* Writes the location of member key under parent: "key" at the top level,
 * "parent.key" below it. Returns out (LOC_MAX bytes; a longer one is cut). */
static const char *loc_key(char *out, const char *parent, const char *key)
{
    int n;
    if (parent[0] == '\0')
        n = snprintf(out, LOC_MAX, "%s", key);
    else
        n = snprintf(out, LOC_MAX, "%s.%s", parent, key);
    if (n >= LOC_MAX)
        out[LOC_MAX - 1] = '\0'; /* cut, as documented */
    return out;
}

static const char *loc_index(char *out, const char *parent, size_t i)
{
    if (snprintf(out, LOC_MAX, "%s[%zu]", parent, i) >= LOC_MAX)
        out[LOC_MAX - 1] = '\0';
    return out;
}

/* n zeroed elements of size bytes from the snapshot's arena, or NULL (and the
 * parse fails) when memory runs out. */
static void *alloc_array(struct parser *p, size_t n, size_t size)
{
    if (n == 0 || n > SIZE_MAX / size) {
        p->nomem = n != 0;
        return NULL;
    }
    void *mem = arena_alloc(&p->cfg->arena, n * size);
    if (mem == NULL) {
        p->nomem = true;
        return NULL;
    }
    memset(mem, 0, n * size);
    return mem;
}

static const char *lower_dup(struct parser *p, const char *s)
{
    size_t n = strlen(s);
    char *copy = alloc_array(p, n + 1, 1);
    if (copy == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        copy[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    return copy;
}

/* ------------------------------------------------------------------------ */
/* Lexical checks                                                           */

static bool is_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (!is_tchar((unsigned char)*s))
            return false;
    }
    return true;
}

static bool is_method(const char *s)
{
    if (!is_token(s))
        return false;
    for (; *s; s++) {
        if (*s >= 'a' && *s <= 'z')
            return false;
    }
    return true;
}

/* Route and backend names appear in metrics labels and admin URLs. */
static bool is_name(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        char c = *s;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

#define NAME_CHARS "letters, digits, '_', '.' and '-'"

/* NULL when s is an RFC 6901 JSON Pointer (with "*" segments allowed), else
 * the reason. */
static const char *pointer_problem(const char *s)
{
    if (s[0] != '\0' && s[0] != '/')
        return "must be a JSON Pointer: \"\" or a string starting with \"/\"";
    for (; *s; s++) {
        if (*s == '~' && s[1] != '0' && s[1] != '1')
            return "must be a JSON Pointer: \"~\" is only allowed as \"~0\" or \"~1\"";
    }
    return NULL;
}

/* Reads a decimal port of 1..65535 from s (the whole string). */
static bool parse_port(const char *s, uint16_t *out)
{
    unsigned long v = 0;
    size_t n = 0;
    for (; s[n]; n++) {
        if (s[n] < '0' || s[n] > '9' || n >= 5)
            return false;
        v = v * 10 + (unsigned long)(s[n] - '0');
    }
    if (n == 0 || v == 0 || v > 65535)
        return false;
    *out = (uint16_t)v;
    return true;
}

/* Fills out from "host:port" or "[v6]:port" where host is an IPv4 literal or
 * "localhost". Returns NULL, or the reason the text is not an address. */
static const char *parse_addr(const char *text, struct config_addr *out)
{
    char host[64];
    const char *port;
    bool v6 = false;

    memset(out, 0, sizeof(*out));
    out->text = text;
    if (text[0] == '[') {
        const char *rb = strchr(text, ']');
        if (rb == NULL || rb[1] != ':')
            return "must be \"host:port\", as in \"[::1]:8080\"";
        if ((size_t)(rb - text - 1) >= sizeof(host))
            return "host must be an IPv4 address, an [IPv6] address or localhost";
        memcpy(host, text + 1, (size_t)(rb - text - 1));
        host[rb - text - 1] = '\0';
        port = rb + 2;
        v6 = true;
    } else {
        const char *colon = strrchr(text, ':');
        if (colon == NULL)
            return "must be \"host:port\", as in \"127.0.0.1:8080\"";
        if (memchr(text, ':', (size_t)(colon - text)) != NULL)
            return "an IPv6 address must be in brackets, as in \"[::1]:8080\"";
        if ((size_t)(colon - text) >= sizeof(host))
            return "host must be an IPv4 address, an [IPv6] address or localhost";
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
        port = colon + 1;
    }

    uint16_t portnum;
    if (!parse_port(port, &portnum))
        return "port must be a number from 1 to 65535";
    if (v6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return "host must be an IPv4 address, an [IPv6] address or localhost";
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(portnum);
        out->len = sizeof(*sin6);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
        const char *ip = strcasecmp(host, "localhost") == 0 ? "127.0.0.1" : host;
        if (inet_pton(AF_INET, ip, &sin->sin_addr) != 1)
            return "host must be an IPv4 address, an [IPv6] address or localhost";
        sin->sin_family = AF_INET;
        sin->sin_port = htons(portnum);
        out->len = sizeof(*sin);
    }
    return NULL;
}

static bool addr_is_any(const struct config_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    return memcmp(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr, &in6addr_any,
                  sizeof(in6addr_any)) == 0;
}

/* Reports a (at loc) when binding it next to b (at other) would fail: the
 * same address, or the same port with one of them a wildcard. Only addresses
 * of one family are compared: whether [::] takes IPv4 too depends on the system. */
static void check_addr_conflict(struct parser *p, const char *loc, const struct config_addr *a,
                                const char *other, const struct config_addr *b)
{
    if (a->len == 0 || b->len == 0 || a->ss.ss_family != b->ss.ss_family)
        return;
    if (memcmp(&a->ss, &b->ss, a->len) == 0) {
        fail(p, loc, "same address as %s", other);
        return;
    }
    /* sin_port and sin6_port sit at the same offset. */
    const struct sockaddr_in *sa = (const struct sockaddr_in *)&a->ss;
    const struct sockaddr_in *sb = (const struct sockaddr_in *)&b->ss;
    if (sa->sin_port == sb->sin_port && (addr_is_any(a) || addr_is_any(b)))
        fail(p, loc, "same port as %s, and one of the two is a wildcard address", other);
}

static bool is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

/* Fills *tls and b's host, port and ip_literal from url:
 * "http[s]://host[:port][/]" where host is a name, an IPv4 literal or a
 * bracketed IPv6 literal. Returns NULL, or the reason the URL is refused. */
static const char *parse_url(struct parser *p, struct backend_server_cfg *b, bool *tls,
                             const char *url)
{
    const char *s;
    if (strncasecmp(url, "http://", 7) == 0) {
        *tls = false;
        s = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        *tls = true;
        s = url + 8;
    } else {
        return "must start with http:// or https://";
    }

    size_t alen = strcspn(s, "/?#");
    const char *rest = s + alen;
    if (memchr(s, '@', alen) != NULL)
        return "must not contain user information (\"user@\")";
    if (strpbrk(rest, "?#") != NULL)
        return "must not contain a query or a fragment";
    if (rest[0] == '/' && rest[1] != '\0')
        return "must not contain a path: ficus forwards the request's own path";

    const char *host = s, *host_end, *port = NULL;
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', alen);
        if (rb == NULL)
            return "has an IPv6 address without its closing \"]\"";
        host = s + 1;
        host_end = rb;
        if (rb + 1 < s + alen) {
            if (rb[1] != ':')
                return "must be http[s]://host[:port]";
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(s, ':', alen);
        host_end = colon ? colon : s + alen;
        if (colon != NULL) {
            if (memchr(colon + 1, ':', (size_t)(s + alen - colon - 1)) != NULL)
                return "an IPv6 address must be in brackets, as in http://[::1]:8080";
            port = colon + 1;
        }
    }

    size_t hlen = (size_t)(host_end - host);
    if (hlen == 0)
        return "has no host";
    if (hlen > 253)
        return "has a host name longer than 253 characters";
    if (s[0] == '[') {
        char buf[64];
        struct in6_addr a6;
        if (hlen >= sizeof(buf))
            return "has an invalid IPv6 address";
        memcpy(buf, host, hlen);
        buf[hlen] = '\0';
        if (inet_pton(AF_INET6, buf, &a6) != 1)
            return "has an invalid IPv6 address";
        b->ip_literal = true;
    } else {
        for (size_t i = 0; i < hlen; i++) {
            if (!is_host_char(host[i]))
                return "host must be a name, an IPv4 address or an [IPv6] address";
        }
    }

    if (port != NULL) {
        char buf[8];
        size_t plen = (size_t)(s + alen - port);
        if (plen >= sizeof(buf))
            return "port must be a number from 1 to 65535";
        memcpy(buf, port, plen);
        buf[plen] = '\0';
        if (!parse_port(buf, &b->port))
            return "port must be a number from 1 to 65535";
    } else {
        b->port = *tls ? 443 : 80;
    }

    char *copy = alloc_array(p, hlen + 1, 1);
    if (copy != NULL)
        memcpy(copy, host, hlen);
    b->host = copy;
    struct in_addr a4;
    if (copy != NULL && s[0] != '[')
        b->ip_literal = inet_pton(AF_INET, copy, &a4) == 1;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Readers: each checks one JSON value at loc and reports what is wrong. They
 * return true and set *out only when the value is valid.                   */

/* Is v an object? Reports keys that are not in keys (NULL-terminated). An
 * object with unknown keys still returns true so that its known members are
 * checked too. */
static bool read_object(struct parser *p, json_t *v, const char *loc, const char *const *keys)
{
    if (!json_is_object(v)) {
        fail(p, loc, "must be an object");
        return false;
    }
    const char *key;
    json_t *member;
    json_object_foreach(v, key, member)
    {
        bool known = false;
        for (size_t i = 0; keys[i] != NULL && !known; i++)
            known = strcmp(key, keys[i]) == 0;
        if (!known) {
            char l[LOC_MAX];
            fail(p, loc_key(l, loc, key), "unknown key");
        }
    }
    return true;
}

/* The member key of obj, or NULL. A missing required member is reported. */
static json_t *member(struct parser *p, json_t *obj, const char *loc, const char *key,
                      bool required)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL && required) {
        char l[LOC_MAX];
        fail(p, loc_key(l, loc, key), "is required");
    }
    return v;
}

static bool read_int(struct parser *p, json_t *v, const char *loc, long long lo, long long hi,
                     long long *out)
{
    long long x = json_is_integer(v) ? (long long)json_integer_value(v) : 0;
    if (json_is_integer(v) && x >= lo && x <= hi) {
        *out = x;
        return true;
    }
    if (hi == LLONG_MAX)
        fail(p, loc, "must be an integer >= %lld", lo);
    else
        fail(p, loc, "must be an integer from %lld to %lld", lo, hi);
    return false;
}

/* A number: a JSON integer or real. hi is HUGE_VAL for no upper bound. */
static bool read_number(struct parser *p, json_t *v, const char *loc, double lo, double hi,
                        double *out)
{
    double x = json_is_number(v) ? json_number_value(v) : 0;
    if (json_is_number(v) && x >= lo && x <= hi) {
        *out = x;
        return true;
    }
    if (hi == HUGE_VAL)
        fail(p, loc, "must be a number >= %g", lo);
    else
        fail(p, loc, "must be a number from %g to %g", lo, hi);
    return false;
}

static bool read_string(struct parser *p, json_t *v, const char *loc, const char **out)
{
    if (!json_is_string(v) || json_string_length(v) == 0) {
        fail(p, loc, "must be a non-empty string");
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool read_bool(struct parser *p, json_t *v, const char *loc, bool *out)
{
    if (!json_is_boolean(v)) {
        fail(p, loc, "must be true or false");
        return false;
    }
    *out = json_is_true(v);
    return true;
}

/* A header name, stored lower case (a copy in the arena). */
static bool read_header_name(struct parser *p, json_t *v, const char *loc, const char **out)
{
    if (!json_is_string(v) || !is_token(json_string_value(v))) {
        fail(p, loc, "must be a header name (letters, digits and !#$%%&'*+-.^_`|~)");
        return false;
    }
    const char *copy = lower_dup(p, json_string_value(v));
    if (copy == NULL)
        return false;
    *out = copy;
    return true;
}

static bool read_method(struct parser *p, json_t *v, const char *loc, const char **out)
{
    if (!json_is_string(v) || !is_method(json_string_value(v))) {
        fail(p, loc, "must be an upper-case method name such as \"GET\"");
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool read_pointer(struct parser *p, json_t *v, const char *loc, const char **out)
{
    const char *why = json_is_string(v) ? pointer_problem(json_string_value(v))
                                        : "must be a JSON Pointer: \"\" or a string starting "
                                          "with \"/\"";
    if (why != NULL) {
        fail(p, loc, "%s", why);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

/* An endpoint template, "GET /posts/{id}" (endpoint_template_problem). */
static bool read_endpoint(struct parser *p, json_t *v, const char *loc, const char **out)
{
    const char *why = json_is_string(v) ? endpoint_template_problem(json_string_value(v))
                                        : "must be a string \"METHOD /path\"";
    if (why != NULL) {
        fail(p, loc, "%s", why);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

typedef bool (*read_item_fn)(struct parser *p, json_t *v, const char *loc, const char **out);

/* An array of strings, each checked by read_item; what names the items in
 * the error about the array itself. The array comes from the arena. */
static bool read_list(struct parser *p, json_t *v, const char *loc, bool nonempty, const char *what,
                      read_item_fn read_item, const char ***out, size_t *n_out)
{
    if (!json_is_array(v) || (nonempty && json_array_size(v) == 0)) {
        fail(p, loc, "must be %s array of %s", nonempty ? "a non-empty" : "an", what);
        return false;
    }
    size_t n = json_array_size(v);
    const char **items = alloc_array(p, n, sizeof(*items));
    if (items == NULL && n > 0)
        return false;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        char l[LOC_MAX];
        if (!read_item(p, json_array_get(v, i), loc_index(l, loc, i), &items[i]))
            ok = false;
    }
    if (!ok)
        return false;
    *out = items;
    *n_out = n;
    return true;
}

/* Field readers: read member key of obj (at loc) when present; an absent one
 * leaves the default in *out. */

static void field_int(struct parser *p, json_t *obj, const char *loc, const char *key, long long lo,
                      long long hi, int *out)
{
    char l[LOC_MAX];
    long long x;
    json_t *v = json_object_get(obj, key);
    if (v != NULL && read_int(p, v, loc_key(l, loc, key), lo, hi, &x))
        *out = (int)x;
}

static void field_i64(struct parser *p, json_t *obj, const char *loc, const char *key, long long lo,
                      long long hi, int64_t *out)
{
    char l[LOC_MAX];
    long long x;
    json_t *v = json_object_get(obj, key);
    if (v != NULL && read_int(p, v, loc_key(l, loc, key), lo, hi, &x))
        *out = (int64_t)x;
}

static void field_size(struct parser *p, json_t *obj, const char *loc, const char *key,
                       long long lo, long long hi, size_t *out)
{
    char l[LOC_MAX];
    long long x;
    json_t *v = json_object_get(obj, key);
    if (v != NULL && read_int(p, v, loc_key(l, loc, key), lo, hi, &x))
        *out = (size_t)x;
}

static void field_number(struct parser *p, json_t *obj, const char *loc, const char *key, double lo,
                         double hi, double *out)
{
    char l[LOC_MAX];
    json_t *v = json_object_get(obj, key);
    if (v != NULL)
        read_number(p, v, loc_key(l, loc, key), lo, hi, out);
}

static void field_bool(struct parser *p, json_t *obj, const char *loc, const char *key, bool *out)
{
    char l[LOC_MAX];
    json_t *v = json_object_get(obj, key);
    if (v != NULL)
        read_bool(p, v, loc_key(l, loc, key), out);
}

static void field_string(struct parser *p, json_t *obj, const char *loc, const char *key,
                         bool required, const char **out)
{
    char l[LOC_MAX];
    json_t *v = member(p, obj, loc, key, required);
    if (v != NULL)
        read_string(p, v, loc_key(l, loc, key), out);
}

static void field_list(struct parser *p, json_t *obj, const char *loc, const char *key,
                       bool nonempty, const char *what, read_item_fn read_item, const char ***out,
                       size_t *n_out)
{
    char l[LOC_MAX];
    json_t *v = json_object_get(obj, key);
    if (v != NULL)
        read_list(p, v, loc_key(l, loc, key), nonempty, what, read_item, out, n_out);
}

/* An address at loc: "host:port". */
static bool read_addr(struct parser *p, json_t *v, const char *loc, struct config_addr *out)
{
    if (!json_is_string(v)) {
        fail(p, loc, "must be a string \"host:port\"");
        return false;
    }
    const char *why = parse_addr(json_string_value(v), out);
    if (why != NULL) {
        fail(p, loc, "%s", why);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Sections                                                                  */

static void parse_listen(struct parser *p, json_t *v)
{
    static const char *const keys[] = {"address", "tls", NULL};
    static const char *const tls_keys[] = {"cert_file", "key_file", NULL};
    struct config *cfg = p->cfg;

    if (json_is_string(v)) {
        cfg->listens = alloc_array(p, 1, sizeof(*cfg->listens));
        if (cfg->listens != NULL && read_addr(p, v, "listen", &cfg->listens[0].addr))
            cfg->n_listens = 1;
        return;
    }
    if (!json_is_array(v) || json_array_size(v) == 0) {
        fail(p, "listen", "must be \"host:port\" or a non-empty array of {\"address\": ...}");
        return;
    }
    size_t n = json_array_size(v);
    cfg->listens = alloc_array(p, n, sizeof(*cfg->listens));
    if (cfg->listens == NULL)
        return;
    cfg->n_listens = n;
    for (size_t i = 0; i < n; i++) {
        struct listen_cfg *ls = &cfg->listens[i];
        json_t *item = json_array_get(v, i);
        char loc[LOC_MAX], l[LOC_MAX];
        loc_index(loc, "listen", i);
        if (!read_object(p, item, loc, keys))
            continue;
        json_t *addr = member(p, item, loc, "address", true);
        if (addr != NULL && read_addr(p, addr, loc_key(l, loc, "address"), &ls->addr)) {
            for (size_t j = 0; j < i; j++) {
                char other[LOC_MAX];
                loc_index(other, "listen", j);
                check_addr_conflict(p, l, &ls->addr, other, &cfg->listens[j].addr);
            }
        }
        json_t *tls = json_object_get(item, "tls");
        if (tls != NULL && read_object(p, tls, loc_key(l, loc, "tls"), tls_keys)) {
            ls->tls = true;
            field_string(p, tls, l, "cert_file", true, &ls->cert_file);
            field_string(p, tls, l, "key_file", true, &ls->key_file);
        }
    }
}

static void parse_admin(struct parser *p, json_t *v)
{
    static const char *const keys[] = {"address", "token_env", NULL};
    struct config *cfg = p->cfg;
    if (!read_object(p, v, "admin", keys))
        return;
    json_t *addr = json_object_get(v, "address");
    if (addr != NULL)
        read_addr(p, addr, "admin.address", &cfg->admin_addr);
    field_string(p, v, "admin", "token_env", false, &cfg->admin_token_env);
}

/* ---- backend fleets: servers, balancing, ejection, DNS (issue 19) ---- */

/* A server URL at loc into s; *tls gets its scheme. */
static bool read_server_url(struct parser *p, json_t *v, const char *loc,
                            struct backend_server_cfg *s, bool *tls)
{
    if (!read_string(p, v, loc, &s->url))
        return false;
    const char *why = parse_url(p, s, tls, s->url);
    if (why != NULL)
        fail(p, loc, "%s", why);
    return why == NULL;
}

/* One item of "servers" at loc: a URL string or {"url": ..., "weight": N}. */
static bool read_server(struct parser *p, json_t *v, const char *loc, struct backend_server_cfg *s,
                        bool *tls)
{
    static const char *const keys[] = {"url", "weight", NULL};
    char l[LOC_MAX];
    if (json_is_string(v))
        return read_server_url(p, v, loc, s, tls);
    if (!json_is_object(v)) {
        fail(p, loc, "must be a URL or an object {\"url\": ..., \"weight\": ...}");
        return false;
    }
    read_object(p, v, loc, keys);
    size_t errors = p->n_errors;
    json_t *url = member(p, v, loc, "url", true);
    bool ok = url != NULL && read_server_url(p, url, loc_key(l, loc, "url"), s, tls);
    field_int(p, v, loc, "weight", 1, LB_WEIGHT_MAX, &s->weight);
    return ok && p->n_errors == errors;
}

/* "url" (one server) or "servers" (a list of one scheme) into b->servers, and
 * b's url, tls, host and port from the first. Returns true when every server
 * is valid. */
static bool parse_servers(struct parser *p, json_t *v, const char *loc, struct backend_cfg *b)
{
    char l[LOC_MAX];
    json_t *url = json_object_get(v, "url");
    json_t *list = json_object_get(v, "servers");
    if (url != NULL && list != NULL) {
        fail(p, loc, "has both \"url\" and \"servers\": give one of them");
        return false;
    }
    if (url == NULL && list == NULL) {
        fail(p, loc, "needs \"url\" (one server) or \"servers\" (a list)");
        return false;
    }
    if (url != NULL) {
        b->servers = alloc_array(p, 1, sizeof(*b->servers));
        if (b->servers == NULL)
            return false;
        b->n_servers = 1;
        b->servers[0].weight = 1;
        if (!read_server_url(p, url, loc_key(l, loc, "url"), &b->servers[0], &b->tls))
            return false;
    } else {
        b->servers_listed = true;
        loc_key(l, loc, "servers");
        size_t n = json_is_array(list) ? json_array_size(list) : 0;
        if (n == 0 || n > BACKEND_SERVERS_MAX) {
            fail(p, l, "must be a non-empty array of at most %d servers", BACKEND_SERVERS_MAX);
            return false;
        }
        b->servers = alloc_array(p, n, sizeof(*b->servers));
        if (b->servers == NULL)
            return false;
        b->n_servers = n;
        bool all_ok = true;
        int first = -1; /* the first valid server: its scheme is the backend's */
        for (size_t i = 0; i < n; i++) {
            struct backend_server_cfg *s = &b->servers[i];
            char il[LOC_MAX];
            bool tls = false;
            s->weight = 1;
            loc_index(il, l, i);
            if (!read_server(p, json_array_get(list, i), il, s, &tls)) {
                all_ok = false;
                s->host = NULL; /* not compared below */
                continue;
            }
            if (first < 0) {
                first = (int)i;
                b->tls = tls;
            } else if (tls != b->tls) {
                fail(p, il,
                     "must use the scheme of servers[%d] (%s): the tls settings of a backend "
                     "apply to all its servers",
                     first, b->tls ? "https://" : "http://");
                all_ok = false;
            }
            for (size_t j = 0; j < i; j++) {
                const struct backend_server_cfg *o = &b->servers[j];
                if (o->host != NULL && o->port == s->port && strcasecmp(o->host, s->host) == 0) {
                    fail(p, il,
                         "the same host and port as servers[%zu]: give that one a weight "
                         "instead",
                         j);
                    all_ok = false;
                    break;
                }
            }
        }
        if (!all_ok)
            return false;
    }
    b->url = b->servers[0].url;
    b->host = b->servers[0].host;
    b->port = b->servers[0].port;
    return true;
}

/* "lb", "ejection" and the resolve intervals of backend b. */
static void parse_fleet(struct parser *p, json_t *v, const char *loc, struct backend_cfg *b)
{
    static const char *const ejection_keys[] = {"consecutive_failures", "base_ms", "max_ms", NULL};
    char l[LOC_MAX];

    json_t *lb = json_object_get(v, "lb");
    if (lb != NULL) {
        const char *name = json_is_string(lb) ? json_string_value(lb) : "";
        if (strcmp(name, "round_robin") == 0)
            b->lb.policy = LB_ROUND_ROBIN;
        else if (strcmp(name, "least_requests") == 0)
            b->lb.policy = LB_LEAST_REQUESTS;
        else
            fail(p, loc_key(l, loc, "lb"), "must be \"round_robin\" or \"least_requests\"");
    }

    json_t *ej = json_object_get(v, "ejection");
    if (ej != NULL && read_object(p, ej, loc_key(l, loc, "ejection"), ejection_keys)) {
        field_int(p, ej, l, "consecutive_failures", 1, 1000, &b->lb.eject_failures);
        field_i64(p, ej, l, "base_ms", 1, 86400000, &b->lb.eject_base_ms);
        if (json_object_get(ej, "max_ms") == NULL) {
            if (b->lb.eject_max_ms < b->lb.eject_base_ms)
                b->lb.eject_max_ms = b->lb.eject_base_ms;
        } else {
            char ml[LOC_MAX];
            long long x;
            if (read_int(p, json_object_get(ej, "max_ms"), loc_key(ml, l, "max_ms"),
                         b->lb.eject_base_ms, 86400000, &x))
                b->lb.eject_max_ms = x;
        }
    }

    field_int(p, v, loc, "min_resolve_interval_ms", 100, 86400000, &b->min_resolve_ms);
    json_t *max = json_object_get(v, "max_resolve_interval_ms");
    if (max == NULL) {
        if (b->max_resolve_ms < b->min_resolve_ms)
            b->max_resolve_ms = b->min_resolve_ms;
    } else {
        long long x;
        if (read_int(p, max, loc_key(l, loc, "max_resolve_interval_ms"), b->min_resolve_ms,
                     86400000, &x))
            b->max_resolve_ms = (int)x;
    }
}

/* "resolvers": a non-empty list of "ip:port" DNS servers. */
static void parse_resolvers(struct parser *p, json_t *v)
{
    struct config *cfg = p->cfg;
    size_t n = json_is_array(v) ? json_array_size(v) : 0;
    if (n == 0 || n > RESOLVERS_MAX) {
        fail(p, "resolvers",
             "must be a non-empty array of at most %d \"ip:port\" DNS servers (leave it out to "
             "use the system's)",
             RESOLVERS_MAX);
        return;
    }
    struct config_addr *addrs = alloc_array(p, n, sizeof(*addrs));
    if (addrs == NULL)
        return;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        char l[LOC_MAX];
        loc_index(l, "resolvers", i);
        if (!read_addr(p, json_array_get(v, i), l, &addrs[i])) {
            ok = false;
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (addrs[j].len == addrs[i].len &&
                memcmp(&addrs[j].ss, &addrs[i].ss, addrs[i].len) == 0) {
                fail(p, l, "same address as resolvers[%zu]", j);
                ok = false;
            }
        }
    }
    if (ok) {
        cfg->resolvers = addrs;
        cfg->n_resolvers = n;
    }
}

/* ---- backends ---- */

static void parse_backend(struct parser *p, json_t *v, const char *loc, struct backend_cfg *b)
{
    static const char *const keys[] = {"url",
                                       "max_connections",
                                       "tls",
                                       "health",
                                       "servers",
                                       "lb",
                                       "ejection",
                                       "min_resolve_interval_ms",
                                       "max_resolve_interval_ms",
                                       NULL};
    static const char *const tls_keys[] = {"verify", "ca_file", "server_name", NULL};
    static const char *const health_keys[] = {"path", "interval_ms", NULL};
    char l[LOC_MAX];

    if (!read_object(p, v, loc, keys))
        return;
    bool url_ok = parse_servers(p, v, loc, b);
    parse_fleet(p, v, loc, b);
    field_int(p, v, loc, "max_connections", 1, 100000, &b->max_connections);

    json_t *tls = json_object_get(v, "tls");
    if (tls != NULL && read_object(p, tls, loc_key(l, loc, "tls"), tls_keys)) {
        if (url_ok && !b->tls)
            fail(p, l,
                 b->servers_listed ? "only allowed with https:// servers"
                                   : "only allowed with an https:// url");
        field_bool(p, tls, l, "verify", &b->verify);
        field_string(p, tls, l, "ca_file", false, &b->ca_file);
        field_string(p, tls, l, "server_name", false, &b->server_name);
    }

    json_t *health = json_object_get(v, "health");
    if (health != NULL && read_object(p, health, loc_key(l, loc, "health"), health_keys)) {
        char hl[LOC_MAX];
        json_t *path = member(p, health, l, "path", true);
        if (path != NULL && (!json_is_string(path) || json_string_value(path)[0] != '/'))
            fail(p, loc_key(hl, l, "path"), "must be a path starting with \"/\"");
        else if (path != NULL)
            b->health_path = json_string_value(path);
        field_int(p, health, l, "interval_ms", 100, 3600000, &b->health_interval_ms);
    }
}

static void parse_backends(struct parser *p, json_t *v)
{
    struct config *cfg = p->cfg;
    if (!json_is_object(v) || json_object_size(v) == 0) {
        fail(p, "backends", "must be an object naming at least one backend");
        return;
    }
    size_t n = json_object_size(v);
    cfg->backends = alloc_array(p, n, sizeof(*cfg->backends));
    if (cfg->backends == NULL)
        return;
    cfg->n_backends = n;

    size_t i = 0;
    const char *name;
    json_t *item;
    json_object_foreach(v, name, item)
    {
        struct backend_cfg *b = &cfg->backends[i++];
        char loc[LOC_MAX];
        loc_key(loc, "backends", name);
        defaults_backend(b);
        b->name = name; /* kept even when invalid, so routes naming it get no second error */
        if (!is_name(name))
            fail(p, loc, "a backend name must be non-empty and use only " NAME_CHARS);
        parse_backend(p, item, loc, b);
    }
}

/* The state store's key prefix: a directory of its own ("/ficus/prod/"), in
 * bytes that read the same in logs, etcdctl and JSON. NULL or the reason. */
static const char *prefix_problem(const char *s)
{
    size_t n = strlen(s);
    if (n < 2 || s[0] != '/' || s[n - 1] != '/')
        return "must start and end with \"/\" and name a directory, as in \"/ficus/prod/\"";
    if (n > 256)
        return "must be at most 256 bytes";
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '/' && s[i + 1] == '/')
            return "must not contain \"//\"";
        if (c != '/' && !is_host_char(c))
            return "may use only letters, digits, '_', '.', '-' and '/'";
    }
    return NULL;
}

/* Does the URL (already accepted by parse_url) name its port? */
static bool url_has_port(const char *url)
{
    const char *s = strstr(url, "://") + 3;
    size_t alen = strcspn(s, "/?#");
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', alen);
        return rb != NULL && rb + 1 < s + alen && rb[1] == ':';
    }
    return memchr(s, ':', alen) != NULL;
}

static void parse_store_endpoints(struct parser *p, json_t *v, struct state_store_cfg *st)
{
    const char *loc = "state_store.endpoints";
    if (!json_is_array(v) || json_array_size(v) == 0 ||
        json_array_size(v) > STATE_STORE_ENDPOINTS_MAX) {
        fail(p, loc,
             "must be an array of 1 to %d URLs of etcd members, as in "
             "[\"http://127.0.0.1:2379\"]",
             STATE_STORE_ENDPOINTS_MAX);
        return;
    }
    size_t n = json_array_size(v);
    struct backend_cfg *eps = alloc_array(p, n, sizeof(*eps));
    if (eps == NULL)
        return;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        struct backend_cfg *b = &eps[i];
        char l[LOC_MAX], name[32];
        loc_index(l, loc, i);
        defaults_backend(b);
        b->max_connections = 4; /* a watch, a keepalive and a write at once */
        snprintf(name, sizeof(name), "etcd-%zu", i);
        b->name = arena_strndup(&p->cfg->arena, name, strlen(name));
        if (b->name == NULL)
            p->nomem = true;
        json_t *u = json_array_get(v, i);
        if (!json_is_string(u) || json_string_length(u) == 0) {
            fail(p, l, "must be a URL such as \"http://127.0.0.1:2379\"");
            ok = false;
            continue;
        }
        b->url = json_string_value(u);
        b->servers = alloc_array(p, 1, sizeof(*b->servers));
        if (b->servers == NULL) {
            ok = false;
            continue;
        }
        b->n_servers = 1;
        b->servers[0].url = b->url;
        b->servers[0].weight = 1;
        const char *why = parse_url(p, &b->servers[0], &b->tls, b->url);
        b->host = b->servers[0].host;
        b->port = b->servers[0].port;
        if (why != NULL && strncmp(why, "must not contain a path", 23) == 0)
            why = "must not contain a path: give the member's address only";
        if (why == NULL && !url_has_port(b->url))
            why = "must name the port, as in \"http://127.0.0.1:2379\"";
        if (why != NULL) {
            fail(p, l, "%s", why);
            ok = false;
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (eps[j].host == NULL)
                continue;
            if (eps[j].tls != b->tls) {
                fail(p, l, "must use the same scheme as %s[%zu]", loc, j);
                ok = false;
            } else if (eps[j].port == b->port && b->host != NULL &&
                       strcasecmp(eps[j].host, b->host) == 0) {
                fail(p, l, "same member as %s[%zu]", loc, j);
                ok = false;
            }
        }
    }
    if (!ok)
        return;
    st->endpoints = eps;
    st->n_endpoints = n;
    st->tls = eps[0].tls;
}

static void parse_state_store(struct parser *p, json_t *v)
{
    static const char *const keys[] = {"type",       "endpoints",   "prefix", "tls",
                                       "timeout_ms", "lease_ttl_s", NULL};
    static const char *const tls_keys[] = {"verify",   "ca_file",     "cert_file",
                                           "key_file", "server_name", NULL};
    const char *loc = "state_store";
    struct state_store_cfg *st = &p->cfg->state_store;
    char l[LOC_MAX];

    if (!read_object(p, v, loc, keys))
        return;
    json_t *type = member(p, v, loc, "type", true);
    if (type == NULL)
        return;
    const char *t = json_is_string(type) ? json_string_value(type) : "";
    if (strcmp(t, "file") == 0) {
        /* The state file alone: nothing else belongs here. */
        for (size_t i = 1; keys[i] != NULL; i++) {
            if (json_object_get(v, keys[i]) != NULL)
                fail(p, loc_key(l, loc, keys[i]), "only with \"type\": \"etcd\"");
        }
        return;
    }
    if (strcmp(t, "etcd") != 0) {
        fail(p, "state_store.type", "must be \"file\" or \"etcd\"");
        return;
    }
    st->type = STATE_STORE_ETCD;

    json_t *eps = member(p, v, loc, "endpoints", true);
    if (eps != NULL)
        parse_store_endpoints(p, eps, st);
    json_t *prefix = member(p, v, loc, "prefix", true);
    if (prefix != NULL) {
        const char *why = json_is_string(prefix) ? prefix_problem(json_string_value(prefix))
                                                 : "must be a string such as \"/ficus/prod/\"";
        if (why != NULL)
            fail(p, "state_store.prefix", "%s", why);
        else
            st->prefix = json_string_value(prefix);
    }
    size_t before = p->n_errors;
    field_int(p, v, loc, "timeout_ms", 100, 60000, &st->timeout_ms);
    field_int(p, v, loc, "lease_ttl_s", 2, 3600, &st->lease_ttl_s);
    /* A keepalive runs every third of the TTL; one that times out must leave
     * time for another before the lease expires. */
    if (p->n_errors == before && (int64_t)st->timeout_ms * 2 > (int64_t)st->lease_ttl_s * 1000)
        fail(p, "state_store.timeout_ms",
             "must be at most half of lease_ttl_s (%d ms), so that a lease outlives a keepalive "
             "that times out",
             st->lease_ttl_s * 500);

    json_t *tls = json_object_get(v, "tls");
    if (tls != NULL && read_object(p, tls, loc_key(l, loc, "tls"), tls_keys)) {
        if (st->n_endpoints > 0 && !st->tls)
            fail(p, l, "only allowed with https:// endpoints");
        field_bool(p, tls, l, "verify", &st->verify);
        field_string(p, tls, l, "ca_file", false, &st->ca_file);
        field_string(p, tls, l, "cert_file", false, &st->cert_file);
        field_string(p, tls, l, "key_file", false, &st->key_file);
        field_string(p, tls, l, "server_name", false, &st->server_name);
        char kl[LOC_MAX];
        if (st->cert_file != NULL && st->key_file == NULL)
            fail(p, loc_key(kl, l, "key_file"), "is required with cert_file");
        if (st->key_file != NULL && st->cert_file == NULL)
            fail(p, loc_key(kl, l, "cert_file"), "is required with key_file");
    }
    for (size_t i = 0; i < st->n_endpoints; i++) {
        st->endpoints[i].verify = st->verify;
        st->endpoints[i].ca_file = st->ca_file;
        st->endpoints[i].server_name = st->server_name;
    }
}

static void parse_match(struct parser *p, json_t *v, const char *loc, struct route_match *m)
{
    static const char *const keys[] = {"path_prefix", "methods", "host", "headers", NULL};
    char l[LOC_MAX];

    if (!read_object(p, v, loc, keys))
        return;
    json_t *prefix = json_object_get(v, "path_prefix");
    if (prefix != NULL) {
        if (!json_is_string(prefix) || json_string_value(prefix)[0] != '/') {
            fail(p, loc_key(l, loc, "path_prefix"), "must be a path starting with \"/\"");
        } else {
            m->path_prefix = json_string_value(prefix);
            m->path_prefix_len = json_string_length(prefix);
        }
    }
    field_list(p, v, loc, "methods", true, "method names", read_method, &m->methods, &m->n_methods);
    field_string(p, v, loc, "host", false, &m->host);

    json_t *headers = json_object_get(v, "headers");
    if (headers == NULL)
        return;
    if (!json_is_object(headers)) {
        fail(p, loc_key(l, loc, "headers"), "must be an object of header name to value");
        return;
    }
    char hloc[LOC_MAX];
    loc_key(hloc, loc, "headers");
    size_t n = json_object_size(headers);
    struct header_match *hm = alloc_array(p, n, sizeof(*hm));
    if (hm == NULL)
        return;
    size_t k = 0;
    bool ok = true;
    const char *name;
    json_t *value;
    json_object_foreach(headers, name, value)
    {
        loc_key(l, hloc, name);
        if (!is_token(name)) {
            fail(p, l, "must be a header name (letters, digits and !#$%%&'*+-.^_`|~)");
            ok = false;
            continue;
        }
        if (!json_is_string(value)) {
            fail(p, l, "must be a string");
            ok = false;
            continue;
        }
        const char *lower = lower_dup(p, name);
        if (lower == NULL)
            return;
        for (size_t j = 0; j < k; j++) {
            if (strcmp(hm[j].name, lower) == 0) {
                fail(p, l, "header \"%s\" is listed twice (names ignore case)", lower);
                ok = false;
            }
        }
        hm[k].name = lower;
        hm[k].value = json_string_value(value);
        k++;
    }
    if (ok) {
        m->headers = hm;
        m->n_headers = k;
    }
}

static void parse_route_match(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    parse_match(p, v, loc, &rt->match);
}

static void parse_sticky(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    static const char *const keys[] = {"header", "cookie", "query", "ip", NULL};
    char l[LOC_MAX];

    if (!read_object(p, v, loc, keys))
        return;
    size_t given = 0;
    for (size_t i = 0; keys[i] != NULL; i++)
        given += json_object_get(v, keys[i]) != NULL;
    if (given != 1) {
        fail(p, loc, "must have exactly one of \"header\", \"cookie\", \"query\" or \"ip\"");
        return;
    }
    json_t *header = json_object_get(v, "header");
    json_t *cookie = json_object_get(v, "cookie");
    json_t *query = json_object_get(v, "query");
    if (header != NULL) {
        if (read_header_name(p, header, loc_key(l, loc, "header"), &rt->sticky_name))
            rt->sticky = STICKY_HEADER;
    } else if (cookie != NULL) {
        if (!json_is_string(cookie) || !is_token(json_string_value(cookie))) {
            fail(p, loc_key(l, loc, "cookie"), "must be a cookie name");
        } else {
            rt->sticky = STICKY_COOKIE;
            rt->sticky_name = json_string_value(cookie);
        }
    } else if (query != NULL) {
        if (read_string(p, query, loc_key(l, loc, "query"), &rt->sticky_name))
            rt->sticky = STICKY_QUERY;
    } else if (!json_is_true(json_object_get(v, "ip"))) {
        fail(p, loc_key(l, loc, "ip"), "must be true");
    }
}

static bool has_star_segment(const char *ptr)
{
    for (const char *s = strstr(ptr, "/*"); s != NULL; s = strstr(s + 1, "/*")) {
        if (s[2] == '\0' || s[2] == '/')
            return true;
    }
    return false;
}

/* shadow.correlate: where created ids are read, which body fields are
 * rewritten, the map's bounds (correlate.h). */
static void parse_correlate(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    static const char *const keys[] = {"id_pointer",  "location", "body_fields",
                                       "max_entries", "ttl_ms",   NULL};
    static const char *const field_keys[] = {"pointer", "collection", NULL};
    struct correlate_cfg *cc = &rt->shadow_correlate;
    char l[LOC_MAX];
    if (!read_object(p, v, loc, keys))
        return;
    cc->enabled = true;
    json_t *ptr = json_object_get(v, "id_pointer");
    if (ptr != NULL && read_pointer(p, ptr, loc_key(l, loc, "id_pointer"), &cc->id_pointer) &&
        (cc->id_pointer[0] == '\0' || has_star_segment(cc->id_pointer))) {
        fail(p, l, "must be a JSON Pointer to one member, without \"*\" segments");
        cc->id_pointer = NULL;
    }
    field_bool(p, v, loc, "location", &cc->location);
    if (cc->id_pointer == NULL && !cc->location && ptr == NULL)
        fail(p, loc, "needs \"id_pointer\" or \"location\": true (where the created id is read)");
    bool writes = false;
    for (size_t i = 0; i < rt->n_shadow_methods; i++) {
        const char *mth = rt->shadow_methods[i];
        if (strcmp(mth, "GET") != 0 && strcmp(mth, "HEAD") != 0 && strcmp(mth, "OPTIONS") != 0)
            writes = true;
    }
    if (!writes)
        fail(p, loc,
             "learns ids from shadowed writes: list them (POST, PUT, ...) in shadow.methods");
    json_t *fields = json_object_get(v, "body_fields");
    if (fields != NULL) {
        char fl[LOC_MAX];
        loc_key(fl, loc, "body_fields");
        size_t n = json_is_array(fields) ? json_array_size(fields) : 0;
        if (!json_is_array(fields) || n > CORRELATE_MAX_BODY_FIELDS) {
            fail(p, fl,
                 "must be an array of at most %d JSON Pointers or {\"pointer\", \"collection\"}",
                 CORRELATE_MAX_BODY_FIELDS);
        } else if (n > 0 &&
                   (cc->body_fields = alloc_array(p, n, sizeof(*cc->body_fields))) != NULL) {
            for (size_t i = 0; i < n; i++) {
                json_t *f = json_array_get(fields, i);
                struct correlate_field *cf = &cc->body_fields[i];
                loc_index(l, fl, i);
                if (json_is_object(f)) {
                    if (!read_object(p, f, l, field_keys))
                        continue;
                    char kl[LOC_MAX];
                    json_t *fp = member(p, f, l, "pointer", true);
                    if (fp != NULL)
                        read_pointer(p, fp, loc_key(kl, l, "pointer"), &cf->pointer);
                    json_t *col = json_object_get(f, "collection");
                    if (col != NULL && (!json_is_string(col) || json_string_value(col)[0] != '/' ||
                                        json_string_length(col) > CORRELATE_SCOPE_MAX))
                        fail(p, loc_key(kl, l, "collection"),
                             "must be a path such as \"/posts\" (the path before the id)");
                    else if (col != NULL)
                        cf->collection = json_string_value(col);
                } else {
                    read_pointer(p, f, l, &cf->pointer);
                }
                if (cf->pointer != NULL && cf->pointer[0] == '\0') {
                    fail(p, l, "must not be \"\": name the member that holds an id");
                    cf->pointer = NULL;
                }
            }
            cc->n_body_fields = n;
        }
    }
    field_size(p, v, loc, "max_entries", 1, CORRELATE_MAX_ENTRIES, &cc->max_entries);
    field_i64(p, v, loc, "ttl_ms", 1, CORRELATE_MAX_TTL_MS, &cc->ttl_ms);
}

static void parse_shadow(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    static const char *const keys[] = {
        "percent", "methods", "max_inflight", "timeout_ms", "max_body_bytes", "correlate", NULL};
    char l[LOC_MAX];
    if (!read_object(p, v, loc, keys))
        return;
    rt->shadow = true;
    field_number(p, v, loc, "percent", 0, 100, &rt->shadow_percent);
    field_list(p, v, loc, "methods", true, "method names", read_method, &rt->shadow_methods,
               &rt->n_shadow_methods);
    field_int(p, v, loc, "max_inflight", 1, 1000000, &rt->shadow_max_inflight);
    field_int(p, v, loc, "timeout_ms", 1, 3600000, &rt->shadow_timeout_ms);
    field_size(p, v, loc, "max_body_bytes", 0, GIB, &rt->shadow_max_body_bytes);
    json_t *cor = json_object_get(v, "correlate");
    if (cor != NULL)
        parse_correlate(p, cor, loc_key(l, loc, "correlate"), rt);
}

static void parse_diff(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    static const char *const keys[] = {"ignore_headers",     "headers",   "ignore", "unordered",
                                       "match_by",           "tolerance", "noise",  "loose_types",
                                       "media_type_headers", NULL};
    static const char *const noise_keys[] = {"percent", "threshold", "warmup", NULL};
    struct diff_rules *d = &rt->diff;
    char l[LOC_MAX];

    if (!read_object(p, v, loc, keys))
        return;
    field_list(p, v, loc, "ignore_headers", false, "header names", read_header_name,
               &d->ignore_headers, &d->n_ignore_headers);
    field_list(p, v, loc, "headers", false, "header names", read_header_name, &d->headers,
               &d->n_headers);
    field_list(p, v, loc, "ignore", false, "JSON Pointers", read_pointer, &d->ignore, &d->n_ignore);
    field_list(p, v, loc, "unordered", false, "JSON Pointers", read_pointer, &d->unordered,
               &d->n_unordered);
    field_number(p, v, loc, "tolerance", 0, HUGE_VAL, &d->tolerance);
    field_bool(p, v, loc, "loose_types", &d->loose_types);
    field_list(p, v, loc, "media_type_headers", false, "header names", read_header_name,
               &d->media_type_headers, &d->n_media_type_headers);

    json_t *match_by = json_object_get(v, "match_by");
    if (match_by != NULL) {
        char ml[LOC_MAX];
        loc_key(ml, loc, "match_by");
        if (!json_is_object(match_by)) {
            fail(p, ml, "must be an object of JSON Pointer to key name");
        } else if (json_object_size(match_by) > 0) {
            size_t n = json_object_size(match_by), k = 0;
            struct diff_match_by *mb = alloc_array(p, n, sizeof(*mb));
            bool ok = mb != NULL;
            const char *ptr;
            json_t *key;
            json_object_foreach(match_by, ptr, key)
            {
                const char *why = pointer_problem(ptr);
                loc_key(l, ml, ptr);
                if (why != NULL) {
                    fail(p, l, "%s", why);
                    ok = false;
                } else if (!json_is_string(key) || json_string_length(key) == 0) {
                    fail(p, l, "must be a non-empty string: the member that identifies an item");
                    ok = false;
                } else if (mb != NULL) {
                    mb[k].pointer = ptr;
                    mb[k].key = json_string_value(key);
                    k++;
                }
            }
            if (ok) {
                d->match_by = mb;
                d->n_match_by = k;
            }
        }
    }

    json_t *noise = json_object_get(v, "noise");
    if (noise != NULL && read_object(p, noise, loc_key(l, loc, "noise"), noise_keys)) {
        rt->noise = true;
        field_number(p, noise, l, "percent", 0, 100, &rt->noise_percent);
        field_number(p, noise, l, "threshold", 0, 1, &rt->noise_threshold);
        int warmup = (int)rt->noise_warmup;
        field_int(p, noise, l, "warmup", 0, 1000000, &warmup);
        rt->noise_warmup = (unsigned)warmup;
    }
}

static void parse_fallback(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    static const struct {
        const char *name;
        unsigned flag;
    } kinds[] = {
        {"connect_error", FALLBACK_CONNECT_ERROR},
        {"timeout", FALLBACK_TIMEOUT},
        {"5xx", FALLBACK_5XX},
    };
    if (!json_is_array(v)) {
        fail(p, loc, "must be an array of \"connect_error\", \"timeout\" or \"5xx\"");
        return;
    }
    unsigned flags = 0;
    bool ok = true;
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *item = json_array_get(v, i);
        char l[LOC_MAX];
        unsigned flag = 0;
        loc_index(l, loc, i);
        for (size_t k = 0; k < ARRAY_SIZE(kinds) && json_is_string(item); k++) {
            if (strcmp(json_string_value(item), kinds[k].name) == 0)
                flag = kinds[k].flag;
        }
        if (flag == 0) {
            fail(p, l, "must be \"connect_error\", \"timeout\" or \"5xx\"");
            ok = false;
        } else if (flags & flag) {
            fail(p, l, "\"%s\" is listed twice", json_string_value(item));
            ok = false;
        }
        flags |= flag;
    }
    if (ok)
        rt->fallback = flags;
}

static void parse_guard(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    static const char *const keys[] = {"max_divergence_rate", "max_error_rate", "min_comparisons",
                                       "window_ms", NULL};
    if (!read_object(p, v, loc, keys))
        return;
    rt->guard = true;
    field_number(p, v, loc, "max_divergence_rate", 0, 1, &rt->guard_max_divergence_rate);
    field_number(p, v, loc, "max_error_rate", 0, 1, &rt->guard_max_error_rate);
    field_int(p, v, loc, "min_comparisons", 1, INT_MAX, &rt->guard_min_comparisons);
    field_int(p, v, loc, "window_ms", 1000, 86400000, &rt->guard_window_ms);
}

static void parse_ramp(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    static const char *const keys[] = {"steps", "every_ms", NULL};
    char l[LOC_MAX];

    if (!read_object(p, v, loc, keys))
        return;
    rt->ramp = true;
    json_t *steps = member(p, v, loc, "steps", true);
    if (steps != NULL) {
        loc_key(l, loc, "steps");
        if (!json_is_array(steps) || json_array_size(steps) == 0) {
            fail(p, l, "must be a non-empty array of percentages");
        } else {
            size_t n = json_array_size(steps);
            double *out = alloc_array(p, n, sizeof(*out));
            bool ok = out != NULL;
            for (size_t i = 0; i < n && out != NULL; i++) {
                char il[LOC_MAX];
                loc_index(il, l, i);
                if (!read_number(p, json_array_get(steps, i), il, 0, 100, &out[i])) {
                    ok = false;
                } else if (i > 0 && ok && out[i] <= out[i - 1]) {
                    fail(p, il, "must be greater than the step before it");
                    ok = false;
                }
            }
            if (ok) {
                rt->ramp_steps = out;
                rt->n_ramp_steps = n;
            }
        }
    }
    json_t *every = member(p, v, loc, "every_ms", true);
    long long x;
    if (every != NULL && read_int(p, every, loc_key(l, loc, "every_ms"), 1000, LLONG_MAX, &x))
        rt->ramp_every_ms = x;
}

/* Sets *index to the backend named by member key of v (or by dflt when the
 * member is absent). */
static void route_backend(struct parser *p, json_t *v, const char *loc, const char *key,
                          const char *dflt, int *index)
{
    char l[LOC_MAX];
    const char *name = dflt;
    json_t *x = json_object_get(v, key);
    loc_key(l, loc, key);
    if (x != NULL && !read_string(p, x, l, &name))
        return;
    if (p->cfg->n_backends == 0) /* "backends" is missing or wrong: already reported */
        return;
    *index = config_backend_index(p->cfg, name);
    if (*index < 0)
        fail(p, l, "no backend named \"%s\"", name);
}

/* "endpoints" (templates that name endpoints, first match wins) and
 * "max_endpoints" (the bound on a route's endpoints, the named ones included). */
static void parse_endpoints(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt)
{
    char l[LOC_MAX];

    field_int(p, v, loc, "max_endpoints", 1, ENDPOINT_MAX_LIMIT, &rt->max_endpoints);
    field_list(p, v, loc, "endpoints", false, "endpoint templates \"METHOD /path\"", read_endpoint,
               &rt->endpoints, &rt->n_endpoints);
    for (size_t i = 0; i < rt->n_endpoints; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(rt->endpoints[i], rt->endpoints[j]) == 0) {
                char il[LOC_MAX];
                loc_index(il, loc_key(l, loc, "endpoints"), i);
                fail(p, il, "\"%s\" is listed twice", rt->endpoints[i]);
            }
        }
    }
    if (rt->n_endpoints > (size_t)rt->max_endpoints)
        fail(p, loc_key(l, loc, "endpoints"), "lists %zu endpoints, more than max_endpoints (%d)",
             rt->n_endpoints, rt->max_endpoints);
}

static void parse_route(struct parser *p, json_t *v, const char *loc, size_t i)
{
    static const char *const keys[] = {"name",          "match",     "legacy",          "new",
                                       "new_percent",   "sticky",    "override_header", "shadow",
                                       "diff",          "fallback",  "guard",           "ramp",
                                       "allow_upgrade", "endpoints", "max_endpoints",   NULL};
    struct config *cfg = p->cfg;
    struct route_cfg *rt = &cfg->routes[i];
    char l[LOC_MAX];

    defaults_route(rt);
    if (!read_object(p, v, loc, keys))
        return;

    json_t *name = member(p, v, loc, "name", true);
    loc_key(l, loc, "name");
    if (name != NULL && (!json_is_string(name) || !is_name(json_string_value(name)))) {
        fail(p, l, "must be a non-empty string of " NAME_CHARS);
    } else if (name != NULL) {
        rt->name = json_string_value(name);
        for (size_t j = 0; j < i; j++) {
            if (cfg->routes[j].name != NULL && strcmp(cfg->routes[j].name, rt->name) == 0)
                fail(p, l, "\"%s\" is already the name of routes[%zu]", rt->name, j);
        }
    }

    route_backend(p, v, loc, "legacy", DEFAULT_LEGACY, &rt->legacy);
    route_backend(p, v, loc, "new", DEFAULT_NEW, &rt->new_);
    field_number(p, v, loc, "new_percent", 0, 100, &rt->new_percent);
    field_bool(p, v, loc, "allow_upgrade", &rt->allow_upgrade);

    /* The optional sections, each read by its own function. */
    static const struct {
        const char *key;
        void (*parse)(struct parser *p, json_t *v, const char *loc, struct route_cfg *rt);
    } sections[] = {
        {"match", parse_route_match}, {"sticky", parse_sticky},     {"shadow", parse_shadow},
        {"diff", parse_diff},         {"fallback", parse_fallback}, {"guard", parse_guard},
        {"ramp", parse_ramp},
    };
    for (size_t k = 0; k < ARRAY_SIZE(sections); k++) {
        json_t *x = json_object_get(v, sections[k].key);
        if (x != NULL)
            sections[k].parse(p, x, loc_key(l, loc, sections[k].key), rt);
    }
    json_t *ov = json_object_get(v, "override_header");
    if (ov != NULL)
        read_header_name(p, ov, loc_key(l, loc, "override_header"), &rt->override_header);
    parse_endpoints(p, v, loc, rt);
}

static void parse_routes(struct parser *p, json_t *v)
{
    struct config *cfg = p->cfg;
    if (!json_is_array(v) || json_array_size(v) == 0) {
        fail(p, "routes", "must be a non-empty array of routes");
        return;
    }
    size_t n = json_array_size(v);
    cfg->routes = alloc_array(p, n, sizeof(*cfg->routes));
    if (cfg->routes == NULL)
        return;
    cfg->n_routes = n;
    for (size_t i = 0; i < n; i++) {
        char loc[LOC_MAX];
        parse_route(p, json_array_get(v, i), loc_index(loc, "routes", i), i);
    }
}

/* redact_headers is the defaults plus what the file adds: a file can widen
 * redaction, never narrow it, so that secrets cannot leak through a typo. */
static void set_redact_headers(struct parser *p, const char **extra, size_t n_extra)
{
    struct config *cfg = p->cfg;
    size_t n_dflt = ARRAY_SIZE(default_redact_headers);
    const char **all = alloc_array(p, n_dflt + n_extra, sizeof(*all));
    if (all == NULL)
        return;
    size_t n = 0;
    for (size_t i = 0; i < n_dflt; i++)
        all[n++] = default_redact_headers[i];
    for (size_t i = 0; i < n_extra; i++) {
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = strcmp(all[j], extra[i]) == 0;
        if (!dup)
            all[n++] = extra[i];
    }
    cfg->redact_headers = all;
    cfg->n_redact_headers = n;
}

static void parse_divergence_log(struct parser *p, json_t *v)
{
    static const char *const keys[] = {
        "path",           "max_bytes",   "keep", "body_bytes", "request_body_bytes",
        "redact_headers", "redact_json", NULL};
    const char *loc = "divergence_log";
    struct config *cfg = p->cfg;
    const char **extra = NULL;
    size_t n_extra = 0;

    if (!read_object(p, v, loc, keys))
        return;
    field_string(p, v, loc, "path", true, &cfg->divlog_path);
    field_i64(p, v, loc, "max_bytes", 4096, LLONG_MAX, &cfg->divlog_max_bytes);
    field_int(p, v, loc, "keep", 0, 1000, &cfg->divlog_keep);
    field_size(p, v, loc, "body_bytes", 0, 16 * MIB, &cfg->divlog_body_bytes);
    field_size(p, v, loc, "request_body_bytes", 0, REPLAY_BODY_BYTES_LIMIT,
               &cfg->divlog_request_body_bytes);
    field_list(p, v, loc, "redact_headers", false, "header names", read_header_name, &extra,
               &n_extra);
    if (n_extra > 0)
        set_redact_headers(p, extra, n_extra);
    field_list(p, v, loc, "redact_json", false, "JSON Pointers", read_pointer, &cfg->redact_json,
               &cfg->n_redact_json);
}

static void parse_access_log(struct parser *p, json_t *v)
{
    static const char *const keys[] = {"path", NULL};
    if (!read_object(p, v, "access_log", keys))
        return;
    json_t *path = json_object_get(v, "path");
    if (path == NULL)
        return;
    if (!json_is_string(path))
        fail(p, "access_log.path", "must be a string: a file, \"-\" for stdout or \"\" for none");
    else
        p->cfg->access_log_path = json_string_length(path) ? json_string_value(path) : NULL;
}

static void parse_limits(struct parser *p, json_t *v)
{
    static const char *const keys[] = {"max_connections", "max_header_bytes",
                                       "max_request_body_bytes", "shadow_memory_bytes", NULL};
    const char *loc = "limits";
    struct config *cfg = p->cfg;
    if (!read_object(p, v, loc, keys))
        return;
    field_int(p, v, loc, "max_connections", 1, 10000000, &cfg->max_connections);
    field_size(p, v, loc, "max_header_bytes", 1 * KIB, 16 * MIB, &cfg->max_header_bytes);
    field_i64(p, v, loc, "max_request_body_bytes", 0, LLONG_MAX, &cfg->max_request_body_bytes);
    field_size(p, v, loc, "shadow_memory_bytes", 1 * MIB, (size_t)64 * 1024 * MIB,
               &cfg->shadow_memory_bytes);
}

static void parse_timeouts(struct parser *p, json_t *v)
{
    static const char *const keys[] = {"connect_ms", "upstream_ms",    "client_idle_ms",
                                       "drain_ms",   "tunnel_idle_ms", NULL};
    const char *loc = "timeouts";
    struct config *cfg = p->cfg;
    if (!read_object(p, v, loc, keys))
        return;
    field_int(p, v, loc, "connect_ms", 1, 86400000, &cfg->connect_ms);
    field_int(p, v, loc, "upstream_ms", 1, 86400000, &cfg->upstream_ms);
    field_int(p, v, loc, "client_idle_ms", 1, 86400000, &cfg->client_idle_ms);
    field_int(p, v, loc, "drain_ms", 1, 86400000, &cfg->drain_ms);
    field_int(p, v, loc, "tunnel_idle_ms", 1, 86400000, &cfg->tunnel_idle_ms);
}

static void parse_root(struct parser *p, json_t *root)
{
    static const char *const keys[] = {"listen",      "workers",  "admin",    "state_file",
                                       "state_store", "backends", "routes",   "divergence_log",
                                       "access_log",  "limits",   "timeouts", "reload_on_change",
                                       "resolvers",   NULL};
    struct config *cfg = p->cfg;
    json_t *v;

    if (!json_is_object(root)) {
        fail(p, "top level", "must be a JSON object");
        return;
    }
    read_object(p, root, "", keys);

    v = member(p, root, "", "listen", true);
    if (v != NULL)
        parse_listen(p, v);
    field_int(p, root, "", "workers", 0, WORKERS_MAX, &cfg->workers);
    v = json_object_get(root, "admin");
    if (v != NULL)
        parse_admin(p, v);
    for (size_t i = 0; i < cfg->n_listens; i++) {
        char l[LOC_MAX];
        if (json_is_array(json_object_get(root, "listen")))
            loc_index(l, "listen", i);
        else
            snprintf(l, sizeof(l), "listen");
        check_addr_conflict(p, "admin.address", &cfg->admin_addr, l, &cfg->listens[i].addr);
    }
    field_string(p, root, "", "state_file", false, &cfg->state_file);
    field_bool(p, root, "", "reload_on_change", &cfg->reload_on_change);
    v = json_object_get(root, "state_store");
    if (v != NULL)
        parse_state_store(p, v);
    v = member(p, root, "", "backends", true);
    if (v != NULL)
        parse_backends(p, v);
    v = json_object_get(root, "resolvers");
    if (v != NULL)
        parse_resolvers(p, v);
    v = member(p, root, "", "routes", true);
    if (v != NULL)
        parse_routes(p, v);
    v = json_object_get(root, "divergence_log");
    if (v != NULL)
        parse_divergence_log(p, v);
    v = json_object_get(root, "access_log");
    if (v != NULL)
        parse_access_log(p, v);
    v = json_object_get(root, "limits");
    if (v != NULL)
        parse_limits(p, v);
    v = json_object_get(root, "timeouts");
    if (v != NULL)
        parse_timeouts(p, v);
}

/* ------------------------------------------------------------------------ */
/* Snapshots                                                                */

static void config_free(struct config *cfg)
{
    if (cfg->dispose_tls != NULL)
        cfg->dispose_tls(cfg);
    json_decref(cfg->root);
    arena_dispose(&cfg->arena);
    free(cfg->path);
    free(cfg);
}

struct config *config_parse(const char *text, size_t len, const char *fname,
                            struct config_errors *errs)
{
    struct parser p = {.fname = fname ? fname : "config", .errs = errs};
    json_error_t jerr;

    /* Some editors start a UTF-8 file with a byte order mark; JSON has no use for it. */
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        config_errors_add(errs, "%s: line %d, column %d: %s", p.fname, jerr.line, jerr.column,
                          jerr.text);
        return NULL;
    }
    struct config *cfg = calloc(1, sizeof(*cfg));
    char *path = strdup(p.fname);
    if (cfg == NULL || path == NULL) {
        config_errors_add(errs, "%s: out of memory", p.fname);
        json_decref(root);
        free(cfg);
        free(path);
        return NULL;
    }
    cfg->path = path;
    cfg->root = root;
    cfg->refcount = 1;
    arena_init(&cfg->arena);
    defaults_config(cfg);

    p.cfg = cfg;
    parse_root(&p, root);
    if (p.nomem)
        fail(&p, "top level", "out of memory");
    if (p.n_errors > ERRORS_SHOWN)
        config_errors_add(errs, "%s: %zu more errors not shown", p.fname,
                          p.n_errors - ERRORS_SHOWN);
    if (p.n_errors > 0) {
        config_free(cfg);
        return NULL;
    }

    if (cfg->workers == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = cpus < 1 ? 1 : cpus > WORKERS_MAX ? WORKERS_MAX : (int)cpus;
    }
    /* A client gets at most 10 s to send its request head (slowloris), and
     * never more than it may stay idle. */
    cfg->header_ms = cfg->client_idle_ms < 10000 ? cfg->client_idle_ms : 10000;
    return cfg;
}

struct config *config_load(const char *path, struct config_errors *errs)
{
    struct config *cfg = NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;

    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        config_errors_add(errs, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= CONFIG_FILE_MAX) {
                config_errors_add(errs, "%s: larger than %d MiB: not a configuration file", path,
                                  CONFIG_FILE_MAX / (1024 * 1024));
                goto out;
            }
            cap = cap ? cap * 2 : 16384;
            char *grown = realloc(text, cap + 1);
            if (grown == NULL) {
                config_errors_add(errs, "%s: out of memory", path);
                goto out;
            }
            text = grown;
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        config_errors_add(errs, "%s: cannot read: %s", path, strerror(errno));
        goto out;
    }
    cfg = config_parse(text, len, path, errs);
out:
    free(text);
    fclose(f);
    return cfg;
}

struct config *config_ref(struct config *cfg)
{
    __atomic_fetch_add(&cfg->refcount, 1, __ATOMIC_RELAXED);
    return cfg;
}

void config_unref(struct config *cfg)
{
    if (cfg == NULL)
        return;
    if (__atomic_fetch_sub(&cfg->refcount, 1, __ATOMIC_ACQ_REL) == 1)
        config_free(cfg);
}

int config_backend_index(const struct config *cfg, const char *name)
{
    for (size_t i = 0; name != NULL && i < cfg->n_backends; i++) {
        if (strcmp(cfg->backends[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

int config_route_index(const struct config *cfg, const char *name)
{
    for (size_t i = 0; name != NULL && i < cfg->n_routes; i++) {
        if (cfg->routes[i].name != NULL && strcmp(cfg->routes[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

bool config_is_redacted(const struct config *cfg, const char *name, size_t len)
{
    const char **list = cfg ? cfg->redact_headers : default_redact_headers;
    size_t n = cfg ? cfg->n_redact_headers : ARRAY_SIZE(default_redact_headers);
    for (size_t i = 0; i < n; i++) {
        if (strlen(list[i]) == len && strncasecmp(list[i], name, len) == 0)
            return true;
    }
    return false;
}
