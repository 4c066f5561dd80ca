/* etcd's v3 API through its JSON gateway (etcd 3.4 and newer): request bodies,
 * answers parsed into plain structs, and the watch stream cut into messages.
 * Pure: no libuv, no socket; the HTTP/1.1 exchange is the caller's.
 *
 * What follows is how the gateway behaves, measured against etcd 3.4.23 (the
 * Debian package etcd-server) with a raw socket; the .http files in tests/data/etcd are
 * those answers byte for byte (capture.py there makes them again).
 *
 * TRANSPORT. Every call is `POST /v3/<service>/<method>` with a JSON body
 * (Content-Type is not required), HTTP/1.1 keep-alive. `GET /version` answers
 * {"etcdserver":"3.4.23","etcdcluster":"3.4.0"} (etcd 3.3 serves the gateway
 * under /v3beta, so /version is how a start tells "not etcd" and "too old"
 * apart from a working endpoint). A path the gateway does not know is
 * `404 text/plain "Not Found\n"`, a GET on a gateway path
 * `405 text/plain "Method Not Allowed\n"`.
 *   - A 200 answer to a unary call has Content-Length.
 *   - An error raised by etcd itself is chunked, announces `Trailer:
 *     Grpc-Trailer-Content-Type` and sends that trailer after the last chunk.
 *   - An error of the gateway (body not JSON) has Content-Length.
 *   - Streams (watch, lease keepalive) are chunked.
 * Every request should carry `Grpc-Metadata-hasleader: true`
 * (ETCDV3_HASLEADER_*): a member that has lost its leader then answers at once
 * `503 {"error":"etcdserver: no leader",...,"code":14}` and ends a watch with
 * the same error within about two election timeouts. Without it a linearizable
 * read on such a member hangs about 6 s before `503 "etcdserver: request timed
 * out"`, a put or lease grant 6 s before `500 "context deadline exceeded"`
 * (code 2), and a watch stays open and silent (25 s and counting when measured).
 *
 * ENCODING. Keys and values (protobuf bytes) are standard base64 with padding.
 * int64 and uint64 fields are JSON strings ("revision":"7"; member ids do not
 * fit an int64); requests may give them as strings or numbers. A field at its
 * zero value is left out of an answer: no "kvs" when nothing matched, no
 * "count" when 0, no "succeeded" when a txn's compare failed, no "type" for a
 * PUT event, no "lease" on a key without one, no "TTL" when a lease is gone, no
 * "watch_id" for watch 0, no "revision" in the header of a compaction cancel.
 * Unknown request fields are ignored.
 *
 * CALLS (answers shown without "header":{"cluster_id":..,"member_id":..,
 * "revision":..,"raft_term":..}, which every answer has; header.revision is the
 * store's revision when the call was served, or the revision a write made):
 *   /v3/kv/range  {"key":K,"range_end":E,"limit":"N","revision":"R"}
 *       -> {"kvs":[{"key":K,"create_revision":"2","mod_revision":"4",
 *           "version":"3","value":V,"lease":"L"}],"more":true,"count":"2"}
 *       range_end = the prefix with its last byte incremented covers a prefix;
 *       "more" with a limit says a next page starts at the last key + "\0".
 *       A revision below the compaction point: 400 code 11 "etcdserver: mvcc:
 *       required revision has been compacted"; above the store's: 400 code 11
 *       "... is a future revision".
 *   /v3/kv/put    {"key":K,"value":V,"lease":"L","prev_kv":true} -> {"prev_kv":{..}}
 *       A lease that does not exist: 404 code 5 "etcdserver: requested lease not found".
 *   /v3/kv/txn    {"compare":[{"key":K,"target":"MOD","result":"EQUAL",
 *                   "mod_revision":"4"}],
 *                  "success":[{"request_put":{"key":K,"value":V}}],
 *                  "failure":[{"request_range":{"key":K}}]}
 *       -> success: {"succeeded":true,"responses":[{"response_put":{"header":
 *                   {"revision":"5"}}}]}
 *       -> failure: {"responses":[{"response_range":{"header":{"revision":"5"},
 *                   "kvs":[..the current value..],"count":"1"}}]}
 *       targets VERSION, CREATE, MOD, VALUE, LEASE with the fields "version",
 *       "create_revision", "mod_revision", "value", "lease"; results EQUAL,
 *       GREATER, LESS, NOT_EQUAL. A key that does not exist has mod_revision,
 *       create_revision and version 0, so "MOD EQUAL 0" is "create if absent".
 *       Writing one key twice in a txn: 400 code 3 "duplicate key given in txn
 *       request"; a bigger request than --max-request-bytes (1.5 MiB by
 *       default): 400 code 3 "etcdserver: request is too large".
 *   /v3/lease/grant {"TTL":"10","ID":"0"} -> {"ID":"9004844325740502024","TTL":"10"}
 *       etcd raises a TTL under its minimum (ceil(1.5 x election timeout): 2 s
 *       with the default 1 s) without a word. An ID already in use: 412 code 9.
 *   /v3/lease/keepalive {"ID":"L"}: a stream, but one POST with one object works:
 *       200 chunked, one chunk `{"result":{"header":..,"ID":"L","TTL":"10"}}\n`,
 *       then the last chunk; the connection stays usable. A lease that expired
 *       or never existed: the same with no "TTL". Without a leader: 503 chunked
 *       `{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no
 *       leader","http_status":"Service Unavailable"}}`.
 *   /v3/lease/revoke {"ID":"L"} -> {} (the lease's keys are deleted, watchers see
 *       DELETE events); unknown: 404 code 5 "etcdserver: requested lease not found".
 *
 * ERRORS. A unary call: {"error":"<text>","message":"<text>","code":<grpc>}; a
 * stream (watch, keepalive): {"error":{"grpc_code":..,"http_code":..,
 * "message":..,"http_status":..}} (and on a watch it comes inside a 200).
 * gRPC codes seen: 3 InvalidArgument (400), 5 NotFound (404), 9
 * FailedPrecondition (412), 11 OutOfRange (400), 14 Unavailable (503), 2
 * Unknown (500), 1 Canceled (408). etcdv3_error_kind sorts them by what the
 * client does next.
 *
 * WATCH. POST /v3/watch {"create_request":{"key":K,"range_end":E,
 * "start_revision":"R","prev_kv":true,"fragment":true}} answers 200 chunked and
 * stays open. Each message is one JSON object followed by "\n", in one chunk
 * (do not rely on that: cut on "\n"):
 *   {"result":{"header":{..,"revision":"6"},"created":true}}        first
 *   {"result":{"header":{..,"revision":"7"},"events":[
 *      {"kv":{"key":K,"create_revision":"2","mod_revision":"7","version":"3","value":V},
 *       "prev_kv":{..}},
 *      {"type":"DELETE","kv":{"key":K,"mod_revision":"8"},"prev_kv":{..}}]}}
 * One message holds every event of a revision (a txn's writes together), and
 * a catch-up from an old start_revision batches up to 1000 revisions into one
 * message; with "fragment":true etcd cuts a message bigger than
 * --max-request-bytes + 512 KiB into several, each with "fragment":true but
 * the last. A lease that expires deletes its keys: DELETE events.
 *   - start_revision below the compaction point: "created", then
 *     {"result":{"header":{..no revision..},"canceled":true,"compact_revision":"9"}};
 *     the connection stays open (close it).
 *   - start_revision in the future: created, then silence until then.
 *   - an empty range (key >= range_end): {"result":{..,"watch_id":"-1",
 *     "created":true,"canceled":true,"cancel_reason":"mvcc: watcher range is empty"}}.
 *   - a body that is no watch request (`{"x":1}`, empty): no answer at all, not
 *     even a head: wait for "created" with a deadline.
 *   - the member stops (SIGTERM): {"error":{"grpc_code":14,"http_code":503,
 *     "message":"transport is closing",..}} WITHOUT a newline, the last
 *     chunk, then the connection closes; a leader that stops says grpc_code 1
 *     "grpc: the client connection is closing". Killed (SIGKILL): the
 *     connection closes in the middle of the chunked body.
 *   - the member loses its leader: with hasleader, {"error":{"grpc_code":14,
 *     ..,"message":"etcdserver: no leader"}} (no newline) and the last chunk
 *     about 2 s later; without it, nothing.
 *   - nothing is sent on an idle watch: progress_notify gives an empty result
 *     every 10 minutes by default (--experimental-watch-progress-notify-interval),
 *     so a frozen member or a cut network path is only seen by other calls
 *     (the lease keepalive) or by a deadline.
 *   - cancel: {"cancel_request":{"watch_id":"0"}} answers {"result":{..,
 *     "canceled":true}}, but only on a request body that is still open, and
 *     etcd's Go HTTP/1.1 server reads the request body to its end before it
 *     sends the answer's head (and may then drop later requests in it). So a
 *     streamed request body does not work over HTTP/1.1: one watch per
 *     connection, its body sent whole, and closing the connection cancels it.
 *
 * Resuming a watch: events of one revision never straddle two messages unless
 * fragmented, so after a message with "fragment" false every revision up to
 * the highest mod_revision in it is complete; a new watch starts at that + 1
 * (or at header.revision + 1 of the last message when it had no events). A
 * compact_revision answer means the revisions in between are gone: read the
 * whole prefix again (a range; header.revision is the revision it shows) and
 * watch from that + 1. */
