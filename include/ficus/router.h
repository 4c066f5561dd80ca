/* Routing: which route a request takes, its sticky bucket, and whether it goes
 * to legacy or new and is shadowed. Pure: no libuv, no globals. */
#ifndef FICUS_ROUTER_H
#define FICUS_ROUTER_H

#include "ficus/config.h"
#include "ficus/http1.h"
#include <stdbool.h>
#include <stdint.h>

#define ROUTER_BUCKETS 10000

/* MurmurHash3 x86 32-bit. */
uint32_t router_murmur3(const void *data, size_t len, uint32_t seed);

/* The bucket (0..9999) of key in route name: murmur3 (seed 0) of
 * name + ":" + key, modulo ROUTER_BUCKETS. */
uint32_t router_bucket(const char *route_name, struct span key);

/* Is the request matched by m? host compares case-insensitively with the port
 * ignored; path_prefix is segment-aware ("/api" matches "/api", "/api/x" and
 * "/api?q", not "/apix"); methods exact; header values exact, names any case. */
bool router_match_one(const struct route_match *m, const struct http_head *req);

/* The index of the first route of cfg that matches, or -1. */
int router_match(const struct config *cfg, const struct http_head *req);

/* The value of cookie name in a Cookie header value ("a=1; b=2"), tolerant of
 * malformed pairs (skipped) and quoted values (quotes removed). */
bool router_cookie_get(struct span cookie_header, const char *name, struct span *out);

/* The raw (not percent-decoded) value of parameter name in a query string
 * ("a=1&b=2"); a parameter without '=' has an empty value. */
bool router_query_get(struct span query, const char *name, struct span *out);

/* The request's sticky key per the route's sticky setting; client_ip is the
 * connection's peer address as text. Returns false when the key is absent. */
bool router_key(const struct route_cfg *rt, const struct http_head *req, struct span client_ip,
                struct span *key);

enum split_target { SPLIT_LEGACY = 0, SPLIT_NEW = 1 };

struct split_decision {
    int status; /* 0, or 400 for an invalid override header value */
    enum split_target primary;
    bool shadow;     /* also send to the other backend */
    bool overridden; /* the override header chose the primary */
    uint32_t bucket;
};

/* Decides primary and shadow for a request on route rt with the live
 * percentages. random supplies the bucket of a keyless request (random %
 * 10000) and the shadow sample (a different part of it). Shadow needs
 * rt->shadow, an allowed method and the sample below shadow_percent. */
struct split_decision router_decide(const struct route_cfg *rt, double new_percent,
                                    double shadow_percent, const struct http_head *req,
                                    struct span client_ip, uint64_t random);

#endif
