/* Redaction of record texts (see redact.h for what each function hides).
 *
 * Secrets are kept longest first, so that a whole header value is masked
 * before a part of it could match. Masking is a scan that tries every secret
 * at every position whose first byte some secret starts with; texts are short
 * (excerpts are capped) and secrets few. */
#include "ficus/redact.h"
#include "ficus/diff.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define REDACT_JSON "\"" REDACT_TEXT "\""

/* ---- secrets ---------------------------------------------------------------------------- */

void redact_secrets_init(struct redact_secrets *rs)
{
    rs->n = 0;
    rs->overflow = false;
    arena_init(&rs->arena);
}

void redact_secrets_dispose(struct redact_secrets *rs)
{
    if (rs == NULL)
        return;
    arena_dispose(&rs->arena);
    rs->n = 0;
    rs->overflow = false;
}

/* Keeps a copy of s (not yet kept), longest first. */
static int keep(struct redact_secrets *rs, const char *s, size_t n)
{
    size_t at;
    char *copy;

    for (size_t i = 0; i < rs->n; i++)
        if (rs->s[i].len == n && memcmp(rs->s[i].p, s, n) == 0)
            return 0;
    if (rs->n == REDACT_MAX_SECRETS) {
        rs->overflow = true;
        return 0;
    }
    copy = arena_strndup(&rs->arena, s, n);
    if (copy == NULL) {
        rs->overflow = true;
        return FICUS_ENOMEM;
    }
    at = rs->n;
    while (at > 0 && rs->s[at - 1].len < n) {
        rs->s[at] = rs->s[at - 1];
        at--;
    }
    rs->s[at] = (struct span){copy, n};
    rs->n++;
    return 0;
}

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/* The secret, and the forms a backend may echo it in. */
static int keep_forms(struct redact_secrets *rs, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    struct buf b;
    int rc = keep(rs, s, n);

    buf_init(&b, 0);
    /* JSON-escaped as jansson and most encoders write it, then with "\/". */
    if (rc == 0 && buf_json_string(&b, s, n) == 0 && b.len >= 2) {
        rc = keep(rs, b.data + 1, b.len - 2);
        if (rc == 0 && memchr(s, '/', n) != NULL) {
            struct buf sol;
            buf_init(&sol, 0);
            for (size_t i = 1; i + 1 < b.len && rc == 0; i++)
                rc =
                    b.data[i] == '/' ? buf_append(&sol, "\\/", 2) : buf_append(&sol, &b.data[i], 1);
            if (rc == 0)
                rc = keep(rs, sol.data, sol.len);
            buf_dispose(&sol);
        }
    }
    /* Percent-encoded, as in a URL a backend builds from it. */
    buf_reset(&b);
    for (size_t i = 0; i < n && rc == 0; i++) {
        unsigned char c = (unsigned char)s[i];
        char pct[3] = {'%', hex[c >> 4], hex[c & 15]};
        rc = unreserved(c) ? buf_append(&b, &s[i], 1) : buf_append(&b, pct, 3);
    }
    if (rc == 0 && b.len != n)
        rc = keep(rs, b.data, b.len);
    buf_dispose(&b);
    if (rc != 0)
        rs->overflow = true;
    return rc;
}

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

int redact_secrets_add(struct redact_secrets *rs, const char *name, size_t name_len,
                       const char *value, size_t value_len)
{
    int rc = 0;
    bool cookie = (name_len == 6 && strncasecmp(name, "cookie", 6) == 0) ||
                  (name_len == 10 && strncasecmp(name, "set-cookie", 10) == 0);

    trim(&value, &value_len);
    if (value_len >= REDACT_MIN_VALUE)
        rc = keep_forms(rs, value, value_len);
    if (rc != 0)
        return rc;
    if (cookie) {
        /* "a=1; session=abc...": each value on its own. */
        const char *p = value, *e = value + value_len;
        while (p < e && rc == 0) {
            const char *semi = memchr(p, ';', (size_t)(e - p));
            const char *end = semi != NULL ? semi : e;
            const char *eq = memchr(p, '=', (size_t)(end - p));
            if (eq != NULL) {
                const char *v = eq + 1;
                size_t n = (size_t)(end - v);
                trim(&v, &n);
                if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
                    v++;
                    n -= 2;
                }
                if (n >= REDACT_MIN_PART)
                    rc = keep_forms(rs, v, n);
            }
            p = end + 1;
        }
        return rc;
    }
    /* "Bearer abc", "Basic dXNlcjpwYXNz": the credentials after the scheme. */
    const char *sp = memchr(value, ' ', value_len);
    if (sp != NULL) {
        const char *v = sp + 1;
        size_t n = value_len - (size_t)(v - value);
        trim(&v, &n);
        if (n >= REDACT_MIN_PART)
            rc = keep_forms(rs, v, n);
    }
    return rc;
}

