/* The state store, file or etcd; see store.h. The etcd store is one state
 * machine (enum es_phase, changed only by es_set_phase) for the connection:
 * version check, lease, full read, watch, live; any failure goes to backoff
 * and starts over on the next endpoint. Around it: the keepalive timer, the
 * once-a-second publication of counts and driver election, and the writes
 * (txns) that changes of the live state become. */
#include "ficus/store.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/etcdclient.h"
#include "ficus/etcdv3.h"
#include "ficus/io.h"
#include "ficus/log.h"
#include "ficus/state.h"
#include "ficus/worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BACKOFF_MIN_MS   100
#define BACKOFF_MAX_MS   5000
#define BACKOFF_FLOOR_MS 10    /* full jitter may draw 0: never spin */
#define BACKOFF_RESET_MS 10000 /* live this long: the next failure starts from the minimum */
#define KEEPALIVE_MIN_MS 300
#define REVOKE_MAX_MS    2000 /* a stop waits this long at most for the lease's revoke */
#define WRITE_RETRIES    5    /* a rollback that lost a compare tries again this often */
#define ERROR_TEXT_MAX   200

enum es_phase {
    ES_IDLE,     /* not started */
    ES_VERSION,  /* GET /version: is this etcd? */
    ES_LEASE,    /* granting the instance's lease */
    ES_READ,     /* reading the whole prefix, page by page */
    ES_WATCH,    /* the watch is asked for; waiting for "created" */
    ES_LIVE,     /* watching: every change is applied as it comes */
    ES_BACKOFF,  /* waiting before the next attempt */
    ES_STOPPING, /* revoking the lease */
    ES_STOPPED,
    ES_N
};

static const char *const phase_names[ES_N] = {"idle", "version", "lease",    "read",   "watch",
                                              "live", "backoff", "stopping", "stopped"};

/* A route key under the prefix. */
struct sroute {
    char name[FLEET_NAME_MAX + 1];
    int64_t mod_revision; /* the key's (a bad value's too); 0: no key */
    bool have;            /* value is the last good value */
    struct fleet_route value;
    uint64_t seen;         /* the read generation that saw the key */
    int writing;           /* txns in flight */
    bool pending_rollback; /* a guard rollback applied here while etcd was unreachable */
    char pending_detail[FLEET_DETAIL_MAX + 1];
};

/* Another instance (or this one) under instances/. */
struct sinst {
    char id[FLEET_ID_MAX + 1];
    bool have;
    struct fleet_instance value;
    int64_t mod_revision;
    uint64_t seen;
};

struct store {
    enum state_store_type type;
    struct server *srv;
    struct state_table *state;
    char id[FLEET_ID_MAX + 1];
    int64_t started_at; /* unix ms */
    /* etcd */
    struct config *cfg; /* the snapshot the store started with: endpoints, prefix */
    const struct state_store_cfg *sc;
    struct etcdclient *ec;
    enum es_phase phase;
    bool ever_live;
    bool need_read;
    bool seeded;      /* the first full read is done: routes of the cache were offered to etcd */
    int64_t revision; /* every change up to it is applied */
    int64_t read_revision; /* the full read's pinned revision */
    struct buf page_key;   /* where the next page starts */
    uint64_t generation;   /* of full reads */
    int64_t lease;
    int64_t lease_ttl;       /* seconds, as granted */
    uint64_t lease_renewed;  /* loop ms of the last keepalive answer */
    bool keepalive_inflight; /* a keepalive or a grant */
    bool publish_inflight;
    bool electing;
    bool driver_known;
    char driver_id[FLEET_ID_MAX + 1];
    int64_t driver_lease;
    uint64_t epoch; /* of connection attempts: answers to an older one are ignored */
    int attempt;    /* failures since the last healthy stretch */
    uint64_t live_since;
    bool contacted;
    uint64_t last_contact; /* loop ms */
    char last_error[ERROR_TEXT_MAX];
    char unavailable[ERROR_TEXT_MAX + 200];
    uv_timer_t backoff_timer;
    uv_timer_t keepalive_timer;
    int open_handles;
    struct sroute **routes;
    size_t n_routes;
    struct sinst **insts;
    size_t n_insts;
    uint64_t rng;
    unsigned long long ignored_values; /* malformed or foreign values seen */
};

static void es_connect(struct store *s);
static void es_fail(struct store *s, const char *why, bool next_endpoint);
static void es_flush_pending(struct store *s);

/* ---- small helpers ----------------------------------------------------------------------- */

/* The context of a call of the connection's sequence (version, grant, read
 * pages): the attempt it belongs to. */
struct scall {
    struct store *s;
    uint64_t epoch;
};

static struct scall *scall_new(struct store *s)
{
    struct scall *c = malloc(sizeof(*c));
    if (c != NULL) {
        c->s = s;
        c->epoch = s->epoch;
    }
    return c;
}

/* Takes the call's store and frees the context; NULL when the answer is of an
 * older attempt (or the store stops). */
static struct store *scall_take(void *ctx)
{
    struct scall *c = ctx;
    struct store *s = c->s;
    bool current = c->epoch == s->epoch;
    free(c);
    return current ? s : NULL;
}

/* Starts a call of the connection's sequence. */
static int seq_call(struct store *s, enum etcdv3_call call, const struct buf *body,
                    etcdclient_done_cb cb)
{
    struct scall *c = scall_new(s);
    if (c == NULL)
        return FICUS_ENOMEM;
    int rc = etcdclient_call(s->ec, call, body, s->sc->timeout_ms, cb, c);
    if (rc != 0)
        free(c);
    return rc;
}

static uint64_t loop_now(const struct store *s)
{
    return uv_now(s->srv->loop);
}

static void es_set_phase(struct store *s, enum es_phase p)
{
    if (s->phase == p)
        return;
    log_debug("store", "phase %s -> %s", phase_names[s->phase], phase_names[p]);
    s->phase = p;
}

static void contact(struct store *s)
{
    s->contacted = true;
    s->last_contact = loop_now(s);
}

static struct span prefix_span(const struct store *s)
{
    return (struct span){s->sc->prefix, strlen(s->sc->prefix)};
}

/* Appends the range_end that covers the prefix. */
static int put_prefix_end(const struct store *s, char *out, size_t *len)
{
    etcdv3_prefix_end(prefix_span(s), out, len);
    return 0;
}

static const struct route_cfg *route_cfg_of(const struct store *s, const char *name)
{
    const struct config *cfg = s->srv->cfg;
    int i = config_route_index(cfg, name);
    return i >= 0 ? &cfg->routes[i] : NULL;
}

static bool has_ramp(const struct store *s)
{
    const struct config *cfg = s->srv->cfg;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        if (cfg->routes[i].ramp)
            return true;
    }
    return false;
}

static struct sroute *sroute_find(struct store *s, const char *name, size_t len)
{
    for (size_t i = 0; i < s->n_routes; i++) {
        if (strlen(s->routes[i]->name) == len && memcmp(s->routes[i]->name, name, len) == 0)
            return s->routes[i];
    }
    return NULL;
}

/* The entry of a route key, made when new; NULL when the table is full or out
 * of memory. */
