/* Backend servers as the control thread follows them: see discovery.h.
 *
 * The current configuration has a view: per backend, per server, the
 * server's current addresses (from the load, then from its DNS watch), and
 * per backend the targets, its distinct addresses, each with the result of
 * its last health check. Workers read the view under the lock in
 * discovery_apply; the control thread changes it under the lock and reads it
 * without (it is the only writer). A change bumps a version; each worker
 * remembers the version it applied, so it applies only what changed, and all
 * of it when its pools are newer than the view it applied last.
 *
 * DNS watches are shared by name: one per (host, port, resolve intervals),
 * kept across reloads while a server uses it. Health checks run on a pool
 * set of the control loop, one connection per check, never pooled. */
#include "ficus/discovery.h"
#include "ficus/common.h"
#include "ficus/http1.h"
#include "ficus/lb.h"
#include "ficus/log.h"
#include "ficus/resolver.h"
#include "ficus/upclient.h"
#include "ficus/upstats.h"
#include "ficus/upstream.h"
#include "ficus/worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long a start or reload may wait for the names it has to look up. */
#define RESOLVE_DEADLINE_MS 10000
/* A health check's deadline for its answer: its interval, within these. */
#define HEALTH_TIMEOUT_MIN_MS 1000
#define HEALTH_TIMEOUT_MAX_MS 5000
/* The largest answer head a health check reads. */
#define HEALTH_HEAD_MAX (16 * 1024)
/* The probe timer when no backend is due sooner. */
#define PROBE_IDLE_MS 1000

enum health { HEALTH_UNKNOWN, HEALTH_UP, HEALTH_DOWN };

/* One followed name, shared by the servers that name it. */
struct dwatch {
    struct discovery *d;
    struct dwatch *next;
    char *host;
    uint16_t port;
    int min_ms, max_ms;
    struct resolver_watch *w;
    bool used; /* scratch for reload */
};

struct dserver {
    struct dwatch *watch;           /* NULL for an IP address */
    struct sockaddr_storage *addrs; /* RESOLVER_ADDRS_MAX of room */
    size_t n;
    uint64_t version; /* of the last change of addrs */
    enum resolver_state rstate;
    const char *rerror;
};

/* One address of a backend, health-checked. */
struct dtarget {
    struct sockaddr_storage addr;
    char label[UPSTATS_LABEL_SIZE];
    int server; /* the first server with this address: its host for SNI and Host */
    enum health health;
    uint64_t version; /* of the last change of health */
    bool in_flight;
    bool keep; /* scratch */
};

struct dbackend {
    struct dserver *servers;
    struct dtarget *targets;
    size_t n_targets;
    int64_t next_probe_ms;
};

struct dview {
    uint64_t id;
    struct config *cfg;
    uint64_t base_version; /* d->version when it was made */
    struct dbackend *backends;
};

/* What a worker applied last (written by that worker only, under the lock). */
struct applied {
    uint64_t view_id;
    uint64_t version;
};

struct hprobe;

struct discovery {
    struct server *srv;
    uv_loop_t *loop;
    struct resolver *resolver;
    struct sockaddr_storage resolvers[16]; /* what the resolver was made with */
    size_t n_resolvers;
    struct dwatch *watches;
    uv_mutex_t lock; /* guards the view's addresses, targets and versions for the workers */
    struct dview *view;
    uint64_t version;
    uint64_t view_seq;
    struct applied *applied; /* per worker */
    int n_workers;
    struct rbuf_pool rbufs;
    struct pool_set *ps; /* health check connections, for view->cfg */
    uv_timer_t timer;
    struct hprobe *probes; /* in flight */
    bool stopped;
};

/* One health check in flight. */
struct hprobe {
    struct discovery *d;
    struct hprobe *next;
    uint64_t view_id;
    int backend;
    struct sockaddr_storage addr;
    struct pool_set *ps; /* a reference */
    struct upstream_wait wait;
    struct upconn *up;
    struct upclient uc;
    struct buf head;
    struct http_head parsed;
};

static void probe_schedule(struct discovery *d);
static void probe_start(struct discovery *d, int backend, struct dtarget *t);

/* ---- resolution at load ------------------------------------------------------- */

static void resolver_opts(const struct config *cfg, struct sockaddr_storage *servers,
                          struct resolver_options *o)
{
    memset(o, 0, sizeof(*o));
    size_t n = cfg->n_resolvers < 16 ? cfg->n_resolvers : 16;
    for (size_t i = 0; i < n; i++)
        servers[i] = cfg->resolvers[i].ss;
    o->servers = servers;
    o->n_servers = n;
}

static bool same_resolvers(const struct discovery *d, const struct config *cfg)
{
    if (d->n_resolvers != (cfg->n_resolvers < 16 ? cfg->n_resolvers : 16))
        return false;
    for (size_t i = 0; i < d->n_resolvers; i++) {
        if (lb_addr_compare(&d->resolvers[i], &cfg->resolvers[i].ss) != 0)
            return false;
    }
    return true;
}

