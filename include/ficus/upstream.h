/* Upstream connections: per loop (a worker's, the control thread's, replay's),
 * per configuration snapshot, one pool per backend. A backend's servers
 * contribute endpoints (each address of each server, see lb.h); the pool picks
 * one per request with the backend's balancer and keeps idle keep-alive
 * connections per endpoint. A connection is lent to one borrower at a time;
 * idle ones keep reading so that a backend's close is noticed. The borrower
 * says how its request ended (upstream_outcome) so that failing endpoints are
 * ejected. Single-threaded: a set is used on its loop only. */
#ifndef FICUS_UPSTREAM_H
#define FICUS_UPSTREAM_H

#include "ficus/io.h"
#include "ficus/lb.h"
#include <stdbool.h>
#include <sys/socket.h>
#include <uv.h>

struct config;
struct backend_cfg;
struct pool_set;
struct upconn;
struct upstats;

/* What the borrower of a connection hears about it. */
struct upstream_handlers {
    /* Bytes arrived; rb holds them (take a reference to keep them). */
    void (*on_read)(void *ctx, struct rbuf *rb, const char *data, size_t len);
    /* The connection failed: UV_EOF for a close, FICUS_ETIMEOUT, or an error. */
    void (*on_error)(void *ctx, int err);
    /* The write queue fell below the low-water mark. */
    void (*on_drain)(void *ctx);
};

typedef void (*upstream_ready_cb)(void *ctx, struct upconn *u, int status);

/* A place in a pool's queue, embedded in the waiting exchange (zeroed before
 * its first use). */
struct upstream_wait {
    struct upstream_wait *next;
    struct pool *pool;
    upstream_ready_cb cb;
    void *ctx;
    bool queued;
    bool check_idle; /* set by the caller: peek that a pooled connection is
                        alive (for requests that cannot be retried) */
    /* Set by upstream: the endpoint (lb slot) of the latest attempt, -1 before
     * one was picked, and the one the attempt avoids (upstream_retry). */
    int ep;
    int exclude;
};

/* Creates one pool for each of the n backends at backends (living as long as
 * cfg: the set holds a reference on cfg) on loop, reading into buffers of
 * rbufs. Each backend's endpoints are its servers' addresses (servers[i].addrs,
 * or be->resolved for a backend whose servers have none filled in). Each pool
 * opens at most max_connections / share connections (share: how many sets
 * divide a backend's connections, e.g. the workers). The connect deadline is
 * cfg->connect_ms. Returns NULL when out of memory. */
struct pool_set *pool_set_new(uv_loop_t *loop, struct rbuf_pool *rbufs, struct config *cfg,
                              const struct backend_cfg *backends, size_t n, int share);
void pool_set_ref(struct pool_set *ps);
/* Drops a reference; the last one closes the idle connections and frees the
 * set once its connections are closed. */
void pool_set_unref(struct pool_set *ps);
/* Closes every idle connection now (reload, shutdown). */
void pool_set_close_idle(struct pool_set *ps);
/* Closes the idle connections and pools none from now on: a connection given
 * back is closed (graceful drain). */
void pool_set_drain(struct pool_set *ps);

/* Publishes the set's endpoints (status, requests, failures, ejections, active
 * requests) into st, the worker's table, from now on: every entry of st is
 * first marked gone, so st shows this set's addresses. A set that is no longer
 * the worker's current one keeps counting its requests but stops writing
 * statuses: call with st NULL. */
void pool_set_observe(struct pool_set *ps, struct upstats *st);

/* Replaces the addresses of one server of a backend (a DNS change): see
 * lb_update. A removed address gets no new request; its lent connections
 * finish their exchange and are closed, its idle ones are closed now.
 * Returns what lb_update returns. */
int pool_set_update(struct pool_set *ps, int backend, int server,
                    const struct sockaddr_storage *addrs, size_t n);
/* Feeds an active health check result for every endpoint of the backend at
 * addr (any server): see lb_set_health. */
