/* Unit tests for redaction: the secrets a request's redacted headers give,
 * pointer patterns, diff values, fragments and body excerpts, and above all
 * that no secret leaks, not even a piece of one where an excerpt is cut. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ficus/redact.h"

#define TOKEN "eyJhbGciOi.J9x/Qk+Zw7s=" /* what a backend echoes of "Bearer " TOKEN */

static bool kept(const struct redact_secrets *rs, const char *s)
{
    for (size_t i = 0; i < rs->n; i++)
        if (rs->s[i].len == strlen(s) && memcmp(rs->s[i].p, s, rs->s[i].len) == 0)
            return true;
    return false;
}

static void add(struct redact_secrets *rs, const char *name, const char *value)
{
    assert_int_equal(redact_secrets_add(rs, name, strlen(name), value, strlen(value)), 0);
}

/* Fails when text holds a piece of secret of at least min bytes. */
static void assert_no_piece(const char *text, size_t n, const char *secret, size_t min)
{
    size_t sl = strlen(secret);
    for (size_t i = 0; i + min <= sl; i++) {
        for (size_t j = 0; j + min <= n; j++) {
            if (memcmp(text + j, secret + i, min) == 0) {
                print_error("[%.*s] holds \"%.*s\" of the secret %s\n", (int)n, text, (int)min,
                            secret + i, secret);
                fail();
            }
        }
    }
}

static void test_secrets_of_headers(void **state)
{
    struct redact_secrets rs;
    (void)state;
    redact_secrets_init(&rs);
    add(&rs, "Authorization", "  Bearer " TOKEN " ");
    add(&rs, "Cookie", "theme=dark; session=\"s3cr3t-session-42\"; id=abcdefgh");
    add(&rs, "X-Short", "ab");
    assert_true(kept(&rs, "Bearer " TOKEN));
    assert_true(kept(&rs, TOKEN));
    assert_true(kept(&rs, "eyJhbGciOi.J9x\\/Qk+Zw7s="));     /* JSON with "\/" */
    assert_true(kept(&rs, "eyJhbGciOi.J9x%2FQk%2BZw7s%3D")); /* percent-encoded */
    assert_true(kept(&rs, "Bearer%20eyJhbGciOi.J9x%2FQk%2BZw7s%3D"));
    assert_true(kept(&rs, "s3cr3t-session-42"));
    assert_true(kept(&rs, "abcdefgh"));
    assert_false(kept(&rs, "dark")); /* too short to mask on its own */
    assert_false(kept(&rs, "ab"));
    assert_false(rs.overflow);
    /* A value with characters JSON escapes: its escaped form too. */
    add(&rs, "X-Api-Key", "k\"ey\\with-quote");
    assert_true(kept(&rs, "k\\\"ey\\\\with-quote"));
    struct redact only = {.secrets = &rs};
    struct buf e;
    buf_init(&e, 0);
    const char *echo = "{\"key\":\"k\\\"ey\\\\with-quote\"}";
    assert_int_equal(redact_excerpt(&e, &only, echo, strlen(echo), 100, true), 0);
    assert_string_equal(e.data, "{\"key\":\"[redacted]\"}");
    buf_dispose(&e);
    /* Longest first, so that a whole value wins over its part. */
    for (size_t i = 1; i < rs.n; i++)
        assert_true(rs.s[i - 1].len >= rs.s[i].len);
    redact_secrets_dispose(&rs);

    /* Too many: the set overflows, and then bodies show nothing. */
    redact_secrets_init(&rs);
    for (int i = 0; i < 200; i++) {
        char v[32];
        snprintf(v, sizeof v, "value-number-%d", i);
        add(&rs, "X-Api-Key", v);
    }
    assert_true(rs.overflow);
    struct redact r = {.secrets = &rs};
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(redact_excerpt(&b, &r, "value-number-199 and more", 25, 100, false), 0);
    assert_string_equal(b.data, REDACT_TEXT);
    buf_dispose(&b);
    redact_secrets_dispose(&rs);
}

static void test_pointer_patterns(void **state)
{
    const char *pats[] = {"/user/password", "/items/*/ssn", "/a~1b"};
    struct redact r = {.json = pats, .n_json = 3};
    (void)state;
    assert_true(redact_pointer_matches(&r, "/user/password"));
    assert_true(redact_pointer_matches(&r, "/user/password/old")); /* below */
    assert_false(redact_pointer_matches(&r, "/user"));
    assert_false(redact_pointer_matches(&r, "/user/passwords"));
    assert_true(redact_pointer_matches(&r, "/items/3/ssn"));
    assert_true(redact_pointer_matches(&r, "/items/3/ssn/x"));
    assert_false(redact_pointer_matches(&r, "/items/3"));
    assert_true(redact_pointer_matches(&r, "/a~1b"));
    assert_false(redact_pointer_matches(&r, "/a/b"));
    assert_false(redact_pointer_matches(NULL, "/user/password"));
    const char *all[] = {""};
    struct redact everything = {.json = all, .n_json = 1};
    assert_true(redact_pointer_matches(&everything, ""));
    assert_true(redact_pointer_matches(&everything, "/x/y"));
}

