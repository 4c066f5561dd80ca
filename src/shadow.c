#include "ficus/shadow.h"
#include "ficus/common.h"
#include "ficus/correlate.h"
#include "ficus/diff.h"
#include "ficus/divlog.h"
#include "ficus/log.h"
#include "ficus/noise.h"
#include "ficus/readiness.h"
#include "ficus/replay.h"
#include "ficus/state.h"
#include "ficus/upclient.h"
#include "ficus/upstream.h"
#include "ficus/worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One response as captured for comparison. */
struct capture {
    const char *error;          /* NULL, or why this side has no response */
    struct buf head;            /* raw head bytes */
    struct http_head *parsed;   /* NULL, or head_mem once the head is parsed */
    struct http_head *head_mem; /* storage for parsed, kept when recycled */
    struct buf body;            /* decoded body, capped */
    bool over_cap;
    bool done;
    double ms;
    int64_t bytes;
};

/* A request ficus sends on its own to compare: the shadow, or legacy again. */
struct probe {
    struct comparison *c;
    int backend;
    struct upstream_wait wait;
    struct upconn *up;
    struct upclient uc; /* reads the response into cap */
    bool started;
    bool finished;
    bool is_shadow; /* counts against shadow.max_inflight */
    bool retried;   /* sent again after a pooled connection failed at once */
    uint64_t t0;
    struct capture cap;
};

struct comparison {
    int refs;
    struct list node;        /* in the worker's list of running comparisons */
    struct comparison *next; /* the worker's free list */
    struct worker *w;
    struct config *cfg;
    struct pool_set *ps;
    const struct route_cfg *rt;
    struct route_state *rs;
    bool primary_is_new;
    bool is_head;
    char reqid[64];
    char *method; /* both in text */
    char *target;
    struct buf text;
    struct timespec ts; /* wall clock at the start, for the record */
    uint64_t t0;

    struct buf req_head;
    struct buf req_body;
    /* shadow.correlate: the request as rewritten for the shadow's backend (the
     * shadow, and a noise twin when both go to legacy). Empty: not rewritten. */
    struct buf cor_head, cor_body;
    bool chunked_body; /* the head says chunked */
    bool req_complete;
    bool launched;

    struct capture primary;
    struct probe shadow;
    struct probe *twin; /* the noise sample's second legacy request */
    int pending;        /* sides not finished */
    bool aborted;       /* nothing is compared */
    bool queued;
    bool slot; /* holds one of the worker's SHADOW_MAX_JOBS slots until queued */

    struct comparison *next_job; /* the worker's ready queue, then its batch */
    /* Results of the work, read back on the loop. */
    size_t reserved;       /* bytes of limits.shadow_memory_bytes it holds or was promised */
    size_t promised;       /* reserved at admission, not yet used by a buffer */
    bool over_budget;      /* a buffer would have passed the budget: not compared */
    struct divrec *record; /* NULL, or the record for the control thread */
    bool record_lost;      /* divergent, but no record could be made (out of memory) */
    bool skipped;
    bool divergent;
    unsigned long long kinds[DIFF_KIND_N];
    unsigned long long n_noise, n_acked;
    bool warm; /* its endpoint was past its warm-up: the guard counts it */
};

/* A worker's diff batches. Comparisons that become ready during a loop turn
 * wait in a queue; at most one batch per worker is on the threadpool, and it
 * takes the whole queue: one threadpool hand-off (a mutex, a condition
 * signal, a thread wake-up and an eventfd write back) serves every comparison
 * of the batch instead of each one. Under load the batches grow by themselves
 * while the previous one runs. */
struct shadow_worker {
    struct worker *w;
    struct list comparisons; /* running, for shutdown */
    int diff_jobs;           /* comparisons waiting for or in a diff batch */
    int slots;               /* begun, not yet queued: each will want a diff job */
    size_t expect;           /* bytes a comparison holds, a running average */
    uv_idle_t idle;          /* submits the queue at the end of a loop turn when no batch runs */
    bool idle_active;
    bool closing; /* shadow_abort_all ran: no more loop turns to wait for */
    bool handle_closed;
    bool running; /* a batch is on the threadpool */
    uv_work_t work;
    struct comparison *queue, **queue_tail; /* ready, not yet in a batch */
    struct comparison *batch;               /* the batch on the threadpool */
    /* Scratch for the batch, used by one threadpool thread at a time. */
    struct diff_header hdrs[HTTP_MAX_HEADERS * 3];
    struct diff_result res[2];
    struct buf line, diffs, noise, stats; /* record text, kept between batches */
    struct buf excerpt;                   /* a body excerpt, redacted */
    struct readiness_result rr;           /* the comparison's classes */
    struct http_head req_scratch;         /* the request head, parsed for its secrets */
    char ts_prefix[64];                   /* "YYYY-MM-DDTHH:MM:SS" of ts_sec */
    time_t ts_sec;
    /* Finished comparisons kept with their buffers and head storage for the
     * next ones: their allocations (two 4 KiB heads among a dozen) were a
     * tenth of the worker's time in a 100 % shadow run. */
    struct comparison *free_list;
    int n_free;
};

static void maybe_compare(struct comparison *c);
static void budget_release(struct comparison *c);
static void slot_release(struct comparison *c);

/* ---- lifetime ---------------------------------------------------------------------- */

static void capture_dispose(struct capture *cap)
{
    buf_dispose(&cap->head);
    buf_dispose(&cap->body);
    free(cap->head_mem);
}

static void comparison_dispose(struct comparison *c)
{
    capture_dispose(&c->primary);
    capture_dispose(&c->shadow.cap);
    buf_dispose(&c->req_body);
    buf_dispose(&c->cor_head);
    buf_dispose(&c->cor_body);
    buf_dispose(&c->text);
    free(c);
}

/* Empties a buffer for reuse with a new cap; a large one is freed instead, so
 * that a kept comparison holds little memory. */
static void buf_recycle(struct buf *b, size_t max)
{
    if (b->cap > SHADOW_KEEP_BYTES)
        buf_dispose(b);
    b->len = 0;
    b->max = max;
}

/* A capture ready for a new response: every field by name, the storage
 * (head and body buffers, head_mem) kept. */
