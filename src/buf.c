#include "ficus/buf.h"
#include "ficus/common.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
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

int buf_reserve(struct buf *b, size_t extra)
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

int buf_reserve_exact(struct buf *b, size_t extra)
{
    size_t need = b->len + extra;
    if (b->max && need > b->max)
        return FICUS_ETOOBIG;
    if (need + 1 <= b->cap)
        return 0;
    char *p = realloc(b->data, need + 1);
    if (p == NULL)
        return FICUS_ENOMEM;
    b->data = p;
    b->cap = need + 1;
    return 0;
}

__attribute__((noinline)) static int buf_append_grow(struct buf *b, const void *p, size_t n)
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

/* The usual case first, with no call but memcpy's (the room is there: a head
 * is reserved once, then written in some 45 pieces); buf_append_grow
 * otherwise. */
int buf_append(struct buf *b, const void *p, size_t n)
{
    if (b->cap > b->len && n < b->cap - b->len && (b->max == 0 || b->len + n <= b->max)) {
        char *dst = b->data + b->len;
        b->len += n;
        dst[n] = '\0';
        if (n) /* last, so that nothing is kept across the call */
            memcpy(dst, p, n);
        return 0;
    }
    return buf_append_grow(b, p, n);
}

/* Writes v in decimal so that it ends just before end (up to 20 bytes);
 * returns where it starts. */
static char *format_uint(char *end, uint64_t v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return end;
}

int buf_put_uint(struct buf *b, uint64_t v)
{
    char tmp[20];
    char *start = format_uint(tmp + sizeof(tmp), v);
    return buf_append(b, start, (size_t)(tmp + sizeof(tmp) - start));
}

int buf_put_int(struct buf *b, int64_t v)
{
    char tmp[21];
    char *start = format_uint(tmp + sizeof(tmp), v < 0 ? 0 - (uint64_t)v : (uint64_t)v);
    if (v < 0)
        *--start = '-';
    return buf_append(b, start, (size_t)(tmp + sizeof(tmp) - start));
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

/* Bytes a JSON string holds as they are: printable ASCII but '"' and '\\' (32 a row). */
static const unsigned char json_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/* The one string writer: lossy writes a byte that is not part of a UTF-8
 * sequence as the text \xNN (JSON "\\xNN") instead of failing. */
static int json_string(struct buf *b, const char *s, size_t n, bool lossy)
{
    static const char short_esc[0x20] = {
        ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't'};
    static const char hex[] = "0123456789ABCDEF";
    if (s == NULL)
        s = ""; /* n is 0 then */
    const unsigned char *u = (const unsigned char *)s;
    size_t start = b->len;
    /* Room for the input as it is and both quotes. The invariant below: the
     * space left always holds the rest of the input and the closing quote, so
     * only an escape (which writes more than it reads) may need to grow it. */
    int rc = buf_reserve(b, n + 2);
    if (rc != 0)
        return rc;
    char *o = b->data + b->len;
    *o++ = '"';
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (i < n && json_plain[u[i]])
            i++;
        memcpy(o, s + run, i - run);
        o += i - run;
        if (i == n)
            break;
        unsigned char ch = u[i];
        char esc[6] = {'\\', (char)ch};
        size_t el = 2;
        if (ch >= 0x80) {
            size_t k = utf8_len(u + i, n - i);
            if (k == 0 && !lossy) {
                rc = -EINVAL;
                break;
            }
            if (k > 0) {
                memcpy(o, s + i, k);
                o += k;
                i += k;
                continue;
            }
            memcpy(esc, "\\\\x", 3);
            esc[3] = hex[ch >> 4];
            esc[4] = hex[ch & 15];
            el = 5;
        } else if (ch < 0x20 && short_esc[ch] != 0) {
            /* jansson's short escapes; other control characters as \u00XX. */
            esc[1] = short_esc[ch];
        } else if (ch < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[ch >> 4];
            esc[5] = hex[ch & 15];
            el = 6;
        }
        size_t used = (size_t)(o - b->data), rest = n - i - 1;
        if (used + el + rest + 2 > b->cap) {
            b->len = used;
            rc = buf_reserve(b, el + rest + 1);
            if (rc != 0)
                break;
            o = b->data + used;
        }
        memcpy(o, esc, el);
        o += el;
        i++;
    }
    if (rc != 0) {
        b->len = start;
        b->data[start] = '\0';
        return rc;
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->data);
    return 0;
}

