/* Unit tests for the pure diff module: JSON structure, arrays, numbers,
 * ignore patterns, bodies, gzip, headers, status, errors and the item cap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <zlib.h>

#include "ficus/common.h"
#include "ficus/diff.h"

/* ---- helpers ---------------------------------------------------------------------------- */

/* Parses text into the result's arena, where the items pointing into it live. */
static const struct jv *doc(struct diff_result *out, const char *text)
{
    const struct jv *v = NULL;
    if (jdoc_parse(&out->arena, text, strlen(text), &v) != 0)
        fail_msg("bad test JSON %s", text);
    return v;
}

/* The same for a document built with jansson (large generated ones). */
static const struct jv *doc_of(struct diff_result *out, json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    const struct jv *v;
    assert_non_null(text);
    v = doc(out, text);
    free(text);
    json_decref(j);
    return v;
}

/* Diffs two JSON texts under rules into out (initialised here). */
static void jdiff(const struct diff_rules *rules, const char *legacy, const char *new_,
                  struct diff_result *out)
{
    diff_result_init(out);
    assert_int_equal(diff_json(rules, doc(out, legacy), doc(out, new_), out), 0);
}

/* Asserts that v is written exactly as the JSON text expected (compacted), or
 * is NULL when expected is. Numbers must come out as the document sent them. */
static void assert_value(const struct jv *v, const char *expected)
{
    struct buf got, want;
    struct arena a;
    const struct jv *e;

    if (expected == NULL) {
        assert_null(v);
        return;
    }
    assert_non_null(v);
    buf_init(&got, 0);
    buf_init(&want, 0);
    arena_init(&a);
    assert_int_equal(jv_write(&got, v, 17), 0);
    if (jdoc_parse(&a, expected, strlen(expected), &e) != 0)
        fail_msg("bad expected JSON %s", expected);
    assert_int_equal(jv_write(&want, e, 17), 0);
    if (strcmp(got.data, want.data) != 0) {
        print_error("value %s, expected %s\n", got.data, want.data);
        fail();
    }
    arena_dispose(&a);
    buf_dispose(&got);
    buf_dispose(&want);
}

static void assert_item(const struct diff_result *r, size_t i, enum diff_kind kind,
                        const char *path, const char *legacy, const char *new_)
{
    assert_true(i < r->n);
    assert_string_equal(diff_kind_name(r->items[i].kind), diff_kind_name(kind));
    assert_string_equal(r->items[i].path, path);
    assert_value(r->items[i].legacy, legacy);
    assert_value(r->items[i].new_, new_);
}

#define HDR(n, v) ((struct diff_header){(n), strlen(n), (v), strlen(v)})

static struct diff_response resp(int status, const struct diff_header *h, size_t nh,
                                 const char *body, size_t len)
{
    struct diff_response r = {
        .status = status, .headers = h, .n_headers = nh, .body = body, .body_len = len};
    return r;
}

static struct diff_response json_resp(const char *ctype, const char *body,
                                      struct diff_header *storage)
{
    storage[0] = HDR("Content-Type", ctype);
    return resp(200, storage, 1, body, strlen(body));
}

/* gzip-compresses in into a malloc'd buffer (windowBits 31 writes a gzip header). */
static char *gzip(const char *in, size_t len, size_t *out_len)
{
    z_stream zs;
    char *out;
    size_t cap;

    memset(&zs, 0, sizeof zs);
    assert_int_equal(
        deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
    cap = deflateBound(&zs, len) + 32;
    out = malloc(cap);
    assert_non_null(out);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = (Bytef *)out;
    zs.avail_out = (uInt)cap;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    *out_len = cap - zs.avail_out;
    deflateEnd(&zs);
    return out;
}

/* ---- JSON structure --------------------------------------------------------------------- */

static void test_identical_documents(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":[1,{\"b\":null}],\"c\":\"x\"}", "{\"a\":[1,{\"b\":null}],\"c\":\"x\"}",
          &r);
    assert_int_equal(r.n, 0);
    assert_false(r.truncated);
    diff_result_dispose(&r);
}

static void test_nested_object_change(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":{\"b\":{\"c\":1,\"d\":\"x\"}}}", "{\"a\":{\"b\":{\"c\":2,\"d\":\"x\"}}}",
          &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/a/b/c", "1", "2");
    diff_result_dispose(&r);
}

static void test_key_order_ignored(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":1,\"b\":{\"x\":1,\"y\":2},\"c\":3}",
          "{\"c\":3,\"b\":{\"y\":2,\"x\":1},\"a\":1}", &r);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

static void test_added_and_removed_keys(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":1,\"b\":2}", "{\"a\":1,\"c\":[3]}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_REMOVED, "/b", "2", NULL);
    assert_item(&r, 1, DIFF_ADDED, "/c", NULL, "[3]");
    diff_result_dispose(&r);
}

static void test_root_scalars(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "\"a\"", "\"b\"", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "", "\"a\"", "\"b\"");
    diff_result_dispose(&r);
}

static void test_positional_array(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":[1,2,3]}", "{\"a\":[1,5,3,4]}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/a/1", "2", "5");
    assert_item(&r, 1, DIFF_ADDED, "/a/3", NULL, "4");
    diff_result_dispose(&r);

    jdiff(&rules, "[1,2,3]", "[1]", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_REMOVED, "/1", "2", NULL);
    assert_item(&r, 1, DIFF_REMOVED, "/2", "3", NULL);
    diff_result_dispose(&r);
}

static void test_type_change(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"s\":\"1\",\"n\":null,\"a\":[],\"b\":true,\"o\":{}}",
          "{\"s\":1,\"n\":{\"x\":1},\"a\":{},\"b\":\"true\",\"o\":[]}", &r);
    assert_int_equal(r.n, 5);
    assert_item(&r, 0, DIFF_JSON, "/s", "\"1\"", "1");
    assert_item(&r, 1, DIFF_JSON, "/n", "null", "{\"x\":1}");
    assert_item(&r, 2, DIFF_JSON, "/a", "[]", "{}");
    assert_item(&r, 3, DIFF_JSON, "/b", "true", "\"true\"");
    assert_item(&r, 4, DIFF_JSON, "/o", "{}", "[]");
    diff_result_dispose(&r);
}

static void test_bool_and_null_values(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"t\":true,\"f\":false,\"n\":null}", "{\"t\":false,\"f\":false,\"n\":null}",
          &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/t", "true", "false");
    diff_result_dispose(&r);
}

static void test_null_vs_missing(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":null}", "{}", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_REMOVED, "/a", "null", NULL);
    diff_result_dispose(&r);

    jdiff(&rules, "{}", "{\"a\":null}", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_ADDED, "/a", NULL, "null");
    diff_result_dispose(&r);
}

static void test_pointer_escaping(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a/b\":1,\"m~n\":{\"~/\":1},\"\":1}", "{\"a/b\":2,\"m~n\":{\"~/\":2},\"\":2}",
          &r);
    assert_int_equal(r.n, 3);
    assert_item(&r, 0, DIFF_JSON, "/a~1b", "1", "2");
    assert_item(&r, 1, DIFF_JSON, "/m~0n/~0~1", "1", "2");
    assert_item(&r, 2, DIFF_JSON, "/", "1", "2");
    diff_result_dispose(&r);
}