static struct dwatch *find_watch(struct discovery *d, const char *host, uint16_t port, int min_ms,
                                 int max_ms)
{
    for (struct dwatch *w = d != NULL ? d->watches : NULL; w != NULL; w = w->next) {
        if (w->port == port && w->min_ms == min_ms && w->max_ms == max_ms &&
            strcasecmp(w->host, host) == 0)
            return w;
    }
    return NULL;
}

/* Copies addrs into the config's arena as a server's load-time set. */
static int set_server_addrs(struct config *cfg, struct backend_server_cfg *sv,
                            const struct sockaddr_storage *addrs, size_t n)
{
    sv->addrs = NULL;
    sv->n_addrs = 0;
    if (n == 0)
        return 0;
    sv->addrs = arena_alloc(&cfg->arena, n * sizeof(*sv->addrs));
    if (sv->addrs == NULL)
        return FICUS_ENOMEM;
    memcpy(sv->addrs, addrs, n * sizeof(*addrs));
    sv->n_addrs = n;
    return 0;
}

int discovery_resolve_config(struct discovery *d, struct config *cfg, struct config_errors *errs)
{
    size_t total = 0;
    for (size_t b = 0; b < cfg->n_backends; b++)
        total += cfg->backends[b].n_servers;
    struct resolver_query *q = total > 0 ? calloc(total, sizeof(*q)) : NULL;
    if (total > 0 && q == NULL) {
        config_errors_add(errs, "%s: out of memory", cfg->path);
        return FICUS_ECONFIG;
    }
    /* Names followed already, with the same resolvers, answer from their
     * watch; the others are looked up, all at once. */
    bool reuse = d != NULL && d->resolver != NULL && same_resolvers(d, cfg);
    size_t k = 0, asked = 0;
    struct resolver_query **ask = total > 0 ? calloc(total, sizeof(*ask)) : NULL;
    struct resolver_query *batch = total > 0 ? calloc(total, sizeof(*batch)) : NULL;
    if (total > 0 && (ask == NULL || batch == NULL)) {
        free(q);
        free(ask);
        free(batch);
        config_errors_add(errs, "%s: out of memory", cfg->path);
        return FICUS_ECONFIG;
    }
    for (size_t b = 0; b < cfg->n_backends; b++) {
        const struct backend_cfg *be = &cfg->backends[b];
        for (size_t s = 0; s < be->n_servers; s++, k++) {
            const struct backend_server_cfg *sv = &be->servers[s];
            q[k].host = sv->host;
            q[k].port = sv->port;
            struct dwatch *w =
                reuse && !sv->ip_literal
                    ? find_watch(d, sv->host, sv->port, be->min_resolve_ms, be->max_resolve_ms)
                    : NULL;
            struct resolver_result res;
            if (w != NULL)
                resolver_watch_result(w->w, &res);
            if (w != NULL && res.n > 0) {
                q[k].state = RESOLVER_OK;
                q[k].n = res.n;
                memcpy(q[k].addrs, res.addrs, res.n * sizeof(res.addrs[0]));
                continue;
            }
            batch[asked] = q[k];
            ask[asked++] = &q[k];
        }
    }
    struct sockaddr_storage servers[16];
    struct resolver_options o;
    resolver_opts(cfg, servers, &o);
    o.quiet = true; /* what does not resolve is reported below, with its location */
    resolver_resolve_now(&o, batch, asked, RESOLVE_DEADLINE_MS);
    for (size_t i = 0; i < asked; i++)
        *ask[i] = batch[i];
    free(ask);
    free(batch);

    int rc = 0;
    k = 0;
    for (size_t b = 0; b < cfg->n_backends; b++) {
        struct backend_cfg *be = &cfg->backends[b];
        size_t first = k, resolved = 0;
        be->resolved_len = 0;
        for (size_t s = 0; s < be->n_servers; s++, k++) {
            if (set_server_addrs(cfg, &be->servers[s], q[k].addrs, q[k].n) != 0) {
                config_errors_add(errs, "%s: out of memory", cfg->path);
                rc = FICUS_ECONFIG;
            }
            if (q[k].n > 0 && resolved++ == 0) {
                be->resolved = q[k].addrs[0];
                be->resolved_len = lb_addr_len(&q[k].addrs[0]);
            }
        }
        for (size_t s = 0; s < be->n_servers; s++) {
            const struct resolver_query *r = &q[first + s];
            if (r->n > 0)
                continue;
            char loc[96];
            if (be->servers_listed)
                snprintf(loc, sizeof(loc), "backends.%s.servers[%zu]", be->name, s);
            else
                snprintf(loc, sizeof(loc), "backends.%s.url", be->name);
            const char *why = r->error != NULL ? r->error : "no address";
            if (resolved > 0) {
                log_warn("discovery",
                         "%s: cannot resolve host \"%s\": %s; the backend's other servers "
                         "serve until it does",
                         loc, r->host, why);
            } else {
                config_errors_add(errs, "%s: %s: cannot resolve host \"%s\": %s", cfg->path, loc,
                                  r->host, why);
                rc = FICUS_ECONFIG;
            }
        }
    }
    free(q);
    return rc;
}

