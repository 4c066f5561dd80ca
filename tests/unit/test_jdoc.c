/* Unit tests for jdoc, the diff's JSON parser. jansson is the judge: jdoc
 * replaced json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL) in the diff, so for
 * every input both must agree on whether it is JSON and, when it is, on the
 * value, down to member order, duplicate keys and the bits of each double.
 * Hand-picked edge cases come first, then generated ones. */
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

#define JFLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL)
#define DUMP   (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17))

/* Both parsers on the same bytes: same verdict, and the same text when each
 * value is written back at full precision (members in document order). */
static void agree(const char *text, size_t len)
{
    struct arena a;
    const struct jv *v = NULL;
    json_t *j = json_loadb(text, len, JFLAGS, NULL);

    arena_init(&a);
    int rc = jdoc_parse(&a, text, len, &v);
    if ((j != NULL) != (rc == 0)) {
        print_error("verdicts differ on [%.*s] (%zu bytes): jansson %s, jdoc %d\n", (int)len, text,
                    len, j != NULL ? "accepts" : "rejects", rc);
        fail();
    }
    if (j != NULL) {
        struct buf b;
        char *want = json_dumps(j, DUMP);
        buf_init(&b, 0);
        assert_non_null(want);
        assert_int_equal(jv_write(&b, v, 17), 0);
        if (strcmp(b.data, want) != 0) {
            print_error("values differ on [%.*s]: jansson %s, jdoc %s\n", (int)len, text, want,
                        b.data);
            fail();
        }
        free(want);
        buf_dispose(&b);
        json_decref(j);
    } else {
        assert_int_equal(rc, -EINVAL);
    }
    arena_dispose(&a);
}

static void agree_str(const char *text)
{
    agree(text, strlen(text));
}

