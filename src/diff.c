/* Response comparison: status, headers, then bodies as JSON structure or as bytes.
 *
 * The JSON walk keeps the current JSON Pointer in one growing buffer: each
 * level appends its segment and cuts it off again on the way back, so a
 * comparison allocates only for the items it records. Array matching (unordered
 * multisets, pairing by key) needs "are these two items equal under the
 * rules?", which is the same walk run in probe mode: it records nothing and
 * stops at the first difference. */
#include "ficus/diff.h"
#include "ficus/common.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

/* Decoded gzip bodies above this are not compared (a zip bomb must not take the
 * process's memory). */
#define DIFF_GUNZIP_MAX ((size_t)64 << 20)
/* How many bytes of each body a byte difference shows, from the offset on. */
#define DIFF_EXCERPT_BYTES 32
/* How many rule-aware item comparisons one diff may spend on unordered arrays
 * whose items are not identical. Beyond it, unmatched items are reported as
 * added/removed rather than the comparison going quadratic without bound. */
#define DIFF_PROBE_BUDGET 200000

static const char *const default_headers[] = {"content-type"};

/* ---- results ---------------------------------------------------------------------------- */

/* Appends an item. path is copied into the result's arena; legacy and new_
 * must live at least as long (the arena, or the caller's documents). */
static int push_item(struct diff_result *out, enum diff_kind kind, const char *path,
                     const struct jv *legacy, const struct jv *new_)
{
    char *p;

    if (out->n >= DIFF_MAX_ITEMS) {
        out->truncated = true;
        return 0;
    }
    p = arena_strndup(&out->arena, path, strlen(path));
    if (p == NULL)
        return FICUS_ENOMEM;
    out->items[out->n].kind = kind;
    out->items[out->n].path = p;
    out->items[out->n].legacy = legacy;
    out->items[out->n].new_ = new_;
    out->n++;
    return 0;
}

void diff_result_init(struct diff_result *r)
{
    r->n = 0;
    r->truncated = false;
    arena_init(&r->arena);
}

void diff_result_dispose(struct diff_result *r)
{
    if (r == NULL)
        return;
    arena_dispose(&r->arena);
    r->n = 0;
    r->truncated = false;
}

const char *diff_kind_name(enum diff_kind k)
{
    switch (k) {
    case DIFF_STATUS:
        return "status";
    case DIFF_HEADER:
        return "header";
    case DIFF_JSON:
        return "json";
    case DIFF_ADDED:
        return "added";
    case DIFF_REMOVED:
        return "removed";
    case DIFF_BODY:
        return "body";
    case DIFF_ERROR:
        return "error";
    case DIFF_KIND_N:
        break;
    }
    return "unknown";
}

/* ---- pointers --------------------------------------------------------------------------- */

bool diff_pointer_match(const char *pattern, const char *pointer)
{
    const char *p = pattern;
    const char *q = pointer;

    if (p == NULL || q == NULL)
        return false;
    /* One pass over both, segment by segment: it runs for every value the walk
     * visits and every rule, so no strchr and strlen per segment. */
    for (;;) {
        if (p[0] == '*' && (p[1] == '/' || p[1] == '\0')) {
            p++; /* any one segment, the empty one included */
            while (*q != '\0' && *q != '/')
                q++;
        } else {
            while (*p != '\0' && *p != '/' && *p == *q) {
                p++;
                q++;
            }
            if ((*p != '\0' && *p != '/') || (*q != '\0' && *q != '/'))
                return false; /* the segments differ */
        }
        if (*p == '\0' || *q == '\0')
            return *p == '\0' && *q == '\0';
        p++;
        q++;
    }
}

void diff_normalize_path(const char *path, char *out, size_t out_size)
{
    size_t o = 0;
    const char *s = path;

    if (out == NULL || out_size == 0)
        return;
    if (path == NULL) {
        out[0] = '\0';
        return;
    }
    for (;;) {
        const char *e = strchr(s, '/');
        size_t len;
        bool digits;

        if (e == NULL)
            e = s + strlen(s);
        len = (size_t)(e - s);
        digits = len > 0;
        for (size_t i = 0; i < len && digits; i++)
            digits = s[i] >= '0' && s[i] <= '9';
        if (digits) {
            if (o + 1 < out_size)
                out[o++] = '*';
        } else {
            for (size_t i = 0; i < len && o + 1 < out_size; i++)
                out[o++] = s[i];
        }
        if (*e == '\0')
            break;
        if (o + 1 < out_size)
            out[o++] = '/';
        s = e + 1;
    }
    out[o] = '\0';
}

/* ---- strings ---------------------------------------------------------------------------- */

/* A string value of the bytes from p, starting at most `want` bytes (a
 * character straddling the end is kept whole); bytes that are not UTF-8 are
 * written as the text \xNN, since a record must be valid UTF-8. Lives in a;
 * NULL when out of memory. */
