/* The small HTTP/1.1 server of the admin API and the demo backends: one state
 * machine per connection (idle, head, body, linger), one timer per connection
 * for the earliest of its deadlines, and the strict head scanner and parser of
 * the data path. */
#include "ficus/httpserv.h"
#include "ficus/log.h"

#include <stdlib.h>
#include <string.h>

/* One read. A connection's input buffer holds at most one incomplete request
 * (max_head + max_body) when a read comes, so it is capped at that plus one
 * read and never refuses bytes. */
#define HTTPSERV_READ_SIZE (64 * 1024)
/* Answers queued but not yet taken by the client: beyond this, pipelined
 * requests wait and the connection is not read (a client that sends without
 * reading cannot make the server buffer without bound). */
#define HTTPSERV_WRITE_HIGH (256 * 1024)
#define HTTPSERV_BACKLOG    128
/* The warning about refused connections is logged at most this often. */
#define HTTPSERV_WARN_MS 1000

enum hconn_state {
    HCONN_IDLE,     /* no byte of the next request yet (timer: idle, once nothing is queued) */
    HCONN_HEAD,     /* part of a head is in (timer: the head deadline from its first byte) */
    HCONN_BODY,     /* the head is in, its body is not complete (timer: the body deadline) */
    HCONN_LINGER,   /* the last answer is queued: send it, shut down, discard what comes */
    HCONN_DEFERRED, /* a handler answers later: nothing is read or answered until it does */
    HCONN_CLOSED,   /* uv_close in flight; freed in its callback */
};

static const char *const hconn_state_names[] = {"idle",   "head",     "body",
                                                "linger", "deferred", "closed"};
_Static_assert(ARRAY_SIZE(hconn_state_names) == HCONN_CLOSED + 1, "a name for every state");

struct hconn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    struct httpserv *s;
    struct list node; /* in the server's list */
    enum hconn_state state;
    int open_handles; /* tcp and timer: freed when both are closed */
    struct buf in;    /* bytes of requests not yet answered, from in_off */
    size_t in_off;    /* bytes of in already answered (dropped once per read) */
    struct head_scan scan;
    struct http_head head; /* the request in HCONN_BODY */
    const char *head_at;   /* where head's bytes were when it was parsed */
    uint64_t body_len;     /* its Content-Length */
    uint64_t read_at;      /* deadline of the read state (loop ms); 0: none */
    uint64_t write_at;     /* deadline of the queued answers; 0: none */
    uint64_t drained;      /* bytes discarded in HCONN_LINGER */
    size_t write_bytes;    /* queued, not yet written */
    int writes;            /* uv_write requests in flight */
    bool reading;
    bool shut;                    /* uv_shutdown issued */
    bool peer_eof;                /* the client closed its side */
    bool in_handler;              /* the request handler runs */
    struct httpserv_later *later; /* the deferral of the request being answered */
};

/* An answer a handler gives later. Owned by its caller until
 * httpserv_later_send; c is NULL once the connection is gone. */
struct httpserv_later {
    struct hconn *c;
    struct httpserv_reply reply;
    bool is_head;
    bool keep_alive;
    bool ready; /* sent inside the handler: hconn_answer sends it */
};

struct httpserv {
    uv_tcp_t listener;
    bool listener_open;
    bool stopping;
    struct httpserv_opts o;
    struct list conns; /* every open connection */
    int n_conns;
    unsigned long long refused_conns; /* over max_conns */
    uint64_t warned_at;
    char slab[HTTPSERV_READ_SIZE]; /* a loop reads one connection at a time */
};

struct hwrite {
    uv_write_t req;
    struct hconn *c;
    char *head;
    char *body;
    size_t bytes;
};

static void hconn_process(struct hconn *c);
static void hconn_update(struct hconn *c);
static void reply_dispose(struct httpserv_reply *r);
static void hconn_read_start(struct hconn *c);

/* ---- the server's life ------------------------------------------------------------------- */

