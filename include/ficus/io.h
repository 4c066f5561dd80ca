/* Bytes on the wire: reference-counted read buffers handed from a read to the
 * writes that forward them (no copy on the forwarding path), and writes that
 * own what they send. One buffer pool per worker; single-threaded. */
#ifndef FICUS_IO_H
#define FICUS_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define RBUF_SIZE (64 * 1024)

struct rbuf {
    struct rbuf *next_free;
    int refs;
    char data[RBUF_SIZE];
};

/* A per-worker free list of read buffers, kept short so that idle memory stays
 * small. */
struct rbuf_pool {
    struct rbuf *free;
    int n_free;
    int max_free;
};

void rbuf_pool_init(struct rbuf_pool *p, int max_free);
void rbuf_pool_dispose(struct rbuf_pool *p);
/* Returns a buffer with one reference, or NULL when out of memory. */
struct rbuf *rbuf_get(struct rbuf_pool *p);
void rbuf_ref(struct rbuf *b);
/* Drops a reference; the last one returns the buffer to the pool. Accepts NULL. */
void rbuf_unref(struct rbuf_pool *p, struct rbuf *b);
/* The rbuf whose data holds the bytes at base (as given to a libuv alloc_cb). */
struct rbuf *rbuf_of(const char *base);

typedef void (*io_write_cb)(void *ctx, int status);

#define IO_WRITTEN 1

/* Writes up to 4 buffers to stream. The write holds a reference on rb (may be
 * NULL) and takes ownership of owned (malloc'd, may be NULL; freed after the
 * write), so the caller may release both at once. Returns IO_WRITTEN when the
 * socket took every byte at once (cb is then not called and nothing is
 * queued), 0 when the rest is queued (cb, which may be NULL, runs with ctx
 * when the write finishes), or a libuv error (nothing queued, rb keeps the
 * caller's reference, owned is freed). */
int io_write(struct rbuf_pool *pool, uv_stream_t *stream, const uv_buf_t *bufs, unsigned n,
             struct rbuf *rb, void *owned, io_write_cb cb, void *ctx);

/* A deadline kept apart from the libuv timer that enforces it: the timer is
 * moved only when the deadline comes earlier than the timer's due time, and
 * re-armed by itself when it fires before a deadline moved later. Moving a
 * deadline later (every read of a busy connection) then costs a store instead
 * of a timer-heap removal and insertion. Zero-initialised: no deadline. */
struct deadline {
    bool set;
    uint64_t at;  /* loop time in ms, when set */
    uint64_t due; /* when the timer fires; 0: not armed */
};

/* Sets the deadline ms from the loop's now; cb is the timer's callback. */
void deadline_set(struct deadline *d, uv_timer_t *t, uv_timer_cb cb, uint64_t ms);
/* No deadline: a timer still armed finds nothing to do. */
void deadline_clear(struct deadline *d);
/* For the start of the timer's callback: true when the deadline has passed
 * (it is cleared then); false when there is none or it was moved later (the
 * timer is then re-armed). */
bool deadline_expired(struct deadline *d, uv_timer_t *t, uv_timer_cb cb);

/* Monotonic milliseconds and microseconds (not the loop's cached time). */
uint64_t io_now_us(void);

#endif
