/* Unit tests for the pure HTTP/1.1 module: the raw head scanner, head
 * parsing and framing checks, the chunked decoder and the header rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ficus/common.h"
#include "ficus/http1.h"

static int scan_all(const char *s, size_t max, size_t *head_len)
{
    struct head_scan sc = {0};
    int r = http1_scan_head(&sc, s, strlen(s), max);
    *head_len = sc.pos;
    return r;
}

/* The scanner gives the same answer however the bytes are split. */
static int scan_bytewise(const char *s, size_t max)
{
    struct head_scan sc = {0};
    size_t n = strlen(s);
    for (size_t i = 1; i <= n; i++) {
        int r = http1_scan_head(&sc, s, i, max);
        if (r != 0)
            return r;
    }
    return 0;
}

static void test_scan_valid(void **state)
{
    (void)state;
    const char *req = "GET /x HTTP/1.1\r\nHost: a\r\nX-A: b c\t\r\n\r\nBODY";
    size_t len;
    assert_int_equal(scan_all(req, 65536, &len), 1);
    assert_int_equal(len, strlen(req) - 4);
    assert_int_equal(scan_bytewise("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 65536), 1);
    assert_int_equal(scan_bytewise("GET / HTTP/1.1\r\nHost: a\r\n", 65536), 0);
    /* obs-text in a value is allowed */
    assert_int_equal(scan_all("GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n", 4096, &len),
                     1);
}

static void test_scan_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "GET / HTTP/1.1\nHost: a\n\n",                     /* bare LF */
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",         /* bare CR in a value */
        "GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n",        /* \r\n\rX end of head */
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", /* obs-fold */
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",              /* space before colon */
        "GET / HTTP/1.1\r\n Host: a\r\n\r\n",              /* leading space */
        "GET / HTTP/1.1\r\nX(A): a\r\n\r\n",               /* non-token name */
        "GET / HTTP/1.1\r\n: a\r\n\r\n",                   /* empty name */
        "GET / HTTP/1.1\r\nX: \x0b\r\n\r\n",               /* vertical tab */
        "GET / HTTP/1.1\r\nX: \x7f\r\n\r\n",               /* DEL */
        "GET /\t HTTP/1.1\r\nHost: a\r\n\r\n",             /* tab in the request line */
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        assert_int_equal(scan_bytewise(bad[i], 65536), FICUS_EBADREQ);
    }
    /* NUL cannot go through strlen: scan it explicitly. */
    const char nul[] = "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n";
    struct head_scan sc = {0};
    assert_int_equal(http1_scan_head(&sc, nul, sizeof(nul) - 1, 4096), FICUS_EBADREQ);
}

/* scan_bytewise for n bytes that may hold NUL. */
static int scan_bytewise_n(const char *s, size_t n, size_t max, size_t *head_len)
{
    struct head_scan sc = {0};
    int r = 0;
    for (size_t i = 1; i <= n && r == 0; i++)
        r = http1_scan_head(&sc, s, i, max);
    *head_len = sc.pos;
    return r;
}

static int scan_once_n(const char *s, size_t n, size_t max, size_t *head_len)
{
    struct head_scan sc = {0};
    int r = http1_scan_head(&sc, s, n, max);
    *head_len = sc.pos;
    return r;
}

/* The scanner passes over runs of plain bytes a word at a time when it has
 * them whole: every byte value at every place of a word, in the start line
 * and in a value, is judged as it is byte by byte, and so is every random
 * head (the byte-by-byte scan never has eight bytes ahead of it). */
