/* Endpoints: templates learnt from request paths, and windowed statistics per
 * endpoint (see endpoint.h for the rules).
 *
 * The learner is one trie per method. A node stands for a path prefix; its
 * children are literal segments, plus at most one "{id}" child that takes
 * every identifier-looking segment and, once the node has collapsed, every
 * segment but the literals it kept. An endpoint hangs on the node where a path
 * ends. Collapsing a node merges its other literal children (subtrees,
 * endpoints and their statistics) into the "{id}" child, recursively.
 *
 * Endpoint 0 is "other"; the configured templates come next, in their order;
 * learnt endpoints take any free id after them. */
#include "ficus/endpoint.h"
#include "ficus/common.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KINDS       (DIFF_ERROR + 1)
#define W           ENDPOINT_WINDOW_BUCKETS
#define METHOD_MAX  16 /* longer method names go to "other" */
#define METHODS_MAX 16 /* distinct methods with a trie; more go to "other" */

_Static_assert(KINDS == 7, "diff kinds: the statistics arrays follow enum diff_kind");

/* The route histogram's bounds (state.c), in milliseconds. */
static const double latency_bounds_ms[ENDPOINT_LATENCY_BUCKETS - 1] = {
    0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

/* ---- data ------------------------------------------------------------------------------- */

struct ep_node {
    struct ep_node *parent;
    char *key; /* the literal segment; NULL for an "{id}" child or a root */
    struct ep_node **kids;
    size_t n_kids, cap_kids;
    struct ep_node *var; /* the "{id}" child */
    uint64_t hits;       /* requests whose path went through this node */
    uint64_t unstored;   /* new values below that found no room (the node cap) */
    int ep;              /* the endpoint of paths ending here, -1: none */
    bool collapsed;      /* every new literal below goes to var */
    bool kept;           /* a literal kept when its parent collapsed */
};

/* One bucket of the window. */
struct ep_slot {
    int64_t epoch; /* now_ms / bucket_ms of what it holds; INT64_MIN: empty */
    uint32_t comparisons;
    uint32_t divergent;    /* with a counted difference */
    uint32_t acknowledged; /* with an acknowledged one */
    uint32_t noise;        /* with a noise one */
    uint32_t kinds[KINDS]; /* counted differences by kind, once per comparison */
    uint32_t errors[2];    /* legacy, new: failed or 5xx */
    uint32_t new_only_errors;
    uint32_t other_paths; /* distinct paths that found no entry */
    uint32_t other_pairs;
    uint32_t latency[2][ENDPOINT_LATENCY_BUCKETS];
};

enum item_class { CLASS_COUNTED, CLASS_ACKED, CLASS_NOISE, CLASS_N };

struct ep_path {
    char *path; /* normalised; NULL: a free entry */
    enum diff_kind kind;
    uint32_t count[CLASS_N][W]; /* comparisons, by the slot of the window */
};

struct ep_pair {
    bool used;
    int legacy, new_;
    uint32_t count[W];
};

struct ep {
    char *name;
    bool configured;
    struct ep_node *node; /* learnt: where it hangs */
    unsigned long long comparisons_total, divergent_total;
    struct ep_slot slots[W];
    struct ep_path paths[ENDPOINT_TOP_PATHS];
    struct ep_pair pairs[ENDPOINT_STATUS_PAIRS];
};

/* A configured template, split. */
struct ep_tpl {
    char *method;
    char **segs; /* NULL for a "{name}" segment */
    size_t n;
    int ep;
};

struct ep_root {
    char method[METHOD_MAX + 1];
    struct ep_node *node;
};

struct endpoint_table {
    char **templates; /* as configured, for endpoint_table_matches */
    size_t n_templates;
    int max_endpoints;
    int64_t window_ms, bucket_ms;
    unsigned warmup;

    struct ep_tpl *tpls;
    struct ep **eps; /* max_endpoints + 1 slots; [0] is "other" */
    size_t n_eps;    /* endpoints besides "other" */

    struct ep_root roots[METHODS_MAX];
    size_t n_roots;
    size_t n_nodes, max_nodes;
    /* Why requests went to "other", for the learner's JSON. */
    unsigned long long other_full, other_nodes, other_shape;
};

/* A request path cut into segments (pointing into the target). */
struct segs {
    struct span s[ENDPOINT_MAX_DEPTH];
    size_t n;
    bool ok; /* false: too deep, or not a path */
};

/* ---- small helpers ---------------------------------------------------------------------- */

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static bool is_method_char(char c)
{
    return (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
}

static bool valid_method(const char *m, size_t n)
{
    if (n == 0 || n > METHOD_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_method_char(m[i]))
            return false;
    return true;
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* 0 digit, 1 lower, 2 upper, 3 anything else. */
static int char_class(char c)
{
    return is_digit(c) ? 0 : (c >= 'a' && c <= 'z') ? 1 : (c >= 'A' && c <= 'Z') ? 2 : 3;
}

/* Does a path segment look like an identifier rather than a name? */
static bool looks_like_id(const char *s, size_t n)
{
    size_t digits = 0, letters = 0, hex = 0, transitions = 0;
    bool token = true;

    if (n == 0)
        return false;
    if (n > ENDPOINT_SEGMENT_MAX)
        return true;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        unsigned char u = (unsigned char)c;
        /* A byte no name is made of (not printable ASCII, a quote, a backslash,
         * a brace) never reaches an endpoint's name, its JSON or a label. */
        if (u <= ' ' || u >= 0x7f || c == '"' || c == '\\' || c == '{' || c == '}')
            return true;
        digits += is_digit(c);
        letters += is_alpha(c);
        hex += is_hex(c);
        if (!(is_digit(c) || is_alpha(c) || c == '_' || c == '-' || c == '=' || c == '+' ||
              c == '.' || c == '~'))
            token = false;
        if (i > 0 && char_class(c) != char_class(s[i - 1]))
            transitions++;
    }
    if (digits == n)
        return true; /* 42 */
    if (n == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-' && hex == 32)
        return true; /* a UUID */
    if (n < 16)
        return false;
    if (hex == n && digits > 0)
        return true; /* a hash or an object id */
    /* A random token (base64, base62) changes character class every few
     * characters; words and slugs do not ("notification-preferences"). */
    return token && digits >= 2 && letters >= 2 && transitions * 3 >= n;
}

/* Cuts the path out of a request target and splits it. */
static void split_target(const char *target, size_t len, struct segs *out)
{
    const char *p = target, *e = target + len;

    out->n = 0;
    out->ok = false;
    for (const char *q = p; q < e; q++) {
        if (*q == '?' || *q == '#') {
            e = q;
            break;
        }
    }
    if (p < e && *p != '/') {
        /* Absolute form: skip "scheme://authority". "*" and the like stay one segment. */
        const char *sep = NULL;
        for (const char *q = p; q + 2 < e && sep == NULL; q++)
            if (q[0] == ':' && q[1] == '/' && q[2] == '/')
                sep = q + 3;
        if (sep != NULL) {
            p = sep;
            while (p < e && *p != '/')
                p++;
            if (p == e) {
                out->s[0] = (struct span){p, 0};
                out->n = 1;
                out->ok = true;
                return;
            }
        } else {
            out->s[0] = (struct span){p, (size_t)(e - p)};
            out->n = 1;
            out->ok = true;
            return;
        }
    }
    if (p == e) { /* an empty target: "/" */
        out->s[0] = (struct span){p, 0};
        out->n = 1;
        out->ok = true;
        return;
    }
    p++; /* the leading '/' */
    for (;;) {
        const char *q = p;
        while (q < e && *q != '/')
            q++;
        if (out->n == ENDPOINT_MAX_DEPTH)
            return; /* too deep */
        out->s[out->n++] = (struct span){p, (size_t)(q - p)};
        if (q == e)
            break;
        p = q + 1;
    }
    out->ok = true;
}

/* ---- templates -------------------------------------------------------------------------- */

static bool is_placeholder(const char *s, size_t n)
{
    if (n < 3 || s[0] != '{' || s[n - 1] != '}')
        return false;
    for (size_t i = 1; i + 1 < n; i++)
        if (!(is_alpha(s[i]) || is_digit(s[i]) || s[i] == '_'))
            return false;
    return true;
}

const char *endpoint_template_problem(const char *text)
{
    const char *sp, *path;
    size_t depth = 0;

    if (text == NULL)
        return "must be a string \"METHOD /path\"";
    if (strlen(text) >= ENDPOINT_NAME_MAX)
        return "is too long";
    sp = strchr(text, ' ');
    if (sp == NULL || !valid_method(text, (size_t)(sp - text)))
        return "must be \"METHOD /path\" with an upper-case method, such as \"GET /posts/{id}\"";
    path = sp + 1;
    if (path[0] != '/')
        return "the path must start with \"/\"";
    for (const char *s = path + 1;;) {
        const char *e = s;
        while (*e != '\0' && *e != '/')
            e++;
        size_t n = (size_t)(e - s);
        if (++depth > ENDPOINT_MAX_DEPTH)
            return "has more than 16 path segments";
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c <= ' ' || c == '?' || c == '#' || c >= 0x7f)
                return "the path must not hold spaces, control characters, \"?\" or \"#\"";
        }
        if ((memchr(s, '{', n) != NULL || memchr(s, '}', n) != NULL) && !is_placeholder(s, n))
            return "a placeholder must be a whole segment, such as {id} (letters, digits, '_')";
        if (*e == '\0')
            break;
        s = e + 1;
    }
    return NULL;
}

static void tpl_dispose(struct ep_tpl *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->segs[i]);
    free(t->segs);
    free(t->method);
}

