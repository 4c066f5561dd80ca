/* What the instances of a fleet share in the state store: the keys under
 * state_store.prefix and the JSON values stored at them. Pure: no libuv, no
 * I/O; the etcd client (control thread) reads and writes with these.
 *
 * KEYS, P being the prefix ("/ficus/prod/", it starts and ends with "/"):
 *   P routes/<route>   the live state of one route (struct fleet_route). No
 *                      lease: it outlives every instance. Written only by a
 *                      txn comparing its mod_revision (etcdv3_cas_body), so
 *                      concurrent writers cannot interleave.
 *   P ramp/driver      the instance that takes ramp steps (struct fleet_driver),
 *                      under that instance's lease: created with "CREATE EQUAL
 *                      0", it disappears when the driver's lease expires.
 *   P instances/<id>   one per live instance, under its lease (struct
 *                      fleet_instance): the instance is alive while the key
 *                      exists; its guard window counts per route, rewritten
 *                      about once a second with the time they were taken.
 * Route names are the configuration's (letters, digits, '_', '.', '-'), ids
 * are made by fleet_instance_id. Any other key under P is foreign: ignored.
 *
 * VALUES are JSON objects that say what they are and in which format:
 *   {"kind":"ficus.route","version":1,...}
 * A value without "kind", of another kind, of a version this ficus does not
 * read (a newer one), with a key it does not know, a field of the wrong type or
 * out of its range, or bigger than FLEET_VALUE_MAX is refused whole with a
 * reason: the client logs it with its key and keeps the last good value. A
 * format change that older instances cannot read raises "version"; new
 * instances of a mixed fleet keep writing the version the oldest reads.
 *
 * ficus.route, version 1 (only kind, version and new_percent are required, so
 * that an operator can write one by hand with etcdctl):
 *   {"kind":"ficus.route","version":1,
 *    "new_percent":25,                     number 0..100
 *    "shadow_percent":100,                 number 0..100; absent: the configuration's
 *    "ramp_step":2,                        index of the ramp step reached; absent or -1: none
 *    "ramp_next_at":"2026-11-22T11:00:00.000Z",  when the next step is due; absent or null: none
 *    "ramp_stopped":false,                 a rollback stopped the ramp
 *    "rollback":{"reason":"guard","detail":"divergence rate 0.12 > 0.01",
 *                "at":"2026-11-22T10:00:00.000Z"},   or null: none
 *    "acknowledgements":[{"id":"5f0c2a9e41d3b7a8","path":"/id","kind":"json",
 *                         "endpoint":"GET /posts/{id}","note":"ids are strings now",
 *                         "at":"2026-11-22T10:00:00.000Z"}],
 *    "updated_by":"web-1-4242-9f3a","updated_at":"2026-11-22T10:00:00.000Z"}
 * ficus.ramp_driver, version 1:
 *   {"kind":"ficus.ramp_driver","version":1,"id":"web-1-4242-9f3a",
 *    "since":"2026-11-22T10:00:00.000Z"}
 * ficus.instance, version 1 (counts over each route's guard window, ending at "at"):
 *   {"kind":"ficus.instance","version":1,"id":"web-1-4242-9f3a","ficus":"0.1.0",
 *    "started_at":"2026-11-22T09:00:00.000Z","at":"2026-11-22T10:00:00.500Z",
 *    "routes":{"orders":{"window_ms":60000,"comparisons":20,"divergent":1,
 *                        "new_requests":100,"new_errors":2}}}
 * Times are UTC, RFC 3339 with milliseconds (fleet_time_format); reading also
 * takes them without the fraction. They are wall clocks of different
 * machines: compare them with a tolerance. */
#ifndef FICUS_FLEET_H
#define FICUS_FLEET_H

#include "ficus/buf.h"
#include "ficus/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FLEET_FORMAT       1            /* the version this ficus writes and reads */
#define FLEET_VALUE_MAX    (256 * 1024) /* a value bigger than this is refused */
#define FLEET_ID_MAX       64           /* an instance id, in bytes */
#define FLEET_NAME_MAX     127          /* a route name (struct route_state's name) */
#define FLEET_DETAIL_MAX   160          /* a rollback's detail */
#define FLEET_ACKS_MAX     256          /* acknowledgements per route */
#define FLEET_ACK_TEXT_MAX 512          /* an acknowledgement's path, endpoint or note */
#define FLEET_ACK_ID_MAX   32           /* an acknowledgement's id */
#define FLEET_ROUTES_MAX   4096         /* routes in one instance value */
#define FLEET_WHY_MAX      160          /* a refusal's reason */
#define FLEET_TIME_LEN     24           /* "2026-11-22T10:00:00.000Z" */

