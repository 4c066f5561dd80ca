/* Unit tests for endpoints: templates (configured and learnt), collapsing of
 * identifiers and of growing positions, stability as traffic grows, the bounds
 * and "other", windowed statistics whose rates never pass 100 %, the verdicts,
 * acknowledgements, warm-up and the JSON and Prometheus views. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "ficus/common.h"
#include "ficus/endpoint.h"

#define WINDOW_MS 60000

static struct endpoint_table *table(const char *const *templates, size_t n, int max,
                                    unsigned warmup)
{
    struct endpoint_config cfg = {.templates = templates,
                                  .n_templates = n,
                                  .max_endpoints = max,
                                  .window_ms = WINDOW_MS,
                                  .warmup = warmup};
    struct endpoint_table *t = endpoint_table_new(&cfg);
    assert_non_null(t);
    return t;
}

/* The name of the endpoint a GET (or method) of target is attributed to. */
static const char *classify(struct endpoint_table *t, const char *method, const char *target)
{
    int id = endpoint_classify(t, method, strlen(method), target, strlen(target));
    assert_true(id >= 0);
    return endpoint_name(t, id);
}

static int id_of(struct endpoint_table *t, const char *method, const char *target)
{
    return endpoint_classify(t, method, strlen(method), target, strlen(target));
}

/* One comparison without differences on target at now. */
static void record_clean(struct endpoint_table *t, const char *target, int64_t now)
{
    struct endpoint_sample s = {
        .legacy_status = 200, .new_status = 200, .legacy_ms = 5, .new_ms = 6};
    endpoint_record(t, id_of(t, "GET", target), &s, NULL, 0, now);
}

/* Counts of endpoints in the table's JSON, and the entry named name. */
static json_t *entry(json_t *doc, const char *name)
{
    json_t *eps = json_object_get(doc, "endpoints");
    for (size_t i = 0; i < json_array_size(eps); i++) {
        json_t *e = json_array_get(eps, i);
        if (strcmp(json_string_value(json_object_get(e, "endpoint")), name) == 0)
            return e;
    }
    return NULL;
}

static long long jint(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    assert_non_null(v);
    return (long long)json_integer_value(v);
}

static const struct endpoint_limits limits = {
    .min_comparisons = 10, .max_divergence_rate = 0.01, .max_error_rate = 0.02};

/* ---- templates -------------------------------------------------------------------------- */

static void test_template_problem(void **state)
{
    (void)state;
    assert_null(endpoint_template_problem("GET /posts/{id}"));
    assert_null(endpoint_template_problem("GET /"));
    assert_null(endpoint_template_problem("DELETE /users/{user_id}/posts/{id}"));
    assert_null(endpoint_template_problem("M-SEARCH /x"));
    assert_non_null(endpoint_template_problem("get /posts"));
    assert_non_null(endpoint_template_problem("GET posts"));
    assert_non_null(endpoint_template_problem("GET"));
    assert_non_null(endpoint_template_problem("GET /posts/{id"));
    assert_non_null(endpoint_template_problem("GET /posts/x{id}"));
    assert_non_null(endpoint_template_problem("GET /posts/{i-d}"));
    assert_non_null(endpoint_template_problem("GET /posts?x=1"));
    assert_non_null(endpoint_template_problem("GET /a b"));
    assert_non_null(endpoint_template_problem("GET /1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17"));
    assert_non_null(endpoint_template_problem(NULL));
}

static void test_configured_templates_win(void **state)
{
    const char *tpls[] = {"GET /posts/{id}", "GET /posts/{id}/comments", "GET /posts/latest"};
    struct endpoint_table *t = table(tpls, 3, 10, 0);
    (void)state;

    /* First match in the order listed: /posts/latest is "GET /posts/{id}". */
    assert_string_equal(classify(t, "GET", "/posts/abc"), "GET /posts/{id}");
    assert_string_equal(classify(t, "GET", "/posts/latest"), "GET /posts/{id}");
    assert_string_equal(classify(t, "GET", "/posts/7/comments?x=1"), "GET /posts/{id}/comments");
    /* A placeholder stands for a non-empty segment; other methods are learnt. */
    assert_string_equal(classify(t, "GET", "/posts/"), "GET /posts/");
    assert_string_equal(classify(t, "POST", "/posts/7"), "POST /posts/{id}");
    assert_string_equal(classify(t, "GET", "/posts"), "GET /posts");
    endpoint_table_free(t);
}

/* ---- learning --------------------------------------------------------------------------- */

