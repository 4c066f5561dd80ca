#include "ficus/state.h"
#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/endpoint.h"
#include "ficus/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const double state_hist_bounds[STATE_HIST_BUCKETS - 1] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

struct state_table {
    int n_workers;
    char *path;
    struct route_state **entries;
    size_t n, cap;
    int64_t created_ms; /* a rollback at or after this happened while this process ran */
    const struct state_writer *writer;
    void *wctx;
    unsigned long long changes[STATE_SRC_N];
    int64_t revision;        /* the store revision the next save writes; 0: none */
    int64_t loaded_revision; /* the one the loaded file named */
    bool dirty;              /* changed since the last save */
};

/* A route's acknowledged differences, replaced whole on each change and never
 * changed in place: the control thread's list, also published to comparisons
 * (rs->acks_pub), each holding a reference. */
struct state_acks {
    struct arena arena;
    struct fleet_ack *v;
    struct endpoint_ack *match; /* the same entries, as comparisons match them */
    size_t n;
    atomic_int refs;
};

/* Clock skew between the machines of a fleet, for telling a rollback that
 * happened while this process ran from an older one. */
#define STATE_CLOCK_SKEW_MS 2000

const char *state_source_name(enum state_source s)
{
    static const char *const names[STATE_SRC_N] = {"admin", "guard", "ramp", "store"};
    return s < STATE_SRC_N ? names[s] : "quiet";
}

int64_t state_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void acks_free(struct state_acks *a)
{
    if (a == NULL || atomic_fetch_sub(&a->refs, 1) != 1)
        return;
    arena_dispose(&a->arena);
    free(a);
}

void state_acks_drop(struct state_acks *a)
{
    acks_free(a);
}

struct state_acks *state_acks_hold(struct route_state *rs)
{
    uv_mutex_lock(&rs->noise_lock);
    struct state_acks *a = rs->acks_pub;
    if (a != NULL)
        atomic_fetch_add(&a->refs, 1);
    uv_mutex_unlock(&rs->noise_lock);
    return a;
}

const struct endpoint_ack *state_acks_view(const struct state_acks *a, size_t *n)
{
    *n = a != NULL ? a->n : 0;
    return a != NULL ? a->match : NULL;
}

/* Publishes the control thread's current list to the comparisons. */
static void acks_publish(struct route_state *rs)
{
    struct state_acks *a = rs->acks;
    if (a != NULL)
        atomic_fetch_add(&a->refs, 1);
    uv_mutex_lock(&rs->noise_lock);
    struct state_acks *old = rs->acks_pub;
    rs->acks_pub = a;
    uv_mutex_unlock(&rs->noise_lock);
    acks_free(old);
}

/* A copy of n acknowledgements (ids made where missing), or NULL when out of
 * memory. The arena's first block is embedded, so the struct is never moved. */
static struct state_acks *acks_new(const struct fleet_ack *src, size_t n)
{
    struct state_acks *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    atomic_init(&a->refs, 1);
    arena_init(&a->arena);
    a->v = arena_alloc(&a->arena, n * sizeof(*a->v));
    a->match = arena_alloc(&a->arena, n * sizeof(*a->match));
    if (a->v == NULL || a->match == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        const struct fleet_ack *s = &src[i];
        char id[FLEET_ACK_ID_MAX + 1];
        if (s->id != NULL && s->id[0] != '\0')
            snprintf(id, sizeof(id), "%s", s->id);
        else
            fleet_ack_id(s->path, s->kind, s->endpoint, id);
#define DUP(f) arena_strndup(&a->arena, (f) ? (f) : "", (f) ? strlen(f) : 0)
        a->v[i].id = arena_strndup(&a->arena, id, strlen(id));
        a->v[i].path = DUP(s->path);
        a->v[i].kind = DUP(s->kind);
        a->v[i].endpoint = DUP(s->endpoint);
        a->v[i].note = DUP(s->note);
#undef DUP
        a->v[i].at = s->at;
        if (a->v[i].id == NULL || a->v[i].path == NULL || a->v[i].kind == NULL ||
            a->v[i].endpoint == NULL || a->v[i].note == NULL)
            goto fail;
        a->match[i] =
            (struct endpoint_ack){a->v[i].path, a->v[i].kind, a->v[i].endpoint, a->v[i].note};
    }
    a->n = n;
    return a;
fail:
    acks_free(a);
    return NULL;
}

