/* What the libFuzzer harnesses share: the entry point's prototype and a check
 * that stops the run with a message (a broken invariant is a crash to
 * libFuzzer, which then saves the input). */
#ifndef FICUS_FUZZ_H
#define FICUS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