/* ---- views ---------------------------------------------------------------------- */

static void view_free(struct dview *v)
{
    if (v == NULL)
        return;
    for (size_t b = 0; b < v->cfg->n_backends; b++) {
        struct dbackend *bk = &v->backends[b];
        for (size_t s = 0; bk->servers != NULL && s < v->cfg->backends[b].n_servers; s++)
            free(bk->servers[s].addrs);
        free(bk->servers);
        free(bk->targets);
    }
    free(v->backends);
    config_unref(v->cfg);
    free(v);
}

static const struct dtarget *find_target(const struct dbackend *bk,
                                         const struct sockaddr_storage *a)
{
    for (size_t i = 0; bk != NULL && i < bk->n_targets; i++) {
        if (lb_addr_compare(&bk->targets[i].addr, a) == 0)
            return &bk->targets[i];
    }
    return NULL;
}

/* Makes backend b's targets from its servers' addresses (at most
 * LB_ENDPOINTS_MAX): addresses that stay keep their health, new ones start
 * unknown. old (may be NULL) is where the health results come from. Call with
 * the lock held when workers may read bk. Returns 0 or FICUS_ENOMEM. */
static int targets_build(const struct backend_cfg *be, struct dbackend *bk,
                         const struct dbackend *old)
{
    size_t cap = 0;
    for (size_t s = 0; s < be->n_servers; s++)
        cap += bk->servers[s].n;
    if (cap > LB_ENDPOINTS_MAX)
        cap = LB_ENDPOINTS_MAX;
    struct dtarget *t = cap > 0 ? calloc(cap, sizeof(*t)) : NULL;
    if (cap > 0 && t == NULL)
        return FICUS_ENOMEM;
    size_t n = 0;
    for (size_t s = 0; s < be->n_servers; s++) {
        const struct dserver *sv = &bk->servers[s];
        for (size_t i = 0; i < sv->n && n < cap; i++) {
            bool dup = false;
            for (size_t j = 0; j < n && !dup; j++)
                dup = lb_addr_compare(&t[j].addr, &sv->addrs[i]) == 0;
            if (dup)
                continue;
            struct dtarget *nt = &t[n++];
            nt->addr = sv->addrs[i];
            lb_addr_format(&nt->addr, nt->label, sizeof(nt->label));
            nt->server = (int)s;
            const struct dtarget *prev = find_target(old, &nt->addr);
            if (prev != NULL) {
                nt->health = prev->health;
                nt->version = prev->version;
                nt->in_flight = prev->in_flight;
            }
        }
    }
    free(bk->targets);
    bk->targets = t;
    bk->n_targets = n;
    return 0;
}

/* The backend of the same name in v (NULL when there is none). */
static const struct dbackend *backend_named(const struct dview *v, const char *name)
{
    if (v == NULL)
        return NULL;
    int i = config_backend_index(v->cfg, name);
    return i >= 0 ? &v->backends[i] : NULL;
}

/* ---- workers ---------------------------------------------------------------------- */

static void wake_workers(struct discovery *d)
{
    for (int i = 0; i < d->srv->n_workers; i++)
        uv_async_send(&d->srv->workers[i].async);
}

void discovery_apply(struct discovery *d, struct worker *w)
{
    if (d == NULL || w->stopped || w->pools == NULL || w->id < 0 || w->id >= d->n_workers)
        return;
    uv_mutex_lock(&d->lock);
    struct dview *v = d->view;
    struct applied *a = &d->applied[w->id];
    if (v == NULL || v->cfg != w->cfg) {
        uv_mutex_unlock(&d->lock); /* it gets this configuration soon, or never will */
        return;
    }
    bool fresh = a->view_id != v->id; /* its pools were made from the configuration */
    uint64_t since = fresh ? v->base_version : a->version;
    for (size_t b = 0; b < v->cfg->n_backends; b++) {
        const struct backend_cfg *be = &v->cfg->backends[b];
        struct dbackend *bk = &v->backends[b];
        bool changed = false;
        for (size_t s = 0; s < be->n_servers; s++) {
            const struct dserver *sv = &bk->servers[s];
            if (sv->version > since && sv->n > 0) {
                pool_set_update(w->pools, (int)b, (int)s, sv->addrs, sv->n);
                changed = true;
            }
        }
        if (be->health_path == NULL)
            continue; /* connect checks tell readiness only */
        for (size_t i = 0; i < bk->n_targets; i++) {
            const struct dtarget *t = &bk->targets[i];
            if (t->health != HEALTH_UNKNOWN && (fresh || changed || t->version > since))
                pool_set_health(w->pools, (int)b, &t->addr, t->health == HEALTH_UP);
        }
    }
    a->view_id = v->id;
    a->version = d->version;
    uv_mutex_unlock(&d->lock);
}

/* ---- DNS watches ---------------------------------------------------------------- */

