/* Per-endpoint readiness in the comparison path: the glue between a route's
 * comparisons and its endpoint table (endpoint.h), noise statistics (noise.h)
 * and acknowledged differences (the snapshot state.h publishes).
 *
 * Everything of one route lives in its route_state under rs->noise_lock: the
 * endpoint table (made at the first comparison, made again when a reload
 * changes what it is built from, kept with its statistics otherwise) and the
 * noise statistics. The threadpool takes the lock once per comparison
 * (readiness_compare), a worker for a moment when it decides on a noise twin
 * (readiness_wants_twin), the control thread for its reads. */
#ifndef FICUS_READINESS_H
#define FICUS_READINESS_H

#include "ficus/buf.h"
#include "ficus/config.h"
#include "ficus/diff.h"
#include "ficus/endpoint.h"
#include "ficus/http1.h"
#include "ficus/redact.h"
#include "ficus/state.h"

#include <jansson.h>
#include <stdbool.h>

/* The two sides of one comparison as they ended. */
struct readiness_sides {
    int legacy_status, new_status;        /* 0 when the side failed */
    const char *legacy_error, *new_error; /* NULL, or why the side failed */
    double legacy_ms, new_ms;
};

/* What readiness_compare decided about one comparison. */
struct readiness_result {
    char endpoint[ENDPOINT_NAME_MAX + 1]; /* "GET /posts/{id}", "other" */
    bool noise[DIFF_MAX_ITEMS];           /* item i of the diff is noise in its endpoint */
    bool acked[DIFF_MAX_ITEMS];           /* item i is acknowledged (and not noise) */
    bool counted;                         /* some item is neither noise nor acknowledged */
    bool warming;                         /* its endpoint was warming up: the guard waits */
    size_t n_noise, n_acked;
};

/* Attributes one comparison (method and target as received; res its diff;
 * twin NULL, or legacy against legacy again) to an endpoint of rt, learns
 * noise from the twin within that endpoint, classes each item of res as noise,
 * acknowledged or counted, and records the sample. Threadpool; takes
 * rs->noise_lock. */
void readiness_compare(struct route_state *rs, const struct route_cfg *rt, const char *method,
                       const char *target, const struct diff_result *res,
                       const struct diff_result *twin, const struct readiness_sides *sides,
                       struct readiness_result *out);

/* Is the endpoint this request would go to still warming up, so that its
 * safe requests all get a noise twin? False when rt learns no noise or has no
 * warm-up. Worker; takes rs->noise_lock. */
bool readiness_wants_twin(struct route_state *rs, const struct route_cfg *rt, struct span method,
                          struct span target);

/* The verdict thresholds of rt: its guard's settings (the defaults without a guard). */
void readiness_limits(const struct route_cfg *rt, struct endpoint_limits *out);

/* The body of GET /api/v1/routes/{name}/endpoints: {"route", "window_ms",
 * "max_endpoints", "limits", "endpoints": [...], "learner"}. NULL when out of
 * memory. Control thread. */
json_t *readiness_endpoints_json(const struct route_cfg *rt);

/* Appends ficus_endpoint_comparisons_total and ficus_endpoint_divergences_total
 * of every route (at most max_endpoints + 1 series per route each). Control
 * thread. */
void readiness_render_metrics(struct state_table *t, struct buf *out);

/* ---- what a record shows ----------------------------------------------------- */

/* Adds the values of the request's redacted headers (config_is_redacted) in
 * head, a raw request head, to secrets; scratch is parsing space. A head that
 * does not parse overflows secrets (no body text is shown then). */
void readiness_secrets(struct redact_secrets *secrets, const struct config *cfg, const char *head,
                       size_t len, struct http_head *scratch);

/* Appends one diff item, {"kind","path","legacy","new"} and "acknowledged":true
 * when acked: values as sent, redacted by r (a redacted header's values are
 * "[redacted]" on both sides, an absent side null). Returns 0, -EINVAL (text
 * that is not UTF-8) or a buf error. */
int readiness_item_json(struct buf *out, const struct config *cfg, const struct redact *r,
                        const struct diff_item *it, bool acked);

/* Does the response head h say its body is JSON (application/json, +json)? */
bool readiness_is_json(const struct http_head *h);

#endif