static void test_ignore_escaped_key(void **state)
{
    const char *ignore[] = {"/a~1b", "/m~0n/*"};
    struct diff_rules rules = {.ignore = ignore, .n_ignore = 2};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a/b\":1,\"m~n\":{\"x\":1},\"a\":{\"b\":1}}",
          "{\"a/b\":2,\"m~n\":{\"x\":2},\"a\":{\"b\":2}}", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/a/b", "1", "2");
    diff_result_dispose(&r);
}

/* ---- arrays: match_by ------------------------------------------------------------------- */

static void test_match_by_inserted_item_is_one_added(void **state)
{
    struct diff_match_by mb[] = {{"/items", "id"}};
    struct diff_rules rules = {.match_by = mb, .n_match_by = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"items\":[{\"id\":1,\"p\":10},{\"id\":2,\"p\":20},{\"id\":3,\"p\":30}]}",
          "{\"items\":[{\"id\":1,\"p\":10},{\"id\":9,\"p\":90},{\"id\":2,\"p\":20},"
          "{\"id\":3,\"p\":30}]}",
          &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_ADDED, "/items/1", NULL, "{\"id\":9,\"p\":90}");
    diff_result_dispose(&r);
}

static void test_without_match_by_insert_shifts(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    /* The contrast: positional comparison sees every later item change. */
    jdiff(&rules, "{\"items\":[{\"id\":1},{\"id\":2},{\"id\":3}]}",
          "{\"items\":[{\"id\":1},{\"id\":9},{\"id\":2},{\"id\":3}]}", &r);
    assert_int_equal(r.n, 3);
    assert_item(&r, 0, DIFF_JSON, "/items/1/id", "2", "9");
    assert_item(&r, 1, DIFF_JSON, "/items/2/id", "3", "2");
    assert_item(&r, 2, DIFF_ADDED, "/items/3", NULL, "{\"id\":3}");
    diff_result_dispose(&r);
}

