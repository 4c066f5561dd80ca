/* Unit tests of the router: murmur3, buckets, the monotonic split, matching,
 * cookie and query parsing, sticky keys, override and shadow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ficus/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static struct span sp(const char *s)
{
    return (struct span){s, strlen(s)};
}

static bool span_is(struct span a, const char *s)
{
    return a.len == strlen(s) && (a.len == 0 || memcmp(a.p, s, a.len) == 0);
}

/* Fills a request head the way http1_parse_head would: target split into path
 * and query at the first '?'. The strings must outlive h. */
static void req_init(struct http_head *h, const char *method, const char *target, const char *host)
{
    memset(h, 0, sizeof(*h));
    h->method = sp(method);
    h->target = sp(target);
    const char *q = strchr(target, '?');
    if (q != NULL) {
        h->path = (struct span){target, (size_t)(q - target)};
        h->query = sp(q + 1);
    } else {
        h->path = sp(target);
        h->query = (struct span){target + strlen(target), 0};
    }
    h->host = sp(host != NULL ? host : "");
    h->content_length = -1;
}

static void req_add(struct http_head *h, const char *name, const char *value)
{
    assert_true(h->n_headers < HTTP_MAX_HEADERS);
    h->headers[h->n_headers].name = sp(name);
    h->headers[h->n_headers].value = sp(value);
    h->n_headers++;
}

static const char *safe_methods[] = {"GET", "HEAD", "OPTIONS"};

/* A route with a header sticky key, no override and no shadow. */
static struct route_cfg route_header(const char *name, const char *header)
{
    struct route_cfg rt;
    memset(&rt, 0, sizeof(rt));
    rt.name = name;
    rt.sticky = STICKY_HEADER;
    rt.sticky_name = header;
    rt.shadow_percent = 100;
    rt.shadow_methods = safe_methods;
    rt.n_shadow_methods = ARRAY_SIZE(safe_methods);
    return rt;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- murmur3 and buckets ---- */

static void test_murmur3_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *data;
        size_t len;
        uint32_t seed;
        uint32_t want;
    } v[] = {
        {"", 0, 0, 0},
        {"", 0, 1, 0x514E28B7u},
        {"", 0, 0xffffffffu, 0x81F16F39u},
        {"\0\0\0\0", 4, 0, 0x2362F9DEu},
        {"a", 1, 0x9747b28cu, 0x7FA09EA6u},
        {"aa", 2, 0x9747b28cu, 0x5D211726u},
        {"aaa", 3, 0x9747b28cu, 0x283E0130u},
        {"aaaa", 4, 0x9747b28cu, 0x5A97808Au},
        {"abc", 3, 0, 0xB3DD93FAu},
        {"hello", 5, 0, 0x248BFA47u},
        {"Hello, world!", 13, 0x9747b28cu, 0x24884CBAu},
        {"The quick brown fox jumps over the lazy dog", 43, 0, 0x2E4FF723u},
        {"The quick brown fox jumps over the lazy dog", 43, 0x9747b28cu, 0x2FA826CDu},
    };
    for (size_t i = 0; i < ARRAY_SIZE(v); i++)
        assert_int_equal(router_murmur3(v[i].data, v[i].len, v[i].seed), v[i].want);

    /* Unaligned input gives the same hash. */
    char buf[64];
    const char *fox = "The quick brown fox jumps over the lazy dog";
    for (size_t off = 1; off < 4; off++) {
        memcpy(buf + off, fox, 43);
        assert_int_equal(router_murmur3(buf + off, 43, 0), 0x2E4FF723u);
    }
}

/* router_bucket hashes name ":" key incrementally; it must equal the hash of the
 * concatenation for every split of the 4-byte blocks. */