static int tpl_init(struct ep_tpl *t, const char *text)
{
    const char *sp = strchr(text, ' '), *s;

    memset(t, 0, sizeof *t);
    t->method = dupn(text, (size_t)(sp - text));
    t->segs = calloc(ENDPOINT_MAX_DEPTH, sizeof *t->segs);
    if (t->method == NULL || t->segs == NULL)
        return FICUS_ENOMEM;
    s = sp + 2; /* after " /" */
    for (;;) {
        const char *e = s;
        while (*e != '\0' && *e != '/')
            e++;
        size_t n = (size_t)(e - s);
        if (!is_placeholder(s, n)) {
            t->segs[t->n] = dupn(s, n);
            if (t->segs[t->n] == NULL)
                return FICUS_ENOMEM;
        }
        t->n++;
        if (*e == '\0')
            break;
        s = e + 1;
    }
    return 0;
}

static bool tpl_matches(const struct ep_tpl *t, const char *method, size_t mlen,
                        const struct segs *sg)
{
    if (strlen(t->method) != mlen || memcmp(t->method, method, mlen) != 0 || t->n != sg->n)
        return false;
    for (size_t i = 0; i < t->n; i++) {
        if (t->segs[i] == NULL) {
            if (sg->s[i].len == 0)
                return false; /* a placeholder stands for a non-empty segment */
        } else if (strlen(t->segs[i]) != sg->s[i].len ||
                   memcmp(t->segs[i], sg->s[i].p, sg->s[i].len) != 0) {
            return false;
        }
    }
    return true;
}

/* ---- endpoints -------------------------------------------------------------------------- */

static void slot_reset(struct ep *e, size_t idx, int64_t epoch)
{
    memset(&e->slots[idx], 0, sizeof e->slots[idx]);
    e->slots[idx].epoch = epoch;
    for (size_t i = 0; i < ENDPOINT_TOP_PATHS; i++)
        for (int c = 0; c < CLASS_N; c++)
            e->paths[i].count[c][idx] = 0;
    for (size_t i = 0; i < ENDPOINT_STATUS_PAIRS; i++)
        e->pairs[i].count[idx] = 0;
}

static struct ep *ep_new(const char *name, bool configured)
{
    struct ep *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->name = strdup(name);
    if (e->name == NULL) {
        free(e);
        return NULL;
    }
    e->configured = configured;
    for (size_t i = 0; i < W; i++)
        e->slots[i].epoch = INT64_MIN;
    return e;
}

static void ep_free(struct ep *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < ENDPOINT_TOP_PATHS; i++)
        free(e->paths[i].path);
    free(e->name);
    free(e);
}

static size_t slot_index(int64_t epoch)
{
    int64_t m = epoch % W;
    return (size_t)(m < 0 ? m + W : m);
}

/* The slot that counts what happens at epoch (reset when it held an older
 * bucket; a sample older than the slot's bucket counts in it anyway). */
static struct ep_slot *slot_at(struct ep *e, int64_t epoch)
{
    size_t idx = slot_index(epoch);
    if (e->slots[idx].epoch < epoch)
        slot_reset(e, idx, epoch);
    return &e->slots[idx];
}

static bool slot_in_window(const struct ep_slot *s, int64_t epoch)
{
    return s->epoch != INT64_MIN && s->epoch <= epoch && s->epoch > epoch - W;
}

static uint32_t path_window(const struct ep *e, const struct ep_path *p, int64_t epoch, int c)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < W; i++)
        if (slot_in_window(&e->slots[i], epoch))
            sum += p->count[c][i];
    return sum;
}

