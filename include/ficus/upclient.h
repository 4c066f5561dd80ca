/* The HTTP/1.1 client side of one exchange with a backend: reads one response
 * on a lent upstream connection (see upstream.h) and reports it through
 * callbacks, as h2o's http1client does. It scans the head incrementally (a
 * head trickled in byte by byte costs linear work), skips interim 1xx
 * responses, parses the head strictly, picks the body framing, steps through
 * the body (decoding chunked), decides whether the connection can be reused,
 * and enforces the response deadline. Every borrower of a backend connection
 * reads its response here: the client's exchange (streamed to the client), the
 * shadow and noise probes (captured for the diff), the etcd client and replay.
 *
 * The caller writes the request itself (upstream_write) and owns the
 * connection: it gives it back with upstream_release once on_done or on_error
 * has run, or earlier when it stops (upclient_stop). Single-threaded, on the
 * connection's loop. */
#ifndef FICUS_UPCLIENT_H
#define FICUS_UPCLIENT_H

#include "ficus/buf.h"
#include "ficus/http1.h"
#include "ficus/io.h"
#include <stdbool.h>
#include <stddef.h>

struct upconn;

/* What the caller hears. ctx is the one given to upclient_start. on_head and
 * on_body return true to go on, or false when the caller has stopped (it may
 * have released the connection and freed the upclient's memory: the reader
 * touches neither again). on_done and on_error are the last call of a
 * response: the reader touches nothing after them either. */
struct upclient_handlers {
    /* The final response head: h is parsed (its spans point into the head
     * buffer given to upclient_start), raw/raw_len its bytes. Body bytes
     * follow through on_body, then on_done. */
    bool (*on_head)(void *ctx, const struct http_head *h, const char *raw, size_t raw_len);
    /* Body bytes, decoded from chunked framing: p[0, n) lies in rb (take a
     * reference to keep it). */
    bool (*on_body)(void *ctx, struct rbuf *rb, const char *p, size_t n);
    /* The response is complete. reusable: the connection may serve another
     * request (keep-alive, nothing left over, not delimited by the close). */
    void (*on_done)(void *ctx, bool reusable);
    /* The response failed: UV_EOF (closed before it was complete),
     * FICUS_ETIMEOUT (the deadline passed), FICUS_EBADRESP (malformed head or
     * chunked framing, or a head over max_head), FICUS_ETLS, or a libuv error.
     * upclient_got_any tells whether any byte of it had arrived. */
    void (*on_error)(void *ctx, int err);
    /* The connection's write queue fell below its low-water mark; may be NULL. */
    void (*on_drain)(void *ctx);
    /* Everything one read brought is handed over and the body goes on in a
     * later read (a streaming caller sends what it holds back); may be NULL. */
    void (*on_read_end)(void *ctx);
};

/* How the response deadline runs. */
enum upclient_deadline {
    UPCLIENT_IDLE,  /* ms since the last byte read (a response streaming slowly is not late) */
    UPCLIENT_TOTAL, /* ms for the whole response from upclient_start or upclient_deadline */
};

enum upclient_state { UC_IDLE, UC_HEAD, UC_BODY, UC_DONE, UC_N };

struct upclient {
    enum upclient_state state; /* UC_IDLE before start and after stop/done/error */
    struct upconn *up;
    const struct upclient_handlers *h;
    void *ctx;
    struct buf *head;         /* the raw head as it arrives (the caller's) */
    struct http_head *parsed; /* where the head is parsed (the caller's) */
    bool request_was_head;    /* the response has no body */
    size_t max_head;
    struct head_scan scan;
    struct body_framer framer;
    bool got_any; /* a byte of the response arrived */
    bool upgrade; /* the request asked for an upgrade: a 101 is final, not interim */
    enum upclient_deadline deadline_kind;
    int deadline_ms; /* 0: none */
};

/* Starts reading the response to a request written (or about to be written)
 * on u. head is emptied and receives the raw head; parsed receives the parsed
 * head (both the caller's, living as long as the caller needs them). The
 * response to a HEAD request (request_was_head) has no body. A head longer
 * than max_head fails with FICUS_EBADRESP. deadline_ms > 0 arms the deadline
 * of the given kind. */
void upclient_start(struct upclient *uc, struct upconn *u, const struct upclient_handlers *h,
                    void *ctx, struct buf *head, struct http_head *parsed, bool request_was_head,
                    size_t max_head, enum upclient_deadline kind, int deadline_ms);

/* The request asked for a protocol upgrade: a 101 answer is then the final
 * head (on_head), and every byte after it is handed over as body (on_body)
 * until the backend closes (on_done, not reusable): the connection is a
 * tunnel. Call right after upclient_start. */
void upclient_expect_upgrade(struct upclient *uc);

/* The outcome name of an on_error err, as the shadow and replay count it:
 * "timeout" (FICUS_ETIMEOUT), "invalid_response" (FICUS_EBADRESP), else
 * "reset". */
const char *upclient_error_outcome(int err);

/* Re-arms the deadline from now (ms > 0) or stops it (ms == 0), e.g. while the
 * request body is still being sent the backend is not late. */
void upclient_deadline(struct upclient *uc, enum upclient_deadline kind, int ms);

/* Stops reading from outside a callback: no callback runs any more. The
 * connection stays the caller's (release it with upstream_release). Safe in
 * any state, and repeatedly. */
void upclient_stop(struct upclient *uc);

/* Did any byte of the response arrive (for retrying an idle connection that
 * the backend had closed: nothing came back)? */
static inline bool upclient_got_any(const struct upclient *uc)
{
    return uc->got_any;
}

#endif