/* ---- masking ---------------------------------------------------------------------------- */

static bool has_secrets(const struct redact *r)
{
    return r != NULL && r->secrets != NULL && (r->secrets->n > 0 || r->secrets->overflow);
}

static bool overflowed(const struct redact *r)
{
    return r != NULL && r->secrets != NULL && r->secrets->overflow;
}

bool redact_active(const struct redact *r)
{
    return r != NULL && (r->n_json > 0 || has_secrets(r));
}

/* The length of the secret starting at text[i] (looked for in all avail
 * bytes), or 0. */
static size_t secret_at(const struct redact_secrets *rs, const char *text, size_t avail, size_t i)
{
    for (size_t k = 0; k < rs->n; k++) {
        const struct span *s = &rs->s[k];
        if (s->len <= avail - i && s->p[0] == text[i] && memcmp(s->p, text + i, s->len) == 0)
            return s->len;
    }
    return 0;
}

/* Appends text[0..n) with every secret masked. A secret starting before n is
 * matched against all avail bytes, so one that a cut at n would split is
 * masked whole. Stops once out holds out_max bytes more than before (it may
 * then hold a little more: the caller cuts); SIZE_MAX: no limit. */
static int mask_into(struct buf *out, const struct redact *r, const char *text, size_t n,
                     size_t avail, size_t out_max)
{
    size_t start = out->len, i = 0, from = 0; /* text[from, i) is pending, unmasked */
    int rc = 0;

    if (!has_secrets(r))
        return n > 0 ? buf_append(out, text, n < out_max ? n : out_max) : 0;
    while (i < n && rc == 0 && out->len - start + (i - from) < out_max) {
        size_t m = secret_at(r->secrets, text, avail, i);
        if (m == 0) {
            i++;
            continue;
        }
        rc = buf_append(out, text + from, i - from);
        if (rc == 0)
            rc = buf_puts(out, REDACT_TEXT);
        i += m;
        from = i;
    }
    if (rc == 0 && i > from)
        rc = buf_append(out, text + from, i - from);
    return rc;
}

int redact_mask(struct buf *out, const struct redact *r, const char *s, size_t n)
{
    if (overflowed(r))
        return buf_puts(out, REDACT_TEXT);
    return mask_into(out, r, s, n, n, SIZE_MAX);
}

/* Does some secret contain the n bytes at s? (For numbers.) */
static bool holds_secret(const struct redact *r, const char *s, size_t n)
{
    if (!has_secrets(r))
        return false;
    for (size_t i = 0; i < n; i++)
        if (secret_at(r->secrets, s, n, i) > 0)
            return true;
    return false;
}

/* ---- pointers --------------------------------------------------------------------------- */

static size_t segments(const char *pointer)
{
    size_t n = 0;
    for (const char *p = pointer; *p; p++)
        n += *p == '/';
    return n;
}

/* Does pattern match the first segments of pointer (pointer itself or a
 * descendant)? */
static bool matches_prefix(const char *pattern, const char *pointer)
{
    size_t want = segments(pattern), seen = 0;
    const char *p = pointer;

    while (*p != '\0') {
        if (*p == '/' && seen++ == want)
            break;
        p++;
    }
    if (seen < want)
        return false;
    if (*p == '\0')
        return diff_pointer_match(pattern, pointer);
    size_t len = (size_t)(p - pointer);
    char small[256], *cut = len < sizeof small ? small : malloc(len + 1);
    bool m;
    if (cut == NULL)
        return true; /* cannot tell: hide it */
    memcpy(cut, pointer, len);
    cut[len] = '\0';
    m = diff_pointer_match(pattern, cut);
    if (cut != small)
        free(cut);
    return m;
}

bool redact_pointer_matches(const struct redact *r, const char *pointer)
{
    if (r == NULL || pointer == NULL)
        return false;
    for (size_t i = 0; i < r->n_json; i++)
        if (r->json[i] != NULL && matches_prefix(r->json[i], pointer))
            return true;
    return false;
}

/* ---- values ----------------------------------------------------------------------------- */

/* A walk that writes a value; path is its JSON Pointer (when in a body). */
struct writer {
    const struct redact *r;
    struct buf *out;
    struct buf path;
    bool in_body;   /* pointer rules apply */
    size_t stop_at; /* stop once out->len reaches this (SIZE_MAX: never) */
};

#define WRITE_STOPPED 1

/* Does a pattern of exactly the current depth match the current path?
 * (Shallower ones were tried on the way down.) */
