/* Unit tests for the buffers' JSON text writer (and jv_write over it): every
 * output must equal, byte for byte, what jansson's json_dumps(JSON_COMPACT |
 * JSON_REAL_PRECISION(10)) writes, because divergence records are written
 * with it and the record format is part of the contract. Each value goes
 * through text and jdoc_parse first, so the parse must keep it exactly (a
 * parsed number is written back as sent). The cap and the roll-back on error
 * are checked too. */
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
#include <jansson.h>

#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/jdoc.h"

#define FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10))

/* Dumps v at full precision, parses that with jdoc_parse and checks that the
 * parse kept it: a real's text converts back to the very same double, whose
 * buf_json_real text is json_dumps's at precision 10 (how records write
 * timings); anything else jv_write writes back as json_dumps wrote it (numbers
 * as sent). */
static void check_value(json_t *v)
{
    struct buf b;
    struct arena a;
    const struct jv *j;
    buf_init(&b, 0);
    arena_init(&a);
    assert_int_equal(buf_puts(&b, "x"), 0); /* appends after what is there */
    char *full = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    char *want = json_dumps(v, FLAGS);
    assert_non_null(full);
    assert_non_null(want);
    assert_int_equal(jdoc_parse(&a, full, strlen(full), &j), 0);
    if (json_is_real(v)) {
        /* The very same double, sign of zero included. */
        double got = jv_double(j), exp = json_real_value(v);
        assert_int_equal(j->type, JV_REAL);
        assert_memory_equal(&got, &exp, sizeof got);
        assert_int_equal(buf_json_real(&b, got, 10), 0);
        assert_string_equal(b.data + 1, want);
        assert_int_equal(b.len, strlen(want) + 1);
        b.len = 1;
    }
    assert_int_equal(jv_write(&b, j, 10), 0);
    assert_string_equal(b.data + 1, full);
    assert_int_equal(b.len, strlen(full) + 1);
    free(full);
    free(want);
    arena_dispose(&a);
    buf_dispose(&b);
}

/* Prometheus label values: backslash, double quote and newline escaped, every
 * other byte (braces, UTF-8) as it is. */