static void test_scan_words(void **state)
{
    (void)state;
    char head[128];
    for (int part = 0; part < 2; part++) {
        for (int c = 0; c < 256; c++) {
            for (size_t k = 0; k < 20; k++) {
                char run[24];
                memset(run, 'a', sizeof(run));
                run[k] = (char)c;
                int n = 0; /* built by hand: the run may hold NUL */
                const char *pre = part == 0 ? "GET /" : "GET / HTTP/1.1\r\nX: ";
                const char *post = part == 0 ? " HTTP/1.1\r\nX: v\r\n\r\n" : "\r\n\r\n";
                memcpy(head + n, pre, strlen(pre));
                n += (int)strlen(pre);
                memcpy(head + n, run, sizeof(run));
                n += (int)sizeof(run);
                memcpy(head + n, post, strlen(post));
                n += (int)strlen(post);
                size_t len_once, len_bytes;
                int once = scan_once_n(head, (size_t)n, 4096, &len_once);
                int bytes = scan_bytewise_n(head, (size_t)n, 4096, &len_bytes);
                bool ok = c >= 0x20 ? c != 0x7f : part == 1 && c == '\t';
                if (once != bytes || (once == 1) != ok || (once == 1 && len_once != len_bytes))
                    fail_msg("byte 0x%02x at %zu of the %s: %d at once, %d byte by byte", c, k,
                             part == 0 ? "start line" : "value", once, bytes);
            }
        }
    }
    /* Random heads over an alphabet rich in what the scanner looks at. */
    static const char alphabet[] = "aZ09:;- \t\r\n\x00\x01\x1f\x7f\x80\xff/(";
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    for (int t = 0; t < 20000; t++) {
        size_t n = 19 + (size_t)(xorshift64s(&rng) % 100);
        memcpy(head, "GET / HTTP/1.1\r\nX: ", 19);
        for (size_t i = 19; i < n; i++) {
            uint64_t r = xorshift64s(&rng);
            /* Mostly plain bytes, so that words of them occur. */
            head[i] =
                r % 16 != 0 ? (char)('a' + r / 16 % 26) : alphabet[r / 16 % (sizeof(alphabet) - 1)];
        }
        size_t len_once, len_bytes;
        int once = scan_once_n(head, n, 4096, &len_once);
        int bytes = scan_bytewise_n(head, n, 4096, &len_bytes);
        if (once != bytes || (once == 1 && len_once != len_bytes))
            fail_msg("random head %d: %d at once, %d byte by byte", t, once, bytes);
    }
}

static void test_scan_limit(void **state)
{
    (void)state;
    char big[300];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    big[sizeof(big) - 1] = '\0';
    size_t len;
    assert_int_equal(scan_all(big, 100, &len), FICUS_EHEADTOOBIG);
    assert_int_equal(scan_all(big, 1000, &len), 0);
}

static int parse_req(struct http_head *h, const char *s)
{
    size_t len;
    if (scan_all(s, 65536, &len) != 1)
        return -1;
    return http1_parse_head(h, s, len, true);
}

