/* The process model: N workers, each a thread with its own loop, listening
 * sockets (SO_REUSEPORT, so the kernel spreads connections), pools and
 * counters; the main thread is the control thread: signals, reload, drain. */
#include "ficus/server.h"
#include "ficus/common.h"
#include "ficus/conn.h"
#include "ficus/control.h"
#include "ficus/log.h"
#include "ficus/upstream.h"
#include "ficus/resolver.h"
#include "ficus/admin.h"
#include "ficus/discovery.h"
#include "ficus/divlog.h"
#include "ficus/shadow.h"
#include "ficus/metrics.h"
#include "ficus/state.h"
#include "ficus/store.h"
#include "ficus/tls.h"
#include "ficus/upstats.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ACCESS_FLUSH_MS 200
#define DRAIN_CHECK_MS  20
#define TICK_MS         1000

/* ---- configuration ------------------------------------------------------------ */

static int compare_addrs(const void *a, const void *b)
{
    return lb_addr_compare(a, b);
}

/* Resolves the state store's etcd endpoint be (blocking getaddrinfo: start and
 * reload, on the control thread) into its address list, sorted and capped, from
 * cfg's arena; be->resolved keeps the first. Backends' names are followed by
 * discovery (c-ares, with `resolvers`); an etcd endpoint is resolved once per
 * load, which fits a store's stable addresses. where names it in errors. */
static int resolve_backend(struct config *cfg, struct backend_cfg *be, const char *where,
                           struct config_errors *errs)
{
    const char *why[BACKEND_SERVERS_MAX];
    size_t resolved = 0;
    for (size_t i = 0; i < be->n_servers; i++) {
        struct backend_server_cfg *sv = &be->servers[i];
        char port[8];
        snprintf(port, sizeof(port), "%u", sv->port);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        hints.ai_flags = sv->ip_literal ? AI_NUMERICHOST : 0; /* never to DNS */
        struct addrinfo *res = NULL;
        int rc = getaddrinfo(sv->host, port, &hints, &res);
        why[i] = rc != 0 ? gai_strerror(rc) : "no address";
        size_t n = 0;
        for (struct addrinfo *ai = res; rc == 0 && ai != NULL; ai = ai->ai_next)
            n += ai->ai_addrlen <= sizeof(struct sockaddr_storage);
        if (n > RESOLVER_ADDRS_MAX)
            n = RESOLVER_ADDRS_MAX;
        sv->addrs = n > 0 ? arena_alloc(&cfg->arena, n * sizeof(*sv->addrs)) : NULL;
        sv->n_addrs = 0;
        for (struct addrinfo *ai = res; sv->addrs != NULL && ai != NULL && sv->n_addrs < n;
             ai = ai->ai_next) {
            if (ai->ai_addrlen > sizeof(struct sockaddr_storage))
                continue;
            memset(&sv->addrs[sv->n_addrs], 0, sizeof(sv->addrs[0]));
            memcpy(&sv->addrs[sv->n_addrs++], ai->ai_addr, ai->ai_addrlen);
            if (resolved == 0 && sv->n_addrs == 1) {
                memcpy(&be->resolved, ai->ai_addr, ai->ai_addrlen);
                be->resolved_len = ai->ai_addrlen;
            }
        }
        if (res != NULL)
            freeaddrinfo(res);
        if (sv->n_addrs > 1)
            qsort(sv->addrs, sv->n_addrs, sizeof(sv->addrs[0]), compare_addrs);
        size_t k = 0;
        for (size_t j = 0; j < sv->n_addrs; j++) {
            if (k == 0 || lb_addr_compare(&sv->addrs[j], &sv->addrs[k - 1]) != 0)
                sv->addrs[k++] = sv->addrs[j];
        }
        sv->n_addrs = k;
        resolved += k > 0;
    }
    for (size_t i = 0; i < be->n_servers; i++) {
        char loc[96];
        const struct backend_server_cfg *sv = &be->servers[i];
        if (sv->n_addrs > 0)
            continue;
        if (where != NULL)
            snprintf(loc, sizeof(loc), "%s", where);
        else if (be->servers_listed)
            snprintf(loc, sizeof(loc), "backends.%s.servers[%zu]", be->name, i);
        else
            snprintf(loc, sizeof(loc), "backends.%s.url", be->name);
        if (resolved > 0)
            log_warn("server",
                     "%s: cannot resolve host \"%s\": %s; the backend's other servers "
                     "serve until it does",
                     loc, sv->host, why[i]);
        else
            config_errors_add(errs, "%s: %s: cannot resolve host \"%s\": %s", cfg->path, loc,
                              sv->host, why[i]);
    }
    return resolved > 0 ? 0 : FICUS_ECONFIG;
}

