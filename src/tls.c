/* TLS through memory BIOs: the socket stays libuv's, OpenSSL only ever reads
 * from and writes to memory, so a handshake never blocks a worker and TLS and
 * plain connections share every line of the HTTP code. */
#include "ficus/tls.h"
#include "ficus/buf.h"
#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 keeps OpenSSL's
 * own (all of them modern). */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

static const unsigned char alpn_http11[] = "\x08http/1.1";

struct tls_ctx {
    SSL_CTX *ssl;
    bool verify;
    /* Client side: per server of the backend, the newest session it gave,
     * offered by the next connection to it (shared by the workers, hence the
     * lock). Servers do not share their session caches or ticket keys: one
     * server's session would only cost another a failed resumption. */
    pthread_mutex_t lock;
    SSL_SESSION *sessions[BACKEND_SERVERS_MAX];
};

struct tls {
    SSL *ssl;
    BIO *rbio;     /* ciphertext in: reads from in (owned by ssl) */
    BIO *wbio;     /* ciphertext out: appends to out (owned by ssl) */
    struct buf in; /* ciphertext fed and not yet read by OpenSSL, from in_off */
    size_t in_off;
    struct buf out; /* ciphertext not yet taken; handed over whole, no copy */
    bool verify;    /* client side: the peer's certificate is checked */
    bool established;
    bool failed;
    char reason[192];
};

/* ---- contexts ----------------------------------------------------------------- */

static void ctx_free(struct tls_ctx *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < ARRAY_SIZE(c->sessions); i++) {
        if (c->sessions[i] != NULL)
            SSL_SESSION_free(c->sessions[i]);
    }
    pthread_mutex_destroy(&c->lock);
    SSL_CTX_free(c->ssl);
    free(c);
}

/* The last OpenSSL error as text ("no reason given" when the queue is empty). */
static void last_error(char *out, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    snprintf(out, len, "%s", r != NULL ? r : "no reason given");
    ERR_clear_error();
}

/* Can path be opened for reading? Fills why when not. */
static bool readable(const char *path, char *why, size_t len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(why, len, "%s", strerror(errno));
        return false;
    }
    fclose(f);
    return true;
}

