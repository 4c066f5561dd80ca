/* Unit tests for id correlation: learn and look up per collection, TTL expiry
 * with injected time, least-recently-used eviction at the bound, 100,000
 * inserts within the bound, ids read from responses (JSON Pointer, Location),
 * path segment and JSON body field rewrites with Content-Length, and diff
 * items taken as equal for a correlated pair. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ficus/common.h"
#include "ficus/correlate.h"
#include "ficus/diff.h"

static int learn(struct correlate *m, const char *scope, const char *l, const char *n, bool str,
                 int64_t now)
{
    bool l_int = strspn(l, "0123456789") == strlen(l);
    return correlate_learn(m, scope, strlen(scope), l, strlen(l), !l_int, n, strlen(n), str, now);
}

static int lookup(struct correlate *m, const char *scope, const char *l, int64_t now, char *out)
{
    return correlate_lookup(m, false, scope, scope ? strlen(scope) : 0, l, strlen(l), now, out,
                            NULL);
}

static void test_learn_lookup_per_collection(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(100, 60000);
    assert_non_null(m);
    char out[CORRELATE_ID_MAX + 1];
    assert_int_equal(learn(m, "/posts", "4", "p-4", true, 0), 0);
    assert_int_equal(learn(m, "/users", "4", "u-4", true, 1), 0);
    assert_int_equal(lookup(m, "/posts", "4", 2, out), 3);
    assert_string_equal(out, "p-4");
    assert_int_equal(lookup(m, "/users", "4", 3, out), 3);
    assert_string_equal(out, "u-4");
    assert_int_equal(lookup(m, "/comments", "4", 4, out), -1);
    assert_int_equal(lookup(m, "/posts", "5", 4, out), -1);
    /* Any collection: the most recently used first (/users was used last). */
    assert_int_equal(lookup(m, NULL, "4", 5, out), 3);
    assert_string_equal(out, "u-4");
    assert_true(correlate_is_pair(m, "4", 1, "p-4", 3, 6));
    assert_false(correlate_is_pair(m, "4", 1, "p-5", 3, 6));
    /* A changed pair replaces the old one and counts again. */
    assert_int_equal(learn(m, "/posts", "4", "p-44", true, 7), 0);
    assert_int_equal(lookup(m, "/posts", "4", 8, out), 4);
    struct correlate_stats st;
    correlate_stats(m, 9, &st);
    assert_int_equal(st.size, 2);
    assert_int_equal(st.learnt, 3);
    /* Ids past the cap and empty ids are refused. */
    char big[CORRELATE_ID_MAX + 2];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(learn(m, "/posts", big, "p-1", true, 10), -EINVAL);
    assert_int_equal(learn(m, "/posts", "1", big, true, 10), -EINVAL);
    assert_int_equal(learn(m, "/posts", "", "p-1", true, 10), -EINVAL);
    correlate_free(m);
    correlate_free(NULL);
    assert_null(correlate_new(0, 1));
    assert_null(correlate_new(CORRELATE_MAX_ENTRIES + 1, 1));
}

static void test_ttl_expiry(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(100, 1000);
    char out[CORRELATE_ID_MAX + 1];
    learn(m, "/posts", "1", "p-1", true, 0);
    learn(m, "/posts", "2", "p-2", true, 0);
    /* Each use keeps a pair another ttl_ms: 1 used at 900, 1899, 2898; 2 at
     * 999 and 1998, then not until 3000, too late. */
    assert_int_equal(lookup(m, "/posts", "1", 900, out), 3);
    assert_int_equal(lookup(m, "/posts", "2", 999, out), 3);
    assert_int_equal(lookup(m, "/posts", "1", 1899, out), 3);
    assert_int_equal(lookup(m, "/posts", "2", 1998, out), 3);
    assert_int_equal(lookup(m, "/posts", "1", 2898, out), 3);
    assert_int_equal(lookup(m, "/posts", "2", 3000, out), -1);
    struct correlate_stats st;
    correlate_stats(m, 3000, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.size, 1);
    correlate_stats(m, 5000, &st);
    assert_int_equal(st.expired, 2);
    assert_int_equal(st.size, 0);
    assert_false(correlate_is_pair(m, "1", 1, "p-1", 3, 5000));
    correlate_free(m);
}

