/* Endpoints: every comparison of a route is attributed to an endpoint, a
 * method and a path template ("GET /posts/{id}"), and each endpoint keeps
 * windowed statistics that answer "is this endpoint ready to move?".
 *
 * Templates come from the route's `endpoints` list (first match wins), else
 * they are learnt: a path segment that looks like an identifier (digits, a
 * UUID, 16+ hex digits, a 16+ character token mixing letters and digits, or
 * anything longer than ENDPOINT_SEGMENT_MAX) becomes "{id}" at once, and a
 * position whose distinct values keep growing collapses into "{id}" too: more
 * than ENDPOINT_COLLAPSE_MAX values, or at least ENDPOINT_COLLAPSE_MIN of
 * which three in four were seen at most twice while the position had four
 * requests per value (new values keep coming among busy ones; a young
 * position with as many values as requests may still be a fixed set of
 * names, so it waits for more). A collapse is final and folds the
 * endpoints below it (and their statistics) into the template, except values
 * already carrying real traffic (ENDPOINT_KEEP_HITS), which stay literal: a
 * scanner probing random top-level paths must not merge /posts with /users.
 * So names only ever go from literal to template, never back: once
 * "GET /posts/{id}" exists every later /posts/N maps to it.
 *
 * Everything is bounded: max_endpoints endpoints per route (the configured
 * ones included) plus "other", which takes what does not fit; the learner
 * keeps at most ENDPOINT_NODES_PER_ENDPOINT * max_endpoints path nodes, and
 * per endpoint ENDPOINT_TOP_PATHS diff paths and ENDPOINT_STATUS_PAIRS status
 * pairs (the rest counted as "other").
 *
 * Statistics cover a sliding window (the route's guard window) as a ring of
 * ENDPOINT_WINDOW_BUCKETS buckets; time is passed in by the caller, so the
 * module is pure and testable. Each comparison counts once, and each diff path
 * and kind at most once per comparison, so every rate is a share of
 * comparisons (0 to 1, never above).
 *
 * Pure, no locks: the caller serialises every call on one table (the route's
 * mutex, taken on the threadpool for updates and on the control thread for
 * reads). Not thread-safe on its own. */
#ifndef FICUS_ENDPOINT_H
#define FICUS_ENDPOINT_H

#include "ficus/diff.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENDPOINT_MAX_DEFAULT        100   /* route max_endpoints */
#define ENDPOINT_MAX_LIMIT          10000 /* the largest max_endpoints a config may ask */
#define ENDPOINT_WARMUP_DEFAULT     20    /* diff.noise.warmup */
#define ENDPOINT_OTHER              "other"
#define ENDPOINT_NAME_MAX           640 /* a method, a space and a template of at most this */
#define ENDPOINT_MAX_DEPTH          16  /* path segments; a deeper path goes to "other" */
#define ENDPOINT_SEGMENT_MAX        48  /* a longer segment is taken as an identifier */
#define ENDPOINT_COLLAPSE_MAX       32  /* distinct values at one position before it collapses */
#define ENDPOINT_COLLAPSE_MIN       12  /* ... or this many, when mostly seen once or twice */
#define ENDPOINT_KEEP_HITS          16  /* a value with this much traffic stays literal */
#define ENDPOINT_NODES_PER_ENDPOINT 8
#define ENDPOINT_WINDOW_BUCKETS     6
#define ENDPOINT_TOP_PATHS          16
#define ENDPOINT_PATH_MAX           256 /* a longer normalised diff path is counted as "other" */
#define ENDPOINT_STATUS_PAIRS       8
#define ENDPOINT_LATENCY_BUCKETS                                                                   \
    15 /* the route histogram's 14 bounds, 0.5 ms to 10 s, then +Inf                               \
        */

/* The id endpoint_find returns for a path that has no endpoint yet. */
#define ENDPOINT_NEW (-1)

/* What a table is built from. The strings are copied. */
struct endpoint_config {
    const char *const *templates; /* "GET /posts/{id}", each accepted by
                                     endpoint_template_problem */
    size_t n_templates;
    int max_endpoints; /* 1..ENDPOINT_MAX_LIMIT, at least n_templates */
    int64_t window_ms; /* > 0: the route's guard window_ms */
    unsigned warmup;   /* comparisons an endpoint warms up for (0: none) */
};

/* Thresholds of the readiness verdict: the route's guard settings (or the
 * guard's defaults when the route has no guard). Read at verdict time, so a
 * reload that changes them needs no new table. */
struct endpoint_limits {
    unsigned min_comparisons;
    double max_divergence_rate;
    double max_error_rate;
};

struct endpoint_table;

/* NULL when text is a valid template ("METHOD /path", the method upper-case
 * letters, segments either literal or "{name}" as a whole), else the reason. */
const char *endpoint_template_problem(const char *text);

/* A new table (owns copies of everything in cfg), or NULL when out of memory
 * or cfg is invalid. Free with endpoint_table_free (accepts NULL). */
struct endpoint_table *endpoint_table_new(const struct endpoint_config *cfg);
void endpoint_table_free(struct endpoint_table *t);