static const struct jv *safe_stringn(struct arena *a, const char *p, size_t avail, size_t want)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t end = want < avail ? want : avail;
    struct jv *v = arena_alloc(a, sizeof *v);
    /* Worst case every byte becomes four characters, plus a straddling char. */
    char *buf = v != NULL ? arena_alloc_bytes(a, end * 4 + 4 + 1) : NULL;
    size_t o = 0, i = 0;

    if (buf == NULL)
        return NULL;
    while (i < end) {
        size_t n = utf8_len(u + i, avail - i);
        if (n > 0) {
            memcpy(buf + o, u + i, n);
            o += n;
            i += n;
        } else {
            static const char hex[] = "0123456789abcdef";
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[u[i] >> 4];
            buf[o++] = hex[u[i] & 15];
            i++;
        }
    }
    buf[o] = '\0';
    v->type = JV_STRING;
    v->n = o;
    v->u.s = buf;
    return v;
}

static const struct jv *safe_string(struct arena *a, const char *p, size_t len)
{
    return safe_stringn(a, p, len, len);
}

/* ---- JSON walk -------------------------------------------------------------------------- */

struct walk {
    const struct diff_rules *rules;
    struct diff_result *out;
    char *path; /* current JSON Pointer, NUL-terminated */
    size_t len;
    size_t cap;
    bool probe;    /* comparing two items for equality: record nothing */
    bool found;    /* probe: a difference was seen */
    int err;       /* first error; stops the walk */
    size_t budget; /* item comparisons left (DIFF_PROBE_BUDGET) */
};

static bool halted(const struct walk *w)
{
    if (w->err != 0)
        return true;
    return w->probe ? w->found : w->out->truncated;
}

static int path_reserve(struct walk *w, size_t more)
{
    size_t need = w->len + more + 1;
    size_t ncap;
    char *p;

    if (need <= w->cap)
        return 0;
    ncap = w->cap ? w->cap : 64;
    while (ncap < need)
        ncap *= 2;
    p = realloc(w->path, ncap);
    if (p == NULL) {
        w->err = FICUS_ENOMEM;
        return FICUS_ENOMEM;
    }
    w->path = p;
    w->cap = ncap;
    return 0;
}

/* Appends "/" and key escaped per RFC 6901 ("~" -> "~0", "/" -> "~1").
 * Returns the length to restore with path_pop, or SIZE_MAX on failure. */
static size_t path_push_key(struct walk *w, const char *key, size_t key_len)
{
    size_t saved = w->len;

    /* Each byte takes at most 6 ("\u0000" for a NUL, which a C string can't hold). */
    if (key_len > (SIZE_MAX - 8) / 6 || path_reserve(w, 1 + key_len * 6) != 0) {
        w->err = FICUS_ENOMEM;
        return SIZE_MAX;
    }
    w->path[w->len++] = '/';
    size_t plain = 0; /* the usual key has nothing to escape: one copy */
    while (plain < key_len && key[plain] != '~' && key[plain] != '/' && key[plain] != '\0')
        plain++;
    memcpy(w->path + w->len, key, plain);
    w->len += plain;
    for (size_t i = plain; i < key_len; i++) {
        char c = key[i];
        if (c == '~') {
            w->path[w->len++] = '~';
            w->path[w->len++] = '0';
        } else if (c == '/') {
            w->path[w->len++] = '~';
            w->path[w->len++] = '1';
        } else if (c == '\0') {
            memcpy(w->path + w->len, "\\u0000", 6);
            w->len += 6;
        } else {
            w->path[w->len++] = c;
        }
    }
    w->path[w->len] = '\0';
    return saved;
}

static size_t path_push_index(struct walk *w, size_t idx)
{
    size_t saved = w->len;
    char digits[24];
    size_t n = 0;

    if (path_reserve(w, 24) != 0)
        return SIZE_MAX;
    do {
        digits[n++] = (char)('0' + idx % 10);
        idx /= 10;
    } while (idx > 0);
    w->path[w->len++] = '/';
    while (n > 0)
        w->path[w->len++] = digits[--n];
    w->path[w->len] = '\0';
    return saved;
}

static void path_pop(struct walk *w, size_t saved)
{
    w->len = saved;
    w->path[w->len] = '\0';
}

static bool path_ignored(const struct walk *w)
{
    for (size_t i = 0; i < w->rules->n_ignore; i++)
        if (diff_pointer_match(w->rules->ignore[i], w->path))
            return true;
    return false;
}

/* Records a difference at the current path (unless ignored). legacy and new_
 * are the documents' own values; the item points at them. */
static void record(struct walk *w, enum diff_kind kind, const struct jv *legacy,
                   const struct jv *new_)
{
    int rc;

    if (halted(w) || path_ignored(w))
        return;
    if (kind == DIFF_JSON && w->rules->equal_hook != NULL &&
        w->rules->equal_hook(w->rules->equal_ctx, kind, w->path, legacy, new_))
        return;
    if (w->probe) {
        w->found = true;
        return;
    }
    rc = push_item(w->out, kind, w->path, legacy, new_);
    if (rc != 0)
        w->err = rc;
}

static void walk_value(struct walk *w, const struct jv *a, const struct jv *b);