static void test_hand_picked_cases(void **state)
{
    (void)state;
    static const char *const cases[] = {
        /* scalars at the top (JSON_DECODE_ANY) */
        "0",
        "-0",
        "1",
        "-1",
        "42",
        " 7 ",
        "\t\r\n8\n",
        "true",
        "false",
        "null",
        "\"\"",
        "\"x\"",
        /* numbers */
        "01",
        "-01",
        "00",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "1E-2",
        "1e5",
        "-0.0",
        "0.0",
        "1.5e300",
        "1e309",
        "-1e309",
        "1e-400",
        "2.2250738585072014e-308",
        "4.9e-324",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "0.1",
        "0.30000000000000004",
        "9007199254740993",
        "9007199254740993.0",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "123456789012345.6",
        "1234567890123456.7",
        "0e500",
        "-0e-5",
        "1.000000000000000000000000001",
        "100000000000000000000000000000.0",
        "1e22",
        "1e23",
        "3.14159265358979323846",
        "1x",
        "1 2",
        "- 1",
        "1.e5",
        "1e5.5",
        "0x10",
        "Infinity",
        "NaN",
        "1_000",
        /* literals */
        "tru",
        "truex",
        "True",
        "nul",
        "nulll",
        "[true1]",
        "[null,false]",
        "falsey",
        /* strings */
        "\"a\\\"b\"",
        "\"\\\\\"",
        "\"\\/\"",
        "\"\\b\\f\\n\\r\\t\"",
        "\"\\u0041\"",
        "\"\\u00e9\"",
        "\"\\u20AC\"",
        "\"\\ud83d\\ude00\"",
        "\"\\uD83D\\uDE00\"",
        "\"\\ud83d\"",
        "\"\\ude00\"",
        "\"\\ud83dx\"",
        "\"\\ud83d\\u0041\"",
        "\"\\u0000\"",
        "\"a\\u0000b\"",
        "\"\\u12\"",
        "\"\\u12g4\"",
        "\"\\x41\"",
        "\"\\a\"",
        "\"\\",
        "\"abc",
        "\"tab\there\"",
        "\"nl\nhere\"",
        "\"del\x7f\"",
        "\"caf\xc3\xa9\"",
        "\"\xe2\x82\xac\"",
        "\"\xf0\x9f\x98\x80\"",
        "\"\xc3\"",
        "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xff\"",
        "\"\x80\"",
        "\"\xe2\x82\"",
        /* arrays */
        "[]",
        "[ ]",
        "[1]",
        "[1,]",
        "[,1]",
        "[1 2]",
        "[1,,2]",
        "[",
        "]",
        "[[]]",
        "[[],[[]]]",
        "[1,[2,[3,[4]]]]",
        "[\"a\",1,2.5,true,false,null,{},[]]",
        /* objects */
        "{}",
        "{ }",
        "{\"a\":1}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\" 1}",
        "{a:1}",
        "{'a':1}",
        "{\"a\":1 \"b\":2}",
        "{1:2}",
        "{\"z\":1,\"a\":2,\"m\":3}",
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"b\":2,\"a\":3}",
        "{\"\\u0000\":1}",
        "{\"a\\u0000b\":1}",
        "{\"\":1}",
        "{\"\\u00e9\":{\"\\ud83d\\ude00\":[]}}",
        "{\"k0\":0,\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,"
        "\"k3\":33,\"k9\":9,\"k0\":100}",
        /* trailing and leading bytes */
        "",
        " ",
        "[] []",
        "{}x",
        "[]\x00",
        "\x00",
        "[1]\n",
        "\xef\xbb\xbf[1]",
        "/*c*/1",
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        agree_str(cases[i]);
    /* An embedded NUL byte, inside a string and outside. */
    agree("\"a\0b\"", 5);
    agree("[1,\0]", 5);
}

/* jansson's lexer loses a NUL it puts back after a number or a literal, so
 * one NUL right there is skipped; anywhere else a NUL makes the text invalid.
 * Every case is judged by jansson itself, and the first ones are pinned down
 * so that a jansson that changed would be noticed here. */
static void test_nul_bytes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t len;
        bool json;
    } cases[] = {
#define C(lit, ok) {lit, sizeof(lit) - 1, ok}
        C(" 3\0 ", true),
        C("3\0", true),
        C("0\0", true),
        C("-0\0", true),
        C("1.5\0", true),
        C("1e5\0", true),
        C("true\0", true),
        C("false\0", true),
        C("null\0 ", true),
        C("[1\0]", true),
        C("[1\0 ]", true),
        C("[1\0,2]", true),
        C("[true\0]", true),
        C("{\"a\":1\0}", true),
        C("{\"a\":false\0,\"b\":2}", true),
        C("\0", false),
        C(" \0", false),
        C("3\0\0", false),
        C("3\0x", false),
        C("3 \0", false),
        C("0\0 1", false),
        C("\"a\"\0", false),
        C("[]\0", false),
        C("{}\0", false),
        C("[1\0\0]", false),
        C("[1 \0]", false),
        C("[\0 1]", false),
        C("{\"a\"\0:1}", false),
        C("{\"a\":\01}", false),
        C("tru\0e", false),
        C("-\0", false),
        C("1.\0", false),
        C("1e\0", false),
        C("9223372036854775808\0", false),
#undef C
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        json_t *j = json_loadb(cases[i].text, cases[i].len, JFLAGS, NULL);
        if ((j != NULL) != cases[i].json)
            fail_msg("case %zu: jansson %s it", i, j != NULL ? "accepts" : "refuses");
        json_decref(j);
        agree(cases[i].text, cases[i].len);
    }
}

/* Nesting: jansson refuses a value deeper than 2048 levels, counting scalars too. */
static void test_depth_limit(void **state)
{
    (void)state;
    for (int depth = 2045; depth <= 2050; depth++) {
        struct buf b;
        buf_init(&b, 0);
        for (int i = 0; i < depth; i++)
            assert_int_equal(buf_puts(&b, "["), 0);
        for (int i = 0; i < depth; i++)
            assert_int_equal(buf_puts(&b, "]"), 0);
        agree(b.data, b.len);
        /* The same with a scalar at the bottom: one level more. */
        buf_reset(&b);
        for (int i = 0; i < depth; i++)
            assert_int_equal(buf_puts(&b, "{\"k\":"), 0);
        assert_int_equal(buf_puts(&b, "1"), 0);
        for (int i = 0; i < depth; i++)
            assert_int_equal(buf_puts(&b, "}"), 0);
        agree(b.data, b.len);
        buf_dispose(&b);
    }
}

/* Short decimals take a fast path instead of strtod: it must give the very
 * same double for every one of them. */