static void test_parse_request(void **state)
{
    (void)state;
    struct http_head *h = malloc(sizeof(*h));
    assert_non_null(h);
    assert_int_equal(parse_req(h, "POST /a/b?x=1&y=2 HTTP/1.1\r\nHost: Shop.Example:80\r\n"
                                  "Content-Length: 12\r\nExpect: 100-continue\r\n\r\n"),
                     0);
    assert_true(span_eq(h->method, "POST"));
    assert_true(span_eq(h->target, "/a/b?x=1&y=2"));
    assert_true(span_eq(h->path, "/a/b"));
    assert_true(span_eq(h->query, "x=1&y=2"));
    assert_true(span_eq(h->host, "Shop.Example:80"));
    assert_int_equal(h->content_length, 12);
    assert_false(h->chunked);
    assert_true(h->keep_alive);
    assert_true(h->expect_continue);
    assert_int_equal(h->version_minor, 1);
    assert_non_null(http1_find(h, "content-LENGTH"));
    assert_null(http1_find(h, "cookie"));

    /* The same struct reused: no field of the previous head survives. */
    assert_int_equal(parse_req(h, "HEAD / HTTP/1.0\r\n\r\n"), 0);
    assert_true(h->is_head);
    assert_false(h->expect_continue);
    assert_false(h->keep_alive);
    assert_int_equal(h->content_length, -1);
    assert_int_equal(parse_req(h, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    assert_true(h->keep_alive);
    assert_int_equal(parse_req(h, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), 0);
    assert_false(h->keep_alive);
    assert_int_equal(parse_req(h, "GET http://a.example/p?q HTTP/1.1\r\nHost: a.example\r\n\r\n"),
                     0);
    assert_true(span_eq(h->path, "/p"));
    assert_true(span_eq(h->query, "q"));
    free(h);
}

static void test_parse_request_framing_errors(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: cow\r\n\r\n",
        "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
        "GET / HTTX/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "GET nopath HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    struct http_head *h = malloc(sizeof(*h));
    assert_non_null(h);
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        if (parse_req(h, bad[i]) == 0)
            fail_msg("accepted: %s", bad[i]);
    }
    free(h);
}

static void test_parse_response(void **state)
{
    (void)state;
    struct http_head *h = malloc(sizeof(*h));
    assert_non_null(h);
    const char *r = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(http1_parse_head(h, r, strlen(r), false), 0);
    assert_int_equal(h->status, 404);
    assert_true(span_eq(h->reason, "Not Found"));
    assert_true(h->chunked);
    const char *amb = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(http1_parse_head(h, amb, strlen(amb), false), FICUS_EBADRESP);
    assert_true(http1_response_has_body(false, 200));
    assert_false(http1_response_has_body(true, 200));
    assert_false(http1_response_has_body(false, 204));
    assert_false(http1_response_has_body(false, 304));
    assert_false(http1_response_has_body(false, 101));
    free(h);
}

/* Decodes a whole chunked body fed in pieces of step bytes. Returns the body
 * length, or -1 for a framing error. */
static long decode_chunked(const char *in, size_t len, size_t step, char *out, size_t *rest)
{
    struct chunked c = {0};
    size_t off = 0, olen = 0;
    bool done = false;
    while (off < len && !done) {
        size_t n = len - off < step ? len - off : step;
        size_t used = 0;
        while (used < n && !done) {
            size_t doff, dlen;
            int64_t r = http1_chunked_step(&c, in + off + used, n - used, &doff, &dlen, &done);
            if (r < 0)
                return -1;
            memcpy(out + olen, in + off + used + doff, dlen);
            olen += dlen;
            used += (size_t)r;
            if (r == 0)
                break;
        }
        off += used;
    }
    *rest = len - off;
    return done ? (long)olen : -2;
}

static void test_chunked(void **state)
{
    (void)state;
    const char *body = "3\r\nabc\r\n5;ext=1;q=\"x\"\r\nhello\r\n0\r\nTrailer: t\r\n\r\nNEXT";
    char out[64];
    size_t rest;
    for (size_t step = 1; step <= strlen(body); step++) {
        assert_int_equal(decode_chunked(body, strlen(body), step, out, &rest), 8);
        assert_memory_equal(out, "abchello", 8);
        assert_int_equal(rest, 4); /* the next message is left alone */
    }
    static const char *const bad[] = {
        "zz\r\nabc\r\n0\r\n\r\n",
        "FFFFFFFFFFFFFFFFF1\r\nabc\r\n0\r\n\r\n",
        "3 \r\nabc\r\n0\r\n\r\n",
        "3\r\nabcX0\r\n\r\n",
        "3\nabc\n0\n\n",
        "-3\r\nabc\r\n0\r\n\r\n",
        "\r\n",
        "0\r\n\rX",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        if (decode_chunked(bad[i], strlen(bad[i]), 1, out, &rest) != -1)
            fail_msg("accepted chunked body %zu", i);
    }
}

static void test_body_length(void **state)
{
    (void)state;
    struct body_framer f;
    http1_body_init(&f, BODY_LENGTH, 5);
    size_t off, len;
    assert_int_equal(http1_body_step(&f, "abc", 3, &off, &len), 3);
    assert_int_equal(len, 3);
    assert_false(f.done);
    assert_int_equal(http1_body_step(&f, "deNEXT", 6, &off, &len), 2);
    assert_true(f.done);
    http1_body_init(&f, BODY_LENGTH, 0);
    assert_true(f.done);
    http1_body_init(&f, BODY_NONE, 0);
    assert_true(f.done);
}

static void test_request_head_rules(void **state)
{
    (void)state;
    struct http_head *h = malloc(sizeof(*h));
    assert_non_null(h);
    assert_int_equal(parse_req(h, "GET /p HTTP/1.1\r\nHost: shop\r\n"
                                  "Connection: keep-alive, X-Forwarded-For, X-Secret\r\n"
                                  "X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\n"
                                  "Proxy-Connection: x\r\nX-Forwarded-For: 10.0.0.1\r\n"
                                  "X-Ficus-Backend: new\r\nX-Ficus-Shadow: 1\r\nVia: 1.0 edge\r\n"
                                  "X-Request-Id: abc\r\nAccept: */*\r\n\r\n"),
                     0);
    struct forward_info fi = {
        .client_ip = SPAN_LIT("127.0.0.9"),
        .request_id = SPAN_LIT("rid-1"),
        .drop = SPAN_LIT("x-ficus-backend"),
        .content_length = -2,
    };
    struct buf out;
    buf_init(&out, 0);
    assert_int_equal(http1_write_request_head(&out, h, &fi), 0);
    const char *s = out.data;
    assert_non_null(strstr(s, "GET /p HTTP/1.1\r\n"));
    assert_non_null(strstr(s, "Host: shop\r\n"));
    assert_non_null(strstr(s, "Accept: */*\r\n"));
    /* Connection cannot strip ficus's own forwarding headers. */
    assert_non_null(strstr(s, "x-forwarded-for: 127.0.0.9\r\n"));
    assert_non_null(strstr(s, "x-forwarded-proto: http\r\n"));
    assert_non_null(strstr(s, "x-forwarded-host: shop\r\n"));
    assert_non_null(strstr(s, "via: 1.0 edge, 1.1 ficus\r\n"));
    assert_non_null(strstr(s, "x-request-id: rid-1\r\n"));
    static const char *const gone[] = {
        "Connection:",      "X-Secret",         "Keep-Alive",     "TE:",      "Upgrade",
        "Proxy-Connection", "X-Ficus-Backend",  "X-Ficus-Shadow", "10.0.0.1", "abc",
        "content-length",   "transfer-encoding"};
    for (size_t i = 0; i < ARRAY_SIZE(gone); i++) {
        if (strstr(s, gone[i]) != NULL)
            fail_msg("forwarded %s in:\n%s", gone[i], s);
    }
    /* A shadow with a chunked body. */
    buf_reset(&out);
    fi.shadow = true;
    fi.content_length = -1;
    assert_int_equal(http1_write_request_head(&out, h, &fi), 0);
    assert_non_null(strstr(out.data, "transfer-encoding: chunked\r\n"));
    assert_non_null(strstr(out.data, "x-ficus-shadow: 1\r\n"));
    buf_dispose(&out);
    free(h);
}

static void test_response_head_rules(void **state)
{
    (void)state;
    struct http_head *h = malloc(sizeof(*h));
    assert_non_null(h);
    const char *r = "HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nConnection: X-Drop\r\nX-Drop: 1\r\n"
                    "Transfer-Encoding: chunked\r\nKeep-Alive: 3\r\n\r\n";
    assert_int_equal(http1_parse_head(h, r, strlen(r), false), 0);
    struct buf out;
    buf_init(&out, 0);
    assert_int_equal(http1_write_response_head(&out, h, 42, false), 0);
    assert_non_null(strstr(out.data, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(out.data, "content-length: 42\r\n"));
    assert_non_null(strstr(out.data, "connection: close\r\n"));
    assert_null(strstr(out.data, "X-Drop"));
    assert_null(strstr(out.data, "Transfer-Encoding"));
    assert_null(strstr(out.data, "Keep-Alive"));
    buf_reset(&out);
    assert_int_equal(http1_write_error(&out, 404, "no route", true), 0);
    assert_non_null(strstr(out.data, "HTTP/1.1 404 Not Found\r\n"));
    assert_non_null(strstr(out.data, "\r\n\r\n{\"error\":\"no route\"}\n"));
    assert_null(strstr(out.data, "connection: close"));
    buf_dispose(&out);
    free(h);
}

/* Host values (RFC 9112 3.2 with RFC 3986's host and port), the request line's
 * spaces, the target's form and header names that fold into framing ones. */
static void test_strict_edges(void **state)
{
    (void)state;
    static const char *const good_hosts[] = {
        "a",
        "shop.example",
        "Shop.Example:8080",
        "a:1",
        "a:65535",
        "127.0.0.1",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8443",
        "[2001:db8::7]",
        "[::ffff:10.0.0.1]",
        "[v1.fe:x]",
        "xn--caf-dma.example",
        "a-b_c~d",
        "a%20b",
        "!$&'()*+,;=",
    };
    static const char *const bad_hosts[] = {
        "a b",
        "evil@a",
        "a/../admin",
        "a/",
        "a?x",
        "a#x",
        "a:",
        "a:b",
        "a:123456",
        "a:65536",
        "a:1:2",
        ":80",
        "[::1",
        "::1",
        "[::1]x",
        "[::1]:",
        "[fe80::1%25eth0]",
        "[1.2.3.4]",
        "[v1]",
        "[v.x]",
        "[]",
        "a%2",
        "a%zz",
        "a\"b",
        "a\\b",
        "caf\xc3\xa9",
        "a<b>",
        "a{b}",
        "a\tb",
    };
    struct http_head *h = malloc(sizeof(*h));
    char req[256];
    assert_non_null(h);
    for (size_t i = 0; i < ARRAY_SIZE(good_hosts); i++) {
        snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", good_hosts[i]);
        if (parse_req(h, req) != 0)
            fail_msg("refused Host: %s", good_hosts[i]);
        assert_true(span_eq(h->host, good_hosts[i]));
    }
    for (size_t i = 0; i < ARRAY_SIZE(bad_hosts); i++) {
        snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad_hosts[i]);
        if (parse_req(h, req) != FICUS_EBADREQ)
            fail_msg("accepted Host: %s", bad_hosts[i]);
    }
    /* Every byte inside a reg-name: taken exactly when RFC 3986 names it
     * (unreserved or sub-delims; '%' only as "%HH", ':' only before a port). */
    for (int c = 1; c < 256; c++) {
        bool rfc = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   strchr("-._~!$&'()*+,;=", c) != NULL;
        snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: a%cb\r\n\r\n", c);
        if ((parse_req(h, req) == 0) != rfc)
            fail_msg("Host byte 0x%02x %s", c, rfc ? "refused" : "accepted");
    }
    /* An empty Host names nothing a reverse proxy could route. */
    assert_int_equal(parse_req(h, "GET / HTTP/1.1\r\nHost:\r\n\r\n"), FICUS_EBADREQ);
    assert_int_equal(parse_req(h, "GET / HTTP/1.0\r\nHost: \r\n\r\n"), FICUS_EBADREQ);

    static const char *const bad[] = {
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n",
        "OPTIONS ** HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET *.html HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a?q=1# HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/b#c HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET  /a HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a  HTTP/1.1\r\nHost: a\r\n\r\n",
        " GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a HTTP/1.1 \r\nHost: a\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a HTTP/1.1  \r\nHost: a\r\n\r\n",
        "GET\r\nHost: a\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\ntransfer_encoding: chunked\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nTRANSFER_ENCODING: chunked\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding_: x\r\nTransfer_Encoding: x\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent_Length: 5\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: a\r\ncontent_length: 3\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent_length: 3\r\n\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        int rc = parse_req(h, bad[i]);
        if (rc != FICUS_EBADREQ)
            fail_msg("got %d, not a refusal, for: %s", rc, bad[i]);
    }
    static const char *const good[] = {
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a%23b HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nContent_Length_: 3\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nTransfer_Encodings: x\r\n\r\n",
        "GET /a HTTP/1.0\r\n\r\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        if (parse_req(h, good[i]) != 0)
            fail_msg("refused: %s", good[i]);
    }
    assert_int_equal(parse_req(h, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
    assert_true(span_eq(h->method, "OPTIONS"));
    assert_true(span_eq(h->path, "*"));

    /* A backend's response is held to the same framing rule (502 then). */
    const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer_Encoding: chunked\r\n\r\n";
    assert_int_equal(http1_parse_head(h, r, strlen(r), false), FICUS_EBADRESP);
    free(h);
}

/* An HTTP/1.0 request without Host goes upstream as HTTP/1.1 with the
 * backend's host; a request with a Host keeps it. */
static void test_default_host(void **state)
{
    (void)state;
    struct http_head *h = malloc(sizeof(*h));
    assert_non_null(h);
    struct forward_info fi = {
        .client_ip = SPAN_LIT("127.0.0.9"),
        .content_length = 3,
        .default_host = SPAN_LIT("legacy.internal"),
        .default_port = 8080,
    };
    struct buf out;
    buf_init(&out, 0);
    assert_int_equal(parse_req(h, "POST /echo HTTP/1.0\r\nContent-Length: 3\r\n\r\n"), 0);
    assert_int_equal(http1_write_request_head(&out, h, &fi), 0);
    assert_true(strncmp(out.data, "POST /echo HTTP/1.1\r\nhost: legacy.internal:8080\r\n",
                        strlen("POST /echo HTTP/1.1\r\nhost: legacy.internal:8080\r\n")) == 0);
    assert_null(strstr(out.data, "x-forwarded-host"));

    /* Default port left out, IPv6 in brackets. */
    buf_reset(&out);
    fi.default_host = SPAN_LIT("::1");
    fi.default_port = 0;
    assert_int_equal(http1_write_request_head(&out, h, &fi), 0);
    assert_non_null(strstr(out.data, "\r\nhost: [::1]\r\n"));

    /* The client's Host wins; nothing is added. */
    buf_reset(&out);
    assert_int_equal(parse_req(h, "GET / HTTP/1.0\r\nHost: shop:81\r\n\r\n"), 0);
    assert_int_equal(http1_write_request_head(&out, h, &fi), 0);
    assert_non_null(strstr(out.data, "\r\nHost: shop:81\r\n"));
    assert_null(strstr(out.data, "[::1]"));
    assert_non_null(strstr(out.data, "x-forwarded-host: shop:81\r\n"));

    /* Without a default, nothing is invented. */
    buf_reset(&out);
    fi.default_host = (struct span){NULL, 0};
    assert_int_equal(parse_req(h, "GET / HTTP/1.0\r\n\r\n"), 0);
    assert_int_equal(http1_write_request_head(&out, h, &fi), 0);
    assert_null(strcasestr(out.data, "host:"));
    buf_dispose(&out);
    free(h);
}

/* 204 and 304 (and 1xx) never carry a length or a body coding to the client,
 * whatever the backend sent and whatever length the caller passes; a HEAD
 * answer keeps the backend's Content-Length. */
static void test_no_content_responses(void **state)
{
    (void)state;
    struct http_head *h = malloc(sizeof(*h));
    assert_non_null(h);
    static const char *const heads[] = {
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\nETag: \"e\"\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nContent-Length: 1\r\n\r\n",
    };
    static const int64_t lengths[] = {-2, -1, 0, 5};
    struct buf out;
    buf_init(&out, 0);
    for (size_t i = 0; i < ARRAY_SIZE(heads); i++) {
        assert_int_equal(http1_parse_head(h, heads[i], strlen(heads[i]), false), 0);
        for (size_t k = 0; k < ARRAY_SIZE(lengths); k++) {
            buf_reset(&out);
            assert_int_equal(http1_write_response_head(&out, h, lengths[k], true), 0);
            if (strcasestr(out.data, "content-length") != NULL ||
                strcasestr(out.data, "transfer-encoding") != NULL)
                fail_msg("head %zu, length %lld:\n%s", i, (long long)lengths[k], out.data);
            /* The head ends the message: nothing after the blank line. */
            assert_non_null(strstr(out.data, "\r\n\r\n"));
            assert_int_equal(strstr(out.data, "\r\n\r\n") + 4 - out.data, out.len);
        }
    }
    assert_non_null(strstr(out.data, "HTTP/1.1 101 Switching Protocols\r\n"));
    const char *head_ok = "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n";
    assert_int_equal(http1_parse_head(h, head_ok, strlen(head_ok), false), 0);
    buf_reset(&out);
    assert_int_equal(http1_write_response_head(&out, h, -2, true), 0);
    assert_non_null(strstr(out.data, "Content-Length: 42\r\n"));
    buf_dispose(&out);
    free(h);
}

/* Access-log fields: quotes, backslashes, controls and non-ASCII bytes are
 * escaped, and the output never ends inside an escape. */
static void test_log_escape(void **state)
{
    (void)state;
    char out[64];
    const char in[] = "/a\"b\\c\r\nd\x01\x7f\xc3\xa9 e\0f";
    size_t w = http1_log_escape(out, sizeof(out), (struct span){in, sizeof(in) - 1});
    assert_int_equal(w, strlen(out));
    assert_string_equal(out, "/a\\\"b\\\\c\\x0d\\x0ad\\x01\\x7f\\xc3\\xa9 e\\x00f");
    assert_int_equal(http1_log_escape(out, sizeof(out), SPAN_LIT("/plain?x=1&y=2")), 14);
    assert_string_equal(out, "/plain?x=1&y=2");
    /* Room for "ab" and not for the whole "\x01": stops before it. */
    assert_int_equal(http1_log_escape(out, 6, SPAN_LIT("ab\x01z")), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(http1_log_escape(out, 7, SPAN_LIT("ab\x01z")), 6);
    assert_string_equal(out, "ab\\x01");
    assert_int_equal(http1_log_escape(out, 1, SPAN_LIT("abc")), 0);
    assert_string_equal(out, "");
    /* Whatever the input, the output is printable ASCII without a bare quote. */
    uint64_t seed = 77;
    for (int iter = 0; iter < 20000; iter++) {
        char raw[24];
        size_t n = (size_t)(xorshift64s(&seed) % sizeof(raw));
        for (size_t i = 0; i < n; i++)
            raw[i] = (char)xorshift64s(&seed);
        size_t cap = 1 + (size_t)(xorshift64s(&seed) % sizeof(out));
        w = http1_log_escape(out, cap, (struct span){raw, n});
        assert_true(w < cap);
        assert_int_equal(strlen(out), w);
        for (size_t i = 0; i < w; i++) {
            unsigned char c = (unsigned char)out[i];
            assert_true(c >= 0x20 && c < 0x7f);
            if (c == '"')
                assert_true(i > 0 && out[i - 1] == '\\');
        }
    }
}

/* ---- the scanner against a byte-at-a-time model ------------------------------------- */

/* The scanner skips runs of ordinary bytes in tight loops. This is the plain
 * state machine it must behave exactly like: one byte, one step. */
enum { SC_START_LINE, SC_LINE_START, SC_NAME, SC_VALUE, SC_CR, SC_END_CR };

struct ref_scan {
    size_t pos;
    unsigned state;
    unsigned line;
    size_t name_len;
};

static bool ref_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool ref_field_byte(unsigned char c)
{
    return c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7f);
}

static int ref_scan(struct ref_scan *s, const char *data, size_t len, size_t max)
{
    for (size_t i = s->pos; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if (i >= max)
            return FICUS_EHEADTOOBIG;
        switch (s->state) {
        case SC_START_LINE:
            if (c == '\r')
                s->state = SC_CR;
            else if (!ref_field_byte(c) || c == '\t')
                return FICUS_EBADREQ; /* bare LF, NUL, tabs and controls */
            break;
        case SC_CR:
            if (c != '\n')
                return FICUS_EBADREQ; /* bare CR */
            s->line++;
            s->state = SC_LINE_START;
            break;
        case SC_LINE_START:
            if (c == '\r') {
                s->state = SC_END_CR;
            } else if (ref_tchar(c)) {
                s->name_len = 1;
                s->state = SC_NAME;
            } else {
                return FICUS_EBADREQ; /* obs-fold, empty name, bare LF, bad byte */
            }
            break;
        case SC_NAME:
            if (c == ':')
                s->state = SC_VALUE;
            else if (ref_tchar(c))
                s->name_len++;
            else
                return FICUS_EBADREQ; /* whitespace before colon, bad name byte */
            break;
        case SC_VALUE:
            if (c == '\r')
                s->state = SC_CR;
            else if (!ref_field_byte(c))
                return FICUS_EBADREQ;
            break;
        case SC_END_CR:
            if (c != '\n')
                return FICUS_EBADREQ; /* "\r\n\rX" */
            s->pos = i + 1;
            return 1;
        default:
            return FICUS_EBADREQ;
        }
    }
    s->pos = len;
    if (len >= max)
        return FICUS_EHEADTOOBIG;
    return 0;
}

/* Random heads from a small alphabet that reaches every state and every
 * error, fed in random pieces: same verdict, and short of an error the same
 * position and line count. */
static void test_scan_matches_bytewise_model(void **state)
{
    (void)state;
    static const char *const parts[] = {
        "GET / HTTP/1.1", "\r\n",     "Host: a", "X-Y: b c", "\r", "\n",     ":",       " ", "\t",
        "\x7f",           "\xc3\xa9", "\x01",    "Name",     "(",  "v\x00v", "\r\n\r\n"};
    uint64_t seed = 4242;
    char text[256];
    for (int iter = 0; iter < 100000; iter++) {
        size_t n = 0;
        int pieces = 1 + (int)(xorshift64s(&seed) % 12);
        for (int k = 0; k < pieces; k++) {
            uint64_t r = xorshift64s(&seed);
            const char *p = parts[r % ARRAY_SIZE(parts)];
            size_t pl = (r % ARRAY_SIZE(parts)) == 14 ? 3 : strlen(p);
            if (n + pl >= sizeof text)
                break;
            memcpy(text + n, p, pl);
            n += pl;
        }
        size_t max = 8 + (size_t)(xorshift64s(&seed) % 120);
        struct head_scan a = {0};
        struct ref_scan b = {0};
        int ra = 0, rb = 0;
        size_t fed = 0;
        while (fed < n && ra == 0) {
            fed += 1 + (size_t)(xorshift64s(&seed) % 9);
            if (fed > n)
                fed = n;
            ra = http1_scan_head(&a, text, fed, max);
            rb = ref_scan(&b, text, fed, max);
            assert_int_equal(ra, rb);
            if (ra < 0)
                break; /* the position after an error means nothing */
            assert_int_equal(a.pos, b.pos);
            assert_int_equal(a.line, b.line);
        }
        if (ra == 1)
            assert_int_equal(a.name_len, b.name_len);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_valid),
        cmocka_unit_test(test_scan_rejects),
        cmocka_unit_test(test_scan_words),
        cmocka_unit_test(test_scan_limit),
        cmocka_unit_test(test_scan_matches_bytewise_model),
        cmocka_unit_test(test_parse_request),
        cmocka_unit_test(test_parse_request_framing_errors),
        cmocka_unit_test(test_parse_response),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_body_length),
        cmocka_unit_test(test_request_head_rules),
        cmocka_unit_test(test_response_head_rules),
        cmocka_unit_test(test_strict_edges),
        cmocka_unit_test(test_default_host),
        cmocka_unit_test(test_no_content_responses),
        cmocka_unit_test(test_log_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
