#include "ficus/upstream.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/log.h"
#include "ficus/tls.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* How long a pooled connection may sit idle before ficus closes it. */
#define UPSTREAM_IDLE_MS 30000
/* Below this many queued bytes a paused reader on the other side resumes. */
#define UPSTREAM_LOW_WATER (64 * 1024)

enum up_state { UP_CONNECTING, UP_ACTIVE, UP_IDLE, UP_CLOSING };

struct pool {
    struct pool_set *ps;
    int backend;
    const struct backend_cfg *be;
    struct upconn *idle; /* most recently used first */
    int n_idle;
    struct upconn *connecting; /* connects in progress, so a leaving waiter can be forgotten */
    int n_active;              /* connecting or lent */
    int max;
    struct upstream_wait *wait_head, *wait_tail;
};

struct pool_set {
    uv_loop_t *loop;
    struct rbuf_pool *rbufs;
    struct config *cfg;
    bool draining; /* released connections are closed, not pooled */
    int refs;
    int live_conns; /* connections not yet closed */
    size_t n_pools;
    struct pool pools[];
};

struct upconn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t timer;
    struct pool *pool;
    enum up_state state;
    const struct upstream_handlers *h;
    void *ctx;
    struct upstream_wait *owner; /* who gets the connection once connected */
    struct upconn *next_idle;
    struct upconn *next_connecting;
    struct tls *t; /* https backends: from the TCP connect on */
    int open_handles;
    struct deadline deadline; /* enforced by timer */
    bool reused;
    bool reading;
    bool paused;
};

static void up_close(struct upconn *u);
static void pool_dispatch(struct pool *p);

/* ---- pool sets ------------------------------------------------------------- */

struct pool_set *pool_set_new(uv_loop_t *loop, struct rbuf_pool *rbufs, struct config *cfg,
                              const struct backend_cfg *backends, size_t n, int share)
{
    struct pool_set *ps = calloc(1, sizeof(*ps) + n * sizeof(struct pool));
    if (ps == NULL)
        return NULL;
    ps->loop = loop;
    ps->rbufs = rbufs;
    ps->cfg = config_ref(cfg);
    ps->refs = 1;
    ps->n_pools = n;
    for (size_t i = 0; i < n; i++) {
        struct pool *p = &ps->pools[i];
        p->ps = ps;
        p->backend = (int)i;
        p->be = &backends[i];
        /* max_connections is per backend; each sharer (worker) gets its share. */
        p->max = backends[i].max_connections / (share > 0 ? share : 1);
        if (p->max < 1)
            p->max = 1;
    }
    return ps;
}

void pool_set_ref(struct pool_set *ps)
{
    ps->refs++;
}

static void pool_set_maybe_free(struct pool_set *ps)
{
    if (ps->refs > 0 || ps->live_conns > 0)
        return;
    config_unref(ps->cfg);
    free(ps);
}

void pool_set_close_idle(struct pool_set *ps)
{
    for (size_t i = 0; i < ps->n_pools; i++) {
        struct pool *p = &ps->pools[i];
        while (p->idle != NULL)
            up_close(p->idle); /* unlinks itself */
    }
}

void pool_set_drain(struct pool_set *ps)
{
    ps->draining = true;
    pool_set_close_idle(ps);
}

void pool_set_unref(struct pool_set *ps)
{
    if (ps == NULL)
        return;
    if (--ps->refs > 0)
        return;
    pool_set_close_idle(ps);
    pool_set_maybe_free(ps);
}

void upstream_counts(const struct pool_set *ps, int backend, int *active, int *idle)
{
    *active = ps->pools[backend].n_active;
    *idle = ps->pools[backend].n_idle;
}

/* ---- connections ----------------------------------------------------------- */

static void unlink_idle(struct upconn *u)
{
    struct pool *p = u->pool;
    for (struct upconn **pp = &p->idle; *pp != NULL; pp = &(*pp)->next_idle) {
        if (*pp == u) {
            *pp = u->next_idle;
            u->next_idle = NULL;
            p->n_idle--;
            return;
        }
    }
}