static void httpserv_maybe_free(struct httpserv *s)
{
    if (s->stopping && !s->listener_open && list_empty(&s->conns))
        free(s);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct httpserv *s = h->data;
    s->listener_open = false;
    httpserv_maybe_free(s);
}

/* ---- connections ------------------------------------------------------------------------- */

static void hconn_set_state(struct hconn *c, enum hconn_state st)
{
    log_debug(c->s->o.name, "connection state %s -> %s", hconn_state_names[c->state],
              hconn_state_names[st]);
    c->state = st;
}

static void on_hconn_closed(uv_handle_t *h)
{
    struct hconn *c = h->data;
    if (--c->open_handles > 0)
        return;
    struct httpserv *s = c->s;
    list_remove(&c->node);
    s->n_conns--;
    buf_dispose(&c->in);
    free(c);
    httpserv_maybe_free(s);
}

/* Closes the connection; idempotent, frees in the close callbacks. Queued
 * writes are cancelled (their callbacks run first). */
static void hconn_close(struct hconn *c, const char *why)
{
    if (c->state == HCONN_CLOSED)
        return;
    log_debug(c->s->o.name, "connection closed reason=%s", why);
    if (c->later != NULL) {
        struct httpserv_later *l = c->later;
        c->later = NULL;
        if (l->ready) { /* sent inside the handler: nobody holds it any more */
            reply_dispose(&l->reply);
            free(l);
        } else {
            l->c = NULL; /* its owner sends into nothing later */
        }
    }
    hconn_set_state(c, HCONN_CLOSED);
    uv_close((uv_handle_t *)&c->tcp, on_hconn_closed);
    uv_close((uv_handle_t *)&c->timer, on_hconn_closed);
}

static void on_hconn_timer(uv_timer_t *t);

/* Arms the timer for the earliest deadline. */
static void hconn_arm(struct hconn *c)
{
    uint64_t at = c->read_at;
    if (c->write_at != 0 && (at == 0 || c->write_at < at))
        at = c->write_at;
    if (at == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    uint64_t now = uv_now(c->tcp.loop);
    uv_timer_start(&c->timer, on_hconn_timer, at > now ? at - now : 0, 0);
}

static void on_hconn_written(uv_write_t *req, int status)
{
    struct hwrite *w = (struct hwrite *)req;
    struct hconn *c = w->c;
    c->writes--;
    c->write_bytes -= w->bytes;
    free(w->head);
    free(w->body);
    free(w);
    if (c->state == HCONN_CLOSED)
        return;
    if (status != 0) {
        hconn_close(c, uv_strerror(status));
        return;
    }
    /* Progress: the next queued answer gets send_ms of its own. */
    c->write_at = c->writes > 0 ? uv_now(c->tcp.loop) + c->s->o.send_ms : 0;
    if (c->state == HCONN_IDLE && c->writes == 0) /* idle time counts once all is sent */
        c->read_at = uv_now(c->tcp.loop) + c->s->o.idle_ms;
    if (c->state != HCONN_LINGER)
        hconn_process(c); /* requests that waited for the queue to shrink */
    hconn_update(c);
}

/* Queues head (and body, may be NULL) and takes ownership of both. */
static void hconn_write(struct hconn *c, struct buf *head, struct buf *body)
{
    struct hwrite *w = c->state == HCONN_CLOSED ? NULL : malloc(sizeof(*w));
    if (w == NULL || head->data == NULL) {
        free(w);
        buf_dispose(head);
        if (body != NULL)
            buf_dispose(body);
        hconn_close(c, "out of memory");
        return;
    }
    uv_buf_t ub[2];
    unsigned n = 0;
    ub[n++] = uv_buf_init(head->data, (unsigned)head->len);
    w->c = c;
    w->head = head->data;
    w->body = NULL;
    w->bytes = head->len;
    if (body != NULL && body->len > 0) {
        ub[n++] = uv_buf_init(body->data, (unsigned)body->len);
        w->body = body->data;
        w->bytes += body->len;
    } else if (body != NULL) {
        buf_dispose(body);
    }
    /* The bytes belong to the write request now. */
    buf_init(head, 0);
    if (body != NULL)
        buf_init(body, 0);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, ub, n, on_hconn_written);
    if (rc != 0) {
        free(w->head);
        free(w->body);
        free(w);
        hconn_close(c, uv_strerror(rc));
        return;
    }
    if (c->writes++ == 0)
        c->write_at = uv_now(c->tcp.loop) + c->s->o.send_ms;
    c->write_bytes += w->bytes;
}