/* Are two numbers equal within the tolerance? Without one, by exact decimal
 * value (jdoc_number_equal). With one, two integers that fit in 64 bits compare
 * by their exact distance (values beyond 2^53 are not rounded together); any
 * other pair by the distance of the nearest doubles, and a number beyond the
 * range of a double is within no tolerance of another. */
static bool numbers_equal(const struct jv *a, const struct jv *b, double tolerance)
{
    int64_t ia, ib;
    double da, db;

    /* The same text is the usual case: settle it without a call. */
    if (a->n == b->n && memcmp(a->u.num, b->u.num, a->n) == 0)
        return true;
    if (jdoc_number_equal(a->u.num, a->n, b->u.num, b->n))
        return true;
    if (!(tolerance > 0))
        return false;
    if (a->type == JV_INT && b->type == JV_INT && jv_int64(a, &ia) == 0 && jv_int64(b, &ib) == 0) {
        /* The exact distance fits in 64 unsigned bits even when a - b would overflow. */
        uint64_t gap = ia > ib ? (uint64_t)ia - (uint64_t)ib : (uint64_t)ib - (uint64_t)ia;
        return (double)gap <= tolerance;
    }
    da = jv_double(a);
    db = jv_double(b);
    return isfinite(da) && isfinite(db) && fabs(da - db) <= tolerance;
}

/* With loose_types, the number a string holds (its text must be exactly a JSON
 * number), as a number value in *out. False for any other value. */
static bool string_as_number(const struct jv *v, struct jv *out)
{
    bool is_int;

    if (v->type != JV_STRING || !jdoc_number_valid(v->u.s, v->n, &is_int))
        return false;
    out->type = is_int ? JV_INT : JV_REAL;
    out->n = v->n;
    out->u.num = v->u.s; /* NUL-terminated: the string's own bytes */
    return true;
}

/* With loose_types: a number and a string holding a number, compared as two
 * numbers (tolerance included). Returns false when a and b are not such a pair. */
static bool loose_pair(const struct jv *a, const struct jv *b, double tolerance, bool *equal)
{
    struct jv na, nb;

    if (jv_is_number(a) && string_as_number(b, &nb)) {
        *equal = numbers_equal(a, &nb, tolerance);
        return true;
    }
    if (string_as_number(a, &na) && jv_is_number(b)) {
        *equal = numbers_equal(&na, b, tolerance);
        return true;
    }
    return false;
}

static void walk_object(struct walk *w, const struct jv *a, const struct jv *b)
{
    const struct jv_member *ma = a->u.obj->m, *mb = b->u.obj->m;
    size_t found = 0;

    for (size_t i = 0; i < a->n; i++) {
        const struct jv *vb;
        size_t saved;

        if (halted(w))
            return;
        /* Keys are unique in an object (repeats are merged); the other side
         * usually has them in the same order. */
        if (i < b->n && mb[i].key_len == ma[i].key_len &&
            memcmp(mb[i].key, ma[i].key, ma[i].key_len) == 0)
            vb = &mb[i].value;
        else
            vb = jv_get(b, ma[i].key, ma[i].key_len);
        found += vb != NULL;
        saved = path_push_key(w, ma[i].key, ma[i].key_len);
        if (saved == SIZE_MAX)
            return;
        if (vb == NULL)
            record(w, DIFF_REMOVED, &ma[i].value, NULL);
        else
            walk_value(w, &ma[i].value, vb);
        path_pop(w, saved);
    }
    if (found == b->n)
        return; /* every key of b is one of a's */
    for (size_t j = 0; j < b->n; j++) {
        size_t saved;

        if (halted(w))
            return;
        if (jv_get(a, mb[j].key, mb[j].key_len) != NULL)
            continue;
        saved = path_push_key(w, mb[j].key, mb[j].key_len);
        if (saved == SIZE_MAX)
            return;
        record(w, DIFF_ADDED, NULL, &mb[j].value);
        path_pop(w, saved);
    }
}

static void walk_positional(struct walk *w, const struct jv *a, const struct jv *b)
{
    size_t na = a->n, nb = b->n;
    size_t n = na < nb ? na : nb;

    for (size_t i = 0; i < na || i < nb; i++) {
        size_t saved;

        if (halted(w))
            return;
        saved = path_push_index(w, i);
        if (saved == SIZE_MAX)
            return;
        if (i < n)
            walk_value(w, &a->u.items[i], &b->u.items[i]);
        else if (i < na)
            record(w, DIFF_REMOVED, &a->u.items[i], NULL);
        else
            record(w, DIFF_ADDED, NULL, &b->u.items[i]);
        path_pop(w, saved);
    }
}