static void test_prom_label_escapes(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(buf_prom_label(&b, "GET /a/{id} \"q\" \\ x\ny \xc3\xa9"), 0);
    assert_int_equal(b.len, strlen("GET /a/{id} \\\"q\\\" \\\\ x\\ny \xc3\xa9"));
    assert_memory_equal(b.data, "GET /a/{id} \\\"q\\\" \\\\ x\\ny \xc3\xa9", b.len);
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

/* Short decimals (what backends and our own timings mostly hold) are written
 * without printf: the result must still be jansson's at every precision. */
static void test_short_reals_match_jansson_at_every_precision(void **state)
{
    (void)state;
    uint64_t seed = 99;
    char text[48];
    struct buf b;
    buf_init(&b, 0);
    for (int i = 0; i < 200000; i++) {
        uint64_t r = xorshift64s(&seed);
        int digits = 1 + (int)(r % 16), exp = (int)((r >> 8) % 28) - 10;
        int precision = 1 + (int)((r >> 16) % 17);
        uint64_t m = xorshift64s(&seed) % 10000000000000000ULL;
        for (int d = 16; d > digits; d--)
            m /= 10;
        snprintf(text, sizeof text, "%s%llue%d", (r >> 63) ? "-" : "", (unsigned long long)m,
                 exp - digits);
        double v = strtod(text, NULL);
        json_t *j = json_real(v);
        char *want = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(precision));
        buf_reset(&b);
        assert_int_equal(buf_json_real(&b, v, precision), 0);
        if (strcmp(b.data, want) != 0) {
            print_error("%s at precision %d: got %s, jansson %s\n", text, precision, b.data, want);
            fail();
        }
        free(want);
        json_decref(j);
    }
    /* Timings in milliseconds with microsecond resolution, as records hold them. */
    for (uint64_t us = 0; us < 3000000; us += 7) {
        double ms = (double)us / 1000.0;
        json_t *j = json_real(ms);
        char *want = json_dumps(j, FLAGS);
        buf_reset(&b);
        assert_int_equal(buf_json_real(&b, ms, 10), 0);
        assert_string_equal(b.data, want);
        free(want);
        json_decref(j);
    }
    buf_dispose(&b);
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

/* The lossy writer: the same text as buf_json_string for UTF-8 input; for any
 * other input a valid JSON string whose text is the input with every byte that
 * is not part of a UTF-8 sequence written as \xNN. */
static void test_text_escapes_what_is_not_utf8(void **state)
{
    (void)state;
    srand(11);
    struct buf a, b;
    buf_init(&a, 0);
    buf_init(&b, 0);
    for (int i = 0; i < 50000; i++) {
        unsigned char s[12];
        size_t n = (size_t)(rand() % 12);
        for (size_t k = 0; k < n; k++)
            s[k] = (unsigned char)(rand() % 4 == 0 ? rand() % 0x80 : 0x80 + rand() % 0x80);
        buf_reset(&a);
        buf_reset(&b);
        assert_int_equal(buf_json_text(&b, (const char *)s, n), 0);
        json_error_t je;
        json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        assert_non_null(j); /* always valid JSON text */
        /* The decoded text: UTF-8 sequences as they were, other bytes as \xNN. */
        char want[12 * 4 + 1];
        size_t w = 0;
        for (size_t k = 0; k < n;) {
            size_t l = utf8_len(s + k, n - k);
            if (l == 0) {
                w += (size_t)snprintf(want + w, sizeof(want) - w, "\\x%02X", s[k]);
                k++;
            } else {
                memcpy(want + w, s + k, l);
                w += l;
                k += l;
            }
        }
        assert_int_equal(json_string_length(j), w);
        assert_memory_equal(json_string_value(j), want, w);
        if (buf_json_string(&a, (const char *)s, n) == 0) {
            assert_int_equal(a.len, b.len);
            assert_memory_equal(a.data, b.data, a.len);
        }
        json_decref(j);
    }
    /* A Latin-1 query string, as a client may send it. */
    buf_reset(&b);
    const char *latin1 = "/x?a=\xfe&b=caf\xe9";
    assert_int_equal(buf_json_text(&b, latin1, strlen(latin1)), 0);
    assert_string_equal(b.data, "\"/x?a=\\\\xFE&b=caf\\\\xE9\"");
    buf_dispose(&a);
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
        ("{\"id\":42,\"name\":\"widget\",\"price\":9.99,\"tags\":[\"a\",\"b\"],"
         "\"meta\":{\"generated_at\":\"2026-01-01T00:00:00Z\"}}"),
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
    /* Escapes that grow the text past the cap, after the plain text fitted. */
    assert_int_equal(buf_json_string(&b, "\"\"\"", 3), FICUS_ETOOBIG);
    assert_int_equal(b.len, 2);
    assert_string_equal(b.data, "ab");
    assert_int_equal(buf_json_string(&b, "\"x", 2), 0); /* fits: 7 of 8 */
    assert_string_equal(b.data, "ab\"\\\"x\"");
    b.len = 2;
    b.data[2] = '\0';
    struct arena a;
    const struct jv *arr;
    arena_init(&a);
    assert_int_equal(jdoc_parse(&a, "[\"abc\",\"def\"]", 13, &arr), 0);
    assert_int_equal(jv_write(&b, arr, 10), FICUS_ETOOBIG);
    assert_int_equal(b.len, 2);
    assert_string_equal(b.data, "ab");
    assert_int_equal(jv_write(&b, NULL, 10), -EINVAL);
    arena_dispose(&a);
    buf_dispose(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prom_label_escapes),
        cmocka_unit_test(test_reals_match_jansson),
        cmocka_unit_test(test_short_reals_match_jansson_at_every_precision),
        cmocka_unit_test(test_integers_and_literals_match_jansson),
        cmocka_unit_test(test_strings_match_jansson),
        cmocka_unit_test(test_random_bytes_agree_on_utf8),
        cmocka_unit_test(test_text_escapes_what_is_not_utf8),
        cmocka_unit_test(test_containers_keep_insertion_order),
        cmocka_unit_test(test_errors_append_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
