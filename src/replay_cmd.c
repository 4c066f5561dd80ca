/* `ficus replay`: reads divergence records (NDJSON files, standard input or
 * the admin API), sends each recorded request again to both backends of its
 * route with the one HTTP client (upstream.h, upclient.h) on a libuv loop,
 * compares the answers under the route's current rules (replay.h's pure
 * half) and prints what still diverges per endpoint.
 *
 * Records are streamed: a line is read when a request slot frees up, so a
 * large log costs memory for --concurrency records, never for the whole file.
 * Single-threaded. */
#include "ficus/replay.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/discovery.h"
#include "ficus/fleet.h"
#include "ficus/http1.h"
#include "ficus/io.h"
#include "ficus/log.h"
#include "ficus/state.h"
#include "ficus/tls.h"
#include "ficus/upclient.h"
#include "ficus/upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define REPLAY_CONCURRENCY_DEFAULT 4
#define REPLAY_CONCURRENCY_MAX     256
#define REPLAY_LIST_MAX            64 /* values of one repeatable option */
#define REPLAY_ADMIN_MAX_BYTES     (64 * 1024 * 1024)
#define REPLAY_TIMEOUT_DEFAULT     10000

static const char help[] =
    "usage: ficus replay [OPTIONS] [LOG...]\n"
    "\n"
    "Sends the requests kept in divergence records again to both backends of their\n"
    "route, compares the answers under the route's current diff rules, noise and\n"
    "acknowledgements, and prints per endpoint: still diverging, now equal, error.\n"
    "\n"
    "input (at least one):\n"
    "  LOG...                 divergence log files (NDJSON; rotated ones too: list them);\n"
    "                         \"-\" reads standard input\n"
    "  --admin URL            the admin API (http://127.0.0.1:9901): GET /api/v1/divergences\n"
    "  --token TOKEN          bearer token for --admin (or FICUS_ADMIN_TOKEN)\n"
    "backends and rules (at least one):\n"
    "  -c, --config FILE      the routes' backends, diff rules and acknowledgements (from\n"
    "                         the state_file the configuration names, when it exists)\n"
    "  --legacy URL --new URL send to these instead (every record's route; with -c the\n"
    "                         route's rules still apply)\n"
    "filters (repeatable; a record passes when it matches one value of each given):\n"
    "  --route NAME           --endpoint \"GET /posts/{id}\"     --id RECORD_ID\n"
    "  --kind KIND            status, header, json, added, removed, body, error\n"
    "  --since TIME           --until TIME  (RFC 3339: 2026-11-22T10:00:00Z)\n"
    "sending:\n"
    "  --allow-writes         also send methods other than GET, HEAD, OPTIONS, TRACE\n"
    "                         (without it they are skipped and reported)\n"
    "  --header 'Name: value' add or replace a request header, e.g. what redaction\n"
    "                         removed from the record (repeatable)\n"
    "  --concurrency N        requests in flight at once, 1-256 (default 4)\n"
    "  --rate R               at most R records a second (default: no limit)\n"
    "  --timeout MS           per request (default: the route's shadow.timeout_ms, else 10000)\n"
    "output:\n"
    "  --json                 one JSON result per record on standard output (the summary\n"
    "                         then goes to standard error)\n"
    "  -l, --log-level LVL    debug, info, warn, error (default error)\n"
    "\n"
    "A progress line is shown on a terminal. Bad input (a truncated or invalid line, a\n"
    "record of another version or without a request, a route not in the configuration)\n"
    "is reported as FILE:LINE and skipped. Exit status: 0 when every replayed record is\n"
    "now equal, 1 when any still diverges or failed, 2 on bad usage.\n";

struct strlist {
    const char *v[REPLAY_LIST_MAX];
    size_t n;
};

struct opts {
    struct strlist files, headers, routes, endpoints, ids;
    const char *config, *legacy, *new_, *admin, *token;
    unsigned kinds;
    int64_t since, until;
    bool json, allow_writes;
    int concurrency;
    double rate;
    int timeout_ms;
};

struct run;
struct side;

typedef void (*side_done_cb)(struct side *s);

/* One request to one backend and its captured answer. */
struct side {
    struct run *run;
    void *owner;
    side_done_cb done;
    struct pool_set *ps;
    int backend;
    const char *req; /* the request bytes (the owner's) */
    size_t req_len;
    bool is_head, idempotent, retried, finished;
    int timeout_ms;
    struct upstream_wait wait;
    struct upconn *up;
    struct upclient uc;
    struct buf head;
    struct http_head *parsed;
    struct buf body;
    const char *error;
    uint64_t t0;
    double ms;
};

/* One record being replayed. */
struct job {
    struct run *run;
    struct replay_record rec;
    char where[320]; /* FILE:LINE */
    char endpoint[ENDPOINT_NAME_MAX + 16];
    int route; /* index into the rules configuration, -1: the default rules */
    struct buf req;
    struct side side[3]; /* legacy, new, and legacy again for the noise (twin) */
    bool twin;
    int pending;
};

struct source {
    const char *name;
    FILE *f;
    unsigned long line;
};

struct route_extra {
    struct endpoint_table *templates; /* NULL: none configured */
    struct endpoint_ack *acks;
    size_t n_acks;
};

struct run {
    struct opts *o;
    uv_loop_t loop;
    struct rbuf_pool rbufs;
    struct config *rules; /* -c, or NULL */
    struct config *urls;  /* --legacy/--new/--admin as a configuration, or NULL */
    struct pool_set *rules_ps, *urls_ps;
    struct route_extra *extra; /* per route of rules */
    struct fleet_route *acks_values;
    size_t n_acks_values;
    struct diff_rules default_rules;
    struct replay_filter filter;
    struct replay_summary *summary;
    /* input */
    struct source *sources;
    size_t n_sources, cur;
    struct arena admin_arena;
    const struct jv *admin_items;
    size_t admin_n, admin_next;
    bool admin_failed;
    struct buf line;
    bool input_done;
    /* flow */
    int inflight;
    uv_timer_t rate_timer;
    bool timer_armed;
    uint64_t next_start_us;
    size_t done, bad_input;
    bool progress;
    bool finished;            /* every record is done */
    bool pumping, pump_again; /* pump runs; a finish inside it asks for another round */
    struct strlist redacted_names;
};

