/* The judge of jdoc, shared by tests/unit/test_jdoc.c and tests/fuzz/fuzz_jdoc.c:
 * jansson, the parser jdoc replaced in the diff. For every input both must agree
 * on whether it is JSON and, when it is, on the value, down to member order,
 * duplicate keys and the bits of each double. jdoc also takes numbers jansson
 * refuses for their size alone (integers beyond 64 bits, reals beyond a
 * double): for those, jansson judges the same text with each such number
 * replaced by 0. Numbers keep their text: jv_write writes them back as sent.
 *
 * Header-only (static functions): the includer defines ORACLE_CHECK(cond), its
 * way of stopping on a broken expectation. */
#ifndef FICUS_TESTS_JDOC_ORACLE_H
#define FICUS_TESTS_JDOC_ORACLE_H

#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/jdoc.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ORACLE_JFLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL)
#define ORACLE_DUMP   (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17))

/* Writes v as jansson writes the value it would hold: integers as 64-bit
 * integers, reals as the nearest double at 17 digits. */
static void write_as_jansson(struct buf *b, const struct jv *v)
{
    int64_t i;
    switch (v->type) {
    case JV_INT:
        ORACLE_CHECK(jv_int64(v, &i) == 0);
        ORACLE_CHECK(buf_put_int(b, i) == 0);
        return;
    case JV_REAL:
        ORACLE_CHECK(buf_json_real(b, jv_double(v), 17) == 0);
        return;
    case JV_ARRAY:
        buf_puts(b, "[");
        for (size_t k = 0; k < v->n; k++) {
            if (k > 0)
                buf_puts(b, ",");
            write_as_jansson(b, &v->u.items[k]);
        }
        buf_puts(b, "]");
        return;
    case JV_OBJECT:
        buf_puts(b, "{");
        for (size_t k = 0; k < v->n; k++) {
            const struct jv_member *m = &v->u.obj->m[k];
            if (k > 0)
                buf_puts(b, ",");
            ORACLE_CHECK(buf_json_string(b, m->key, m->key_len) == 0);
            buf_puts(b, ":");
            write_as_jansson(b, &m->value);
        }
        buf_puts(b, "}");
        return;
    default:
        ORACLE_CHECK(jv_write(b, v, 17) == 0);
        return;
    }
}

/* The end of the number token jansson's lexer reads from p (a '-' or a digit),
 * and whether it is a valid number. */
