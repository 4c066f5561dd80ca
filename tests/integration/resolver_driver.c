/* A test driver for the resolver module, driven by test_resolver.py: it
 * watches the names given on the command line with a real resolver on a real
 * libuv loop and prints every callback, one line each, on standard output:
 *
 *   event name=NAME state=ok|pending|failing changed=0|1 addrs=A,B error="..."
 *
 * Commands on standard input, one per line:
 *   unwatch NAME    stop following NAME (prints "unwatched name=NAME")
 *   lookups NAME    prints "lookups name=NAME count=N"
 *   quit            closes the resolver; prints "closed" once every handle of
 *                   the loop is closed and uv_loop_close succeeds, then exits 0
 * End of input is quit. A watchdog (--watchdog-ms, default 60000) exits 4 so
 * that nothing hangs.
 *
 * usage: resolver_driver [--resolver IP:PORT]... [--min-ms N] [--max-ms N]
 *                        [--timeout-ms N] [--tries N] [--watchdog-ms N] NAME:PORT... */
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/lb.h"
#include "ficus/log.h"
#include "ficus/resolver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define NAMES_MAX 16

struct name {
    char host[256];
    uint16_t port;
    struct resolver_watch *w;
};

static uv_loop_t loop;
static struct resolver *res;
static struct name names[NAMES_MAX];
static size_t n_names;
static uv_pipe_t input;
static uv_timer_t watchdog;
static char line[1024];
static size_t line_len;
static bool quitting;

static const char *state_name(enum resolver_state s)
{
    return s == RESOLVER_OK ? "ok" : s == RESOLVER_FAILING ? "failing" : "pending";
}

static void on_result(void *ctx, const struct resolver_result *r)
{
    struct name *nm = ctx;
    printf("event name=%s state=%s changed=%d addrs=", nm->host, state_name(r->state),
           r->addrs_changed ? 1 : 0);
    for (size_t i = 0; i < r->n; i++) {
        char a[64];
        printf("%s%s", i ? "," : "", lb_addr_format(&r->addrs[i], a, sizeof(a)));
    }
    printf(" error=\"%s\"\n", r->error ? r->error : "");
    fflush(stdout);
}

static struct name *find(const char *host)
{
    for (size_t i = 0; i < n_names; i++) {
        if (strcmp(names[i].host, host) == 0)
            return &names[i];
    }
    return NULL;
}

static void on_resolver_closed(void *arg)
{
    (void)arg;
    res = NULL;
}

static void quit(void)
{
    if (quitting)
        return;
    quitting = true;
    resolver_close(res, on_resolver_closed, NULL);
    uv_close((uv_handle_t *)&input, NULL);
    uv_close((uv_handle_t *)&watchdog, NULL);
}

static void command(const char *cmd)
{
    struct name *nm;
    if (strcmp(cmd, "quit") == 0) {
        quit();
    } else if (strncmp(cmd, "unwatch ", 8) == 0 && (nm = find(cmd + 8)) != NULL) {
        resolver_unwatch(nm->w);
        nm->w = NULL;
        printf("unwatched name=%s\n", nm->host);
    } else if (strncmp(cmd, "lookups ", 8) == 0 && (nm = find(cmd + 8)) != NULL && nm->w) {
        printf("lookups name=%s count=%llu\n", nm->host,
               (unsigned long long)resolver_watch_lookups(nm->w));
    } else {
        printf("unknown command \"%s\"\n", cmd);
    }
    fflush(stdout);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char chunk[512];
    *buf = uv_buf_init(chunk, sizeof(chunk));
}

static void on_input(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)s;
    if (n < 0) {
        quit(); /* end of input */
        return;
    }
    for (ssize_t i = 0; i < n && !quitting; i++) {
        char c = buf->base[i];
        if (c == '\n') {
            line[line_len] = '\0';
            line_len = 0;
            command(line);
        } else if (line_len + 1 < sizeof(line)) {
            line[line_len++] = c;
        }
    }
}

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    printf("watchdog\n");
    fflush(stdout);
    exit(4);
}

