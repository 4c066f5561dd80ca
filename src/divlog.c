#include "ficus/divlog.h"
#include "ficus/common.h"
#include "ficus/diff.h"
#include "ficus/log.h"
#include "ficus/worker.h"
#include "ficus/state.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUMMARY_BUCKETS 1024
#define SUMMARY_MAX     10000
/* Lines are flushed once per drained batch; a larger stdio buffer than the
 * default 4 KiB makes that one write() per batch rather than one per few
 * records. */
#define DIVLOG_FILE_BUFFER (64 * 1024)
/* How long the first record after a drain waits for others to join it. */
#define DIVLOG_DRAIN_MS 20

struct path_stat {
    struct path_stat *next;
    char *route;
    char *path; /* normalised */
    char *kind;
    unsigned long long count, noise, acked;
    bool noise_now; /* the path's class in the latest comparison that had it */
    char example_id[64];
};

struct divlog {
    struct server *srv;
    uv_async_t async;
    uv_timer_t timer; /* the deferred drain */
    int open_handles; /* async and timer until both are closed */
    uv_mutex_t lock;  /* guards the queue only; held for a push or a swap */
    struct divrec **queue;
    size_t qlen;
    unsigned long long dropped;        /* under lock */
    unsigned long long dropped_logged; /* control thread: dropped when divlog_tick last logged */

    FILE *f;
    long long size;
    struct divrec *recent[DIVLOG_RECENT_MAX]; /* ring, control thread only */
    size_t recent_next, recent_count;
    struct path_stat *buckets[SUMMARY_BUCKETS];
    size_t n_stats;
};

static void divlog_open(struct divlog *d)
{
    const struct config *cfg = d->srv->cfg;
    if (cfg->divlog_path == NULL)
        return;
    d->f = fopen(cfg->divlog_path, "a");
    if (d->f == NULL) {
        log_error("divlog", "cannot open divergence log path=%s err=%s", cfg->divlog_path,
                  strerror(errno));
        return;
    }
    setvbuf(d->f, NULL, _IOFBF, DIVLOG_FILE_BUFFER);
    fseek(d->f, 0, SEEK_END);
    d->size = ftell(d->f);
}

void divlog_reopen(struct divlog *d)
{
    if (d->f != NULL)
        fclose(d->f);
    d->f = NULL;
    divlog_open(d);
}

static void rotate(struct divlog *d)
{
    const struct config *cfg = d->srv->cfg;
    fclose(d->f);
    d->f = NULL;
    char from[4096], to[4096];
    for (int i = cfg->divlog_keep; i >= 1; i--) {
        if (i == 1)
            snprintf(from, sizeof(from), "%s", cfg->divlog_path);
        else
            snprintf(from, sizeof(from), "%s.%d", cfg->divlog_path, i - 1);
        snprintf(to, sizeof(to), "%s.%d", cfg->divlog_path, i);
        rename(from, to); /* a missing older file is fine */
    }
    if (cfg->divlog_keep == 0)
        d->f = fopen(cfg->divlog_path, "w");
    else
        d->f = fopen(cfg->divlog_path, "a");
    d->size = 0;
    if (d->f != NULL)
        setvbuf(d->f, NULL, _IOFBF, DIVLOG_FILE_BUFFER);
    if (d->f == NULL)
        log_error("divlog", "cannot reopen divergence log after rotation path=%s err=%s",
                  cfg->divlog_path, strerror(errno));
}

static unsigned hash_key(const char *route, const char *path, const char *kind)
{
    /* The NUL after each part keeps ("ab", "c") apart from ("a", "bc"). */
    uint64_t h = hash_fnv1a(route, strlen(route) + 1, FNV_SEED);
    h = hash_fnv1a(path, strlen(path) + 1, h);
    h = hash_fnv1a(kind, strlen(kind), h);
    return (unsigned)(h % SUMMARY_BUCKETS);
}

/* What a path was in one comparison; the lowest wins when it was several. */
enum { CLS_COUNTED, CLS_ACKED, CLS_NOISE };