#ifndef FICUS_ETCDV3_H
#define FICUS_ETCDV3_H

#include "ficus/buf.h"
#include "ficus/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The request header that makes a member without a leader answer at once. */
#define ETCDV3_HASLEADER_NAME  "Grpc-Metadata-hasleader"
#define ETCDV3_HASLEADER_VALUE "true"

/* A watch message longer than this is refused (the stream is then dead): one
 * message holds at most a fragment (--max-request-bytes + 512 KiB of protobuf,
 * 2 MiB by default, about 2.8 MiB as JSON) when "fragment" is asked for. */
#define ETCDV3_MSG_MAX_DEFAULT (8u * 1024 * 1024)
#define ETCDV3_WHY_MAX         160 /* reasons for logs, cut beyond */

enum etcdv3_call {
    ETCDV3_VERSION,         /* GET /version */
    ETCDV3_RANGE,           /* POST /v3/kv/range */
    ETCDV3_PUT,             /* POST /v3/kv/put */
    ETCDV3_TXN,             /* POST /v3/kv/txn */
    ETCDV3_LEASE_GRANT,     /* POST /v3/lease/grant */
    ETCDV3_LEASE_KEEPALIVE, /* POST /v3/lease/keepalive, one object */
    ETCDV3_LEASE_REVOKE,    /* POST /v3/lease/revoke */
    ETCDV3_WATCH,           /* POST /v3/watch: a stream, see etcdv3_stream */
    ETCDV3_CALL_N
};

