/* Unit tests of load balancing: the spread of both policies against the
 * weights, smooth round robin's interleaving, the power of two choices
 * preferring the less loaded, passive ejection with its growing backoff,
 * recovery, in-flight failures, active health, panic mode, retries that avoid
 * an endpoint, and address-set updates (kept, added, drained, revived, capped). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ficus/common.h"
#include "ficus/lb.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* ---- helpers ---- */

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage v6(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
    return ss;
}

static const struct lb_params RR = {LB_ROUND_ROBIN, 3, 1000, 8000};
static const struct lb_params LR = {LB_LEAST_REQUESTS, 3, 1000, 8000};

/* A balancer with one single-address server per weight: server i is
 * 127.0.0.(i+1):80 and lands in slot i. */
static struct lb *with_servers(const struct lb_params *params, const int *weights, int n)
{
    struct lb *lb = lb_new(params);
    assert_non_null(lb);
    for (int i = 0; i < n; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "127.0.0.%d", i + 1);
        struct sockaddr_storage a = v4(ip, 80);
        assert_int_equal(lb_update(lb, i, weights[i], &a, 1), 0);
        assert_int_equal(lb_find(lb, i, &a), i);
    }
    return lb;
}

static enum lb_status status(const struct lb *lb, int ep, int64_t now)
{
    struct lb_endpoint_info info;
    assert_true(lb_endpoint(lb, ep, now, &info));
    return info.status;
}

/* Picks and finishes at once, count times; adds each endpoint's picks to counts. */
static void pick_many(struct lb *lb, int count, int64_t now, uint64_t *rng, int *counts)
{
    for (int i = 0; i < count; i++) {
        int ep = lb_pick(lb, now, xorshift64s(rng), -1);
        assert_true(ep >= 0);
        counts[ep]++;
        lb_done(lb, ep, LB_SUCCESS, now);
    }
}

/* Picks (finishing the others well) until want is picked, and leaves that
 * one active. Fails rather than loops when want never comes. */
static void pick_until(struct lb *lb, int want, int64_t now)
{
    for (int i = 0; i < 1000; i++) {
        int ep = lb_pick(lb, now, 0, -1);
        if (ep == want)
            return;
        lb_done(lb, ep, LB_SUCCESS, now);
    }
    fail_msg("endpoint %d never picked", want);
}

/* Each count is within 10 % of its share of total by weight. */
static void assert_spread(const int *counts, const int *weights, int n, int total)
{
    int wsum = 0;
    for (int i = 0; i < n; i++)
        wsum += weights[i];
    for (int i = 0; i < n; i++) {
        double want = (double)total * weights[i] / wsum;
        if (counts[i] < want * 0.9 || counts[i] > want * 1.1) {
            fprintf(stderr, "endpoint %d: %d picks, want %.0f +- 10 %%\n", i, counts[i], want);
            fail();
        }
    }
}

/* ---- spread ---- */

static void test_round_robin_spread_and_smoothness(void **state)
{
    (void)state;
    const int weights[] = {1, 2, 3, 10};
    struct lb *lb = with_servers(&RR, weights, 4);
    uint64_t rng = 1;
    int counts[4] = {0};
    pick_many(lb, 64000, 0, &rng, counts);
    assert_spread(counts, weights, 4, 64000);

    /* Smooth: every window of 16 picks (the weight sum) holds each endpoint
     * exactly its weight times, so a heavy endpoint never gets a burst. */
    int seq[160];
    for (int i = 0; i < 160; i++) {
        seq[i] = lb_pick(lb, 0, 0, -1);
        lb_done(lb, seq[i], LB_SUCCESS, 0);
    }
    for (int start = 0; start + 16 <= 160; start += 16) {
        int w[4] = {0};
        for (int i = start; i < start + 16; i++)
            w[seq[i]]++;
        for (int k = 0; k < 4; k++)
            assert_int_equal(w[k], weights[k]);
    }
    lb_free(lb);
}

