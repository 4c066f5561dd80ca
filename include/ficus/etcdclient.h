/* The etcd client's transport on the control thread: etcd's v3 JSON gateway
 * over ficus's HTTP/1.1 client (upclient) and a pool set of its own over
 * state_store.endpoints. Unary calls borrow pooled keep-alive connections of
 * the current endpoint, each bounded by its own deadline (connect, queue and
 * answer together); the watch has a connection of its own, released as not
 * reusable to cancel it (etcd cannot cancel a watch over HTTP/1.1: see
 * etcdv3.h). Every request carries Grpc-Metadata-hasleader: true, so a member
 * without a leader answers at once. What to make of an answer (which endpoint
 * next, when to retry) is the caller's, except a refused connect: nothing
 * reached etcd, so the call goes on at once on the next endpoint.
 * Single-threaded, on the loop given. */
#ifndef FICUS_ETCDCLIENT_H
#define FICUS_ETCDCLIENT_H

#include "ficus/buf.h"
#include "ficus/etcdv3.h"
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

struct config;
struct etcdclient;

/* An answer to a unary call bigger than this is refused (FICUS_ETOOBIG): a
 * range is read in pages, and a page holds at most STORE_PAGE keys of at most
 * FLEET_VALUE_MAX bytes, base64 (4/3) and JSON around them. */
#define ETCDCLIENT_ANSWER_MAX (48u * 1024 * 1024)
/* A response head from etcd longer than this is refused. */
#define ETCDCLIENT_HEAD_MAX (16 * 1024)

/* The end of a unary call. status: 0 (a holds the parsed answer),
 * FICUS_ESTORE (etcd answered an error: a->error), FICUS_EBADRESP (not the
 * answer of the call, or not HTTP: a->why when a is set), FICUS_ETIMEOUT (no
 * whole answer within the call's deadline), FICUS_ETOOBIG, a libuv error
 * (connect refused on every endpoint, reset...), or UV_ECANCELED (the client
 * closed). a is NULL unless status is 0, FICUS_ESTORE or FICUS_EBADRESP, and
 * lives until the callback returns. endpoint: the index of the member that
 * answered (or failed). */
typedef void (*etcdclient_done_cb)(void *ctx, int status, int endpoint, struct etcdv3_answer *a);

/* What a watch's owner hears. */
struct etcdclient_watch_handlers {
    /* Each message of the stream (see etcdv3.h); it lives until this returns.
     * A non-zero return stops the watch (its connection closes; on_end is not
     * called). */
    int (*on_message)(void *ctx, const struct etcdv3_watch_msg *m);
    /* The stream ended: 0 when its body ended (etcd closed it: a member
     * stopping, a lost leader, after an error message), or FICUS_ETIMEOUT (no
     * "created" in time), FICUS_EBADRESP (not a watch stream: why says what),
     * FICUS_ETOOBIG (a message over the cap), a libuv error. */
    void (*on_end)(void *ctx, int status, const char *why);
};

/* Creates a client for cfg's state_store endpoints (resolved; cfg is
 * referenced until etcdclient_free) on loop. NULL when out of memory. */
struct etcdclient *etcdclient_new(uv_loop_t *loop, struct config *cfg);

/* Starts a unary call: body (a JSON object; NULL for GET /version) is copied.
 * cb runs exactly once, never before this returns. Returns 0, or an error
 * when nothing was started (cb not called). */
int etcdclient_call(struct etcdclient *c, enum etcdv3_call call, const struct buf *body,
                    int timeout_ms, etcdclient_done_cb cb, void *ctx);

/* Starts the watch (one at a time: a running one is stopped first) with the
 * create request body on the current endpoint; "created" must come within
 * created_ms, then the stream has no deadline. Returns 0 or an error (nothing
 * started). */
int etcdclient_watch(struct etcdclient *c, const struct buf *body, int created_ms,
                     const struct etcdclient_watch_handlers *h, void *ctx);
/* Stops the watch: its connection is closed; no handler runs after. */
void etcdclient_watch_stop(struct etcdclient *c);
/* Is a watch running (started and not ended)? */
bool etcdclient_watching(const struct etcdclient *c);

/* The endpoint calls go to: its index and its URL (the configuration's). */
int etcdclient_endpoint(const struct etcdclient *c);
const char *etcdclient_endpoint_url(const struct etcdclient *c, int endpoint);
size_t etcdclient_endpoints(const struct etcdclient *c);
/* Moves to the next endpoint (after a failure of the current one). */
void etcdclient_next_endpoint(struct etcdclient *c);

/* Ends everything: calls in flight end with UV_ECANCELED (their callbacks run
 * before this returns), the watch stops, connections close. The client is
 * unusable after; free it with etcdclient_free once the loop has run out. */
void etcdclient_close(struct etcdclient *c);
/* Frees a closed client (or one never used). Accepts NULL. */
void etcdclient_free(struct etcdclient *c);

#endif