/* Was t built from a configuration equal to cfg? When a reload changes none of
 * it, the table (and its statistics) can be kept. */
bool endpoint_table_matches(const struct endpoint_table *t, const struct endpoint_config *cfg);

/* The endpoint of one request (method, and its target as received: origin
 * form, absolute form or "*"; a query or fragment is cut off). Learns from
 * it: call once per comparison. Returns an id >= 0, valid until the next call
 * of endpoint_classify on t (a collapse may merge endpoints). */
int endpoint_classify(struct endpoint_table *t, const char *method, size_t method_len,
                      const char *target, size_t target_len);

/* The endpoint the request would be attributed to now, without learning:
 * an id, or ENDPOINT_NEW when it would be a new endpoint. */
int endpoint_find(const struct endpoint_table *t, const char *method, size_t method_len,
                  const char *target, size_t target_len);

/* "GET /posts/{id}" or "other"; NULL for an id that is not an endpoint. Valid
 * until the next endpoint_classify. */
const char *endpoint_name(const struct endpoint_table *t, int id);

/* Is the endpoint still warming up: fewer than cfg.warmup comparisons so far
 * (ENDPOINT_NEW always is, when warmup > 0)? The caller sends noise twins for
 * a warming-up endpoint's shadowed safe requests, so that noise is learnt
 * before its differences count. */
bool endpoint_warming_up(const struct endpoint_table *t, int id);

/* One diff item of a comparison as the statistics see it. noise: the caller's
 * noise statistics call the path noise. */
struct endpoint_item {
    enum diff_kind kind;
    const char *path; /* as in the diff item; normalised here */
    bool noise;
};

/* One comparison. */
struct endpoint_sample {
    int legacy_status, new_status;        /* 0 when the side failed */
    const char *legacy_error, *new_error; /* NULL, or why the side failed */
    double legacy_ms, new_ms;             /* response times; < 0: unknown */
    const struct endpoint_item *items;
    size_t n_items;
};

/* An acknowledged difference: expected, shown apart, not counted against
 * readiness. path is a JSON Pointer pattern ("*" matches any one segment, as in
 * diff.ignore; for header items the header name, "status", or the failed side
 * for errors; a body difference is covered by any acknowledgement of kind
 * "body", or of path "body" or ""); kind NULL or "" matches any kind, endpoint
 * NULL or "" any endpoint. The strings belong to the caller. */
struct endpoint_ack {
    const char *path;
    const char *kind;
    const char *endpoint;
    const char *note;
};

/* Does ack cover an item of kind (diff_kind_name) at path on endpoint? */
bool endpoint_ack_matches(const struct endpoint_ack *ack, const char *endpoint, const char *kind,
                          const char *path);

/* Counts one comparison on endpoint id at now_ms: each item is counted once
 * (per normalised path and kind) as noise, acknowledged (some ack matches) or
 * counted. An id that is not an endpoint counts on "other". A comparison of
 * an endpoint warming up only counts towards its warm-up: its differences
 * were judged before its noise was learnt, so it stays out of the window. */
void endpoint_record(struct endpoint_table *t, int id, const struct endpoint_sample *s,
                     const struct endpoint_ack *acks, size_t n_acks, int64_t now_ms);

enum endpoint_readiness {
    ENDPOINT_NOT_ENOUGH_DATA,
    ENDPOINT_READY,
    ENDPOINT_DIVERGING,
};

/* "not enough data", "ready", "diverging". */
const char *endpoint_readiness_name(enum endpoint_readiness r);

struct endpoint_verdict {
    enum endpoint_readiness readiness;
    char reason[200]; /* the top reason for diverging, what is missing for not enough data */
    unsigned long long comparisons, divergent, new_errors; /* in the window */
};

/* The verdict of endpoint id at now_ms: not enough data while warming up or
 * with fewer than lim->min_comparisons comparisons in the window; diverging
 * when the share of comparisons with a counted difference (neither noise nor
 * acknowledged) is above lim->max_divergence_rate, or the share where the new
 * side failed (error or 5xx) and legacy did not is above lim->max_error_rate;
 * ready otherwise. */
void endpoint_verdict(const struct endpoint_table *t, int id, const struct endpoint_limits *lim,
                      int64_t now_ms, struct endpoint_verdict *out);

/* {"window_ms", "max_endpoints", "endpoints": [...], "learner": {...}}: every
 * endpoint with its window statistics and verdict, most compared first (the
 * body of GET /api/v1/routes/{name}/endpoints, without the route). NULL when
 * out of memory. The caller owns the reference. */
json_t *endpoint_table_json(const struct endpoint_table *t, const struct endpoint_limits *lim,
                            int64_t now_ms);

/* Calls fn for every endpoint ("other" included) with its totals since the
 * table was made: ficus_endpoint_comparisons_total and
 * ficus_endpoint_divergences_total (comparisons with a counted difference). At
 * most max_endpoints + 1 calls. */
void endpoint_table_each(const struct endpoint_table *t,
                         void (*fn)(const char *endpoint, unsigned long long comparisons,
                                    unsigned long long divergent, void *arg),
                         void *arg);

#endif