static struct sroute *sroute_get(struct store *s, const char *name, size_t len)
{
    struct sroute *r = sroute_find(s, name, len);
    if (r != NULL || len > FLEET_NAME_MAX)
        return r;
    if (s->n_routes >= STORE_ROUTES_MAX) {
        log_warn("store", "more than %d route keys under the prefix: route=%.*s ignored",
                 STORE_ROUTES_MAX, (int)len, name);
        return NULL;
    }
    struct sroute **v = realloc(s->routes, (s->n_routes + 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    s->routes = v;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    memcpy(r->name, name, len);
    r->name[len] = '\0';
    fleet_route_init(&r->value);
    s->routes[s->n_routes++] = r;
    return r;
}

static struct sinst *sinst_find(struct store *s, const char *id, size_t len)
{
    for (size_t i = 0; i < s->n_insts; i++) {
        if (strlen(s->insts[i]->id) == len && memcmp(s->insts[i]->id, id, len) == 0)
            return s->insts[i];
    }
    return NULL;
}

static void sinst_remove(struct store *s, struct sinst *in)
{
    for (size_t i = 0; i < s->n_insts; i++) {
        if (s->insts[i] == in) {
            s->insts[i] = s->insts[--s->n_insts];
            fleet_instance_dispose(&in->value);
            free(in);
            return;
        }
    }
}

/* A key for logs: printable ASCII, cut. */
static const char *shown_key(const char *k, size_t n, char *out, size_t size)
{
    size_t i = 0;
    for (; i < n && i + 4 < size; i++)
        out[i] = k[i] >= 0x20 && k[i] < 0x7f ? k[i] : '?';
    if (i < n) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

static void log_ignored(struct store *s, const char *key, size_t klen, const char *why)
{
    char k[160];
    s->ignored_values++;
    log_warn("store", "value ignored key=\"%s\" reason=\"%s\" (the last good value stays)",
             shown_key(key, klen, k, sizeof(k)), why);
}

/* Why changes are refused now. */
const char *store_unavailable_reason(struct store *s)
{
    if (s->type == STATE_STORE_FILE || s->phase == ES_LIVE)
        return "";
    char age[32] = "never";
    if (s->contacted)
        snprintf(age, sizeof(age), "%.1f s ago", (double)(loop_now(s) - s->last_contact) / 1000.0);
    snprintf(s->unavailable, sizeof(s->unavailable),
             "the state store (etcd) is unreachable: %s; last contact %s; nothing was "
             "changed, try again when it is back",
             s->last_error[0] ? s->last_error : "connecting", age);
    return s->unavailable;
}

/* ---- applying values --------------------------------------------------------------------- */

/* The configuration's shadow percent of a route, for values without one. */
static double cfg_shadow(const struct store *s, const char *name)
{
    const struct route_cfg *rt = route_cfg_of(s, name);
    return rt != NULL ? rt->shadow_percent : -1;
}

/* Applies the route's last good value to the live state, when the route is
 * configured. src: where it came from (our own writes are counted when they
 * succeed, not again when the watch brings them back). */
static void route_to_state(struct store *s, struct sroute *r, enum state_source src)
{
    struct route_state *rs = state_find(s->state, r->name);
    if (rs == NULL || !rs->present || !r->have)
        return;
    if (src == STATE_SRC_STORE && strcmp(r->value.updated_by, s->id) == 0)
        src = STATE_SRC_QUIET;
    if (state_apply(s->state, rs, &r->value, cfg_shadow(s, r->name), src) != 0) {
        log_error("store", "out of memory applying route=%s", r->name);
        return;
    }
    if (r->pending_rollback) {
        /* The guard rolled it back here while etcd was away: it stays rolled
         * back until that is written. */
        atomic_store(&rs->new_percent, 0.0);
        rs->ramp_stopped = true;
    }
}

/* A route key's value (from a read, a watch event or a txn's failure branch). */
static void apply_route_kv(struct store *s, struct span name, const struct etcdv3_kv *kv)
{
    struct sroute *r = sroute_get(s, name.p, name.len);
    if (r == NULL)
        return;
    r->seen = s->generation;
    if (kv->mod_revision <= r->mod_revision)
        return; /* this one or a newer one is applied already */
    r->mod_revision = kv->mod_revision;
    struct fleet_route v;
    char why[FLEET_WHY_MAX];
    fleet_route_init(&v);
    int rc = fleet_route_decode(kv->value, kv->value_len, &v, why);
    if (rc != 0) {
        log_ignored(s, kv->key, kv->key_len, rc == FICUS_ENOMEM ? "out of memory" : why);
        fleet_route_dispose(&v);
        return;
    }
    if (fleet_route_copy(&r->value, &v) == 0) {
        r->have = true;
        route_to_state(s, r, STATE_SRC_STORE);
    }
    fleet_route_dispose(&v);
}

/* A route key was deleted (by hand, or found gone by a full read): the route
 * goes back to its configuration. */
static void route_deleted(struct store *s, struct sroute *r, int64_t mod_revision)
{
    if (mod_revision > 0 && mod_revision <= r->mod_revision)
        return;
    bool had = r->have || r->mod_revision > 0;
    r->mod_revision = 0;
    r->have = false;
    fleet_route_dispose(&r->value);
    struct route_state *rs = state_find(s->state, r->name);
    if (!had || rs == NULL || !rs->present)
        return;
    log_info("store", "route key deleted route=%s: back to the configuration", r->name);
    state_reset(s->state, rs, route_cfg_of(s, r->name), STATE_SRC_STORE);
}

static void apply_instance_kv(struct store *s, struct span id, const struct etcdv3_kv *kv)
{
    struct sinst *in = sinst_find(s, id.p, id.len);
    if (in == NULL) {
        if (s->n_insts >= STORE_INSTANCES_MAX)
            return;
        struct sinst **v = realloc(s->insts, (s->n_insts + 1) * sizeof(*v));
        if (v == NULL)
            return;
        s->insts = v;
        in = calloc(1, sizeof(*in));
        if (in == NULL)
            return;
        memcpy(in->id, id.p, id.len);
        in->id[id.len] = '\0';
        fleet_instance_init(&in->value);
        s->insts[s->n_insts++] = in;
    }
    in->seen = s->generation;
    if (kv->mod_revision <= in->mod_revision)
        return;
    in->mod_revision = kv->mod_revision;
    char why[FLEET_WHY_MAX];
    int rc = fleet_instance_decode(kv->value, kv->value_len, &in->value, why);
    if (rc != 0) {
        in->have = false;
        log_ignored(s, kv->key, kv->key_len, rc == FICUS_ENOMEM ? "out of memory" : why);
        return;
    }
    in->have = true;
}

static void apply_driver_kv(struct store *s, const struct etcdv3_kv *kv)
{
    struct fleet_driver d;
    char why[FLEET_WHY_MAX];
    int rc = fleet_driver_decode(kv->value, kv->value_len, &d, why);
    s->driver_known = true; /* the key exists: nobody else can create it */
    s->driver_lease = kv->lease;
    if (rc != 0) {
        s->driver_id[0] = '\0';
        log_ignored(s, kv->key, kv->key_len, why);
        return;
    }
    bool was_us = strcmp(s->driver_id, s->id) == 0;
    snprintf(s->driver_id, sizeof(s->driver_id), "%s", d.id);
    bool us = strcmp(d.id, s->id) == 0 && kv->lease == s->lease;
    if (us != was_us)
        log_info("store", "ramp driver is %s%s", d.id, us ? " (this instance)" : "");
}

/* One kv of a read or a PUT event. */
static void apply_kv(struct store *s, const struct etcdv3_kv *kv)
{
    struct span name;
    switch (fleet_key_parse(prefix_span(s), (struct span){kv->key, kv->key_len}, &name)) {
    case FLEET_KEY_ROUTE:
        apply_route_kv(s, name, kv);
        break;
    case FLEET_KEY_INSTANCE:
        apply_instance_kv(s, name, kv);
        break;
    case FLEET_KEY_RAMP_DRIVER:
        apply_driver_kv(s, kv);
        break;
    case FLEET_KEY_FOREIGN:
        log_ignored(s, kv->key, kv->key_len, "not a key ficus writes under the prefix");
        break;
    }
}

static void apply_delete(struct store *s, const struct etcdv3_kv *kv)
{
    struct span name;
    switch (fleet_key_parse(prefix_span(s), (struct span){kv->key, kv->key_len}, &name)) {
    case FLEET_KEY_ROUTE: {
        struct sroute *r = sroute_find(s, name.p, name.len);
        if (r != NULL)
            route_deleted(s, r, kv->mod_revision);
        break;
    }
    case FLEET_KEY_INSTANCE: {
        struct sinst *in = sinst_find(s, name.p, name.len);
        if (in != NULL)
            sinst_remove(s, in);
        break;
    }
    case FLEET_KEY_RAMP_DRIVER:
        if (s->driver_known && strcmp(s->driver_id, s->id) == 0)
            log_info("store", "ramp driver key gone: this instance no longer drives the ramp");
        s->driver_known = false;
        s->driver_id[0] = '\0';
        s->driver_lease = 0;
        break;
    case FLEET_KEY_FOREIGN:
        break;
    }
}

/* ---- writes (the table's writer) --------------------------------------------------------- */

/* One change on its way to etcd. */
struct swrite {
    struct store *s;
    char route[FLEET_NAME_MAX + 1];
    struct fleet_change ch;  /* its strings point into copy */
    struct fleet_route copy; /* holds the change's detail and acknowledgements */
    enum state_source src;
    struct fleet_route next; /* the value written */
    int tries;
    bool seed; /* offering a cached route to an etcd without it */
    state_change_cb cb;
    void *ctx;
};

static void write_attempt(struct swrite *w);

static void write_free(struct swrite *w)
{
    fleet_route_dispose(&w->copy);
    fleet_route_dispose(&w->next);
    free(w);
}

static void write_end(struct swrite *w, int rc, const char *why)
{
    if (w->cb != NULL)
        w->cb(w->ctx, rc, why);
    write_free(w);
}

/* Is the error one of the member or the connection (fail over), rather than
 * of the request? */
static bool transport_trouble(int status, const struct etcdv3_answer *a)
{
    if (status == FICUS_ESTORE && a != NULL)
        return etcdv3_error_kind(&a->error) == ETCDV3_ERR_UNAVAILABLE;
    return status != 0 && status != FICUS_ESTORE && status != UV_ECANCELED;
}

static const char *status_text(int status, const struct etcdv3_answer *a)
{
    if (status == FICUS_ESTORE && a != NULL)
        return a->error.message;
    if (status == FICUS_EBADRESP && a != NULL && a->why[0] != '\0')
        return a->why;
    return ficus_strerror(status);
}

static void on_write(void *ctx, int status, int endpoint, struct etcdv3_answer *a)
{
    (void)endpoint;
    struct swrite *w = ctx;
    struct store *s = w->s;
    struct sroute *r = sroute_find(s, w->route, strlen(w->route));
    if (r != NULL)
        r->writing--;
    if (status == UV_ECANCELED) {
        write_end(w, FICUS_EUNAVAILABLE, "ficus is stopping; the change may not have been written");
        return;
    }
    if (status != 0) {
        char why[ERROR_TEXT_MAX + 120];
        bool maybe = status == FICUS_ETIMEOUT || status == UV_EOF || status == UV_ECONNRESET ||
                     status == UV_EPIPE || status == FICUS_EBADRESP;
        if (maybe)
            /* The txn may have reached etcd: it may still be applied. */
            snprintf(why, sizeof(why),
                     "the state store (etcd) did not answer in time (%s); the change may still "
                     "be applied: look before trying again",
                     status_text(status, a));
        else
            snprintf(why, sizeof(why), "the state store (etcd) did not take the change: %s",
                     status_text(status, a));
        if (transport_trouble(status, a))
            es_fail(s, status_text(status, a), true);
        write_end(w,
                  status == FICUS_ESTORE && !transport_trouble(status, a) ? FICUS_ESTORE
                                                                          : FICUS_EUNAVAILABLE,
                  why);
        return;
    }
    contact(s);
    if (r == NULL) {
        write_end(w, FICUS_ENOMEM, "out of memory");
        return;
    }
    if (a->succeeded) {
        if (w->src == STATE_SRC_GUARD && w->ch.kind == FLEET_CHANGE_ROLLBACK)
            r->pending_rollback = false;
        /* Applied here now; the watch brings the same revision back, which is
         * then skipped. */
        if (a->header.revision > r->mod_revision) {
            r->mod_revision = a->header.revision;
            if (fleet_route_copy(&r->value, &w->next) == 0)
                r->have = true;
            route_to_state(s, r, w->src);
        } else {
            state_count_change(s->state, w->src); /* the watch applied it first */
        }
        if (w->seed)
            log_info("store", "route written to etcd from the state file route=%s", w->route);
        write_end(w, 0, "");
        return;
    }
    /* The compare failed: the failure branch read the current value. */
    if (a->n_kvs > 0) {
        struct span name = {w->route, strlen(w->route)};
        apply_route_kv(s, name, &a->kvs[0]);
    } else {
        route_deleted(s, r, 0);
    }
    if (w->seed) {
        write_end(w, 0, ""); /* etcd has the route: its value wins */
        return;
    }
    if (w->ch.kind == FLEET_CHANGE_ROLLBACK && ++w->tries < WRITE_RETRIES) {
        write_attempt(w); /* a rollback always wins: again over the new value */
        return;
    }
    write_end(w, FICUS_ECONFLICT,
              w->src == STATE_SRC_RAMP
                  ? "the route or the ramp driver changed meanwhile"
                  : "the route was changed by another instance meanwhile; its current state is "
                    "applied: look and try again");
}

static void write_attempt(struct swrite *w)
{
    struct store *s = w->s;
    struct sroute *r = sroute_get(s, w->route, strlen(w->route));
    struct route_state *rs = state_find(s->state, w->route);
    if (r == NULL || rs == NULL) {
        write_end(w, FICUS_ENOMEM, "out of memory");
        return;
    }
    struct fleet_route cur;
    fleet_route_init(&cur);
    int rc = r->have ? fleet_route_copy(&cur, &r->value) : state_value(rs, &cur);
    if (rc == 0 && w->seed)
        rc = fleet_route_copy(&w->next, &cur);
    else if (rc == 0)
        rc = fleet_route_change(&cur, &w->ch, state_now_ms(), s->id, &w->next);
    fleet_route_dispose(&cur);
    if (rc != 0) {
        write_end(w, rc, rc == -EINVAL ? "the change is not valid" : "out of memory");
        return;
    }
    struct buf key, value, body;
    buf_init(&key, 0);
    buf_init(&value, 0);
    buf_init(&body, 0);
    char dkey[FLEET_NAME_MAX + 300];
    snprintf(dkey, sizeof(dkey), "%s" FLEET_DRIVER_KEY, s->sc->prefix);
    rc = fleet_key_route(&key, s->sc->prefix, w->route);
    if (rc == 0)
        rc = fleet_route_encode(&value, &w->next);
    if (rc == 0) {
        struct span k = {key.data, key.len};
        struct etcdv3_compare cmp[2] = {
            {.key = k,
             .target = ETCDV3_CMP_MOD,
             .result = ETCDV3_CMP_EQUAL,
             .value = w->seed ? 0 : r->mod_revision},
            {.key = {dkey, strlen(dkey)},
             .target = ETCDV3_CMP_LEASE,
             .result = ETCDV3_CMP_EQUAL,
             .value = s->lease},
        };
        /* A ramp step holds only while this instance drives the ramp. */
        size_t n_cmp = w->src == STATE_SRC_RAMP ? 2 : 1;
        struct etcdv3_op put = {.kind = ETCDV3_OP_PUT, .key = k, .value = {value.data, value.len}};
        struct etcdv3_op get = {.kind = ETCDV3_OP_RANGE, .key = k};
        rc = etcdv3_txn_body(&body, cmp, n_cmp, &put, 1, &get, 1);
    }
    if (rc == 0)
        rc = etcdclient_call(s->ec, ETCDV3_TXN, &body, s->sc->timeout_ms, on_write, w);
    buf_dispose(&key);
    buf_dispose(&value);
    buf_dispose(&body);
    if (rc != 0) {
        write_end(w, rc == FICUS_ENOMEM ? rc : FICUS_EUNAVAILABLE, ficus_strerror(rc));
        return;
    }
    r->writing++;
}

/* The writer the etcd store registers with the state table. */
static void etcd_change(void *wctx, struct route_state *rs, const struct fleet_change *ch,
                        enum state_source src, state_change_cb cb, void *ctx)
{
    struct store *s = wctx;
    if (s->phase != ES_LIVE) {
        if (ch->kind == FLEET_CHANGE_ROLLBACK && src == STATE_SRC_GUARD &&
            s->phase != ES_STOPPING && s->phase != ES_STOPPED) {
            /* New's traffic stops here now; the fleet hears once etcd is back. */
            struct sroute *r = sroute_get(s, rs->name, strlen(rs->name));
            struct fleet_route cur, next;
            fleet_route_init(&cur);
            fleet_route_init(&next);
            if (state_value(rs, &cur) == 0 &&
                fleet_route_change(&cur, ch, state_now_ms(), s->id, &next) == 0)
                state_apply(s->state, rs, &next, -1, STATE_SRC_GUARD);
            fleet_route_dispose(&cur);
            fleet_route_dispose(&next);
            if (r != NULL) {
                r->pending_rollback = true;
                snprintf(r->pending_detail, sizeof(r->pending_detail), "%s", ch->detail);
            }
        }
        if (cb != NULL)
            cb(ctx, FICUS_EUNAVAILABLE, store_unavailable_reason(s));
        return;
    }
    struct sroute *r = sroute_get(s, rs->name, strlen(rs->name));
    if (r != NULL && r->writing > 0 && src != STATE_SRC_ADMIN) {
        if (cb != NULL)
            cb(ctx, FICUS_EFULL, "a write of this route is under way");
        return;
    }
    struct swrite *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        if (cb != NULL)
            cb(ctx, FICUS_ENOMEM, "out of memory");
        return;
    }
    w->s = s;
    snprintf(w->route, sizeof(w->route), "%s", rs->name);
    w->src = src;
    w->cb = cb;
    w->ctx = ctx;
    w->ch = *ch;
    fleet_route_init(&w->copy);
    fleet_route_init(&w->next);
    /* The change's strings and acknowledgements are the caller's: copied. */
    struct fleet_route tmp;
    fleet_route_init(&tmp);
    tmp.rollback_detail = ch->detail;
    tmp.acks = ch->acks;
    tmp.n_acks = ch->n_acks;
    if (fleet_route_copy(&w->copy, &tmp) != 0) {
        write_end(w, FICUS_ENOMEM, "out of memory");
        return;
    }
    w->ch.detail = w->copy.rollback_detail;
    w->ch.acks = w->copy.acks;
    w->ch.n_acks = w->copy.n_acks;
    write_attempt(w);
}

static const struct state_writer etcd_writer = {.change = etcd_change};

/* Writes the guard rollbacks applied while etcd was away. */
static void es_flush_pending(struct store *s)
{
    for (size_t i = 0; i < s->n_routes; i++) {
        struct sroute *r = s->routes[i];
        struct route_state *rs = state_find(s->state, r->name);
        if (!r->pending_rollback || r->writing > 0 || rs == NULL)
            continue;
        if (r->have && r->value.new_percent == 0 && r->value.rollback != FLEET_ROLLBACK_NONE &&
            r->value.ramp_stopped) {
            r->pending_rollback = false; /* the fleet rolled it back meanwhile */
            continue;
        }
        log_info("store", "writing the guard rollback made while etcd was unreachable route=%s",
                 r->name);
        struct fleet_change ch;
        fleet_change_init(&ch, FLEET_CHANGE_ROLLBACK);
        ch.rollback = FLEET_ROLLBACK_GUARD;
        ch.detail = r->pending_detail;
        etcd_change(s, rs, &ch, STATE_SRC_GUARD, NULL, NULL);
    }
}

/* After the first full read: routes the state file had that etcd has not (the
 * first start after moving from the file store) are offered to etcd, created
 * only where the key is still absent. */
static void es_seed(struct store *s)
{
    if (s->seeded)
        return;
    s->seeded = true;
    const struct config *cfg = s->srv->cfg;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        struct route_state *rs = cfg->routes[i].state;
        struct sroute *r = sroute_find(s, cfg->routes[i].name, strlen(cfg->routes[i].name));
        if (rs == NULL || !rs->overridden || (r != NULL && (r->have || r->mod_revision > 0)))
            continue;
        if ((r = sroute_get(s, rs->name, strlen(rs->name))) == NULL)
            continue;
        struct swrite *w = calloc(1, sizeof(*w));
        if (w == NULL)
            return;
        w->s = s;
        snprintf(w->route, sizeof(w->route), "%s", rs->name);
        w->src = STATE_SRC_QUIET;
        w->seed = true;
        fleet_change_init(&w->ch, FLEET_CHANGE_PERCENT);
        fleet_route_init(&w->copy);
        fleet_route_init(&w->next);
        write_attempt(w);
    }
}

/* ---- the connection: backoff ------------------------------------------------------------- */

static void on_backoff(uv_timer_t *t)
{
    struct store *s = t->data;
    if (s->phase == ES_BACKOFF)
        es_connect(s);
}

/* Something failed: the watch stops, and after a backoff the next attempt
 * starts (on the next endpoint when this one is to blame). */
static void es_fail(struct store *s, const char *why, bool next_endpoint)
{
    if (s->phase == ES_STOPPING || s->phase == ES_STOPPED || s->phase == ES_BACKOFF ||
        s->phase == ES_IDLE)
        return;
    bool was_live = s->phase == ES_LIVE;
    snprintf(s->last_error, sizeof(s->last_error), "%s: %s",
             etcdclient_endpoint_url(s->ec, etcdclient_endpoint(s->ec)), why);
    if (was_live)
        log_warn("store",
                 "state store unreachable: %s (serving the last state; reconnecting with backoff)",
                 s->last_error);
    else
        log_info("store", "state store attempt failed in phase %s: %s", phase_names[s->phase],
                 s->last_error);
    etcdclient_watch_stop(s->ec);
    s->epoch++; /* answers still coming for this attempt are dropped */
    if (was_live && loop_now(s) - s->live_since >= BACKOFF_RESET_MS)
        s->attempt = 0;
    if (next_endpoint)
        etcdclient_next_endpoint(s->ec);
    uint64_t cap = (uint64_t)BACKOFF_MIN_MS << (s->attempt < 6 ? s->attempt : 6);
    if (cap > BACKOFF_MAX_MS)
        cap = BACKOFF_MAX_MS;
    uint64_t delay = xorshift64s(&s->rng) % (cap + 1); /* full jitter */
    if (delay < BACKOFF_FLOOR_MS)
        delay = BACKOFF_FLOOR_MS;
    s->attempt++;
    es_set_phase(s, ES_BACKOFF);
    uv_timer_start(&s->backoff_timer, on_backoff, delay, 0);
}

/* ---- the connection: watch ---------------------------------------------------------------- */

static int on_watch_message(void *ctx, const struct etcdv3_watch_msg *m)
{
    struct store *s = ctx;
    contact(s);
    switch (m->kind) {
    case ETCDV3_MSG_CREATED:
        if (s->phase == ES_WATCH) {
            es_set_phase(s, ES_LIVE);
            s->live_since = loop_now(s);
            s->last_error[0] = '\0';
            if (!s->ever_live || s->attempt > 0)
                log_info("store", "state store live endpoint=%s revision=%lld",
                         etcdclient_endpoint_url(s->ec, etcdclient_endpoint(s->ec)),
                         (long long)s->revision);
            s->ever_live = true;
            es_flush_pending(s);
        }
        return 0;
    case ETCDV3_MSG_EVENTS:
        for (size_t i = 0; i < m->n_events; i++) {
            if (m->events[i].type == ETCDV3_EVENT_PUT)
                apply_kv(s, &m->events[i].kv);
            else
                apply_delete(s, &m->events[i].kv);
        }
        if (!m->fragment) {
            int64_t rev = m->last_revision > 0 ? m->last_revision : m->header.revision;
            if (rev > s->revision)
                s->revision = rev;
        }
        return 0;
    case ETCDV3_MSG_PROGRESS:
        if (m->header.revision > s->revision)
            s->revision = m->header.revision;
        return 0;
    case ETCDV3_MSG_CANCELED:
        if (m->compact_revision > 0) {
            log_warn("store",
                     "revision %lld is compacted (oldest kept: %lld): reading everything again",
                     (long long)(s->revision + 1), (long long)m->compact_revision);
            s->need_read = true;
            es_fail(s, "watch start revision compacted", false);
        } else {
            es_fail(s,
                    m->cancel_reason && m->cancel_reason[0] ? m->cancel_reason : "watch canceled",
                    true);
        }
        return 1;
    case ETCDV3_MSG_ERROR:
        es_fail(s, m->error.message[0] ? m->error.message : "watch error", true);
        return 1;
    }
    return 0;
}

static void on_watch_end(void *ctx, int status, const char *why)
{
    struct store *s = ctx;
    char w[ERROR_TEXT_MAX];
    snprintf(w, sizeof(w), "watch ended: %s", status == 0 ? why : ficus_strerror(status));
    es_fail(s, w, true);
}

static const struct etcdclient_watch_handlers watch_handlers = {
    .on_message = on_watch_message,
    .on_end = on_watch_end,
};

static void es_watch(struct store *s)
{
    es_set_phase(s, ES_WATCH);
    char end[300];
    size_t end_len = 0;
    put_prefix_end(s, end, &end_len);
    struct etcdv3_watch_create wc = {
        .key = prefix_span(s),
        .range_end = {end, end_len},
        .start_revision = s->revision + 1,
        .prev_kv = false,
        .progress_notify = true,
        .fragment = true,
    };
    struct buf body;
    buf_init(&body, 0);
    int rc = etcdv3_watch_create_body(&body, &wc);
    if (rc == 0)
        rc = etcdclient_watch(s->ec, &body, s->sc->timeout_ms, &watch_handlers, s);
    buf_dispose(&body);
    if (rc != 0)
        es_fail(s, ficus_strerror(rc), false);
}

/* ---- the connection: the full read ------------------------------------------------------- */

static void es_read_page(struct store *s);

static void es_read_done(struct store *s)
{
    /* What the read did not see is gone. */
    for (size_t i = 0; i < s->n_routes; i++) {
        struct sroute *r = s->routes[i];
        if (r->seen != s->generation && (r->have || r->mod_revision > 0))
            route_deleted(s, r, 0);
    }
    for (size_t i = s->n_insts; i-- > 0;) {
        if (s->insts[i]->seen != s->generation)
            sinst_remove(s, s->insts[i]);
    }
    s->revision = s->read_revision;
    s->need_read = false;
    state_set_revision(s->state, s->revision);
    state_save_if_dirty(s->state);
    log_info("store", "state read from etcd revision=%lld routes=%zu instances=%zu",
             (long long)s->revision, s->n_routes, s->n_insts);
    es_seed(s);
    es_watch(s);
}

static void on_range(void *ctx, int status, int endpoint, struct etcdv3_answer *a)
{
    (void)endpoint;
    struct store *s = scall_take(ctx);
    if (s == NULL || s->phase != ES_READ)
        return;
    if (status == FICUS_ESTORE && etcdv3_error_kind(&a->error) == ETCDV3_ERR_COMPACTED) {
        log_info("store", "the read's revision was compacted meanwhile: reading again");
        s->read_revision = 0;
        s->generation++;
        buf_reset(&s->page_key);
        buf_puts(&s->page_key, s->sc->prefix);
        s->driver_known = false;
        es_read_page(s);
        return;
    }
    if (status != 0) {
        char why[ERROR_TEXT_MAX];
        snprintf(why, sizeof(why), "read: %s", status_text(status, a));
        es_fail(s, why, true);
        return;
    }
    contact(s);
    if (s->read_revision == 0)
        s->read_revision = a->header.revision;
    for (size_t i = 0; i < a->n_kvs; i++)
        apply_kv(s, &a->kvs[i]);
    if (a->more && a->n_kvs > 0) {
        const struct etcdv3_kv *last = &a->kvs[a->n_kvs - 1];
        buf_reset(&s->page_key);
        if (buf_append(&s->page_key, last->key, last->key_len) != 0 ||
            buf_append(&s->page_key, "", 1) != 0) {
            es_fail(s, "out of memory", false);
            return;
        }
        es_read_page(s);
        return;
    }
    es_read_done(s);
}

static void es_read_page(struct store *s)
{
    char end[300];
    size_t end_len = 0;
    put_prefix_end(s, end, &end_len);
    struct buf body;
    buf_init(&body, 0);
    int rc = etcdv3_range_body(&body, (struct span){s->page_key.data, s->page_key.len},
                               (struct span){end, end_len}, STORE_PAGE, s->read_revision);
    if (rc == 0)
        rc = seq_call(s, ETCDV3_RANGE, &body, on_range);
    buf_dispose(&body);
    if (rc != 0)
        es_fail(s, ficus_strerror(rc), false);
}

static void es_read(struct store *s)
{
    es_set_phase(s, ES_READ);
    s->generation++;
    s->read_revision = 0;
    s->driver_known = false; /* set again when the read sees the key */
    s->driver_id[0] = '\0';
    buf_reset(&s->page_key);
    buf_puts(&s->page_key, s->sc->prefix);
    es_read_page(s);
}

/* ---- the connection: lease --------------------------------------------------------------- */

static void es_after_lease(struct store *s)
{
    if (s->need_read)
        es_read(s);
    else
        es_watch(s);
}

static void on_keepalive_timer(uv_timer_t *t);

static void arm_keepalive(struct store *s)
{
    uint64_t every = (uint64_t)(s->lease_ttl > 0 ? s->lease_ttl : s->sc->lease_ttl_s) * 1000 / 3;
    if (every < KEEPALIVE_MIN_MS)
        every = KEEPALIVE_MIN_MS;
    uv_timer_start(&s->keepalive_timer, on_keepalive_timer, every, every);
}

static void lease_lost(struct store *s, const char *why);

static void on_grant(void *ctx, int status, int endpoint, struct etcdv3_answer *a)
{
    (void)endpoint;
    struct scall *c = ctx;
    struct store *s = c->s;
    bool current = scall_take(ctx) != NULL;
    s->keepalive_inflight = false;
    if (s->phase == ES_STOPPING || s->phase == ES_STOPPED || status == UV_ECANCELED)
        return;
    if (!current) {
        /* An older attempt's: a lease granted then is left to expire. */
        return;
    }
    if (status != 0 || a->lease_id == 0) {
        char why[ERROR_TEXT_MAX];
        snprintf(why, sizeof(why), "lease grant: %s",
                 status != 0 ? status_text(status, a) : "no lease id");
        es_fail(s, why, true);
        return;
    }
    contact(s);
    s->lease = a->lease_id;
    s->lease_ttl = a->ttl > 0 ? a->ttl : s->sc->lease_ttl_s;
    s->lease_renewed = loop_now(s);
    log_info("store", "lease granted id=%llx ttl=%llds instance=%s", (unsigned long long)s->lease,
             (long long)s->lease_ttl, s->id);
    arm_keepalive(s);
    if (s->phase == ES_LEASE)
        es_after_lease(s);
}

static void es_grant(struct store *s)
{
    struct buf body;
    buf_init(&body, 0);
    int rc = etcdv3_lease_grant_body(&body, s->sc->lease_ttl_s, 0);
    if (rc == 0)
        rc = seq_call(s, ETCDV3_LEASE_GRANT, &body, on_grant);
    buf_dispose(&body);
    if (rc != 0) {
        es_fail(s, ficus_strerror(rc), false);
        return;
    }
    s->keepalive_inflight = true;
}

/* The lease expired or was revoked: its keys are gone (the instance key, and
 * the driver key when this instance held it). A new one is granted while
 * live; the instance key comes back at the next publication. */
static void lease_lost(struct store *s, const char *why)
{
    log_warn("store", "lease %llx lost (%s): granting a new one", (unsigned long long)s->lease,
             why);
    s->lease = 0;
    if (s->driver_known && strcmp(s->driver_id, s->id) == 0)
        s->driver_lease = -1; /* not ours any more, whatever the watch says next */
    if (s->phase == ES_LIVE && !s->keepalive_inflight)
        es_grant(s);
}

static void on_keepalive(void *ctx, int status, int endpoint, struct etcdv3_answer *a)
{
    (void)endpoint;
    struct store *s = ctx;
    s->keepalive_inflight = false;
    if (s->phase == ES_STOPPING || s->phase == ES_STOPPED || status == UV_ECANCELED)
        return;
    if (status == 0 && a->ttl > 0) {
        contact(s);
        s->lease_renewed = loop_now(s);
        return;
    }
    if ((status == 0 && a->ttl == 0) ||
        (status == FICUS_ESTORE && etcdv3_error_kind(&a->error) == ETCDV3_ERR_LEASE_NOT_FOUND)) {
        contact(s);
        lease_lost(s, "expired");
        return;
    }
    char why[ERROR_TEXT_MAX];
    snprintf(why, sizeof(why), "keepalive: %s", status_text(status, a));
    es_fail(s, why, true);
}

static void on_keepalive_timer(uv_timer_t *t)
{
    struct store *s = t->data;
    if (s->lease == 0 || s->keepalive_inflight || s->phase == ES_BACKOFF ||
        s->phase == ES_VERSION || s->phase == ES_STOPPING || s->phase == ES_STOPPED)
        return;
    struct buf body;
    buf_init(&body, 0);
    int rc = etcdv3_lease_id_body(&body, s->lease);
    if (rc == 0)
        rc = etcdclient_call(s->ec, ETCDV3_LEASE_KEEPALIVE, &body, s->sc->timeout_ms, on_keepalive,
                             s);
    buf_dispose(&body);
    if (rc == 0)
        s->keepalive_inflight = true;
}

/* ---- the connection: version and start --------------------------------------------------- */

/* The endpoint answered but is no etcd (or too old): a start stops here. */
static void not_etcd(struct store *s, int endpoint, const char *why)
{
    const char *url = etcdclient_endpoint_url(s->ec, endpoint);
    if (!s->ever_live) {
        log_error("store", "endpoint=%s is not etcd 3.4 or newer: %s", url, why);
        fprintf(stderr, "%s: state_store.endpoints[%d]: %s is not etcd 3.4 or newer (%s)\n",
                s->cfg->path, endpoint, url, why);
        s->srv->exit_code = 1;
        es_set_phase(s, ES_BACKOFF); /* nothing more is tried: the process stops */
        if (s->srv->stop != NULL)
            s->srv->stop(s->srv);
        return;
    }
    char w[ERROR_TEXT_MAX + 32];
    snprintf(w, sizeof(w), "not etcd 3.4 or newer: %s", why);
    es_fail(s, w, true);
}

static void on_version(void *ctx, int status, int endpoint, struct etcdv3_answer *a)
{
    struct store *s = scall_take(ctx);
    if (s == NULL || s->phase != ES_VERSION)
        return;
    if (status == FICUS_EBADRESP ||
        (status == FICUS_ESTORE && etcdv3_error_kind(&a->error) == ETCDV3_ERR_NOT_ETCD)) {
        char why[ERROR_TEXT_MAX];
        if (status == FICUS_ESTORE)
            snprintf(why, sizeof(why), "GET /version answered %d", a->error.http_status);
        else
            snprintf(why, sizeof(why), "%s",
                     a != NULL && a->why[0] ? a->why : "GET /version got no HTTP answer");
        not_etcd(s, endpoint, why);
        return;
    }
    if (status != 0) {
        char why[ERROR_TEXT_MAX];
        snprintf(why, sizeof(why), "version: %s", status_text(status, a));
        es_fail(s, why, true);
        return;
    }
    contact(s);
    log_debug("store", "endpoint=%s etcd=%s cluster=%s", etcdclient_endpoint_url(s->ec, endpoint),
              a->server_version, a->cluster_version);
    /* A lease not renewed for its whole TTL is gone for sure. */
    if (s->lease != 0 && loop_now(s) - s->lease_renewed >= (uint64_t)s->lease_ttl * 1000) {
        s->lease = 0;
        s->driver_lease = -1;
    }
    if (s->lease == 0) {
        es_set_phase(s, ES_LEASE);
        es_grant(s);
        return;
    }
    es_after_lease(s);
}

static void es_connect(struct store *s)
{
    s->epoch++;
    es_set_phase(s, ES_VERSION);
    int rc = seq_call(s, ETCDV3_VERSION, NULL, on_version);
    if (rc != 0)
        es_fail(s, ficus_strerror(rc), false);
}

/* ---- publication and election (once a second) -------------------------------------------- */

static void on_published(void *ctx, int status, int endpoint, struct etcdv3_answer *a)
{
    (void)endpoint;
    struct store *s = ctx;
    s->publish_inflight = false;
    if (status == 0) {
        contact(s);
        return;
    }
    if (status == FICUS_ESTORE && etcdv3_error_kind(&a->error) == ETCDV3_ERR_LEASE_NOT_FOUND &&
        s->phase == ES_LIVE)
        lease_lost(s, "not found when publishing");
}

static void es_publish(struct store *s, const struct fleet_route_counts *counts, size_t n)
{
    if (s->phase != ES_LIVE || s->lease == 0 || s->publish_inflight)
        return;
    struct fleet_instance in;
    fleet_instance_init(&in);
    in.id = s->id;
    in.ficus_version = FICUS_VERSION;
    in.started_at = s->started_at;
    in.at = state_now_ms();
    in.routes = counts;
    in.n_routes = n;
    struct buf key, value, body;
    buf_init(&key, 0);
    buf_init(&value, 0);
    buf_init(&body, 0);
    int rc = fleet_key_instance(&key, s->sc->prefix, s->id);
    if (rc == 0)
        rc = fleet_instance_encode(&value, &in);
    if (rc == 0)
        rc = etcdv3_put_body(&body, (struct span){key.data, key.len},
                             (struct span){value.data, value.len}, s->lease);
    if (rc == 0)
        rc = etcdclient_call(s->ec, ETCDV3_PUT, &body, s->sc->timeout_ms, on_published, s);
    if (rc == 0)
        s->publish_inflight = true;
    else
        log_warn("store", "cannot publish this instance's counts: %s", ficus_strerror(rc));
    buf_dispose(&key);
    buf_dispose(&value);
    buf_dispose(&body);
}

static void on_elected(void *ctx, int status, int endpoint, struct etcdv3_answer *a)
{
    (void)endpoint;
    struct store *s = ctx;
    s->electing = false;
    if (status != 0 || s->phase == ES_STOPPING || s->phase == ES_STOPPED)
        return;
    contact(s);
    if (a->succeeded) {
        s->driver_known = true;
        snprintf(s->driver_id, sizeof(s->driver_id), "%s", s->id);
        s->driver_lease = s->lease;
        log_info("store", "this instance drives the ramp instance=%s", s->id);
    } else if (a->n_kvs > 0) {
        apply_driver_kv(s, &a->kvs[0]);
    }
}

static void es_elect(struct store *s)
{
    if (s->phase != ES_LIVE || s->lease == 0 || s->electing || s->driver_known || !has_ramp(s))
        return;
    struct fleet_driver d = {.since = state_now_ms()};
    snprintf(d.id, sizeof(d.id), "%s", s->id);
    struct buf key, value, body;
    buf_init(&key, 0);
    buf_init(&value, 0);
    buf_init(&body, 0);
    int rc = fleet_key_ramp_driver(&key, s->sc->prefix);
    if (rc == 0)
        rc = fleet_driver_encode(&value, &d);
    if (rc == 0) {
        struct span k = {key.data, key.len};
        struct etcdv3_compare cmp = {
            .key = k, .target = ETCDV3_CMP_CREATE, .result = ETCDV3_CMP_EQUAL, .value = 0};
        struct etcdv3_op put = {
            .kind = ETCDV3_OP_PUT, .key = k, .value = {value.data, value.len}, .lease = s->lease};
        struct etcdv3_op get = {.kind = ETCDV3_OP_RANGE, .key = k};
        rc = etcdv3_txn_body(&body, &cmp, 1, &put, 1, &get, 1);
    }
    if (rc == 0)
        rc = etcdclient_call(s->ec, ETCDV3_TXN, &body, s->sc->timeout_ms, on_elected, s);
    if (rc == 0)
        s->electing = true;
    buf_dispose(&key);
    buf_dispose(&value);
    buf_dispose(&body);
}

/* ---- stop -------------------------------------------------------------------------------- */

static void on_store_handle_closed(uv_handle_t *h)
{
    struct store *s = h->data;
    s->open_handles--;
}

static void es_finish_stop(struct store *s)
{
    if (s->phase == ES_STOPPED)
        return;
    es_set_phase(s, ES_STOPPED);
    etcdclient_close(s->ec); /* in-flight calls end now (their callbacks see STOPPED) */
    uv_close((uv_handle_t *)&s->backoff_timer, on_store_handle_closed);
    uv_close((uv_handle_t *)&s->keepalive_timer, on_store_handle_closed);
    state_set_revision(s->state, s->revision);
    state_save_if_dirty(s->state);
}

static void on_revoked(void *ctx, int status, int endpoint, struct etcdv3_answer *a)
{
    (void)endpoint;
    (void)a;
    struct store *s = ctx;
    if (status == 0)
        log_info("store", "lease revoked: this instance left the fleet");
    es_finish_stop(s);
}

/* ---- the interface ----------------------------------------------------------------------- */

struct store *store_new(struct server *srv)
{
    struct store *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->srv = srv;
    s->state = srv->state;
    s->type = srv->cfg->state_store.type;
    s->started_at = state_now_ms();
    s->rng = 0x9E3779B97F4A7C15ULL ^ io_now_us() ^ ((uint64_t)getpid() << 20);
    if (s->rng == 0)
        s->rng = 1;
    char host[256] = "";
    if (gethostname(host, sizeof(host) - 1) != 0)
        host[0] = '\0';
    fleet_instance_id(s->id, host, (long)getpid(), xorshift64s(&s->rng));
    buf_init(&s->page_key, 0);
    if (s->type == STATE_STORE_FILE)
        return s;
    s->cfg = config_ref(srv->cfg);
    s->sc = &s->cfg->state_store;
    s->ec = etcdclient_new(srv->loop, s->cfg);
    if (s->ec == NULL) {
        config_unref(s->cfg);
        free(s);
        return NULL;
    }
    s->need_read = true;
    s->revision = state_loaded_revision(srv->state);
    uv_timer_init(srv->loop, &s->backoff_timer);
    uv_timer_init(srv->loop, &s->keepalive_timer);
    s->backoff_timer.data = s->keepalive_timer.data = s;
    s->open_handles = 2;
    state_set_writer(s->state, &etcd_writer, s);
    return s;
}

void store_start(struct store *s)
{
    if (s == NULL || s->type == STATE_STORE_FILE || s->phase != ES_IDLE)
        return;
    log_info("store",
             "state store etcd endpoints=%zu prefix=%s instance=%s: serving the %s until "
             "it answers",
             etcdclient_endpoints(s->ec), s->sc->prefix, s->id,
             state_persisted(s->state) ? "state file's state" : "configuration's state");
    es_connect(s);
}

void store_tick(struct store *s, const struct fleet_route_counts *counts, size_t n)
{
    if (s == NULL || s->type == STATE_STORE_FILE)
        return;
    if (s->phase == ES_STOPPING || s->phase == ES_STOPPED)
        return;
    es_publish(s, counts, n);
    es_elect(s);
    if (s->phase == ES_LIVE)
        es_flush_pending(s);
    /* The cache: at most once a second, when something changed. */
    if (s->revision > 0)
        state_set_revision(s->state, s->revision);
    state_save_if_dirty(s->state);
}

void store_config_changed(struct store *s)
{
    if (s == NULL || s->type == STATE_STORE_FILE)
        return;
    const struct config *cfg = s->srv->cfg;
    if (strcmp(cfg->state_store.prefix ? cfg->state_store.prefix : "", s->sc->prefix) != 0 ||
        cfg->state_store.type != s->type)
        log_warn("store", "reload: state_store changes take effect at the next restart");
    for (size_t i = 0; i < s->n_routes; i++)
        route_to_state(s, s->routes[i], STATE_SRC_QUIET);
}

void store_stop(struct store *s)
{
    if (s == NULL || s->type == STATE_STORE_FILE)
        return;
    if (s->phase == ES_STOPPING || s->phase == ES_STOPPED)
        return;
    bool connected = s->phase != ES_IDLE && s->phase != ES_BACKOFF;
    es_set_phase(s, ES_STOPPING);
    uv_timer_stop(&s->backoff_timer);
    uv_timer_stop(&s->keepalive_timer);
    etcdclient_watch_stop(s->ec);
    if (s->lease == 0 || !connected) {
        es_finish_stop(s);
        return;
    }
    struct buf body;
    buf_init(&body, 0);
    int rc = etcdv3_lease_id_body(&body, s->lease);
    int timeout = s->sc->timeout_ms < REVOKE_MAX_MS ? s->sc->timeout_ms : REVOKE_MAX_MS;
    if (rc == 0)
        rc = etcdclient_call(s->ec, ETCDV3_LEASE_REVOKE, &body, timeout, on_revoked, s);
    buf_dispose(&body);
    if (rc != 0)
        es_finish_stop(s);
}

void store_free(struct store *s)
{
    if (s == NULL)
        return;
    if (s->type == STATE_STORE_ETCD) {
        if (s->phase != ES_STOPPED)
            es_finish_stop(s);
        state_set_writer(s->state, NULL, NULL);
        etcdclient_free(s->ec);
        config_unref(s->cfg);
    }
    for (size_t i = 0; i < s->n_routes; i++) {
        fleet_route_dispose(&s->routes[i]->value);
        free(s->routes[i]);
    }
    free(s->routes);
    for (size_t i = 0; i < s->n_insts; i++) {
        fleet_instance_dispose(&s->insts[i]->value);
        free(s->insts[i]);
    }
    free(s->insts);
    buf_dispose(&s->page_key);
    free(s);
}

bool store_shared(const struct store *s)
{
    return s != NULL && s->type == STATE_STORE_ETCD;
}

bool store_persists(const struct store *s)
{
    return s != NULL && (store_shared(s) || state_persisted(s->state));
}

bool store_ramp_driver(const struct store *s)
{
    if (s == NULL || s->type == STATE_STORE_FILE)
        return true;
    return s->phase == ES_LIVE && s->lease != 0 && s->driver_known &&
           strcmp(s->driver_id, s->id) == 0 && s->driver_lease == s->lease;
}

size_t store_fleet_counts(const struct store *s, const char *route, int64_t window_ms,
                          struct fleet_counts *out)
{
    memset(out, 0, sizeof(*out));
    if (s == NULL || s->type == STATE_STORE_FILE || s->n_insts == 0)
        return 0;
    const struct fleet_instance **v = calloc(s->n_insts, sizeof(*v));
    if (v == NULL)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < s->n_insts; i++) {
        if (s->insts[i]->have && strcmp(s->insts[i]->id, s->id) != 0)
            v[n++] = &s->insts[i]->value;
    }
    size_t counted =
        fleet_sum(v, n, route, window_ms, state_now_ms(), STORE_COUNTS_MAX_AGE_MS, out);
    free(v);
    return counted;
}