/* The entry for (kind, path): found, or a free one, or one with nothing in the
 * window (replaced); NULL when every entry is in use. */
static struct ep_path *path_entry(struct ep *e, enum diff_kind kind, const char *path,
                                  int64_t epoch)
{
    struct ep_path *free_entry = NULL, *idle = NULL;

    for (size_t i = 0; i < ENDPOINT_TOP_PATHS; i++) {
        struct ep_path *p = &e->paths[i];
        if (p->path == NULL) {
            if (free_entry == NULL)
                free_entry = p;
            continue;
        }
        if (p->kind == kind && strcmp(p->path, path) == 0)
            return p;
        if (idle == NULL && path_window(e, p, epoch, CLASS_COUNTED) == 0 &&
            path_window(e, p, epoch, CLASS_ACKED) == 0 &&
            path_window(e, p, epoch, CLASS_NOISE) == 0)
            idle = p;
    }
    struct ep_path *p = free_entry != NULL ? free_entry : idle;
    if (p == NULL)
        return NULL;
    char *copy = strdup(path);
    if (copy == NULL)
        return NULL;
    free(p->path);
    memset(p, 0, sizeof *p);
    p->path = copy;
    p->kind = kind;
    return p;
}

static struct ep_pair *pair_entry(struct ep *e, int legacy, int new_, int64_t epoch)
{
    struct ep_pair *idle = NULL;

    for (size_t i = 0; i < ENDPOINT_STATUS_PAIRS; i++) {
        struct ep_pair *p = &e->pairs[i];
        if (p->used && p->legacy == legacy && p->new_ == new_)
            return p;
    }
    for (size_t i = 0; i < ENDPOINT_STATUS_PAIRS && idle == NULL; i++) {
        struct ep_pair *p = &e->pairs[i];
        uint32_t sum = 0;
        for (size_t k = 0; k < W && p->used; k++)
            if (slot_in_window(&e->slots[k], epoch))
                sum += p->count[k];
        if (!p->used || sum == 0)
            idle = p;
    }
    if (idle != NULL) {
        memset(idle, 0, sizeof *idle);
        idle->used = true;
        idle->legacy = legacy;
        idle->new_ = new_;
    }
    return idle;
}

/* Adds what src counted into dst (a collapse folds src into dst). Buckets are
 * aligned by epoch; a src bucket older than dst's at the same index is out of
 * the window already and dropped. */
static void ep_merge(struct ep *dst, struct ep *src)
{
    dst->comparisons_total += src->comparisons_total;
    dst->divergent_total += src->divergent_total;
    for (size_t i = 0; i < W; i++) {
        struct ep_slot *s = &src->slots[i], *d = &dst->slots[i];
        if (s->epoch == INT64_MIN || s->epoch < d->epoch)
            continue;
        if (d->epoch < s->epoch)
            slot_reset(dst, i, s->epoch);
        d->comparisons += s->comparisons;
        d->divergent += s->divergent;
        d->acknowledged += s->acknowledged;
        d->noise += s->noise;
        for (int k = 0; k < KINDS; k++)
            d->kinds[k] += s->kinds[k];
        d->errors[0] += s->errors[0];
        d->errors[1] += s->errors[1];
        d->new_only_errors += s->new_only_errors;
        d->other_paths += s->other_paths;
        d->other_pairs += s->other_pairs;
        for (int side = 0; side < 2; side++)
            for (int k = 0; k < ENDPOINT_LATENCY_BUCKETS; k++)
                d->latency[side][k] += s->latency[side][k];
    }
    int64_t newest = INT64_MIN;
    for (size_t i = 0; i < W; i++)
        if (dst->slots[i].epoch > newest)
            newest = dst->slots[i].epoch;
    for (size_t i = 0; i < ENDPOINT_TOP_PATHS; i++) {
        const struct ep_path *sp = &src->paths[i];
        if (sp->path == NULL)
            continue;
        struct ep_path *dp = path_entry(dst, sp->kind, sp->path, newest);
        for (size_t k = 0; k < W; k++) {
            if (src->slots[k].epoch != dst->slots[k].epoch)
                continue; /* dropped above */
            for (int c = 0; c < CLASS_N; c++) {
                if (dp != NULL)
                    dp->count[c][k] += sp->count[c][k];
                else if (sp->count[c][k] > 0)
                    dst->slots[k].other_paths++;
            }
        }
    }
    for (size_t i = 0; i < ENDPOINT_STATUS_PAIRS; i++) {
        const struct ep_pair *sp = &src->pairs[i];
        if (!sp->used)
            continue;
        struct ep_pair *dp = pair_entry(dst, sp->legacy, sp->new_, newest);
        for (size_t k = 0; k < W; k++) {
            if (src->slots[k].epoch != dst->slots[k].epoch)
                continue;
            if (dp != NULL)
                dp->count[k] += sp->count[k];
            else
                dst->slots[k].other_pairs += sp->count[k];
        }
    }
}

/* ---- the learner ------------------------------------------------------------------------ */

static struct ep_node *node_new(struct endpoint_table *t, struct ep_node *parent, const char *key,
                                size_t key_len, bool force)
{
    struct ep_node *n;

    if (!force && t->n_nodes >= t->max_nodes)
        return NULL;
    n = calloc(1, sizeof *n);
    if (n == NULL)
        return NULL;
    if (key != NULL) {
        n->key = dupn(key, key_len);
        if (n->key == NULL) {
            free(n);
            return NULL;
        }
    }
    n->parent = parent;
    n->ep = -1;
    t->n_nodes++;
    return n;
}

static void node_free(struct endpoint_table *t, struct ep_node *n)
{
    free(n->key);
    free(n->kids);
    free(n);
    t->n_nodes--;
}

static void node_free_tree(struct endpoint_table *t, struct ep_node *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->n_kids; i++)
        node_free_tree(t, n->kids[i]);
    node_free_tree(t, n->var);
    node_free(t, n);
}

static int node_add_kid(struct ep_node *n, struct ep_node *kid)
{
    if (n->n_kids == n->cap_kids) {
        size_t cap = n->cap_kids ? n->cap_kids * 2 : 4;
        struct ep_node **k = realloc(n->kids, cap * sizeof *k);
        if (k == NULL)
            return FICUS_ENOMEM;
        n->kids = k;
        n->cap_kids = cap;
    }
    n->kids[n->n_kids++] = kid;
    kid->parent = n;
    return 0;
}

