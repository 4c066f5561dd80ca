/* ficus demo: the whole migration story in one process. A demo thread runs
 * its own libuv loop with two small JSON backends (legacy and new, on
 * ephemeral loopback ports) and a traffic generator; the main thread runs
 * ficus itself through server_run with a configuration written to a
 * temporary directory. The new backend differs from legacy on purpose: a
 * changed price on some orders, a renamed status on a few, a reordered tags
 * array (which the diff rules declare unordered), and both stamp every
 * answer with a generated_at timestamp that differs on every call (noise). */
#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/demo.h"
#include "ficus/http1.h"
#include "ficus/httpserv.h"
#include "ficus/log.h"
#include "ficus/server.h"

#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define DEMO_DEFAULT_PORT  8080
#define DEMO_MAX_HEAD      (16 * 1024)
#define DEMO_MAX_BODY      (64 * 1024)
#define DEMO_MAX_RESPONSE  (1024 * 1024)
#define DEMO_ORDERS        60   /* the generator asks for ids 1..DEMO_ORDERS */
#define DEMO_USERS         40   /* distinct x-user-id values */
#define DEMO_TICK_MS       250  /* one request per tick: four a second */
#define DEMO_FIRST_TICK_MS 500  /* gives ficus time to listen */
#define DEMO_ANSWER_MS     5000 /* a request unanswered this long ends the connection */
/* The backends' deadlines. ficus closes its idle upstream connections after
 * 30 s, so the backends wait longer and ficus is the one that closes. */
#define DEMO_IDLE_MS       60000
#define DEMO_REQUEST_MS    10000 /* for a head, and for a body after its head */
#define DEMO_SEND_MS       30000
#define DEMO_DRAIN_MS      2000
#define DEMO_DRAIN_BYTES   (1024 * 1024)
#define DEMO_MAX_CONNS     1024
#define DEMO_TOKEN_ENV     "FICUS_ADMIN_TOKEN"
#define DEMO_DEFAULT_TOKEN "demo"

struct demo;

/* One demo backend: an HTTP server and its role. */
struct demo_backend {
    struct demo *d;
    const char *name;
    bool is_new;
    struct httpserv *http; /* NULL until started and once stopped */
    int port;
};

struct demo_wreq {
    uv_write_t req;
    char *data;
};

enum demo_client_state {
    DEMO_CLIENT_CLOSED,     /* no connection: the next tick connects */
    DEMO_CLIENT_CONNECTING, /* uv_tcp_connect in flight */
    DEMO_CLIENT_READY,      /* connected, idle: the next tick sends a request */
    DEMO_CLIENT_WAITING,    /* a request is out, its response is not complete */
    DEMO_CLIENT_CLOSING,    /* uv_close in flight */
};

/* The traffic generator: one keep-alive HTTP/1.1 connection to the proxy. */
struct demo_client {
    struct demo *d;
    enum demo_client_state state;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_timer_t timer;
    struct sockaddr_in proxy;
    struct buf in;
    struct head_scan scan;
    struct http_head head;
    bool have_head;
    bool keep_alive;
    struct body_framer body;
    uint64_t sent_at; /* uv_now of the request in flight */
    unsigned long long sent, answered, failed;
};

struct demo {
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t stop;
    struct demo_backend legacy, new_;
    struct demo_client client;
    uint64_t rng;
    bool stopping;
    char slab[64 * 1024]; /* read buffer: the demo loop reads one connection at a time */
};

/* ---- helpers -------------------------------------------------------------------------------- */

static void demo_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct demo *d = h->loop->data;
    (void)suggested;
    *out = uv_buf_init(d->slab, sizeof(d->slab));
}

/* An RFC 3339 UTC timestamp with microseconds: differs on every call. */
static void demo_timestamp(char *out, size_t len)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, len, "%s.%06ldZ", base, (long)tv.tv_usec);
}

/* Parses a decimal number of at most 9 digits; -1 when s is not one. */
static long demo_parse_uint(struct span s)
{
    if (s.len == 0 || s.len > 9)
        return -1;
    long v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        v = v * 10 + (s.p[i] - '0');
    }
    return v;
}

/* The value of the query parameter name, or an empty span. */
static struct span demo_query_param(struct span query, const char *name)
{
    size_t nl = strlen(name), i = 0;
    while (i < query.len) {
        size_t end = i;
        while (end < query.len && query.p[end] != '&')
            end++;
        if (end - i > nl && memcmp(query.p + i, name, nl) == 0 && query.p[i + nl] == '=')
            return (struct span){query.p + i + nl + 1, end - i - nl - 1};
        i = end + 1;
    }
    return (struct span){NULL, 0};
}

