/* One client connection and the exchange (request and response) it runs.
 *
 * A connection runs one exchange at a time; pipelined requests wait in the
 * connection's input buffer and are answered in order. Body bytes are never
 * copied on the way through: the read buffer that received them is written on
 * with a reference held until the write completes. */
#include "ficus/conn.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/http1.h"
#include "ficus/io.h"
#include "ficus/log.h"
#include "ficus/router.h"
#include "ficus/server.h"
#include "ficus/shadow.h"
#include "ficus/state.h"
#include "ficus/tls.h"
#include "ficus/upstream.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Above this many queued bytes the reading side pauses; below LOW it resumes. */
#define WRITE_HIGH_WATER (256 * 1024)
#define WRITE_LOW_WATER  (64 * 1024)

enum conn_state { CONN_OPEN, CONN_CLOSING };

struct exchange;

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct worker *w;
    struct conn *prev, *next;
    enum conn_state state;
    int open_handles;
    bool tls;      /* accepted on a TLS listener */
    struct tls *t; /* its TLS state; NULL on plain connections */
    bool reading;
    bool close_after_flush;
    bool counted_idle;
    bool peer_eof;     /* the client half-closed after a complete request */
    bool write_failed; /* a write failed at once; the close waits for the next loop turn */
    int writes_pending;
    uint32_t gen; /* counts exchanges: tells a live exchange from a freed one */
    struct head_scan scan;
    bool head_timer;          /* the header deadline is running */
    struct deadline deadline; /* enforced by timer */
    struct buf in;            /* bytes read but not yet used (partial head, pipelined requests) */
    struct exchange *x;
    char ip[INET6_ADDRSTRLEN];
};

struct exchange {
    struct conn *c;
    uint32_t gen;
    struct worker *w;
    struct config *cfg;
    struct pool_set *pools;
    const struct route_cfg *rt;
    int backend;
    const char *backend_role; /* "legacy" or "new" */
    uint64_t t0;

    char *head_bytes; /* the request head (owned copy); req's spans point here */
    size_t head_cap;  /* bytes allocated at head_bytes */
    struct body_framer reqbody;
    int64_t req_bytes;
    bool req_done;
    bool chunked_up; /* the request body goes up chunked */

    struct upstream_wait wait;
    bool fell_back;         /* new failed and legacy took over */
    struct comparison *cmp; /* the parallel run fed by this exchange, or NULL */
    struct buf out_head;    /* the response head, sent with the first body bytes */
    const char *up_error;   /* how the primary failed, for the comparison */
    struct upconn *up;
    bool up_ready; /* connected and the head written */
    int attempts;

    struct head_scan rscan;
    struct buf rhead; /* the response head as it arrives */
    bool resp_head_done;
    struct body_framer respbody;
    bool chunked_down; /* the response goes to the client chunked */
    bool resp_started; /* a byte went to the client */
    bool resp_done;
    bool up_reusable;
    int status;
    int64_t resp_bytes;
    bool keep_alive;
    char reqid[64];
    struct exchange *next_spare; /* the worker's spare exchanges */

    /* Last: a reused exchange clears everything above and only the fixed
     * part of these two (see exchange_get). */
    struct http_head req;
    struct http_head resp;
};

/* Spare exchanges a worker keeps with their buffers: an exchange is 9 KiB
 * (two heads of 128 header slots), and allocating and zeroing it, its head
 * copy and its response head buffer was a malloc, a calloc and a realloc per
 * request. */
#define SPARE_EXCHANGES 64
/* A spare's buffers larger than this are freed rather than kept. */
#define SPARE_KEEP_BYTES (16 * 1024)

static void conn_close(struct conn *c);
static void conn_update_reading(struct conn *c);
static void conn_resume_input(struct conn *c);
static void exchange_abort(struct exchange *x);
static void exchange_fail(struct exchange *x, int status, const char *msg);
static void exchange_maybe_finish(struct exchange *x);
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
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    buf_dispose(&c->in);
    tls_free(c->t);
    atomic_fetch_sub_explicit(&w->counters.conns_active, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->srv->conns_total, 1, memory_order_relaxed);
    free(c);
}

/* Is the exchange numbered gen still running on c? */
static bool live(const struct conn *c, uint32_t gen)
{
    return c->state == CONN_OPEN && c->x != NULL && c->gen == gen;
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
        conn_close(c);
        return;
    }
    struct exchange *x = c->x;
    if (x != NULL && x->up != NULL &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_LOW_WATER)
        upstream_pause(x->up, false);
}