/* The path and method of a call ("/v3/kv/range", "POST"). Static strings. */
const char *etcdv3_path(enum etcdv3_call call);
const char *etcdv3_method(enum etcdv3_call call);

/* ---- base64 and keys ---------------------------------------------------- */

/* The length of n bytes in base64 with padding. */
size_t etcdv3_b64_len(size_t n);
/* Appends the base64 of the n bytes at p to b. Returns 0 or a buf error. */
int etcdv3_b64_append(struct buf *b, const void *p, size_t n);
/* Decodes n characters of standard base64 with padding (what etcd writes) into
 * out, which holds at least n / 4 * 3 bytes; sets *out_len. Returns 0, or
 * FICUS_EBADRESP for a length that is no multiple of 4, a character outside
 * the alphabet, misplaced padding or non-zero padding bits. */
int etcdv3_b64_decode(const char *p, size_t n, char *out, size_t *out_len);

/* The range_end that covers every key starting with prefix: the prefix cut
 * after its last byte below 0xff, that byte incremented; "\0" (every key) for
 * an empty or all-0xff prefix. out holds prefix.len bytes (at least 1); sets
 * *out_len. */
void etcdv3_prefix_end(struct span prefix, char *out, size_t *out_len);

/* ---- request bodies ----------------------------------------------------- */
/* Each appends one JSON object to b and returns 0 or a buf error (nothing
 * useful is left in b then). Keys and values are bytes (spans). */

/* A range of [key, range_end) (range_end.len 0: key alone), at most limit kvs
 * (0: all), at revision (0: the current one). */
int etcdv3_range_body(struct buf *b, struct span key, struct span range_end, int64_t limit,
                      int64_t revision);
/* A put, bound to lease (0: none). */
int etcdv3_put_body(struct buf *b, struct span key, struct span value, int64_t lease);

enum etcdv3_target { ETCDV3_CMP_VERSION, ETCDV3_CMP_CREATE, ETCDV3_CMP_MOD, ETCDV3_CMP_LEASE };
enum etcdv3_result { ETCDV3_CMP_EQUAL, ETCDV3_CMP_GREATER, ETCDV3_CMP_LESS, ETCDV3_CMP_NOT_EQUAL };

