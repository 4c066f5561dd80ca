/* libFuzzer target: the diff of two responses.
 *
 * Input: one flags byte, then the legacy body, then "\n=====\n" and the new
 * body (without the separator, both sides get the same body). Flags: 0x01
 * legacy is JSON, 0x02 new is JSON (else text/plain), 0x04 ignore rules,
 * 0x08 unordered arrays, 0x10 match_by arrays, 0x20 a numeric tolerance,
 * 0x40 one more compared header, 0x80 both bodies also sent gzipped.
 *
 * Checked beyond "no crash, no leak, no undefined behaviour":
 * - comparing a body with itself yields no differences, on either side;
 * - no difference one way exactly when none the other way;
 * - at most DIFF_MAX_ITEMS items, each with a path, and every value can be
 *   written as JSON (a record is never lost for its bytes);
 * - gzip is transparent: gzipped bodies give the same items. */
#include "fuzz.h"

#include "ficus/buf.h"
#include "ficus/diff.h"
#include "ficus/jdoc.h"

#include <string.h>
#include <zlib.h>

#define SEPARATOR "\n=====\n"

static const char *compared_one[] = {"content-type"};
static const char *compared_two[] = {"content-type", "x-a"};
static const char *ignores[] = {"/a", "/b/*/c", "/*/x", "/list/0"};
static const char *unordered[] = {"", "/items", "/*/list"};
static struct diff_match_by match_by[] = {{"/users", "id"}, {"/*/rows", "k"}, {"", "id"}};

static void rules_of(unsigned flags, struct diff_rules *r)
{
    memset(r, 0, sizeof(*r));
    r->headers = flags & 0x40 ? compared_two : compared_one;
    r->n_headers = flags & 0x40 ? 2 : 1;
    if (flags & 0x04) {
        r->ignore = ignores;
        r->n_ignore = sizeof(ignores) / sizeof(ignores[0]);
    }
    if (flags & 0x08) {
        r->unordered = unordered;
        r->n_unordered = sizeof(unordered) / sizeof(unordered[0]);
    }
    if (flags & 0x10) {
        r->match_by = match_by;
        r->n_match_by = sizeof(match_by) / sizeof(match_by[0]);
    }
    r->tolerance = flags & 0x20 ? 0.01 : 0;
}

/* A gzip member of in, malloc'd into *out. */
static size_t gzip_of(const char *in, size_t len, char **out)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    FUZZ_CHECK(deflateInit2(&zs, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    size_t cap = deflateBound(&zs, (uLong)len) + 32;
    *out = malloc(cap);
    FUZZ_CHECK(*out != NULL);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = (Bytef *)*out;
    zs.avail_out = (uInt)cap;
    FUZZ_CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    size_t n = cap - zs.avail_out;
    deflateEnd(&zs);
    return n;
}

struct side {
    struct diff_header headers[3];
    struct diff_response resp;
    char *gz;
};

static void side_init(struct side *s, bool json, bool gzip, const char *body, size_t len)
{
    memset(s, 0, sizeof(*s));
    const char *type = json ? "application/json" : "text/plain";
    s->headers[0] = (struct diff_header){"content-type", 12, type, strlen(type)};
    s->headers[1] = (struct diff_header){"x-a", 3, "1", 1};
    size_t n = 2;
    if (gzip && len > 0) {
        /* An empty body is never decoded (a HEAD answer), so it stays empty. */
        len = gzip_of(body, len, &s->gz);
        body = s->gz;
        s->headers[n++] = (struct diff_header){"content-encoding", 16, "gzip", 4};
    }
    s->resp = (struct diff_response){
        .status = 200, .headers = s->headers, .n_headers = n, .body = body, .body_len = len};
}

/* Compares a with b; checks the result's shape and that every item can be
 * written as JSON. The caller disposes out. */
static void compare(const struct diff_rules *rules, const struct diff_response *a,
                    const struct diff_response *b, struct diff_result *out)
{
    diff_result_init(out);
    FUZZ_CHECK(diff_responses(rules, a, b, out) == 0);
    FUZZ_CHECK(out->n <= DIFF_MAX_ITEMS && (!out->truncated || out->n == DIFF_MAX_ITEMS));
    struct buf w;
    buf_init(&w, 0);
    for (size_t i = 0; i < out->n; i++) {
        const struct diff_item *it = &out->items[i];
        FUZZ_CHECK(it->path != NULL && diff_kind_name(it->kind) != NULL);
        FUZZ_CHECK(buf_json_string(&w, it->path, strlen(it->path)) == 0);
        FUZZ_CHECK(it->legacy == NULL || jv_write(&w, it->legacy, 17) == 0);
        FUZZ_CHECK(it->new_ == NULL || jv_write(&w, it->new_, 17) == 0);
        char norm[256];
        diff_normalize_path(it->path, norm, sizeof(norm));
        buf_reset(&w);
    }
    buf_dispose(&w);
}

static void report(const char *what, const struct diff_result *r)
{
    fprintf(stderr, "%s: %zu items\n", what, r->n);
    for (size_t i = 0; i < r->n; i++)
        fprintf(stderr, "  %s %s\n", diff_kind_name(r->items[i].kind), r->items[i].path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    const char *legacy = text, *new_ = text;
    size_t legacy_len = len, new_len = len;
    const char *sep = memmem(text, len, SEPARATOR, strlen(SEPARATOR));
    if (sep != NULL) {
        legacy_len = (size_t)(sep - text);
        new_ = sep + strlen(SEPARATOR);
        new_len = len - legacy_len - strlen(SEPARATOR);
    }
    struct diff_rules rules;
    rules_of(flags, &rules);
    struct side l, n;
    side_init(&l, flags & 1, false, legacy, legacy_len);
    side_init(&n, flags & 2, false, new_, new_len);

    struct diff_result ab, ba, self;
    compare(&rules, &l.resp, &l.resp, &self);
    if (self.n != 0) {
        report("legacy against itself", &self);
        abort();
    }
    diff_result_dispose(&self);
    compare(&rules, &n.resp, &n.resp, &self);
    if (self.n != 0) {
        report("new against itself", &self);
        abort();
    }
    diff_result_dispose(&self);

    compare(&rules, &l.resp, &n.resp, &ab);
    compare(&rules, &n.resp, &l.resp, &ba);
    if ((ab.n == 0) != (ba.n == 0)) {
        report("legacy against new", &ab);
        report("new against legacy", &ba);
        abort();
    }
    diff_result_dispose(&ba);

    if (flags & 0x80) {
        struct side lz, nz;
        struct diff_result z;
        side_init(&lz, flags & 1, true, legacy, legacy_len);
        side_init(&nz, flags & 2, true, new_, new_len);
        compare(&rules, &lz.resp, &nz.resp, &z);
        bool same = z.n == ab.n && z.truncated == ab.truncated;
        for (size_t i = 0; same && i < z.n; i++)
            same = z.items[i].kind == ab.items[i].kind &&
                   strcmp(z.items[i].path, ab.items[i].path) == 0;
        if (!same) {
            report("plain", &ab);
            report("gzipped", &z);
            abort();
        }
        diff_result_dispose(&z);
        free(lz.gz);
        free(nz.gz);
    }
    diff_result_dispose(&ab);
    return 0;
}