static void test_match_by_paired_items_use_legacy_index(void **state)
{
    struct diff_match_by mb[] = {{"/items", "id"}};
    struct diff_rules rules = {.match_by = mb, .n_match_by = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"items\":[{\"id\":\"a\",\"p\":1},{\"id\":\"b\",\"p\":2}]}",
          "{\"items\":[{\"id\":\"b\",\"p\":3},{\"id\":\"a\",\"p\":1}]}", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/items/1/p", "2", "3");
    diff_result_dispose(&r);
}

static void test_match_by_removed_item(void **state)
{
    struct diff_match_by mb[] = {{"/items", "id"}};
    struct diff_rules rules = {.match_by = mb, .n_match_by = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"items\":[{\"id\":1},{\"id\":2},{\"id\":3}]}",
          "{\"items\":[{\"id\":1},{\"id\":3}]}", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_REMOVED, "/items/1", "{\"id\":2}", NULL);
    diff_result_dispose(&r);
}

static void test_match_by_keyless_items_positional(void **state)
{
    struct diff_match_by mb[] = {{"/items", "id"}};
    struct diff_rules rules = {.match_by = mb, .n_match_by = 1};
    struct diff_result r;
    (void)state;

    /* Keyless items pair among themselves in order: legacy 1 with new 0. */
    jdiff(&rules, "{\"items\":[{\"id\":1},{\"x\":1},{\"x\":5}]}",
          "{\"items\":[{\"x\":2},{\"id\":1}]}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/items/1/x", "1", "2");
    assert_item(&r, 1, DIFF_REMOVED, "/items/2", "{\"x\":5}", NULL);
    diff_result_dispose(&r);
}

static void test_match_by_wildcard_pointer_and_duplicates(void **state)
{
    struct diff_match_by mb[] = {{"/orders/*/lines", "sku"}};
    struct diff_rules rules = {.match_by = mb, .n_match_by = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules,
          "{\"orders\":[{\"lines\":[{\"sku\":\"a\",\"q\":1},{\"sku\":\"a\",\"q\":2}]},"
          "{\"lines\":[{\"sku\":\"x\",\"q\":1},{\"sku\":\"y\",\"q\":1}]}]}",
          "{\"orders\":[{\"lines\":[{\"sku\":\"a\",\"q\":1},{\"sku\":\"a\",\"q\":3}]},"
          "{\"lines\":[{\"sku\":\"y\",\"q\":1},{\"sku\":\"x\",\"q\":2}]}]}",
          &r);
    assert_int_equal(r.n, 2);
    /* Duplicate keys pair first with first, second with second. */
    assert_item(&r, 0, DIFF_JSON, "/orders/0/lines/1/q", "2", "3");
    assert_item(&r, 1, DIFF_JSON, "/orders/1/lines/0/q", "1", "2");
    diff_result_dispose(&r);
}

static void test_match_by_large_reordered_array(void **state)
{
    struct diff_match_by mb[] = {{"/items", "id"}};
    struct diff_rules rules = {.match_by = mb, .n_match_by = 1};
    struct diff_result r;
    json_t *a = json_object(), *b = json_object();
    json_t *ia = json_array(), *ib = json_array();
    (void)state;

    diff_result_init(&r);
    for (int i = 0; i < 20000; i++) {
        json_array_append_new(ia, json_pack("{s:i, s:i}", "id", i, "v", i));
        json_array_append_new(ib, json_pack("{s:i, s:i}", "id", 19999 - i, "v", 19999 - i));
    }
    json_object_set_new(a, "items", ia);
    json_object_set_new(b, "items", ib);
    json_integer_set(json_object_get(json_array_get(ib, 0), "v"), -1); /* id 19999 */
    assert_int_equal(diff_json(&rules, doc_of(&r, a), doc_of(&r, b), &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/items/19999/v", "19999", "-1");
    diff_result_dispose(&r);
}

/* ---- arrays: unordered ------------------------------------------------------------------ */

static void test_unordered_reordered_equal(void **state)
{
    const char *unordered[] = {"/tags"};
    struct diff_rules rules = {.unordered = unordered, .n_unordered = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"tags\":[\"a\",\"b\",{\"c\":[1,2]}]}",
          "{\"tags\":[{\"c\":[1,2]},\"a\",\"b\"]}", &r);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

static void test_unordered_duplicates_multiset(void **state)
{
    const char *unordered[] = {"/tags"};
    struct diff_rules rules = {.unordered = unordered, .n_unordered = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"tags\":[\"a\",\"a\",\"b\"]}", "{\"tags\":[\"b\",\"a\",\"b\"]}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_REMOVED, "/tags/1", "\"a\"", NULL);
    assert_item(&r, 1, DIFF_ADDED, "/tags/2", NULL, "\"b\"");
    diff_result_dispose(&r);

    jdiff(&rules, "{\"tags\":[\"a\",\"a\"]}", "{\"tags\":[\"a\"]}", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_REMOVED, "/tags/1", "\"a\"", NULL);
    diff_result_dispose(&r);

    jdiff(&rules, "{\"tags\":[\"a\",\"a\"]}", "{\"tags\":[\"a\",\"a\"]}", &r);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

static void test_unordered_items_equal_under_rules(void **state)
{
    const char *unordered[] = {"/tags"};
    const char *ignore[] = {"/tags/*/ts"};
    struct diff_rules rules = {.unordered = unordered,
                               .n_unordered = 1,
                               .ignore = ignore,
                               .n_ignore = 1,
                               .tolerance = 0.001};
    struct diff_result r;
    (void)state;

    /* Items differ only by an ignored member and by a number within tolerance. */
    jdiff(&rules, "{\"tags\":[{\"n\":1,\"ts\":1},{\"n\":2.0,\"ts\":2}]}",
          "{\"tags\":[{\"n\":2.0005,\"ts\":9},{\"n\":1,\"ts\":8}]}", &r);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);

    jdiff(&rules, "{\"tags\":[{\"n\":1,\"ts\":1}]}", "{\"tags\":[{\"n\":3,\"ts\":1}]}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_REMOVED, "/tags/0", "{\"n\":1,\"ts\":1}", NULL);
    assert_item(&r, 1, DIFF_ADDED, "/tags/0", NULL, "{\"n\":3,\"ts\":1}");
    diff_result_dispose(&r);
}

static void test_unordered_wildcard_nested(void **state)
{
    const char *unordered[] = {"/groups/*/members"};
    struct diff_rules rules = {.unordered = unordered, .n_unordered = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"groups\":[{\"members\":[1,2,3]},{\"members\":[4,5]}]}",
          "{\"groups\":[{\"members\":[3,1,2]},{\"members\":[5,6]}]}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_REMOVED, "/groups/1/members/0", "4", NULL);
    assert_item(&r, 1, DIFF_ADDED, "/groups/1/members/1", NULL, "6");
    diff_result_dispose(&r);
}

static void test_unordered_large_array_linear(void **state)
{
    const char *unordered[] = {""};
    struct diff_rules rules = {.unordered = unordered, .n_unordered = 1};
    struct diff_result r;
    json_t *a = json_array(), *b = json_array();
    (void)state;

    diff_result_init(&r);
    for (int i = 0; i < 50000; i++) {
        json_array_append_new(a, json_pack("{s:i}", "k", i));
        json_array_append_new(b, json_pack("{s:i}", "k", (i * 7919) % 50000));
    }
    assert_int_equal(diff_json(&rules, doc_of(&r, a), doc_of(&r, b), &r), 0);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

/* ---- numbers ---------------------------------------------------------------------------- */

static void test_tolerance_inside_and_outside(void **state)
{
    struct diff_rules rules = {.tolerance = 0.000001};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"p\":1.0,\"q\":9.99}", "{\"p\":1.0000005,\"q\":9.9900009}", &r);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);

    jdiff(&rules, "{\"p\":1.0,\"q\":9.99}", "{\"p\":1.00001,\"q\":10.0}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/p", "1.0", "1.00001");
    assert_item(&r, 1, DIFF_JSON, "/q", "9.99", "10.0");
    diff_result_dispose(&r);
}

static void test_tolerance_zero_is_exact(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "[0.30000000000000004, 1, 2.5]", "[0.3, 1.0, 2.5]", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/0", "0.30000000000000004", "0.3");
    diff_result_dispose(&r);
}

static void test_integer_tolerance(void **state)
{
    struct diff_rules rules = {.tolerance = 1.0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "[100, 100, -9223372036854775807]", "[101, 102, 9223372036854775807]", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/1", "100", "102");
    assert_item(&r, 1, DIFF_JSON, "/2", "-9223372036854775807", "9223372036854775807");
    diff_result_dispose(&r);
}

static void test_big_int64_exact(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    /* Both round to the same double; integers must still compare exactly. */
    jdiff(&rules, "[9223372036854775807, 9007199254740993, -9223372036854775808]",
          "[9223372036854775806, 9007199254740993, -9223372036854775808]", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/0", "9223372036854775807", "9223372036854775806");
    assert_int_equal(r.items[0].legacy->type, JV_INT);
    int64_t v = 0;
    assert_int_equal(jv_int64(r.items[0].legacy, &v), 0);
    assert_true(v == INT64_MAX);
    diff_result_dispose(&r);
}

static void test_floats(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "[1.5e300, -0.0, 1e-300, 2.0]", "[1.5e300, 0.0, 2e-300, 2]", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/2", "1e-300", "2e-300");
    diff_result_dispose(&r);
}

/* ---- exact values, loose types, media types ---------------------------------------------- */

/* Without a tolerance numbers compare by exact decimal value: spellings of one
 * value are equal, values that share a double are not; items show the texts
 * as sent. */
static void test_numbers_by_exact_value(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules,
          "[1, 100, 0, 9007199254740993, 0.1, 18446744073709551617, 1e400, -0, 1796166754.0,"
          " 1796166754.1234567]",
          "[1.0, 1e2, -0.0, 9007199254740992, 0.10000000000000001, 18446744073709551617, 1E+400,"
          " 0, 1796166754.00, 1796166754.1234568]",
          &r);
    assert_int_equal(r.n, 3);
    assert_item(&r, 0, DIFF_JSON, "/3", "9007199254740993", "9007199254740992");
    assert_item(&r, 1, DIFF_JSON, "/4", "0.1", "0.10000000000000001");
    assert_item(&r, 2, DIFF_JSON, "/9", "1796166754.1234567", "1796166754.1234568");
    diff_result_dispose(&r);
}

/* A tolerance applies to the numbers both sides sent, of any size: beyond 64
 * bits by the distance of the nearest doubles; a number beyond a double's
 * range is within no tolerance of another. */
static void test_tolerance_beyond_int64_and_double(void **state)
{
    struct diff_rules rules = {.tolerance = 0.5};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "[18446744073709551617, 1e400, 0.1, 1e400, 18446744073709551617]",
          "[18446744073709551618, 2e400, 0.10000000000000001, 1e400, 18446744073709559999]", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/1", "1e400", "2e400");
    assert_item(&r, 1, DIFF_JSON, "/4", "18446744073709551617", "18446744073709559999");
    diff_result_dispose(&r);
}

static void test_loose_types(void **state)
{
    struct diff_rules strict = {0}, loose = {.loose_types = true};
    struct diff_result r;
    const char *legacy = "{\"id\":\"1\",\"n\":2,\"f\":\"1.50\",\"e\":\"1e2\",\"neg\":\"-0\","
                         "\"x\":\"01\",\"p\":\"+1\",\"sp\":\" 1\",\"b\":\"true\",\"s\":\"abc\","
                         "\"big\":\"18446744073709551617\"}";
    const char *new_ = "{\"id\":1,\"n\":\"2.0\",\"f\":1.5,\"e\":100,\"neg\":0,\"x\":1,\"p\":1,"
                       "\"sp\":1,\"b\":true,\"s\":\"abc\",\"big\":18446744073709551617}";
    (void)state;

    /* Strict: every number against a string differs. */
    jdiff(&strict, legacy, new_, &r);
    assert_int_equal(r.n, 10);
    diff_result_dispose(&r);

    /* Loose: a string holding exactly a JSON number is that number. "01", "+1"
     * and " 1" are not JSON numbers; "true" is not the boolean. */
    jdiff(&loose, legacy, new_, &r);
    assert_int_equal(r.n, 4);
    assert_item(&r, 0, DIFF_JSON, "/x", "\"01\"", "1");
    assert_item(&r, 1, DIFF_JSON, "/p", "\"+1\"", "1");
    assert_item(&r, 2, DIFF_JSON, "/sp", "\" 1\"", "1");
    assert_item(&r, 3, DIFF_JSON, "/b", "\"true\"", "true");
    diff_result_dispose(&r);

    /* A differing value shows both sides as sent; tolerance applies. */
    jdiff(&loose, "[\"1.5\", \"7\"]", "[1.6, 8]", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/0", "\"1.5\"", "1.6");
    diff_result_dispose(&r);
    struct diff_rules loose_tol = {.loose_types = true, .tolerance = 0.2};
    jdiff(&loose_tol, "[\"1.5\", \"7\"]", "[1.6, 8]", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/1", "\"7\"", "8");
    diff_result_dispose(&r);
}

/* match_by pairs items whose keys differ only in type when loose_types is on
 * (and only then); unordered arrays pair them too. */
static void test_loose_types_pairing(void **state)
{
    struct diff_match_by mb[] = {{"/items", "id"}};
    const char *unordered[] = {"/tags"};
    struct diff_rules strict = {
        .match_by = mb, .n_match_by = 1, .unordered = unordered, .n_unordered = 1};
    struct diff_rules loose = strict;
    struct diff_result r;
    const char *legacy = "{\"items\":[{\"id\":1,\"v\":1},{\"id\":2,\"v\":2},{\"id\":3,\"v\":3}],"
                         "\"tags\":[\"10\",2,\"x\"]}";
    const char *new_ = "{\"items\":[{\"id\":\"3\",\"v\":3},{\"id\":\"2.0\",\"v\":2},{\"id\":\"1\","
                       "\"v\":9}],\"tags\":[\"x\",\"2\",10]}";
    (void)state;
    loose.loose_types = true;

    jdiff(&loose, legacy, new_, &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/items/0/v", "1", "9");
    diff_result_dispose(&r);

    /* Strict: no key pairs (every item removed and added), and the numeric
     * tags differ. */
    jdiff(&strict, legacy, new_, &r);
    assert_int_equal(r.n, 10);
    assert_item(&r, 0, DIFF_REMOVED, "/items/0", "{\"id\":1,\"v\":1}", NULL);
    assert_item(&r, 3, DIFF_ADDED, "/items/0", NULL, "{\"id\":\"3\",\"v\":3}");
    diff_result_dispose(&r);
}

static void test_media_type_headers(void **state)
{
    const char *media[] = {"content-type"};
    const char *headers[] = {"content-type", "x-kind"};
    struct diff_rules plain = {.headers = headers, .n_headers = 2};
    struct diff_rules by_type = {
        .headers = headers, .n_headers = 2, .media_type_headers = media, .n_media_type_headers = 1};
    struct diff_result r;
    struct diff_header hl[2] = {HDR("Content-Type", "application/json"),
                                HDR("X-Kind", "text/plain")};
    struct diff_header hn[2] = {HDR("content-type", " Application/JSON ; charset=utf-8"),
                                HDR("x-kind", "text/plain; charset=utf-8")};
    struct diff_response l = resp(200, hl, 2, "", 0);
    struct diff_response n = resp(200, hn, 2, "", 0);
    (void)state;

    assert_int_equal(diff_responses(&plain, &l, &n, &r), 0);
    assert_int_equal(r.n, 2);
    diff_result_dispose(&r);

    /* Only the listed header compares by media type. */
    assert_int_equal(diff_responses(&by_type, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_HEADER, "x-kind", "\"text/plain\"", "\"text/plain; charset=utf-8\"");
    diff_result_dispose(&r);

    /* Another media type differs, shown in full; an absent header differs. */
    hn[0] = HDR("Content-Type", "application/problem+json; charset=utf-8");
    hn[1] = HDR("X-Kind", "text/plain");
    assert_int_equal(diff_responses(&by_type, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_HEADER, "content-type", "\"application/json\"",
                "\"application/problem+json; charset=utf-8\"");
    diff_result_dispose(&r);
    n = resp(200, hn + 1, 1, "", 0);
    assert_int_equal(diff_responses(&by_type, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_HEADER, "content-type", "\"application/json\"", "null");
    diff_result_dispose(&r);
}

/* ---- ignore ----------------------------------------------------------------------------- */

static void test_ignore_exact_pointer(void **state)
{
    const char *ignore[] = {"/meta/generated_at"};
    struct diff_rules rules = {.ignore = ignore, .n_ignore = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"meta\":{\"generated_at\":1,\"v\":1}}",
          "{\"meta\":{\"generated_at\":2,\"v\":2}}", &r);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/meta/v", "1", "2");
    diff_result_dispose(&r);
}

static void test_ignore_items_wildcard_etag(void **state)
{
    const char *ignore[] = {"/items/*/etag"};
    struct diff_rules rules = {.ignore = ignore, .n_ignore = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules,
          "{\"items\":[{\"etag\":\"a\",\"n\":1},{\"etag\":\"b\",\"n\":2},{\"n\":3}],\"etag\":1}",
          "{\"items\":[{\"etag\":\"x\",\"n\":1},{\"etag\":\"y\",\"n\":5},{\"n\":3,\"etag\":\"z\"}],"
          "\"etag\":2}",
          &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/items/1/n", "2", "5");
    assert_item(&r, 1, DIFF_JSON, "/etag", "1", "2");
    diff_result_dispose(&r);
}

static void test_ignore_wildcard_first_segment(void **state)
{
    const char *ignore[] = {"/*/x"};
    struct diff_rules rules = {.ignore = ignore, .n_ignore = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":{\"x\":1,\"y\":1},\"b\":{\"x\":2},\"x\":1,\"c\":{\"d\":{\"x\":1}}}",
          "{\"a\":{\"x\":9,\"y\":2},\"b\":{},\"x\":2,\"c\":{\"d\":{\"x\":2}}}", &r);
    assert_int_equal(r.n, 3);
    assert_item(&r, 0, DIFF_JSON, "/a/y", "1", "2");
    assert_item(&r, 1, DIFF_JSON, "/x", "1", "2");
    assert_item(&r, 2, DIFF_JSON, "/c/d/x", "1", "2");
    diff_result_dispose(&r);
}

static void test_ignore_wildcards_deep(void **state)
{
    const char *ignore[] = {"/a/*/*/b"};
    struct diff_rules rules = {.ignore = ignore, .n_ignore = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":{\"p\":[{\"b\":1,\"c\":1}],\"q\":{\"r\":{\"b\":1}},\"b\":1}}",
          "{\"a\":{\"p\":[{\"b\":2,\"c\":2}],\"q\":{\"r\":{\"b\":2}},\"b\":2}}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/a/p/0/c", "1", "2");
    assert_item(&r, 1, DIFF_JSON, "/a/b", "1", "2");
    diff_result_dispose(&r);
}

static void test_ignore_whole_subtree(void **state)
{
    const char *ignore[] = {"/meta", "/debug"};
    struct diff_rules rules = {.ignore = ignore, .n_ignore = 2};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"meta\":{\"a\":[1,2],\"b\":{\"c\":1}},\"v\":1}",
          "{\"meta\":{\"a\":[3],\"b\":\"x\",\"new\":1},\"v\":1,\"debug\":{\"t\":1}}", &r);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

static void test_ignore_root(void **state)
{
    const char *ignore[] = {""};
    struct diff_rules rules = {.ignore = ignore, .n_ignore = 1};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":1}", "[2]", &r);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

/* ---- cap -------------------------------------------------------------------------------- */

/* Two objects of n keys whose every value differs, parsed into r (initialised here). */
static void make_docs(int n, struct diff_result *r, const struct jv **a, const struct jv **b)
{
    char key[16];
    json_t *ja = json_object(), *jb = json_object();

    diff_result_init(r);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "k%02d", i);
        json_object_set_new(ja, key, json_integer(i));
        json_object_set_new(jb, key, json_integer(i + 1000));
    }
    *a = doc_of(r, ja);
    *b = doc_of(r, jb);
}

static void test_cap_truncates_at_50(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    const struct jv *a, *b;
    (void)state;

    make_docs(80, &r, &a, &b);
    assert_int_equal(diff_json(&rules, a, b, &r), 0);
    assert_int_equal(r.n, DIFF_MAX_ITEMS);
    assert_true(r.truncated);
    assert_item(&r, 0, DIFF_JSON, "/k00", "0", "1000");
    assert_item(&r, 49, DIFF_JSON, "/k49", "49", "1049");
    diff_result_dispose(&r);
    assert_int_equal(r.n, 0);
    assert_false(r.truncated);
}

static void test_cap_exactly_50_not_truncated(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    const struct jv *a, *b;
    (void)state;

    make_docs(50, &r, &a, &b);
    assert_int_equal(diff_json(&rules, a, b, &r), 0);
    assert_int_equal(r.n, 50);
    assert_false(r.truncated);
    diff_result_dispose(&r);
}

static void test_cap_counts_response_items(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    char lb[2048], nb[2048];
    size_t o1 = 0, o2 = 0;
    struct diff_response l, n;
    (void)state;

    o1 += (size_t)snprintf(lb + o1, sizeof lb - o1, "[");
    o2 += (size_t)snprintf(nb + o2, sizeof nb - o2, "[");
    for (int i = 0; i < 60; i++) {
        o1 += (size_t)snprintf(lb + o1, sizeof lb - o1, "%s%d", i ? "," : "", i);
        o2 += (size_t)snprintf(nb + o2, sizeof nb - o2, "%s%d", i ? "," : "", -i - 1);
    }
    snprintf(lb + o1, sizeof lb - o1, "]");
    snprintf(nb + o2, sizeof nb - o2, "]");
    l = json_resp("application/json", lb, hl);
    n = json_resp("application/json", nb, hn);
    n.status = 201;
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, DIFF_MAX_ITEMS);
    assert_true(r.truncated);
    assert_item(&r, 0, DIFF_STATUS, "status", "200", "201");
    assert_item(&r, 1, DIFF_JSON, "/0", "0", "-1");
    assert_item(&r, 49, DIFF_JSON, "/48", "48", "-49");
    diff_result_dispose(&r);
}

/* ---- pointers --------------------------------------------------------------------------- */

static void test_pointer_match(void **state)
{
    (void)state;
    assert_true(diff_pointer_match("/items/*/etag", "/items/3/etag"));
    assert_true(diff_pointer_match("/items/*/etag", "/items/abc/etag"));
    assert_false(diff_pointer_match("/items/*/etag", "/items/3/etag/x"));
    assert_false(diff_pointer_match("/items/*/etag", "/items/etag"));
    assert_false(diff_pointer_match("/items/*/etag", "/item/3/etag"));
    assert_true(diff_pointer_match("/*/x", "/a/x"));
    assert_false(diff_pointer_match("/*/x", "/x"));
    assert_true(diff_pointer_match("/a/*/*/b", "/a/1/c/b"));
    assert_false(diff_pointer_match("/a/*/*/b", "/a/1/b"));
    assert_true(diff_pointer_match("", ""));
    assert_false(diff_pointer_match("", "/a"));
    assert_false(diff_pointer_match("/a", ""));
    assert_true(diff_pointer_match("/*", "/"));
    assert_true(diff_pointer_match("/a~1b", "/a~1b"));
    assert_false(diff_pointer_match("/a/b", "/a~1b"));
    assert_false(diff_pointer_match("/ab", "/a"));
    assert_false(diff_pointer_match("/a", "/ab"));
    assert_false(diff_pointer_match(NULL, "/a"));
}

static void test_normalize_path(void **state)
{
    char out[64];
    char small[8];
    (void)state;

    diff_normalize_path("/items/3/price", out, sizeof out);
    assert_string_equal(out, "/items/*/price");
    diff_normalize_path("/items/12/sub/0", out, sizeof out);
    assert_string_equal(out, "/items/*/sub/*");
    diff_normalize_path("/a1/1a/v2", out, sizeof out);
    assert_string_equal(out, "/a1/1a/v2");
    diff_normalize_path("", out, sizeof out);
    assert_string_equal(out, "");
    diff_normalize_path("/", out, sizeof out);
    assert_string_equal(out, "/");
    diff_normalize_path("content-type", out, sizeof out);
    assert_string_equal(out, "content-type");
    diff_normalize_path("/a//0", out, sizeof out);
    assert_string_equal(out, "/a//*");
    diff_normalize_path("/items/123/abcdefgh", small, sizeof small);
    assert_string_equal(small, "/items/");
    diff_normalize_path("/x", small, 1);
    assert_string_equal(small, "");
}

static void test_kind_names(void **state)
{
    (void)state;
    assert_string_equal(diff_kind_name(DIFF_STATUS), "status");
    assert_string_equal(diff_kind_name(DIFF_HEADER), "header");
    assert_string_equal(diff_kind_name(DIFF_JSON), "json");
    assert_string_equal(diff_kind_name(DIFF_ADDED), "added");
    assert_string_equal(diff_kind_name(DIFF_REMOVED), "removed");
    assert_string_equal(diff_kind_name(DIFF_BODY), "body");
    assert_string_equal(diff_kind_name(DIFF_ERROR), "error");
}

/* ---- responses: bodies ------------------------------------------------------------------ */

static void test_response_json_bodies(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("application/json", "{\"a\":1,\"b\":[1,2]}", hl);
    struct diff_response n = json_resp("application/json", "{\"b\":[1,3],\"a\":1}", hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_JSON, "/b/1", "2", "3");
    diff_result_dispose(&r);
}

static void test_plus_json_media_type(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("application/problem+json", "{\"a\":1,\"b\":2}", hl);
    struct diff_response n = json_resp("application/problem+json", "{\"b\":2,\"a\":1}", hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

static void test_charset_parameter_and_case(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("application/json; charset=utf-8", "{\"a\":1,\"b\":2}", hl);
    struct diff_response n = json_resp(" Application/JSON ", "{\"b\":3,\"a\":1}", hn);
    (void)state;

    /* Both are JSON, so the bodies compare structurally; the header itself differs. */
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_HEADER, "content-type", "\"application/json; charset=utf-8\"",
                "\" Application/JSON \"");
    assert_item(&r, 1, DIFF_JSON, "/b", "2", "3");
    diff_result_dispose(&r);
}

static void test_non_json_content_type_compares_bytes(void **state)
{
    const char *headers[] = {"x-none"};
    struct diff_rules rules = {.headers = headers, .n_headers = 1};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("application/json", "{\"a\":1,\"b\":2}", hl);
    struct diff_response n = json_resp("text/plain", "{\"b\":2,\"a\":1}", hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "2", "\"a\\\":1,\\\"b\\\":2}\"", "\"b\\\":2,\\\"a\\\":1}\"");
    diff_result_dispose(&r);
}

static void test_invalid_json_one_side_bytes(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("application/json", "{\"a\":1}", hl);
    struct diff_response n = json_resp("application/json", "{\"a\":1", hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "6", "\"}\"", "\"\"");
    diff_result_dispose(&r);
}

/* Integers of any length are JSON numbers (they used to make the body compare
 * as bytes): compared by value, shown as sent. */
static void test_big_integer_beyond_int64_is_json(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    const char *lb = "{\"n\":123456789012345678901234567890,\"m\":18446744073709551617,\"x\":1}";
    struct diff_response l = json_resp("application/json", lb, hl);
    struct diff_response n = json_resp(
        "application/json",
        "{\"n\":123456789012345678901234567891,\"m\":1.8446744073709551617e19,\"x\":2}", hn);
    struct diff_response same = json_resp("application/json", lb, hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_JSON, "/n", "123456789012345678901234567890",
                "123456789012345678901234567891");
    assert_item(&r, 1, DIFF_JSON, "/x", "1", "2");
    diff_result_dispose(&r);

    assert_int_equal(diff_responses(&rules, &l, &same, &r), 0);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

static void test_text_first_differing_offset(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("text/plain", "hello world", hl);
    struct diff_response n = json_resp("text/plain", "hello there", hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "6", "\"world\"", "\"there\"");
    diff_result_dispose(&r);
}

static void test_text_equal_bodies(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("text/html", "<p>same</p>", hl);
    struct diff_response n = json_resp("text/html", "<p>same</p>", hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);

    /* Two empty bodies, even labelled JSON, are equal. */
    l = resp(204, hl, 1, NULL, 0);
    n = resp(204, hn, 1, "", 0);
    hl[0] = HDR("content-type", "application/json");
    hn[0] = HDR("content-type", "application/json");
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
}

static void test_text_prefix(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("text/plain", "abc", hl);
    struct diff_response n = json_resp("text/plain", "abcdef", hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "3", "\"\"", "\"def\"");
    diff_result_dispose(&r);

    n.body = "";
    n.body_len = 0;
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "0", "\"abc\"", "\"\"");
    diff_result_dispose(&r);
}

static void test_byte_excerpt_capped_and_escaped(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    static const char lb[] = "x0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
    static const char nb[] = "y\xff\xfe\xc3\xa9z";
    struct diff_response l = json_resp("application/octet-stream", lb, hl);
    struct diff_response n = resp(200, hn, 1, nb, sizeof nb - 1);
    (void)state;

    hn[0] = HDR("content-type", "application/octet-stream");
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "0", "\"x0123456789abcdefghijklmnopqrstu\"",
                "\"y\\\\xff\\\\xfe\\u00e9z\"");
    diff_result_dispose(&r);
}

static void test_byte_excerpt_keeps_straddling_char(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    /* 31 ASCII bytes, then a two-byte character across the 32-byte window end. */
    static const char lb[] = "a234567890123456789012345678901\xc3\xa9tail";
    static const char nb[] = "b";
    struct diff_response l = json_resp("text/plain", lb, hl);
    struct diff_response n = json_resp("text/plain", nb, hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "0", "\"a234567890123456789012345678901\\u00e9\"", "\"b\"");
    diff_result_dispose(&r);
}

static void test_json_vs_text_side_compares_bytes(void **state)
{
    const char *headers[] = {"x-unused"};
    struct diff_rules rules = {.headers = headers, .n_headers = 1};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("application/json", "[1,2]", hl);
    struct diff_response n = json_resp("application/json", "not json", hn);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "0", "\"[1,2]\"", "\"not json\"");
    diff_result_dispose(&r);
}

/* ---- gzip ------------------------------------------------------------------------------- */

static void test_gzip_vs_plain_equal(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    const char *body = "{\"items\":[1,2,3],\"name\":\"ficus\"}";
    size_t zlen;
    char *z = gzip(body, strlen(body), &zlen);
    struct diff_header hl[1] = {HDR("content-type", "application/json")};
    struct diff_header hn[2] = {HDR("Content-Type", "application/json"),
                                HDR("Content-Encoding", "gzip")};
    struct diff_response l =
        resp(200, hl, 1, "{\"name\":\"ficus\",\"items\":[1,2,3]}", strlen(body));
    struct diff_response n = resp(200, hn, 2, z, zlen);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);
    free(z);
}

static void test_gzip_text_difference_in_decoded_offsets(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    const char *body = "plain text body, version 2";
    size_t zlen;
    char *z = gzip(body, strlen(body), &zlen);
    struct diff_header hl[2] = {HDR("content-type", "text/plain"),
                                HDR("content-encoding", " GZIP ")};
    struct diff_header hn[1] = {HDR("content-type", "text/plain")};
    struct diff_response l = resp(200, hl, 2, z, zlen);
    struct diff_response n = resp(200, hn, 1, "plain text body, version 3", strlen(body));
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_BODY, "25", "\"2\"", "\"3\"");
    diff_result_dispose(&r);
    free(z);
}

static void test_invalid_gzip_is_error_item(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1] = {HDR("content-type", "text/plain")};
    struct diff_header hn[2] = {HDR("content-type", "text/plain"), HDR("content-encoding", "gzip")};
    struct diff_response l = resp(200, hl, 1, "hello", 5);
    struct diff_response n = resp(200, hn, 2, "hello", 5);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_ERROR, "new", "null", "\"invalid_gzip\"");
    diff_result_dispose(&r);
}

static void test_gunzip_direct(void **state)
{
    const char *text =
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    size_t zlen, outlen, len = strlen(text);
    char *z = gzip(text, len, &zlen);
    char *out, *two;
    z_stream zs;
    char zl[128];
    (void)state;

    assert_int_equal(diff_gunzip(z, zlen, 1000, &out, &outlen), 0);
    assert_int_equal(outlen, len);
    assert_memory_equal(out, text, len);
    free(out);

    /* Exactly at the cap is fine, one byte over is not. */
    assert_int_equal(diff_gunzip(z, zlen, len, &out, &outlen), 0);
    free(out);
    assert_int_equal(diff_gunzip(z, zlen, len - 1, &out, &outlen), FICUS_ETOOBIG);
    assert_null(out);

    /* A truncated stream, and trailing bytes that are not another member. */
    assert_int_not_equal(diff_gunzip(z, zlen - 4, 1000, &out, &outlen), 0);
    assert_null(out);
    two = malloc(zlen * 2);
    memcpy(two, z, zlen);
    memcpy(two + zlen, "junk", 4);
    assert_int_not_equal(diff_gunzip(two, zlen + 4, 1000, &out, &outlen), 0);

    /* Two gzip members in a row decode as one body. */
    memcpy(two + zlen, z, zlen);
    assert_int_equal(diff_gunzip(two, zlen * 2, 1000, &out, &outlen), 0);
    assert_int_equal(outlen, len * 2);
    free(out);
    free(two);
    free(z);

    /* zlib format is accepted too. */
    memset(&zs, 0, sizeof zs);
    assert_int_equal(deflateInit(&zs, Z_DEFAULT_COMPRESSION), Z_OK);
    zs.next_in = (Bytef *)text;
    zs.avail_in = (uInt)len;
    zs.next_out = (Bytef *)zl;
    zs.avail_out = sizeof zl;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    assert_int_equal(diff_gunzip(zl, sizeof zl - zs.avail_out, 1000, &out, &outlen), 0);
    deflateEnd(&zs);
    assert_int_equal(outlen, len);
    free(out);
}

static void test_gzip_bomb_capped(void **state)
{
    size_t big = ((size_t)64 << 20) + 1, zlen;
    char *zeros = calloc(big, 1);
    char *z, *out;
    size_t outlen;
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[2] = {HDR("content-type", "text/plain"), HDR("content-encoding", "gzip")};
    struct diff_header hn[1] = {HDR("content-type", "text/plain")};
    struct diff_response l, n;
    (void)state;

    assert_non_null(zeros);
    z = gzip(zeros, big, &zlen);
    free(zeros);
    assert_true(zlen < 200000);
    assert_int_equal(diff_gunzip(z, zlen, 1 << 20, &out, &outlen), FICUS_ETOOBIG);
    l = resp(200, hl, 2, z, zlen);
    n = resp(200, hn, 1, "", 0);
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_ERROR, "legacy", "\"gzip_too_large\"", "null");
    diff_result_dispose(&r);
    free(z);
}

/* ---- status, headers, errors ------------------------------------------------------------ */

static void test_status_difference(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1], hn[1];
    struct diff_response l = json_resp("text/plain", "x", hl);
    struct diff_response n = json_resp("text/plain", "x", hn);
    (void)state;

    n.status = 503;
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_STATUS, "status", "200", "503");
    diff_result_dispose(&r);
}