/* A hash consistent with jv_equal: equal values hash alike. Object members
 * combine by addition so that key order does not matter. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t hash_bytes(const char *p, size_t len)
{
    return hash_fnv1a(p, len, FNV_SEED);
}

static uint64_t value_hash(const struct jv *v)
{
    uint64_t h;

    switch (v->type) {
    case JV_OBJECT:
        h = 0x6f626a;
        for (size_t i = 0; i < v->n; i++) {
            const struct jv_member *m = &v->u.obj->m[i];
            h += mix64(hash_bytes(m->key, m->key_len) ^ (value_hash(&m->value) * 31));
        }
        return mix64(h);
    case JV_ARRAY:
        h = 0x617272;
        for (size_t i = 0; i < v->n; i++)
            h = mix64(h ^ value_hash(&v->u.items[i]));
        return h;
    case JV_STRING:
        return mix64(hash_bytes(v->u.s, v->n) ^ 0x737472);
    case JV_INT:
    case JV_REAL: /* 1 equals 1.0: both hash as their exact value */
        return mix64(jdoc_number_hash(v->u.num, v->n) ^ 0x6e756d);
    case JV_TRUE:
        return 1;
    case JV_FALSE:
        return 2;
    case JV_NULL:
        return 3;
    }
    return 0;
}

/* Chains of indexes by hash, to find identical values in linear time. */
struct idx_table {
    size_t *head; /* bucket -> first index + 1, 0 when empty */
    size_t *next; /* index -> next index + 1 in the same bucket */
    uint64_t *hash;
    size_t mask;
    bool loose; /* loose_types: a string holding a number pairs with that number */
};

/* With loose_types, a string holding a number stands for that number when
 * items pair (match_by keys 1 and "1"; identical items of unordered arrays). */
static const struct jv *pairing_value(const struct jv *v, bool loose, struct jv *tmp)
{
    return loose && string_as_number(v, tmp) ? tmp : v;
}

static uint64_t pairing_hash(const struct jv *v, bool loose)
{
    struct jv tmp;
    return value_hash(pairing_value(v, loose, &tmp));
}

static bool pairing_equal(const struct jv *a, const struct jv *b, bool loose)
{
    struct jv ta, tb;
    return jv_equal(pairing_value(a, loose, &ta), pairing_value(b, loose, &tb));
}

static void idx_table_free(struct idx_table *t)
{
    free(t->head);
    free(t->next);
    free(t->hash);
}

typedef const struct jv *(*item_fn)(const struct jv *arr, size_t i, const char *key);

/* Builds a table over n values; value(i) may be NULL to leave i out. Chains are
 * in ascending index order so that duplicates pair first with first. */
static int idx_table_init(struct idx_table *t, size_t n, item_fn value, const struct jv *arr,
                          const char *key, bool loose)
{
    size_t buckets = 16;

    while (buckets < n * 2)
        buckets *= 2;
    t->head = calloc(buckets, sizeof *t->head);
    t->next = calloc(n ? n : 1, sizeof *t->next);
    t->hash = calloc(n ? n : 1, sizeof *t->hash);
    t->mask = buckets - 1;
    t->loose = loose;
    if (t->head == NULL || t->next == NULL || t->hash == NULL) {
        idx_table_free(t);
        return FICUS_ENOMEM;
    }
    for (size_t i = n; i-- > 0;) {
        const struct jv *v = value(arr, i, key);
        size_t b;
        if (v == NULL)
            continue;
        t->hash[i] = pairing_hash(v, loose);
        b = (size_t)(t->hash[i] & t->mask);
        t->next[i] = t->head[b];
        t->head[b] = i + 1;
    }
    return 0;
}

/* Finds the first index not yet used whose value is jv_equal to v (numeric
 * strings taken as numbers when the table is loose). */
static size_t idx_table_find(const struct idx_table *t, const struct jv *v, const bool *used,
                             item_fn value, const struct jv *arr, const char *key)
{
    uint64_t h = pairing_hash(v, t->loose);

    for (size_t e = t->head[h & t->mask]; e != 0; e = t->next[e - 1]) {
        size_t j = e - 1;
        if (!used[j] && t->hash[j] == h && pairing_equal(value(arr, j, key), v, t->loose))
            return j;
    }
    return SIZE_MAX;
}

static const struct jv *item_value(const struct jv *arr, size_t i, const char *key)
{
    (void)key;
    return &arr->u.items[i];
}

static const struct jv *item_key_value(const struct jv *arr, size_t i, const char *key)
{
    return jv_get(&arr->u.items[i], key, strlen(key));
}

/* Do a and b compare equal under the rules, at the current path? */
static bool items_equal(struct walk *w, const struct jv *a, const struct jv *b)
{
    bool probe = w->probe, found = w->found, equal;

    if (w->budget == 0)
        return false;
    w->budget--;
    w->probe = true;
    w->found = false;
    walk_value(w, a, b);
    equal = !w->found && w->err == 0;
    w->probe = probe;
    w->found = found;
    return equal;
}

/* Multiset comparison: identical items pair first (by hash, in linear time),
 * then the rest pair greedily with items equal under the rules. Unpaired items
 * are removed at their legacy index or added at their new index. */