static void on_watch(void *ctx, const struct resolver_result *res)
{
    struct dwatch *dw = ctx;
    struct discovery *d = dw->d;
    struct dview *v = d->view;
    bool notify = false;
    for (size_t b = 0; v != NULL && b < v->cfg->n_backends; b++) {
        const struct backend_cfg *be = &v->cfg->backends[b];
        struct dbackend *bk = &v->backends[b];
        bool changed = false;
        for (size_t s = 0; s < be->n_servers; s++) {
            struct dserver *sv = &bk->servers[s];
            if (sv->watch != dw)
                continue;
            sv->rstate = res->state;
            sv->rerror = res->error;
            /* A failing name keeps its last good set (the resolver keeps it too). */
            if (res->n == 0 || (res->n == sv->n &&
                                memcmp(res->addrs, sv->addrs, res->n * sizeof(*sv->addrs)) == 0))
                continue;
            uv_mutex_lock(&d->lock);
            memcpy(sv->addrs, res->addrs, res->n * sizeof(*sv->addrs));
            sv->n = res->n;
            sv->version = ++d->version;
            uv_mutex_unlock(&d->lock);
            changed = true;
        }
        if (!changed)
            continue;
        notify = true;
        uv_mutex_lock(&d->lock);
        targets_build(be, bk, bk); /* out of memory: the old targets stay */
        uv_mutex_unlock(&d->lock);
        for (size_t i = 0; i < bk->n_targets; i++) {
            if (bk->targets[i].health == HEALTH_UNKNOWN && !bk->targets[i].in_flight)
                probe_start(d, (int)b, &bk->targets[i]); /* a new address: checked at once */
        }
    }
    if (notify)
        wake_workers(d);
}

static void watch_free(struct dwatch *w)
{
    resolver_unwatch(w->w);
    free(w->host);
    free(w);
}

static struct dwatch *watch_get(struct discovery *d, const char *host, uint16_t port, int min_ms,
                                int max_ms)
{
    struct dwatch *w = find_watch(d, host, port, min_ms, max_ms);
    if (w != NULL)
        return w;
    if (d->resolver == NULL)
        return NULL;
    w = calloc(1, sizeof(*w));
    if (w == NULL || (w->host = strdup(host)) == NULL) {
        free(w);
        return NULL;
    }
    w->d = d;
    w->port = port;
    w->min_ms = min_ms;
    w->max_ms = max_ms;
    if (resolver_watch(d->resolver, host, port, min_ms, max_ms, on_watch, w, &w->w) != 0) {
        free(w->host);
        free(w);
        return NULL;
    }
    w->next = d->watches;
    d->watches = w;
    return w;
}

static void watches_drop_unused(struct discovery *d)
{
    for (struct dwatch **pp = &d->watches; *pp != NULL;) {
        struct dwatch *w = *pp;
        if (w->used) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        watch_free(w);
    }
}

/* A resolver for cfg's resolvers (a new one when they changed: every watch
 * is made again on it). */
static void resolver_for(struct discovery *d, const struct config *cfg)
{
    if (d->resolver != NULL && same_resolvers(d, cfg))
        return;
    while (d->watches != NULL) {
        struct dwatch *w = d->watches;
        d->watches = w->next;
        watch_free(w);
    }
    if (d->resolver != NULL) {
        resolver_close(d->resolver, NULL, NULL);
        d->resolver = NULL;
    }
    struct resolver_options o;
    resolver_opts(cfg, d->resolvers, &o);
    d->n_resolvers = o.n_servers;
    if (resolver_new(d->loop, &o, &d->resolver) != 0) {
        d->resolver = NULL;
        log_error("discovery", "cannot start the DNS resolver: host names are not followed");
    }
}

/* ---- reload ----------------------------------------------------------------------- */

static struct dview *view_new(struct discovery *d, struct config *cfg)
{
    struct dview *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return NULL;
    v->cfg = config_ref(cfg);
    v->backends = calloc(cfg->n_backends ? cfg->n_backends : 1, sizeof(*v->backends));
    if (v->backends == NULL)
        goto fail;
    for (size_t b = 0; b < cfg->n_backends; b++) {
        const struct backend_cfg *be = &cfg->backends[b];
        struct dbackend *bk = &v->backends[b];
        bk->servers = calloc(be->n_servers ? be->n_servers : 1, sizeof(*bk->servers));
        if (bk->servers == NULL)
            goto fail;
        for (size_t s = 0; s < be->n_servers; s++) {
            const struct backend_server_cfg *scfg = &be->servers[s];
            struct dserver *sv = &bk->servers[s];
            sv->addrs = calloc(RESOLVER_ADDRS_MAX, sizeof(*sv->addrs));
            if (sv->addrs == NULL)
                goto fail;
            sv->n = scfg->n_addrs < RESOLVER_ADDRS_MAX ? scfg->n_addrs : RESOLVER_ADDRS_MAX;
            if (sv->n > 0)
                memcpy(sv->addrs, scfg->addrs, sv->n * sizeof(*sv->addrs));
            sv->rstate = sv->n > 0 ? RESOLVER_OK : RESOLVER_PENDING;
            if (scfg->ip_literal)
                continue;
            sv->watch =
                watch_get(d, scfg->host, scfg->port, be->min_resolve_ms, be->max_resolve_ms);
            if (sv->watch == NULL)
                continue;
            sv->watch->used = true;
            struct resolver_result res;
            resolver_watch_result(sv->watch->w, &res);
            if (res.state != RESOLVER_PENDING) {
                sv->rstate = res.state;
                sv->rerror = res.error;
            }
        }
        if (targets_build(be, bk, backend_named(d->view, be->name)) != 0)
            goto fail;
    }
    return v;
fail:
    view_free(v);
    return NULL;
}

