/* Asynchronous DNS on a libuv loop, on c-ares: host names are followed, not
 * resolved once. Each watched name is looked up for every A and AAAA address,
 * looked up again when its records expire (the answer's smallest TTL) kept
 * within [min_ms, max_ms], and its owner hears of each change of address set
 * or of state. A failed lookup keeps the last good set and is retried from
 * min_ms, doubling up to max_ms; it is logged once when the name starts
 * failing and once when it resolves again, never per attempt. IP literals
 * never go to DNS.
 *
 * One resolver per loop (the control thread's in ficus), used only from that
 * loop's thread. c-ares's sockets are watched with uv_poll handles (through
 * ARES_OPT_SOCK_STATE_CB) and its timeouts with one uv_timer; nothing blocks. */
#ifndef FICUS_RESOLVER_H
#define FICUS_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* Addresses kept per name: a bound on memory and on endpoints per server.
 * More are dropped (the lowest in lb_addr_compare order are kept) and logged. */
#define RESOLVER_ADDRS_MAX 64

struct resolver_options {
    /* DNS servers (config "resolvers"); n_servers 0: the system's
     * configuration (resolv.conf, hosts file). With servers, names are asked
     * of them as written: no hosts file, no search domains. */
    const struct sockaddr_storage *servers;
    size_t n_servers;
    int timeout_ms; /* one try of one query; 0: 2000 */
    int tries;      /* tries per server; 0: 2 */
    bool quiet;     /* no log line about names (their owner reports them) */
};

enum resolver_state {
    RESOLVER_PENDING, /* never answered yet */
    RESOLVER_OK,      /* the last lookup succeeded */
    RESOLVER_FAILING, /* the last lookup failed: the last good set (if any) stays */
};

/* What a watch's owner hears, on each change of address set or of state. */
struct resolver_result {
    enum resolver_state state;
    /* The current set: sorted by lb_addr_compare, no duplicates, the watch's
     * port set. Owned by the watch, valid during the callback only. Empty
     * only while no lookup ever succeeded. */
    const struct sockaddr_storage *addrs;
    size_t n;
    bool addrs_changed; /* false: only the state changed */
    const char *error;  /* FAILING: why (static text), else NULL */
};

struct resolver;
struct resolver_watch;

typedef void (*resolver_cb)(void *ctx, const struct resolver_result *res);

/* Makes a resolver on loop with opts (copied). Returns 0 and *out, or a
 * negative error (FICUS_ENOMEM, FICUS_ECONFIG when c-ares refuses the
 * options). Close with resolver_close. */
int resolver_new(uv_loop_t *loop, const struct resolver_options *opts, struct resolver **out);

/* Follows host (a name, or an IP literal that is reported once without DNS)
 * with port set in every address, re-resolving within [min_ms, max_ms]
 * (1 <= min_ms <= max_ms). The first lookup starts at once; cb runs later,
 * never from inside this call, and then on every change until
 * resolver_unwatch. host is copied. Returns 0 and *out, or a negative error. */
int resolver_watch(struct resolver *r, const char *host, uint16_t port, int min_ms, int max_ms,
                   resolver_cb cb, void *ctx, struct resolver_watch **out);

/* Stops following: cb never runs again. The watch is freed once its lookup in
 * flight (if any) returns. Accepts NULL. */
void resolver_unwatch(struct resolver_watch *w);

/* The watch's state and current set now (same ownership as in the callback). */
void resolver_watch_result(const struct resolver_watch *w, struct resolver_result *out);

/* Lookups the watch started, for metrics and tests. */
uint64_t resolver_watch_lookups(const struct resolver_watch *w);

/* One name to look up once (resolver_resolve_now). */
struct resolver_query {
    const char *host; /* a name or an IP literal */
    uint16_t port;
    /* Filled in: OK with n >= 1 addresses (sorted, no duplicates, port set),
     * or FAILING with error (static text) and n == 0. */
    enum resolver_state state;
    const char *error;
    size_t n;
    struct sockaddr_storage addrs[RESOLVER_ADDRS_MAX];
};

/* Looks up the n queries once each, all at once, with a resolver of its own
 * (quiet: the caller reports failures) on a loop of its own, blocking the
 * calling thread until every answer is in or deadline_ms passed (a query
 * still unanswered then fails with "timed out"). For start and reload, where
 * the configuration waits for its addresses anyway. Returns 0, or a negative error when no lookup
 * could start (every query then fails with the reason). */
int resolver_resolve_now(const struct resolver_options *opts, struct resolver_query *q, size_t n,
                         int deadline_ms);

/* Unwatches everything, cancels the lookups in flight and closes every
 * handle; done(arg) runs once the last handle is closed, after which r is
 * freed. done may be NULL. The loop then has nothing of the resolver left.
 * Not from inside a resolver_cb (c-ares is then in the middle of a step):
 * defer it to the next turn of the loop. */
void resolver_close(struct resolver *r, void (*done)(void *arg), void *arg);

#endif