/* ---- the order API of both backends --------------------------------------------------------- */

/* Appends order id as JSON: the same on both sides but for the deliberate
 * differences of the new version. */
static void demo_order_json(struct buf *out, unsigned id, bool is_new)
{
    static const char *const statuses[] = {"pending", "paid", "shipped", "delivered"};
    static const char *const tags[] = {"gift", "express", "fragile", "eu", "priority"};
    unsigned cents = 500 + (id * 3779u) % 20000u;
    /* The new service includes VAT on some orders: the bug the demo shows. */
    if (is_new && id % 7 == 0)
        cents = (cents * 6 + 2) / 5;
    const char *status = statuses[id % 4];
    /* And it renamed one status value, which shows up on a few orders only. */
    if (is_new && id % 11 == 0 && strcmp(status, "shipped") == 0)
        status = "in_transit";
    buf_printf(out,
               "{\"id\":%u,\"customer\":\"customer-%u\",\"status\":\"%s\",\"currency\":\"EUR\","
               "\"price\":%u.%02u,\"items\":[",
               id, (id * 31u) % 997u, status, cents / 100, cents % 100);
    unsigned n_items = 1 + id % 3;
    for (unsigned k = 0; k < n_items; k++)
        buf_printf(out, "%s{\"sku\":\"SKU-%u-%u\",\"qty\":%u}", k ? "," : "", id, k + 1,
                   1 + (id + k) % 4);
    buf_puts(out, "],\"tags\":[");
    /* Three tags; the new service lists them in reverse order (the diff rules
     * declare /tags unordered, so that is no divergence). */
    for (unsigned k = 0; k < 3; k++) {
        unsigned t = is_new ? 2 - k : k;
        buf_printf(out, "%s\"%s\"", k ? "," : "", tags[(id + t) % ARRAY_SIZE(tags)]);
    }
    buf_puts(out, "]}");
}

/* Answers one request of a demo backend (an httpserv handler; ctx is the backend). */
static void demo_respond(void *ctx, const struct http_head *req, struct span req_body,
                         struct httpserv_reply *r)
{
    static const char prefix[] = "/api/orders/";
    struct demo_backend *be = ctx;
    struct buf *body = &r->body;
    int status = 200;
    char ts[48];
    (void)req_body;
    demo_timestamp(ts, sizeof(ts));
    struct span path = req->path;
    bool get = span_eq(req->method, "GET") || span_eq(req->method, "HEAD");

    if (!get) {
        status = 405;
        buf_puts(body, "{\"error\":\"method not allowed\"}");
    } else if (span_eq(path, "/healthz")) {
        buf_puts(body, "{\"status\":\"ok\"}");
    } else if (span_eq(path, "/api/orders") || span_eq(path, "/api/orders/")) {
        long limit = 10;
        struct span ls = demo_query_param(req->query, "limit");
        if (ls.len) {
            limit = demo_parse_uint(ls);
            if (limit < 1 || limit > 50)
                limit = -1;
        }
        if (limit < 0) {
            status = 400;
            buf_puts(body, "{\"error\":\"limit must be a number from 1 to 50\"}");
        } else {
            buf_puts(body, "{\"orders\":[");
            for (long i = 1; i <= limit; i++) {
                if (i > 1)
                    buf_puts(body, ",");
                demo_order_json(body, (unsigned)i, be->is_new);
            }
            buf_printf(body, "],\"count\":%ld,\"generated_at\":\"%s\"}", limit, ts);
        }
    } else if (path.len > sizeof(prefix) - 1 && memcmp(path.p, prefix, sizeof(prefix) - 1) == 0) {
        long id = demo_parse_uint(
            (struct span){path.p + sizeof(prefix) - 1, path.len - (sizeof(prefix) - 1)});
        if (id < 1 || id > 100000) {
            status = 404;
            buf_puts(body, "{\"error\":\"no such order\"}");
        } else {
            demo_order_json(body, (unsigned)id, be->is_new);
            /* Put generated_at inside the object: drop the closing brace first. */
            body->len--;
            buf_printf(body, ",\"generated_at\":\"%s\"}", ts);
        }
    } else {
        status = 404;
        buf_puts(body, "{\"error\":\"not found\"}");
    }
    r->status = status;
    r->ctype = "application/json";
}

