/* Unit tests of the configuration: defaults, every section read back, the
 * exact error line of each kind of bad input (table-driven), several errors at
 * once, syntax errors, unknown keys at every depth, references between routes
 * and backends, redaction and the snapshot's reference count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ficus/common.h"
#include "ficus/config.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

/* JSON in C string literals is unreadable with \" everywhere, so the texts
 * below use single quotes, turned into double quotes before parsing (none of
 * the texts needs a real single quote). */
static struct config *parse_q(const char *squoted, struct config_errors *errs)
{
    size_t n = strlen(squoted);
    char *text = malloc(n + 1);
    assert_non_null(text);
    for (size_t i = 0; i <= n; i++)
        text[i] = squoted[i] == '\'' ? '"' : squoted[i];
    struct config *cfg = config_parse(text, n, "t.json", errs);
    free(text);
    return cfg;
}

/* Parses a text that must be valid; prints the errors when it is not. */
static struct config *parse_ok(const char *squoted)
{
    struct config_errors errs = {0};
    struct config *cfg = parse_q(squoted, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "unexpected: %s\n", errs.lines[i]);
    assert_int_equal(errs.n, 0);
    assert_non_null(cfg);
    config_errors_dispose(&errs);
    return cfg;
}

static bool has_line(const struct config_errors *errs, const char *line)
{
    for (size_t i = 0; i < errs->n; i++) {
        if (strcmp(errs->lines[i], line) == 0)
            return true;
    }
    return false;
}

static void dump_errors(const char *what, const struct config_errors *errs)
{
    fprintf(stderr, "%s\n", what);
    for (size_t i = 0; i < errs->n; i++)
        fprintf(stderr, "  got: %s\n", errs->lines[i]);
}

/* Building blocks of the texts. */
#define LISTEN "'listen':'127.0.0.1:8080'"
#define BACKENDS                                                                                   \
    "'backends':{'legacy':{'url':'http://127.0.0.1:9001'},'new':{'url':'http://127.0.0.1:9002'}}"
/* A whole config whose only route has the members x (each starting with a comma). */
#define ROUTE(x) "{" LISTEN "," BACKENDS ",'routes':[{'name':'r'" x "}]}"
/* A whole valid config plus the top-level members x (starting with a comma). */
#define TOP(x) "{" LISTEN "," BACKENDS ",'routes':[{'name':'r'}]" x "}"
/* A config with listen as given. */
#define WITH_LISTEN(l) "{'listen':" l "," BACKENDS ",'routes':[{'name':'r'}]}"
/* A config with backends as given. */
#define WITH_BACKENDS(b) "{" LISTEN ",'backends':" b ",'routes':[{'name':'r'}]}"
/* A config with routes as given. */
#define WITH_ROUTES(r) "{" LISTEN "," BACKENDS ",'routes':" r "}"
#define URL(u)         WITH_BACKENDS("{'legacy':{'url':'" u "'},'new':{'url':'http://127.0.0.1:9002'}}")
#define LEGACY(members)                                                                            \
    WITH_BACKENDS("{'legacy':{'url':'http://127.0.0.1:9001'" members                               \
                  "},'new':{'url':'http://127.0.0.1:9002'}}")
/* A legacy backend with "servers" as given (and more members). */
#define SERVERS_AND(list, members)                                                                 \
    WITH_BACKENDS("{'legacy':{'servers':" list members "},'new':{'url':'http://127.0.0.1:9002'}}")
#define SERVERS(list)  SERVERS_AND(list, "")
#define HDRNAME_REASON "must be a header name (letters, digits and !#$%&'*+-.^_`|~)"
/* A config with an etcd state store: STORE(members) with the prefix given,
 * ETCD(members) with one plain endpoint, HTTPS(members) with one https one. */
#define STORE(m) TOP(",'state_store':{'type':'etcd','prefix':'/f/'," m "}")
#define ETCD(m)  TOP(",'state_store':{'type':'etcd','endpoints':['http://127.0.0.1:2379']" m "}")
#define HTTPS(m)                                                                                   \
    TOP(",'state_store':{'type':'etcd','endpoints':['https://etcd.internal:2379'],"                \
        "'prefix':'/p/'" m "}")
#define ENDPOINTS_REASON                                                                           \
    "must be an array of 1 to 16 URLs of etcd members, as in [\"http://127.0.0.1:2379\"]"
#define PREFIX_REASON "must start and end with \"/\" and name a directory, as in \"/ficus/prod/\""

/* ---- bad input: one exact error line each ---- */

struct bad_case {
    const char *json;
    const char *line; /* the one error expected, exactly */
};

