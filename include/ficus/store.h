/* The state store: where the live route state (percentages, rollbacks, ramp
 * position, acknowledgements) lives, and how the instances of a fleet share
 * it. Two kinds, as state_store.type says:
 *
 *   file  this machine's state_file, written at every change (the state
 *         table's built-in writer; this module only reports on it).
 *   etcd  the keys under state_store.prefix (fleet.h), shared by every
 *         instance. At start the state file is the cache the instance serves
 *         from; then the store reads the whole prefix (in pages pinned to one
 *         revision), watches it from the next revision and applies every
 *         change to the state table (the workers' atomics), so the request path
 *         never talks to etcd. It registers as the table's writer: a change is
 *         a txn comparing the key's mod_revision (a loser hears
 *         FICUS_ECONFLICT, with the current value applied); while etcd cannot
 *         be reached a change is refused with FICUS_EUNAVAILABLE at once (a
 *         guard's rollback is applied here anyway and written once etcd is
 *         back). The instance holds a lease (kept alive every third of its TTL)
 *         and publishes its guard window counts under instances/<id> about
 *         once a second; one instance, elected with a leased ramp/driver key,
 *         takes the ramp steps (each a txn that also compares the driver
 *         key's lease). After an outage it reconnects with exponential backoff
 *         and full jitter (100 ms to 5 s, reset after 10 s of health), moving
 *         to the next endpoint, and resumes the watch from the last revision
 *         it applied, or reads everything again when that revision was
 *         compacted. An endpoint that answers but is not etcd 3.4 or newer
 *         stops a starting process with exit code 1. The state file is
 *         rewritten at most once a second as the cache of what was applied.
 *         A value that is malformed or foreign is logged with its key and
 *         ignored: the last good value stays.
 *
 * Control thread only. */
#ifndef FICUS_STORE_H
#define FICUS_STORE_H

#include "ficus/buf.h"
#include "ficus/fleet.h"
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct server;
struct store;

/* Instances of a fleet the store keeps track of at most (more are ignored). */
#define STORE_INSTANCES_MAX 1024
/* Route keys it keeps at most, configured or not. */
#define STORE_ROUTES_MAX FLEET_ROUTES_MAX
/* Keys per page when reading the whole prefix. */
#define STORE_PAGE 64
/* Another instance's counts older (or, by its clock, newer) than this do not
 * count in the fleet guard: it publishes about once a second. */
#define STORE_COUNTS_MAX_AGE_MS 5000

/* Creates the store of srv->cfg->state_store over srv->state; the etcd store
 * registers itself as the table's writer. Nothing is sent before store_start.
 * Returns NULL when out of memory. */
struct store *store_new(struct server *srv);

/* Starts: the etcd store connects (asynchronously). */
void store_start(struct store *s);

/* Once a second, after the counters were sampled: counts are this instance's
 * guard window counts of each guarded route (n of them; only read), published
 * for the fleet; the cache file is written when changed; the ramp driver is
 * elected when there is none. */
void store_tick(struct store *s, const struct fleet_route_counts *counts, size_t n);

/* The configuration was reloaded (srv->cfg is the new one): routes it adds get
 * the values the store holds for them. */
void store_config_changed(struct store *s);

/* Stops: the etcd store revokes its lease (its instance key and a driver key
 * go at once), closes the watch and its connections. Idempotent. */
void store_stop(struct store *s);

/* Frees the store once the loop has run out. Accepts NULL. */
void store_free(struct store *s);

/* Is the live state shared by a fleet (etcd)? */
bool store_shared(const struct store *s);

/* Is a change written somewhere that outlives the process (the state file, or
 * etcd)? */
bool store_persists(const struct store *s);

/* May this instance take ramp steps? The file store: always. etcd: while it
 * holds the ramp/driver key under its lease and the store is reachable. */
bool store_ramp_driver(const struct store *s);

/* Sets out to the sum of route's guard window counts (over window_ms) that the
 * other live instances published recently; returns how many counted (0 for the
 * file store). */
size_t store_fleet_counts(const struct store *s, const char *route, int64_t window_ms,
                          struct fleet_counts *out);

/* The store for /readyz (detail false: type, status "live" or "stale",
 * last_contact_s, revision) and for /api/v1/routes (detail true: also where
 * the state comes from, the prefix, this instance's id, the live instances
 * from their leases, the ramp driver, the last error). A new reference. */
json_t *store_status_json(const struct store *s, bool detail);

/* Appends ficus_state_store_up, ficus_state_store_last_contact_seconds and
 * ficus_state_changes_total (Prometheus text format). */
void store_render_metrics(const struct store *s, struct buf *out);

/* Why a change is refused now, for an API answer: "" when the store is
 * reachable (file: always). The string lives until the next call. */
const char *store_unavailable_reason(struct store *s);

#endif
