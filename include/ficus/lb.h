/* Load balancing over one backend's servers, per worker: smooth weighted round
 * robin (as nginx) or least requests by the power of two choices, passive
 * ejection with a growing ejection time, active health results fed in, panic
 * mode and address-set updates that keep what stays.
 *
 * Pure: no libuv, no clock, no random source of its own: the caller passes
 * the time (monotonic milliseconds) and a random number. One struct lb serves
 * one worker, so nothing here is locked or atomic.
 *
 * Vocabulary: a backend has servers (the entries of its "servers" list, or its
 * "url"); a server's host contributes every address it resolves to; each
 * (server, address) pair is an endpoint, the unit that is picked, counted and
 * ejected. Endpoints live in slots whose index is stable for the endpoint's
 * life, so a caller can keep per-endpoint data (a connection pool) in an
 * array beside it; the slot's generation tells a reused slot from its former
 * occupant. */
#ifndef FICUS_LB_H
#define FICUS_LB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Endpoints of one backend, live and draining together: a bound on memory and
 * on the O(n) scan of each pick. Addresses beyond it are dropped and counted
 * by lb_update. */
#define LB_ENDPOINTS_MAX 512
/* The largest server weight: bounds the sums of smooth round robin. */
#define LB_WEIGHT_MAX 1000

enum lb_policy {
    LB_ROUND_ROBIN,    /* smooth weighted round robin */
    LB_LEAST_REQUESTS, /* two weighted-random candidates, the less loaded wins */
};

/* A backend's balancing settings (config: "lb" and "ejection"). */
struct lb_params {
    enum lb_policy policy;
    int eject_failures;    /* consecutive failures that eject an endpoint, >= 1 */
    int64_t eject_base_ms; /* the first ejection's length; each further one doubles it */
    int64_t eject_max_ms;  /* the longest ejection; also how long an endpoint must stay
                              unejected before its backoff starts again from eject_base_ms */
};

/* How a request that was sent to an endpoint ended, for passive ejection.
 * The caller maps its errors: a refused or timed-out connect, a reset and a
 * 5xx answer are failures; any other answer is a success; a request that
 * ended without a verdict on the server (the client left) is abandoned. */
enum lb_outcome { LB_SUCCESS, LB_FAILURE, LB_ABANDONED };

/* What lb_done changed, for the caller to log and count. */
enum lb_event {
    LB_EVENT_NONE,
    LB_EVENT_EJECTED,  /* the endpoint is out of rotation until ejected_until_ms */
    LB_EVENT_RECOVERED /* a probing endpoint answered well: back in rotation */
};

/* An endpoint's place in rotation as the admin API shows it, derived from its
 * three state machines (membership, active health, passive ejection) in this
 * order of precedence: draining, down, ejected, probing, up. */
enum lb_status {
    LB_STATUS_UP,       /* picked normally */
    LB_STATUS_PROBING,  /* its ejection ended: picked again, one failure ejects it again */
    LB_STATUS_EJECTED,  /* passive ejection: not picked (except in panic mode) */
    LB_STATUS_DOWN,     /* the active health check fails: not picked (except in panic) */
    LB_STATUS_DRAINING, /* its address left the server's set: never picked, in-flight
                           requests finish */
    LB_STATUS_N
};

/* "up", "probing", "ejected", "down" or "draining". */
const char *lb_status_name(enum lb_status s);

/* A copy of an endpoint's state for display and for the caller's bookkeeping. */
struct lb_endpoint_info {
    int server;                          /* index into the backend's servers */
    uint32_t gen;                        /* changes each time the slot takes a new endpoint */
    const struct sockaddr_storage *addr; /* inside the lb; valid until the next lb_update */
    int weight;
    enum lb_status status;
    int active;               /* picked and not yet done */
    uint64_t requests;        /* picks */
    uint64_t failures;        /* LB_FAILURE outcomes */
    int consecutive_failures; /* since the last success or ejection */
    int ejections;            /* in the current backoff run: 1 for the first ejection */
    int64_t ejected_until_ms; /* meaningful while ejected */
    int64_t last_failure_ms;  /* INT64_MIN when it never failed */
};