struct state_table *state_table_new(int n_workers, const char *path)
{
    struct state_table *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->n_workers = n_workers < 1 ? 1 : n_workers;
    if (path != NULL && (t->path = strdup(path)) == NULL) {
        free(t);
        return NULL;
    }
    t->created_ms = state_now_ms();
    return t;
}

void state_table_free(struct state_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->entries[i]->counters);
        free(t->entries[i]->samples);
        noise_free(t->entries[i]->noise);
        correlate_free(t->entries[i]->correlate);
        acks_free(t->entries[i]->acks);
        acks_free(t->entries[i]->acks_pub);
        endpoint_table_free(t->entries[i]->endpoints);
        uv_mutex_destroy(&t->entries[i]->noise_lock);
        free(t->entries[i]);
    }
    free(t->entries);
    free(t->path);
    free(t);
}

struct route_state *state_find(struct state_table *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++) {
        if (strcmp(t->entries[i]->name, name) == 0)
            return t->entries[i];
    }
    return NULL;
}

static struct route_state *state_add(struct state_table *t, const char *name)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct route_state **e = realloc(t->entries, cap * sizeof(*e));
        if (e == NULL)
            return NULL;
        t->entries = e;
        t->cap = cap;
    }
    struct route_state *rs = calloc(1, sizeof(*rs));
    if (rs == NULL)
        return NULL;
    rs->counters = aligned_alloc(64, sizeof(struct route_counters) * (size_t)t->n_workers);
    if (rs->counters == NULL) {
        free(rs);
        return NULL;
    }
    memset(rs->counters, 0, sizeof(struct route_counters) * (size_t)t->n_workers);
    snprintf(rs->name, sizeof(rs->name), "%s", name);
    rs->ramp_step = -1;
    uv_mutex_init(&rs->noise_lock);
    t->entries[t->n++] = rs;
    return rs;
}

bool state_persisted(const struct state_table *t)
{
    return t->path != NULL;
}

/* ---- values ------------------------------------------------------------------------------ */

/* "TIME reason: detail", the display form of a rollback (and its form in the
 * state file, where it is read back by parse_last_rollback). */
