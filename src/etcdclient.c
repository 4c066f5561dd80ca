/* etcd's JSON gateway over ficus's HTTP/1.1 client: unary calls with a
 * deadline each, and one streamed watch; see etcdclient.h. */
#include "ficus/etcdclient.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/http1.h"
#include "ficus/io.h"
#include "ficus/log.h"
#include "ficus/upclient.h"
#include "ficus/upstream.h"

#include <stdlib.h>
#include <string.h>

/* A watch that ends with a non-200 answer: its body is kept this far for the
 * reason. */
#define WATCH_ERROR_BODY_MAX 2048

enum ecall_state { EC_STARTING, EC_WAITING, EC_READING, EC_DONE };

/* One unary call. Freed in its timer's close callback. */
struct ecall {
    struct list node; /* in the client's calls */
    struct etcdclient *c;
    enum ecall_state state;
    enum etcdv3_call call;
    struct buf body; /* the request body (copied) */
    int endpoint;    /* where it was sent */
    int attempts;    /* connects refused so far (each moves to the next endpoint) */
    bool retried;    /* once again after a pooled connection that had closed */
    struct upstream_wait wait;
    struct upconn *up;
    struct upclient uc;
    struct buf head;
    struct http_head *parsed;
    struct buf answer; /* the response body, de-chunked */
    int status;        /* the response's HTTP status */
    uv_timer_t timer;  /* first the start (next loop turn), then the call's deadline */
    int timeout_ms;
    etcdclient_done_cb cb;
    void *ctx;
};

enum ewatch_state { EW_OFF, EW_STARTING, EW_WAITING, EW_READING };

struct ewatch {
    enum ewatch_state state;
    struct buf body;
    int endpoint;
    struct upstream_wait wait;
    struct upconn *up;
    struct upclient uc;
    struct buf head;
    struct http_head parsed;
    int status;
    bool created;          /* a first message came */
    struct buf error_body; /* a non-200 answer's start */
    int created_ms;
    struct etcdv3_stream stream;
    const struct etcdclient_watch_handlers *h;
    void *ctx;
    uint64_t generation; /* bumped when stopped: callbacks of an older watch are ignored */
};

struct etcdclient {
    uv_loop_t *loop;
    struct config *cfg;
    struct pool_set *ps;
    struct rbuf_pool rbufs;
    int current; /* the endpoint calls go to */
    bool closed;
    struct list calls;
    struct ewatch watch;
    uv_timer_t watch_timer; /* "created" deadline */
    bool watch_timer_open;
};

static const struct backend_cfg *endpoint_cfg(const struct etcdclient *c, int i)
{
    return &c->cfg->state_store.endpoints[i];
}

size_t etcdclient_endpoints(const struct etcdclient *c)
{
    return c->cfg->state_store.n_endpoints;
}

int etcdclient_endpoint(const struct etcdclient *c)
{
    return c->current;
}

const char *etcdclient_endpoint_url(const struct etcdclient *c, int endpoint)
{
    if (endpoint < 0 || (size_t)endpoint >= etcdclient_endpoints(c))
        return "";
    return endpoint_cfg(c, endpoint)->url;
}

void etcdclient_next_endpoint(struct etcdclient *c)
{
    c->current = (c->current + 1) % (int)etcdclient_endpoints(c);
}

/* The request: head and body, owned by the caller of the write. */
static char *request_bytes(const struct etcdclient *c, int endpoint, enum etcdv3_call call,
                           const struct buf *body, size_t *len)
{
    const struct backend_cfg *be = endpoint_cfg(c, endpoint);
    struct buf b;
    buf_init(&b, 0);
    bool v6 = strchr(be->host, ':') != NULL;
    buf_printf(&b, "%s %s HTTP/1.1\r\nHost: %s%s%s:%u\r\n", etcdv3_method(call), etcdv3_path(call),
               v6 ? "[" : "", be->host, v6 ? "]" : "", be->port);
    if (body != NULL)
        buf_printf(&b, "Content-Type: application/json\r\nContent-Length: %zu\r\n", body->len);
    buf_puts(&b, ETCDV3_HASLEADER_NAME ": " ETCDV3_HASLEADER_VALUE "\r\n\r\n");
    if (body != NULL && body->len > 0)
        buf_append(&b, body->data, body->len);
    if (b.data == NULL) {
        buf_dispose(&b);
        return NULL;
    }
    *len = b.len;
    return b.data; /* the buffer's bytes, freed by the write */
}

