/* Routing: route matching, sticky keys, bucketing and the split decision.
 * Pure: takes the route and the request head, returns data; no libuv. */
#include "ficus/router.h"

#include <math.h>
#include <string.h>
#include <strings.h>

/* MurmurHash3 x86 32-bit (Austin Appleby, public domain), written as an
 * incremental hash so that route name, ':' and key are hashed without being
 * copied into one buffer. Blocks are read byte by byte as little-endian, which
 * gives the reference results on any host and never reads unaligned. */
struct mm3 {
    uint32_t h;
    uint32_t total; /* the reference algorithm mixes in the length mod 2^32 */
    unsigned char tail[4];
    unsigned n_tail; /* 0..3 bytes waiting for a full block */
};

static uint32_t rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

static uint32_t mm3_k(uint32_t k)
{
    k *= 0xcc9e2d51u;
    k = rotl32(k, 15);
    k *= 0x1b873593u;
    return k;
}

static void mm3_block(struct mm3 *s, const unsigned char *b)
{
    uint32_t k = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    s->h ^= mm3_k(k);
    s->h = rotl32(s->h, 13);
    s->h = s->h * 5 + 0xe6546b64u;
}

static void mm3_init(struct mm3 *s, uint32_t seed)
{
    s->h = seed;
    s->total = 0;
    s->n_tail = 0;
}

static void mm3_update(struct mm3 *s, const void *data, size_t len)
{
    const unsigned char *p = data;

    s->total += (uint32_t)len;
    if (s->n_tail > 0) {
        while (s->n_tail < 4 && len > 0) {
            s->tail[s->n_tail++] = *p++;
            len--;
        }
        if (s->n_tail < 4)
            return;
        mm3_block(s, s->tail);
        s->n_tail = 0;
    }
    for (; len >= 4; p += 4, len -= 4)
        mm3_block(s, p);
    for (; len > 0; len--)
        s->tail[s->n_tail++] = *p++;
}