static size_t lex_number(const char *p, size_t avail, bool *valid)
{
    size_t i = 0;
    *valid = false;
    if (i < avail && p[i] == '-')
        i++;
    if (i < avail && p[i] == '0') {
        i++;
        if (i < avail && p[i] >= '0' && p[i] <= '9')
            return i;
    } else if (i < avail && p[i] >= '1' && p[i] <= '9') {
        while (i < avail && p[i] >= '0' && p[i] <= '9')
            i++;
    } else {
        return i;
    }
    if (i < avail && p[i] == '.') {
        i++;
        if (!(i < avail && p[i] >= '0' && p[i] <= '9'))
            return i;
        while (i < avail && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    if (i < avail && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < avail && (p[i] == '+' || p[i] == '-'))
            i++;
        if (!(i < avail && p[i] >= '0' && p[i] <= '9'))
            return i;
        while (i < avail && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    *valid = true;
    return i;
}

/* Would jansson refuse this valid number for its size? (jdoc_number_double
 * reads the byte after the text: the number is copied so that one exists.) */
static bool too_big_for_jansson(const char *p, size_t n)
{
    bool is_int;
    int64_t v;
    ORACLE_CHECK(jdoc_number_valid(p, n, &is_int));
    if (is_int)
        return jdoc_number_int64(p, n, &v) == -ERANGE;
    char *copy = malloc(n + 1);
    ORACLE_CHECK(copy != NULL);
    memcpy(copy, p, n);
    copy[n] = '\0';
    bool inf = isinf(jdoc_number_double(copy, n));
    free(copy);
    return inf;
}

/* What replaces a number jansson refuses for its size: " 0 " (spaces keep the
 * 0 from joining what is around it), but " 0" before a NUL, which jansson
 * skips only right after a number. */
static const char *zero_for(const char *text, size_t len, size_t end)
{
    return end < len && text[end] == '\0' ? " 0" : " 0 ";
}

/* Replaces [start, end) of *text with zero_for's text. */
static void put_zero(char **text, size_t *len, size_t start, size_t end, bool *subst)
{
    const char *z = zero_for(*text, *len, end);
    size_t zl = strlen(z);
    char *copy = malloc(*len - (end - start) + zl + 1);
    ORACLE_CHECK(copy != NULL);
    memcpy(copy, *text, start);
    memcpy(copy + start, z, zl);
    memcpy(copy + start + zl, *text + end, *len - end);
    if (*subst)
        free(*text);
    *len = *len - (end - start) + zl;
    copy[*len] = '\0';
    *text = copy;
    *subst = true;
}

/* jansson on text, with every number it refuses for its size alone replaced
 * by 0. *text and *len may be replaced by a malloc'd copy (the caller frees it
 * when *subst is set). One pass finds those numbers as jansson's lexer reads
 * them; should jansson still report one, it is replaced where jansson says it
 * ends (its error position), and jansson asked again. */
static json_t *jansson_judge(char **text, size_t *len, bool *subst)
{
    json_error_t err;
    json_t *j;
    bool in_string = false;
    struct buf out;
    size_t copied = 0; /* bytes of *text already in out */

    *subst = false;
    buf_init(&out, 0);
    for (size_t i = 0; i < *len; i++) {
        char c = (*text)[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            bool valid;
            size_t n = lex_number(*text + i, *len - i, &valid);
            if (valid && too_big_for_jansson(*text + i, n)) {
                ORACLE_CHECK(buf_append(&out, *text + copied, i - copied) == 0);
                ORACLE_CHECK(buf_puts(&out, zero_for(*text, *len, i + n)) == 0);
                copied = i + n;
            }
            i += n - 1;
        }
    }
    if (copied > 0) {
        ORACLE_CHECK(buf_append(&out, *text + copied, *len - copied) == 0);
        *text = out.data; /* the caller frees it */
        *len = out.len;
        *subst = true;
    }
    while ((j = json_loadb(*text, *len, ORACLE_JFLAGS, &err)) == NULL &&
           json_error_code(&err) == json_error_numeric_overflow) {
        /* The number is the longest valid one ending there: jansson's lexer
         * may have read another number right before it ("2E-2-1E+400"). */
        size_t end = (size_t)err.position, start = end, s;
        for (s = end; s > 0 && strchr("0123456789.eE+-", (*text)[s - 1]) != NULL; s--)
            if (jdoc_number_valid(*text + s - 1, end - s + 1, NULL))
                start = s - 1;
        ORACLE_CHECK(end > start && end <= *len);
        put_zero(text, len, start, end, subst);
    }
    return j;
}

/* Both parsers on the same bytes: same verdict, and the same values when the
 * jdoc tree is written as jansson holds values. jv_write's text (numbers as
 * sent) parses back to an equal tree that writes the very same text again;
 * and, where jansson took the input as it is, jansson reads that text as the
 * value it read from the input. Returns NULL, or what differs (in msg). */
static const char *oracle_agree(const char *text, size_t len, char *msg, size_t msg_size)
{
    struct arena a;
    const struct jv *v = NULL;
    char *judged = (char *)text;
    size_t judged_len = len;
    bool subst;
    const char *why = NULL;
    json_t *j = jansson_judge(&judged, &judged_len, &subst);

    arena_init(&a);
    int rc = jdoc_parse(&a, text, len, &v);
    if ((j != NULL) != (rc == 0)) {
        snprintf(msg, msg_size, "verdicts differ on [%.*s] (%zu bytes): jansson %s%s, jdoc %d",
                 (int)len, text, len, j != NULL ? "accepts" : "rejects",
                 subst ? " (big numbers as 0)" : "", rc);
        why = msg;
    } else if (j != NULL) {
        struct buf b, w, w2;
        const struct jv *jv = v, *again;
        char *want = json_dumps(j, ORACLE_DUMP);
        buf_init(&b, 0);
        buf_init(&w, 0);
        buf_init(&w2, 0);
        ORACLE_CHECK(want != NULL);
        if (subst)
            ORACLE_CHECK(jdoc_parse(&a, judged, judged_len, &jv) == 0);
        write_as_jansson(&b, jv);
        ORACLE_CHECK(jv_write(&w, v, 17) == 0);
        ORACLE_CHECK(jdoc_parse(&a, w.data, w.len, &again) == 0);
        ORACLE_CHECK(jv_write(&w2, again, 17) == 0);
        if (strcmp(b.data, want) != 0) {
            snprintf(msg, msg_size, "values differ on [%.*s]: jansson %s, jdoc %s", (int)len, text,
                     want, b.data);
            why = msg;
        } else if (!jv_equal(v, again) || strcmp(w.data, w2.data) != 0) {
            snprintf(msg, msg_size, "jv_write of [%.*s] does not read back: %s", (int)len, text,
                     w.data);
            why = msg;
        } else if (!subst) {
            json_t *back = json_loadb(w.data, w.len, ORACLE_JFLAGS, NULL);
            if (back == NULL || !json_equal(back, j)) {
                snprintf(msg, msg_size, "jv_write of [%.*s] is %s, not the same value", (int)len,
                         text, w.data);
                why = msg;
            }
            json_decref(back);
        }
        free(want);
        buf_dispose(&b);
        buf_dispose(&w);
        buf_dispose(&w2);
        json_decref(j);
    } else if (rc != -EINVAL) {
        snprintf(msg, msg_size, "jdoc refused [%.*s] with %d, not -EINVAL", (int)len, text, rc);
        why = msg;
    }
    if (subst)
        free(judged);
    arena_dispose(&a);
    return why;
}

#endif
