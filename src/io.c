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
    struct io_wreq *w = (struct io_wreq *)req;
    rbuf_unref(w->pool, w->rb);
    free(w->owned);
    if (w->cb != NULL)
        w->cb(w->ctx, status);
    free(w);
}

int io_write(struct rbuf_pool *pool, uv_stream_t *stream, const uv_buf_t *bufs, unsigned n,
             struct rbuf *rb, void *owned, io_write_cb cb, void *ctx)
{
    struct io_wreq *w = malloc(sizeof(*w));
    if (w == NULL) {
        free(owned);
        return UV_ENOMEM;
    }
    w->pool = pool;
    w->rb = rb;
    w->owned = owned;
    w->cb = cb;
    w->ctx = ctx;
    int rc = uv_write(&w->req, stream, bufs, n, on_io_written);
    if (rc != 0) {
        free(owned);
        free(w);
        return rc;
    }
    if (rb != NULL)
        rbuf_ref(rb);
    return 0;
}

uint64_t io_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
