/* Unit tests for noise learning: rates, the minimum sample count, index
 * normalisation, error samples, the bound on tracked paths, noise_each, and
 * scopes: a timestamp of one endpoint among many is noise within its warm-up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ficus/common.h"
#include "ficus/diff.h"
#include "ficus/noise.h"

/* A result with the given paths as json items (no values). */
static void make_result(struct diff_result *r, const char *const *paths, size_t n)
{
    diff_result_init(r);
    for (size_t i = 0; i < n; i++) {
        r->items[i].kind = DIFF_JSON;
        r->items[i].path = arena_strndup(&r->arena, paths[i], strlen(paths[i]));
        r->items[i].legacy = NULL;
        r->items[i].new_ = NULL;
        r->n++;
    }
}

static void observe(struct noise_stats *ns, const char *const *paths, size_t n)
{
    struct diff_result r;

    make_result(&r, paths, n);
    noise_observe(ns, &r);
    diff_result_dispose(&r);
}

static void test_always_differing_is_noise_after_min_samples(void **state)
{
    struct noise_stats *ns = noise_new(0.05);
    const char *paths[] = {"/meta/generated_at"};
    (void)state;

    assert_non_null(ns);
    for (int i = 0; i < NOISE_MIN_SAMPLES - 1; i++) {
        observe(ns, paths, 1);
        assert_false(noise_is_noise(ns, "/meta/generated_at"));
    }
    observe(ns, paths, 1);
    assert_int_equal(noise_samples(ns), NOISE_MIN_SAMPLES);
    assert_true(noise_is_noise(ns, "/meta/generated_at"));
    assert_false(noise_is_noise(ns, "/meta/other"));
    noise_free(ns);
}

static void test_rare_difference_is_not_noise(void **state)
{
    struct noise_stats *ns = noise_new(0.05);
    const char *paths[] = {"/price"};
    (void)state;

    for (int i = 0; i < 100; i++) {
        if (i == 37)
            observe(ns, paths, 1);
        else
            observe(ns, NULL, 0);
    }
    assert_int_equal(noise_samples(ns), 100);
    assert_false(noise_is_noise(ns, "/price"));
    noise_free(ns);
}

static void test_rate_around_threshold(void **state)
{
    struct noise_stats *ns = noise_new(0.05);
    const char *paths[] = {"/a"};
    (void)state;

    /* 5 of 100 is exactly the threshold: not above it. 6 of 100 is. */
    for (int i = 0; i < 100; i++)
        observe(ns, i < 5 ? paths : NULL, i < 5 ? 1 : 0);
    assert_false(noise_is_noise(ns, "/a"));
    noise_free(ns);

    ns = noise_new(0.05);
    for (int i = 0; i < 100; i++)
        observe(ns, i < 6 ? paths : NULL, i < 6 ? 1 : 0);
    assert_true(noise_is_noise(ns, "/a"));
    noise_free(ns);
}

static void test_index_normalisation(void **state)
{
    struct noise_stats *ns = noise_new(0.5);
    const char *a[] = {"/items/3/ts"};
    const char *b[] = {"/items/7/ts"};
    (void)state;

    for (int i = 0; i < 10; i++)
        observe(ns, i % 2 ? a : b, 1);
    assert_true(noise_is_noise(ns, "/items/3/ts"));
    assert_true(noise_is_noise(ns, "/items/7/ts"));
    assert_true(noise_is_noise(ns, "/items/12345/ts"));
    assert_true(noise_is_noise(ns, "/items/*/ts"));
    assert_false(noise_is_noise(ns, "/items/x/ts"));
    noise_free(ns);
}

static void test_distinct_paths_counted_once_per_sample(void **state)
{
    struct noise_stats *ns = noise_new(0.5);
    /* Three items, one normalised path: counts once in this sample. */
    const char *many[] = {"/items/0/ts", "/items/1/ts", "/items/2/ts", "/other"};
    const char *none[] = {"/unrelated"};
    (void)state;

    observe(ns, many, 4);
    for (int i = 0; i < 9; i++)
        observe(ns, none, 1);
    /* /items/ * /ts: 1 of 10 samples, under the threshold, even with three items. */
    assert_int_equal(noise_samples(ns), 10);
    assert_false(noise_is_noise(ns, "/items/0/ts"));
    assert_true(noise_is_noise(ns, "/unrelated"));
    noise_free(ns);
}