static void test_bucket_is_hash_of_concatenation(void **state)
{
    (void)state;
    static const char names[] = "abcdefghij";
    char name[16];
    char key[1100];
    char cat[1200];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (char)('!' + (i * 7) % 90);

    for (size_t nl = 0; nl < 10; nl++) {
        memcpy(name, names, nl);
        name[nl] = '\0';
        for (size_t kl = 0; kl < 41; kl++) {
            memcpy(cat, name, nl);
            cat[nl] = ':';
            memcpy(cat + nl + 1, key, kl);
            uint32_t want = router_murmur3(cat, nl + 1 + kl, 0) % ROUTER_BUCKETS;
            assert_int_equal(router_bucket(name, (struct span){key, kl}), want);
        }
    }
    /* A long key (no copy, no allocation involved). */
    memcpy(cat, "orders:", 7);
    memcpy(cat + 7, key, 1000);
    assert_int_equal(router_bucket("orders", (struct span){key, 1000}),
                     router_murmur3(cat, 1007, 0) % ROUTER_BUCKETS);
}

/* Fixed forever: a key must never change bucket across versions, or a cutover
 * in progress would move users between backends on upgrade. Cross-checked with
 * an independent implementation of the reference algorithm. */
static void test_bucket_fixed_vectors(void **state)
{
    (void)state;
    char a300[301];
    memset(a300, 'a', 300);
    a300[300] = '\0';
    static const struct {
        const char *route;
        const char *key;
        uint32_t bucket;
    } v[] = {
        {"orders", "user-42", 6384},     {"orders", "alice", 4336}, {"checkout", "alice", 3009},
        {"orders", "203.0.113.7", 7654}, {"orders", "", 2996},      {"", "x", 4973},
        {"search", "2001:db8::1", 2785},
    };
    for (size_t i = 0; i < ARRAY_SIZE(v); i++)
        assert_int_equal(router_bucket(v[i].route, sp(v[i].key)), v[i].bucket);
    assert_int_equal(router_bucket("orders", sp(a300)), 6749);
}

static const double grid[] = {0, 0.1, 1, 5, 12.5, 30, 50, 99.9, 100};

/* Raising the percentage only ever moves keys from legacy to new. */
static void test_split_monotonic(void **state)
{
    (void)state;
    struct route_cfg rt = route_header("orders", "x-user-id");
    struct http_head req;
    char key[32];
    size_t moved = 0;

    req_init(&req, "GET", "/api/orders", "shop.example.com");
    req_add(&req, "X-User-Id", "");
    for (int k = 0; k < 10000; k++) {
        snprintf(key, sizeof(key), "k%d", k);
        req.headers[0].value = sp(key);
        enum split_target t[ARRAY_SIZE(grid)];
        for (size_t i = 0; i < ARRAY_SIZE(grid); i++) {
            struct split_decision d = router_decide(&rt, grid[i], 0, &req, sp("10.0.0.1"), 0);
            assert_int_equal(d.status, 0);
            assert_int_equal(d.bucket, router_bucket("orders", sp(key)));
            t[i] = d.primary;
        }
        assert_int_equal(t[0], SPLIT_LEGACY);
        assert_int_equal(t[ARRAY_SIZE(grid) - 1], SPLIT_NEW);
        for (size_t p = 0; p < ARRAY_SIZE(grid); p++) {
            for (size_t q = p + 1; q < ARRAY_SIZE(grid); q++) {
                if (t[p] == SPLIT_NEW)
                    assert_int_equal(t[q], SPLIT_NEW);
                moved += t[p] != t[q];
            }
        }
    }
    assert_true(moved > 0);
}

static void test_split_distribution(void **state)
{
    (void)state;
    struct route_cfg rt = route_header("orders", "x-user-id");
    struct http_head req;
    char key[32];
    uint64_t seed = 12345;
    int n_new[3] = {0, 0, 0};
    const double pct[3] = {30, 0, 100};
    const int n = 100000;

    req_init(&req, "GET", "/", "h");
    req_add(&req, "x-user-id", "");
    for (int k = 0; k < n; k++) {
        snprintf(key, sizeof(key), "u%016llx", (unsigned long long)splitmix64(&seed));
        req.headers[0].value = sp(key);
        for (int i = 0; i < 3; i++)
            n_new[i] += router_decide(&rt, pct[i], 0, &req, sp(""), 0).primary == SPLIT_NEW;
    }
    assert_in_range(n_new[0], n * 29 / 100, n * 31 / 100);
    assert_int_equal(n_new[1], 0);
    assert_int_equal(n_new[2], n);
}

