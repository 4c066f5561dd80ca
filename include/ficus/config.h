/* Configuration: JSON file -> validated, immutable, reference-counted snapshot.
 * Pure apart from reading the file: no libuv. Every string in the snapshot
 * points into the jansson document it keeps (or, for lower-cased copies, into
 * its arena), and lives as long as the snapshot. */
#ifndef FICUS_CONFIG_H
#define FICUS_CONFIG_H

#include "ficus/buf.h"
#include "ficus/correlate.h"
#include "ficus/diff.h"
#include "ficus/lb.h"
#include <jansson.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct route_state;

/* A list of error lines, each "FILE: json.location: reason", control bytes
 * written as \xHH (a line may quote the file's own bytes). */
struct config_errors {
    char **lines;
    size_t n;
    size_t cap;
};

void config_errors_add(struct config_errors *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void config_errors_dispose(struct config_errors *e);

/* "host:port" or "[v6]:port", with the host an IP literal ("localhost" is
 * taken as 127.0.0.1). */
struct config_addr {
    const char *text; /* as written */
    struct sockaddr_storage ss;
    socklen_t len;
};

struct tls_ctx;

struct listen_cfg {
    struct config_addr addr;
    bool tls;
    const char *cert_file; /* NULL unless tls */
    const char *key_file;
    /* Filled by tls_config_load, not by config_parse: the loaded certificate. */
    struct tls_ctx *tls_ctx;
};

/* One server of a backend: an entry of its "servers" list, or its "url". Its
 * host contributes every address it resolves to. */
struct backend_server_cfg {
    const char *url;  /* as written */
    const char *host; /* a name or an IP literal, without brackets */
    uint16_t port;    /* from the URL, default 80 or 443 */
    int weight;       /* 1..LB_WEIGHT_MAX, default 1 */
    bool ip_literal;  /* host is an IP address: never looked up in DNS */
    /* Filled at load (discovery_resolve_config), not by config_parse: the
     * addresses host had when the snapshot was loaded, ports set, sorted and
     * without duplicates (from cfg->arena). n_addrs is 0 for a name that did
     * not resolve then; the resolver may find it later. The workers' pools
     * start from these; later DNS changes reach them through discovery. */
    struct sockaddr_storage *addrs;
    size_t n_addrs;
};

/* Bounds of a backend's fleet: each server a config line, each a resolver
 * watch per worker set. */
#define BACKEND_SERVERS_MAX 64

struct backend_cfg {
    const char *name;
    /* Servers: "url" is one server of weight 1; "servers" lists them, all of
     * one scheme. url, tls, host and port below are servers[0]'s, kept for the
     * code that knows one address per backend. */
    struct backend_server_cfg *servers;
    size_t n_servers;    /* 1..BACKEND_SERVERS_MAX */
    bool servers_listed; /* "servers" (not "url") in the file: for error locations */
    struct lb_params lb; /* "lb" (default round_robin) and "ejection" */
    int min_resolve_ms;  /* min_resolve_interval_ms, default 1000 */
    int max_resolve_ms;  /* max_resolve_interval_ms, default 60000 */
    const char *url;
    bool tls;                /* https:// */
    const char *host;        /* from the URL: a name or an IP literal, without brackets */
    uint16_t port;           /* from the URL, default 80 or 443 */
    int max_connections;     /* default 256 */
    bool verify;             /* tls.verify, default true */
    const char *ca_file;     /* tls.ca_file, NULL: the system store */
    const char *server_name; /* tls.server_name, NULL: host */
    const char *health_path; /* NULL: no active health checks */
    int health_interval_ms;  /* default 2000 */
    /* Filled at load (not by config_parse) before the snapshot is used: the
     * first address of the first server that resolved. A pool uses it only
     * for a backend whose servers have no addresses filled in (one resolved
     * by other code, as the state store's endpoints may be). */
    struct sockaddr_storage resolved;
    socklen_t resolved_len;
    /* Filled by tls_config_load for https backends: verification settings,
     * CA store and the session kept for resumption. */
    struct tls_ctx *tls_ctx;
};

/* Where the live route state lives: the state file of one machine, or etcd
 * for a fleet (state_store). */
enum state_store_type { STATE_STORE_FILE, STATE_STORE_ETCD };

#define STATE_STORE_ENDPOINTS_MAX 16

struct state_store_cfg {
    enum state_store_type type; /* default STATE_STORE_FILE */
    /* etcd only. Each endpoint is read as a backend URL is: name "etcd-<i>",
     * url, tls (https), host, port (required in the URL), max_connections 4,
     * and the TLS settings below copied into verify, ca_file and server_name.
     * All endpoints have the same scheme. */
    struct backend_cfg *endpoints;
    size_t n_endpoints;
    const char *prefix;      /* required; starts and ends with "/" */
    int timeout_ms;          /* default 5000 */
    int lease_ttl_s;         /* default 10 */
    bool tls;                /* the endpoints are https:// */
    bool verify;             /* tls.verify, default true */
    const char *ca_file;     /* tls.ca_file, NULL: the system store */
    const char *cert_file;   /* tls.cert_file: a client certificate; NULL: none */
    const char *key_file;    /* tls.key_file, given with cert_file */
    const char *server_name; /* tls.server_name, NULL: each endpoint's host */
    /* Filled by tls_config_load for https endpoints: the context every
     * endpoint's tls_ctx points to (owned here, released with the snapshot). */
    struct tls_ctx *tls_ctx;
};

enum sticky_kind { STICKY_IP, STICKY_HEADER, STICKY_COOKIE, STICKY_QUERY };

enum fallback_flag {
    FALLBACK_CONNECT_ERROR = 1 << 0,
    FALLBACK_TIMEOUT = 1 << 1,
    FALLBACK_5XX = 1 << 2,
};

struct header_match {
    const char *name; /* lower case */
    const char *value;
};

struct route_match {
    const char *path_prefix; /* NULL: any path */
    size_t path_prefix_len;
    const char **methods; /* NULL/0: any method; upper case */
    size_t n_methods;
    const char *host; /* NULL: any host; compared case-insensitively, port ignored */
    struct header_match *headers;
    size_t n_headers;
};

struct route_cfg {
    const char *name;
    struct route_match match;
    int legacy;         /* index into config.backends */
    int new_;           /* index into config.backends */
    double new_percent; /* 0..100 */
    enum sticky_kind sticky;
    const char *sticky_name;     /* header (lower case), cookie or query name; NULL for ip */
    const char *override_header; /* lower case; NULL: none */

    bool shadow;                 /* has a "shadow" object */
    double shadow_percent;       /* default 100 */
    const char **shadow_methods; /* default GET, HEAD, OPTIONS */
    size_t n_shadow_methods;
    int shadow_max_inflight;               /* default 100 */
    int shadow_timeout_ms;                 /* default 5000 */
    size_t shadow_max_body_bytes;          /* default 1 MiB */
    struct correlate_cfg shadow_correlate; /* shadow.correlate; enabled false without one */

    struct diff_rules diff;
    bool noise;             /* has diff.noise */
    double noise_percent;   /* default 2 */
    double noise_threshold; /* default 0.05 */
    unsigned noise_warmup;  /* default 20: an endpoint's first comparisons, all with twins */

    unsigned fallback;  /* enum fallback_flag bits; default none */
    bool allow_upgrade; /* Upgrade requests (WebSocket) tunnelled; default true, else 403 */

    bool guard;
    double guard_max_divergence_rate; /* default 0.01 */
    double guard_max_error_rate;      /* default 0.02 */
    int guard_min_comparisons;        /* default 200 */
    int guard_window_ms;              /* default 60000 */

    bool ramp;
    double *ramp_steps; /* increasing, each 0..100 */
    size_t n_ramp_steps;
    int64_t ramp_every_ms;

    const char **endpoints; /* "GET /posts/{id}", checked by endpoint_template_problem */
    size_t n_endpoints;
    int max_endpoints; /* default 100; at least n_endpoints */

    /* Set by the server (state_table_bind), not by config_parse: the route's
     * live state, which outlives this snapshot. */
    struct route_state *state;
};

struct config {
    char *path;   /* the file it came from, or the name given to config_parse */
    json_t *root; /* owns every string below */
    int refcount; /* atomic; see config_ref */

    struct listen_cfg *listens;
    size_t n_listens;
    int workers; /* 0 in the file means one per CPU; resolved here to >= 1 */

    bool admin;                    /* has an admin address */
    struct config_addr admin_addr; /* default 127.0.0.1:9901 */
    const char *admin_token_env;   /* NULL: mutating calls are refused */
    const char *state_file;        /* NULL: runtime changes in memory only */
    bool reload_on_change;         /* reload when the file's bytes change (default false) */
    struct state_store_cfg state_store;

    struct backend_cfg *backends;
    size_t n_backends;
    /* "resolvers": DNS servers for backend names ("ip:port"); none: the
     * system's configuration (resolv.conf, hosts). */
    struct config_addr *resolvers;
    size_t n_resolvers;
    struct route_cfg *routes;
    size_t n_routes;

    const char *divlog_path;  /* NULL: no divergence log file */
    int64_t divlog_max_bytes; /* default 100 MiB */
    int divlog_keep;          /* default 5 */
    size_t divlog_body_bytes; /* default 4096 */
    /* request_body_bytes: the request body a record keeps for replay
     * (REPLAY_BODY_BYTES_DEFAULT, at most REPLAY_BODY_BYTES_LIMIT). */
    size_t divlog_request_body_bytes;
    const char **redact_headers; /* lower case; default authorization, cookie,
                                    set-cookie, proxy-authorization */
    size_t n_redact_headers;
    const char **redact_json; /* JSON Pointers ("*" segments) hidden in bodies and values */
    size_t n_redact_json;

    const char *access_log_path; /* "-": stdout (default); NULL: none */

    int max_connections;            /* default 10000 */
    size_t max_header_bytes;        /* default 65536 */
    int64_t max_request_body_bytes; /* default 100 MiB */
    size_t shadow_memory_bytes;     /* what comparisons may hold in all; default 256 MiB */

    int connect_ms;     /* default 2000 */
    int upstream_ms;    /* default 30000 */
    int client_idle_ms; /* default 60000 */
    int header_ms;      /* not in the file: min(client_idle_ms, 10000) */
    int drain_ms;       /* default 10000 */
    int tunnel_idle_ms; /* an upgraded connection with no byte either way; default 300000 */

    /* Owns every array above and the strings that are not in root: lower-cased
     * header names and backend hosts. Freed with the snapshot. */
    struct arena arena;
    /* Set by tls_config_load: releases the TLS contexts when the snapshot is
     * freed (config itself does not link OpenSSL's types into its API). */
    void (*dispose_tls)(struct config *cfg);
};

/* Parses and validates text as a configuration named fname (used in error
 * lines). Returns a snapshot with refcount 1, or NULL with every problem added
 * to errs. */
struct config *config_parse(const char *text, size_t len, const char *fname,
                            struct config_errors *errs);

/* Reads and validates the file at path. Same returns as config_parse; a file
 * that cannot be read is one error line. */
struct config *config_load(const char *path, struct config_errors *errs);

/* Takes one more reference (atomic: any thread). Returns cfg. */
struct config *config_ref(struct config *cfg);
/* Drops a reference; the last one frees the snapshot. Accepts NULL. */
void config_unref(struct config *cfg);

/* The index of the backend or route with that name, or -1. */
int config_backend_index(const struct config *cfg, const char *name);
int config_route_index(const struct config *cfg, const char *name);

/* Is the header name (any case) in redact_headers? */
bool config_is_redacted(const struct config *cfg, const char *name, size_t len);

#endif
