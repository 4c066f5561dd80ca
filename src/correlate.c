#include "ficus/correlate.h"
#include "ficus/common.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The two sides of a pair. */
enum { LEGACY = 0, NEW = 1 };

/* One pair. For each side it is in two hash chains: by collection and that
 * side's id (rewrites towards the other side), and by that side's id alone
 * (the diff, fields of no collection). And in the use list, most recently
 * used first. One allocation: scope, legacy and new texts follow, each
 * NUL-terminated. */
struct centry {
    struct centry *knext[2]; /* chains of by_key[side] */
    struct centry *inext[2]; /* chains of by_id[side] */
    struct centry *prev, *next;
    uint64_t khash[2], ihash[2];
    int64_t used_ms;
    uint16_t scope_len;
    uint8_t len[2];
    bool is_string[2]; /* the id is a JSON string (else a number) when written into a body */
    char data[];
};

struct correlate {
    pthread_mutex_t lock;
    struct centry **by_key[2], **by_id[2];
    size_t mask; /* buckets - 1, a power of two minus one */
    struct centry *head, *tail;
    size_t size, max_entries;
    int64_t ttl_ms;
    struct correlate_stats st;
};

static const char *centry_scope(const struct centry *e)
{
    return e->data;
}
static const char *centry_id(const struct centry *e, int side)
{
    return e->data + e->scope_len + 1 + (side == NEW ? e->len[LEGACY] + 1 : 0);
}