static void test_identifiers_collapse_at_once(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 100, 0);
    (void)state;

    assert_string_equal(classify(t, "GET", "/posts/1"), "GET /posts/{id}");
    assert_string_equal(classify(t, "GET", "/posts/123456789012345678901234567890"),
                        "GET /posts/{id}");
    assert_string_equal(classify(t, "GET", "/items/3f2b8c1e-0a4d-4c7e-9b1a-2d3e4f5a6b7c"),
                        "GET /items/{id}");
    assert_string_equal(classify(t, "GET", "/objects/507f1f77bcf86cd799439011"),
                        "GET /objects/{id}");
    assert_string_equal(classify(t, "GET", "/commits/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
                        "GET /commits/{id}");
    assert_string_equal(classify(t, "GET", "/files/aGVsbG8gd29ybGQ1Mj3kLmZ9"), "GET /files/{id}");
    assert_string_equal(classify(t, "GET", "/s/Zx8kQ2pLr7Tn4WvB9yHc"), "GET /s/{id}");
    /* Anything longer than ENDPOINT_SEGMENT_MAX. */
    assert_string_equal(
        classify(t, "GET", "/t/this-is-a-very-long-segment-that-no-route-would-name-literally"),
        "GET /t/{id}");
    assert_string_equal(classify(t, "GET", "/users/42/posts/7"), "GET /users/{id}/posts/{id}");
    /* Names stay names, next to the identifiers. */
    assert_string_equal(classify(t, "GET", "/posts/new"), "GET /posts/new");
    assert_string_equal(classify(t, "GET", "/notification-preferences"),
                        "GET /notification-preferences");
    assert_string_equal(classify(t, "GET", "/api/v2/getUserProfile2FA"),
                        "GET /api/v2/getUserProfile2FA");
    assert_string_equal(classify(t, "GET", "/deadbeefcafebabe"), "GET /deadbeefcafebabe");
    /* The query, the fragment and the authority do not count. */
    assert_string_equal(classify(t, "GET", "/posts/9?_embed=comments#top"), "GET /posts/{id}");
    assert_string_equal(classify(t, "GET", "http://example.com:8080/posts/9?x"), "GET /posts/{id}");
    assert_string_equal(classify(t, "GET", "http://example.com"), "GET /");
    assert_string_equal(classify(t, "GET", "/"), "GET /");
    assert_string_equal(classify(t, "OPTIONS", "*"), "OPTIONS /*");
    endpoint_table_free(t);
}

/* Names that are identifiers without looking like one (user names, slugs):
 * the position collapses once its values keep growing, and what was learnt
 * before folds into the template, statistics included. */
static void test_growing_position_collapses(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 100, 0);
    char target[64];
    (void)state;

    for (int i = 0; i < ENDPOINT_COLLAPSE_MAX; i++) {
        char want[80];
        snprintf(target, sizeof target, "/users/user%c%c", 'a' + i % 26, 'a' + i / 26);
        snprintf(want, sizeof want, "GET %s", target);
        int id = id_of(t, "GET", target);
        assert_string_equal(endpoint_name(t, id), want);
        struct endpoint_sample s = {.legacy_status = 200, .new_status = 200};
        endpoint_record(t, id, &s, NULL, 0, 1000);
    }
    /* 32 literal endpoints so far (as many values as requests: maybe a fixed
     * set of names); the 33rd value collapses them. */
    json_t *doc = endpoint_table_json(t, &limits, 1000);
    assert_int_equal(json_array_size(json_object_get(doc, "endpoints")), 33); /* + other */
    json_decref(doc);
    assert_string_equal(classify(t, "GET", "/users/someone-new"), "GET /users/{id}");
    assert_string_equal(classify(t, "GET", "/users/useraa"), "GET /users/{id}");
    assert_string_equal(classify(t, "GET", "/users/yet-another"), "GET /users/{id}");
    doc = endpoint_table_json(t, &limits, 1000);
    assert_int_equal(json_array_size(json_object_get(doc, "endpoints")), 2);
    json_t *e = entry(doc, "GET /users/{id}");
    assert_non_null(e);
    /* The comparisons recorded on the literal endpoints count on the template. */
    assert_int_equal(jint(e, "comparisons"), ENDPOINT_COLLAPSE_MAX);
    assert_int_equal(jint(e, "comparisons_total"), ENDPOINT_COLLAPSE_MAX);
    json_decref(doc);
    endpoint_table_free(t);

    /* Values that keep coming among busy ones collapse sooner: 12 values, three
     * in four seen once, on a position with four requests per value. */
    t = table(NULL, 0, 100, 0);
    for (int i = 0; i < 30; i++) {
        assert_string_equal(classify(t, "GET", "/tags/news"), "GET /tags/news");
        assert_string_equal(classify(t, "GET", "/tags/sport"), "GET /tags/sport");
        assert_string_equal(classify(t, "GET", "/tags/music"), "GET /tags/music");
    }
    for (int i = 0; i < 8; i++) {
        snprintf(target, sizeof target, "/tags/slug-%c", 'a' + i);
        assert_string_equal(classify(t, "GET", target) + 4, target);
    }
    assert_string_equal(classify(t, "GET", "/tags/slug-z"), "GET /tags/{id}");
    assert_string_equal(classify(t, "GET", "/tags/slug-a"), "GET /tags/{id}");
    assert_string_equal(classify(t, "GET", "/tags/news"), "GET /tags/news"); /* busy: kept */
    endpoint_table_free(t);
}