static void test_header_default_content_type_only(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[3] = {HDR("Content-Type", "text/plain"), HDR("X-Foo", "1"),
                                HDR("Date", "Mon")};
    struct diff_header hn[3] = {HDR("content-type", "text/html"), HDR("X-Foo", "2"),
                                HDR("Date", "Tue")};
    struct diff_response l = resp(200, hl, 3, "", 0);
    struct diff_response n = resp(200, hn, 3, "", 0);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_HEADER, "content-type", "\"text/plain\"", "\"text/html\"");
    diff_result_dispose(&r);
}

static void test_header_compared_list(void **state)
{
    const char *headers[] = {"content-type", "cache-control", "x-same"};
    struct diff_rules rules = {.headers = headers, .n_headers = 3};
    struct diff_result r;
    struct diff_header hl[3] = {HDR("Content-Type", "text/plain"),
                                HDR("Cache-Control", "max-age=60"), HDR("X-Same", "v")};
    struct diff_header hn[3] = {HDR("content-type", "text/plain"), HDR("CACHE-CONTROL", "no-store"),
                                HDR("x-same", "v")};
    struct diff_response l = resp(200, hl, 3, "", 0);
    struct diff_response n = resp(200, hn, 3, "", 0);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_HEADER, "cache-control", "\"max-age=60\"", "\"no-store\"");
    diff_result_dispose(&r);
}