static void test_least_requests_spread_follows_weights(void **state)
{
    (void)state;
    const int weights[] = {5, 3, 2};
    struct lb *lb = with_servers(&LR, weights, 3);
    uint64_t rng = 42;
    int counts[3] = {0};
    pick_many(lb, 100000, 0, &rng, counts);
    assert_spread(counts, weights, 3, 100000);
    lb_free(lb);
}

/* ---- least requests prefers the less loaded ---- */

static void test_p2c_prefers_less_loaded(void **state)
{
    (void)state;
    const int weights[] = {1, 1};
    struct lb *lb = with_servers(&LR, weights, 2);
    uint64_t rng = 7;
    /* Requests that never finish: two distinct candidates always, so the
     * loads never differ by more than one. */
    for (int i = 0; i < 1000; i++) {
        assert_true(lb_pick(lb, 0, xorshift64s(&rng), -1) >= 0);
        struct lb_endpoint_info a, b;
        lb_endpoint(lb, 0, 0, &a);
        lb_endpoint(lb, 1, 0, &b);
        assert_true(a.active - b.active <= 1 && b.active - a.active <= 1);
    }
    lb_free(lb);

    /* Three endpoints, one stuck (its requests never finish), two fast: once
     * the stuck one holds a request it loses every comparison. Round robin,
     * blind to load, keeps sending it a third. */
    const int w3[] = {1, 1, 1};
    for (int policy = 0; policy < 2; policy++) {
        lb = with_servers(policy ? &LR : &RR, w3, 3);
        int stuck = 0;
        for (int i = 0; i < 3000; i++) {
            int ep = lb_pick(lb, 0, xorshift64s(&rng), -1);
            if (ep == 2)
                stuck++;
            else
                lb_done(lb, ep, LB_SUCCESS, 0);
        }
        if (policy)
            assert_true(stuck <= 1);
        else
            assert_int_equal(stuck, 1000);
        lb_free(lb);
    }

    /* Weights scale the load: an endpoint of weight 3 may hold three times
     * the requests of one of weight 1 before it loses. */
    const int w2[] = {3, 1};
    lb = with_servers(&LR, w2, 2);
    for (int i = 0; i < 400; i++)
        assert_true(lb_pick(lb, 0, xorshift64s(&rng), -1) >= 0);
    struct lb_endpoint_info heavy, light;
    lb_endpoint(lb, 0, 0, &heavy);
    lb_endpoint(lb, 1, 0, &light);
    assert_true(heavy.active >= 3 * light.active - 3 && heavy.active <= 3 * light.active + 3);
    lb_free(lb);
}

/* ---- passive ejection ---- */

static void test_ejection_and_growing_backoff(void **state)
{
    (void)state;
    const int weights[] = {1, 1};
    struct lb *lb = with_servers(&RR, weights, 2);
    struct lb_endpoint_info info;

    /* Two failures: still in. The third: ejected for eject_base_ms. */
    for (int i = 0; i < 2; i++) {
        int ep = lb_pick(lb, 0, 0, 1); /* avoid 1: lands on 0 */
        assert_int_equal(ep, 0);
        assert_int_equal(lb_done(lb, 0, LB_FAILURE, 0), LB_EVENT_NONE);
    }
    assert_int_equal(status(lb, 0, 0), LB_STATUS_UP);
    assert_int_equal(lb_pick(lb, 0, 0, 1), 0);
    assert_int_equal(lb_done(lb, 0, LB_FAILURE, 0), LB_EVENT_EJECTED);
    assert_int_equal(status(lb, 0, 0), LB_STATUS_EJECTED);
    lb_endpoint(lb, 0, 0, &info);
    assert_int_equal(info.ejected_until_ms, 1000);
    assert_int_equal(info.ejections, 1);
    assert_int_equal(info.failures, 3);

    /* While ejected nothing goes there. */
    for (int i = 0; i < 100; i++) {
        int ep = lb_pick(lb, 999, 0, -1);
        assert_int_equal(ep, 1);
        lb_done(lb, ep, LB_SUCCESS, 999);
    }

    /* Then it is tried again (probing); one failure ejects it for twice as
     * long, and so on up to eject_max_ms. */
    int64_t now = 1000;
    const int64_t lengths[] = {2000, 4000, 8000, 8000, 8000};
    for (size_t k = 0; k < ARRAY_SIZE(lengths); k++) {
        assert_int_equal(status(lb, 0, now), LB_STATUS_PROBING);
        int ep = lb_pick(lb, now, 0, 1);
        assert_int_equal(ep, 0);
        assert_int_equal(lb_done(lb, 0, LB_FAILURE, now), LB_EVENT_EJECTED);
        lb_endpoint(lb, 0, now, &info);
        assert_int_equal(info.ejected_until_ms, now + lengths[k]);
        assert_int_equal(status(lb, 0, now + lengths[k] - 1), LB_STATUS_EJECTED);
        now += lengths[k];
    }
    lb_free(lb);
}

