/* The admin server on the control thread: health, the JSON API, metrics and
 * the dashboard. Mutating calls need "Authorization: Bearer TOKEN" where TOKEN
 * is read from the environment variable admin.token_env names. */
#ifndef FICUS_ADMIN_H
#define FICUS_ADMIN_H

#include <uv.h>

struct server;
struct admin;

/* Starts listening on the configuration's admin address on loop. Returns 0
 * and sets *out, or a libuv error (the address is in use, say). */
int admin_start(struct server *srv, uv_loop_t *loop, struct admin **out);

/* Closes the listener and every admin connection; frees once closed. Accepts NULL. */
void admin_stop(struct admin *a);

#endif
