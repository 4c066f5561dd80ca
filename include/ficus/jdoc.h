/* JSON documents for comparing responses: parsed in one pass into an arena,
 * read-only afterwards, gone with the arena.
 *
 * The diff parses two bodies per comparison on the hot path of a parallel run.
 * jansson builds a reference-counted tree with a malloc per value and a hash
 * table per object, and validates its input one character at a time through a
 * stream; that cost more than everything else a comparison does. A jdoc is
 * plain arrays in an arena: no per-value malloc, no reference counts, no free
 * walk. It accepts what jansson's json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL)
 * accepts, and also numbers jansson refuses for their size (integers beyond 64
 * bits, reals beyond a double): a backend may send them, and they are JSON.
 * Strings, containers and duplicate keys come out as jansson's
 * (tests/unit/test_jdoc.c and tests/fuzz/fuzz_jdoc.c check the two against
 * each other). That includes jansson's one quirk with a NUL byte: a NUL right
 * after a number or a literal is skipped ("3\0 " is 3, "[1\0]" is [1]); a NUL
 * anywhere else makes the text invalid.
 *
 * Numbers keep their source text. A record must show a value exactly as the
 * backend sent it (two timestamps that differ in the 12th digit must not both
 * print as 1796166754.0), and the diff compares numbers by exact decimal value
 * (jdoc_number_equal), which no double or 64-bit integer can hold for every
 * input. Not converting at parse time is also cheaper: most numbers are only
 * ever compared with their counterpart's text.
 * Pure: no globals, safe on any thread. */
#ifndef FICUS_JDOC_H
#define FICUS_JDOC_H

#include "ficus/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* jansson's JSON_PARSER_MAX_DEPTH: a value nested deeper makes the document invalid. */
#define JDOC_MAX_DEPTH 2048

/* JV_INT is a number written without fraction or exponent ("12", "-0",
 * "123456789012345678901234567890"), JV_REAL one with either ("1.0", "1e400").
 * Both are numbers of any size; the difference is only how they were written. */
enum jv_type { JV_NULL, JV_FALSE, JV_TRUE, JV_INT, JV_REAL, JV_STRING, JV_ARRAY, JV_OBJECT };

struct jv_object;

/* One value. Containers hold their children by value, in document order. */
struct jv {
    enum jv_type type;
    size_t n; /* string: bytes; number: bytes of its text; array: items; object: members
                 (duplicates merged) */
    union {
        const char *num; /* number: the text as sent, NUL-terminated, valid JSON number */
        const char *s;   /* string: NUL-terminated; may hold NUL bytes (n counts them) */
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

/* Parses the len bytes at p into a (everything the document needs, strings and
 * number texts included, is copied there: p may go away). Returns 0 and sets
 * *out (valid until the arena is disposed), -EINVAL when the text is not JSON
 * (jansson's grammar; strings that are not UTF-8, nesting beyond
 * JDOC_MAX_DEPTH), or FICUS_ENOMEM. Numbers of any size are accepted. */
int jdoc_parse(struct arena *a, const char *p, size_t len, const struct jv **out);

/* The value of key in an object, or NULL (also when obj is not an object). */
const struct jv *jv_get(const struct jv *obj, const char *key, size_t key_len);

/* Structural equality: object member order does not matter, numbers are equal
 * when their values are (jdoc_number_equal: 1 equals 1.0 and 1e0). */
bool jv_equal(const struct jv *a, const struct jv *b);

/* ---- numbers ----
 * "By value" means exact decimal value: two number texts are equal when they
 * denote the same rational number, whatever their spelling. So 1 = 1.0 = 1e0 =
 * 10E-1, 100 = 1e2, 0 = -0 = 0.0e5 (a zero has no sign), and
 * 9007199254740993 != 9007199254740992 or 0.1 != 0.10000000000000001 although
 * each pair is one double: a backend that starts rounding is a difference (a
 * tolerance absorbs it). Exponents are exact up to +-2^62; beyond that they
 * saturate, so 1e(2^63) equals 1e(2^64). */

/* Is [s, s+n) exactly one JSON number (no sign "+", no spaces)? *is_int (may
 * be NULL) tells whether it has neither fraction nor exponent. */
bool jdoc_number_valid(const char *s, size_t n, bool *is_int);
/* Exact decimal equality of two valid number texts. */
bool jdoc_number_equal(const char *a, size_t na, const char *b, size_t nb);
/* A hash of a valid number text, equal for numbers jdoc_number_equal calls equal. */
uint64_t jdoc_number_hash(const char *s, size_t n);
/* The double nearest to a valid number text (strtod's result: +-HUGE_VAL beyond
 * the range, 0 or a subnormal below it). s[n] must be readable; NaN only when
 * out of memory for a long text not followed by a NUL or another delimiter. */
double jdoc_number_double(const char *s, size_t n);
/* The value of an integer text that fits in 64 bits: 0 and *out, -ERANGE when it
 * does not fit, -EINVAL when s has a fraction or an exponent. */
int jdoc_number_int64(const char *s, size_t n, int64_t *out);

/* The same for a number value; v must be JV_INT or JV_REAL. */
static inline double jv_double(const struct jv *v)
{
    return jdoc_number_double(v->u.num, v->n);
}
static inline int jv_int64(const struct jv *v, int64_t *out)
{
    return jdoc_number_int64(v->u.num, v->n, out);
}
static inline bool jv_is_number(const struct jv *v)
{
    return v->type == JV_INT || v->type == JV_REAL;
}

/* Values made for diff items. The returned pointers live in the arena. */
const struct jv *jv_null(void);
/* An integer (its decimal text); NULL when out of memory. */
const struct jv *jv_new_int(struct arena *a, int64_t v);
/* Copies n bytes (which must be UTF-8 to be written later). */
const struct jv *jv_new_string(struct arena *a, const char *s, size_t n);

/* Writes v as compact JSON: numbers exactly as sent, strings and containers
 * byte for byte as jansson's json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) writes
 * them (members in document order). precision is not used any more (every
 * number has its text); it stays so that callers need not change.
 * Returns 0, -EINVAL (v NULL or a string not UTF-8), FICUS_ENOMEM or
 * FICUS_ETOOBIG; on error nothing is appended. */
int jv_write(struct buf *b, const struct jv *v, int precision);

#endif