static void test_header_ignore_list(void **state)
{
    const char *headers[] = {"content-type", "cache-control"};
    const char *ignore_headers[] = {"date", "Cache-Control"};
    struct diff_rules rules = {.headers = headers,
                               .n_headers = 2,
                               .ignore_headers = ignore_headers,
                               .n_ignore_headers = 2};
    struct diff_result r;
    struct diff_header hl[2] = {HDR("content-type", "text/plain"), HDR("cache-control", "a")};
    struct diff_header hn[2] = {HDR("content-type", "text/plain"), HDR("cache-control", "b")};
    struct diff_response l = resp(200, hl, 2, "", 0);
    struct diff_response n = resp(200, hn, 2, "", 0);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);

    /* The default content-type can be ignored as well. */
    {
        const char *ign[] = {"content-type"};
        struct diff_rules r2 = {.ignore_headers = ign, .n_ignore_headers = 1};
        hn[0] = HDR("content-type", "text/html");
        assert_int_equal(diff_responses(&r2, &l, &n, &r), 0);
        assert_int_equal(r.n, 0);
        diff_result_dispose(&r);
    }
}

static void test_header_absent_one_side(void **state)
{
    const char *headers[] = {"cache-control", "x-both-absent"};
    struct diff_rules rules = {.headers = headers, .n_headers = 2};
    struct diff_result r;
    struct diff_header hl[1] = {HDR("Cache-Control", "no-cache")};
    struct diff_response l = resp(200, hl, 1, "", 0);
    struct diff_response n = resp(200, NULL, 0, "", 0);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_HEADER, "cache-control", "\"no-cache\"", "null");
    diff_result_dispose(&r);

    assert_int_equal(diff_responses(&rules, &n, &l, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_HEADER, "cache-control", "null", "\"no-cache\"");
    diff_result_dispose(&r);
}