static const struct bad_case bad_cases[] = {
    /* top level */
    {"[]", "t.json: top level: must be a JSON object"},
    {TOP(",'wrkers':1"), "t.json: wrkers: unknown key"},
    {"{" LISTEN "," BACKENDS "}", "t.json: routes: is required"},
    {"{" BACKENDS ",'routes':[{'name':'r'}]}", "t.json: listen: is required"},
    {TOP(",'workers':-1"), "t.json: workers: must be an integer from 0 to 256"},
    {TOP(",'workers':257"), "t.json: workers: must be an integer from 0 to 256"},
    {TOP(",'workers':1.5"), "t.json: workers: must be an integer from 0 to 256"},
    {TOP(",'workers':'4'"), "t.json: workers: must be an integer from 0 to 256"},
    {TOP(",'state_file':5"), "t.json: state_file: must be a non-empty string"},
    {TOP(",'state_file':''"), "t.json: state_file: must be a non-empty string"},
    /* listen */
    {WITH_LISTEN("'localhost'"), "t.json: listen: must be \"host:port\", as in \"127.0.0.1:8080\""},
    {WITH_LISTEN("'127.0.0.1:0'"), "t.json: listen: port must be a number from 1 to 65535"},
    {WITH_LISTEN("'127.0.0.1:65536'"), "t.json: listen: port must be a number from 1 to 65535"},
    {WITH_LISTEN("'127.0.0.1:80x'"), "t.json: listen: port must be a number from 1 to 65535"},
    {WITH_LISTEN("'example.com:80'"),
     "t.json: listen: host must be an IPv4 address, an [IPv6] address or localhost"},
    {WITH_LISTEN("'300.1.1.1:80'"),
     "t.json: listen: host must be an IPv4 address, an [IPv6] address or localhost"},
    {WITH_LISTEN("'[::g]:80'"),
     "t.json: listen: host must be an IPv4 address, an [IPv6] address or localhost"},
    {WITH_LISTEN("'::1:8080'"),
     "t.json: listen: an IPv6 address must be in brackets, as in \"[::1]:8080\""},
    {WITH_LISTEN("[]"),
     "t.json: listen: must be \"host:port\" or a non-empty array of {\"address\": ...}"},
    {WITH_LISTEN("8080"),
     "t.json: listen: must be \"host:port\" or a non-empty array of {\"address\": ...}"},
    {WITH_LISTEN("[{}]"), "t.json: listen[0].address: is required"},
    {WITH_LISTEN("['127.0.0.1:80']"), "t.json: listen[0]: must be an object"},
    {WITH_LISTEN("[{'address':80}]"), "t.json: listen[0].address: must be a string \"host:port\""},
    {WITH_LISTEN("[{'address':'127.0.0.1:80','tls':{'cert_file':'c.pem'}}]"),
     "t.json: listen[0].tls.key_file: is required"},
    {WITH_LISTEN("[{'address':'127.0.0.1:80','tls':{'cert_file':'c','key_file':''}}]"),
     "t.json: listen[0].tls.key_file: must be a non-empty string"},
    {WITH_LISTEN("[{'address':'127.0.0.1:80'},{'address':'127.0.0.1:80'}]"),
     "t.json: listen[1].address: same address as listen[0]"},
    {WITH_LISTEN("[{'address':'127.0.0.1:80'},{'address':'0.0.0.0:80'}]"),
     "t.json: listen[1].address: same port as listen[0], and one of the two is a wildcard "
     "address"},
    /* admin */
    {TOP(",'admin':'127.0.0.1:9901'"), "t.json: admin: must be an object"},
    {TOP(",'admin':{'address':'127.0.0.1:8080'}"), "t.json: admin.address: same address as listen"},
    {WITH_LISTEN("'0.0.0.0:9901'"),
     "t.json: admin.address: same port as listen, and one of the two is a wildcard address"},
    {TOP(",'admin':{'address':'localhost'}"),
     "t.json: admin.address: must be \"host:port\", as in \"127.0.0.1:8080\""},
    {TOP(",'admin':{'token_env':''}"), "t.json: admin.token_env: must be a non-empty string"},
    {TOP(",'admin':{'token':'x'}"), "t.json: admin.token: unknown key"},
    /* backends */
    {WITH_BACKENDS("{}"), "t.json: backends: must be an object naming at least one backend"},
    {WITH_BACKENDS("[]"), "t.json: backends: must be an object naming at least one backend"},
    {WITH_BACKENDS("{'legacy':{'url':'http://a'},'new':{'url':'http://b'},'x y':{'url':'http://"
                   "c'}}"),
     "t.json: backends.x y: a backend name must be non-empty and use only letters, digits, '_', "
     "'.' and '-'"},
    {WITH_BACKENDS("{'legacy':{},'new':{'url':'http://b'}}"),
     "t.json: backends.legacy: needs \"url\" (one server) or \"servers\" (a list)"},
    {WITH_BACKENDS("{'legacy':'http://a','new':{'url':'http://b'}}"),
     "t.json: backends.legacy: must be an object"},
    {URL("ftp://a"), "t.json: backends.legacy.url: must start with http:// or https://"},
    {URL("127.0.0.1:9001"), "t.json: backends.legacy.url: must start with http:// or https://"},
    {URL("http://a/api"),
     "t.json: backends.legacy.url: must not contain a path: ficus forwards the request's own path"},
    {URL("http://u:p@a"),
     "t.json: backends.legacy.url: must not contain user information (\"user@\")"},
    {URL("http://a/?x=1"), "t.json: backends.legacy.url: must not contain a query or a fragment"},
    {URL("http://a:99999"), "t.json: backends.legacy.url: port must be a number from 1 to 65535"},
    {URL("http://a:"), "t.json: backends.legacy.url: port must be a number from 1 to 65535"},
    {URL("http://"), "t.json: backends.legacy.url: has no host"},
    {URL("http://a b"),
     "t.json: backends.legacy.url: host must be a name, an IPv4 address or an [IPv6] address"},
    {URL("http://[::1"),
     "t.json: backends.legacy.url: has an IPv6 address without its closing \"]\""},
    {URL("http://[::x]:80"), "t.json: backends.legacy.url: has an invalid IPv6 address"},
    {URL("http://::1:80"),
     "t.json: backends.legacy.url: an IPv6 address must be in brackets, as in http://[::1]:8080"},
    {LEGACY(",'tls':{'verify':false}"),
     "t.json: backends.legacy.tls: only allowed with an https:// url"},
    {LEGACY(",'max_connections':0"),
     "t.json: backends.legacy.max_connections: must be an integer from 1 to 100000"},
    {LEGACY(",'max_connections':100001"),
     "t.json: backends.legacy.max_connections: must be an integer from 1 to 100000"},
    {LEGACY(",'health':{'path':'healthz'}"),
     "t.json: backends.legacy.health.path: must be a path starting with \"/\""},
    {LEGACY(",'health':{'interval_ms':1000}"), "t.json: backends.legacy.health.path: is required"},
    {LEGACY(",'health':{'path':'/h','interval_ms':50}"),
     "t.json: backends.legacy.health.interval_ms: must be an integer from 100 to 3600000"},
    {WITH_BACKENDS("{'legacy':{'url':'https://a','tls':{'verify':'yes'}},'new':{'url':'http://"
                   "b'}}"),
     "t.json: backends.legacy.tls.verify: must be true or false"},
    /* backend fleets: servers, lb, ejection, resolve intervals, resolvers */
    {LEGACY(",'servers':['http://b']"),
     "t.json: backends.legacy: has both \"url\" and \"servers\": give one of them"},
    {SERVERS("[]"), "t.json: backends.legacy.servers: must be a non-empty array of at most 64 "
                    "servers"},
    {SERVERS("'http://a'"), "t.json: backends.legacy.servers: must be a non-empty array of at "
                            "most 64 servers"},
    {SERVERS("['http://a',5]"), "t.json: backends.legacy.servers[1]: must be a URL or an object "
                                "{\"url\": ..., \"weight\": ...}"},
    {SERVERS("['http://a','ftp://b']"),
     "t.json: backends.legacy.servers[1]: must start with http:// or https://"},
    {SERVERS("['http://a',{'url':'http://b/x'}]"),
     "t.json: backends.legacy.servers[1].url: must not contain a path: ficus forwards the "
     "request's own path"},
    {SERVERS("['http://a',{'weight':2}]"), "t.json: backends.legacy.servers[1].url: is required"},
    {SERVERS("['http://a','http://b',{'url':'http://c','weight':0}]"),
     "t.json: backends.legacy.servers[2].weight: must be an integer from 1 to 1000"},
    {SERVERS("[{'url':'http://c','weight':1001}]"),
     "t.json: backends.legacy.servers[0].weight: must be an integer from 1 to 1000"},
    {SERVERS("[{'url':'http://c','weight':'2'}]"),
     "t.json: backends.legacy.servers[0].weight: must be an integer from 1 to 1000"},
    {SERVERS("[{'url':'http://c','wieght':2}]"),
     "t.json: backends.legacy.servers[0].wieght: unknown key"},
    {SERVERS("['http://a','https://b']"),
     "t.json: backends.legacy.servers[1]: must use the scheme of servers[0] (http://): the tls "
     "settings of a backend apply to all its servers"},
    {SERVERS("['ftp://x','https://a']"),
     "t.json: backends.legacy.servers[0]: must start with http:// or https://"},
    {SERVERS("['http://a:80','HTTP://A']"),
     "t.json: backends.legacy.servers[1]: the same host and port as servers[0]: give that one a "
     "weight instead"},
    {SERVERS_AND("['http://a']", ",'tls':{'verify':false}"),
     "t.json: backends.legacy.tls: only allowed with https:// servers"},
    {LEGACY(",'lb':'random'"),
     "t.json: backends.legacy.lb: must be \"round_robin\" or \"least_requests\""},
    {LEGACY(",'lb':1"),
     "t.json: backends.legacy.lb: must be \"round_robin\" or \"least_requests\""},
    {LEGACY(",'ejection':true"), "t.json: backends.legacy.ejection: must be an object"},
    {LEGACY(",'ejection':{'consecutive_failures':0}"),
     "t.json: backends.legacy.ejection.consecutive_failures: must be an integer from 1 to 1000"},
    {LEGACY(",'ejection':{'base_ms':0}"),
     "t.json: backends.legacy.ejection.base_ms: must be an integer from 1 to 86400000"},
    {LEGACY(",'ejection':{'base_ms':5000,'max_ms':4000}"),
     "t.json: backends.legacy.ejection.max_ms: must be an integer from 5000 to 86400000"},
    {LEGACY(",'ejection':{'max':4000}"), "t.json: backends.legacy.ejection.max: unknown key"},
    {LEGACY(",'min_resolve_interval_ms':99"),
     "t.json: backends.legacy.min_resolve_interval_ms: must be an integer from 100 to 86400000"},
    {LEGACY(",'min_resolve_interval_ms':2000,'max_resolve_interval_ms':1000"),
     "t.json: backends.legacy.max_resolve_interval_ms: must be an integer from 2000 to "
     "86400000"},
    {TOP(",'resolvers':[]"),
     "t.json: resolvers: must be a non-empty array of at most 16 \"ip:port\" DNS servers (leave "
     "it out to use the system's)"},
    {TOP(",'resolvers':'127.0.0.1:53'"),
     "t.json: resolvers: must be a non-empty array of at most 16 \"ip:port\" DNS servers (leave "
     "it out to use the system's)"},
    {TOP(",'resolvers':['127.0.0.1']"),
     "t.json: resolvers[0]: must be \"host:port\", as in \"127.0.0.1:8080\""},
    {TOP(",'resolvers':['dns.example:53']"),
     "t.json: resolvers[0]: host must be an IPv4 address, an [IPv6] address or localhost"},
    {TOP(",'resolvers':['127.0.0.1:53','[::1]:53','127.0.0.1:53']"),
     "t.json: resolvers[2]: same address as resolvers[0]"},
    /* routes */
    {WITH_ROUTES("[]"), "t.json: routes: must be a non-empty array of routes"},
    {WITH_ROUTES("{}"), "t.json: routes: must be a non-empty array of routes"},
    {WITH_ROUTES("[{}]"), "t.json: routes[0].name: is required"},
    {WITH_ROUTES("[{'name':'a/b'}]"),
     "t.json: routes[0].name: must be a non-empty string of letters, digits, '_', '.' and '-'"},
    {WITH_ROUTES("[{'name':''}]"),
     "t.json: routes[0].name: must be a non-empty string of letters, digits, '_', '.' and '-'"},
    {WITH_ROUTES("[{'name':'a'},{'name':'a'}]"),
     "t.json: routes[1].name: \"a\" is already the name of routes[0]"},
    {ROUTE(",'new':'nw'"), "t.json: routes[0].new: no backend named \"nw\""},
    {WITH_BACKENDS("{'old':{'url':'http://a'},'new':{'url':'http://b'}}"),
     "t.json: routes[0].legacy: no backend named \"legacy\""},
    {ROUTE(",'new_percent':101"), "t.json: routes[0].new_percent: must be a number from 0 to 100"},
    {ROUTE(",'new_percent':-0.5"), "t.json: routes[0].new_percent: must be a number from 0 to 100"},
    {ROUTE(",'new_percent':'5'"), "t.json: routes[0].new_percent: must be a number from 0 to 100"},
    {ROUTE(",'sticky':{}"),
     "t.json: routes[0].sticky: must have exactly one of \"header\", \"cookie\", \"query\" or "
     "\"ip\""},
    {ROUTE(",'sticky':{'header':'x-user','cookie':'sid'}"),
     "t.json: routes[0].sticky: must have exactly one of \"header\", \"cookie\", \"query\" or "
     "\"ip\""},
    {ROUTE(",'sticky':{'ip':false}"), "t.json: routes[0].sticky.ip: must be true"},
    {ROUTE(",'sticky':{'header':'x user'}"), "t.json: routes[0].sticky.header: " HDRNAME_REASON},
    {ROUTE(",'sticky':{'query':''}"), "t.json: routes[0].sticky.query: must be a non-empty string"},
    {ROUTE(",'override_header':'bad header'"),
     "t.json: routes[0].override_header: " HDRNAME_REASON},
    {ROUTE(",'match':{'path_prefix':'api'}"),
     "t.json: routes[0].match.path_prefix: must be a path starting with \"/\""},
    {ROUTE(",'match':{'methods':['GET','get']}"),
     "t.json: routes[0].match.methods[1]: must be an upper-case method name such as \"GET\""},
    {ROUTE(",'match':{'methods':[]}"),
     "t.json: routes[0].match.methods: must be a non-empty array of method names"},
    {ROUTE(",'match':{'host':''}"), "t.json: routes[0].match.host: must be a non-empty string"},
    {ROUTE(",'match':{'headers':{'x-a':1}}"),
     "t.json: routes[0].match.headers.x-a: must be a string"},
    {ROUTE(",'match':{'headers':{'X-A':'1','x-a':'2'}}"),
     "t.json: routes[0].match.headers.x-a: header \"x-a\" is listed twice (names ignore case)"},
    {ROUTE(",'match':{'headers':['x-a']}"),
     "t.json: routes[0].match.headers: must be an object of header name to value"},
    /* A control byte the file quotes is escaped: an error stays one line (fuzz_config). */
    {ROUTE(",'match':{'headers':{'x-t\\nant':'a'}}"),
     "t.json: routes[0].match.headers.x-t\\x0aant: " HDRNAME_REASON},
    {ROUTE(",'match':{'path':'/'}"), "t.json: routes[0].match.path: unknown key"},
    {ROUTE(",'shadow':{'percnt':5}"), "t.json: routes[0].shadow.percnt: unknown key"},
    {ROUTE(",'shadow':true"), "t.json: routes[0].shadow: must be an object"},
    {ROUTE(",'shadow':{'percent':100.5}"),
     "t.json: routes[0].shadow.percent: must be a number from 0 to 100"},
    {ROUTE(",'shadow':{'timeout_ms':0}"),
     "t.json: routes[0].shadow.timeout_ms: must be an integer from 1 to 3600000"},
    {ROUTE(",'shadow':{'max_inflight':0}"),
     "t.json: routes[0].shadow.max_inflight: must be an integer from 1 to 1000000"},
    {ROUTE(",'shadow':{'max_body_bytes':2147483648}"),
     "t.json: routes[0].shadow.max_body_bytes: must be an integer from 0 to 1073741824"},
    {ROUTE(",'shadow':{'methods':'GET'}"),
     "t.json: routes[0].shadow.methods: must be a non-empty array of method names"},
    {ROUTE(",'shadow':{'methods':['POST'],'correlate':{}}"),
     "t.json: routes[0].shadow.correlate: needs \"id_pointer\" or \"location\": true (where the "
     "created id is read)"},
    {ROUTE(",'shadow':{'correlate':{'location':true}}"),
     "t.json: routes[0].shadow.correlate: learns ids from shadowed writes: list them (POST, PUT, "
     "...) in shadow.methods"},
    {ROUTE(",'shadow':{'methods':['POST'],'correlate':{'id_pointer':'/a/*'}}"),
     "t.json: routes[0].shadow.correlate.id_pointer: must be a JSON Pointer to one member, "
     "without \"*\" segments"},
    {ROUTE(",'shadow':{'methods':['POST'],'correlate':{'location':true,'body_fields':['x']}}"),
     "t.json: routes[0].shadow.correlate.body_fields[0]: must be a JSON Pointer: \"\" or a "
     "string starting with \"/\""},
    {ROUTE(",'shadow':{'methods':['POST'],'correlate':{'location':true,'body_fields':[{'pointer':"
           "'/a','collection':'a'}]}}"),
     "t.json: routes[0].shadow.correlate.body_fields[0].collection: must be a path such as "
     "\"/posts\" (the path before the id)"},
    {ROUTE(",'shadow':{'methods':['POST'],'correlate':{'location':true,'max_entries':1000001}}"),
     "t.json: routes[0].shadow.correlate.max_entries: must be an integer from 1 to 1000000"},
    {ROUTE(",'shadow':{'methods':['POST'],'correlate':{'location':true,'ttl_ms':0}}"),
     "t.json: routes[0].shadow.correlate.ttl_ms: must be an integer from 1 to 604800000"},
    {ROUTE(",'diff':{'ignore':['meta']}"),
     "t.json: routes[0].diff.ignore[0]: must be a JSON Pointer: \"\" or a string starting with "
     "\"/\""},
    {ROUTE(",'diff':{'unordered':['/a~2']}"),
     "t.json: routes[0].diff.unordered[0]: must be a JSON Pointer: \"~\" is only allowed as "
     "\"~0\" or \"~1\""},
    {ROUTE(",'diff':{'tolerance':-1}"), "t.json: routes[0].diff.tolerance: must be a number >= 0"},
    {ROUTE(",'diff':{'noise':{'threshold':2}}"),
     "t.json: routes[0].diff.noise.threshold: must be a number from 0 to 1"},
    {ROUTE(",'diff':{'noise':{'percent':101}}"),
     "t.json: routes[0].diff.noise.percent: must be a number from 0 to 100"},
    {ROUTE(",'diff':{'match_by':{'/items':''}}"),
     "t.json: routes[0].diff.match_by./items: must be a non-empty string: the member that "
     "identifies an item"},
    {ROUTE(",'diff':{'match_by':{'items':'id'}}"),
     "t.json: routes[0].diff.match_by.items: must be a JSON Pointer: \"\" or a string starting "
     "with \"/\""},
    {ROUTE(",'diff':{'match_by':['/items']}"),
     "t.json: routes[0].diff.match_by: must be an object of JSON Pointer to key name"},
    {ROUTE(",'diff':{'headers':[1]}"), "t.json: routes[0].diff.headers[0]: " HDRNAME_REASON},
    {ROUTE(",'diff':{'ignore_headers':'date'}"),
     "t.json: routes[0].diff.ignore_headers: must be an array of header names"},
    /* issue 14: loose types, media types, noise warm-up, endpoints, redact_json */
    {ROUTE(",'diff':{'loose_types':1}"),
     "t.json: routes[0].diff.loose_types: must be true or false"},
    {ROUTE(",'diff':{'media_type_headers':['content type']}"),
     "t.json: routes[0].diff.media_type_headers[0]: " HDRNAME_REASON},
    {ROUTE(",'diff':{'noise':{'warmup':-1}}"),
     "t.json: routes[0].diff.noise.warmup: must be an integer from 0 to 1000000"},
    {ROUTE(",'endpoints':'GET /a'"),
     "t.json: routes[0].endpoints: must be an array of endpoint templates \"METHOD /path\""},
    {ROUTE(",'endpoints':['get /a']"),
     "t.json: routes[0].endpoints[0]: must be \"METHOD /path\" with an upper-case method, such "
     "as \"GET /posts/{id}\""},
    {ROUTE(",'endpoints':['GET /posts/x{id}']"),
     "t.json: routes[0].endpoints[0]: a placeholder must be a whole segment, such as {id} "
     "(letters, digits, '_')"},
    {ROUTE(",'endpoints':['GET a']"),
     "t.json: routes[0].endpoints[0]: the path must start with \"/\""},
    {ROUTE(",'endpoints':['GET /a','GET /b','GET /a']"),
     "t.json: routes[0].endpoints[2]: \"GET /a\" is listed twice"},
    {ROUTE(",'endpoints':['GET /a','GET /b'],'max_endpoints':1"),
     "t.json: routes[0].endpoints: lists 2 endpoints, more than max_endpoints (1)"},
    {ROUTE(",'max_endpoints':0"),
     "t.json: routes[0].max_endpoints: must be an integer from 1 to 10000"},
    {TOP(",'divergence_log':{'path':'d','redact_json':['password']}"),
     "t.json: divergence_log.redact_json[0]: must be a JSON Pointer: \"\" or a string starting "
     "with \"/\""},
    {TOP(",'divergence_log':{'path':'d','redact_json':'/password'}"),
     "t.json: divergence_log.redact_json: must be an array of JSON Pointers"},
    {ROUTE(",'fallback':['5xx','5xx']"), "t.json: routes[0].fallback[1]: \"5xx\" is listed twice"},
    {ROUTE(",'fallback':['oops']"),
     "t.json: routes[0].fallback[0]: must be \"connect_error\", \"timeout\" or \"5xx\""},
    {ROUTE(",'fallback':'5xx'"),
     "t.json: routes[0].fallback: must be an array of \"connect_error\", \"timeout\" or \"5xx\""},
    {ROUTE(",'guard':{'window_ms':10}"),
     "t.json: routes[0].guard.window_ms: must be an integer from 1000 to 86400000"},
    {ROUTE(",'guard':{'max_error_rate':1.5}"),
     "t.json: routes[0].guard.max_error_rate: must be a number from 0 to 1"},
    {ROUTE(",'guard':{'max_divergence_rate':-0.1}"),
     "t.json: routes[0].guard.max_divergence_rate: must be a number from 0 to 1"},
    {ROUTE(",'guard':{'min_comparisons':0}"),
     "t.json: routes[0].guard.min_comparisons: must be an integer from 1 to 2147483647"},
    {ROUTE(",'ramp':{'steps':[5,1],'every_ms':1000}"),
     "t.json: routes[0].ramp.steps[1]: must be greater than the step before it"},
    {ROUTE(",'ramp':{'steps':[5,5],'every_ms':1000}"),
     "t.json: routes[0].ramp.steps[1]: must be greater than the step before it"},
    {ROUTE(",'ramp':{'steps':[5,150],'every_ms':1000}"),
     "t.json: routes[0].ramp.steps[1]: must be a number from 0 to 100"},
    {ROUTE(",'ramp':{'steps':[1]}"), "t.json: routes[0].ramp.every_ms: is required"},
    {ROUTE(",'ramp':{'steps':[],'every_ms':1000}"),
     "t.json: routes[0].ramp.steps: must be a non-empty array of percentages"},
    {ROUTE(",'ramp':{'steps':[1],'every_ms':999}"),
     "t.json: routes[0].ramp.every_ms: must be an integer >= 1000"},
    /* divergence_log, access_log, limits, timeouts */
    {TOP(",'divergence_log':{}"), "t.json: divergence_log.path: is required"},
    {TOP(",'divergence_log':{'path':'d','max_bytes':100}"),
     "t.json: divergence_log.max_bytes: must be an integer >= 4096"},
    {TOP(",'divergence_log':{'path':'d','keep':1001}"),
     "t.json: divergence_log.keep: must be an integer from 0 to 1000"},
    {TOP(",'divergence_log':{'path':'d','body_bytes':16777217}"),
     "t.json: divergence_log.body_bytes: must be an integer from 0 to 16777216"},
    {TOP(",'divergence_log':{'path':'d','redact_headers':'authorization'}"),
     "t.json: divergence_log.redact_headers: must be an array of header names"},
    {TOP(",'divergence_log':{'path':'d','redact_headers':['x:y']}"),
     "t.json: divergence_log.redact_headers[0]: " HDRNAME_REASON},
    {TOP(",'access_log':{'path':5}"),
     "t.json: access_log.path: must be a string: a file, \"-\" for stdout or \"\" for none"},
    {TOP(",'access_log':'-'"), "t.json: access_log: must be an object"},
    {TOP(",'limits':{'max_header_bytes':100}"),
     "t.json: limits.max_header_bytes: must be an integer from 1024 to 16777216"},
    {TOP(",'limits':{'max_connections':0}"),
     "t.json: limits.max_connections: must be an integer from 1 to 10000000"},
    {TOP(",'limits':{'max_request_body_bytes':-1}"),
     "t.json: limits.max_request_body_bytes: must be an integer >= 0"},
    {TOP(",'timeouts':{'connect_ms':0}"),
     "t.json: timeouts.connect_ms: must be an integer from 1 to 86400000"},
    {TOP(",'timeouts':{'drain_ms':1e3}"),
     "t.json: timeouts.drain_ms: must be an integer from 1 to 86400000"},
    {TOP(",'timeouts':{'upstream_ms':null}"),
     "t.json: timeouts.upstream_ms: must be an integer from 1 to 86400000"},
    {TOP(",'timeouts':{'idle_ms':5}"), "t.json: timeouts.idle_ms: unknown key"},
    /* state_store (issue 13) */
    {TOP(",'state_store':'etcd'"), "t.json: state_store: must be an object"},
    {TOP(",'state_store':{}"), "t.json: state_store.type: is required"},
    {TOP(",'state_store':{'type':'consul'}"),
     "t.json: state_store.type: must be \"file\" or \"etcd\""},
    {TOP(",'state_store':{'type':5}"), "t.json: state_store.type: must be \"file\" or \"etcd\""},
    {TOP(",'state_store':{'type':'file','prefix':'/f/'}"),
     "t.json: state_store.prefix: only with \"type\": \"etcd\""},
    {TOP(",'state_store':{'type':'file','typo':1}"), "t.json: state_store.typo: unknown key"},
    {TOP(",'state_store':{'type':'etcd','prefix':'/f/'}"),
     "t.json: state_store.endpoints: is required"},
    {STORE("'endpoints':[]"), "t.json: state_store.endpoints: " ENDPOINTS_REASON},
    {STORE("'endpoints':'http://127.0.0.1:2379'"),
     "t.json: state_store.endpoints: " ENDPOINTS_REASON},
    {STORE("'endpoints':['http://a:1','http://a:2','http://a:3','http://a:4','http://a:5',"
           "'http://a:6','http://a:7','http://a:8','http://a:9','http://a:10','http://a:11',"
           "'http://a:12','http://a:13','http://a:14','http://a:15','http://a:16','http://a:17']"),
     "t.json: state_store.endpoints: " ENDPOINTS_REASON},
    {STORE("'endpoints':[2379]"),
     "t.json: state_store.endpoints[0]: must be a URL such as \"http://127.0.0.1:2379\""},
    {STORE("'endpoints':['etcd:2379']"),
     "t.json: state_store.endpoints[0]: must start with http:// or https://"},
    {STORE("'endpoints':['http://127.0.0.1']"),
     "t.json: state_store.endpoints[0]: must name the port, as in \"http://127.0.0.1:2379\""},
    {STORE("'endpoints':['https://[::1]/']"),
     "t.json: state_store.endpoints[0]: must name the port, as in \"http://127.0.0.1:2379\""},
    {STORE("'endpoints':['http://127.0.0.1:2379/v3']"),
     "t.json: state_store.endpoints[0]: must not contain a path: give the member's address only"},
    {STORE("'endpoints':['http://u@127.0.0.1:2379']"),
     "t.json: state_store.endpoints[0]: must not contain user information (\"user@\")"},
    {STORE("'endpoints':['http://127.0.0.1:0']"),
     "t.json: state_store.endpoints[0]: port must be a number from 1 to 65535"},
    {STORE("'endpoints':['http://e1:2379','https://e2:2379']"),
     "t.json: state_store.endpoints[1]: must use the same scheme as state_store.endpoints[0]"},
    {STORE("'endpoints':['http://e1:2379','http://E1:2379']"),
     "t.json: state_store.endpoints[1]: same member as state_store.endpoints[0]"},
    {TOP(",'state_store':{'type':'etcd','endpoints':['http://e1:2379']}"),
     "t.json: state_store.prefix: is required"},
    {ETCD(",'prefix':5"), "t.json: state_store.prefix: must be a string such as \"/ficus/prod/\""},
    {ETCD(",'prefix':'ficus/'"), "t.json: state_store.prefix: " PREFIX_REASON},
    {ETCD(",'prefix':'/ficus'"), "t.json: state_store.prefix: " PREFIX_REASON},
    {ETCD(",'prefix':'/'"), "t.json: state_store.prefix: " PREFIX_REASON},
    {ETCD(",'prefix':''"), "t.json: state_store.prefix: " PREFIX_REASON},
    {ETCD(",'prefix':'/a//b/'"), "t.json: state_store.prefix: must not contain \"//\""},
    {ETCD(",'prefix':'/a b/'"),
     "t.json: state_store.prefix: may use only letters, digits, '_', '.', '-' and '/'"},
    {ETCD(",'prefix':'/p/','timeout_ms':99"),
     "t.json: state_store.timeout_ms: must be an integer from 100 to 60000"},
    {ETCD(",'prefix':'/p/','lease_ttl_s':1"),
     "t.json: state_store.lease_ttl_s: must be an integer from 2 to 3600"},
    {ETCD(",'prefix':'/p/','lease_ttl_s':3601"),
     "t.json: state_store.lease_ttl_s: must be an integer from 2 to 3600"},
    {ETCD(",'prefix':'/p/','timeout_ms':5001"),
     "t.json: state_store.timeout_ms: must be at most half of lease_ttl_s (5000 ms), so that a "
     "lease outlives a keepalive that times out"},
    {ETCD(",'prefix':'/p/','lease_ttl_s':4,'timeout_ms':2500"),
     "t.json: state_store.timeout_ms: must be at most half of lease_ttl_s (2000 ms), so that a "
     "lease outlives a keepalive that times out"},
    {ETCD(",'prefix':'/p/','tls':{}"),
     "t.json: state_store.tls: only allowed with https:// endpoints"},
    {HTTPS(",'tls':{'cert_file':'c.pem'}"),
     "t.json: state_store.tls.key_file: is required with cert_file"},
    {HTTPS(",'tls':{'key_file':'k.pem'}"),
     "t.json: state_store.tls.cert_file: is required with key_file"},
    {HTTPS(",'tls':{'verify':'no'}"), "t.json: state_store.tls.verify: must be true or false"},
    {HTTPS(",'tls':{'ca':'ca.pem'}"), "t.json: state_store.tls.ca: unknown key"},
    {HTTPS(",'tls':{'ca_file':''}"), "t.json: state_store.tls.ca_file: must be a non-empty string"},
};

