/* Divergence records: workers hand finished comparisons to the control thread
 * through a bounded queue (a full queue drops and counts, never blocks); the
 * control thread writes divergent ones as NDJSON with size-based rotation,
 * keeps a ring of recent records and per-path statistics for the admin API. */
#ifndef FICUS_DIVLOG_H
#define FICUS_DIVLOG_H

#include "ficus/buf.h"
#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#define DIVLOG_QUEUE_MAX  4096
#define DIVLOG_RECENT_MAX 1000
/* Significant digits of reals in records (jansson's JSON_REAL_PRECISION). */
#define DIVLOG_REAL_PRECISION 10

struct server;
struct divlog;

/* Starts the log on the control loop with the configuration's divergence_log
 * settings. Returns NULL when out of memory; a file that cannot be opened is
 * logged and records then stay in memory only. */
struct divlog *divlog_new(struct server *srv, uv_loop_t *loop);
/* Writes what is queued, closes the file and frees. Accepts NULL. */
void divlog_free(struct divlog *d);

/* One comparison's outcome for the control thread, in one allocation: the
 * record's NDJSON line (written and kept when divergent) and the (kind, path)
 * pairs that the per-path statistics count. Workers build it off the control
 * thread (divrec_new); whoever holds it last frees it with free(). */
struct divrec {
    bool divergent;
    char id[64];
    const char *route; /* NUL-terminated, in the same allocation */
    const char *line;  /* the record, SPEC's format, no newline, NUL-terminated */
    size_t line_len;
    const char *stats; /* n_stats entries: one kind byte, the path, a NUL */
    size_t n_stats;
};

/* The kind byte of a noise path in divrec.stats; other values are enum diff_kind,
 * with DIVREC_ACK set for an acknowledged item. */
#define DIVREC_NOISE 0xff
#define DIVREC_ACK   0x40

/* Appends one statistics entry (kind: enum diff_kind or DIVREC_NOISE) to stats,
 * the buffer later given to divrec_new. Returns 0 or a buf error. */
int divrec_add_stat(struct buf *stats, int kind, const char *path);

/* Copies route, id, the line and the statistics entries into a new record.
 * Returns NULL when out of memory. Pure: any thread. */
struct divrec *divrec_new(const char *route, const char *id, bool divergent, const struct buf *line,
                          const struct buf *stats, size_t n_stats);

/* Hands n records to the control thread at once (one lock, one wake-up); any
 * thread. Takes ownership of every recs[i], not of the array. Records that do
 * not fit in the queue are dropped and counted, never waited for. */
void divlog_push_many(struct divlog *d, struct divrec **recs, size_t n);

/* Reopens the file (SIGUSR1, logrotate). */
void divlog_reopen(struct divlog *d);

/* Counts n records that could not be made (out of memory) as dropped; any thread. */
void divlog_lost(struct divlog *d, size_t n);

/* Records dropped because the queue was full or memory ran out; any thread. */
unsigned long long divlog_dropped(const struct divlog *d);

/* Logs the records dropped since the last call, if any: called once a second
 * by the control thread, so a flood of drops is one line a second. */
void divlog_tick(struct divlog *d);

/* Appends {"divergences": [...]}, newest first (route NULL for all), each
 * record exactly as written to the log: numbers keep every digit the backends
 * sent. Returns 0 or a buf error. Control thread. */
int divlog_recent_write(struct divlog *d, const char *route, int limit, struct buf *out);
/* The same as a jansson tree, re-read from the lines: LOSSY (jansson keeps 64-bit
 * integers and doubles, and drops a record holding a bigger number). Kept only
 * until the admin API serves divlog_recent_write's text; then remove it. */
json_t *divlog_recent(struct divlog *d, const char *route, int limit);
/* {"paths": [{route, path, kind, count, rate, noise, example_id}]}, most frequent first.
 * A path counts at most once per record (comparison), so count <= comparisons
 * and rate (count and noise_count over the route's comparisons) <= 1. */
json_t *divlog_summary(struct divlog *d, const char *route);

#endif