static void unlink_connecting(struct upconn *u)
{
    struct pool *p = u->pool;
    for (struct upconn **pp = &p->connecting; *pp != NULL; pp = &(*pp)->next_connecting) {
        if (*pp == u) {
            *pp = u->next_connecting;
            u->next_connecting = NULL;
            return;
        }
    }
}

static void on_up_handle_closed(uv_handle_t *handle)
{
    struct upconn *u = handle->data;
    if (--u->open_handles > 0)
        return;
    struct pool_set *ps = u->pool->ps;
    tls_free(u->t);
    free(u);
    ps->live_conns--;
    pool_set_maybe_free(ps);
}

/* Closes u without offering its slot to waiters (see up_close). */
static void up_shut(struct upconn *u)
{
    struct pool *p = u->pool;
    if (u->state == UP_IDLE)
        unlink_idle(u);
    else
        p->n_active--;
    if (u->state == UP_CONNECTING)
        unlink_connecting(u);
    if (u->t != NULL && tls_established(u->t) && u->state != UP_CONNECTING &&
        uv_stream_get_write_queue_size((uv_stream_t *)&u->tcp) == 0)
        tls_goodbye(u->t, (uv_stream_t *)&u->tcp); /* after the last record, never amid one */
    u->state = UP_CLOSING;
    u->h = NULL;
    uv_close((uv_handle_t *)&u->tcp, on_up_handle_closed);
    uv_close((uv_handle_t *)&u->timer, on_up_handle_closed);
}

static void up_close(struct upconn *u)
{
    if (u->state == UP_CLOSING)
        return;
    up_shut(u);
    /* A slot opened: someone waiting may connect now. */
    pool_dispatch(u->pool);
}

/* Has the backend closed, reset or spoken on this idle connection? Its FIN can
 * sit unread in the socket while the loop has not yet run the read callback
 * that would retire it, and a request written then is lost. */
static bool idle_unusable(struct upconn *u)
{
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&u->tcp, &fd) != 0)
        return true;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Takes the most recently used idle connection that is still usable, closing
 * dead ones on the way. Returns NULL when none is left. */
static struct upconn *take_idle(struct pool *p, bool check)
{
    while (p->idle != NULL) {
        struct upconn *u = p->idle;
        if (!check || !idle_unusable(u)) {
            unlink_idle(u);
            return u;
        }
        up_shut(u); /* unlinks itself; an idle one frees no active slot */
    }
    return NULL;
}

static void up_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    struct upconn *u = handle->data;
    struct rbuf *rb = rbuf_get(u->pool->ps->rbufs);
    *out = rb ? uv_buf_init(rb->data, RBUF_SIZE) : uv_buf_init(NULL, 0);
}

static void up_on_written(void *ctx, int status);
static void up_established(struct upconn *u);
static void up_connect_failed(struct upconn *u, int status);
static void up_handshake_failed(struct upconn *u, const char *reason);

static int up_send_tls(void *ctx, const uv_buf_t *buf, void *owned)
{
    struct upconn *u = ctx;
    int rc =
        io_write(u->pool->ps->rbufs, (uv_stream_t *)&u->tcp, buf, 1, NULL, owned, up_on_written, u);
    return rc == IO_WRITTEN ? 0 : rc;
}

/* Sends what TLS has waiting (handshake messages, alerts, records). A write
 * that fails shows up as a read error. */
static int up_flush_tls(struct upconn *u)
{
    return tls_flush(u->t, up_send_tls, u);
}

/* Ciphertext from an https backend: first the handshake, then records
 * decrypted into read buffers of their own and handed on as a plain read
 * would be (the borrower takes everything it is given). */
