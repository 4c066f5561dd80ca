/* Asynchronous DNS on c-ares, driven by a libuv loop: see resolver.h.
 *
 * c-ares tells us which of its sockets to watch through its socket-state
 * callback; each gets a uv_poll handle, and readiness goes back through
 * ares_process_fd. Its retransmission and timeout schedule is read with
 * ares_timeout after every step and kept in one uv_timer. Each watched name
 * has its own uv_timer for the next lookup.
 *
 * Lifetimes: the resolver counts its open handles (its timer, the polls and
 * the watches' timers) and is freed when the last one closes after
 * resolver_close. A watch is freed when its timer is closed and no lookup of
 * it is in flight (c-ares cannot cancel one query: an unwatched watch waits
 * for its answer, or for ares_destroy, which answers every query). */
#include "ficus/resolver.h"
#include "ficus/common.h"
#include "ficus/lb.h"
#include "ficus/log.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT_MS 2000
#define DEFAULT_TRIES      2
#define LOG_ADDRS_MAX      8 /* addresses named in one log line; the rest are counted */

struct rsock {
    uv_poll_t poll;
    ares_socket_t fd;
    struct resolver *r;
    struct rsock *next;
};

struct resolver {
    uv_loop_t *loop;
    ares_channel channel;
    bool channel_live;
    uv_timer_t timer; /* c-ares's next timeout */
    struct rsock *socks;
    struct resolver_watch *watches; /* watched (not yet unwatched) names */
    int open_handles;
    bool closing;
    bool quiet; /* names are not logged */
    void (*done)(void *arg);
    void *done_arg;
    /* Scratch for one answer at a time (callbacks run on the loop's thread):
     * everything it holds before sorting, and the set it keeps. */
    struct sockaddr_storage answer_all[RESOLVER_ADDRS_MAX * 4];
    struct sockaddr_storage answer[RESOLVER_ADDRS_MAX];
};

struct resolver_watch {
    struct resolver *r;
    struct resolver_watch *next;
    char *host;
    uint16_t port;
    int min_ms, max_ms;
    resolver_cb cb; /* NULL once unwatched */
    void *ctx;
    uv_timer_t timer; /* the next lookup */
    bool timer_open;
    bool in_flight;
    bool literal; /* an IP address: reported once, never looked up */
    enum resolver_state state;
    const char *error;
    int failures; /* in a row: the retry backoff */
    size_t dropped;
    uint64_t lookups;
    size_t n;
    struct sockaddr_storage addrs[RESOLVER_ADDRS_MAX];
};

static void update_timer(struct resolver *r);

/* ---- handles and lifetimes ------------------------------------------------- */

static void resolver_maybe_free(struct resolver *r)
{
    if (!r->closing || r->open_handles > 0)
        return;
    void (*done)(void *) = r->done;
    void *arg = r->done_arg;
    free(r);
    ares_library_cleanup();
    if (done != NULL)
        done(arg);
}

static void watch_maybe_free(struct resolver_watch *w)
{
    if (w->cb != NULL || w->timer_open || w->in_flight)
        return;
    free(w->host);
    free(w);
}

static void on_watch_timer_closed(uv_handle_t *h)
{
    struct resolver_watch *w = h->data;
    struct resolver *r = w->r;
    w->timer_open = false;
    r->open_handles--;
    watch_maybe_free(w);
    resolver_maybe_free(r);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct resolver *r = h->data;
    r->open_handles--;
    resolver_maybe_free(r);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct rsock *s = h->data;
    struct resolver *r = s->r;
    free(s);
    r->open_handles--;
    resolver_maybe_free(r);
}

/* ---- c-ares's sockets and timeouts ----------------------------------------- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct rsock *s = h->data;
    struct resolver *r = s->r;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;
    if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT)))
        rfd = s->fd; /* an error is found by reading */
    if (status < 0 || (events & UV_WRITABLE))
        wfd = s->fd;
    ares_process_fd(r->channel, rfd, wfd); /* may close s through on_sock_state */
    update_timer(r);
}

