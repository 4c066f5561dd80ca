/* One client connection and the exchange (request and response) it runs.
 *
 * A connection runs one exchange at a time; pipelined requests wait in the
 * connection's input buffer and are answered in order. Body bytes are never
 * copied on the way through: the read buffer that received them is written on
 * with a reference held until the write completes. The backend's response is
 * read by upclient (the one HTTP client of ficus); this file streams it to the
 * client and decides retries and fallback.
 *
 * Lifetimes: a connection is freed in the close callback of its handles (so a
 * closing one stays readable for the rest of the loop turn); an exchange that
 * ends is detached from its connection at once and recycled at the end of the
 * loop turn (the reaper), so that a pointer to it held further up the call
 * stack stays valid: code checks x->state after a call that may end it. */
#include "ficus/conn.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/http1.h"
#include "ficus/io.h"
#include "ficus/log.h"
#include "ficus/router.h"
#include "ficus/shadow.h"
#include "ficus/state.h"
#include "ficus/tls.h"
#include "ficus/upclient.h"
#include "ficus/upstream.h"
#include "ficus/worker.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>
#include <time.h>

/* A refused request's body may still be on its way: before closing, ficus
 * sends its FIN and reads and drops what the client still sends, for at most
 * this long and this many bytes (nginx's lingering close), so that the client
 * reads the refusal instead of a reset. */
#define LINGER_MS        5000
#define LINGER_MAX_BYTES (16 * 1024 * 1024)

/* Above this many queued bytes the reading side pauses; below LOW it resumes. */
#define WRITE_HIGH_WATER (256 * 1024)
#define WRITE_LOW_WATER  (64 * 1024)

/* Spare exchanges a worker keeps with their buffers: an exchange is 9 KiB
 * (two heads of 128 header slots), and allocating and zeroing it, its head
 * copy and its response head buffer was a malloc, a calloc and a realloc per
 * request. */
#define SPARE_EXCHANGES 64
/* A spare's buffers larger than this are freed rather than kept. */
#define SPARE_KEEP_BYTES (16 * 1024)

enum conn_state {
    CONN_OPEN,    /* reading requests, answering them */
    CONN_LINGER,  /* answered and shut for writing: what the client still sends is dropped */
    CONN_CLOSING, /* handles closing; freed in their close callback */
};

/* An exchange's life, changed only by x_set_state. The request body's
 * progress (req_done) runs beside it: a response may begin before the body
 * is complete. */
enum xstate {
    X_NEW,        /* the head is being parsed and routed */
    X_CONNECTING, /* waiting for a connection to the primary (again after a retry or fallback) */
    X_SENDING,    /* connected: the head is written, the body streams up, no response head yet */
    X_RESPONDING, /* the response head arrived: head and body stream to the client */
    X_TUNNEL,     /* the backend switched protocols (101): bytes pass both ways as they are */
    X_DONE,       /* answered, failed or abandoned: detached, recycled after the loop turn */
    X_N
};

struct exchange;

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct worker *w;
    struct list node; /* in the worker's list, for drain */
    enum conn_state state;
    int open_handles;
    bool tls;      /* accepted on a TLS listener */
    struct tls *t; /* its TLS state; NULL on plain connections */
    bool reading;
    bool close_after_flush;
    bool counted_idle;
    bool peer_eof;     /* the client half-closed after a complete request */
    bool write_failed; /* a write failed at once; the close waits for the next loop turn */
    bool linger;       /* a refused request may still be sending: linger before the close */
    int writes_pending;
    struct head_scan scan;    /* the next request head; keeps its place between reads */
    size_t head_scanned;      /* bytes the scan examined for this head (linear: its length) */
    unsigned head_reads;      /* reads that brought bytes of this head */
    bool head_timer;          /* the header deadline is running */
    struct deadline deadline; /* enforced by timer */
    struct buf in;            /* bytes read but not yet used (partial head, pipelined requests) */
    struct exchange *x;
    size_t lingered; /* bytes dropped while lingering */
    char ip[INET6_ADDRSTRLEN];
};

struct exchange {
    enum xstate state;
    struct conn *c; /* NULL once done */
    struct worker *w;
    struct config *cfg;
    struct pool_set *pools;
    const struct route_cfg *rt;
    int backend;
    const char *backend_role; /* "legacy" or "new" */
    uint64_t t0;

    char
        *head_bytes; /* the request head (owned copy, kept when recycled); req's spans point here */
    size_t head_cap; /* bytes allocated at head_bytes */
    struct body_framer reqbody;
    int64_t req_bytes;
    bool req_done;   /* the whole request body was read (or there is none) */
    bool chunked_up; /* the request body goes up chunked */
    bool fell_back;  /* new failed and legacy took over */
    bool keep_alive; /* the connection serves another request after this one */
    bool accounted;  /* logged and counted (exchange_account) */
    bool upgrade;    /* the client asked for a protocol upgrade ficus carries (X_TUNNEL on 101) */
    bool retried;    /* a failed first attempt was retried (on another server when there is one) */
    int attempts;    /* connections the request was sent on */

    struct upstream_wait wait;
    struct upconn *up;
    struct upclient uc;     /* reads the primary's response */
    struct comparison *cmp; /* the parallel run fed by this exchange, or NULL */
    const char *up_error;   /* how the primary failed, for the comparison */

    struct buf rhead;    /* the response head's bytes (kept when recycled); resp points here */
    struct buf out_head; /* the response head for the client, sent with the first body bytes */
    bool chunked_down;   /* the response goes to the client chunked */
    bool up_reusable;    /* the primary's connection may serve again */
    int status;
    int64_t resp_bytes;
    int64_t tunnel_up;      /* bytes the client sent through the tunnel */
    const char *tunnel_end; /* who ended the tunnel: client, backend, idle, shutdown */
    char reqid[64];
    struct exchange *next; /* the worker's spare or retired list */

    struct http_head req;
    struct http_head resp;
};

/* conn.c's part of a worker: its client connections and the exchanges it
 * keeps for reuse. Created and freed by the worker's owner (server.c). */
struct conn_worker {
    struct worker *w;
    struct list conns;       /* every open client connection, for drain */
    struct exchange *spares; /* recycled, with their buffers */
    int n_spares;
    struct exchange *retired; /* ended during this loop turn */
    uv_check_t reaper;        /* recycles the retired ones after the loop turn's callbacks */
    bool reaper_on;
    bool closed; /* the reaper's handle is closed: exchanges are recycled at once */
};

static void conn_close(struct conn *c);
static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub);
static void conn_end(struct conn *c);
static void conn_close_or_linger(struct conn *c);
static void conn_update_reading(struct conn *c);
static void conn_resume_input(struct conn *c);
static void exchange_abort(struct exchange *x);
static size_t tunnel_up(struct exchange *x, struct rbuf *rb, const char *p, size_t len);
static void tunnel_end(struct exchange *x, const char *why);
static bool tunnel_start(struct exchange *x);
static void tunnel_down(struct exchange *x, struct rbuf *rb, const char *p, size_t n);
static void exchange_account(struct exchange *x, int intr);
static void exchange_fail(struct exchange *x, int status, const char *msg);
static size_t exchange_request_body(struct exchange *x, struct rbuf *rb, const char *p, size_t len);
static bool try_fallback(struct exchange *x, unsigned why);
static void sni_text(const struct conn *c, char *out, size_t len);

/* ---- connection bookkeeping ---------------------------------------------------- */

static void conn_set_idle(struct conn *c, bool idle)
{
    if (idle == c->counted_idle)
        return;
    c->counted_idle = idle;
    atomic_fetch_add_explicit(&c->w->counters.conns_idle, idle ? 1 : (unsigned long)-1,
                              memory_order_relaxed);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    struct worker *w = c->w;
    list_remove(&c->node);
    buf_dispose(&c->in);
    tls_free(c->t);
    atomic_fetch_sub_explicit(&w->counters.conns_active, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->srv->conns_total, 1, memory_order_relaxed);
    free(c);
}