static void walk_unordered(struct walk *w, const struct jv *a, const struct jv *b)
{
    size_t na = a->n, nb = b->n;
    const struct jv *ia = a->u.items, *ib = b->u.items;
    bool *used_a = calloc(na ? na : 1, sizeof *used_a);
    bool *used_b = calloc(nb ? nb : 1, sizeof *used_b);
    struct idx_table t;

    if (used_a == NULL || used_b == NULL ||
        idx_table_init(&t, nb, item_value, b, NULL, w->rules->loose_types) != 0) {
        w->err = FICUS_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < na; i++) {
        size_t j = idx_table_find(&t, &ia[i], used_b, item_value, b, NULL);
        if (j != SIZE_MAX) {
            used_a[i] = true;
            used_b[j] = true;
        }
    }
    idx_table_free(&t);
    for (size_t i = 0; i < na && !halted(w); i++) {
        size_t saved;
        if (used_a[i])
            continue;
        saved = path_push_index(w, i);
        if (saved == SIZE_MAX)
            goto out;
        for (size_t j = 0; j < nb && !halted(w); j++) {
            if (!used_b[j] && items_equal(w, &ia[i], &ib[j])) {
                used_a[i] = true;
                used_b[j] = true;
                break;
            }
        }
        if (!used_a[i])
            record(w, DIFF_REMOVED, &ia[i], NULL);
        path_pop(w, saved);
    }
    for (size_t j = 0; j < nb && !halted(w); j++) {
        size_t saved;
        if (used_b[j])
            continue;
        saved = path_push_index(w, j);
        if (saved == SIZE_MAX)
            goto out;
        record(w, DIFF_ADDED, NULL, &ib[j]);
        path_pop(w, saved);
    }
out:
    free(used_a);
    free(used_b);
}

/* Pairs object items by the value of key. Paired items are compared under the
 * legacy index; unpaired ones are removed (legacy index) or added (new index).
 * Items without the key pair among themselves by position. */
static void walk_keyed(struct walk *w, const struct jv *a, const struct jv *b, const char *key)
{
    size_t na = a->n, nb = b->n;
    size_t *pair = malloc((na ? na : 1) * sizeof *pair);
    bool *used_b = calloc(nb ? nb : 1, sizeof *used_b);
    size_t nb_keyless = 0, kb = 0;
    struct idx_table t;

    if (pair == NULL || used_b == NULL ||
        idx_table_init(&t, nb, item_key_value, b, key, w->rules->loose_types) != 0) {
        w->err = FICUS_ENOMEM;
        goto out;
    }
    for (size_t j = 0; j < nb; j++)
        if (item_key_value(b, j, key) == NULL)
            nb_keyless++;
    for (size_t i = 0; i < na; i++) {
        const struct jv *k = item_key_value(a, i, key);
        pair[i] = SIZE_MAX;
        if (k != NULL) {
            pair[i] = idx_table_find(&t, k, used_b, item_key_value, b, key);
        } else {
            /* The next keyless new item, in order. */
            while (kb < nb && item_key_value(b, kb, key) != NULL)
                kb++;
            if (kb < nb)
                pair[i] = kb++;
        }
        if (pair[i] != SIZE_MAX)
            used_b[pair[i]] = true;
    }
    idx_table_free(&t);
    for (size_t i = 0; i < na && !halted(w); i++) {
        size_t saved = path_push_index(w, i);
        if (saved == SIZE_MAX)
            goto out;
        if (pair[i] != SIZE_MAX)
            walk_value(w, &a->u.items[i], &b->u.items[pair[i]]);
        else
            record(w, DIFF_REMOVED, &a->u.items[i], NULL);
        path_pop(w, saved);
    }
    for (size_t j = 0; j < nb && !halted(w); j++) {
        size_t saved;
        if (used_b[j])
            continue;
        saved = path_push_index(w, j);
        if (saved == SIZE_MAX)
            goto out;
        record(w, DIFF_ADDED, NULL, &b->u.items[j]);
        path_pop(w, saved);
    }
out:
    free(pair);
    free(used_b);
}

static void walk_array(struct walk *w, const struct jv *a, const struct jv *b)
{
    const struct diff_rules *r = w->rules;

    for (size_t i = 0; i < r->n_unordered; i++) {
        if (diff_pointer_match(r->unordered[i], w->path)) {
            walk_unordered(w, a, b);
            return;
        }
    }
    for (size_t i = 0; i < r->n_match_by; i++) {
        if (r->match_by[i].key != NULL && diff_pointer_match(r->match_by[i].pointer, w->path)) {
            walk_keyed(w, a, b, r->match_by[i].key);
            return;
        }
    }
    walk_positional(w, a, b);
}

static void walk_value(struct walk *w, const struct jv *a, const struct jv *b)
{
    bool equal;

    if (halted(w) || path_ignored(w))
        return;
    if (jv_is_number(a) && jv_is_number(b)) {
        if (!numbers_equal(a, b, w->rules->tolerance))
            record(w, DIFF_JSON, a, b);
        return;
    }
    if (w->rules->loose_types && loose_pair(a, b, w->rules->tolerance, &equal)) {
        if (!equal)
            record(w, DIFF_JSON, a, b);
        return;
    }
    if (a->type != b->type) {
        record(w, DIFF_JSON, a, b);
        return;
    }
    switch (a->type) {
    case JV_OBJECT:
        walk_object(w, a, b);
        break;
    case JV_ARRAY:
        walk_array(w, a, b);
        break;
    case JV_STRING:
        if (!jv_equal(a, b))
            record(w, DIFF_JSON, a, b);
        break;
    default: /* true, false, null: the type is the value */
        break;
    }
}