static const struct jv *parse(struct arena *a, const char *text)
{
    const struct jv *v;
    assert_int_equal(jdoc_parse(a, text, strlen(text), &v), 0);
    return v;
}

static void test_diff_values(void **state)
{
    const char *pats[] = {"/user/password", "/items/*/ssn"};
    struct redact_secrets rs;
    struct redact r = {.json = pats, .n_json = 2, .secrets = &rs};
    struct arena a;
    struct buf b;
    (void)state;
    redact_secrets_init(&rs);
    add(&rs, "authorization", "Bearer " TOKEN);
    add(&rs, "x-pin", "12345678");
    arena_init(&a);
    buf_init(&b, 0);

    /* The item's own path, or an ancestor, matches: all of it goes. */
    assert_int_equal(redact_write_value(&b, &r, "/user/password", parse(&a, "\"hunter2\"")), 0);
    assert_string_equal(b.data, "\"[redacted]\"");
    buf_reset(&b);
    assert_int_equal(redact_write_value(&b, &r, "/items/0/ssn/last4", parse(&a, "\"1234\"")), 0);
    assert_string_equal(b.data, "\"[redacted]\"");
    buf_reset(&b);
    /* Below the item: only what matches; secrets in strings, keys and numbers,
     * escaped or not in the body (they are decoded). */
    assert_int_equal(
        redact_write_value(&b, &r, "",
                           parse(&a, "{\"user\":{\"password\":\"x\",\"name\":\"ann\"},\"items\":"
                                     "[{\"ssn\":1,\"n\":1.50},{\"ssn\":[2]}],\"echo\":\"Bearer "
                                     "eyJhbGciOi.J9x\\/Qk+Zw7s=\",\"" TOKEN "\":12345678,"
                                     "\"n\":123456789,\"big\":1e400}")),
        0);
    assert_string_equal(b.data, "{\"user\":{\"password\":\"[redacted]\",\"name\":\"ann\"},"
                                "\"items\":[{\"ssn\":\"[redacted]\",\"n\":1.50},{\"ssn\":\"["
                                "redacted]\"}],\"echo\":\"[redacted]\",\"[redacted]\":\"["
                                "redacted]\",\"n\":\"[redacted]\",\"big\":1e400}");
    buf_reset(&b);
    /* A header value: no pointer rules, secrets only. */
    assert_int_equal(redact_write_value(&b, &r, NULL, parse(&a, "\"token=" TOKEN ";x\"")), 0);
    assert_string_equal(b.data, "\"token=[redacted];x\"");
    buf_reset(&b);
    /* Nothing to hide: as jv_write, numbers as sent. */
    struct redact none = {0};
    assert_int_equal(redact_write_value(&b, &none, "/a", parse(&a, "[1.0,-0,\"s\"]")), 0);
    assert_string_equal(b.data, "[1.0,-0,\"s\"]");
    buf_reset(&b);
    assert_int_equal(redact_write_value(&b, &r, "/a", NULL), -EINVAL);
    assert_int_equal(b.len, 0);
    /* Paths and other plain text. */
    assert_int_equal(redact_mask(&b, &r, "/tokens/" TOKEN "/x", strlen("/tokens/" TOKEN "/x")), 0);
    assert_string_equal(b.data, "/tokens/[redacted]/x");
    buf_dispose(&b);
    arena_dispose(&a);
    redact_secrets_dispose(&rs);
}

/* A byte difference shows 32 bytes from an offset: a secret may be cut at
 * either end, and no piece of it may show. */
static void test_fragments(void **state)
{
    struct redact_secrets rs;
    struct redact r = {.secrets = &rs};
    struct arena a;
    struct buf b;
    const char *body = "{\"echo\":\"Bearer " TOKEN "\",\"other\":\"plain text here\"}";
    size_t len = strlen(body);
    (void)state;
    redact_secrets_init(&rs);
    add(&rs, "authorization", "Bearer " TOKEN);
    arena_init(&a);
    buf_init(&b, 0);
    for (size_t off = 0; off < len; off++) {
        size_t n = len - off < 32 ? len - off : 32;
        const struct jv *v = jv_new_string(&a, body + off, n);
        buf_reset(&b);
        assert_int_equal(redact_write_fragment(&b, &r, v), 0);
        assert_no_piece(b.data, b.len, TOKEN, 2);
    }
    /* Text without a secret nearby is kept. */
    buf_reset(&b);
    assert_int_equal(redact_write_fragment(&b, &r, jv_new_string(&a, "plain text here", 15)), 0);
    assert_string_equal(b.data, "\"plain text here\"");
    buf_dispose(&b);
    arena_dispose(&a);
    redact_secrets_dispose(&rs);
}