int buf_json_string(struct buf *b, const char *s, size_t n)
{
    return json_string(b, s, n, false);
}

int buf_prom_label(struct buf *b, const char *v)
{
    int rc = 0;
    for (const char *p = v; *p && rc == 0; p++) {
        if (*p == '\\' || *p == '"')
            rc = buf_printf(b, "\\%c", *p);
        else if (*p == '\n')
            rc = buf_puts(b, "\\n");
        else
            rc = buf_append(b, p, 1);
    }
    return rc;
}

int buf_json_text(struct buf *b, const char *s, size_t n)
{
    return json_string(b, s, n, true);
}

/* 10^0 .. 10^15: exact doubles. */
static const double pow10_small[] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

/* "%.*g" without printf for the usual reals: v equal to m / 10^k exactly
 * (the division correctly rounded, m < 2^53) with m of at most precision
 * digits. The exact binary value of v is then within half an ulp of that
 * decimal, far inside half a step of the precision-digit grid, so rounding
 * it to precision digits gives m's digits: what printf prints. Only for
 * precision up to 15 and the fixed notation (-4 <= exponent < precision);
 * returns 0 when it does not apply. tmp needs 32 bytes. */
static size_t real_short(char *tmp, double v, int precision)
{
    double a = fabs(v);
    uint64_t m = 0;
    int k, digits;

    if (precision > 15 || !(a < 1e15) || (a != 0 && a < 1e-4))
        return 0;
    for (k = 0; k < 16; k++) {
        double scaled = a * pow10_small[k];
        if (scaled >= 9007199254740992.0)
            return 0;
        m = (uint64_t)llround(scaled);
        if ((double)m / pow10_small[k] == a)
            break;
    }
    if (k == 16)
        return 0;
    char digs[20];
    const char *d = format_uint(digs + sizeof(digs), m);
    digits = (int)(digs + sizeof(digs) - d);
    if (digits > precision)
        return 0;
    size_t o = 0;
    if (signbit(v))
        tmp[o++] = '-';
    if (digits <= k) {
        /* 0.000ddd */
        tmp[o++] = '0';
        tmp[o++] = '.';
        memset(tmp + o, '0', (size_t)(k - digits));
        o += (size_t)(k - digits);
        memcpy(tmp + o, d, (size_t)digits);
        return o + (size_t)digits;
    }
    /* ddd.ddd, or ddd.0 for an integral real, so that it reads back as a real */
    memcpy(tmp + o, d, (size_t)(digits - k));
    o += (size_t)(digits - k);
    tmp[o++] = '.';
    if (k == 0) {
        tmp[o++] = '0';
        return o;
    }
    memcpy(tmp + o, d + digits - k, (size_t)k);
    return o + (size_t)k;
}

int buf_json_real(struct buf *b, double v, int precision)
{
    char tmp[64];
    size_t len = real_short(tmp, v, precision);
    if (len > 0)
        return buf_append(b, tmp, len);
    int r = snprintf(tmp, sizeof(tmp) - 3, "%.*g", precision, v);
    if (r < 0 || (size_t)r >= sizeof(tmp) - 3)
        return -EINVAL;
    len = (size_t)r;
    /* A dot or an exponent, so that it reads back as a real. */
    if (strchr(tmp, '.') == NULL && strchr(tmp, 'e') == NULL) {
        memcpy(tmp + len, ".0", 3);
        len += 2;
    }
    /* "1e+05" -> "1e5", "1e-05" -> "1e-5" (jansson's jsonp_dtostr). */
    char *start = strchr(tmp, 'e');
    if (start != NULL) {
        start++;
        char *end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, len - (size_t)(end - tmp) + 1);
            len -= (size_t)(end - start);
        }
    }
    return buf_append(b, tmp, len);
}

