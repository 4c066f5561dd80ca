#include "ficus/buf.h"
#include "ficus/common.h"

#include <errno.h>
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

int buf_put_uint(struct buf *b, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return buf_append(b, tmp + i, sizeof(tmp) - i);
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

/* Length of the UTF-8 sequence at s (at most n bytes), 0 when it is not valid
 * UTF-8 by jansson's rules: no overlong forms, no surrogates, nothing above
 * U+10FFFF. Only for a first byte of 0x80 or more. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char u = s[0];
    size_t k;
    uint32_t cp;
    if (u >= 0xC2 && u <= 0xDF) {
        k = 2;
        cp = u & 0x1F;
    } else if (u >= 0xE0 && u <= 0xEF) {
        k = 3;
        cp = u & 0x0F;
    } else if (u >= 0xF0 && u <= 0xF4) {
        k = 4;
        cp = u & 0x07;
    } else {
        return 0;
    }
    if (k > n)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    if ((k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000))
        return 0;
    return k;
}

int buf_json_string(struct buf *b, const char *s, size_t n)
{
    if (s == NULL)
        s = ""; /* n is 0 then */
    const unsigned char *u = (const unsigned char *)s;
    size_t start = b->len;
    int rc = buf_append(b, "\"", 1);
    size_t run = 0, i = 0;
    while (rc == 0 && i < n) {
        unsigned char ch = u[i];
        if (ch >= 0x80) {
            size_t k = utf8_seq(u + i, n - i);
            if (k == 0) {
                rc = -EINVAL;
                break;
            }
            i += k;
            continue;
        }
        if (ch >= 0x20 && ch != '"' && ch != '\\') {
            i++;
            continue;
        }
        /* jansson's short escapes; other control characters as \u00XX. */
        static const char short_esc[0x20] = {
            ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't'};
        char esc[8] = {'\\', (char)ch};
        size_t el = 2;
        if (ch < 0x20 && short_esc[ch] != 0)
            esc[1] = short_esc[ch];
        else if (ch < 0x20)
            el = (size_t)snprintf(esc, sizeof(esc), "\\u%04X", ch);
        rc = buf_append(b, s + run, i - run);
        if (rc == 0)
            rc = buf_append(b, esc, el);
        i++;
        run = i;
    }
    if (rc == 0)
        rc = buf_append(b, s + run, i - run);
    if (rc == 0)
        rc = buf_append(b, "\"", 1);
    if (rc != 0 && b->data != NULL) {
        b->len = start;
        b->data[start] = '\0';
    }
    return rc;
}

int buf_json_real(struct buf *b, double v, int precision)
{
    char tmp[64];
    int r = snprintf(tmp, sizeof(tmp) - 3, "%.*g", precision, v);
    if (r < 0 || (size_t)r >= sizeof(tmp) - 3)
        return -EINVAL;
    size_t len = (size_t)r;
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

static int json_value(struct buf *b, const json_t *v, int precision)
{
    char tmp[32];
    int rc = 0;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        rc = buf_append(b, "{", 1);
        bool first = true;
        for (void *it = json_object_iter((json_t *)v); it != NULL && rc == 0;
             it = json_object_iter_next((json_t *)v, it)) {
            if (!first)
                rc = buf_append(b, ",", 1);
            first = false;
            const char *key = json_object_iter_key(it);
            if (rc == 0)
                rc = buf_json_string(b, key, json_object_iter_key_len(it));
            if (rc == 0)
                rc = buf_append(b, ":", 1);
            if (rc == 0)
                rc = json_value(b, json_object_iter_value(it), precision);
        }
        return rc != 0 ? rc : buf_append(b, "}", 1);
    }
    case JSON_ARRAY: {
        rc = buf_append(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v) && rc == 0; i++) {
            if (i > 0)
                rc = buf_append(b, ",", 1);
            if (rc == 0)
                rc = json_value(b, json_array_get(v, i), precision);
        }
        return rc != 0 ? rc : buf_append(b, "]", 1);
    }
    case JSON_STRING:
        return buf_json_string(b, json_string_value(v), json_string_length(v));
    case JSON_INTEGER: {
        int n = snprintf(tmp, sizeof(tmp), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf_append(b, tmp, (size_t)n);
    }
    case JSON_REAL:
        return buf_json_real(b, json_real_value(v), precision);
    case JSON_TRUE:
        return buf_append(b, "true", 4);
    case JSON_FALSE:
        return buf_append(b, "false", 5);
    case JSON_NULL:
        return buf_append(b, "null", 4);
    }
    return -EINVAL;
}

int buf_json_value(struct buf *b, const json_t *v, int precision)
{
    if (v == NULL)
        return -EINVAL;
    size_t start = b->len;
    int rc = json_value(b, v, precision);
    if (rc != 0 && b->data != NULL) {
        b->len = start;
        b->data[start] = '\0';
    }
    return rc;
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