static void conn_close(struct conn *c)
{
    if (c->state == CONN_CLOSING) /* reachable from read errors, timers and writes alike */
        return;
    c->state = CONN_CLOSING;
    conn_set_idle(c, false);
    if (c->x != NULL)
        exchange_abort(c->x);
    if (c->t != NULL && !c->write_failed && c->writes_pending == 0)
        tls_goodbye(c->t, (uv_stream_t *)&c->tcp); /* after the last record, never amid one */
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_conn_written(void *ctx, int status)
{
    struct conn *c = ctx;
    c->writes_pending--;
    if (c->state == CONN_CLOSING)
        return;
    if (status != 0) {
        conn_close(c);
        return;
    }
    if (c->close_after_flush && c->writes_pending == 0) {
        conn_close_or_linger(c);
        return;
    }
    struct exchange *x = c->x;
    if (x != NULL && x->up != NULL &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_LOW_WATER)
        upstream_pause(x->up, false);
}

static void on_conn_timer(uv_timer_t *t);

/* Sets the connection's deadline ms from now (see struct deadline: a request
 * would otherwise stop and restart the timer three times). */
static void conn_deadline(struct conn *c, uint64_t ms)
{
    deadline_set(&c->deadline, &c->timer, on_conn_timer, ms);
}

static void conn_no_deadline(struct conn *c)
{
    deadline_clear(&c->deadline);
}

/* A write that cannot happen: closing here would end the exchange under its
 * caller, so the timer closes the connection on the next loop turn instead. */
static int conn_write_failed(struct conn *c, int rc)
{
    c->write_failed = true;
    c->close_after_flush = true;
    conn_deadline(c, 0);
    return rc;
}

/* Sends bytes already in their wire form (ciphertext on a TLS connection); see
 * io_write for rb and owned. */
static int conn_send(struct conn *c, const uv_buf_t *bufs, unsigned n, struct rbuf *rb, void *owned)
{
    if (c->state == CONN_CLOSING) {
        free(owned);
        return UV_ECANCELED;
    }
    if (c->write_failed) {
        free(owned);
        return UV_EPIPE;
    }
    int rc = io_write(&c->w->rbufs, (uv_stream_t *)&c->tcp, bufs, n, rb, owned, on_conn_written, c);
    if (rc == IO_WRITTEN)
        return 0;
    if (rc != 0)
        return conn_write_failed(c, rc);
    c->writes_pending++;
    return 0;
}

static int conn_send_tls(void *ctx, const uv_buf_t *buf, void *owned)
{
    return conn_send(ctx, buf, 1, NULL, owned);
}

/* Sends what TLS has waiting: handshake messages, alerts, records. */
static int conn_flush_tls(struct conn *c)
{
    return tls_flush(c->t, conn_send_tls, c);
}

static int conn_write(struct conn *c, const uv_buf_t *bufs, unsigned n, struct rbuf *rb,
                      void *owned)
{
    if (c->t == NULL)
        return conn_send(c, bufs, n, rb, owned);
    if (c->state == CONN_CLOSING || c->write_failed) {
        free(owned);
        return UV_ECANCELED;
    }
    int rc = tls_encrypt(c->t, bufs, n);
    free(owned); /* the plaintext is copied into records */
    if (rc != 0)
        return conn_write_failed(c, rc);
    return conn_flush_tls(c);
}

/* Writes the bytes of b (taking them over) to the client. */
static int conn_write_buf(struct conn *c, struct buf *b)
{
    uv_buf_t ub = uv_buf_init(b->data, (unsigned)b->len);
    char *owned = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return conn_write(c, &ub, 1, NULL, owned);
}

static void access_log_line(struct conn *c, struct span method, struct span target,
                            const char *route, const char *backend, int status, int64_t bytes,
                            double ms, const char *id, const char *extra);

/* The access log line of a head refused before it became an exchange (bad
 * bytes, too large, too slow): every answer ficus gives is logged. */
static void access_log_reject(struct conn *c, int status)
{
    access_log_line(c, SPAN_LIT("-"), SPAN_LIT("-"), "-", "-", status, 0, 0.0, "-", NULL);
}

/* Answers with a small JSON error outside any exchange and closes. */
static void conn_reject(struct conn *c, int status, const char *msg)
{
    access_log_reject(c, status);
    struct buf b;
    buf_init(&b, 0);
    if (http1_write_error(&b, status, msg, false) == 0)
        conn_write_buf(c, &b);
    buf_dispose(&b);
    c->linger = true; /* whatever else the client sends is not read */
    conn_end(c);
    log_debug("conn", "rejected client=%s status=%d reason=\"%s\"", c->ip, status, msg);
}

/* Closes the connection once what is queued is written. */
static void conn_end(struct conn *c)
{
    c->close_after_flush = true;
    if (c->writes_pending == 0)
        conn_close_or_linger(c);
}

/* Every answer is written: close, or first linger when a refused request may
 * still be sending (its bytes would make the close a reset, and a reset can
 * destroy the answer before the client read it). */
static void conn_close_or_linger(struct conn *c)
{
    if (c->state != CONN_OPEN || !c->linger || c->write_failed || c->peer_eof) {
        conn_close(c);
        return;
    }
    c->state = CONN_LINGER;
    conn_set_idle(c, false);
    buf_dispose(&c->in); /* nothing of it will be answered */
    if (c->t != NULL)
        tls_goodbye(c->t, (uv_stream_t *)&c->tcp);
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 || shutdown(fd, SHUT_WR) != 0) {
        conn_close(c);
        return;
    }
    c->lingered = 0;
    conn_deadline(c, LINGER_MS);
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read) == 0)
        c->reading = true;
    log_debug("conn", "lingering client=%s", c->ip);
}

static void on_conn_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->state == CONN_CLOSING || !deadline_expired(&c->deadline, t, on_conn_timer))
        return;
    if (c->state == CONN_LINGER) {
        conn_close(c);
        return;
    }
    if (c->write_failed) {
        conn_close(c);
        return;
    }
    if (c->x != NULL && c->x->state == X_TUNNEL) {
        tunnel_end(c->x, "idle"); /* no byte either way for timeouts.tunnel_idle_ms */
        return;
    }
    if (c->x != NULL) {
        /* A client that stops sending its request body. */
        exchange_fail(c->x, 408, "request timeout");
        return;
    }
    if (c->t != NULL && !tls_established(c->t)) {
        log_debug("conn", "TLS handshake timeout client=%s", c->ip);
        conn_close(c); /* no HTTP answer before the handshake */
        return;
    }
    if (c->scan.pos > 0 || c->in.len > 0)
        conn_reject(c, 408, "request header timeout");
    else
        conn_close(c); /* idle keep-alive connection */
}

/* Is the exchange connected to its backend and still reading the request? */
static bool x_sending_body(const struct exchange *x)
{
    return !x->req_done && (x->state == X_SENDING || x->state == X_RESPONDING);
}

/* Arms the timer that fits what the connection waits for. */
static void conn_arm_timer(struct conn *c)
{
    if (c->write_failed)
        return; /* the close is already scheduled */
    const struct config *cfg = c->w->cfg;
    if (c->x != NULL && c->x->state == X_TUNNEL) {
        conn_deadline(c, (uint64_t)c->x->cfg->tunnel_idle_ms);
        c->head_timer = false;
        return;
    }
    if (c->x != NULL) {
        if (x_sending_body(c->x))
            conn_deadline(c, (uint64_t)cfg->client_idle_ms);
        else
            conn_no_deadline(c);
        c->head_timer = false;
        return;
    }
    if (c->scan.pos > 0 || c->in.len > 0 || (c->t != NULL && !tls_established(c->t))) {
        /* Slow clients get one deadline for the handshake and the whole
         * head, not one per byte. */
        if (!c->head_timer) {
            conn_deadline(c, (uint64_t)cfg->header_ms);
            c->head_timer = true;
        }
    } else {
        c->head_timer = false;
        conn_deadline(c, (uint64_t)cfg->client_idle_ms);
    }
}

/* ---- input ---------------------------------------------------------------------- */

static void exchange_start(struct conn *c, const char *head, size_t head_len, const char *rest,
                           size_t rest_len);

/* Uses bytes from p[0, len): heads start exchanges, body bytes go upstream.
 * rb holds the bytes when they came straight from a read (NULL when they are
 * the connection's own buffer, which must not be referenced). Returns how many
 * bytes were used; the caller keeps the rest for later, starting with the
 * first byte of a head still incomplete, so that the scan's place (relative to
 * that byte) stays right and no byte is examined twice. */