static uint64_t fnv(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t hash_id(const char *p, size_t n)
{
    return fnv(0xcbf29ce484222325ULL, p, n);
}

static uint64_t hash_key(const char *scope, size_t sn, const char *p, size_t n)
{
    uint64_t h = fnv(0xcbf29ce484222325ULL, scope, sn);
    h = fnv(h ^ 0xff, "\0", 1);
    return fnv(h, p, n);
}

static size_t buckets_for(size_t max_entries)
{
    size_t n = 16;
    while (n < max_entries)
        n <<= 1;
    return n;
}

static void free_tables(struct centry **t[4])
{
    for (int i = 0; i < 4; i++)
        free(t[i]);
}

/* Four tables of nb buckets, or false (none). */
static bool alloc_tables(struct centry **t[4], size_t nb)
{
    bool ok = true;
    for (int i = 0; i < 4; i++) {
        t[i] = calloc(nb, sizeof(struct centry *));
        ok = ok && t[i] != NULL;
    }
    if (!ok)
        free_tables(t);
    return ok;
}

static void link_entry(struct correlate *m, struct centry *e)
{
    for (int side = 0; side < 2; side++) {
        struct centry **b = &m->by_key[side][e->khash[side] & m->mask];
        e->knext[side] = *b;
        *b = e;
        b = &m->by_id[side][e->ihash[side] & m->mask];
        e->inext[side] = *b;
        *b = e;
    }
}

struct correlate *correlate_new(size_t max_entries, int64_t ttl_ms)
{
    if (max_entries == 0 || max_entries > CORRELATE_MAX_ENTRIES || ttl_ms < 1)
        return NULL;
    struct correlate *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    /* The buckets grow with the pairs (rehash), not with the bound. */
    size_t nb = 16;
    struct centry **t[4];
    if (!alloc_tables(t, nb)) {
        free(m);
        return NULL;
    }
    m->by_key[LEGACY] = t[0];
    m->by_key[NEW] = t[1];
    m->by_id[LEGACY] = t[2];
    m->by_id[NEW] = t[3];
    pthread_mutex_init(&m->lock, NULL);
    m->mask = nb - 1;
    m->max_entries = max_entries;
    m->ttl_ms = ttl_ms;
    return m;
}

void correlate_free(struct correlate *m)
{
    if (m == NULL)
        return;
    for (struct centry *e = m->head, *next; e != NULL; e = next) {
        next = e->next;
        free(e);
    }
    struct centry **t[4] = {m->by_key[LEGACY], m->by_key[NEW], m->by_id[LEGACY], m->by_id[NEW]};
    free_tables(t);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ---- the map, under m->lock ------------------------------------------------------------- */

static void list_unlink(struct correlate *m, struct centry *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        m->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        m->tail = e->prev;
    e->prev = e->next = NULL;
}

static void list_push_front(struct correlate *m, struct centry *e)
{
    e->prev = NULL;
    e->next = m->head;
    if (m->head != NULL)
        m->head->prev = e;
    m->head = e;
    if (m->tail == NULL)
        m->tail = e;
}

static void touch(struct correlate *m, struct centry *e, int64_t now_ms)
{
    e->used_ms = now_ms;
    if (m->head != e) {
        list_unlink(m, e);
        list_push_front(m, e);
    }
}

static void entry_remove(struct correlate *m, struct centry *e)
{
    for (int side = 0; side < 2; side++) {
        struct centry **pp = &m->by_key[side][e->khash[side] & m->mask];
        while (*pp != e)
            pp = &(*pp)->knext[side];
        *pp = e->knext[side];
        pp = &m->by_id[side][e->ihash[side] & m->mask];
        while (*pp != e)
            pp = &(*pp)->inext[side];
        *pp = e->inext[side];
    }
    list_unlink(m, e);
    m->size--;
    free(e);
}

static bool expired(const struct correlate *m, const struct centry *e, int64_t now_ms)
{
    return now_ms - e->used_ms >= m->ttl_ms;
}

/* Drops expired pairs from the least recently used end: at most limit of
 * them (0: all), so that one insert does bounded work. */
static void sweep(struct correlate *m, int64_t now_ms, size_t limit)
{
    size_t n = 0;
    while (m->tail != NULL && expired(m, m->tail, now_ms) && (limit == 0 || n < limit)) {
        entry_remove(m, m->tail);
        m->st.expired++;
        n++;
    }
}

/* The pair whose side's id in scope is id, or NULL. */
static struct centry *find_key(struct correlate *m, int side, const char *scope, size_t sn,
                               const char *id, size_t n)
{
    uint64_t h = hash_key(scope, sn, id, n);
    for (struct centry *e = m->by_key[side][h & m->mask]; e != NULL; e = e->knext[side]) {
        if (e->khash[side] == h && e->scope_len == sn && e->len[side] == n &&
            memcmp(centry_scope(e), scope, sn) == 0 && memcmp(centry_id(e, side), id, n) == 0)
            return e;
    }
    return NULL;
}

/* The most recently used live pair whose side's id is id, in any collection;
 * expired ones met on the way are dropped. With other set, only a pair whose
 * other side is other. */
static struct centry *find_id(struct correlate *m, int side, const char *id, size_t n,
                              const char *other, size_t other_len, int64_t now_ms)
{
    uint64_t h = hash_id(id, n);
    struct centry *best = NULL;
    for (struct centry *e = m->by_id[side][h & m->mask], *next; e != NULL; e = next) {
        next = e->inext[side];
        if (e->ihash[side] != h || e->len[side] != n || memcmp(centry_id(e, side), id, n) != 0)
            continue;
        if (expired(m, e, now_ms)) {
            entry_remove(m, e);
            m->st.expired++;
            continue;
        }
        if (other != NULL &&
            (e->len[!side] != other_len || memcmp(centry_id(e, !side), other, other_len) != 0))
            continue;
        if (best == NULL || e->used_ms > best->used_ms)
            best = e;
    }
    return best;
}

static void evict_to(struct correlate *m, size_t bound)
{
    while (m->size > bound && m->tail != NULL) {
        entry_remove(m, m->tail);
        m->st.evicted++;
    }
}

/* ---- the public map ------------------------------------------------------------------ */

/* Moves every pair to nb buckets. Returns 0 or FICUS_ENOMEM (nothing changed). */
static int rehash(struct correlate *m, size_t nb)
{
    struct centry **t[4];
    if (!alloc_tables(t, nb))
        return FICUS_ENOMEM;
    struct centry **old[4] = {m->by_key[LEGACY], m->by_key[NEW], m->by_id[LEGACY], m->by_id[NEW]};
    free_tables(old);
    m->by_key[LEGACY] = t[0];
    m->by_key[NEW] = t[1];
    m->by_id[LEGACY] = t[2];
    m->by_id[NEW] = t[3];
    m->mask = nb - 1;
    for (struct centry *e = m->head; e != NULL; e = e->next)
        link_entry(m, e);
    return 0;
}

int correlate_configure(struct correlate *m, size_t max_entries, int64_t ttl_ms, int64_t now_ms)
{
    if (max_entries == 0 || max_entries > CORRELATE_MAX_ENTRIES || ttl_ms < 1)
        return -EINVAL;
    pthread_mutex_lock(&m->lock);
    m->max_entries = max_entries;
    m->ttl_ms = ttl_ms;
    sweep(m, now_ms, 0);
    evict_to(m, max_entries);
    /* Fewer buckets when pairs were evicted; more come with new pairs. */
    size_t nb = buckets_for(m->size);
    if (nb < m->mask + 1)
        rehash(m, nb); /* out of memory: the larger table stays, which is correct */
    pthread_mutex_unlock(&m->lock);
    return 0;
}

int correlate_learn(struct correlate *m, const char *scope, size_t scope_len, const char *legacy,
                    size_t legacy_len, bool legacy_is_string, const char *new_, size_t new_len,
                    bool new_is_string, int64_t now_ms)
{
    if (legacy_len == 0 || new_len == 0 || legacy_len > CORRELATE_ID_MAX ||
        new_len > CORRELATE_ID_MAX || scope_len > CORRELATE_SCOPE_MAX)
        return -EINVAL;
    pthread_mutex_lock(&m->lock);
    int rc = 0;
    struct centry *old = find_key(m, LEGACY, scope, scope_len, legacy, legacy_len);
    if (old != NULL && old->len[NEW] == new_len &&
        memcmp(centry_id(old, NEW), new_, new_len) == 0 &&
        old->is_string[LEGACY] == legacy_is_string && old->is_string[NEW] == new_is_string) {
        touch(m, old, now_ms);
        goto out;
    }
    if (old != NULL)
        entry_remove(m, old);
    /* A new id belongs to one legacy id in a collection, as the other way round. */
    old = find_key(m, NEW, scope, scope_len, new_, new_len);
    if (old != NULL)
        entry_remove(m, old);
    sweep(m, now_ms, 8);
    evict_to(m, m->max_entries - 1);
    /* One pair per bucket at most; out of memory, the chains grow longer instead. */
    if (m->size + 1 > m->mask + 1 && m->mask + 1 < buckets_for(m->max_entries))
        rehash(m, (m->mask + 1) * 2);
    struct centry *e = malloc(sizeof(*e) + scope_len + legacy_len + new_len + 3);
    if (e == NULL) {
        rc = FICUS_ENOMEM;
        goto out;
    }
    e->khash[LEGACY] = hash_key(scope, scope_len, legacy, legacy_len);
    e->khash[NEW] = hash_key(scope, scope_len, new_, new_len);
    e->ihash[LEGACY] = hash_id(legacy, legacy_len);
    e->ihash[NEW] = hash_id(new_, new_len);
    e->used_ms = now_ms;
    e->scope_len = (uint16_t)scope_len;
    e->len[LEGACY] = (uint8_t)legacy_len;
    e->len[NEW] = (uint8_t)new_len;
    e->is_string[LEGACY] = legacy_is_string;
    e->is_string[NEW] = new_is_string;
    char *d = e->data;
    memcpy(d, scope, scope_len);
    d[scope_len] = '\0';
    d += scope_len + 1;
    memcpy(d, legacy, legacy_len);
    d[legacy_len] = '\0';
    d += legacy_len + 1;
    memcpy(d, new_, new_len);
    d[new_len] = '\0';
    link_entry(m, e);
    e->prev = e->next = NULL;
    list_push_front(m, e);
    m->size++;
    m->st.learnt++;
out:
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* Under the lock: correlate_lookup from side's id to the other side's. */
static int lookup_locked(struct correlate *m, int side, const char *scope, size_t scope_len,
                         const char *id, size_t n, int64_t now_ms, char *out, bool *is_string)
{
    if (n == 0 || n > CORRELATE_ID_MAX)
        return -1;
    struct centry *e;
    if (scope != NULL) {
        e = scope_len <= CORRELATE_SCOPE_MAX ? find_key(m, side, scope, scope_len, id, n) : NULL;
        if (e != NULL && expired(m, e, now_ms)) {
            entry_remove(m, e);
            m->st.expired++;
            e = NULL;
        }
    } else {
        e = find_id(m, side, id, n, NULL, 0, now_ms);
    }
    if (e == NULL)
        return -1;
    touch(m, e, now_ms);
    memcpy(out, centry_id(e, !side), (size_t)e->len[!side] + 1);
    if (is_string != NULL)
        *is_string = e->is_string[!side];
    return e->len[!side];
}

int correlate_lookup(struct correlate *m, bool to_legacy, const char *scope, size_t scope_len,
                     const char *id, size_t id_len, int64_t now_ms, char *out, bool *is_string)
{
    pthread_mutex_lock(&m->lock);
    int n = lookup_locked(m, to_legacy ? NEW : LEGACY, scope, scope_len, id, id_len, now_ms, out,
                          is_string);
    pthread_mutex_unlock(&m->lock);
    return n;
}

static bool is_pair_locked(struct correlate *m, const char *legacy, size_t legacy_len,
                           const char *new_, size_t new_len, int64_t now_ms)
{
    if (legacy_len == 0 || legacy_len > CORRELATE_ID_MAX || new_len == 0)
        return false;
    struct centry *e = find_id(m, LEGACY, legacy, legacy_len, new_, new_len, now_ms);
    if (e != NULL)
        touch(m, e, now_ms);
    return e != NULL;
}

bool correlate_is_pair(struct correlate *m, const char *legacy, size_t legacy_len, const char *new_,
                       size_t new_len, int64_t now_ms)
{
    pthread_mutex_lock(&m->lock);
    bool yes = is_pair_locked(m, legacy, legacy_len, new_, new_len, now_ms);
    pthread_mutex_unlock(&m->lock);
    return yes;
}

void correlate_stats(struct correlate *m, int64_t now_ms, struct correlate_stats *out)
{
    pthread_mutex_lock(&m->lock);
    sweep(m, now_ms, 0);
    *out = m->st;
    out->size = m->size;
    out->max_entries = m->max_entries;
    out->ttl_ms = m->ttl_ms;
    pthread_mutex_unlock(&m->lock);
}

/* ---- reading ids ------------------------------------------------------------------------ */

/* Walks an RFC 6901 pointer (no "*") through a parsed document. */
static const struct jv *jv_at(const struct jv *v, const char *ptr)
{
    char seg[CORRELATE_SCOPE_MAX + 1];
    while (v != NULL && *ptr == '/') {
        ptr++;
        size_t n = 0;
        for (; *ptr && *ptr != '/'; ptr++) {
            char ch = *ptr;
            if (ch == '~' && (ptr[1] == '0' || ptr[1] == '1')) {
                ch = ptr[1] == '0' ? '~' : '/';
                ptr++;
            }
            if (n >= sizeof(seg) - 1)
                return NULL;
            seg[n++] = ch;
        }
        seg[n] = '\0';
        if (v->type == JV_OBJECT) {
            v = jv_get(v, seg, n);
        } else if (v->type == JV_ARRAY) {
            char *end;
            unsigned long i = strtoul(seg, &end, 10);
            if (n == 0 || *end != '\0' || seg[0] == '-' || i >= v->n)
                return NULL;
            v = &v->u.items[i];
        } else {
            return NULL;
        }
    }
    return *ptr == '\0' ? v : NULL;
}

/* The text of a scalar id value: a string's bytes or a number's text. */
static bool jv_id_text(const struct jv *v, const char **p, size_t *n, bool *is_string)
{
    if (v == NULL)
        return false;
    if (v->type == JV_STRING) {
        *p = v->u.s;
        *n = v->n;
        *is_string = true;
    } else if (jv_is_number(v)) {
        *p = v->u.num;
        *n = v->n;
        *is_string = false;
    } else {
        return false;
    }
    return *n > 0 && *n <= CORRELATE_ID_MAX && memchr(*p, '\0', *n) == NULL;
}

static const struct diff_header *find_header(const struct diff_response *r, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < r->n_headers; i++) {
        if (r->headers[i].name_len == n && strncasecmp(r->headers[i].name, name, n) == 0)
            return &r->headers[i];
    }
    return NULL;
}

/* The path of a URL or of a path ("http://h/p/4?q" -> "/p/4"). */
static void url_path(const char *v, size_t n, const char **p, size_t *len)
{
    const char *end = v + n;
    const char *s = v;
    const char *scheme = memchr(v, ':', n);
    if (scheme != NULL && scheme + 2 < end && scheme[1] == '/' && scheme[2] == '/') {
        s = memchr(scheme + 3, '/', (size_t)(end - scheme - 3));
        if (s == NULL)
            s = end;
    }
    const char *q = s;
    while (q < end && *q != '?' && *q != '#')
        q++;
    *p = s;
    *len = (size_t)(q - s);
}

/* Splits a path at its last segment: "/posts/4" -> scope "/posts", id "4";
 * a trailing "/" is ignored. False when there is no segment. */
static bool split_last(const char *p, size_t n, size_t *scope_len, const char **id, size_t *id_len)
{
    while (n > 0 && p[n - 1] == '/')
        n--;
    if (n == 0)
        return false;
    size_t i = n;
    while (i > 0 && p[i - 1] != '/')
        i--;
    if (i == 0)
        return false;
    *scope_len = i - 1;
    *id = p + i;
    *id_len = n - i;
    return *id_len > 0;
}

struct side_id {
    const char *p;
    size_t n;
    bool is_string;
    const char *scope; /* from a Location; NULL otherwise */
    size_t scope_len;
};

static bool read_id(const struct correlate_cfg *cfg, const struct diff_response *r, struct arena *a,
                    struct side_id *out)
{
    out->scope = NULL;
    if (cfg->id_pointer != NULL && r->body_len > 0) {
        const struct diff_header *ce = find_header(r, "content-encoding");
        const struct jv *doc;
        if ((ce == NULL || (ce->value_len == 8 && strncasecmp(ce->value, "identity", 8) == 0)) &&
            jdoc_parse(a, r->body, r->body_len, &doc) == 0 &&
            jv_id_text(jv_at(doc, cfg->id_pointer), &out->p, &out->n, &out->is_string))
            return true;
    }
    if (cfg->location) {
        const struct diff_header *loc = find_header(r, "location");
        const char *path;
        size_t plen;
        if (loc == NULL)
            return false;
        url_path(loc->value, loc->value_len, &path, &plen);
        if (split_last(path, plen, &out->scope_len, &out->p, &out->n) &&
            out->n <= CORRELATE_ID_MAX) {
            out->scope = path;
            out->is_string = true;
            bool is_int = false;
            if (jdoc_number_valid(out->p, out->n, &is_int) && is_int)
                out->is_string = false;
            return true;
        }
    }
    return false;
}

int correlate_observe(struct correlate *m, const struct correlate_cfg *cfg, const char *method,
                      const char *target, size_t target_len, const struct diff_response *legacy,
                      const struct diff_response *new_, int64_t now_ms)
{
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 || strcmp(method, "OPTIONS") == 0)
        return 0;
    if (legacy->error != NULL || new_->error != NULL || legacy->status / 100 != 2 ||
        new_->status / 100 != 2)
        return 0;
    struct arena a;
    arena_init(&a);
    struct side_id l, n;
    int rc = 0;
    if (!read_id(cfg, legacy, &a, &l) || !read_id(cfg, new_, &a, &n))
        goto out;
    if (l.n == n.n && memcmp(l.p, n.p, l.n) == 0)
        goto out; /* the same id on both sides: nothing to rewrite */
    const char *scope;
    size_t scope_len;
    if (l.scope != NULL) {
        scope = l.scope;
        scope_len = l.scope_len;
    } else {
        url_path(target, target_len, &scope, &scope_len);
        while (scope_len > 0 && scope[scope_len - 1] == '/')
            scope_len--;
        size_t sl;
        const char *last;
        size_t last_len;
        if (split_last(scope, scope_len, &sl, &last, &last_len) && last_len == l.n &&
            memcmp(last, l.p, l.n) == 0)
            scope_len = sl; /* PUT /posts/4 answering {"id":4}: the collection is /posts */
    }
    rc = correlate_learn(m, scope, scope_len, l.p, l.n, l.is_string, n.p, n.n, n.is_string, now_ms);
    rc = rc == 0 ? 1 : rc == -EINVAL ? 0 : rc;
out:
    arena_dispose(&a);
    return rc;
}

bool correlate_head_target(const char *head, size_t head_len, const char **target, size_t *len)
{
    const char *sp1 = memchr(head, ' ', head_len);
    if (sp1 == NULL)
        return false;
    const char *t = sp1 + 1;
    const char *sp2 = memchr(t, ' ', head_len - (size_t)(t - head));
    if (sp2 == NULL)
        return false;
    *target = t;
    *len = (size_t)(sp2 - t);
    return true;
}

/* ---- rewriting requests ------------------------------------------------------------------- */

static int put_segment(struct buf *out, const char *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        int rc;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            strchr("-._~!$&'()*+,;=:@", ch) != NULL) {
            rc = buf_append(out, &p[i], 1);
        } else {
            char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            rc = buf_append(out, e, 3);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* A rewrite's direction: side is the side whose ids the request carries
 * (LEGACY for a request shadowed to new, NEW for one shadowed to legacy); path
 * and plen the request path in legacy's terms, where collections are learnt
 * (for a request to legacy, the rewritten one). */
struct rw {
    struct correlate *m;
    int side;
    int64_t now_ms;
    const char *path;
    size_t plen;
};

/* Appends the target with its known path segments rewritten; counts them. The
 * collection of a segment is the path before it in legacy's terms: the
 * target's own for ids of legacy, what was written so far for ids of new. */
static int rewrite_target(struct rw *w, const char *t, size_t tn, struct buf *out, int *count)
{
    size_t plen = 0;
    while (plen < tn && t[plen] != '?' && t[plen] != '#')
        plen++;
    char id[CORRELATE_ID_MAX + 1];
    size_t i = 0;
    int rc = 0;
    while (i < plen && rc == 0) {
        if (t[i] != '/') {
            rc = buf_append(out, &t[i], 1);
            i++;
            continue;
        }
        size_t s = i + 1, e = s;
        while (e < plen && t[e] != '/')
            e++;
        /* The lookup before the "/" is appended: that may move out->data. */
        const char *scope = w->side == LEGACY ? t : out->len > 0 ? out->data : "";
        size_t scope_len = w->side == LEGACY ? i : out->len;
        int n = e > s ? lookup_locked(w->m, w->side, scope, scope_len, t + s, e - s, w->now_ms, id,
                                      NULL)
                      : -1;
        rc = buf_append(out, "/", 1);
        if (rc == 0 && n > 0) {
            rc = put_segment(out, id, (size_t)n);
            (*count)++;
        } else if (rc == 0) {
            rc = buf_append(out, t + s, e - s);
        }
        i = e;
    }
    if (rc == 0 && plen < tn)
        rc = buf_append(out, t + plen, tn - plen);
    return rc;
}

/* The other side's value for a body id, or NULL. */
static json_t *field_replacement(struct rw *w, const struct correlate_field *f, json_t *v)
{
    const char *path = w->path;
    size_t plen = w->plen;
    char text[64];
    const char *p;
    size_t n;
    if (json_is_string(v)) {
        p = json_string_value(v);
        n = json_string_length(v);
    } else if (json_is_integer(v)) {
        n = (size_t)snprintf(text, sizeof(text), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        p = text;
    } else {
        return NULL;
    }
    char id[CORRELATE_ID_MAX + 1];
    bool is_string = true;
    int got = -1;
    if (f->collection != NULL) {
        got = lookup_locked(w->m, w->side, f->collection, strlen(f->collection), p, n, w->now_ms,
                            id, &is_string);
    } else {
        /* The request path's collections, longest first: /posts/4/comments,
         * /posts/4, /posts. */
        size_t sl = plen;
        while (got < 0 && sl > 0) {
            while (sl > 0 && path[sl - 1] == '/')
                sl--;
            got = lookup_locked(w->m, w->side, path, sl, p, n, w->now_ms, id, &is_string);
            while (sl > 0 && path[sl - 1] != '/')
                sl--;
        }
        if (got < 0)
            got = lookup_locked(w->m, w->side, NULL, 0, p, n, w->now_ms, id, &is_string);
    }
    if (got < 0)
        return NULL;
    if (is_string)
        return json_stringn(id, (size_t)got);
    json_t *num = json_loadb(id, (size_t)got, JSON_DECODE_ANY, NULL);
    return num != NULL ? num : json_stringn(id, (size_t)got);
}

/* Rewrites the values at pointer ptr (from its current segment) under v. */
static int rewrite_at(struct rw *w, const struct correlate_field *f, json_t *v, const char *ptr,
                      int depth)
{
    if (*ptr != '/' || depth > 64)
        return 0;
    ptr++;
    const char *end = strchr(ptr, '/');
    size_t sn = end != NULL ? (size_t)(end - ptr) : strlen(ptr);
    const char *rest = ptr + sn;
    char seg[CORRELATE_SCOPE_MAX + 1];
    size_t k = 0;
    for (size_t i = 0; i < sn && k < sizeof(seg) - 1; i++) {
        char ch = ptr[i];
        if (ch == '~' && i + 1 < sn && (ptr[i + 1] == '0' || ptr[i + 1] == '1')) {
            ch = ptr[i + 1] == '0' ? '~' : '/';
            i++;
        }
        seg[k++] = ch;
    }
    seg[k] = '\0';
    bool star = k == 1 && seg[0] == '*';
    int count = 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        void *tmp;
        json_object_foreach_safe(v, tmp, key, child)
        {
            if (!star && strcmp(key, seg) != 0)
                continue;
            if (*rest == '\0') {
                json_t *nv = field_replacement(w, f, child);
                if (nv != NULL && json_object_set_new(v, key, nv) == 0)
                    count++;
            } else {
                count += rewrite_at(w, f, child, rest, depth + 1);
            }
        }
    } else if (json_is_array(v)) {
        size_t n = json_array_size(v);
        for (size_t i = 0; i < n; i++) {
            if (!star) {
                char *e2;
                unsigned long idx = strtoul(seg, &e2, 10);
                if (k == 0 || *e2 != '\0' || idx != i)
                    continue;
            }
            json_t *child = json_array_get(v, i);
            if (*rest == '\0') {
                json_t *nv = field_replacement(w, f, child);
                if (nv != NULL && json_array_set_new(v, i, nv) == 0)
                    count++;
            } else {
                count += rewrite_at(w, f, child, rest, depth + 1);
            }
        }
    }
    return count;
}

/* The request body as JSON when body fields may be rewritten in it, else NULL.
 * Parsed before the map is locked. */
static json_t *body_json(const struct correlate_cfg *cfg, const char *body, size_t body_len)
{
    if (cfg->n_body_fields == 0 || body_len == 0 || body_len > CORRELATE_MAX_REWRITE_BODY)
        return NULL;
    return json_loadb(body, body_len, JSON_DECODE_ANY, NULL);
}

/* Writes root compactly into out. Returns 0 or FICUS_ENOMEM. */
static int dump_json(json_t *root, struct buf *out)
{
    size_t need = json_dumpb(root, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
    buf_reset(out);
    int rc = need == 0 ? FICUS_ENOMEM : buf_reserve(out, need);
    if (rc == 0)
        out->len = json_dumpb(root, out->data, need, JSON_COMPACT | JSON_ENCODE_ANY);
    return rc;
}

/* Appends the head's header lines with Content-Length set to len. */
static int put_headers(struct buf *out, const char *h, size_t n, bool set_length, size_t len)
{
    size_t i = 0;
    int rc = 0;
    while (i < n && rc == 0) {
        const char *eol = memchr(h + i, '\n', n - i);
        size_t e = eol != NULL ? (size_t)(eol - h) + 1 : n;
        if (set_length && e - i > 15 && strncasecmp(h + i, "content-length:", 15) == 0)
            rc = buf_printf(out, "Content-Length: %zu\r\n", len);
        else
            rc = buf_append(out, h + i, e - i);
        i = e;
    }
    return rc;
}

int correlate_rewrite(struct correlate *m, const struct correlate_cfg *cfg, bool to_legacy,
                      const char *head, size_t head_len, const char *body, size_t body_len,
                      bool chunked, int64_t now_ms, struct buf *out_head, struct buf *out_body,
                      bool *body_changed)
{
    *body_changed = false;
    const char *sp1 = memchr(head, ' ', head_len);
    if (sp1 == NULL)
        return 0;
    const char *t = sp1 + 1;
    const char *sp2 = memchr(t, ' ', head_len - (size_t)(t - head));
    if (sp2 == NULL || *t != '/')
        return 0;
    size_t tn = (size_t)(sp2 - t);
    size_t plen = 0;
    while (plen < tn && t[plen] != '?' && t[plen] != '#')
        plen++;
    struct buf target = {0};
    struct buf nbody = {0};
    int count = 0, nb = 0;
    /* Parsing and writing the body happen outside the lock: it covers the
     * lookups only. */
    json_t *root = body_json(cfg, body, body_len);
    struct rw w = {
        .m = m, .side = to_legacy ? NEW : LEGACY, .now_ms = now_ms, .path = t, .plen = plen};
    pthread_mutex_lock(&m->lock);
    int rc = rewrite_target(&w, t, tn, &target, &count);
    if (to_legacy && target.len > 0) {
        /* Body fields look in legacy's collections: the rewritten path's. */
        w.path = target.data;
        for (w.plen = 0;
             w.plen < target.len && target.data[w.plen] != '?' && target.data[w.plen] != '#';
             w.plen++)
            ;
    }
    for (size_t i = 0; rc == 0 && root != NULL && i < cfg->n_body_fields; i++) {
        if (cfg->body_fields[i].pointer != NULL)
            nb += rewrite_at(&w, &cfg->body_fields[i], root, cfg->body_fields[i].pointer, 0);
    }
    count += nb;
    if (rc == 0)
        m->st.rewritten += (unsigned long long)count;
    pthread_mutex_unlock(&m->lock);
    if (rc == 0 && nb > 0)
        rc = dump_json(root, &nbody);
    json_decref(root);
    if (rc == 0 && count > 0) {
        buf_reset(out_head);
        rc = buf_append(out_head, head, (size_t)(t - head));
        if (rc == 0)
            rc = buf_append(out_head, target.data, target.len);
        if (rc == 0)
            rc = put_headers(out_head, sp2, head_len - (size_t)(sp2 - head), nb > 0 && !chunked,
                             nbody.len);
        if (rc == 0 && nb > 0) {
            buf_reset(out_body);
            rc = buf_append(out_body, nbody.data, nbody.len);
            *body_changed = rc == 0;
        }
    }
    buf_dispose(&target);
    buf_dispose(&nbody);
    return rc != 0 ? rc : count;
}

/* ---- the diff ---------------------------------------------------------------------------- */

/* Do two URLs' paths differ only by correlated segments (and differ)? */
static bool location_pair(struct correlate *m, const struct jv *l, const struct jv *n,
                          int64_t now_ms)
{
    const char *lp, *np;
    size_t ll, nl;
    url_path(l->u.s, l->n, &lp, &ll);
    url_path(n->u.s, n->n, &np, &nl);
    /* The parts around the paths (scheme, host, query) must be equal. */
    if ((size_t)(lp - l->u.s) != (size_t)(np - n->u.s) || memcmp(l->u.s, n->u.s, lp - l->u.s) != 0)
        return false;
    if (l->n - (size_t)(lp - l->u.s) - ll != n->n - (size_t)(np - n->u.s) - nl ||
        memcmp(lp + ll, np + nl, l->n - (size_t)(lp - l->u.s) - ll) != 0)
        return false;
    size_t i = 0, j = 0;
    bool any = false;
    while (i < ll && j < nl) {
        size_t ie = i, je = j;
        while (ie < ll && lp[ie] != '/')
            ie++;
        while (je < nl && np[je] != '/')
            je++;
        if (ie - i != je - j || memcmp(lp + i, np + j, ie - i) != 0) {
            if (!is_pair_locked(m, lp + i, ie - i, np + j, je - j, now_ms))
                return false;
            any = true;
        }
        i = ie < ll ? ie + 1 : ie;
        j = je < nl ? je + 1 : je;
    }
    return any && i >= ll && j >= nl;
}

bool correlate_item_equal(struct correlate *m, const struct diff_item *it, int64_t now_ms)
{
    const struct jv *l = it->legacy, *n = it->new_;
    if (l == NULL || n == NULL)
        return false;
    bool yes = false;
    pthread_mutex_lock(&m->lock);
    if (it->kind == DIFF_JSON) {
        const char *lp, *np;
        size_t ll, nl;
        bool ls, ns;
        yes = jv_id_text(l, &lp, &ll, &ls) && jv_id_text(n, &np, &nl, &ns) &&
              is_pair_locked(m, lp, ll, np, nl, now_ms);
    } else if (it->kind == DIFF_HEADER && l->type == JV_STRING && n->type == JV_STRING &&
               (strcmp(it->path, "location") == 0 || strcmp(it->path, "content-location") == 0)) {
        yes = location_pair(m, l, n, now_ms);
    }
    if (yes)
        m->st.matched++;
    pthread_mutex_unlock(&m->lock);
    return yes;
}

bool correlate_diff_equal(void *ctx, int kind, const char *path, const struct jv *legacy,
                          const struct jv *new_)
{
    const struct correlate_diff_ctx *dc = ctx;
    struct diff_item it = {
        .kind = (enum diff_kind)kind, .path = path, .legacy = legacy, .new_ = new_};
    return correlate_item_equal(dc->m, &it, dc->now_ms);
}