/* A scanner probing random top-level paths must not merge the real resources:
 * values with real traffic stay literal when their position collapses. */
static void test_busy_literals_stay(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 100, 0);
    char target[64];
    (void)state;

    for (int i = 0; i < 40; i++) {
        classify(t, "GET", "/posts");
        classify(t, "GET", "/comments");
    }
    for (int i = 0; i < 40; i++) {
        snprintf(target, sizeof target, "/wp-admin-%c%c.php", 'a' + i % 26, 'a' + i / 26);
        classify(t, "GET", target);
    }
    assert_string_equal(classify(t, "GET", "/posts"), "GET /posts");
    assert_string_equal(classify(t, "GET", "/comments"), "GET /comments");
    assert_string_equal(classify(t, "GET", "/.env"), "GET /{id}");
    assert_string_equal(classify(t, "GET", "/wp-admin-aa.php"), "GET /{id}");
    /* Below a collapsed position learning goes on. */
    assert_string_equal(classify(t, "GET", "/phpmyadmin/index.php"), "GET /{id}/index.php");
    json_t *doc = endpoint_table_json(t, &limits, 0);
    assert_int_equal(json_array_size(json_object_get(doc, "endpoints")), 5);
    json_decref(doc);
    endpoint_table_free(t);
}

/* Traffic of a typical API, growing: every path keeps its name once it is a
 * template, names only ever go from literal to template, and the endpoints in
 * the end are the API's. */
static void test_stable_as_traffic_grows(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 100, 0);
    uint64_t seed = 42;
    char names[300][8]; /* user names: words, not identifiers, and ever more of them */
    for (int i = 0; i < 300; i++)
        snprintf(names[i], sizeof names[i], "u%c%c%c", 'a' + i % 26, 'a' + (i / 26) % 26,
                 'a' + i / 676);
    struct seen {
        char target[64];
        char name[128];
    } *seen = calloc(4096, sizeof *seen);
    size_t n_seen = 0;
    char target[64];
    (void)state;
    assert_non_null(seen);

    for (int i = 0; i < 20000; i++) {
        uint64_t r = xorshift64s(&seed);
        switch (r % 8) {
        case 0:
            snprintf(target, sizeof target, "/posts/%u", (unsigned)(r >> 8) % 500);
            break;
        case 1:
            snprintf(target, sizeof target, "/posts/%u/comments", (unsigned)(r >> 8) % 500);
            break;
        case 2:
            snprintf(target, sizeof target, "/profile/%s", names[(r >> 8) % 300]);
            break;
        case 3:
            snprintf(target, sizeof target, "/comments?postId=%u", (unsigned)(r >> 8) % 50);
            break;
        case 4:
            snprintf(target, sizeof target, "/db");
            break;
        case 5:
            snprintf(target, sizeof target, "/posts");
            break;
        case 6:
            snprintf(target, sizeof target, "/profile/%s/avatar", names[(r >> 8) % 300]);
            break;
        default:
            snprintf(target, sizeof target, "/comments/%u", (unsigned)(r >> 8) % 1000);
            break;
        }
        const char *name = classify(t, "GET", target);
        size_t j = 0;
        while (j < n_seen && strcmp(seen[j].target, target) != 0)
            j++;
        if (j == n_seen) {
            assert_true(n_seen < 4096);
            snprintf(seen[n_seen].target, sizeof seen[n_seen].target, "%s", target);
            snprintf(seen[n_seen].name, sizeof seen[n_seen].name, "%s", name);
            n_seen++;
        } else if (strcmp(seen[j].name, name) != 0) {
            /* A name may change only by more of it becoming a template. */
            size_t ids_before = 0, ids_now = 0;
            for (const char *p = seen[j].name; (p = strstr(p, "{id}")) != NULL; p++)
                ids_before++;
            for (const char *p = name; (p = strstr(p, "{id}")) != NULL; p++)
                ids_now++;
            if (ids_now <= ids_before) {
                print_error("%s went from %s to %s\n", target, seen[j].name, name);
                fail();
            }
            snprintf(seen[j].name, sizeof seen[j].name, "%s", name);
        }
    }
    static const char *const expected[] = {"GET /posts/{id}",
                                           "GET /posts/{id}/comments",
                                           "GET /profile/{id}",
                                           "GET /comments",
                                           "GET /db",
                                           "GET /posts",
                                           "GET /profile/{id}/avatar",
                                           "GET /comments/{id}",
                                           ENDPOINT_OTHER};
    json_t *doc = endpoint_table_json(t, &limits, 0);
    json_t *eps = json_object_get(doc, "endpoints");
    if (json_array_size(eps) != ARRAY_SIZE(expected)) {
        for (size_t i = 0; i < json_array_size(eps); i++)
            print_error("%s\n",
                        json_string_value(json_object_get(json_array_get(eps, i), "endpoint")));
        fail();
    }
    for (size_t i = 0; i < ARRAY_SIZE(expected); i++)
        assert_non_null(entry(doc, expected[i]));
    json_decref(doc);
    /* Once the template exists, every later request maps to it. */
    for (size_t j = 0; j < n_seen; j++)
        assert_string_equal(classify(t, "GET", seen[j].target), seen[j].name);
    free(seen);
    endpoint_table_free(t);
}