/* Writes to the client; see io_write for rb and owned. */
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

/* A write that cannot happen: closing here would free the exchange under its
 * caller, so the timer closes the connection on the next loop turn instead. */
static int conn_write_failed(struct conn *c, int rc)
{
    c->write_failed = true;
    c->close_after_flush = true;
    conn_deadline(c, 0);
    return rc;
}

/* Sends bytes already in their wire form (ciphertext on a TLS connection). */
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

/* Sends what TLS has waiting: handshake messages, alerts, records. */
static int conn_flush_tls(struct conn *c)
{
    size_t len;
    char *ct = tls_take_output(c->t, &len);
    if (ct == NULL)
        return 0;
    uv_buf_t ub = uv_buf_init(ct, (unsigned)len);
    return conn_send(c, &ub, 1, NULL, ct);
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
                            double ms, const char *id);

/* The access log line of a head refused before it became an exchange (bad
 * bytes, too large, too slow): every answer ficus gives is logged. */
static void access_log_reject(struct conn *c, int status)
{
    access_log_line(c, SPAN_LIT("-"), SPAN_LIT("-"), "-", "-", status, 0, 0.0, "-");
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
    c->close_after_flush = true;
    if (c->writes_pending == 0)
        conn_close(c);
    log_debug("conn", "rejected client=%s status=%d reason=\"%s\"", c->ip, status, msg);
}