/* A bucket goes to new exactly when it is below new_percent x 100. */
static void test_split_threshold(void **state)
{
    (void)state;
    struct route_cfg rt = route_header("orders", "x-user-id");
    struct http_head req;

    req_init(&req, "GET", "/", "h");
    req_add(&req, "x-user-id", "alice"); /* bucket 4336 */
    assert_int_equal(router_decide(&rt, 43.36, 0, &req, sp(""), 0).primary, SPLIT_LEGACY);
    assert_int_equal(router_decide(&rt, 43.37, 0, &req, sp(""), 0).primary, SPLIT_NEW);
    assert_int_equal(router_decide(&rt, 43.37, 0, &req, sp(""), 0).bucket, 4336);
    assert_int_equal(router_decide(&rt, -1, 0, &req, sp(""), 0).primary, SPLIT_LEGACY);
    assert_int_equal(router_decide(&rt, 150, 0, &req, sp(""), 0).primary, SPLIT_NEW);
}

/* ---- matching ---- */

static void test_match_host(void **state)
{
    (void)state;
    struct route_match m = {0};
    struct http_head req;

    m.host = "shop.example.com";
    req_init(&req, "GET", "/", "shop.example.com");
    assert_true(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "SHOP.Example.COM");
    assert_true(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "shop.example.com:8080");
    assert_true(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "shop.example.co");
    assert_false(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "shop.example.com.evil");
    assert_false(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "xshop.example.com");
    assert_false(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "");
    assert_false(router_match_one(&m, &req));

    m.host = "[::1]";
    req_init(&req, "GET", "/", "[::1]:8080");
    assert_true(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "[::1]");
    assert_true(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "[::2]:8080");
    assert_false(router_match_one(&m, &req));
    m.host = "::1"; /* written without brackets in the configuration */
    req_init(&req, "GET", "/", "[::1]:8080");
    assert_true(router_match_one(&m, &req));
    m.host = "[2001:DB8::1]";
    req_init(&req, "GET", "/", "[2001:db8::1]:443");
    assert_true(router_match_one(&m, &req));

    m.host = "127.0.0.1";
    req_init(&req, "GET", "/", "127.0.0.1:9000");
    assert_true(router_match_one(&m, &req));

    m.host = NULL; /* any host, none included */
    req_init(&req, "GET", "/", "");
    assert_true(router_match_one(&m, &req));
}

static bool path_match(const char *prefix, const char *target)
{
    struct route_match m = {0};
    struct http_head req;
    m.path_prefix = prefix;
    m.path_prefix_len = strlen(prefix);
    req_init(&req, "GET", target, "h");
    return router_match_one(&m, &req);
}

static void test_match_path(void **state)
{
    (void)state;
    assert_true(path_match("/api", "/api"));
    assert_true(path_match("/api", "/api/"));
    assert_true(path_match("/api", "/api/x"));
    assert_true(path_match("/api", "/api?q=1"));
    assert_true(path_match("/api", "/api/x?q=1"));
    assert_false(path_match("/api", "/apix"));
    assert_false(path_match("/api", "/ap"));
    assert_false(path_match("/api", "/"));
    assert_false(path_match("/api", "/API"));
    assert_false(path_match("/api", "/v1/api"));

    assert_true(path_match("/api/", "/api/"));
    assert_true(path_match("/api/", "/api/x"));
    assert_false(path_match("/api/", "/api"));
    assert_false(path_match("/api/", "/apix"));

    assert_true(path_match("/api/orders", "/api/orders/17"));
    assert_false(path_match("/api/orders", "/api/orders-v2"));
    assert_false(path_match("/api/orders", "/api/order"));

    assert_true(path_match("/", "/"));
    assert_true(path_match("/", "/anything/at/all"));
    assert_true(path_match("/", "/?q"));
    assert_true(path_match("", "/x"));

    /* The length field wins over the terminator when set. */
    struct route_match m = {0};
    struct http_head req;
    m.path_prefix = "/apix";
    m.path_prefix_len = 4;
    req_init(&req, "GET", "/api/x", "h");
    assert_true(router_match_one(&m, &req));
}