/* ---- bounds ----------------------------------------------------------------------------- */

static void test_bound_and_other(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 5, 0);
    char target[64];
    (void)state;

    /* Busy distinct names: each stays literal (also through the flood below),
     * so the sixth goes to "other". */
    static const char *const res[] = {"/a", "/b", "/c", "/d", "/e", "/f", "/g"};
    for (int round = 0; round < 20; round++)
        for (size_t i = 0; i < ARRAY_SIZE(res); i++)
            classify(t, "GET", res[i]);
    assert_string_equal(classify(t, "GET", "/e"), "GET /e");
    assert_string_equal(classify(t, "GET", "/f"), ENDPOINT_OTHER);
    assert_string_equal(classify(t, "GET", "/g"), ENDPOINT_OTHER);
    /* Methods beyond the learner's, odd ones and deep paths too. */
    assert_string_equal(classify(t, "get", "/a"), ENDPOINT_OTHER);
    assert_string_equal(classify(t, "GET", "/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17"),
                        ENDPOINT_OTHER);
    assert_int_equal(endpoint_find(t, "GET", 3, "/f", 2), 0);

    /* A hostile client: 100,000 random paths. Endpoints and learner nodes stay
     * within their bounds. */
    uint64_t seed = 7;
    for (int i = 0; i < 100000; i++) {
        uint64_t r = xorshift64s(&seed);
        snprintf(target, sizeof target, "/%c%c%c/%c%c/x%llu/%s", 'a' + (int)(r % 26),
                 'a' + (int)(r >> 5) % 26, 'a' + (int)(r >> 10) % 26, 'a' + (int)(r >> 15) % 26,
                 'a' + (int)(r >> 20) % 26, (unsigned long long)(r >> 40) % 7,
                 (r >> 30) & 1 ? "z" : "");
        int id = id_of(t, (r >> 31) & 1 ? "GET" : "PUT", target);
        assert_true(id >= 0 && id <= 5);
    }
    /* Deep ones: ten random words a path. */
    for (int i = 0; i < 20000; i++) {
        size_t o = 0;
        for (int k = 0; k < 10; k++) {
            uint64_t r = xorshift64s(&seed);
            o += (size_t)snprintf(target + o, sizeof target - o, "/%c%c", 'a' + (int)(r % 26),
                                  'a' + (int)(r >> 8) % 26);
        }
        int id = id_of(t, "POST", target);
        assert_true(id >= 0 && id <= 5);
    }
    assert_string_equal(classify(t, "GET", "/e"), "GET /e");
    json_t *doc = endpoint_table_json(t, &limits, 0);
    assert_true(json_array_size(json_object_get(doc, "endpoints")) <= 6);
    json_t *learner = json_object_get(doc, "learner");
    assert_true(jint(learner, "nodes") <= jint(learner, "max_nodes") + 1);
    assert_int_equal(jint(learner, "max_nodes"), ENDPOINT_NODES_PER_ENDPOINT * 5 + 64);
    json_decref(doc);
    endpoint_table_free(t);

    /* A flood of deep paths that fills the node cap collapses into templates
     * rather than freezing the learner: a new endpoint still gets a name. (With
     * 5 endpoints the cap holds 9 such paths: too few values for a collapse
     * unless those that found no room count.) */
    t = table(NULL, 0, 5, 0);
    for (int i = 0; i < 5000; i++) {
        size_t o = 0;
        for (int k = 0; k < 10; k++) {
            uint64_t r = xorshift64s(&seed);
            o += (size_t)snprintf(target + o, sizeof target - o, "/%c%c", 'a' + (int)(r % 26),
                                  'a' + (int)(r >> 8) % 26);
        }
        assert_true(id_of(t, "POST", target) >= 0);
    }
    assert_string_equal(classify(t, "DELETE", "/sessions/current"), "DELETE /sessions/current");
    doc = endpoint_table_json(t, &limits, 0);
    learner = json_object_get(doc, "learner");
    assert_true(jint(learner, "nodes") < 40);
    json_decref(doc);
    endpoint_table_free(t);

    /* max_endpoints below the configured templates, or out of range: no table. */
    const char *tpls[] = {"GET /a", "GET /b"};
    struct endpoint_config bad = {
        .templates = tpls, .n_templates = 2, .max_endpoints = 1, .window_ms = 1000};
    assert_null(endpoint_table_new(&bad));
    bad.max_endpoints = ENDPOINT_MAX_LIMIT + 1;
    assert_null(endpoint_table_new(&bad));
}