static void view_install(struct discovery *d, struct config *cfg)
{
    resolver_for(d, cfg);
    for (struct dwatch *w = d->watches; w != NULL; w = w->next)
        w->used = false;
    struct dview *v = view_new(d, cfg);
    if (v == NULL) {
        for (struct dwatch *w = d->watches; w != NULL; w = w->next)
            w->used = true; /* the running view keeps them */
        log_error("discovery", "out of memory: backend addresses are not followed after this "
                               "reload");
        return;
    }
    struct pool_set *ps = pool_set_new(d->loop, &d->rbufs, cfg, cfg->backends, cfg->n_backends, 1);
    if (ps == NULL)
        log_error("discovery", "out of memory: no health checks after this reload");
    uv_mutex_lock(&d->lock);
    struct dview *old = d->view;
    v->id = ++d->view_seq;
    v->base_version = d->version;
    d->view = v;
    uv_mutex_unlock(&d->lock);
    view_free(old);
    watches_drop_unused(d);
    pool_set_unref(d->ps);
    d->ps = ps;
    int64_t now = (int64_t)uv_now(d->loop);
    for (size_t b = 0; b < cfg->n_backends; b++) {
        struct dbackend *bk = &v->backends[b];
        bk->next_probe_ms = now; /* every address is checked at once */
        for (size_t i = 0; i < bk->n_targets; i++)
            bk->targets[i].in_flight = false; /* the old view's checks report to nobody */
    }
    probe_schedule(d);
}

void discovery_reload(struct discovery *d, struct config *cfg)
{
    if (d == NULL || d->stopped)
        return;
    view_install(d, cfg);
}

int discovery_start(struct server *srv)
{
    struct discovery *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return FICUS_ENOMEM;
    d->srv = srv;
    d->loop = srv->loop;
    d->n_workers = srv->n_workers;
    d->applied = calloc((size_t)(srv->n_workers > 0 ? srv->n_workers : 1), sizeof(*d->applied));
    if (d->applied == NULL) {
        free(d);
        return FICUS_ENOMEM;
    }
    uv_mutex_init(&d->lock);
    rbuf_pool_init(&d->rbufs, 4);
    uv_timer_init(d->loop, &d->timer);
    d->timer.data = d;
    view_install(d, srv->cfg);
    srv->discovery = d;
    return 0;
}

/* ---- health checks ---------------------------------------------------------------- */

static struct dtarget *target_of(struct discovery *d, uint64_t view_id, int backend,
                                 const struct sockaddr_storage *addr)
{
    struct dview *v = d->view;
    if (v == NULL || v->id != view_id)
        return NULL;
    return (struct dtarget *)find_target(&v->backends[backend], addr);
}

/* Records a check's result: a change is logged once and, for a backend with
 * health.path, handed to the workers. */
static void health_result(struct discovery *d, uint64_t view_id, int backend,
                          const struct sockaddr_storage *addr, bool up, const char *why)
{
    struct dtarget *t = target_of(d, view_id, backend, addr);
    if (t == NULL)
        return; /* the address or the configuration went meanwhile */
    t->in_flight = false;
    enum health h = up ? HEALTH_UP : HEALTH_DOWN;
    if (t->health == h)
        return;
    const struct backend_cfg *be = &d->view->cfg->backends[backend];
    bool http = be->health_path != NULL;
    if (!up)
        log_warn("discovery", "%s backend=%s server=%s reason=\"%s\"",
                 http ? "health check failed" : "server unreachable", be->name, t->label, why);
    else if (t->health == HEALTH_DOWN)
        log_info("discovery", "%s backend=%s server=%s",
                 http ? "health check passes again" : "server reachable again", be->name, t->label);
    uv_mutex_lock(&d->lock);
    t->health = h;
    t->version = ++d->version;
    uv_mutex_unlock(&d->lock);
    if (http)
        wake_workers(d);
}

static void probe_done(struct hprobe *hp, bool up, const char *why)
{
    struct discovery *d = hp->d;
    for (struct hprobe **pp = &d->probes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == hp) {
            *pp = hp->next;
            break;
        }
    }
    upstream_cancel(&hp->wait);
    upclient_stop(&hp->uc);
    if (hp->up != NULL) {
        struct upconn *u = hp->up;
        hp->up = NULL;
        upstream_release(u, false);
    }
    if (why != NULL) /* NULL: cancelled, no verdict */
        health_result(d, hp->view_id, hp->backend, &hp->addr, up, why);
    buf_dispose(&hp->head);
    pool_set_unref(hp->ps);
    free(hp);
}