/* Starts be on an ephemeral loopback port. Returns 0 or a libuv error. */
static int demo_backend_start(struct demo *d, struct demo_backend *be, const char *name,
                              bool is_new)
{
    be->d = d;
    be->name = name;
    be->is_new = is_new;
    const struct httpserv_opts o = {
        .name = "demo",
        /* Static strings: the server keeps the pointer. */
        .headers = is_new ? "server: orders-v2/2.0\r\ncache-control: no-store\r\n"
                          : "server: orders/1.4\r\ncache-control: no-store\r\n",
        .max_head = DEMO_MAX_HEAD,
        .max_body = DEMO_MAX_BODY,
        .max_conns = DEMO_MAX_CONNS,
        .idle_ms = DEMO_IDLE_MS,
        .head_ms = DEMO_REQUEST_MS,
        .body_ms = DEMO_REQUEST_MS,
        .send_ms = DEMO_SEND_MS,
        .drain_ms = DEMO_DRAIN_MS,
        .drain_bytes = DEMO_DRAIN_BYTES,
        .on_request = demo_respond,
        .ctx = be,
    };
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    int rc = httpserv_start(&d->loop, (const struct sockaddr *)&addr, &o, &be->http);
    if (rc != 0)
        return rc;
    be->port = httpserv_port(be->http);
    return 0;
}

/* ---- the traffic generator ------------------------------------------------------------------ */

static void demo_client_set_state(struct demo_client *cl, enum demo_client_state s)
{
    log_debug("demo", "traffic state=%d->%d", (int)cl->state, (int)s);
    cl->state = s;
}

static void on_client_closed(uv_handle_t *h)
{
    struct demo_client *cl = h->data;
    demo_client_set_state(cl, DEMO_CLIENT_CLOSED);
}

static void demo_client_close(struct demo_client *cl)
{
    if (cl->state == DEMO_CLIENT_CLOSED || cl->state == DEMO_CLIENT_CLOSING)
        return;
    if (cl->state == DEMO_CLIENT_WAITING)
        cl->failed++;
    demo_client_set_state(cl, DEMO_CLIENT_CLOSING);
    uv_close((uv_handle_t *)&cl->tcp, on_client_closed);
}

/* Consumes response bytes buffered in cl->in; one response at a time. */
static void demo_client_process(struct demo_client *cl)
{
    while (cl->state == DEMO_CLIENT_WAITING && cl->in.len > 0) {
        if (!cl->have_head) {
            int rs = http1_scan_head(&cl->scan, cl->in.data, cl->in.len, DEMO_MAX_HEAD);
            if (rs == 0)
                return;
            if (rs < 0 || http1_parse_head(&cl->head, cl->in.data, cl->scan.pos, false) != 0) {
                demo_client_close(cl);
                return;
            }
            cl->have_head = true;
            cl->keep_alive = cl->head.keep_alive;
            enum body_kind kind = BODY_EOF;
            if (!http1_response_has_body(false, cl->head.status))
                kind = BODY_NONE;
            else if (cl->head.chunked)
                kind = BODY_CHUNKED;
            else if (cl->head.content_length >= 0)
                kind = BODY_LENGTH;
            http1_body_init(&cl->body, kind,
                            kind == BODY_LENGTH ? (uint64_t)cl->head.content_length : 0);
            buf_consume(&cl->in, cl->scan.pos);
            memset(&cl->scan, 0, sizeof(cl->scan));
        }
        size_t off, n;
        int64_t used = http1_body_step(&cl->body, cl->in.data, cl->in.len, &off, &n);
        if (used < 0) {
            demo_client_close(cl);
            return;
        }
        buf_consume(&cl->in, (size_t)used);
        if (!cl->body.done)
            return;
        cl->answered++;
        cl->have_head = false;
        demo_client_set_state(cl, DEMO_CLIENT_READY);
        if (!cl->keep_alive) {
            demo_client_close(cl); /* an orderly close: the next tick reconnects */
            return;
        }
    }
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    struct demo_client *cl = s->data;
    if (nread < 0) {
        demo_client_close(cl);
        return;
    }
    if (nread == 0)
        return;
    if (buf_append(&cl->in, ub->base, (size_t)nread) != 0) {
        demo_client_close(cl);
        return;
    }
    /* A partial head is scanned again from its start with the new bytes. */
    if (!cl->have_head)
        memset(&cl->scan, 0, sizeof(cl->scan));
    demo_client_process(cl);
}