static void test_header_repeated_joined(void **state)
{
    const char *headers[] = {"vary"};
    struct diff_rules rules = {.headers = headers, .n_headers = 1};
    struct diff_result r;
    struct diff_header hl[3] = {HDR("Vary", "accept"), HDR("X", "y"), HDR("vary", "origin")};
    struct diff_header hn[1] = {HDR("vary", "accept, origin")};
    struct diff_header hn2[2] = {HDR("vary", "origin"), HDR("vary", "accept")};
    struct diff_response l = resp(200, hl, 3, "", 0);
    struct diff_response n = resp(200, hn, 1, "", 0);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 0);
    diff_result_dispose(&r);

    n = resp(200, hn2, 2, "", 0);
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_HEADER, "vary", "\"accept, origin\"", "\"origin, accept\"");
    diff_result_dispose(&r);
}

static void test_error_new_side(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hl[1];
    struct diff_response l = json_resp("text/plain", "body", hl);
    struct diff_response n = {.status = 0, .error = "timeout"};
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_ERROR, "new", "200", "\"timeout\"");
    diff_result_dispose(&r);
}

static void test_error_legacy_side(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_header hn[1];
    struct diff_response l = {.error = "connect_error"};
    struct diff_response n = json_resp("text/plain", "body", hn);
    (void)state;

    n.status = 500;
    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 1);
    assert_item(&r, 0, DIFF_ERROR, "legacy", "\"connect_error\"", "500");
    diff_result_dispose(&r);
}