static void up_tls_input(struct upconn *u, const char *p, size_t len)
{
    struct rbuf_pool *pool = u->pool->ps->rbufs;
    if (tls_feed(u->t, p, len) != 0) {
        if (u->state == UP_CONNECTING)
            up_connect_failed(u, FICUS_ENOMEM);
        else if (u->state == UP_ACTIVE && u->h != NULL)
            u->h->on_error(u->ctx, FICUS_ENOMEM);
        else
            up_close(u);
        return;
    }
    if (u->state == UP_CONNECTING) {
        int r = tls_handshake(u->t);
        up_flush_tls(u);
        if (r < 0) {
            up_handshake_failed(u, tls_reason(u->t));
            return;
        }
        if (r == 0)
            return;
        log_debug("upstream", "TLS established backend=%s version=%s resumed=%s", u->pool->be->name,
                  tls_version(u->t), tls_resumed(u->t) ? "yes" : "no");
        up_established(u);
    }
    while (u->state != UP_CLOSING) {
        struct rbuf *prb = rbuf_get(pool);
        if (prb == NULL) {
            up_close(u);
            return;
        }
        int n = tls_read(u->t, prb->data, RBUF_SIZE);
        if (n > 0) {
            if (u->state != UP_ACTIVE || u->h == NULL) {
                rbuf_unref(pool, prb); /* an idle connection that speaks is of no more use */
                up_close(u);
                return;
            }
            u->h->on_read(u->ctx, prb, prb->data, (size_t)n);
            rbuf_unref(pool, prb);
            continue;
        }
        rbuf_unref(pool, prb);
        if (n == 0)
            break;
        up_flush_tls(u);
        if (n != FICUS_ECLOSED)
            log_warn("upstream", "TLS failed backend=%s reason=\"%s\"", u->pool->be->name,
                     tls_reason(u->t));
        if (u->state == UP_ACTIVE && u->h != NULL)
            u->h->on_error(u->ctx, n == FICUS_ECLOSED ? UV_EOF : FICUS_ETLS);
        else
            up_close(u);
        return;
    }
    if (u->state != UP_CLOSING)
        up_flush_tls(u); /* e.g. a key update's answer */
}

static void up_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct upconn *u = stream->data;
    struct rbuf_pool *pool = u->pool->ps->rbufs;
    struct rbuf *rb = buf->base ? rbuf_of(buf->base) : NULL;
    if (nread == 0 || u->state == UP_CLOSING) {
        rbuf_unref(pool, rb);
        return;
    }
    if (u->state == UP_CONNECTING && nread < 0) {
        rbuf_unref(pool, rb); /* the backend hung up during the TLS handshake */
        up_handshake_failed(u, nread == UV_EOF ? "connection closed by the backend"
                                               : uv_strerror((int)nread));
        return;
    }
    if (u->t != NULL && nread > 0) {
        up_tls_input(u, buf->base, (size_t)nread);
        rbuf_unref(pool, rb);
        return;
    }
    if (u->state != UP_ACTIVE || u->h == NULL) {
        /* An idle connection that speaks or closes is of no more use. */
        rbuf_unref(pool, rb);
        up_close(u);
        return;
    }
    if (nread < 0) {
        rbuf_unref(pool, rb);
        u->h->on_error(u->ctx, (int)nread);
        return;
    }
    u->h->on_read(u->ctx, rb, buf->base, (size_t)nread);
    rbuf_unref(pool, rb);
}

static void up_start_reading(struct upconn *u)
{
    if (!u->reading && !u->paused &&
        uv_read_start((uv_stream_t *)&u->tcp, up_alloc, up_on_read) == 0)
        u->reading = true;
}

static void up_on_timer(uv_timer_t *t);

/* Sets the deadline ms from now (0: none). */
static void up_deadline(struct upconn *u, uint64_t ms)
{
    if (ms > 0)
        deadline_set(&u->deadline, &u->timer, up_on_timer, ms);
    else
        deadline_clear(&u->deadline);
}

static void up_on_timer(uv_timer_t *t)
{
    struct upconn *u = t->data;
    if (!deadline_expired(&u->deadline, t, up_on_timer))
        return;
    if (u->state == UP_IDLE) {
        up_close(u);
    } else if (u->state == UP_CONNECTING) {
        /* The connect callback reports it once the close cancels the request. */
        struct upstream_wait *w = u->owner;
        u->owner = NULL;
        up_close(u);
        if (w != NULL)
            w->cb(w->ctx, NULL, FICUS_ETIMEOUT);
    } else if (u->state == UP_ACTIVE && u->h != NULL) {
        u->h->on_error(u->ctx, FICUS_ETIMEOUT);
    }
}

static void give(struct upconn *u, struct upstream_wait *w)
{
    if (u->state == UP_CONNECTING)
        unlink_connecting(u);
    u->state = UP_ACTIVE;
    u->h = NULL;
    up_deadline(u, 0);
    w->queued = false;
    w->cb(w->ctx, u, 0);
}