static void test_match_methods(void **state)
{
    (void)state;
    static const char *methods[] = {"GET", "POST"};
    struct route_match m = {0};
    struct http_head req;

    m.methods = methods;
    m.n_methods = 2;
    req_init(&req, "GET", "/", "h");
    assert_true(router_match_one(&m, &req));
    req_init(&req, "POST", "/", "h");
    assert_true(router_match_one(&m, &req));
    req_init(&req, "PUT", "/", "h");
    assert_false(router_match_one(&m, &req));
    req_init(&req, "get", "/", "h"); /* methods are case-sensitive */
    assert_false(router_match_one(&m, &req));
    req_init(&req, "GETX", "/", "h");
    assert_false(router_match_one(&m, &req));
    req_init(&req, "GE", "/", "h");
    assert_false(router_match_one(&m, &req));
}

static void test_match_headers(void **state)
{
    (void)state;
    struct header_match hm[] = {{"x-tenant", "acme"}, {"x-env", "prod"}};
    struct route_match m = {0};
    struct http_head req;

    m.headers = hm;
    m.n_headers = 1;
    req_init(&req, "GET", "/", "h");
    assert_false(router_match_one(&m, &req));
    req_add(&req, "X-Tenant", "acme");
    assert_true(router_match_one(&m, &req));

    req_init(&req, "GET", "/", "h");
    req_add(&req, "x-tenant", "ACME"); /* values are exact */
    assert_false(router_match_one(&m, &req));
    req_add(&req, "X-TENANT", "acme"); /* any of the repeated headers */
    assert_true(router_match_one(&m, &req));

    req_init(&req, "GET", "/", "h");
    req_add(&req, "x-tenant", "acme-corp");
    assert_false(router_match_one(&m, &req));
    req_init(&req, "GET", "/", "h");
    req_add(&req, "x-tenant-id", "acme");
    assert_false(router_match_one(&m, &req));

    /* Several header matches combine with AND. */
    m.n_headers = 2;
    req_init(&req, "GET", "/", "h");
    req_add(&req, "x-tenant", "acme");
    assert_false(router_match_one(&m, &req));
    req_add(&req, "X-Env", "prod");
    assert_true(router_match_one(&m, &req));
}

static void test_match_all_fields(void **state)
{
    (void)state;
    static const char *methods[] = {"GET"};
    struct header_match hm[] = {{"x-tenant", "acme"}};
    struct route_match m = {0};
    struct http_head req;

    m.host = "shop.example.com";
    m.path_prefix = "/api";
    m.path_prefix_len = 4;
    m.methods = methods;
    m.n_methods = 1;
    m.headers = hm;
    m.n_headers = 1;

    req_init(&req, "GET", "/api/x", "shop.example.com:80");
    req_add(&req, "x-tenant", "acme");
    assert_true(router_match_one(&m, &req));
    req.method = sp("POST");
    assert_false(router_match_one(&m, &req));
    req.method = sp("GET");
    req.path = sp("/apx");
    assert_false(router_match_one(&m, &req));
    req.path = sp("/api");
    req.host = sp("other.example.com");
    assert_false(router_match_one(&m, &req));
    req.host = sp("shop.example.com");
    req.headers[0].value = sp("other");
    assert_false(router_match_one(&m, &req));
}