/* Loads, validates and resolves; names the running discovery d follows
 * already take their current addresses. */
static struct config *load_config(struct discovery *d, const char *path, struct config_errors *errs)
{
    struct config *cfg = config_load(path, errs);
    if (cfg == NULL)
        return NULL;
    int bad = tls_config_load(cfg, errs);
    if (!bad)
        bad = discovery_resolve_config(d, cfg, errs);
    for (size_t i = 0; i < cfg->state_store.n_endpoints && !bad; i++) {
        char where[48];
        snprintf(where, sizeof(where), "state_store.endpoints[%zu]", i);
        bad |= resolve_backend(cfg, &cfg->state_store.endpoints[i], where, errs);
    }
    if (bad) {
        config_unref(cfg);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_backends; i++) {
        if (cfg->backends[i].tls && !cfg->backends[i].verify)
            log_warn("server",
                     "backend %s: TLS certificate verification is off (tls.verify false): the "
                     "connection is encrypted but the server is not authenticated",
                     cfg->backends[i].name);
    }
    return cfg;
}

struct config *server_load_config(const char *path, struct config_errors *errs)
{
    return load_config(NULL, path, errs);
}

/* ---- workers -------------------------------------------------------------------- */

static void on_handle_closed_noop(uv_handle_t *h)
{
    (void)h;
}

static void on_listener_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct worker *w = listener->data;
    if (status != 0) {
        log_warn("server", "accept failed worker=%d err=%s", w->id, uv_strerror(status));
        return;
    }
    /* The listener's flags field is not ours; tls listeners are told by index.
     * The context is the current snapshot's: a reload brings new certificates
     * to new connections while open ones keep theirs. */
    size_t idx = (size_t)((uv_tcp_t *)listener - w->listeners);
    conn_accept(w, listener, w->cfg->listens[idx].tls_ctx);
}

static void worker_close_listeners(struct worker *w)
{
    for (size_t i = 0; i < w->n_listeners; i++) {
        if (!uv_is_closing((uv_handle_t *)&w->listeners[i]))
            uv_close((uv_handle_t *)&w->listeners[i], on_listener_closed);
    }
}

static void worker_finish(struct worker *w)
{
    if (w->stopped)
        return;
    w->stopped = true;
    worker_flush_access(w);
    worker_close_listeners(w);
    conn_close_all(w);
    shadow_abort_all(w);
    pool_set_close_idle(w->pools);
    uv_close((uv_handle_t *)&w->flush_timer, on_handle_closed_noop);
    uv_close((uv_handle_t *)&w->async, on_handle_closed_noop);
}

static void on_flush_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    worker_flush_access(w);
    if (w->draining && conn_none_open(w))
        worker_finish(w); /* every in-flight request is done */
}

static void worker_swap_config(struct worker *w, struct config *cfg)
{
    struct pool_set *ps =
        pool_set_new(&w->loop, &w->rbufs, cfg, cfg->backends, cfg->n_backends, cfg->workers);
    if (ps == NULL) {
        log_error("server", "reload: out of memory worker=%d", w->id);
        config_unref(cfg);
        return;
    }
    if (w->draining)
        pool_set_drain(ps);
    /* In-flight exchanges keep their own references to the old snapshot, and
     * its pools go on counting their requests; the new ones show the status. */
    pool_set_observe(w->pools, NULL);
    pool_set_observe(ps, w->upstats);
    pool_set_unref(w->pools);
    config_unref(w->cfg);
    w->pools = ps;
    w->cfg = cfg;
}