static void test_bad_inputs(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < ARRAY_SIZE(bad_cases); i++) {
        struct config_errors errs = {0};
        struct config *cfg = parse_q(bad_cases[i].json, &errs);
        if (cfg != NULL || errs.n != 1 || !has_line(&errs, bad_cases[i].line)) {
            char what[4096];
            snprintf(what, sizeof(what), "case %zu: %s\n  want: %s", i, bad_cases[i].json,
                     bad_cases[i].line);
            dump_errors(what, &errs);
            failures++;
        }
        config_unref(cfg);
        config_errors_dispose(&errs);
    }
    assert_true(ARRAY_SIZE(bad_cases) >= 40);
    assert_int_equal(failures, 0);
}

/* ---- valid input ---- */

static void test_defaults(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(TOP(""));

    assert_string_equal(cfg->path, "t.json");
    assert_int_equal(cfg->refcount, 1);
    assert_true(cfg->workers >= 1);
    assert_true(cfg->admin);
    assert_string_equal(cfg->admin_addr.text, "127.0.0.1:9901");
    assert_int_equal(cfg->admin_addr.ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&cfg->admin_addr.ss)->sin_port), 9901);
    assert_null(cfg->admin_token_env);
    assert_null(cfg->state_file);

    assert_int_equal(cfg->n_backends, 2);
    const struct backend_cfg *b = &cfg->backends[0];
    assert_string_equal(b->name, "legacy");
    assert_string_equal(b->host, "127.0.0.1");
    assert_int_equal(b->port, 9001);
    assert_false(b->tls);
    assert_int_equal(b->max_connections, 256);
    assert_true(b->verify);
    assert_null(b->ca_file);
    assert_null(b->server_name);
    assert_null(b->health_path);
    assert_int_equal(b->health_interval_ms, 2000);

    assert_int_equal(cfg->n_routes, 1);
    const struct route_cfg *rt = &cfg->routes[0];
    assert_string_equal(rt->name, "r");
    assert_null(rt->match.path_prefix);
    assert_null(rt->match.methods);
    assert_int_equal(rt->match.n_methods, 0);
    assert_null(rt->match.host);
    assert_int_equal(rt->match.n_headers, 0);
    assert_int_equal(rt->legacy, 0);
    assert_int_equal(rt->new_, 1);
    assert_true(rt->new_percent == 0);
    assert_int_equal(rt->sticky, STICKY_IP);
    assert_null(rt->sticky_name);
    assert_null(rt->override_header);
    assert_false(rt->shadow);
    assert_true(rt->shadow_percent == 100);
    assert_int_equal(rt->n_shadow_methods, 3);
    assert_string_equal(rt->shadow_methods[0], "GET");
    assert_string_equal(rt->shadow_methods[1], "HEAD");
    assert_string_equal(rt->shadow_methods[2], "OPTIONS");
    assert_int_equal(rt->shadow_max_inflight, 100);
    assert_int_equal(rt->shadow_timeout_ms, 5000);
    assert_int_equal(rt->shadow_max_body_bytes, 1048576);
    assert_int_equal(rt->diff.n_headers, 1);
    assert_string_equal(rt->diff.headers[0], "content-type");
    assert_int_equal(rt->diff.n_ignore_headers, 0);
    assert_int_equal(rt->diff.n_ignore, 0);
    assert_int_equal(rt->diff.n_unordered, 0);
    assert_int_equal(rt->diff.n_match_by, 0);
    assert_true(rt->diff.tolerance == 0);
    assert_false(rt->noise);
    assert_true(rt->noise_percent == 2);
    assert_true(rt->noise_threshold == 0.05);
    assert_int_equal(rt->noise_warmup, 20);
    assert_false(rt->diff.loose_types);
    assert_int_equal(rt->diff.n_media_type_headers, 0);
    assert_int_equal(rt->n_endpoints, 0);
    assert_int_equal(rt->max_endpoints, 100);
    assert_int_equal(rt->fallback, 0);
    assert_false(rt->guard);
    assert_true(rt->guard_max_divergence_rate == 0.01);
    assert_true(rt->guard_max_error_rate == 0.02);
    assert_int_equal(rt->guard_min_comparisons, 200);
    assert_int_equal(rt->guard_window_ms, 60000);
    assert_false(rt->ramp);
    assert_int_equal(rt->n_ramp_steps, 0);

    assert_null(cfg->divlog_path);
    assert_int_equal(cfg->divlog_max_bytes, 104857600);
    assert_int_equal(cfg->divlog_keep, 5);
    assert_int_equal(cfg->divlog_body_bytes, 4096);
    assert_int_equal(cfg->n_redact_headers, 4);
    assert_int_equal(cfg->n_redact_json, 0);
    assert_string_equal(cfg->access_log_path, "-");
    assert_int_equal(cfg->max_connections, 10000);
    assert_int_equal(cfg->max_header_bytes, 65536);
    assert_int_equal(cfg->max_request_body_bytes, 104857600);
    assert_int_equal(cfg->connect_ms, 2000);
    assert_int_equal(cfg->upstream_ms, 30000);
    assert_int_equal(cfg->client_idle_ms, 60000);
    assert_int_equal(cfg->header_ms, 10000);
    assert_int_equal(cfg->drain_ms, 10000);
    config_unref(cfg);
}