static void count_path(struct divlog *d, const char *route, const char *raw_path, const char *kind,
                       int cls, const char *id)
{
    char path[1024];
    diff_normalize_path(raw_path, path, sizeof(path));
    unsigned h = hash_key(route, path, kind);
    struct path_stat *ps = d->buckets[h];
    while (ps != NULL && !(strcmp(ps->route, route) == 0 && strcmp(ps->path, path) == 0 &&
                           strcmp(ps->kind, kind) == 0))
        ps = ps->next;
    if (ps == NULL) {
        if (d->n_stats >= SUMMARY_MAX)
            return;
        ps = calloc(1, sizeof(*ps));
        if (ps == NULL)
            return;
        ps->route = strdup(route);
        ps->path = strdup(path);
        ps->kind = strdup(kind);
        if (ps->route == NULL || ps->path == NULL || ps->kind == NULL) {
            free(ps->route);
            free(ps->path);
            free(ps->kind);
            free(ps);
            return;
        }
        ps->next = d->buckets[h];
        d->buckets[h] = ps;
        d->n_stats++;
    }
    ps->noise += cls == CLS_NOISE;
    ps->acked += cls == CLS_ACKED;
    ps->count += cls == CLS_COUNTED;
    ps->noise_now = cls == CLS_NOISE;
    snprintf(ps->example_id, sizeof(ps->example_id), "%s", id);
}

int divrec_add_stat(struct buf *stats, int kind, const char *path)
{
    unsigned char k = (unsigned char)kind;
    size_t mark = stats->len;
    int rc = buf_append(stats, &k, 1);
    if (rc == 0)
        rc = buf_append(stats, path, strlen(path) + 1);
    if (rc != 0)
        stats->len = mark;
    return rc;
}

struct divrec *divrec_new(const char *route, const char *id, bool divergent, const struct buf *line,
                          const struct buf *stats, size_t n_stats)
{
    size_t rlen = strlen(route);
    size_t slen = n_stats ? stats->len : 0;
    struct divrec *r = malloc(sizeof(*r) + rlen + 1 + line->len + 1 + slen);
    if (r == NULL)
        return NULL;
    char *p = (char *)(r + 1);
    r->divergent = divergent;
    snprintf(r->id, sizeof(r->id), "%s", id);
    memcpy(p, route, rlen + 1);
    r->route = p;
    p += rlen + 1;
    if (line->len)
        memcpy(p, line->data, line->len);
    p[line->len] = '\0';
    r->line = p;
    r->line_len = line->len;
    p += line->len + 1;
    if (slen)
        memcpy(p, stats->data, slen);
    r->stats = p;
    r->n_stats = n_stats;
    return r;
}

/* The (kind, normalised path) entries of one record, each once: a list
 * endpoint whose every item differs shows "/ * /views" once per comparison, so
 * a path's count stays a number of comparisons and its rate a share of them
 * (the summary once showed 210 %). Counted beats acknowledged beats noise
 * when a path is several. */
struct rec_stat {
    const char *kind;
    char path[1024];
    int cls;
};

static void count_record(struct divlog *d, const struct divrec *rec)
{
    struct rec_stat *seen = NULL;
    size_t n_seen = 0;
    const char *st = rec->stats;

    if (rec->n_stats > 0)
        seen = malloc(rec->n_stats * sizeof(*seen));
    if (seen == NULL)
        return; /* out of memory: the summary misses this record, nothing else does */
    for (size_t i = 0; i < rec->n_stats; i++) {
        unsigned char k = (unsigned char)*st++;
        const char *path = st;
        struct rec_stat cur;
        size_t j = 0;
        st += strlen(st) + 1;
        bool noise = k == DIVREC_NOISE;
        cur.cls = noise ? CLS_NOISE : (k & DIVREC_ACK) ? CLS_ACKED : CLS_COUNTED;
        if (!noise)
            k &= (unsigned char)~DIVREC_ACK;
        if (!noise && k >= DIFF_KIND_N)
            continue;
        cur.kind = noise ? "json" : diff_kind_name((enum diff_kind)k);
        diff_normalize_path(!noise && k == DIFF_BODY ? "" : path, cur.path, sizeof(cur.path));
        while (j < n_seen &&
               !(strcmp(seen[j].kind, cur.kind) == 0 && strcmp(seen[j].path, cur.path) == 0))
            j++;
        if (j == n_seen)
            seen[n_seen++] = cur;
        else if (cur.cls < seen[j].cls)
            seen[j].cls = cur.cls;
    }
    for (size_t j = 0; j < n_seen; j++)
        count_path(d, rec->route, seen[j].path, seen[j].kind, seen[j].cls, rec->id);
    free(seen);
}