static struct ep_node *node_kid(const struct ep_node *n, const char *key, size_t len)
{
    for (size_t i = 0; i < n->n_kids; i++) {
        const char *k = n->kids[i]->key;
        if (strncmp(k, key, len) == 0 && k[len] == '\0')
            return n->kids[i];
    }
    return NULL;
}

/* The method a node's trie belongs to. */
static const char *node_method(const struct endpoint_table *t, const struct ep_node *n)
{
    while (n->parent != NULL)
        n = n->parent;
    for (size_t i = 0; i < t->n_roots; i++)
        if (t->roots[i].node == n)
            return t->roots[i].method;
    return "?";
}

/* "GET /a/{id}/b": the method, then the segments from the root down. */
static void node_name(const struct endpoint_table *t, const struct ep_node *n, char *out,
                      size_t size)
{
    const struct ep_node *chain[ENDPOINT_MAX_DEPTH + 1];
    size_t depth = 0, o;

    for (const struct ep_node *x = n; x->parent != NULL && depth < ARRAY_SIZE(chain); x = x->parent)
        chain[depth++] = x;
    o = (size_t)snprintf(out, size, "%s ", node_method(t, n));
    if (depth == 0 && o < size)
        o += (size_t)snprintf(out + o, size - o, "/");
    while (depth > 0 && o < size) {
        const struct ep_node *x = chain[--depth];
        o += (size_t)snprintf(out + o, size - o, "/%s", x->key != NULL ? x->key : "{id}");
    }
}

static void rename_tree(struct endpoint_table *t, struct ep_node *n)
{
    if (n == NULL)
        return;
    if (n->ep >= 0) {
        char name[ENDPOINT_NAME_MAX + 64];
        node_name(t, n, name, sizeof name);
        char *copy = strdup(name);
        if (copy != NULL) { /* out of memory: the old name stays, still unique */
            free(t->eps[n->ep]->name);
            t->eps[n->ep]->name = copy;
        }
    }
    for (size_t i = 0; i < n->n_kids; i++)
        rename_tree(t, n->kids[i]);
    rename_tree(t, n->var);
}

static void collapse(struct endpoint_table *t, struct ep_node *n);

static bool should_collapse(const struct ep_node *n)
{
    size_t rare = 0;

    if (n->collapsed)
        return false;
    /* A value that found no room is a new value all the same: counting it lets
     * a flood of paths that filled the node cap collapse and free the room. */
    if (n->n_kids + n->unstored > ENDPOINT_COLLAPSE_MAX)
        return true;
    /* Fewer values, or a young position (as many values as requests, which a
     * fixed set of names shows at first too): wait, a wrong collapse is final. */
    if (n->n_kids < ENDPOINT_COLLAPSE_MIN || n->hits < 4 * n->n_kids)
        return false;
    for (size_t i = 0; i < n->n_kids; i++)
        rare += n->kids[i]->hits <= 2;
    return rare * 4 >= n->n_kids * 3;
}

/* Is kid busy enough to stay literal when its parent collapses? */
static bool keeps_literal(const struct ep_node *parent, const struct ep_node *kid)
{
    return kid->hits >= ENDPOINT_KEEP_HITS && kid->hits * 64 >= parent->hits;
}

/* Folds src (a subtree) into dst and frees src. */
static void merge_into(struct endpoint_table *t, struct ep_node *dst, struct ep_node *src)
{
    dst->hits += src->hits;
    if (src->ep >= 0) {
        if (dst->ep >= 0) {
            ep_merge(t->eps[dst->ep], t->eps[src->ep]);
            ep_free(t->eps[src->ep]);
            t->eps[src->ep] = NULL;
            t->n_eps--;
        } else {
            dst->ep = src->ep;
            t->eps[dst->ep]->node = dst;
        }
    }
    if (src->var != NULL) {
        if (dst->var != NULL) {
            merge_into(t, dst->var, src->var);
        } else {
            dst->var = src->var;
            dst->var->parent = dst;
        }
    }
    for (size_t i = 0; i < src->n_kids; i++) {
        struct ep_node *k = src->kids[i], *same;
        if (dst->collapsed && dst->var != NULL) {
            /* Below a collapsed position only busy literals stay literal. */
            same = node_kid(dst, k->key, strlen(k->key));
            if (same == NULL && !keeps_literal(dst, k)) {
                merge_into(t, dst->var, k);
                continue;
            }
            k->kept = true;
        }
        same = node_kid(dst, k->key, strlen(k->key));
        if (same != NULL)
            merge_into(t, same, k);
        else if (node_add_kid(dst, k) != 0)
            node_free_tree(t, k); /* out of memory: the subtree's statistics are lost */
    }
    src->n_kids = 0;
    node_free(t, src);
    if (should_collapse(dst))
        collapse(t, dst);
}

/* Makes position n's children variable: the quiet literals fold into "{id}". */
static void collapse(struct endpoint_table *t, struct ep_node *n)
{
    size_t keep = 0;

    if (n->var == NULL) {
        n->var = node_new(t, n, NULL, 0, true); /* a collapse frees more than it takes */
        if (n->var == NULL)
            return; /* out of memory: try again at the next new value */
    }
    n->collapsed = true;
    for (size_t i = 0; i < n->n_kids; i++) {
        struct ep_node *k = n->kids[i];
        if (keeps_literal(n, k)) {
            k->kept = true;
            n->kids[keep++] = k;
        } else {
            merge_into(t, n->var, k);
        }
    }
    n->n_kids = keep;
    rename_tree(t, n->var);
}

static struct ep_node *root_for(struct endpoint_table *t, const char *method, size_t mlen,
                                bool create)
{
    for (size_t i = 0; i < t->n_roots; i++)
        if (strlen(t->roots[i].method) == mlen && memcmp(t->roots[i].method, method, mlen) == 0)
            return t->roots[i].node;
    if (!create || t->n_roots == METHODS_MAX)
        return NULL;
    struct ep_node *n = node_new(t, NULL, NULL, 0, false);
    if (n == NULL)
        return NULL;
    memcpy(t->roots[t->n_roots].method, method, mlen);
    t->roots[t->n_roots].method[mlen] = '\0';
    t->roots[t->n_roots].node = n;
    t->n_roots++;
    return n;
}

/* The child of n for segment s: the "{id}" child for an identifier or below a
 * collapsed node (unless a kept literal matches), else the literal child. */