/* The connection never became usable: its waiter hears why. */
static void up_connect_failed(struct upconn *u, int status)
{
    struct upstream_wait *w = u->owner;
    u->owner = NULL;
    up_close(u);
    if (w != NULL)
        w->cb(w->ctx, NULL, status);
}

/* The TLS handshake with an https backend failed: one warning with the reason,
 * and the waiter hears FICUS_ETLS (a 502 for the client). */
static void up_handshake_failed(struct upconn *u, const char *reason)
{
    log_warn("upstream", "TLS handshake failed backend=%s reason=\"%s\"", u->pool->be->name,
             reason);
    up_connect_failed(u, FICUS_ETLS);
}

/* Connected (and, for https, the handshake done). */
static void up_established(struct upconn *u)
{
    struct upstream_wait *w = u->owner;
    u->owner = NULL;
    if (w != NULL) {
        give(u, w);
        return;
    }
    unlink_connecting(u);
    u->state = UP_ACTIVE;
    upstream_release(u, true); /* its exchange left; the pool keeps it */
}

static void up_on_connect(uv_connect_t *req, int status)
{
    struct upconn *u = req->data;
    if (u->state == UP_CLOSING)
        return; /* timed out already */
    if (status != 0) {
        log_warn("upstream", "connect failed backend=%s err=%s", u->pool->be->name,
                 uv_strerror(status));
        up_connect_failed(u, status);
        return;
    }
    uv_tcp_nodelay(&u->tcp, 1);
    if (u->pool->be->tls_ctx == NULL) {
        up_established(u);
        return;
    }
    /* https: the connect deadline also covers the handshake. */
    u->t = tls_client_new(u->pool->be->tls_ctx, u->pool->be);
    if (u->t == NULL) {
        up_connect_failed(u, FICUS_ENOMEM);
        return;
    }
    if (uv_read_start((uv_stream_t *)&u->tcp, up_alloc, up_on_read) != 0) {
        up_connect_failed(u, FICUS_ETLS);
        return;
    }
    u->reading = true;
    int r = tls_handshake(u->t); /* the ClientHello */
    if (r >= 0 && up_flush_tls(u) == 0)
        return;
    up_handshake_failed(u, r < 0 ? tls_reason(u->t) : "cannot send the ClientHello");
}

static int up_connect(struct pool *p, struct upstream_wait *w)
{
    struct upconn *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return FICUS_ENOMEM;
    u->pool = p;
    u->state = UP_CONNECTING;
    u->owner = w;
    int rc = uv_tcp_init(p->ps->loop, &u->tcp);
    if (rc != 0) {
        free(u);
        return rc;
    }
    uv_timer_init(p->ps->loop, &u->timer);
    u->tcp.data = u;
    u->timer.data = u;
    u->creq.data = u;
    u->open_handles = 2;
    p->n_active++;
    p->ps->live_conns++;
    u->next_connecting = p->connecting;
    p->connecting = u;
    rc =
        uv_tcp_connect(&u->creq, &u->tcp, (const struct sockaddr *)&p->be->resolved, up_on_connect);
    if (rc != 0) {
        u->owner = NULL;
        up_close(u);
        return rc;
    }
    up_deadline(u, (uint64_t)p->ps->cfg->connect_ms);
    return 0;
}

/* Serves waiters with idle connections or new ones while the pool allows. */
static void pool_dispatch(struct pool *p)
{
    while (p->wait_head != NULL) {
        struct upstream_wait *w = p->wait_head;
        struct upconn *u = take_idle(p, w->check_idle);
        if (u == NULL && p->n_active >= p->max)
            return;
        p->wait_head = w->next;
        if (p->wait_head == NULL)
            p->wait_tail = NULL;
        w->queued = false;
        w->next = NULL;
        if (u != NULL) {
            p->n_active++;
            give(u, w);
        } else {
            int rc = up_connect(p, w);
            if (rc != 0)
                w->cb(w->ctx, NULL, rc);
        }
    }
}