struct arena_block {
    struct arena_block *next;
    size_t size;
    max_align_t data[];
};

/* Blocks grow from ARENA_BLOCK_MIN to ARENA_BLOCK_MAX bytes, doubling: a small
 * arena stays small, and a large one (the parse of a big JSON body) makes a
 * few dozen mallocs instead of hundreds. An allocation above a quarter of the
 * largest block gets a block of its own. */
#define ARENA_BLOCK_MIN 4096
#define ARENA_BLOCK_MAX (64 * 1024)

/* The process keeps up to ARENA_CACHE_BLOCKS freed blocks of the largest size
 * (4 MiB) for the next arenas. Without them a diff on the threadpool gave its
 * parse back to the kernel at every comparison (glibc trims the top of its
 * heap, and ficus has blocks of 256 KiB and more mapped and unmapped) and
 * faulted it in again at the next: that cost more than the parse (diffbench:
 * 70 MB/s against 150 MB/s with heap trimming off). One cache for all threads,
 * not one per thread: the threadpool's threads take turns with the same work,
 * and each would keep its own 4 MiB. A lock per 64 KiB block costs nothing
 * next to filling it. */
#define ARENA_CACHE_BLOCKS 64

static pthread_mutex_t arena_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct arena_block *arena_cache;
static unsigned arena_cached;

/* Keeps blk for the next arenas; false when the cache is full. */
static bool arena_cache_put(struct arena_block *blk)
{
    if (blk->size != ARENA_BLOCK_MAX)
        return false;
    bool kept = false;
    pthread_mutex_lock(&arena_cache_lock);
    if (arena_cached < ARENA_CACHE_BLOCKS) {
        blk->next = arena_cache;
        arena_cache = blk;
        arena_cached++;
        kept = true;
    }
    pthread_mutex_unlock(&arena_cache_lock);
    return kept;
}

static struct arena_block *arena_cache_take(void)
{
    pthread_mutex_lock(&arena_cache_lock);
    struct arena_block *blk = arena_cache;
    if (blk != NULL) {
        arena_cache = blk->next;
        arena_cached--;
    }
    pthread_mutex_unlock(&arena_cache_lock);
    return blk;
}

void arena_init(struct arena *a)
{
    a->head = NULL;
    a->cur = a->first;
    a->end = a->first + sizeof(a->first);
    a->grow = ARENA_BLOCK_MIN;
}

void *arena_alloc(struct arena *a, size_t n)
{
    const size_t align = sizeof(max_align_t);
    uintptr_t cur = ((uintptr_t)a->cur + align - 1) & ~(uintptr_t)(align - 1);
    if (cur + n <= (uintptr_t)a->end) {
        a->cur = (char *)(cur + n);
        return (void *)cur;
    }
    struct arena_block *blk;
    if (n > ARENA_BLOCK_MAX / 4) {
        /* A large block serves one allocation; the current block keeps its tail. */
        blk = malloc(sizeof(*blk) + n);
        if (blk == NULL)
            return NULL;
        blk->size = n;
        blk->next = a->head;
        a->head = blk;
        return blk->data;
    }
    size_t size = a->grow;
    if (a->grow < ARENA_BLOCK_MAX)
        a->grow *= 2;
    while (size < n)
        size *= 2;
    blk = size == ARENA_BLOCK_MAX ? arena_cache_take() : NULL;
    if (blk == NULL && (blk = malloc(sizeof(*blk) + size)) == NULL)
        return NULL;
    blk->size = size;
    blk->next = a->head;
    a->head = blk;
    a->cur = (char *)blk->data + n;
    a->end = (char *)blk->data + size;
    return blk->data;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc_bytes(a, n + 1);
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
        if (!arena_cache_put(blk))
            free(blk);
        blk = next;
    }
    arena_init(a);
}
