/* JSON documents in an arena (see jdoc.h for why not jansson).
 *
 * A recursive descent over the bytes. Children of a container are collected on
 * one of two growable stacks (items, members) shared by every level, and are
 * copied into the arena as one array when the container closes, so each
 * container costs one arena allocation whatever its size. Every rule below
 * follows jansson 2.14's load.c, so that a body is JSON for the diff exactly
 * when it was before, except that numbers of any size are taken (their text
 * is kept, never converted while parsing). */
#include "ficus/jdoc.h"
#include "ficus/common.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Objects up to this size are searched linearly; bigger ones get a hash index. */
#define JDOC_SMALL_OBJECT 8

/* A growable stack of elements of one size. It starts in the caller's frame
 * and moves to the heap only when that is full. */
struct jstack {
    void *data;
    size_t n;
    size_t cap;
    size_t size;
    bool heap;
};

struct jparse {
    const unsigned char *p;
    const unsigned char *end;
    struct arena *a;
    struct jstack items;   /* pending array items (struct jv), all levels */
    struct jstack members; /* pending object members (struct jv_member), all levels */
};

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static inline void skip_ws(struct jparse *jp)
{
    /* Most values follow their ',' or ':' without a space: one test. */
    if (jp->p<jp->end && * jp->p> ' ')
        return;
    while (jp->p < jp->end && is_ws(*jp->p))
        jp->p++;
}

static int stack_grow(struct jstack *s)
{
    {
        size_t ncap = s->cap * 2;
        void *p = s->heap ? realloc(s->data, ncap * s->size) : malloc(ncap * s->size);
        if (p == NULL)
            return FICUS_ENOMEM;
        if (!s->heap)
            memcpy(p, s->data, s->n * s->size);
        s->data = p;
        s->cap = ncap;
        s->heap = true;
    }
    return 0;
}

/* Typed pushes: a struct assignment, not a memcpy of a size known only at run time. */
static inline int push_item(struct jstack *s, const struct jv *v)
{
    if (s->n == s->cap && stack_grow(s) != 0)
        return FICUS_ENOMEM;
    ((struct jv *)s->data)[s->n++] = *v;
    return 0;
}

static inline int push_member(struct jstack *s, const struct jv_member *m)
{
    if (s->n == s->cap && stack_grow(s) != 0)
        return FICUS_ENOMEM;
    ((struct jv_member *)s->data)[s->n++] = *m;
    return 0;
}

static void stack_dispose(struct jstack *s)
{
    if (s->heap)
        free(s->data);
}

/* After an element of a container: 1 when the closing byte ends it, 0 after a
 * comma (another element follows), -EINVAL for anything else. */
static int after_element(struct jparse *jp, unsigned char close)
{
    skip_ws(jp);
    if (jp->p >= jp->end)
        return -EINVAL;
    if (*jp->p == close) {
        jp->p++;
        return 1;
    }
    if (*jp->p != ',')
        return -EINVAL;
    jp->p++;
    return 0;
}

static int hex4(const unsigned char *p, uint32_t *out)
{
    uint32_t v = 0;

    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -EINVAL;
    }
    *out = v;
    return 0;
}