/* ---- statistics ------------------------------------------------------------------------- */

/* Every item of a list endpoint differs: each path counts once per comparison,
 * so no rate passes 100 % (the summary used to show 210 %). */
static void test_rates_never_above_100(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 10, 0);
    struct endpoint_item items[DIFF_MAX_ITEMS];
    char paths[DIFF_MAX_ITEMS][32];
    uint64_t seed = 3;
    (void)state;

    for (int c = 0; c < 300; c++) {
        size_t n = 1 + xorshift64s(&seed) % DIFF_MAX_ITEMS;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = xorshift64s(&seed);
            snprintf(paths[i], sizeof paths[i], "/%zu/%s", i, (r & 1) ? "id" : "views");
            items[i] = (struct endpoint_item){.kind = (r >> 1) % 3 == 0 ? DIFF_ADDED : DIFF_JSON,
                                              .path = paths[i],
                                              .noise = (r >> 3) % 5 == 0};
        }
        struct endpoint_sample s = {.legacy_status = 200,
                                    .new_status = 200,
                                    .items = items,
                                    .n_items = n,
                                    .legacy_ms = 1,
                                    .new_ms = 2};
        endpoint_record(t, id_of(t, "GET", "/posts"), &s, NULL, 0, 5000 + c);
    }
    json_t *doc = endpoint_table_json(t, &limits, 6000);
    json_t *e = entry(doc, "GET /posts");
    long long n = jint(e, "comparisons");
    assert_int_equal(n, 300);
    assert_true(json_real_value(json_object_get(e, "divergence_rate")) <= 1.0);
    assert_true(jint(e, "divergent") <= n);
    assert_true(jint(e, "noise") <= n);
    json_t *paths_j = json_object_get(e, "top_paths");
    assert_true(json_array_size(paths_j) > 0);
    for (size_t i = 0; i < json_array_size(paths_j); i++) {
        json_t *p = json_array_get(paths_j, i);
        assert_true(json_real_value(json_object_get(p, "rate")) <= 1.0);
        assert_true(jint(p, "count") + jint(p, "noise") <= n);
    }
    json_t *kinds = json_object_get(e, "kinds");
    assert_true(jint(kinds, "json") <= n);
    /* /0/id, /1/id ... are one path; with every comparison holding some item at
     * "/ * /id" or "/ * /views", the first rows are near 100 % but not above. */
    json_t *top = json_array_get(paths_j, 0);
    assert_true(jint(top, "count") > n / 2);
    json_decref(doc);
    endpoint_table_free(t);
}

static void test_window_slides(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 10, 0);
    struct endpoint_verdict v;
    (void)state;

    for (int i = 0; i < 20; i++)
        record_clean(t, "/posts", 1000);
    for (int i = 0; i < 5; i++)
        record_clean(t, "/posts", 1000 + WINDOW_MS / 2);
    int id = id_of(t, "GET", "/posts");
    endpoint_verdict(t, id, &limits, 1000 + WINDOW_MS / 2, &v);
    assert_int_equal(v.comparisons, 25);
    /* A window later the first 20 are gone; two windows later everything. */
    endpoint_verdict(t, id, &limits, 1000 + WINDOW_MS + WINDOW_MS / 6, &v);
    assert_int_equal(v.comparisons, 5);
    assert_int_equal(v.readiness, ENDPOINT_NOT_ENOUGH_DATA);
    endpoint_verdict(t, id, &limits, 1000 + 2 * WINDOW_MS, &v);
    assert_int_equal(v.comparisons, 0);
    /* Totals stay. */
    json_t *doc = endpoint_table_json(t, &limits, 1000 + 2 * WINDOW_MS);
    assert_int_equal(jint(entry(doc, "GET /posts"), "comparisons_total"), 25);
    json_decref(doc);
    endpoint_table_free(t);
}

