/* Noise statistics: maps from a normalised diff path (route-wide, or scoped to
 * an endpoint) to how many samples showed a difference there, and from a
 * scope to its sample count. Each map keeps its entries in one array in
 * insertion order (so noise_each is stable); an open-addressing table of entry
 * indexes finds them. */
#include "ficus/noise.h"
#include "ficus/common.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct noise_entry {
    char *key; /* malloc'd */
    uint64_t hash;
    size_t count; /* paths: samples that differed there; scopes: samples */
};

/* A bounded map from string to count. */
struct nmap {
    struct noise_entry *entries;
    size_t n;
    size_t cap;
    uint32_t *slots; /* entry index + 1, 0 when free; size is a power of two */
    size_t n_slots;
    size_t max; /* entries beyond are not kept */
};

struct noise_stats {
    double threshold;
    size_t samples;
    struct nmap paths;  /* route-wide: normalised path -> differences */
    struct nmap scoped; /* "scope\npath" -> differences */
    struct nmap scopes; /* scope -> samples */
};

static uint64_t key_hash(const char *s)
{
    uint64_t h = hash_fnv1a(s, strlen(s), FNV_SEED);
    return h ^ (h >> 29);
}

static void nmap_dispose(struct nmap *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->entries[i].key);
    free(m->entries);
    free(m->slots);
}

/* The slot holding key, or the free slot where it would go. */
static size_t slot_of(const struct nmap *m, const char *key, uint64_t h)
{
    size_t mask = m->n_slots - 1;

    for (size_t s = (size_t)h & mask;; s = (s + 1) & mask) {
        uint32_t e = m->slots[s];
        if (e == 0)
            return s;
        if (m->entries[e - 1].hash == h && strcmp(m->entries[e - 1].key, key) == 0)
            return s;
    }
}

static const struct noise_entry *nmap_find(const struct nmap *m, const char *key)
{
    uint64_t h;
    uint32_t e;

    if (m->n_slots == 0)
        return NULL;
    h = key_hash(key);
    e = m->slots[slot_of(m, key, h)];
    return e != 0 ? &m->entries[e - 1] : NULL;
}

/* Keeps the table at most half full. Returns false when out of memory. */
static bool grow(struct nmap *m)
{
    if (m->n == m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 16;
        struct noise_entry *ne = realloc(m->entries, ncap * sizeof *ne);
        if (ne == NULL)
            return false;
        m->entries = ne;
        m->cap = ncap;
    }
    if ((m->n + 1) * 2 > m->n_slots) {
        size_t nslots = m->n_slots ? m->n_slots * 2 : 32;
        uint32_t *old = m->slots;
        size_t old_n = m->n_slots;
        uint32_t *slots = calloc(nslots, sizeof *slots);

        if (slots == NULL)
            return false;
        m->slots = slots;
        m->n_slots = nslots;
        for (size_t i = 0; i < old_n; i++)
            if (old[i] != 0)
                m->slots[slot_of(m, m->entries[old[i] - 1].key, m->entries[old[i] - 1].hash)] =
                    old[i];
        free(old);
    }
    return true;
}

/* Adds one to key's count, making the entry when there is room. Returns the
 * entry, or NULL when the key is not kept (bound, or out of memory: statistics
 * are best effort). */
static struct noise_entry *nmap_count(struct nmap *m, const char *key)
{
    uint64_t h = key_hash(key);
    size_t len = strlen(key);
    char *copy;

    if (m->n_slots > 0) {
        size_t s = slot_of(m, key, h);
        if (m->slots[s] != 0) {
            m->entries[m->slots[s] - 1].count++;
            return &m->entries[m->slots[s] - 1];
        }
    }
    if (m->n >= m->max || !grow(m))
        return NULL;
    copy = malloc(len + 1);
    if (copy == NULL)
        return NULL;
    memcpy(copy, key, len + 1);
    m->entries[m->n] = (struct noise_entry){.key = copy, .hash = h, .count = 1};
    m->n++;
    m->slots[slot_of(m, key, h)] = (uint32_t)m->n;
    return &m->entries[m->n - 1];
}

struct noise_stats *noise_new(double threshold)
{
    struct noise_stats *ns = calloc(1, sizeof *ns);

    if (ns == NULL)
        return NULL;
    ns->threshold = threshold;
    ns->paths.max = NOISE_MAX_PATHS;
    ns->scoped.max = NOISE_MAX_PATHS;
    ns->scopes.max = NOISE_MAX_SCOPES;
    return ns;
}

void noise_free(struct noise_stats *ns)
{
    if (ns == NULL)
        return;
    nmap_dispose(&ns->paths);
    nmap_dispose(&ns->scoped);
    nmap_dispose(&ns->scopes);
    free(ns);
}