static uint32_t mm3_final(struct mm3 *s)
{
    uint32_t h = s->h;

    if (s->n_tail > 0) {
        uint32_t k = 0;
        for (unsigned i = s->n_tail; i > 0; i--)
            k = k << 8 | s->tail[i - 1];
        h ^= mm3_k(k);
    }
    h ^= s->total;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

uint32_t router_murmur3(const void *data, size_t len, uint32_t seed)
{
    struct mm3 s;

    mm3_init(&s, seed);
    mm3_update(&s, data, len);
    return mm3_final(&s);
}

uint32_t router_bucket(const char *route_name, struct span key)
{
    struct mm3 s;

    mm3_init(&s, 0);
    if (route_name != NULL)
        mm3_update(&s, route_name, strlen(route_name));
    mm3_update(&s, ":", 1);
    if (key.len > 0)
        mm3_update(&s, key.p, key.len);
    return mm3_final(&s) % ROUTER_BUCKETS;
}

/* ---- matching ---- */

static bool span_eq_span(struct span a, struct span b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static bool span_ieq_span(struct span a, struct span b)
{
    return a.len == b.len && (a.len == 0 || strncasecmp(a.p, b.p, a.len) == 0);
}

static struct span span_of(const char *s)
{
    return (struct span){s, s != NULL ? strlen(s) : 0};
}

/* The host part of a Host value or of a configured host: "[v6]:port" gives
 * "::1" without the brackets, "name:port" gives "name", and a bare IPv6
 * literal (several colons, no brackets) stays whole. */
static struct span host_only(struct span h)
{
    if (h.len == 0)
        return h;
    if (h.p[0] == '[') {
        const char *end = memchr(h.p, ']', h.len);
        if (end == NULL)
            return h; /* malformed; compared as written */
        return (struct span){h.p + 1, (size_t)(end - h.p) - 1};
    }
    const char *colon = memchr(h.p, ':', h.len);
    if (colon == NULL)
        return h;
    size_t rest = h.len - (size_t)(colon - h.p) - 1;
    if (memchr(colon + 1, ':', rest) != NULL)
        return h;
    return (struct span){h.p, (size_t)(colon - h.p)};
}

/* Segment-aware: the prefix must end at a '/' of the path or at its end, unless
 * the prefix itself ends with '/'. */
static bool path_matches(const char *prefix, size_t n, struct span path)
{
    if (n == 0)
        return true;
    if (path.len < n || memcmp(path.p, prefix, n) != 0)
        return false;
    return path.len == n || prefix[n - 1] == '/' || path.p[n] == '/';
}

static const struct http_header *find_header(const struct http_head *req, const char *name,
                                             size_t from)
{
    for (size_t i = from; i < req->n_headers; i++) {
        if (span_ieq(req->headers[i].name, name))
            return &req->headers[i];
    }
    return NULL;
}

static bool method_in(struct span method, const char **list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (list[i] != NULL && span_eq(method, list[i]))
            return true;
    }
    return false;
}

bool router_match_one(const struct route_match *m, const struct http_head *req)
{
    if (m->host != NULL && !span_ieq_span(host_only(req->host), host_only(span_of(m->host))))
        return false;

    if (m->path_prefix != NULL) {
        /* A hand-built match may leave the length at 0; the configuration's
         * strings are NUL-terminated, so strlen gives the same answer. */
        size_t n = m->path_prefix_len > 0 ? m->path_prefix_len : strlen(m->path_prefix);
        if (!path_matches(m->path_prefix, n, req->path))
            return false;
    }

    if (m->methods != NULL && m->n_methods > 0 && !method_in(req->method, m->methods, m->n_methods))
        return false;

    for (size_t i = 0; i < m->n_headers; i++) {
        const struct header_match *hm = &m->headers[i];
        bool found = false;
        for (size_t j = 0; j < req->n_headers && !found; j++) {
            found = span_ieq(req->headers[j].name, hm->name) &&
                    span_eq(req->headers[j].value, hm->value);
        }
        if (!found)
            return false;
    }
    return true;
}

int router_match(const struct config *cfg, const struct http_head *req)
{
    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct route_match *m = &cfg->routes[i].match;
        /* Most routes are told apart by their path prefix: one that is longer
         * than the path, or whose last byte differs from the path's byte
         * there, cannot match (a necessary condition of path_matches), and
         * is passed over without the call (1,000 routes before the match cost
         * 40,000 instructions a request, now a quarter of that). */
        size_t n = m->path_prefix_len;
        if (n > 0 && (req->path.len < n || req->path.p[n - 1] != m->path_prefix[n - 1]))
            continue;
        if (router_match_one(m, req))
            return (int)i;
    }
    return -1;
}

/* ---- cookies and query strings ---- */

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static struct span trim(struct span s)
{
    while (s.len > 0 && is_ows(s.p[0])) {
        s.p++;
        s.len--;
    }
    while (s.len > 0 && is_ows(s.p[s.len - 1]))
        s.len--;
    return s;
}

bool router_cookie_get(struct span cookie_header, const char *name, struct span *out)
{
    struct span want = span_of(name);
    const char *p = cookie_header.p;
    const char *end = cookie_header.p + cookie_header.len;

    if (want.len == 0 || cookie_header.len == 0)
        return false;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *pair_end = semi != NULL ? semi : end;
        struct span pair = {p, (size_t)(pair_end - p)};
        p = semi != NULL ? semi + 1 : end;

        const char *eq = memchr(pair.p, '=', pair.len);
        if (eq == NULL)
            continue; /* "a" alone is no cookie-pair */
        struct span n = trim((struct span){pair.p, (size_t)(eq - pair.p)});
        if (n.len == 0 || !span_eq_span(n, want))
            continue;
        struct span v = trim((struct span){eq + 1, (size_t)(pair_end - eq - 1)});
        if (v.len >= 2 && v.p[0] == '"' && v.p[v.len - 1] == '"') {
            v.p++;
            v.len -= 2;
        }
        *out = v;
        return true;
    }
    return false;
}