static void test_every_option(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(
        "{'listen':[{'address':'0.0.0.0:8080'},"
        "           {'address':'[::]:8443','tls':{'cert_file':'c.pem','key_file':'k.pem'}}],"
        " 'workers':3,"
        " 'admin':{'address':'[::1]:9902','token_env':'TOKEN'},"
        " 'state_file':'s.json',"
        " 'backends':{'old':{'url':'http://10.0.0.1','max_connections':512},"
        "             'v2':{'url':'HTTPS://Orders-v2.internal:8443/',"
        "                   'tls':{'verify':false,'ca_file':'ca.pem','server_name':'o.internal'},"
        "                   'health':{'path':'/healthz','interval_ms':500}},"
        "             'v6':{'url':'https://[2001:db8::1]'}},"
        " 'routes':[{'name':'orders.v1_x-y',"
        "   'match':{'path_prefix':'/api/orders','methods':['GET','POST'],"
        "            'host':'shop.example.com','headers':{'X-Tenant':'Acme'}},"
        "   'legacy':'old','new':'v2','new_percent':0.1,"
        "   'sticky':{'header':'X-User-Id'},"
        "   'override_header':'X-Ficus-Backend',"
        "   'shadow':{'percent':50,'methods':['GET','POST'],'max_inflight':1000,"
        "             'timeout_ms':250,'max_body_bytes':0},"
        "   'diff':{'ignore_headers':['Date','server'],'headers':['Content-Type','Cache-Control'],"
        "           'ignore':['/meta/generated_at','/items/*/etag',''],'unordered':['/tags'],"
        "           'match_by':{'/items':'id','/a~1b':'key'},'tolerance':1e-6,"
        "           'noise':{'percent':10,'threshold':0.5}},"
        "   'fallback':['connect_error','5xx'],"
        "   'guard':{'max_divergence_rate':0.5,'max_error_rate':1,'min_comparisons':10,"
        "            'window_ms':1000},"
        "   'ramp':{'steps':[0.5,1,25,100],'every_ms':3600000}},"
        "  {'name':'rest','legacy':'v6','new':'v6','sticky':{'cookie':'sid'}},"
        "  {'name':'q','sticky':{'query':'user'},'legacy':'old','new':'v2'},"
        "  {'name':'ip','sticky':{'ip':true},'legacy':'old','new':'v2','shadow':{}}],"
        " 'divergence_log':{'path':'d.ndjson','max_bytes':4096,'keep':0,'body_bytes':0,"
        "                   'redact_headers':['X-Api-Key']},"
        " 'access_log':{'path':''},"
        " 'limits':{'max_connections':1,'max_header_bytes':1024,'max_request_body_bytes':0},"
        " 'timeouts':{'connect_ms':1,'upstream_ms':2,'client_idle_ms':3000,'drain_ms':4}}");

    assert_int_equal(cfg->n_listens, 2);
    assert_false(cfg->listens[0].tls);
    assert_null(cfg->listens[0].cert_file);
    assert_int_equal(cfg->listens[0].addr.ss.ss_family, AF_INET);
    assert_true(cfg->listens[1].tls);
    assert_string_equal(cfg->listens[1].cert_file, "c.pem");
    assert_string_equal(cfg->listens[1].key_file, "k.pem");
    assert_int_equal(cfg->listens[1].addr.ss.ss_family, AF_INET6);
    assert_int_equal(cfg->listens[1].addr.len, sizeof(struct sockaddr_in6));
    assert_int_equal(cfg->workers, 3);
    assert_string_equal(cfg->admin_addr.text, "[::1]:9902");
    assert_int_equal(cfg->admin_addr.ss.ss_family, AF_INET6);
    assert_string_equal(cfg->admin_token_env, "TOKEN");
    assert_string_equal(cfg->state_file, "s.json");

    assert_int_equal(cfg->n_backends, 3);
    const struct backend_cfg *b = &cfg->backends[0];
    assert_string_equal(b->host, "10.0.0.1");
    assert_int_equal(b->port, 80);
    assert_int_equal(b->max_connections, 512);
    b = &cfg->backends[1];
    assert_true(b->tls);
    assert_string_equal(b->host, "Orders-v2.internal");
    assert_int_equal(b->port, 8443);
    assert_false(b->verify);
    assert_string_equal(b->ca_file, "ca.pem");
    assert_string_equal(b->server_name, "o.internal");
    assert_string_equal(b->health_path, "/healthz");
    assert_int_equal(b->health_interval_ms, 500);
    b = &cfg->backends[2];
    assert_string_equal(b->host, "2001:db8::1");
    assert_int_equal(b->port, 443);

    assert_int_equal(cfg->n_routes, 4);
    const struct route_cfg *rt = &cfg->routes[0];
    assert_string_equal(rt->name, "orders.v1_x-y");
    assert_string_equal(rt->match.path_prefix, "/api/orders");
    assert_int_equal(rt->match.path_prefix_len, strlen("/api/orders"));
    assert_int_equal(rt->match.n_methods, 2);
    assert_string_equal(rt->match.methods[1], "POST");
    assert_string_equal(rt->match.host, "shop.example.com");
    assert_int_equal(rt->match.n_headers, 1);
    assert_string_equal(rt->match.headers[0].name, "x-tenant");
    assert_string_equal(rt->match.headers[0].value, "Acme");
    assert_int_equal(rt->legacy, 0);
    assert_int_equal(rt->new_, 1);
    assert_true(rt->new_percent == 0.1);
    assert_int_equal(rt->sticky, STICKY_HEADER);
    assert_string_equal(rt->sticky_name, "x-user-id");
    assert_string_equal(rt->override_header, "x-ficus-backend");
    assert_true(rt->shadow);
    assert_true(rt->shadow_percent == 50);
    assert_int_equal(rt->n_shadow_methods, 2);
    assert_string_equal(rt->shadow_methods[1], "POST");
    assert_int_equal(rt->shadow_max_inflight, 1000);
    assert_int_equal(rt->shadow_timeout_ms, 250);
    assert_int_equal(rt->shadow_max_body_bytes, 0);
    assert_int_equal(rt->diff.n_ignore_headers, 2);
    assert_string_equal(rt->diff.ignore_headers[0], "date");
    assert_int_equal(rt->diff.n_headers, 2);
    assert_string_equal(rt->diff.headers[0], "content-type");
    assert_string_equal(rt->diff.headers[1], "cache-control");
    assert_int_equal(rt->diff.n_ignore, 3);
    assert_string_equal(rt->diff.ignore[1], "/items/*/etag");
    assert_string_equal(rt->diff.ignore[2], "");
    assert_int_equal(rt->diff.n_unordered, 1);
    assert_string_equal(rt->diff.unordered[0], "/tags");
    assert_int_equal(rt->diff.n_match_by, 2);
    assert_string_equal(rt->diff.match_by[0].pointer, "/items");
    assert_string_equal(rt->diff.match_by[0].key, "id");
    assert_string_equal(rt->diff.match_by[1].pointer, "/a~1b");
    assert_true(rt->diff.tolerance == 1e-6);
    assert_true(rt->noise);
    assert_true(rt->noise_percent == 10);
    assert_true(rt->noise_threshold == 0.5);
    assert_int_equal(rt->fallback, FALLBACK_CONNECT_ERROR | FALLBACK_5XX);
    assert_true(rt->guard);
    assert_true(rt->guard_max_divergence_rate == 0.5);
    assert_true(rt->guard_max_error_rate == 1);
    assert_int_equal(rt->guard_min_comparisons, 10);
    assert_int_equal(rt->guard_window_ms, 1000);
    assert_true(rt->ramp);
    assert_int_equal(rt->n_ramp_steps, 4);
    assert_true(rt->ramp_steps[0] == 0.5);
    assert_true(rt->ramp_steps[3] == 100);
    assert_int_equal(rt->ramp_every_ms, 3600000);

    rt = &cfg->routes[1];
    assert_int_equal(rt->legacy, 2);
    assert_int_equal(rt->new_, 2);
    assert_int_equal(rt->sticky, STICKY_COOKIE);
    assert_string_equal(rt->sticky_name, "sid");
    assert_false(rt->shadow);
    rt = &cfg->routes[2];
    assert_int_equal(rt->sticky, STICKY_QUERY);
    assert_string_equal(rt->sticky_name, "user");
    rt = &cfg->routes[3];
    assert_int_equal(rt->sticky, STICKY_IP);
    assert_null(rt->sticky_name);
    assert_true(rt->shadow); /* an empty shadow object shadows with the defaults */
    assert_true(rt->shadow_percent == 100);

    assert_string_equal(cfg->divlog_path, "d.ndjson");
    assert_int_equal(cfg->divlog_max_bytes, 4096);
    assert_int_equal(cfg->divlog_keep, 0);
    assert_int_equal(cfg->divlog_body_bytes, 0);
    assert_int_equal(cfg->n_redact_headers, 5);
    assert_null(cfg->access_log_path);
    assert_int_equal(cfg->max_connections, 1);
    assert_int_equal(cfg->max_header_bytes, 1024);
    assert_int_equal(cfg->max_request_body_bytes, 0);
    assert_int_equal(cfg->connect_ms, 1);
    assert_int_equal(cfg->upstream_ms, 2);
    assert_int_equal(cfg->client_idle_ms, 3000);
    assert_int_equal(cfg->header_ms, 3000); /* min(client_idle_ms, 10000) */
    assert_int_equal(cfg->drain_ms, 4);
    config_unref(cfg);
}