/* One comparison of a txn: target(key) result value. */
struct etcdv3_compare {
    struct span key;
    enum etcdv3_target target;
    enum etcdv3_result result;
    int64_t value;
};

enum etcdv3_op_kind { ETCDV3_OP_RANGE, ETCDV3_OP_PUT, ETCDV3_OP_DELETE };

/* One operation of a txn branch. */
struct etcdv3_op {
    enum etcdv3_op_kind kind;
    struct span key;
    struct span value;     /* put */
    struct span range_end; /* range and delete; len 0: the key alone */
    int64_t lease;         /* put; 0: none */
};

/* A txn: if every comparison holds, success, else failure. */
int etcdv3_txn_body(struct buf *b, const struct etcdv3_compare *cmp, size_t n_cmp,
                    const struct etcdv3_op *success, size_t n_success,
                    const struct etcdv3_op *failure, size_t n_failure);
/* The write of a live state value: put value at key (bound to lease, 0: none)
 * if key's mod_revision is still expect (0: the key must not exist), else read
 * key (the failure branch answers the current value). */
int etcdv3_cas_body(struct buf *b, struct span key, struct span value, int64_t lease,
                    int64_t expect_mod_revision);

/* Lease calls. ttl_s is in seconds; id 0 lets etcd choose. */
int etcdv3_lease_grant_body(struct buf *b, int64_t ttl_s, int64_t id);
/* {"ID":"id"}: the body of a keepalive and of a revoke. */
int etcdv3_lease_id_body(struct buf *b, int64_t id);

struct etcdv3_watch_create {
    struct span key;
    struct span range_end;  /* len 0: the key alone */
    int64_t start_revision; /* 0: from now */
    bool prev_kv;
    bool progress_notify;
    bool fragment;
};
int etcdv3_watch_create_body(struct buf *b, const struct etcdv3_watch_create *w);
/* Over HTTP/1.1 useless against etcd 3.4 (see the top of this file: close the
 * connection instead); kept for completeness and HTTP/2 gateways. */
int etcdv3_watch_cancel_body(struct buf *b, int64_t watch_id);

/* ---- answers ------------------------------------------------------------ */

struct etcdv3_header {
    uint64_t cluster_id;
    uint64_t member_id;
    int64_t revision; /* 0 when absent (a compaction cancel) */
    uint64_t raft_term;
};

/* A key and its value, decoded. key and value are NUL-terminated (and may hold
 * NUL bytes: use the lengths); they live in the arena of the answer or watch
 * message that holds the kv. */
struct etcdv3_kv {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
};

/* An error etcd or its gateway answered. */
struct etcdv3_error {
    int http_status;
    int grpc_code; /* -1 when the body had none (text/plain 404, 405...) */
    char message[ETCDV3_WHY_MAX];
};

/* What the client does about an error. */
enum etcdv3_error_kind {
    ETCDV3_ERR_UNAVAILABLE,     /* this member cannot serve now (no leader, timeout,
                                   stopping, overloaded): another member, or later */
    ETCDV3_ERR_COMPACTED,       /* the revision asked for is compacted: read everything again */
    ETCDV3_ERR_FUTURE_REVISION, /* the revision asked for is ahead of this member */
    ETCDV3_ERR_LEASE_NOT_FOUND, /* the lease expired or was revoked: grant a new one */
    ETCDV3_ERR_AUTH,            /* authentication or permission: the operator must act */
    ETCDV3_ERR_NOT_ETCD,        /* no JSON gateway at this path (not etcd, or too old) */
    ETCDV3_ERR_REQUEST,         /* etcd refused the request itself (too large, invalid) */
    ETCDV3_ERR_OTHER
};
enum etcdv3_error_kind etcdv3_error_kind(const struct etcdv3_error *e);
/* "unavailable", "compacted"... for logs. Static. */
const char *etcdv3_error_kind_name(enum etcdv3_error_kind k);

