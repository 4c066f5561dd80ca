/* Client connections: read, parse, route, forward to the primary backend,
 * stream the response back, keep-alive and pipelining, limits and timeouts. */
#ifndef FICUS_CONN_H
#define FICUS_CONN_H

#include <stdbool.h>
#include <uv.h>

struct worker;
struct tls_ctx;

/* Accepts one pending connection on listener (a worker's). tls is the
 * listener's TLS context, NULL for plain TCP. */
void conn_accept(struct worker *w, uv_stream_t *listener, struct tls_ctx *tls);

/* Closes idle client connections and makes busy ones close after their
 * current response (graceful drain). */
void conn_drain(struct worker *w);

/* Closes every client connection now (the drain deadline passed). */
void conn_close_all(struct worker *w);

/* Frees the worker's spare exchanges; once its loop has ended. */
void conn_worker_dispose(struct worker *w);

#endif