static const char *const default_headers[] = {"content-type"};

/* ---- options --------------------------------------------------------------------------------- */

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "ficus replay: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(ficus replay --help)\n");
    return 2;
}

static int list_add(struct strlist *l, const char *v, const char *opt)
{
    if (l->n >= REPLAY_LIST_MAX)
        return usage_error("%s: at most 64 values", opt);
    l->v[l->n++] = v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof(*o));
    o->concurrency = REPLAY_CONCURRENCY_DEFAULT;
    o->since = INT64_MIN;
    o->until = INT64_MAX;
    o->token = getenv("FICUS_ADMIN_TOKEN");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        bool takes = true;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(help, stdout);
            return 1;
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
            takes = false;
        } else if (strcmp(a, "--allow-writes") == 0) {
            o->allow_writes = true;
            takes = false;
        } else if (a[0] != '-' || strcmp(a, "-") == 0) {
            rc = list_add(&o->files, a, "LOG");
            takes = false;
        } else if (v == NULL) {
            return usage_error("%s needs a value", a);
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            o->config = v;
        } else if (strcmp(a, "--legacy") == 0) {
            o->legacy = v;
        } else if (strcmp(a, "--new") == 0) {
            o->new_ = v;
        } else if (strcmp(a, "--admin") == 0) {
            o->admin = v;
        } else if (strcmp(a, "--token") == 0) {
            o->token = v;
        } else if (strcmp(a, "-l") == 0 || strcmp(a, "--log-level") == 0) {
            if (log_set_level(v) != 0)
                return usage_error("unknown log level \"%s\"", v);
        } else if (strcmp(a, "--route") == 0) {
            rc = list_add(&o->routes, v, a);
        } else if (strcmp(a, "--endpoint") == 0) {
            rc = list_add(&o->endpoints, v, a);
        } else if (strcmp(a, "--id") == 0) {
            rc = list_add(&o->ids, v, a);
        } else if (strcmp(a, "--header") == 0) {
            const char *colon = strchr(v, ':');
            if (colon == NULL || colon == v || strcspn(v, " \t") < (size_t)(colon - v) ||
                strpbrk(v, "\r\n") != NULL)
                return usage_error("--header: \"%s\" is not \"Name: value\"", v);
            rc = list_add(&o->headers, v, a);
        } else if (strcmp(a, "--kind") == 0) {
            int k = -1;
            for (int j = 0; j < DIFF_KIND_N; j++) {
                if (strcmp(diff_kind_name((enum diff_kind)j), v) == 0)
                    k = j;
            }
            if (k < 0)
                return usage_error("--kind: unknown kind \"%s\"", v);
            o->kinds |= 1u << k;
        } else if (strcmp(a, "--since") == 0 || strcmp(a, "--until") == 0) {
            int64_t t;
            if (replay_parse_time(v, &t) != 0)
                return usage_error("\"%s\" is not an RFC 3339 date-time", v);
            *(a[2] == 's' ? &o->since : &o->until) = t;
        } else if (strcmp(a, "--concurrency") == 0 || strcmp(a, "--timeout") == 0) {
            char *end;
            long n = strtol(v, &end, 10);
            bool conc = a[2] == 'c';
            if (*end != '\0' || n < 1 || n > (conc ? REPLAY_CONCURRENCY_MAX : 600000))
                return usage_error(conc ? "--concurrency: \"%s\" is not a number from 1 to 256"
                                        : "--timeout: \"%s\" is not a number of ms from 1 to "
                                          "600000",
                                   v);
            *(conc ? &o->concurrency : &o->timeout_ms) = (int)n;
        } else if (strcmp(a, "--rate") == 0) {
            char *end;
            double r = strtod(v, &end);
            if (*end != '\0' || !(r > 0) || r > 1e6)
                return usage_error("--rate: \"%s\" is not a number of records a second", v);
            o->rate = r;
        } else {
            return usage_error("unknown option \"%s\"", a);
        }
        if (rc != 0)
            return rc;
        if (takes)
            i++;
    }
    if (o->files.n == 0 && o->admin == NULL)
        return usage_error("%s", "no input: give divergence log files, \"-\" or --admin URL");
    if ((o->legacy == NULL) != (o->new_ == NULL))
        return usage_error("%s", "--legacy and --new go together");
    if (o->config == NULL && o->legacy == NULL)
        return usage_error("%s", "no backends: give -c FILE or --legacy URL --new URL");
    return 0;
}

/* ---- setup ----------------------------------------------------------------------------------- */

static int print_errors(struct config_errors *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        fprintf(stderr, "ficus replay: %s\n", errs->lines[i]);
    config_errors_dispose(errs);
    return 2;
}

/* TLS contexts and addresses, as the server loads a configuration. */
static int prepare(struct config *cfg, struct config_errors *errs)
{
    if (tls_config_load(cfg, errs) != 0)
        return -1;
    return discovery_resolve_config(NULL, cfg, errs) != 0 ? -1 : 0;
}

static int json_str(struct buf *b, const char *s)
{
    return buf_json_text(b, s, strlen(s));
}

/* --legacy, --new and --admin as a configuration of their own: each a
 * backend, so that they get the same client, TLS and address handling. */