static void test_recovery_and_reset(void **state)
{
    (void)state;
    const int weights[] = {1, 1};
    struct lb *lb = with_servers(&RR, weights, 2);

    /* A success between failures resets the count: never three in a row. */
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 2; i++) {
            assert_int_equal(lb_pick(lb, 0, 0, 1), 0);
            lb_done(lb, 0, LB_FAILURE, 0);
        }
        assert_int_equal(lb_pick(lb, 0, 0, 1), 0);
        assert_int_equal(lb_done(lb, 0, LB_SUCCESS, 0), LB_EVENT_NONE);
    }
    assert_int_equal(status(lb, 0, 0), LB_STATUS_UP);

    /* Ejected, then probing, then a success: back in rotation. */
    for (int i = 0; i < 3; i++) {
        lb_pick(lb, 0, 0, 1);
        lb_done(lb, 0, LB_FAILURE, 0);
    }
    assert_int_equal(status(lb, 0, 0), LB_STATUS_EJECTED);
    assert_int_equal(lb_pick(lb, 1000, 0, 1), 0);
    assert_int_equal(lb_done(lb, 0, LB_SUCCESS, 1000), LB_EVENT_RECOVERED);
    assert_int_equal(status(lb, 0, 1000), LB_STATUS_UP);
    int counts[2] = {0};
    uint64_t rng = 3;
    pick_many(lb, 1000, 1000, &rng, counts);
    assert_in_range(counts[0], 499, 501);

    /* Failing again soon after: the backoff goes on growing (2 s). After
     * eject_max_ms (8 s) in rotation, it starts again from 1 s. */
    struct lb_endpoint_info info;
    for (int i = 0; i < 3; i++) {
        lb_pick(lb, 1500, 0, 1);
        lb_done(lb, 0, LB_FAILURE, 1500);
    }
    lb_endpoint(lb, 0, 1500, &info);
    assert_int_equal(info.ejected_until_ms, 3500);
    lb_pick(lb, 3500, 0, 1);
    assert_int_equal(lb_done(lb, 0, LB_SUCCESS, 3500), LB_EVENT_RECOVERED);
    for (int i = 0; i < 3; i++) {
        lb_pick(lb, 3500 + 8000, 0, 1);
        lb_done(lb, 0, LB_FAILURE, 3500 + 8000);
    }
    lb_endpoint(lb, 0, 11500, &info);
    assert_int_equal(info.ejected_until_ms, 11500 + 1000);
    assert_int_equal(info.ejections, 1);
    lb_free(lb);
}