struct seen {
    size_t n;
    char paths[8][64];
    size_t diffs[8];
    double rates[8];
    bool noise[8];
};

static void collect(const char *path, size_t diffs, double rate, bool is_noise, void *arg)
{
    struct seen *s = arg;

    if (s->n < 8) {
        snprintf(s->paths[s->n], sizeof s->paths[0], "%s", path);
        s->diffs[s->n] = diffs;
        s->rates[s->n] = rate;
        s->noise[s->n] = is_noise;
    }
    s->n++;
}

static void test_noise_each(void **state)
{
    struct noise_stats *ns = noise_new(0.5);
    const char *both[] = {"/ts", "/items/4/id"};
    const char *one[] = {"/ts"};
    struct seen s = {0};
    (void)state;

    observe(ns, both, 2);
    for (int i = 0; i < 9; i++)
        observe(ns, one, 1);
    noise_each(ns, collect, &s);
    assert_int_equal(s.n, 2);
    /* Insertion order. */
    assert_string_equal(s.paths[0], "/ts");
    assert_int_equal(s.diffs[0], 10);
    assert_true(s.rates[0] > 0.999 && s.rates[0] < 1.001);
    assert_true(s.noise[0]);
    assert_string_equal(s.paths[1], "/items/*/id");
    assert_int_equal(s.diffs[1], 1);
    assert_true(s.rates[1] > 0.099 && s.rates[1] < 0.101);
    assert_false(s.noise[1]);
    noise_free(ns);
}

static void test_non_pointer_paths(void **state)
{
    struct noise_stats *ns = noise_new(0.5);
    struct diff_result r;
    const char *paths[] = {"date", "17"};
    (void)state;

    for (int i = 0; i < 6; i++) {
        make_result(&r, paths, 2);
        r.items[0].kind = DIFF_HEADER;
        r.items[1].kind = DIFF_BODY;
        noise_observe(ns, &r);
        diff_result_dispose(&r);
    }
    assert_true(noise_is_noise(ns, "date"));
    /* Body offsets group under one path. */
    assert_true(noise_is_noise(ns, "42"));
    noise_free(ns);
}

static void test_error_results_are_not_samples(void **state)
{
    struct noise_stats *ns = noise_new(0.05);
    struct diff_result r;
    const char *paths[] = {"new"};
    (void)state;

    for (int i = 0; i < 10; i++) {
        make_result(&r, paths, 1);
        r.items[0].kind = DIFF_ERROR;
        noise_observe(ns, &r);
        diff_result_dispose(&r);
    }
    assert_int_equal(noise_samples(ns), 0);
    assert_false(noise_is_noise(ns, "new"));
    noise_free(ns);
}