static struct config *urls_config(const struct opts *o, struct config_errors *errs)
{
    struct buf t;
    buf_init(&t, 0);
    int rc = buf_puts(&t, "{\"listen\":\"127.0.0.1:1\",\"backends\":{");
    bool first = true;
    const char *names[3] = {"legacy", "new", "admin"};
    const char *urls[3] = {o->legacy, o->new_, o->admin};
    for (int i = 0; i < 3 && rc == 0; i++) {
        if (urls[i] == NULL)
            continue;
        rc = buf_printf(&t, "%s\"%s\":{\"url\":", first ? "" : ",", names[i]);
        first = false;
        if (rc == 0)
            rc = json_str(&t, urls[i]);
        if (rc == 0)
            rc = buf_puts(&t, "}");
    }
    /* A route for the configuration to be valid; replay does not use it. */
    const char *any = o->legacy != NULL ? "legacy" : "admin";
    if (rc == 0)
        rc =
            buf_printf(&t, "},\"routes\":[{\"name\":\"replay\",\"legacy\":\"%s\",\"new\":\"%s\"}]}",
                       any, o->legacy != NULL ? "new" : "admin");
    struct config *cfg = NULL;
    if (rc == 0)
        cfg = config_parse(t.data, t.len, "command line", errs);
    buf_dispose(&t);
    if (cfg != NULL && prepare(cfg, errs) != 0) {
        config_unref(cfg);
        cfg = NULL;
    }
    return cfg;
}

/* Acknowledgements from the configuration's state file, when there is one. */
static int load_acks(struct run *r, struct config_errors *errs)
{
    struct config *cfg = r->rules;
    if (cfg->state_file == NULL || cfg->state_store.type != STATE_STORE_FILE ||
        access(cfg->state_file, R_OK) != 0)
        return 0;
    /* The table is only read: replay never saves it. */
    struct state_table *rt = state_table_new(1, cfg->state_file);
    int rc = rt == NULL ? -1 : state_table_load(rt, errs);
    if (rc == 0)
        rc = state_table_bind(rt, cfg);
    r->acks_values = calloc(cfg->n_routes ? cfg->n_routes : 1, sizeof(*r->acks_values));
    for (size_t i = 0; rc == 0 && r->acks_values != NULL && i < cfg->n_routes; i++) {
        fleet_route_init(&r->acks_values[i]);
        r->n_acks_values = i + 1;
        struct route_state *rs = state_find(rt, cfg->routes[i].name);
        if (rs == NULL || state_value(rs, &r->acks_values[i]) != 0)
            continue;
        const struct fleet_route *fr = &r->acks_values[i];
        if (fr->n_acks == 0)
            continue;
        r->extra[i].acks = calloc(fr->n_acks, sizeof(struct endpoint_ack));
        if (r->extra[i].acks == NULL)
            continue;
        for (size_t k = 0; k < fr->n_acks; k++) {
            r->extra[i].acks[k] = (struct endpoint_ack){fr->acks[k].path, fr->acks[k].kind,
                                                        fr->acks[k].endpoint, fr->acks[k].note};
        }
        r->extra[i].n_acks = fr->n_acks;
    }
    /* The routes' state pointers lead into rt: drop them with it. */
    for (size_t i = 0; i < cfg->n_routes; i++)
        cfg->routes[i].state = NULL;
    state_table_free(rt);
    return rc;
}

static int setup(struct run *r, struct config_errors *errs)
{
    struct opts *o = r->o;
    if (o->config != NULL) {
        r->rules = config_load(o->config, errs);
        if (r->rules == NULL || prepare(r->rules, errs) != 0)
            return -1;
        r->extra = calloc(r->rules->n_routes ? r->rules->n_routes : 1, sizeof(*r->extra));
        if (r->extra == NULL)
            return -1;
        for (size_t i = 0; i < r->rules->n_routes; i++) {
            const struct route_cfg *rt = &r->rules->routes[i];
            if (rt->n_endpoints == 0)
                continue;
            struct endpoint_config ec = {rt->endpoints, rt->n_endpoints, rt->max_endpoints,
                                         rt->guard_window_ms > 0 ? rt->guard_window_ms : 60000, 0};
            r->extra[i].templates = endpoint_table_new(&ec);
        }
        if (load_acks(r, errs) != 0)
            return -1;
        r->rules_ps = pool_set_new(&r->loop, &r->rbufs, r->rules, r->rules->backends,
                                   r->rules->n_backends, 1);
        if (r->rules_ps == NULL)
            return -1;
    }
    if (o->legacy != NULL || o->admin != NULL) {
        r->urls = urls_config(o, errs);
        if (r->urls == NULL)
            return -1;
        r->urls_ps =
            pool_set_new(&r->loop, &r->rbufs, r->urls, r->urls->backends, r->urls->n_backends, 1);
        if (r->urls_ps == NULL)
            return -1;
    }
    r->default_rules.headers = (const char **)default_headers;
    r->default_rules.n_headers = 1;
    replay_filter_init(&r->filter);
    r->filter.routes = o->routes.v;
    r->filter.n_routes = o->routes.n;
    r->filter.endpoints = o->endpoints.v;
    r->filter.n_endpoints = o->endpoints.n;
    r->filter.ids = o->ids.v;
    r->filter.n_ids = o->ids.n;
    r->filter.kinds = o->kinds;
    r->filter.since_ms = o->since;
    r->filter.until_ms = o->until;
    return 0;
}

/* ---- one side: a request to one backend ------------------------------------------------------ */

static void side_finish(struct side *s, const char *error, bool reusable)
{
    if (s->finished)
        return;
    s->finished = true;
    upstream_cancel(&s->wait);
    upclient_stop(&s->uc);
    if (s->up != NULL) {
        struct upconn *u = s->up;
        s->up = NULL;
        upstream_release(u, reusable && error == NULL);
    }
    if (error != NULL && s->error == NULL)
        s->error = error;
    s->ms = (double)(io_now_us() - s->t0) / 1000.0;
    s->done(s);
}

static bool side_on_head(void *ctx, const struct http_head *h, const char *raw, size_t len)
{
    (void)h;
    (void)raw;
    (void)len;
    (void)ctx;
    return true;
}

static bool side_on_body(void *ctx, struct rbuf *rb, const char *p, size_t n)
{
    (void)rb;
    struct side *s = ctx;
    if (buf_append(&s->body, p, n) == 0)
        return true;
    upclient_stop(&s->uc);
    side_finish(s, "response_too_large", false);
    return false;
}

static void side_on_done(void *ctx, bool reusable)
{
    side_finish(ctx, NULL, reusable);
}