static void test_inflight_failures_do_not_extend_ejection(void **state)
{
    (void)state;
    const int weights[] = {1, 1};
    struct lb *lb = with_servers(&RR, weights, 2);
    /* Eight requests in flight on endpoint 0; they all fail. */
    for (int i = 0; i < 8; i++)
        assert_int_equal(lb_pick(lb, 0, 0, 1), 0);
    for (int i = 0; i < 8; i++)
        lb_done(lb, 0, LB_FAILURE, 10 + i);
    struct lb_endpoint_info info;
    lb_endpoint(lb, 0, 20, &info);
    assert_int_equal(info.status, LB_STATUS_EJECTED);
    assert_int_equal(info.ejections, 1);
    assert_int_equal(info.ejected_until_ms, 12 + 1000);
    assert_int_equal(info.failures, 8);
    assert_int_equal(info.active, 0);
    /* A late success does not bring an ejected endpoint back early either. */
    assert_int_equal(lb_pick(lb, 500, 0, -1), 1);
    lb_done(lb, 1, LB_SUCCESS, 500);
    assert_int_equal(status(lb, 0, 500), LB_STATUS_EJECTED);
    lb_free(lb);
}

/* ---- active health ---- */

static void test_health_down_and_up(void **state)
{
    (void)state;
    const int weights[] = {1, 1, 1};
    struct lb *lb = with_servers(&RR, weights, 3);
    lb_set_health(lb, 1, false, 0);
    assert_int_equal(status(lb, 1, 0), LB_STATUS_DOWN);
    int counts[3] = {0};
    uint64_t rng = 5;
    pick_many(lb, 300, 0, &rng, counts);
    assert_int_equal(counts[1], 0);
    assert_in_range(counts[0], 149, 151);
    lb_set_health(lb, 1, true, 10);
    assert_int_equal(status(lb, 1, 10), LB_STATUS_UP);
    memset(counts, 0, sizeof(counts));
    pick_many(lb, 300, 10, &rng, counts);
    assert_in_range(counts[1], 99, 101);
    lb_free(lb);
}

/* ---- panic mode ---- */

static void test_panic_picks_least_recently_failed(void **state)
{
    (void)state;
    const int weights[] = {1, 1, 1};
    struct lb *lb = with_servers(&RR, weights, 3);
    /* Endpoint 2 fails first (t=100), then 0 (t=200), then 1 goes down (t=300). */
    const struct {
        int ep;
        int64_t t;
    } order[] = {{2, 100}, {0, 200}};
    for (size_t k = 0; k < ARRAY_SIZE(order); k++) {
        for (int i = 0; i < 3; i++) {
            pick_until(lb, order[k].ep, order[k].t);
            lb_done(lb, order[k].ep, LB_FAILURE, order[k].t);
        }
    }
    lb_set_health(lb, 1, false, 300);
    assert_int_equal(lb_panics(lb), 0);

    /* Nothing is a candidate: the oldest failure (endpoint 2) is tried. */
    int ep = lb_pick(lb, 400, 0, -1);
    assert_int_equal(ep, 2);
    assert_int_equal(lb_panics(lb), 1);
    assert_int_equal(status(lb, 2, 400), LB_STATUS_EJECTED);
    /* It fails again (t=400): now endpoint 0 is the least recently failed. */
    lb_done(lb, ep, LB_FAILURE, 400);
    assert_int_equal(lb_pick(lb, 410, 0, -1), 0);
    lb_done(lb, 0, LB_FAILURE, 410);
    /* A retry avoids the endpoint of the first attempt even in panic. */
    assert_int_equal(lb_pick(lb, 420, 0, -1), 1); /* down since 300: the oldest now */
    assert_int_equal(lb_pick(lb, 420, 0, 1), 2);
    assert_int_equal(lb_panics(lb), 4);

    /* An ejection that ends ends the panic: endpoint 2 (ejected at 100 for
     * 1 s; its failure at 400 came while ejected) is probing at 1150, while
     * endpoint 0 (ejected at 200) is still out. */
    assert_int_equal(status(lb, 2, 1150), LB_STATUS_PROBING);
    assert_int_equal(status(lb, 0, 1150), LB_STATUS_EJECTED);
    for (int i = 0; i < 10; i++)
        assert_int_equal(lb_pick(lb, 1150, 0, -1), 2);
    assert_int_equal(lb_panics(lb), 4);
    lb_free(lb);
}