static void on_worker_async(uv_async_t *a)
{
    struct worker *w = a->data;
    uv_mutex_lock(&w->lock);
    struct config *cfg = w->pending_cfg;
    int stop = w->pending_stop;
    w->pending_cfg = NULL;
    uv_mutex_unlock(&w->lock);
    if (cfg != NULL) {
        if (w->stopped)
            config_unref(cfg);
        else
            worker_swap_config(w, cfg);
    }
    if (!w->stopped)
        discovery_apply(w->srv->discovery, w); /* addresses and health results */
    if (stop == 2) {
        worker_finish(w);
    } else if (stop == 1 && !w->draining) {
        w->draining = true;
        worker_close_listeners(w);
        pool_set_drain(w->pools);
        conn_drain(w);
        uv_timer_start(&w->flush_timer, on_flush_timer, 0, DRAIN_CHECK_MS);
    }
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    worker_flush_access(w);
    atomic_fetch_sub(&w->srv->workers_running, 1);
    uv_async_send(&w->srv->worker_done);
}

/* Opens a listening socket with SO_REUSEPORT so that every worker has its own. */
static int open_listener(const struct config_addr *a, int *out_fd)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0 || listen(fd, 511) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    *out_fd = fd;
    return 0;
}

static int worker_init(struct server *srv, struct worker *w, int id, struct config *cfg)
{
    w->id = id;
    w->srv = srv;
    w->rng = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)getpid() << 16) ^ (uint64_t)id ^ io_now_us();
    if (w->rng == 0)
        w->rng = 1;
    uv_loop_init(&w->loop);
    uv_mutex_init(&w->lock);
    uv_async_init(&w->loop, &w->async, on_worker_async);
    w->async.data = w;
    uv_timer_init(&w->loop, &w->flush_timer);
    w->flush_timer.data = w;
    rbuf_pool_init(&w->rbufs, 64);
    buf_init(&w->access_buf, 0);
    w->cfg = config_ref(cfg);
    w->pools = pool_set_new(&w->loop, &w->rbufs, cfg, cfg->backends, cfg->n_backends, cfg->workers);
    w->conns = conn_worker_new(w);
    w->upstats = upstats_new();
    if (w->pools == NULL || w->conns == NULL || w->upstats == NULL)
        return FICUS_ENOMEM;
    pool_set_observe(w->pools, w->upstats);
    w->listeners = calloc(cfg->n_listens, sizeof(uv_tcp_t));
    if (w->listeners == NULL)
        return FICUS_ENOMEM;
    w->n_listeners = cfg->n_listens;
    for (size_t i = 0; i < cfg->n_listens; i++) {
        int fd = -1;
        int rc = open_listener(&cfg->listens[i].addr, &fd);
        uv_tcp_init(&w->loop, &w->listeners[i]);
        w->listeners[i].data = w;
        if (rc == 0) {
            rc = uv_tcp_open(&w->listeners[i], fd);
            if (rc != 0)
                close(fd); /* once opened, the handle owns the descriptor */
        }
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&w->listeners[i], 511, on_connection);
        if (rc != 0) {
            log_error("server", "cannot listen address=%s err=%s", cfg->listens[i].addr.text,
                      uv_strerror(rc));
            fprintf(stderr, "%s: listen: cannot listen on %s: %s\n", cfg->path,
                    cfg->listens[i].addr.text, uv_strerror(rc));
            return rc;
        }
    }
    uv_timer_start(&w->flush_timer, on_flush_timer, ACCESS_FLUSH_MS, ACCESS_FLUSH_MS);
    return 0;
}

static void worker_dispose(struct worker *w)
{
    /* The loop has ended or never ran: close whatever is left and run it out. */
    if (!w->stopped) {
        w->stopped = true;
        worker_close_listeners(w);
        if (w->conns != NULL)
            conn_close_all(w);
        uv_close((uv_handle_t *)&w->flush_timer, on_handle_closed_noop);
        uv_close((uv_handle_t *)&w->async, on_handle_closed_noop);
    }
    pool_set_unref(w->pools);
    w->pools = NULL;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0)
        log_warn("server", "worker loop had open handles worker=%d", w->id);
    free(w->listeners);
    conn_worker_free(w->conns);
    w->conns = NULL;
    rbuf_pool_dispose(&w->rbufs);
    upstats_free(w->upstats);
    w->upstats = NULL;
    buf_dispose(&w->access_buf);
    config_unref(w->cfg);
    config_unref(w->pending_cfg);
    uv_mutex_destroy(&w->lock);
}