/* Excerpts cut at every length: never a piece of a secret or of a redacted
 * value, whatever the cut. */
static void test_excerpts_cut_anywhere(void **state)
{
    const char *pats[] = {"/user/password", "/items/*/ssn"};
    struct redact_secrets rs;
    struct redact with_json = {.json = pats, .n_json = 2, .secrets = &rs};
    struct redact secrets_only = {.secrets = &rs};
    struct buf b;
    const char *json = "{\"user\":{\"name\":\"ann\",\"password\":\"hunter2-Very-Secret\"},"
                       "\"items\":[{\"ssn\":\"078-05-1120\"},{\"ssn\":\"219-09-9999\"}],"
                       "\"echo\":\"Bearer eyJhbGciOi.J9x\\/Qk+Zw7s=\",\"tail\":\"ok\"}";
    const char *html = "<p>Your token: eyJhbGciOi.J9x/Qk+Zw7s=</p><a href=\"/x?t=eyJhbGciOi."
                       "J9x%2FQk%2BZw7s%3D\">again</a>";
    (void)state;
    redact_secrets_init(&rs);
    add(&rs, "authorization", "Bearer " TOKEN);
    buf_init(&b, 0);

    for (size_t max = 0; max <= strlen(json) + 5; max++) {
        buf_reset(&b);
        assert_int_equal(redact_excerpt(&b, &with_json, json, strlen(json), max, true), 0);
        assert_true(b.len <= max);
        assert_no_piece(b.data, b.len, TOKEN, 4);
        assert_no_piece(b.data, b.len, "hunter2-Very-Secret", 3);
        assert_no_piece(b.data, b.len, "078-05-1120", 3);
        assert_no_piece(b.data, b.len, "219-09-9999", 3);
        /* Secrets alone: the JSON-escaped echo is masked in the raw bytes. */
        buf_reset(&b);
        assert_int_equal(redact_excerpt(&b, &secrets_only, json, strlen(json), max, true), 0);
        assert_true(b.len <= max);
        assert_no_piece(b.data, b.len, TOKEN, 4);
        assert_no_piece(b.data, b.len, "eyJhbGciOi.J9x\\/Qk+Zw7s=", 4);
    }
    for (size_t max = 0; max <= strlen(html) + 5; max++) {
        buf_reset(&b);
        assert_int_equal(redact_excerpt(&b, &with_json, html, strlen(html), max, false), 0);
        assert_true(b.len <= max);
        assert_no_piece(b.data, b.len, TOKEN, 4);
        assert_no_piece(b.data, b.len, "eyJhbGciOi.J9x%2FQk%2BZw7s%3D", 4);
    }
    /* Whole excerpts read as expected. */
    buf_reset(&b);
    assert_int_equal(redact_excerpt(&b, &with_json, json, strlen(json), 4096, true), 0);
    assert_string_equal(b.data,
                        "{\"user\":{\"name\":\"ann\",\"password\":\"[redacted]\"},\"items\":["
                        "{\"ssn\":\"[redacted]\"},{\"ssn\":\"[redacted]\"}],\"echo\":\"["
                        "redacted]\",\"tail\":\"ok\"}");
    buf_reset(&b);
    assert_int_equal(redact_excerpt(&b, &with_json, html, strlen(html), 4096, false), 0);
    assert_string_equal(b.data,
                        "<p>Your token: [redacted]</p><a href=\"/x?t=[redacted]\">again</a>");
    /* JSON by its content type that does not parse: its values cannot be found. */
    buf_reset(&b);
    assert_int_equal(
        redact_excerpt(&b, &with_json, "{\"user\":{\"password\":\"x\"", 24, 4096, true), 0);
    assert_string_equal(b.data, REDACT_TEXT);
    /* Nothing to hide: the first max bytes, cut between characters. */
    struct redact none = {0};
    buf_reset(&b);
    assert_int_equal(redact_excerpt(&b, &none, "caf\xc3\xa9!", 6, 4, false), 0);
    assert_int_equal(b.len, 3);
    buf_reset(&b);
    assert_int_equal(redact_excerpt(&b, &none, "caf\xc3\xa9!", 6, 5, false), 0);
    assert_int_equal(b.len, 5);
    buf_reset(&b);
    assert_int_equal(redact_excerpt(&b, &none, "\xff\xfe\xfd\xfc\xfb", 5, 2, false), 0);
    assert_int_equal(b.len, 2); /* not UTF-8: cut where asked */
    buf_dispose(&b);
    redact_secrets_dispose(&rs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secrets_of_headers),    cmocka_unit_test(test_pointer_patterns),
        cmocka_unit_test(test_diff_values),           cmocka_unit_test(test_fragments),
        cmocka_unit_test(test_excerpts_cut_anywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
