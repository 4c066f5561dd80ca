/* libFuzzer target: jdoc against jansson, the parser it replaced in the diff.
 *
 * Input: any bytes, parsed by both json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL)
 * and jdoc_parse. Checked: the same verdict; for JSON, the same value (both
 * written back at full precision, members in document order, byte for byte);
 * a value equals itself; and what jdoc writes parses back to an equal value. */
#include "fuzz.h"

#include "ficus/buf.h"
#include "ficus/jdoc.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    json_t *j = json_loadb(text, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    struct arena a;
    const struct jv *v = NULL;
    arena_init(&a);
    int rc = jdoc_parse(&a, text, size, &v);
    if ((j != NULL) != (rc == 0)) {
        fprintf(stderr, "verdicts differ on %zu bytes: jansson %s, jdoc %d\n", size,
                j != NULL ? "accepts" : "refuses", rc);
        abort();
    }
    if (j == NULL) {
        FUZZ_CHECK(rc == -EINVAL);
        arena_dispose(&a);
        return 0;
    }
    char *want = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
    struct buf got;
    buf_init(&got, 0);
    FUZZ_CHECK(want != NULL);
    FUZZ_CHECK(jv_write(&got, v, 17) == 0);
    if (strcmp(got.data, want) != 0) {
        fprintf(stderr, "values differ: jansson %s\njdoc    %s\n", want, got.data);
        abort();
    }
    FUZZ_CHECK(jv_equal(v, v));
    const struct jv *again = NULL;
    FUZZ_CHECK(jdoc_parse(&a, got.data, got.len, &again) == 0);
    FUZZ_CHECK(jv_equal(v, again));
    free(want);
    buf_dispose(&got);
    json_decref(j);
    arena_dispose(&a);
    return 0;
}
