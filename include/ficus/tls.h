/* TLS on both sides: OpenSSL driven through memory BIOs, so that libuv owns
 * the socket and the HTTP code sees plaintext. A connection feeds the bytes it
 * read with tls_feed, takes plaintext out with tls_read, encrypts what it
 * sends with tls_encrypt and writes tls_take_output's ciphertext with
 * io_write. Nothing here runs a loop. */
#ifndef FICUS_TLS_H
#define FICUS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

struct config;
struct config_errors;
struct backend_cfg;
struct tls_ctx;
struct tls;

/* Loads what cfg's TLS listeners, https backends and https state store name
 * (certificate chains, keys, CA files) into contexts kept with the snapshot and
 * released with it. The state store's endpoints share one context
 * (cfg->state_store.tls_ctx), with its client certificate when one is given.
 * Every failure is one line "FILE: location: reason" naming the file. Returns
 * 0 or FICUS_ECONFIG. */
int tls_config_load(struct config *cfg, struct config_errors *errs);

/* A server-side connection on a listener's context. NULL when out of memory. */
struct tls *tls_server_new(struct tls_ctx *ctx);
/* A client-side connection to server (an index into be->servers) of be: SNI
 * and the name or address verified come from be->server_name, else that
 * server's host (an IP literal is verified as an address and sent no SNI); a
 * session kept from an earlier connection to the same server is offered for
 * resumption. NULL when out of memory. */
struct tls *tls_client_new(struct tls_ctx *ctx, const struct backend_cfg *be, int server);
void tls_free(struct tls *t);

/* Hands over ciphertext read from the socket. Returns 0 or FICUS_ENOMEM. */
int tls_feed(struct tls *t, const char *p, size_t len);
/* Advances the handshake: 1 when complete, 0 when it waits for the peer's
 * bytes, FICUS_ETLS when it failed (tls_reason says why). Output it made
 * waits in tls_take_output. */
int tls_handshake(struct tls *t);
bool tls_established(const struct tls *t);
/* Decrypts into buf: the number of bytes (> 0), 0 when more ciphertext is
 * needed, FICUS_ECLOSED when the peer sent close_notify, FICUS_ETLS on a
 * failure. Completes the handshake first when it is still running. */
int tls_read(struct tls *t, char *buf, size_t len);
/* Encrypts bufs (the connection must be established). Returns 0 or FICUS_ETLS. */
int tls_encrypt(struct tls *t, const uv_buf_t *bufs, unsigned n);
/* Says close_notify on stream if the socket takes it at once (the one call
 * here that touches a socket: a closing connection does not wait for it). */
void tls_goodbye(struct tls *t, uv_stream_t *stream);
/* The ciphertext waiting to be sent, as a malloc'd buffer now the caller's;
 * NULL (and *len 0) when there is none or memory ran out. */
char *tls_take_output(struct tls *t, size_t *len);

/* Writes one block of ciphertext: buf describes owned (malloc'd), which the
 * function takes over whatever it returns. Returns 0 or an error. */
typedef int (*tls_send_fn)(void *ctx, const uv_buf_t *buf, void *owned);
/* Hands what tls_take_output would return (handshake messages, alerts,
 * records) to send. Returns 0 when nothing waits, else what send returns. */
int tls_flush(struct tls *t, tls_send_fn send, void *ctx);

/* Why the handshake or a record failed, for logs ("" when it did not). */
const char *tls_reason(const struct tls *t);
/* The server name the client asked for (listener side), or NULL. */
const char *tls_sni(const struct tls *t);
/* "TLSv1.3" and the like, once established. */
const char *tls_version(const struct tls *t);
/* Was the session resumed from an earlier one? */
bool tls_resumed(const struct tls *t);

#endif
