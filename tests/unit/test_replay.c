/* Unit tests for replay's pure half: the request member a record carries (and
 * that it reads back the same), record parsing and its refusals, RFC 3339
 * times, endpoint names, filters, the verdict on a replayed pair and the
 * summary. */
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
#include "ficus/config.h"
#include "ficus/replay.h"

static struct config *cfg_with(const char *divlog)
{
    char text[1024];
    snprintf(
        text, sizeof(text),
        "{\"listen\":\"127.0.0.1:1\",\"backends\":{\"legacy\":{\"url\":\"http://127.0.0.1:2\"},"
        "\"new\":{\"url\":\"http://127.0.0.1:3\"}},\"routes\":[{\"name\":\"r\"}]%s%s%s}",
        divlog ? ",\"divergence_log\":" : "", divlog ? divlog : "", "");
    struct config_errors errs = {0};
    struct config *cfg = config_parse(text, strlen(text), "test", &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_error("%s\n", errs.lines[i]);
    config_errors_dispose(&errs);
    assert_non_null(cfg);
    return cfg;
}

/* A record line around the request member written for head and body. */
static void record_line(struct buf *out, const struct config *cfg, const char *head,
                        const char *body, size_t body_len)
{
    buf_reset(out);
    assert_int_equal(
        buf_puts(out, "{\"ts\":\"2026-11-22T10:00:00.123Z\",\"id\":\"a1\",\"route\":"
                      "\"r\",\"method\":\"POST\",\"target\":\"/x\",\"diffs\":[{\"kind\":"
                      "\"json\",\"path\":\"/p\",\"legacy\":1,\"new\":2}],\"noise\":[\"/ts\"],"),
        0);
    assert_int_equal(replay_request_json(out, cfg, head, strlen(head), body, body_len), 0);
    assert_int_equal(buf_puts(out, "}"), 0);
}

static const char *find_header(const struct replay_record *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        if (strcmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    }
    return NULL;
}

static void test_request_round_trip(void **state)
{
    (void)state;
    struct config *cfg = cfg_with("{\"path\":\"x\",\"redact_headers\":[\"x-api-key\"]}");
    assert_int_equal(cfg->divlog_request_body_bytes, REPLAY_BODY_BYTES_DEFAULT);
    const char *head = "POST /x?q=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer SECRET1\r\n"
                       "X-Api-Key: SECRET2\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
                       "x-ficus-shadow: 1\r\nAccept: */*\r\n\r\n";
    struct buf line = {0};
    record_line(&line, cfg, head, "h\xc3\xa9llo", 6);
    assert_null(strstr(line.data, "SECRET"));
    assert_non_null(strstr(line.data, "\"Authorization\",\"[redacted]\""));
    assert_null(strstr(line.data, "Content-Length"));
    assert_null(strstr(line.data, "x-ficus-shadow"));
    assert_null(strstr(line.data, "body_encoding"));

    struct replay_record r;
    replay_record_init(&r);
    char why[256];
    assert_int_equal(replay_record_parse(&r, line.data, line.len, why, sizeof(why)), REPLAY_PARSED);
    assert_string_equal(r.method, "POST");
    assert_string_equal(r.target, "/x?q=1");
    assert_string_equal(r.route, "r");
    assert_int_equal(r.n_headers, 4);
    assert_string_equal(find_header(&r, "Host"), "a");
    assert_string_equal(find_header(&r, "Accept"), "*/*");
    assert_true(r.headers[1].redacted && r.headers[2].redacted);
    assert_int_equal(r.body_len, 6);
    assert_memory_equal(r.body, "h\xc3\xa9llo", 6);
    assert_false(r.body_truncated);
    assert_int_equal(r.kinds, 1u << DIFF_JSON);
    assert_int_equal(r.n_noise, 1);
    assert_string_equal(r.noise[0], "/ts");
    assert_true(r.ts_ms == 1795341600123LL);

    /* Bytes that are not UTF-8 (NUL included) go as base64 and come back. */
    const char bin[] = {'\xff', '\0', 'a', '\x80', '\n'};
    record_line(&line, cfg, head, bin, sizeof(bin));
    assert_non_null(strstr(line.data, "\"body_encoding\":\"base64\""));
    assert_int_equal(replay_record_parse(&r, line.data, line.len, why, sizeof(why)), REPLAY_PARSED);
    assert_int_equal(r.body_len, sizeof(bin));
    assert_memory_equal(r.body, bin, sizeof(bin));
    replay_record_dispose(&r);
    buf_dispose(&line);
    config_unref(cfg);
}

static void test_request_body_cap(void **state)
{
    (void)state;
    struct config *cfg = cfg_with("{\"path\":\"x\",\"request_body_bytes\":4}");
    struct buf line = {0};
    record_line(&line, cfg, "PUT /y HTTP/1.1\r\nHost: a\r\n\r\n", "abcdefgh", 8);
    assert_non_null(
        strstr(line.data, "\"body\":\"abcd\",\"body_bytes\":8,\"body_truncated\":true"));
    struct replay_record r;
    replay_record_init(&r);
    char why[256];
    assert_int_equal(replay_record_parse(&r, line.data, line.len, why, sizeof(why)), REPLAY_PARSED);
    assert_true(r.body_truncated);
    /* A cap inside a UTF-8 character: the prefix is not text, so base64. */
    record_line(&line, cfg, "PUT /y HTTP/1.1\r\nHost: a\r\n\r\n", "abc\xc3\xa9", 5);
    assert_non_null(strstr(line.data, "base64"));
    assert_int_equal(replay_record_parse(&r, line.data, line.len, why, sizeof(why)), REPLAY_PARSED);
    assert_int_equal(r.body_len, 4);
    assert_memory_equal(r.body, "abc\xc3", 4);
    replay_record_dispose(&r);
    /* A head that does not parse: nothing appended. */
    buf_reset(&line);
    assert_int_equal(replay_request_json(&line, cfg, "nonsense", 8, "", 0), FICUS_EBADREQ);
    assert_int_equal(line.len, 0);
    buf_dispose(&line);
    config_unref(cfg);

    /* The key's bounds. */
    struct config_errors errs = {0};
    const char *bad = "{\"listen\":\"127.0.0.1:1\",\"backends\":{\"legacy\":{\"url\":\"http://"
                      "127.0.0.1:2\"},\"new\":{\"url\":\"http://127.0.0.1:3\"}},\"routes\":[{"
                      "\"name\":\"r\"}],\"divergence_log\":{\"path\":\"x\",\"request_body_bytes\":"
                      "16777217}}";
    assert_null(config_parse(bad, strlen(bad), "t.json", &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.lines[0], "divergence_log.request_body_bytes"));
    config_errors_dispose(&errs);
}

static void test_request_body_redacted(void **state)
{
    (void)state;
    struct config *cfg = cfg_with("{\"path\":\"x\",\"redact_json\":[\"/card\"]}");
    const char *head = "POST /pay HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                       "Authorization: Bearer tok-0123456789\r\n\r\n";
    struct buf line = {0};
    const char *body = "{\"card\": \"4111111111111111\", \"qty\": 1}";
    record_line(&line, cfg, head, body, strlen(body));
    assert_null(strstr(line.data, "4111"));
    assert_non_null(strstr(line.data, "\"body_redacted\":true"));
    struct replay_record r;
    replay_record_init(&r);
    char why[256];
    assert_int_equal(replay_record_parse(&r, line.data, line.len, why, sizeof(why)), REPLAY_PARSED);
    assert_true(r.body_redacted);
    /* The bearer token echoed in a body is hidden too. */
    const char *echo = "{\"qty\": 1, \"note\": \"tok-0123456789\"}";
    record_line(&line, cfg, head, echo, strlen(echo));
    assert_null(strstr(line.data, "tok-0123456789"));
    assert_non_null(strstr(line.data, "\"body_redacted\":true"));
    /* Nothing to hide: the body as sent, whitespace included. */
    const char *plain = "{\"qty\": 1,  \"x\": [1, 2]}";
    record_line(&line, cfg, head, plain, strlen(plain));
    assert_non_null(strstr(line.data, "\"body\":\"{\\\"qty\\\": 1,  \\\"x\\\": [1, 2]}\""));
    assert_null(strstr(line.data, "body_redacted"));
    assert_int_equal(replay_record_parse(&r, line.data, line.len, why, sizeof(why)), REPLAY_PARSED);
    assert_false(r.body_redacted);
    assert_int_equal(r.body_len, strlen(plain));
    replay_record_dispose(&r);
    buf_dispose(&line);
    config_unref(cfg);
}

static int parse(const char *line, char *why)
{
    struct replay_record r;
    replay_record_init(&r);
    int rc = replay_record_parse(&r, line, strlen(line), why, 256);
    replay_record_dispose(&r);
    return rc;
}

static void test_refusals(void **state)
{
    (void)state;
    char why[256];
    const char *ok = "{\"id\":\"1\",\"route\":\"r\",\"method\":\"GET\",\"target\":\"/\","
                     "\"request\":{\"v\":1,\"method\":\"GET\",\"target\":\"/\",\"headers\":[]}}";
    assert_int_equal(parse(ok, why), REPLAY_PARSED);
    char cut[256];
    snprintf(cut, sizeof(cut), "%.*s", (int)strlen(ok) - 5, ok);
    assert_int_equal(parse(cut, why), REPLAY_INVALID);
    assert_non_null(strstr(why, "not JSON"));
    assert_int_equal(parse("", why), REPLAY_INVALID);
    assert_int_equal(parse("[1]", why), REPLAY_FOREIGN);
    assert_int_equal(
        parse("{\"id\":\"1\",\"route\":\"r\",\"method\":\"GET\",\"target\":\"/\"}", why),
        REPLAY_FOREIGN);
    assert_non_null(strstr(why, "no \"request\""));
    assert_int_equal(
        parse("{\"id\":\"1\",\"route\":\"r\",\"method\":\"GET\",\"target\":\"/\","
              "\"request\":{\"v\":2,\"method\":\"GET\",\"target\":\"/\",\"headers\":[]}}",
              why),
        REPLAY_FOREIGN);
    assert_non_null(strstr(why, "another version (v 2"));
    assert_int_equal(
        parse("{\"id\":\"1\",\"route\":\"r\",\"method\":\"GET\",\"target\":\"/\","
              "\"request\":{\"v\":1,\"method\":\"GET\",\"target\":\"/\",\"headers\":[[\"a\"]]}}",
              why),
        REPLAY_FOREIGN);
    assert_int_equal(
        parse("{\"id\":\"1\",\"route\":\"r\",\"method\":\"GET\",\"target\":\"/\","
              "\"request\":{\"v\":1,\"method\":\"GET\",\"target\":\"/\",\"headers\":[],"
              "\"body\":\"!!!\",\"body_encoding\":\"base64\"}}",
              why),
        REPLAY_FOREIGN);
    assert_non_null(strstr(why, "base64"));
    assert_int_equal(parse("{\"id\":\"1\",\"route\":\"r\",\"method\":\"GET\",\"target\":\"/\","
                           "\"request\":null}",
                           why),
                     REPLAY_FOREIGN);
}

static void test_times(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(replay_parse_time("1970-01-01T00:00:00Z", &ms), 0);
    assert_true(ms == 0);
    assert_int_equal(replay_parse_time("1970-01-01T01:00:00.5+01:00", &ms), 0);
    assert_true(ms == 500);
    assert_int_equal(replay_parse_time("2026-11-22T10:00:00.123456Z", &ms), 0);
    assert_true(ms == 1795341600123LL);
    assert_int_equal(replay_parse_time("2026-11-22T10:00:00-02:30", &ms), 0);
    assert_true(ms == 1795341600000LL + 9000000);
    const char *bad[] = {"",
                         "2026-11-22",
                         "2026-11-22T10:00:00",
                         "yesterday",
                         "2026-13-01T00:00:00Z",
                         "2026-11-22T10:00:00.Z",
                         "2026-11-22T10:00:00Zx"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(replay_parse_time(bad[i], &ms), -EINVAL);
}

static void test_endpoint_names(void **state)
{
    (void)state;
    char out[128];
    replay_endpoint_name("GET", "/posts/42/comments?x=1", out, sizeof(out));
    assert_string_equal(out, "GET /posts/{id}/comments");
    replay_endpoint_name("DELETE", "/u/6f1c2d3e-0000-4000-8000-123456789abc", out, sizeof(out));
    assert_string_equal(out, "DELETE /u/{id}");
    replay_endpoint_name("GET", "/blob/0123456789abcdef0123", out, sizeof(out));
    assert_string_equal(out, "GET /blob/{id}");
    replay_endpoint_name("GET", "/v2/posts/", out, sizeof(out));
    assert_string_equal(out, "GET /v2/posts/");
    replay_endpoint_name("GET", "http://h:80/a/7", out, sizeof(out));
    assert_string_equal(out, "GET /a/{id}");
    replay_endpoint_name("GET", "/abcdefgh", out, 8);
    assert_string_equal(out, "GET /ab");
}

static void test_filters(void **state)
{
    (void)state;
    struct replay_record r;
    replay_record_init(&r);
    r.route = "a";
    r.id = "x1";
    r.kinds = 1u << DIFF_STATUS;
    r.ts_ms = 1000;
    struct replay_filter f;
    replay_filter_init(&f);
    assert_true(replay_filter_match(&f, &r, "GET /"));
    const char *routes[] = {"b", "a"};
    f.routes = routes;
    f.n_routes = 2;
    assert_true(replay_filter_match(&f, &r, "GET /"));
    f.n_routes = 1;
    assert_false(replay_filter_match(&f, &r, "GET /"));
    f.n_routes = 0;
    f.kinds = 1u << DIFF_JSON;
    assert_false(replay_filter_match(&f, &r, "GET /"));
    f.kinds |= 1u << DIFF_STATUS;
    assert_true(replay_filter_match(&f, &r, "GET /"));
    f.since_ms = 1001;
    assert_false(replay_filter_match(&f, &r, "GET /"));
    f.since_ms = 1000;
    f.until_ms = 1000;
    assert_true(replay_filter_match(&f, &r, "GET /"));
    r.ts_ms = INT64_MIN; /* no time: a time filter refuses it */
    assert_false(replay_filter_match(&f, &r, "GET /"));
    replay_filter_init(&f);
    const char *eps[] = {"GET /p/{id}"};
    f.endpoints = eps;
    f.n_endpoints = 1;
    assert_false(replay_filter_match(&f, &r, "GET /"));
    assert_true(replay_filter_match(&f, &r, "GET /p/{id}"));
    const char *ids[] = {"x2"};
    f.ids = ids;
    f.n_ids = 1;
    assert_false(replay_filter_match(&f, &r, "GET /p/{id}"));
}

static struct diff_response json_resp(int status, const char *body)
{
    static const struct diff_header ct = {"content-type", 12, "application/json", 16};
    struct diff_response r = {0};
    r.status = status;
    r.headers = &ct;
    r.n_headers = 1;
    r.body = body;
    r.body_len = strlen(body);
    return r;
}

static void test_compare(void **state)
{
    (void)state;
    static const char *hdrs[] = {"content-type"};
    struct diff_rules rules = {.headers = hdrs, .n_headers = 1};
    struct replay_verdict v;
    struct diff_response l = json_resp(200, "{\"a\":1,\"ts\":5,\"b\":[1]}");
    struct diff_response same = json_resp(200, "{\"a\":1,\"ts\":5,\"b\":[1]}");
    assert_int_equal(replay_compare(&rules, &l, &same, NULL, 0, NULL, 0, "GET /", &v), 0);
    assert_int_equal(v.outcome, REPLAY_EQUAL);

    struct diff_response n = json_resp(200, "{\"a\":2,\"ts\":6,\"b\":[2]}");
    assert_int_equal(replay_compare(&rules, &l, &n, NULL, 0, NULL, 0, "GET /", &v), 0);
    assert_int_equal(v.outcome, REPLAY_DIVERGING);
    assert_int_equal(v.n_diffs, 3);
    /* The record's noise paths and the route's acknowledgements are not counted. */
    const char *noise[] = {"/ts", "/b/7"};
    struct endpoint_ack acks[] = {{"/a", "json", "GET /", NULL}};
    assert_int_equal(replay_compare(&rules, &l, &n, noise, 2, acks, 1, "GET /", &v), 0);
    assert_int_equal(v.outcome, REPLAY_EQUAL);
    assert_int_equal(v.n_noise, 2);
    assert_int_equal(v.n_acked, 1);
    /* An acknowledgement for another endpoint does not apply. */
    assert_int_equal(replay_compare(&rules, &l, &n, noise, 2, acks, 1, "GET /other", &v), 0);
    assert_int_equal(v.outcome, REPLAY_DIVERGING);
    assert_int_equal(v.n_items, 1);
    assert_int_equal(v.items[0].kind, DIFF_JSON);
    assert_string_equal(v.items[0].path, "/a");
    /* A failed side is an error, whatever the acknowledgements. */
    struct diff_response failed = {0};
    failed.error = "timeout";
    assert_int_equal(replay_compare(&rules, &l, &failed, NULL, 0, NULL, 0, "GET /", &v), 0);
    assert_int_equal(v.outcome, REPLAY_ERROR);
}

static void test_summary(void **state)
{
    (void)state;
    struct replay_summary *s = replay_summary_new();
    assert_non_null(s);
    assert_int_equal(replay_summary_exit_code(s), 0);
    replay_summary_add(s, "r", "GET /b", REPLAY_EQUAL);
    replay_summary_add(s, "r", "GET /a", REPLAY_EQUAL);
    replay_summary_add(s, "r", "POST /a", REPLAY_SKIPPED);
    assert_int_equal(replay_summary_exit_code(s), 0); /* skipped writes do not fail */
    replay_summary_add(s, "r", "GET /b", REPLAY_DIVERGING);
    assert_int_equal(replay_summary_exit_code(s), 1);
    replay_summary_add(s, "r", "GET /c", REPLAY_ERROR);
    assert_int_equal(replay_summary_count(s, REPLAY_EQUAL), 2);
    struct buf out = {0};
    assert_int_equal(replay_summary_write(s, &out), 0);
    const char *a = strstr(out.data, "equal      r                GET /a");
    const char *b = strstr(out.data, "diverging  r                GET /b");
    const char *c = strstr(out.data, "error      r                GET /c");
    const char *p = strstr(out.data, "skipped    r                POST /a");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_non_null(p);
    assert_true(a < b && b < c && c < p);
    assert_non_null(strstr(out.data, "total: 2 equal, 1 diverging, 1 error, 1 skipped"));
    buf_dispose(&out);
    replay_summary_free(s);
    replay_summary_free(NULL);

    /* Bounded: past REPLAY_ENDPOINTS_MAX the rest count as "other". */
    s = replay_summary_new();
    char name[32];
    for (int i = 0; i < REPLAY_ENDPOINTS_MAX + 5; i++) {
        snprintf(name, sizeof(name), "GET /%d", i);
        assert_int_equal(replay_summary_add(s, "r", name, REPLAY_EQUAL), 0);
    }
    buf_init(&out, 0);
    assert_int_equal(replay_summary_write(s, &out), 0);
    assert_non_null(strstr(out.data, " other "));
    buf_dispose(&out);
    replay_summary_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_round_trip),
        cmocka_unit_test(test_request_body_cap),
        cmocka_unit_test(test_request_body_redacted),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_endpoint_names),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_compare),
        cmocka_unit_test(test_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