static size_t conn_process(struct conn *c, struct rbuf *rb, const char *p, size_t len)
{
    size_t off = 0;
    while (off < len && c->state == CONN_OPEN && !c->close_after_flush) {
        struct exchange *x = c->x;
        if (x == NULL) {
            if (c->w->draining && c->scan.pos == 0)
                return off; /* no new request once draining */
            size_t before = c->scan.pos;
            int r = http1_scan_head(&c->scan, p + off, len - off, c->w->cfg->max_header_bytes);
            c->head_scanned += (r == 1 ? c->scan.pos : len - off) - before;
            if (r == 0)
                return off;
            if (r < 0) {
                if (r == FICUS_EHEADTOOBIG)
                    conn_reject(c, 431, "request header fields too large");
                else
                    conn_reject(c, 400, "bad request");
                return len;
            }
            size_t head_len = c->scan.pos;
            log_debug("conn", "request head client=%s bytes=%zu scanned=%zu reads=%u", c->ip,
                      head_len, c->head_scanned, c->head_reads);
            memset(&c->scan, 0, sizeof(c->scan));
            c->head_scanned = 0;
            c->head_reads = 0;
            exchange_start(c, p + off, head_len, p + off + head_len, len - off - head_len);
            off += head_len;
            continue;
        }
        if (x->state == X_TUNNEL) {
            off += tunnel_up(x, rb, p + off, len - off);
            continue;
        }
        if (x->req_done || x->state < X_SENDING)
            return off; /* the next pipelined request, or upstream not ready */
        size_t n = exchange_request_body(x, rb, p + off, len - off);
        if (n == 0)
            return off;
        off += n;
    }
    return off;
}

static void conn_keep(struct conn *c, const char *p, size_t len)
{
    if (len == 0)
        return;
    if (buf_append(&c->in, p, len) != 0)
        conn_reject(c, 431, "request header fields too large");
}

/* Processes what the connection kept while an exchange ran. */
static void conn_resume_input(struct conn *c)
{
    if (c->state != CONN_OPEN)
        return;
    if (c->in.len > 0) {
        struct buf pending = c->in;
        buf_init(&c->in, c->in.max);
        size_t used = conn_process(c, NULL, pending.data, pending.len);
        if (c->state == CONN_OPEN)
            conn_keep(c, pending.data + used, pending.len - used);
        buf_dispose(&pending);
    }
    conn_update_reading(c);
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    struct conn *c = h->data;
    struct rbuf *rb = rbuf_get(&c->w->rbufs);
    *out = rb ? uv_buf_init(rb->data, RBUF_SIZE) : uv_buf_init(NULL, 0);
}

/* The client finished sending (EOF or close_notify). */
static void conn_on_eof(struct conn *c)
{
    if (c->x != NULL && c->x->state == X_TUNNEL) {
        tunnel_end(c->x, "client"); /* the client ended its side: the tunnel is done */
        return;
    }
    if (c->x != NULL && c->x->req_done) {
        /* A half-close after a whole request still wants its response. */
        c->peer_eof = true;
        c->x->keep_alive = false;
        if (c->reading)
            uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
        return;
    }
    if (c->x != NULL && !c->x->req_done)
        log_debug("conn", "client gone mid-request client=%s", c->ip);
    conn_close(c);
}

/* Plaintext from the client: rb holds p[0, len) (see conn_process). */
static void conn_input(struct conn *c, struct rbuf *rb, const char *p, size_t len)
{
    conn_set_idle(c, false);
    if (c->x == NULL)
        c->head_reads++;
    if (c->in.len > 0) {
        conn_keep(c, p, len);
        conn_resume_input(c);
        return;
    }
    size_t used = conn_process(c, rb, p, len);
    if (c->state == CONN_OPEN)
        conn_keep(c, p + used, len - used);
    conn_update_reading(c);
}

/* Ciphertext from the client: the handshake advances and every whole record
 * is decrypted into read buffers of its own, then used as a plain read would
 * be. What cannot be used yet waits in c->in as it does on plain connections,
 * so a read never leaves plaintext behind in OpenSSL. */
static void conn_tls_input(struct conn *c, const char *p, size_t len)
{
    bool was_established = tls_established(c->t);
    if (tls_feed(c->t, p, len) != 0) {
        conn_close(c);
        return;
    }
    while (c->state == CONN_OPEN) {
        struct rbuf *prb = rbuf_get(&c->w->rbufs);
        if (prb == NULL) {
            conn_close(c);
            return;
        }
        int n = tls_read(c->t, prb->data, RBUF_SIZE);
        if (!was_established && tls_established(c->t)) {
            was_established = true;
            char sni[100];
            sni_text(c, sni, sizeof(sni));
            log_debug("conn", "TLS established client=%s sni=%s version=%s resumed=%s", c->ip, sni,
                      tls_version(c->t), tls_resumed(c->t) ? "yes" : "no");
            c->head_timer = false; /* the head gets a deadline of its own */
            conn_arm_timer(c);
        }
        if (n > 0) {
            conn_input(c, prb, prb->data, (size_t)n);
            rbuf_unref(&c->w->rbufs, prb);
            continue;
        }
        rbuf_unref(&c->w->rbufs, prb);
        if (n == 0)
            break;
        conn_flush_tls(c); /* the alert that says why, if any */
        if (n == FICUS_ECLOSED) {
            conn_on_eof(c);
        } else {
            log_debug("conn", "TLS failed client=%s reason=\"%s\"", c->ip, tls_reason(c->t));
            conn_close(c);
        }
        return;
    }
    if (c->state == CONN_OPEN)
        conn_flush_tls(c);
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    struct conn *c = s->data;
    struct rbuf *rb = ub->base ? rbuf_of(ub->base) : NULL;
    if (c->state == CONN_LINGER) {
        rbuf_unref(&c->w->rbufs, rb);
        if (nread < 0 || (c->lingered += (size_t)nread) > LINGER_MAX_BYTES)
            conn_close(c); /* the client is done, or sends more than a refusal is worth */
        return;
    }
    if (nread < 0) {
        rbuf_unref(&c->w->rbufs, rb);
        if (nread == UV_EOF)
            conn_on_eof(c);
        else
            conn_close(c);
        return;
    }
    if (nread == 0 || c->state != CONN_OPEN) {
        rbuf_unref(&c->w->rbufs, rb);
        return;
    }
    if (c->t != NULL)
        conn_tls_input(c, ub->base, (size_t)nread);
    else
        conn_input(c, rb, ub->base, (size_t)nread);
    rbuf_unref(&c->w->rbufs, rb);
}

/* Reads while there is somewhere for the bytes to go. */
static void conn_update_reading(struct conn *c)
{
    if (c->state != CONN_OPEN)
        return;
    struct exchange *x = c->x;
    bool want;
    if (c->peer_eof)
        want = false;
    else if (x == NULL)
        want = !c->close_after_flush && c->in.len < c->w->cfg->max_header_bytes;
    else if (x->state == X_TUNNEL)
        want = c->in.len == 0 && x->up != NULL && upstream_queued(x->up) < WRITE_HIGH_WATER;
    else if (x->req_done)
        want = c->in.len == 0; /* a pipelined request waits in c->in; no epoll churn */
    else
        want = x_sending_body(x) && x->up != NULL && c->in.len == 0 &&
               upstream_queued(x->up) < WRITE_HIGH_WATER;
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    conn_arm_timer(c);
    conn_set_idle(c, x == NULL && c->in.len == 0 && c->writes_pending == 0);
}

/* ---- exchanges: lifetime -------------------------------------------------------------- */

static void x_set_state(struct exchange *x, enum xstate s)
{
    static const char *const names[X_N] = {"new",        "connecting", "sending",
                                           "responding", "tunnel",     "done"};
    log_debug("conn", "exchange id=%s %s -> %s", x->reqid, names[x->state], names[s]);
    x->state = s;
}

/* Recycles one exchange: its references go, its memory is kept for the next
 * request (with the head copy and the response head buffer) or freed. */
static void exchange_recycle(struct conn_worker *cw, struct exchange *x)
{
    buf_dispose(&x->out_head);
    pool_set_unref(x->pools);
    config_unref(x->cfg);
    x->pools = NULL;
    x->cfg = NULL;
    if (cw->closed || cw->n_spares >= SPARE_EXCHANGES) {
        buf_dispose(&x->rhead);
        free(x->head_bytes);
        free(x);
        return;
    }
    if (x->rhead.cap > SPARE_KEEP_BYTES)
        buf_dispose(&x->rhead);
    if (x->head_cap > SPARE_KEEP_BYTES) {
        free(x->head_bytes);
        x->head_bytes = NULL;
        x->head_cap = 0;
    }
    x->next = cw->spares;
    cw->spares = x;
    cw->n_spares++;
}

