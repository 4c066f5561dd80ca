/* libFuzzer target: the HTTP/1.1 head scanner, the head parser, the heads
 * ficus writes and the body framer, for requests and responses.
 *
 * Input: one mode byte, then the message. Mode bit 0: a request (else a
 * response); bit 1: the response answers a HEAD; bits 2-7: the size of the
 * pieces the bytes arrive in, 1 to 64.
 *
 * Checked beyond "no crash, no leak, no undefined behaviour":
 * - the scanner gives the same verdict and head length however the bytes are
 *   split;
 * - a parsed head's spans lie inside the head and its framing is one of none,
 *   a length or chunked;
 * - the head ficus writes for the other side (a request upstream, a response
 *   to the client) is scanned and parsed back by ficus itself into the same
 *   method, target, host, status and framing;
 * - the body framer reads the bytes after the head the same way however they
 *   are split: same verdict, same body bytes, same bytes consumed. */
#include "fuzz.h"

#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/http1.h"

#include <stdbool.h>
#include <string.h>

/* The head limit: small, so that inputs reach both sides of it. */
#define FUZZ_HEAD_MAX 2048

static bool span_same(struct span a, struct span b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static bool inside(struct span s, const char *p, size_t len)
{
    return s.len == 0 || (s.p >= p && s.p + s.len <= p + len);
}

/* Scans len bytes delivered step at a time. Returns the scanner's verdict and
 * sets *pos. */
static int scan_pieces(const char *p, size_t len, size_t step, size_t max, size_t *pos)
{
    struct head_scan sc = {0};
    int r = 0;
    for (size_t fed = 0; fed < len && r == 0;) {
        fed = fed + step < len ? fed + step : len;
        r = http1_scan_head(&sc, p, fed, max);
    }
    *pos = sc.pos;
    return r;
}

/* Scans and parses a head that ficus wrote; it must be one whole valid head. */
static struct http_head *reparse(const struct buf *out, bool is_request)
{
    size_t pos = 0;
    FUZZ_CHECK(scan_pieces(out->data, out->len, out->len, out->len + 1, &pos) == 1);
    FUZZ_CHECK(pos == out->len);
    struct http_head *r = malloc(sizeof(*r));
    FUZZ_CHECK(r != NULL);
    int rc = http1_parse_head(r, out->data, out->len, is_request);
    if (rc != 0) {
        fprintf(stderr, "ficus refuses the head it wrote:\n%.*s\n", (int)out->len, out->data);
        abort();
    }
    return r;
}

/* The request head as it goes upstream, read back. */
static void check_request_rewrite(const struct http_head *h)
{
    /* ficus adds up to seven headers; past the parser's table the backend,
     * not ficus, is the one to read them. */
    if (h->n_headers + 8 > HTTP_MAX_HEADERS)
        return;
    /* The framing conn.c gives the forwarded request. */
    int64_t cl = h->chunked               ? -1
                 : h->content_length > 0  ? h->content_length
                 : h->content_length == 0 ? 0
                                          : -2;
    struct forward_info fi = {
        .client_ip = SPAN_LIT("10.0.0.1"),
        .request_id = SPAN_LIT("fuzz-1"),
        .drop = SPAN_LIT("x-ficus-backend"),
        .content_length = cl,
        .default_host = SPAN_LIT("backend.internal"),
        .default_port = 8080,
    };
    struct buf out;
    buf_init(&out, 0);
    FUZZ_CHECK(http1_write_request_head(&out, h, &fi) == 0);
    struct http_head *r = reparse(&out, true);
    FUZZ_CHECK(span_same(r->method, h->method));
    FUZZ_CHECK(span_same(r->path, h->path));
    FUZZ_CHECK(span_same(r->query, h->query));
    FUZZ_CHECK(span_same(r->host, h->host.p != NULL ? h->host : SPAN_LIT("backend.internal:8080")));
    FUZZ_CHECK(r->version_minor == 1 && r->keep_alive && !r->expect_continue);
    FUZZ_CHECK(r->chunked == (cl == -1));
    FUZZ_CHECK(r->content_length == (cl >= 0 ? cl : -1));
    FUZZ_CHECK(http1_find(r, "x-ficus-backend") == NULL);
    free(r);
    buf_dispose(&out);
}

/* The response head as it goes to the client, read back. */
static void check_response_rewrite(const struct http_head *h, bool request_was_head)
{
    if (h->n_headers + 3 > HTTP_MAX_HEADERS)
        return;
    bool has_body = http1_response_has_body(request_was_head, h->status);
    int64_t cl = !has_body ? -2 : h->chunked ? -1 : h->content_length >= 0 ? h->content_length : -1;
    bool no_content = h->status / 100 == 1 || h->status == 204 || h->status == 304;
    for (int keep = 0; keep < 2; keep++) {
        struct buf out;
        buf_init(&out, 0);
        FUZZ_CHECK(http1_write_response_head(&out, h, cl, keep) == 0);
        struct http_head *r = reparse(&out, false);
        FUZZ_CHECK(r->status == h->status);
        if (h->status == 101 && h->upgrade.len > 0) {
            /* A switch to another protocol: the 101 says which, and the
             * connection is a tunnel from then on (no keep-alive to speak of). */
            FUZZ_CHECK(span_same(r->upgrade, h->upgrade));
        } else {
            FUZZ_CHECK(r->keep_alive == (keep != 0));
            FUZZ_CHECK(r->upgrade.len == 0);
        }
        if (no_content) {
            FUZZ_CHECK(r->content_length == -1 && !r->chunked);
        } else if (!has_body) {
            /* The answer to a HEAD keeps the length of the resource. */
            FUZZ_CHECK(r->content_length == h->content_length && !r->chunked);
        } else {
            FUZZ_CHECK(r->chunked == (cl == -1));
            FUZZ_CHECK(r->content_length == (cl >= 0 ? cl : -1));
        }
        free(r);
        buf_dispose(&out);
    }
}

struct framed {
    int err;
    bool done;
    size_t consumed;
    size_t body_len;
    uint64_t body_hash;
};

/* Runs a body framer over len bytes delivered step at a time. */
static struct framed frame(enum body_kind kind, uint64_t length, const char *p, size_t len,
                           size_t step)
{
    struct framed res = {.body_hash = 1469598103934665603ULL};
    struct body_framer f;
    http1_body_init(&f, kind, length);
    size_t off = 0;
    while (off < len && !f.done) {
        size_t piece_end = off + step < len ? off + step : len;
        while (off < piece_end && !f.done) {
            size_t o = 0, l = 0;
            int64_t n = http1_body_step(&f, p + off, piece_end - off, &o, &l);
            if (n < 0) {
                res.err = (int)n;
                return res;
            }
            /* Progress until the body ends: a framer that takes nothing
             * would stall the connection. */
            FUZZ_CHECK(n > 0 || f.done);
            FUZZ_CHECK((size_t)n <= piece_end - off);
            FUZZ_CHECK(l == 0 || o + l <= (size_t)n);
            for (size_t i = 0; i < l; i++)
                res.body_hash = (res.body_hash ^ (unsigned char)p[off + o + i]) * 1099511628211ULL;
            res.body_len += l;
            off += (size_t)n;
        }
    }
    res.done = f.done;
    res.consumed = off;
    return res;
}

static void check_body(const struct http_head *h, bool is_request, bool request_was_head,
                       const char *p, size_t len, size_t step)
{
    enum body_kind kind;
    uint64_t length = h->content_length > 0 ? (uint64_t)h->content_length : 0;
    if (is_request)
        kind = h->chunked ? BODY_CHUNKED : h->content_length > 0 ? BODY_LENGTH : BODY_NONE;
    else if (!http1_response_has_body(request_was_head, h->status))
        kind = BODY_NONE;
    else
        kind = h->chunked ? BODY_CHUNKED : h->content_length >= 0 ? BODY_LENGTH : BODY_EOF;
    struct framed whole = frame(kind, length, p, len, len ? len : 1);
    struct framed split = frame(kind, length, p, len, step);
    FUZZ_CHECK(whole.err == split.err);
    if (whole.err != 0)
        return;
    FUZZ_CHECK(whole.done == split.done);
    FUZZ_CHECK(whole.consumed == split.consumed);
    FUZZ_CHECK(whole.body_len == split.body_len && whole.body_hash == split.body_hash);
    FUZZ_CHECK(whole.body_len <= whole.consumed);
    if (kind == BODY_LENGTH) {
        FUZZ_CHECK(whole.body_len == (len < length ? len : length));
        FUZZ_CHECK(whole.done == (len >= length));
    } else if (kind == BODY_EOF) {
        FUZZ_CHECK(!whole.done && whole.consumed == len && whole.body_len == len);
    } else if (kind == BODY_NONE) {
        FUZZ_CHECK(whole.done && whole.consumed == 0);
    }
}

static void check_spans(const struct http_head *h, const char *p, size_t len)
{
    FUZZ_CHECK(inside(h->method, p, len) && inside(h->target, p, len));
    FUZZ_CHECK(inside(h->path, p, len) || span_eq(h->path, "/"));
    FUZZ_CHECK(inside(h->query, p, len) && inside(h->host, p, len));
    FUZZ_CHECK(inside(h->reason, p, len));
    FUZZ_CHECK(h->n_headers <= HTTP_MAX_HEADERS);
    for (size_t i = 0; i < h->n_headers; i++) {
        FUZZ_CHECK(h->headers[i].name.len > 0 && inside(h->headers[i].name, p, len));
        FUZZ_CHECK(inside(h->headers[i].value, p, len));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool is_request = data[0] & 1, request_was_head = data[0] & 2;
    size_t step = 1 + (data[0] >> 2);
    const char *msg = (const char *)data + 1;
    size_t len = size - 1;

    size_t pos_whole = 0, pos_split = 0;
    int r = scan_pieces(msg, len, len ? len : 1, FUZZ_HEAD_MAX, &pos_whole);
    FUZZ_CHECK(r == scan_pieces(msg, len, step, FUZZ_HEAD_MAX, &pos_split));
    FUZZ_CHECK(r == 1 || r == 0 || r == FICUS_EBADREQ || r == FICUS_EHEADTOOBIG);
    if (r != 1)
        return 0;
    FUZZ_CHECK(pos_whole == pos_split && pos_whole <= len && pos_whole <= FUZZ_HEAD_MAX);

    /* The head in a buffer of its own size, so that a read past it is caught. */
    char *head = malloc(pos_whole);
    struct http_head *h = malloc(sizeof(*h));
    FUZZ_CHECK(head != NULL && h != NULL);
    memcpy(head, msg, pos_whole);
    int rc = http1_parse_head(h, head, pos_whole, is_request);
    FUZZ_CHECK(rc == 0 || rc == (is_request ? FICUS_EBADREQ : FICUS_EBADRESP));
    if (rc == 0) {
        check_spans(h, head, pos_whole);
        FUZZ_CHECK(h->head_len == pos_whole);
        FUZZ_CHECK(h->version_minor == 0 || h->version_minor == 1);
        FUZZ_CHECK(h->content_length >= -1 && !(h->chunked && h->content_length >= 0));
        if (is_request) {
            FUZZ_CHECK(h->method.len > 0 && h->target.len > 0 && h->path.len > 0);
            FUZZ_CHECK(memchr(h->target.p, '#', h->target.len) == NULL);
            check_request_rewrite(h);
        } else {
            FUZZ_CHECK(h->status >= 100 && h->status <= 999);
            check_response_rewrite(h, request_was_head);
        }
        check_body(h, is_request, request_was_head, msg + pos_whole, len - pos_whole, step);
    }
    free(h);
    free(head);

    /* Whatever the bytes, the access-log form of them is printable ASCII. */
    char esc[256];
    size_t w = http1_log_escape(esc, 1 + step * 4 % sizeof(esc), (struct span){msg, len});
    FUZZ_CHECK(w < sizeof(esc) && strlen(esc) == w);
    for (size_t i = 0; i < w; i++)
        FUZZ_CHECK(esc[i] >= 0x20 && esc[i] < 0x7f);
    return 0;
}