static struct tls_ctx *ctx_new(const SSL_METHOD *method)
{
    struct tls_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->ssl = SSL_CTX_new(method);
    if (c->ssl == NULL) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    SSL_CTX_set_app_data(c->ssl, c);
    SSL_CTX_set_min_proto_version(c->ssl, TLS1_2_VERSION);
    SSL_CTX_set_options(c->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* Idle connections give their record buffers back. */
    SSL_CTX_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_cipher_list(c->ssl, TLS12_CIPHERS);
    return c;
}

static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof(alpn_http11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* RFC 7301: no_application_protocol */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Loads a certificate chain and its key into c; loc names the JSON object that
 * holds cert_file and key_file in error lines ("listen[0].tls"). */
static bool use_cert_key(struct tls_ctx *c, const char *file, const char *loc,
                         const char *cert_file, const char *key_file, struct config_errors *errs)
{
    char why[256];
    if (!readable(cert_file, why, sizeof(why))) {
        config_errors_add(errs, "%s: %s.cert_file: cannot read \"%s\": %s", file, loc, cert_file,
                          why);
        return false;
    }
    if (!readable(key_file, why, sizeof(why))) {
        config_errors_add(errs, "%s: %s.key_file: cannot read \"%s\": %s", file, loc, key_file,
                          why);
        return false;
    }
    if (SSL_CTX_use_certificate_chain_file(c->ssl, cert_file) != 1) {
        last_error(why, sizeof(why));
        config_errors_add(errs, "%s: %s.cert_file: \"%s\" is not a PEM certificate chain: %s", file,
                          loc, cert_file, why);
        return false;
    }
    bool loaded = SSL_CTX_use_PrivateKey_file(c->ssl, key_file, SSL_FILETYPE_PEM) == 1;
    unsigned long e = loaded ? 0 : ERR_peek_last_error();
    bool mismatch =
        ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
    if (!loaded && !mismatch) {
        last_error(why, sizeof(why));
        config_errors_add(errs, "%s: %s.key_file: \"%s\" is not a PEM private key: %s", file, loc,
                          key_file, why);
        return false;
    }
    if (mismatch || SSL_CTX_check_private_key(c->ssl) != 1) {
        ERR_clear_error();
        config_errors_add(errs,
                          "%s: %s.key_file: the key \"%s\" does not match the certificate \"%s\"",
                          file, loc, key_file, cert_file);
        return false;
    }
    return true;
}

static struct tls_ctx *server_ctx(const char *file, size_t i, const struct listen_cfg *ls,
                                  struct config_errors *errs)
{
    char loc[48];
    snprintf(loc, sizeof(loc), "listen[%zu].tls", i);
    struct tls_ctx *c = ctx_new(TLS_server_method());
    if (c == NULL) {
        config_errors_add(errs, "%s: %s: out of memory", file, loc);
        return NULL;
    }
    SSL_CTX_set_options(c->ssl, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_alpn_select_cb(c->ssl, on_alpn_select, NULL);
    if (!use_cert_key(c, file, loc, ls->cert_file, ls->key_file, errs)) {
        ctx_free(c);
        return NULL;
    }
    return c;
}

static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct tls_ctx *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    /* tls_client_new keeps the server's index (plus one) in the connection. */
    size_t server = (size_t)(uintptr_t)SSL_get_app_data(ssl);
    if (server == 0 || server > ARRAY_SIZE(c->sessions))
        return 0; /* not kept: OpenSSL frees it */
    pthread_mutex_lock(&c->lock);
    SSL_SESSION *old = c->sessions[server - 1];
    c->sessions[server - 1] = sess;
    pthread_mutex_unlock(&c->lock);
    if (old != NULL)
        SSL_SESSION_free(old);
    return 1; /* the reference is ours now */
}

/* A client context; loc names the JSON object of the settings in error lines
 * ("backends.new.tls"). */
static struct tls_ctx *client_ctx(const char *file, const char *loc, bool verify,
                                  const char *ca_file, struct config_errors *errs)
{
    char why[256];
    if (verify && ca_file != NULL && !readable(ca_file, why, sizeof(why))) {
        config_errors_add(errs, "%s: %s.ca_file: cannot read \"%s\": %s", file, loc, ca_file, why);
        return NULL;
    }
    struct tls_ctx *c = ctx_new(TLS_client_method());
    if (c == NULL) {
        config_errors_add(errs, "%s: %s: out of memory", file, loc);
        return NULL;
    }
    c->verify = verify;
    if (verify) {
        SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
        int ok = ca_file != NULL ? SSL_CTX_load_verify_locations(c->ssl, ca_file, NULL)
                                 : SSL_CTX_set_default_verify_paths(c->ssl);
        if (ok != 1) {
            last_error(why, sizeof(why));
            if (ca_file != NULL)
                config_errors_add(errs, "%s: %s.ca_file: \"%s\" holds no PEM certificate: %s", file,
                                  loc, ca_file, why);
            else
                config_errors_add(errs, "%s: %s: cannot load the system CA store: %s", file, loc,
                                  why);
            ctx_free(c);
            return NULL;
        }
    } else {
        SSL_CTX_set_verify(c->ssl, SSL_VERIFY_NONE, NULL);
    }
    SSL_CTX_set_alpn_protos(c->ssl, alpn_http11, sizeof(alpn_http11) - 1);
    SSL_CTX_set_session_cache_mode(c->ssl,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c->ssl, on_new_session);
    return c;
}

/* The state store's client context, shared by its endpoints: verification as
 * for backends, plus the client certificate etcd's --client-cert-auth asks for. */
static struct tls_ctx *store_ctx(const char *file, const struct state_store_cfg *st,
                                 struct config_errors *errs)
{
    struct tls_ctx *c = client_ctx(file, "state_store.tls", st->verify, st->ca_file, errs);
    if (c != NULL && st->cert_file != NULL &&
        !use_cert_key(c, file, "state_store.tls", st->cert_file, st->key_file, errs)) {
        ctx_free(c);
        return NULL;
    }
    return c;
}

static void dispose_tls(struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_listens; i++) {
        ctx_free(cfg->listens[i].tls_ctx);
        cfg->listens[i].tls_ctx = NULL;
    }
    for (size_t i = 0; i < cfg->n_backends; i++) {
        ctx_free(cfg->backends[i].tls_ctx);
        cfg->backends[i].tls_ctx = NULL;
    }
    /* The endpoints only point to the store's context. */
    for (size_t i = 0; i < cfg->state_store.n_endpoints; i++)
        cfg->state_store.endpoints[i].tls_ctx = NULL;
    ctx_free(cfg->state_store.tls_ctx);
    cfg->state_store.tls_ctx = NULL;
}

int tls_config_load(struct config *cfg, struct config_errors *errs)
{
    int rc = 0;
    cfg->dispose_tls = dispose_tls;
    for (size_t i = 0; i < cfg->n_listens; i++) {
        struct listen_cfg *ls = &cfg->listens[i];
        if (!ls->tls)
            continue;
        ls->tls_ctx = server_ctx(cfg->path, i, ls, errs);
        if (ls->tls_ctx == NULL)
            rc = FICUS_ECONFIG;
    }
    for (size_t i = 0; i < cfg->n_backends; i++) {
        struct backend_cfg *be = &cfg->backends[i];
        if (!be->tls)
            continue;
        char loc[160];
        snprintf(loc, sizeof(loc), "backends.%s.tls", be->name);
        be->tls_ctx = client_ctx(cfg->path, loc, be->verify, be->ca_file, errs);
        if (be->tls_ctx == NULL)
            rc = FICUS_ECONFIG;
    }
    struct state_store_cfg *st = &cfg->state_store;
    if (st->type == STATE_STORE_ETCD && st->tls) {
        st->tls_ctx = store_ctx(cfg->path, st, errs);
        if (st->tls_ctx == NULL)
            rc = FICUS_ECONFIG;
        for (size_t i = 0; i < st->n_endpoints; i++)
            st->endpoints[i].tls_ctx = st->tls_ctx;
    }
    return rc;
}

/* ---- the BIOs ----------------------------------------------------------------- */

/* Records go straight into the connection's own buffer, which tls_take_output
 * hands to the write as it is: no copy out of a memory BIO, and nothing kept
 * allocated between writes (an idle connection holds no output memory).
 *
 * Input is the mirror image: ciphertext waits in t->in until OpenSSL has read
 * it, and the buffer is freed as soon as it is empty. A memory BIO would keep
 * its buffer (the size of the largest read) for the life of the connection. */
static BIO_METHOD *out_method, *in_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int out_write(BIO *b, const char *data, int len)
{
    struct tls *t = BIO_get_data(b);
    if (len <= 0)
        return 0;
    return buf_append(&t->out, data, (size_t)len) == 0 ? len : -1;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct tls *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_WPENDING:
        return (long)t->out.len;
    default:
        return 0;
    }
}