static void test_verdicts(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 10, 5);
    struct endpoint_verdict v;
    struct endpoint_item id_item = {.kind = DIFF_JSON, .path = "/0/id"};
    struct endpoint_item ts_item = {.kind = DIFF_JSON, .path = "/ts", .noise = true};
    struct endpoint_item views = {.kind = DIFF_JSON, .path = "/3/views"};
    struct endpoint_ack ack = {.path = "/*/id", .kind = "json", .note = "ids are strings now"};
    struct endpoint_item both[2] = {id_item, ts_item};
    (void)state;

    /* Warming up, then below min_comparisons. */
    int ready = id_of(t, "GET", "/ready");
    endpoint_verdict(t, ready, &limits, 0, &v);
    assert_int_equal(v.readiness, ENDPOINT_NOT_ENOUGH_DATA);
    assert_non_null(strstr(v.reason, "warming up"));
    /* Every endpoint's first five comparisons are its warm-up, out of the window. */
    static const char *const eps[] = {"/ready",  "/diverging", "/elsewhere",
                                      "/mostly", "/errors",    "/both"};
    for (size_t k = 0; k < ARRAY_SIZE(eps); k++)
        for (int i = 0; i < 5; i++)
            record_clean(t, eps[k], 500);
    for (int i = 0; i < 9; i++) {
        /* Noise and an acknowledged difference do not count. */
        struct endpoint_sample s = {
            .legacy_status = 200, .new_status = 200, .items = both, .n_items = 2};
        endpoint_record(t, id_of(t, "GET", "/ready"), &s, &ack, 1, 1000);
    }
    endpoint_verdict(t, id_of(t, "GET", "/ready"), &limits, 1000, &v);
    assert_int_equal(v.readiness, ENDPOINT_NOT_ENOUGH_DATA);
    assert_non_null(strstr(v.reason, "9 of 10"));
    struct endpoint_sample s1 = {
        .legacy_status = 200, .new_status = 200, .items = both, .n_items = 2};
    endpoint_record(t, id_of(t, "GET", "/ready"), &s1, &ack, 1, 1000);
    endpoint_verdict(t, id_of(t, "GET", "/ready"), &limits, 1000, &v);
    assert_int_equal(v.readiness, ENDPOINT_READY);
    assert_int_equal(v.divergent, 0);
    /* The same without the acknowledgement diverges, with the reason. */
    for (int i = 0; i < 10; i++)
        endpoint_record(t, id_of(t, "GET", "/diverging"), &s1, NULL, 0, 1000);
    endpoint_verdict(t, id_of(t, "GET", "/diverging"), &limits, 1000, &v);
    assert_int_equal(v.readiness, ENDPOINT_DIVERGING);
    assert_non_null(strstr(v.reason, "json /*/id differs in 100.0% of comparisons"));
    /* An acknowledgement for another endpoint does not cover this one. */
    struct endpoint_ack other = ack;
    other.endpoint = "GET /ready";
    for (int i = 0; i < 10; i++)
        endpoint_record(t, id_of(t, "GET", "/elsewhere"), &s1, &other, 1, 1000);
    endpoint_verdict(t, id_of(t, "GET", "/elsewhere"), &limits, 1000, &v);
    assert_int_equal(v.readiness, ENDPOINT_DIVERGING);
    /* One difference in 200 is within a 1 % limit. */
    for (int i = 0; i < 200; i++) {
        struct endpoint_sample s = {.legacy_status = 200,
                                    .new_status = 200,
                                    .items = i == 0 ? &views : NULL,
                                    .n_items = i == 0};
        endpoint_record(t, id_of(t, "GET", "/mostly"), &s, NULL, 0, 2000);
    }
    endpoint_verdict(t, id_of(t, "GET", "/mostly"), &limits, 2000, &v);
    assert_int_equal(v.readiness, ENDPOINT_READY);
    /* New failing where legacy does not: diverging on errors; both failing is
     * no regression. */
    for (int i = 0; i < 20; i++) {
        struct endpoint_sample s = {.legacy_status = 200,
                                    .new_status = i < 2 ? 0 : 200,
                                    .new_error = i < 2 ? "timeout" : NULL};
        endpoint_record(t, id_of(t, "GET", "/errors"), &s, NULL, 0, 2000);
        struct endpoint_sample b = {.legacy_status = 503, .new_status = 503};
        endpoint_record(t, id_of(t, "GET", "/both"), &b, NULL, 0, 2000);
    }
    endpoint_verdict(t, id_of(t, "GET", "/errors"), &limits, 2000, &v);
    assert_int_equal(v.readiness, ENDPOINT_DIVERGING);
    assert_non_null(strstr(v.reason, "new fails"));
    endpoint_verdict(t, id_of(t, "GET", "/both"), &limits, 2000, &v);
    assert_int_equal(v.readiness, ENDPOINT_READY);

    /* The JSON shows the same, with noise and acknowledged counts apart. */
    json_t *doc = endpoint_table_json(t, &limits, 2000);
    json_t *e = entry(doc, "GET /ready");
    assert_string_equal(json_string_value(json_object_get(e, "verdict")), "ready");
    assert_int_equal(jint(e, "acknowledged"), 10);
    assert_int_equal(jint(e, "noise"), 10);
    assert_int_equal(jint(e, "divergent"), 0);
    json_t *p0 = json_array_get(json_object_get(e, "top_paths"), 0);
    assert_string_equal(json_string_value(json_object_get(p0, "path")), "/*/id");
    assert_int_equal(jint(p0, "acknowledged"), 10);
    assert_int_equal(jint(p0, "count"), 0);
    e = entry(doc, "GET /diverging");
    assert_string_equal(json_string_value(json_object_get(e, "verdict")), "diverging");
    e = entry(doc, "GET /errors");
    assert_int_equal(jint(json_object_get(e, "errors"), "new_only"), 2);
    json_t *pairs = json_object_get(e, "status_pairs");
    assert_int_equal(json_array_size(pairs), 2);
    json_decref(doc);
    endpoint_table_free(t);
}