static void test_eviction_at_bound(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(3, 1000000);
    char out[CORRELATE_ID_MAX + 1];
    learn(m, "/p", "1", "a", true, 1);
    learn(m, "/p", "2", "b", true, 2);
    learn(m, "/p", "3", "c", true, 3);
    assert_int_equal(lookup(m, "/p", "1", 4, out), 1); /* 1 used: 2 is now the oldest */
    learn(m, "/p", "4", "d", true, 5);
    assert_int_equal(lookup(m, "/p", "2", 6, out), -1);
    assert_int_equal(lookup(m, "/p", "1", 6, out), 1);
    assert_int_equal(lookup(m, "/p", "3", 6, out), 1);
    assert_int_equal(lookup(m, "/p", "4", 6, out), 1);
    struct correlate_stats st;
    correlate_stats(m, 7, &st);
    assert_int_equal(st.size, 3);
    assert_int_equal(st.evicted, 1);
    /* A smaller bound on reload evicts at once; a larger one rehashes. */
    assert_int_equal(correlate_configure(m, 1, 1000000, 8), 0);
    correlate_stats(m, 8, &st);
    assert_int_equal(st.size, 1);
    assert_int_equal(st.evicted, 3);
    assert_int_equal(lookup(m, "/p", "4", 9, out), 1);
    assert_int_equal(correlate_configure(m, 5000, 1000000, 10), 0);
    assert_int_equal(lookup(m, "/p", "4", 11, out), 1);
    assert_int_equal(correlate_configure(m, 0, 1, 10), -EINVAL);
    correlate_free(m);
}

static void test_many_inserts_stay_bounded(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(1000, 3600000);
    char l[32], n[32], out[CORRELATE_ID_MAX + 1];
    struct correlate_stats st;
    for (int i = 0; i < 100000; i++) {
        snprintf(l, sizeof(l), "%d", i);
        snprintf(n, sizeof(n), "p-%d", i);
        assert_int_equal(learn(m, "/posts", l, n, true, i), 0);
        if (i % 10000 == 0) {
            correlate_stats(m, i, &st);
            assert_true(st.size <= 1000);
        }
    }
    correlate_stats(m, 100000, &st);
    assert_int_equal(st.size, 1000);
    assert_int_equal(st.learnt, 100000);
    assert_int_equal(st.evicted, 99000);
    assert_int_equal(lookup(m, "/posts", "99999", 100001, out), 7);
    assert_int_equal(lookup(m, "/posts", "98999", 100001, out), -1);
    correlate_free(m);
}

static void test_path_rewrite(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(100, 60000);
    struct correlate_cfg cfg = {.enabled = true, .id_pointer = "/id"};
    learn(m, "/posts", "4", "p-4", true, 0);
    learn(m, "/posts/4/comments", "7", "c 7", true, 0);
    learn(m, "/users", "4", "u-4", true, 0);
    struct buf h = {0}, b = {0};
    bool changed;
    const char *head = "PATCH /posts/4/comments/7?x=/posts/4 HTTP/1.1\r\nHost: a\r\n"
                       "Content-Length: 2\r\n\r\n";
    int n =
        correlate_rewrite(m, &cfg, false, head, strlen(head), "{}", 2, false, 1, &h, &b, &changed);
    assert_int_equal(n, 2);
    assert_false(changed);
    assert_int_equal(h.len, strlen("PATCH /posts/p-4/comments/c%207?x=/posts/4 HTTP/1.1\r\nHost: "
                                   "a\r\nContent-Length: 2\r\n\r\n"));
    assert_memory_equal(h.data,
                        "PATCH /posts/p-4/comments/c%207?x=/posts/4 HTTP/1.1\r\nHost: a\r\n"
                        "Content-Length: 2\r\n\r\n",
                        h.len);
    /* Nothing known: nothing changes. */
    const char *other = "GET /posts/5 HTTP/1.1\r\n\r\n";
    assert_int_equal(correlate_rewrite(m, &cfg, false, other, strlen(other), NULL, 0, false, 2, &h,
                                       &b, &changed),
                     0);
    const char *users = "DELETE /users/4/ HTTP/1.1\r\n\r\n";
    assert_int_equal(correlate_rewrite(m, &cfg, false, users, strlen(users), NULL, 0, false, 3, &h,
                                       &b, &changed),
                     1);
    assert_memory_equal(h.data, "DELETE /users/u-4/ HTTP/1.1\r\n\r\n", h.len);
    struct correlate_stats st;
    correlate_stats(m, 4, &st);
    assert_int_equal(st.rewritten, 3);
    buf_dispose(&h);
    buf_dispose(&b);
    correlate_free(m);
}