static struct ep_node *child_for(struct endpoint_table *t, struct ep_node *n, struct span s,
                                 bool learn)
{
    struct ep_node *k;

    if (!looks_like_id(s.p, s.len)) {
        k = node_kid(n, s.p, s.len);
        if (k != NULL || n->collapsed)
            return k != NULL ? k : n->var;
        if (!learn)
            return NULL;
        k = node_new(t, n, s.p, s.len, false);
        if (k == NULL) {
            n->unstored++;
            if (should_collapse(n))
                collapse(t, n);
            return n->collapsed ? n->var : NULL;
        }
        if (node_add_kid(n, k) != 0) {
            node_free(t, k);
            return NULL;
        }
        /* The check counts the new value as seen once; the caller counts the
         * hit for real on whatever node takes it. */
        k->hits++;
        if (should_collapse(n)) {
            collapse(t, n);
            if (n->collapsed) { /* k, with its one hit, was folded into n->var */
                n->var->hits--;
                return n->var;
            }
        }
        k->hits--;
        return k;
    }
    if (n->var == NULL && learn)
        n->var = node_new(t, n, NULL, 0, false);
    if (n->var == NULL && learn)
        n->unstored++;
    return n->var;
}

static int first_free_id(const struct endpoint_table *t)
{
    for (int i = 1; i <= t->max_endpoints; i++)
        if (t->eps[i] == NULL)
            return i;
    return -1;
}

/* ---- the table -------------------------------------------------------------------------- */

struct endpoint_table *endpoint_table_new(const struct endpoint_config *cfg)
{
    struct endpoint_table *t;

    if (cfg == NULL || cfg->max_endpoints < 1 || cfg->max_endpoints > ENDPOINT_MAX_LIMIT ||
        cfg->n_templates > (size_t)cfg->max_endpoints || cfg->window_ms <= 0)
        return NULL;
    for (size_t i = 0; i < cfg->n_templates; i++)
        if (endpoint_template_problem(cfg->templates[i]) != NULL)
            return NULL;
    t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->max_endpoints = cfg->max_endpoints;
    t->window_ms = cfg->window_ms;
    t->bucket_ms = cfg->window_ms / W > 0 ? cfg->window_ms / W : 1;
    t->warmup = cfg->warmup;
    t->max_nodes = (size_t)ENDPOINT_NODES_PER_ENDPOINT * (size_t)cfg->max_endpoints + 64;
    t->eps = calloc((size_t)cfg->max_endpoints + 1, sizeof *t->eps);
    t->templates = calloc(cfg->n_templates ? cfg->n_templates : 1, sizeof *t->templates);
    t->tpls = calloc(cfg->n_templates ? cfg->n_templates : 1, sizeof *t->tpls);
    if (t->eps == NULL || t->templates == NULL || t->tpls == NULL)
        goto fail;
    t->eps[0] = ep_new(ENDPOINT_OTHER, false);
    if (t->eps[0] == NULL)
        goto fail;
    for (size_t i = 0; i < cfg->n_templates; i++) {
        t->templates[i] = strdup(cfg->templates[i]);
        t->n_templates++;
        if (t->templates[i] == NULL || tpl_init(&t->tpls[i], cfg->templates[i]) != 0)
            goto fail;
        t->tpls[i].ep = (int)i + 1;
        t->eps[i + 1] = ep_new(cfg->templates[i], true);
        if (t->eps[i + 1] == NULL)
            goto fail;
        t->n_eps++;
    }
    return t;
fail:
    endpoint_table_free(t);
    return NULL;
}

void endpoint_table_free(struct endpoint_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n_roots; i++)
        node_free_tree(t, t->roots[i].node);
    if (t->eps != NULL)
        for (int i = 0; i <= t->max_endpoints; i++)
            ep_free(t->eps[i]);
    for (size_t i = 0; i < t->n_templates; i++) {
        free(t->templates[i]);
        if (t->tpls != NULL)
            tpl_dispose(&t->tpls[i]);
    }
    free(t->templates);
    free(t->tpls);
    free(t->eps);
    free(t);
}

bool endpoint_table_matches(const struct endpoint_table *t, const struct endpoint_config *cfg)
{
    if (t == NULL || cfg == NULL || t->max_endpoints != cfg->max_endpoints ||
        t->window_ms != cfg->window_ms || t->warmup != cfg->warmup ||
        t->n_templates != cfg->n_templates)
        return false;
    for (size_t i = 0; i < t->n_templates; i++)
        if (strcmp(t->templates[i], cfg->templates[i]) != 0)
            return false;
    return true;
}

/* The configured template the request matches, or -1. */
static int match_configured(const struct endpoint_table *t, const char *method, size_t mlen,
                            const struct segs *sg)
{
    for (size_t i = 0; i < t->n_templates; i++)
        if (tpl_matches(&t->tpls[i], method, mlen, sg))
            return t->tpls[i].ep;
    return -1;
}

int endpoint_classify(struct endpoint_table *t, const char *method, size_t method_len,
                      const char *target, size_t target_len)
{
    struct segs sg;
    struct ep_node *n;
    int id;

    split_target(target, target_len, &sg);
    if (!valid_method(method, method_len) || !sg.ok) {
        t->other_shape++;
        return 0;
    }
    id = match_configured(t, method, method_len, &sg);
    if (id >= 0)
        return id;
    n = root_for(t, method, method_len, true);
    if (n == NULL) {
        t->other_nodes++;
        return 0;
    }
    n->hits++;
    for (size_t i = 0; i < sg.n; i++) {
        n = child_for(t, n, sg.s[i], true);
        if (n == NULL) {
            t->other_nodes++;
            return 0;
        }
        n->hits++;
    }
    if (n->ep >= 0)
        return n->ep;
    id = first_free_id(t);
    if (id < 0) {
        t->other_full++;
        return 0;
    }
    char name[ENDPOINT_NAME_MAX + 64];
    node_name(t, n, name, sizeof name);
    t->eps[id] = ep_new(name, false);
    if (t->eps[id] == NULL)
        return 0;
    t->eps[id]->node = n;
    n->ep = id;
    t->n_eps++;
    return id;
}

int endpoint_find(const struct endpoint_table *t, const char *method, size_t method_len,
                  const char *target, size_t target_len)
{
    struct segs sg;
    struct ep_node *n;
    int id;

    split_target(target, target_len, &sg);
    if (!valid_method(method, method_len) || !sg.ok)
        return 0;
    id = match_configured(t, method, method_len, &sg);
    if (id >= 0)
        return id;
    n = root_for((struct endpoint_table *)t, method, method_len, false);
    for (size_t i = 0; i < sg.n && n != NULL; i++)
        n = child_for((struct endpoint_table *)t, n, sg.s[i], false);
    if (n != NULL && n->ep >= 0)
        return n->ep;
    /* classify would make a new endpoint, or count it on "other" when full. */
    return first_free_id(t) < 0 ? 0 : ENDPOINT_NEW;
}