/* Queues an answer: status line, content-type, content-length (of the body
 * even for HEAD), the server's headers, the reply's headers, and
 * "connection: close" unless keep_alive. Takes the reply's body. */
static void hconn_send(struct hconn *c, struct httpserv_reply *r, bool is_head, bool keep_alive)
{
    struct buf head;
    buf_init(&head, 0);
    buf_printf(&head, "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n", r->status,
               http1_reason(r->status), r->ctype != NULL ? r->ctype : "application/json",
               r->body.len);
    if (c->s->o.headers != NULL)
        buf_puts(&head, c->s->o.headers);
    buf_append(&head, r->headers.data, r->headers.len);
    if (!keep_alive)
        buf_puts(&head, "connection: close\r\n");
    buf_puts(&head, "\r\n");
    if (is_head)
        buf_reset(&r->body);
    hconn_write(c, &head, &r->body);
}

static void reply_init(struct httpserv_reply *r)
{
    r->status = 0;
    r->ctype = NULL;
    buf_init(&r->headers, 0);
    buf_init(&r->body, 0);
    r->conn = NULL;
}

static void reply_dispose(struct httpserv_reply *r)
{
    buf_dispose(&r->headers);
    buf_dispose(&r->body);
}

/* Ends the connection after the answers already queued: no more requests are
 * read; what the client still sends is discarded (see hconn_update). */
static void hconn_linger(struct hconn *c)
{
    if (c->state == HCONN_CLOSED || c->state == HCONN_LINGER)
        return;
    hconn_set_state(c, HCONN_LINGER);
    c->read_at = uv_now(c->tcp.loop) + c->s->o.drain_ms;
    c->drained = 0;
    buf_dispose(&c->in); /* nothing of it will be answered */
    c->in_off = 0;
}

/* Answers status with a JSON error and ends the connection (a lingering close). */
static void hconn_refuse(struct hconn *c, int status, const char *msg)
{
    log_debug(c->s->o.name, "request refused status=%d reason=\"%s\"", status, msg);
    struct httpserv_reply r;
    reply_init(&r);
    httpserv_reply_error(&r, status, msg);
    hconn_send(c, &r, false, false);
    reply_dispose(&r);
    hconn_linger(c);
}

/* Queues a handler's answer (given at once or later) to the request in
 * c->head, and gets ready for the next request or ends the connection. */
static void hconn_reply(struct hconn *c, struct httpserv_reply *r, bool is_head, bool keep_alive)
{
    struct httpserv *s = c->s;
    if (r->status < 100 || r->status > 999) {
        log_error(s->o.name, "a handler gave no status: answering 500");
        buf_reset(&r->body);
        httpserv_reply_error(r, 500, "internal error");
    }
    bool keep = keep_alive && !s->stopping;
    hconn_send(c, r, is_head, keep);
    if (!keep)
        hconn_linger(c);
    else if (c->state != HCONN_CLOSED) {
        hconn_set_state(c, HCONN_IDLE);
        c->read_at = 0; /* the idle deadline starts once the answer is written */
    }
}

/* Starts the next request: its head and body are in; the handler answers,
 * now or later. */