static void test_body_rewrite(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(100, 60000);
    struct correlate_field fields[] = {
        {.pointer = "/post_id", .collection = "/posts"},
        {.pointer = "/tags/*/ref"},
        {.pointer = "/author", .collection = "/users"},
    };
    struct correlate_cfg cfg = {
        .enabled = true, .id_pointer = "/id", .body_fields = fields, .n_body_fields = 3};
    learn(m, "/posts", "4", "p-4", true, 0);
    learn(m, "/users", "4", "44", false, 0);
    learn(m, "/tags", "x", "t-x", true, 0);
    struct buf h = {0}, b = {0};
    bool changed;
    const char *head = "POST /comments HTTP/1.1\r\nContent-Type: application/json\r\n"
                       "Content-Length: 61\r\n\r\n";
    const char *body = "{\"post_id\":4,\"author\":4,\"tags\":[{\"ref\":\"x\"},{\"ref\":\"y\"}]}";
    int n = correlate_rewrite(m, &cfg, false, head, strlen(head), body, strlen(body), false, 1, &h,
                              &b, &changed);
    assert_int_equal(n, 3);
    assert_true(changed);
    const char *want =
        "{\"post_id\":\"p-4\",\"author\":44,\"tags\":[{\"ref\":\"t-x\"},{\"ref\":\"y\"}]}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    char cl[64];
    snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", strlen(want));
    h.data[h.len - 1] = '\0'; /* the head ends "\r\n\r\n": strstr on it */
    assert_non_null(strstr(h.data, cl));
    assert_null(strstr(h.data, "Content-Length: 61"));
    /* Chunked: the body changes, the head keeps its framing. */
    const char *chead = "POST /comments HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    n = correlate_rewrite(m, &cfg, false, chead, strlen(chead), "{\"post_id\":\"4\"}", 15, true, 2,
                          &h, &b, &changed);
    assert_int_equal(n, 1);
    assert_memory_equal(h.data, chead, strlen(chead));
    assert_memory_equal(b.data, "{\"post_id\":\"p-4\"}", b.len);
    /* Not JSON, or no field known: untouched. */
    assert_int_equal(correlate_rewrite(m, &cfg, false, head, strlen(head), "post_id=4", 9, false, 3,
                                       &h, &b, &changed),
                     0);
    assert_int_equal(correlate_rewrite(m, &cfg, false, head, strlen(head), "{\"post_id\":5}", 13,
                                       false, 3, &h, &b, &changed),
                     0);
    buf_dispose(&h);
    buf_dispose(&b);
    correlate_free(m);
}

