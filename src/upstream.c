/* Upstream pools: see upstream.h.
 *
 * Each backend's pool has a balancer (lb.h) over its endpoints and, per
 * endpoint (lb slot), the idle connections to it. A request takes part in the
 * balancer from the moment an endpoint is picked for it until its connection
 * is given back (or its connect fails): the pick is carried by the connection
 * (u->picked), and every way a picked connection leaves its borrower goes
 * through unpick(), which ends it in the balancer exactly once.
 *
 * max_connections bounds the connections of a backend, idle ones included:
 * a new connection to one endpoint closes the least recently used idle one of
 * another when the pool is at its bound. While every connection is lent,
 * requests wait in the pool's queue, unpicked; a connection given back then
 * serves the first of them on its own endpoint when the balancer allows it. */
#include "ficus/upstream.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/log.h"
#include "ficus/state.h"
#include "ficus/tls.h"
#include "ficus/upstats.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* How long a pooled connection may sit idle before ficus closes it. */
#define UPSTREAM_IDLE_MS 30000
/* Below this many queued bytes a paused reader on the other side resumes. */
#define UPSTREAM_LOW_WATER (64 * 1024)

enum up_state { UP_CONNECTING, UP_ACTIVE, UP_IDLE, UP_CLOSING };

/* One lb slot's data in a pool: valid while gen matches the slot's. */
struct endpoint {
    uint32_t gen; /* 0: the slot holds nothing of ours */
    int server;
    struct sockaddr_storage addr;
    char label[UPSTATS_LABEL_SIZE];
    struct list idle; /* idle connections to it, most recently used first */
    int n_idle;
    struct upstats_entry *stats; /* NULL: not published */
};

struct pool {
    struct pool_set *ps;
    int backend;
    const struct backend_cfg *be;
    struct lb *lb;
    struct endpoint **eps; /* by lb slot; grows with lb_slots */
    int n_eps;
    struct list lru; /* every idle connection, most recently used first */
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
    int live_conns;        /* connections not yet closed */
    uint64_t rng;          /* for least requests' two choices */
    struct upstats *stats; /* where statuses are published; NULL: nowhere */
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
    struct list ep_node;         /* in its endpoint's idle list while idle */
    struct list lru_node;        /* in the pool's idle list while idle */
    struct upconn *next_connecting;
    struct tls *t; /* https backends: from the TCP connect on */
    int open_handles;
    struct deadline deadline; /* enforced by timer */
    int ep;                   /* lb slot, -1 for a health check connection */
    uint32_t gen;             /* the slot's generation when it connected */
    int server;
    struct sockaddr_storage addr;
    char label[UPSTATS_LABEL_SIZE];
    bool picked;        /* a request on it counts in the balancer (see unpick) */
    bool verdict_given; /* upstream_outcome was called for the request */
    enum lb_outcome verdict;
    int status;
    bool check;    /* a health check connection: outside the balancer, never pooled */
    bool tcp_only; /* a check that stops at the TCP connect, even to an https backend */
    bool reused;
    bool reading;
    bool paused;
};

static void up_close(struct upconn *u);
static void pool_dispatch(struct pool *p);

static int64_t now_ms(const struct pool *p)
{
    return (int64_t)uv_now(p->ps->loop);
}

/* ---- endpoints -------------------------------------------------------------- */

static struct endpoint *ep_of(const struct pool *p, int ep)
{
    return ep >= 0 && ep < p->n_eps ? p->eps[ep] : NULL;
}

/* Publishes slot ep's status to the worker's table (when this set publishes). */
static void ep_publish(struct pool *p, int ep)
{
    struct endpoint *e = ep_of(p, ep);
    if (p->ps->stats == NULL || e == NULL || e->gen == 0 || e->stats == NULL)
        return;
    struct lb_endpoint_info info;
    if (!lb_endpoint(p->lb, ep, now_ms(p), &info) || info.gen != e->gen)
        upstats_set_status(e->stats, UPSTATS_GONE, 0);
    else
        upstats_set_status(e->stats, info.status, info.ejected_until_ms);
}