static void reap(struct conn_worker *cw)
{
    while (cw->retired != NULL) {
        struct exchange *x = cw->retired;
        cw->retired = x->next;
        exchange_recycle(cw, x);
    }
}

static void on_reaper(uv_check_t *h)
{
    struct conn_worker *cw = h->data;
    reap(cw);
    uv_check_stop(h);
    cw->reaper_on = false;
}

/* An exchange for a new request: every field set here by name; the storage a
 * spare keeps (head_bytes, rhead) stays. NULL when out of memory. */
static struct exchange *exchange_get(struct conn_worker *cw, struct conn *c)
{
    struct exchange *x = cw->spares;
    if (x != NULL) {
        cw->spares = x->next;
        cw->n_spares--;
    } else if ((x = calloc(1, sizeof(*x))) == NULL) {
        return NULL;
    }
    struct worker *w = cw->w;
    x->state = X_NEW;
    x->c = c;
    x->w = w;
    x->cfg = config_ref(w->cfg);
    x->pools = w->pools;
    pool_set_ref(x->pools);
    x->rt = NULL;
    x->backend = -1;
    x->backend_role = "-";
    x->t0 = io_now_us();
    memset(&x->reqbody, 0, sizeof(x->reqbody));
    x->req_bytes = 0;
    x->req_done = false;
    x->chunked_up = false;
    x->fell_back = false;
    x->keep_alive = false;
    x->accounted = false;
    x->upgrade = false;
    x->tunnel_up = 0;
    x->tunnel_end = NULL;
    x->retried = false;
    x->attempts = 0;
    memset(&x->wait, 0, sizeof(x->wait));
    x->up = NULL;
    memset(&x->uc, 0, sizeof(x->uc));
    x->cmp = NULL;
    x->up_error = NULL;
    buf_reset(&x->rhead);
    buf_init(&x->out_head, 0);
    x->chunked_down = false;
    x->up_reusable = false;
    x->status = 0;
    x->resp_bytes = 0;
    x->reqid[0] = '-';
    x->reqid[1] = '\0';
    x->next = NULL;
    /* The heads are filled by http1_parse_head, which sets every field it
     * keeps; a response head is parsed before anything reads it. */
    return x;
}

struct conn_worker *conn_worker_new(struct worker *w)
{
    struct conn_worker *cw = calloc(1, sizeof(*cw));
    if (cw == NULL)
        return NULL;
    cw->w = w;
    list_init(&cw->conns);
    uv_check_init(&w->loop, &cw->reaper);
    cw->reaper.data = cw;
    return cw;
}

void conn_worker_free(struct conn_worker *cw)
{
    if (cw == NULL)
        return;
    reap(cw);
    while (cw->spares != NULL) {
        struct exchange *x = cw->spares;
        cw->spares = x->next;
        buf_dispose(&x->rhead);
        free(x->head_bytes);
        free(x);
    }
    free(cw);
}

static void exchange_release_upstream(struct exchange *x, bool reusable)
{
    upstream_cancel(&x->wait);
    upclient_stop(&x->uc);
    if (x->up != NULL) {
        struct upconn *u = x->up;
        x->up = NULL;
        upstream_release(u, reusable);
    }
}

/* Ends the exchange: detached from its connection, every outside resource
 * given back, its memory recycled once the loop turn's callbacks are done. */
static void exchange_retire(struct exchange *x)
{
    if (x->state == X_DONE)
        return;
    exchange_release_upstream(x, x->up_reusable);
    shadow_primary_failed(x->cmp, NULL); /* a no-op once the primary is done */
    shadow_release(x->cmp);
    x->cmp = NULL;
    if (x->c != NULL && x->c->x == x)
        x->c->x = NULL;
    x->c = NULL;
    x_set_state(x, X_DONE);
    struct conn_worker *cw = x->w->conns;
    x->next = cw->retired;
    cw->retired = x;
    if (cw->closed) {
        reap(cw);
    } else if (!cw->reaper_on) {
        cw->reaper_on = true;
        uv_check_start(&cw->reaper, on_reaper);
    }
}

/* The client connection went away (or the drain deadline closed it): the
 * request is accounted for as a 499 and everything of the exchange dropped. */
static void exchange_abort(struct exchange *x)
{
    if (x->state == X_TUNNEL) {
        tunnel_end(x, x->w->stopped ? "shutdown" : "client"); /* either side ends a tunnel */
        return;
    }
    if (!x->accounted) {
        x->status = 499; /* nginx's "client closed request" */
        exchange_account(x, x->w->stopped ? INTR_SHUTDOWN : INTR_CLIENT_ABORT);
    }
    x->up_reusable = false;
    exchange_retire(x);
}

/* ---- access log ------------------------------------------------------------------- */

/* The client's SNI made safe for a log line (it is the client's bytes). */
static void sni_text(const struct conn *c, char *out, size_t len)
{
    const char *sni = tls_sni(c->t);
    if (sni == NULL || *sni == '\0')
        sni = "-";
    size_t i = 0;
    for (; sni[i] != '\0' && i + 1 < len; i++) {
        unsigned char ch = (unsigned char)sni[i];
        out[i] = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                         ch == '.' || ch == '-' || ch == '_'
                     ? (char)ch
                     : '?';
    }
    out[i] = '\0';
}

/* One access log line; every answer ficus gives goes through here. TLS
 * connections also say which version and which name (SNI) they asked for;
 * extra (NULL or " key=value ...") says more: how a response that did not end
 * whole ended (outcome=...), the bytes a tunnel carried to the backend. */