static void format_last_rollback(char *out, size_t size, enum fleet_rollback r, int64_t at_ms,
                                 const char *detail)
{
    if (r == FLEET_ROLLBACK_NONE) {
        out[0] = '\0';
        return;
    }
    char ts[32];
    time_t secs = (time_t)(at_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(out, size, "%s %s: %s", ts, fleet_rollback_name(r), detail);
}

/* Reads "TIME reason: detail" back. Returns false when s is not in that form. */
static bool parse_last_rollback(const char *s, enum fleet_rollback *r, char *detail, size_t dsize,
                                int64_t *at)
{
    const char *sp = strchr(s, ' ');
    if (sp == NULL || !fleet_time_parse(s, (size_t)(sp - s), at))
        return false;
    const char *reason = sp + 1;
    if (strncmp(reason, "guard: ", 7) == 0)
        *r = FLEET_ROLLBACK_GUARD;
    else if (strncmp(reason, "manual: ", 8) == 0)
        *r = FLEET_ROLLBACK_MANUAL;
    else
        return false;
    snprintf(detail, dsize, "%s", strchr(reason, ':') + 2);
    return *at > 0;
}

int state_value(const struct route_state *rs, struct fleet_route *out)
{
    struct fleet_route v;
    fleet_route_init(&v);
    v.new_percent = atomic_load(&rs->new_percent);
    v.shadow_percent = atomic_load(&rs->shadow_percent);
    if (v.shadow_percent < 0 || v.shadow_percent > 100)
        v.shadow_percent = -1;
    v.ramp_step = rs->ramp_step;
    v.ramp_next_at = rs->ramp_next_at;
    v.ramp_stopped = rs->ramp_stopped;
    v.rollback = rs->rollback;
    v.rollback_detail = rs->rollback_detail;
    v.rollback_at = rs->rollback_at;
    if (rs->acks != NULL) {
        v.acks = rs->acks->v;
        v.n_acks = rs->acks->n;
    }
    int rc = fleet_route_copy(out, &v); /* the strings are rs's: copied out */
    fleet_route_dispose(&v);
    return rc;
}

int state_apply(struct state_table *t, struct route_state *rs, const struct fleet_route *v,
                double cfg_shadow, enum state_source src)
{
    struct state_acks *acks = NULL;
    if (v->n_acks > 0 && (acks = acks_new(v->acks, v->n_acks)) == NULL)
        return FICUS_ENOMEM;
    atomic_store(&rs->new_percent, v->new_percent);
    double sp = v->shadow_percent >= 0 ? v->shadow_percent : cfg_shadow;
    if (sp >= 0)
        atomic_store(&rs->shadow_percent, sp);
    rs->ramp_step = v->ramp_step;
    rs->ramp_next_at = v->ramp_next_at;
    rs->ramp_stopped = v->ramp_stopped;
    bool fresh = v->rollback != FLEET_ROLLBACK_NONE &&
                 (v->rollback != rs->rollback || v->rollback_at != rs->rollback_at) &&
                 v->rollback_at >= t->created_ms - STATE_CLOCK_SKEW_MS;
    rs->rollback = v->rollback;
    snprintf(rs->rollback_detail, sizeof(rs->rollback_detail), "%s",
             v->rollback_detail ? v->rollback_detail : "");
    rs->rollback_at = v->rollback != FLEET_ROLLBACK_NONE ? v->rollback_at : 0;
    format_last_rollback(rs->last_rollback, sizeof(rs->last_rollback), rs->rollback,
                         rs->rollback_at, rs->rollback_detail);
    if (fresh) {
        if (v->rollback == FLEET_ROLLBACK_GUARD)
            rs->rollbacks_guard++;
        else
            rs->rollbacks_manual++;
        log_warn("state", "rollback route=%s reason=%s detail=\"%s\" source=%s", rs->name,
                 fleet_rollback_name(v->rollback), rs->rollback_detail, state_source_name(src));
    }
    acks_free(rs->acks);
    rs->acks = acks;
    acks_publish(rs);
    rs->overridden = true;
    if (src < STATE_SRC_N)
        t->changes[src]++;
    t->dirty = true;
    return 0;
}

void state_reset(struct state_table *t, struct route_state *rs, const struct route_cfg *rt,
                 enum state_source src)
{
    if (rt != NULL) {
        atomic_store(&rs->new_percent, rt->new_percent);
        atomic_store(&rs->shadow_percent, rt->shadow_percent);
    }
    rs->overridden = false;
    rs->ramp_step = -1;
    rs->ramp_next_at = 0;
    rs->ramp_stopped = false;
    rs->rollback = FLEET_ROLLBACK_NONE;
    rs->rollback_detail[0] = '\0';
    rs->rollback_at = 0;
    rs->last_rollback[0] = '\0';
    acks_free(rs->acks);
    rs->acks = NULL;
    acks_publish(rs);
    if (src < STATE_SRC_N)
        t->changes[src]++;
    t->dirty = true;
}

unsigned long long state_changes(const struct state_table *t, enum state_source src)
{
    return src < STATE_SRC_N ? t->changes[src] : 0;
}

void state_count_change(struct state_table *t, enum state_source src)
{
    if (src < STATE_SRC_N)
        t->changes[src]++;
}

const struct fleet_ack *state_acks(const struct route_state *rs, size_t *n)
{
    *n = rs->acks != NULL ? rs->acks->n : 0;
    return rs->acks != NULL ? rs->acks->v : NULL;
}

/* ---- changes ----------------------------------------------------------------------------- */

/* The built-in writer: applies at once and writes the state file. */
static void file_change(struct state_table *t, struct route_state *rs,
                        const struct fleet_change *ch, enum state_source src, state_change_cb cb,
                        void *ctx)
{
    struct fleet_route cur, next;
    fleet_route_init(&cur);
    fleet_route_init(&next);
    int rc = state_value(rs, &cur);
    if (rc == 0)
        rc = fleet_route_change(&cur, ch, state_now_ms(), "", &next);
    if (rc != 0) {
        fleet_route_dispose(&cur);
        if (cb != NULL)
            cb(ctx, rc, rc == -EINVAL ? "the change is not valid" : "out of memory");
        return;
    }
    bool was_overridden = rs->overridden;
    rc = state_apply(t, rs, &next, -1, src);
    const char *why = "";
    if (rc == 0) {
        int saved = state_save(t);
        if (saved != 0 && ch->kind != FLEET_CHANGE_ROLLBACK) {
            /* Not persisted: not applied either, so a restart shows what ran. A
             * rollback stays: new's traffic must stop whatever the disk says. */
            state_apply(t, rs, &cur, -1, STATE_SRC_QUIET);
            rs->overridden = was_overridden;
            if (src < STATE_SRC_N)
                t->changes[src]--; /* counted by the apply that was undone */
            rc = saved;
            why = "could not write the state file; nothing was changed";
        }
    } else {
        why = "out of memory";
    }
    fleet_route_dispose(&cur);
    fleet_route_dispose(&next);
    if (cb != NULL)
        cb(ctx, rc, why);
}

void state_set_writer(struct state_table *t, const struct state_writer *w, void *wctx)
{
    t->writer = w;
    t->wctx = wctx;
}

void state_change(struct state_table *t, struct route_state *rs, const struct fleet_change *ch,
                  enum state_source src, state_change_cb cb, void *ctx)
{
    if (t->writer != NULL)
        t->writer->change(t->wctx, rs, ch, src, cb, ctx);
    else
        file_change(t, rs, ch, src, cb, ctx);
}

void state_acks_replace(struct state_table *t, struct route_state *rs, const struct fleet_ack *acks,
                        size_t n, enum state_source src, state_change_cb cb, void *ctx)
{
    struct fleet_change ch;
    fleet_change_init(&ch, FLEET_CHANGE_ACKS);
    ch.acks = acks;
    ch.n_acks = n;
    state_change(t, rs, &ch, src, cb, ctx);
}

/* ---- the state file ---------------------------------------------------------------------- */

/* Parses a state file's text into one call of fn per route, with the route's
 * live state as a value (shadow_percent -1 when the file has none). */
static int parse_state(const char *path, struct config_errors *errs, int64_t *revision,
                       int (*fn)(const char *name, const struct fleet_route *v,
                                 const char *last_rollback, void *arg),
                       void *arg)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        config_errors_add(errs, "%s: cannot read state file: %s", path, strerror(errno));
        return FICUS_ECONFIG;
    }
    json_error_t je;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (root == NULL) {
        config_errors_add(errs,
                          "%s: line %d, column %d: %s (a corrupt state file is not reset: "
                          "fix or remove it)",
                          path, je.line, je.column, je.text);
        return FICUS_ECONFIG;
    }
    int rc = 0;
    json_t *routes = json_object_get(root, "routes");
    json_t *rev = json_object_get(root, "revision");
    if (!json_is_object(root) || json_integer_value(json_object_get(root, "version")) != 1 ||
        !json_is_object(routes)) {
        config_errors_add(errs, "%s: not a ficus state file (want {\"version\":1,\"routes\":{}})",
                          path);
        rc = FICUS_ECONFIG;
    } else if (rev != NULL && (!json_is_integer(rev) || json_integer_value(rev) < 0)) {
        config_errors_add(errs, "%s: revision: must be an integer >= 0", path);
        rc = FICUS_ECONFIG;
    } else if (revision != NULL) {
        *revision = rev != NULL ? (int64_t)json_integer_value(rev) : 0;
    }
    const char *name;
    json_t *v;
    struct fleet_route fr;
    fleet_route_init(&fr);
    json_object_foreach(rc == 0 ? routes : NULL, name, v)
    {
        json_t *np = json_object_get(v, "new_percent");
        json_t *sp = json_object_get(v, "shadow_percent");
        json_t *stopped = json_object_get(v, "ramp_stopped");
        json_t *last = json_object_get(v, "last_rollback");
        json_t *acks = json_object_get(v, "acknowledgements");
        if ((stopped != NULL && !json_is_boolean(stopped)) ||
            (last != NULL && !json_is_string(last))) {
            config_errors_add(errs,
                              "%s: routes.%s: ramp_stopped must be a boolean and last_rollback "
                              "a string",
                              path, name);
            rc = FICUS_ECONFIG;
            continue;
        }
        if (!json_is_number(np) || json_number_value(np) < 0 || json_number_value(np) > 100 ||
            (sp != NULL &&
             (!json_is_number(sp) || json_number_value(sp) < 0 || json_number_value(sp) > 100))) {
            config_errors_add(errs,
                              "%s: routes.%s: new_percent and shadow_percent must be "
                              "numbers from 0 to 100",
                              path, name);
            rc = FICUS_ECONFIG;
            continue;
        }
        /* The route as a ficus.route value, checked by the fleet's reader (the
         * acknowledgements above all). */
        json_t *val =
            json_pack("{s:s,s:i,s:O}", "kind", "ficus.route", "version", 1, "new_percent", np);
        if (sp != NULL)
            json_object_set(val, "shadow_percent", sp);
        if (stopped != NULL)
            json_object_set(val, "ramp_stopped", stopped);
        if (acks != NULL)
            json_object_set(val, "acknowledgements", acks);
        enum fleet_rollback rb = FLEET_ROLLBACK_NONE;
        char detail[FLEET_DETAIL_MAX + 64];
        int64_t at = 0;
        if (last != NULL &&
            parse_last_rollback(json_string_value(last), &rb, detail, sizeof(detail), &at)) {
            detail[FLEET_DETAIL_MAX] = '\0';
            char ts[FLEET_TIME_LEN + 1];
            fleet_time_format(at, ts);
            json_object_set_new(val, "rollback",
                                json_pack("{s:s,s:s,s:s}", "reason", fleet_rollback_name(rb),
                                          "detail", detail, "at", ts));
        }
        char *text = json_dumps(val, JSON_COMPACT | JSON_REAL_PRECISION(17));
        json_decref(val);
        char why[FLEET_WHY_MAX];
        int drc = text != NULL ? fleet_route_decode(text, strlen(text), &fr, why) : FICUS_ENOMEM;
        free(text);
        if (drc != 0) {
            config_errors_add(errs, "%s: routes.%s: %s", path, name,
                              drc == FICUS_ENOMEM ? "out of memory" : why);
            rc = FICUS_ECONFIG;
            continue;
        }
        rc = fn(name, &fr, last != NULL ? json_string_value(last) : NULL, arg);
        if (rc != 0)
            break;
    }
    fleet_route_dispose(&fr);
    json_decref(root);
    return rc;
}