static void on_client_connected(uv_connect_t *req, int status)
{
    struct demo_client *cl = req->data;
    if (cl->state != DEMO_CLIENT_CONNECTING)
        return; /* closed meanwhile */
    if (status != 0 || cl->d->stopping) {
        log_debug("demo", "traffic cannot connect err=%s", uv_strerror(status));
        demo_client_close(cl);
        return;
    }
    uv_tcp_nodelay(&cl->tcp, 1);
    buf_reset(&cl->in);
    memset(&cl->scan, 0, sizeof(cl->scan));
    cl->have_head = false;
    if (uv_read_start((uv_stream_t *)&cl->tcp, demo_alloc, on_client_read) != 0) {
        demo_client_close(cl);
        return;
    }
    demo_client_set_state(cl, DEMO_CLIENT_READY);
}

static void on_client_written(uv_write_t *req, int status)
{
    struct demo_wreq *w = (struct demo_wreq *)req;
    struct demo_client *cl = req->data;
    free(w->data);
    free(w);
    if (status != 0)
        demo_client_close(cl);
}

/* Sends one request: mostly single orders, sometimes a list. */
static void demo_client_send(struct demo_client *cl)
{
    struct demo *d = cl->d;
    struct buf out;
    buf_init(&out, 0);
    uint64_t r = xorshift64s(&d->rng); /* picks ids and users */
    unsigned user = 1 + (unsigned)(r % DEMO_USERS);
    if ((r >> 16) % 5 == 0)
        buf_printf(&out, "GET /api/orders?limit=%u HTTP/1.1\r\n", 2 + (unsigned)((r >> 24) % 7));
    else
        buf_printf(&out, "GET /api/orders/%u HTTP/1.1\r\n",
                   1 + (unsigned)((r >> 24) % DEMO_ORDERS));
    buf_printf(&out,
               "host: 127.0.0.1:%d\r\nuser-agent: ficus-demo-traffic\r\naccept: "
               "application/json\r\nx-user-id: user-%u\r\n\r\n",
               ntohs(cl->proxy.sin_port), user);
    struct demo_wreq *w = malloc(sizeof(*w));
    if (w == NULL || out.data == NULL) {
        free(w);
        buf_dispose(&out);
        return;
    }
    w->data = out.data;
    w->req.data = cl;
    uv_buf_t ub = uv_buf_init(out.data, (unsigned)out.len);
    if (uv_write(&w->req, (uv_stream_t *)&cl->tcp, &ub, 1, on_client_written) != 0) {
        free(w->data);
        free(w);
        demo_client_close(cl);
        return;
    }
    cl->sent++;
    cl->sent_at = uv_now(&d->loop);
    demo_client_set_state(cl, DEMO_CLIENT_WAITING);
}

static void on_client_tick(uv_timer_t *t)
{
    struct demo_client *cl = t->data;
    struct demo *d = cl->d;
    if (d->stopping)
        return;
    switch (cl->state) {
    case DEMO_CLIENT_CLOSED:
        uv_tcp_init(&d->loop, &cl->tcp);
        cl->tcp.data = cl;
        cl->connect_req.data = cl;
        demo_client_set_state(cl, DEMO_CLIENT_CONNECTING);
        if (uv_tcp_connect(&cl->connect_req, &cl->tcp, (const struct sockaddr *)&cl->proxy,
                           on_client_connected) != 0)
            demo_client_close(cl);
        break;
    case DEMO_CLIENT_READY:
        demo_client_send(cl);
        break;
    case DEMO_CLIENT_WAITING:
        if (uv_now(&d->loop) - cl->sent_at > DEMO_ANSWER_MS) {
            log_warn("demo", "traffic: no answer from the proxy within %d ms; reconnecting",
                     DEMO_ANSWER_MS);
            demo_client_close(cl);
        }
        break;
    case DEMO_CLIENT_CONNECTING:
    case DEMO_CLIENT_CLOSING:
        break;
    }
}

/* ---- the demo thread ------------------------------------------------------------------------ */

static void on_demo_stop(uv_async_t *a)
{
    struct demo *d = a->data;
    d->stopping = true;
    httpserv_stop(d->legacy.http);
    d->legacy.http = NULL;
    httpserv_stop(d->new_.http);
    d->new_.http = NULL;
    demo_client_close(&d->client);
    uv_close((uv_handle_t *)&d->client.timer, NULL);
    uv_close((uv_handle_t *)&d->stop, NULL);
    log_debug("demo", "traffic sent=%llu answered=%llu failed=%llu", d->client.sent,
              d->client.answered, d->client.failed);
}