static const struct ep *ep_get(const struct endpoint_table *t, int id)
{
    if (t == NULL || id < 0 || id > t->max_endpoints)
        return NULL;
    return t->eps[id];
}

const char *endpoint_name(const struct endpoint_table *t, int id)
{
    const struct ep *e = ep_get(t, id);
    return e != NULL ? e->name : NULL;
}

bool endpoint_warming_up(const struct endpoint_table *t, int id)
{
    const struct ep *e;

    if (t == NULL || t->warmup == 0)
        return false;
    if (id == ENDPOINT_NEW)
        return true;
    e = ep_get(t, id);
    return e != NULL && e->comparisons_total < t->warmup;
}

/* ---- recording -------------------------------------------------------------------------- */

bool endpoint_ack_matches(const struct endpoint_ack *ack, const char *endpoint, const char *kind,
                          const char *path)
{
    if (ack == NULL || ack->path == NULL)
        return false;
    if (ack->endpoint != NULL && ack->endpoint[0] != '\0' &&
        (endpoint == NULL || strcmp(ack->endpoint, endpoint) != 0))
        return false;
    if (ack->kind != NULL && ack->kind[0] != '\0' && (kind == NULL || strcmp(ack->kind, kind) != 0))
        return false;
    if (kind != NULL && strcmp(kind, "body") == 0)
        /* A body difference is one thing, whatever its offset: any path of an
         * acknowledgement of kind body (the API wants one) covers it. */
        return (ack->kind != NULL && strcmp(ack->kind, "body") == 0) || ack->path[0] == '\0' ||
               strcmp(ack->path, "body") == 0;
    return diff_pointer_match(ack->path, path != NULL ? path : "");
}

static int side_failed(int status, const char *error)
{
    return error != NULL || status <= 0 || status >= 500;
}

static size_t latency_bucket(double ms)
{
    size_t k = 0;
    while (k < ENDPOINT_LATENCY_BUCKETS - 1 && ms > latency_bounds_ms[k])
        k++;
    return k;
}

/* One distinct (kind, normalised path) of a comparison and its class. */
struct seen {
    enum diff_kind kind;
    char path[ENDPOINT_PATH_MAX + 1];
    bool too_long;
    int cls;
};

void endpoint_record(struct endpoint_table *t, int id, const struct endpoint_sample *s,
                     const struct endpoint_ack *acks, size_t n_acks, int64_t now_ms)
{
    struct ep *e;
    struct ep_slot *slot;
    int64_t epoch;
    struct seen seen[DIFF_MAX_ITEMS];
    size_t n_seen = 0;
    bool overflow = false;
    bool any[CLASS_N] = {false, false, false}, kind_seen[KINDS] = {false};
    bool lf, nf;

    if (t == NULL || s == NULL)
        return;
    e = (struct ep *)ep_get(t, id);
    if (e == NULL)
        e = t->eps[0];
    /* The warm-up's comparisons teach noise: their differences were judged
     * before it was known, so they stay out of the window and the totals'
     * divergences (as out of the guard's counts). */
    if (t->warmup > 0 && e->comparisons_total < t->warmup) {
        e->comparisons_total++;
        return;
    }
    epoch = now_ms / t->bucket_ms;
    slot = slot_at(e, epoch);
    slot->comparisons++;
    e->comparisons_total++;

    lf = side_failed(s->legacy_status, s->legacy_error);
    nf = side_failed(s->new_status, s->new_error);
    slot->errors[0] += lf;
    slot->errors[1] += nf;
    slot->new_only_errors += nf && !lf;
    if (s->legacy_ms >= 0)
        slot->latency[0][latency_bucket(s->legacy_ms)]++;
    if (s->new_ms >= 0)
        slot->latency[1][latency_bucket(s->new_ms)]++;
    struct ep_pair *pair = pair_entry(e, s->legacy_status, s->new_status, epoch);
    if (pair != NULL)
        pair->count[slot_index(slot->epoch)]++;
    else
        slot->other_pairs++;

    for (size_t i = 0; i < s->n_items; i++) {
        const struct endpoint_item *it = &s->items[i];
        const char *kind = diff_kind_name(it->kind);
        const char *raw = it->kind == DIFF_BODY ? "" : it->path != NULL ? it->path : "";
        int cls = CLASS_COUNTED;
        struct seen cur;

        if ((int)it->kind < 0 || it->kind >= KINDS)
            continue;
        if (it->noise) {
            cls = CLASS_NOISE;
        } else {
            for (size_t a = 0; a < n_acks; a++) {
                if (endpoint_ack_matches(&acks[a], e->name, kind, raw)) {
                    cls = CLASS_ACKED;
                    break;
                }
            }
        }
        cur.kind = it->kind;
        cur.too_long = strlen(raw) > ENDPOINT_PATH_MAX;
        cur.cls = cls;
        diff_normalize_path(raw, cur.path, sizeof cur.path);
        any[cls] = true;
        if (cls == CLASS_COUNTED)
            kind_seen[it->kind] = true;
        size_t j = 0;
        while (j < n_seen && !(seen[j].kind == cur.kind && strcmp(seen[j].path, cur.path) == 0))
            j++;
        if (j < n_seen) {
            if (cls < seen[j].cls)
                seen[j].cls = cls; /* counted wins over acknowledged, which wins over noise */
        } else if (n_seen < ARRAY_SIZE(seen)) {
            seen[n_seen++] = cur;
        } else {
            overflow = true;
        }
    }
    slot->other_paths += overflow;
    if (any[CLASS_COUNTED]) {
        slot->divergent++;
        e->divergent_total++;
    }
    slot->acknowledged += any[CLASS_ACKED];
    slot->noise += any[CLASS_NOISE];
    for (int k = 0; k < KINDS; k++)
        slot->kinds[k] += kind_seen[k];
    for (size_t j = 0; j < n_seen; j++) {
        struct ep_path *p =
            seen[j].too_long ? NULL : path_entry(e, seen[j].kind, seen[j].path, epoch);
        if (p != NULL)
            p->count[seen[j].cls][slot_index(slot->epoch)]++;
        else
            slot->other_paths++;
    }
}

/* ---- reading ---------------------------------------------------------------------------- */

/* An endpoint's window summed up. */
struct ep_window {
    unsigned long long comparisons, divergent, acknowledged, noise, kinds[KINDS], errors[2],
        new_only_errors, other_paths, other_pairs;
    unsigned long long latency[2][ENDPOINT_LATENCY_BUCKETS];
};