static void test_match_precedence(void **state)
{
    (void)state;
    static const char *post[] = {"POST"};
    struct route_cfg routes[4];
    struct config cfg;
    struct http_head req;

    memset(routes, 0, sizeof(routes));
    memset(&cfg, 0, sizeof(cfg));
    routes[0].name = "orders-write";
    routes[0].match.path_prefix = "/api/orders";
    routes[0].match.path_prefix_len = strlen("/api/orders");
    routes[0].match.methods = post;
    routes[0].match.n_methods = 1;
    routes[1].name = "orders";
    routes[1].match.path_prefix = "/api/orders";
    routes[1].match.path_prefix_len = strlen("/api/orders");
    routes[2].name = "api";
    routes[2].match.path_prefix = "/api";
    routes[2].match.path_prefix_len = 4;
    routes[2].match.host = "shop.example.com";
    routes[3].name = "shadowed"; /* never reached for /api/orders */
    routes[3].match.path_prefix = "/api/orders/special";
    routes[3].match.path_prefix_len = strlen("/api/orders/special");
    cfg.routes = routes;
    cfg.n_routes = 4;

    req_init(&req, "POST", "/api/orders/1", "shop.example.com");
    assert_int_equal(router_match(&cfg, &req), 0);
    req_init(&req, "GET", "/api/orders/1", "shop.example.com");
    assert_int_equal(router_match(&cfg, &req), 1);
    req_init(&req, "GET", "/api/orders/special", "x");
    assert_int_equal(router_match(&cfg, &req), 1);
    req_init(&req, "GET", "/api/users", "shop.example.com");
    assert_int_equal(router_match(&cfg, &req), 2);
    req_init(&req, "GET", "/api/users", "other.example.com");
    assert_int_equal(router_match(&cfg, &req), -1);
    req_init(&req, "GET", "/api/ordersx", "other.example.com");
    assert_int_equal(router_match(&cfg, &req), -1);
    req_init(&req, "GET", "/", "shop.example.com");
    assert_int_equal(router_match(&cfg, &req), -1);

    cfg.n_routes = 0;
    assert_int_equal(router_match(&cfg, &req), -1);

    /* A route with an empty match takes everything. */
    memset(&routes[3], 0, sizeof(routes[3]));
    routes[3].name = "default";
    cfg.n_routes = 4;
    assert_int_equal(router_match(&cfg, &req), 3);
}

/* ---- cookies and query strings ---- */

static bool cookie(const char *header, const char *name, const char *want)
{
    struct span out = {NULL, 0};
    bool found = router_cookie_get(sp(header), name, &out);
    if (want == NULL)
        return !found;
    return found && span_is(out, want);
}

static void test_cookie_get(void **state)
{
    (void)state;
    assert_true(cookie("a=1; b=2", "a", "1"));
    assert_true(cookie("a=1; b=2", "b", "2"));
    assert_true(cookie("a=1;b=2", "b", "2"));
    assert_true(cookie("a=1;  b=2  ", "b", "2"));
    assert_true(cookie("  a = 1 ;b=2", "a", "1"));
    assert_true(cookie("a=1; b=2", "c", NULL));
    assert_true(cookie("", "a", NULL));
    assert_true(cookie(";;", "a", NULL));
    assert_true(cookie(";;a=1;;", "a", "1"));
    assert_true(cookie("=x", "a", NULL));
    assert_true(cookie("=x; a=y", "a", "y"));
    assert_true(cookie("a", "a", NULL)); /* no '=': skipped */
    assert_true(cookie("a; a=2", "a", "2"));
    assert_true(cookie("a=", "a", ""));
    assert_true(cookie("a=; b=1", "a", ""));
    assert_true(cookie("a=\"quoted\"", "a", "quoted"));
    assert_true(cookie("a=\"\"", "a", ""));
    assert_true(cookie("a=\"", "a", "\""));     /* a lone quote is kept */
    assert_true(cookie("a=x=y", "a", "x=y"));   /* the first '=' splits */
    assert_true(cookie("xa=1; a=2", "a", "2")); /* a suffix of another name */
    assert_true(cookie("ab=1; a=2", "a", "2")); /* a prefix of another name */
    assert_true(cookie("a=1; a=2", "a", "1"));  /* first wins */
    assert_true(cookie("A=1; a=2", "a", "2"));  /* names are case-sensitive */
    assert_true(cookie("a=1", "", NULL));
    assert_true(cookie("sid=abc\t; x=1", "sid", "abc"));
}