/* shadow.correlate (issue 16) read back, and its defaults. */
static void test_correlate_options(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(
        "{" LISTEN "," BACKENDS ",'routes':[{'name':'r','shadow':{'methods':['GET','POST'],"
        "'correlate':{'id_pointer':'/data/id','location':true,'body_fields':['/post_id',"
        "{'pointer':'/items/*/user','collection':'/users'}],'max_entries':50,'ttl_ms':9}}},"
        "{'name':'s','shadow':{'methods':['PUT'],'correlate':{'location':true}}},{'name':'t'}]}");
    const struct correlate_cfg *cc = &cfg->routes[0].shadow_correlate;
    assert_true(cc->enabled);
    assert_string_equal(cc->id_pointer, "/data/id");
    assert_true(cc->location);
    assert_int_equal(cc->n_body_fields, 2);
    assert_string_equal(cc->body_fields[0].pointer, "/post_id");
    assert_null(cc->body_fields[0].collection);
    assert_string_equal(cc->body_fields[1].pointer, "/items/*/user");
    assert_string_equal(cc->body_fields[1].collection, "/users");
    assert_int_equal(cc->max_entries, 50);
    assert_int_equal(cc->ttl_ms, 9);
    cc = &cfg->routes[1].shadow_correlate;
    assert_true(cc->enabled);
    assert_null(cc->id_pointer);
    assert_int_equal(cc->n_body_fields, 0);
    assert_int_equal(cc->max_entries, CORRELATE_DEFAULT_ENTRIES);
    assert_int_equal(cc->ttl_ms, CORRELATE_DEFAULT_TTL_MS);
    assert_false(cfg->routes[2].shadow_correlate.enabled);
    config_unref(cfg);
}

