/* Unit tests for the buffers' JSON text writer: every output must equal, byte
 * for byte, what jansson's json_dumps(JSON_COMPACT | JSON_REAL_PRECISION(10))
 * writes, because divergence records are written with it and the record
 * format is part of the contract. The cap and the roll-back on error are
 * checked too. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ficus/buf.h"
#include "ficus/common.h"

#define FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10))

/* Writes v with buf_json_value and checks it against json_dumps. */
static void check_value(json_t *v)
{
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(buf_puts(&b, "x"), 0); /* appends after what is there */
    char *want = json_dumps(v, FLAGS);
    assert_non_null(want);
    assert_int_equal(buf_json_value(&b, v, 10), 0);
    assert_string_equal(b.data + 1, want);
    assert_int_equal(b.len, strlen(want) + 1);
    free(want);
    buf_dispose(&b);
}

static void test_reals_match_jansson(void **state)
{
    (void)state;
    static const double vals[] = {0.0,           -0.0,
                                  1.0,           -1.0,
                                  100.0,         0.1,
                                  0.2 + 0.1,     9.99,
                                  10.49,         1e15,
                                  1e16,          1e17,
                                  1e300,         -1e-300,
                                  1e-5,          0.0001,
                                  1.5e-7,        3.14159265358979,
                                  1e10,          1e-10,
                                  12345678901.0, 123456789.0,
                                  1234567890.5,  0.778,
                                  2.5e-308,      1.7976931348623157e308,
                                  5e-324};
    for (size_t i = 0; i < ARRAY_SIZE(vals); i++) {
        json_t *j = json_real(vals[i]);
        check_value(j);
        json_decref(j);
    }
    /* Random magnitudes and mantissas. */
    srand(42);
    for (int i = 0; i < 20000; i++) {
        double m = (double)rand() / RAND_MAX * 10.0;
        int e = rand() % 80 - 40;
        double v = m * pow(10.0, e) * (rand() % 2 ? -1.0 : 1.0);
        json_t *j = json_real(v);
        check_value(j);
        json_decref(j);
    }
}

static void test_integers_and_literals_match_jansson(void **state)
{
    (void)state;
    json_t *vals[] = {json_integer(0),
                      json_integer(-1),
                      json_integer(INT64_MAX),
                      json_integer(INT64_MIN),
                      json_true(),
                      json_false(),
                      json_null()};
    for (size_t i = 0; i < ARRAY_SIZE(vals); i++) {
        check_value(vals[i]);
        json_decref(vals[i]);
    }
}

static void test_strings_match_jansson(void **state)
{
    (void)state;
    static const char *const strs[] = {"",
                                       "plain",
                                       "quote \" and \\ backslash",
                                       "slash / stays",
                                       "\b\f\n\r\t",
                                       "\x01\x1f\x7f",
                                       "caf\xc3\xa9",
                                       "\xe2\x82\xac euro",
                                       "\xf0\x9f\x98\x80 emoji"};
    for (size_t i = 0; i < ARRAY_SIZE(strs); i++) {
        json_t *j = json_string(strs[i]);
        assert_non_null(j);
        check_value(j);
        json_decref(j);
    }
    /* A NUL byte inside. */
    json_t *j = json_stringn("a\0b", 3);
    check_value(j);
    json_decref(j);
}

/* Random byte strings: valid exactly when jansson takes them, and then equal. */
static void test_random_bytes_agree_on_utf8(void **state)
{
    (void)state;
    srand(7);
    struct buf b;
    buf_init(&b, 0);
    for (int i = 0; i < 50000; i++) {
        unsigned char s[8];
        size_t n = (size_t)(rand() % 8);
        for (size_t k = 0; k < n; k++) {
            /* Mostly high bytes, so that every UTF-8 rule is exercised. */
            s[k] = (unsigned char)(rand() % 4 == 0 ? rand() % 0x80 : 0x80 + rand() % 0x80);
        }
        json_t *j = json_stringn((const char *)s, n);
        buf_reset(&b);
        int rc = buf_json_string(&b, (const char *)s, n);
        if (j == NULL) {
            assert_int_equal(rc, -EINVAL);
            assert_int_equal(b.len, 0);
            continue;
        }
        assert_int_equal(rc, 0);
        char *want = json_dumps(j, FLAGS);
        assert_int_equal(b.len, strlen(want));
        assert_memory_equal(b.data, want, b.len);
        free(want);
        json_decref(j);
    }
    buf_dispose(&b);
}

static void test_containers_keep_insertion_order(void **state)
{
    (void)state;
    json_error_t err;
    static const char *const docs[] = {
        "{}",
        "[]",
        "{\"z\":1,\"a\":[1,2.5,\"x\",null,true,false,{}],\"m\":{\"b\":[],\"a\":{\"c\":-0.0}}}",
        "[[[[1]]],{\"\\u00e9k\":\"v\\u0000w\"}]",
        "{\"id\":42,\"name\":\"widget\",\"price\":9.99,\"tags\":[\"a\",\"b\"],"
        "\"meta\":{\"generated_at\":\"2026-01-01T00:00:00Z\"}}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(docs); i++) {
        json_t *j = json_loads(docs[i], JSON_ALLOW_NUL, &err);
        assert_non_null(j);
        check_value(j);
        json_decref(j);
    }
}

static void test_errors_append_nothing(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 8);
    assert_int_equal(buf_puts(&b, "ab"), 0);
    assert_int_equal(buf_json_string(&b, "\xff", 1), -EINVAL);
    assert_int_equal(b.len, 2);
    assert_string_equal(b.data, "ab");
    /* Over the cap: nothing of the string stays. */
    assert_int_equal(buf_json_string(&b, "0123456789", 10), FICUS_ETOOBIG);
    assert_int_equal(b.len, 2);
    json_t *arr = json_pack("[s,s]", "abc", "def");
    assert_int_equal(buf_json_value(&b, arr, 10), FICUS_ETOOBIG);
    assert_int_equal(b.len, 2);
    assert_string_equal(b.data, "ab");
    json_decref(arr);
    assert_int_equal(buf_json_value(&b, NULL, 10), -EINVAL);
    buf_dispose(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reals_match_jansson),
        cmocka_unit_test(test_integers_and_literals_match_jansson),
        cmocka_unit_test(test_strings_match_jansson),
        cmocka_unit_test(test_random_bytes_agree_on_utf8),
        cmocka_unit_test(test_containers_keep_insertion_order),
        cmocka_unit_test(test_errors_append_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