static void access_log_line(struct conn *c, struct span method, struct span target,
                            const char *route, const char *backend, int status, int64_t bytes,
                            double ms, const char *id, const char *extra)
{
    if (c->w->srv->access_fd < 0)
        return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char tls[160] = "";
    if (c->t != NULL) {
        char sni[100];
        sni_text(c, sni, sizeof(sni));
        snprintf(tls, sizeof(tls), " tls=%s sni=%s", tls_version(c->t), sni);
    }
    char esc_method[64], esc_target[520];
    http1_log_escape(esc_method, sizeof(esc_method), method);
    http1_log_escape(esc_target, sizeof(esc_target), target);
    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ client=%s method=%s target=\"%s\" "
                     "route=%s backend=%s status=%d bytes=%lld ms=%.3f id=%s%s%s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, c->ip, esc_method, esc_target, route, backend, status,
                     (long long)bytes, ms, id, tls, extra ? extra : "");
    if (n > 0)
        worker_access_log(c->w, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static const char *const interrupt_names[INTR_N] = {"upstream_reset", "upstream_timeout",
                                                    "client_abort", "shutdown"};

/* Accounts for the exchange once, however it ends: the access log line, the
 * request counters and the latency histogram. A response that did not end
 * whole (intr < INTR_N) is also counted by how it ended. */
static void exchange_account(struct exchange *x, int intr)
{
    if (x->accounted)
        return;
    x->accounted = true;
    uint64_t us = io_now_us() - x->t0;
    if (x->w->srv->access_fd >= 0) { /* no clock read on the request path when the log is off */
        char extra[64] = "";
        int n = 0;
        if (x->status == 101)
            n = snprintf(extra, sizeof(extra), " bytes_up=%lld tunnel_end=%s",
                         (long long)x->tunnel_up, x->tunnel_end ? x->tunnel_end : "-");
        if (intr < INTR_N && n >= 0 && (size_t)n < sizeof(extra))
            snprintf(extra + n, sizeof(extra) - (size_t)n, " outcome=%s", interrupt_names[intr]);
        access_log_line(x->c, x->req.method, x->req.target, x->rt ? x->rt->name : "-",
                        x->backend_role, x->status, x->resp_bytes, (double)us / 1000.0, x->reqid,
                        extra[0] ? extra : NULL);
    }
    if (x->rt == NULL || x->rt->state == NULL || x->backend < 0)
        return;
    struct route_counters *rc = &x->rt->state->counters[x->w->id];
    int is_new = x->backend == x->rt->new_ && x->backend != x->rt->legacy;
    /* A response the backend cut is its error (the guard counts it); a client
     * that left is a 499. */
    int status = intr == INTR_UPSTREAM_RESET || intr == INTR_UPSTREAM_TIMEOUT ? 0 : x->status;
    state_count_request(rc, is_new, status, us);
    if (intr < INTR_N)
        counter_add(&rc->interrupted[is_new][intr], 1);
}

/* ---- exchanges: the end ------------------------------------------------------------- */

/* Has a byte of the response gone to the client? (The head waits in out_head
 * for the first body bytes; until it leaves, a clean error can still replace
 * it.) */
static bool x_client_got_bytes(const struct exchange *x)
{
    return x->state == X_RESPONDING && x->out_head.len == 0;
}

/* Ends the exchange once the response is complete: counts it, logs it, and
 * the connection goes on with the next request or closes. */
static void exchange_finish(struct exchange *x)
{
    struct conn *c = x->c;
    if (!x->req_done) {
        /* The response came before the whole request body: the rest of the
         * body cannot be told from a next request, so the connection ends. */
        x->keep_alive = false;
        x->up_reusable = false;
    }
    exchange_account(x, INTR_N);
    bool keep = x->keep_alive && !c->w->draining;
    bool unread = !x->req_done;
    exchange_retire(x);
    if (!keep) {
        c->linger = c->linger || unread;
        conn_end(c);
        return;
    }
    conn_resume_input(c);
}

/* Answers the client with an error (when nothing was sent yet) and ends the
 * exchange; the upstream connection is not reused. */
static void exchange_fail(struct exchange *x, int status, const char *msg)
{
    if (x->state == X_DONE)
        return;
    struct conn *c = x->c;
    x->up_reusable = false;
    exchange_release_upstream(x, false);
    if (x_client_got_bytes(x)) {
        /* Part of a response went out: the client must see it cut short, and
         * the request is accounted for as the backend's failure. */
        x->status = status;
        exchange_account(x, status == 504 ? INTR_UPSTREAM_TIMEOUT : INTR_UPSTREAM_RESET);
        conn_close(c);
        return;
    }
    buf_reset(&x->out_head); /* a head still waiting is replaced by the error */
    shadow_primary_failed(x->cmp, status >= 500 ? (x->up_error ? x->up_error : "reset") : NULL);
    x->status = status;
    x->keep_alive = x->keep_alive && x->req_done && status < 500;
    /* The rest of the body is not read: the client may still be sending it. */
    c->linger = c->linger || !x->req_done;
    struct buf b;
    buf_init(&b, 0);
    if (http1_write_error(&b, status, msg, x->keep_alive) == 0)
        conn_write_buf(c, &b);
    buf_dispose(&b);
    x->req_done = true; /* whatever body is left is not read */
    log_debug("conn", "exchange failed status=%d reason=\"%s\" id=%s", status, msg, x->reqid);
    exchange_finish(x);
}

/* ---- request body ------------------------------------------------------------------ */

static void write_up(struct exchange *x, const uv_buf_t *bufs, unsigned n, struct rbuf *rb,
                     void *owned)
{
    if (upstream_write(x->up, bufs, n, rb, owned) != 0)
        exchange_fail(x, 502, "upstream write failed");
}

static void send_body_up(struct exchange *x, struct rbuf *rb, const char *p, size_t n)
{
    void *owned = NULL;
    if (rb == NULL) {
        /* Bytes from the connection's own buffer must be copied to outlive it. */
        owned = malloc(n);
        if (owned == NULL) {
            exchange_fail(x, 500, "out of memory");
            return;
        }
        memcpy(owned, p, n);
        p = owned;
    }
    if (x->chunked_up) {
        char *hdr = malloc(24);
        if (hdr == NULL) {
            free(owned);
            exchange_fail(x, 500, "out of memory");
            return;
        }
        int hl = snprintf(hdr, 24, "%zx\r\n", n);
        uv_buf_t bufs[3] = {uv_buf_init(hdr, (unsigned)hl), uv_buf_init((char *)p, (unsigned)n),
                            uv_buf_init("\r\n", 2)};
        /* The chunk header rides as the owned block; the data, if copied, goes alone. */
        if (owned != NULL) {
            uv_buf_t hb = bufs[0];
            if (upstream_write(x->up, &hb, 1, NULL, hdr) != 0) {
                free(owned);
                exchange_fail(x, 502, "upstream write failed");
                return;
            }
            uv_buf_t rest[2] = {bufs[1], bufs[2]};
            write_up(x, rest, 2, NULL, owned);
        } else {
            write_up(x, bufs, 3, rb, hdr);
        }
        return;
    }
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    write_up(x, &b, 1, rb, owned);
}

static size_t exchange_request_body(struct exchange *x, struct rbuf *rb, const char *p, size_t len)
{
    size_t off = 0;
    while (off < len && !x->req_done) {
        size_t doff, dlen;
        int64_t n = http1_body_step(&x->reqbody, p + off, len - off, &doff, &dlen);
        if (n < 0) {
            exchange_fail(x, 400, "bad request body framing");
            return len;
        }
        if (dlen > 0) {
            x->req_bytes += (int64_t)dlen;
            if (x->req_bytes > x->cfg->max_request_body_bytes) {
                exchange_fail(x, 413, "request body too large");
                return len;
            }
            shadow_request_body(x->cmp, p + off + doff, dlen);
            send_body_up(x, rb, p + off + doff, dlen);
            if (x->state == X_DONE)
                return len;
        }
        off += (size_t)n;
        if (x->reqbody.done) {
            x->req_done = true;
            shadow_request_done(x->cmp);
            if (x->chunked_up) {
                uv_buf_t last = uv_buf_init("0\r\n\r\n", 5);
                write_up(x, &last, 1, NULL, NULL);
                if (x->state == X_DONE)
                    return len;
            }
        }
        if (n == 0)
            break;
    }
    /* A backend still being sent the request is not late: its deadline
     * counts from the last body byte. */
    if (off > 0 && (x->state == X_SENDING || x->state == X_RESPONDING))
        upclient_deadline(&x->uc, UPCLIENT_IDLE, x->cfg->upstream_ms);
    if (!x->req_done && x->up != NULL && upstream_queued(x->up) >= WRITE_HIGH_WATER)
        conn_update_reading(x->c); /* pauses until the backend drains */
    return off;
}

/* ---- response ------------------------------------------------------------------------ */

static void send_body_down(struct exchange *x, struct rbuf *rb, const char *p, size_t n)
{
    struct conn *c = x->c;
    x->resp_bytes += (int64_t)n;
    shadow_primary_body(x->cmp, p, n);
    /* The pending head (if any) and the chunk header travel in one owned
     * block, so that head and body leave in one write. */
    struct buf *pre = &x->out_head;
    if (x->chunked_down && buf_printf(pre, "%zx\r\n", n) != 0) {
        conn_close(c);
        return;
    }
    uv_buf_t bufs[3];
    unsigned nb = 0;
    char *owned = NULL;
    if (pre->len > 0) {
        bufs[nb++] = uv_buf_init(pre->data, (unsigned)pre->len);
        owned = pre->data;
        buf_init(pre, 0);
    }
    bufs[nb++] = uv_buf_init((char *)p, (unsigned)n);
    if (x->chunked_down)
        bufs[nb++] = uv_buf_init("\r\n", 2);
    conn_write(c, bufs, nb, rb, owned);
    if (c->state == CONN_OPEN && x->up != NULL &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >= WRITE_HIGH_WATER)
        upstream_pause(x->up, true); /* resumes in on_conn_written */
}

/* Sends a head still waiting for body bytes. */
static void flush_head(struct exchange *x)
{
    if (x->out_head.len > 0)
        conn_write_buf(x->c, &x->out_head);
}

/* The response head for the client, from the backend's (x->resp): written with
 * the first body bytes (send_body_down) or by flush_head. */
static int response_head(struct exchange *x)
{
    const struct http_head *r = &x->resp;
    x->status = r->status;
    shadow_primary_head(x->cmp, x->rhead.data, x->rhead.len);
    bool has_body = http1_response_has_body(x->req.is_head, r->status);
    int64_t out_len;
    if (!has_body)
        out_len = -2;
    else if (r->chunked)
        out_len = -1;
    else if (r->content_length >= 0)
        out_len = r->content_length;
    else
        out_len = -1;
    if (!x->req_done)
        x->keep_alive = false;
    if (out_len == -1 && x->req.version_minor == 0) {
        /* HTTP/1.0 has no chunked coding: the close ends the body. */
        x->keep_alive = false;
        out_len = -3;
    }
    x->chunked_down = out_len == -1;
    int rc = http1_write_response_head(&x->out_head, r, out_len == -3 ? -2 : out_len,
                                       x->keep_alive && !x->w->draining);
    if (x->w->draining)
        x->keep_alive = false;
    return rc;
}

static void invalid_response(struct exchange *x)
{
    log_warn("conn", "invalid upstream response backend=%s server=%s id=%s", x->backend_role,
             x->up != NULL ? upstream_label(x->up) : "-", x->reqid);
    if (x->up != NULL)
        upstream_outcome(x->up, LB_FAILURE, 0);
    x->up_error = "invalid_response";
    exchange_fail(x, 502, "invalid upstream response");
}

static bool up_on_head(void *ctx, const struct http_head *h, const char *raw, size_t len)
{
    (void)h;
    (void)raw;
    (void)len;
    struct exchange *x = ctx;
    /* A 5xx counts towards ejecting the server, whatever happens next. */
    upstream_outcome(x->up, x->resp.status >= 500 ? LB_FAILURE : LB_SUCCESS, x->resp.status);
    if (x->upgrade && x->resp.status == 101)
        return tunnel_start(x);
    if (x->resp.status >= 500 && try_fallback(x, FALLBACK_5XX))
        return false; /* legacy answers instead: this response is dropped */
    x_set_state(x, X_RESPONDING);
    if (response_head(x) != 0) {
        invalid_response(x);
        return false;
    }
    return true;
}

static bool up_on_body(void *ctx, struct rbuf *rb, const char *p, size_t n)
{
    struct exchange *x = ctx;
    if (x->state == X_TUNNEL) {
        tunnel_down(x, rb, p, n);
        return x->state == X_TUNNEL;
    }
    send_body_down(x, rb, p, n);
    return x->state == X_RESPONDING;
}

static void up_on_done(void *ctx, bool reusable)
{
    struct exchange *x = ctx;
    if (x->state == X_TUNNEL) {
        tunnel_end(x, "backend"); /* the backend closed its side */
        return;
    }
    x->up_reusable = reusable;
    if (x->chunked_down) {
        if (x->out_head.len > 0) {
            buf_puts(&x->out_head, "0\r\n\r\n");
        } else {
            uv_buf_t last = uv_buf_init("0\r\n\r\n", 5);
            conn_write(x->c, &last, 1, NULL, NULL);
        }
    }
    flush_head(x);
    shadow_primary_done(x->cmp, x->resp_bytes);
    exchange_finish(x);
}

/* ---- tunnels ------------------------------------------------------------------------ */

/* The backend switched protocols: its 101 goes to the client, and from now on
 * bytes pass both ways as they are, with backpressure each way, until either
 * side closes or neither sends for timeouts.tunnel_idle_ms. */
static bool tunnel_start(struct exchange *x)
{
    struct conn *c = x->c;
    x->status = 101;
    x_set_state(x, X_TUNNEL);
    atomic_fetch_add_explicit(&x->w->counters.tunnels_open, 1, memory_order_relaxed);
    upclient_deadline(&x->uc, UPCLIENT_IDLE, 0); /* the connection's deadline covers both ways */
    if (http1_write_response_head(&x->out_head, &x->resp, -2, true) != 0) {
        tunnel_end(x, "error");
        return false;
    }
    flush_head(x);
    log_debug("conn", "tunnel opened id=%s protocol=%.*s", x->reqid, (int)x->resp.upgrade.len,
              x->resp.upgrade.p);
    conn_resume_input(c); /* bytes the client sent after its request, then reading */
    return x->state == X_TUNNEL;
}

/* Client bytes for the backend: p[0, len) lies in rb, or in the connection's
 * own buffer when rb is NULL (copied then). Returns len: a tunnel takes all. */
static size_t tunnel_up(struct exchange *x, struct rbuf *rb, const char *p, size_t len)
{
    void *owned = NULL;
    if (rb == NULL) {
        owned = malloc(len);
        if (owned == NULL) {
            tunnel_end(x, "error");
            return len;
        }
        memcpy(owned, p, len);
        p = owned;
    }
    x->tunnel_up += (int64_t)len;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)len);
    if (upstream_write(x->up, &b, 1, rb, owned) != 0) {
        tunnel_end(x, "backend");
        return len;
    }
    conn_arm_timer(x->c); /* a byte either way keeps the tunnel alive */
    if (upstream_queued(x->up) >= WRITE_HIGH_WATER)
        conn_update_reading(x->c); /* pauses until the backend drains (up_on_drain) */
    return len;
}