static void capture_reuse(struct capture *cap)
{
    cap->error = NULL;
    buf_reset(&cap->head);
    cap->parsed = NULL;
    buf_reset(&cap->body);
    cap->over_cap = false;
    cap->done = false;
    cap->ms = 0;
    cap->bytes = 0;
}

static void probe_reuse(struct probe *p, struct comparison *c)
{
    p->c = c;
    p->backend = -1;
    memset(&p->wait, 0, sizeof(p->wait));
    p->up = NULL;
    memset(&p->uc, 0, sizeof(p->uc));
    p->started = false;
    p->finished = false;
    p->is_shadow = false;
    p->retried = false;
    p->t0 = 0;
    capture_reuse(&p->cap);
}

/* A comparison from the worker's free list, or a new one, with every field set
 * by name here or by shadow_begin; the storage of its buffers is kept. */
static struct comparison *comparison_get(struct shadow_worker *sw)
{
    struct comparison *c = sw->free_list;
    if (c == NULL)
        return calloc(1, sizeof(struct comparison));
    sw->free_list = c->next;
    sw->n_free--;
    c->next = NULL;
    c->method = c->target = NULL;
    buf_reset(&c->text);
    buf_init(&c->req_head, 0);
    buf_reset(&c->req_body);
    c->req_complete = false;
    c->launched = false;
    capture_reuse(&c->primary);
    probe_reuse(&c->shadow, c);
    c->twin = NULL;
    c->aborted = false;
    c->queued = false;
    c->slot = false;
    c->next_job = NULL;
    c->record = NULL;
    c->reserved = 0;
    c->promised = 0;
    c->over_budget = false;
    c->record_lost = false;
    c->skipped = false;
    c->divergent = false;
    memset(c->kinds, 0, sizeof(c->kinds));
    c->n_noise = c->n_acked = 0;
    c->warm = false;
    return c;
}

static struct shadow_worker *shadow_worker_get(struct worker *w);

static void comparison_free(struct comparison *c)
{
    struct worker *w = c->w;
    list_remove(&c->node);
    if (c->twin != NULL) {
        capture_dispose(&c->twin->cap);
        free(c->twin);
    }
    buf_dispose(&c->req_head); /* the exchange's, handed over */
    buf_dispose(&c->cor_head);
    buf_dispose(&c->cor_body);
    free(c->record);
    struct shadow_worker *sw = w->shadow;
    slot_release(c);
    if (sw != NULL && !c->over_budget && c->reserved > c->promised) /* for admission */
        sw->expect = sw->expect - sw->expect / 8 + (c->reserved - c->promised) / 8;
    budget_release(c);
    pool_set_unref(c->ps);
    config_unref(c->cfg);
    if (sw == NULL || sw->closing || sw->n_free >= SHADOW_KEEP_FREE) {
        comparison_dispose(c);
        return;
    }
    buf_recycle(&c->primary.head, 0);
    buf_recycle(&c->primary.body, 0);
    buf_recycle(&c->shadow.cap.head, 0);
    buf_recycle(&c->shadow.cap.body, 0);
    buf_recycle(&c->req_body, 0);
    buf_recycle(&c->text, 0);
    c->next = sw->free_list;
    sw->free_list = c;
    sw->n_free++;
}

void shadow_release(struct comparison *c)
{
    if (c != NULL && --c->refs == 0)
        comparison_free(c);
}

bool shadow_method_allowed(const struct route_cfg *rt, struct span method)
{
    for (size_t i = 0; i < rt->n_shadow_methods; i++) {
        if (span_eq(method, rt->shadow_methods[i]))
            return true;
    }
    return false;
}

static void count_outcome(struct comparison *c, enum shadow_outcome o)
{
    counter_add(&c->rs->counters[c->w->id].shadow[o], 1);
}

/* c no longer waits for its sides: its diff job slot is given back (it takes
 * a diff job itself when it is compared). */
static void slot_release(struct comparison *c)
{
    if (c->slot && c->w->shadow != NULL)
        c->w->shadow->slots--;
    c->slot = false;
}

/* ---- the memory budget ------------------------------------------------------------------- */

/* limits.shadow_memory_bytes bounds what every comparison of the process holds
 * in its request copy and captures together: a comparison that would pass it
 * drops what it holds and is skipped (skipped_memory); RSS never grows without
 * bound however many large responses are compared at once. */
static void budget_release(struct comparison *c)
{
    if (c->reserved > 0)
        atomic_fetch_sub_explicit(&c->w->srv->shadow_memory, (long long)c->reserved,
                                  memory_order_relaxed);
    c->reserved = 0;
    c->promised = 0;
}

static void budget_exceeded(struct comparison *c)
{
    if (c->over_budget)
        return;
    c->over_budget = true;
    /* What it holds goes now, not when the slowest side finishes. */
    buf_dispose(&c->req_body);
    buf_dispose(&c->primary.body);
    buf_dispose(&c->shadow.cap.body);
    if (c->twin != NULL)
        buf_dispose(&c->twin->cap.body);
    budget_release(c);
}

/* Counts a buffer of c growing from before to after bytes against the budget.
 * Returns false when that passes it: c is then over budget, its buffers gone. */
static bool budget_grow(struct comparison *c, size_t before, size_t after)
{
    if (after <= before)
        return true;
    size_t grow = after - before;
    if (c->promised >= grow) { /* reserved at admission already */
        c->promised -= grow;
        return true;
    }
    grow -= c->promised;
    c->promised = 0;
    c->reserved += grow;
    long long used = atomic_fetch_add_explicit(&c->w->srv->shadow_memory, (long long)grow,
                                               memory_order_relaxed) +
                     (long long)grow;
    if (used <= (long long)c->cfg->shadow_memory_bytes)
        return true;
    budget_exceeded(c);
    return false;
}

/* Appends to one of c's capture buffers within its cap (FICUS_ETOOBIG) and
 * the budget (FICUS_EFULL: the comparison is then over budget and its buffers
 * are gone). The budget counts what the buffer allocates, growth included. */