static bool query(const char *q, const char *name, const char *want)
{
    struct span out = {NULL, 0};
    bool found = router_query_get(sp(q), name, &out);
    if (want == NULL)
        return !found;
    return found && span_is(out, want);
}

static void test_query_get(void **state)
{
    (void)state;
    assert_true(query("a=1&b=2", "a", "1"));
    assert_true(query("a=1&b=2", "b", "2"));
    assert_true(query("a=1&b=2", "c", NULL));
    assert_true(query("", "a", NULL));
    assert_true(query("&&", "a", NULL));
    assert_true(query("&&a=1&&", "a", "1"));
    assert_true(query("a", "a", "")); /* no '=': empty value */
    assert_true(query("a&b=2", "b", "2"));
    assert_true(query("a=", "a", ""));
    assert_true(query("=x&a=1", "a", "1"));
    assert_true(query("=x", "", NULL));
    assert_true(query("a=1;b=2", "b", NULL)); /* ';' is no separator */
    assert_true(query("a=1;b=2", "a", "1;b=2"));
    assert_true(query("a=%41%20b", "a", "%41%20b")); /* raw, not decoded */
    assert_true(query("%61=1", "a", NULL));
    assert_true(query("xa=1&a=2", "a", "2"));
    assert_true(query("ab=1&a=2", "a", "2"));
    assert_true(query("a=1&a=2", "a", "1"));
    assert_true(query("a=x=y", "a", "x=y"));
    assert_true(query("A=1", "a", NULL));
}

/* ---- sticky keys ---- */

static void test_key(void **state)
{
    (void)state;
    struct route_cfg rt;
    struct http_head req;
    struct span key;

    rt = route_header("r", "x-user-id");
    req_init(&req, "GET", "/?uid=q7", "h");
    assert_false(router_key(&rt, &req, sp("10.0.0.1"), &key));
    req_add(&req, "X-User-ID", "");
    assert_false(router_key(&rt, &req, sp("10.0.0.1"), &key));
    req_add(&req, "x-user-id", "u1");
    assert_true(router_key(&rt, &req, sp("10.0.0.1"), &key));
    assert_true(span_is(key, "u1"));

    rt.sticky = STICKY_COOKIE;
    rt.sticky_name = "sid";
    assert_false(router_key(&rt, &req, sp("10.0.0.1"), &key));
    req_add(&req, "Cookie", "theme=dark");
    assert_false(router_key(&rt, &req, sp("10.0.0.1"), &key));
    req_add(&req, "cookie", "lang=en; sid=\"s-9\"");
    assert_true(router_key(&rt, &req, sp("10.0.0.1"), &key));
    assert_true(span_is(key, "s-9"));
    req_init(&req, "GET", "/", "h");
    req_add(&req, "Cookie", "sid=");
    req_add(&req, "Cookie", "sid=s-2");
    assert_true(router_key(&rt, &req, sp(""), &key));
    assert_true(span_is(key, "s-2"));

    rt.sticky = STICKY_QUERY;
    rt.sticky_name = "uid";
    req_init(&req, "GET", "/path?x=1&uid=q7", "h");
    assert_true(router_key(&rt, &req, sp(""), &key));
    assert_true(span_is(key, "q7"));
    req_init(&req, "GET", "/path?uid=", "h");
    assert_false(router_key(&rt, &req, sp(""), &key));
    req_init(&req, "GET", "/path", "h");
    assert_false(router_key(&rt, &req, sp(""), &key));
    req_init(&req, "GET", "/path?uid", "h");
    assert_false(router_key(&rt, &req, sp(""), &key));

    rt.sticky = STICKY_IP;
    rt.sticky_name = NULL;
    assert_true(router_key(&rt, &req, sp("2001:db8::1"), &key));
    assert_true(span_is(key, "2001:db8::1"));
    assert_false(router_key(&rt, &req, sp(""), &key));

    /* A decision with an IP key is the bucket of the IP, whatever random says. */
    rt.name = "orders";
    struct split_decision d = router_decide(&rt, 50, 0, &req, sp("203.0.113.7"), 17);
    assert_int_equal(d.bucket, 7654);
    assert_int_equal(d.primary, SPLIT_LEGACY);
}