void pool_set_health(struct pool_set *ps, int backend, const struct sockaddr_storage *addr,
                     bool up);

/* Lends a connection to backend (an index into the set's backends): the
 * balancer picks an endpoint when a connection can be had (at once, or when
 * one frees up while the pool is full), then an idle connection to it or a
 * new one. cb gets the connection (from inside this call when an idle one is
 * lent at once) or, later, an error (FICUS_ETIMEOUT for a connect timeout,
 * FICUS_ETLS for a failed handshake, a libuv error for a refused connect). A
 * failed connect counts as a failure of its endpoint. Returns 0, or an error
 * when nothing was started (UV_EHOSTUNREACH: the backend has no address at
 * all; a request that first waited for a free connection hears it through
 * cb); cb does not run then. */
int upstream_acquire(struct pool_set *ps, int backend, struct upstream_wait *wait,
                     upstream_ready_cb cb, void *ctx);
/* The same for a second attempt of a request whose first one (through the
 * same wait) failed before any byte reached its client: another endpoint of
 * the backend is picked when there is a candidate other than wait->ep. */
int upstream_retry(struct pool_set *ps, int backend, struct upstream_wait *wait,
                   upstream_ready_cb cb, void *ctx);
/* Live endpoints of a backend (not draining): with more than one, a retry
 * goes elsewhere. */
int upstream_endpoints(const struct pool_set *ps, int backend);
/* Leaves the queue (the exchange ended first). Safe when not queued. */
void upstream_cancel(struct upstream_wait *wait);

/* A connection to one given address of a server of a backend, outside the
 * balancer and never pooled (active health checks): cb as for
 * upstream_acquire; failures are not logged. For an https backend the TLS
 * handshake is part of it unless tcp_only (a check that only wants to know
 * the address accepts connections: it must not cost the server a handshake).
 * Give it back with upstream_release(u, false). Returns 0 or an error. */
int upstream_connect_to(struct pool_set *ps, int backend, int server,
                        const struct sockaddr_storage *addr, bool tcp_only,
                        struct upstream_wait *wait, upstream_ready_cb cb, void *ctx);

/* Sets who hears about the connection and starts reading for them. */
void upstream_attach(struct upconn *u, const struct upstream_handlers *h, void *ctx);
/* Stops or resumes reading (backpressure). */
void upstream_pause(struct upconn *u, bool paused);
/* Sends bytes; see io_write for rb and owned. Returns 0 or a libuv error. */
int upstream_write(struct upconn *u, const uv_buf_t *bufs, unsigned n, struct rbuf *rb,
                   void *owned);
/* Bytes queued for writing. */
size_t upstream_queued(const struct upconn *u);
/* Arms (ms > 0) or stops (ms == 0) the response timer: on_error gets
 * FICUS_ETIMEOUT when it fires. */
void upstream_timeout(struct upconn *u, int ms);
/* Was this connection used for an earlier request? */
bool upstream_reused(const struct upconn *u);
/* The endpoint's address as lb_addr_format writes it, for logs (the
 * connection's: valid while the caller holds it). */
const char *upstream_label(const struct upconn *u);
/* How the request on u ended, for the endpoint's ejection and counters:
 * LB_FAILURE for a reset, a timeout, an invalid answer or a 5xx, LB_SUCCESS
 * for any other answer, LB_ABANDONED when it says nothing about the server (the
 * client left, or a pooled connection the server had closed while idle).
 * status is the answer's (0 without one). The last call before
 * upstream_release counts; without any, a reusable release is a success
 * and any other an abandon. */
void upstream_outcome(struct upconn *u, enum lb_outcome outcome, int status);
/* Gives the connection back: to the pool when reusable (and its endpoint is
 * still in use), else closed. */
void upstream_release(struct upconn *u, bool reusable);

/* Connections of a backend across the set, for metrics. */
void upstream_counts(const struct pool_set *ps, int backend, int *active, int *idle);

#endif
