/* Noise learning: per route, how often each normalised diff path differs when
 * legacy is asked the same request twice, route-wide and per scope (an
 * endpoint). Pure; not thread-safe (the caller holds the lock that protects
 * one route's statistics).
 *
 * Why scopes: a path's rate is its differences over the samples. Route-wide,
 * the samples of every endpoint count, so a timestamp that differs in every
 * sample of one endpoint among twenty (each warming up with its first twins)
 * shows a rate of 5 % and is never noise at the default threshold. Within its
 * endpoint it is 100 % after NOISE_MIN_SAMPLES samples. */
#ifndef FICUS_NOISE_H
#define FICUS_NOISE_H

#include "ficus/diff.h"
#include <stdbool.h>
#include <stddef.h>

/* How many legacy-vs-legacy samples a path needs before it can be noise. */
#define NOISE_MIN_SAMPLES 5
/* Bounds on what one route tracks, so that a backend answering with ever new
 * paths cannot grow memory without limit: paths beyond NOISE_MAX_PATHS, or
 * longer than NOISE_MAX_PATH_LEN bytes once normalised, are not tracked (and
 * are never noise). */
#define NOISE_MAX_PATHS    10000
#define NOISE_MAX_PATH_LEN 1024
/* Scopes tracked (more are route-wide only) and their longest name (an
 * endpoint name: ENDPOINT_NAME_MAX). The scoped paths have their own bound of
 * NOISE_MAX_PATHS. */
#define NOISE_MAX_SCOPES    10001
#define NOISE_MAX_SCOPE_LEN 640

struct noise_stats;

/* Returns new empty statistics for a route with the given threshold (a rate
 * from 0 to 1), or NULL when out of memory. Free with noise_free. */
struct noise_stats *noise_new(double threshold);
void noise_free(struct noise_stats *ns);

/* Records one legacy-vs-legacy comparison: the sample count grows by one, and
 * every distinct path in r (normalised with diff_normalize_path) counts one
 * difference. A path's rate is its differences over the samples. A result
 * holding a DIFF_ERROR item is not a sample: a failed legacy call says nothing
 * about how legacy's answers vary (and must not make the "new" error path noise).
 * r is only read. */
void noise_observe(struct noise_stats *ns, const struct diff_result *r);

/* The same, also counted in scope (an endpoint name; NULL: route-wide only):
 * the scope's sample count grows by one and its paths count apart. */
void noise_observe_in(struct noise_stats *ns, const char *scope, const struct diff_result *r);

/* Is the normalised form of path noise: seen in at least NOISE_MIN_SAMPLES
 * samples with a difference rate above the threshold? */
bool noise_is_noise(const struct noise_stats *ns, const char *path);

/* Is path noise in scope? Decided on the scope's own samples once it has
 * NOISE_MIN_SAMPLES of them, route-wide before (and for scope NULL). */
bool noise_is_noise_in(const struct noise_stats *ns, const char *scope, const char *path);

/* The number of legacy-vs-legacy samples observed, route-wide and in a scope. */
size_t noise_samples(const struct noise_stats *ns);
size_t noise_samples_in(const struct noise_stats *ns, const char *scope);

/* Calls fn for every known path (route-wide) with its difference count and rate. */
void noise_each(const struct noise_stats *ns,
                void (*fn)(const char *path, size_t diffs, double rate, bool is_noise, void *arg),
                void *arg);

#endif