/* ---- keys --------------------------------------------------------------- */

enum fleet_key_kind {
    FLEET_KEY_ROUTE,
    FLEET_KEY_RAMP_DRIVER,
    FLEET_KEY_INSTANCE,
    FLEET_KEY_FOREIGN, /* under the prefix but none of ours, or outside it */
};

/* Sorts key (bytes, from etcd) under prefix; for a route or an instance sets
 * *name to the route name or instance id (a span into key). A name that is
 * empty, too long or has a byte outside letters, digits, '_', '.' and '-'
 * makes the key foreign. */
enum fleet_key_kind fleet_key_parse(struct span prefix, struct span key, struct span *name);

/* Append the key to b: P routes/<route>, P ramp/driver, P instances/<id>.
 * Return 0 or a buf error. */
int fleet_key_route(struct buf *b, const char *prefix, const char *route);
int fleet_key_ramp_driver(struct buf *b, const char *prefix);
int fleet_key_instance(struct buf *b, const char *prefix, const char *id);

/* The three sub-prefixes' names as they appear after P, for documentation and
 * for building ranges. */
#define FLEET_ROUTES_DIR    "routes/"
#define FLEET_DRIVER_KEY    "ramp/driver"
#define FLEET_INSTANCES_DIR "instances/"

/* An instance id from the host name, the process id and a random number:
 * "<host>-<pid>-<4 hex digits>", the host cut and its bytes outside letters,
 * digits, '.', '_' and '-' made '-', so that two processes on one host (or two
 * runs of one pid) differ. out holds FLEET_ID_MAX + 1 bytes. */
void fleet_instance_id(char *out, const char *host, long pid, uint64_t random);

/* Is s a valid route name or instance id (1..max bytes of letters, digits,
 * '_', '.', '-')? */
bool fleet_name_valid(struct span s, size_t max);

/* ---- times -------------------------------------------------------------- */

/* Writes unix_ms (1970..9999) as "YYYY-MM-DDTHH:MM:SS.mmmZ" into out
 * (FLEET_TIME_LEN + 1 bytes). */
void fleet_time_format(int64_t unix_ms, char *out);
/* Reads "YYYY-MM-DDTHH:MM:SS[.fff]Z" (1 to 9 fraction digits, milliseconds
 * kept) strictly: a real calendar date and time, nothing before or after.
 * Returns true and sets *unix_ms. */
bool fleet_time_parse(const char *s, size_t n, int64_t *unix_ms);

/* ---- route live state --------------------------------------------------- */

enum fleet_rollback { FLEET_ROLLBACK_NONE, FLEET_ROLLBACK_MANUAL, FLEET_ROLLBACK_GUARD };

/* An acknowledged difference (issue 14): path and kind required, endpoint and
 * note "" when absent. kind is one of the record's diff kinds. id names it for
 * removal: when a value has none, decoding makes it with fleet_ack_id (so an
 * entry written by hand can be removed too). at is when it was made (unix ms;
 * 0 when absent). */
struct fleet_ack {
    const char *id;
    const char *path;
    const char *kind;
    const char *endpoint;
    const char *note;
    int64_t at;
};

/* The id of the acknowledgement of (path, kind, endpoint): 16 hex digits of a
 * hash of the three, so that acknowledging the same difference twice names
 * the same entry. endpoint may be NULL. out holds FLEET_ACK_ID_MAX + 1 bytes. */
void fleet_ack_id(const char *path, const char *kind, const char *endpoint, char *out);
/* Is kind one of the diff kinds an acknowledgement may name (status, header,
 * json, added, removed, body, error)? */
bool fleet_ack_kind_valid(const char *kind);

/* The live state of a route. Decoded strings live in arena; for encoding, the
 * caller's strings are only read. */
struct fleet_route {
    double new_percent;    /* 0..100 */
    double shadow_percent; /* 0..100; -1: not set (the configuration's) */
    int ramp_step;         /* -1: no step taken */
    int64_t ramp_next_at;  /* unix ms; 0: none */
    bool ramp_stopped;
    enum fleet_rollback rollback;
    const char *rollback_detail; /* "" without a rollback */
    int64_t rollback_at;         /* unix ms; 0 without a rollback */
    const struct fleet_ack *acks;
    size_t n_acks;
    const char *updated_by; /* an instance id; "" when absent */
    int64_t updated_at;     /* unix ms; 0 when absent */
    struct arena arena;
};

