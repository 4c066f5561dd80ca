/* Counters of each backend server address, per worker: what a worker's pools
 * did with every (backend, address) pair, written by that worker alone with
 * relaxed atomic stores and read by the control thread for metrics, the admin
 * API and readiness. An entry is made the first time a worker's pools take
 * the address and lives as long as the worker, so counters never go back
 * across reloads and address changes; the status says whether the worker
 * still uses it. No lock anywhere: an entry is filled before the count that
 * publishes it is stored (release), and the reader loads the count first
 * (acquire).
 *
 * Pure: no libuv. The labels are the backend's name and the address as
 * lb_addr_format writes it ("10.0.0.1:8080", "[::1]:80"). */
#ifndef FICUS_UPSTATS_H
#define FICUS_UPSTATS_H

#include "ficus/lb.h"
#include "ficus/state.h"
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Entries per worker: (backend, address) pairs seen since the start. A DNS
 * name whose addresses keep changing could grow the table for ever; beyond
 * this, new addresses are balanced as usual but not counted (upstats_dropped). */
#define UPSTATS_MAX        1024
#define UPSTATS_BLOCK      32 /* entries allocated together */
#define UPSTATS_LABEL_SIZE 48 /* "[ffff:...:ffff%scope]:65535" fits */

/* The status of an address no pool of the worker uses any more. */
#define UPSTATS_GONE LB_STATUS_N

struct upstats_entry {
    /* Set before the entry is published, never changed after. */
    char *backend;
    char server[UPSTATS_LABEL_SIZE];
    /* The worker's: */
    atomic_ullong requests[CODE_N]; /* answers by class; CODE_ERROR: no answer (connect
                                       error, reset, timeout, invalid response) */
    atomic_ullong failures;         /* outcomes that count towards ejection */
    atomic_ullong ejections;
    atomic_int active;             /* requests in flight */
    atomic_int status;             /* enum lb_status, or UPSTATS_GONE */
    atomic_llong ejected_until_ms; /* monotonic ms (uv_now's clock), while ejected */
};

struct upstats;

/* An empty table; NULL when out of memory. Free with upstats_free (accepts
 * NULL) once no thread uses it. */
struct upstats *upstats_new(void);
void upstats_free(struct upstats *s);

/* Worker side. The entry of (backend, server), made when new; NULL when the
 * table is full or memory ran out (counted in upstats_dropped). */
struct upstats_entry *upstats_entry(struct upstats *s, const char *backend, const char *server);
/* Marks every entry gone (before a new set of pools publishes its addresses). */
void upstats_all_gone(struct upstats *s);
/* Relaxed single-writer updates (the worker owns the entry). */
void upstats_add(atomic_ullong *c, unsigned long long n);
void upstats_set_status(struct upstats_entry *e, enum lb_status st, int64_t ejected_until_ms);
void upstats_active(struct upstats_entry *e, int delta);

/* Control side. */
int upstats_count(const struct upstats *s);
const struct upstats_entry *upstats_at(const struct upstats *s, int i);
unsigned long long upstats_dropped(const struct upstats *s);

/* One (backend, address) summed over every worker. */
struct upstats_view {
    const char *backend; /* points into an entry: valid while the tables live */
    const char *server;
    unsigned long long requests[CODE_N];
    unsigned long long failures;
    unsigned long long ejections;
    int active;
    /* The best status any worker gives it (up before probing before ejected
     * before down before draining), an ejection whose time has passed read as
     * probing; UPSTATS_GONE when no worker uses it. */
    int status;
    int64_t ejected_until_ms; /* the latest of the workers that have it ejected */
};

/* Sums the n tables (one per worker; NULL ones skipped) at now_ms into out,
 * sorted by backend then address, one view per pair. Returns the number of
 * views (at most cap; more are left out), or -1 when out of memory. */
int upstats_collect(struct upstats *const *tables, int n, int64_t now_ms, struct upstats_view *out,
                    int cap);

/* The view of (backend, server) among views[0, n), or NULL. */
const struct upstats_view *upstats_find(const struct upstats_view *views, int n,
                                        const char *backend, const char *server);

/* "up", "probing", "ejected", "down", "draining" or "gone". */
const char *upstats_status_name(int status);

#endif