static void test_observe_and_diff_items(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(100, 60000);
    struct correlate_cfg cfg = {.enabled = true, .id_pointer = "/id", .location = true};
    struct diff_header lh[] = {{"Location", 8, "/posts/4", 8}};
    struct diff_header nh[] = {{"Location", 8, "http://n/posts/p-4", 18}};
    struct diff_response l = {.status = 201,
                              .headers = lh,
                              .n_headers = 1,
                              .body = "{\"id\":4,\"t\":\"a\"}",
                              .body_len = 16};
    struct diff_response n = {.status = 201,
                              .headers = nh,
                              .n_headers = 1,
                              .body = "{\"id\":\"p-4\",\"t\":\"a\"}",
                              .body_len = 20};
    /* Safe methods and failures teach nothing. */
    assert_int_equal(correlate_observe(m, &cfg, "GET", "/posts", 6, &l, &n, 0), 0);
    n.status = 500;
    assert_int_equal(correlate_observe(m, &cfg, "POST", "/posts", 6, &l, &n, 0), 0);
    n.status = 201;
    assert_int_equal(correlate_observe(m, &cfg, "POST", "/posts?x=1", 10, &l, &n, 0), 1);
    char out[CORRELATE_ID_MAX + 1];
    bool is_string = false;
    assert_int_equal(correlate_lookup(m, false, "/posts", 6, "4", 1, 1, out, &is_string), 3);
    assert_true(is_string);
    /* From the Location alone (no JSON body): the collection is the Location's. */
    struct correlate_cfg loc_only = {.enabled = true, .location = true};
    struct diff_header lh2[] = {{"location", 8, "/u/9", 4}};
    struct diff_header nh2[] = {{"location", 8, "/u/90", 5}};
    struct diff_response l2 = {.status = 201, .headers = lh2, .n_headers = 1};
    struct diff_response n2 = {.status = 201, .headers = nh2, .n_headers = 1};
    assert_int_equal(correlate_observe(m, &loc_only, "POST", "/users", 6, &l2, &n2, 2), 1);
    assert_int_equal(correlate_lookup(m, false, "/u", 2, "9", 1, 3, out, &is_string), 2);
    assert_false(is_string);
    /* A PUT to the id's own path learns in its collection. */
    struct diff_response l3 = {.status = 200, .body = "{\"id\":7}", .body_len = 8};
    struct diff_response n3 = {.status = 200, .body = "{\"id\":\"p-7\"}", .body_len = 12};
    assert_int_equal(correlate_observe(m, &cfg, "PUT", "/posts/7", 8, &l3, &n3, 4), 1);
    assert_int_equal(correlate_lookup(m, false, "/posts", 6, "7", 1, 5, out, NULL), 3);

    /* Diff items: the pair is equal, another value is not. */
    struct diff_result r;
    diff_result_init(&r);
    const struct jv *four, *p4, *p5, *loc_l, *loc_n, *loc_bad;
    assert_int_equal(jdoc_parse(&r.arena, "4", 1, &four), 0);
    assert_int_equal(jdoc_parse(&r.arena, "\"p-4\"", 5, &p4), 0);
    assert_int_equal(jdoc_parse(&r.arena, "\"p-5\"", 5, &p5), 0);
    assert_int_equal(jdoc_parse(&r.arena, "\"/posts/4?a=1\"", 14, &loc_l), 0);
    assert_int_equal(jdoc_parse(&r.arena, "\"/posts/p-4?a=1\"", 16, &loc_n), 0);
    assert_int_equal(jdoc_parse(&r.arena, "\"/posts/p-4?a=2\"", 16, &loc_bad), 0);
    struct diff_item it = {.kind = DIFF_JSON, .path = "/id", .legacy = four, .new_ = p4};
    assert_true(correlate_item_equal(m, &it, 6));
    it.new_ = p5;
    assert_false(correlate_item_equal(m, &it, 6));
    it.kind = DIFF_ADDED;
    it.new_ = p4;
    assert_false(correlate_item_equal(m, &it, 6));
    struct diff_item h = {.kind = DIFF_HEADER, .path = "location", .legacy = loc_l, .new_ = loc_n};
    assert_true(correlate_item_equal(m, &h, 6));
    h.new_ = loc_bad;
    assert_false(correlate_item_equal(m, &h, 6));
    struct correlate_stats st;
    correlate_stats(m, 7, &st);
    assert_int_equal(st.matched, 2);
    diff_result_dispose(&r);
    correlate_free(m);
}

/* Through diff_responses with the hook: 60 correlated ids in a list do not fill
 * the 50 items, and the one real difference after them is reported alone. */
static void test_diff_hook_keeps_real_differences(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(1000, 60000);
    struct buf lb = {0}, nb = {0};
    buf_puts(&lb, "[");
    buf_puts(&nb, "[");
    for (int i = 1; i <= 60; i++) {
        char l[16], n[16];
        snprintf(l, sizeof(l), "%d", i);
        snprintf(n, sizeof(n), "p-%d", i);
        learn(m, "/posts", l, n, true, 0);
        buf_printf(&lb, "%s{\"id\":%d,\"t\":\"a\"}", i > 1 ? "," : "", i);
        buf_printf(&nb, "%s{\"id\":\"p-%d\",\"t\":\"%s\"}", i > 1 ? "," : "", i,
                   i == 60 ? "b" : "a");
    }
    buf_puts(&lb, "]");
    buf_puts(&nb, "]");
    struct diff_header ct[] = {{"content-type", 12, "application/json", 16}};
    struct diff_response l = {
        .status = 200, .headers = ct, .n_headers = 1, .body = lb.data, .body_len = lb.len};
    struct diff_response n = {
        .status = 200, .headers = ct, .n_headers = 1, .body = nb.data, .body_len = nb.len};
    struct correlate_diff_ctx cd = {.m = m, .now_ms = 1};
    struct diff_rules rules = {.equal_hook = correlate_diff_equal, .equal_ctx = &cd};
    struct diff_result r;
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_false(r.truncated);
    assert_string_equal(r.items[0].path, "/59/t");
    diff_result_dispose(&r);
    /* Without it: 50 id items, truncated, the title lost. */
    rules.equal_hook = NULL;
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, DIFF_MAX_ITEMS);
    assert_true(r.truncated);
    diff_result_dispose(&r);
    buf_dispose(&lb);
    buf_dispose(&nb);
    correlate_free(m);
}

