#include "ficus/state.h"
#include "ficus/buf.h"
#include "ficus/common.h"
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
};

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

/* One route of a state file. shadow_percent is -1 when absent; last_rollback
 * is NULL when absent and lives as long as the parsed document. */
struct state_entry {
    double new_percent, shadow_percent;
    bool ramp_stopped; /* a rollback stopped the ramp: a restart must not resume it */
    const char *last_rollback;
};

/* Parses a state file's text into one call of fn per route. */
static int parse_state(const char *path, struct config_errors *errs,
                       int (*fn)(const char *name, const struct state_entry *e, void *arg),
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
    if (!json_is_object(root) || json_integer_value(json_object_get(root, "version")) != 1 ||
        !json_is_object(routes)) {
        config_errors_add(errs, "%s: not a ficus state file (want {\"version\":1,\"routes\":{}})",
                          path);
        rc = FICUS_ECONFIG;
    }
    const char *name;
    json_t *v;
    json_object_foreach(rc == 0 ? routes : NULL, name, v)
    {
        json_t *np = json_object_get(v, "new_percent");
        json_t *sp = json_object_get(v, "shadow_percent");
        json_t *stopped = json_object_get(v, "ramp_stopped");
        json_t *last = json_object_get(v, "last_rollback");
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
        struct state_entry e = {json_number_value(np), sp ? json_number_value(sp) : -1,
                                json_is_true(stopped), last ? json_string_value(last) : NULL};
        rc = fn(name, &e, arg);
        if (rc != 0)
            break;
    }
    json_decref(root);
    return rc;
}

static int apply_loaded(const char *name, const struct state_entry *e, void *arg)
{
    struct state_table *t = arg;
    struct route_state *rs = state_find(t, name);
    if (rs == NULL && (rs = state_add(t, name)) == NULL)
        return FICUS_ENOMEM;
    atomic_store(&rs->new_percent, e->new_percent);
    rs->ramp_stopped = e->ramp_stopped;
    if (e->last_rollback != NULL)
        snprintf(rs->last_rollback, sizeof(rs->last_rollback), "%s", e->last_rollback);
    if (e->shadow_percent >= 0)
        atomic_store(&rs->shadow_percent, e->shadow_percent);
    else
        atomic_store(&rs->shadow_percent, -1.0); /* filled from the config at bind */
    rs->overridden = true;
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
    return parse_state(t->path, errs, apply_loaded, t);
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
        if (rs->ramp_stopped)
            json_object_set_new(r, "ramp_stopped", json_true());
        if (rs->last_rollback[0] != '\0')
            json_object_set_new(r, "last_rollback", json_string(rs->last_rollback));
        json_object_set_new(routes, rs->name, r);
    }
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *root = json_pack("{s:i,s:s,s:o}", "version", 1, "updated", ts, "routes", routes);
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
    buf_dispose(&tmp);
    free(text);
    return rc;
}

int state_set(struct state_table *t, struct route_state *rs, double new_percent,
              double shadow_percent)
{
    double old_new = atomic_load(&rs->new_percent);
    double old_shadow = atomic_load(&rs->shadow_percent);
    bool old_over = rs->overridden;
    if (new_percent >= 0)
        atomic_store(&rs->new_percent, new_percent);
    if (shadow_percent >= 0)
        atomic_store(&rs->shadow_percent, shadow_percent);
    rs->overridden = true;
    int rc = state_save(t);
    if (rc != 0) {
        /* Not persisted: not applied either, so a restart shows what ran. */
        atomic_store(&rs->new_percent, old_new);
        atomic_store(&rs->shadow_percent, old_shadow);
        rs->overridden = old_over;
    }
    return rc;
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
    }
#undef SUM
}

void state_each(struct state_table *t, void (*fn)(struct route_state *rs, void *arg), void *arg)
{
    for (size_t i = 0; i < t->n; i++)
        fn(t->entries[i], arg);
}

static int describe_one(const char *name, const struct state_entry *e, void *arg)
{
    struct buf *b = arg;
    buf_printf(b, "state override: route %s new_percent=%g", name, e->new_percent);
    if (e->shadow_percent >= 0)
        buf_printf(b, " shadow_percent=%g", e->shadow_percent);
    if (e->ramp_stopped)
        buf_puts(b, " ramp_stopped");
    buf_puts(b, "\n");
    return 0;
}

int state_describe(const char *path, struct config_errors *errs, char **out)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "");
    int rc = parse_state(path, errs, describe_one, &b);
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

void state_rollback(struct state_table *t, struct route_state *rs, const char *reason,
                    const char *detail)
{
    rs->ramp_stopped = true;
    if (strcmp(reason, "guard") == 0)
        rs->rollbacks_guard++;
    else
        rs->rollbacks_manual++;
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(rs->last_rollback, sizeof(rs->last_rollback), "%s %s: %s", ts, reason, detail);
    /* The percentage drops even when the state file cannot be written. */
    if (state_set(t, rs, 0, -1) != 0) {
        atomic_store(&rs->new_percent, 0.0);
        rs->overridden = true;
    }
    log_warn("state", "rollback route=%s reason=%s detail=\"%s\"", rs->name, reason, detail);
}
