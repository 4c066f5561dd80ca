/* libFuzzer target: jdoc against jansson, the parser it replaced in the diff.
 *
 * Input: any bytes, parsed by both json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL)
 * and jdoc_parse and judged by tests/jdoc_oracle.h, as the unit test does: the
 * same verdict (numbers jansson refuses for their size alone count as 0 for
 * it); for JSON the same value as jansson holds it; and what jdoc writes
 * (numbers as sent) parses back to an equal value that writes the same text. */
#include "fuzz.h"

#define ORACLE_CHECK(cond) FUZZ_CHECK(cond)
#include "../jdoc_oracle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char msg[1024];
    const char *why = oracle_agree((const char *)data, size, msg, sizeof(msg));
    if (why != NULL) {
        fprintf(stderr, "%s\n", why);
        abort();
    }
    return 0;
}