static void side_on_ready(void *ctx, struct upconn *u, int status);

static void side_on_error(void *ctx, int err)
{
    struct side *s = ctx;
    bool stale = err != FICUS_ETIMEOUT && !upclient_got_any(&s->uc) && s->up != NULL &&
                 upstream_reused(s->up);
    if (stale && !s->retried && s->idempotent) {
        /* A pooled connection the backend closed while idle: once more. */
        s->retried = true;
        struct upconn *u = s->up;
        s->up = NULL;
        upstream_release(u, false);
        buf_reset(&s->head);
        buf_reset(&s->body);
        s->wait.check_idle = true;
        if (upstream_retry(s->ps, s->backend, &s->wait, side_on_ready, s) != 0)
            side_finish(s, "connect_error", false);
        return;
    }
    side_finish(s, upclient_error_outcome(err), false);
}

static const struct upclient_handlers side_handlers = {
    .on_head = side_on_head,
    .on_body = side_on_body,
    .on_done = side_on_done,
    .on_error = side_on_error,
};

static void side_on_ready(void *ctx, struct upconn *u, int status)
{
    struct side *s = ctx;
    if (status != 0) {
        side_finish(s, status == FICUS_ETIMEOUT ? "timeout" : "connect_error", false);
        return;
    }
    s->up = u;
    if (s->parsed == NULL && (s->parsed = malloc(sizeof(*s->parsed))) == NULL) {
        side_finish(s, "out_of_memory", false);
        return;
    }
    upclient_start(&s->uc, u, &side_handlers, s, &s->head, s->parsed, s->is_head, 65536,
                   UPCLIENT_TOTAL, s->timeout_ms);
    char *copy = malloc(s->req_len);
    if (copy == NULL) {
        side_finish(s, "out_of_memory", false);
        return;
    }
    memcpy(copy, s->req, s->req_len);
    uv_buf_t b = uv_buf_init(copy, (unsigned)s->req_len);
    if (upstream_write(u, &b, 1, NULL, copy) != 0)
        side_finish(s, "reset", false);
}

static void side_start(struct side *s)
{
    s->t0 = io_now_us();
    s->wait.check_idle = !s->idempotent;
    if (upstream_acquire(s->ps, s->backend, &s->wait, side_on_ready, s) != 0)
        side_finish(s, "connect_error", false);
}

static void side_dispose(struct side *s)
{
    buf_dispose(&s->head);
    buf_dispose(&s->body);
    free(s->parsed);
}

static void to_diff_response(const struct side *s, struct diff_response *out,
                             struct diff_header *hdrs)
{
    memset(out, 0, sizeof(*out));
    out->error = s->error;
    if (s->error != NULL)
        return;
    out->status = s->parsed->status;
    for (size_t i = 0; i < s->parsed->n_headers; i++) {
        hdrs[i].name = s->parsed->headers[i].name.p;
        hdrs[i].name_len = s->parsed->headers[i].name.len;
        hdrs[i].value = s->parsed->headers[i].value.p;
        hdrs[i].value_len = s->parsed->headers[i].value.len;
    }
    out->headers = hdrs;
    out->n_headers = s->parsed->n_headers;
    out->body = s->body.data ? s->body.data : "";
    out->body_len = s->body.len;
}

/* ---- results --------------------------------------------------------------------------------- */

static void progress(struct run *r, bool last)
{
    if (!r->progress)
        return;
    fprintf(stderr,
            "\rreplay: %zu done (%zu equal, %zu diverging, %zu error, %zu skipped), %d in "
            "flight\033[K",
            r->done, replay_summary_count(r->summary, REPLAY_EQUAL),
            replay_summary_count(r->summary, REPLAY_DIVERGING),
            replay_summary_count(r->summary, REPLAY_ERROR),
            replay_summary_count(r->summary, REPLAY_SKIPPED), r->inflight);
    if (last)
        fputs("\r\033[K", stderr);
}

/* Reports bad input (never counted as a result). */
static void bad_input(struct run *r, const char *where, const char *why)
{
    r->bad_input++;
    if (r->progress)
        fputs("\r\033[K", stderr);
    fprintf(stderr, "ficus replay: %s: %s; skipped\n", where, why);
}

static void side_json(struct buf *b, const char *name, const struct side *s, bool sent)
{
    buf_printf(b, ",\"%s\":", name);
    if (!sent) {
        buf_puts(b, "null");
        return;
    }
    buf_puts(b, "{\"ms\":");
    buf_json_real(b, s->ms, 6);
    if (s->error != NULL)
        buf_printf(b, ",\"error\":\"%s\"}", s->error);
    else
        buf_printf(b, ",\"status\":%d}", s->parsed->status);
}

