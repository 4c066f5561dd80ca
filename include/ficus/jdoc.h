/* JSON documents for comparing responses: parsed in one pass into an arena,
 * read-only afterwards, gone with the arena.
 *
 * The diff parses two bodies per comparison on the hot path of a parallel run.
 * jansson builds a reference-counted tree with a malloc per value and a hash
 * table per object, and validates its input one character at a time through a
 * stream; that cost more than everything else a comparison does. A jdoc is
 * plain arrays in an arena: no per-value malloc, no reference counts, no free
 * walk. It accepts exactly what jansson's json_loadb(JSON_DECODE_ANY |
 * JSON_ALLOW_NUL) accepts and yields the same values (tests/unit/test_jdoc.c
 * and tests/fuzz/fuzz_jdoc.c check the two against each other), so switching
 * changed no comparison. That includes jansson's one quirk with a NUL byte:
 * a NUL right after a number or a literal is skipped ("3\0 " is 3, "[1\0]"
 * is [1]); a NUL anywhere else makes the text invalid.
 * Pure: no globals, safe on any thread. */
#ifndef FICUS_JDOC_H
#define FICUS_JDOC_H

#include "ficus/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* jansson's JSON_PARSER_MAX_DEPTH: a value nested deeper makes the document invalid. */
#define JDOC_MAX_DEPTH 2048

enum jv_type { JV_NULL, JV_FALSE, JV_TRUE, JV_INT, JV_REAL, JV_STRING, JV_ARRAY, JV_OBJECT };

struct jv_object;

/* One value. Containers hold their children by value, in document order. */
struct jv {
    enum jv_type type;
    size_t n; /* string: bytes; array: items; object: members (duplicates merged) */
    union {
        int64_t i;
        double d;
        const char *s; /* NUL-terminated; may hold NUL bytes (n counts them) */
        const struct jv *items;
        const struct jv_object *obj;
    } u;
};

struct jv_member {
    const char *key; /* NUL-terminated, never holds a NUL byte */
    size_t key_len;
    struct jv value;
};

/* A repeated key keeps its first position and takes its last value (jansson). */
struct jv_object {
    const uint32_t *index; /* open addressing, member number + 1; NULL when small */
    size_t mask;
    struct jv_member m[];
};

/* Parses the len bytes at p into a (everything the document needs, strings
 * included, is copied there: p may go away). Returns 0 and sets *out (valid
 * until the arena is disposed), -EINVAL when the text is not JSON jansson
 * accepts (including integers beyond 64 bits, reals beyond double, strings
 * that are not UTF-8, nesting beyond JDOC_MAX_DEPTH), or FICUS_ENOMEM. */
int jdoc_parse(struct arena *a, const char *p, size_t len, const struct jv **out);

/* The value of key in an object, or NULL (also when obj is not an object). */
const struct jv *jv_get(const struct jv *obj, const char *key, size_t key_len);

/* Structural equality, as jansson's json_equal: an integer never equals a real,
 * object member order does not matter. */
bool jv_equal(const struct jv *a, const struct jv *b);

/* Values made for diff items. The returned pointers live in the arena. */
const struct jv *jv_null(void);
const struct jv *jv_new_int(struct arena *a, int64_t v);
/* Copies n bytes (which must be UTF-8 to be written later). */
const struct jv *jv_new_string(struct arena *a, const char *s, size_t n);

/* Writes v as compact JSON, byte for byte as jansson's json_dumps(JSON_COMPACT |
 * JSON_ENCODE_ANY | JSON_REAL_PRECISION(precision)) writes the equivalent value
 * (members in document order).
 * Returns 0, -EINVAL (v NULL or a string not UTF-8), FICUS_ENOMEM or
 * FICUS_ETOOBIG; on error nothing is appended. */
int jv_write(struct buf *b, const struct jv *v, int precision);

#endif