static void handle(struct divlog *d, struct divrec *rec)
{
    count_record(d, rec);
    if (!rec->divergent) {
        free(rec);
        return;
    }
    if (d->f != NULL) {
        size_t len = rec->line_len;
        if (d->size > 0 && d->size + (long long)len + 1 > d->srv->cfg->divlog_max_bytes)
            rotate(d);
        if (d->f != NULL && fwrite(rec->line, 1, len, d->f) == len && fputc('\n', d->f) != EOF)
            d->size += (long long)len + 1;
    }
    free(d->recent[d->recent_next]);
    d->recent[d->recent_next] = rec;
    d->recent_next = (d->recent_next + 1) % DIVLOG_RECENT_MAX;
    if (d->recent_count < DIVLOG_RECENT_MAX)
        d->recent_count++;
}

static void drain_queue(struct divlog *d)
{
    for (;;) {
        uv_mutex_lock(&d->lock);
        struct divrec **batch = d->queue;
        size_t n = d->qlen;
        d->queue = n ? calloc(DIVLOG_QUEUE_MAX, sizeof(*d->queue)) : d->queue;
        if (n && d->queue == NULL) {
            d->queue = batch; /* keep the old array; try later */
            uv_mutex_unlock(&d->lock);
            return;
        }
        if (n)
            d->qlen = 0;
        uv_mutex_unlock(&d->lock);
        if (n == 0)
            break;
        for (size_t i = 0; i < n; i++)
            handle(d, batch[i]);
        free(batch);
    }
    if (d->f != NULL)
        fflush(d->f);
}

static void on_drain_timer(uv_timer_t *t)
{
    drain_queue(t->data);
}

/* A worker handed over the first records after a drain, or filled half the
 * queue. The first case waits DIVLOG_DRAIN_MS so that the records of many
 * batches are written together: waking the control thread for each batch
 * cost a context switch and several system calls per handful of records. */
static void on_async(uv_async_t *a)
{
    struct divlog *d = a->data;
    uv_mutex_lock(&d->lock);
    size_t n = d->qlen;
    uv_mutex_unlock(&d->lock);
    if (n >= DIVLOG_QUEUE_MAX / 2) {
        uv_timer_stop(&d->timer);
        drain_queue(d);
    } else if (!uv_is_active((uv_handle_t *)&d->timer)) {
        uv_timer_start(&d->timer, on_drain_timer, DIVLOG_DRAIN_MS, 0);
    }
}

struct divlog *divlog_new(struct server *srv, uv_loop_t *loop)
{
    struct divlog *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->queue = calloc(DIVLOG_QUEUE_MAX, sizeof(*d->queue));
    if (d->queue == NULL) {
        free(d);
        return NULL;
    }
    d->srv = srv;
    uv_mutex_init(&d->lock);
    uv_async_init(loop, &d->async, on_async);
    d->async.data = d;
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    d->open_handles = 2;
    divlog_open(d);
    return d;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct divlog *d = h->data;
    if (--d->open_handles > 0)
        return;
    for (size_t i = 0; i < DIVLOG_RECENT_MAX; i++)
        free(d->recent[i]);
    for (size_t b = 0; b < SUMMARY_BUCKETS; b++) {
        struct path_stat *ps = d->buckets[b];
        while (ps != NULL) {
            struct path_stat *next = ps->next;
            free(ps->route);
            free(ps->path);
            free(ps->kind);
            free(ps);
            ps = next;
        }
    }
    uv_mutex_destroy(&d->lock);
    free(d->queue);
    free(d);
}

void divlog_free(struct divlog *d)
{
    if (d == NULL)
        return;
    drain_queue(d);
    if (d->f != NULL)
        fclose(d->f);
    d->f = NULL;
    uv_close((uv_handle_t *)&d->async, on_handle_closed);
    uv_close((uv_handle_t *)&d->timer, on_handle_closed);
}

void divlog_push_many(struct divlog *d, struct divrec **recs, size_t n)
{
    size_t taken = 0;
    uv_mutex_lock(&d->lock);
    size_t before = d->qlen;
    while (taken < n && d->qlen < DIVLOG_QUEUE_MAX)
        d->queue[d->qlen++] = recs[taken++];
    d->dropped += n - taken;
    size_t after = d->qlen;
    uv_mutex_unlock(&d->lock);
    for (size_t i = taken; i < n; i++)
        free(recs[i]);
    /* Wake the control thread for the first records since a drain (it then
     * drains after DIVLOG_DRAIN_MS) and when half the queue is used (it drains
     * at once); in between it is already due to come. */
    if (taken > 0 &&
        (before == 0 || (before < DIVLOG_QUEUE_MAX / 2 && after >= DIVLOG_QUEUE_MAX / 2)))
        uv_async_send(&d->async);
}

