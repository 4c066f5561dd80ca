/* libFuzzer target: reading a divergence record back for replay.
 *
 * Input: one NDJSON line (a record, or anything).
 *
 * Checked beyond "no crash, no leak, no undefined behaviour":
 * - a verdict is one of parsed, invalid (not JSON) or foreign, with a reason;
 * - a parsed record has a method, a target, at most REPLAY_HEADERS_MAX headers,
 *   each with a name, and redacted exactly when the value is the marker;
 * - the request written again from a parsed record (a head of its method,
 *   target and headers, and its body) reads back the same method, target and
 *   body (unless it says body_redacted): the writer and the reader agree. */
#include "fuzz.h"

#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/http1.h"
#include "ficus/replay.h"

#include <string.h>

static struct config *cfg;

static struct config *config_once(void)
{
    if (cfg == NULL) {
        const char *t =
            "{\"listen\":\"127.0.0.1:1\",\"backends\":{\"legacy\":{\"url\":\"http://"
            "127.0.0.1:2\"},\"new\":{\"url\":\"http://127.0.0.1:3\"}},\"routes\":[{"
            "\"name\":\"r\"}],\"divergence_log\":{\"path\":\"x\",\"request_body_bytes\":"
            "16777216}}";
        struct config_errors errs = {0};
        cfg = config_parse(t, strlen(t), "fuzz", &errs);
        config_errors_dispose(&errs);
        FUZZ_CHECK(cfg != NULL);
    }
    return cfg;
}

/* Writes the record's request again and reads it back. */
static void round_trip(const struct replay_record *r)
{
    struct buf head = {0}, line = {0};
    int rc = buf_printf(&head, "%s %s HTTP/1.1\r\n", r->method, r->target);
    for (size_t i = 0; rc == 0 && i < r->n_headers; i++) {
        rc = buf_printf(&head, "%s: ", r->headers[i].name);
        if (rc == 0)
            rc = buf_append(&head, r->headers[i].value, r->headers[i].value_len);
        if (rc == 0)
            rc = buf_puts(&head, "\r\n");
    }
    if (rc == 0)
        rc = buf_puts(&head, "\r\n");
    /* What ficus writes has passed its head scanner: so must this head. */
    struct head_scan scan = {0};
    if (rc == 0 &&
        (http1_scan_head(&scan, head.data, head.len, head.len + 1) != 1 || scan.pos != head.len))
        rc = FICUS_EBADREQ;
    if (rc == 0)
        rc = buf_puts(&line, "{\"id\":\"i\",\"route\":\"r\",\"method\":\"M\",\"target\":\"/\",");
    if (rc == 0)
        rc = replay_request_json(&line, config_once(), head.data, head.len, r->body, r->body_len);
    if (rc == 0 && buf_puts(&line, "}") == 0) {
        /* The head parsed (ficus's strict parser took it): the line reads back. */
        struct replay_record back;
        replay_record_init(&back);
        char why[256];
        int v = replay_record_parse(&back, line.data, line.len, why, sizeof(why));
        FUZZ_CHECK(v == REPLAY_PARSED);
        /* Unless something had to be hidden in it, the body comes back as it was. */
        FUZZ_CHECK(back.body_redacted || back.body_len == r->body_len);
        FUZZ_CHECK(back.body_redacted || r->body_len == 0 ||
                   memcmp(back.body, r->body, r->body_len) == 0);
        /* A method that parsed is a token: written as it is. */
        FUZZ_CHECK(strcmp(back.method, r->method) == 0);
        FUZZ_CHECK(back.n_headers <= r->n_headers);
        replay_record_dispose(&back);
    }
    buf_dispose(&head);
    buf_dispose(&line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct replay_record r;
    replay_record_init(&r);
    char why[256] = "";
    int v = replay_record_parse(&r, (const char *)data, size, why, sizeof(why));
    FUZZ_CHECK(v == REPLAY_PARSED || v == REPLAY_INVALID || v == REPLAY_FOREIGN);
    if (v != REPLAY_PARSED) {
        FUZZ_CHECK(why[0] != '\0');
    } else {
        FUZZ_CHECK(r.method != NULL && r.method[0] != '\0');
        FUZZ_CHECK(r.target != NULL && r.target[0] != '\0');
        FUZZ_CHECK(r.n_headers <= REPLAY_HEADERS_MAX);
        for (size_t i = 0; i < r.n_headers; i++) {
            FUZZ_CHECK(r.headers[i].name[0] != '\0');
            FUZZ_CHECK(r.headers[i].redacted == (strcmp(r.headers[i].value, REPLAY_REDACTED) == 0));
        }
        char ep[ENDPOINT_NAME_MAX];
        replay_endpoint_name(r.method, r.target, ep, sizeof(ep));
        FUZZ_CHECK(strlen(ep) < sizeof(ep));
        round_trip(&r);
    }
    replay_record_dispose(&r);
    return 0;
}
