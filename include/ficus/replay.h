/* Replay: divergence records carry the request that diverged (the "request"
 * member), and `ficus replay` sends it again to both backends of its route,
 * compares the answers under the route's current rules and says, per
 * endpoint, what still diverges.
 *
 * This header has two halves. The pure half (src/replay.c: no libuv, any
 * thread, unit-tested and fuzzed) writes the request member, reads records
 * back, filters them, compares a replayed pair and counts the outcomes per
 * endpoint. The command (src/replay_cmd.c) reads the inputs, sends the
 * requests with the one HTTP client (upstream.h, upclient.h) on a libuv loop
 * and prints the summary. */
#ifndef FICUS_REPLAY_H
#define FICUS_REPLAY_H

#include "ficus/buf.h"
#include "ficus/diff.h"
#include "ficus/endpoint.h"
#include "ficus/jdoc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;

/* The version of the request member ("request":{"v":1,...}). A record whose
 * request carries another version is refused as foreign, never guessed at. */
#define REPLAY_VERSION 1
/* divergence_log.request_body_bytes: default and largest value. */
#define REPLAY_BODY_BYTES_DEFAULT (64 * 1024)
#define REPLAY_BODY_BYTES_LIMIT   (16 * 1024 * 1024)
/* What a redacted header's value is replaced by in a record. */
#define REPLAY_REDACTED "[redacted]"
/* A record line longer than this is refused (the request body is capped at
 * REPLAY_BODY_BYTES_LIMIT, base64 grows it by a third, and the rest of a
 * record is small). */
#define REPLAY_LINE_MAX (32 * 1024 * 1024)
/* Headers of one recorded request that are kept (a head has at most
 * HTTP_MAX_HEADERS). */
#define REPLAY_HEADERS_MAX 128
/* Endpoints the summary counts apart; more go to "other". */
#define REPLAY_ENDPOINTS_MAX 10000
/* Differences a replay verdict keeps for its report. */
#define REPLAY_VERDICT_ITEMS 8

/* ---- writing the request member (shadow.c) -------------------------------- */

/* Appends "request":{...} (no leading comma) for the request whose head, as
 * sent to the shadow, is head[0, head_len) and whose decoded body is
 * body[0, body_len): the method, the target, the headers in order without
 * the hop-by-hop and framing ones and without x-ficus-shadow, every header
 * cfg redacts with the value REPLAY_REDACTED, and the body up to
 * cfg->divlog_request_body_bytes, as text when it is UTF-8, else base64
 * ("body_encoding":"base64"); "body_bytes" is the whole body's length and
 * "body_truncated":true says the cap cut it. A body holding what the record
 * must not show (values at divergence_log.redact_json pointers, the value of
 * one of the request's redacted headers) is kept as redact_excerpt writes it,
 * with "body_redacted":true. Pure. Returns 0, FICUS_EBADREQ
 * when the head does not parse (nothing appended), or a buf error. */
int replay_request_json(struct buf *out, const struct config *cfg, const char *head,
                        size_t head_len, const char *body, size_t body_len);

/* ---- reading records ----------------------------------------------------- */

struct replay_header {
    const char *name; /* NUL-terminated, as recorded */
    const char *value;
    size_t value_len;
    bool redacted; /* the value is REPLAY_REDACTED */
};

/* One record as replay needs it. Every pointer lives in the record's arena. */
struct replay_record {
    const char *id;
    const char *ts;
    int64_t ts_ms; /* INT64_MIN when ts does not parse */
    const char *route;
    const char *endpoint; /* the record's "endpoint" member, or NULL */
    const char *method;
    const char *target;
    struct replay_header *headers;
    size_t n_headers;
    const char *body;
    size_t body_len;
    bool body_truncated; /* the record holds a prefix: not replayable as it is */
    bool body_redacted;  /* values were hidden in it: not replayable as it is */
    unsigned kinds;      /* bit (1u << enum diff_kind) per kind among the record's diffs */
    const char **noise;  /* the record's noise paths */
    size_t n_noise;
    struct arena arena;
};

/* What replay_record_parse found wrong. */
enum replay_parse_status {
    REPLAY_PARSED = 0,
    REPLAY_INVALID = -1, /* not JSON: a truncated or corrupt line */
    REPLAY_FOREIGN = -2, /* JSON, but not a record this version can replay */
};

void replay_record_init(struct replay_record *r);
/* Frees what the record holds and leaves it initialised. */
void replay_record_dispose(struct replay_record *r);

/* Reads one NDJSON line (without its newline) into r (initialised; reset
 * first). Returns REPLAY_PARSED, or REPLAY_INVALID / REPLAY_FOREIGN with the
 * reason in why (NUL-terminated, at most why_size bytes). */