static void test_ack_matches(void **state)
{
    struct endpoint_ack a = {.path = "/*/id", .kind = "json", .endpoint = "GET /posts/{id}"};
    struct endpoint_ack any = {.path = "/*/id"};
    struct endpoint_ack body = {.path = "", .kind = "body"};
    (void)state;

    assert_true(endpoint_ack_matches(&a, "GET /posts/{id}", "json", "/0/id"));
    assert_true(endpoint_ack_matches(&a, "GET /posts/{id}", "json", "/*/id"));
    assert_false(endpoint_ack_matches(&a, "GET /posts", "json", "/0/id"));
    assert_false(endpoint_ack_matches(&a, "GET /posts/{id}", "added", "/0/id"));
    assert_false(endpoint_ack_matches(&a, "GET /posts/{id}", "json", "/0/title"));
    assert_false(endpoint_ack_matches(&a, "GET /posts/{id}", "json", "/0/id/x"));
    assert_true(endpoint_ack_matches(&any, "GET /x", "added", "/7/id"));
    assert_true(endpoint_ack_matches(&body, "GET /x", "body", "1234"));
    assert_false(endpoint_ack_matches(&body, "GET /x", "json", "/a"));
    struct endpoint_ack body_named = {.path = "body", .kind = "body"};
    struct endpoint_ack any_kind_body = {.path = "body"};
    struct endpoint_ack json_only = {.path = "/a", .kind = "json"};
    assert_true(endpoint_ack_matches(&body_named, "GET /x", "body", "17"));
    assert_true(endpoint_ack_matches(&any_kind_body, "GET /x", "body", "0"));
    assert_false(endpoint_ack_matches(&json_only, "GET /x", "body", "0"));
    assert_false(endpoint_ack_matches(&any, "GET /x", "body", "0"));
    assert_false(endpoint_ack_matches(NULL, "GET /x", "json", "/a"));
}

static void test_odd_bytes_are_ids(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 10, 0);
    (void)state;
    static const char *const odd[] = {"/x/caf\xc3\xa9", "/x/a\"b", "/x/a\\b", "/x/{y}", "/x/\xff"};
    for (size_t i = 0; i < ARRAY_SIZE(odd); i++)
        assert_string_equal(endpoint_name(t, id_of(t, "GET", odd[i])), "GET /x/{id}");
    assert_string_equal(endpoint_name(t, id_of(t, "GET", "/x/list")), "GET /x/list");
    endpoint_table_free(t);
}

static void test_warmup_and_find(void **state)
{
    struct endpoint_table *t = table(NULL, 0, 10, 3);
    (void)state;

    /* find does not learn: a new path stays new until it is classified. */
    assert_int_equal(endpoint_find(t, "GET", 3, "/posts/1", 8), ENDPOINT_NEW);
    assert_true(endpoint_warming_up(t, ENDPOINT_NEW));
    assert_int_equal(endpoint_find(t, "GET", 3, "/posts/1", 8), ENDPOINT_NEW);
    int id = id_of(t, "GET", "/posts/1");
    assert_int_equal(endpoint_find(t, "GET", 3, "/posts/2", 8), id);
    for (int i = 0; i < 3; i++) {
        assert_true(endpoint_warming_up(t, id));
        record_clean(t, "/posts/9", 0);
    }
    assert_false(endpoint_warming_up(t, id));
    assert_false(endpoint_warming_up(t, 99));
    /* The warm-up's comparisons are not in the window; the next one is. */
    struct endpoint_limits lim = {1, 0.5, 0.5};
    struct endpoint_verdict v;
    endpoint_verdict(t, id, &lim, 0, &v);
    assert_int_equal(v.comparisons, 0);
    record_clean(t, "/posts/9", 0);
    endpoint_verdict(t, id, &lim, 0, &v);
    assert_int_equal(v.comparisons, 1);
    endpoint_table_free(t);
    t = table(NULL, 0, 10, 0);
    assert_false(endpoint_warming_up(t, ENDPOINT_NEW)); /* warm-up off */
    endpoint_table_free(t);
}