/* ---- unary calls ------------------------------------------------------------------------- */

static void ecall_on_timer_closed(uv_handle_t *h)
{
    struct ecall *e = h->data;
    buf_dispose(&e->body);
    buf_dispose(&e->head);
    buf_dispose(&e->answer);
    free(e->parsed);
    free(e);
}

/* Gives the connection back and stops waiting for one. */
static void ecall_let_go(struct ecall *e, bool reusable)
{
    upstream_cancel(&e->wait);
    upclient_stop(&e->uc);
    if (e->up != NULL) {
        struct upconn *u = e->up;
        e->up = NULL;
        upstream_release(u, reusable);
    }
}

/* The call's last act: its callback, then the timer's close frees it. */
static void ecall_finish(struct ecall *e, int status, struct etcdv3_answer *a, bool reusable)
{
    if (e->state == EC_DONE)
        return;
    e->state = EC_DONE;
    ecall_let_go(e, reusable);
    list_remove(&e->node);
    uv_timer_stop(&e->timer);
    e->cb(e->ctx, status, e->endpoint, a);
    uv_close((uv_handle_t *)&e->timer, ecall_on_timer_closed);
}

static void ecall_on_ready(void *ctx, struct upconn *u, int status);

/* Borrows a connection to the call's endpoint. */
static int ecall_acquire(struct ecall *e)
{
    e->state = EC_WAITING;
    e->wait.check_idle = true; /* a write may not be repeated: peek that it is alive */
    return upstream_acquire(e->c->ps, e->endpoint, &e->wait, ecall_on_ready, e);
}

static bool ecall_on_head(void *ctx, const struct http_head *h, const char *raw, size_t len)
{
    (void)raw;
    (void)len;
    struct ecall *e = ctx;
    e->status = h->status;
    return true;
}

static bool ecall_on_body(void *ctx, struct rbuf *rb, const char *p, size_t n)
{
    (void)rb;
    struct ecall *e = ctx;
    if (buf_append(&e->answer, p, n) == 0)
        return true;
    ecall_finish(e, FICUS_ETOOBIG, NULL, false);
    return false;
}

static void ecall_on_done(void *ctx, bool reusable)
{
    struct ecall *e = ctx;
    struct etcdv3_answer a;
    etcdv3_answer_init(&a);
    int rc =
        etcdv3_parse(e->call, e->status, e->answer.data ? e->answer.data : "", e->answer.len, &a);
    bool have = rc == 0 || rc == FICUS_ESTORE || rc == FICUS_EBADRESP;
    ecall_finish(e, rc, have ? &a : NULL, reusable);
    etcdv3_answer_dispose(&a);
}

static void ecall_on_error(void *ctx, int err)
{
    struct ecall *e = ctx;
    if (err != FICUS_ETIMEOUT && !e->retried && !upclient_got_any(&e->uc) && e->up != NULL &&
        upstream_reused(e->up)) {
        /* A pooled connection etcd had closed while it sat idle: nothing of the
         * request was read, so once more on a new one. */
        e->retried = true;
        ecall_let_go(e, false);
        int rc = ecall_acquire(e);
        if (rc != 0)
            ecall_finish(e, rc, NULL, false);
        return;
    }
    ecall_finish(e, err, NULL, false);
}

static const struct upclient_handlers ecall_handlers = {
    .on_head = ecall_on_head,
    .on_body = ecall_on_body,
    .on_done = ecall_on_done,
    .on_error = ecall_on_error,
};