static void on_conn_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->state == CONN_CLOSING || !deadline_expired(&c->deadline, t, on_conn_timer))
        return;
    if (c->write_failed) {
        conn_close(c);
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

/* Arms the timer that fits what the connection waits for. */
static void conn_arm_timer(struct conn *c)
{
    if (c->write_failed)
        return; /* the close is already scheduled */
    const struct config *cfg = c->w->cfg;
    if (c->x != NULL) {
        if (!c->x->req_done && c->x->up_ready)
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
 * bytes were used; the caller keeps the rest for later. */
static size_t conn_process(struct conn *c, struct rbuf *rb, const char *p, size_t len)
{
    size_t off = 0;
    while (off < len && c->state == CONN_OPEN && !c->close_after_flush) {
        struct exchange *x = c->x;
        if (x == NULL) {
            if (c->w->draining && c->scan.pos == 0)
                return off; /* no new request once draining */
            int r = http1_scan_head(&c->scan, p + off, len - off, c->w->cfg->max_header_bytes);
            if (r == 0) {
                c->scan.pos = 0; /* rescanned from the kept bytes next time */
                c->scan.state = 0;
                c->scan.line = 0;
                return off;
            }
            if (r < 0) {
                if (r == FICUS_EHEADTOOBIG)
                    conn_reject(c, 431, "request header fields too large");
                else
                    conn_reject(c, 400, "bad request");
                return len;
            }
            size_t head_len = c->scan.pos;
            memset(&c->scan, 0, sizeof(c->scan));
            exchange_start(c, p + off, head_len, p + off + head_len, len - off - head_len);
            off += head_len;
            continue;
        }
        if (x->req_done || !x->up_ready)
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
    else if (x->req_done)
        want = c->in.len == 0; /* a pipelined request waits in c->in; no epoll churn */
    else
        want = x->up_ready && c->in.len == 0 && upstream_queued(x->up) < WRITE_HIGH_WATER;
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

/* ---- exchanges -------------------------------------------------------------------- */

/* An exchange with every field cleared but the kept storage (head_bytes and
 * rhead's buffer), from the worker's spares or newly allocated. */
static struct exchange *exchange_get(struct worker *w)
{
    struct exchange *x = w->spare_exchanges;
    if (x == NULL)
        return calloc(1, sizeof(*x));
    w->spare_exchanges = x->next_spare;
    w->n_spare_exchanges--;
    char *hb = x->head_bytes;
    size_t hcap = x->head_cap;
    struct buf rh = x->rhead;
    memset(x, 0, offsetof(struct exchange, req));
    memset(&x->req, 0, offsetof(struct http_head, headers));
    memset(&x->resp, 0, offsetof(struct http_head, headers));
    x->head_bytes = hb;
    x->head_cap = hcap;
    x->rhead = rh;
    buf_reset(&x->rhead);
    return x;
}

static void exchange_free(struct exchange *x)
{
    buf_dispose(&x->out_head);
    shadow_primary_failed(x->cmp, NULL); /* no-op once the primary is done */
    shadow_release(x->cmp);
    pool_set_unref(x->pools);
    config_unref(x->cfg);
    struct worker *w = x->w;
    if (w->stopped || w->n_spare_exchanges >= SPARE_EXCHANGES) {
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
    x->next_spare = w->spare_exchanges;
    w->spare_exchanges = x;
    w->n_spare_exchanges++;
}

void conn_worker_dispose(struct worker *w)
{
    while (w->spare_exchanges != NULL) {
        struct exchange *x = w->spare_exchanges;
        w->spare_exchanges = x->next_spare;
        buf_dispose(&x->rhead);
        free(x->head_bytes);
        free(x);
    }
    w->n_spare_exchanges = 0;
}

static void exchange_release_upstream(struct exchange *x, bool reusable)
{
    upstream_cancel(&x->wait);
    if (x->up != NULL) {
        struct upconn *u = x->up;
        x->up = NULL;
        upstream_release(u, reusable);
    }
}

/* The client connection went away: drop everything of the exchange. */
static void exchange_abort(struct exchange *x)
{
    x->c->x = NULL;
    exchange_release_upstream(x, false);
    exchange_free(x);
}

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
 * connections also say which version and which name (SNI) they asked for. */
static void access_log_line(struct conn *c, struct span method, struct span target,
                            const char *route, const char *backend, int status, int64_t bytes,
                            double ms, const char *id)
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
                     "route=%s backend=%s status=%d bytes=%lld ms=%.3f id=%s%s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, c->ip, esc_method, esc_target, route, backend, status,
                     (long long)bytes, ms, id, tls);
    if (n > 0)
        worker_access_log(c->w, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void access_log(struct exchange *x)
{
    if (x->w->srv->access_fd < 0)
        return; /* no clock read on the request path when the log is off */
    access_log_line(x->c, x->req.method, x->req.target, x->rt ? x->rt->name : "-", x->backend_role,
                    x->status, x->resp_bytes, (double)(io_now_us() - x->t0) / 1000.0, x->reqid);
}

/* Ends the exchange once both directions are complete. */
static void exchange_maybe_finish(struct exchange *x)
{
    if (!x->resp_done)
        return;
    struct conn *c = x->c;
    if (!x->req_done) {
        /* The response came before the whole request body: the rest of the
         * body cannot be told from a next request, so the connection ends. */
        x->keep_alive = false;
        x->up_reusable = false;
    }
    access_log(x);
    if (x->rt != NULL && x->rt->state != NULL)
        state_count_request(&x->rt->state->counters[x->w->id],
                            x->backend == x->rt->new_ && x->backend != x->rt->legacy, x->status,
                            io_now_us() - x->t0);
    exchange_release_upstream(x, x->up_reusable);
    bool keep = x->keep_alive && !c->w->draining;
    c->x = NULL;
    exchange_free(x);
    if (!keep) {
        c->close_after_flush = true;
        if (c->writes_pending == 0)
            conn_close(c);
        return;
    }
    conn_resume_input(c);
}

/* Answers the client with an error (when nothing was sent yet) and ends the
 * exchange; the upstream connection is not reused. */
static void exchange_fail(struct exchange *x, int status, const char *msg)
{
    struct conn *c = x->c;
    exchange_release_upstream(x, false);
    if (x->resp_started && x->out_head.len > 0) {
        /* The head is still ours: nothing reached the client, so it gets a clean error. */
        buf_reset(&x->out_head);
        x->resp_started = false;
    }
    if (x->resp_started) {
        /* Part of a response went out: the client must see it cut short. */
        conn_close(c);
        return;
    }
    shadow_primary_failed(x->cmp, status >= 500 ? (x->up_error ? x->up_error : "reset") : NULL);
    x->status = status;
    x->keep_alive = x->keep_alive && x->req_done && status < 500;
    struct buf b;
    buf_init(&b, 0);
    if (http1_write_error(&b, status, msg, x->keep_alive) == 0)
        conn_write_buf(c, &b);
    buf_dispose(&b);
    x->resp_started = true;
    x->resp_done = true;
    x->req_done = true; /* whatever body is left is not read */
    log_debug("conn", "exchange failed status=%d reason=\"%s\" id=%s", status, msg, x->reqid);
    exchange_maybe_finish(x);
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
    struct conn *c = x->c;
    uint32_t gen = c->gen;
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
            if (!live(c, gen))
                return len;
        }
        off += (size_t)n;
        if (x->reqbody.done) {
            x->req_done = true;
            shadow_request_done(x->cmp);
            if (x->chunked_up) {
                uv_buf_t last = uv_buf_init("0\r\n\r\n", 5);
                write_up(x, &last, 1, NULL, NULL);
                if (!live(c, gen))
                    return len;
            }
        }
        if (n == 0)
            break;
    }
    if (live(c, gen)) {
        /* A backend still being sent the request is not late: its deadline
         * counts from the last body byte. */
        if (off > 0 && x->up != NULL && !x->resp_done)
            upstream_timeout(x->up, x->cfg->upstream_ms);
        if (x->req_done)
            exchange_maybe_finish(x);
        else if (x->up != NULL && upstream_queued(x->up) >= WRITE_HIGH_WATER)
            conn_update_reading(c); /* pauses until the backend drains */
    }
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

static void response_done(struct exchange *x)
{
    if (x->chunked_down) {
        if (x->out_head.len > 0) {
            buf_puts(&x->out_head, "0\r\n\r\n");
        } else {
            uv_buf_t last = uv_buf_init("0\r\n\r\n", 5);
            conn_write(x->c, &last, 1, NULL, NULL);
        }
    }
    flush_head(x);
    x->resp_done = true;
    shadow_primary_done(x->cmp, x->resp_bytes);
    if (x->up != NULL)
        upstream_timeout(x->up, 0);
    exchange_maybe_finish(x);
}

/* The response head is complete in x->rhead: check it and send it on. */
static int response_head(struct exchange *x)
{
    struct http_head *r = &x->resp;
    if (http1_parse_head(r, x->rhead.data, x->rhead.len, false) != 0)
        return FICUS_EBADRESP;
    if (r->status < 200)
        return 1; /* an interim response: ficus answers 100-continue itself */
    if (r->status >= 500 && try_fallback(x, FALLBACK_5XX))
        return 2;
    x->status = r->status;
    shadow_primary_head(x->cmp, x->rhead.data, x->rhead.len);
    bool has_body = http1_response_has_body(x->req.is_head, r->status);
    int64_t out_len;
    if (!has_body) {
        http1_body_init(&x->respbody, BODY_NONE, 0);
        out_len = -2;
    } else if (r->chunked) {
        http1_body_init(&x->respbody, BODY_CHUNKED, 0);
        out_len = -1;
    } else if (r->content_length >= 0) {
        http1_body_init(&x->respbody, BODY_LENGTH, (uint64_t)r->content_length);
        out_len = r->content_length;
    } else {
        http1_body_init(&x->respbody, BODY_EOF, 0);
        out_len = -1;
    }
    x->up_reusable = r->keep_alive && x->respbody.kind != BODY_EOF;
    if (!x->req_done)
        x->keep_alive = false;
    if (out_len == -1 && x->req.version_minor == 0) {
        /* HTTP/1.0 has no chunked coding: the close ends the body. */
        x->keep_alive = false;
        out_len = -3;
    }
    x->chunked_down = out_len == -1;
    /* Written with the first body bytes (send_body_down) or by flush_head. */
    int rc = http1_write_response_head(&x->out_head, r, out_len == -3 ? -2 : out_len,
                                       x->keep_alive && !x->w->draining);
    if (x->w->draining)
        x->keep_alive = false;
    x->resp_started = true;
    return rc;
}

static void up_on_read_body(struct exchange *x, struct rbuf *rb, const char *p, size_t len);

static void up_on_read(void *ctx, struct rbuf *rb, const char *p, size_t len)
{
    struct exchange *x = ctx;
    struct conn *c = x->c;
    uint32_t gen = c->gen;
    up_on_read_body(x, rb, p, len);
    /* A head whose body has not started yet goes out on its own. */
    if (live(c, gen))
        flush_head(c->x);
}

static void up_on_read_body(struct exchange *x, struct rbuf *rb, const char *p, size_t len)
{
    struct conn *c = x->c;
    uint32_t gen = c->gen;
    upstream_timeout(x->up, x->cfg->upstream_ms);
    size_t off = 0;
    while (!x->resp_head_done) {
        int r;
        if (x->rhead.len == 0) {
            /* Usually the whole head is in one read: it is scanned where it
             * lies and only its bytes are kept, not the body after it. */
            r = http1_scan_head(&x->rscan, p + off, len - off, x->cfg->max_header_bytes);
            size_t take = r == 1 ? x->rscan.pos : len - off;
            if (r >= 0 && buf_append(&x->rhead, p + off, take) != 0) {
                exchange_fail(x, 502, "upstream response head too large");
                return;
            }
            if (r == 0)
                return;
            if (r == 1)
                off += take;
        } else {
            size_t before = x->rscan.pos;
            /* Heads are small: they are gathered whole, then parsed. */
            if (buf_append(&x->rhead, p + off, len - off) != 0) {
                exchange_fail(x, 502, "upstream response head too large");
                return;
            }
            r = http1_scan_head(&x->rscan, x->rhead.data, x->rhead.len, x->cfg->max_header_bytes);
            if (r == 0)
                return;
            if (r == 1) {
                off += x->rscan.pos - before;
                x->rhead.len = x->rscan.pos; /* bytes after the head are still at p + off */
            }
        }
        if (r < 0) {
            log_warn("conn", "invalid upstream response backend=%s id=%s", x->backend_role,
                     x->reqid);
            x->up_error = "invalid_response";
            exchange_fail(x, 502, "invalid upstream response");
            return;
        }
        int hr = response_head(x);
        if (hr < 0) {
            log_warn("conn", "invalid upstream response backend=%s id=%s", x->backend_role,
                     x->reqid);
            x->up_error = "invalid_response";
            exchange_fail(x, 502, "invalid upstream response");
            return;
        }
        if (hr == 2)
            return; /* fell back to legacy: this response is dropped */
        buf_reset(&x->rhead);
        memset(&x->rscan, 0, sizeof(x->rscan));
        if (hr == 1)
            continue; /* skip an interim 1xx */
        x->resp_head_done = true;
        if (!live(c, gen))
            return;
        if (x->respbody.done) {
            if (off < len)
                x->up_reusable = false; /* bytes nobody asked for */
            response_done(x);
            return;
        }
        if (off == len)
            return;
        break;
    }
    while (off < len) {
        size_t doff, dlen;
        int64_t n = http1_body_step(&x->respbody, p + off, len - off, &doff, &dlen);
        if (n < 0) {
            log_warn("conn", "invalid upstream chunked body backend=%s id=%s", x->backend_role,
                     x->reqid);
            x->up_error = "invalid_response";
            exchange_fail(x, 502, "invalid upstream response");
            return;
        }
        if (dlen > 0)
            send_body_down(x, rb, p + off + doff, dlen);
        if (!live(c, gen))
            return;
        off += (size_t)n;
        if (x->respbody.done) {
            if (off < len)
                x->up_reusable = false;
            response_done(x);
            return;
        }
        if (n == 0)
            break;
    }
}

static void exchange_connect(struct exchange *x);
static bool is_idempotent(const struct http_head *req);

/* When new, the primary, failed in a way the route lists and nothing reached
 * the client yet, an idempotent request without a body goes to legacy once. */
static bool try_fallback(struct exchange *x, unsigned why)
{
    const struct route_cfg *rt = x->rt;
    if (rt == NULL || !(rt->fallback & why) || x->fell_back || x->resp_started ||
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
    x->up_ready = false;
    x->backend = rt->legacy;
    x->backend_role = "legacy";
    buf_reset(&x->rhead);
    memset(&x->rscan, 0, sizeof(x->rscan));
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

static void up_on_error(void *ctx, int err)
{
    struct exchange *x = ctx;
    if (err == UV_EOF && x->resp_head_done && x->respbody.kind == BODY_EOF) {
        x->up_reusable = false;
        response_done(x); /* a body delimited by the close */
        return;
    }
    bool nothing_back = !x->resp_head_done && x->rhead.len == 0;
    if (nothing_back && err != FICUS_ETIMEOUT && upstream_reused(x->up) && x->attempts < 2 &&
        is_idempotent(&x->req) && x->reqbody.kind == BODY_NONE) {
        /* A pooled connection the backend closed while idle: try a fresh one. */
        log_debug("conn", "retrying on a new connection id=%s", x->reqid);
        exchange_release_upstream(x, false);
        x->up_ready = false;
        exchange_connect(x);
        return;
    }
    if (nothing_back && try_fallback(x, err == FICUS_ETIMEOUT ? FALLBACK_TIMEOUT : 0))
        return;
    x->up_error = err == FICUS_ETIMEOUT ? "timeout" : "reset";
    if (err == FICUS_ETIMEOUT) {
        log_warn("conn", "upstream timeout backend=%s id=%s", x->backend_role, x->reqid);
        exchange_fail(x, 504, "upstream timeout");
    } else {
        log_warn("conn", "upstream failed backend=%s id=%s err=%s", x->backend_role, x->reqid,
                 ficus_strerror(err));
        exchange_fail(x, 502, "upstream failed");
    }
}

static void up_on_drain(void *ctx)
{
    struct exchange *x = ctx;
    conn_update_reading(x->c);
}

static const struct upstream_handlers exchange_handlers = {
    .on_read = up_on_read,
    .on_error = up_on_error,
    .on_drain = up_on_drain,
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
}

static void on_upstream_ready(void *ctx, struct upconn *u, int status)
{
    struct exchange *x = ctx;
    struct conn *c = x->c;
    if (status != 0) {
        if (try_fallback(x, status == FICUS_ETIMEOUT ? FALLBACK_TIMEOUT : FALLBACK_CONNECT_ERROR))
            return;
        x->up_error = status == FICUS_ETIMEOUT ? "timeout" : "connect_error";
        if (status == FICUS_ETIMEOUT)
            exchange_fail(x, 504, "upstream connect timeout");
        else if (status == FICUS_ETLS)
            exchange_fail(x, 502, "upstream TLS handshake failed");
        else
            exchange_fail(x, 502, "upstream unreachable");
        return;
    }
    x->up = u;
    x->attempts++;
    upstream_attach(u, &exchange_handlers, x);

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
    upstream_timeout(u, x->cfg->upstream_ms);
    x->up_ready = true;
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
    /* A request that would be retried on a fresh connection anyway needs no
     * check that a pooled one is still alive. */
    x->wait.check_idle = !(is_idempotent(&x->req) && x->reqbody.kind == BODY_NONE);
    int rc = upstream_acquire(x->pools, x->backend, &x->wait, on_upstream_ready, x);
    if (rc != 0)
        exchange_fail(x, 502, "upstream unreachable");
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
    static const char hex[] = "0123456789abcdef";
    uint64_t r[2] = {worker_random(x->w), worker_random(x->w)};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 16; i++)
            x->reqid[k * 16 + i] = hex[(r[k] >> (60 - 4 * i)) & 0xf];
    }
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
    atomic_fetch_add_explicit(&w->counters.requests, 1, memory_order_relaxed);
    struct exchange *x = exchange_get(w);
    if (x != NULL && x->head_cap < head_len) {
        char *bigger = realloc(x->head_bytes, head_len);
        if (bigger != NULL) {
            x->head_bytes = bigger;
            x->head_cap = head_len;
        }
    }
    if (x == NULL || x->head_cap < head_len) {
        if (x != NULL) {
            buf_dispose(&x->rhead);
            free(x->head_bytes);
        }
        free(x);
        conn_reject(c, 500, "out of memory");
        return;
    }
    char *copy = x->head_bytes;
    memcpy(copy, head, head_len);
    x->c = c;
    x->gen = ++c->gen;
    x->w = w;
    x->cfg = config_ref(w->cfg);
    x->pools = w->pools;
    pool_set_ref(x->pools);
    x->t0 = io_now_us();
    x->backend_role = "-";
    c->x = x;
    conn_no_deadline(c);
    c->head_timer = false;
    x->reqid[0] = '-';
    x->reqid[1] = '\0';

    if (http1_parse_head(&x->req, copy, head_len, true) != 0) {
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
    c->next = w->conns;
    if (w->conns != NULL)
        w->conns->prev = c;
    w->conns = c;
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
    struct conn *c = w->conns;
    while (c != NULL) {
        struct conn *next = c->next;
        if (c->x == NULL && c->in.len == 0 && c->writes_pending == 0)
            conn_close(c);
        else if (c->x == NULL)
            c->close_after_flush = true;
        c = next;
    }
}

void conn_close_all(struct worker *w)
{
    struct conn *c = w->conns;
    while (c != NULL) {
        struct conn *next = c->next;
        conn_close(c);
        c = next;
    }
}