static void test_short_decimals_match_strtod(void **state)
{
    (void)state;
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    char text[64];
    struct arena a;
    arena_init(&a);
    for (int i = 0; i < 300000; i++) {
        uint64_t r = xorshift64s(&seed);
        int int_digits = 1 + (int)(r % 9), frac_digits = (int)((r >> 8) % 12);
        int exp = (int)((r >> 16) % 61) - 30;
        size_t o = 0;
        if (r >> 63)
            text[o++] = '-';
        for (int k = 0; k < int_digits; k++) {
            uint64_t d = xorshift64s(&seed) % 10;
            if (k == 0 && int_digits > 1 && d == 0)
                d = 1;
            text[o++] = (char)('0' + d);
        }
        if (frac_digits > 0) {
            text[o++] = '.';
            for (int k = 0; k < frac_digits; k++)
                text[o++] = (char)('0' + xorshift64s(&seed) % 10);
        }
        if ((r >> 24) % 3 == 0)
            o += (size_t)snprintf(text + o, sizeof text - o, "e%d", exp);
        else if (frac_digits == 0)
            o += (size_t)snprintf(text + o, sizeof text - o, ".0");
        text[o] = '\0';

        const struct jv *v;
        assert_int_equal(jdoc_parse(&a, text, o, &v), 0);
        assert_int_equal(v->type, JV_REAL);
        double want = strtod(text, NULL);
        if (memcmp(&v->u.d, &want, sizeof want) != 0) {
            print_error("%s: jdoc %.17g, strtod %.17g\n", text, v->u.d, want);
            fail();
        }
        if (i % 1000 == 999) {
            arena_dispose(&a);
            arena_init(&a);
        }
    }
    arena_dispose(&a);
}

/* Random documents, then random damage to them: the two parsers must agree on
 * every one. The alphabet leans on what JSON is made of so that most inputs
 * get deep into the grammar before they go wrong. */
static void gen_value(struct buf *b, uint64_t *seed, int depth)
{
    static const char *const atoms[] = {"0",
                                        "-1",
                                        "12",
                                        "3.25",
                                        "-0.0",
                                        "1e3",
                                        "2E-2",
                                        "true",
                                        "false",
                                        "null",
                                        "\"\"",
                                        "\"s\"",
                                        "\"\\n\"",
                                        "\"\\u00e9\"",
                                        "\"\xc3\xa9\"",
                                        "\"\\ud83d\\ude00\"",
                                        "9223372036854775807",
                                        "1e999",
                                        "\"\\u0000\"",
                                        "123456789.123456789"};
    uint64_t r = xorshift64s(seed);
    int kind = depth > 4 ? 0 : (int)(r % 4);
    if (kind <= 1) {
        buf_puts(b, atoms[(r >> 8) % ARRAY_SIZE(atoms)]);
        return;
    }
    int n = (int)((r >> 16) % 12);
    buf_puts(b, kind == 2 ? "[" : "{");
    for (int i = 0; i < n; i++) {
        if (i > 0)
            buf_puts(b, ",");
        if (kind == 3) {
            /* Few distinct keys, so that duplicates are common. */
            static const char *const keys[] = {"\"a\"",  "\"b\"",       "\"c\"", "\"\"",  "\"k1\"",
                                               "\"k2\"", "\"\\u0061\"", "\"d\"", "\"e\"", "\"f\"",
                                               "\"g\"",  "\"h\"",       "\"i\"", "\"j\""};
            buf_puts(b, keys[xorshift64s(seed) % ARRAY_SIZE(keys)]);
            buf_puts(b, xorshift64s(seed) % 4 == 0 ? " : " : ":");
        }
        gen_value(b, seed, depth + 1);
    }
    buf_puts(b, kind == 2 ? "]" : "}");
}

static void test_generated_documents_agree(void **state)
{
    (void)state;
    /* NUL included: jansson's handling of it is the one a fuzzer found. */
    static const char damage[] = "{}[],:\"\\ \n0123456789.eE+-tfnu\x01\x7f\x80\xc3\xff\0";
    uint64_t seed = 12345;
    struct buf b;
    buf_init(&b, 0);
    for (int i = 0; i < 60000; i++) {
        buf_reset(&b);
        gen_value(&b, &seed, 0);
        agree(b.data, b.len);
        /* One to three bytes changed, dropped or cut off. */
        int edits = 1 + (int)(xorshift64s(&seed) % 3);
        for (int e = 0; e < edits && b.len > 0; e++) {
            uint64_t r = xorshift64s(&seed);
            size_t at = (size_t)(r % b.len);
            switch ((r >> 32) % 3) {
            case 0:
                b.data[at] = damage[(r >> 40) % (sizeof damage - 1)];
                break;
            case 1:
                memmove(b.data + at, b.data + at + 1, b.len - at - 1);
                b.len--;
                break;
            default:
                b.len = at;
                break;
            }
        }
        agree(b.data, b.len);
    }
    buf_dispose(&b);
}

