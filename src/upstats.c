/* Per-worker counters of backend server addresses: see upstats.h. Entries
 * sit in blocks that never move, so the control thread may read an entry
 * while the worker adds others. */
#include "ficus/upstats.h"
#include "ficus/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UPSTATS_BLOCKS (UPSTATS_MAX / UPSTATS_BLOCK)
_Static_assert(UPSTATS_MAX % UPSTATS_BLOCK == 0, "whole blocks");

struct upstats {
    atomic_int n; /* published entries */
    atomic_ullong dropped;
    struct upstats_entry *blocks[UPSTATS_BLOCKS];
};

struct upstats *upstats_new(void)
{
    return calloc(1, sizeof(struct upstats));
}

void upstats_free(struct upstats *s)
{
    if (s == NULL)
        return;
    int n = atomic_load(&s->n);
    for (int i = 0; i < n; i++)
        free(s->blocks[i / UPSTATS_BLOCK][i % UPSTATS_BLOCK].backend);
    for (int b = 0; b < UPSTATS_BLOCKS; b++)
        free(s->blocks[b]);
    free(s);
}

static struct upstats_entry *entry_at(const struct upstats *s, int i)
{
    return &s->blocks[i / UPSTATS_BLOCK][i % UPSTATS_BLOCK];
}

struct upstats_entry *upstats_entry(struct upstats *s, const char *backend, const char *server)
{
    int n = atomic_load_explicit(&s->n, memory_order_relaxed); /* the writer's own count */
    for (int i = 0; i < n; i++) {
        struct upstats_entry *e = entry_at(s, i);
        if (strcmp(e->server, server) == 0 && strcmp(e->backend, backend) == 0)
            return e;
    }
    if (n >= UPSTATS_MAX)
        goto drop;
    struct upstats_entry **block = &s->blocks[n / UPSTATS_BLOCK];
    if (*block == NULL && (*block = calloc(UPSTATS_BLOCK, sizeof(**block))) == NULL)
        goto drop;
    struct upstats_entry *e = entry_at(s, n);
    e->backend = strdup(backend);
    if (e->backend == NULL)
        goto drop;
    snprintf(e->server, sizeof(e->server), "%s", server);
    atomic_store_explicit(&e->status, UPSTATS_GONE, memory_order_relaxed);
    atomic_store_explicit(&s->n, n + 1, memory_order_release);
    return e;
drop:
    upstats_add(&s->dropped, 1);
    return NULL;
}

void upstats_all_gone(struct upstats *s)
{
    int n = atomic_load_explicit(&s->n, memory_order_relaxed);
    for (int i = 0; i < n; i++)
        atomic_store_explicit(&entry_at(s, i)->status, UPSTATS_GONE, memory_order_relaxed);
}

void upstats_add(atomic_ullong *c, unsigned long long n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void upstats_set_status(struct upstats_entry *e, enum lb_status st, int64_t ejected_until_ms)
{
    atomic_store_explicit(&e->ejected_until_ms, ejected_until_ms, memory_order_relaxed);
    atomic_store_explicit(&e->status, (int)st, memory_order_relaxed);
}

void upstats_active(struct upstats_entry *e, int delta)
{
    atomic_store_explicit(&e->active,
                          atomic_load_explicit(&e->active, memory_order_relaxed) + delta,
                          memory_order_relaxed);
}

int upstats_count(const struct upstats *s)
{
    return atomic_load_explicit(&((struct upstats *)s)->n, memory_order_acquire);
}

const struct upstats_entry *upstats_at(const struct upstats *s, int i)
{
    return entry_at(s, i);
}

unsigned long long upstats_dropped(const struct upstats *s)
{
    return atomic_load_explicit(&((struct upstats *)s)->dropped, memory_order_relaxed);
}

const char *upstats_status_name(int status)
{
    return status >= 0 && status < LB_STATUS_N ? lb_status_name((enum lb_status)status) : "gone";
}

static int compare_views(const void *a, const void *b)
{
    const struct upstats_view *x = a, *y = b;
    int c = strcmp(x->backend, y->backend);
    return c != 0 ? c : strcmp(x->server, y->server);
}

/* The status an entry shows at now_ms: an ejection that has run out is probing. */
static int status_now(const struct upstats_entry *e, int64_t now_ms)
{
    int st = atomic_load_explicit(&e->status, memory_order_relaxed);
    if (st == LB_STATUS_EJECTED &&
        now_ms >= atomic_load_explicit(&e->ejected_until_ms, memory_order_relaxed))
        st = LB_STATUS_PROBING;
    return st;
}

int upstats_collect(struct upstats *const *tables, int n, int64_t now_ms, struct upstats_view *out,
                    int cap)
{
    size_t total = 0;
    for (int w = 0; w < n; w++)
        total += tables[w] != NULL ? (size_t)upstats_count(tables[w]) : 0;
    if (total == 0)
        return 0;
    struct upstats_view *all = calloc(total, sizeof(*all));
    if (all == NULL)
        return -1;
    size_t k = 0;
    for (int w = 0; w < n; w++) {
        if (tables[w] == NULL)
            continue;
        int m = upstats_count(tables[w]);
        for (int i = 0; i < m && k < total; i++) {
            const struct upstats_entry *e = entry_at(tables[w], i);
            struct upstats_view *v = &all[k++];
            v->backend = e->backend;
            v->server = e->server;
            for (int c = 0; c < CODE_N; c++)
                v->requests[c] = atomic_load_explicit(&e->requests[c], memory_order_relaxed);
            v->failures = atomic_load_explicit(&e->failures, memory_order_relaxed);
            v->ejections = atomic_load_explicit(&e->ejections, memory_order_relaxed);
            v->active = atomic_load_explicit(&e->active, memory_order_relaxed);
            v->status = status_now(e, now_ms);
            v->ejected_until_ms =
                v->status == LB_STATUS_EJECTED
                    ? atomic_load_explicit(&e->ejected_until_ms, memory_order_relaxed)
                    : 0;
        }
    }
    qsort(all, k, sizeof(*all), compare_views);
    int out_n = 0;
    for (size_t i = 0; i < k; i++) {
        struct upstats_view *v = &all[i];
        if (out_n > 0 && compare_views(&out[out_n - 1], v) == 0) {
            struct upstats_view *m = &out[out_n - 1];
            for (int c = 0; c < CODE_N; c++)
                m->requests[c] += v->requests[c];
            m->failures += v->failures;
            m->ejections += v->ejections;
            m->active += v->active;
            if (v->status < m->status)
                m->status = v->status;
            if (v->ejected_until_ms > m->ejected_until_ms)
                m->ejected_until_ms = v->ejected_until_ms;
            continue;
        }
        if (out_n == cap)
            break;
        out[out_n++] = *v;
    }
    /* The latest ejection end means something only while the address shows ejected. */
    for (int i = 0; i < out_n; i++) {
        if (out[i].status != LB_STATUS_EJECTED)
            out[i].ejected_until_ms = 0;
    }
    free(all);
    return out_n;
}

const struct upstats_view *upstats_find(const struct upstats_view *views, int n,
                                        const char *backend, const char *server)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(views[i].server, server) == 0 && strcmp(views[i].backend, backend) == 0)
            return &views[i];
    }
    return NULL;
}