/* ---- control thread ---------------------------------------------------------------- */

static int open_access_log(const struct config *cfg)
{
    if (cfg->access_log_path == NULL)
        return -1;
    if (strcmp(cfg->access_log_path, "-") == 0)
        return dup(STDOUT_FILENO);
    int fd = open(cfg->access_log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        log_error("server", "cannot open access log path=%s err=%s", cfg->access_log_path,
                  strerror(errno));
    return fd;
}

/* FNV-1a of the configuration file's bytes (0 when it cannot be read). */
static uint64_t config_file_hash(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return 0;
    uint64_t h = FNV_SEED;
    char b[8192];
    size_t n;
    while ((n = fread(b, 1, sizeof(b), f)) > 0)
        h = hash_fnv1a(b, n, h);
    fclose(f);
    return h;
}

/* reload_on_change: the file (or what its path resolves to: a mounted
 * ConfigMap changes by an atomic symlink swap, which stat follows) changed;
 * it is reloaded as on SIGHUP when its bytes differ from the last ones tried. */
static void on_config_changed(uv_fs_poll_t *h, int status, const uv_stat_t *prev,
                              const uv_stat_t *curr)
{
    (void)prev;
    (void)curr;
    struct server *srv = h->data;
    if (status < 0) {
        log_warn("server",
                 "configuration file unreadable path=%s err=%s (the running "
                 "configuration stays)",
                 srv->config_path, uv_strerror(status));
        return;
    }
    uint64_t hash = config_file_hash(srv->config_path);
    if (hash == 0 || hash == srv->config_hash)
        return;
    log_info("server", "configuration file changed path=%s: reloading", srv->config_path);
    struct config_errors errs = {0};
    server_reload(srv, &errs); /* errors are logged; the running configuration stays */
    config_errors_dispose(&errs);
}

/* Starts or stops watching the file as the running configuration asks. */
static void config_watch(struct server *srv)
{
    bool want = srv->cfg->reload_on_change && !srv->draining;
    if (want && !srv->config_polling) {
        if (uv_fs_poll_start(&srv->config_poll, on_config_changed, srv->config_path, 1000) == 0)
            srv->config_polling = true;
    } else if (!want && srv->config_polling) {
        uv_fs_poll_stop(&srv->config_poll);
        srv->config_polling = false;
    }
}

int server_reload(struct server *srv, struct config_errors *errs)
{
    srv->config_hash = config_file_hash(srv->config_path);
    struct config *cfg = load_config(srv->discovery, srv->config_path, errs);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs->n; i++)
            log_error("server", "reload rejected: %s", errs->lines[i]);
        return FICUS_ECONFIG;
    }
    /* The running state table is the truth for overrides: it is what was saved. */
    if (state_table_bind(srv->state, cfg) != 0) {
        config_errors_add(errs, "%s: out of memory", cfg->path);
        log_error("server", "reload rejected: out of memory");
        config_unref(cfg);
        return FICUS_ECONFIG;
    }
    if (cfg->n_listens != srv->cfg->n_listens || cfg->workers != srv->cfg->workers)
        log_warn("server", "reload: listen and workers changes take effect at the next restart");
    discovery_reload(srv->discovery, cfg); /* before the workers take cfg */
    for (int i = 0; i < srv->n_workers; i++) {
        struct worker *w = &srv->workers[i];
        uv_mutex_lock(&w->lock);
        config_unref(w->pending_cfg);
        w->pending_cfg = config_ref(cfg);
        uv_mutex_unlock(&w->lock);
        uv_async_send(&w->async);
    }
    config_unref(srv->cfg);
    srv->cfg = cfg;
    config_watch(srv);
    store_config_changed(srv->store);
    log_info("server", "configuration reloaded path=%s routes=%zu", cfg->path, cfg->n_routes);
    return 0;
}

static void on_tick(uv_timer_t *t)
{
    control_tick(t->data);
}