static size_t utf8_encode(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes the escape at q (just after the backslash) into o. Returns the
 * bytes consumed from q, 0 when invalid; *olen gets the bytes written. */
static size_t unescape(const unsigned char *q, const unsigned char *end, char *o, size_t *olen)
{
    static const char simple[128] = {['"'] = '"',  ['\\'] = '\\', ['/'] = '/',  ['b'] = '\b',
                                     ['f'] = '\f', ['n'] = '\n',  ['r'] = '\r', ['t'] = '\t'};
    uint32_t cp, lo;

    if (q >= end)
        return 0;
    if (*q != 'u') {
        if (*q >= 128 || simple[*q] == 0)
            return 0;
        o[0] = simple[*q];
        *olen = 1;
        return 1;
    }
    if (end - q < 5 || hex4(q + 1, &cp) != 0)
        return 0;
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return 0; /* a low surrogate alone */
    if (cp < 0xD800 || cp > 0xDBFF) {
        *olen = utf8_encode(cp, o);
        return 5;
    }
    /* A high surrogate needs "\u" and a low one right after it. */
    if (end - q < 11 || q[5] != '\\' || q[6] != 'u' || hex4(q + 7, &lo) != 0 || lo < 0xDC00 ||
        lo > 0xDFFF)
        return 0;
    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    *olen = utf8_encode(cp, o);
    return 11;
}

/* A string; jp->p is just after the opening quote. The decoded text is never
 * longer than the source text, so one allocation of the source length holds it. */
static inline __attribute__((always_inline)) int parse_string(struct jparse *jp, const char **out,
                                                              size_t *out_len, bool *escaped)
{
    const unsigned char *start = jp->p, *q = start;
    bool plain = true;
    char *s;
    size_t o = 0;

    /* Find the closing quote: eight bytes at a time up to the first quote,
     * backslash, control character or non-ASCII byte (the lowest byte the
     * mask flags is always a true one: the subtractions borrow upwards only
     * from a flagged byte). A quote there ends the usual ASCII string; the
     * rest goes byte by byte. */
    while (jp->end - q >= 8) {
        uint64_t x;
        memcpy(&x, q, 8);
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        uint64_t quote = x ^ (ones * '"'), bslash = x ^ (ones * '\\');
        uint64_t special =
            (((quote - ones) & ~quote) | ((bslash - ones) & ~bslash) | (x - ones * 0x20) | x) &
            highs;
        if (special == 0) {
            q += 8;
            continue;
        }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        q += (unsigned)__builtin_ctzll(special) / 8;
#endif
        break;
    }
    while (q < jp->end && *q != '"') {
        if (*q == '\\') {
            if (jp->end - q < 2)
                return -EINVAL;
            plain = false;
            q += 2;
            continue;
        }
        if (*q < 0x20 || *q >= 0x80)
            plain = false;
        q++;
    }
    if (q >= jp->end)
        return -EINVAL;
    s = arena_alloc_bytes(jp->a, (size_t)(q - start) + 1);
    if (s == NULL)
        return FICUS_ENOMEM;
    if (plain) {
        o = (size_t)(q - start);
        memcpy(s, start, o);
    } else {
        for (const unsigned char *r = start; r < q;) {
            if (*r == '\\') {
                size_t olen = 0, used = unescape(r + 1, q, s + o, &olen);
                if (used == 0)
                    return -EINVAL;
                r += 1 + used;
                o += olen;
            } else if (*r < 0x20) {
                return -EINVAL; /* a control character must be escaped */
            } else if (*r < 0x80) {
                s[o++] = (char)*r++;
            } else {
                size_t k = utf8_len(r, (size_t)(q - r));
                if (k == 0)
                    return -EINVAL;
                memcpy(s + o, r, k);
                o += k;
                r += k;
            }
        }
    }
    s[o] = '\0';
    *out = s;
    *out_len = o;
    *escaped = !plain;
    jp->p = q + 1;
    return 0;
}

/* ---- numbers ---------------------------------------------------------------------------- */

/* The end of the JSON number starting at s (before e), or NULL when the bytes
 * there are not one. *is_int tells whether it has neither fraction nor exponent. */
static inline __attribute__((always_inline)) const unsigned char *
number_end(const unsigned char *s, const unsigned char *e, bool *is_int)
{
    const unsigned char *q = s;

    *is_int = true;
    if (q < e && *q == '-')
        q++;
    if (q < e && *q == '0') {
        q++;
        if (q < e && is_digit(*q))
            return NULL;
    } else if (q < e && is_digit(*q)) {
        while (q < e && is_digit(*q))
            q++;
    } else {
        return NULL;
    }
    if (q < e && *q == '.') {
        *is_int = false;
        q++;
        if (!(q < e && is_digit(*q)))
            return NULL;
        while (q < e && is_digit(*q))
            q++;
    }
    if (q < e && (*q == 'e' || *q == 'E')) {
        *is_int = false;
        q++;
        if (q < e && (*q == '+' || *q == '-'))
            q++;
        if (!(q < e && is_digit(*q)))
            return NULL;
        while (q < e && is_digit(*q))
            q++;
    }
    return q;
}

bool jdoc_number_valid(const char *s, size_t n, bool *is_int)
{
    const unsigned char *p = (const unsigned char *)s;
    bool i;

    if (s == NULL || n == 0)
        return false;
    if (number_end(p, p + n, &i) != p + n)
        return false;
    if (is_int != NULL)
        *is_int = i;
    return true;
}

/* Exponents saturate here (see jdoc.h): far beyond any double, and small enough
 * that adding a text length cannot overflow. */
#define JNUM_EXP_MAX ((int64_t)1 << 62)

/* A valid number text as sign, significant digits and a power of ten: the
 * value is (neg ? -1 : 1) * digits * 10^exp, where digits has neither leading
 * nor trailing zeros. The digits are the integer part followed by the fraction
 * part, read through digit(): no copy. Zero has n == 0 (and no sign). */
struct jnum {
    bool neg;
    const char *ip, *fp; /* integer and fraction digits */
    size_t ni, nf;
    size_t lo, n; /* the significant digits: n of them from index lo */
    int64_t exp;
};

static char jnum_digit(const struct jnum *j, size_t i)
{
    return i < j->ni ? j->ip[i] : j->fp[i - j->ni];
}

static void jnum_split(const char *s, size_t len, struct jnum *j)
{
    const char *e = s + len, *q = s;
    int64_t x = 0;
    size_t total, hi;

    j->neg = *q == '-';
    if (j->neg)
        q++;
    j->ip = q;
    while (q < e && is_digit((unsigned char)*q))
        q++;
    j->ni = (size_t)(q - j->ip);
    j->fp = q;
    j->nf = 0;
    if (q < e && *q == '.') {
        j->fp = ++q;
        while (q < e && is_digit((unsigned char)*q))
            q++;
        j->nf = (size_t)(q - j->fp);
    }
    if (q < e) { /* 'e' or 'E' */
        bool eneg = false;
        q++;
        if (*q == '+' || *q == '-')
            eneg = *q++ == '-';
        for (; q < e; q++)
            x = x <= (JNUM_EXP_MAX - 9) / 10 ? x * 10 + (*q - '0') : JNUM_EXP_MAX;
        if (eneg)
            x = -x;
    }
    total = j->ni + j->nf;
    j->lo = 0;
    while (j->lo < total && jnum_digit(j, j->lo) == '0')
        j->lo++;
    hi = total;
    while (hi > j->lo && jnum_digit(j, hi - 1) == '0')
        hi--;
    j->n = hi - j->lo;
    /* digits * 10^exp: the explicit exponent, less the fraction digits, plus the
     * trailing zeros dropped. */
    j->exp = x - (int64_t)j->nf + (int64_t)(total - hi);
    if (j->n == 0) {
        j->neg = false;
        j->exp = 0;
    }
}

bool jdoc_number_equal(const char *a, size_t na, const char *b, size_t nb)
{
    struct jnum x, y;

    if (na == nb && memcmp(a, b, na) == 0)
        return true;
    jnum_split(a, na, &x);
    jnum_split(b, nb, &y);
    if (x.neg != y.neg || x.n != y.n || x.exp != y.exp)
        return false;
    for (size_t i = 0; i < x.n; i++)
        if (jnum_digit(&x, x.lo + i) != jnum_digit(&y, y.lo + i))
            return false;
    return true;
}

uint64_t jdoc_number_hash(const char *s, size_t n)
{
    struct jnum j;
    uint64_t h = FNV_SEED;

    jnum_split(s, n, &j);
    for (size_t i = 0; i < j.n; i++) {
        unsigned char d = (unsigned char)jnum_digit(&j, j.lo + i);
        h = hash_fnv1a(&d, 1, h); /* the digits one at a time: they are not contiguous */
    }
    uint64_t tail = (uint64_t)j.exp * 0x9e3779b97f4a7c15ULL + (j.neg ? 0x2d : 0);
    h = hash_fnv1a(&tail, sizeof(tail), h);
    return h ^ (h >> 31);
}

int jdoc_number_int64(const char *s, size_t n, int64_t *out)
{
    const char *q = s, *e = s + n;
    bool neg = false;
    uint64_t m = 0, limit;

    if (q < e && *q == '-') {
        neg = true;
        q++;
    }
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    if (q == e)
        return -EINVAL;
    for (; q < e; q++) {
        uint64_t digit;
        if (!is_digit((unsigned char)*q))
            return -EINVAL;
        digit = (uint64_t)(*q - '0');
        if (m > (limit - digit) / 10) {
            /* Too big, unless what follows makes it no integer at all. */
            while (q < e && is_digit((unsigned char)*q))
                q++;
            return q == e ? -ERANGE : -EINVAL;
        }
        m = m * 10 + digit;
    }
    *out = neg ? (int64_t)(0 - m) : (int64_t)m;
    return 0;
}

/* 10^0 .. 10^22 are exact doubles. */
static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Short decimals take Clinger's fast path: a mantissa of at most 15 digits
 * (exact in a double) scaled by an exact power of ten up to 10^22 is one
 * correctly rounded operation, the very double strtod returns. The rest goes
 * through strtod. */
double jdoc_number_double(const char *s, size_t len)
{
    const char *q = s, *e = s + len;
    bool neg = *q == '-', after_dot = false;
    uint64_t m = 0;
    int sig = 0, frac = 0, exp10 = 0;

    if (neg)
        q++;
    for (; q < e && *q != 'e' && *q != 'E'; q++) {
        if (*q == '.') {
            after_dot = true;
            continue;
        }
        if (sig > 0 || *q != '0')
            sig++;
        if (sig > 15)
            goto slow;
        m = m * 10 + (uint64_t)(*q - '0');
        if (after_dot)
            frac++;
    }
    if (q < e) {
        bool eneg = false;
        q++;
        if (*q == '+' || *q == '-')
            eneg = *q++ == '-';
        for (; q < e; q++) {
            exp10 = exp10 * 10 + (*q - '0');
            if (exp10 > 1000)
                goto slow;
        }
        if (eneg)
            exp10 = -exp10;
    }
    int scale = exp10 - frac;
    if (m == 0 || (scale >= -22 && scale <= 22)) {
        double d = (double)m;
        if (m != 0)
            d = scale < 0 ? d / pow10_exact[-scale] : d * pow10_exact[scale];
        return neg ? -d : d;
    }
slow:;
    /* strtod reads up to the first byte that cannot continue a number: the text
     * itself serves when it ends there (the texts of a jdoc end with a NUL). */
    unsigned char after = (unsigned char)s[len];
    if (!(is_digit(after) || after == '.' || after == 'e' || after == 'E' || after == '+' ||
          after == '-'))
        return strtod(s, NULL);
    char tmp[64], *copy = tmp;
    if (len >= sizeof tmp) {
        copy = malloc(len + 1);
        if (copy == NULL)
            return NAN;
    }
    memcpy(copy, s, len);
    copy[len] = '\0';
    double d = strtod(copy, NULL);
    if (copy != tmp)
        free(copy);
    return d;
}

/* A number; jp->p is at its first byte ('-' or a digit). Its text is copied
 * into the arena: a record writes it back as sent. */
static int parse_number(struct jparse *jp, struct jv *v)
{
    const unsigned char *s = jp->p;
    bool is_int;
    const unsigned char *q = number_end(s, jp->end, &is_int);
    char *t;
    size_t n;

    if (q == NULL)
        return -EINVAL;
    n = (size_t)(q - s);
    t = arena_alloc_bytes(jp->a, n + 1);
    if (t == NULL)
        return FICUS_ENOMEM;
    memcpy(t, s, n);
    t[n] = '\0';
    jp->p = q;
    v->type = is_int ? JV_INT : JV_REAL;
    v->n = n;
    v->u.num = t;
    return 0;
}

static int parse_value(struct jparse *jp, struct jv *v, unsigned depth);

/* Keys are hashed eight bytes at a time (FNV-1a took a multiply per byte,
 * the largest cost of building a big object's index). */
static uint64_t key_hash(const char *k, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n, w;
    for (; n >= 8; k += 8, n -= 8) {
        memcpy(&w, k, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    if (n >= 4) { /* two loads that overlap cover 4 to 7 bytes */
        uint32_t lo, hi;
        memcpy(&lo, k, 4);
        memcpy(&hi, k + n - 4, 4);
        w = (uint64_t)lo << 32 | hi;
        h = (h ^ w) * 0x94D049BB133111EBULL;
    } else if (n > 0) {
        const unsigned char *u = (const unsigned char *)k;
        w = (uint64_t)u[0] << 16 | (uint64_t)u[n / 2] << 8 | u[n - 1];
        h = (h ^ w) * 0x94D049BB133111EBULL;
    }
    return h ^ (h >> 29);
}

static bool key_eq(const struct jv_member *m, const char *k, size_t n)
{
    return m->key_len == n && memcmp(m->key, k, n) == 0;
}

/* Copies the pending members from base on into the arena as one object,
 * merging repeated keys (first position, last value). */
static int close_object(struct jparse *jp, size_t base, struct jv *v)
{
    size_t n = jp->members.n - base, k = 0;
    const struct jv_member *src = (const struct jv_member *)jp->members.data + base;
    struct jv_object *obj = arena_alloc(jp->a, sizeof *obj + n * sizeof obj->m[0]);

    if (obj == NULL)
        return FICUS_ENOMEM;
    obj->index = NULL;
    obj->mask = 0;
    if (n <= JDOC_SMALL_OBJECT) {
        for (size_t i = 0; i < n; i++) {
            size_t j = 0;
            while (j < k && !key_eq(&obj->m[j], src[i].key, src[i].key_len))
                j++;
            if (j < k)
                obj->m[j].value = src[i].value;
            else
                obj->m[k++] = src[i];
        }
    } else {
        size_t slots = 16;
        while (slots < n * 2)
            slots *= 2;
        uint32_t *index = arena_alloc(jp->a, slots * sizeof *index);
        if (index == NULL)
            return FICUS_ENOMEM;
        memset(index, 0, slots * sizeof *index);
        obj->mask = slots - 1;
        for (size_t i = 0; i < n; i++) {
            size_t slot = (size_t)key_hash(src[i].key, src[i].key_len) & obj->mask;
            while (index[slot] != 0 &&
                   !key_eq(&obj->m[index[slot] - 1], src[i].key, src[i].key_len))
                slot = (slot + 1) & obj->mask;
            if (index[slot] != 0) {
                obj->m[index[slot] - 1].value = src[i].value;
            } else {
                obj->m[k] = src[i];
                index[slot] = (uint32_t)++k;
            }
        }
        obj->index = index;
    }
    jp->members.n = base;
    v->type = JV_OBJECT;
    v->n = k;
    v->u.obj = obj;
    return 0;
}

/* An object; jp->p is just after '{'. */
static int parse_object(struct jparse *jp, struct jv *v, unsigned depth)
{
    size_t base = jp->members.n;
    int rc;

    skip_ws(jp);
    if (jp->p < jp->end && *jp->p == '}') {
        jp->p++;
        return close_object(jp, base, v);
    }
    for (;;) {
        struct jv_member m;

        if (jp->p >= jp->end || *jp->p != '"')
            return -EINVAL;
        jp->p++;
        bool escaped;
        rc = parse_string(jp, &m.key, &m.key_len, &escaped);
        if (rc != 0)
            return rc;
        /* Only an escape makes a NUL byte: a raw one is refused as a control character. */
        if (escaped && memchr(m.key, '\0', m.key_len) != NULL)
            return -EINVAL; /* jansson: "NUL byte in object key not supported" */
        skip_ws(jp);
        if (jp->p >= jp->end || *jp->p != ':')
            return -EINVAL;
        jp->p++;
        rc = parse_value(jp, &m.value, depth + 1);
        if (rc != 0)
            return rc;
        rc = push_member(&jp->members, &m);
        if (rc == 0)
            rc = after_element(jp, '}');
        if (rc != 0)
            return rc == 1 ? close_object(jp, base, v) : rc;
        skip_ws(jp);
    }
}

static int close_array(struct jparse *jp, size_t base, struct jv *v)
{
    size_t n = jp->items.n - base;
    struct jv *items = NULL;

    if (n > 0) {
        items = arena_alloc(jp->a, n * sizeof *items);
        if (items == NULL)
            return FICUS_ENOMEM;
        memcpy(items, (const struct jv *)jp->items.data + base, n * sizeof *items);
    }
    jp->items.n = base;
    v->type = JV_ARRAY;
    v->n = n;
    v->u.items = items;
    return 0;
}

/* An array; jp->p is just after '['. */
static int parse_array(struct jparse *jp, struct jv *v, unsigned depth)
{
    size_t base = jp->items.n;
    int rc;

    skip_ws(jp);
    if (jp->p < jp->end && *jp->p == ']') {
        jp->p++;
        return close_array(jp, base, v);
    }
    for (;;) {
        struct jv item;

        rc = parse_value(jp, &item, depth + 1);
        if (rc == 0)
            rc = push_item(&jp->items, &item);
        if (rc == 0)
            rc = after_element(jp, ']');
        if (rc != 0)
            return rc == 1 ? close_array(jp, base, v) : rc;
    }
}

static int parse_literal(struct jparse *jp, const char *word, size_t n, enum jv_type t,
                         struct jv *v)
{
    if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, word, n) != 0)
        return -EINVAL;
    jp->p += n;
    v->type = t;
    return 0;
}

/* After a number or a literal, jansson's lexer puts the byte that ended it
 * back, and a NUL put back is lost (its stream reads a NUL as "refill"): so
 * one NUL right after such a token is skipped, "3\0 " is 3 and "[1\0]" is
 * [1], while "\"a\"\0", "3\0\0" and "3 \0" stay invalid. Agreed with
 * jansson 2.14 to the byte, as jdoc.h promises. */
static int token_end(struct jparse *jp, int rc)
{
    if (rc == 0 && jp->p < jp->end && *jp->p == '\0')
        jp->p++;
    return rc;
}

/* One value after optional whitespace; depth counts every value, as jansson does. */
static int parse_value(struct jparse *jp, struct jv *v, unsigned depth)
{
    if (depth > JDOC_MAX_DEPTH)
        return -EINVAL;
    skip_ws(jp);
    if (jp->p >= jp->end)
        return -EINVAL;
    v->n = 0;
    switch (*jp->p) {
    case '{':
        jp->p++;
        return parse_object(jp, v, depth);
    case '[':
        jp->p++;
        return parse_array(jp, v, depth);
    case '"':
        jp->p++;
        v->type = JV_STRING;
        bool escaped;
        return parse_string(jp, &v->u.s, &v->n, &escaped);
    case 't':
        return token_end(jp, parse_literal(jp, "true", 4, JV_TRUE, v));
    case 'f':
        return token_end(jp, parse_literal(jp, "false", 5, JV_FALSE, v));
    case 'n':
        return token_end(jp, parse_literal(jp, "null", 4, JV_NULL, v));
    default:
        return token_end(jp, parse_number(jp, v));
    }
}

int jdoc_parse(struct arena *a, const char *p, size_t len, const struct jv **out)
{
    struct jv items[32];
    struct jv_member members[16];
    struct jparse jp = {
        .p = (const unsigned char *)p,
        .end = (const unsigned char *)p + len,
        .a = a,
        .items = {.data = items, .cap = ARRAY_SIZE(items), .size = sizeof items[0]},
        .members = {.data = members, .cap = ARRAY_SIZE(members), .size = sizeof members[0]},
    };
    struct jv *root = arena_alloc(a, sizeof *root);
    int rc;

    if (root == NULL)
        return FICUS_ENOMEM;
    rc = parse_value(&jp, root, 1);
    if (rc == 0) {
        skip_ws(&jp);
        if (jp.p != jp.end)
            rc = -EINVAL; /* jansson: "end of file expected" */
    }
    stack_dispose(&jp.items);
    stack_dispose(&jp.members);
    if (rc == 0)
        *out = root;
    return rc;
}

const struct jv *jv_get(const struct jv *obj, const char *key, size_t key_len)
{
    const struct jv_object *o;

    if (obj == NULL || obj->type != JV_OBJECT)
        return NULL;
    o = obj->u.obj;
    if (o->index == NULL) {
        for (size_t i = 0; i < obj->n; i++)
            if (key_eq(&o->m[i], key, key_len))
                return &o->m[i].value;
        return NULL;
    }
    for (size_t slot = (size_t)key_hash(key, key_len) & o->mask; o->index[slot] != 0;
         slot = (slot + 1) & o->mask) {
        const struct jv_member *m = &o->m[o->index[slot] - 1];
        if (key_eq(m, key, key_len))
            return &m->value;
    }
    return NULL;
}

bool jv_equal(const struct jv *a, const struct jv *b)
{
    if (a == b)
        return true;
    if (a == NULL || b == NULL)
        return false;
    if (a->type != b->type && !(jv_is_number(a) && jv_is_number(b)))
        return false;
    switch (a->type) {
    case JV_INT:
    case JV_REAL:
        return jdoc_number_equal(a->u.num, a->n, b->u.num, b->n);
    case JV_STRING:
        return a->n == b->n && memcmp(a->u.s, b->u.s, a->n) == 0;
    case JV_ARRAY:
        if (a->n != b->n)
            return false;
        for (size_t i = 0; i < a->n; i++)
            if (!jv_equal(&a->u.items[i], &b->u.items[i]))
                return false;
        return true;
    case JV_OBJECT:
        if (a->n != b->n)
            return false;
        for (size_t i = 0; i < a->n; i++) {
            const struct jv_member *m = &a->u.obj->m[i];
            if (!jv_equal(&m->value, jv_get(b, m->key, m->key_len)))
                return false;
        }
        return true;
    default: /* null, true, false: the type is the value */
        return true;
    }
}

const struct jv *jv_null(void)
{
    static const struct jv null = {.type = JV_NULL};
    return &null;
}

const struct jv *jv_new_int(struct arena *a, int64_t v)
{
    struct jv *j = arena_alloc(a, sizeof *j);
    char text[24], *copy;
    int n = snprintf(text, sizeof text, "%lld", (long long)v);

    copy = j != NULL ? arena_strndup(a, text, (size_t)n) : NULL;
    if (copy == NULL)
        return NULL;
    j->type = JV_INT;
    j->n = (size_t)n;
    j->u.num = copy;
    return j;
}

const struct jv *jv_new_string(struct arena *a, const char *s, size_t n)
{
    struct jv *j = arena_alloc(a, sizeof *j);
    char *copy = j != NULL ? arena_strndup(a, s, n) : NULL;
    if (copy == NULL)
        return NULL;
    j->type = JV_STRING;
    j->n = n;
    j->u.s = copy;
    return j;
}

static int write_value(struct buf *b, const struct jv *v)
{
    int rc;

    switch (v->type) {
    case JV_OBJECT:
        rc = buf_append(b, "{", 1);
        for (size_t i = 0; i < v->n && rc == 0; i++) {
            const struct jv_member *m = &v->u.obj->m[i];
            if (i > 0)
                rc = buf_append(b, ",", 1);
            if (rc == 0)
                rc = buf_json_text(b, m->key, m->key_len);
            if (rc == 0)
                rc = buf_append(b, ":", 1);
            if (rc == 0)
                rc = write_value(b, &m->value);
        }
        return rc != 0 ? rc : buf_append(b, "}", 1);
    case JV_ARRAY:
        rc = buf_append(b, "[", 1);
        for (size_t i = 0; i < v->n && rc == 0; i++) {
            if (i > 0)
                rc = buf_append(b, ",", 1);
            if (rc == 0)
                rc = write_value(b, &v->u.items[i]);
        }
        return rc != 0 ? rc : buf_append(b, "]", 1);
    case JV_STRING:
        return buf_json_text(b, v->u.s, v->n);
    case JV_INT:
    case JV_REAL:
        return buf_append(b, v->u.num, v->n);
    case JV_TRUE:
        return buf_append(b, "true", 4);
    case JV_FALSE:
        return buf_append(b, "false", 5);
    case JV_NULL:
        return buf_append(b, "null", 4);
    }
    return -EINVAL;
}

int jv_write(struct buf *b, const struct jv *v, int precision)
{
    size_t start = b->len;
    int rc;

    (void)precision;
    if (v == NULL)
        return -EINVAL;
    rc = write_value(b, v);
    if (rc != 0 && b->data != NULL) {
        b->len = start;
        b->data[start] = '\0';
    }
    return rc;
}