static int capture_append(struct comparison *c, struct buf *b, const char *p, size_t n)
{
    if (c->over_budget)
        return FICUS_EFULL;
    size_t before = b->cap;
    int rc = buf_reserve(b, n);
    if (rc != 0)
        return rc;
    if (!budget_grow(c, before, b->cap))
        return FICUS_EFULL;
    return buf_append(b, p, n);
}

/* A response whose length is announced gets its capture sized once (within
 * its cap): doubling a buffer up to it would hold up to twice the bytes. */
static void capture_presize(struct comparison *c, struct buf *b, const struct http_head *h)
{
    if (c->over_budget || h->content_length <= 0 ||
        (b->max && (uint64_t)h->content_length > b->max) || (size_t)h->content_length < b->cap)
        return;
    size_t before = b->cap;
    if (buf_reserve_exact(b, (size_t)h->content_length) == 0)
        budget_grow(c, before, b->cap);
}

/* ---- probes ---------------------------------------------------------------------------- */

static void probe_finish(struct probe *p, const char *error, bool reusable)
{
    if (p->finished)
        return;
    p->finished = true;
    struct comparison *c = p->c;
    upstream_cancel(&p->wait);
    upclient_stop(&p->uc);
    if (p->up != NULL) {
        struct upconn *u = p->up;
        p->up = NULL;
        upstream_release(u, reusable && error == NULL);
    }
    if (error != NULL && p->cap.error == NULL)
        p->cap.error = error;
    p->cap.done = true;
    p->cap.ms = (double)(io_now_us() - p->t0) / 1000.0;
    if (p->is_shadow)
        atomic_fetch_sub_explicit(&c->rs->shadow_inflight, 1, memory_order_relaxed);
    c->pending--;
    maybe_compare(c);
    shadow_release(c);
}

static bool probe_on_head(void *ctx, const struct http_head *h, const char *raw, size_t len)
{
    (void)raw;
    (void)len;
    struct probe *p = ctx;
    p->cap.parsed = p->cap.head_mem; /* upclient parsed it there, from cap.head */
    /* The shadow's answers count towards its server's ejection too. */
    upstream_outcome(p->up, h->status >= 500 ? LB_FAILURE : LB_SUCCESS, h->status);
    capture_presize(p->c, &p->cap.body, h);
    return true;
}

static bool probe_on_body(void *ctx, struct rbuf *rb, const char *data, size_t len)
{
    (void)rb;
    struct probe *p = ctx;
    p->cap.bytes += (int64_t)len;
    if (capture_append(p->c, &p->cap.body, data, len) == 0)
        return true;
    p->cap.over_cap = true;
    upclient_stop(&p->uc);
    probe_finish(p, NULL, false); /* may free p */
    return false;
}

static void probe_on_done(void *ctx, bool reusable)
{
    probe_finish(ctx, NULL, reusable);
}

static void probe_on_ready(void *ctx, struct upconn *u, int status);