/* An empty input means "wait for more", never end of file. */
static int in_read(BIO *b, char *out, int len)
{
    struct tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t left = t->in.len - t->in_off;
    if (left == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    if (len <= 0)
        return 0;
    size_t n = (size_t)len < left ? (size_t)len : left;
    memcpy(out, t->in.data + t->in_off, n);
    t->in_off += n;
    if (t->in_off == t->in.len) {
        buf_dispose(&t->in);
        t->in_off = 0;
    }
    return (int)n;
}

static long in_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct tls *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return (long)(t->in.len - t->in_off);
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_methods_init(void)
{
    out_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ficus output");
    if (out_method != NULL) {
        BIO_meth_set_write(out_method, out_write);
        BIO_meth_set_ctrl(out_method, out_ctrl);
        BIO_meth_set_create(out_method, bio_create);
    }
    in_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ficus input");
    if (in_method != NULL) {
        BIO_meth_set_read(in_method, in_read);
        BIO_meth_set_ctrl(in_method, in_ctrl);
        BIO_meth_set_create(in_method, bio_create);
    }
}

/* ---- connections --------------------------------------------------------------- */

static struct tls *tls_new(struct tls_ctx *ctx)
{
    struct tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    pthread_once(&bio_once, bio_methods_init);
    t->ssl = SSL_new(ctx->ssl); /* holds the SSL_CTX: a reload may drop ctx first */
    t->rbio = in_method != NULL ? BIO_new(in_method) : NULL;
    t->wbio = out_method != NULL ? BIO_new(out_method) : NULL;
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(t->rbio, t);
    BIO_set_data(t->wbio, t);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    return t;
}

struct tls *tls_server_new(struct tls_ctx *ctx)
{
    struct tls *t = tls_new(ctx);
    if (t != NULL)
        SSL_set_accept_state(t->ssl);
    return t;
}

static bool is_ip_literal(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

struct tls *tls_client_new(struct tls_ctx *ctx, const struct backend_cfg *be, int server)
{
    if (server < 0 || (size_t)server >= ARRAY_SIZE(ctx->sessions) ||
        (be->n_servers > 0 && (size_t)server >= be->n_servers))
        server = 0;
    struct tls *t = tls_new(ctx);
    if (t == NULL)
        return NULL;
    SSL_set_connect_state(t->ssl);
    SSL_set_app_data(t->ssl, (void *)(uintptr_t)(server + 1));
    t->verify = ctx->verify;
    const char *host = be->n_servers > 0 ? be->servers[server].host : be->host;
    const char *name = be->server_name != NULL ? be->server_name : host;
    bool ip = is_ip_literal(name);
    if (!ip)
        SSL_set_tlsext_host_name(t->ssl, name); /* RFC 6066: no SNI for an address */
    if (ctx->verify) {
        if (ip) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name);
        } else {
            SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            SSL_set1_host(t->ssl, name);
        }
    }
    pthread_mutex_lock(&ctx->lock);
    SSL_SESSION *sess = ctx->sessions[server];
    if (sess != NULL && SSL_SESSION_is_resumable(sess))
        SSL_set_session(t->ssl, sess);
    pthread_mutex_unlock(&ctx->lock);
    ERR_clear_error();
    return t;
}