static void ecall_on_ready(void *ctx, struct upconn *u, int status)
{
    struct ecall *e = ctx;
    struct etcdclient *c = e->c;
    if (status != 0) {
        /* Nothing reached this member: the next one, while there is one left. */
        e->attempts++;
        if (status != FICUS_ETIMEOUT && (size_t)e->attempts < etcdclient_endpoints(c)) {
            if (c->current == e->endpoint)
                etcdclient_next_endpoint(c);
            e->endpoint = c->current;
            int rc = ecall_acquire(e);
            if (rc == 0)
                return;
            status = rc;
        }
        ecall_finish(e, status, NULL, false);
        return;
    }
    e->up = u;
    e->state = EC_READING;
    /* The call's own timer bounds it all; the reader needs no deadline. */
    upclient_start(&e->uc, u, &ecall_handlers, e, &e->head, e->parsed, false, ETCDCLIENT_HEAD_MAX,
                   UPCLIENT_TOTAL, 0);
    size_t len = 0;
    char *req =
        request_bytes(c, e->endpoint, e->call, e->call == ETCDV3_VERSION ? NULL : &e->body, &len);
    if (req == NULL) {
        ecall_finish(e, FICUS_ENOMEM, NULL, false);
        return;
    }
    uv_buf_t b = uv_buf_init(req, (unsigned)len);
    int rc = upstream_write(u, &b, 1, NULL, req);
    if (rc != 0)
        ecall_finish(e, rc, NULL, false);
}

static void ecall_on_timer(uv_timer_t *t)
{
    struct ecall *e = t->data;
    if (e->state != EC_STARTING) {
        ecall_finish(e, FICUS_ETIMEOUT, NULL, false);
        return;
    }
    /* Started from the loop, not from etcdclient_call: a pooled connection is
     * lent at once, and whatever follows must not reach the caller before
     * etcdclient_call returned. */
    uv_timer_start(&e->timer, ecall_on_timer, (uint64_t)e->timeout_ms, 0);
    int rc = ecall_acquire(e);
    if (rc != 0)
        ecall_finish(e, rc, NULL, false);
}

int etcdclient_call(struct etcdclient *c, enum etcdv3_call call, const struct buf *body,
                    int timeout_ms, etcdclient_done_cb cb, void *ctx)
{
    if (c->closed)
        return UV_ECANCELED;
    struct ecall *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return FICUS_ENOMEM;
    e->parsed = malloc(sizeof(*e->parsed));
    buf_init(&e->body, 0);
    buf_init(&e->head, 0);
    buf_init(&e->answer, ETCDCLIENT_ANSWER_MAX);
    if (e->parsed == NULL ||
        (body != NULL && body->len > 0 && buf_append(&e->body, body->data, body->len) != 0)) {
        buf_dispose(&e->body);
        free(e->parsed);
        free(e);
        return FICUS_ENOMEM;
    }
    e->c = c;
    e->call = call;
    e->cb = cb;
    e->ctx = ctx;
    e->endpoint = c->current;
    e->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    e->state = EC_STARTING;
    uv_timer_init(c->loop, &e->timer);
    e->timer.data = e;
    list_push(&c->calls, &e->node);
    uv_timer_start(&e->timer, ecall_on_timer, 0, 0);
    return 0;
}

/* ---- the watch --------------------------------------------------------------------------- */

static void watch_end(struct etcdclient *c, int status, const char *why);

/* Stops reading and closes the watch's connection; no handler runs after. */
static void watch_close(struct etcdclient *c)
{
    struct ewatch *w = &c->watch;
    if (w->state == EW_OFF)
        return;
    w->state = EW_OFF;
    w->generation++;
    upstream_cancel(&w->wait);
    upclient_stop(&w->uc);
    if (w->up != NULL) {
        struct upconn *u = w->up;
        w->up = NULL;
        upstream_release(u, false); /* closing it is what cancels the watch */
    }
    if (c->watch_timer_open)
        uv_timer_stop(&c->watch_timer);
    etcdv3_stream_dispose(&w->stream);
    buf_dispose(&w->body);
    buf_dispose(&w->head);
    buf_dispose(&w->error_body);
}

static void watch_end(struct etcdclient *c, int status, const char *why)
{
    struct ewatch *w = &c->watch;
    const struct etcdclient_watch_handlers *h = w->h;
    void *ctx = w->ctx;
    char reason[ETCDV3_WHY_MAX + 48];
    snprintf(reason, sizeof(reason), "%s", why ? why : "");
    watch_close(c);
    h->on_end(ctx, status, reason);
}