bool router_query_get(struct span query, const char *name, struct span *out)
{
    struct span want = span_of(name);
    const char *p = query.p;
    const char *end = query.p + query.len;

    if (want.len == 0 || query.len == 0)
        return false;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *param_end = amp != NULL ? amp : end;
        struct span param = {p, (size_t)(param_end - p)};
        p = amp != NULL ? amp + 1 : end;

        if (param.len == 0)
            continue;
        const char *eq = memchr(param.p, '=', param.len);
        struct span n = {param.p, eq != NULL ? (size_t)(eq - param.p) : param.len};
        if (!span_eq_span(n, want))
            continue;
        if (eq != NULL)
            *out = (struct span){eq + 1, (size_t)(param_end - eq - 1)};
        else
            *out = (struct span){param_end, 0};
        return true;
    }
    return false;
}

/* ---- sticky key and decision ---- */

bool router_key(const struct route_cfg *rt, const struct http_head *req, struct span client_ip,
                struct span *key)
{
    struct span v;

    switch (rt->sticky) {
    case STICKY_IP:
        if (client_ip.len == 0)
            return false;
        *key = client_ip;
        return true;
    case STICKY_HEADER:
        if (rt->sticky_name == NULL)
            return false;
        /* The first non-empty occurrence: an empty header is no key. */
        for (const struct http_header *h = find_header(req, rt->sticky_name, 0); h != NULL;
             h = find_header(req, rt->sticky_name, (size_t)(h - req->headers) + 1)) {
            if (h->value.len > 0) {
                *key = h->value;
                return true;
            }
        }
        return false;
    case STICKY_COOKIE:
        if (rt->sticky_name == NULL)
            return false;
        /* HTTP/1.1 clients send one Cookie header, but several are seen in the
         * wild (and HTTP/2 gateways split them); each is searched in order. */
        for (const struct http_header *h = find_header(req, "cookie", 0); h != NULL;
             h = find_header(req, "cookie", (size_t)(h - req->headers) + 1)) {
            if (router_cookie_get(h->value, rt->sticky_name, &v) && v.len > 0) {
                *key = v;
                return true;
            }
        }
        return false;
    case STICKY_QUERY:
        if (rt->sticky_name == NULL || !router_query_get(req->query, rt->sticky_name, &v) ||
            v.len == 0)
            return false;
        *key = v;
        return true;
    }
    return false;
}

/* A percentage 0..100 as a count of buckets 0..10000; NaN counts as 0. */
static uint32_t percent_to_buckets(double percent)
{
    if (!(percent > 0))
        return 0;
    if (percent >= 100)
        return ROUTER_BUCKETS;
    return (uint32_t)llround(percent * 100);
}

struct split_decision router_decide(const struct route_cfg *rt, double new_percent,
                                    double shadow_percent, const struct http_head *req,
                                    struct span client_ip, uint64_t random)
{
    struct split_decision d = {0};
    struct span key;

    /* The low bits of random bucket a keyless request and the high bits sample
     * the shadow, so that the two choices are independent. */
    if (router_key(rt, req, client_ip, &key))
        d.bucket = router_bucket(rt->name, key);
    else
        d.bucket = (uint32_t)(random % ROUTER_BUCKETS);
    d.primary = d.bucket < percent_to_buckets(new_percent) ? SPLIT_NEW : SPLIT_LEGACY;

    if (rt->override_header != NULL) {
        const struct http_header *h = find_header(req, rt->override_header, 0);
        if (h != NULL) {
            if (span_ieq(h->value, "legacy")) {
                d.primary = SPLIT_LEGACY;
            } else if (span_ieq(h->value, "new")) {
                d.primary = SPLIT_NEW;
            } else {
                d.status = 400;
                return d;
            }
            d.overridden = true;
        }
    }

    if (rt->shadow && method_in(req->method, rt->shadow_methods, rt->n_shadow_methods)) {
        uint32_t sample = (uint32_t)((random >> 32) % ROUTER_BUCKETS);
        d.shadow = sample < percent_to_buckets(shadow_percent);
    }
    return d;
}