/* A parsed answer. Only the fields of its call are set; the rest are zero. */
struct etcdv3_answer {
    enum etcdv3_call call;
    struct etcdv3_header header;
    /* range: the kvs; txn: those of the first range op of the branch taken;
     * put: the previous kv when prev_kv was asked and there was one. */
    struct etcdv3_kv *kvs;
    size_t n_kvs;
    bool more;                 /* range: a limit cut the answer */
    int64_t count;             /* range: keys in the range, whatever the limit */
    bool succeeded;            /* txn: the comparisons held */
    size_t n_responses;        /* txn: operations answered */
    int64_t lease_id;          /* lease grant and keepalive */
    int64_t ttl;               /* lease grant and keepalive; 0: the lease is gone */
    char server_version[32];   /* version: "3.4.23" */
    char cluster_version[32];  /* version: "3.4.0", or "not_decided" early on */
    struct etcdv3_error error; /* set when etcdv3_parse returns FICUS_ESTORE */
    char why[ETCDV3_WHY_MAX];  /* set when it returns FICUS_EBADRESP */
    struct arena arena;        /* owns kvs, their keys and values */
};

void etcdv3_answer_init(struct etcdv3_answer *a);
void etcdv3_answer_dispose(struct etcdv3_answer *a);

/* Parses the body (de-chunked) of an answer with HTTP status to call into a,
 * which must be initialised (a parse of a reused answer disposes the earlier
 * one). Returns 0; FICUS_ESTORE when etcd answered an error (a->error; a
 * non-2xx status always is one); FICUS_EBADRESP when a 2xx body is not the
 * answer the call has (a->why), including a /version that is not etcd's or
 * older than 3.4; FICUS_ENOMEM. Never reads past len. */
int etcdv3_parse(enum etcdv3_call call, int status, const char *body, size_t len,
                 struct etcdv3_answer *a);

/* ---- the watch stream --------------------------------------------------- */

enum etcdv3_msg_kind {
    ETCDV3_MSG_CREATED,  /* the watch runs */
    ETCDV3_MSG_EVENTS,   /* changes */
    ETCDV3_MSG_PROGRESS, /* no events: every change up to header.revision was sent */
    ETCDV3_MSG_CANCELED, /* the watch ended: compact_revision or cancel_reason says why */
    ETCDV3_MSG_ERROR,    /* the stream ended with an error (error) */
};

enum etcdv3_event_type { ETCDV3_EVENT_PUT, ETCDV3_EVENT_DELETE };

struct etcdv3_event {
    enum etcdv3_event_type type;
    struct etcdv3_kv kv; /* a DELETE has the key and mod_revision only */
    bool has_prev;
    struct etcdv3_kv prev; /* with prev_kv, when the key existed */
};

/* One message of a watch stream; it and everything it points to live until
 * the callback it is given to returns. */
struct etcdv3_watch_msg {
    enum etcdv3_msg_kind kind;
    struct etcdv3_header header;
    int64_t watch_id;
    bool fragment;             /* more events of this batch follow */
    int64_t compact_revision;  /* canceled: the oldest revision still kept */
    const char *cancel_reason; /* canceled: etcd's reason, "" when none */
    struct etcdv3_event *events;
    size_t n_events;
    int64_t last_revision;     /* the highest mod_revision among the events, 0 without */
    struct etcdv3_error error; /* kind ERROR */
};

/* Called for each complete message; a non-zero return stops the feed, which
 * returns it. */
typedef int (*etcdv3_watch_cb)(void *arg, const struct etcdv3_watch_msg *msg);

/* Cuts a watch answer's body (de-chunked bytes, in pieces of any size) into
 * messages. Holds at most one incomplete message, never more than max bytes:
 * a longer one stops the stream with FICUS_ETOOBIG. */
struct etcdv3_stream {
    struct buf pending; /* the incomplete message, without its newline */
    size_t max;
    int error; /* sticky: once the stream failed every call returns this */
    uint64_t messages;
    char why[ETCDV3_WHY_MAX];
    struct arena arena; /* the current message's memory, emptied after each */
};

void etcdv3_stream_init(struct etcdv3_stream *s, size_t max_message);
void etcdv3_stream_dispose(struct etcdv3_stream *s);
/* Feeds body bytes; calls cb for each message they complete. Returns 0, what
 * cb returned, FICUS_ETOOBIG (a message over max), FICUS_EBADRESP (a message
 * that is not a watch message, s->why), or FICUS_ENOMEM. */
int etcdv3_stream_feed(struct etcdv3_stream *s, const char *p, size_t len, etcdv3_watch_cb cb,
                       void *arg);
/* The body ended: a last message without its newline (etcd's stream errors
 * have none) is delivered. Same returns as etcdv3_stream_feed. */
int etcdv3_stream_end(struct etcdv3_stream *s, etcdv3_watch_cb cb, void *arg);

#endif
