#include "ficus/io.h"
#include "ficus/common.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

void rbuf_pool_init(struct rbuf_pool *p, int max_free)
{
    p->free = NULL;
    p->n_free = 0;
    p->max_free = max_free;
}

void rbuf_pool_dispose(struct rbuf_pool *p)
{
    while (p->free != NULL) {
        struct rbuf *b = p->free;
        p->free = b->next_free;
        free(b);
    }
    p->n_free = 0;
}

struct rbuf *rbuf_get(struct rbuf_pool *p)
{
    struct rbuf *b = p->free;
    if (b != NULL) {
        p->free = b->next_free;
        p->n_free--;
    } else {
        b = malloc(sizeof(*b));
        if (b == NULL)
            return NULL;
    }
    b->next_free = NULL;
    b->refs = 1;
    return b;
}

void rbuf_ref(struct rbuf *b)
{
    b->refs++;
}

void rbuf_unref(struct rbuf_pool *p, struct rbuf *b)
{
    if (b == NULL || --b->refs > 0)
        return;
    if (p->n_free < p->max_free) {
        b->next_free = p->free;
        p->free = b;
        p->n_free++;
    } else {
        free(b);
    }
}

struct rbuf *rbuf_of(const char *base)
{
    return (struct rbuf *)(void *)(base - offsetof(struct rbuf, data));
}

struct io_wreq {
    uv_write_t req;
    struct rbuf_pool *pool;
    struct rbuf *rb;
    void *owned;
    io_write_cb cb;
    void *ctx;
};

static void on_io_written(uv_write_t *req, int status)
{
    struct io_wreq *q = (struct io_wreq *)req;
    rbuf_unref(q->pool, q->rb);
    free(q->owned);
    if (q->cb != NULL)
        q->cb(q->ctx, status);
    free(q);
}

int io_write(struct rbuf_pool *pool, uv_stream_t *stream, const uv_buf_t *bufs, unsigned n,
             struct rbuf *rb, void *owned, io_write_cb cb, void *ctx)
{
    /* Try the write at once: libuv 1.44 re-arms the poller after every queued
     * write that completes, which costs an epoll_ctl per response. Only what
     * the socket does not take is queued (uv_try_write refuses while earlier
     * writes are queued, so order is kept). */
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    int w = uv_try_write(stream, bufs, n);
    if (w >= 0 && (size_t)w == total) {
        free(owned);
        return IO_WRITTEN;
    }
    if (w < 0 && w != UV_EAGAIN) {
        free(owned);
        return w;
    }
    size_t skip = w > 0 ? (size_t)w : 0;
    uv_buf_t rest[4];
    unsigned m = 0;
    for (unsigned i = 0; i < n && m < 4; i++) {
        if (skip >= bufs[i].len) {
            skip -= bufs[i].len;
            continue;
        }
        rest[m++] = uv_buf_init(bufs[i].base + skip, (unsigned)(bufs[i].len - skip));
        skip = 0;
    }
    struct io_wreq *q = malloc(sizeof(*q));
    if (q == NULL) {
        free(owned);
        return UV_ENOMEM;
    }
    q->pool = pool;
    q->rb = rb;
    q->owned = owned;
    q->cb = cb;
    q->ctx = ctx;
    int rc = uv_write(&q->req, stream, rest, m, on_io_written);
    if (rc != 0) {
        free(owned);
        free(q);
        return rc;
    }
    if (rb != NULL)
        rbuf_ref(rb);
    return 0;
}

void deadline_set(struct deadline *d, uv_timer_t *t, uv_timer_cb cb, uint64_t ms)
{
    d->set = true;
    d->at = uv_now(t->loop) + ms;
    if (d->due == 0 || d->due > d->at) {
        uv_timer_start(t, cb, ms, 0);
        d->due = d->at;
    }
}

void deadline_clear(struct deadline *d)
{
    d->set = false;
}

bool deadline_expired(struct deadline *d, uv_timer_t *t, uv_timer_cb cb)
{
    d->due = 0;
    if (!d->set)
        return false;
    uint64_t now = uv_now(t->loop);
    if (now < d->at) {
        uv_timer_start(t, cb, d->at - now, 0);
        d->due = d->at;
        return false;
    }
    d->set = false;
    return true;
}

uint64_t io_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