static void signal_workers(struct server *srv, int stop)
{
    for (int i = 0; i < srv->n_workers; i++) {
        struct worker *w = &srv->workers[i];
        uv_mutex_lock(&w->lock);
        if (w->pending_stop < stop)
            w->pending_stop = stop;
        uv_mutex_unlock(&w->lock);
        uv_async_send(&w->async);
    }
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct server *srv = t->data;
    log_warn("server", "drain deadline passed: closing remaining connections");
    signal_workers(srv, 2);
}

void server_stop(struct server *srv)
{
    if (srv->draining)
        return;
    srv->draining = true;
    log_info("server", "stopping: draining for up to %d ms", srv->cfg->drain_ms);
    admin_stop(srv->admin);
    srv->admin = NULL;
    store_stop(srv->store); /* leaves the fleet: the lease is revoked */
    config_watch(srv);      /* draining: no more reloads */
    discovery_stop(srv->discovery);
    signal_workers(srv, 1);
    uv_timer_start(&srv->drain_timer, on_drain_timeout, (uint64_t)srv->cfg->drain_ms, 0);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct server *srv = s->data;
    if (signum == SIGTERM || signum == SIGINT) {
        server_stop(srv);
    } else if (signum == SIGHUP) {
        struct config_errors errs = {0};
        server_reload(srv, &errs);
        config_errors_dispose(&errs);
    } else if (signum == SIGUSR1) {
        int fd = open_access_log(srv->cfg);
        int old = srv->access_fd;
        /* Workers read the descriptor per flush; dup2 swaps it in place. */
        if (fd >= 0 && old >= 0) {
            dup2(fd, old);
            close(fd);
        } else if (fd >= 0) {
            close(fd);
        }
        divlog_reopen(srv->divlog);
        log_info("server", "log files reopened");
    }
}

static void on_worker_done(uv_async_t *a)
{
    struct server *srv = a->data;
    if (atomic_load(&srv->workers_running) > 0)
        return;
    uv_close((uv_handle_t *)&srv->sig_term, NULL);
    uv_close((uv_handle_t *)&srv->sig_int, NULL);
    uv_close((uv_handle_t *)&srv->sig_hup, NULL);
    uv_close((uv_handle_t *)&srv->sig_usr1, NULL);
    uv_close((uv_handle_t *)&srv->drain_timer, NULL);
    uv_close((uv_handle_t *)&srv->tick_timer, NULL);
    uv_close((uv_handle_t *)&srv->config_poll, NULL);
    uv_close((uv_handle_t *)&srv->worker_done, NULL);
    divlog_free(srv->divlog); /* after the workers: nothing pushes any more */
    srv->divlog = NULL;
}

/* glibc raises its mmap threshold up to 32 MiB each time a large block is
 * freed, after which large captures and parse arenas come from the heap and
 * their memory stays with the process when they are freed (a burst of 4 MiB
 * comparisons left 80 MiB resident). A fixed threshold keeps blocks of 256 KiB
 * and more in their own mappings, given back on free, so that what the shadow
 * budget bounds is what the process holds. */
static void memory_policy(void)
{
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
}

