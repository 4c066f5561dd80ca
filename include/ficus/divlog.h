/* Divergence records: workers hand finished comparisons to the control thread
 * through a bounded queue (a full queue drops and counts, never blocks); the
 * control thread writes divergent ones as NDJSON with size-based rotation,
 * keeps a ring of recent records and per-path statistics for the admin API. */
#ifndef FICUS_DIVLOG_H
#define FICUS_DIVLOG_H

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#define DIVLOG_QUEUE_MAX  4096
#define DIVLOG_RECENT_MAX 1000

struct server;
struct divlog;

/* Starts the log on the control loop with the configuration's divergence_log
 * settings. Returns NULL when out of memory; a file that cannot be opened is
 * logged and records then stay in memory only. */
struct divlog *divlog_new(struct server *srv, uv_loop_t *loop);
/* Writes what is queued, closes the file and frees. Accepts NULL. */
void divlog_free(struct divlog *d);

/* Hands one comparison to the control thread; any thread. Takes ownership of
 * rec, a record as SPEC shows it plus "divergent": bool (written to the file
 * and the ring only when true; always counted in the path statistics). */
void divlog_push(struct divlog *d, json_t *rec);
/* Hands n records over at once (one lock, one wake-up of the control thread);
 * takes ownership of every recs[i], not of the array. Those that do not fit in
 * the queue are dropped and counted. */
void divlog_push_many(struct divlog *d, json_t **recs, size_t n);

/* Reopens the file (SIGUSR1, logrotate). */
void divlog_reopen(struct divlog *d);

/* Records dropped because the queue was full. */
unsigned long long divlog_dropped(const struct divlog *d);

/* {"divergences": [...]} newest first; route NULL for all. */
json_t *divlog_recent(struct divlog *d, const char *route, int limit);
/* {"paths": [{route, path, kind, count, rate, noise, example_id}]}, most frequent first. */
json_t *divlog_summary(struct divlog *d, const char *route);

#endif