/* A message from the stream: the first one ends the "created" deadline. */
static int watch_on_msg(void *arg, const struct etcdv3_watch_msg *m)
{
    struct etcdclient *c = arg;
    struct ewatch *w = &c->watch;
    if (!w->created) {
        w->created = true;
        uv_timer_stop(&c->watch_timer);
    }
    uint64_t gen = w->generation;
    int rc = w->h->on_message(w->ctx, m);
    if (rc != 0 && w->generation == gen && w->state != EW_OFF)
        watch_close(c); /* the owner asked to stop: no on_end */
    if (rc != 0 || w->generation != gen || w->state == EW_OFF)
        return rc != 0 ? rc : 1; /* stopped: feed no more */
    return 0;
}

static bool watch_on_head(void *ctx, const struct http_head *h, const char *raw, size_t len)
{
    (void)raw;
    (void)len;
    struct etcdclient *c = ctx;
    c->watch.status = h->status;
    return true;
}

static bool watch_on_body(void *ctx, struct rbuf *rb, const char *p, size_t n)
{
    (void)rb;
    struct etcdclient *c = ctx;
    struct ewatch *w = &c->watch;
    if (w->status != 200) {
        buf_append(&w->error_body, p, n < WATCH_ERROR_BODY_MAX ? n : WATCH_ERROR_BODY_MAX);
        return true;
    }
    uint64_t gen = w->generation;
    int rc = etcdv3_stream_feed(&w->stream, p, n, watch_on_msg, c);
    if (w->generation != gen || w->state == EW_OFF)
        return false; /* the owner stopped it (the connection is released) */
    if (rc == 0)
        return true;
    if (rc == FICUS_ETOOBIG)
        watch_end(c, rc, "a watch message over the cap");
    else
        watch_end(c, rc, w->stream.why[0] ? w->stream.why : ficus_strerror(rc));
    return false;
}

static void watch_on_done(void *ctx, bool reusable)
{
    (void)reusable;
    struct etcdclient *c = ctx;
    struct ewatch *w = &c->watch;
    if (w->status != 200) {
        char why[ETCDV3_WHY_MAX + 48];
        struct etcdv3_answer a;
        etcdv3_answer_init(&a);
        int rc = etcdv3_parse(ETCDV3_WATCH, w->status, w->error_body.data ? w->error_body.data : "",
                              w->error_body.len, &a);
        if (rc == FICUS_ESTORE)
            snprintf(why, sizeof(why), "watch answered %d: %s", w->status, a.error.message);
        else
            snprintf(why, sizeof(why), "watch answered %d", w->status);
        etcdv3_answer_dispose(&a);
        watch_end(c, FICUS_EBADRESP, why);
        return;
    }
    uint64_t gen = w->generation;
    int rc = etcdv3_stream_end(&w->stream, watch_on_msg, c);
    if (w->generation != gen || w->state == EW_OFF)
        return;
    watch_end(c, rc > 0 ? 0 : rc, rc < 0 ? w->stream.why : "the stream ended");
}

static void watch_on_error(void *ctx, int err)
{
    struct etcdclient *c = ctx;
    watch_end(c, err, ficus_strerror(err));
}

static const struct upclient_handlers watch_handlers = {
    .on_head = watch_on_head,
    .on_body = watch_on_body,
    .on_done = watch_on_done,
    .on_error = watch_on_error,
};

static void watch_on_ready(void *ctx, struct upconn *u, int status)
{
    struct etcdclient *c = ctx;
    struct ewatch *w = &c->watch;
    if (status != 0) {
        watch_end(c, status, status == FICUS_ETIMEOUT ? "connect timeout" : uv_strerror(status));
        return;
    }
    w->up = u;
    w->state = EW_READING;
    upclient_start(&w->uc, u, &watch_handlers, c, &w->head, &w->parsed, false, ETCDCLIENT_HEAD_MAX,
                   UPCLIENT_IDLE, 0);
    size_t len = 0;
    char *req = request_bytes(c, w->endpoint, ETCDV3_WATCH, &w->body, &len);
    if (req == NULL) {
        watch_end(c, FICUS_ENOMEM, "out of memory");
        return;
    }
    uv_buf_t b = uv_buf_init(req, (unsigned)len);
    int rc = upstream_write(u, &b, 1, NULL, req);
    if (rc != 0)
        watch_end(c, rc, uv_strerror(rc));
}