static int apply_loaded(const char *name, const struct fleet_route *v, const char *last_rollback,
                        void *arg)
{
    struct state_table *t = arg;
    struct route_state *rs = state_find(t, name);
    if (rs == NULL && (rs = state_add(t, name)) == NULL)
        return FICUS_ENOMEM;
    if (state_apply(t, rs, v, -1, STATE_SRC_QUIET) != 0)
        return FICUS_ENOMEM;
    if (v->shadow_percent < 0)
        atomic_store(&rs->shadow_percent, -1.0); /* filled from the config at bind */
    if (last_rollback != NULL && rs->last_rollback[0] == '\0')
        snprintf(rs->last_rollback, sizeof(rs->last_rollback), "%s", last_rollback);
    return 0;
}

/* A save writes, fsyncs and renames its temporary file within moments; one
 * older than this belongs to no save in progress, whatever its PID says (the
 * PID may have been reused since the crash that left it). */
#define STATE_TMP_STALE_S 60

/* Is name "<base>.tmp.<digits>"? Sets *pid. */
static bool temp_name_of(const char *name, const char *base, long *pid)
{
    size_t n = strlen(base);
    if (strncmp(name, base, n) != 0 || strncmp(name + n, ".tmp.", 5) != 0)
        return false;
    const char *d = name + n + 5;
    if (*d == '\0' || strlen(d) > 10 || strspn(d, "0123456789") != strlen(d))
        return false;
    *pid = strtol(d, NULL, 10);
    return true;
}