static int usage(void)
{
    fprintf(stderr, "usage: resolver_driver [--resolver IP:PORT]... [--min-ms N] [--max-ms N] "
                    "[--timeout-ms N] [--tries N] [--watchdog-ms N] NAME:PORT...\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct sockaddr_storage servers[8];
    struct resolver_options opts = {.servers = servers};
    int min_ms = 100, max_ms = 60000;
    long watchdog_ms = 60000;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (strcmp(a, "--resolver") == 0 && more && opts.n_servers < ARRAY_SIZE(servers)) {
            /* Reuse the configuration's "ip:port" reader, as ficus would. */
            char json[512];
            snprintf(json, sizeof(json),
                     "{\"listen\":\"127.0.0.1:1\",\"resolvers\":[\"%s\"],"
                     "\"backends\":{\"legacy\":{\"url\":\"http://a\"},\"new\":{\"url\":\"http://"
                     "b\"}},\"routes\":[{\"name\":\"r\"}]}",
                     argv[++i]);
            struct config_errors errs = {0};
            struct config *cfg = config_parse(json, strlen(json), "resolver", &errs);
            if (cfg == NULL) {
                for (size_t k = 0; k < errs.n; k++)
                    fprintf(stderr, "%s\n", errs.lines[k]);
                config_errors_dispose(&errs);
                return 2;
            }
            servers[opts.n_servers++] = cfg->resolvers[0].ss;
            config_unref(cfg);
        } else if (strcmp(a, "--min-ms") == 0 && more) {
            min_ms = atoi(argv[++i]);
        } else if (strcmp(a, "--max-ms") == 0 && more) {
            max_ms = atoi(argv[++i]);
        } else if (strcmp(a, "--timeout-ms") == 0 && more) {
            opts.timeout_ms = atoi(argv[++i]);
        } else if (strcmp(a, "--tries") == 0 && more) {
            opts.tries = atoi(argv[++i]);
        } else if (strcmp(a, "--watchdog-ms") == 0 && more) {
            watchdog_ms = atol(argv[++i]);
        } else if (a[0] != '-' && n_names < NAMES_MAX) {
            const char *colon = strrchr(a, ':');
            if (colon == NULL || (size_t)(colon - a) >= sizeof(names[0].host))
                return usage();
            memcpy(names[n_names].host, a, (size_t)(colon - a));
            names[n_names].port = (uint16_t)atoi(colon + 1);
            n_names++;
        } else {
            return usage();
        }
    }
    if (n_names == 0)
        return usage();
    log_set_level("debug");

    uv_loop_init(&loop);
    int rc = resolver_new(&loop, &opts, &res);
    if (rc != 0) {
        fprintf(stderr, "resolver_new: %s\n", ficus_strerror(rc));
        return 1;
    }
    for (size_t i = 0; i < n_names; i++) {
        rc = resolver_watch(res, names[i].host, names[i].port, min_ms, max_ms, on_result, &names[i],
                            &names[i].w);
        if (rc != 0) {
            fprintf(stderr, "resolver_watch %s: %s\n", names[i].host, ficus_strerror(rc));
            return 1;
        }
    }
    uv_pipe_init(&loop, &input, 0);
    uv_pipe_open(&input, 0);
    uv_read_start((uv_stream_t *)&input, on_alloc, on_input);
    uv_timer_init(&loop, &watchdog);
    uv_timer_start(&watchdog, on_watchdog, (uint64_t)watchdog_ms, 0);
    uv_unref((uv_handle_t *)&watchdog); /* it must not keep a finished loop alive */

    uv_run(&loop, UV_RUN_DEFAULT);
    /* Every handle closed: the resolver left nothing on the loop. */
    rc = uv_loop_close(&loop);
    if (rc != 0 || res != NULL) {
        printf("loop not empty: %s\n", rc ? uv_strerror(rc) : "resolver not freed");
        uv_print_all_handles(&loop, stdout);
        return 3;
    }
    printf("closed\n");
    return 0;
}