static void watch_on_timer(uv_timer_t *t)
{
    struct etcdclient *c = t->data;
    struct ewatch *w = &c->watch;
    if (w->state == EW_STARTING) {
        /* Started from the loop (see ecall_on_timer). */
        w->state = EW_WAITING;
        uv_timer_start(&c->watch_timer, watch_on_timer, (uint64_t)w->created_ms, 0);
        int rc = upstream_acquire(c->ps, w->endpoint, &w->wait, watch_on_ready, c);
        if (rc != 0)
            watch_end(c, rc, uv_strerror(rc));
        return;
    }
    if (w->state != EW_OFF && !w->created)
        watch_end(c, FICUS_ETIMEOUT, "no \"created\" from the watch in time");
}

int etcdclient_watch(struct etcdclient *c, const struct buf *body, int created_ms,
                     const struct etcdclient_watch_handlers *h, void *ctx)
{
    if (c->closed)
        return UV_ECANCELED;
    watch_close(c);
    struct ewatch *w = &c->watch;
    buf_init(&w->body, 0);
    buf_init(&w->head, 0);
    buf_init(&w->error_body, WATCH_ERROR_BODY_MAX);
    if (buf_append(&w->body, body->data, body->len) != 0) {
        buf_dispose(&w->body);
        return FICUS_ENOMEM;
    }
    etcdv3_stream_init(&w->stream, ETCDV3_MSG_MAX_DEFAULT);
    w->h = h;
    w->ctx = ctx;
    w->created = false;
    w->status = 0;
    w->endpoint = c->current;
    w->created_ms = created_ms > 0 ? created_ms : 1;
    w->state = EW_STARTING;
    w->wait.check_idle = true;
    uv_timer_start(&c->watch_timer, watch_on_timer, 0, 0);
    return 0;
}

void etcdclient_watch_stop(struct etcdclient *c)
{
    watch_close(c);
}

bool etcdclient_watching(const struct etcdclient *c)
{
    return c->watch.state != EW_OFF;
}

/* ---- the client -------------------------------------------------------------------------- */

struct etcdclient *etcdclient_new(uv_loop_t *loop, struct config *cfg)
{
    if (cfg->state_store.n_endpoints == 0)
        return NULL;
    struct etcdclient *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->loop = loop;
    c->cfg = config_ref(cfg);
    list_init(&c->calls);
    rbuf_pool_init(&c->rbufs, 4);
    c->ps = pool_set_new(loop, &c->rbufs, cfg, cfg->state_store.endpoints,
                         cfg->state_store.n_endpoints, 1);
    if (c->ps == NULL) {
        config_unref(c->cfg);
        free(c);
        return NULL;
    }
    uv_timer_init(loop, &c->watch_timer);
    c->watch_timer.data = c;
    c->watch_timer_open = true;
    return c;
}

static void on_watch_timer_closed(uv_handle_t *h)
{
    (void)h;
}

void etcdclient_close(struct etcdclient *c)
{
    if (c == NULL || c->closed)
        return;
    c->closed = true;
    watch_close(c);
    while (!list_empty(&c->calls)) {
        struct ecall *e = container_of(c->calls.next, struct ecall, node);
        ecall_finish(e, UV_ECANCELED, NULL, false);
    }
    if (c->watch_timer_open) {
        c->watch_timer_open = false;
        uv_close((uv_handle_t *)&c->watch_timer, on_watch_timer_closed);
    }
    /* Closes the idle connections now and the set once the rest are closed. */
    pool_set_drain(c->ps);
    pool_set_unref(c->ps);
    c->ps = NULL;
}

void etcdclient_free(struct etcdclient *c)
{
    if (c == NULL)
        return;
    etcdclient_close(c);
    rbuf_pool_dispose(&c->rbufs);
    config_unref(c->cfg);
    free(c);
}