/* May the probe's request be sent twice? */
static bool probe_idempotent(const struct comparison *c)
{
    static const char *const methods[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"};
    for (size_t i = 0; c->method != NULL && i < ARRAY_SIZE(methods); i++) {
        if (strcmp(c->method, methods[i]) == 0)
            return true;
    }
    return false;
}

static void probe_on_error(void *ctx, int err)
{
    struct probe *p = ctx;
    bool stale = err != FICUS_ETIMEOUT && !upclient_got_any(&p->uc) && p->up != NULL &&
                 upstream_reused(p->up);
    if (p->up != NULL)
        upstream_outcome(p->up, stale ? LB_ABANDONED : LB_FAILURE, 0);
    if (stale && !p->retried && probe_idempotent(p->c)) {
        /* A pooled connection the backend closed while it sat idle: once more
         * on another (idempotent requests skip the liveness peek for this),
         * to another server when there is one. */
        p->retried = true;
        struct upconn *u = p->up;
        p->up = NULL;
        upstream_release(u, false);
        p->wait.check_idle = true;
        if (upstream_retry(p->c->ps, p->backend, &p->wait, probe_on_ready, p) != 0)
            probe_finish(p, "connect_error", false);
        return;
    }
    probe_finish(p, upclient_error_outcome(err), false);
}

static const struct upclient_handlers probe_handlers = {
    .on_head = probe_on_head,
    .on_body = probe_on_body,
    .on_done = probe_on_done,
    .on_error = probe_on_error,
    .on_drain = NULL,
};

static void probe_on_ready(void *ctx, struct upconn *u, int status)
{
    struct probe *p = ctx;
    struct comparison *c = p->c;
    if (status != 0) {
        probe_finish(p, status == FICUS_ETIMEOUT ? "timeout" : "connect_error", false);
        return;
    }
    p->up = u;
    if (p->cap.head_mem == NULL && (p->cap.head_mem = malloc(sizeof(struct http_head))) == NULL) {
        probe_finish(p, "connect_error", false);
        return;
    }
    /* shadow.timeout_ms bounds the whole exchange: a trickling backend is not
     * given more time for every byte it sends. */
    upclient_start(&p->uc, u, &probe_handlers, p, &p->cap.head, p->cap.head_mem, c->is_head,
                   c->cfg->max_header_bytes, UPCLIENT_TOTAL, c->rt->shadow_timeout_ms);
    /* The head and the body are copied per probe: a write owns what it sends. */
    const struct buf *rh = &c->req_head, *rb = &c->req_body;
    if (c->cor_head.len > 0 && (p == &c->shadow || (p == c->twin && c->primary_is_new))) {
        rh = &c->cor_head;
        rb = c->cor_body.len > 0 ? &c->cor_body : rb;
    }
    size_t blen = rb->len;
    char hdr[24] = "";
    int hl = 0;
    if (c->chunked_body && blen > 0)
        hl = snprintf(hdr, sizeof(hdr), "%zx\r\n", blen);
    const char *tail = c->chunked_body ? (blen > 0 ? "\r\n0\r\n\r\n" : "0\r\n\r\n") : "";
    size_t tl = strlen(tail);
    size_t total = rh->len + (size_t)hl + blen + tl;
    char *out = malloc(total);
    if (out == NULL) {
        probe_finish(p, "connect_error", false);
        return;
    }
    memcpy(out, rh->data, rh->len);
    memcpy(out + rh->len, hdr, (size_t)hl);
    if (blen > 0)
        memcpy(out + rh->len + hl, rb->data, blen);
    memcpy(out + rh->len + hl + blen, tail, tl);
    uv_buf_t b = uv_buf_init(out, (unsigned)total);
    if (upstream_write(u, &b, 1, NULL, out) != 0)
        probe_finish(p, "reset", false);
}

static void probe_start(struct comparison *c, struct probe *p)
{
    p->started = true;
    p->t0 = io_now_us();
    p->wait.check_idle = !probe_idempotent(c); /* the others are retried once instead */
    c->refs++;
    if (upstream_acquire(c->ps, p->backend, &p->wait, probe_on_ready, p) != 0)
        probe_finish(p, "connect_error", false);
}

/* shadow.correlate: a shadow request gets the ids the map knows replaced by
 * those of the side it goes to (legacy ids become new's on the way to new,
 * new ids legacy's on the way to legacy), in its path and configured body
 * fields, in a copy of its own (cor_head, cor_body) that every probe to that
 * backend sends: the client's request is not touched, and a noise twin gets
 * the ids legacy knows either way. The rewritten body is not counted
 * against the memory budget. */
static void correlate_request(struct comparison *c)
{
    const struct correlate_cfg *cc = &c->rt->shadow_correlate;
    if (!cc->enabled || c->rs->correlate == NULL)
        return;
    bool body_changed = false;
    if (correlate_rewrite(c->rs->correlate, cc, c->primary_is_new, c->req_head.data,
                          c->req_head.len, c->req_body.data, c->req_body.len, c->chunked_body,
                          (int64_t)(io_now_us() / 1000), &c->cor_head, &c->cor_body,
                          &body_changed) <= 0) {
        buf_dispose(&c->cor_head);
        buf_dispose(&c->cor_body);
    }
}

static void launch(struct comparison *c)
{
    if (c->launched)
        return;
    c->launched = true;
    correlate_request(c);
    c->refs++; /* held across the launches: a probe may finish inside its start */
    probe_start(c, &c->shadow);
    if (c->twin != NULL)
        probe_start(c, c->twin);
    shadow_release(c);
}

/* ---- the comparison job ------------------------------------------------------------------- */

static void to_diff_response(const struct capture *cap, struct diff_response *out,
                             struct diff_header *hdrs)
{
    memset(out, 0, sizeof(*out));
    out->error = cap->error;
    if (cap->error != NULL || cap->parsed == NULL) {
        if (out->error == NULL)
            out->error = "invalid_response";
        return;
    }
    out->status = cap->parsed->status;
    for (size_t i = 0; i < cap->parsed->n_headers; i++) {
        hdrs[i].name = cap->parsed->headers[i].name.p;
        hdrs[i].name_len = cap->parsed->headers[i].name.len;
        hdrs[i].value = cap->parsed->headers[i].value.p;
        hdrs[i].value_len = cap->parsed->headers[i].value.len;
    }
    out->headers = hdrs;
    out->n_headers = cap->parsed->n_headers;
    out->body = cap->body.data ? cap->body.data : "";
    out->body_len = cap->body.len;
}

/* Appends a JSON string of at most max bytes of p; when those bytes are not
 * UTF-8 text, every byte that is not printable ASCII, newline or tab is
 * written as '?' (what jansson accepts). */
static int text_excerpt(struct buf *out, const char *p, size_t n, size_t max)
{
    if (n > max)
        n = max;
    int rc = buf_json_string(out, p, n);
    if (rc != -EINVAL)
        return rc;
    char *copy = malloc(n + 1);
    if (copy == NULL)
        return buf_json_string(out, "", 0);
    for (size_t i = 0; i < n; i++)
        copy[i] = (p[i] >= 0x20 && p[i] < 0x7f) || p[i] == '\n' || p[i] == '\t' ? p[i] : '?';
    rc = buf_json_string(out, copy, n);
    free(copy);
    return rc;
}

/* {"ms":..,"bytes":..,"status":..} or with "error" instead of "status". */
static int side_json(struct buf *out, const struct capture *cap)
{
    int rc = buf_puts(out, "{\"ms\":");
    if (rc == 0)
        rc = buf_json_real(out, cap->ms, DIVLOG_REAL_PRECISION);
    if (rc == 0)
        rc = buf_puts(out, ",\"bytes\":");
    if (rc == 0)
        rc = cap->bytes < 0 ? buf_printf(out, "%lld", (long long)cap->bytes)
                            : buf_put_uint(out, (uint64_t)cap->bytes);
    if (rc == 0 && cap->error != NULL) {
        rc = buf_puts(out, ",\"error\":");
        if (rc == 0)
            rc = buf_json_string(out, cap->error, strlen(cap->error));
    } else if (rc == 0 && cap->parsed != NULL) {
        rc = buf_puts(out, ",\"status\":");
        if (rc == 0)
            rc = cap->parsed->status < 0 ? buf_printf(out, "%d", cap->parsed->status)
                                         : buf_put_uint(out, (uint64_t)cap->parsed->status);
    }
    return rc != 0 ? rc : buf_puts(out, "}");
}

/* "2026-11-22T10:00:00.123Z": UTC, milliseconds. The part up to the seconds
 * is formatted once a second per worker. */
static void format_ts(struct shadow_worker *sw, const struct timespec *t, char *out, size_t size)
{
    if (sw->ts_prefix[0] == '\0' || sw->ts_sec != t->tv_sec) {
        struct tm tm;
        gmtime_r(&t->tv_sec, &tm);
        snprintf(sw->ts_prefix, sizeof(sw->ts_prefix), "%04d-%02d-%02dT%02d:%02d:%02d",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        sw->ts_sec = t->tv_sec;
    }
    long ms = t->tv_nsec / 1000000;
    size_t n = strlen(sw->ts_prefix);
    if (size < 6) {
        if (size > 0)
            out[0] = '\0';
        return;
    }
    if (n > size - 6)
        n = size - 6;
    memcpy(out, sw->ts_prefix, n);
    out[n] = '.';
    out[n + 1] = (char)('0' + ms / 100 % 10);
    out[n + 2] = (char)('0' + ms / 10 % 10);
    out[n + 3] = (char)('0' + ms % 10);
    out[n + 4] = 'Z';
    out[n + 5] = '\0';
}

/* Appends "name":"value" (with a leading comma unless first); value's bytes
 * that are not UTF-8 are escaped. */
static int member_str(struct buf *out, const char *name, const char *value, bool first)
{
    int rc = first ? buf_append(out, "\"", 1) : buf_append(out, ",\"", 2);
    if (rc == 0)
        rc = buf_puts(out, name);
    if (rc == 0)
        rc = buf_append(out, "\":", 2);
    return rc != 0 ? rc : buf_json_text(out, value, strlen(value));
}

/* The record line, SPEC's format: the members in this order, "truncated" only
 * when set. Bytes that are not UTF-8 (a Latin-1 query string, say) are escaped
 * as \xNN: a record is never refused for the client's bytes. Fails only when
 * memory runs out. */
static int record_json(struct buf *out, const struct comparison *c, const char *ts,
                       const struct capture *legacy, const struct capture *newc,
                       const struct buf *diffs, const struct buf *noise, bool truncated,
                       const char *endpoint, const struct redact *red, struct buf *tmp)
{
    size_t bb = c->cfg->divlog_body_bytes;
    int rc = buf_puts(out, "{");
    if (rc == 0)
        rc = member_str(out, "ts", ts, true);
    if (rc == 0)
        rc = member_str(out, "id", c->reqid, false);
    if (rc == 0)
        rc = member_str(out, "route", c->rt->name, false);
    if (rc == 0)
        rc = member_str(out, "method", c->method, false);
    if (rc == 0)
        rc = member_str(out, "target", c->target, false);
    if (rc == 0)
        rc = member_str(out, "endpoint", endpoint, false);
    if (rc == 0)
        rc = member_str(out, "primary", c->primary_is_new ? "new" : "legacy", false);
    if (rc == 0)
        rc = buf_puts(out, ",\"legacy\":");
    if (rc == 0)
        rc = side_json(out, legacy);
    if (rc == 0)
        rc = buf_puts(out, ",\"new\":");
    if (rc == 0)
        rc = side_json(out, newc);
    if (rc == 0)
        rc = buf_puts(out, ",\"diffs\":[");
    if (rc == 0 && diffs->len)
        rc = buf_append(out, diffs->data, diffs->len);
    if (rc == 0)
        rc = buf_puts(out, "],\"noise\":[");
    if (rc == 0 && noise->len)
        rc = buf_append(out, noise->data, noise->len);
    if (rc == 0)
        rc = buf_puts(out, "],\"bodies\":{\"legacy\":");
    for (int i = 0; i < 2 && rc == 0; i++) {
        const struct capture *cap = i == 0 ? legacy : newc;
        buf_reset(tmp);
        if (i == 1)
            rc = buf_puts(out, ",\"new\":");
        if (rc == 0)
            rc = redact_excerpt(tmp, red, cap->body.data ? cap->body.data : "", cap->body.len, bb,
                                readiness_is_json(cap->parsed));
        if (rc == 0)
            rc = text_excerpt(out, tmp->data ? tmp->data : "", tmp->len, tmp->len);
    }
    if (rc == 0)
        rc = buf_puts(out, "},");
    /* The request, for replay; a head that does not parse again (never
     * expected: ficus wrote it) leaves the record without it. */
    if (rc == 0)
        rc = replay_request_json(out, c->cfg, c->req_head.data, c->req_head.len, c->req_body.data,
                                 c->req_body.len);
    if (rc == FICUS_EBADREQ)
        rc = buf_puts(out, "\"request\":null");
    if (rc == 0)
        rc = buf_puts(out, truncated ? ",\"truncated\":true}" : "}");
    return rc;
}

static void compare_one(struct comparison *c, struct shadow_worker *sw)
{
    struct diff_header *hl = sw->hdrs;
    struct diff_result *res = sw->res;
    const struct route_cfg *rt = c->rt;
    const struct capture *legacy = c->primary_is_new ? &c->shadow.cap : &c->primary;
    const struct capture *newc = c->primary_is_new ? &c->primary : &c->shadow.cap;
    if (c->over_budget || legacy->over_cap || newc->over_cap) {
        c->skipped = true;
        return;
    }
    diff_result_init(&res[1]); /* res[0] is initialised by diff_responses */
    struct diff_response rl, rn, rt2;
    to_diff_response(legacy, &rl, hl);
    to_diff_response(newc, &rn, hl + HTTP_MAX_HEADERS);
    /* shadow.correlate: a write's created ids are learnt before its own diff,
     * and correlated id pairs are equal in every diff of the route. */
    struct diff_rules rules = rt->diff;
    struct correlate_diff_ctx cd = {.m = rt->shadow_correlate.enabled ? c->rs->correlate : NULL,
                                    .now_ms = (int64_t)(io_now_us() / 1000)};
    if (cd.m != NULL) {
        /* The collection is learnt in legacy's terms: a client on new sent new's ids. */
        const char *tgt = c->target;
        size_t tlen = strlen(tgt);
        if (c->primary_is_new && c->cor_head.len > 0)
            correlate_head_target(c->cor_head.data, c->cor_head.len, &tgt, &tlen);
        correlate_observe(cd.m, &rt->shadow_correlate, c->method, tgt, tlen, &rl, &rn, cd.now_ms);
        rules.equal_hook = correlate_diff_equal;
        rules.equal_ctx = &cd;
    }
    diff_responses(&rules, &rl, &rn, &res[0]);

    struct route_state *rs = c->rs;
    bool learn = c->twin != NULL && legacy->error == NULL && c->twin->cap.error == NULL &&
                 !c->twin->cap.over_cap;
    if (learn) {
        to_diff_response(&c->twin->cap, &rt2, hl + 2 * HTTP_MAX_HEADERS);
        diff_responses(&rt->diff, &rl, &rt2, &res[1]);
    }
    /* The record is written as text here, off the control thread, without a
     * jansson tree: building one, dumping it and freeing it on another thread
     * cost more than the diff itself. */
    struct buf *diffs = &sw->diffs, *noise = &sw->noise, *stats = &sw->stats;
    buf_reset(diffs);
    buf_reset(noise);
    buf_reset(stats);
    size_t n_diffs = 0, n_noise_items = 0, n_stats = 0;
    struct readiness_result *rr = &sw->rr;
    const struct readiness_sides sides = {
        .legacy_status = rl.error == NULL ? rl.status : 0,
        .new_status = rn.error == NULL ? rn.status : 0,
        .legacy_error = rl.error,
        .new_error = rn.error,
        .legacy_ms = legacy->ms,
        .new_ms = newc->ms,
    };
    readiness_compare(rs, rt, c->method, c->target, &res[0], learn ? &res[1] : NULL, &sides, rr);
    c->warm = !rr->warming;
    c->n_noise = rr->n_noise;
    c->n_acked = rr->n_acked;
    c->divergent = rr->counted;
    struct redact_secrets secrets;
    redact_secrets_init(&secrets);
    const struct redact red = {c->cfg->redact_json, c->cfg->n_redact_json, &secrets};
    if (res[0].n > 0)
        readiness_secrets(&secrets, c->cfg, c->req_head.data, c->req_head.len, &sw->req_scratch);
    for (size_t i = 0; i < res[0].n; i++) {
        struct diff_item *it = &res[0].items[i];
        bool is_noise = rr->noise[i];
        struct buf *to = is_noise ? noise : diffs;
        size_t mark = to->len;
        bool first = is_noise ? n_noise_items == 0 : n_diffs == 0;
        int rc = first ? 0 : buf_puts(to, ",");
        if (is_noise) {
            if (rc == 0)
                rc = buf_json_text(to, it->path, strlen(it->path));
        } else {
            if (!rr->acked[i])
                c->kinds[it->kind]++;
            if (rc == 0)
                rc = readiness_item_json(to, c->cfg, &red, it, rr->acked[i]);
        }
        /* An item that cannot be written (out of memory: bytes that are not
         * UTF-8 are escaped) is left out of the record and of the path
         * statistics; the comparison still counts as divergent. */
        if (rc == 0)
            rc = divrec_add_stat(
                stats, is_noise ? DIVREC_NOISE : (int)it->kind | (rr->acked[i] ? DIVREC_ACK : 0),
                it->path);
        if (rc != 0) {
            to->len = mark;
            continue;
        }
        n_stats++;
        if (is_noise)
            n_noise_items++;
        else
            n_diffs++;
    }
    /* A comparison whose differences are all acknowledged is still written:
     * the log shows every difference, marked. */
    bool written = c->divergent || n_diffs > 0;
    if (written || n_noise_items > 0) {
        buf_reset(&sw->line);
        char ts[96];
        format_ts(sw, &c->ts, ts, sizeof(ts));
        if (record_json(&sw->line, c, ts, legacy, newc, diffs, noise, res[0].truncated,
                        rr->endpoint, &red, &sw->excerpt) == 0)
            c->record = divrec_new(rt->name, c->reqid, written, &sw->line, stats, n_stats);
        c->record_lost = c->record == NULL && written;
    }
    redact_secrets_dispose(&secrets);
    diff_result_dispose(&res[0]);
    diff_result_dispose(&res[1]);
}

static void on_batch_work(uv_work_t *req)
{
    struct shadow_worker *sw = req->data;
    for (struct comparison *c = sw->batch; c != NULL; c = c->next_job)
        compare_one(c, sw);
}

/* Reads one comparison's results back on the loop; a record goes to recs. */
static void finish_one(struct comparison *c, int status, struct divrec **recs, size_t *n_recs)
{
    struct worker *w = c->w;
    w->shadow->diff_jobs--;
    struct route_counters *rc = &c->rs->counters[w->id];
    if (status != 0 || c->skipped) {
        /* Over the budget, over a side's cap (shadow.max_body_bytes), or the
         * threadpool refused the batch. */
        count_outcome(c, status != 0      ? SHADOW_SKIPPED_QUEUE
                         : c->over_budget ? SHADOW_SKIPPED_MEMORY
                                          : SHADOW_SKIPPED_BODY);
        return;
    }
    const char *err = c->shadow.cap.error;
    count_outcome(c, err == NULL                   ? SHADOW_COMPARED
                     : strcmp(err, "timeout") == 0 ? SHADOW_TIMEOUT
                                                   : SHADOW_ERROR);
    counter_add(&rc->comparisons, 1);
    for (int k = 0; k < DIFF_KIND_N; k++) {
        if (c->kinds[k])
            counter_add(&rc->divergences[k], c->kinds[k]);
    }
    if (c->divergent)
        counter_add(&rc->divergent, 1);
    if (c->n_noise)
        counter_add(&rc->noise, c->n_noise);
    if (c->n_acked)
        counter_add(&rc->acknowledged, c->n_acked);
    if (c->warm) {
        counter_add(&rc->guard_comparisons, 1);
        if (c->divergent)
            counter_add(&rc->guard_divergent, 1);
    }
    if (c->record != NULL && w->srv->divlog != NULL) {
        recs[(*n_recs)++] = c->record;
        c->record = NULL;
    } else if (c->record_lost && w->srv->divlog != NULL) {
        divlog_lost(w->srv->divlog, 1); /* counted and logged like a full queue's */
    }
}

static void submit_batch(struct shadow_worker *sw);

static void shadow_worker_maybe_free(struct shadow_worker *sw)
{
    if (sw->closing && sw->handle_closed && !sw->running && sw->queue == NULL) {
        sw->w->shadow = NULL;
        buf_dispose(&sw->line);
        buf_dispose(&sw->diffs);
        buf_dispose(&sw->noise);
        buf_dispose(&sw->stats);
        buf_dispose(&sw->excerpt);
        while (sw->free_list != NULL) {
            struct comparison *c = sw->free_list;
            sw->free_list = c->next;
            comparison_dispose(c);
        }
        free(sw);
    }
}

static void on_batch_done(uv_work_t *req, int status)
{
    struct shadow_worker *sw = req->data;
    struct worker *w = sw->w;
    struct comparison *c = sw->batch;
    sw->batch = NULL;
    sw->running = false;
    struct divrec *recs[64];
    size_t n_recs = 0;
    while (c != NULL) {
        struct comparison *next = c->next_job;
        c->next_job = NULL;
        finish_one(c, status, recs, &n_recs);
        if (n_recs == sizeof(recs) / sizeof(recs[0])) {
            divlog_push_many(w->srv->divlog, recs, n_recs);
            n_recs = 0;
        }
        shadow_release(c);
        c = next;
    }
    if (n_recs > 0)
        divlog_push_many(w->srv->divlog, recs, n_recs);
    /* What became ready while this batch ran goes now: this callback runs late
     * in the loop turn already. */
    if (sw->queue != NULL)
        submit_batch(sw);
    shadow_worker_maybe_free(sw);
}

static void submit_batch(struct shadow_worker *sw)
{
    if (sw->running || sw->queue == NULL)
        return;
    sw->batch = sw->queue;
    sw->queue = NULL;
    sw->queue_tail = &sw->queue;
    sw->running = true;
    sw->work.data = sw;
    if (uv_queue_work(&sw->w->loop, &sw->work, on_batch_work, on_batch_done) != 0) {
        /* Only an invalid argument fails here; count the batch as skipped. */
        sw->running = false;
        struct comparison *c = sw->batch;
        sw->batch = NULL;
        while (c != NULL) {
            struct comparison *next = c->next_job;
            c->next_job = NULL;
            sw->diff_jobs--;
            count_outcome(c, SHADOW_SKIPPED_QUEUE);
            shadow_release(c);
            c = next;
        }
    }
}

static void on_idle(uv_idle_t *h)
{
    struct shadow_worker *sw = h->data;
    uv_idle_stop(h);
    sw->idle_active = false;
    submit_batch(sw);
}

static void on_idle_closed(uv_handle_t *h)
{
    struct shadow_worker *sw = h->data;
    sw->handle_closed = true;
    shadow_worker_maybe_free(sw);
}

static struct shadow_worker *shadow_worker_get(struct worker *w)
{
    if (w->shadow != NULL)
        return w->shadow;
    if (w->stopped)
        return NULL; /* its loop is closing handles: no new one */
    struct shadow_worker *sw = calloc(1, sizeof(*sw));
    if (sw == NULL)
        return NULL;
    sw->w = w;
    list_init(&sw->comparisons);
    sw->queue_tail = &sw->queue;
    uv_idle_init(&w->loop, &sw->idle);
    sw->idle.data = sw;
    w->shadow = sw;
    return sw;
}

static void maybe_compare(struct comparison *c)
{
    if (c->pending > 0 || c->queued)
        return;
    c->queued = true;
    slot_release(c);
    if (c->aborted)
        return;
    struct worker *w = c->w;
    struct shadow_worker *sw = w->shadow; /* made by shadow_begin */
    if (sw->diff_jobs >= SHADOW_MAX_JOBS) {
        count_outcome(c, SHADOW_SKIPPED_QUEUE);
        return;
    }
    c->refs++;
    sw->diff_jobs++;
    c->next_job = NULL;
    *sw->queue_tail = c;
    sw->queue_tail = &c->next_job;
    if (sw->running)
        return; /* the running batch's completion submits the queue */
    if (sw->closing) {
        submit_batch(sw);
    } else if (!sw->idle_active) {
        sw->idle_active = true;
        uv_idle_start(&sw->idle, on_idle);
    }
}

/* ---- the exchange's side ----------------------------------------------------------------------
 */

struct comparison *shadow_begin(struct worker *w, struct config *cfg, struct pool_set *ps,
                                const struct route_cfg *rt, const struct http_head *req,
                                bool primary_is_new, const char *reqid, struct buf *head,
                                bool body_known, int64_t content_length)
{
    struct route_state *rs = rt->state;
    struct route_counters *rc = &rs->counters[w->id];
    if (content_length > (int64_t)rt->shadow_max_body_bytes) {
        counter_add(&rc->shadow[SHADOW_SKIPPED_BODY], 1);
        buf_dispose(head);
        return NULL;
    }
    /* Admission before work: a shadow goes out only with a diff job slot for
     * it (every comparison begun and not yet compared holds one) and room in
     * the budget for what a comparison holds on average. Otherwise nothing
     * is sent or kept, and the skip is counted. */
    struct shadow_worker *sw = shadow_worker_get(w);
    if (sw == NULL || sw->diff_jobs + sw->slots >= SHADOW_MAX_JOBS) {
        counter_add(&rc->shadow[SHADOW_SKIPPED_QUEUE], 1);
        buf_dispose(head);
        return NULL;
    }
    if (atomic_load_explicit(&w->srv->shadow_memory, memory_order_relaxed) + (long long)sw->expect >
        (long long)cfg->shadow_memory_bytes) {
        counter_add(&rc->shadow[SHADOW_SKIPPED_MEMORY], 1);
        buf_dispose(head);
        return NULL;
    }
    int inflight = atomic_fetch_add_explicit(&rs->shadow_inflight, 1, memory_order_relaxed);
    if (inflight >= rt->shadow_max_inflight) {
        atomic_fetch_sub_explicit(&rs->shadow_inflight, 1, memory_order_relaxed);
        counter_add(&rc->shadow[SHADOW_SKIPPED_INFLIGHT], 1);
        buf_dispose(head);
        return NULL;
    }
    struct comparison *c = comparison_get(sw);
    if (c == NULL) {
        atomic_fetch_sub_explicit(&rs->shadow_inflight, 1, memory_order_relaxed);
        buf_dispose(head);
        return NULL;
    }
    c->refs = 1;
    c->w = w;
    c->slot = true;
    sw->slots++;
    /* What it will probably hold is reserved now, so that a burst of shadows
     * begun in one loop turn is admitted against it, not against the budget
     * before any of them has captured a byte. */
    c->reserved = c->promised = sw->expect;
    atomic_fetch_add_explicit(&w->srv->shadow_memory, (long long)sw->expect, memory_order_relaxed);
    c->cfg = config_ref(cfg);
    c->ps = ps;
    pool_set_ref(ps);
    c->rt = rt;
    c->rs = rs;
    c->primary_is_new = primary_is_new;
    c->is_head = req->is_head;
    c->t0 = io_now_us();
    snprintf(c->reqid, sizeof(c->reqid), "%s", reqid);
    /* "method\0target\0" in one buffer; the pointers are set once it is whole. */
    size_t tlen = req->target.len > 4096 ? 4096 : req->target.len;
    if (buf_append(&c->text, req->method.p, req->method.len) == 0 &&
        buf_append(&c->text, "", 1) == 0 && buf_append(&c->text, req->target.p, tlen) == 0) {
        c->method = c->text.data;
        c->target = c->text.data + req->method.len + 1;
    }
    clock_gettime(CLOCK_REALTIME, &c->ts); /* formatted off the loop, for a record only */
    c->req_head = *head;
    buf_init(head, 0);
    c->chunked_body = content_length == -1;
    c->req_body.max = rt->shadow_max_body_bytes;
    /* shadow.max_body_bytes caps each side: the request copy and every response. */
    c->primary.body.max = rt->shadow_max_body_bytes;
    c->shadow.cap.body.max = rt->shadow_max_body_bytes;
    c->shadow.c = c;
    c->shadow.is_shadow = true;
    c->shadow.backend = primary_is_new ? rt->legacy : rt->new_;
    c->pending = 2;
    /* The noise sample: safe requests only, since legacy sees them twice. */
    bool safe = span_eq(req->method, "GET") || span_eq(req->method, "HEAD") ||
                span_eq(req->method, "OPTIONS");
    /* Every safe request of an endpoint still warming up gets one, then the
     * configured share. */
    if (rt->noise && safe &&
        ((double)(worker_random(w) % 10000) < rt->noise_percent * 100.0 ||
         readiness_wants_twin(rs, rt, req->method, req->target))) {
        c->twin = calloc(1, sizeof(*c->twin));
        if (c->twin != NULL) {
            c->twin->c = c;
            c->twin->backend = rt->legacy;
            buf_init(&c->twin->cap.body, rt->shadow_max_body_bytes);
            c->pending++;
        }
    }
    if (c->method == NULL || c->target == NULL) {
        c->aborted = true;
    }
    list_push(&sw->comparisons, &c->node);
    if (body_known) {
        c->req_complete = true;
        launch(c);
    }
    return c;
}

void shadow_request_body(struct comparison *c, const char *p, size_t n)
{
    if (c == NULL || c->aborted || c->launched)
        return;
    int rc = capture_append(c, &c->req_body, p, n);
    if (rc != 0) {
        /* Too large to send again, or over the memory budget: the shadow is
         * skipped, never queued. */
        count_outcome(c, rc == FICUS_EFULL ? SHADOW_SKIPPED_MEMORY : SHADOW_SKIPPED_BODY);
        c->aborted = true;
        atomic_fetch_sub_explicit(&c->rs->shadow_inflight, 1, memory_order_relaxed);
        c->shadow.finished = true;
        c->pending = 0;
        c->queued = true;
        slot_release(c);
    }
}

void shadow_request_done(struct comparison *c)
{
    if (c == NULL || c->aborted || c->launched)
        return;
    c->req_complete = true;
    launch(c);
}

void shadow_primary_head(struct comparison *c, const char *head, size_t len)
{
    if (c == NULL || c->primary.parsed != NULL)
        return;
    if (buf_append(&c->primary.head, head, len) != 0)
        return;
    if (c->primary.head_mem == NULL)
        c->primary.head_mem = malloc(sizeof(struct http_head));
    if (c->primary.head_mem != NULL && http1_parse_head(c->primary.head_mem, c->primary.head.data,
                                                        c->primary.head.len, false) == 0) {
        c->primary.parsed = c->primary.head_mem;
        capture_presize(c, &c->primary.body, c->primary.parsed);
    }
}

void shadow_primary_body(struct comparison *c, const char *p, size_t n)
{
    if (c == NULL || c->primary.over_cap)
        return;
    if (capture_append(c, &c->primary.body, p, n) != 0)
        c->primary.over_cap = true;
}

static void primary_end(struct comparison *c)
{
    if (c->primary.done)
        return;
    c->primary.done = true;
    c->primary.ms = (double)(io_now_us() - c->t0) / 1000.0;
    c->pending--;
    maybe_compare(c);
}

void shadow_primary_done(struct comparison *c, int64_t bytes)
{
    if (c == NULL)
        return;
    c->primary.bytes = bytes;
    primary_end(c);
}

void shadow_primary_failed(struct comparison *c, const char *error)
{
    if (c == NULL || c->primary.done)
        return;
    if (error == NULL) {
        c->aborted = true;
    } else {
        c->primary.error = error;
    }
    if (!c->launched && !c->aborted) {
        /* The request body never completed: there is nothing to send. */
        c->aborted = true;
    }
    if (!c->launched) {
        if (!c->shadow.finished) {
            c->shadow.finished = true;
            atomic_fetch_sub_explicit(&c->rs->shadow_inflight, 1, memory_order_relaxed);
            c->pending--;
        }
        if (c->twin != NULL && !c->twin->finished) {
            c->twin->finished = true;
            c->pending--;
        }
    }
    primary_end(c);
}

void shadow_abort_all(struct worker *w)
{
    struct shadow_worker *sw = w->shadow;
    if (sw == NULL)
        return;
    struct list *head = &sw->comparisons;
    for (struct list *n = head->next, *next; n != head; n = next) {
        next = n->next;
        struct comparison *c = container_of(n, struct comparison, node);
        c->refs++;
        c->aborted = true;
        if (c->shadow.started)
            probe_finish(&c->shadow, "reset", false);
        if (c->twin != NULL && c->twin->started)
            probe_finish(c->twin, "reset", false);
        shadow_release(c);
    }
    if (!sw->closing) {
        /* The loop ends once every handle is closed: what is queued goes now,
         * and the batch machinery frees itself when its last batch is back. */
        sw->closing = true;
        uv_idle_stop(&sw->idle);
        sw->idle_active = false;
        submit_batch(sw);
        uv_close((uv_handle_t *)&sw->idle, on_idle_closed);
    }
}
