/* Redaction of what a divergence record shows of the bodies: values at
 * divergence_log.redact_json pointers, and the values of the request's
 * redacted headers (an Authorization token a backend echoes) wherever they
 * appear. Everything hidden is replaced by "[redacted]".
 *
 * A record is built from three kinds of text, and each has its function:
 * - diff values (JSON): redact_write_value writes one with every value at a
 *   matching pointer replaced and every secret masked inside strings, keys
 *   and numbers (decoded, so an escaped form cannot slip through);
 *   redact_write_fragment does the same for a byte difference's excerpt, a
 *   text cut out of the body at both ends, where a secret may be cut too;
 * - body excerpts: redact_excerpt;
 * - paths and other plain text: redact_mask.
 * No partial secret may leak: where text is cut (an excerpt at body_bytes, a
 * fragment at both ends), a secret that straddles the cut is masked as a whole
 * (an excerpt), or its piece is (a fragment, whose surroundings are unknown:
 * any piece of two bytes or more that could begin or end a secret).
 *
 * Pure, no globals: any thread. */
#ifndef FICUS_REDACT_H
#define FICUS_REDACT_H

#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/jdoc.h"

#include <stdbool.h>
#include <stddef.h>

#define REDACT_TEXT "[redacted]"
/* Texts masked per request: each header value, its parts and their escaped
 * forms. Beyond this the set overflows, and then nothing of a body is shown
 * (never a partial mask). */
#define REDACT_MAX_SECRETS 128
/* A whole header value shorter than this is not masked on its own (a
 * one-letter value would mask every such letter); parts (a token after its
 * scheme, a cookie's value) need REDACT_MIN_PART. */
#define REDACT_MIN_VALUE 4
#define REDACT_MIN_PART  8

/* The secrets of one request. Owns copies. Zero-initialised is not enough:
 * redact_secrets_init before use, redact_secrets_dispose after. */
struct redact_secrets {
    struct span s[REDACT_MAX_SECRETS]; /* longest first */
    size_t n;
    bool overflow; /* some could not be kept: show no body text at all */
    struct arena arena;
};

void redact_secrets_init(struct redact_secrets *rs);
void redact_secrets_dispose(struct redact_secrets *rs);

/* Adds the value of a redacted header (the caller decides which headers are:
 * config_is_redacted): the whole value; for authorization-like headers the
 * credentials after the scheme ("Bearer abc" -> "abc"); for cookie and
 * set-cookie each cookie's value; and for each, the forms a backend may echo
 * it in: JSON-escaped (with "/" as "\/" too) and percent-encoded. Returns 0, or
 * FICUS_ENOMEM (overflow is then set, which is safe). */
int redact_secrets_add(struct redact_secrets *rs, const char *name, size_t name_len,
                       const char *value, size_t value_len);

/* What to hide in one record. json: JSON Pointer patterns, "*" matching any
 * one segment (divergence_log.redact_json); a pattern also hides everything
 * below it. The caller owns all of it. */
struct redact {
    const char *const *json;
    size_t n_json;
    const struct redact_secrets *secrets; /* NULL: none */
};

/* Is anything to be hidden at all? (When not, callers may write as before.) */
bool redact_active(const struct redact *r);

/* Does a pattern match pointer or one of its ancestors? */
bool redact_pointer_matches(const struct redact *r, const char *pointer);

/* Appends v as compact JSON (numbers as sent): "[redacted]" when pointer
 * matches (redact_pointer_matches), else v with every value below at a
 * matching pointer replaced by "[redacted]", every secret inside a string or a
 * key replaced by the text [redacted], and a number holding a secret written
 * as the string "[redacted]". pointer NULL: v is not in a body (a header
 * value), only secrets apply. With overflowed secrets every string is
 * "[redacted]". Returns 0, -EINVAL (v NULL or not UTF-8) or a buf error;
 * nothing is appended on error. */
int redact_write_value(struct buf *out, const struct redact *r, const char *pointer,
                       const struct jv *v);

/* The same for a string cut out of a longer text at both ends (the values of
 * a byte difference): also masks a start that could be the end of a secret
 * and an end that could be its beginning. */
int redact_write_fragment(struct buf *out, const struct redact *r, const struct jv *v);

/* Appends the n bytes at s with every secret replaced by the text [redacted]
 * (raw bytes, not JSON): for paths, noise paths, targets. */
int redact_mask(struct buf *out, const struct redact *r, const char *s, size_t n);

/* Appends the excerpt of a body a record shows: at most max bytes, cut at a
 * UTF-8 character boundary when the text is UTF-8, raw bytes otherwise (the
 * caller escapes them as before). Without anything to hide: the first max
 * bytes. With redact_json patterns and a body that parses as JSON: the body
 * written compactly by redact_write_value, then cut. With patterns and a body
 * that claims to be JSON (is_json) but does not parse: "[redacted]" alone, for
 * the values to hide cannot be found. Otherwise: the bytes with every secret
 * (in each of its forms) masked, cut after masking, so a secret straddling
 * max is masked whole. With overflowed secrets: "[redacted]" alone. Returns 0
 * or a buf error. */
int redact_excerpt(struct buf *out, const struct redact *r, const char *body, size_t len,
                   size_t max, bool is_json);

#endif
