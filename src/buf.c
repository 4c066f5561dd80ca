#include "ficus/buf.h"
#include "ficus/common.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

static int buf_reserve(struct buf *b, size_t extra)
{
    size_t need = b->len + extra;
    if (b->max && need > b->max)
        return FICUS_ETOOBIG;
    if (need + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need + 1)
        cap *= 2;
    if (b->max && cap > b->max + 1)
        cap = b->max + 1;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return FICUS_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc != 0)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_puts(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return FICUS_ENOMEM;
    int rc = buf_reserve(b, (size_t)n);
    if (rc != 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void buf_reset(struct buf *b)
{
    b->len = 0;
}

void buf_dispose(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

struct arena_block {
    struct arena_block *next;
    max_align_t data[];
};

void arena_init(struct arena *a)
{
    a->head = NULL;
    a->cur = a->first;
    a->end = a->first + sizeof(a->first);
}

void *arena_alloc(struct arena *a, size_t n)
{
    const size_t align = sizeof(max_align_t);
    uintptr_t cur = ((uintptr_t)a->cur + align - 1) & ~(uintptr_t)(align - 1);
    if (cur + n <= (uintptr_t)a->end) {
        a->cur = (char *)(cur + n);
        return (void *)cur;
    }
    size_t size = n > 4096 ? n : 4096;
    struct arena_block *blk = malloc(sizeof(*blk) + size);
    if (blk == NULL)
        return NULL;
    blk->next = a->head;
    a->head = blk;
    if (n >= 4096)
        return blk->data; /* a large block serves one allocation; keep the old tail */
    a->cur = (char *)blk->data + n;
    a->end = (char *)blk->data + size;
    return blk->data;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void arena_dispose(struct arena *a)
{
    struct arena_block *blk = a->head;
    while (blk != NULL) {
        struct arena_block *next = blk->next;
        free(blk);
        blk = next;
    }
    arena_init(a);
}