int server_run(const char *path)
{
    signal(SIGPIPE, SIG_IGN);
    memory_policy();
    struct config_errors errs = {0};
    struct config *cfg = server_load_config(path, &errs);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.lines[i]);
        config_errors_dispose(&errs);
        return 1;
    }
    config_errors_dispose(&errs);

    struct server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        config_unref(cfg);
        return 1;
    }
    srv->config_path = path;
    srv->cfg = cfg;
    srv->reload = server_reload;
    srv->stop = server_stop;
    srv->loop = uv_default_loop();
    srv->started_at = (int64_t)time(NULL);
    srv->state = state_table_new(cfg->workers, cfg->state_file);
    if (srv->state == NULL || state_table_load(srv->state, &errs) != 0 ||
        state_table_bind(srv->state, cfg) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.lines[i]);
        config_errors_dispose(&errs);
        state_table_free(srv->state);
        config_unref(cfg);
        free(srv);
        return 1;
    }
    if (cfg->state_file == NULL && cfg->state_store.type == STATE_STORE_FILE)
        log_warn("server", "no state_file: runtime changes to routes live in memory only");
    srv->divlog = divlog_new(srv, srv->loop);
    srv->access_fd = open_access_log(cfg);
    srv->n_workers = cfg->workers;
    srv->workers = calloc((size_t)srv->n_workers, sizeof(struct worker));
    int rc = srv->workers ? 0 : FICUS_ENOMEM;
    int started = 0;
    for (int i = 0; i < srv->n_workers && rc == 0; i++) {
        rc = worker_init(srv, &srv->workers[i], i, cfg);
        started = i + 1;
    }
    if (rc != 0) {
        for (int i = 0; i < started; i++)
            worker_dispose(&srv->workers[i]);
        free(srv->workers);
        if (srv->access_fd >= 0)
            close(srv->access_fd);
        config_unref(cfg);
        state_table_free(srv->state);
        free(srv);
        uv_loop_close(uv_default_loop());
        return 1;
    }

    /* The state store last: nothing above can fail after it has handles. Out
     * of memory here leaves the file store's defaults (no etcd). */
    srv->store = store_new(srv);
    if (srv->store == NULL) {
        log_error("server", "out of memory creating the state store");
        srv->exit_code = 1;
    }

    uv_signal_init(srv->loop, &srv->sig_term);
    uv_signal_init(srv->loop, &srv->sig_int);
    uv_signal_init(srv->loop, &srv->sig_hup);
    uv_signal_init(srv->loop, &srv->sig_usr1);
    srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv->sig_usr1.data = srv;
    uv_signal_start(&srv->sig_term, on_signal, SIGTERM);
    uv_signal_start(&srv->sig_int, on_signal, SIGINT);
    uv_signal_start(&srv->sig_hup, on_signal, SIGHUP);
    uv_signal_start(&srv->sig_usr1, on_signal, SIGUSR1);
    uv_timer_init(srv->loop, &srv->drain_timer);
    srv->drain_timer.data = srv;
    uv_async_init(srv->loop, &srv->worker_done, on_worker_done);
    srv->worker_done.data = srv;
    uv_timer_init(srv->loop, &srv->tick_timer);
    srv->tick_timer.data = srv;
    uv_timer_start(&srv->tick_timer, on_tick, TICK_MS, TICK_MS);
    uv_fs_poll_init(srv->loop, &srv->config_poll);
    srv->config_poll.data = srv;
    srv->config_hash = config_file_hash(path);
    config_watch(srv);
    if (discovery_start(srv) != 0)
        log_error("server", "out of memory: backend names are not followed, no health checks");
    store_start(srv->store);
    if (srv->store == NULL)
        server_stop(srv);
    if (cfg->admin) {
        rc = admin_start(srv, srv->loop, &srv->admin);
        if (rc != 0) {
            log_error("server", "cannot listen for admin address=%s err=%s", cfg->admin_addr.text,
                      uv_strerror(rc));
            fprintf(stderr, "%s: admin.address: cannot listen on %s: %s\n", cfg->path,
                    cfg->admin_addr.text, uv_strerror(rc));
            srv->exit_code = 1;
            server_stop(srv);
        }
    }

    atomic_store(&srv->workers_running, srv->n_workers);
    for (int i = 0; i < srv->n_workers; i++)
        uv_thread_create(&srv->workers[i].thread, worker_main, &srv->workers[i]);
    for (size_t i = 0; i < cfg->n_listens; i++)
        log_info("server", "listening address=%s workers=%d", cfg->listens[i].addr.text,
                 srv->n_workers);

    uv_run(srv->loop, UV_RUN_DEFAULT);

    for (int i = 0; i < srv->n_workers; i++) {
        uv_thread_join(&srv->workers[i].thread);
        worker_dispose(&srv->workers[i]);
    }
    free(srv->workers);
    discovery_free(srv->discovery);
    if (srv->access_fd >= 0)
        close(srv->access_fd);
    store_free(srv->store);
    config_unref(srv->cfg);
    state_table_free(srv->state);
    int code = srv->exit_code;
    free(srv);
    uv_loop_close(uv_default_loop());
    log_info("server", "stopped");
    return code;
}
