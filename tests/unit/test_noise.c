/* Unit tests for noise learning: rates, the minimum sample count, index
 * normalisation, error samples, the bound on tracked paths and noise_each. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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

static void test_null_safety(void **state)
{
    (void)state;
    noise_free(NULL);
    assert_int_equal(noise_samples(NULL), 0);
    assert_false(noise_is_noise(NULL, "/a"));
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
        cmocka_unit_test(test_null_safety),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