static double last_contact_s(const struct store *s)
{
    return s->contacted ? (double)(loop_now(s) - s->last_contact) / 1000.0 : -1;
}

json_t *store_status_json(const struct store *s, bool detail)
{
    if (s->type == STATE_STORE_FILE) {
        json_t *j = json_pack("{s:s,s:s,s:f,s:n}", "type", "file", "status", "live",
                              "last_contact_s", 0.0, "revision");
        if (detail) {
            json_object_set_new(j, "source", json_string("file"));
            json_object_set_new(j, "instance", json_string(s->id));
            json_object_set_new(j, "instances",
                                json_pack("[{s:s,s:b}]", "id", s->id, "self", true));
        }
        return j;
    }
    bool live = s->phase == ES_LIVE;
    double age = last_contact_s(s);
    int64_t rev = s->revision;
    json_t *j = json_pack("{s:s,s:s,s:o,s:o}", "type", "etcd", "status", live ? "live" : "stale",
                          "last_contact_s", age >= 0 ? json_real(age) : json_null(), "revision",
                          rev > 0 ? json_integer((json_int_t)rev) : json_null());
    if (!detail)
        return j;
    /* Where the routes' state comes from: etcd once read, else the cache. */
    const char *source = s->seeded ? "etcd" : state_persisted(s->state) ? "cache" : "config";
    json_object_set_new(j, "source", json_string(source));
    json_object_set_new(j, "prefix", json_string(s->sc->prefix));
    json_object_set_new(j, "endpoint",
                        json_string(etcdclient_endpoint_url(s->ec, etcdclient_endpoint(s->ec))));
    json_object_set_new(j, "phase", json_string(phase_names[s->phase]));
    json_object_set_new(j, "error",
                        s->last_error[0] && !live ? json_string(s->last_error) : json_null());
    json_object_set_new(j, "instance", json_string(s->id));
    json_t *insts = json_array();
    bool self_seen = false;
    for (size_t i = 0; i < s->n_insts; i++) {
        const struct sinst *in = s->insts[i];
        bool self = strcmp(in->id, s->id) == 0;
        self_seen = self_seen || self;
        json_t *o = json_pack("{s:s,s:b}", "id", in->id, "self", self);
        if (in->have) {
            char t[FLEET_TIME_LEN + 1];
            if (in->value.started_at > 0) {
                fleet_time_format(in->value.started_at, t);
                json_object_set_new(o, "started_at", json_string(t));
            }
            fleet_time_format(in->value.at, t);
            json_object_set_new(o, "at", json_string(t));
            if (in->value.ficus_version[0])
                json_object_set_new(o, "ficus", json_string(in->value.ficus_version));
        }
        json_array_append_new(insts, o);
    }
    (void)self_seen;
    json_object_set_new(j, "instances", insts);
    json_object_set_new(j, "ramp_driver",
                        s->driver_known && s->driver_id[0] ? json_string(s->driver_id)
                                                           : json_null());
    json_object_set_new(j, "values_ignored", json_integer((json_int_t)s->ignored_values));
    return j;
}

