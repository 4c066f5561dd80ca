#include "ficus/upclient.h"
#include "ficus/common.h"
#include "ficus/log.h"
#include "ficus/upstream.h"

#include <string.h>

static void uc_on_read(void *ctx, struct rbuf *rb, const char *p, size_t len);
static void uc_on_error(void *ctx, int err);
static void uc_on_drain(void *ctx);

static const struct upstream_handlers uc_handlers = {
    .on_read = uc_on_read,
    .on_error = uc_on_error,
    .on_drain = uc_on_drain,
};

static void uc_set_state(struct upclient *uc, enum upclient_state s)
{
    static const char *const names[UC_N] = {"idle", "head", "body", "done"};
    log_debug("upclient", "state %s -> %s", names[uc->state], names[s]);
    uc->state = s;
}

static void uc_arm(struct upclient *uc)
{
    upstream_timeout(uc->up, uc->deadline_ms);
}

void upclient_start(struct upclient *uc, struct upconn *u, const struct upclient_handlers *h,
                    void *ctx, struct buf *head, struct http_head *parsed, bool request_was_head,
                    size_t max_head, enum upclient_deadline kind, int deadline_ms)
{
    uc->state = UC_IDLE;
    uc->up = u;
    uc->h = h;
    uc->ctx = ctx;
    uc->head = head;
    uc->parsed = parsed;
    uc->request_was_head = request_was_head;
    uc->max_head = max_head;
    memset(&uc->scan, 0, sizeof(uc->scan));
    memset(&uc->framer, 0, sizeof(uc->framer));
    uc->got_any = false;
    uc->upgrade = false;
    uc->deadline_kind = kind;
    uc->deadline_ms = deadline_ms > 0 ? deadline_ms : 0;
    buf_reset(head);
    uc_set_state(uc, UC_HEAD);
    upstream_attach(u, &uc_handlers, uc);
    uc_arm(uc);
}

void upclient_expect_upgrade(struct upclient *uc)
{
    uc->upgrade = true;
}

const char *upclient_error_outcome(int err)
{
    return err == FICUS_ETIMEOUT ? "timeout" : err == FICUS_EBADRESP ? "invalid_response" : "reset";
}

void upclient_deadline(struct upclient *uc, enum upclient_deadline kind, int ms)
{
    if (uc->state != UC_HEAD && uc->state != UC_BODY)
        return;
    uc->deadline_kind = kind;
    uc->deadline_ms = ms > 0 ? ms : 0;
    uc_arm(uc);
}

void upclient_stop(struct upclient *uc)
{
    if (uc->state == UC_HEAD || uc->state == UC_BODY)
        upstream_timeout(uc->up, 0);
    if (uc->state != UC_IDLE)
        uc_set_state(uc, UC_IDLE);
}

/* The response is complete: the deadline stops and the caller hears whether
 * the connection can serve again. */
static void uc_done(struct upclient *uc, bool reusable)
{
    upstream_timeout(uc->up, 0);
    uc_set_state(uc, UC_DONE);
    uc->h->on_done(uc->ctx, reusable && uc->parsed->keep_alive && uc->framer.kind != BODY_EOF);
    /* uc may be gone */
}

static void uc_fail(struct upclient *uc, int err)
{
    upstream_timeout(uc->up, 0);
    uc_set_state(uc, UC_IDLE);
    uc->h->on_error(uc->ctx, err); /* uc may be gone */
}

/* Scans for the end of the head in data[*off, len). Usually the whole head is
 * in one read: it is scanned where it lies and only its bytes are copied, not
 * the body after it. The scan keeps its place between reads, so a head that
 * trickles in is examined once, not again from its first byte on each read.
 * Returns 1 when the head is complete in uc->head (*off then points past it),
 * 0 when more bytes are needed, or a negative error. */
static int uc_scan_head(struct upclient *uc, const char *data, size_t len, size_t *off)
{
    if (uc->head->len == 0) {
        /* The scan's positions are relative to the head's first byte, which
         * is data + *off here and head->data once bytes are kept. */
        int r = http1_scan_head(&uc->scan, data + *off, len - *off, uc->max_head);
        if (r < 0)
            return FICUS_EBADRESP;
        size_t take = r == 1 ? uc->scan.pos : len - *off;
        if (buf_append(uc->head, data + *off, take) != 0)
            return FICUS_EBADRESP;
        *off += take;
        return r;
    }
    size_t before = uc->head->len;
    if (buf_append(uc->head, data + *off, len - *off) != 0)
        return FICUS_EBADRESP;
    int r = http1_scan_head(&uc->scan, uc->head->data, uc->head->len, uc->max_head);
    if (r < 0)
        return FICUS_EBADRESP;
    if (r == 0) {
        *off = len;
        return 0;
    }
    *off += uc->scan.pos - before;
    uc->head->len = uc->scan.pos; /* bytes after the head are still at data + *off */
    return 1;
}