static void ep_window(const struct endpoint_table *t, const struct ep *e, int64_t now_ms,
                      struct ep_window *w)
{
    int64_t epoch = now_ms / t->bucket_ms;

    memset(w, 0, sizeof *w);
    for (size_t i = 0; i < W; i++) {
        const struct ep_slot *s = &e->slots[i];
        if (!slot_in_window(s, epoch))
            continue;
        w->comparisons += s->comparisons;
        w->divergent += s->divergent;
        w->acknowledged += s->acknowledged;
        w->noise += s->noise;
        for (int k = 0; k < KINDS; k++)
            w->kinds[k] += s->kinds[k];
        w->errors[0] += s->errors[0];
        w->errors[1] += s->errors[1];
        w->new_only_errors += s->new_only_errors;
        w->other_paths += s->other_paths;
        w->other_pairs += s->other_pairs;
        for (int side = 0; side < 2; side++)
            for (int k = 0; k < ENDPOINT_LATENCY_BUCKETS; k++)
                w->latency[side][k] += s->latency[side][k];
    }
}

static double share(unsigned long long part, unsigned long long whole)
{
    return whole ? (double)part / (double)whole : 0.0;
}

/* The q-quantile (0..1) in milliseconds, linear inside a bucket; -1 when empty. */
static double quantile_ms(const unsigned long long *hist, double q)
{
    unsigned long long total = 0;
    double want, seen = 0;

    for (int k = 0; k < ENDPOINT_LATENCY_BUCKETS; k++)
        total += hist[k];
    if (total == 0)
        return -1;
    want = q * (double)total;
    for (int k = 0; k < ENDPOINT_LATENCY_BUCKETS; k++) {
        if (seen + (double)hist[k] >= want && hist[k] > 0) {
            double lo = k == 0 ? 0 : latency_bounds_ms[k - 1];
            double hi = k < ENDPOINT_LATENCY_BUCKETS - 1 ? latency_bounds_ms[k] : lo * 2;
            return lo + (hi - lo) * ((want - seen) / (double)hist[k]);
        }
        seen += (double)hist[k];
    }
    return latency_bounds_ms[ENDPOINT_LATENCY_BUCKETS - 2];
}

/* The path entry with the most counted comparisons in the window, or NULL. */
static const struct ep_path *top_counted(const struct ep *e, int64_t epoch, uint32_t *count)
{
    const struct ep_path *best = NULL;
    *count = 0;
    for (size_t i = 0; i < ENDPOINT_TOP_PATHS; i++) {
        const struct ep_path *p = &e->paths[i];
        uint32_t c = p->path != NULL ? path_window(e, p, epoch, CLASS_COUNTED) : 0;
        if (c > *count) {
            *count = c;
            best = p;
        }
    }
    return best;
}

const char *endpoint_readiness_name(enum endpoint_readiness r)
{
    switch (r) {
    case ENDPOINT_NOT_ENOUGH_DATA:
        return "not enough data";
    case ENDPOINT_READY:
        return "ready";
    case ENDPOINT_DIVERGING:
        return "diverging";
    }
    return "unknown";
}

void endpoint_verdict(const struct endpoint_table *t, int id, const struct endpoint_limits *lim,
                      int64_t now_ms, struct endpoint_verdict *out)
{
    const struct ep *e = ep_get(t, id);
    struct ep_window w;
    int64_t epoch;

    memset(out, 0, sizeof *out);
    out->readiness = ENDPOINT_NOT_ENOUGH_DATA;
    if (e == NULL || lim == NULL) {
        snprintf(out->reason, sizeof out->reason, "no such endpoint");
        return;
    }
    epoch = now_ms / t->bucket_ms;
    ep_window(t, e, now_ms, &w);
    out->comparisons = w.comparisons;
    out->divergent = w.divergent;
    out->new_errors = w.new_only_errors;
    if (t->warmup > 0 && e->comparisons_total < t->warmup) {
        snprintf(out->reason, sizeof out->reason, "warming up: %llu of %u comparisons",
                 e->comparisons_total, t->warmup);
        return;
    }
    if (w.comparisons < lim->min_comparisons || w.comparisons == 0) {
        snprintf(out->reason, sizeof out->reason, "%llu of %u comparisons in the window",
                 w.comparisons, lim->min_comparisons);
        return;
    }
    double rate = share(w.divergent, w.comparisons);
    if (rate > lim->max_divergence_rate) {
        uint32_t c;
        const struct ep_path *p = top_counted(e, epoch, &c);
        out->readiness = ENDPOINT_DIVERGING;
        if (p != NULL)
            snprintf(out->reason, sizeof out->reason,
                     "%s %s differs in %.1f%% of comparisons (%.1f%% diverge, limit %.1f%%)",
                     diff_kind_name(p->kind), p->kind == DIFF_BODY ? "body" : p->path,
                     100.0 * share(c, w.comparisons), 100.0 * rate,
                     100.0 * lim->max_divergence_rate);
        else
            snprintf(out->reason, sizeof out->reason,
                     "%.1f%% of comparisons diverge (limit %.1f%%)", 100.0 * rate,
                     100.0 * lim->max_divergence_rate);
        return;
    }
    double err = share(w.new_only_errors, w.comparisons);
    if (err > lim->max_error_rate) {
        out->readiness = ENDPOINT_DIVERGING;
        snprintf(out->reason, sizeof out->reason,
                 "new fails where legacy does not in %.1f%% of comparisons (limit %.1f%%)",
                 100.0 * err, 100.0 * lim->max_error_rate);
        return;
    }
    out->readiness = ENDPOINT_READY;
    snprintf(out->reason, sizeof out->reason, "%llu comparisons, %.1f%% diverge (limit %.1f%%)",
             w.comparisons, 100.0 * rate, 100.0 * lim->max_divergence_rate);
}

/* ---- JSON ------------------------------------------------------------------------------- */

static json_t *latency_json(const unsigned long long *hist)
{
    double p50 = quantile_ms(hist, 0.5), p99 = quantile_ms(hist, 0.99);
    return json_pack("{s:o,s:o}", "p50", p50 < 0 ? json_null() : json_real(p50), "p99",
                     p99 < 0 ? json_null() : json_real(p99));
}

struct path_row {
    const struct ep_path *p;
    uint32_t count[CLASS_N];
};

static int by_counts(const void *a, const void *b)
{
    const struct path_row *x = a, *y = b;
    for (int c = 0; c < CLASS_N; c++)
        if (x->count[c] != y->count[c])
            return x->count[c] < y->count[c] ? 1 : -1;
    return strcmp(x->p->path, y->p->path);
}