/* A client routed to new carries new's ids: its shadow to legacy gets legacy's,
 * in nested paths (collections are legacy's paths) and body fields; a new id
 * names one legacy id per collection. */
static void test_rewrite_to_legacy(void **state)
{
    (void)state;
    struct correlate *m = correlate_new(100, 60000);
    struct correlate_field fields[] = {{.pointer = "/post_id", .collection = "/posts"},
                                       {.pointer = "/parent"}};
    struct correlate_cfg cfg = {
        .enabled = true, .id_pointer = "/id", .body_fields = fields, .n_body_fields = 2};
    learn(m, "/posts", "4", "p-4", true, 0);
    learn(m, "/posts/4/comments", "7", "c-7", true, 0);
    char out[CORRELATE_ID_MAX + 1];
    bool is_string = true;
    assert_int_equal(correlate_lookup(m, true, "/posts", 6, "p-4", 3, 1, out, &is_string), 1);
    assert_string_equal(out, "4");
    assert_false(is_string);
    struct buf h = {0}, b = {0};
    bool changed;
    const char *head = "PUT /posts/p-4/comments/c-7 HTTP/1.1\r\nContent-Length: 33\r\n\r\n";
    const char *body = "{\"post_id\":\"p-4\",\"parent\":\"c-7\"}";
    int n = correlate_rewrite(m, &cfg, true, head, strlen(head), body, strlen(body), false, 2, &h,
                              &b, &changed);
    assert_int_equal(n, 4);
    assert_true(changed);
    const char *want_head = "PUT /posts/4/comments/7 HTTP/1.1\r\nContent-Length: 24\r\n\r\n";
    assert_int_equal(h.len, strlen(want_head));
    assert_memory_equal(h.data, want_head, h.len);
    assert_int_equal(b.len, 24);
    assert_memory_equal(b.data, "{\"post_id\":4,\"parent\":7}", b.len);
    /* The forward direction does not take new ids for legacy ones. */
    assert_int_equal(correlate_rewrite(m, &cfg, false, head, strlen(head), body, strlen(body),
                                       false, 3, &h, &b, &changed),
                     0);
    /* A long collection: the rewritten path grows while its prefix is the
     * collection looked up (found by fuzz_correlate: the lookup read the
     * buffer the append had just moved). */
    char scope[201], rhead[300];
    memset(scope, 'a', 200);
    scope[0] = '/';
    scope[200] = '\0';
    learn(m, scope, "1", "n-1", true, 2);
    snprintf(rhead, sizeof(rhead), "GET %s/n-1 HTTP/1.1\r\n\r\n", scope);
    assert_int_equal(
        correlate_rewrite(m, &cfg, true, rhead, strlen(rhead), NULL, 0, false, 3, &h, &b, &changed),
        1);
    assert_int_equal(h.len, strlen(rhead) - 2);
    assert_memory_equal(h.data + 4 + 200, "/1 HTTP", 7);
    /* Learning another legacy id for p-4 in /posts replaces the pair. */
    learn(m, "/posts", "5", "p-4", true, 4);
    assert_int_equal(correlate_lookup(m, true, "/posts", 6, "p-4", 3, 5, out, NULL), 1);
    assert_string_equal(out, "5");
    assert_int_equal(correlate_lookup(m, false, "/posts", 6, "4", 1, 5, out, NULL), -1);
    buf_dispose(&h);
    buf_dispose(&b);
    correlate_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_learn_lookup_per_collection),
        cmocka_unit_test(test_ttl_expiry),
        cmocka_unit_test(test_eviction_at_bound),
        cmocka_unit_test(test_many_inserts_stay_bounded),
        cmocka_unit_test(test_path_rewrite),
        cmocka_unit_test(test_body_rewrite),
        cmocka_unit_test(test_observe_and_diff_items),
        cmocka_unit_test(test_diff_hook_keeps_real_differences),
        cmocka_unit_test(test_rewrite_to_legacy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
