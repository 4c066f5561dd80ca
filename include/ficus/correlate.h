/* Id correlation for shadowed writes (route option shadow.correlate).
 *
 * Two services with separate stores issue their own ids: legacy answers a
 * create with 4, new with "p-4". Once both sides of a shadowed write answered
 * 2xx, the created id is read from each response and the pair remembered, per
 * route and per collection (the path before the id: "/posts", so /posts/4 and
 * /users/4 do not collide; collections are paths in legacy's terms). Later
 * requests shadowed to new have legacy ids replaced by the new ones in their
 * path segments and in the configured JSON body fields, requests of clients on
 * new shadowed to legacy the other way round, and the diff takes a correlated
 * pair as equal.
 *
 * Pure: no libuv, no I/O; time comes from the caller (monotonic
 * milliseconds), so tests inject it. The map is bounded: at most max_entries
 * pairs (least recently used evicted first), each forgotten ttl_ms after its
 * last use, each id at most CORRELATE_ID_MAX bytes and each collection at most
 * CORRELATE_SCOPE_MAX (longer ones are not learnt). A pair costs one allocation
 * of about 112 bytes plus its three texts, and four bucket pointers; the
 * buckets grow with the pairs, not with the bound.
 *
 * Threads: one map per route is shared by the threadpool threads that compare
 * (they learn and match pairs) and by the workers that build shadow requests
 * (they rewrite). Every function taking a struct correlate locks the map's own
 * mutex for its duration; each holds it for one bounded operation (a lookup,
 * an insert with at most a few evictions, one request's lookups; a body is
 * parsed and written outside the lock). */
#ifndef FICUS_CORRELATE_H
#define FICUS_CORRELATE_H

#include "ficus/buf.h"
#include "ficus/diff.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CORRELATE_ID_MAX          128
#define CORRELATE_SCOPE_MAX       256
#define CORRELATE_DEFAULT_ENTRIES 10000
#define CORRELATE_MAX_ENTRIES     1000000 /* the hard limit of max_entries */
#define CORRELATE_DEFAULT_TTL_MS  3600000
#define CORRELATE_MAX_TTL_MS      (7LL * 24 * 3600 * 1000)
#define CORRELATE_MAX_BODY_FIELDS 32
/* Request bodies larger than this are sent to new unchanged. */
#define CORRELATE_MAX_REWRITE_BODY (1024 * 1024)

/* A JSON body field of later requests to rewrite. pointer may hold "*"
 * segments. collection: the collection its ids belong to ("/posts"); NULL:
 * the request path's own collections (longest first), then any collection,
 * the most recently used pair first. Strings are the configuration's. */
struct correlate_field {
    const char *pointer;
    const char *collection;
};

/* shadow.correlate of a route (plain data, owned by the configuration). */
struct correlate_cfg {
    bool enabled;
    const char *id_pointer; /* JSON Pointer of the created id in the response body; NULL: none */
    bool location;          /* also the Location header's last path segment */
    struct correlate_field *body_fields;
    size_t n_body_fields;
    size_t max_entries; /* default CORRELATE_DEFAULT_ENTRIES */
    int64_t ttl_ms;     /* default CORRELATE_DEFAULT_TTL_MS */
};

struct correlate_stats {
    size_t size;
    size_t max_entries;
    int64_t ttl_ms;
    unsigned long long learnt;    /* pairs learnt (a changed pair counts again) */
    unsigned long long rewritten; /* ids rewritten in shadow requests */
    unsigned long long matched;   /* diff items taken as equal for a correlated pair */
    unsigned long long evicted;   /* dropped at the bound, least recently used first */
    unsigned long long expired;   /* dropped ttl_ms after their last use */
};

struct correlate;

/* A map of at most max_entries (1..CORRELATE_MAX_ENTRIES) pairs, each kept
 * ttl_ms (>= 1) after its last use. NULL when out of memory. Free with
 * correlate_free (accepts NULL). */
struct correlate *correlate_new(size_t max_entries, int64_t ttl_ms);
void correlate_free(struct correlate *m);

/* A reload's new bounds; a smaller max_entries evicts at once. Returns 0, or
 * -EINVAL for bounds correlate_new refuses (nothing changed). */
int correlate_configure(struct correlate *m, size_t max_entries, int64_t ttl_ms, int64_t now_ms);