void tls_free(struct tls *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    buf_dispose(&t->in);
    buf_dispose(&t->out);
    free(t);
}

int tls_feed(struct tls *t, const char *p, size_t len)
{
    if (t->in_off > 0) { /* what is left is less than a record */
        buf_consume(&t->in, t->in_off);
        t->in_off = 0;
    }
    return buf_append(&t->in, p, len) == 0 ? 0 : FICUS_ENOMEM;
}

/* Records why the connection failed, once. */
static void fail(struct tls *t, int ssl_err)
{
    t->failed = true;
    long vr = SSL_get_verify_result(t->ssl);
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (vr != X509_V_OK && t->verify)
        snprintf(t->reason, sizeof(t->reason), "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    else if (r != NULL)
        snprintf(t->reason, sizeof(t->reason), "%s", r);
    else if (ssl_err == SSL_ERROR_SYSCALL)
        snprintf(t->reason, sizeof(t->reason), "unexpected end of stream");
    else
        snprintf(t->reason, sizeof(t->reason), "TLS error %d", ssl_err);
    ERR_clear_error();
}

int tls_handshake(struct tls *t)
{
    if (t->failed)
        return FICUS_ETLS;
    if (t->established)
        return 1;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->established = true;
        return 1;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    fail(t, e);
    return FICUS_ETLS;
}

bool tls_established(const struct tls *t)
{
    return t->established;
}

int tls_read(struct tls *t, char *buf, size_t len)
{
    if (t->failed)
        return FICUS_ETLS;
    ERR_clear_error();
    size_t n = 0;
    int r = SSL_read_ex(t->ssl, buf, len > INT_MAX ? INT_MAX : len, &n);
    if (SSL_is_init_finished(t->ssl))
        t->established = true;
    if (r == 1)
        return (int)n;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN)
        return FICUS_ECLOSED;
    fail(t, e);
    return FICUS_ETLS;
}

/* Pieces that fit one record together go out as one (a response head and a
 * small body): one record costs one AEAD pass and 22 bytes of overhead. */
#define TLS_COALESCE 16384

int tls_encrypt(struct tls *t, const uv_buf_t *bufs, unsigned n)
{
    if (t->failed || !t->established)
        return FICUS_ETLS;
    ERR_clear_error();
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (n > 1 && total <= TLS_COALESCE) {
        char one[TLS_COALESCE];
        size_t off = 0;
        for (unsigned i = 0; i < n; i++) {
            memcpy(one + off, bufs[i].base, bufs[i].len);
            off += bufs[i].len;
        }
        uv_buf_t ub = uv_buf_init(one, (unsigned)off);
        return tls_encrypt(t, &ub, 1);
    }
    for (unsigned i = 0; i < n; i++) {
        size_t off = 0;
        while (off < bufs[i].len) {
            size_t w = 0;
            if (SSL_write_ex(t->ssl, bufs[i].base + off, bufs[i].len - off, &w) != 1) {
                fail(t, SSL_get_error(t->ssl, 0));
                return FICUS_ETLS;
            }
            off += w;
        }
    }
    return 0;
}

void tls_goodbye(struct tls *t, uv_stream_t *stream)
{
    if (t->failed || !t->established)
        return;
    ERR_clear_error();
    SSL_shutdown(t->ssl);
    ERR_clear_error();
    size_t len;
    char *ct = tls_take_output(t, &len);
    if (ct != NULL) {
        uv_buf_t ub = uv_buf_init(ct, (unsigned)len);
        uv_try_write(stream, &ub, 1); /* best effort: the close does not wait */
        free(ct);
    }
}

char *tls_take_output(struct tls *t, size_t *len)
{
    *len = t->out.len;
    if (t->out.len == 0)
        return NULL;
    char *p = t->out.data;
    buf_init(&t->out, 0);
    return p;
}

int tls_flush(struct tls *t, tls_send_fn send, void *ctx)
{
    size_t len;
    char *ct = tls_take_output(t, &len);
    if (ct == NULL)
        return 0;
    uv_buf_t ub = uv_buf_init(ct, (unsigned)len);
    return send(ctx, &ub, ct);
}

const char *tls_reason(const struct tls *t)
{
    return t->reason;
}

const char *tls_sni(const struct tls *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

const char *tls_version(const struct tls *t)
{
    return SSL_get_version(t->ssl);
}

bool tls_resumed(const struct tls *t)
{
    return SSL_session_reused(t->ssl) == 1;
}
