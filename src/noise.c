/* Noise statistics: a map from normalised diff path to how many samples showed
 * a difference there. Entries live in one array in insertion order (so
 * noise_each is stable); an open-addressing table of entry indexes finds them. */
#include "ficus/noise.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct noise_entry {
    char *path; /* normalised, malloc'd */
    uint64_t hash;
    size_t diffs;
};

struct noise_stats {
    double threshold;
    size_t samples;
    struct noise_entry *entries;
    size_t n;
    size_t cap;
    uint32_t *slots; /* entry index + 1, 0 when free; size is a power of two */
    size_t n_slots;
};

static uint64_t path_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h ^ (h >> 29);
}

struct noise_stats *noise_new(double threshold)
{
    struct noise_stats *ns = calloc(1, sizeof *ns);

    if (ns == NULL)
        return NULL;
    ns->threshold = threshold;
    return ns;
}

void noise_free(struct noise_stats *ns)
{
    if (ns == NULL)
        return;
    for (size_t i = 0; i < ns->n; i++)
        free(ns->entries[i].path);
    free(ns->entries);
    free(ns->slots);
    free(ns);
}

/* The slot holding path, or the free slot where it would go. */
static size_t slot_of(const struct noise_stats *ns, const char *path, uint64_t h)
{
    size_t mask = ns->n_slots - 1;

    for (size_t s = (size_t)h & mask;; s = (s + 1) & mask) {
        uint32_t e = ns->slots[s];
        if (e == 0)
            return s;
        if (ns->entries[e - 1].hash == h && strcmp(ns->entries[e - 1].path, path) == 0)
            return s;
    }
}

static const struct noise_entry *find(const struct noise_stats *ns, const char *path)
{
    uint64_t h;
    uint32_t e;

    if (ns->n_slots == 0)
        return NULL;
    h = path_hash(path);
    e = ns->slots[slot_of(ns, path, h)];
    return e != 0 ? &ns->entries[e - 1] : NULL;
}

/* Keeps the table at most half full. Returns false when out of memory. */
static bool grow(struct noise_stats *ns)
{
    if (ns->n == ns->cap) {
        size_t ncap = ns->cap ? ns->cap * 2 : 16;
        struct noise_entry *ne = realloc(ns->entries, ncap * sizeof *ne);
        if (ne == NULL)
            return false;
        ns->entries = ne;
        ns->cap = ncap;
    }
    if ((ns->n + 1) * 2 > ns->n_slots) {
        size_t nslots = ns->n_slots ? ns->n_slots * 2 : 32;
        uint32_t *old = ns->slots;
        size_t old_n = ns->n_slots;
        uint32_t *slots = calloc(nslots, sizeof *slots);

        if (slots == NULL)
            return false;
        ns->slots = slots;
        ns->n_slots = nslots;
        for (size_t i = 0; i < old_n; i++)
            if (old[i] != 0)
                ns->slots[slot_of(ns, ns->entries[old[i] - 1].path, ns->entries[old[i] - 1].hash)] =
                    old[i];
        free(old);
    }
    return true;
}

/* Counts one difference at an already normalised path. */
static void count(struct noise_stats *ns, const char *path)
{
    uint64_t h = path_hash(path);
    size_t len = strlen(path);
    size_t s;
    char *copy;

    if (ns->n_slots > 0) {
        s = slot_of(ns, path, h);
        if (ns->slots[s] != 0) {
            ns->entries[ns->slots[s] - 1].diffs++;
            return;
        }
    }
    if (ns->n >= NOISE_MAX_PATHS || len > NOISE_MAX_PATH_LEN || !grow(ns))
        return;
    copy = malloc(len + 1);
    if (copy == NULL)
        return; /* statistics are best effort: the path stays untracked */
    memcpy(copy, path, len + 1);
    ns->entries[ns->n] = (struct noise_entry){.path = copy, .hash = h, .diffs = 1};
    ns->n++;
    ns->slots[slot_of(ns, path, h)] = (uint32_t)ns->n;
}

void noise_observe(struct noise_stats *ns, const struct diff_result *r)
{
    char *norm[DIFF_MAX_ITEMS];
    size_t n_norm = 0, n_items;

    if (ns == NULL || r == NULL)
        return;
    n_items = r->n < DIFF_MAX_ITEMS ? r->n : DIFF_MAX_ITEMS;
    for (size_t i = 0; i < n_items; i++)
        if (r->items[i].kind == DIFF_ERROR)
            return;
    ns->samples++;
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
        if (seen) {
            free(p);
            continue;
        }
        norm[n_norm++] = p;
        count(ns, p);
    }
    for (size_t j = 0; j < n_norm; j++)
        free(norm[j]);
}

static double rate_of(const struct noise_stats *ns, size_t diffs)
{
    return ns->samples ? (double)diffs / (double)ns->samples : 0.0;
}

static bool entry_is_noise(const struct noise_stats *ns, const struct noise_entry *e)
{
    return ns->samples >= NOISE_MIN_SAMPLES && rate_of(ns, e->diffs) > ns->threshold;
}

bool noise_is_noise(const struct noise_stats *ns, const char *path)
{
    const struct noise_entry *e;
    size_t size;
    char *p;

    if (ns == NULL || path == NULL || ns->samples < NOISE_MIN_SAMPLES)
        return false;
    size = strlen(path) + 1;
    p = malloc(size);
    if (p == NULL)
        return false;
    diff_normalize_path(path, p, size);
    e = find(ns, p);
    free(p);
    return e != NULL && entry_is_noise(ns, e);
}

size_t noise_samples(const struct noise_stats *ns)
{
    return ns != NULL ? ns->samples : 0;
}

void noise_each(const struct noise_stats *ns,
                void (*fn)(const char *path, size_t diffs, double rate, bool is_noise, void *arg),
                void *arg)
{
    if (ns == NULL || fn == NULL)
        return;
    for (size_t i = 0; i < ns->n; i++) {
        const struct noise_entry *e = &ns->entries[i];
        fn(e->path, e->diffs, rate_of(ns, e->diffs), entry_is_noise(ns, e), arg);
    }
}
