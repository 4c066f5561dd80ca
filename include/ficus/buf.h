/* Growable byte buffers with a cap, and a bump arena for request-scoped memory. */
#ifndef FICUS_BUF_H
#define FICUS_BUF_H

#include <stddef.h>
#include <stdint.h>

/* A growable buffer that refuses to grow past max (curl's dynbuf). data is
 * owned by the buffer; buf_dispose frees it. Zero-initialised is empty. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max; /* 0: no cap */
};

void buf_init(struct buf *b, size_t max);
/* Appends n bytes. Returns 0, FICUS_ETOOBIG when max would be passed (nothing
 * is appended then), or FICUS_ENOMEM. */
int buf_append(struct buf *b, const void *p, size_t n);
/* Appends a NUL-terminated string. Same returns as buf_append. */
int buf_puts(struct buf *b, const char *s);
/* Makes room for extra more bytes (and the terminating NUL) so that appends
 * up to that size do not reallocate. Same returns as buf_append. */
int buf_reserve(struct buf *b, size_t extra);
/* The same, growing to exactly that size rather than to the next doubling: for
 * a buffer whose final size is known (a body with a Content-Length). */
int buf_reserve_exact(struct buf *b, size_t extra);
/* Appends v in decimal. Same returns as buf_append. */
int buf_put_uint(struct buf *b, uint64_t v);
/* Appends v in decimal, with a minus sign when negative. Same returns. */
int buf_put_int(struct buf *b, int64_t v);
/* Appends printf-formatted text. Same returns as buf_append. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (n <= len). */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
void buf_dispose(struct buf *b);

/* JSON text written straight into a buffer, byte for byte as jansson's
 * json_dumps(JSON_COMPACT | JSON_REAL_PRECISION(precision)) writes it (2.14:
 * "%.*g" reals with ".0" added and exponent zeros and "+" dropped, strings
 * escaped only for '"', '\\' and control characters, objects in insertion
 * order), without building a tree first. Each returns 0, -EINVAL when a string
 * is not UTF-8 (jansson refuses those too), or FICUS_ENOMEM / FICUS_ETOOBIG;
 * on error nothing is appended. */
/* A JSON string of the n bytes at s (NUL bytes allowed, written as \u0000). */
int buf_json_string(struct buf *b, const char *s, size_t n);
/* The same for bytes that need not be UTF-8 (a request target, a header value,
 * a body): a byte that is not part of a UTF-8 sequence is written as the text
 * \xNN, as the body diff shows them, so that the result is always valid JSON
 * text and nothing is refused for its bytes. Returns 0 or FICUS_ENOMEM /
 * FICUS_ETOOBIG. */
int buf_json_text(struct buf *b, const char *s, size_t n);
/* A JSON real. */
int buf_json_real(struct buf *b, double v, int precision);

/* A bump allocator: allocations live until arena_dispose frees them all at once
 * (nginx's request pool, h2o's mem pool). The first block is embedded; the
 * next ones double from 4 KiB to 64 KiB, and the process keeps a few freed
 * 64 KiB blocks (4 MiB at most) for the next arenas, so that a large arena
 * made again and again (the diff's parse) is not faulted in each time. */
struct arena_block;
struct arena {
    struct arena_block *head;
    char *cur;
    char *end;
    size_t grow; /* the size of the next block */
    char first[1024];
};

void arena_init(struct arena *a);
/* Returns n bytes aligned for any type, or NULL when out of memory. */
void *arena_alloc(struct arena *a, size_t n);
/* Returns n bytes with no alignment (text), or NULL when out of memory.
 * Inline: the parser of the diff takes one per string and number. */
static inline void *arena_alloc_bytes(struct arena *a, size_t n)
{
    if ((size_t)(a->end - a->cur) >= n) {
        void *p = a->cur;
        a->cur += n;
        return p;
    }
    return arena_alloc(a, n);
}
/* Copies n bytes into the arena and NUL-terminates them. */
char *arena_strndup(struct arena *a, const char *s, size_t n);
void arena_dispose(struct arena *a);

#endif