/* ---- retries ---- */

static void test_exclude_for_retry(void **state)
{
    (void)state;
    const int weights[] = {1, 1};
    struct lb *lb = with_servers(&LR, weights, 2);
    uint64_t rng = 9;
    for (int i = 0; i < 100; i++) {
        int ep = lb_pick(lb, 0, xorshift64s(&rng), 0);
        assert_int_equal(ep, 1);
        lb_done(lb, ep, LB_ABANDONED, 0);
    }
    lb_free(lb);

    /* With one endpoint, the retry goes where the first attempt went. */
    const int one[] = {1};
    lb = with_servers(&RR, one, 1);
    assert_int_equal(lb_pick(lb, 0, 0, 0), 0);
    lb_free(lb);
}

/* A connection freed while requests wait is handed over on its endpoint:
 * counted like a pick, refused for an endpoint that is no candidate. */
static void test_take_counts_like_a_pick(void **state)
{
    (void)state;
    const int weights[] = {1, 1};
    struct lb *lb = with_servers(&RR, weights, 2);
    struct lb_endpoint_info info;
    assert_int_equal(lb_take(lb, 1, 0), 1);
    assert_true(lb_endpoint(lb, 1, 0, &info));
    assert_int_equal(info.active, 1);
    assert_int_equal(info.requests, 1);
    assert_int_equal(lb_done(lb, 1, LB_SUCCESS, 0), LB_EVENT_NONE);
    assert_int_equal(lb_take(lb, 7, 0), -1); /* no such slot */
    /* Ejected: refused until the ejection ends, then taken while probing. */
    for (int i = 0; i < RR.eject_failures; i++)
        lb_done(lb, lb_take(lb, 0, 0), LB_FAILURE, 0);
    assert_int_equal(lb_take(lb, 0, 10), -1);
    assert_int_equal(lb_take(lb, 0, RR.eject_base_ms), 0);
    assert_int_equal(lb_done(lb, 0, LB_SUCCESS, RR.eject_base_ms), LB_EVENT_RECOVERED);
    /* Down, or drained: refused. */
    lb_set_health(lb, 1, false, 0);
    assert_int_equal(lb_take(lb, 1, 0), -1);
    assert_int_equal(lb_update(lb, 0, 1, NULL, 0), 0);
    assert_int_equal(lb_take(lb, 0, 0), -1);
    lb_free(lb);
}

/* ---- address-set updates ---- */