static void hconn_answer(struct hconn *c)
{
    struct httpserv *s = c->s;
    const char *at = c->in.data + c->in_off;
    if (at != c->head_at) {
        /* The reads of the body moved the bytes (an answered request dropped
         * from the front, a bigger buffer): the head's spans are taken again
         * from where its bytes are now. */
        if (http1_parse_head(&c->head, at, c->head.head_len, true) != 0) {
            hconn_refuse(c, 400, "bad request");
            return;
        }
        c->head_at = at;
    }
    const char *body = at + c->head.head_len;
    struct httpserv_reply r;
    reply_init(&r);
    r.conn = c;
    c->in_handler = true;
    s->o.on_request(s->o.ctx, &c->head, (struct span){body, (size_t)c->body_len}, &r);
    c->in_handler = false;
    struct httpserv_later *l = c->later;
    if (l != NULL && l->ready) {
        /* Deferred and sent inside the handler: its reply is the answer. */
        c->later = NULL;
        reply_dispose(&r);
        r = l->reply;
        free(l);
    } else if (l == NULL && c->state == HCONN_CLOSED) {
        reply_dispose(&r); /* the handler stopped the server */
        return;
    }
    c->in_off += c->head.head_len + (size_t)c->body_len;
    memset(&c->scan, 0, sizeof(c->scan));
    if (c->later != NULL) {
        /* The answer comes later: nothing more is read or answered meanwhile. */
        reply_dispose(&r);
        hconn_set_state(c, HCONN_DEFERRED);
        c->read_at = 0;
        return;
    }
    if (c->state == HCONN_CLOSED) {
        reply_dispose(&r);
        return;
    }
    hconn_reply(c, &r, c->head.is_head, c->head.keep_alive);
    reply_dispose(&r);
}

struct httpserv_later *httpserv_defer(struct httpserv_reply *r)
{
    struct hconn *c = r->conn;
    if (c == NULL || !c->in_handler || c->later != NULL)
        return NULL; /* not a handler's reply, or deferred already */
    struct httpserv_later *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    reply_init(&l->reply);
    l->c = c;
    l->is_head = c->head.is_head;
    l->keep_alive = c->head.keep_alive;
    c->later = l;
    return l;
}

struct httpserv_reply *httpserv_later_reply(struct httpserv_later *l)
{
    return &l->reply;
}

void httpserv_later_send(struct httpserv_later *l)
{
    struct hconn *c = l->c;
    if (c == NULL) { /* the client left or the server stopped */
        reply_dispose(&l->reply);
        free(l);
        return;
    }
    if (c->in_handler) {
        l->ready = true; /* hconn_answer sends it when the handler returns */
        return;
    }
    c->later = NULL;
    hconn_reply(c, &l->reply, l->is_head, l->keep_alive);
    reply_dispose(&l->reply);
    free(l);
    if (c->state == HCONN_CLOSED)
        return;
    if (c->state != HCONN_LINGER)
        hconn_process(c); /* pipelined requests that waited */
    hconn_update(c);
}

/* The head is complete (c->scan.pos bytes from in_off): parse and check it. */
static void hconn_head_done(struct hconn *c)
{
    struct httpserv *s = c->s;
    const char *data = c->in.data + c->in_off;
    if (http1_parse_head(&c->head, data, c->scan.pos, true) != 0) {
        hconn_refuse(c, 400, "bad request");
        return;
    }
    c->head_at = data;
    if (c->head.chunked) {
        hconn_refuse(c, 400, "send a content-length");
        return;
    }
    uint64_t cl = c->head.content_length > 0 ? (uint64_t)c->head.content_length : 0;
    if (cl > s->o.max_body) {
        char msg[64];
        snprintf(msg, sizeof(msg), "body over %zu KiB", s->o.max_body / 1024);
        hconn_refuse(c, 413, msg);
        return;
    }
    c->body_len = cl;
    hconn_set_state(c, HCONN_BODY);
    c->read_at = uv_now(c->tcp.loop) + s->o.body_ms;
    size_t have = c->in.len - c->in_off - c->head.head_len;
    if (c->head.expect_continue && have < cl) {
        struct buf cont;
        buf_init(&cont, 0);
        buf_puts(&cont, "HTTP/1.1 100 Continue\r\n\r\n");
        hconn_write(c, &cont, NULL);
    }
}