/* Backend bytes for the client. */
static void tunnel_down(struct exchange *x, struct rbuf *rb, const char *p, size_t n)
{
    struct conn *c = x->c;
    x->resp_bytes += (int64_t)n;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    conn_write(c, &b, 1, rb, NULL);
    if (c->state != CONN_OPEN)
        return;
    conn_arm_timer(c);
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >= WRITE_HIGH_WATER)
        upstream_pause(x->up, true); /* resumes in on_conn_written */
}

/* Ends the tunnel (why: client, backend, idle, shutdown, error): one access
 * log line with the bytes each way, the backend's connection closed, the
 * client's closed once what it was sent is written. */
static void tunnel_end(struct exchange *x, const char *why)
{
    if (x->state != X_TUNNEL)
        return;
    struct conn *c = x->c;
    x->tunnel_end = why;
    atomic_fetch_sub_explicit(&x->w->counters.tunnels_open, 1, memory_order_relaxed);
    log_debug("conn", "tunnel closed id=%s by=%s up=%lld down=%lld", x->reqid, why,
              (long long)x->tunnel_up, (long long)x->resp_bytes);
    exchange_account(x, strcmp(why, "shutdown") == 0 ? INTR_SHUTDOWN : INTR_N);
    x->up_reusable = false;
    exchange_retire(x);
    if (c != NULL && c->state == CONN_OPEN)
        conn_end(c);
}

static void exchange_connect(struct exchange *x);
static bool is_idempotent(const struct http_head *req);

/* When new, the primary, failed in a way the route lists and nothing reached
 * the client yet, an idempotent request without a body goes to legacy once. */
static bool try_fallback(struct exchange *x, unsigned why)
{
    const struct route_cfg *rt = x->rt;
    if (rt == NULL || !(rt->fallback & why) || x->fell_back || x->state == X_RESPONDING ||
        x->backend != rt->new_ || rt->legacy == rt->new_ || !is_idempotent(&x->req) ||
        x->reqbody.kind != BODY_NONE)
        return false;
    log_info("conn", "fallback to legacy route=%s reason=%s id=%s", rt->name,
             why == FALLBACK_5XX       ? "5xx"
             : why == FALLBACK_TIMEOUT ? "timeout"
                                       : "connect_error",
             x->reqid);
    if (rt->state != NULL) {
        /* new's failed attempt counts as new's, then legacy answers. */
        struct route_counters *rc = &rt->state->counters[x->w->id];
        counter_add(&rc->fallbacks, 1);
        state_count_request(rc, 1, why == FALLBACK_5XX ? x->resp.status : 0, io_now_us() - x->t0);
    }
    exchange_release_upstream(x, false);
    /* Legacy now answers: a comparison with legacy as the shadow means nothing. */
    shadow_primary_failed(x->cmp, NULL);
    shadow_release(x->cmp);
    x->cmp = NULL;
    x->fell_back = true;
    x->backend = rt->legacy;
    x->backend_role = "legacy";
    exchange_connect(x);
    return true;
}

