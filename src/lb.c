/* Load balancing over one backend's endpoints: see lb.h. Each endpoint runs
 * three small state machines, each changed by one setter: membership (a slot
 * is free, live or draining), active health (unknown, up, down) and passive
 * ejection (in, ejected, probing). A pick scans the slots once: O(endpoints),
 * at most LB_ENDPOINTS_MAX. */
#include "ficus/lb.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum lb_slot_state { SLOT_FREE, SLOT_LIVE, SLOT_DRAINING };
enum lb_health { HEALTH_UNKNOWN, HEALTH_UP, HEALTH_DOWN };
enum lb_eject_state { EJECT_IN, EJECT_EJECTED, EJECT_PROBING };

struct lb_ep {
    struct sockaddr_storage addr;
    int server;
    uint32_t gen;
    int weight;
    enum lb_slot_state slot;
    enum lb_health health;
    enum lb_eject_state eject;
    int64_t current; /* smooth round robin's running weight */
    int active;
    uint64_t requests;
    uint64_t failures;
    int consecutive;
    int ejections;
    int64_t ejected_until_ms;
    int64_t eject_end_ms; /* when the last ejection ended; INT64_MIN: never ejected */
    int64_t last_failure_ms;
    bool seen; /* scratch for lb_update */
};

struct lb {
    struct lb_params params;
    struct lb_ep *eps;
    int n_slots; /* slots in use or freed below the highest used one */
    int cap;
    int n_live;
    uint64_t panics;
};

/* ---- addresses ------------------------------------------------------------- */

socklen_t lb_addr_len(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return sizeof(struct sockaddr_in);
    if (ss->ss_family == AF_INET6)
        return sizeof(struct sockaddr_in6);
    return 0;
}

int lb_addr_compare(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return a->ss_family < b->ss_family ? -1 : 1;
    int c;
    unsigned pa, pb;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        c = memcmp(&x->sin_addr, &y->sin_addr, sizeof(x->sin_addr));
        pa = ntohs(x->sin_port);
        pb = ntohs(y->sin_port);
    } else if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        c = memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr));
        if (c == 0 && x->sin6_scope_id != y->sin6_scope_id)
            c = x->sin6_scope_id < y->sin6_scope_id ? -1 : 1;
        pa = ntohs(x->sin6_port);
        pb = ntohs(y->sin6_port);
    } else {
        return 0; /* no other family is ever stored */
    }
    if (c != 0)
        return c < 0 ? -1 : 1;
    return pa < pb ? -1 : pa > pb ? 1 : 0;
}