void divlog_lost(struct divlog *d, size_t n)
{
    uv_mutex_lock(&d->lock);
    d->dropped += n;
    uv_mutex_unlock(&d->lock);
}

void divlog_tick(struct divlog *d)
{
    unsigned long long now = divlog_dropped(d);
    if (now > d->dropped_logged)
        log_warn("divlog",
                 "divergence records dropped count=%llu total=%llu (the record queue "
                 "was full or memory ran out; see ficus_divergence_records_dropped_total)",
                 now - d->dropped_logged, now);
    d->dropped_logged = now;
}

unsigned long long divlog_dropped(const struct divlog *d)
{
    uv_mutex_lock((uv_mutex_t *)&d->lock);
    unsigned long long n = d->dropped;
    uv_mutex_unlock((uv_mutex_t *)&d->lock);
    return n;
}

int divlog_recent_write(struct divlog *d, const char *route, int limit, struct buf *out)
{
    int n = 0;
    int rc;

    drain_queue(d);
    rc = buf_puts(out, "{\"divergences\":[");
    for (size_t i = 0; i < d->recent_count && n < limit && rc == 0; i++) {
        size_t idx = (d->recent_next + DIVLOG_RECENT_MAX - 1 - i) % DIVLOG_RECENT_MAX;
        const struct divrec *rec = d->recent[idx];
        if (route != NULL && strcmp(rec->route, route) != 0)
            continue;
        /* The line as written: the values exactly as the backends sent them. */
        if (n++ > 0)
            rc = buf_append(out, ",", 1);
        if (rc == 0)
            rc = buf_append(out, rec->line, rec->line_len);
    }
    return rc != 0 ? rc : buf_puts(out, "]}");
}

json_t *divlog_recent(struct divlog *d, const char *route, int limit)
{
    drain_queue(d);
    json_t *out = json_array();
    for (size_t i = 0; i < d->recent_count && (int)json_array_size(out) < limit; i++) {
        size_t idx = (d->recent_next + DIVLOG_RECENT_MAX - 1 - i) % DIVLOG_RECENT_MAX;
        const struct divrec *rec = d->recent[idx];
        if (route != NULL && strcmp(rec->route, route) != 0)
            continue;
        /* The ring keeps the lines as written; the admin API is rare enough
         * to read them back here rather than keep a tree per record. */
        json_t *j = json_loadb(rec->line, rec->line_len, JSON_ALLOW_NUL, NULL);
        if (j != NULL)
            json_array_append_new(out, j);
    }
    return json_pack("{s:o}", "divergences", out);
}

static int by_count(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    json_int_t cx = json_integer_value(json_object_get(x, "count")) +
                    json_integer_value(json_object_get(x, "noise_count"));
    json_int_t cy = json_integer_value(json_object_get(y, "count")) +
                    json_integer_value(json_object_get(y, "noise_count"));
    return cx < cy ? 1 : cx > cy ? -1 : 0;
}

json_t *divlog_summary(struct divlog *d, const char *route)
{
    drain_queue(d);
    size_t n = 0;
    json_t **items = calloc(d->n_stats ? d->n_stats : 1, sizeof(json_t *));
    for (size_t b = 0; b < SUMMARY_BUCKETS && items != NULL; b++) {
        for (struct path_stat *ps = d->buckets[b]; ps != NULL; ps = ps->next) {
            if (route != NULL && strcmp(route, ps->route) != 0)
                continue;
            struct route_state *rs = state_find(d->srv->state, ps->route);
            struct route_totals t;
            unsigned long long comparisons = 0;
            if (rs != NULL) {
                state_totals(d->srv->state, rs, &t);
                comparisons = t.comparisons;
            }
            unsigned long long all = ps->count + ps->noise + ps->acked;
            /* noise: how the latest comparison with the path classed it. */
            items[n++] =
                json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:f,s:b,s:s}", "route", ps->route, "path",
                          ps->path, "kind", ps->kind, "count", (json_int_t)ps->count, "noise_count",
                          (json_int_t)ps->noise, "acknowledged_count", (json_int_t)ps->acked,
                          "rate", comparisons ? (double)all / (double)comparisons : 0.0, "noise",
                          ps->noise_now, "example_id", ps->example_id);
        }
    }
    if (n > 1)
        qsort(items, n, sizeof(json_t *), by_count);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, items[i]);
    free(items);
    return json_pack("{s:o}", "paths", arr);
}
