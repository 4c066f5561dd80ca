/* The parallel run. A comparison sends the client's request to the other
 * backend (and, for a noise sample, a second time to legacy) on connections of
 * its own, captures every response up to a cap, and once all are in, diffs
 * them on the libuv threadpool and hands the record to the control thread.
 * The client's exchange only feeds it copies: it never waits for it. */
#ifndef FICUS_SHADOW_H
#define FICUS_SHADOW_H

#include "ficus/config.h"
#include "ficus/http1.h"
#include <stdbool.h>
#include <stdint.h>

struct worker;
struct pool_set;
struct comparison;

/* Comparisons a worker may have begun and not yet compared at once (in flight
 * or queued for the threadpool): a shadow is sent only with one of these slots
 * free, so none is sent and then dropped for a full queue. */
#define SHADOW_MAX_JOBS 512
/* Finished comparisons a worker keeps for reuse, and the largest buffer one
 * keeps (a larger one is freed). */
#define SHADOW_KEEP_FREE  32
#define SHADOW_KEEP_BYTES (16 * 1024)

/* Starts a comparison for a request that router_decide chose to shadow, or
 * counts why it cannot (in-flight cap, body too large, no diff job slot, no
 * room in limits.shadow_memory_bytes for what a comparison holds on average)
 * and returns NULL: a skip is decided before anything is sent or kept. head is the request head to
 * send (x-ficus-shadow added), taken over on success and freed otherwise. body_known says the
 * request has no body or it is complete; otherwise feed it with shadow_request_body and end it with
 * shadow_request_done. The caller holds the returned reference. */
struct comparison *shadow_begin(struct worker *w, struct config *cfg, struct pool_set *ps,
                                const struct route_cfg *rt, const struct http_head *req,
                                bool primary_is_new, const char *reqid, struct buf *head,
                                bool body_known, int64_t content_length);

/* Copies request body bytes for the shadow (decoded; the shadow re-frames). */
void shadow_request_body(struct comparison *c, const char *p, size_t n);
/* The request body is complete: the shadow goes out now. */
void shadow_request_done(struct comparison *c);

/* The primary's response: its raw head, its decoded body, its end. */
void shadow_primary_head(struct comparison *c, const char *head, size_t len);
void shadow_primary_body(struct comparison *c, const char *p, size_t n);
void shadow_primary_done(struct comparison *c, int64_t bytes);
/* The primary failed ("timeout", "reset", "connect_error", "invalid_response"),
 * or, with NULL, the client went away and nothing is compared. */
void shadow_primary_failed(struct comparison *c, const char *error);

/* Drops the caller's reference. Accepts NULL. */
void shadow_release(struct comparison *c);

/* Ends every comparison of the worker now (shutdown). */
void shadow_abort_all(struct worker *w);

/* Is method one of the route's shadow methods? */
bool shadow_method_allowed(const struct route_cfg *rt, struct span method);

#endif