/* The options of issue 14 read back. */
static void test_endpoint_and_redaction_options(void **state)
{
    (void)state;
    struct config *cfg =
        parse_ok("{" LISTEN "," BACKENDS ",'divergence_log':{'path':'d.ndjson','redact_json':"
                 "['/user/password','/items/*/ssn']},'routes':[{'name':'r','endpoints':"
                 "['GET /posts/{id}','DELETE /posts/{id}/comments/{cid}'],'max_endpoints':50,"
                 "'diff':{'loose_types':true,'media_type_headers':['Content-Type'],"
                 "'noise':{'warmup':0}}}]}");
    const struct route_cfg *rt = &cfg->routes[0];
    assert_int_equal(cfg->n_redact_json, 2);
    assert_string_equal(cfg->redact_json[0], "/user/password");
    assert_string_equal(cfg->redact_json[1], "/items/*/ssn");
    assert_int_equal(rt->n_endpoints, 2);
    assert_string_equal(rt->endpoints[0], "GET /posts/{id}");
    assert_string_equal(rt->endpoints[1], "DELETE /posts/{id}/comments/{cid}");
    assert_int_equal(rt->max_endpoints, 50);
    assert_true(rt->diff.loose_types);
    assert_int_equal(rt->diff.n_media_type_headers, 1);
    assert_string_equal(rt->diff.media_type_headers[0], "content-type"); /* lower case */
    assert_true(rt->noise);
    assert_int_equal(rt->noise_warmup, 0);
    config_unref(cfg);
}

static void test_listen_shorthand(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(WITH_LISTEN("'localhost:8080'"));
    assert_int_equal(cfg->n_listens, 1);
    const struct listen_cfg *ls = &cfg->listens[0];
    assert_string_equal(ls->addr.text, "localhost:8080");
    assert_false(ls->tls);
    assert_int_equal(ls->addr.len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&ls->addr.ss;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 8080);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
    config_unref(cfg);
}

static void test_listen_ipv6(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(WITH_LISTEN("[{'address':'[::1]:65535'},{'address':'[::]:80'}]"));
    assert_int_equal(cfg->n_listens, 2);
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&cfg->listens[0].addr.ss;
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(sin6->sin6_port), 65535);
    assert_memory_equal(&sin6->sin6_addr, &in6addr_loopback, sizeof(struct in6_addr));
    assert_int_equal(cfg->listens[0].addr.len, sizeof(struct sockaddr_in6));
    sin6 = (const struct sockaddr_in6 *)&cfg->listens[1].addr.ss;
    assert_memory_equal(&sin6->sin6_addr, &in6addr_any, sizeof(struct in6_addr));
    config_unref(cfg);
}

static void test_many_errors_at_once(void **state)
{
    (void)state;
    struct config_errors errs = {0};
    struct config *cfg =
        parse_q("{'listen':'127.0.0.1:0','workers':-1,"
                " 'backends':{'legacy':{'url':'ftp://x'},'new':{'url':'http://b'}},"
                " 'routes':[{'name':'a','new_percent':200},"
                "           {'name':'b','new':'nw','shadow':{'percnt':1}}],"
                " 'timeouts':{'drain_ms':0}}",
                &errs);
    assert_null(cfg);
    static const char *const want[] = {
        "t.json: listen: port must be a number from 1 to 65535",
        "t.json: workers: must be an integer from 0 to 256",
        "t.json: backends.legacy.url: must start with http:// or https://",
        "t.json: routes[0].new_percent: must be a number from 0 to 100",
        "t.json: routes[1].new: no backend named \"nw\"",
        "t.json: routes[1].shadow.percnt: unknown key",
        "t.json: timeouts.drain_ms: must be an integer from 1 to 86400000",
    };
    if (errs.n != ARRAY_SIZE(want))
        dump_errors("many errors", &errs);
    assert_int_equal(errs.n, ARRAY_SIZE(want));
    for (size_t i = 0; i < ARRAY_SIZE(want); i++)
        assert_true(has_line(&errs, want[i]));
    config_errors_dispose(&errs);
    assert_null(errs.lines);
    assert_int_equal(errs.n, 0);
}

static void test_error_lines_are_capped(void **state)
{
    (void)state;
    /* 300 bad methods: 200 lines are kept and one more line counts the rest. */
    size_t cap = 300 * 8 + 1024;
    char *text = malloc(cap);
    assert_non_null(text);
    size_t n = (size_t)snprintf(text, cap, "%s",
                                "{" LISTEN "," BACKENDS ",'routes':[{'name':'r',"
                                "'match':{'methods':[");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(text + n, cap - n, "%s'get'", i ? "," : "");
    snprintf(text + n, cap - n, "]}}]}");
    struct config_errors errs = {0};
    assert_null(parse_q(text, &errs));
    assert_int_equal(errs.n, 201);
    assert_string_equal(errs.lines[200], "t.json: 100 more errors not shown");
    config_errors_dispose(&errs);
    free(text);
}

static void test_syntax_errors(void **state)
{
    (void)state;
    struct config_errors errs = {0};
    assert_null(parse_q("{\n  'listen': '127.0.0.1:80',\n  oops\n}", &errs));
    assert_int_equal(errs.n, 1);
    const char *prefix = "t.json: line 3, column ";
    if (strncmp(errs.lines[0], prefix, strlen(prefix)) != 0)
        dump_errors("syntax", &errs);
    assert_int_equal(strncmp(errs.lines[0], prefix, strlen(prefix)), 0);
    config_errors_dispose(&errs);

    /* A key given twice would otherwise silently take the last value. */
    assert_null(parse_q("{'listen':'127.0.0.1:80',\n'listen':'127.0.0.1:81'}", &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.lines[0], "t.json: line 2, column "));
    assert_non_null(strstr(errs.lines[0], "duplicate object key"));
    config_errors_dispose(&errs);

    assert_null(parse_q("", &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.lines[0], "t.json: line "));
    config_errors_dispose(&errs);
    /* jansson quotes the text near the error, raw newline included: it is
     * escaped, so the error stays one line (found by fuzz_config). */
    assert_null(parse_q("'\\\n", &errs));
    assert_int_equal(errs.n, 1);
    assert_null(strchr(errs.lines[0], '\n'));
    assert_non_null(strstr(errs.lines[0], "near '\"\\\\x0a'"));
    config_errors_dispose(&errs);
}