static bool is_idempotent(const struct http_head *req)
{
    static const char *const m[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"};
    for (size_t i = 0; i < ARRAY_SIZE(m); i++) {
        if (span_eq(req->method, m[i]))
            return true;
    }
    return false;
}

static void exchange_retry(struct exchange *x);

static void up_on_error(void *ctx, int err)
{
    struct exchange *x = ctx;
    if (x->state == X_TUNNEL) {
        tunnel_end(x, "backend");
        return;
    }
    bool nothing_back = !upclient_got_any(&x->uc);
    if (err == FICUS_EBADRESP) {
        invalid_response(x);
        return;
    }
    /* A pooled connection that fails at once was most likely closed by the
     * server while it sat idle: no verdict on the server. */
    bool stale = nothing_back && err != FICUS_ETIMEOUT && upstream_reused(x->up);
    upstream_outcome(x->up, stale ? LB_ABANDONED : LB_FAILURE, 0);
    if (nothing_back && err != FICUS_ETIMEOUT && !x->retried && is_idempotent(&x->req) &&
        x->reqbody.kind == BODY_NONE && (stale || upstream_endpoints(x->pools, x->backend) > 1)) {
        /* Nothing reached the client and the request may be sent twice: once
         * more, on another server when there is one. */
        log_debug("conn", "retrying on a new connection server=%s err=%s id=%s",
                  upstream_label(x->up), ficus_strerror(err), x->reqid);
        exchange_retry(x);
        return;
    }
    if (nothing_back && try_fallback(x, err == FICUS_ETIMEOUT ? FALLBACK_TIMEOUT : 0))
        return;
    x->up_error = err == FICUS_ETIMEOUT ? "timeout" : "reset";
    if (err == FICUS_ETIMEOUT) {
        log_warn("conn", "upstream timeout backend=%s server=%s id=%s", x->backend_role,
                 upstream_label(x->up), x->reqid);
        exchange_fail(x, 504, "upstream timeout");
    } else {
        log_warn("conn", "upstream failed backend=%s server=%s id=%s err=%s", x->backend_role,
                 upstream_label(x->up), x->reqid, ficus_strerror(err));
        exchange_fail(x, 502, "upstream failed");
    }
}

static void up_on_drain(void *ctx)
{
    struct exchange *x = ctx;
    conn_update_reading(x->c);
}

/* A head whose body has not started in this read goes out on its own. */
static void up_on_read_end(void *ctx)
{
    flush_head(ctx);
}

static const struct upclient_handlers exchange_handlers = {
    .on_head = up_on_head,
    .on_body = up_on_body,
    .on_done = up_on_done,
    .on_error = up_on_error,
    .on_drain = up_on_drain,
    .on_read_end = up_on_read_end,
};

/* What the rewritten request head needs to know, for the primary or the shadow. */
static void forward_info(const struct exchange *x, struct forward_info *fi, bool shadow)
{
    const struct conn *c = x->c;
    memset(fi, 0, sizeof(*fi));
    fi->client_ip = (struct span){c->ip, strlen(c->ip)};
    fi->tls = c->tls;
    fi->request_id = (struct span){x->reqid, strlen(x->reqid)};
    fi->shadow = shadow;
    if (x->rt != NULL && x->rt->override_header != NULL)
        fi->drop = (struct span){x->rt->override_header, strlen(x->rt->override_header)};
    /* The Host of a request without one (HTTP/1.0): the backend the head goes to. */
    int to = !shadow ? x->backend : x->backend == x->rt->new_ ? x->rt->legacy : x->rt->new_;
    const struct backend_cfg *be = &x->cfg->backends[to];
    fi->default_host = (struct span){be->host, strlen(be->host)};
    fi->default_port = be->port == (be->tls ? 443 : 80) ? 0 : be->port;
    if (x->reqbody.kind == BODY_NONE)
        fi->content_length = x->req.content_length == 0 ? 0 : -2;
    else if (x->reqbody.kind == BODY_LENGTH)
        fi->content_length = x->req.content_length;
    else
        fi->content_length = -1;
    if (x->upgrade && !shadow)
        fi->upgrade = x->req.upgrade;
}

/* No connection could be had (connect refused or timed out, TLS handshake
 * failed, no address): nothing was sent, so any request may go once to
 * another server of the backend; then legacy may take over (fallback). */
static void upstream_unavailable(struct exchange *x, int status)
{
    if (!x->retried && upstream_endpoints(x->pools, x->backend) > 1) {
        log_debug("conn", "retrying on another server err=%s id=%s", ficus_strerror(status),
                  x->reqid);
        exchange_retry(x);
        return;
    }
    if (try_fallback(x, status == FICUS_ETIMEOUT ? FALLBACK_TIMEOUT : FALLBACK_CONNECT_ERROR))
        return;
    x->up_error = status == FICUS_ETIMEOUT ? "timeout" : "connect_error";
    if (status == FICUS_ETIMEOUT)
        exchange_fail(x, 504, "upstream connect timeout");
    else if (status == FICUS_ETLS)
        exchange_fail(x, 502, "upstream TLS handshake failed");
    else
        exchange_fail(x, 502, "upstream unreachable");
}

static void on_upstream_ready(void *ctx, struct upconn *u, int status)
{
    struct exchange *x = ctx;
    struct conn *c = x->c;
    if (status != 0) {
        upstream_unavailable(x, status);
        return;
    }
    x->up = u;
    x->attempts++;
    upclient_start(&x->uc, u, &exchange_handlers, x, &x->rhead, &x->resp, x->req.is_head,
                   x->cfg->max_header_bytes, UPCLIENT_IDLE, x->cfg->upstream_ms);
    if (x->upgrade)
        upclient_expect_upgrade(&x->uc);

    struct forward_info fi;
    forward_info(x, &fi, false);
    x->chunked_up = fi.content_length == -1;

    struct buf head;
    buf_init(&head, 0);
    if (http1_write_request_head(&head, &x->req, &fi) != 0) {
        buf_dispose(&head);
        exchange_fail(x, 500, "out of memory");
        return;
    }
    uv_buf_t hb = uv_buf_init(head.data, (unsigned)head.len);
    if (upstream_write(u, &hb, 1, NULL, head.data) != 0) {
        exchange_fail(x, 502, "upstream write failed");
        return;
    }
    x_set_state(x, X_SENDING);
    if (x->req.expect_continue && !x->req_done && c->in.len == 0) {
        uv_buf_t cont = uv_buf_init("HTTP/1.1 100 Continue\r\n\r\n", 25);
        conn_write(c, &cont, 1, NULL, NULL);
    }
    if (x->req_done) {
        /* The shadow leaves after the primary, never ahead of it. */
        shadow_request_done(x->cmp);
        return;
    }
    conn_resume_input(c);
}

static void exchange_connect(struct exchange *x)
{
    x_set_state(x, X_CONNECTING);
    /* A request that would be retried on a fresh connection anyway needs no
     * check that a pooled one is still alive. */
    x->wait.check_idle = !(is_idempotent(&x->req) && x->reqbody.kind == BODY_NONE);
    int rc = upstream_acquire(x->pools, x->backend, &x->wait, on_upstream_ready, x);
    if (rc != 0)
        upstream_unavailable(x, rc);
}

/* The second and last attempt of a request whose first one failed before any
 * byte reached the client: on another server of the backend when there is
 * one, on a connection checked to be alive. */
static void exchange_retry(struct exchange *x)
{
    x->retried = true;
    exchange_release_upstream(x, false);
    x_set_state(x, X_CONNECTING);
    x->wait.check_idle = true;
    int rc = upstream_retry(x->pools, x->backend, &x->wait, on_upstream_ready, x);
    if (rc != 0)
        upstream_unavailable(x, rc);
}

/* The 8 lowercase hex digits of v, as "%08x" prints them: the nibbles spread
 * to one a byte, then made digits or letters all at once (digit by digit
 * from a table was 2 % of a small request's instructions). */
static void hex8(char *out, uint32_t v)
{
    uint64_t x = v;
    x = ((x & 0xffff0000ULL) << 16) | (x & 0xffffULL);
    x = ((x & 0x0000ff000000ff00ULL) << 8) | (x & 0x000000ff000000ffULL);
    x = ((x & 0x00f000f000f000f0ULL) << 4) | (x & 0x000f000f000f000fULL);
    uint64_t letters = ((x + 0x0606060606060606ULL) >> 4) & 0x0101010101010101ULL;
    x += 0x3030303030303030ULL + letters * ('a' - '0' - 10);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    x = __builtin_bswap64(x); /* the most significant digit first */
    memcpy(out, &x, 8);
#else
    for (int i = 0; i < 8; i++)
        out[7 - i] = (char)(x >> (8 * i));
#endif
}

static void make_request_id(struct exchange *x)
{
    const struct http_header *h = http1_find(&x->req, "x-request-id");
    if (h != NULL && h->value.len > 0 && h->value.len < sizeof(x->reqid)) {
        bool ok = true;
        for (size_t i = 0; i < h->value.len && ok; i++)
            ok = h->value.p[i] > 0x20 && h->value.p[i] < 0x7f && h->value.p[i] != '"';
        if (ok) {
            memcpy(x->reqid, h->value.p, h->value.len);
            x->reqid[h->value.len] = '\0';
            return;
        }
    }
    /* 32 hex digits, as "%016llx%016llx" would print them, without printf. */
    uint64_t r0 = worker_random(x->w), r1 = worker_random(x->w);
    hex8(x->reqid, (uint32_t)(r0 >> 32));
    hex8(x->reqid + 8, (uint32_t)r0);
    hex8(x->reqid + 16, (uint32_t)(r1 >> 32));
    hex8(x->reqid + 24, (uint32_t)r1);
    x->reqid[32] = '\0';
}

/* Is the chunked framing of the body bytes already at hand valid so far? Checked
 * before the head goes upstream, so that a request whose framing is already
 * known bad never reaches a backend, not even in part. */
static bool body_prefix_ok(const struct body_framer *f, const char *p, size_t len)
{
    struct body_framer probe = *f;
    size_t off = 0;
    while (off < len && !probe.done) {
        size_t doff, dlen;
        int64_t n = http1_body_step(&probe, p + off, len - off, &doff, &dlen);
        if (n < 0)
            return false;
        if (n == 0)
            break;
        off += (size_t)n;
    }
    return true;
}

/* Starts the exchange for the head at head; rest holds the bytes that followed
 * it in the same read (the start of the body, or a next request). */
static void exchange_start(struct conn *c, const char *head, size_t head_len, const char *rest,
                           size_t rest_len)
{
    struct worker *w = c->w;
    struct conn_worker *cw = w->conns;
    atomic_fetch_add_explicit(&w->counters.requests, 1, memory_order_relaxed);
    struct exchange *x = exchange_get(cw, c);
    if (x != NULL && x->head_cap < head_len) {
        char *bigger = realloc(x->head_bytes, head_len);
        if (bigger != NULL) {
            x->head_bytes = bigger;
            x->head_cap = head_len;
        }
    }
    if (x == NULL || x->head_cap < head_len) {
        if (x != NULL) {
            x->next = cw->spares; /* back where it came from, unused */
            cw->spares = x;
            cw->n_spares++;
            pool_set_unref(x->pools);
            config_unref(x->cfg);
        }
        conn_reject(c, 500, "out of memory");
        return;
    }
    char *copy = x->head_bytes;
    memcpy(copy, head, head_len);
    c->x = x;
    conn_no_deadline(c);
    c->head_timer = false;

    if (http1_parse_head(&x->req, copy, head_len, true) != 0) {
        c->linger = true; /* the body, if any, is not read */
        x->keep_alive = false;
        x->req_done = true;
        exchange_fail(x, 400, "bad request");
        return;
    }
    x->keep_alive = x->req.keep_alive;
    make_request_id(x);
    if (x->req.chunked) {
        http1_body_init(&x->reqbody, BODY_CHUNKED, 0);
    } else if (x->req.content_length > 0) {
        if (x->req.content_length > x->cfg->max_request_body_bytes) {
            c->linger = true; /* the body, if any, is not read */
            x->req_done = true;
            x->keep_alive = false;
            exchange_fail(x, 413, "request body too large");
            return;
        }
        http1_body_init(&x->reqbody, BODY_LENGTH, (uint64_t)x->req.content_length);
    } else {
        http1_body_init(&x->reqbody, BODY_NONE, 0);
    }
    x->req_done = x->reqbody.done;
    if (x->reqbody.kind == BODY_CHUNKED && !body_prefix_ok(&x->reqbody, rest, rest_len)) {
        c->linger = true; /* the body, if any, is not read */
        x->req_done = true;
        x->keep_alive = false;
        exchange_fail(x, 400, "bad request body framing");
        return;
    }

    int ri = router_match(x->cfg, &x->req);
    if (ri < 0) {
        x->keep_alive = x->keep_alive && x->req_done;
        exchange_fail(x, 404, "no route");
        return;
    }
    x->rt = &x->cfg->routes[ri];
    const struct route_state *rs = x->rt->state;
    struct split_decision d = router_decide(
        x->rt,
        rs ? atomic_load_explicit(&rs->new_percent, memory_order_relaxed) : x->rt->new_percent,
        rs ? atomic_load_explicit(&rs->shadow_percent, memory_order_relaxed)
           : x->rt->shadow_percent,
        &x->req, (struct span){c->ip, strlen(c->ip)}, worker_random(w));
    if (d.status != 0) {
        x->keep_alive = x->keep_alive && x->req_done;
        exchange_fail(x, d.status, "invalid override header");
        return;
    }
    x->backend = d.primary == SPLIT_NEW ? x->rt->new_ : x->rt->legacy;
    x->backend_role = d.primary == SPLIT_NEW ? "new" : "legacy";
    /* An upgrade (WebSocket) is carried as a tunnel, never shadowed. h2c is not
     * one ficus makes (no HTTP/2 here): such a request goes on as plain
     * HTTP/1.1, its Upgrade dropped as hop-by-hop, as RFC 9110 lets a server
     * ignore it. So does an upgrade asked with a body. */
    if (x->req.upgrade.len > 0 && x->reqbody.kind == BODY_NONE &&
        !span_ieq(x->req.upgrade, "h2c")) {
        if (!x->rt->allow_upgrade) {
            exchange_fail(x, 403, "upgrade not allowed on this route");
            return;
        }
        x->upgrade = true;
        d.shadow = false;
    }
    if (d.shadow) {
        struct forward_info fi;
        forward_info(x, &fi, true);
        struct buf shead;
        buf_init(&shead, 0);
        if (http1_write_request_head(&shead, &x->req, &fi) == 0)
            x->cmp = shadow_begin(w, x->cfg, x->pools, x->rt, &x->req, d.primary == SPLIT_NEW,
                                  x->reqid, &shead, false, fi.content_length);
        buf_dispose(&shead);
    } else if (x->rt->shadow && x->rt->state != NULL &&
               !shadow_method_allowed(x->rt, x->req.method)) {
        counter_add(&x->rt->state->counters[w->id].shadow[SHADOW_SKIPPED_METHOD], 1);
    }
    exchange_connect(x);
}

/* ---- accept and drain ------------------------------------------------------------------- */

void conn_accept(struct worker *w, uv_stream_t *listener, struct tls_ctx *tls)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    uv_tcp_init(&w->loop, &c->tcp);
    uv_timer_init(&w->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->w = w;
    c->tls = tls != NULL;
    /* Room for one read past a head; on TLS a read can also finish a record
     * begun in the read before it. */
    buf_init(&c->in, w->cfg->max_header_bytes + (tls != NULL ? 2 * RBUF_SIZE : RBUF_SIZE));
    list_push(&w->conns->conns, &c->node);
    atomic_fetch_add_explicit(&w->counters.conns_active, 1, memory_order_relaxed);
    long total = atomic_fetch_add_explicit(&w->srv->conns_total, 1, memory_order_relaxed) + 1;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    if (total > w->cfg->max_connections || w->draining) {
        conn_close(c); /* over the limit: refused early, never queued */
        return;
    }
    if (tls != NULL && (c->t = tls_server_new(tls)) == NULL) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->ip, sizeof(c->ip));
        else
            uv_ip4_name((struct sockaddr_in *)&ss, c->ip, sizeof(c->ip));
    }
    conn_update_reading(c);
}

void conn_drain(struct worker *w)
{
    struct list *head = &w->conns->conns;
    for (struct list *n = head->next, *next; n != head; n = next) {
        next = n->next;
        struct conn *c = container_of(n, struct conn, node);
        if (c->x == NULL && c->in.len == 0 && c->writes_pending == 0)
            conn_close(c);
        else if (c->x == NULL)
            c->close_after_flush = true;
    }
}

bool conn_none_open(const struct worker *w)
{
    return list_empty(&w->conns->conns);
}

static void on_reaper_closed(uv_handle_t *h)
{
    (void)h;
}

void conn_close_all(struct worker *w)
{
    struct conn_worker *cw = w->conns;
    struct list *head = &cw->conns;
    for (struct list *n = head->next, *next; n != head; n = next) {
        next = n->next;
        conn_close(container_of(n, struct conn, node));
    }
    /* No more loop turns to wait for: what retires from now on is recycled at once. */
    reap(cw);
    if (!cw->closed) {
        cw->closed = true;
        uv_close((uv_handle_t *)&cw->reaper, on_reaper_closed);
    }
}