/* Sets the defaults (no ramp step, no rollback, shadow_percent -1...). */
void fleet_route_init(struct fleet_route *r);
void fleet_route_dispose(struct fleet_route *r);
/* Appends r as a ficus.route value. Returns 0, -EINVAL when a field is out of
 * range (a bug: nothing is written then), or a buf error. */
int fleet_route_encode(struct buf *b, const struct fleet_route *r);
/* Decodes the value at p (len bytes) into r (initialised; an earlier decode is
 * disposed first). Returns 0, or FICUS_EBADRESP with the reason in why
 * (FLEET_WHY_MAX bytes), or FICUS_ENOMEM. */
int fleet_route_decode(const char *p, size_t len, struct fleet_route *r, char *why);

/* "guard", "manual", "" for NONE. */
const char *fleet_rollback_name(enum fleet_rollback r);

/* Copies src into dst (initialised; an earlier value is disposed first), its
 * strings into dst's arena. Returns 0 or FICUS_ENOMEM. */
int fleet_route_copy(struct fleet_route *dst, const struct fleet_route *src);

/* A change of a route's live state, as the admin API, the guard and the ramp
 * ask for it. The caller's strings and acknowledgements are only read. */
enum fleet_change_kind {
    FLEET_CHANGE_PERCENT,  /* new_percent and/or shadow_percent (-1 leaves one as it is) */
    FLEET_CHANGE_ROLLBACK, /* new_percent 0, the ramp stopped, rollback and detail recorded */
    FLEET_CHANGE_RAMP,     /* the ramp's position: new_percent (-1: as it is), ramp_step,
                              ramp_next_at, ramp_stopped */
    FLEET_CHANGE_ACKS,     /* the acknowledgements replaced by acks */
    FLEET_CHANGE_N
};

struct fleet_change {
    enum fleet_change_kind kind;
    double new_percent;
    double shadow_percent;
    enum fleet_rollback rollback; /* ROLLBACK: MANUAL or GUARD */
    const char *detail;           /* ROLLBACK */
    int ramp_step;
    int64_t ramp_next_at;
    bool ramp_stopped;
    const struct fleet_ack *acks;
    size_t n_acks;
};

/* Sets the change's fields to "nothing" (percentages -1...) for kind. */
void fleet_change_init(struct fleet_change *ch, enum fleet_change_kind kind);

/* Pure: the value cur becomes when ch is applied at now_ms (unix ms) by the
 * instance by ("" or NULL: none), written into out (initialised; strings
 * copied into its arena). A rollback keeps the acknowledgements and the
 * shadow percentage. Returns 0, -EINVAL when the result would not encode (a
 * percentage out of range, too many acknowledgements, a bad text), or
 * FICUS_ENOMEM. */
int fleet_route_change(const struct fleet_route *cur, const struct fleet_change *ch, int64_t now_ms,
                       const char *by, struct fleet_route *out);

/* ---- the ramp driver ---------------------------------------------------- */

struct fleet_driver {
    char id[FLEET_ID_MAX + 1];
    int64_t since; /* unix ms */
};

int fleet_driver_encode(struct buf *b, const struct fleet_driver *d);
int fleet_driver_decode(const char *p, size_t len, struct fleet_driver *d, char *why);

/* ---- instances and the fleet guard -------------------------------------- */

/* One instance's counts for one route over its guard window. */
struct fleet_counts {
    uint64_t comparisons;
    uint64_t divergent; /* comparisons with at least one difference */
    uint64_t new_requests;
    uint64_t new_errors;
};

struct fleet_route_counts {
    const char *route;
    int64_t window_ms;
    struct fleet_counts c;
};

struct fleet_instance {
    const char *id;
    const char *ficus_version; /* "" when absent */
    int64_t started_at;        /* unix ms; 0 when absent */
    int64_t at;                /* unix ms: when the counts were taken */
    const struct fleet_route_counts *routes;
    size_t n_routes;
    struct arena arena;
};

void fleet_instance_init(struct fleet_instance *in);
void fleet_instance_dispose(struct fleet_instance *in);
int fleet_instance_encode(struct buf *b, const struct fleet_instance *in);
int fleet_instance_decode(const char *p, size_t len, struct fleet_instance *in, char *why);

/* Adds up route's counts over the instances whose counts are fresh (taken at
 * or after now_ms - max_age_ms, and not more than max_age_ms ahead: another
 * machine's clock) and measured over window_ms. Returns how many instances
 * counted. */
size_t fleet_sum(const struct fleet_instance *const *inst, size_t n, const char *route,
                 int64_t window_ms, int64_t now_ms, int64_t max_age_ms, struct fleet_counts *out);

#endif