static json_t *ep_json(const struct endpoint_table *t, int id, const struct endpoint_limits *lim,
                       int64_t now_ms)
{
    const struct ep *e = t->eps[id];
    int64_t epoch = now_ms / t->bucket_ms;
    struct ep_window w;
    struct endpoint_verdict v;
    struct path_row rows[ENDPOINT_TOP_PATHS];
    size_t n_rows = 0;
    const char *space = strchr(e->name, ' ');
    json_t *j, *kinds = json_object(), *paths = json_array(), *pairs = json_array();

    ep_window(t, e, now_ms, &w);
    endpoint_verdict(t, id, lim, now_ms, &v);
    for (int k = 0; k < KINDS; k++)
        if (w.kinds[k] > 0)
            json_object_set_new(kinds, diff_kind_name((enum diff_kind)k),
                                json_integer((json_int_t)w.kinds[k]));
    for (size_t i = 0; i < ENDPOINT_TOP_PATHS; i++) {
        const struct ep_path *p = &e->paths[i];
        struct path_row r = {.p = p};
        bool any = false;
        if (p->path == NULL)
            continue;
        for (int c = 0; c < CLASS_N; c++) {
            r.count[c] = path_window(e, p, epoch, c);
            any = any || r.count[c] > 0;
        }
        if (any)
            rows[n_rows++] = r;
    }
    qsort(rows, n_rows, sizeof rows[0], by_counts);
    for (size_t i = 0; i < n_rows; i++) {
        const struct path_row *r = &rows[i];
        json_array_append_new(paths, json_pack("{s:s,s:s,s:I,s:f,s:I,s:I}", "kind",
                                               diff_kind_name(r->p->kind), "path", r->p->path,
                                               "count", (json_int_t)r->count[CLASS_COUNTED], "rate",
                                               share(r->count[CLASS_COUNTED], w.comparisons),
                                               "acknowledged", (json_int_t)r->count[CLASS_ACKED],
                                               "noise", (json_int_t)r->count[CLASS_NOISE]));
    }
    for (size_t i = 0; i < ENDPOINT_STATUS_PAIRS; i++) {
        const struct ep_pair *p = &e->pairs[i];
        uint32_t c = 0;
        if (!p->used)
            continue;
        for (size_t k = 0; k < W; k++)
            if (slot_in_window(&e->slots[k], epoch))
                c += p->count[k];
        if (c > 0)
            json_array_append_new(pairs, json_pack("{s:i,s:i,s:I}", "legacy", p->legacy, "new",
                                                   p->new_, "count", (json_int_t)c));
    }
    j = json_pack(
        "{s:s,s:s%,s:s,s:s,s:I,s:I,s:f,s:I,s:I,s:I,s:I,s:b,s:o,s:o,s:I,s:o,s:I,"
        "s:{s:o,s:o},s:{s:I,s:I,s:I},s:f,s:s,s:s}",
        "endpoint", e->name, "method", e->name, space != NULL ? (size_t)(space - e->name) : 0,
        "template", space != NULL ? space + 1 : "", "source",
        id == 0         ? "other"
        : e->configured ? "configured"
                        : "learnt",
        "comparisons", (json_int_t)w.comparisons, "divergent", (json_int_t)w.divergent,
        "divergence_rate", share(w.divergent, w.comparisons), "acknowledged",
        (json_int_t)w.acknowledged, "noise", (json_int_t)w.noise, "comparisons_total",
        (json_int_t)e->comparisons_total, "divergent_total", (json_int_t)e->divergent_total,
        "warming_up", t->warmup > 0 && e->comparisons_total < t->warmup, "kinds", kinds,
        "top_paths", paths, "other_paths", (json_int_t)w.other_paths, "status_pairs", pairs,
        "other_status_pairs", (json_int_t)w.other_pairs, "latency_ms", "legacy",
        latency_json(w.latency[0]), "new", latency_json(w.latency[1]), "errors", "legacy",
        (json_int_t)w.errors[0], "new", (json_int_t)w.errors[1], "new_only",
        (json_int_t)w.new_only_errors, "error_rate", share(w.new_only_errors, w.comparisons),
        "verdict", endpoint_readiness_name(v.readiness), "reason", v.reason);
    return j;
}

struct ep_order {
    int id;
    unsigned long long comparisons;
    const char *name;
};

static int by_comparisons(const void *a, const void *b)
{
    const struct ep_order *x = a, *y = b;
    if (x->comparisons != y->comparisons)
        return x->comparisons < y->comparisons ? 1 : -1;
    return strcmp(x->name, y->name);
}

json_t *endpoint_table_json(const struct endpoint_table *t, const struct endpoint_limits *lim,
                            int64_t now_ms)
{
    struct ep_order *order;
    size_t n = 0;
    json_t *arr, *out;

    if (t == NULL || lim == NULL)
        return NULL;
    order = calloc((size_t)t->max_endpoints + 1, sizeof *order);
    arr = json_array();
    if (order == NULL || arr == NULL) {
        free(order);
        json_decref(arr);
        return NULL;
    }
    for (int i = 0; i <= t->max_endpoints; i++) {
        struct ep_window w;
        if (t->eps[i] == NULL)
            continue;
        ep_window(t, t->eps[i], now_ms, &w);
        order[n++] = (struct ep_order){i, w.comparisons, t->eps[i]->name};
    }
    qsort(order, n, sizeof *order, by_comparisons);
    for (size_t i = 0; i < n; i++) {
        json_t *e = ep_json(t, order[i].id, lim, now_ms);
        if (e != NULL)
            json_array_append_new(arr, e);
    }
    free(order);
    out = json_pack("{s:I,s:i,s:i,s:o,s:{s:I,s:I,s:I,s:I,s:I}}", "window_ms",
                    (json_int_t)t->window_ms, "max_endpoints", t->max_endpoints, "warmup",
                    (int)t->warmup, "endpoints", arr, "learner", "nodes", (json_int_t)t->n_nodes,
                    "max_nodes", (json_int_t)t->max_nodes, "other_full", (json_int_t)t->other_full,
                    "other_nodes", (json_int_t)t->other_nodes, "other_shape",
                    (json_int_t)t->other_shape);
    return out;
}

void endpoint_table_each(const struct endpoint_table *t,
                         void (*fn)(const char *endpoint, unsigned long long comparisons,
                                    unsigned long long divergent, void *arg),
                         void *arg)
{
    if (t == NULL || fn == NULL)
        return;
    for (int i = 0; i <= t->max_endpoints; i++)
        if (t->eps[i] != NULL)
            fn(t->eps[i]->name, t->eps[i]->comparisons_total, t->eps[i]->divergent_total, arg);
}