static void close_sock(struct resolver *r, struct rsock *s)
{
    for (struct rsock **pp = &r->socks; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    /* Synchronous: the fd leaves the loop before c-ares closes it, so a new
     * socket that reuses the number is not confused with it. */
    uv_close((uv_handle_t *)&s->poll, on_poll_closed);
}

/* c-ares opens, wants to watch, or is about to close fd. */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct resolver *r = data;
    struct rsock *s = r->socks;
    while (s != NULL && s->fd != fd)
        s = s->next;
    if (!readable && !writable) {
        if (s != NULL)
            close_sock(r, s);
        return;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL || uv_poll_init_socket(r->loop, &s->poll, fd) != 0) {
            /* The query then ends in its timeout: slower, never stuck. */
            log_error("resolver", "cannot watch a DNS socket fd=%d", (int)fd);
            free(s);
            return;
        }
        s->fd = fd;
        s->r = r;
        s->poll.data = s;
        s->next = r->socks;
        r->socks = s;
        r->open_handles++;
    }
    int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
    uv_poll_start(&s->poll, events, on_poll);
}

static void on_ares_timer(uv_timer_t *t)
{
    struct resolver *r = t->data;
    ares_process_fd(r->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* expires what is due */
    update_timer(r);
}

/* Arms the timer for c-ares's next timeout, or stops it when nothing waits. */
static void update_timer(struct resolver *r)
{
    if (!r->channel_live || r->closing)
        return;
    struct timeval tv;
    if (ares_timeout(r->channel, NULL, &tv) == NULL) {
        uv_timer_stop(&r->timer);
        return;
    }
    uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
    uv_timer_start(&r->timer, on_ares_timer, ms, 0);
}

/* ---- the resolver ----------------------------------------------------------- */

/* "1.2.3.4:53,[::1]:53" for ares_set_servers_ports_csv. */
static int servers_csv(const struct sockaddr_storage *servers, size_t n, char **out)
{
    size_t cap = n * 56 + 1, off = 0;
    char *csv = malloc(cap);
    if (csv == NULL)
        return FICUS_ENOMEM;
    csv[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        char one[64];
        if (lb_addr_len(&servers[i]) == 0) {
            free(csv);
            return FICUS_ECONFIG;
        }
        lb_addr_format(&servers[i], one, sizeof(one));
        off += (size_t)snprintf(csv + off, cap - off, "%s%s", i ? "," : "", one);
    }
    *out = csv;
    return 0;
}

int resolver_new(uv_loop_t *loop, const struct resolver_options *opts, struct resolver **out)
{
    char *csv = NULL;
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        log_error("resolver", "c-ares cannot start: %s", ares_strerror(rc));
        return FICUS_ENOMEM;
    }
    struct resolver *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        rc = FICUS_ENOMEM;
        goto fail;
    }
    r->loop = loop;
    r->quiet = opts->quiet;

    struct ares_options o;
    memset(&o, 0, sizeof(o));
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    o.sock_state_cb = on_sock_state;
    o.sock_state_cb_data = r;
    o.timeout = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    o.tries = opts->tries > 0 ? opts->tries : DEFAULT_TRIES;
    char lookups[] = "b"; /* DNS only */
    if (opts->n_servers > 0) {
        /* Named servers are asked exactly what the configuration says, as
         * nginx's and HAProxy's resolvers do: no hosts file, no search list. */
        mask |= ARES_OPT_FLAGS | ARES_OPT_LOOKUPS;
        o.flags = ARES_FLAG_NOSEARCH;
        o.lookups = lookups;
        rc = servers_csv(opts->servers, opts->n_servers, &csv);
        if (rc != 0)
            goto fail;
    }
    rc = ares_init_options(&r->channel, &o, mask);
    if (rc != ARES_SUCCESS) {
        log_error("resolver", "c-ares cannot start: %s", ares_strerror(rc));
        rc = FICUS_ECONFIG;
        goto fail;
    }
    r->channel_live = true;
    if (csv != NULL) {
        rc = ares_set_servers_ports_csv(r->channel, csv);
        if (rc != ARES_SUCCESS) {
            log_error("resolver", "c-ares refuses the resolvers \"%s\": %s", csv,
                      ares_strerror(rc));
            rc = FICUS_ECONFIG;
            goto fail;
        }
    }
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    r->open_handles = 1;
    free(csv);
    *out = r;
    return 0;

fail:
    if (r != NULL && r->channel_live)
        ares_destroy(r->channel); /* no query yet: no socket, no callback */
    free(r);
    free(csv);
    ares_library_cleanup();
    return rc;
}