void store_render_metrics(const struct store *s, struct buf *out)
{
    const char *type = s->type == STATE_STORE_ETCD ? "etcd" : "file";
    bool up = s->type == STATE_STORE_FILE || s->phase == ES_LIVE;
    double age = s->type == STATE_STORE_FILE ? 0 : last_contact_s(s);
    if (age < 0) /* never: since the start */
        age = (double)(state_now_ms() - s->started_at) / 1000.0;
    buf_puts(out,
             "# HELP ficus_state_store_up Whether the state store is reachable (1), or this "
             "instance serves the last state it saw (0).\n# TYPE ficus_state_store_up gauge\n");
    buf_printf(out, "ficus_state_store_up{type=\"%s\"} %d\n", type, up ? 1 : 0);
    buf_puts(out, "# HELP ficus_state_store_last_contact_seconds Seconds since the state store "
                  "last answered (0 for the file store).\n"
                  "# TYPE ficus_state_store_last_contact_seconds gauge\n");
    buf_printf(out, "ficus_state_store_last_contact_seconds{type=\"%s\"} %.3f\n", type, age);
    buf_puts(out, "# HELP ficus_state_changes_total Changes of the live route state applied "
                  "here, by where they came from.\n# TYPE ficus_state_changes_total counter\n");
    for (int i = 0; i < STATE_SRC_N; i++)
        buf_printf(out, "ficus_state_changes_total{source=\"%s\"} %llu\n",
                   state_source_name((enum state_source)i),
                   state_changes(s->state, (enum state_source)i));
}