static void test_update_keeps_adds_drains(void **state)
{
    (void)state;
    struct lb *lb = lb_new(&RR);
    assert_non_null(lb);
    struct sockaddr_storage a = v4("10.0.0.1", 80), b = v4("10.0.0.2", 80), c = v4("10.0.0.3", 80),
                            d = v6("2001:db8::4", 80);
    struct sockaddr_storage first[] = {a, b, c};
    assert_int_equal(lb_update(lb, 0, 2, first, 3), 0);
    assert_int_equal(lb_live(lb), 3);
    int sa = lb_find(lb, 0, &a), sb = lb_find(lb, 0, &b), sc = lb_find(lb, 0, &c);
    assert_true(sa >= 0 && sb >= 0 && sc >= 0);

    /* State to keep: a has a failure on record, b a request in flight. */
    pick_until(lb, sa, 0);
    lb_done(lb, sa, LB_FAILURE, 0);
    pick_until(lb, sb, 0);
    struct lb_endpoint_info before, info;
    lb_endpoint(lb, sa, 0, &before);

    /* The name now answers c, d and a (twice): b left, d arrived. */
    struct sockaddr_storage second[] = {c, d, a, a};
    assert_int_equal(lb_update(lb, 0, 5, second, 4), 0);
    assert_int_equal(lb_live(lb), 3);
    assert_int_equal(lb_find(lb, 0, &a), sa); /* same slot, same state */
    lb_endpoint(lb, sa, 0, &info);
    assert_int_equal(info.gen, before.gen);
    assert_int_equal(info.requests, before.requests);
    assert_int_equal(info.consecutive_failures, 1);
    assert_int_equal(info.weight, 5);
    assert_int_equal(lb_find(lb, 0, &b), sb); /* draining: in flight */
    assert_int_equal(status(lb, sb, 0), LB_STATUS_DRAINING);
    int sd = lb_find(lb, 0, &d);
    assert_true(sd >= 0 && sd != sa && sd != sb && sd != sc);
    lb_endpoint(lb, sd, 0, &info);
    assert_int_equal(info.requests, 0);
    assert_int_equal(info.status, LB_STATUS_UP);

    /* A draining endpoint is never picked; its request finishes normally. */
    int counts[LB_ENDPOINTS_MAX] = {0};
    uint64_t rng = 11;
    pick_many(lb, 300, 0, &rng, counts);
    assert_int_equal(counts[sb], 0);
    assert_in_range(counts[sa], 99, 101);
    assert_in_range(counts[sd], 99, 101);
    lb_endpoint(lb, sb, 0, &before);
    lb_done(lb, sb, LB_SUCCESS, 0);
    assert_int_equal(lb_find(lb, 0, &b), -1); /* its last request ended: slot freed */
    assert_false(lb_endpoint(lb, sb, 0, &info));

    /* A new address reuses the slot with a new generation. */
    struct sockaddr_storage e = v4("10.0.0.5", 8080);
    struct sockaddr_storage third[] = {a, c, d, e};
    assert_int_equal(lb_update(lb, 0, 5, third, 4), 0);
    assert_int_equal(lb_find(lb, 0, &e), sb);
    lb_endpoint(lb, sb, 0, &info);
    assert_true(info.gen != before.gen);

    /* Another server is independent; the same address under two servers is
     * two endpoints. */
    assert_int_equal(lb_update(lb, 1, 1, &a, 1), 0);
    assert_true(lb_find(lb, 1, &a) >= 0 && lb_find(lb, 1, &a) != sa);
    assert_int_equal(lb_live(lb), 5);

    /* A draining address that comes back keeps its state. */
    int ep = lb_pick(lb, 0, 0, -1);
    struct lb_endpoint_info kept;
    lb_endpoint(lb, ep, 0, &kept);
    const struct sockaddr_storage back = *kept.addr;
    int server = kept.server;
    assert_int_equal(lb_update(lb, server, 1, NULL, 0), 0); /* the server drains */
    assert_int_equal(status(lb, ep, 0), LB_STATUS_DRAINING);
    assert_int_equal(lb_update(lb, server, 1, &back, 1), 0);
    assert_int_equal(lb_find(lb, server, &back), ep);
    lb_endpoint(lb, ep, 0, &info);
    assert_int_equal(info.status, LB_STATUS_UP);
    assert_int_equal(info.gen, kept.gen);
    assert_int_equal(info.requests, kept.requests);
    lb_done(lb, ep, LB_SUCCESS, 0);

    /* Bad arguments change nothing. */
    int live = lb_live(lb);
    assert_int_equal(lb_update(lb, 0, 0, &a, 1), -EINVAL);
    assert_int_equal(lb_update(lb, 0, LB_WEIGHT_MAX + 1, &a, 1), -EINVAL);
    assert_int_equal(lb_update(lb, -1, 1, &a, 1), -EINVAL);
    struct sockaddr_storage junk;
    memset(&junk, 0, sizeof(junk));
    assert_int_equal(lb_update(lb, 0, 1, &junk, 1), -EINVAL);
    assert_int_equal(lb_live(lb), live);
    assert_int_equal(lb_find(lb, 1, &a) >= 0, true);

    /* Everything drained: no endpoint at all, not even in panic. */
    assert_int_equal(lb_update(lb, 0, 1, NULL, 0), 0);
    assert_int_equal(lb_update(lb, 1, 1, NULL, 0), 0);
    assert_int_equal(lb_live(lb), 0);
    assert_int_equal(lb_pick(lb, 0, 0, -1), -EHOSTUNREACH);
    assert_int_equal(lb_slots(lb), 0);
    lb_free(lb);
}

