/* Micro-benchmark of the comparison's hot path: jdoc_parse and diff_responses
 * on two JSON documents of about 256 KiB that differ in a few fields.
 *
 *   cmake --build build --target diffbench && build/diffbench [seconds]
 *
 * Prints MB/s of both bodies together (the bytes a comparison reads) per
 * second of CPU time, for the parse alone and for the whole diff (status,
 * headers, parse, walk). The
 * documents are generated from a fixed seed, so every run measures the same
 * work: an array of objects with integer ids, reals, strings, timestamps,
 * nested objects and arrays of numbers, the shape of a typical list endpoint.
 *
 * Each measurement runs twice: with glibc's default malloc settings, and with
 * heap trimming off (M_TRIM_THRESHOLD and M_MMAP_THRESHOLD raised). With the
 * defaults, freeing a comparison's arena returns the top of the heap to the
 * kernel and the next comparison faults it in again; on a VM that costs more
 * than the parse. The second figure is the parser's and the diff's own speed. */
#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/diff.h"
#include "ficus/jdoc.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DOC_BYTES (256 * 1024)

/* CPU time of this process, not wall time: on a machine shared with other
 * work, the figures then say what the code costs rather than how busy the
 * neighbours are (the kernel's page faults count, as they should). */
static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* One document; variant 1 changes a few fields of a few items. */
static void gen_doc(struct buf *b, int variant)
{
    uint64_t seed = 0x5eed5eed12345678ULL;
    static const char *const words[] = {"alpha", "bravo",  "charlie", "delta",  "echo",
                                        "fox",   "golf",   "hotel",   "india",  "juliet",
                                        "kilo",  "lima",   "mike",    "novem",  "oscar",
                                        "papa",  "quebec", "romeo",   "sierra", "tango"};
    buf_puts(b, "{\"total\":0,\"items\":[");
    for (int i = 0; b->len < DOC_BYTES - 400; i++) {
        uint64_t r = xorshift64s(&seed);
        bool changed = variant == 1 && i % 97 == 13;
        if (i > 0)
            buf_puts(b, ",");
        buf_printf(b,
                   "{\"id\":%d,\"user_id\":%llu,\"title\":\"%s %s %s\",\"price\":%.2f,"
                   "\"ratio\":%.15g,\"active\":%s,\"created_at\":\"2026-11-%02dT10:%02d:%02dZ\","
                   "\"tags\":[\"%s\",\"%s\"],\"dims\":{\"w\":%d,\"h\":%d,\"d\":%.3f},"
                   "\"scores\":[%d,%d,%d,%d],\"note\":null}",
                   i, (unsigned long long)(r % 1000000), words[r % 20], words[(r >> 8) % 20],
                   words[(r >> 16) % 20], (double)(r % 100000) / 100.0 + (changed ? 1 : 0),
                   (double)(r % 1000003) / 1000003.0, (r >> 20) & 1 ? "true" : "false",
                   1 + (int)((r >> 24) % 28), (int)((r >> 30) % 60), (int)((r >> 36) % 60),
                   words[(r >> 40) % 20], changed ? "changed" : words[(r >> 44) % 20],
                   (int)((r >> 48) % 1000), (int)((r >> 52) % 1000), (double)(r % 997) / 7.0,
                   (int)(r % 101), (int)((r >> 7) % 101), (int)((r >> 14) % 101),
                   (int)((r >> 21) % 101));
    }
    buf_puts(b, "]}");
}

/* DIFFBENCH_ITERS=N runs exactly N parses and N diffs per phase instead of
 * timing: for `perf stat -e instructions:u`, whose counts do not depend on the
 * load of the machine (take the difference of two values of N). */
static long fixed_iters(void)
{
    const char *v = getenv("DIFFBENCH_ITERS");
    return v != NULL ? atol(v) : -1;
}

static void run(const char *label, double seconds, const struct buf *lb, const struct buf *nb)
{
    long fixed = fixed_iters();
    const struct buf l = *lb, n = *nb;
    double mb = (double)(l.len + n.len) / 1e6;
    struct diff_header hl = {"content-type", 12, "application/json", 16};
    struct diff_response rl = {
        .status = 200, .headers = &hl, .n_headers = 1, .body = l.data, .body_len = l.len};
    struct diff_response rn = rl;
    rn.body = n.data;
    rn.body_len = n.len;

    /* The parse alone. */
    long iters = 0;
    double t0 = now_s(), t;
    if (fixed == 0)
        return;
    do {
        struct arena a;
        const struct jv *vl, *vn;
        arena_init(&a);
        if (jdoc_parse(&a, l.data, l.len, &vl) != 0 || jdoc_parse(&a, n.data, n.len, &vn) != 0) {
            fprintf(stderr, "parse failed\n");
            exit(1);
        }
        arena_dispose(&a);
        iters++;
        t = now_s();
    } while (fixed >= 0 ? iters < fixed : t - t0 < seconds / 2);
    printf("%-17s parse:  %.1f MB/s (%ld x %.0f KiB + %.0f KiB)\n", label,
           mb * (double)iters / (t - t0), iters, (double)l.len / 1024, (double)n.len / 1024);

    /* The whole comparison. */
    size_t items = 0;
    iters = 0;
    t0 = now_s();
    do {
        struct diff_result r;
        if (diff_responses(NULL, &rl, &rn, &r) != 0) {
            fprintf(stderr, "diff failed\n");
            exit(1);
        }
        items = r.n;
        diff_result_dispose(&r);
        iters++;
        t = now_s();
    } while (fixed >= 0 ? iters < fixed : t - t0 < seconds / 2);
    printf("%-17s diff:   %.1f MB/s (%ld comparisons, %zu differences each)\n", label,
           mb * (double)iters / (t - t0), iters, items);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    struct buf l = {0}, n = {0};
    gen_doc(&l, 0);
    gen_doc(&n, 1);
    run("default malloc", seconds, &l, &n);
    /* What ficus runs with (server.c): freed captures and arenas leave the process. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    run("as in ficus", seconds, &l, &n);
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    run("no heap trimming", seconds, &l, &n);
    buf_dispose(&l);
    buf_dispose(&n);
    return 0;
}