static void test_error_both_sides(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    struct diff_response l = {.error = "reset"};
    struct diff_response n = {.error = "invalid_response"};
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_ERROR, "legacy", "\"reset\"", "\"invalid_response\"");
    assert_item(&r, 1, DIFF_ERROR, "new", "\"reset\"", "\"invalid_response\"");
    diff_result_dispose(&r);
}

static void test_everything_at_once(void **state)
{
    const char *headers[] = {"content-type", "etag"};
    const char *ignore[] = {"/meta"};
    struct diff_match_by mb[] = {{"/items", "id"}};
    struct diff_rules rules = {.headers = headers,
                               .n_headers = 2,
                               .ignore = ignore,
                               .n_ignore = 1,
                               .match_by = mb,
                               .n_match_by = 1};
    struct diff_result r;
    const char *lb = "{\"items\":[{\"id\":1,\"p\":1}],\"meta\":{\"t\":1}}";
    const char *nb = "{\"meta\":{\"t\":2},\"items\":[{\"id\":2},{\"id\":1,\"p\":1}]}";
    size_t zlen;
    char *z = gzip(nb, strlen(nb), &zlen);
    struct diff_header hl[2] = {HDR("content-type", "application/json"), HDR("ETag", "\"a\"")};
    struct diff_header hn[3] = {HDR("content-type", "application/json"), HDR("ETag", "\"b\""),
                                HDR("content-encoding", "gzip")};
    struct diff_response l = resp(200, hl, 2, lb, strlen(lb));
    struct diff_response n = resp(404, hn, 3, z, zlen);
    (void)state;

    assert_int_equal(diff_responses(&rules, &l, &n, &r), 0);
    assert_int_equal(r.n, 3);
    assert_item(&r, 0, DIFF_STATUS, "status", "200", "404");
    assert_item(&r, 1, DIFF_HEADER, "etag", "\"\\\"a\\\"\"", "\"\\\"b\\\"\"");
    assert_item(&r, 2, DIFF_ADDED, "/items/0", NULL, "{\"id\":2}");
    diff_result_dispose(&r);
    free(z);
}