/* A complete head is in uc->head: parse it and choose the body's framing.
 * Returns 1 for an interim 1xx response (skipped: ficus answers 100-continue
 * itself), 0 for the final head, or FICUS_EBADRESP. */
static int uc_head_complete(struct upclient *uc)
{
    struct http_head *h = uc->parsed;
    if (http1_parse_head(h, uc->head->data, uc->head->len, false) != 0)
        return FICUS_EBADRESP;
    if (h->status == 101 && uc->upgrade && h->upgrade.len > 0) {
        /* The switch: what follows is the other protocol's bytes, up to the close. */
        http1_body_init(&uc->framer, BODY_EOF, 0);
        return 0;
    }
    if (h->status < 200)
        return 1;
    if (!http1_response_has_body(uc->request_was_head, h->status))
        http1_body_init(&uc->framer, BODY_NONE, 0);
    else if (h->chunked)
        http1_body_init(&uc->framer, BODY_CHUNKED, 0);
    else if (h->content_length >= 0)
        http1_body_init(&uc->framer, BODY_LENGTH, (uint64_t)h->content_length);
    else
        http1_body_init(&uc->framer, BODY_EOF, 0);
    return 0;
}

static void uc_on_read(void *ctx, struct rbuf *rb, const char *data, size_t len)
{
    struct upclient *uc = ctx;
    if (uc->state != UC_HEAD && uc->state != UC_BODY) {
        /* Bytes after the response, or after the caller stopped: the caller
         * gives the connection back as not reusable. */
        return;
    }
    uc->got_any = true;
    if (uc->deadline_kind == UPCLIENT_IDLE)
        uc_arm(uc);
    size_t off = 0;
    while (uc->state == UC_HEAD) {
        int r = uc_scan_head(uc, data, len, &off);
        if (r == 0)
            return;
        if (r > 0)
            r = uc_head_complete(uc);
        if (r < 0) {
            uc_fail(uc, r);
            return;
        }
        if (r == 1) {
            buf_reset(uc->head); /* an interim response: the final head follows */
            memset(&uc->scan, 0, sizeof(uc->scan));
            continue;
        }
        uc_set_state(uc, UC_BODY);
        if (!uc->h->on_head(uc->ctx, uc->parsed, uc->head->data, uc->head->len))
            return; /* the caller stopped (a fallback): uc may be gone */
        if (uc->framer.done) {
            uc_done(uc, off == len); /* bytes nobody asked for make it unusable */
            return;
        }
    }
    while (off < len) {
        size_t doff, dlen;
        int64_t n = http1_body_step(&uc->framer, data + off, len - off, &doff, &dlen);
        if (n < 0) {
            uc_fail(uc, FICUS_EBADRESP);
            return;
        }
        if (dlen > 0 && !uc->h->on_body(uc->ctx, rb, data + off + doff, dlen))
            return; /* uc may be gone */
        off += (size_t)n;
        if (uc->framer.done) {
            uc_done(uc, off == len);
            return;
        }
        if (n == 0)
            break;
    }
    if (uc->state == UC_BODY && uc->h->on_read_end != NULL)
        uc->h->on_read_end(uc->ctx);
}

static void uc_on_error(void *ctx, int err)
{
    struct upclient *uc = ctx;
    if (uc->state != UC_HEAD && uc->state != UC_BODY)
        return;
    if (err == UV_EOF && uc->state == UC_BODY && uc->framer.kind == BODY_EOF) {
        uc_done(uc, false); /* a body delimited by the close */
        return;
    }
    uc_fail(uc, err);
}

static void uc_on_drain(void *ctx)
{
    struct upclient *uc = ctx;
    if (uc->h != NULL && uc->h->on_drain != NULL && uc->state != UC_IDLE)
        uc->h->on_drain(uc->ctx);
}