int replay_record_parse(struct replay_record *r, const char *line, size_t len, char *why,
                        size_t why_size);
/* The same for a record already parsed as JSON (an item of the admin API's
 * answer); v must outlive r's use. */
int replay_record_from_jv(struct replay_record *r, const struct jv *v, char *why, size_t why_size);

/* RFC 3339 date-time ("2026-11-22T10:00:00.123Z", "...+01:00") to unix ms.
 * Returns 0, or -EINVAL. */
int replay_parse_time(const char *s, int64_t *ms);

/* The endpoint name of a request without one: the method, a space and the
 * path (query cut off) with every segment that looks like an identifier
 * (digits, a UUID, 16 or more hex digits) written "{id}", at most size bytes. */
void replay_endpoint_name(const char *method, const char *target, char *out, size_t size);

/* ---- filters --------------------------------------------------------------- */

/* Which records are replayed. Lists empty: any. kinds 0: any. The strings
 * are the caller's. */
struct replay_filter {
    const char **routes;
    size_t n_routes;
    const char **endpoints;
    size_t n_endpoints;
    const char **ids;
    size_t n_ids;
    unsigned kinds;             /* a record matches when it has a diff of one of them */
    int64_t since_ms, until_ms; /* INT64_MIN / INT64_MAX: open */
};

void replay_filter_init(struct replay_filter *f);
/* Does r (whose endpoint is named endpoint) pass every filter? A time filter
 * refuses a record whose ts does not parse. */
bool replay_filter_match(const struct replay_filter *f, const struct replay_record *r,
                         const char *endpoint);

/* ---- comparing again ------------------------------------------------------- */

enum replay_outcome {
    REPLAY_EQUAL,     /* the two answers agree now */
    REPLAY_DIVERGING, /* they still differ */
    REPLAY_ERROR,     /* could not tell: a side failed, the record was unusable */
    REPLAY_SKIPPED,   /* not sent: a write without --allow-writes */
    REPLAY_OUTCOME_N
};

/* "equal", "diverging", "error", "skipped". */
const char *replay_outcome_name(enum replay_outcome o);

/* The verdict on one replayed pair. */
struct replay_verdict {
    enum replay_outcome outcome;
    size_t n_diffs; /* counted differences (not noise, not acknowledged) */
    size_t n_noise, n_acked;
    struct {
        enum diff_kind kind;
        char path[128];
    } items[REPLAY_VERDICT_ITEMS]; /* the first counted differences */
    size_t n_items;
    bool truncated; /* the diff stopped at DIFF_MAX_ITEMS */
};

/* Compares legacy and new under rules; a difference at a path of noise
 * (patterns as diff.ignore writes them) or covered by one of the acks (for
 * endpoint) is not counted. A side with an error makes the verdict
 * REPLAY_ERROR. Pure. Returns 0 or FICUS_ENOMEM. */
int replay_compare(const struct diff_rules *rules, const struct diff_response *legacy,
                   const struct diff_response *new_, const char *const *noise, size_t n_noise,
                   const struct endpoint_ack *acks, size_t n_acks, const char *endpoint,
                   struct replay_verdict *out);

/* ---- the summary --------------------------------------------------------- */

struct replay_summary;

/* NULL when out of memory. Free with replay_summary_free (accepts NULL). */
struct replay_summary *replay_summary_new(void);
void replay_summary_free(struct replay_summary *s);
/* Counts one outcome for (route, endpoint); past REPLAY_ENDPOINTS_MAX
 * distinct pairs the rest count as endpoint "other". Returns 0 or
 * FICUS_ENOMEM. */
int replay_summary_add(struct replay_summary *s, const char *route, const char *endpoint,
                       enum replay_outcome o);
/* Appends the table: one line per (route, endpoint), sorted, with the counts
 * of each outcome and a verdict word ("diverging" when any still diverges,
 * else "error" when any failed, else "equal", or "skipped"), then a total
 * line. Returns 0 or a buf error. */
int replay_summary_write(const struct replay_summary *s, struct buf *out);
/* Totals of one outcome. */
size_t replay_summary_count(const struct replay_summary *s, enum replay_outcome o);
/* 0 when nothing diverges and nothing failed, else 1 (skipped writes do not
 * fail a run: they are reported). */
int replay_summary_exit_code(const struct replay_summary *s);

/* ---- the command ----------------------------------------------------------- */

/* `ficus replay ARGS...` (argv[0] is the first argument after "replay").
 * Returns the process's exit code: 0 all equal, 1 something diverges or
 * failed, 2 bad usage. */
int replay_main(int argc, char **argv);

#endif