static void ep_close_idle(struct endpoint *e)
{
    while (!list_empty(&e->idle))
        up_close(container_of(e->idle.next, struct upconn, ep_node)); /* unlinks itself */
}

/* Brings the endpoint data in line with the balancer's slots: a slot that was
 * freed or given to another address loses its idle connections (lent ones
 * see the generation change when they come back), a draining one too, a new
 * occupant gets fresh data. */
static int pool_sync(struct pool *p)
{
    int n = lb_slots(p->lb);
    if (n > p->n_eps) {
        struct endpoint **eps = realloc(p->eps, (size_t)n * sizeof(*eps));
        if (eps == NULL)
            return FICUS_ENOMEM;
        for (int i = p->n_eps; i < n; i++)
            eps[i] = NULL;
        p->eps = eps;
        p->n_eps = n;
    }
    int64_t now = now_ms(p);
    for (int i = 0; i < p->n_eps; i++) {
        struct lb_endpoint_info info;
        bool live = lb_endpoint(p->lb, i, now, &info);
        struct endpoint *e = p->eps[i];
        if (e != NULL && e->gen != 0 && (!live || info.gen != e->gen)) {
            ep_close_idle(e);
            if (e->stats != NULL && p->ps->stats != NULL)
                upstats_set_status(e->stats, UPSTATS_GONE, 0);
            e->gen = 0;
        }
        if (!live)
            continue;
        if (e == NULL) {
            e = calloc(1, sizeof(*e));
            if (e == NULL)
                return FICUS_ENOMEM;
            list_init(&e->idle);
            p->eps[i] = e;
        }
        if (e->gen != info.gen) {
            e->gen = info.gen;
            e->server = info.server;
            memcpy(&e->addr, info.addr, sizeof(e->addr));
            lb_addr_format(&e->addr, e->label, sizeof(e->label));
            e->stats = NULL;
            e->n_idle = 0;
        }
        if (e->stats == NULL && p->ps->stats != NULL)
            e->stats = upstats_entry(p->ps->stats, p->be->name, e->label);
        if (info.status == LB_STATUS_DRAINING)
            ep_close_idle(e);
        ep_publish(p, i);
    }
    return 0;
}

/* Logs and counts what the balancer's verdict changed for slot ep. */
static void ep_event(struct pool *p, int ep, enum lb_event ev)
{
    struct endpoint *e = ep_of(p, ep);
    if (ev == LB_EVENT_NONE || e == NULL)
        return;
    struct lb_endpoint_info info;
    if (!lb_endpoint(p->lb, ep, now_ms(p), &info))
        return;
    if (ev == LB_EVENT_EJECTED) {
        log_warn("upstream", "server ejected backend=%s server=%s failures=%llu for_ms=%lld",
                 p->be->name, e->label, (unsigned long long)info.failures,
                 (long long)(info.ejected_until_ms - now_ms(p)));
        if (e->stats != NULL)
            upstats_add(&e->stats->ejections, 1);
    } else {
        log_info("upstream", "server back in rotation backend=%s server=%s", p->be->name, e->label);
    }
}

/* Counts a pick made on slot ep. */
static void picked(struct pool *p, int ep)
{
    struct endpoint *e = ep_of(p, ep);
    if (e != NULL && e->stats != NULL)
        upstats_active(e->stats, 1);
    ep_publish(p, ep); /* a pick may turn an ended ejection into probing */
}

/* Ends a request picked on slot ep (of generation gen) in the balancer. */
static void end_pick(struct pool *p, int ep, uint32_t gen, enum lb_outcome outcome, int status)
{
    struct endpoint *e = ep_of(p, ep);
    bool ours = e != NULL && e->gen == gen;
    if (ours && e->stats != NULL) {
        upstats_active(e->stats, -1);
        if (outcome != LB_ABANDONED || status != 0)
            upstats_add(&e->stats->requests[state_code_class(status)], 1);
        if (outcome == LB_FAILURE)
            upstats_add(&e->stats->failures, 1);
    }
    enum lb_event ev = lb_done(p->lb, ep, outcome, now_ms(p));
    ep_event(p, ep, ev);
    if (!ours)
        return;
    struct lb_endpoint_info info;
    if (!lb_endpoint(p->lb, ep, now_ms(p), &info) || info.gen != gen)
        pool_sync(p); /* the last request of a drained address: its slot is free */
    else if (p->ps->stats != NULL && e->stats != NULL)
        upstats_set_status(e->stats, info.status, info.ejected_until_ms); /* as ep_publish */
}