static bool probe_on_head(void *ctx, const struct http_head *h, const char *raw, size_t len)
{
    (void)raw;
    (void)len;
    char why[48];
    snprintf(why, sizeof(why), "answered %d", h->status);
    probe_done(ctx, h->status >= 200 && h->status < 400, why);
    return false;
}

static bool probe_on_body(void *ctx, struct rbuf *rb, const char *p, size_t n)
{
    (void)ctx;
    (void)rb;
    (void)p;
    (void)n;
    return true; /* not reached: the head decides */
}

static void probe_on_done(void *ctx, bool reusable)
{
    (void)reusable;
    probe_done(ctx, false, "no answer");
}

static void probe_on_error(void *ctx, int err)
{
    probe_done(ctx, false,
               err == FICUS_ETIMEOUT   ? "timeout"
               : err == FICUS_EBADRESP ? "invalid answer"
                                       : ficus_strerror(err));
}

static const struct upclient_handlers probe_handlers = {
    .on_head = probe_on_head,
    .on_body = probe_on_body,
    .on_done = probe_on_done,
    .on_error = probe_on_error,
};

/* "host" or "[v6]", with ":port" unless it is the scheme's default. */
static void host_header(const struct backend_cfg *be, const struct backend_server_cfg *sv,
                        char *out, size_t size)
{
    bool v6 = strchr(sv->host, ':') != NULL;
    bool dflt = sv->port == (be->tls ? 443 : 80);
    char port[8] = "";
    if (!dflt)
        snprintf(port, sizeof(port), ":%u", sv->port);
    snprintf(out, size, "%s%s%s%s", v6 ? "[" : "", sv->host, v6 ? "]" : "", port);
}

static void probe_on_ready(void *ctx, struct upconn *u, int status)
{
    struct hprobe *hp = ctx;
    if (status != 0) {
        probe_done(hp, false,
                   status == FICUS_ETIMEOUT ? "connect timeout"
                   : status == FICUS_ETLS   ? "TLS handshake failed"
                                            : uv_strerror(status));
        return;
    }
    hp->up = u;
    const struct dtarget *t = target_of(hp->d, hp->view_id, hp->backend, &hp->addr);
    if (t == NULL) {
        probe_done(hp, false, NULL); /* its configuration or address is gone */
        return;
    }
    const struct backend_cfg *be = &hp->d->view->cfg->backends[hp->backend];
    if (be->health_path == NULL) {
        probe_done(hp, true, "connected"); /* a connect check: connected is up */
        return;
    }
    char host[300];
    host_header(be, &be->servers[t->server], host, sizeof(host));
    struct buf req;
    buf_init(&req, 0);
    if (buf_printf(&req,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ficus-health-check\r\n"
                   "Connection: close\r\n\r\n",
                   be->health_path, host) != 0) {
        buf_dispose(&req);
        probe_done(hp, false, "out of memory");
        return;
    }
    int timeout = be->health_interval_ms;
    if (timeout < HEALTH_TIMEOUT_MIN_MS)
        timeout = HEALTH_TIMEOUT_MIN_MS;
    if (timeout > HEALTH_TIMEOUT_MAX_MS)
        timeout = HEALTH_TIMEOUT_MAX_MS;
    upclient_start(&hp->uc, u, &probe_handlers, hp, &hp->head, &hp->parsed, false, HEALTH_HEAD_MAX,
                   UPCLIENT_TOTAL, timeout);
    uv_buf_t b = uv_buf_init(req.data, (unsigned)req.len);
    char *owned = req.data; /* the write frees it */
    if (upstream_write(u, &b, 1, NULL, owned) != 0)
        probe_done(hp, false, "write failed");
}

static void probe_start(struct discovery *d, int backend, struct dtarget *t)
{
    if (d->ps == NULL || d->stopped)
        return;
    struct hprobe *hp = calloc(1, sizeof(*hp));
    if (hp == NULL)
        return;
    hp->d = d;
    hp->view_id = d->view->id;
    hp->backend = backend;
    hp->addr = t->addr;
    hp->ps = d->ps;
    pool_set_ref(hp->ps);
    buf_init(&hp->head, HEALTH_HEAD_MAX);
    hp->next = d->probes;
    d->probes = hp;
    t->in_flight = true;
    bool http = d->view->cfg->backends[backend].health_path != NULL;
    int rc = upstream_connect_to(d->ps, backend, t->server, &t->addr, !http, &hp->wait,
                                 probe_on_ready, hp);
    if (rc != 0)
        probe_done(hp, false, uv_strerror(rc));
}

static void on_probe_timer(uv_timer_t *timer)
{
    struct discovery *d = timer->data;
    struct dview *v = d->view;
    int64_t now = (int64_t)uv_now(d->loop);
    for (size_t b = 0; v != NULL && b < v->cfg->n_backends; b++) {
        struct dbackend *bk = &v->backends[b];
        if (now < bk->next_probe_ms)
            continue;
        bk->next_probe_ms = now + v->cfg->backends[b].health_interval_ms;
        for (size_t i = 0; i < bk->n_targets && d->view == v; i++) {
            if (!bk->targets[i].in_flight)
                probe_start(d, (int)b, &bk->targets[i]);
        }
    }
    probe_schedule(d);
}