/* One result: a JSON line (--json), else a line for anything not equal. */
static void report(struct job *j, const struct replay_verdict *v, const char *why)
{
    struct run *r = j->run;
    const char *route = j->rec.route ? j->rec.route : "";
    r->done++;
    replay_summary_add(r->summary, route, j->endpoint, v->outcome);
    struct buf b;
    buf_init(&b, 0);
    bool sent = v->outcome != REPLAY_SKIPPED && why == NULL;
    if (r->o->json) {
        buf_puts(&b, "{\"source\":");
        json_str(&b, j->where);
        buf_puts(&b, ",\"id\":");
        json_str(&b, j->rec.id ? j->rec.id : "");
        buf_puts(&b, ",\"route\":");
        json_str(&b, route);
        buf_puts(&b, ",\"endpoint\":");
        json_str(&b, j->endpoint);
        buf_puts(&b, ",\"method\":");
        json_str(&b, j->rec.method);
        buf_puts(&b, ",\"target\":");
        json_str(&b, j->rec.target);
        buf_printf(&b, ",\"outcome\":\"%s\"", replay_outcome_name(v->outcome));
        if (why != NULL) {
            buf_puts(&b, ",\"reason\":");
            json_str(&b, why);
        }
        side_json(&b, "legacy", &j->side[0], sent);
        side_json(&b, "new", &j->side[1], sent);
        buf_printf(&b, ",\"diff_count\":%zu,\"noise_count\":%zu,\"acknowledged_count\":%zu",
                   v->n_diffs, v->n_noise, v->n_acked);
        buf_puts(&b, ",\"diffs\":[");
        for (size_t i = 0; i < v->n_items; i++) {
            buf_printf(&b, "%s{\"kind\":\"%s\",\"path\":", i ? "," : "",
                       diff_kind_name(v->items[i].kind));
            json_str(&b, v->items[i].path);
            buf_puts(&b, "}");
        }
        buf_puts(&b, "]}\n");
        if (r->progress)
            fputs("\r\033[K", stderr);
        fwrite(b.data, 1, b.len, stdout);
    } else if (v->outcome != REPLAY_EQUAL) {
        buf_printf(&b, "%s %s %s id=%s (%s)", replay_outcome_name(v->outcome), route, j->endpoint,
                   j->rec.id ? j->rec.id : "", j->where);
        if (why != NULL)
            buf_printf(&b, ": %s", why);
        if (sent && v->outcome == REPLAY_ERROR)
            buf_printf(&b, ": legacy %s, new %s", j->side[0].error ? j->side[0].error : "answered",
                       j->side[1].error ? j->side[1].error : "answered");
        for (size_t i = 0; i < v->n_items; i++)
            buf_printf(&b, "%s%s %s", i ? ", " : ": ", diff_kind_name(v->items[i].kind),
                       v->items[i].path);
        if (v->n_diffs > v->n_items)
            buf_printf(&b, " (+%zu more)", v->n_diffs - v->n_items);
        buf_puts(&b, "\n");
        if (r->progress)
            fputs("\r\033[K", stderr);
        fwrite(b.data, 1, b.len, stdout);
    }
    fflush(stdout);
    buf_dispose(&b);
    progress(r, false);
}

static void job_free(struct job *j)
{
    for (int i = 0; i < 3; i++)
        side_dispose(&j->side[i]);
    buf_dispose(&j->req);
    replay_record_dispose(&j->rec);
    free(j);
}

static void pump(struct run *r);

static void job_side_done(struct side *s)
{
    struct job *j = s->owner;
    if (--j->pending > 0)
        return;
    struct run *r = j->run;
    const struct diff_rules *rules = &r->default_rules;
    const struct endpoint_ack *acks = NULL;
    size_t n_acks = 0;
    if (j->route >= 0) {
        rules = &r->rules->routes[j->route].diff;
        acks = r->extra[j->route].acks;
        n_acks = r->extra[j->route].n_acks;
    }
    struct diff_header *hdrs = calloc(3 * HTTP_MAX_HEADERS, sizeof(*hdrs));
    struct diff_response rl, rn, rt2;
    struct replay_verdict v;
    const char *why = NULL;
    const char *const *noise = j->rec.noise;
    size_t n_noise = j->rec.n_noise;
    const char **learnt = NULL;
    struct diff_result twin;
    bool have_twin = false;
    if (hdrs == NULL) {
        memset(&v, 0, sizeof(v));
        v.outcome = REPLAY_ERROR;
        why = "out of memory";
    } else {
        to_diff_response(&j->side[0], &rl, hdrs);
        to_diff_response(&j->side[1], &rn, hdrs + HTTP_MAX_HEADERS);
        /* diff.noise: what legacy shows against itself now is noise too. */
        if (j->twin && j->side[0].error == NULL && j->side[2].error == NULL) {
            to_diff_response(&j->side[2], &rt2, hdrs + 2 * HTTP_MAX_HEADERS);
            have_twin = diff_responses(rules, &rl, &rt2, &twin) == 0;
            learnt = have_twin ? calloc(n_noise + twin.n + 1, sizeof(*learnt)) : NULL;
            for (size_t i = 0; learnt != NULL && i < n_noise; i++)
                learnt[i] = noise[i];
            for (size_t i = 0; learnt != NULL && i < twin.n; i++) {
                enum diff_kind k = twin.items[i].kind;
                if (k == DIFF_JSON || k == DIFF_ADDED || k == DIFF_REMOVED)
                    learnt[n_noise++] = twin.items[i].path;
            }
            if (learnt != NULL)
                noise = learnt;
            else
                n_noise = j->rec.n_noise;
        }
        if (replay_compare(rules, &rl, &rn, noise, n_noise, acks, n_acks, j->endpoint, &v) != 0) {
            v.outcome = REPLAY_ERROR;
            why = "out of memory";
        }
    }
    free(learnt);
    if (have_twin)
        diff_result_dispose(&twin);
    free(hdrs);
    r->inflight--;
    report(j, &v, why);
    job_free(j);
    pump(r);
}

/* ---- building and starting a job ------------------------------------------------------------- */

static bool safe_method(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0 ||
           strcmp(m, "TRACE") == 0;
}

static bool idempotent_method(const char *m)
{
    return safe_method(m) || strcmp(m, "PUT") == 0 || strcmp(m, "DELETE") == 0;
}

/* Does a --header give this header (case-insensitively)? */
static const char *header_given(const struct opts *o, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < o->headers.n; i++) {
        const char *h = o->headers.v[i];
        if (strncasecmp(h, name, n) == 0 && h[n] == ':')
            return h;
    }
    return NULL;
}

/* The request as replay sends it: the recorded head (a --header replaces the
 * header of its name; a redacted one nobody supplied is left out, once said),
 * content-length for the body, x-ficus-replay: 1. */