void resolver_close(struct resolver *r, void (*done)(void *arg), void *arg)
{
    if (r == NULL || r->closing)
        return;
    while (r->watches != NULL)
        resolver_unwatch(r->watches); /* unlinks itself */
    r->done = done;
    r->done_arg = arg;
    r->closing = true;
    /* Answers every query in flight (ARES_EDESTRUCTION) and closes c-ares's
     * sockets, telling on_sock_state for each. */
    ares_destroy(r->channel);
    r->channel_live = false;
    while (r->socks != NULL)
        close_sock(r, r->socks); /* none should be left; never leak a handle */
    uv_close((uv_handle_t *)&r->timer, on_handle_closed);
}

/* ---- watches ----------------------------------------------------------------- */

static int compare_addrs(const void *a, const void *b)
{
    return lb_addr_compare(a, b);
}

static void set_state(struct resolver_watch *w, enum resolver_state s, const char *error)
{
    w->state = s;
    w->error = error;
}

static void describe(const struct sockaddr_storage *addrs, size_t n, char *out, size_t size)
{
    size_t off = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && i < LOG_ADDRS_MAX && off < size; i++) {
        char one[64];
        lb_addr_format(&addrs[i], one, sizeof(one));
        off += (size_t)snprintf(out + off, size - off, "%s%s", i ? "," : "", one);
    }
    if (n > LOG_ADDRS_MAX && off < size)
        snprintf(out + off, size - off, ",+%zu more", n - LOG_ADDRS_MAX);
}

static void report(struct resolver_watch *w, bool changed)
{
    struct resolver_result res = {
        .state = w->state,
        .addrs = w->addrs,
        .n = w->n,
        .addrs_changed = changed,
        .error = w->error,
    };
    w->cb(w->ctx, &res);
}

static void schedule(struct resolver_watch *w, uint64_t ms);

/* Takes the addresses of a successful answer: every IPv4 and IPv6 address,
 * the watch's port set, sorted, without duplicates, at most RESOLVER_ADDRS_MAX.
 * Returns how many and the answer's smallest TTL in *ttl_s. */
static size_t take_addrs(const struct resolver_watch *w, const struct ares_addrinfo *ai,
                         struct sockaddr_storage *out, size_t *dropped, int *ttl_s)
{
    struct sockaddr_storage *all = w->r->answer_all;
    const size_t all_cap = ARRAY_SIZE(w->r->answer_all);
    size_t n = 0, seen = 0;
    int ttl = -1;
    for (const struct ares_addrinfo_node *nd = ai ? ai->nodes : NULL; nd != NULL;
         nd = nd->ai_next) {
        if ((nd->ai_family != AF_INET && nd->ai_family != AF_INET6) || nd->ai_addr == NULL ||
            nd->ai_addrlen > sizeof(struct sockaddr_storage))
            continue;
        if (ttl < 0 || nd->ai_ttl < ttl)
            ttl = nd->ai_ttl;
        seen++;
        if (n == all_cap)
            continue;
        struct sockaddr_storage *ss = &all[n++];
        memset(ss, 0, sizeof(*ss));
        memcpy(ss, nd->ai_addr, nd->ai_addrlen);
        if (ss->ss_family == AF_INET)
            ((struct sockaddr_in *)ss)->sin_port = htons(w->port);
        else
            ((struct sockaddr_in6 *)ss)->sin6_port = htons(w->port);
    }
    for (const struct ares_addrinfo_cname *c = ai ? ai->cnames : NULL; c != NULL; c = c->next) {
        if (ttl < 0 || c->ttl < ttl)
            ttl = c->ttl; /* an alias expires with its CNAME record too */
    }
    qsort(all, n, sizeof(all[0]), compare_addrs);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && lb_addr_compare(&all[i], &all[i - 1]) == 0) {
            seen--;
            continue;
        }
        if (k < RESOLVER_ADDRS_MAX)
            out[k++] = all[i];
    }
    *dropped = seen - k;
    *ttl_s = ttl < 0 ? 0 : ttl;
    return k;
}

static void on_failure(struct resolver_watch *w, const char *why)
{
    enum resolver_state was = w->state;
    set_state(w, RESOLVER_FAILING, why);
    if (w->failures < 30)
        w->failures++;
    if (was != RESOLVER_FAILING) {
        if (!w->r->quiet)
            log_warn("resolver", "cannot resolve name=%s reason=\"%s\" keeping=%zu addresses",
                     w->host, why, w->n);
        report(w, false);
    }
    if (w->cb == NULL)
        return; /* unwatched by the callback */
    uint64_t ms = (uint64_t)w->min_ms;
    for (int i = 1; i < w->failures && ms < (uint64_t)w->max_ms; i++)
        ms *= 2;
    schedule(w, ms < (uint64_t)w->max_ms ? ms : (uint64_t)w->max_ms);
}