/* Remembers legacy <-> new_ in collection scope (the path before the id in
 * legacy's terms, no trailing "/"; "" for the root), replacing a pair of
 * either id in that collection. *_is_string: the id is a JSON string (a JSON
 * number otherwise) when written into a body. Returns 0, -EINVAL when an id is
 * empty or longer than CORRELATE_ID_MAX or the scope longer than
 * CORRELATE_SCOPE_MAX, or FICUS_ENOMEM. */
int correlate_learn(struct correlate *m, const char *scope, size_t scope_len, const char *legacy,
                    size_t legacy_len, bool legacy_is_string, const char *new_, size_t new_len,
                    bool new_is_string, int64_t now_ms);

/* The new id of a legacy id in scope, or with to_legacy the legacy id of a new
 * id (scope NULL: any collection, the most recently used first), copied
 * NUL-terminated into out (CORRELATE_ID_MAX + 1 bytes); *is_string (may be
 * NULL) its JSON type. Returns its length, or -1 when unknown or expired.
 * Touches the pair. */
int correlate_lookup(struct correlate *m, bool to_legacy, const char *scope, size_t scope_len,
                     const char *id, size_t id_len, int64_t now_ms, char *out, bool *is_string);

/* Is legacy -> new_ a remembered pair in any collection? */
bool correlate_is_pair(struct correlate *m, const char *legacy, size_t legacy_len, const char *new_,
                       size_t new_len, int64_t now_ms);

/* A copy of the counters, expired pairs dropped first. */
void correlate_stats(struct correlate *m, int64_t now_ms, struct correlate_stats *out);

/* ---- the glue shadow.c calls -------------------------------------------------------- */

/* After a shadowed write: when method is not GET/HEAD/OPTIONS and both
 * responses are 2xx, reads the created id from each (cfg->id_pointer in a JSON
 * body that is not gzip-encoded, else the Location header when cfg->location)
 * and learns the pair in the collection: the Location's path before the id,
 * else the request path (without query; target is in legacy's terms), less
 * its last segment when that segment is the legacy id itself. Returns 1 when a pair was learnt, 0
 * when there was none to learn, or a negative error. */
int correlate_observe(struct correlate *m, const struct correlate_cfg *cfg, const char *method,
                      const char *target, size_t target_len, const struct diff_response *legacy,
                      const struct diff_response *new_, int64_t now_ms);

/* The request target of a raw head ("METHOD SP target SP ..."), not
 * NUL-terminated: false when there is none. For correlate_observe's target in
 * legacy's terms when the client (on new) sent new's ids: the target of the
 * request rewritten for legacy. */
bool correlate_head_target(const char *head, size_t head_len, const char **target, size_t *len);

/* Rewrites a request about to be shadowed to new (legacy ids become new's), or
 * with to_legacy to legacy (new ids become legacy's: a client routed to new
 * carries new's ids): the path segments whose (collection, id) is known, and
 * the values at cfg->body_fields of a JSON body (re-serialised compactly
 * then, and the head's Content-Length set to the new length unless chunked).
 * head is the complete raw head ("...\r\n\r\n").
 * Returns the number of ids rewritten; when > 0, out_head holds the new head
 * and, if the body changed, out_body the new body (*body_changed set). Both
 * outputs are the caller's (initialised bufs; emptied first). 0: nothing to
 * change, outputs untouched. Negative: an error, send the request unchanged. */
int correlate_rewrite(struct correlate *m, const struct correlate_cfg *cfg, bool to_legacy,
                      const char *head, size_t head_len, const char *body, size_t body_len,
                      bool chunked, int64_t now_ms, struct buf *out_head, struct buf *out_body,
                      bool *body_changed);

/* Is a diff item only a correlated pair: a JSON value (number or string) on
 * legacy whose pair is the value on new, or a Location / Content-Location
 * header whose path segments differ only by correlated pairs? Counted as
 * matched when true. */
bool correlate_item_equal(struct correlate *m, const struct diff_item *it, int64_t now_ms);

/* What correlate_diff_equal needs: the map and the time of the comparison. */
struct correlate_diff_ctx {
    struct correlate *m;
    int64_t now_ms;
};

/* correlate_item_equal in the shape of diff_rules.equal_hook (ctx: a struct
 * correlate_diff_ctx): set it on a copy of the route's rules, and correlated
 * pairs never become diff items, so they neither fill DIFF_MAX_ITEMS nor keep
 * the items of an unordered or match_by array from pairing. */
bool correlate_diff_equal(void *ctx, int kind, const char *path, const struct jv *legacy,
                          const struct jv *new_);

#endif