int diff_json(const struct diff_rules *rules, const struct jv *legacy, const struct jv *new_,
              struct diff_result *out)
{
    static const struct diff_rules no_rules;
    struct walk w = {.rules = rules, .out = out, .budget = DIFF_PROBE_BUDGET};

    if (w.rules == NULL)
        w.rules = &no_rules;
    if (path_reserve(&w, 0) != 0)
        return FICUS_ENOMEM;
    w.path[0] = '\0';
    if (legacy == NULL || new_ == NULL) {
        /* A missing document counts as absent: the whole other one is added or removed. */
        if (legacy != NULL)
            record(&w, DIFF_REMOVED, legacy, NULL);
        else if (new_ != NULL)
            record(&w, DIFF_ADDED, NULL, new_);
    } else {
        walk_value(&w, legacy, new_);
    }
    free(w.path);
    return w.err;
}

/* ---- gzip ------------------------------------------------------------------------------- */

int diff_gunzip(const char *in, size_t in_len, size_t max, char **out, size_t *out_len)
{
    const unsigned char *inp = (const unsigned char *)in;
    size_t left = in_len;
    size_t limit = max == SIZE_MAX ? max : max + 1; /* one more byte tells "too big" */
    size_t cap, used = 0;
    z_stream zs;
    char *buf;
    int rc, err = FICUS_EBADRESP;

    *out = NULL;
    *out_len = 0;
    if (in == NULL && in_len > 0)
        return FICUS_EBADRESP;
    cap = in_len <= limit / 4 ? in_len * 4 : limit;
    if (cap < 256)
        cap = limit < 256 ? limit : 256;
    buf = malloc(cap ? cap : 1);
    if (buf == NULL)
        return FICUS_ENOMEM;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 15 + 32) != Z_OK) { /* 15 + 32: gzip or zlib header */
        free(buf);
        return FICUS_ENOMEM;
    }
    for (;;) {
        size_t before_out, room;

        if (zs.avail_in == 0 && left > 0) {
            zs.avail_in = left > UINT_MAX ? UINT_MAX : (uInt)left;
            zs.next_in = (Bytef *)inp;
            inp += zs.avail_in;
            left -= zs.avail_in;
        }
        if (used == cap) {
            size_t ncap;
            char *nbuf;
            if (cap >= limit) {
                err = FICUS_ETOOBIG;
                goto fail;
            }
            ncap = cap > limit / 2 ? limit : cap * 2;
            nbuf = realloc(buf, ncap);
            if (nbuf == NULL) {
                err = FICUS_ENOMEM;
                goto fail;
            }
            buf = nbuf;
            cap = ncap;
        }
        room = cap - used;
        zs.next_out = (Bytef *)buf + used;
        zs.avail_out = room > UINT_MAX ? UINT_MAX : (uInt)room;
        before_out = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH);
        used += before_out - zs.avail_out;
        if (used > max) {
            err = FICUS_ETOOBIG;
            goto fail;
        }
        if (rc == Z_STREAM_END) {
            if (zs.avail_in == 0 && left == 0)
                break;
            /* Several gzip members in a row are one body (RFC 1952). Anything else
             * after the end of the stream is not gzip: the body is invalid. */
            if (zs.avail_in == 0) {
                zs.avail_in = left > UINT_MAX ? UINT_MAX : (uInt)left;
                zs.next_in = (Bytef *)inp;
                inp += zs.avail_in;
                left -= zs.avail_in;
            }
            if (zs.avail_in >= 2 && zs.next_in[0] == 0x1f && zs.next_in[1] == 0x8b &&
                inflateReset(&zs) == Z_OK)
                continue;
            goto fail;
        }
        if (rc == Z_MEM_ERROR) {
            err = FICUS_ENOMEM;
            goto fail;
        }
        if (rc == Z_BUF_ERROR && zs.avail_out > 0)
            goto fail; /* input ended before the stream did */
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            goto fail; /* Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
    }
    inflateEnd(&zs);
    *out = buf;
    *out_len = used;
    return 0;
fail:
    inflateEnd(&zs);
    free(buf);
    return err;
}

/* ---- responses -------------------------------------------------------------------------- */