static void on_success(struct resolver_watch *w, const struct sockaddr_storage *addrs, size_t n,
                       size_t dropped, int ttl_s)
{
    enum resolver_state was = w->state;
    bool changed = n != w->n || memcmp(addrs, w->addrs, n * sizeof(*addrs)) != 0;
    char list[LOG_ADDRS_MAX * 56 + 32];
    if (changed) {
        memcpy(w->addrs, addrs, n * sizeof(*addrs));
        w->n = n;
        describe(w->addrs, w->n, list, sizeof(list));
        if (!w->r->quiet && was == RESOLVER_PENDING)
            log_debug("resolver", "resolved name=%s addresses=%s", w->host, list);
        else if (!w->r->quiet)
            log_info("resolver", "addresses changed name=%s addresses=%s", w->host, list);
    }
    if (dropped != w->dropped && dropped > 0 && !w->r->quiet)
        log_warn("resolver", "name=%s has more than %d addresses: %zu left out", w->host,
                 RESOLVER_ADDRS_MAX, dropped);
    w->dropped = dropped;
    if (was == RESOLVER_FAILING && !w->r->quiet)
        log_info("resolver", "resolves again name=%s addresses=%zu", w->host, w->n);
    set_state(w, RESOLVER_OK, NULL);
    w->failures = 0;
    if (changed || was != RESOLVER_OK)
        report(w, changed);
    if (w->cb == NULL)
        return;
    uint64_t ms = (uint64_t)ttl_s * 1000;
    if (ms < (uint64_t)w->min_ms)
        ms = (uint64_t)w->min_ms;
    if (ms > (uint64_t)w->max_ms)
        ms = (uint64_t)w->max_ms;
    schedule(w, ms);
}

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    (void)timeouts;
    struct resolver_watch *w = arg;
    w->in_flight = false;
    if (w->cb == NULL || status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
        ares_freeaddrinfo(ai);
        watch_maybe_free(w);
        return;
    }
    struct sockaddr_storage *addrs = w->r->answer;
    size_t n = 0, dropped = 0;
    int ttl_s = 0;
    if (status == ARES_SUCCESS)
        n = take_addrs(w, ai, addrs, &dropped, &ttl_s);
    ares_freeaddrinfo(ai);
    if (status != ARES_SUCCESS)
        on_failure(w, ares_strerror(status));
    else if (n == 0)
        on_failure(w, "no address in the answer");
    else
        on_success(w, addrs, n, dropped, ttl_s);
    watch_maybe_free(w); /* when the callback unwatched it */
}

static void on_watch_timer(uv_timer_t *t)
{
    struct resolver_watch *w = t->data;
    struct resolver *r = w->r;
    if (w->literal) {
        set_state(w, RESOLVER_OK, NULL);
        report(w, true); /* once: an address does not change */
        return;
    }
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = ARES_AI_NOSORT; /* sorted here; no probe sockets for RFC 6724 order */
    w->in_flight = true;
    w->lookups++;
    /* The callback may run inside this call (a hosts file answer). */
    ares_getaddrinfo(r->channel, w->host, NULL, &hints, on_addrinfo, w);
    update_timer(r);
}

static void schedule(struct resolver_watch *w, uint64_t ms)
{
    uv_timer_start(&w->timer, on_watch_timer, ms, 0);
}