int upstream_acquire(struct pool_set *ps, int backend, struct upstream_wait *wait,
                     upstream_ready_cb cb, void *ctx)
{
    struct pool *p = &ps->pools[backend];
    wait->pool = p;
    wait->cb = cb;
    wait->ctx = ctx;
    wait->next = NULL;
    struct upconn *u = take_idle(p, wait->check_idle);
    if (u != NULL) {
        p->n_active++;
        wait->queued = false;
        give(u, wait);
        return 0;
    }
    if (p->n_active < p->max) {
        wait->queued = false;
        return up_connect(p, wait);
    }
    wait->queued = true;
    if (p->wait_tail != NULL)
        p->wait_tail->next = wait;
    else
        p->wait_head = wait;
    p->wait_tail = wait;
    return 0;
}

void upstream_cancel(struct upstream_wait *wait)
{
    if (!wait->queued) {
        /* A connect may still be under way for it: its result must not reach
         * a waiter that is gone. */
        if (wait->pool != NULL) {
            for (struct upconn *u = wait->pool->connecting; u != NULL; u = u->next_connecting) {
                if (u->owner == wait)
                    u->owner = NULL;
            }
        }
        return;
    }
    struct pool *p = wait->pool;
    struct upstream_wait *prev = NULL;
    for (struct upstream_wait *w = p->wait_head; w != NULL; prev = w, w = w->next) {
        if (w != wait)
            continue;
        if (prev != NULL)
            prev->next = w->next;
        else
            p->wait_head = w->next;
        if (p->wait_tail == w)
            p->wait_tail = prev;
        break;
    }
    wait->queued = false;
}

void upstream_attach(struct upconn *u, const struct upstream_handlers *h, void *ctx)
{
    u->h = h;
    u->ctx = ctx;
    u->paused = false;
    up_start_reading(u);
}

void upstream_pause(struct upconn *u, bool paused)
{
    u->paused = paused;
    if (paused && u->reading) {
        uv_read_stop((uv_stream_t *)&u->tcp);
        u->reading = false;
    } else if (!paused) {
        up_start_reading(u);
    }
}

static void up_on_written(void *ctx, int status)
{
    struct upconn *u = ctx;
    if (status != 0 || u->state != UP_ACTIVE || u->h == NULL)
        return; /* a failed write shows up as a read error too */
    if (u->h->on_drain != NULL &&
        uv_stream_get_write_queue_size((uv_stream_t *)&u->tcp) < UPSTREAM_LOW_WATER)
        u->h->on_drain(u->ctx);
}

int upstream_write(struct upconn *u, const uv_buf_t *bufs, unsigned n, struct rbuf *rb, void *owned)
{
    if (u->t != NULL) {
        int rc = tls_encrypt(u->t, bufs, n);
        free(owned); /* the plaintext is copied into records */
        return rc != 0 ? rc : up_flush_tls(u);
    }
    int rc =
        io_write(u->pool->ps->rbufs, (uv_stream_t *)&u->tcp, bufs, n, rb, owned, up_on_written, u);
    return rc == IO_WRITTEN ? 0 : rc;
}

size_t upstream_queued(const struct upconn *u)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&u->tcp);
}

void upstream_timeout(struct upconn *u, int ms)
{
    up_deadline(u, ms > 0 ? (uint64_t)ms : 0);
}

bool upstream_reused(const struct upconn *u)
{
    return u->reused;
}

void upstream_release(struct upconn *u, bool reusable)
{
    struct pool *p = u->pool;
    u->h = NULL;
    u->ctx = NULL;
    if (!reusable || p->ps->refs == 0 || p->ps->draining || u->state != UP_ACTIVE) {
        up_close(u);
        return;
    }
    u->reused = true;
    u->paused = false;
    if (p->wait_head != NULL) {
        struct upstream_wait *w = p->wait_head;
        p->wait_head = w->next;
        if (p->wait_head == NULL)
            p->wait_tail = NULL;
        w->next = NULL;
        give(u, w);
        return;
    }
    p->n_active--;
    u->state = UP_IDLE;
    u->next_idle = p->idle;
    p->idle = u;
    p->n_idle++;
    up_start_reading(u); /* to notice the backend closing it */
    up_deadline(u, UPSTREAM_IDLE_MS);
}