/* ---- decisions ---- */

static void test_decide_keyless_uses_random(void **state)
{
    (void)state;
    struct route_cfg rt = route_header("orders", "x-user-id");
    struct http_head req;
    struct split_decision d;

    req_init(&req, "GET", "/", "h");
    d = router_decide(&rt, 12.34, 0, &req, sp("10.0.0.1"), 1234);
    assert_int_equal(d.bucket, 1234);
    assert_int_equal(d.primary, SPLIT_LEGACY);
    d = router_decide(&rt, 12.35, 0, &req, sp("10.0.0.1"), 1234);
    assert_int_equal(d.primary, SPLIT_NEW);
    d = router_decide(&rt, 50, 0, &req, sp(""), 10000ull * 123456789 + 9999);
    assert_int_equal(d.bucket, 9999);
    assert_int_equal(d.primary, SPLIT_LEGACY);
    assert_false(d.overridden);

    /* Over many random values the keyless split follows the percentage. */
    uint64_t seed = 99;
    int n_new = 0;
    for (int i = 0; i < 100000; i++)
        n_new += router_decide(&rt, 30, 0, &req, sp(""), splitmix64(&seed)).primary == SPLIT_NEW;
    assert_in_range(n_new, 29000, 31000);

    /* With a key present, random plays no part in the bucket. */
    req_add(&req, "x-user-id", "alice");
    assert_int_equal(router_decide(&rt, 50, 0, &req, sp(""), 1).bucket, 4336);
    assert_int_equal(router_decide(&rt, 50, 0, &req, sp(""), 9998).bucket, 4336);
}

static void test_decide_override(void **state)
{
    (void)state;
    struct route_cfg rt = route_header("orders", "x-user-id");
    struct http_head req;
    struct split_decision d;

    rt.override_header = "x-ficus-backend";
    req_init(&req, "GET", "/", "h");
    d = router_decide(&rt, 0, 0, &req, sp(""), 0);
    assert_int_equal(d.status, 0);
    assert_false(d.overridden);
    assert_int_equal(d.primary, SPLIT_LEGACY);

    req_add(&req, "X-Ficus-Backend", "new");
    d = router_decide(&rt, 0, 0, &req, sp(""), 0);
    assert_int_equal(d.status, 0);
    assert_true(d.overridden);
    assert_int_equal(d.primary, SPLIT_NEW);

    req.headers[0].value = sp("legacy");
    d = router_decide(&rt, 100, 0, &req, sp(""), 0);
    assert_int_equal(d.status, 0);
    assert_true(d.overridden);
    assert_int_equal(d.primary, SPLIT_LEGACY);

    req.headers[0].value = sp("LEGACY");
    d = router_decide(&rt, 100, 0, &req, sp(""), 0);
    assert_true(d.overridden);
    assert_int_equal(d.primary, SPLIT_LEGACY);

    static const char *bad[] = {"", "both", "new ", "newer", "0", "legacy,new"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        req.headers[0].value = sp(bad[i]);
        d = router_decide(&rt, 50, 100, &req, sp(""), 0);
        assert_int_equal(d.status, 400);
        assert_false(d.shadow);
    }

    /* Without override_header, the header means nothing. */
    rt.override_header = NULL;
    d = router_decide(&rt, 100, 0, &req, sp(""), 0);
    assert_int_equal(d.status, 0);
    assert_false(d.overridden);
    assert_int_equal(d.primary, SPLIT_NEW);
}