/* Removes the "<state_file>.tmp.PID" files that crashed saves left behind.
 * A file is kept only while it may belong to a save in progress: its PID is
 * a live process other than this one and it was written in the last
 * STATE_TMP_STALE_S seconds (another ficus sharing the state file, such as
 * the old process of a blue-green restart). Anything else is stale. */
static void remove_stale_temps(const char *path)
{
    char *dcopy = strdup(path), *bcopy = strdup(path);
    DIR *dir = NULL;
    if (dcopy == NULL || bcopy == NULL)
        goto fail;
    const char *dname = dirname(dcopy), *base = basename(bcopy);
    dir = opendir(dname);
    if (dir == NULL)
        goto fail;
    time_t now = time(NULL);
    struct dirent *de;
    struct buf full;
    buf_init(&full, 0);
    while ((de = readdir(dir)) != NULL) {
        long pid;
        if (!temp_name_of(de->d_name, base, &pid))
            continue;
        struct stat st;
        if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        bool live = pid > 0 && pid != (long)getpid() && pid <= INT32_MAX &&
                    (kill((pid_t)pid, 0) == 0 || errno == EPERM);
        if (live && now - st.st_mtime < STATE_TMP_STALE_S)
            continue;
        buf_reset(&full);
        buf_printf(&full, "%s/%s", dname, de->d_name);
        if (unlinkat(dirfd(dir), de->d_name, 0) == 0)
            log_info("state", "removed stale temporary state file path=%s", full.data);
        else
            log_warn("state", "cannot remove stale temporary state file path=%s err=%s", full.data,
                     strerror(errno));
    }
    buf_dispose(&full);
fail:
    if (dir != NULL)
        closedir(dir);
    free(dcopy);
    free(bcopy);
}