/* Ends the request that u carries in the balancer, once. */
static void unpick(struct upconn *u, enum lb_outcome outcome, int status)
{
    if (!u->picked)
        return;
    u->picked = false;
    end_pick(u->pool, u->ep, u->gen, outcome, status);
}

/* ---- pool sets ------------------------------------------------------------- */

/* The endpoints a backend starts with: its servers' addresses as loaded, or
 * the one address the caller resolved for a backend without them. */
static int pool_seed(struct pool *p)
{
    const struct backend_cfg *be = p->be;
    bool any = false;
    for (size_t s = 0; s < be->n_servers; s++) {
        if (be->servers[s].n_addrs == 0)
            continue;
        any = true;
        if (lb_update(p->lb, (int)s, be->servers[s].weight, be->servers[s].addrs,
                      be->servers[s].n_addrs) < 0)
            return FICUS_ENOMEM;
    }
    if (!any && be->resolved_len > 0 && lb_update(p->lb, 0, 1, &be->resolved, 1) < 0)
        return FICUS_ENOMEM;
    return pool_sync(p);
}

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
    ps->rng = (io_now_us() ^ (uint64_t)(uintptr_t)ps) | 1;
    ps->n_pools = n;
    for (size_t i = 0; i < n; i++) {
        struct pool *p = &ps->pools[i];
        p->ps = ps;
        p->backend = (int)i;
        p->be = &backends[i];
        list_init(&p->lru);
        /* max_connections is per backend; each sharer (worker) gets its share. */
        p->max = backends[i].max_connections / (share > 0 ? share : 1);
        if (p->max < 1)
            p->max = 1;
        p->lb = lb_new(&backends[i].lb);
        if (p->lb == NULL || pool_seed(p) != 0) {
            ps->n_pools = i + 1;
            pool_set_unref(ps);
            return NULL;
        }
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
    for (size_t i = 0; i < ps->n_pools; i++) {
        struct pool *p = &ps->pools[i];
        for (int k = 0; k < p->n_eps; k++)
            free(p->eps[k]);
        free(p->eps);
        lb_free(p->lb);
    }
    config_unref(ps->cfg);
    free(ps);
}