/* Objects above the linear-search size use a hash index: lookups, repeated
 * keys and equality must not depend on which one an object got. */
static void test_lookup_and_equality(void **state)
{
    (void)state;
    struct arena a;
    struct buf b;
    const struct jv *big, *big2, *small, *v;
    arena_init(&a);
    buf_init(&b, 0);
    assert_int_equal(buf_puts(&b, "{"), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(buf_printf(&b, "%s\"key%d\":%d", i ? "," : "", i, i), 0);
    assert_int_equal(buf_puts(&b, ",\"key7\":-7}"), 0);
    assert_int_equal(jdoc_parse(&a, b.data, b.len, &big), 0);
    assert_int_equal(big->n, 100);
    for (int i = 0; i < 100; i++) {
        char key[16];
        int n = snprintf(key, sizeof key, "key%d", i);
        v = jv_get(big, key, (size_t)n);
        assert_non_null(v);
        assert_int_equal(v->type, JV_INT);
        assert_true(v->u.i == (i == 7 ? -7 : i));
    }
    assert_null(jv_get(big, "key100", 6));
    assert_null(jv_get(big, "key", 3));
    /* The same members in the opposite order are equal. */
    buf_reset(&b);
    assert_int_equal(buf_puts(&b, "{"), 0);
    for (int i = 99; i >= 0; i--)
        assert_int_equal(buf_printf(&b, "\"key%d\":%d%s", i, i == 7 ? -7 : i, i ? "," : ""), 0);
    assert_int_equal(buf_puts(&b, "}"), 0);
    assert_int_equal(jdoc_parse(&a, b.data, b.len, &big2), 0);
    assert_true(jv_equal(big, big2));
    assert_int_equal(jdoc_parse(&a, "{\"b\":[1,2.5],\"a\":null}", 22, &small), 0);
    assert_int_equal(jdoc_parse(&a, "{\"a\":null,\"b\":[1,2.5]}", 22, &v), 0);
    assert_true(jv_equal(small, v));
    assert_false(jv_equal(small, big));
    /* An integer never equals a real; array order matters; -0.0 equals 0.0. */
    assert_int_equal(jdoc_parse(&a, "[1,2]", 5, &v), 0);
    assert_int_equal(jdoc_parse(&a, "[1.0,2]", 7, &small), 0);
    assert_false(jv_equal(v, small));
    assert_int_equal(jdoc_parse(&a, "[2,1]", 5, &small), 0);
    assert_false(jv_equal(v, small));
    assert_int_equal(jdoc_parse(&a, "-0.0", 4, &v), 0);
    assert_int_equal(jdoc_parse(&a, "0.0", 3, &small), 0);
    assert_true(jv_equal(v, small));
    assert_null(jv_get(v, "a", 1));
    arena_dispose(&a);
    buf_dispose(&b);
}

/* Values made for diff items write as expected. */
static void test_made_values(void **state)
{
    (void)state;
    struct arena a;
    struct buf b;
    arena_init(&a);
    buf_init(&b, 0);
    assert_int_equal(jv_write(&b, jv_new_int(&a, -42), 10), 0);
    assert_int_equal(jv_write(&b, jv_null(), 10), 0);
    assert_int_equal(jv_write(&b, jv_new_string(&a, "a\"\0", 3), 10), 0);
    assert_string_equal(b.data, "-42null\"a\\\"\\u0000\"");
    arena_dispose(&a);
    buf_dispose(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_picked_cases),
        cmocka_unit_test(test_nul_bytes),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_short_decimals_match_strtod),
        cmocka_unit_test(test_generated_documents_agree),
        cmocka_unit_test(test_lookup_and_equality),
        cmocka_unit_test(test_made_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