int state_table_load(struct state_table *t, struct config_errors *errs)
{
    if (t->path == NULL)
        return 0;
    remove_stale_temps(t->path);
    int rc = parse_state(t->path, errs, &t->loaded_revision, apply_loaded, t);
    t->dirty = false;
    return rc;
}

/* The monotonic clock in milliseconds: the correlation map's time. */
static int64_t state_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int state_table_bind(struct state_table *t, struct config *cfg)
{
    for (size_t i = 0; i < t->n; i++)
        t->entries[i]->present = false;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        struct route_cfg *rt = &cfg->routes[i];
        struct route_state *rs = state_find(t, rt->name);
        if (rs == NULL && (rs = state_add(t, rt->name)) == NULL)
            return FICUS_ENOMEM;
        rs->present = true;
        if (!rs->overridden) {
            atomic_store(&rs->new_percent, rt->new_percent);
            atomic_store(&rs->shadow_percent, rt->shadow_percent);
        } else if (atomic_load(&rs->shadow_percent) < 0) {
            atomic_store(&rs->shadow_percent, rt->shadow_percent);
        }
        rt->state = rs;
        const struct correlate_cfg *cc = &rt->shadow_correlate;
        if (cc->enabled && rs->correlate == NULL &&
            (rs->correlate = correlate_new(cc->max_entries, cc->ttl_ms)) == NULL)
            return FICUS_ENOMEM;
        if (cc->enabled &&
            correlate_configure(rs->correlate, cc->max_entries, cc->ttl_ms, state_mono_ms()) != 0)
            return FICUS_ENOMEM;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (copy == NULL)
        return FICUS_ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static json_t *acks_json(const struct state_acks *a)
{
    json_t *arr = json_array();
    for (size_t i = 0; a != NULL && i < a->n; i++) {
        const struct fleet_ack *k = &a->v[i];
        json_t *o = json_pack("{s:s,s:s,s:s}", "id", k->id, "path", k->path, "kind", k->kind);
        if (k->endpoint[0] != '\0')
            json_object_set_new(o, "endpoint", json_string(k->endpoint));
        if (k->note[0] != '\0')
            json_object_set_new(o, "note", json_string(k->note));
        if (k->at > 0) {
            char ts[FLEET_TIME_LEN + 1];
            fleet_time_format(k->at, ts);
            json_object_set_new(o, "at", json_string(ts));
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

int state_save(struct state_table *t)
{
    if (t->path == NULL)
        return 0;
    json_t *routes = json_object();
    for (size_t i = 0; i < t->n; i++) {
        struct route_state *rs = t->entries[i];
        if (!rs->overridden)
            continue;
        json_t *r = json_pack("{s:f,s:f}", "new_percent", atomic_load(&rs->new_percent),
                              "shadow_percent", atomic_load(&rs->shadow_percent));
        if (atomic_load(&rs->shadow_percent) < 0)
            json_object_del(r, "shadow_percent");
        if (rs->ramp_stopped)
            json_object_set_new(r, "ramp_stopped", json_true());
        if (rs->last_rollback[0] != '\0')
            json_object_set_new(r, "last_rollback", json_string(rs->last_rollback));
        if (rs->acks != NULL && rs->acks->n > 0)
            json_object_set_new(r, "acknowledgements", acks_json(rs->acks));
        json_object_set_new(routes, rs->name, r);
    }
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *root = json_pack("{s:i,s:s,s:o}", "version", 1, "updated", ts, "routes", routes);
    if (t->revision > 0)
        json_object_set_new(root, "revision", json_integer((json_int_t)t->revision));
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(10));
    json_decref(root);
    if (text == NULL)
        return FICUS_ENOMEM;

    struct buf tmp;
    buf_init(&tmp, 0);
    buf_printf(&tmp, "%s.tmp.%d", t->path, (int)getpid());
    int rc = 0;
    int fd = open(tmp.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            close(fd);
            unlink(tmp.data);
            goto fail;
        }
        off += (size_t)n;
    }
    if (write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
        rc = -errno;
        close(fd);
        unlink(tmp.data);
        goto fail;
    }
    close(fd);
    if (rename(tmp.data, t->path) != 0) {
        rc = -errno;
        unlink(tmp.data);
        goto fail;
    }
    rc = fsync_dir_of(t->path);
fail:
    if (rc != 0)
        log_error("state", "cannot write state file path=%s err=%s", t->path, ficus_strerror(rc));
    else
        t->dirty = false;
    buf_dispose(&tmp);
    free(text);
    return rc;
}

void state_set_revision(struct state_table *t, int64_t revision)
{
    if (revision != t->revision)
        t->dirty = true;
    t->revision = revision;
}

int64_t state_loaded_revision(const struct state_table *t)
{
    return t->loaded_revision;
}

void state_mark_dirty(struct state_table *t)
{
    t->dirty = true;
}

int state_save_if_dirty(struct state_table *t)
{
    return t->dirty ? state_save(t) : 0;
}

void state_totals(const struct state_table *t, const struct route_state *rs,
                  struct route_totals *out)
{
    memset(out, 0, sizeof(*out));
#define SUM(field) out->field += atomic_load_explicit(&c->field, memory_order_relaxed)
    for (int w = 0; w < t->n_workers; w++) {
        const struct route_counters *c = &rs->counters[w];
        for (int b = 0; b < 2; b++) {
            for (int k = 0; k < CODE_N; k++)
                SUM(requests[b][k]);
            for (int k = 0; k < INTR_N; k++)
                SUM(interrupted[b][k]);
            for (int k = 0; k < STATE_HIST_BUCKETS; k++)
                SUM(hist[b][k]);
            SUM(latency_us_sum[b]);
        }
        for (int k = 0; k < SHADOW_N; k++)
            SUM(shadow[k]);
        for (int k = 0; k < DIFF_KIND_N; k++)
            SUM(divergences[k]);
        SUM(comparisons);
        SUM(divergent);
        SUM(noise);
        SUM(fallbacks);
        SUM(acknowledged);
        SUM(guard_comparisons);
        SUM(guard_divergent);
    }
#undef SUM
}

void state_each(struct state_table *t, void (*fn)(struct route_state *rs, void *arg), void *arg)
{
    for (size_t i = 0; i < t->n; i++)
        fn(t->entries[i], arg);
}

static int describe_one(const char *name, const struct fleet_route *v, const char *last, void *arg)
{
    (void)last;
    struct buf *b = arg;
    buf_printf(b, "state override: route %s new_percent=%g", name, v->new_percent);
    if (v->shadow_percent >= 0)
        buf_printf(b, " shadow_percent=%g", v->shadow_percent);
    if (v->ramp_stopped)
        buf_puts(b, " ramp_stopped");
    if (v->n_acks > 0)
        buf_printf(b, " acknowledgements=%zu", v->n_acks);
    buf_puts(b, "\n");
    return 0;
}

int state_describe(const char *path, struct config_errors *errs, char **out)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "");
    int rc = parse_state(path, errs, NULL, describe_one, &b);
    if (rc != 0) {
        buf_dispose(&b);
        *out = NULL;
        return rc;
    }
    *out = b.data;
    return 0;
}

enum code_class state_code_class(int status)
{
    if (status >= 100 && status < 200)
        return CODE_1XX;
    if (status >= 200 && status < 300)
        return CODE_2XX;
    if (status >= 300 && status < 400)
        return CODE_3XX;
    if (status >= 400 && status < 500)
        return CODE_4XX;
    if (status >= 500 && status < 600)
        return CODE_5XX;
    return CODE_ERROR;
}

void state_count_request(struct route_counters *c, int backend_is_new, int status,
                         uint64_t latency_us)
{
    int b = backend_is_new ? 1 : 0;
    counter_add(&c->requests[b][state_code_class(status)], 1);
    double s = (double)latency_us / 1e6;
    int k = 0;
    while (k < STATE_HIST_BUCKETS - 1 && s > state_hist_bounds[k])
        k++;
    counter_add(&c->hist[b][k], 1);
    counter_add(&c->latency_us_sum[b], latency_us);
}