static void count_each(const char *name, unsigned long long comparisons,
                       unsigned long long divergent, void *arg)
{
    json_t *o = arg;
    json_object_set_new(o, name,
                        json_pack("[I,I]", (json_int_t)comparisons, (json_int_t)divergent));
}

static void test_json_and_series(void **state)
{
    const char *tpls[] = {"GET /posts/{id}"};
    struct endpoint_table *t = table(tpls, 1, 10, 0);
    struct endpoint_item st = {.kind = DIFF_STATUS, .path = "status"};
    struct endpoint_item body = {.kind = DIFF_BODY, .path = "123"};
    (void)state;

    struct endpoint_sample s = {.legacy_status = 200,
                                .new_status = 404,
                                .legacy_ms = 3,
                                .new_ms = 40,
                                .items = &st,
                                .n_items = 1};
    endpoint_record(t, id_of(t, "GET", "/posts/1"), &s, NULL, 0, 100);
    struct endpoint_sample b = {.legacy_status = 200,
                                .new_status = 200,
                                .legacy_ms = 3,
                                .new_ms = 4,
                                .items = &body,
                                .n_items = 1};
    endpoint_record(t, id_of(t, "GET", "/posts/2"), &b, NULL, 0, 100);
    record_clean(t, "/db", 100);
    json_t *doc = endpoint_table_json(t, &limits, 100);
    assert_int_equal(jint(doc, "window_ms"), WINDOW_MS);
    json_t *e = json_array_get(json_object_get(doc, "endpoints"), 0); /* most compared */
    assert_string_equal(json_string_value(json_object_get(e, "endpoint")), "GET /posts/{id}");
    assert_string_equal(json_string_value(json_object_get(e, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(e, "template")), "/posts/{id}");
    assert_string_equal(json_string_value(json_object_get(e, "source")), "configured");
    assert_int_equal(jint(json_object_get(e, "kinds"), "status"), 1);
    assert_int_equal(jint(json_object_get(e, "kinds"), "body"), 1);
    json_t *lat = json_object_get(json_object_get(e, "latency_ms"), "new");
    assert_true(json_real_value(json_object_get(lat, "p99")) > 25.0);
    assert_true(json_real_value(json_object_get(lat, "p50")) <= 50.0);
    e = entry(doc, "GET /db");
    assert_string_equal(json_string_value(json_object_get(e, "source")), "learnt");
    assert_non_null(entry(doc, ENDPOINT_OTHER));
    json_decref(doc);

    json_t *series = json_object();
    endpoint_table_each(t, count_each, series);
    assert_int_equal(json_object_size(series), 3);
    assert_int_equal(
        json_integer_value(json_array_get(json_object_get(series, "GET /posts/{id}"), 0)), 2);
    assert_int_equal(
        json_integer_value(json_array_get(json_object_get(series, "GET /posts/{id}"), 1)), 2);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(series, "GET /db"), 1)), 0);
    json_decref(series);

    /* A table is kept across a reload only when its configuration is the same. */
    struct endpoint_config same = {.templates = tpls,
                                   .n_templates = 1,
                                   .max_endpoints = 10,
                                   .window_ms = WINDOW_MS,
                                   .warmup = 0};
    assert_true(endpoint_table_matches(t, &same));
    same.max_endpoints = 11;
    assert_false(endpoint_table_matches(t, &same));
    endpoint_table_free(t);
    endpoint_table_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_template_problem),
        cmocka_unit_test(test_configured_templates_win),
        cmocka_unit_test(test_identifiers_collapse_at_once),
        cmocka_unit_test(test_growing_position_collapses),
        cmocka_unit_test(test_busy_literals_stay),
        cmocka_unit_test(test_stable_as_traffic_grows),
        cmocka_unit_test(test_bound_and_other),
        cmocka_unit_test(test_rates_never_above_100),
        cmocka_unit_test(test_window_slides),
        cmocka_unit_test(test_verdicts),
        cmocka_unit_test(test_ack_matches),
        cmocka_unit_test(test_warmup_and_find),
        cmocka_unit_test(test_odd_bytes_are_ids),
        cmocka_unit_test(test_json_and_series),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