static bool hidden_here(const struct writer *w, size_t depth)
{
    if (!w->in_body)
        return false;
    for (size_t i = 0; i < w->r->n_json; i++)
        if (w->r->json[i] != NULL && segments(w->r->json[i]) == depth &&
            diff_pointer_match(w->r->json[i], w->path.data != NULL ? w->path.data : ""))
            return true;
    return false;
}

static int write_text(struct writer *w, const char *s, size_t n)
{
    struct buf m;
    int rc;

    if (!has_secrets(w->r))
        return buf_json_string(w->out, s, n);
    buf_init(&m, 0);
    rc = mask_into(&m, w->r, s, n, n, SIZE_MAX);
    if (rc == 0)
        rc = buf_json_string(w->out, m.data != NULL ? m.data : "", m.len);
    buf_dispose(&m);
    return rc;
}

static int push_key(struct buf *path, const char *key, size_t n)
{
    int rc = buf_append(path, "/", 1);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (key[i] == '~')
            rc = buf_append(path, "~0", 2);
        else if (key[i] == '/')
            rc = buf_append(path, "~1", 2);
        else
            rc = buf_append(path, &key[i], 1);
    }
    return rc;
}

static int write_node(struct writer *w, const struct jv *v, size_t depth)
{
    int rc = 0;

    if (hidden_here(w, depth))
        return buf_puts(w->out, REDACT_JSON);
    switch (v->type) {
    case JV_OBJECT:
        rc = buf_append(w->out, "{", 1);
        for (size_t i = 0; i < v->n && rc == 0; i++) {
            const struct jv_member *m = &v->u.obj->m[i];
            size_t mark = w->path.len;
            if (i > 0)
                rc = buf_append(w->out, ",", 1);
            if (rc == 0)
                rc = write_text(w, m->key, m->key_len);
            if (rc == 0)
                rc = buf_append(w->out, ":", 1);
            if (rc == 0 && w->in_body)
                rc = push_key(&w->path, m->key, m->key_len);
            if (rc == 0)
                rc = write_node(w, &m->value, depth + 1);
            w->path.len = mark;
            if (w->path.data != NULL)
                w->path.data[mark] = '\0';
            if (rc == 0 && w->out->len >= w->stop_at)
                rc = WRITE_STOPPED;
        }
        return rc != 0 ? rc : buf_append(w->out, "}", 1);
    case JV_ARRAY:
        rc = buf_append(w->out, "[", 1);
        for (size_t i = 0; i < v->n && rc == 0; i++) {
            size_t mark = w->path.len;
            if (i > 0)
                rc = buf_append(w->out, ",", 1);
            if (rc == 0 && w->in_body)
                rc = buf_printf(&w->path, "/%zu", i);
            if (rc == 0)
                rc = write_node(w, &v->u.items[i], depth + 1);
            w->path.len = mark;
            if (w->path.data != NULL)
                w->path.data[mark] = '\0';
            if (rc == 0 && w->out->len >= w->stop_at)
                rc = WRITE_STOPPED;
        }
        return rc != 0 ? rc : buf_append(w->out, "]", 1);
    case JV_STRING:
        return write_text(w, v->u.s, v->n);
    case JV_INT:
    case JV_REAL:
        if (holds_secret(w->r, v->u.num, v->n))
            return buf_puts(w->out, REDACT_JSON);
        return buf_append(w->out, v->u.num, v->n);
    default:
        return jv_write(w->out, v, 17);
    }
}

/* Writes v at pointer (NULL: not in a body) into out, up to stop_at. */
static int write_value(struct buf *out, const struct redact *r, const char *pointer,
                       const struct jv *v, size_t stop_at)
{
    struct writer w = {.r = r, .out = out, .in_body = pointer != NULL, .stop_at = stop_at};
    int rc;

    buf_init(&w.path, 0);
    rc = pointer != NULL ? buf_puts(&w.path, pointer) : 0;
    if (rc == 0)
        rc = write_node(&w, v, pointer != NULL ? segments(pointer) : 0);
    buf_dispose(&w.path);
    return rc;
}

int redact_write_value(struct buf *out, const struct redact *r, const char *pointer,
                       const struct jv *v)
{
    static const struct redact none;
    size_t start = out->len;
    int rc;

    if (v == NULL)
        return -EINVAL;
    if (r == NULL)
        r = &none;
    if (overflowed(r) || (pointer != NULL && redact_pointer_matches(r, pointer)))
        return buf_puts(out, REDACT_JSON);
    if (!redact_active(r))
        return jv_write(out, v, 17);
    rc = write_value(out, r, pointer, v, SIZE_MAX);
    if (rc != 0 && out->data != NULL) {
        out->len = start;
        out->data[start] = '\0';
    }
    return rc;
}

