/* Upstream connections: per loop (a worker's, the control thread's, replay's),
 * per configuration snapshot, one pool of keep-alive connections per backend.
 * A connection is lent to one borrower at a time; idle ones keep reading so
 * that a backend's close is noticed. Single-threaded: a set is used on its
 * loop only. */
#ifndef FICUS_UPSTREAM_H
#define FICUS_UPSTREAM_H

#include "ficus/io.h"
#include <stdbool.h>
#include <uv.h>

struct config;
struct backend_cfg;
struct pool_set;
struct upconn;

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

/* A place in a pool's queue, embedded in the waiting exchange. */
struct upstream_wait {
    struct upstream_wait *next;
    struct pool *pool;
    upstream_ready_cb cb;
    void *ctx;
    bool queued;
    bool check_idle; /* set by the caller: peek that a pooled connection is
                        alive (for requests that cannot be retried) */
};

/* Creates one pool for each of the n backends at backends (resolved, and living
 * as long as cfg: the set holds a reference on cfg) on loop, reading into
 * buffers of rbufs. Each pool opens at most max_connections / share
 * connections (share: how many sets divide a backend's connections, e.g. the
 * workers). The connect deadline is cfg->connect_ms. Returns NULL when out of
 * memory. */
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

/* Lends a connection to backend (an index into the set's backends): an
 * idle one, a new one, or the next one released when the pool is full. cb runs
 * later (never before this returns) with the connection or an error
 * (FICUS_ETIMEOUT for a connect timeout, a libuv error for a refused connect).
 * Returns 0, or an error when nothing was started. */
int upstream_acquire(struct pool_set *ps, int backend, struct upstream_wait *wait,
                     upstream_ready_cb cb, void *ctx);
/* Leaves the queue (the exchange ended first). Safe when not queued. */
void upstream_cancel(struct upstream_wait *wait);

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
/* Gives the connection back: to the pool when reusable, else closed. */
void upstream_release(struct upconn *u, bool reusable);

/* Connections of a backend across the set, for metrics. */
void upstream_counts(const struct pool_set *ps, int backend, int *active, int *idle);

#endif