static void test_update_is_capped(void **state)
{
    (void)state;
    struct lb *lb = lb_new(&LR);
    static struct sockaddr_storage many[LB_ENDPOINTS_MAX + 20];
    for (int i = 0; i < LB_ENDPOINTS_MAX + 20; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.1.%d.%d", i / 250, i % 250 + 1);
        many[i] = v4(ip, 80);
    }
    assert_int_equal(lb_update(lb, 0, 1, many, LB_ENDPOINTS_MAX - 10), 0);
    assert_int_equal(lb_update(lb, 1, 1, many + 100, 30), 20); /* 10 fit, 20 dropped */
    assert_int_equal(lb_live(lb), LB_ENDPOINTS_MAX);
    /* Replacing server 0's set frees slots for server 1 next time. */
    assert_int_equal(lb_update(lb, 0, 1, many, 10), 0);
    assert_int_equal(lb_update(lb, 1, 1, many + 100, 30), 0);
    assert_int_equal(lb_live(lb), 40);
    uint64_t rng = 1;
    int counts[LB_ENDPOINTS_MAX] = {0};
    pick_many(lb, 4000, 0, &rng, counts);
    for (int i = 0; i < lb_slots(lb); i++) {
        struct lb_endpoint_info info;
        if (lb_endpoint(lb, i, 0, &info))
            assert_true(counts[i] > 40); /* each of 40 gets about 100 */
    }
    lb_free(lb);
}

/* ---- addresses ---- */

static void test_addresses(void **state)
{
    (void)state;
    char buf[64];
    struct sockaddr_storage a = v4("10.0.0.1", 80), b = v4("10.0.0.1", 81), c = v4("10.0.0.2", 80),
                            d = v6("::1", 443);
    assert_string_equal(lb_addr_format(&a, buf, sizeof(buf)), "10.0.0.1:80");
    assert_string_equal(lb_addr_format(&d, buf, sizeof(buf)), "[::1]:443");
    assert_int_equal(lb_addr_len(&a), sizeof(struct sockaddr_in));
    assert_int_equal(lb_addr_len(&d), sizeof(struct sockaddr_in6));
    assert_int_equal(lb_addr_compare(&a, &a), 0);
    assert_true(lb_addr_compare(&a, &b) < 0 && lb_addr_compare(&b, &a) > 0);
    assert_true(lb_addr_compare(&b, &c) < 0); /* the address before the port */
    assert_true(lb_addr_compare(&a, &d) != 0);
    for (int i = 0; i < LB_STATUS_N; i++)
        assert_string_not_equal(lb_status_name((enum lb_status)i), "?");
    assert_string_equal(lb_status_name(LB_STATUS_PROBING), "probing");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin_spread_and_smoothness),
        cmocka_unit_test(test_least_requests_spread_follows_weights),
        cmocka_unit_test(test_p2c_prefers_less_loaded),
        cmocka_unit_test(test_ejection_and_growing_backoff),
        cmocka_unit_test(test_recovery_and_reset),
        cmocka_unit_test(test_inflight_failures_do_not_extend_ejection),
        cmocka_unit_test(test_health_down_and_up),
        cmocka_unit_test(test_panic_picks_least_recently_failed),
        cmocka_unit_test(test_exclude_for_retry),
        cmocka_unit_test(test_take_counts_like_a_pick),
        cmocka_unit_test(test_update_keeps_adds_drains),
        cmocka_unit_test(test_update_is_capped),
        cmocka_unit_test(test_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