int resolver_watch(struct resolver *r, const char *host, uint16_t port, int min_ms, int max_ms,
                   resolver_cb cb, void *ctx, struct resolver_watch **out)
{
    if (r->closing || cb == NULL || host == NULL || host[0] == '\0' || min_ms < 1 ||
        max_ms < min_ms)
        return FICUS_ECONFIG;
    struct resolver_watch *w = calloc(1, sizeof(*w));
    char *copy = strdup(host);
    if (w == NULL || copy == NULL) {
        free(w);
        free(copy);
        return FICUS_ENOMEM;
    }
    w->r = r;
    w->host = copy;
    w->port = port;
    w->min_ms = min_ms;
    w->max_ms = max_ms;
    w->cb = cb;
    w->ctx = ctx;
    set_state(w, RESOLVER_PENDING, NULL);

    struct sockaddr_in *sin = (struct sockaddr_in *)&w->addrs[0];
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&w->addrs[0];
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        w->literal = true;
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        w->literal = true;
    } else {
        memset(&w->addrs[0], 0, sizeof(w->addrs[0]));
    }
    w->n = w->literal ? 1 : 0;

    uv_timer_init(r->loop, &w->timer);
    w->timer.data = w;
    w->timer_open = true;
    r->open_handles++;
    w->next = r->watches;
    r->watches = w;
    schedule(w, 0); /* on the next turn of the loop: cb never runs inside this call */
    *out = w;
    return 0;
}

void resolver_unwatch(struct resolver_watch *w)
{
    if (w == NULL || w->cb == NULL)
        return;
    struct resolver *r = w->r;
    for (struct resolver_watch **pp = &r->watches; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    w->cb = NULL;
    w->ctx = NULL;
    uv_close((uv_handle_t *)&w->timer, on_watch_timer_closed); /* frees w, with no lookup left */
}

void resolver_watch_result(const struct resolver_watch *w, struct resolver_result *out)
{
    out->state = w->state;
    out->addrs = w->addrs;
    out->n = w->n;
    out->addrs_changed = false;
    out->error = w->error;
}

uint64_t resolver_watch_lookups(const struct resolver_watch *w)
{
    return w->lookups;
}

/* ---- one-shot lookups --------------------------------------------------------- */

struct oneshot {
    struct resolver_query *q;
    struct resolver_watch *w;
    size_t *left;
};

static void on_oneshot(void *ctx, const struct resolver_result *res)
{
    struct oneshot *o = ctx;
    struct resolver_query *q = o->q;
    q->state = res->state;
    q->error = res->error;
    q->n = res->state == RESOLVER_OK ? res->n : 0;
    memcpy(q->addrs, res->addrs, q->n * sizeof(q->addrs[0]));
    resolver_unwatch(o->w); /* the first answer is all it wants */
    o->w = NULL;
    (*o->left)--;
}

static void on_oneshot_deadline(uv_timer_t *t)
{
    (void)t; /* uv_run returns after this turn; the caller sees the time is up */
}

static void on_oneshot_closed(void *arg)
{
    *(bool *)arg = true;
}

int resolver_resolve_now(const struct resolver_options *opts, struct resolver_query *q, size_t n,
                         int deadline_ms)
{
    for (size_t i = 0; i < n; i++) {
        q[i].state = RESOLVER_FAILING;
        q[i].error = "timed out";
        q[i].n = 0;
    }
    if (n == 0)
        return 0;
    uv_loop_t loop;
    int rc = uv_loop_init(&loop);
    if (rc != 0)
        return rc;
    struct oneshot *os = calloc(n, sizeof(*os));
    struct resolver *r = NULL;
    if (os == NULL)
        rc = FICUS_ENOMEM;
    else
        rc = resolver_new(&loop, opts, &r);
    size_t left = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        os[i].q = &q[i];
        os[i].left = &left;
        /* The intervals do not matter: each watch ends at its first answer. */
        rc = resolver_watch(r, q[i].host, q[i].port, 1, 1, on_oneshot, &os[i], &os[i].w);
        left += rc == 0;
    }
    uv_timer_t deadline;
    uv_timer_init(&loop, &deadline);
    uv_timer_start(&deadline, on_oneshot_deadline, (uint64_t)(deadline_ms > 0 ? deadline_ms : 1),
                   0);
    uint64_t end = uv_now(&loop) + (uint64_t)(deadline_ms > 0 ? deadline_ms : 1);
    while (left > 0 && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    bool closed = r == NULL;
    if (r != NULL)
        resolver_close(r, on_oneshot_closed, &closed); /* unwatches what did not answer */
    uv_run(&loop, UV_RUN_DEFAULT);                     /* until every handle is closed */
    if (!closed || uv_loop_close(&loop) != 0)
        log_error("resolver", "a one-shot lookup left handles open");
    free(os);
    if (rc != 0) {
        for (size_t i = 0; i < n; i++) {
            if (q[i].n == 0)
                q[i].error = rc == FICUS_ENOMEM ? "out of memory" : "the resolver cannot start";
        }
    }
    return rc;
}