static int build_request(struct run *r, struct job *j)
{
    const struct opts *o = r->o;
    struct replay_record *rec = &j->rec;
    struct buf *b = &j->req;
    int rc = buf_printf(b, "%s %s HTTP/1.1\r\n", rec->method, rec->target);
    bool host = false;
    for (size_t i = 0; i < rec->n_headers && rc == 0; i++) {
        const struct replay_header *h = &rec->headers[i];
        if (strpbrk(h->name, "\r\n:") != NULL || memchr(h->value, '\r', h->value_len) != NULL ||
            memchr(h->value, '\n', h->value_len) != NULL)
            return FICUS_EBADREQ;
        if (strcasecmp(h->name, "x-ficus-replay") == 0 || header_given(o, h->name) != NULL)
            continue;
        if (h->redacted) {
            bool said = false;
            for (size_t k = 0; k < r->redacted_names.n && !said; k++)
                said = strcasecmp(r->redacted_names.v[k], h->name) == 0;
            if (!said && r->redacted_names.n < REPLAY_LIST_MAX) {
                r->redacted_names.v[r->redacted_names.n++] = strdup(h->name);
                if (r->progress)
                    fputs("\r\033[K", stderr);
                fprintf(stderr,
                        "ficus replay: header \"%s\" is redacted in the records and sent "
                        "without it; supply it with --header '%s: ...'\n",
                        h->name, h->name);
            }
            continue;
        }
        host = host || strcasecmp(h->name, "host") == 0;
        rc = buf_printf(b, "%s: ", h->name);
        if (rc == 0)
            rc = buf_append(b, h->value, h->value_len);
        if (rc == 0)
            rc = buf_puts(b, "\r\n");
    }
    for (size_t i = 0; i < o->headers.n && rc == 0; i++) {
        const char *h = o->headers.v[i];
        size_t nl = strcspn(h, ":");
        const char *val = h + nl + 1;
        while (*val == ' ' || *val == '\t')
            val++;
        host = host || (nl == 4 && strncasecmp(h, "host", 4) == 0);
        rc = buf_printf(b, "%.*s: %s\r\n", (int)nl, h, val);
    }
    if (rc == 0 && !host) {
        const struct backend_cfg *be = j->side[0].ps == r->rules_ps && r->rules != NULL
                                           ? &r->rules->backends[j->side[0].backend]
                                           : &r->urls->backends[j->side[0].backend];
        rc = buf_printf(b, "host: %s:%u\r\n", be->host, be->port);
    }
    bool with_body = rec->body_len > 0 || !safe_method(rec->method);
    if (rc == 0 && with_body)
        rc = buf_printf(b, "content-length: %zu\r\n", rec->body_len);
    if (rc == 0)
        rc = buf_puts(b, "x-ficus-replay: 1\r\n\r\n");
    if (rc == 0 && rec->body_len > 0)
        rc = buf_append(b, rec->body, rec->body_len);
    return rc;
}

static void job_result_now(struct job *j, enum replay_outcome o, const char *why)
{
    struct replay_verdict v;
    memset(&v, 0, sizeof(v));
    v.outcome = o;
    report(j, &v, why);
    job_free(j);
}

/* Picks the backends and rules of the record's route. Returns false (with
 * the reason) when the route is not in the configuration. */
static bool job_route(struct run *r, struct job *j)
{
    j->route = -1;
    if (r->rules != NULL) {
        j->route = config_route_index(r->rules, j->rec.route);
        if (j->route < 0)
            return false;
    }
    for (int i = 0; i < 2; i++) {
        struct side *s = &j->side[i];
        if (r->urls != NULL && r->o->legacy != NULL) {
            s->ps = r->urls_ps;
            s->backend = config_backend_index(r->urls, i == 0 ? "legacy" : "new");
        } else {
            const struct route_cfg *rt = &r->rules->routes[j->route];
            s->ps = r->rules_ps;
            s->backend = i == 0 ? rt->legacy : rt->new_;
        }
    }
    return true;
}

static void job_endpoint(struct run *r, struct job *j)
{
    const struct replay_record *rec = &j->rec;
    if (rec->endpoint != NULL) {
        snprintf(j->endpoint, sizeof(j->endpoint), "%s", rec->endpoint);
        return;
    }
    if (j->route >= 0 && r->extra[j->route].templates != NULL) {
        struct endpoint_table *t = r->extra[j->route].templates;
        int id =
            endpoint_find(t, rec->method, strlen(rec->method), rec->target, strlen(rec->target));
        const char *name = id >= 0 ? endpoint_name(t, id) : NULL;
        if (name != NULL && strcmp(name, ENDPOINT_OTHER) != 0) {
            snprintf(j->endpoint, sizeof(j->endpoint), "%s", name);
            return;
        }
    }
    replay_endpoint_name(rec->method, rec->target, j->endpoint, sizeof(j->endpoint));
}

/* Starts the record in j (parsed), or reports why not. */
static void job_start(struct run *r, struct job *j)
{
    bool known = job_route(r, j);
    job_endpoint(r, j);
    if (!replay_filter_match(&r->filter, &j->rec, j->endpoint)) {
        job_free(j);
        return;
    }
    if (!known) {
        char why[300];
        snprintf(why, sizeof(why), "route \"%.200s\" is not in the configuration", j->rec.route);
        bad_input(r, j->where, why);
        job_free(j);
        return;
    }
    if (!safe_method(j->rec.method) && !r->o->allow_writes) {
        job_result_now(j, REPLAY_SKIPPED, "a write (not sent without --allow-writes)");
        return;
    }
    if (j->rec.body_truncated) {
        job_result_now(j, REPLAY_ERROR,
                       "the record holds only the start of the request body (raise "
                       "divergence_log.request_body_bytes)");
        return;
    }
    if (j->rec.body_redacted) {
        job_result_now(j, REPLAY_ERROR,
                       "the record's request body had values redacted (divergence_log.redact_json "
                       "or a redacted header's value in it)");
        return;
    }
    if (build_request(r, j) != 0) {
        job_result_now(j, REPLAY_ERROR, "the recorded request cannot be sent again");
        return;
    }
    const struct route_cfg *rt = j->route >= 0 ? &r->rules->routes[j->route] : NULL;
    int timeout = r->o->timeout_ms > 0       ? r->o->timeout_ms
                  : rt != NULL && rt->shadow ? rt->shadow_timeout_ms
                                             : REPLAY_TIMEOUT_DEFAULT;
    size_t max_body = rt != NULL ? rt->shadow_max_body_bytes : 1024 * 1024;
    /* A route that learns noise: safe requests go to legacy twice. */
    j->twin = rt != NULL && rt->noise && safe_method(j->rec.method);
    j->pending = j->twin ? 3 : 2;
    r->inflight++;
    for (int i = 0; i < j->pending; i++) {
        struct side *s = &j->side[i];
        if (i == 2) {
            s->ps = j->side[0].ps;
            s->backend = j->side[0].backend;
        }
        s->run = r;
        s->owner = j;
        s->done = job_side_done;
        s->req = j->req.data;
        s->req_len = j->req.len;
        s->is_head = strcmp(j->rec.method, "HEAD") == 0;
        s->idempotent = idempotent_method(j->rec.method);
        s->timeout_ms = timeout;
        buf_init(&s->body, max_body);
    }
    /* Both sides finish before the job is freed: the second start holds it. */
    j->pending++;
    side_start(&j->side[0]);
    side_start(&j->side[1]);
    if (j->twin)
        side_start(&j->side[2]);
    struct side dummy = {.owner = j};
    job_side_done(&dummy);
}

