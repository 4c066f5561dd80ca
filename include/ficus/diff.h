/* Compares two responses (legacy and new) under a route's diff rules.
 * Pure: no libuv, no I/O, no globals; safe to call from any thread. */
#ifndef FICUS_DIFF_H
#define FICUS_DIFF_H

#include "ficus/buf.h"
#include "ficus/jdoc.h"

#include <stdbool.h>
#include <stddef.h>

#define DIFF_MAX_ITEMS 50

/* A route's diff rules, from the configuration (SPEC "diff"). Strings are
 * owned by the configuration snapshot and outlive every comparison. Header
 * names are lower case. */
struct diff_match_by {
    const char *pointer; /* JSON Pointer of an array, may contain "*" */
    const char *key;     /* member name that identifies an item */
};

struct diff_rules {
    const char **headers; /* compared headers; default {"content-type"} */
    size_t n_headers;
    const char **ignore_headers;
    size_t n_ignore_headers;
    const char **ignore; /* JSON Pointers, "*" matches any key or index */
    size_t n_ignore;
    const char **unordered; /* arrays compared as multisets */
    size_t n_unordered;
    struct diff_match_by *match_by; /* arrays whose objects pair by a key */
    size_t n_match_by;
    double tolerance; /* absolute; numbers this close are equal */
    /* A number and a string holding exactly a JSON number compare as two
     * numbers ("1" equals 1, "1.50" equals 1.5; tolerance applies), and
     * match_by keys and identical unordered items pair the same way. */
    bool loose_types;
    /* Headers (lower case) whose values compare by media type only: the part
     * before any ";", without spaces, case-insensitively, so
     * "application/json" equals "Application/JSON; charset=utf-8". */
    const char **media_type_headers;
    size_t n_media_type_headers;
    /* Not from the configuration: a caller's test that takes a pair of JSON
     * values (kind DIFF_JSON, path their pointer) or of header values (kind
     * DIFF_HEADER, path the header name) as equal anyway; shadow.correlate's id
     * pairs. Called on the diff's thread; NULL: none. */
    bool (*equal_hook)(void *ctx, int kind, const char *path, const struct jv *legacy,
                       const struct jv *new_);
    void *equal_ctx;
};

/* One header of a response; name and value need not be NUL-terminated. */
struct diff_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* One side of a comparison. The caller owns everything; diff only reads. */
struct diff_response {
    int status;        /* 0 when the side failed (see error) */
    const char *error; /* NULL, or "timeout", "reset", "connect_error", "invalid_response" */
    const struct diff_header *headers;
    size_t n_headers;
    const char *body; /* as received: diff decodes gzip itself when the
                         content-encoding header says gzip */
    size_t body_len;
};

enum diff_kind {
    DIFF_STATUS,
    DIFF_HEADER,
    DIFF_JSON,
    DIFF_ADDED,
    DIFF_REMOVED,
    DIFF_BODY,
    DIFF_ERROR,
    DIFF_KIND_N /* how many kinds; not a kind */
};

/* One difference. path is a JSON Pointer for json/added/removed, the header
 * name for header, the decimal offset for body, "status" for status, and
 * "legacy" or "new" (the side that failed) for error. legacy and new are
 * JSON values (a NULL side means absent) that live in the result's arena, or
 * in the caller's documents for diff_json. */
struct diff_item {
    enum diff_kind kind;
    const char *path;
    const struct jv *legacy;
    const struct jv *new_;
};

/* The differences of one comparison: at most DIFF_MAX_ITEMS items, truncated
 * set when there were more. Owned by the caller: diff_result_init before the
 * first use, diff_result_dispose after each. Paths, values and the parsed
 * bodies they point into live in arena. */
struct diff_result {
    struct diff_item items[DIFF_MAX_ITEMS];
    size_t n;
    bool truncated;
    struct arena arena;
};

/* Compares legacy and new under rules and fills out (which it first resets).
 * Status always compares; headers per rules; bodies as JSON when both
 * content-types are JSON (application/json or +json) and both parse, else
 * byte for byte (after gzip decoding). Returns 0, or FICUS_ENOMEM.
 * Details: a side with error set gives one DIFF_ERROR item (legacy/new: the
 * side's error string, else its status as an integer) and nothing else is
 * compared. An absent header shows as json null. A gzip body that does not
 * decode (or decodes beyond 64 MiB) gives a DIFF_ERROR item for its side with
 * the value "invalid_gzip" (or "gzip_too_large"), null on the other side, and
 * the bodies are not compared. JSON that jdoc_parse rejects falls back to the
 * byte comparison, whose values are up to 32 bytes from the offset, non-UTF-8
 * bytes written as the text \xNN. Numbers of any size are JSON: they compare by
 * exact decimal value (see jdoc.h) and items carry their text as sent.
 * out is initialised first: dispose a used result before. */
int diff_responses(const struct diff_rules *rules, const struct diff_response *legacy,
                   const struct diff_response *new_, struct diff_result *out);

/* Compares two JSON documents under rules, appending to out (initialised)
 * from path "" down. Items point at the documents' own values (no copies): keep
 * the documents while the result is read. Items of a
 * match_by array that pair by key are reported under their legacy index;
 * unpaired ones under their own side's index. Exposed for tests and for noise
 * learning. Returns 0, or FICUS_ENOMEM. */
int diff_json(const struct diff_rules *rules, const struct jv *legacy, const struct jv *new_,
              struct diff_result *out);

/* An empty result. */
void diff_result_init(struct diff_result *r);
/* Frees what the result holds and leaves it empty (and initialised). */
void diff_result_dispose(struct diff_result *r);

/* "status", "header", "json", "added", "removed", "body", "error". */
const char *diff_kind_name(enum diff_kind k);

/* Writes path with every array index segment (all digits) replaced by "*" into
 * out (NUL-terminated, truncated to out_size). "/items/3/price" -> "/items/ * /price"
 * without the spaces. Used to group diffs by path across requests. */
void diff_normalize_path(const char *path, char *out, size_t out_size);

/* Does pointer (a concrete JSON Pointer) match pattern, where a pattern
 * segment "*" matches any one segment? Both use RFC 6901 escaping. */
bool diff_pointer_match(const char *pattern, const char *pointer);

/* Decodes a gzip (or zlib) stream into a malloc'd buffer of at most max bytes.
 * Returns 0 and sets *out (caller frees) and *out_len, or a negative error. */
int diff_gunzip(const char *in, size_t in_len, size_t max, char **out, size_t *out_len);

#endif