/* Arms the timer for the backend due first. */
static void probe_schedule(struct discovery *d)
{
    if (d->stopped || d->view == NULL)
        return;
    int64_t now = (int64_t)uv_now(d->loop), next = now + PROBE_IDLE_MS;
    for (size_t b = 0; b < d->view->cfg->n_backends; b++) {
        if (d->view->backends[b].next_probe_ms < next)
            next = d->view->backends[b].next_probe_ms;
    }
    uv_timer_start(&d->timer, on_probe_timer, (uint64_t)(next > now ? next - now : 0), 0);
}

/* ---- stop ----------------------------------------------------------------------------- */

void discovery_stop(struct discovery *d)
{
    if (d == NULL || d->stopped)
        return;
    d->stopped = true;
    uv_close((uv_handle_t *)&d->timer, NULL);
    while (d->probes != NULL)
        probe_done(d->probes, false, NULL);
    while (d->watches != NULL) {
        struct dwatch *w = d->watches;
        d->watches = w->next;
        watch_free(w);
    }
    if (d->resolver != NULL)
        resolver_close(d->resolver, NULL, NULL);
    d->resolver = NULL;
    pool_set_unref(d->ps);
    d->ps = NULL;
}

void discovery_free(struct discovery *d)
{
    if (d == NULL)
        return;
    discovery_stop(d);
    view_free(d->view);
    rbuf_pool_dispose(&d->rbufs);
    uv_mutex_destroy(&d->lock);
    free(d->applied);
    free(d);
}

/* ---- what is shown ------------------------------------------------------------------- */

static int compare_rows(const void *a, const void *b)
{
    const struct discovery_addr *x = a, *y = b;
    int c = strcmp(x->backend, y->backend);
    return c != 0 ? c : strcmp(x->server, y->server);
}

int discovery_addresses(struct discovery *d, struct discovery_addr **out)
{
    *out = NULL;
    struct server *srv = d->srv;
    struct upstats *tables[STATE_MAX_WORKERS];
    int nt = 0;
    for (int i = 0; i < srv->n_workers && nt < STATE_MAX_WORKERS; i++)
        tables[nt++] = srv->workers[i].upstats;
    int cap = 0;
    for (int i = 0; i < nt; i++)
        cap += tables[i] != NULL ? upstats_count(tables[i]) : 0;
    struct upstats_view *views = cap > 0 ? calloc((size_t)cap, sizeof(*views)) : NULL;
    int nv = cap > 0 ? upstats_collect(tables, nt, (int64_t)uv_now(d->loop), views, cap) : 0;
    if (nv < 0) {
        free(views);
        return -1;
    }
    size_t n_targets = 0;
    const struct dview *v = d->view;
    for (size_t b = 0; v != NULL && b < v->cfg->n_backends; b++)
        n_targets += v->backends[b].n_targets;
    struct discovery_addr *rows = calloc(n_targets + (size_t)nv + 1, sizeof(*rows));
    if (rows == NULL) {
        free(views);
        return -1;
    }
    int64_t now = (int64_t)uv_now(d->loop);
    size_t n = 0;
    for (size_t b = 0; v != NULL && b < v->cfg->n_backends; b++) {
        const struct dbackend *bk = &v->backends[b];
        for (size_t i = 0; i < bk->n_targets; i++) {
            const struct dtarget *t = &bk->targets[i];
            struct discovery_addr *r = &rows[n++];
            r->backend = v->cfg->backends[b].name;
            r->server = t->label;
            r->current = true;
            r->reachable = t->health == HEALTH_UNKNOWN ? -1 : t->health == HEALTH_UP;
            r->status = UPSTATS_GONE;
            const struct upstats_view *sv = upstats_find(views, nv, r->backend, r->server);
            if (sv != NULL) {
                r->status = sv->status;
                r->active = sv->active;
                memcpy(r->requests, sv->requests, sizeof(r->requests));
                r->failures = sv->failures;
                r->ejections = sv->ejections;
                if (sv->status == LB_STATUS_EJECTED && sv->ejected_until_ms > now)
                    r->ejected_for_ms = sv->ejected_until_ms - now;
            }
            /* No worker's view yet (an address just learnt): the check decides. */
            bool rotation = r->status == LB_STATUS_UP || r->status == LB_STATUS_PROBING ||
                            r->status == UPSTATS_GONE;
            r->up = r->reachable == 1 && rotation;
        }
    }
    /* Addresses the workers counted that are no longer current (draining, or
     * gone with their counters). */
    for (int i = 0; i < nv; i++) {
        const struct upstats_view *sv = &views[i];
        int b = v != NULL ? config_backend_index(v->cfg, sv->backend) : -1;
        bool current = false;
        if (b >= 0) {
            const struct dbackend *bk = &v->backends[b];
            for (size_t k = 0; k < bk->n_targets && !current; k++)
                current = strcmp(bk->targets[k].label, sv->server) == 0;
        }
        if (current)
            continue;
        struct discovery_addr *r = &rows[n++];
        r->backend = sv->backend;
        r->server = sv->server;
        r->status = sv->status;
        r->reachable = -1;
        r->active = sv->active;
        memcpy(r->requests, sv->requests, sizeof(r->requests));
        r->failures = sv->failures;
        r->ejections = sv->ejections;
    }
    free(views);
    qsort(rows, n, sizeof(*rows), compare_rows);
    *out = rows;
    return (int)n;
}