/* ---- input ----------------------------------------------------------------------------------- */

/* Reads one line into r->line (without the newline). Returns 1, 0 at the end
 * of the file, or -1 for a line over REPLAY_LINE_MAX (its rest is skipped). */
static int read_line(FILE *f, struct buf *line)
{
    buf_reset(line);
    int c;
    bool over = false;
    char chunk[4096];
    size_t n = 0;
    while ((c = getc(f)) != EOF) {
        if (c == '\n')
            break;
        chunk[n++] = (char)c;
        if (n == sizeof(chunk)) {
            if (!over && buf_append(line, chunk, n) != 0)
                over = true;
            n = 0;
        }
    }
    if (c == EOF && line->len == 0 && n == 0)
        return 0;
    if (!over && n > 0 && buf_append(line, chunk, n) != 0)
        over = true;
    return over ? -1 : 1;
}

/* The next record to replay: a new job with it parsed, or NULL at the end of
 * the input. Bad lines are reported on the way. */
static struct job *next_job(struct run *r)
{
    char why[256];
    while (!r->input_done) {
        struct job *j = calloc(1, sizeof(*j));
        if (j == NULL) {
            r->input_done = true;
            return NULL;
        }
        j->run = r;
        replay_record_init(&j->rec);
        int rc;
        if (r->admin_items != NULL && r->admin_next < r->admin_n) {
            size_t k = r->admin_next++;
            snprintf(j->where, sizeof(j->where), "%s#%zu", r->o->admin, k + 1);
            rc = replay_record_from_jv(&j->rec, &r->admin_items[k], why, sizeof(why));
        } else if (r->cur < r->n_sources) {
            struct source *src = &r->sources[r->cur];
            int got = read_line(src->f, &r->line);
            if (got == 0) {
                if (src->f != stdin)
                    fclose(src->f);
                src->f = NULL;
                r->cur++;
                job_free(j);
                continue;
            }
            src->line++;
            snprintf(j->where, sizeof(j->where), "%s:%lu", src->name, src->line);
            if (got < 0) {
                bad_input(r, j->where, "line too long");
                job_free(j);
                continue;
            }
            if (r->line.len == 0) { /* a blank line */
                job_free(j);
                continue;
            }
            rc = replay_record_parse(&j->rec, r->line.data, r->line.len, why, sizeof(why));
        } else {
            job_free(j);
            r->input_done = true;
            return NULL;
        }
        if (rc == REPLAY_PARSED)
            return j;
        bad_input(r, j->where, why);
        job_free(j);
    }
    return NULL;
}

static void on_rate_timer(uv_timer_t *t)
{
    struct run *r = t->data;
    r->timer_armed = false;
    pump(r);
}

/* Starts records while slots and the rate allow. */
static void pump_round(struct run *r);
static void pump(struct run *r)
{
    if (r->pumping) { /* a request that failed at once, inside job_start */
        r->pump_again = true;
        return;
    }
    r->pumping = true;
    do {
        r->pump_again = false;
        pump_round(r);
    } while (r->pump_again);
    r->pumping = false;
}

static void pump_round(struct run *r)
{
    while (!r->input_done && r->inflight < r->o->concurrency && !r->timer_armed) {
        if (r->o->rate > 0) {
            uint64_t now = io_now_us();
            if (now < r->next_start_us) {
                r->timer_armed = true;
                uv_timer_start(&r->rate_timer, on_rate_timer, (r->next_start_us - now + 999) / 1000,
                               0);
                return;
            }
            uint64_t step = (uint64_t)(1e6 / r->o->rate);
            r->next_start_us = (r->next_start_us > now ? r->next_start_us : now) + step;
        }
        struct job *j = next_job(r);
        if (j == NULL)
            break;
        job_start(r, j);
    }
    if (r->input_done && r->inflight == 0 && !r->finished) {
        /* The pools' idle connections keep the loop alive: the run is over. */
        r->finished = true;
        if (r->rules_ps != NULL)
            pool_set_close_idle(r->rules_ps);
        if (r->urls_ps != NULL)
            pool_set_close_idle(r->urls_ps);
        uv_stop(&r->loop);
    }
}

/* ---- the admin API --------------------------------------------------------------------------- */

struct admin_fetch {
    struct run *run;
    struct side side;
    struct buf req;
};

static void admin_done(struct side *s)
{
    struct admin_fetch *a = s->owner;
    struct run *r = a->run;
    const char *where = r->o->admin;
    const struct jv *root = NULL;
    if (s->error != NULL) {
        fprintf(stderr, "ficus replay: %s: %s\n", where, s->error);
        r->admin_failed = true;
    } else if (s->parsed->status != 200) {
        fprintf(stderr, "ficus replay: %s/api/v1/divergences answered %d: %.*s\n", where,
                s->parsed->status, (int)(s->body.len < 300 ? s->body.len : 300),
                s->body.data ? s->body.data : "");
        r->admin_failed = true;
    } else if (jdoc_parse(&r->admin_arena, s->body.data ? s->body.data : "", s->body.len, &root) !=
                   0 ||
               jv_get(root, "divergences", 11) == NULL ||
               jv_get(root, "divergences", 11)->type != JV_ARRAY) {
        fprintf(stderr, "ficus replay: %s: not a divergence list\n", where);
        r->admin_failed = true;
    } else {
        const struct jv *list = jv_get(root, "divergences", 11);
        r->admin_items = list->u.items;
        r->admin_n = list->n;
    }
    side_dispose(&a->side);
    buf_dispose(&a->req);
    free(a);
    pump(r);
}