static void test_map_is_bounded(void **state)
{
    struct noise_stats *ns = noise_new(0.0);
    char buf[DIFF_MAX_ITEMS][32];
    const char *paths[DIFF_MAX_ITEMS];
    struct seen s = {0};
    char longpath[NOISE_MAX_PATH_LEN + 16];
    const char *lp[] = {longpath};
    size_t next = 0;
    (void)state;

    /* 12,000 distinct keys (no digits-only segments, so none merge). */
    while (next < 12000) {
        for (size_t i = 0; i < DIFF_MAX_ITEMS; i++, next++) {
            snprintf(buf[i], sizeof buf[i], "/k%zu", next);
            paths[i] = buf[i];
        }
        observe(ns, paths, DIFF_MAX_ITEMS);
    }
    memset(longpath, 'x', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    observe(ns, lp, 1);
    noise_each(ns, collect, &s);
    assert_int_equal(s.n, NOISE_MAX_PATHS);
    assert_true(noise_is_noise(ns, "/k0"));
    assert_true(noise_is_noise(ns, "/k9999"));
    assert_false(noise_is_noise(ns, "/k10000"));
    assert_false(noise_is_noise(ns, longpath));
    /* Known paths still count after the bound is reached. */
    {
        const char *k0[] = {"/k0"};
        observe(ns, k0, 1);
        s.n = 0;
        noise_each(ns, collect, &s);
        assert_string_equal(s.paths[0], "/k0");
        assert_int_equal(s.diffs[0], 2);
    }
    noise_free(ns);
}

static void observe_in(struct noise_stats *ns, const char *scope, const char *const *paths,
                       size_t n)
{
    struct diff_result r;

    make_result(&r, paths, n);
    noise_observe_in(ns, scope, &r);
    diff_result_dispose(&r);
}

/* Twenty endpoints warm up with 20 twins each; a timestamp differs in every
 * sample of one of them. Route-wide that is 5 % (not above the default
 * threshold: never noise); in its endpoint it is noise after 5 samples. */
static void test_scope_is_not_diluted(void **state)
{
    struct noise_stats *ns = noise_new(0.05);
    const char *ts[] = {"/meta/generated_at"};
    char scope[20][32];
    (void)state;

    for (int e = 0; e < 20; e++)
        snprintf(scope[e], sizeof scope[e], "GET /r%d/{id}", e);
    for (int round = 0; round < 20; round++) {
        for (int e = 0; e < 20; e++) {
            observe_in(ns, scope[e], e == 3 ? ts : NULL, e == 3 ? 1 : 0);
            /* Its own samples decide from the fifth on (before, the route's). */
            if (e == 3 && round + 1 >= NOISE_MIN_SAMPLES)
                assert_true(noise_is_noise_in(ns, scope[3], "/meta/generated_at"));
        }
    }
    assert_int_equal(noise_samples(ns), 400);
    assert_int_equal(noise_samples_in(ns, scope[3]), 20);
    assert_false(noise_is_noise(ns, "/meta/generated_at"));
    assert_true(noise_is_noise_in(ns, scope[3], "/meta/generated_at"));
    /* Another endpoint's samples decide for it: not noise there. */
    assert_false(noise_is_noise_in(ns, scope[4], "/meta/generated_at"));
    /* A scope with too few samples of its own falls back to the route. */
    observe_in(ns, "GET /young", NULL, 0);
    assert_false(noise_is_noise_in(ns, "GET /young", "/meta/generated_at"));
    noise_free(ns);

    ns = noise_new(0.05);
    for (int i = 0; i < 10; i++)
        observe_in(ns, i < 8 ? "GET /old" : "GET /young", ts, 1);
    assert_true(noise_is_noise_in(ns, "GET /young", "/meta/generated_at")); /* route-wide */
    noise_free(ns);
}

/* At the default threshold (0.05) a timestamp that differs between two calls
 * only now and then (a millisecond clock, calls often in the same millisecond)
 * is noise within an endpoint's 20 warm-up twins: two differences in 20 are
 * 10 %. */
static void test_timestamp_noise_within_warmup(void **state)
{
    const char *ts[] = {"/updated_at"};
    uint64_t seed = 11;
    (void)state;

    for (int run = 0; run < 200; run++) {
        struct noise_stats *ns = noise_new(0.05);
        int differed = 0;
        for (int i = 0; i < 20; i++) {
            bool d = xorshift64s(&seed) % 3 == 0; /* one call in three crosses a millisecond */
            differed += d;
            observe_in(ns, "GET /posts/{id}", d ? ts : NULL, d ? 1 : 0);
        }
        assert_int_equal(noise_is_noise_in(ns, "GET /posts/{id}", "/updated_at"), differed >= 2);
        noise_free(ns);
    }
}

static void test_null_safety(void **state)
{
    (void)state;
    noise_free(NULL);
    assert_int_equal(noise_samples(NULL), 0);
    assert_int_equal(noise_samples_in(NULL, "GET /"), 0);
    assert_false(noise_is_noise(NULL, "/a"));
    assert_false(noise_is_noise_in(NULL, "GET /", "/a"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_always_differing_is_noise_after_min_samples),
        cmocka_unit_test(test_rare_difference_is_not_noise),
        cmocka_unit_test(test_rate_around_threshold),
        cmocka_unit_test(test_index_normalisation),
        cmocka_unit_test(test_distinct_paths_counted_once_per_sample),
        cmocka_unit_test(test_noise_each),
        cmocka_unit_test(test_non_pointer_paths),
        cmocka_unit_test(test_error_results_are_not_samples),
        cmocka_unit_test(test_map_is_bounded),
        cmocka_unit_test(test_scope_is_not_diluted),
        cmocka_unit_test(test_timestamp_noise_within_warmup),
        cmocka_unit_test(test_null_safety),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