static void test_items_outlive_documents_and_dispose_twice(void **state)
{
    struct diff_rules rules = {0};
    struct diff_result r;
    (void)state;

    jdiff(&rules, "{\"a\":{\"deep\":[1,2,3]}}", "{\"b\":{\"deep\":[4]}}", &r);
    assert_int_equal(r.n, 2);
    assert_item(&r, 0, DIFF_REMOVED, "/a", "{\"deep\":[1,2,3]}", NULL);
    assert_item(&r, 1, DIFF_ADDED, "/b", NULL, "{\"deep\":[4]}");
    diff_result_dispose(&r);
    diff_result_dispose(&r);
    assert_int_equal(r.n, 0);
    diff_result_dispose(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identical_documents),
        cmocka_unit_test(test_nested_object_change),
        cmocka_unit_test(test_key_order_ignored),
        cmocka_unit_test(test_added_and_removed_keys),
        cmocka_unit_test(test_root_scalars),
        cmocka_unit_test(test_positional_array),
        cmocka_unit_test(test_type_change),
        cmocka_unit_test(test_bool_and_null_values),
        cmocka_unit_test(test_null_vs_missing),
        cmocka_unit_test(test_pointer_escaping),
        cmocka_unit_test(test_ignore_escaped_key),
        cmocka_unit_test(test_match_by_inserted_item_is_one_added),
        cmocka_unit_test(test_without_match_by_insert_shifts),
        cmocka_unit_test(test_match_by_paired_items_use_legacy_index),
        cmocka_unit_test(test_match_by_removed_item),
        cmocka_unit_test(test_match_by_keyless_items_positional),
        cmocka_unit_test(test_match_by_wildcard_pointer_and_duplicates),
        cmocka_unit_test(test_match_by_large_reordered_array),
        cmocka_unit_test(test_unordered_reordered_equal),
        cmocka_unit_test(test_unordered_duplicates_multiset),
        cmocka_unit_test(test_unordered_items_equal_under_rules),
        cmocka_unit_test(test_unordered_wildcard_nested),
        cmocka_unit_test(test_unordered_large_array_linear),
        cmocka_unit_test(test_tolerance_inside_and_outside),
        cmocka_unit_test(test_tolerance_zero_is_exact),
        cmocka_unit_test(test_integer_tolerance),
        cmocka_unit_test(test_big_int64_exact),
        cmocka_unit_test(test_floats),
        cmocka_unit_test(test_numbers_by_exact_value),
        cmocka_unit_test(test_tolerance_beyond_int64_and_double),
        cmocka_unit_test(test_loose_types),
        cmocka_unit_test(test_loose_types_pairing),
        cmocka_unit_test(test_media_type_headers),
        cmocka_unit_test(test_ignore_exact_pointer),
        cmocka_unit_test(test_ignore_items_wildcard_etag),
        cmocka_unit_test(test_ignore_wildcard_first_segment),
        cmocka_unit_test(test_ignore_wildcards_deep),
        cmocka_unit_test(test_ignore_whole_subtree),
        cmocka_unit_test(test_ignore_root),
        cmocka_unit_test(test_cap_truncates_at_50),
        cmocka_unit_test(test_cap_exactly_50_not_truncated),
        cmocka_unit_test(test_cap_counts_response_items),
        cmocka_unit_test(test_pointer_match),
        cmocka_unit_test(test_normalize_path),
        cmocka_unit_test(test_kind_names),
        cmocka_unit_test(test_response_json_bodies),
        cmocka_unit_test(test_plus_json_media_type),
        cmocka_unit_test(test_charset_parameter_and_case),
        cmocka_unit_test(test_non_json_content_type_compares_bytes),
        cmocka_unit_test(test_invalid_json_one_side_bytes),
        cmocka_unit_test(test_big_integer_beyond_int64_is_json),
        cmocka_unit_test(test_text_first_differing_offset),
        cmocka_unit_test(test_text_equal_bodies),
        cmocka_unit_test(test_text_prefix),
        cmocka_unit_test(test_byte_excerpt_capped_and_escaped),
        cmocka_unit_test(test_byte_excerpt_keeps_straddling_char),
        cmocka_unit_test(test_json_vs_text_side_compares_bytes),
        cmocka_unit_test(test_gzip_vs_plain_equal),
        cmocka_unit_test(test_gzip_text_difference_in_decoded_offsets),
        cmocka_unit_test(test_invalid_gzip_is_error_item),
        cmocka_unit_test(test_gunzip_direct),
        cmocka_unit_test(test_gzip_bomb_capped),
        cmocka_unit_test(test_status_difference),
        cmocka_unit_test(test_header_default_content_type_only),
        cmocka_unit_test(test_header_compared_list),
        cmocka_unit_test(test_header_ignore_list),
        cmocka_unit_test(test_header_absent_one_side),
        cmocka_unit_test(test_header_repeated_joined),
        cmocka_unit_test(test_error_new_side),
        cmocka_unit_test(test_error_legacy_side),
        cmocka_unit_test(test_error_both_sides),
        cmocka_unit_test(test_everything_at_once),
        cmocka_unit_test(test_items_outlive_documents_and_dispose_twice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