static int admin_start(struct run *r)
{
    struct admin_fetch *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return FICUS_ENOMEM;
    a->run = r;
    const struct backend_cfg *be = &r->urls->backends[config_backend_index(r->urls, "admin")];
    int rc = buf_puts(&a->req, "GET /api/v1/divergences?limit=1000");
    if (rc == 0 && r->o->routes.n == 1 &&
        strspn(r->o->routes.v[0],
               "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") ==
            strlen(r->o->routes.v[0]))
        rc = buf_printf(&a->req, "&route=%s", r->o->routes.v[0]);
    if (rc == 0)
        rc = buf_printf(&a->req, " HTTP/1.1\r\nhost: %s:%u\r\naccept: application/json\r\n",
                        be->host, be->port);
    if (rc == 0 && r->o->token != NULL && r->o->token[0] != '\0')
        rc = buf_printf(&a->req, "authorization: Bearer %s\r\n", r->o->token);
    if (rc == 0)
        rc = buf_puts(&a->req, "\r\n");
    if (rc != 0) {
        buf_dispose(&a->req);
        free(a);
        return rc;
    }
    struct side *s = &a->side;
    s->run = r;
    s->owner = a;
    s->done = admin_done;
    s->ps = r->urls_ps;
    s->backend = config_backend_index(r->urls, "admin");
    s->req = a->req.data;
    s->req_len = a->req.len;
    s->idempotent = true;
    s->timeout_ms = r->o->timeout_ms > 0 ? r->o->timeout_ms : REPLAY_TIMEOUT_DEFAULT;
    buf_init(&s->body, REPLAY_ADMIN_MAX_BYTES);
    side_start(s);
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------ */

static int open_sources(struct run *r)
{
    r->sources = calloc(r->o->files.n ? r->o->files.n : 1, sizeof(*r->sources));
    if (r->sources == NULL)
        return -1;
    for (size_t i = 0; i < r->o->files.n; i++) {
        const char *name = r->o->files.v[i];
        struct source *s = &r->sources[i];
        s->name = strcmp(name, "-") == 0 ? "stdin" : name;
        s->f = strcmp(name, "-") == 0 ? stdin : fopen(name, "r");
        if (s->f == NULL) {
            fprintf(stderr, "ficus replay: %s: %s\n", name, strerror(errno));
            for (size_t k = 0; k < i; k++) {
                if (r->sources[k].f != stdin)
                    fclose(r->sources[k].f);
            }
            return -1;
        }
        r->n_sources++;
    }
    return 0;
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int replay_main(int argc, char **argv)
{
    if (getenv("FICUS_LOG_LEVEL") == NULL)
        log_set_level("error");
    struct opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc != 0)
        return rc == 1 ? 0 : rc;
    struct run *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return 1;
    r->o = &o;
    arena_init(&r->admin_arena);
    buf_init(&r->line, REPLAY_LINE_MAX);
    uv_loop_init(&r->loop);
    rbuf_pool_init(&r->rbufs, 8);
    uv_timer_init(&r->loop, &r->rate_timer);
    r->rate_timer.data = r;
    r->progress = isatty(STDERR_FILENO) == 1;
    r->summary = replay_summary_new();
    struct config_errors errs = {0};
    int exit_code = 2;
    if (r->summary == NULL || setup(r, &errs) != 0) {
        print_errors(&errs);
        goto out;
    }
    config_errors_dispose(&errs);
    if (open_sources(r) != 0)
        goto out;
    if (o.admin != NULL) {
        if (admin_start(r) != 0)
            goto out;
    } else {
        pump(r);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    progress(r, true);
    struct buf table;
    buf_init(&table, 0);
    if (replay_summary_write(r->summary, &table) == 0) {
        FILE *to = o.json ? stderr : stdout;
        fwrite(table.data, 1, table.len, to);
        if (r->bad_input > 0)
            fprintf(to, "bad input: %zu line%s skipped\n", r->bad_input,
                    r->bad_input == 1 ? "" : "s");
    }
    buf_dispose(&table);
    exit_code = r->admin_failed ? 1 : replay_summary_exit_code(r->summary);
out:
    for (size_t i = 0; r->sources != NULL && i < r->n_sources; i++) {
        if (r->sources[i].f != NULL && r->sources[i].f != stdin)
            fclose(r->sources[i].f);
    }
    free(r->sources);
    if (r->rules_ps != NULL)
        pool_set_unref(r->rules_ps);
    if (r->urls_ps != NULL)
        pool_set_unref(r->urls_ps);
    uv_run(&r->loop, UV_RUN_DEFAULT); /* the pools close their connections */
    uv_walk(&r->loop, on_walk_close, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_loop_close(&r->loop);
    rbuf_pool_dispose(&r->rbufs);
    for (size_t i = 0; r->rules != NULL && r->extra != NULL && i < r->rules->n_routes; i++) {
        endpoint_table_free(r->extra[i].templates);
        free(r->extra[i].acks);
    }
    for (size_t i = 0; i < r->n_acks_values; i++)
        fleet_route_dispose(&r->acks_values[i]);
    free(r->acks_values);
    free(r->extra);
    for (size_t i = 0; i < r->redacted_names.n; i++)
        free((char *)r->redacted_names.v[i]);
    config_unref(r->rules);
    config_unref(r->urls);
    replay_summary_free(r->summary);
    buf_dispose(&r->line);
    arena_dispose(&r->admin_arena);
    free(r);
    return exit_code;
}
