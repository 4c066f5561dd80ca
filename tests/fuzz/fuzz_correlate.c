/* libFuzzer target: id correlation's rewrite of shadow requests and its reading
 * of created ids.
 *
 * Input: a request target, "\n", then a body. A map knows a few pairs (in
 * /posts, /posts/1/comments, /users and the root); the request
 * "POST <target> HTTP/1.1" with a Content-Length of the body is rewritten (to
 * new and to legacy) with
 * body fields /post_id, /items/x/ref and /author (collection /users), and the
 * body is also read as both responses of a create (id_pointer /id, a Location
 * of the target).
 *
 * Checked beyond "no crash, no leak, no undefined behaviour":
 * - a rewrite yields a head that still ends with an empty line, keeps the method
 *   and the version, and whose Content-Length is the new body's length;
 * - reading ids never fails but for memory, and the map never holds more than
 *   its bound. */
#include "fuzz.h"

#include "ficus/buf.h"
#include "ficus/correlate.h"

#include <string.h>

static struct correlate *map_of(void)
{
    static struct correlate *m;
    if (m == NULL) {
        m = correlate_new(8, 1000000);
        FUZZ_CHECK(m != NULL);
    }
    static const char *const pairs[][3] = {
        {"/posts", "1", "p-1"}, {"/posts/1/comments", "7", "c-7"},
        {"/users", "1", "44"},  {"", "x", "new x/with?odd#bytes"},
        {"/posts", "2", "p-2"},
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
        correlate_learn(m, pairs[i][0], strlen(pairs[i][0]), pairs[i][1], strlen(pairs[i][1]),
                        i == 3, pairs[i][2], strlen(pairs[i][2]), i != 2, 1);
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    const char *nl = memchr(p, '\n', size);
    size_t tlen = nl != NULL ? (size_t)(nl - p) : size;
    const char *body = nl != NULL ? nl + 1 : "";
    size_t blen = nl != NULL ? size - tlen - 1 : 0;
    if (tlen == 0 || memchr(p, ' ', tlen) != NULL || memchr(p, '\r', tlen) != NULL)
        return 0;
    struct correlate *m = map_of();

    struct buf head = {0};
    FUZZ_CHECK(buf_puts(&head, "POST ") == 0);
    FUZZ_CHECK(buf_append(&head, p, tlen) == 0);
    FUZZ_CHECK(buf_printf(&head, " HTTP/1.1\r\nHost: a\r\nContent-Length: %zu\r\n\r\n", blen) == 0);

    struct correlate_field fields[] = {{.pointer = "/post_id"},
                                       {.pointer = "/items/*/ref"},
                                       {.pointer = "/author", .collection = "/users"}};
    struct correlate_cfg cfg = {.enabled = true,
                                .id_pointer = "/id",
                                .location = true,
                                .body_fields = fields,
                                .n_body_fields = 3,
                                .max_entries = 8,
                                .ttl_ms = 1000000};
    struct buf oh = {0}, ob = {0};
    bool changed = false;
    for (int dir = 0; dir < 2; dir++) {
        int n = correlate_rewrite(m, &cfg, dir == 1, head.data, head.len, body, blen, false, 2, &oh,
                                  &ob, &changed);
        if (n > 0) {
            FUZZ_CHECK(oh.len >= 4 && memcmp(oh.data + oh.len - 4, "\r\n\r\n", 4) == 0);
            FUZZ_CHECK(memcmp(oh.data, "POST ", 5) == 0);
            FUZZ_CHECK(memmem(oh.data, oh.len, " HTTP/1.1\r\n", 11) != NULL);
            char cl[64];
            int cn = snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", changed ? ob.len : blen);
            FUZZ_CHECK(memmem(oh.data, oh.len, cl, (size_t)cn) != NULL);
        }
    }

    /* The body as both sides' answer to a create at the target. */
    struct diff_header hl[] = {{"location", 8, p, tlen}};
    struct diff_response r1 = {
        .status = 201, .headers = hl, .n_headers = 1, .body = body, .body_len = blen};
    struct diff_response r2 = {.status = 201, .body = "{\"id\":\"q\"}", .body_len = 10};
    FUZZ_CHECK(correlate_observe(m, &cfg, "POST", p, tlen, &r1, &r2, 3) >= 0);
    struct correlate_stats st;
    correlate_stats(m, 4, &st);
    FUZZ_CHECK(st.size <= 8);

    buf_dispose(&head);
    buf_dispose(&oh);
    buf_dispose(&ob);
    return 0;
}