void pool_set_close_idle(struct pool_set *ps)
{
    for (size_t i = 0; i < ps->n_pools; i++) {
        struct pool *p = &ps->pools[i];
        while (!list_empty(&p->lru))
            up_close(container_of(p->lru.next, struct upconn, lru_node)); /* unlinks itself */
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

void pool_set_observe(struct pool_set *ps, struct upstats *st)
{
    ps->stats = st;
    if (st == NULL)
        return;
    upstats_all_gone(st);
    for (size_t i = 0; i < ps->n_pools; i++)
        pool_sync(&ps->pools[i]);
}

int pool_set_update(struct pool_set *ps, int backend, int server,
                    const struct sockaddr_storage *addrs, size_t n)
{
    if (backend < 0 || (size_t)backend >= ps->n_pools)
        return -EINVAL;
    struct pool *p = &ps->pools[backend];
    int weight =
        server >= 0 && (size_t)server < p->be->n_servers ? p->be->servers[server].weight : 1;
    int rc = lb_update(p->lb, server, weight, addrs, n);
    if (rc < 0)
        return rc;
    if (rc > 0)
        log_warn("upstream", "backend=%s has more than %d addresses: %d left out", p->be->name,
                 LB_ENDPOINTS_MAX, rc);
    pool_sync(p);
    pool_dispatch(p);
    return rc;
}

void pool_set_health(struct pool_set *ps, int backend, const struct sockaddr_storage *addr, bool up)
{
    if (backend < 0 || (size_t)backend >= ps->n_pools)
        return;
    struct pool *p = &ps->pools[backend];
    int64_t now = now_ms(p);
    for (int i = 0; i < lb_slots(p->lb); i++) {
        struct lb_endpoint_info info;
        if (lb_endpoint(p->lb, i, now, &info) && lb_addr_compare(info.addr, addr) == 0) {
            lb_set_health(p->lb, i, up, now);
            ep_publish(p, i);
        }
    }
}

void upstream_counts(const struct pool_set *ps, int backend, int *active, int *idle)
{
    *active = ps->pools[backend].n_active;
    *idle = ps->pools[backend].n_idle;
}

int upstream_endpoints(const struct pool_set *ps, int backend)
{
    return lb_live(ps->pools[backend].lb);
}

/* ---- connections ----------------------------------------------------------- */

static void unlink_idle(struct upconn *u)
{
    struct pool *p = u->pool;
    list_remove(&u->ep_node);
    list_remove(&u->lru_node);
    p->n_idle--;
    struct endpoint *e = ep_of(p, u->ep);
    if (e != NULL && e->gen == u->gen)
        e->n_idle--;
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
    unpick(u, u->verdict_given ? u->verdict : LB_ABANDONED, u->verdict_given ? u->status : 0);
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

/* Takes endpoint ep's most recently used idle connection that is still
 * usable, closing dead ones on the way. Returns NULL when none is left. */
static struct upconn *take_idle(struct pool *p, int ep, bool check)
{
    struct endpoint *e = ep_of(p, ep);
    while (e != NULL && !list_empty(&e->idle)) {
        struct upconn *u = container_of(e->idle.next, struct upconn, ep_node);
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
        log_debug("upstream", "TLS established backend=%s server=%s version=%s resumed=%s",
                  u->pool->be->name, u->label, tls_version(u->t), tls_resumed(u->t) ? "yes" : "no");
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
        if (n != FICUS_ECLOSED && !u->check)
            log_warn("upstream", "TLS failed backend=%s server=%s reason=\"%s\"", u->pool->be->name,
                     u->label, tls_reason(u->t));
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
        if (!u->check)
            log_warn("upstream", "connect timeout backend=%s server=%s", u->pool->be->name,
                     u->label);
        up_connect_failed(u, FICUS_ETIMEOUT);
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

/* The connection never became usable: it counts as a failure of its endpoint,
 * and its waiter hears why. */
static void up_connect_failed(struct upconn *u, int status)
{
    struct upstream_wait *w = u->owner;
    u->owner = NULL;
    unpick(u, LB_FAILURE, 0);
    up_close(u);
    if (w != NULL)
        w->cb(w->ctx, NULL, status);
}

/* The TLS handshake with an https backend failed: one warning with the reason,
 * and the waiter hears FICUS_ETLS (a 502 for the client). */
static void up_handshake_failed(struct upconn *u, const char *reason)
{
    if (!u->check)
        log_warn("upstream", "TLS handshake failed backend=%s server=%s reason=\"%s\"",
                 u->pool->be->name, u->label, reason);
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
    unpick(u, LB_ABANDONED, 0);     /* its exchange left: the server did nothing wrong */
    upstream_release(u, !u->check); /* the pool keeps it */
}

static void up_on_connect(uv_connect_t *req, int status)
{
    struct upconn *u = req->data;
    if (u->state == UP_CLOSING)
        return; /* timed out already */
    if (status != 0) {
        if (!u->check)
            log_warn("upstream", "connect failed backend=%s server=%s err=%s", u->pool->be->name,
                     u->label, uv_strerror(status));
        up_connect_failed(u, status);
        return;
    }
    uv_tcp_nodelay(&u->tcp, 1);
    if (u->pool->be->tls_ctx == NULL || u->tcp_only) {
        up_established(u);
        return;
    }
    /* https: the connect deadline also covers the handshake. */
    u->t = tls_client_new(u->pool->be->tls_ctx, u->pool->be, u->server);
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

/* Opens a connection to addr for w. ep >= 0: the request was picked there
 * (the connection carries the pick, or the pick ends here when no connection
 * could be started); -1: a health check connection (tcp_only: no TLS). */
static int up_connect(struct pool *p, struct upstream_wait *w, int ep, int server,
                      const struct sockaddr_storage *addr, bool tcp_only)
{
    struct endpoint *e = ep_of(p, ep);
    uint32_t gen = e != NULL ? e->gen : 0;
    struct upconn *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        if (ep >= 0)
            end_pick(p, ep, gen, LB_ABANDONED, 0); /* ours, not the server's */
        return FICUS_ENOMEM;
    }
    u->pool = p;
    u->state = UP_CONNECTING;
    u->owner = w;
    u->ep = ep;
    u->server = server;
    memcpy(&u->addr, addr, sizeof(u->addr));
    lb_addr_format(addr, u->label, sizeof(u->label));
    list_init(&u->ep_node);
    list_init(&u->lru_node);
    u->gen = gen;
    u->picked = ep >= 0;
    u->check = ep < 0;
    u->tcp_only = tcp_only;
    int rc = uv_tcp_init(p->ps->loop, &u->tcp);
    if (rc != 0) {
        if (ep >= 0)
            end_pick(p, ep, gen, LB_ABANDONED, 0);
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
    rc = uv_tcp_connect(&u->creq, &u->tcp, (const struct sockaddr *)&u->addr, up_on_connect);
    if (rc != 0) {
        u->owner = NULL;
        unpick(u, LB_FAILURE, 0);
        up_close(u);
        return rc;
    }
    up_deadline(u, (uint64_t)p->ps->cfg->connect_ms);
    return 0;
}

/* Makes room for one more connection: at the bound, the least recently used
 * idle connection goes (never one of ep's: the caller found none usable). */
static void make_room(struct pool *p)
{
    if (p->n_active + p->n_idle < p->max || list_empty(&p->lru))
        return;
    up_shut(container_of(p->lru.prev, struct upconn, lru_node));
}

/* Serves w now, the pool having room (n_active < max): picks its endpoint,
 * then lends an idle connection to it or opens one. Returns 0 (w hears
 * later, or already heard through a connection given at once) or an error
 * for w (nothing started). */
static int serve(struct pool *p, struct upstream_wait *w)
{
    int ep = lb_pick(p->lb, now_ms(p), xorshift64s(&p->ps->rng), w->exclude);
    if (ep < 0)
        return UV_EHOSTUNREACH;
    w->ep = ep;
    picked(p, ep);
    struct endpoint *e = ep_of(p, ep);
    struct upconn *u = take_idle(p, ep, w->check_idle);
    if (u != NULL) {
        p->n_active++;
        u->picked = true;
        u->verdict_given = false;
        u->status = 0;
        give(u, w);
        return 0;
    }
    if (e == NULL || e->gen == 0) { /* pool_sync ran out of memory */
        end_pick(p, ep, 0, LB_ABANDONED, 0);
        return FICUS_ENOMEM;
    }
    make_room(p);
    return up_connect(p, w, ep, e->server, &e->addr, false);
}

static struct upstream_wait *dequeue(struct pool *p)
{
    struct upstream_wait *w = p->wait_head;
    p->wait_head = w->next;
    if (p->wait_head == NULL)
        p->wait_tail = NULL;
    w->queued = false;
    w->next = NULL;
    return w;
}

/* Serves waiters while the pool has room. */
static void pool_dispatch(struct pool *p)
{
    while (p->wait_head != NULL && p->n_active < p->max) {
        struct upstream_wait *w = dequeue(p);
        int rc = serve(p, w);
        if (rc != 0)
            w->cb(w->ctx, NULL, rc);
    }
}

static int acquire(struct pool_set *ps, int backend, struct upstream_wait *wait,
                   upstream_ready_cb cb, void *ctx)
{
    struct pool *p = &ps->pools[backend];
    wait->pool = p;
    wait->cb = cb;
    wait->ctx = ctx;
    wait->next = NULL;
    wait->queued = false;
    if (p->wait_head == NULL && p->n_active < p->max)
        return serve(p, wait);
    wait->queued = true;
    if (p->wait_tail != NULL)
        p->wait_tail->next = wait;
    else
        p->wait_head = wait;
    p->wait_tail = wait;
    return 0;
}

int upstream_acquire(struct pool_set *ps, int backend, struct upstream_wait *wait,
                     upstream_ready_cb cb, void *ctx)
{
    wait->exclude = -1;
    wait->ep = -1;
    return acquire(ps, backend, wait, cb, ctx);
}

int upstream_retry(struct pool_set *ps, int backend, struct upstream_wait *wait,
                   upstream_ready_cb cb, void *ctx)
{
    wait->exclude = wait->pool == &ps->pools[backend] ? wait->ep : -1;
    return acquire(ps, backend, wait, cb, ctx);
}

int upstream_connect_to(struct pool_set *ps, int backend, int server,
                        const struct sockaddr_storage *addr, bool tcp_only,
                        struct upstream_wait *wait, upstream_ready_cb cb, void *ctx)
{
    struct pool *p = &ps->pools[backend];
    wait->pool = p;
    wait->cb = cb;
    wait->ctx = ctx;
    wait->next = NULL;
    wait->queued = false;
    wait->ep = -1;
    wait->exclude = -1;
    return up_connect(p, wait, -1, server, addr, tcp_only);
}

void upstream_cancel(struct upstream_wait *wait)
{
    if (!wait->queued) {
        /* A connect may still be under way for it: its result must not reach
         * a waiter that is gone. A health check's has no use any more. */
        if (wait->pool != NULL) {
            for (struct upconn *u = wait->pool->connecting, *next; u != NULL; u = next) {
                next = u->next_connecting;
                if (u->owner != wait)
                    continue;
                u->owner = NULL;
                if (u->check)
                    up_close(u);
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

const char *upstream_label(const struct upconn *u)
{
    return u->label;
}

void upstream_outcome(struct upconn *u, enum lb_outcome outcome, int status)
{
    u->verdict_given = true;
    u->verdict = outcome;
    u->status = status;
}

/* May u, given back, go to the pool? Its endpoint must still be the one it
 * connected to, and in rotation (a drained address's connections finish and
 * close). */
static bool poolable(const struct upconn *u)
{
    const struct pool *p = u->pool;
    const struct endpoint *e = ep_of(p, u->ep);
    if (u->check || e == NULL || e->gen != u->gen)
        return false;
    struct lb_endpoint_info info;
    return lb_endpoint(p->lb, u->ep, now_ms(p), &info) && info.gen == u->gen &&
           info.status != LB_STATUS_DRAINING;
}

void upstream_release(struct upconn *u, bool reusable)
{
    struct pool *p = u->pool;
    u->h = NULL;
    u->ctx = NULL;
    if (u->state == UP_ACTIVE) {
        enum lb_outcome o = u->verdict_given ? u->verdict : reusable ? LB_SUCCESS : LB_ABANDONED;
        unpick(u, o, u->verdict_given ? u->status : 0);
    }
    u->verdict_given = false;
    if (!reusable || p->ps->refs == 0 || p->ps->draining || u->state != UP_ACTIVE || !poolable(u)) {
        up_close(u);
        return;
    }
    u->reused = true;
    u->paused = false;
    /* Someone waits (the pool is full): this connection serves them on its own
     * endpoint when the balancer allows that endpoint for them. */
    struct upstream_wait *w = p->wait_head;
    if (w != NULL && u->ep != w->exclude) {
        int ep = lb_take(p->lb, u->ep, now_ms(p));
        if (ep >= 0) {
            dequeue(p);
            w->ep = ep;
            picked(p, ep);
            u->picked = true;
            u->status = 0;
            give(u, w);
            return;
        }
    }
    p->n_active--;
    u->state = UP_IDLE;
    struct endpoint *e = ep_of(p, u->ep);
    list_push(&e->idle, &u->ep_node);
    list_push(&p->lru, &u->lru_node);
    e->n_idle++;
    p->n_idle++;
    up_start_reading(u); /* to notice the backend closing it */
    up_deadline(u, UPSTREAM_IDLE_MS);
    pool_dispatch(p); /* a waiter the balancer sent elsewhere */
}