static void test_decide_shadow(void **state)
{
    (void)state;
    struct route_cfg rt = route_header("orders", "x-user-id");
    struct http_head req;
    uint64_t seed = 7;
    int n_shadow;

    req_init(&req, "GET", "/", "h");
    req_add(&req, "x-user-id", "alice");

    /* No shadow object: never, whatever the percentage. */
    rt.shadow = false;
    assert_false(router_decide(&rt, 50, 100, &req, sp(""), 0).shadow);

    rt.shadow = true;
    n_shadow = 0;
    for (int i = 0; i < 10000; i++)
        n_shadow += router_decide(&rt, 50, 0, &req, sp(""), splitmix64(&seed)).shadow;
    assert_int_equal(n_shadow, 0);
    n_shadow = 0;
    for (int i = 0; i < 10000; i++)
        n_shadow += router_decide(&rt, 50, 100, &req, sp(""), splitmix64(&seed)).shadow;
    assert_int_equal(n_shadow, 10000);
    n_shadow = 0;
    for (int i = 0; i < 100000; i++)
        n_shadow += router_decide(&rt, 50, 10, &req, sp(""), splitmix64(&seed)).shadow;
    assert_in_range(n_shadow, 9000, 11000);

    /* The sample comes from the high half of random, the keyless bucket from
     * the low half. */
    assert_true(router_decide(&rt, 50, 50, &req, sp(""), 4999ull << 32).shadow);
    assert_false(router_decide(&rt, 50, 50, &req, sp(""), 5000ull << 32).shadow);
    assert_true(router_decide(&rt, 50, 50, &req, sp(""), 4999ull << 32 | 9999).shadow);

    /* The shadow is independent of which backend is primary or overridden. */
    rt.override_header = "x-ficus-backend";
    req_add(&req, "x-ficus-backend", "new");
    struct split_decision d = router_decide(&rt, 0, 100, &req, sp(""), 0);
    assert_true(d.overridden);
    assert_int_equal(d.primary, SPLIT_NEW);
    assert_true(d.shadow);

    /* Method filter: only the listed methods, compared exactly. */
    static const char *methods[] = {"GET", "HEAD", "OPTIONS", "POST", "PUT", "get"};
    static const bool want[] = {true, true, true, false, false, false};
    for (size_t i = 0; i < ARRAY_SIZE(methods); i++) {
        req.method = sp(methods[i]);
        assert_int_equal(router_decide(&rt, 50, 100, &req, sp(""), 0).shadow, want[i]);
    }
    static const char *with_post[] = {"GET", "POST"};
    rt.shadow_methods = with_post;
    rt.n_shadow_methods = 2;
    req.method = sp("POST");
    assert_true(router_decide(&rt, 50, 100, &req, sp(""), 0).shadow);
    req.method = sp("HEAD");
    assert_false(router_decide(&rt, 50, 100, &req, sp(""), 0).shadow);
    rt.shadow_methods = NULL;
    rt.n_shadow_methods = 0;
    req.method = sp("GET");
    assert_false(router_decide(&rt, 50, 100, &req, sp(""), 0).shadow);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_murmur3_vectors),
        cmocka_unit_test(test_bucket_is_hash_of_concatenation),
        cmocka_unit_test(test_bucket_fixed_vectors),
        cmocka_unit_test(test_split_monotonic),
        cmocka_unit_test(test_split_distribution),
        cmocka_unit_test(test_split_threshold),
        cmocka_unit_test(test_match_host),
        cmocka_unit_test(test_match_path),
        cmocka_unit_test(test_match_methods),
        cmocka_unit_test(test_match_headers),
        cmocka_unit_test(test_match_all_fields),
        cmocka_unit_test(test_match_precedence),
        cmocka_unit_test(test_cookie_get),
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_decide_keyless_uses_random),
        cmocka_unit_test(test_decide_override),
        cmocka_unit_test(test_decide_shadow),
    };
    return cmocka_run_group_tests_name("router", tests, NULL, NULL);
}
