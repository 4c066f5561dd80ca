/* Client connections: read, parse, route, forward to the primary backend,
 * stream the response back, keep-alive and pipelining, limits and timeouts. */
#ifndef FICUS_CONN_H
#define FICUS_CONN_H

#include <stdbool.h>
#include <uv.h>

struct worker;
struct tls_ctx;
struct conn_worker;

/* conn.c's part of worker w (its connections and recycled exchanges), made
 * before the worker's loop runs and freed after it ended (conn_worker_free
 * accepts NULL). NULL when out of memory. */
struct conn_worker *conn_worker_new(struct worker *w);
void conn_worker_free(struct conn_worker *cw);

/* Accepts one pending connection on listener (a worker's). tls is the
 * listener's TLS context, NULL for plain TCP. */
void conn_accept(struct worker *w, uv_stream_t *listener, struct tls_ctx *tls);

/* Closes idle client connections and makes busy ones close after their
 * current response (graceful drain). */
void conn_drain(struct worker *w);

/* Is no client connection of w open any more (the drain is over)? */
bool conn_none_open(const struct worker *w);

/* Closes every client connection now (the drain deadline passed, or shutdown);
 * the worker's loop can end after this. */
void conn_close_all(struct worker *w);

#endif