/* "scope\npath" into a malloc'd string; NULL when out of memory. */
static char *scoped_key(const char *scope, const char *path)
{
    size_t ls = strlen(scope), lp = strlen(path);
    char *k = malloc(ls + 1 + lp + 1);

    if (k == NULL)
        return NULL;
    memcpy(k, scope, ls);
    k[ls] = '\n';
    memcpy(k + ls + 1, path, lp + 1);
    return k;
}

static bool scope_ok(const char *scope)
{
    return scope != NULL && strlen(scope) <= NOISE_MAX_SCOPE_LEN && strchr(scope, '\n') == NULL;
}

void noise_observe_in(struct noise_stats *ns, const char *scope, const struct diff_result *r)
{
    char *norm[DIFF_MAX_ITEMS];
    size_t n_norm = 0, n_items;
    bool scoped;

    if (ns == NULL || r == NULL)
        return;
    n_items = r->n < DIFF_MAX_ITEMS ? r->n : DIFF_MAX_ITEMS;
    for (size_t i = 0; i < n_items; i++)
        if (r->items[i].kind == DIFF_ERROR)
            return;
    ns->samples++;
    scoped = scope_ok(scope) && nmap_count(&ns->scopes, scope) != NULL;
    for (size_t i = 0; i < n_items; i++) {
        const char *path = r->items[i].path != NULL ? r->items[i].path : "";
        size_t size = strlen(path) + 1; /* normalising never lengthens a path */
        char *p = malloc(size);
        bool seen = false;

        if (p == NULL)
            continue;
        diff_normalize_path(path, p, size);
        for (size_t j = 0; j < n_norm && !seen; j++)
            seen = strcmp(norm[j], p) == 0;
        if (seen || size - 1 > NOISE_MAX_PATH_LEN) {
            free(p);
            continue;
        }
        norm[n_norm++] = p;
        nmap_count(&ns->paths, p);
        if (scoped) {
            char *k = scoped_key(scope, p);
            if (k != NULL)
                nmap_count(&ns->scoped, k);
            free(k);
        }
    }
    for (size_t j = 0; j < n_norm; j++)
        free(norm[j]);
}

void noise_observe(struct noise_stats *ns, const struct diff_result *r)
{
    noise_observe_in(ns, NULL, r);
}

static double rate_of(size_t diffs, size_t samples)
{
    return samples ? (double)diffs / (double)samples : 0.0;
}

static bool is_noise(const struct noise_stats *ns, size_t diffs, size_t samples)
{
    return samples >= NOISE_MIN_SAMPLES && rate_of(diffs, samples) > ns->threshold;
}

bool noise_is_noise_in(const struct noise_stats *ns, const char *scope, const char *path)
{
    const struct noise_entry *e, *s = NULL;
    size_t size;
    char *p;
    bool verdict;

    if (ns == NULL || path == NULL || ns->samples < NOISE_MIN_SAMPLES)
        return false;
    size = strlen(path) + 1;
    p = malloc(size);
    if (p == NULL)
        return false;
    diff_normalize_path(path, p, size);
    if (scope_ok(scope))
        s = nmap_find(&ns->scopes, scope);
    if (s != NULL && s->count >= NOISE_MIN_SAMPLES) {
        /* The endpoint's own samples decide: a path of one endpoint among many
         * would be diluted below any threshold by the others' samples. */
        char *k = scoped_key(scope, p);
        e = k != NULL ? nmap_find(&ns->scoped, k) : NULL;
        verdict = e != NULL && is_noise(ns, e->count, s->count);
        free(k);
    } else {
        e = nmap_find(&ns->paths, p);
        verdict = e != NULL && is_noise(ns, e->count, ns->samples);
    }
    free(p);
    return verdict;
}

bool noise_is_noise(const struct noise_stats *ns, const char *path)
{
    return noise_is_noise_in(ns, NULL, path);
}

size_t noise_samples(const struct noise_stats *ns)
{
    return ns != NULL ? ns->samples : 0;
}

size_t noise_samples_in(const struct noise_stats *ns, const char *scope)
{
    const struct noise_entry *s;

    if (ns == NULL || !scope_ok(scope))
        return 0;
    s = nmap_find(&ns->scopes, scope);
    return s != NULL ? s->count : 0;
}

void noise_each(const struct noise_stats *ns,
                void (*fn)(const char *path, size_t diffs, double rate, bool is_noise, void *arg),
                void *arg)
{
    if (ns == NULL || fn == NULL)
        return;
    for (size_t i = 0; i < ns->paths.n; i++) {
        const struct noise_entry *e = &ns->paths.entries[i];
        fn(e->key, e->count, rate_of(e->count, ns->samples), is_noise(ns, e->count, ns->samples),
           arg);
    }
}