bool discovery_backend_up(struct discovery *d, int backend)
{
    if (d == NULL || d->view == NULL || backend < 0 || (size_t)backend >= d->view->cfg->n_backends)
        return false;
    struct discovery_addr *rows;
    int n = discovery_addresses(d, &rows);
    const char *name = d->view->cfg->backends[backend].name;
    bool up = false;
    for (int i = 0; i < n && !up; i++)
        up = rows[i].up && strcmp(rows[i].backend, name) == 0;
    free(rows);
    return up;
}

/* The state an address shows: the workers' (ejected, probing...), except that
 * an address that fails its checks is down whatever they think. */
static const char *shown_state(const struct discovery_addr *r)
{
    if (r->current && r->reachable == 0 &&
        (r->status == LB_STATUS_UP || r->status == LB_STATUS_PROBING || r->status == UPSTATS_GONE))
        return "down";
    if (r->current && r->status == UPSTATS_GONE)
        return r->reachable == 1 ? "up" : "unknown";
    return upstats_status_name(r->status);
}

static json_t *address_json(const struct discovery_addr *r, int server)
{
    unsigned long long total = 0;
    for (int c = 0; c < CODE_N; c++)
        total += r->requests[c];
    return json_pack("{s:s,s:o,s:s,s:o,s:b,s:i,s:I,s:I,s:I,s:I}", "address", r->server, "server",
                     server >= 0 ? json_integer(server) : json_null(), "state", shown_state(r),
                     "reachable", r->reachable < 0 ? json_null() : json_boolean(r->reachable), "up",
                     r->up, "active", r->active, "requests", (json_int_t)total, "errors",
                     (json_int_t)r->failures, "ejections", (json_int_t)r->ejections,
                     "ejected_for_ms", (json_int_t)r->ejected_for_ms);
}

static const char *resolve_state(const struct backend_server_cfg *scfg, const struct dserver *sv)
{
    if (scfg->ip_literal)
        return "static";
    return sv->rstate == RESOLVER_OK        ? "ok"
           : sv->rstate == RESOLVER_FAILING ? "failing"
                                            : "pending";
}

json_t *discovery_backends_json(struct discovery *d)
{
    json_t *out = json_object();
    if (d == NULL || d->view == NULL)
        return out;
    struct discovery_addr *rows;
    int n = discovery_addresses(d, &rows);
    if (n < 0)
        return out;
    const struct dview *v = d->view;
    for (size_t b = 0; b < v->cfg->n_backends; b++) {
        const struct backend_cfg *be = &v->cfg->backends[b];
        const struct dbackend *bk = &v->backends[b];
        json_t *servers = json_array();
        for (size_t s = 0; s < be->n_servers; s++) {
            const struct backend_server_cfg *scfg = &be->servers[s];
            const struct dserver *sv = &bk->servers[s];
            json_t *addrs = json_array();
            for (size_t i = 0; i < sv->n; i++) {
                char a[UPSTATS_LABEL_SIZE];
                json_array_append_new(addrs,
                                      json_string(lb_addr_format(&sv->addrs[i], a, sizeof(a))));
            }
            json_array_append_new(
                servers, json_pack("{s:s,s:s,s:i,s:{s:s,s:o},s:o}", "url", scfg->url, "host",
                                   scfg->host, "weight", scfg->weight, "resolve", "state",
                                   resolve_state(scfg, sv), "error",
                                   sv->rerror != NULL && !scfg->ip_literal ? json_string(sv->rerror)
                                                                           : json_null(),
                                   "addresses", addrs));
        }
        json_t *addresses = json_array();
        bool ready = false;
        for (int i = 0; i < n; i++) {
            const struct discovery_addr *r = &rows[i];
            if (strcmp(r->backend, be->name) != 0)
                continue;
            int server = -1;
            for (size_t k = 0; k < bk->n_targets && server < 0; k++) {
                if (strcmp(bk->targets[k].label, r->server) == 0)
                    server = bk->targets[k].server;
            }
            if (!r->current && r->status == UPSTATS_GONE && r->active == 0)
                continue; /* only counters are left of it: /metrics has them */
            ready = ready || r->up;
            json_array_append_new(addresses, address_json(r, server));
        }
        json_object_set_new(
            out, be->name,
            json_pack("{s:s,s:b,s:o,s:o}", "lb",
                      be->lb.policy == LB_LEAST_REQUESTS ? "least_requests" : "round_robin",
                      "ready", ready, "servers", servers, "addresses", addresses));
    }
    free(rows);
    return out;
}