static bool header_name_is(const struct diff_header *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

/* The values of every header called name, joined with ", ", in a malloc'd
 * buffer (*found false and NULL when the header is absent). */
static int header_join(const struct diff_response *r, const char *name, char **value, size_t *len,
                       bool *found)
{
    size_t total = 0, o = 0, count = 0;
    bool first = true;
    char *buf;

    *value = NULL;
    *len = 0;
    *found = false;
    for (size_t i = 0; i < r->n_headers; i++) {
        if (header_name_is(&r->headers[i], name)) {
            total += r->headers[i].value_len + (count ? 2 : 0);
            count++;
        }
    }
    if (count == 0)
        return 0;
    buf = malloc(total + 1);
    if (buf == NULL)
        return FICUS_ENOMEM;
    for (size_t i = 0; i < r->n_headers; i++) {
        const struct diff_header *h = &r->headers[i];
        if (!header_name_is(h, name))
            continue;
        if (!first) {
            buf[o++] = ',';
            buf[o++] = ' ';
        }
        first = false;
        if (h->value_len > 0)
            memcpy(buf + o, h->value, h->value_len);
        o += h->value_len;
    }
    buf[o] = '\0';
    *value = buf;
    *len = o;
    *found = true;
    return 0;
}

/* The first value of header name, or NULL. */
static const struct diff_header *header_first(const struct diff_response *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (header_name_is(&r->headers[i], name))
            return &r->headers[i];
    return NULL;
}

/* The value without surrounding spaces and tabs, and without ";parameters"
 * when cut_params is set. */
static struct span header_token(const struct diff_header *h, bool cut_params)
{
    const char *p = h->value, *e = h->value + h->value_len;

    if (cut_params) {
        const char *semi = memchr(p, ';', h->value_len);
        if (semi != NULL)
            e = semi;
    }
    while (p < e && (*p == ' ' || *p == '\t'))
        p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    return (struct span){p, (size_t)(e - p)};
}

/* Is the media type application/json or any type ending in +json? */
static bool is_json_type(const struct diff_response *r)
{
    const struct diff_header *h = header_first(r, "content-type");
    struct span t;

    if (h == NULL)
        return false;
    t = header_token(h, true);
    if (span_ieq(t, "application/json"))
        return true;
    return t.len > 5 && strncasecmp(t.p + t.len - 5, "+json", 5) == 0;
}

static bool is_gzip(const struct diff_response *r)
{
    const struct diff_header *h = header_first(r, "content-encoding");
    struct span t;

    if (h == NULL)
        return false;
    t = header_token(h, false);
    return span_ieq(t, "gzip") || span_ieq(t, "x-gzip");
}

static bool header_listed(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (names[i] != NULL && strcasecmp(names[i], name) == 0)
            return true;
    return false;
}

/* The media type of a header value: the part before any ";", without spaces
 * and tabs around it. */
static struct span media_type(const char *v, size_t len)
{
    struct diff_header h = {.value = v, .value_len = len};
    return header_token(&h, true);
}

/* Do two values name the same media type (type/subtype case-insensitive,
 * parameters ignored)? */
static bool same_media_type(const char *a, size_t na, const char *b, size_t nb)
{
    struct span x = media_type(a, na), y = media_type(b, nb);
    return x.len == y.len && strncasecmp(x.p, y.p, x.len) == 0;
}

static int diff_headers(const struct diff_rules *rules, const struct diff_response *legacy,
                        const struct diff_response *new_, struct diff_result *out)
{
    const char *const *names = rules->n_headers ? rules->headers : default_headers;
    size_t n = rules->n_headers ? rules->n_headers : ARRAY_SIZE(default_headers);
    int rc = 0;

    for (size_t i = 0; i < n && rc == 0 && !out->truncated; i++) {
        char *lv = NULL, *nv = NULL;
        size_t ll, nl;
        bool lf, nf;
        const struct jv *jl, *jn;

        if (names[i] == NULL ||
            header_listed(rules->ignore_headers, rules->n_ignore_headers, names[i]))
            continue;
        rc = header_join(legacy, names[i], &lv, &ll, &lf);
        if (rc == 0)
            rc = header_join(new_, names[i], &nv, &nl, &nf);
        if (rc == 0 && lf && nf &&
            header_listed(rules->media_type_headers, rules->n_media_type_headers, names[i]) &&
            same_media_type(lv, ll, nv, nl)) {
            /* Equal for this comparison: fall through with nothing recorded. */
        } else if (rc == 0 && (lf != nf || (lf && (ll != nl || memcmp(lv, nv, ll) != 0)))) {
            /* An absent header shows as null, a present one as its (joined) value. */
            jl = lf ? safe_string(&out->arena, lv, ll) : jv_null();
            jn = nf ? safe_string(&out->arena, nv, nl) : jv_null();
            if (jl == NULL || jn == NULL) {
                rc = FICUS_ENOMEM;
            } else if (rules->equal_hook == NULL ||
                       !rules->equal_hook(rules->equal_ctx, DIFF_HEADER, names[i], jl, jn)) {
                rc = push_item(out, DIFF_HEADER, names[i], jl, jn);
            }
        }
        free(lv);
        free(nv);
    }
    return rc;
}

/* One side's body as compared: decoded when the response says gzip. */
struct body {
    const char *p;
    size_t len;
    char *owned;
    const char *bad; /* NULL, or why the body could not be decoded */
};

static int body_decode(const struct diff_response *r, struct body *b)
{
    int rc;

    b->p = r->body;
    b->len = r->body_len;
    b->owned = NULL;
    b->bad = NULL;
    /* HEAD answers and 204/304 carry content-encoding but no body at all. */
    if (r->body_len == 0 || !is_gzip(r))
        return 0;
    rc = diff_gunzip(r->body, r->body_len, DIFF_GUNZIP_MAX, &b->owned, &b->len);
    if (rc == FICUS_ENOMEM)
        return rc;
    if (rc == FICUS_ETOOBIG)
        b->bad = "gzip_too_large";
    else if (rc != 0)
        b->bad = "invalid_gzip";
    else
        b->p = b->owned;
    return 0;
}

/* A side whose gzip body does not decode is an error item for that side: a
 * byte comparison of compressed data against plain data would only report a
 * meaningless offset. The value of a side that decoded fine is null. */
static int diff_bad_bodies(const struct body *l, const struct body *n, struct diff_result *out)
{
    const char *side[2] = {"legacy", "new"};
    const struct body *b[2] = {l, n};

    for (int i = 0; i < 2; i++) {
        const struct jv *jl, *jn;
        int rc;

        if (b[i]->bad == NULL)
            continue;
        jl = l->bad ? jv_new_string(&out->arena, l->bad, strlen(l->bad)) : jv_null();
        jn = n->bad ? jv_new_string(&out->arena, n->bad, strlen(n->bad)) : jv_null();
        if (jl == NULL || jn == NULL)
            return FICUS_ENOMEM;
        rc = push_item(out, DIFF_ERROR, side[i], jl, jn);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Byte comparison: one item at the first differing offset, showing up to
 * DIFF_EXCERPT_BYTES of each side from there ("" for a side that ended). */
static int diff_bytes(const struct body *l, const struct body *n, struct diff_result *out)
{
    size_t common = l->len < n->len ? l->len : n->len;
    size_t off = 0;
    char path[24];
    const struct jv *jl, *jn;

    if (common > 0 && memcmp(l->p, n->p, common) == 0)
        off = common;
    else
        while (off < common && l->p[off] == n->p[off])
            off++;
    if (off == common && l->len == n->len)
        return 0;
    snprintf(path, sizeof path, "%zu", off);
    jl = safe_stringn(&out->arena, l->p + off, l->len - off, DIFF_EXCERPT_BYTES);
    jn = safe_stringn(&out->arena, n->p + off, n->len - off, DIFF_EXCERPT_BYTES);
    if (jl == NULL || jn == NULL)
        return FICUS_ENOMEM;
    return push_item(out, DIFF_BODY, path, jl, jn);
}

static int diff_bodies(const struct diff_rules *rules, const struct diff_response *legacy,
                       const struct diff_response *new_, struct diff_result *out)
{
    struct body l, n;
    int rc;

    rc = body_decode(legacy, &l);
    if (rc == 0)
        rc = body_decode(new_, &n);
    else
        n.owned = NULL;
    if (rc != 0)
        goto out;
    if (l.bad != NULL || n.bad != NULL) {
        rc = diff_bad_bodies(&l, &n, out);
        goto out;
    }
    if (is_json_type(legacy) && is_json_type(new_)) {
        /* Integers beyond 64 bits and reals beyond double make the parse fail;
         * such bodies, like invalid JSON, fall back to the byte comparison. The
         * documents live in the result's arena: the items point into them. */
        const struct jv *jl = NULL, *jn = NULL;

        rc = jdoc_parse(&out->arena, l.p, l.len, &jl);
        if (rc == 0)
            rc = jdoc_parse(&out->arena, n.p, n.len, &jn);
        if (rc == 0) {
            rc = diff_json(rules, jl, jn, out);
            goto out;
        }
        if (rc == FICUS_ENOMEM)
            goto out;
    }
    rc = diff_bytes(&l, &n, out);
out:
    free(l.owned);
    free(n.owned);
    return rc;
}

/* The value an error item shows for a side: its error, else its status. */
static const struct jv *side_value(struct arena *a, const struct diff_response *r)
{
    return r->error != NULL ? safe_string(a, r->error, strlen(r->error)) : jv_new_int(a, r->status);
}

int diff_responses(const struct diff_rules *rules, const struct diff_response *legacy,
                   const struct diff_response *new_, struct diff_result *out)
{
    static const struct diff_rules no_rules;
    int rc;

    if (rules == NULL)
        rules = &no_rules;
    /* Initialise, not dispose: out may be fresh memory. The caller disposes a used result. */
    diff_result_init(out);

    if (legacy->error != NULL || new_->error != NULL) {
        const struct diff_response *sides[2] = {legacy, new_};
        const char *names[2] = {"legacy", "new"};

        for (int i = 0; i < 2; i++) {
            const struct jv *jl, *jn;
            if (sides[i]->error == NULL)
                continue;
            jl = side_value(&out->arena, legacy);
            jn = side_value(&out->arena, new_);
            if (jl == NULL || jn == NULL)
                return FICUS_ENOMEM;
            rc = push_item(out, DIFF_ERROR, names[i], jl, jn);
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (legacy->status != new_->status) {
        const struct jv *jl = jv_new_int(&out->arena, legacy->status);
        const struct jv *jn = jv_new_int(&out->arena, new_->status);
        if (jl == NULL || jn == NULL)
            return FICUS_ENOMEM;
        rc = push_item(out, DIFF_STATUS, "status", jl, jn);
        if (rc != 0)
            return rc;
    }
    rc = diff_headers(rules, legacy, new_, out);
    if (rc != 0 || out->truncated)
        return rc;
    return diff_bodies(rules, legacy, new_, out);
}