static void test_unknown_keys_at_every_level(void **state)
{
    (void)state;
    struct config_errors errs = {0};
    struct config *cfg = parse_q(
        "{'listen':[{'address':'127.0.0.1:80','tsl':{}}],'rotues':[],"
        " 'backends':{'legacy':{'url':'https://a','tls':{'verfy':true}},'new':{'url':'http://b'}},"
        " 'routes':[{'name':'r','nme':'x','shadow':{'percnt':5},"
        "            'diff':{'noise':{'threshhold':0.1}}}]}",
        &errs);
    assert_null(cfg);
    static const char *const want[] = {
        "t.json: rotues: unknown key",
        "t.json: listen[0].tsl: unknown key",
        "t.json: backends.legacy.tls.verfy: unknown key",
        "t.json: routes[0].nme: unknown key",
        "t.json: routes[0].shadow.percnt: unknown key",
        "t.json: routes[0].diff.noise.threshhold: unknown key",
    };
    if (errs.n != ARRAY_SIZE(want))
        dump_errors("unknown keys", &errs);
    assert_int_equal(errs.n, ARRAY_SIZE(want));
    for (size_t i = 0; i < ARRAY_SIZE(want); i++)
        assert_true(has_line(&errs, want[i]));
    config_errors_dispose(&errs);
}

static void test_refcount(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(TOP(""));
    assert_ptr_equal(config_ref(cfg), cfg);
    assert_ptr_equal(config_ref(cfg), cfg);
    assert_int_equal(cfg->refcount, 3);
    config_unref(cfg);
    config_unref(cfg);
    assert_int_equal(cfg->refcount, 1);
    assert_string_equal(cfg->routes[0].name, "r"); /* still alive */
    config_unref(cfg);                             /* freed: ASan reports a leak otherwise */
    config_unref(NULL);
}

static void test_redact_defaults_always_present(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(
        TOP(",'divergence_log':{'path':'d','redact_headers':['X-Api-Key','Authorization']}"));
    static const char *const always[] = {"authorization", "cookie", "set-cookie",
                                         "proxy-authorization"};
    assert_int_equal(cfg->n_redact_headers, 5);
    for (size_t i = 0; i < ARRAY_SIZE(always); i++)
        assert_true(config_is_redacted(cfg, always[i], strlen(always[i])));
    assert_true(config_is_redacted(cfg, "x-api-key", 9));
    assert_true(config_is_redacted(cfg, "X-API-KEY", 9));
    assert_true(config_is_redacted(cfg, "Set-Cookie: x", 10)); /* name need not end in NUL */
    assert_false(config_is_redacted(cfg, "x-api", 5));
    assert_false(config_is_redacted(cfg, "content-type", 12));
    config_unref(cfg);

    /* Redaction holds with no divergence_log at all, and even without a snapshot. */
    cfg = parse_ok(TOP(""));
    assert_true(config_is_redacted(cfg, "Cookie", 6));
    assert_false(config_is_redacted(cfg, "x-api-key", 9));
    config_unref(cfg);
    assert_true(config_is_redacted(NULL, "AUTHORIZATION", 13));
    assert_false(config_is_redacted(NULL, "date", 4));

    /* An empty list does not remove the defaults. */
    cfg = parse_ok(TOP(",'divergence_log':{'path':'d','redact_headers':[]}"));
    assert_int_equal(cfg->n_redact_headers, 4);
    assert_true(config_is_redacted(cfg, "proxy-authorization", 19));
    config_unref(cfg);
}

static void test_backend_references(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(
        "{" LISTEN ",'backends':{'a':{'url':'http://a'},'old':{'url':'http://o'},"
        "'v2':{'url':'http://n'}},"
        "'routes':[{'name':'x','legacy':'old','new':'v2'},{'name':'y','legacy':'v2','new':'a'}]}");
    assert_int_equal(config_backend_index(cfg, "a"), 0);
    assert_int_equal(config_backend_index(cfg, "old"), 1);
    assert_int_equal(config_backend_index(cfg, "v2"), 2);
    assert_int_equal(config_backend_index(cfg, "legacy"), -1);
    assert_int_equal(config_backend_index(cfg, NULL), -1);
    assert_int_equal(cfg->routes[0].legacy, 1);
    assert_int_equal(cfg->routes[0].new_, 2);
    assert_int_equal(cfg->routes[1].legacy, 2);
    assert_int_equal(cfg->routes[1].new_, 0);
    assert_int_equal(config_route_index(cfg, "x"), 0);
    assert_int_equal(config_route_index(cfg, "y"), 1);
    assert_int_equal(config_route_index(cfg, "z"), -1);
    config_unref(cfg);

    /* Both names wrong: both reported; a missing "backends" adds no noise. */
    struct config_errors errs = {0};
    assert_null(parse_q(ROUTE(",'legacy':'lgacy','new':'nw'"), &errs));
    assert_int_equal(errs.n, 2);
    assert_true(has_line(&errs, "t.json: routes[0].legacy: no backend named \"lgacy\""));
    assert_true(has_line(&errs, "t.json: routes[0].new: no backend named \"nw\""));
    config_errors_dispose(&errs);
    assert_null(parse_q("{" LISTEN ",'routes':[{'name':'r'}]}", &errs));
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.lines[0], "t.json: backends: is required");
    config_errors_dispose(&errs);
}

static void test_workers_and_access_log(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(TOP(",'workers':0,'access_log':{'path':'/var/log/a.log'}"));
    assert_true(cfg->workers >= 1 && cfg->workers <= 256);
    assert_string_equal(cfg->access_log_path, "/var/log/a.log");
    config_unref(cfg);
    cfg = parse_ok(TOP(",'access_log':{}"));
    assert_string_equal(cfg->access_log_path, "-");
    config_unref(cfg);
}

static void test_byte_order_mark(void **state)
{
    (void)state;
    /* Editors on some systems start UTF-8 files with a byte order mark. */
    struct config *cfg = parse_ok("\xEF\xBB\xBF" TOP(""));
    assert_int_equal(cfg->n_routes, 1);
    config_unref(cfg);
}

/* ---- files ---- */

static void source_path(char *out, size_t size, const char *rel)
{
    /* __FILE__ is absolute under CMake: tests/unit/test_config.c. */
    char here[PATH_MAX];
    snprintf(here, sizeof(here), "%s", __FILE__);
    snprintf(out, size, "%s/../../%s", dirname(here), rel);
}

/* state_store (issue 13): the file default, and etcd endpoints read as backends. */
static void test_state_store(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(TOP(""));
    assert_int_equal(cfg->state_store.type, STATE_STORE_FILE);
    assert_int_equal(cfg->state_store.n_endpoints, 0);
    assert_null(cfg->state_store.prefix);
    config_unref(cfg);
    cfg = parse_ok(TOP(",'state_file':'s.json','state_store':{'type':'file'}"));
    assert_int_equal(cfg->state_store.type, STATE_STORE_FILE);
    assert_string_equal(cfg->state_file, "s.json");
    config_unref(cfg);

    /* etcd with every default. */
    cfg = parse_ok(ETCD(",'prefix':'/ficus/prod/'"));
    const struct state_store_cfg *st = &cfg->state_store;
    assert_int_equal(st->type, STATE_STORE_ETCD);
    assert_string_equal(st->prefix, "/ficus/prod/");
    assert_int_equal(st->timeout_ms, 5000);
    assert_int_equal(st->lease_ttl_s, 10);
    assert_false(st->tls);
    assert_true(st->verify);
    assert_null(st->ca_file);
    assert_null(st->cert_file);
    assert_null(st->key_file);
    assert_null(st->server_name);
    assert_null(st->tls_ctx);
    assert_int_equal(st->n_endpoints, 1);
    const struct backend_cfg *e = &st->endpoints[0];
    assert_string_equal(e->name, "etcd-0");
    assert_string_equal(e->url, "http://127.0.0.1:2379");
    assert_string_equal(e->host, "127.0.0.1");
    assert_int_equal(e->port, 2379);
    assert_false(e->tls);
    assert_int_equal(e->max_connections, 4);
    assert_null(e->health_path);
    /* The backends are untouched. */
    assert_int_equal(cfg->n_backends, 2);
    config_unref(cfg);

    /* Three https members with every setting. */
    cfg = parse_ok(TOP(",'state_store':{'type':'etcd','endpoints':['https://etcd-1.internal:2379',"
                       "'https://[fd00::2]:2379','https://10.0.0.3:12379/'],'prefix':'/f.x_y-z/a/',"
                       "'tls':{'verify':false,'ca_file':'ca.pem','cert_file':'c.pem',"
                       "'key_file':'k.pem','server_name':'etcd.internal'},'timeout_ms':100,"
                       "'lease_ttl_s':3600}"));
    st = &cfg->state_store;
    assert_int_equal(st->n_endpoints, 3);
    assert_true(st->tls);
    assert_false(st->verify);
    assert_string_equal(st->ca_file, "ca.pem");
    assert_string_equal(st->cert_file, "c.pem");
    assert_string_equal(st->key_file, "k.pem");
    assert_string_equal(st->server_name, "etcd.internal");
    assert_int_equal(st->timeout_ms, 100);
    assert_int_equal(st->lease_ttl_s, 3600);
    static const char *const hosts[] = {"etcd-1.internal", "fd00::2", "10.0.0.3"};
    static const int ports[] = {2379, 2379, 12379};
    for (size_t i = 0; i < 3; i++) {
        e = &st->endpoints[i];
        char name[16];
        snprintf(name, sizeof(name), "etcd-%zu", i);
        assert_string_equal(e->name, name);
        assert_string_equal(e->host, hosts[i]);
        assert_int_equal(e->port, ports[i]);
        assert_true(e->tls);
        assert_false(e->verify);
        assert_string_equal(e->ca_file, "ca.pem");
        assert_string_equal(e->server_name, "etcd.internal");
    }
    config_unref(cfg);

    /* The smallest lease with the largest timeout it allows. */
    cfg = parse_ok(ETCD(",'prefix':'/p/','lease_ttl_s':2,'timeout_ms':1000"));
    assert_int_equal(cfg->state_store.lease_ttl_s, 2);
    config_unref(cfg);

    /* Several problems of one store are all reported. */
    struct config_errors errs = {0};
    assert_null(parse_q(TOP(",'state_store':{'type':'etcd','endpoints':['ftp://x','http://y'],"
                            "'prefix':'x','lease_ttl_s':0,'bogus':1}"),
                        &errs));
    static const char *const want[] = {
        "t.json: state_store.bogus: unknown key",
        "t.json: state_store.endpoints[0]: must start with http:// or https://",
        "t.json: state_store.endpoints[1]: must name the port, as in \"http://127.0.0.1:2379\"",
        ("t.json: state_store.prefix: " PREFIX_REASON),
        "t.json: state_store.lease_ttl_s: must be an integer from 2 to 3600",
    };
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        if (!has_line(&errs, want[i])) {
            dump_errors(want[i], &errs);
            fail();
        }
    }
    assert_int_equal(errs.n, ARRAY_SIZE(want));
    config_errors_dispose(&errs);
}

