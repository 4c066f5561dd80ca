/* Unit tests for jdoc, the diff's JSON parser. jansson is the judge: jdoc
 * replaced json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL) in the diff, so for
 * every input both must agree on whether it is JSON and, when it is, on the
 * value, down to member order, duplicate keys and the bits of each double.
 * jdoc also takes numbers jansson refuses for their size alone (integers
 * beyond 64 bits, reals beyond a double): for those, jansson judges the same
 * text with each such number replaced by 0. Numbers keep their text: jv_write
 * writes them back as sent, and they compare by exact decimal value.
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

#define ORACLE_CHECK(cond) assert_true(cond)
#include "../jdoc_oracle.h"

#define JFLAGS ORACLE_JFLAGS
#define DUMP   ORACLE_DUMP

/* jdoc and jansson agree on these bytes (tests/jdoc_oracle.h). */
static void agree(const char *text, size_t len)
{
    char msg[1024];
    const char *why = oracle_agree(text, len, msg, sizeof(msg));
    if (why != NULL) {
        print_error("%s\n", why);
        fail();
    }
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
        ("{\"k0\":0,\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,"
         "\"k3\":33,\"k9\":9,\"k0\":100}"),
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
        C(" 3\0 ", true),        C("3\0", true),          C("0\0", true),
        C("-0\0", true),         C("1.5\0", true),        C("1e5\0", true),
        C("true\0", true),       C("false\0", true),      C("null\0 ", true),
        C("[1\0]", true),        C("[1\0 ]", true),       C("[1\0,2]", true),
        C("[true\0]", true),     C("{\"a\":1\0}", true),  C("{\"a\":false\0,\"b\":2}", true),
        C("\0", false),          C(" \0", false),         C("3\0\0", false),
        C("3\0x", false),        C("3 \0", false),        C("0\0 1", false),
        C("\"a\"\0", false),     C("[]\0", false),        C("{}\0", false),
        C("[1\0\0]", false),     C("[1 \0]", false),      C("[\0 1]", false),
        C("{\"a\"\0:1}", false), C("{\"a\":\01}", false), C("tru\0e", false),
        C("-\0", false),         C("1.\0", false),        C("1e\0", false),
    /* (An integer beyond 64 bits before a NUL is a big number, which jdoc
     * accepts and jansson refuses for its size: test_numbers_written_as_sent
     * and the generated big-number documents cover those.) */
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

/* Short decimals convert on a fast path instead of strtod: it must give the
 * very same double for every one of them. */
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
        double want = strtod(text, NULL), got = jv_double(v);
        if (memcmp(&got, &want, sizeof want) != 0) {
            print_error("%s: jdoc %.17g, strtod %.17g\n", text, got, want);
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
static void gen_value(struct buf *b, uint64_t *seed, int depth, bool big)
{
    static const char *const atoms[] = {
        "0", "-1", "12", "3.25", "-0.0", "1e3", "2E-2", "true", "false", "null", "\"\"", "\"s\"",
        "\"\\n\"", "\"\\u00e9\"", "\"\xc3\xa9\"", "\"\\ud83d\\ude00\"", "9223372036854775807",
        "1e999", "\"\\u0000\"", "123456789.123456789",
        /* From here on: with big only. */
        "18446744073709551617", "-123456789012345678901234567890", "1e400", "-1E+400", "-0",
        "0.30000000000000004", "1796166754.123456789"};
    const size_t n_atoms = big ? ARRAY_SIZE(atoms) : 20;
    uint64_t r = xorshift64s(seed);
    int kind = depth > 4 ? 0 : (int)(r % 4);
    if (kind <= 1) {
        buf_puts(b, atoms[(r >> 8) % n_atoms]);
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
        gen_value(b, seed, depth + 1, big);
    }
    buf_puts(b, kind == 2 ? "]" : "}");
}

static void generated_documents_agree(int count, uint64_t seed, bool big)
{
    /* NUL included: jansson's handling of it is the one a fuzzer found. */
    static const char damage[] = "{}[],:\"\\ \n0123456789.eE+-tfnu\x01\x7f\x80\xc3\xff\0";
    struct buf b;
    buf_init(&b, 0);
    for (int i = 0; i < count; i++) {
        buf_reset(&b);
        gen_value(&b, &seed, 0, big);
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

/* 26,000 documents: jansson used to refuse every document holding 1e999 (and
 * jdoc with it) at that number; now both read them to the end, so a document
 * costs several times what it did when this ran 60,000. Counted: the unit
 * compares more documents by value (jansson accepts 43,862 inputs over
 * the whole file) than the 60,000 did (40,553). */
static void test_generated_documents_agree(void **state)
{
    (void)state;
    generated_documents_agree(26000, 12345, false);
}

/* The same with numbers jansson refuses for their size mixed in. */
static void test_generated_documents_with_big_numbers_agree(void **state)
{
    (void)state;
    generated_documents_agree(8000, 54321, true);
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
        int64_t got = 0;
        assert_int_equal(jv_int64(v, &got), 0);
        assert_true(got == (i == 7 ? -7 : i));
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
    /* Numbers are equal by value (1 equals 1.0, unlike json_equal); array order
     * matters; -0.0 equals 0.0. */
    assert_int_equal(jdoc_parse(&a, "[1,2]", 5, &v), 0);
    assert_int_equal(jdoc_parse(&a, "[1.0,2]", 7, &small), 0);
    assert_true(jv_equal(v, small));
    assert_int_equal(jdoc_parse(&a, "[1.5,2]", 7, &small), 0);
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
/* Numbers are written exactly as sent, whatever their size or spelling. */
static void test_numbers_written_as_sent(void **state)
{
    (void)state;
    static const char *const nums[] = {
        "0",
        "-0",
        "-0.0",
        "0.0",
        "1.0",
        "1E+2",
        "1e-2",
        "1.50",
        "100e-2",
        "1796166754.0",
        "1796166754.123456789",
        "1796166754123.456", /* timestamps */
        "0.30000000000000004",
        "1.0000000000000002",
        "2.2250738585072014e-308",
        "9007199254740993",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "18446744073709551617",
        "-18446744073709551617",
        "123456789012345678901234567890",
        "1e400",
        "-1e400",
        "1e-400",
        "4.9e-324",
        "1.7976931348623159e308",
        "0.1000000000000000000000000000000000000000000000000000000001"};
    struct arena a;
    struct buf in, out;
    arena_init(&a);
    buf_init(&in, 0);
    buf_init(&out, 0);
    assert_int_equal(buf_puts(&in, "{\"xs\":["), 0);
    for (size_t i = 0; i < ARRAY_SIZE(nums); i++) {
        const struct jv *v;
        buf_reset(&out);
        assert_int_equal(jdoc_parse(&a, nums[i], strlen(nums[i]), &v), 0);
        assert_int_equal(jv_write(&out, v, 10), 0);
        assert_string_equal(out.data, nums[i]);
        assert_int_equal(buf_printf(&in, "%s%s", i ? "," : "", nums[i]), 0);
    }
    /* The same inside containers, with the whitespace a backend may add. */
    assert_int_equal(buf_puts(&in, "], \"t\" : 1796166754.0 }"), 0);
    const struct jv *doc;
    assert_int_equal(jdoc_parse(&a, in.data, in.len, &doc), 0);
    buf_reset(&out);
    assert_int_equal(jv_write(&out, doc, 10), 0);
    assert_int_equal(buf_puts(&in, ""), 0);
    char *compact = malloc(in.len + 1);
    size_t o = 0;
    assert_non_null(compact);
    for (size_t i = 0; i < in.len; i++)
        if (in.data[i] != ' ')
            compact[o++] = in.data[i];
    compact[o] = '\0';
    assert_string_equal(out.data, compact);
    free(compact);
    /* Integer and real, as written. */
    assert_int_equal(jv_get(doc, "t", 1)->type, JV_REAL);
    assert_int_equal(jv_get(doc, "xs", 2)->u.items[0].type, JV_INT);
    assert_int_equal(jv_get(doc, "xs", 2)->u.items[1].type, JV_INT);  /* "-0" */
    assert_int_equal(jv_get(doc, "xs", 2)->u.items[20].type, JV_INT); /* beyond 64 bits */
    buf_dispose(&in);
    buf_dispose(&out);
    arena_dispose(&a);
}

/* Random compact documents with distinct keys: jv_write gives back the input
 * byte for byte, whatever the numbers hold. */
static void gen_compact(struct buf *b, uint64_t *seed, int depth)
{
    uint64_t r = xorshift64s(seed);
    int kind = depth > 3 ? 0 : (int)(r % 4);
    if (kind <= 1) {
        /* A random number: sign, 1 to 40 digits, maybe a fraction and an exponent. */
        int digits = 1 + (int)((r >> 8) % 40);
        if ((r >> 16) & 1)
            buf_puts(b, "-");
        for (int k = 0; k < digits; k++)
            buf_printf(b, "%d",
                       k == 0 && digits > 1 ? 1 + (int)(xorshift64s(seed) % 9)
                                            : (int)(xorshift64s(seed) % 10));
        if ((r >> 20) % 3 == 0) {
            buf_puts(b, ".");
            for (int k = 0, n = 1 + (int)((r >> 24) % 20); k < n; k++)
                buf_printf(b, "%d", (int)(xorshift64s(seed) % 10));
        }
        if ((r >> 30) % 4 == 0)
            buf_printf(b, "%s%s%d", (r >> 34) & 1 ? "e" : "E",
                       (r >> 35) % 3 == 0   ? "+"
                       : (r >> 35) % 3 == 1 ? "-"
                                            : "",
                       (int)((r >> 40) % 700));
        return;
    }
    int n = (int)((r >> 16) % 6);
    buf_puts(b, kind == 2 ? "[" : "{");
    for (int i = 0; i < n; i++) {
        if (i > 0)
            buf_puts(b, ",");
        if (kind == 3)
            buf_printf(b, "\"k%d\":", i);
        gen_compact(b, seed, depth + 1);
    }
    buf_puts(b, kind == 2 ? "]" : "}");
}

static void test_generated_numbers_round_trip(void **state)
{
    (void)state;
    uint64_t seed = 777;
    struct buf b, w;
    buf_init(&b, 0);
    buf_init(&w, 0);
    for (int i = 0; i < 5000; i++) {
        struct arena a;
        const struct jv *v;
        buf_reset(&b);
        buf_reset(&w);
        gen_compact(&b, &seed, 0);
        arena_init(&a);
        assert_int_equal(jdoc_parse(&a, b.data, b.len, &v), 0);
        assert_int_equal(jv_write(&w, v, 10), 0);
        assert_string_equal(w.data, b.data);
        arena_dispose(&a);
        agree(b.data, b.len);
    }
    buf_dispose(&b);
    buf_dispose(&w);
}

/* Equality by exact decimal value, and a hash that agrees with it. */
static void test_number_equality(void **state)
{
    (void)state;
    static const struct {
        const char *a, *b;
        bool equal;
    } cases[] = {
        {"1", "1", true},
        {"1", "1.0", true},
        {"1", "1e0", true},
        {"1", "1.000e+0", true},
        {"100", "1e2", true},
        {"100", "1E+2", true},
        {"100", "1000e-1", true},
        {"10", "1e1", true},
        {"0", "-0", true},
        {"0", "0.0e10", true},
        {"-0.0", "0", true},
        {"0", "0e-999999999999999999999", true},
        {"0.1", "0.10", true},
        {"0.1", "1e-1", true},
        {"0.00001", "1e-5", true},
        {"1.5", "15e-1", true},
        {"-1.5", "-0.015e2", true},
        {"123", "1230e-1", true},
        {"18446744073709551617", "1.8446744073709551617e19", true},
        {"1e400", "1e400", true},
        {"1e400", "10e399", true},
        {"123456789012345678901234567890", "1.2345678901234567890123456789e29", true},
        {"1", "2", false},
        {"1", "-1", false},
        {"1", "10", false},
        {"1", "0.1", false},
        {"12", "21", false},
        {"1.5", "-1.5", false},
        {"0", "1e-400", false},
        {"9007199254740993", "9007199254740992", false}, /* one double */
        {"0.1", "0.10000000000000001", false},           /* one double */
        {"18446744073709551617", "18446744073709551616", false},
        {"1e400", "1e401", false},
        {"1e400", "-1e400", false},
        {"123456789012345678901234567890", "123456789012345678901234567891", false},
        /* Exponents beyond 2^62 saturate (documented). */
        {"1e99999999999999999999", "1e99999999999999999998", true},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const char *a = cases[i].a, *b = cases[i].b;
        size_t na = strlen(a), nb = strlen(b);
        assert_true(jdoc_number_valid(a, na, NULL));
        assert_true(jdoc_number_valid(b, nb, NULL));
        if (jdoc_number_equal(a, na, b, nb) != cases[i].equal ||
            jdoc_number_equal(b, nb, a, na) != cases[i].equal) {
            print_error("%s vs %s: expected %s\n", a, b, cases[i].equal ? "equal" : "different");
            fail();
        }
        if (cases[i].equal)
            assert_true(jdoc_number_hash(a, na) == jdoc_number_hash(b, nb));
    }
    /* Values equal as doubles but not as decimals hash apart (at least these). */
    assert_true(jdoc_number_hash("0.1", 3) != jdoc_number_hash("0.10000000000000001", 19));
}

static void test_number_text_helpers(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool valid, is_int;
    } v[] = {{"1", true, true},     {"-1", true, true},    {"-0", true, true},
             {"-1.5", true, false}, {"1e5", true, false},  {"1E-5", true, false},
             {"+1", false, false},  {" 1", false, false},  {"1 ", false, false},
             {"01", false, false},  {"1.", false, false},  {".5", false, false},
             {"", false, false},    {"1e", false, false},  {"-", false, false},
             {"0x1", false, false}, {"1e+", false, false}, {"NaN", false, false},
             {"1_0", false, false}, {"1.5.", false, false}};
    for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
        bool is_int = !v[i].is_int;
        assert_int_equal(jdoc_number_valid(v[i].s, strlen(v[i].s), &is_int), v[i].valid);
        if (v[i].valid)
            assert_int_equal(is_int, v[i].is_int);
    }
    assert_false(jdoc_number_valid("1\0", 2, NULL));

    int64_t x = 0;
    assert_int_equal(jdoc_number_int64("9223372036854775807", 19, &x), 0);
    assert_true(x == INT64_MAX);
    assert_int_equal(jdoc_number_int64("-9223372036854775808", 20, &x), 0);
    assert_true(x == INT64_MIN);
    assert_int_equal(jdoc_number_int64("9223372036854775808", 19, &x), -ERANGE);
    assert_int_equal(jdoc_number_int64("-9223372036854775809", 20, &x), -ERANGE);
    assert_int_equal(jdoc_number_int64("123456789012345678901234567890", 30, &x), -ERANGE);
    assert_int_equal(jdoc_number_int64("1.0", 3, &x), -EINVAL);
    assert_int_equal(jdoc_number_int64("1e2", 3, &x), -EINVAL);
    assert_int_equal(jdoc_number_int64("99999999999999999999.5", 22, &x), -EINVAL);
    assert_int_equal(jdoc_number_int64("-0", 2, &x), 0);
    assert_true(x == 0);

    /* The nearest double, also for texts beyond the fast path and the range. */
    static const char *const d[] = {
        "1e400",
        "-1e400",
        "1e-400",
        "18446744073709551617",
        "123456789012345678901234567890",
        "0.30000000000000004",
        "1796166754.123456789",
        "2.2250738585072014e-308",
        "4.9e-324",
        "3.14159265358979323846264338327950288419716939937510582097494"};
    for (size_t i = 0; i < ARRAY_SIZE(d); i++) {
        double want = strtod(d[i], NULL), got = jdoc_number_double(d[i], strlen(d[i]));
        assert_memory_equal(&got, &want, sizeof got);
    }
    /* A text inside a larger one (not NUL-terminated where it ends). */
    const char *inside = "123456789012345678901234567890123456789012345678901234567890123456789";
    double got = jdoc_number_double(inside, 68), want = strtod("1234567890123456789012345678901234"
                                                               "5678901234567890123456789012345678",
                                                               NULL);
    assert_memory_equal(&got, &want, sizeof got);
}

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
        cmocka_unit_test(test_generated_documents_with_big_numbers_agree),
        cmocka_unit_test(test_lookup_and_equality),
        cmocka_unit_test(test_numbers_written_as_sent),
        cmocka_unit_test(test_generated_numbers_round_trip),
        cmocka_unit_test(test_number_equality),
        cmocka_unit_test(test_number_text_helpers),
        cmocka_unit_test(test_made_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