/* A piece of a secret at a cut is masked from this many bytes on: one byte
 * says nothing about a secret, and masking it would mark every fragment that
 * ends in a letter some token starts with ("e" of every JWT). */
#define PIECE_MIN 2

/* The longest k (PIECE_MIN <= k < the secret's length) such that the first k
 * bytes of s are the last k of some secret; 0 when none. */
static size_t cut_secret_head(const struct redact_secrets *rs, const char *s, size_t n)
{
    size_t best = 0;
    for (size_t i = 0; i < rs->n; i++) {
        const struct span *x = &rs->s[i];
        for (size_t k = x->len - 1 < n ? x->len - 1 : n; k > best && k >= PIECE_MIN; k--)
            if (memcmp(x->p + x->len - k, s, k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

/* The longest k (PIECE_MIN <= k < the secret's length) such that the last k
 * bytes of s are the first k of some secret; 0 when none. */
static size_t cut_secret_tail(const struct redact_secrets *rs, const char *s, size_t n)
{
    size_t best = 0;
    for (size_t i = 0; i < rs->n; i++) {
        const struct span *x = &rs->s[i];
        for (size_t k = x->len - 1 < n ? x->len - 1 : n; k > best && k >= PIECE_MIN; k--)
            if (memcmp(x->p, s + n - k, k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

int redact_write_fragment(struct buf *out, const struct redact *r, const struct jv *v)
{
    struct buf m;
    size_t head, tail;
    int rc = 0;

    if (v == NULL)
        return -EINVAL;
    if (v->type != JV_STRING || !has_secrets(r))
        return redact_write_value(out, r, NULL, v);
    if (overflowed(r))
        return buf_puts(out, REDACT_JSON);
    head = cut_secret_head(r->secrets, v->u.s, v->n);
    tail = head < v->n ? cut_secret_tail(r->secrets, v->u.s + head, v->n - head) : 0;
    buf_init(&m, 0);
    if (head > 0)
        rc = buf_puts(&m, REDACT_TEXT);
    if (rc == 0)
        rc = mask_into(&m, r, v->u.s + head, v->n - head - tail, v->n - head - tail, SIZE_MAX);
    if (rc == 0 && tail > 0)
        rc = buf_puts(&m, REDACT_TEXT);
    if (rc == 0)
        rc = buf_json_string(out, m.data != NULL ? m.data : "", m.len);
    buf_dispose(&m);
    return rc;
}

/* ---- excerpts --------------------------------------------------------------------------- */

/* Where to cut text of n bytes to at most max bytes without splitting a UTF-8
 * character (raw bytes that are not UTF-8 are cut at max). */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    size_t cut = max;

    if (n <= max)
        return n;
    while (cut > 0 && max - cut < 3 && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--;
    if (((unsigned char)s[cut] & 0xC0) == 0x80)
        return max; /* not UTF-8 there */
    return cut;
}

/* Appends the first max bytes (at a character boundary) of text. */
static int append_cut(struct buf *out, const char *text, size_t n, size_t max)
{
    return n > 0 ? buf_append(out, text, utf8_cut(text, n, max)) : 0;
}

int redact_excerpt(struct buf *out, const struct redact *r, const char *body, size_t len,
                   size_t max, bool is_json)
{
    struct buf tmp;
    int rc;

    if (body == NULL)
        len = 0;
    if (!redact_active(r))
        return append_cut(out, body, len, max);
    if (overflowed(r))
        return buf_puts(out, REDACT_TEXT);
    buf_init(&tmp, 0);
    if (r->n_json > 0) {
        struct arena a;
        const struct jv *doc = NULL;
        arena_init(&a);
        rc = len > 0 ? jdoc_parse(&a, body, len, &doc) : -EINVAL;
        if (rc == 0) {
            /* Written up to a little past max: enough to cut at max. */
            rc = write_value(&tmp, r, "", doc, max + 8);
            if (rc == WRITE_STOPPED)
                rc = 0;
            if (rc == 0)
                rc = append_cut(out, tmp.data, tmp.len, max);
            arena_dispose(&a);
            buf_dispose(&tmp);
            return rc;
        }
        arena_dispose(&a);
        if (rc == FICUS_ENOMEM) {
            buf_dispose(&tmp);
            return rc;
        }
        if (is_json) {
            buf_dispose(&tmp);
            return buf_puts(out, REDACT_TEXT);
        }
    }
    rc = mask_into(&tmp, r, body, len, len, max);
    if (rc == 0)
        rc = append_cut(out, tmp.data, tmp.len, max);
    buf_dispose(&tmp);
    return rc;
}