/* ---- backend fleets (issue 19) ---- */

static void test_backend_fleets(void **state)
{
    (void)state;
    /* A url backend is a one-server backend with every fleet default. */
    struct config *cfg = parse_ok(TOP(""));
    const struct backend_cfg *b = &cfg->backends[0];
    assert_int_equal(b->n_servers, 1);
    assert_false(b->servers_listed);
    assert_string_equal(b->servers[0].url, "http://127.0.0.1:9001");
    assert_string_equal(b->servers[0].host, "127.0.0.1");
    assert_int_equal(b->servers[0].port, 9001);
    assert_int_equal(b->servers[0].weight, 1);
    assert_true(b->servers[0].ip_literal);
    assert_int_equal(b->servers[0].n_addrs, 0); /* filled by the server, not the parser */
    assert_int_equal(b->lb.policy, LB_ROUND_ROBIN);
    assert_int_equal(b->lb.eject_failures, 5);
    assert_int_equal(b->lb.eject_base_ms, 10000);
    assert_int_equal(b->lb.eject_max_ms, 300000);
    assert_int_equal(b->min_resolve_ms, 1000);
    assert_int_equal(b->max_resolve_ms, 60000);
    assert_int_equal(cfg->n_resolvers, 0);
    assert_null(cfg->resolvers);
    config_unref(cfg);

    cfg = parse_ok(
        "{" LISTEN ","
        " 'resolvers':['127.0.0.1:5353','[::1]:53'],"
        " 'backends':{'legacy':{'servers':['http://10.0.0.1:8080',"
        "                                  {'url':'http://Legacy.Internal','weight':3},"
        "                                  {'url':'http://[2001:db8::7]:81/'}],"
        "                       'lb':'least_requests',"
        "                       'ejection':{'consecutive_failures':2,'base_ms':50,'max_ms':400},"
        "                       'min_resolve_interval_ms':100,'max_resolve_interval_ms':5000},"
        "             'new':{'servers':[{'url':'https://n1.internal:8443','weight':1000},"
        "                               'https://n2.internal'],"
        "                    'tls':{'server_name':'new.internal'},"
        "                    'ejection':{'base_ms':600000},"
        "                    'min_resolve_interval_ms':120000}},"
        " 'routes':[{'name':'r'}]}");
    b = &cfg->backends[0];
    assert_true(b->servers_listed);
    assert_int_equal(b->n_servers, 3);
    assert_false(b->tls);
    assert_string_equal(b->url, "http://10.0.0.1:8080"); /* servers[0]'s */
    assert_string_equal(b->host, "10.0.0.1");
    assert_int_equal(b->port, 8080);
    assert_true(b->servers[0].ip_literal);
    assert_int_equal(b->servers[0].weight, 1);
    assert_string_equal(b->servers[1].host, "Legacy.Internal");
    assert_int_equal(b->servers[1].port, 80);
    assert_int_equal(b->servers[1].weight, 3);
    assert_false(b->servers[1].ip_literal);
    assert_string_equal(b->servers[2].host, "2001:db8::7");
    assert_int_equal(b->servers[2].port, 81);
    assert_true(b->servers[2].ip_literal);
    assert_int_equal(b->lb.policy, LB_LEAST_REQUESTS);
    assert_int_equal(b->lb.eject_failures, 2);
    assert_int_equal(b->lb.eject_base_ms, 50);
    assert_int_equal(b->lb.eject_max_ms, 400);
    assert_int_equal(b->min_resolve_ms, 100);
    assert_int_equal(b->max_resolve_ms, 5000);

    b = &cfg->backends[1];
    assert_true(b->tls);
    assert_int_equal(b->n_servers, 2);
    assert_string_equal(b->server_name, "new.internal");
    assert_int_equal(b->servers[0].weight, 1000);
    assert_int_equal(b->servers[1].port, 443);
    assert_string_equal(b->host, "n1.internal");
    /* A maximum left out follows a longer minimum. */
    assert_int_equal(b->lb.eject_base_ms, 600000);
    assert_int_equal(b->lb.eject_max_ms, 600000);
    assert_int_equal(b->min_resolve_ms, 120000);
    assert_int_equal(b->max_resolve_ms, 120000);

    assert_int_equal(cfg->n_resolvers, 2);
    assert_string_equal(cfg->resolvers[0].text, "127.0.0.1:5353");
    assert_int_equal(cfg->resolvers[0].ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&cfg->resolvers[0].ss)->sin_port), 5353);
    assert_int_equal(cfg->resolvers[1].ss.ss_family, AF_INET6);
    config_unref(cfg);

    /* At most BACKEND_SERVERS_MAX servers; every bad one reported at once. */
    char text[8192], list[6144];
    size_t off = 0;
    for (int i = 0; i < BACKEND_SERVERS_MAX; i++)
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%s'http://10.0.0.%d'",
                                i ? "," : "", i + 1);
    snprintf(text, sizeof(text), SERVERS_AND("[%s]", ""), list);
    cfg = parse_ok(text);
    assert_int_equal(cfg->backends[0].n_servers, BACKEND_SERVERS_MAX);
    config_unref(cfg);
    snprintf(list + off, sizeof(list) - off, ",'http://10.0.1.1'");
    snprintf(text, sizeof(text), SERVERS_AND("[%s]", ""), list);
    struct config_errors errs = {0};
    assert_null(parse_q(text, &errs));
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.lines[0], "t.json: backends.legacy.servers: must be a non-empty "
                                       "array of at most 64 servers");
    config_errors_dispose(&errs);

    /* The scheme is the first valid server's (servers[1] has a bad weight). */
    assert_null(parse_q(SERVERS("['ftp://x',{'url':'https://b','weight':0},'https://c',"
                                "'http://d','https://C:443']"),
                        &errs));
    const char *want[] = {
        "t.json: backends.legacy.servers[0]: must start with http:// or https://",
        "t.json: backends.legacy.servers[1].weight: must be an integer from 1 to 1000",
        "t.json: backends.legacy.servers[3]: must use the scheme of servers[2] (https://): the "
        "tls settings of a backend apply to all its servers",
        "t.json: backends.legacy.servers[4]: the same host and port as servers[2]: give that one "
        "a weight instead",
    };
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        if (!has_line(&errs, want[i]))
            dump_errors(want[i], &errs);
        assert_true(has_line(&errs, want[i]));
    }
    assert_int_equal(errs.n, ARRAY_SIZE(want));
    config_errors_dispose(&errs);
}

static void test_load_files(void **state)
{
    (void)state;
    static const char *const files[] = {"config/ficus.example.json", "config/minimal.json"};
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        char path[PATH_MAX + 64];
        struct config_errors errs = {0};
        source_path(path, sizeof(path), files[i]);
        struct config *cfg = config_load(path, &errs);
        if (cfg == NULL)
            dump_errors(path, &errs);
        assert_non_null(cfg);
        assert_string_equal(cfg->path, path);
        assert_true(cfg->n_routes >= 1);
        config_unref(cfg);
        config_errors_dispose(&errs);
    }

    struct config_errors errs = {0};
    assert_null(config_load("/nonexistent/ficus.json", &errs));
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.lines[0],
                        "/nonexistent/ficus.json: cannot open: No such file or directory");
    config_errors_dispose(&errs);

    assert_null(config_load("/", &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.lines[0], "/: cannot read: "));
    config_errors_dispose(&errs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_option),
        cmocka_unit_test(test_endpoint_and_redaction_options),
        cmocka_unit_test(test_correlate_options),
        cmocka_unit_test(test_listen_shorthand),
        cmocka_unit_test(test_listen_ipv6),
        cmocka_unit_test(test_many_errors_at_once),
        cmocka_unit_test(test_error_lines_are_capped),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_unknown_keys_at_every_level),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_redact_defaults_always_present),
        cmocka_unit_test(test_backend_references),
        cmocka_unit_test(test_workers_and_access_log),
        cmocka_unit_test(test_byte_order_mark),
        cmocka_unit_test(test_state_store),
        cmocka_unit_test(test_backend_fleets),
        cmocka_unit_test(test_load_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