/* Answers every complete request buffered, in order, while the queue of
 * answers is short enough. */
static void hconn_process(struct hconn *c)
{
    struct httpserv *s = c->s;
    while (c->write_bytes < HTTPSERV_WRITE_HIGH && c->state != HCONN_DEFERRED) {
        size_t avail = c->in.len - c->in_off;
        if (c->state == HCONN_IDLE) {
            if (avail == 0)
                return;
            hconn_set_state(c, HCONN_HEAD);
            c->read_at = uv_now(c->tcp.loop) + s->o.head_ms;
        }
        if (c->state == HCONN_HEAD) {
            /* The scan goes on from where the last read left it. */
            int rs = http1_scan_head(&c->scan, c->in.data + c->in_off, avail, s->o.max_head);
            if (rs == 0)
                return;
            if (rs < 0) {
                char msg[64];
                if (rs == FICUS_EHEADTOOBIG)
                    snprintf(msg, sizeof(msg), "request head over %zu KiB", s->o.max_head / 1024);
                hconn_refuse(c, rs == FICUS_EHEADTOOBIG ? 431 : 400,
                             rs == FICUS_EHEADTOOBIG ? msg : "bad request");
                return;
            }
            hconn_head_done(c);
        }
        if (c->state != HCONN_BODY)
            return;
        if (avail < c->head.head_len + c->body_len)
            return;
        hconn_answer(c);
    }
}

static void on_hconn_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status; /* an error shows up on the next read or write */
}

/* After anything happened: the client's close, linger's shutdown and end,
 * reading on or off, the timer. */
static void hconn_update(struct hconn *c)
{
    if (c->state == HCONN_CLOSED)
        return;
    if (c->state == HCONN_IDLE && c->peer_eof && c->writes == 0) {
        hconn_close(c, "client closed");
        return;
    }
    /* The rest of the request never comes: finish the answers. (While
     * pipelined requests wait for the queue to shrink, they come first.) */
    if ((c->state == HCONN_HEAD || c->state == HCONN_BODY) && c->peer_eof &&
        c->write_bytes < HTTPSERV_WRITE_HIGH)
        hconn_linger(c);
    if (c->state == HCONN_LINGER && c->writes == 0) {
        if (c->peer_eof) {
            hconn_close(c, "done");
            return;
        }
        if (!c->shut) {
            /* The FIN tells the client that the answer is whole; its bytes
             * still coming are read and dropped until it closes. */
            c->shut = true;
            int rc = uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_hconn_shutdown);
            if (rc != 0) {
                hconn_close(c, uv_strerror(rc));
                return;
            }
        }
    }
    bool want = !c->peer_eof && c->state != HCONN_DEFERRED &&
                (c->state == HCONN_LINGER || c->write_bytes < HTTPSERV_WRITE_HIGH);
    if (want != c->reading) {
        if (want) {
            hconn_read_start(c);
            if (c->state == HCONN_CLOSED)
                return;
        } else {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = false;
        }
    }
    hconn_arm(c);
}

static void on_hconn_timer(uv_timer_t *t)
{
    struct hconn *c = t->data;
    uint64_t now = uv_now(t->loop);
    if (c->write_at != 0 && now >= c->write_at) {
        hconn_close(c, "the client does not read its answers");
        return;
    }
    if (c->read_at != 0 && now >= c->read_at) {
        c->read_at = 0;
        switch (c->state) {
        case HCONN_IDLE:
            hconn_close(c, "idle");
            return;
        case HCONN_HEAD:
            hconn_refuse(c, 408, "request head not complete in time");
            break;
        case HCONN_BODY:
            hconn_refuse(c, 408, "request body not complete in time");
            break;
        case HCONN_LINGER:
            hconn_close(c, "linger deadline");
            return;
        case HCONN_DEFERRED: /* the deferral's owner bounds the wait */
            break;
        case HCONN_CLOSED:
            return;
        }
    }
    hconn_update(c);
}