char *lb_addr_format(const struct sockaddr_storage *ss, char *out, size_t size)
{
    char ip[INET6_ADDRSTRLEN];
    if (size == 0)
        return out;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(out, size, "%s:%u", ip, ntohs(sin->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(out, size, "[%s]:%u", ip, ntohs(sin6->sin6_port));
    } else {
        snprintf(out, size, "?");
    }
    return out;
}

/* ---- state machines -------------------------------------------------------- */

static void slot_set(struct lb *lb, struct lb_ep *e, enum lb_slot_state s)
{
    if (e->slot == SLOT_LIVE && s != SLOT_LIVE)
        lb->n_live--;
    else if (e->slot != SLOT_LIVE && s == SLOT_LIVE)
        lb->n_live++;
    e->slot = s;
}

static void health_set(struct lb_ep *e, enum lb_health h)
{
    e->health = h;
}

static void eject_set(struct lb_ep *e, enum lb_eject_state s)
{
    e->eject = s;
}

/* An ejection whose time has come to an end turns into probing. */
static void eject_refresh(struct lb_ep *e, int64_t now_ms)
{
    if (e->eject == EJECT_EJECTED && now_ms >= e->ejected_until_ms) {
        e->eject_end_ms = e->ejected_until_ms;
        eject_set(e, EJECT_PROBING);
    }
}

static void eject(const struct lb *lb, struct lb_ep *e, int64_t now_ms)
{
    const struct lb_params *p = &lb->params;
    /* An endpoint that stayed in rotation for eject_max_ms starts its backoff
     * afresh: one bad minute last week does not cost it the maximum today. */
    if (e->eject == EJECT_IN && e->eject_end_ms != INT64_MIN &&
        now_ms - e->eject_end_ms >= p->eject_max_ms)
        e->ejections = 0;
    int64_t ms = p->eject_base_ms;
    for (int i = 0; i < e->ejections && ms < p->eject_max_ms; i++)
        ms *= 2;
    if (ms > p->eject_max_ms)
        ms = p->eject_max_ms;
    e->ejections++;
    e->ejected_until_ms = now_ms + ms;
    e->consecutive = 0;
    eject_set(e, EJECT_EJECTED);
}

static enum lb_status status_of(enum lb_slot_state slot, enum lb_health health,
                                enum lb_eject_state eject)
{
    if (slot == SLOT_DRAINING)
        return LB_STATUS_DRAINING;
    if (health == HEALTH_DOWN)
        return LB_STATUS_DOWN;
    if (eject == EJECT_EJECTED)
        return LB_STATUS_EJECTED;
    if (eject == EJECT_PROBING)
        return LB_STATUS_PROBING;
    return LB_STATUS_UP;
}

const char *lb_status_name(enum lb_status s)
{
    static const char *const names[] = {"up", "probing", "ejected", "down", "draining"};
    _Static_assert(sizeof(names) / sizeof(names[0]) == LB_STATUS_N, "a name for every status");
    return (unsigned)s < LB_STATUS_N ? names[s] : "?";
}

/* ---- the balancer ---------------------------------------------------------- */

struct lb *lb_new(const struct lb_params *params)
{
    struct lb *lb = calloc(1, sizeof(*lb));
    if (lb == NULL)
        return NULL;
    lb->params = *params;
    if (lb->params.eject_failures < 1)
        lb->params.eject_failures = 1;
    if (lb->params.eject_base_ms < 1)
        lb->params.eject_base_ms = 1;
    if (lb->params.eject_max_ms < lb->params.eject_base_ms)
        lb->params.eject_max_ms = lb->params.eject_base_ms;
    return lb;
}

void lb_free(struct lb *lb)
{
    if (lb == NULL)
        return;
    free(lb->eps);
    free(lb);
}

static void slot_release(struct lb *lb, struct lb_ep *e)
{
    slot_set(lb, e, SLOT_FREE);
    /* Trim the free tail so that scans stay short. */
    while (lb->n_slots > 0 && lb->eps[lb->n_slots - 1].slot == SLOT_FREE)
        lb->n_slots--;
}

/* Makes room for want slots (at most LB_ENDPOINTS_MAX). Returns 0 or -ENOMEM. */
static int reserve(struct lb *lb, int want)
{
    if (want > LB_ENDPOINTS_MAX)
        want = LB_ENDPOINTS_MAX;
    if (want <= lb->cap)
        return 0;
    int cap = lb->cap ? lb->cap : 8;
    while (cap < want)
        cap *= 2;
    if (cap > LB_ENDPOINTS_MAX)
        cap = LB_ENDPOINTS_MAX;
    struct lb_ep *eps = realloc(lb->eps, (size_t)cap * sizeof(*eps));
    if (eps == NULL)
        return -ENOMEM;
    memset(eps + lb->cap, 0, (size_t)(cap - lb->cap) * sizeof(*eps)); /* SLOT_FREE, gen 0 */
    lb->eps = eps;
    lb->cap = cap;
    return 0;
}

/* A free slot for a new endpoint (keeping its generation), or NULL when every
 * reserved slot is taken. */
static struct lb_ep *slot_take(struct lb *lb)
{
    for (int i = 0; i < lb->n_slots; i++) {
        if (lb->eps[i].slot == SLOT_FREE)
            return &lb->eps[i];
    }
    if (lb->n_slots == lb->cap)
        return NULL;
    return &lb->eps[lb->n_slots++];
}

static void ep_init(struct lb_ep *e, int server, int weight, const struct sockaddr_storage *addr)
{
    uint32_t gen = e->gen + 1;
    memset(e, 0, sizeof(*e));
    e->gen = gen;
    e->server = server;
    e->weight = weight;
    memcpy(&e->addr, addr, lb_addr_len(addr));
    e->health = HEALTH_UNKNOWN;
    e->eject = EJECT_IN;
    e->eject_end_ms = INT64_MIN;
    e->last_failure_ms = INT64_MIN;
}

static void ep_drain(struct lb *lb, struct lb_ep *e)
{
    if (e->active > 0)
        slot_set(lb, e, SLOT_DRAINING);
    else
        slot_release(lb, e);
}

int lb_find(const struct lb *lb, int server, const struct sockaddr_storage *addr)
{
    for (int i = 0; i < lb->n_slots; i++) {
        const struct lb_ep *e = &lb->eps[i];
        if (e->slot != SLOT_FREE && e->server == server && lb_addr_compare(&e->addr, addr) == 0)
            return i;
    }
    return -1;
}

int lb_update(struct lb *lb, int server, int weight, const struct sockaddr_storage *addrs, size_t n)
{
    if (server < 0 || weight < 1 || weight > LB_WEIGHT_MAX || (n > 0 && addrs == NULL))
        return -EINVAL;
    for (size_t j = 0; j < n; j++) {
        if (lb_addr_len(&addrs[j]) == 0)
            return -EINVAL;
    }
    /* Room for every new address first, so that an error changes nothing. */
    int arriving = 0;
    for (size_t j = 0; j < n; j++)
        arriving += lb_find(lb, server, &addrs[j]) < 0;
    if (reserve(lb, lb->n_slots + arriving) != 0)
        return -ENOMEM;

    /* Then drain what left, so that its slots can serve what arrives. */
    for (int i = 0; i < lb->n_slots; i++)
        lb->eps[i].seen = false;
    for (size_t j = 0; j < n; j++) {
        int i = lb_find(lb, server, &addrs[j]);
        if (i >= 0)
            lb->eps[i].seen = true;
    }
    for (int i = 0; i < lb->n_slots; i++) {
        struct lb_ep *e = &lb->eps[i];
        if (e->slot == SLOT_LIVE && e->server == server && !e->seen)
            ep_drain(lb, e);
    }
    int dropped = 0;
    for (size_t j = 0; j < n; j++) {
        int i = lb_find(lb, server, &addrs[j]);
        if (i >= 0) { /* staying, coming back from draining, or listed twice */
            struct lb_ep *e = &lb->eps[i];
            e->weight = weight;
            if (e->slot == SLOT_DRAINING)
                slot_set(lb, e, SLOT_LIVE);
            continue;
        }
        struct lb_ep *e = slot_take(lb);
        if (e == NULL) {
            dropped++;
            continue;
        }
        ep_init(e, server, weight, &addrs[j]);
        slot_set(lb, e, SLOT_LIVE);
    }
    return dropped;
}

static bool is_candidate(const struct lb_ep *e)
{
    return e->slot == SLOT_LIVE && e->health != HEALTH_DOWN && e->eject != EJECT_EJECTED;
}

/* Smooth weighted round robin over the n candidates in idx (nginx's
 * ngx_http_upstream_get_peer): each gains its weight, the highest is picked
 * and loses the total. Over any run of (sum of weights) picks each gets
 * exactly its weight, interleaved rather than in bursts. */
static int pick_round_robin(struct lb *lb, const int *idx, int n)
{
    int64_t total = 0;
    int best = -1;
    for (int k = 0; k < n; k++) {
        struct lb_ep *e = &lb->eps[idx[k]];
        e->current += e->weight;
        total += e->weight;
        if (best < 0 || e->current > lb->eps[best].current)
            best = idx[k];
    }
    lb->eps[best].current -= total;
    return best;
}

/* The candidate at weighted position r (0 <= r < total weight of idx minus
 * skip's), passing over skip. */
static int weighted_at(const struct lb *lb, const int *idx, int n, int skip, uint64_t r)
{
    for (int k = 0; k < n; k++) {
        if (idx[k] == skip)
            continue;
        uint64_t w = (uint64_t)lb->eps[idx[k]].weight;
        if (r < w)
            return idx[k];
        r -= w;
    }
    return idx[0] != skip ? idx[0] : idx[1]; /* not reached: r is below the total */
}

/* Power of two choices: two distinct candidates drawn with probability in
 * proportion to their weights; the one with fewer active requests per unit
 * of weight wins, the first drawn on a tie. With no load, picks follow the
 * weights; under load, a slow endpoint (more requests pending) gets fewer. */
static int pick_least_requests(const struct lb *lb, const int *idx, int n, uint64_t random)
{
    if (n == 1)
        return idx[0];
    uint64_t total = 0;
    for (int k = 0; k < n; k++)
        total += (uint64_t)lb->eps[idx[k]].weight;
    int a = weighted_at(lb, idx, n, -1, (random & 0xffffffffu) % total);
    int b = weighted_at(lb, idx, n, a, (random >> 32) % (total - (uint64_t)lb->eps[a].weight));
    const struct lb_ep *ea = &lb->eps[a], *eb = &lb->eps[b];
    int64_t load_a = (int64_t)ea->active * eb->weight;
    int64_t load_b = (int64_t)eb->active * ea->weight;
    return load_b < load_a ? b : a;
}

/* Panic: every live endpoint is ejected or down. Rather than failing every
 * request, try the one whose last failure is the oldest (as Envoy's panic
 * threshold keeps a cluster serving): it is the likeliest to have recovered. */
static int pick_panic(const struct lb *lb, int exclude)
{
    int best = -1;
    for (int pass = 0; pass < 2 && best < 0; pass++) {
        for (int i = 0; i < lb->n_slots; i++) {
            const struct lb_ep *e = &lb->eps[i];
            if (e->slot != SLOT_LIVE || (pass == 0 && i == exclude))
                continue;
            if (best < 0 || e->last_failure_ms < lb->eps[best].last_failure_ms)
                best = i;
        }
    }
    return best;
}

int lb_pick(struct lb *lb, int64_t now_ms, uint64_t random, int exclude)
{
    int idx[LB_ENDPOINTS_MAX];
    int n = 0;
    bool exclude_ok = false;
    for (int i = 0; i < lb->n_slots; i++) {
        struct lb_ep *e = &lb->eps[i];
        eject_refresh(e, now_ms);
        if (!is_candidate(e))
            continue;
        if (i == exclude)
            exclude_ok = true;
        else
            idx[n++] = i;
    }
    if (n == 0 && exclude_ok)
        idx[n++] = exclude; /* the only candidate: a second try there beats none */

    int ep;
    if (n == 0) {
        ep = pick_panic(lb, exclude);
        if (ep < 0)
            return -EHOSTUNREACH;
        lb->panics++;
    } else if (lb->params.policy == LB_LEAST_REQUESTS) {
        ep = pick_least_requests(lb, idx, n, random);
    } else {
        ep = pick_round_robin(lb, idx, n);
    }
    lb->eps[ep].active++;
    lb->eps[ep].requests++;
    return ep;
}

int lb_take(struct lb *lb, int ep, int64_t now_ms)
{
    if (ep < 0 || ep >= lb->n_slots)
        return -1;
    struct lb_ep *e = &lb->eps[ep];
    eject_refresh(e, now_ms);
    if (!is_candidate(e))
        return -1;
    e->active++;
    e->requests++;
    return ep;
}

enum lb_event lb_done(struct lb *lb, int ep, enum lb_outcome outcome, int64_t now_ms)
{
    if (ep < 0 || ep >= lb->n_slots || lb->eps[ep].slot == SLOT_FREE)
        return LB_EVENT_NONE;
    struct lb_ep *e = &lb->eps[ep];
    enum lb_event ev = LB_EVENT_NONE;
    if (e->active > 0)
        e->active--;
    eject_refresh(e, now_ms);
    switch (outcome) {
    case LB_SUCCESS:
        e->consecutive = 0;
        if (e->eject == EJECT_PROBING) {
            eject_set(e, EJECT_IN);
            ev = LB_EVENT_RECOVERED;
        }
        break;
    case LB_FAILURE:
        e->failures++;
        e->last_failure_ms = now_ms;
        if (e->eject == EJECT_EJECTED)
            break; /* a request from before the ejection: it says nothing new */
        e->consecutive++;
        if (e->eject == EJECT_PROBING || e->consecutive >= lb->params.eject_failures) {
            eject(lb, e, now_ms);
            ev = LB_EVENT_EJECTED;
        }
        break;
    case LB_ABANDONED:
        break;
    }
    if (e->slot == SLOT_DRAINING && e->active == 0)
        slot_release(lb, e);
    return ev;
}

void lb_set_health(struct lb *lb, int ep, bool up, int64_t now_ms)
{
    if (ep < 0 || ep >= lb->n_slots || lb->eps[ep].slot == SLOT_FREE)
        return;
    struct lb_ep *e = &lb->eps[ep];
    if (!up && e->health != HEALTH_DOWN)
        e->last_failure_ms = now_ms;
    health_set(e, up ? HEALTH_UP : HEALTH_DOWN);
}

int lb_slots(const struct lb *lb)
{
    return lb->n_slots;
}

bool lb_endpoint(const struct lb *lb, int ep, int64_t now_ms, struct lb_endpoint_info *out)
{
    if (ep < 0 || ep >= lb->n_slots || lb->eps[ep].slot == SLOT_FREE)
        return false;
    const struct lb_ep *e = &lb->eps[ep];
    /* Reading must not move the state on: an ended ejection is told as
     * probing here without being made one (what eject_refresh would do).
     * No copy of the whole endpoint with its address: this runs several
     * times a request. */
    enum lb_eject_state eject = e->eject;
    if (eject == EJECT_EJECTED && now_ms >= e->ejected_until_ms)
        eject = EJECT_PROBING;
    out->server = e->server;
    out->gen = e->gen;
    out->addr = &e->addr;
    out->weight = e->weight;
    out->status = status_of(e->slot, e->health, eject);
    out->active = e->active;
    out->requests = e->requests;
    out->failures = e->failures;
    out->consecutive_failures = e->consecutive;
    out->ejections = e->ejections;
    out->ejected_until_ms = e->ejected_until_ms;
    out->last_failure_ms = e->last_failure_ms;
    return true;
}

int lb_live(const struct lb *lb)
{
    return lb->n_live;
}

uint64_t lb_panics(const struct lb *lb)
{
    return lb->panics;
}