static void demo_thread(void *arg)
{
    struct demo *d = arg;
    uv_run(&d->loop, UV_RUN_DEFAULT);
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Closes whatever is still open (only after a failed start) and the loop. */
static void demo_loop_dispose(struct demo *d)
{
    /* The servers free themselves in their close callbacks, run below. */
    httpserv_stop(d->legacy.http);
    d->legacy.http = NULL;
    httpserv_stop(d->new_.http);
    d->new_.http = NULL;
    if (uv_loop_close(&d->loop) == UV_EBUSY) {
        uv_walk(&d->loop, on_walk_close, NULL);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        uv_loop_close(&d->loop);
    }
}

/* ---- the temporary directory and the configuration ------------------------------------------ */

static void demo_remove_dir(const char *dir)
{
    DIR *dh = opendir(dir);
    if (dh != NULL) {
        struct dirent *e;
        char path[PATH_MAX];
        while ((e = readdir(dh)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            if (unlink(path) != 0)
                log_warn("demo", "cannot remove %s", path);
        }
        closedir(dh);
    }
    if (rmdir(dir) != 0)
        log_warn("demo", "cannot remove the directory %s", dir);
}

/* Writes the demo configuration to dir/ficus.json (path receives its name).
 * Returns 0 or -1. */
static int demo_write_config(const struct demo *d, const char *dir, int port, char *path,
                             size_t path_len)
{
    char listen[32], admin[32], legacy_url[64], new_url[64];
    char state[PATH_MAX], divlog[PATH_MAX], access[PATH_MAX];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    snprintf(admin, sizeof(admin), "127.0.0.1:%d", port + 1);
    snprintf(legacy_url, sizeof(legacy_url), "http://127.0.0.1:%d", d->legacy.port);
    snprintf(new_url, sizeof(new_url), "http://127.0.0.1:%d", d->new_.port);
    if (snprintf(state, sizeof(state), "%s/state.json", dir) >= (int)sizeof(state) ||
        snprintf(divlog, sizeof(divlog), "%s/divergences.ndjson", dir) >= (int)sizeof(divlog) ||
        snprintf(access, sizeof(access), "%s/access.log", dir) >= (int)sizeof(access) ||
        snprintf(path, path_len, "%s/ficus.json", dir) >= (int)path_len)
        return -1; /* a temporary directory this long is not usable */

    json_t *route = json_pack(
        "{s:s, s:{s:s}, s:s, s:s, s:i, s:{s:s}, s:s, s:{s:i}, s:{s:[s,s], s:{s:i, s:f}}}", "name",
        "orders", "match", "path_prefix", "/api/orders", "legacy", d->legacy.name, "new",
        d->new_.name, "new_percent", 10, "sticky", "header", "x-user-id", "override_header",
        "x-ficus-backend", "shadow", "percent", 100, "diff", "unordered", "/tags", "/orders/*/tags",
        "noise", "percent", 50, "threshold", 0.05);
    json_t *cfg = json_pack(
        "{s:s, s:i, s:{s:s, s:s}, s:s, s:{s:{s:s}, s:{s:s}}, s:[o], s:{s:s}, s:{s:s}, s:{s:i}}",
        "listen", listen, "workers", 1, "admin", "address", admin, "token_env", DEMO_TOKEN_ENV,
        "state_file", state, "backends", d->legacy.name, "url", legacy_url, d->new_.name, "url",
        new_url, "routes", route, "divergence_log", "path", divlog, "access_log", "path", access,
        "timeouts", "drain_ms", 2000);
    if (cfg == NULL)
        return -1;
    int rc = json_dump_file(cfg, path, JSON_INDENT(2));
    json_decref(cfg);
    return rc == 0 ? 0 : -1;
}

/* ---- entry ---------------------------------------------------------------------------------- */

/* Can 127.0.0.1:port be listened on? Checked before anything starts, so that a
 * busy port is one clear line rather than a half-started demo. */
static bool demo_port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return true; /* let ficus report the real problem */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    bool ok = bind(fd, (const struct sockaddr *)&addr, sizeof(addr)) == 0;
    close(fd);
    return ok;
}

static void demo_print_banner(int port, const char *dir, bool own_token)
{
    printf("ficus demo is running:\n"
           "  proxy       http://127.0.0.1:%d\n"
           "  dashboard   http://127.0.0.1:%d/\n",
           port, port + 1);
    if (own_token)
        printf("  token       " DEMO_DEFAULT_TOKEN "  (set in " DEMO_TOKEN_ENV
               "; the dashboard asks for it)\n");
    else
        printf("  token       the value of " DEMO_TOKEN_ENV "\n");
    printf("  files       %s  (removed on exit)\n"
           "  try         curl -H 'x-user-id: alice' http://127.0.0.1:%d/api/orders/7\n"
           "              curl -H 'x-ficus-backend: new' http://127.0.0.1:%d/api/orders/7\n"
           "Traffic: 4 requests a second from 40 users; 10 %% of users go to the new backend,\n"
           "and every request is also compared against the other one. Stop with Ctrl-C.\n",
           dir, port, port);
    fflush(stdout);
}

int demo_main(int port)
{
    if (port == 0)
        port = DEMO_DEFAULT_PORT;
    if (port >= 65535) {
        fprintf(stderr, "ficus demo: --port: the dashboard needs port %d + 1: pick a lower one\n",
                port);
        return 2;
    }
    for (int p = port; p <= port + 1; p++) {
        if (!demo_port_free(p)) {
            fprintf(stderr,
                    "ficus demo: port %d is in use (the demo needs %d for the proxy and %d for "
                    "the dashboard); pick others with --port\n",
                    p, port, port + 1);
            return 1;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    const char *tok = getenv(DEMO_TOKEN_ENV);
    bool own_token = tok == NULL || tok[0] == '\0';
    if (own_token)
        setenv(DEMO_TOKEN_ENV, DEMO_DEFAULT_TOKEN, 1);

    const char *tmp = getenv("TMPDIR");
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/ficus-demo-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "ficus demo: cannot create a temporary directory in %s\n",
                tmp && tmp[0] ? tmp : "/tmp");
        return 1;
    }

    struct demo *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        rmdir(dir);
        return 1;
    }
    d->rng = uv_hrtime() | 1;
    int rc = uv_loop_init(&d->loop);
    if (rc != 0) {
        fprintf(stderr, "ficus demo: cannot start an event loop: %s\n", uv_strerror(rc));
        free(d);
        rmdir(dir);
        return 1;
    }
    d->loop.data = d;
    rc = demo_backend_start(d, &d->legacy, "orders-v1", false);
    if (rc == 0)
        rc = demo_backend_start(d, &d->new_, "orders-v2", true);
    char path[PATH_MAX];
    if (rc != 0 || demo_write_config(d, dir, port, path, sizeof(path)) != 0) {
        fprintf(stderr, "ficus demo: cannot start the demo backends: %s\n",
                rc ? uv_strerror(rc) : "cannot write the configuration");
        demo_loop_dispose(d);
        free(d);
        demo_remove_dir(dir);
        return 1;
    }

    struct demo_client *cl = &d->client;
    cl->d = d;
    buf_init(&cl->in, DEMO_MAX_RESPONSE);
    uv_ip4_addr("127.0.0.1", port, &cl->proxy);
    uv_timer_init(&d->loop, &cl->timer);
    cl->timer.data = cl;
    uv_timer_start(&cl->timer, on_client_tick, DEMO_FIRST_TICK_MS, DEMO_TICK_MS);
    uv_async_init(&d->loop, &d->stop, on_demo_stop);
    d->stop.data = d;

    /* From here on only the demo thread touches the loop; the main thread
     * only wakes it with uv_async_send. */
    rc = uv_thread_create(&d->thread, demo_thread, d);
    if (rc != 0) {
        fprintf(stderr, "ficus demo: cannot start the demo thread: %s\n", uv_strerror(rc));
        demo_loop_dispose(d);
        buf_dispose(&cl->in);
        free(d);
        demo_remove_dir(dir);
        return 1;
    }
    log_info("demo", "backends legacy=127.0.0.1:%d new=127.0.0.1:%d config=%s", d->legacy.port,
             d->new_.port, path);
    demo_print_banner(port, dir, own_token);

    int code = server_run(path);
    if (code != 0)
        fprintf(stderr,
                "ficus demo: ficus stopped with an error; is port %d or %d in use? "
                "Pick others with --port\n",
                port, port + 1);

    uv_async_send(&d->stop);
    uv_thread_join(&d->thread);
    demo_loop_dispose(d);
    buf_dispose(&cl->in);
    free(d);
    demo_remove_dir(dir);
    return code;
}