static void on_hconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct hconn *c = h->data;
    (void)suggested;
    *out = uv_buf_init(c->s->slab, sizeof(c->s->slab));
}

static void on_hconn_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *ub)
{
    struct hconn *c = st->data;
    if (nread == 0 || c->state == HCONN_CLOSED)
        return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            hconn_close(c, uv_strerror((int)nread));
            return;
        }
        c->peer_eof = true;
        uv_read_stop(st);
        c->reading = false;
        hconn_update(c);
        return;
    }
    if (c->state == HCONN_LINGER) {
        c->drained += (uint64_t)nread;
        if (c->drained > c->s->o.drain_bytes)
            hconn_close(c, "linger byte limit");
        return;
    }
    /* Drop what was answered, once per read rather than once per request. */
    if (c->in_off > 0) {
        buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    if (buf_append(&c->in, ub->base, (size_t)nread) != 0) {
        hconn_close(c, "out of memory"); /* the cap cannot be reached: see HTTPSERV_READ_SIZE */
        return;
    }
    hconn_process(c);
    hconn_update(c);
}

static void hconn_read_start(struct hconn *c)
{
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_hconn_alloc, on_hconn_read);
    if (rc != 0) {
        hconn_close(c, uv_strerror(rc));
        return;
    }
    c->reading = true;
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct httpserv *s = listener->data;
    if (status != 0 || s->stopping)
        return;
    struct hconn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->s = s;
    uv_tcp_init(listener->loop, &c->tcp);
    uv_timer_init(listener->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->state = HCONN_IDLE;
    buf_init(&c->in, s->o.max_head + s->o.max_body + HTTPSERV_READ_SIZE);
    list_push(&s->conns, &c->node);
    s->n_conns++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        hconn_close(c, "accept failed");
        return;
    }
    if (s->n_conns > s->o.max_conns) {
        s->refused_conns++;
        uint64_t now = uv_now(listener->loop);
        if (s->warned_at == 0 || now - s->warned_at >= HTTPSERV_WARN_MS) {
            s->warned_at = now;
            log_warn(s->o.name,
                     "connection limit reached: closing new connections limit=%d "
                     "refused_total=%llu",
                     s->o.max_conns, s->refused_conns);
        }
        hconn_close(c, "connection limit");
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->read_at = uv_now(listener->loop) + s->o.idle_ms;
    hconn_update(c); /* starts reading and the timer */
}

/* ---- public ------------------------------------------------------------------------------ */

int httpserv_start(uv_loop_t *loop, const struct sockaddr *addr, const struct httpserv_opts *o,
                   struct httpserv **out)
{
    struct httpserv *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return UV_ENOMEM;
    s->o = *o;
    list_init(&s->conns);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->listener_open = true;
    int rc = uv_tcp_bind(&s->listener, addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, HTTPSERV_BACKLOG, on_connection);
    if (rc != 0) {
        s->stopping = true;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return rc;
    }
    *out = s;
    return 0;
}

int httpserv_port(const struct httpserv *s)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

void httpserv_stop(struct httpserv *s)
{
    if (s == NULL || s->stopping)
        return;
    s->stopping = true;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    struct list *head = &s->conns;
    for (struct list *n = head->next, *next; n != head; n = next) {
        next = n->next; /* a close only begins here: the node stays until its callback */
        hconn_close(container_of(n, struct hconn, node), "server stopping");
    }
}

void httpserv_reply_error(struct httpserv_reply *r, int status, const char *msg)
{
    r->status = status;
    r->ctype = "application/json";
    buf_reset(&r->body);
    buf_puts(&r->body, "{\"error\":");
    if (buf_json_string(&r->body, msg, strlen(msg)) != 0)
        buf_puts(&r->body, "\"error\"");
    buf_puts(&r->body, "}\n");
}

int httpserv_reply_header(struct httpserv_reply *r, const char *name, const char *value)
{
    return buf_printf(&r->headers, "%s: %s\r\n", name, value);
}
