/* A small HTTP/1.1 server on a libuv loop for ficus's own endpoints (the admin
 * API, the demo backends), not for the proxy's data path. Requests carry no
 * body or a Content-Length body up to a cap (chunked request bodies are
 * refused with 400); one handler answers each complete request, at once or
 * later (httpserv_defer: after a round trip elsewhere); the answers of
 * pipelined requests leave in order; keep-alive as the client asks.
 *
 * Framing is strict and every wait has a deadline: a connection without a
 * request in progress is closed after idle_ms; a head must be complete
 * head_ms after its first byte and a body body_ms after its head (408
 * otherwise); a head over max_head is refused with 431, a body over max_body
 * with 413, a head the scanner or the parser refuses with 400. A refusal is
 * the connection's last answer, sent once; the server then stops sending
 * (FIN) and reads and discards what the client still sends, until the client
 * closes, drain_bytes were discarded or drain_ms passed (a lingering close,
 * as nginx's: a client that sends its whole body before reading gets the
 * answer rather than a reset). Answers that wait for the client to read them
 * must make progress within send_ms. The head is scanned incrementally: bytes
 * already scanned are never scanned again when more arrive. */
#ifndef FICUS_HTTPSERV_H
#define FICUS_HTTPSERV_H

#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/http1.h"
#include <stdint.h>
#include <uv.h>

struct httpserv;
struct httpserv_later;
struct hconn;

/* What a handler answers. The server initialises it before the handler runs
 * and disposes of it after the answer is queued; the handler fills it in and
 * keeps no pointer into it. */
struct httpserv_reply {
    int status;         /* 0 (never set) is answered as 500 */
    const char *ctype;  /* static string; NULL: application/json */
    struct buf headers; /* more header lines, each "name: value\r\n" */
    struct buf body;    /* not sent for HEAD; its length still is */
    struct hconn *conn; /* private: the connection, for httpserv_defer */
};

/* Answers one complete request. req and its spans, and body, live until the
 * handler returns. Runs on the server's loop; may call httpserv_stop. */
typedef void (*httpserv_request_cb)(void *ctx, const struct http_head *req, struct span body,
                                    struct httpserv_reply *reply);

struct httpserv_opts {
    const char *name;     /* log module ("admin", "demo"); static */
    const char *headers;  /* static header lines added to every answer after content-length,
                             each "name: value\r\n"; NULL for none */
    size_t max_head;      /* bytes; a longer head is refused with 431 */
    size_t max_body;      /* bytes; a larger Content-Length is refused with 413 */
    int max_conns;        /* open connections; one more is closed at once and counted */
    uint64_t idle_ms;     /* no request in progress and nothing to send */
    uint64_t head_ms;     /* from a head's first byte to its end */
    uint64_t body_ms;     /* from the end of a head to the end of its body */
    uint64_t send_ms;     /* queued answers without progress */
    uint64_t drain_ms;    /* a lingering close reads and discards this long at most */
    uint64_t drain_bytes; /* and this many bytes at most */
    httpserv_request_cb on_request;
    void *ctx; /* for on_request */
};

/* Listens on addr with the options o (copied; the strings they point to must
 * outlive the server). Returns 0 and sets *out, or a libuv error (nothing is
 * left open then). */
int httpserv_start(uv_loop_t *loop, const struct sockaddr *addr, const struct httpserv_opts *o,
                   struct httpserv **out);

/* The port the server listens on (the one the kernel chose for port 0). */
int httpserv_port(const struct httpserv *s);

/* Closes the listener and every connection at once (answers not yet written
 * are dropped); the server frees itself once all are closed, within the
 * loop's next iterations. The handler is not called again. Accepts NULL. */
void httpserv_stop(struct httpserv *s);

/* Called by a handler that answers later: the reply it was given is not
 * sent; the connection reads and answers nothing more (pipelined requests
 * wait, their answers stay in order) until httpserv_later_send. The caller
 * must send within a bounded time (its own deadline). Returns the deferral,
 * or NULL when out of memory (the handler answers at once then). */
struct httpserv_later *httpserv_defer(struct httpserv_reply *r);

/* The reply of a deferral, to fill in before httpserv_later_send; empty and
 * initialised as a handler's is. */
struct httpserv_reply *httpserv_later_reply(struct httpserv_later *l);

/* Sends the deferred answer and frees l. When the client left or the server
 * stopped meanwhile, the answer is dropped (nothing else happens). May be
 * called inside the handler that deferred (the answer then leaves as a
 * handler's). */
void httpserv_later_send(struct httpserv_later *l);

/* Sets the reply to status with the JSON body {"error":"msg"} and a newline
 * (msg is written as given: pass no quote or backslash). */
void httpserv_reply_error(struct httpserv_reply *r, int status, const char *msg);

/* Adds the header line "name: value". Returns 0 or a buf error. */
int httpserv_reply_header(struct httpserv_reply *r, const char *name, const char *value);

#endif