struct lb;

/* A balancer with no endpoint yet, using params (copied). Returns NULL when
 * out of memory. Free with lb_free. */
struct lb *lb_new(const struct lb_params *params);
void lb_free(struct lb *lb);

/* Replaces the address set of one server (server >= 0, an index chosen by the
 * caller, normally into the backend's servers) with addrs (n of them, ports
 * set; copied; duplicates ignored). An endpoint whose address stays keeps its
 * state, counters and slot and takes the new weight (1..LB_WEIGHT_MAX); a new
 * address takes a free slot; an address that left is drained: never picked
 * again, its slot freed once its active requests are done (at once when
 * there are none). A draining address that comes back is live again with its
 * state. n == 0 drains the whole server. Returns how many addresses found no
 * slot (LB_ENDPOINTS_MAX), or a negative error (-ENOMEM, -EINVAL); on error
 * nothing changed. */
int lb_update(struct lb *lb, int server, int weight, const struct sockaddr_storage *addrs,
              size_t n);

/* Picks an endpoint for one request at now_ms and counts it active: a slot
 * index to pass to lb_done exactly once. Candidates are the live endpoints
 * that are neither ejected nor down; when exclude >= 0 (the endpoint a first
 * attempt failed on) it is avoided while another candidate exists. When there
 * is no candidate at all, panic mode: the live endpoint that failed least
 * recently is picked anyway (and lb_panics counts it). random feeds least
 * requests (ignored by round robin). Returns -EHOSTUNREACH when the backend
 * has no live endpoint at all. */
int lb_pick(struct lb *lb, int64_t now_ms, uint64_t random, int exclude);

/* Counts one request on slot ep, chosen by the caller rather than by the
 * policy: a pooled connection to ep just came free while requests wait for
 * one, and handing it over beats closing it to open another. Returns ep (to
 * pass to lb_done like a pick), or -1 when ep is not a candidate (free,
 * draining, ejected or down): the caller picks then. */
int lb_take(struct lb *lb, int ep, int64_t now_ms);

/* Ends a request that lb_pick started on slot ep: counts the outcome, ejects
 * after params.eject_failures consecutive failures (or at the first failure
 * while probing) for eject_base_ms doubled per further ejection, up to
 * eject_max_ms; a success resets the count and brings a probing endpoint back.
 * Failures of requests that were in flight when the endpoint was ejected do
 * not lengthen the ejection. Frees a draining slot when its last request ends. */
enum lb_event lb_done(struct lb *lb, int ep, enum lb_outcome outcome, int64_t now_ms);

/* Feeds an active health check result for slot ep: a down endpoint is not
 * picked (except in panic mode, where going down counts as its latest
 * failure) until a probe finds it up again. */
void lb_set_health(struct lb *lb, int ep, bool up, int64_t now_ms);

/* The slot of server's endpoint at addr (live or draining), or -1. */
int lb_find(const struct lb *lb, int server, const struct sockaddr_storage *addr);

/* One past the highest slot in use: iterate 0..lb_slots()-1 with lb_endpoint. */
int lb_slots(const struct lb *lb);
/* Fills *out for slot ep at now_ms and returns true, or returns false for a
 * free slot. */
bool lb_endpoint(const struct lb *lb, int ep, int64_t now_ms, struct lb_endpoint_info *out);
/* Live endpoints (not draining). */
int lb_live(const struct lb *lb);
/* Picks made in panic mode since lb_new. */
uint64_t lb_panics(const struct lb *lb);

/* Address helpers shared with the resolver and the config. */

/* The length of the sockaddr for ss's family (AF_INET or AF_INET6), 0 otherwise. */
socklen_t lb_addr_len(const struct sockaddr_storage *ss);
/* A total order on addresses: family, then address bytes, then port (and
 * IPv6 scope). 0 means the same endpoint address. */
int lb_addr_compare(const struct sockaddr_storage *a, const struct sockaddr_storage *b);
/* Writes "1.2.3.4:80" or "[::1]:80" into out (size >= 48 always suffices).
 * Returns out. */
char *lb_addr_format(const struct sockaddr_storage *ss, char *out, size_t size);

#endif
