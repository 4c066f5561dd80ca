/* Unit tests of what a fleet shares in etcd: the keys under the prefix, the
 * instance id, UTC times, and the three value formats (route live state, ramp
 * driver, instance counts) written and read back, with every kind of foreign,
 * future or malformed value refused with its reason, and the fleet guard sum. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ficus/common.h"
#include "ficus/fleet.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct span S(const char *s) {
    return (struct span){s, strlen(s)};
}

/* JSON in C literals with single quotes for double quotes, as in test_config.c. */
static char *
unq(const char *squoted)
{
    size_t n = strlen(squoted);
    char *t = malloc(n + 1);
    assert_non_null(t);
    for (size_t i = 0; i <= n; i++)
        t[i] = squoted[i] == '\'' ? '"' : squoted[i];
    return t;
}

/* ---- keys and ids ---- */

static void test_keys(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(fleet_key_route(&b, "/ficus/prod/", "orders"), 0);
    assert_string_equal(b.data, "/ficus/prod/routes/orders");
    buf_reset(&b);
    assert_int_equal(fleet_key_ramp_driver(&b, "/ficus/prod/"), 0);
    assert_string_equal(b.data, "/ficus/prod/ramp/driver");
    buf_reset(&b);
    assert_int_equal(fleet_key_instance(&b, "/ficus/prod/", "web-1-42-00ff"), 0);
    assert_string_equal(b.data, "/ficus/prod/instances/web-1-42-00ff");
    buf_dispose(&b);

    struct span p = S("/ficus/prod/"), name;
    assert_int_equal(fleet_key_parse(p, S("/ficus/prod/routes/orders"), &name), FLEET_KEY_ROUTE);
    assert_true(span_eq(name, "orders"));
    assert_int_equal(fleet_key_parse(p, S("/ficus/prod/ramp/driver"), &name),
                     FLEET_KEY_RAMP_DRIVER);
    assert_int_equal(fleet_key_parse(p, S("/ficus/prod/instances/a.b_c-1"), &name),
                     FLEET_KEY_INSTANCE);
    assert_true(span_eq(name, "a.b_c-1"));

    char long_name[200];
    memset(long_name, 'r', sizeof(long_name));
    snprintf(long_name, sizeof(long_name), "/ficus/prod/routes/%0128d", 0); /* 128 > 127 */
    static const char *const foreign[] = {
        "/ficus/other/routes/orders",           /* another prefix */
        "/ficus/prod",                          /* the prefix without its slash */
        "/ficus/prod/",                         /* the prefix alone */
        "/ficus/prod/routes/",                  /* no name */
        "/ficus/prod/routes/a b",               /* a space */
        "/ficus/prod/routes/a/b",               /* a slash */
        "/ficus/prod/routes/\xc3\xa9t\xc3\xa9", /* not ASCII */
        "/ficus/prod/ramp/driver2",
        "/ficus/prod/ramp/",
        "/ficus/prod/instances/",
        "/ficus/prod/instances/x:y",
        "/ficus/prod/config",
        "/ficus/prod/Routes/orders",
    };
    for (size_t i = 0; i < ARRAY_SIZE(foreign); i++) {
        if (fleet_key_parse(p, S(foreign[i]), &name) != FLEET_KEY_FOREIGN)
            fail_msg("\"%s\" is not foreign", foreign[i]);
        assert_int_equal(name.len, 0);
    }
    assert_int_equal(fleet_key_parse(p, S(long_name), &name), FLEET_KEY_FOREIGN);
    long_name[strlen(long_name) - 1] = '\0'; /* 127: fits */
    assert_int_equal(fleet_key_parse(p, S(long_name), &name), FLEET_KEY_ROUTE);
    /* A key with a NUL byte inside. */
    assert_int_equal(fleet_key_parse(p, (struct span){"/ficus/prod/routes/a\0b", 21}, &name),
                     FLEET_KEY_FOREIGN);
}

static void test_instance_id(void **state)
{
    (void)state;
    char id[FLEET_ID_MAX + 1];
    fleet_instance_id(id, "web-1.example.com", 4242, 0x19f3a);
    assert_string_equal(id, "web-1.example.com-4242-9f3a");
    fleet_instance_id(id, "my host/x", 7, 1);
    assert_string_equal(id, "my-host-x-7-0001");
    fleet_instance_id(id, "", 7, 0xffff);
    assert_string_equal(id, "ficus-7-ffff");
    fleet_instance_id(id, NULL, -7, 0);
    assert_string_equal(id, "ficus-7-0000");
    char host[300];
    memset(host, 'h', sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    fleet_instance_id(id, host, 4194304, 0xabcd);
    assert_int_equal(strlen(id), FLEET_ID_MAX);
    assert_non_null(strstr(id, "-4194304-abcd"));
    assert_true(fleet_name_valid(S(id), FLEET_ID_MAX));
    fleet_instance_id(id, "h", 9223372036854775807L, 2);
    assert_string_equal(id, "h-9223372036854775807-0002");
}

/* ---- times ---- */

static void test_times(void **state)
{
    (void)state;
    static const struct {
        int64_t ms;
        const char *text;
    } known[] = {
        {0, "1970-01-01T00:00:00.000Z"},
        {1795341600123LL, "2026-11-22T10:00:00.123Z"},
        {951782400000LL, "2000-02-29T00:00:00.000Z"},
        {1709209815250LL, "2024-02-29T12:30:15.250Z"},
        {253402300799999LL, "9999-12-31T23:59:59.999Z"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(known); i++) {
        char t[FLEET_TIME_LEN + 1];
        fleet_time_format(known[i].ms, t);
        assert_string_equal(t, known[i].text);
        int64_t back;
        assert_true(fleet_time_parse(t, strlen(t), &back));
        assert_true(back == known[i].ms);
    }
    /* Every day from 1970 to 2400 and back. */
    for (int64_t ms = 0; ms < 13569465600000LL; ms += 86400000LL + 3723456) {
        char t[FLEET_TIME_LEN + 1];
        int64_t back;
        fleet_time_format(ms, t);
        assert_true(fleet_time_parse(t, strlen(t), &back));
        assert_true(back == ms);
    }
    /* Out of range: clamped. */
    char t[FLEET_TIME_LEN + 1];
    fleet_time_format(-5, t);
    assert_string_equal(t, "1970-01-01T00:00:00.000Z");
    fleet_time_format(INT64_MAX, t);
    assert_string_equal(t, "9999-12-31T23:59:59.999Z");

    static const struct {
        const char *text;
        int64_t ms;
    } other[] = {
        {"2026-11-22T10:00:00Z", 1795341600000LL},
        {"2026-11-22T10:00:00.1Z", 1795341600100LL},
        {"2026-11-22T10:00:00.123456789Z", 1795341600123LL},
    };
    for (size_t i = 0; i < ARRAY_SIZE(other); i++) {
        int64_t ms;
        assert_true(fleet_time_parse(other[i].text, strlen(other[i].text), &ms));
        assert_true(ms == other[i].ms);
    }
    static const char *const bad[] = {
        "",
        "2026-11-22",
        "2026-11-22T10:00:00",
        "2026-11-22T10:00:00.000",
        "2026-11-22t10:00:00.000Z",
        "2026-11-22T10:00:00.000z",
        "2026-11-22T10:00:00.000+00:00",
        "2026-11-22 10:00:00.000Z",
        "2026-02-29T10:00:00.000Z",
        "2100-02-29T10:00:00.000Z",
        "2026-04-31T10:00:00.000Z",
        "2026-13-01T10:00:00.000Z",
        "2026-00-01T10:00:00.000Z",
        "2026-11-00T10:00:00.000Z",
        "2026-11-22T24:00:00.000Z",
        "2026-11-22T10:60:00.000Z",
        "2026-11-22T10:00:60.000Z",
        "2026-11-22T10:00:00.Z",
        "2026-11-22T10:00:00.1234567890Z",
        "2026-11-22T10:00:00,000Z",
        "1969-12-31T23:59:59.999Z",
        "+026-11-22T10:00:00.000Z",
        "2026-1a-22T10:00:00.000Z",
        " 2026-11-22T10:00:00.000Z",
        "2026-11-22T10:00:00.000Z ",
        "2026-11-22T10:00:00.00aZ",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        int64_t ms = 42;
        if (fleet_time_parse(bad[i], strlen(bad[i]), &ms))
            fail_msg("accepted \"%s\"", bad[i]);
        assert_true(ms == 42);
    }
}

/* ---- route live state ---- */

static void test_route_roundtrip(void **state)
{
    (void)state;
    const struct fleet_ack acks[] = {
        {.id = "a1",
         .path = "/id",
         .kind = "json",
         .endpoint = "GET /posts/{id}",
         .note = "ids are strings now",
         .at = 1795341600000LL},
        {.path = "content-type", .kind = "header", .endpoint = "", .note = ""},
    };
    char derived[FLEET_ACK_ID_MAX + 1];
    fleet_ack_id("content-type", "header", "", derived);
    assert_int_equal(strlen(derived), 16);
    struct fleet_route r;
    fleet_route_init(&r);
    r.new_percent = 25;
    r.shadow_percent = 100;
    r.ramp_step = 2;
    r.ramp_next_at = 1795345200000LL;
    r.rollback = FLEET_ROLLBACK_GUARD;
    r.rollback_detail = "divergence rate 0.12 > 0.01 \"quoted\"";
    r.rollback_at = 1795341600000LL;
    r.acks = acks;
    r.n_acks = 2;
    r.updated_by = "web-1-4242-9f3a";
    r.updated_at = 1795341600123LL;

    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(fleet_route_encode(&b, &r), 0);
    char *want_fmt =
        unq("{'kind':'ficus.route','version':1,'new_percent':25,'shadow_percent':100,'ramp_step':2,"
            "'ramp_next_at':'2026-11-22T11:00:00.000Z','ramp_stopped':false,"
            "'rollback':{'reason':'guard','detail':'divergence rate 0.12 > 0.01 \\'quoted\\'',"
            "'at':'2026-11-22T10:00:00.000Z'},"
            "'acknowledgements':[{'id':'a1','path':'/id','kind':'json','endpoint':'GET "
            "/posts/{id}','note':'ids are strings now','at':'2026-11-22T10:00:00.000Z'},"
            "{'id':'%s','path':'content-type','kind':'header'}],"
            "'updated_by':'web-1-4242-9f3a','updated_at':'2026-11-22T10:00:00.123Z'}");
    char want[1024];
    snprintf(want, sizeof(want), want_fmt, derived);
    free(want_fmt);
    assert_string_equal(b.data, want);

    struct fleet_route back;
    char why[FLEET_WHY_MAX];
    fleet_route_init(&back);
    assert_int_equal(fleet_route_decode(b.data, b.len, &back, why), 0);
    assert_true(back.new_percent == 25);
    assert_true(back.shadow_percent == 100);
    assert_int_equal(back.ramp_step, 2);
    assert_true(back.ramp_next_at == r.ramp_next_at);
    assert_false(back.ramp_stopped);
    assert_int_equal(back.rollback, FLEET_ROLLBACK_GUARD);
    assert_string_equal(back.rollback_detail, r.rollback_detail);
    assert_true(back.rollback_at == r.rollback_at);
    assert_int_equal(back.n_acks, 2);
    assert_string_equal(back.acks[0].endpoint, "GET /posts/{id}");
    assert_string_equal(back.acks[1].path, "content-type");
    assert_string_equal(back.acks[1].note, "");
    assert_string_equal(back.acks[0].id, "a1");
    assert_true(back.acks[0].at == 1795341600000LL);
    assert_string_equal(back.acks[1].id, derived);
    assert_true(back.acks[1].at == 0);
    assert_string_equal(back.updated_by, "web-1-4242-9f3a");
    assert_true(back.updated_at == r.updated_at);

    /* The minimal value: what an operator writes by hand. */
    char *hand = unq("{'kind':'ficus.route','version':1,'new_percent':0.5}");
    assert_int_equal(fleet_route_decode(hand, strlen(hand), &back, why), 0);
    free(hand);
    assert_true(back.new_percent == 0.5);
    assert_true(back.shadow_percent == -1);
    assert_int_equal(back.ramp_step, -1);
    assert_true(back.ramp_next_at == 0);
    assert_int_equal(back.rollback, FLEET_ROLLBACK_NONE);
    assert_string_equal(back.rollback_detail, "");
    assert_int_equal(back.n_acks, 0);
    assert_string_equal(back.updated_by, "");

    /* Defaults written back: null, false, [], no shadow_percent. */
    buf_reset(&b);
    assert_int_equal(fleet_route_encode(&b, &back), 0);
    char *want2 = unq("{'kind':'ficus.route','version':1,'new_percent':0.5,'ramp_step':-1,"
                      "'ramp_next_at':null,'ramp_stopped':false,'rollback':null,"
                      "'acknowledgements':[]}");
    assert_string_equal(b.data, want2);
    free(want2);
    fleet_route_dispose(&back);
    buf_dispose(&b);
}

static void test_route_percent_precision(void **state)
{
    (void)state;
    /* Any percentage reads back exactly, in its shortest form. */
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    struct buf b;
    buf_init(&b, 0);
    struct fleet_route r, back;
    char why[FLEET_WHY_MAX];
    fleet_route_init(&back);
    for (int i = 0; i < 2000; i++) {
        fleet_route_init(&r);
        r.new_percent = (double)(xorshift64s(&seed) % 100000001) / 1000000.0;
        r.shadow_percent = i == 0 ? 100.0 / 3 : i == 1 ? 0.1 : r.new_percent / 7;
        buf_reset(&b);
        assert_int_equal(fleet_route_encode(&b, &r), 0);
        assert_int_equal(fleet_route_decode(b.data, b.len, &back, why), 0);
        assert_true(back.new_percent == r.new_percent);
        assert_true(back.shadow_percent == r.shadow_percent);
        if (i == 1)
            assert_non_null(strstr(b.data, "\"shadow_percent\":0.1,"));
    }
    fleet_route_dispose(&back);
    buf_dispose(&b);
}

static void test_route_refused(void **state)
{
    (void)state;
    static const struct {
        const char *value; /* single quotes for double quotes */
        const char *why;
    } cases[] = {
        {"", "not JSON (line 1"},
        {"hello", "not JSON"},
        {"{'kind':'ficus.route','version':1,'new_percent':1", "not JSON"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'new_percent':2}",
         "not JSON (line 1, column 63): duplicate object key"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'updated_by':'a\\u0000b'}", "not JSON"},
        {"[1]", "not a JSON object"},
        {"7", "not a JSON object"},
        {"{}", "no \"kind\": not a ficus value"},
        {"{'new_percent':5}", "no \"kind\": not a ficus value"},
        {"{'kind':5,'version':1}", "no \"kind\""},
        {"{'kind':'ficus.instance','version':1}",
         "a \"ficus.instance\" value where a \"ficus.route\" belongs"},
        {"{'kind':'traefik.router','version':1}", "a \"traefik.router\" value where"},
        {"{'kind':'ficus.route','new_percent':1}", "version: must be an integer"},
        {"{'kind':'ficus.route','version':'1','new_percent':1}", "version: must be an integer"},
        {"{'kind':'ficus.route','version':1.0,'new_percent':1}", "version: must be an integer"},
        {"{'kind':'ficus.route','version':2,'new_percent':1,'fresh':true}",
         "format version 2 is newer than this ficus reads (1)"},
        {"{'kind':'ficus.route','version':0,'new_percent':1}", "format version 0 was never"},
        {"{'kind':'ficus.route','version':1}", "new_percent: is required"},
        {"{'kind':'ficus.route','version':1,'new_percent':101}",
         "new_percent: must be a number from 0 to 100"},
        {"{'kind':'ficus.route','version':1,'new_percent':-0.5}", "new_percent: must be a number"},
        {"{'kind':'ficus.route','version':1,'new_percent':'5'}", "new_percent: must be a number"},
        {"{'kind':'ficus.route','version':1,'new_percent':null}", "new_percent: must be a number"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'newpercent':2}",
         "unknown key \"newpercent\""},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'shadow_percent':100.5}",
         "shadow_percent: must be a number from 0 to 100"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'ramp_step':-2}",
         "ramp_step: must be an integer from -1 to 100000"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'ramp_step':1.5}", "ramp_step"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'ramp_next_at':'tomorrow'}",
         "ramp_next_at: must be a UTC time such as \"2026-11-22T10:00:00.000Z\" or null"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'ramp_next_at':1795341600000}",
         "ramp_next_at: must be a UTC time"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'ramp_stopped':'no'}",
         "ramp_stopped: must be true or false"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'rollback':'guard'}",
         "rollback: must be an object or null"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'rollback':{'reason':'bored',"
         "'at':'2026-11-22T10:00:00Z'}}",
         "rollback.reason: must be \"guard\" or \"manual\""},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'rollback':{'reason':'guard'}}",
         "rollback.at: is required"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'rollback':{'reason':'guard',"
         "'at':'2026-11-22T10:00:00Z','by':'me'}}",
         "rollback: unknown key \"by\""},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'rollback':{'reason':'guard',"
         "'at':'2026-11-22T10:00:00Z','detail':'line\\nbreak'}}",
         "rollback.detail: must not hold control characters"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'rollback':{'reason':'guard',"
         "'at':'2026-11-22T10:00:00Z','detail':7}}",
         "rollback.detail: must be a string"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':{}}",
         "acknowledgements: must be an array"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':[1]}",
         "acknowledgements[0]: must be an object"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':[{'kind':'json'}]}",
         "acknowledgements[0].path: is required"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':[{'path':'',"
         "'kind':'json'}]}",
         "acknowledgements[0].path: must be a non-empty string"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':[{'path':'/a',"
         "'kind':'json'},{'path':'/a','kind':'weird'}]}",
         "acknowledgements[1].kind: must be one of status, header, json"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':[{'path':'/a',"
         "'kind':'json','who':'me'}]}",
         "acknowledgements[0]: unknown key \"who\""},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'updated_by':'a b'}",
         "updated_by: must be an instance id"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'updated_by':7}",
         "updated_by: must be an instance id"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'updated_at':null}",
         "updated_at: must be a UTC time such as \"2026-11-22T10:00:00.000Z\""},
    };
    struct fleet_route r;
    char why[FLEET_WHY_MAX];
    fleet_route_init(&r);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *v = unq(cases[i].value);
        int rc = fleet_route_decode(v, strlen(v), &r, why);
        if (rc != FICUS_EBADRESP)
            fail_msg("case %zu (%s): rc %d", i, v, rc);
        if (strstr(why, cases[i].why) == NULL)
            fail_msg("case %zu (%s): why \"%s\" lacks \"%s\"", i, v, why, cases[i].why);
        /* Nothing of the refused value is kept. */
        assert_true(r.new_percent == 0);
        assert_int_equal(r.n_acks, 0);
        assert_int_equal(r.rollback, FLEET_ROLLBACK_NONE);
        free(v);
    }
    fleet_route_dispose(&r);
}

static void test_route_limits(void **state)
{
    (void)state;
    struct fleet_route r;
    char why[FLEET_WHY_MAX];
    struct buf b;
    buf_init(&b, 0);
    fleet_route_init(&r);

    /* FLEET_ACKS_MAX acknowledgements fit; one more does not. */
    for (int n = FLEET_ACKS_MAX; n <= FLEET_ACKS_MAX + 1; n++) {
        buf_reset(&b);
        buf_puts(&b, "{\"kind\":\"ficus.route\",\"version\":1,\"new_percent\":1,"
                     "\"acknowledgements\":[");
        for (int i = 0; i < n; i++)
            buf_printf(&b, "%s{\"path\":\"/p%d\",\"kind\":\"json\"}", i ? "," : "", i);
        buf_puts(&b, "]}");
        int rc = fleet_route_decode(b.data, b.len, &r, why);
        if (n == FLEET_ACKS_MAX) {
            assert_int_equal(rc, 0);
            assert_int_equal(r.n_acks, FLEET_ACKS_MAX);
            assert_string_equal(r.acks[FLEET_ACKS_MAX - 1].path, "/p255");
        } else {
            assert_int_equal(rc, FICUS_EBADRESP);
            assert_string_equal(why, "acknowledgements: more than 256");
        }
    }
    /* Text lengths: the detail's and a note's. */
    char detail[FLEET_DETAIL_MAX + 2];
    memset(detail, 'd', sizeof(detail) - 1);
    detail[sizeof(detail) - 1] = '\0';
    for (int extra = 0; extra <= 1; extra++) {
        buf_reset(&b);
        buf_printf(&b,
                   "{\"kind\":\"ficus.route\",\"version\":1,\"new_percent\":0,\"rollback\":"
                   "{\"reason\":\"manual\",\"at\":\"2026-11-22T10:00:00Z\",\"detail\":\"%.*s\"}}",
                   FLEET_DETAIL_MAX + extra, detail);
        int rc = fleet_route_decode(b.data, b.len, &r, why);
        assert_int_equal(rc, extra ? FICUS_EBADRESP : 0);
        if (extra)
            assert_string_equal(why, "rollback.detail: longer than 160 bytes");
        else
            assert_int_equal(r.rollback, FLEET_ROLLBACK_MANUAL);
    }
    /* A value bigger than FLEET_VALUE_MAX is refused before it is parsed. */
    char *big = malloc(FLEET_VALUE_MAX + 1);
    assert_non_null(big);
    memset(big, ' ', FLEET_VALUE_MAX + 1);
    memcpy(big, "{\"kind\":\"ficus.route\",\"version\":1,\"new_percent\":1}", 50);
    assert_int_equal(fleet_route_decode(big, FLEET_VALUE_MAX, &r, why), 0);
    assert_int_equal(fleet_route_decode(big, FLEET_VALUE_MAX + 1, &r, why), FICUS_EBADRESP);
    assert_string_equal(why, "bigger than 262144 bytes");
    free(big);
    /* An unknown key's name is shown printable and cut. */
    buf_reset(&b);
    buf_puts(&b, "{\"kind\":\"ficus.route\",\"version\":1,\"new_percent\":1,\"\\u001b[31m");
    for (int i = 0; i < 100; i++)
        buf_puts(&b, "x");
    buf_puts(&b, "\":1}");
    assert_int_equal(fleet_route_decode(b.data, b.len, &r, why), FICUS_EBADRESP);
    assert_string_equal(why, "unknown key \"?[31m" /* 44 bytes shown, then ... */
                             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\"");
    fleet_route_dispose(&r);
    buf_dispose(&b);
}

static void test_route_encode_refuses(void **state)
{
    (void)state;
    struct fleet_ack bad_ack = {.path = "/a", .kind = "weird", .endpoint = "", .note = ""};
    char long_detail[FLEET_DETAIL_MAX + 2];
    memset(long_detail, 'd', sizeof(long_detail) - 1);
    long_detail[sizeof(long_detail) - 1] = '\0';
    struct buf b;
    buf_init(&b, 0);
    for (int i = 0; i < 10; i++) {
        struct fleet_route r;
        fleet_route_init(&r);
        r.new_percent = 10;
        switch (i) {
        case 0:
            r.new_percent = 100.01;
            break;
        case 1:
            r.new_percent = NAN;
            break;
        case 2:
            r.shadow_percent = -0.5;
            break;
        case 3:
            r.ramp_step = -2;
            break;
        case 4:
            r.rollback = FLEET_ROLLBACK_GUARD; /* without a time */
            break;
        case 5:
            r.rollback = (enum fleet_rollback)7;
            break;
        case 6:
            r.acks = &bad_ack;
            r.n_acks = 1;
            break;
        case 7:
            r.updated_by = "has space";
            break;
        case 8:
            r.n_acks = 1; /* and no array */
            break;
        case 9:
            r.rollback = FLEET_ROLLBACK_MANUAL;
            r.rollback_at = 1;
            r.rollback_detail = long_detail;
            break;
        }
        if (fleet_route_encode(&b, &r) != -EINVAL)
            fail_msg("case %d encoded", i);
        assert_int_equal(b.len, 0);
        fleet_route_dispose(&r);
    }
    buf_dispose(&b);
    assert_string_equal(fleet_rollback_name(FLEET_ROLLBACK_MANUAL), "manual");
    assert_string_equal(fleet_rollback_name(FLEET_ROLLBACK_NONE), "");
}

/* ---- the ramp driver ---- */

static void test_driver(void **state)
{
    (void)state;
    struct fleet_driver d = {.since = 1795341600000LL};
    snprintf(d.id, sizeof(d.id), "web-2-77-0a0b");
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(fleet_driver_encode(&b, &d), 0);
    assert_string_equal(b.data, "{\"kind\":\"ficus.ramp_driver\",\"version\":1,"
                                "\"id\":\"web-2-77-0a0b\",\"since\":\"2026-11-22T10:00:00.000Z\"}");
    struct fleet_driver back;
    char why[FLEET_WHY_MAX];
    assert_int_equal(fleet_driver_decode(b.data, b.len, &back, why), 0);
    assert_string_equal(back.id, "web-2-77-0a0b");
    assert_true(back.since == d.since);

    static const struct {
        const char *value;
        const char *why;
    } bad[] = {
        {"i-1", "not JSON"},
        {"{'kind':'ficus.ramp_driver','version':1,'since':'2026-11-22T10:00:00Z'}",
         "id: is required"},
        {"{'kind':'ficus.ramp_driver','version':1,'id':'x'}", "since: is required"},
        {"{'kind':'ficus.ramp_driver','version':1,'id':'','since':'2026-11-22T10:00:00Z'}",
         "id: must be an instance id"},
        {"{'kind':'ficus.ramp_driver','version':3,'id':'x','since':'2026-11-22T10:00:00Z'}",
         "format version 3 is newer"},
        {"{'kind':'ficus.route','version':1,'new_percent':3}",
         "a \"ficus.route\" value where a \"ficus.ramp_driver\" belongs"},
        {"{'kind':'ficus.ramp_driver','version':1,'id':'x','since':'2026-11-22T10:00:00Z',"
         "'ttl':5}",
         "unknown key \"ttl\""},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *v = unq(bad[i].value);
        assert_int_equal(fleet_driver_decode(v, strlen(v), &back, why), FICUS_EBADRESP);
        if (strstr(why, bad[i].why) == NULL)
            fail_msg("case %zu: why \"%s\" lacks \"%s\"", i, why, bad[i].why);
        assert_string_equal(back.id, "");
        free(v);
    }
    buf_reset(&b);
    struct fleet_driver nobody = {.since = 5};
    assert_int_equal(fleet_driver_encode(&b, &nobody), -EINVAL);
    buf_dispose(&b);
}

/* ---- instances and the fleet guard ---- */

static void test_instance_roundtrip(void **state)
{
    (void)state;
    const struct fleet_route_counts rc[] = {
        {"orders", 60000, {20, 1, 100, 2}},
        {"users.v2", 1000, {0, 0, 0, 0}},
    };
    struct fleet_instance in;
    fleet_instance_init(&in);
    in.id = "web-1-4242-9f3a";
    in.ficus_version = "0.1.0";
    in.started_at = 1795338000000LL;
    in.at = 1795341600500LL;
    in.routes = rc;
    in.n_routes = 2;
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(fleet_instance_encode(&b, &in), 0);
    char *want = unq("{'kind':'ficus.instance','version':1,'id':'web-1-4242-9f3a','ficus':'0.1.0',"
                     "'started_at':'2026-11-22T09:00:00.000Z','at':'2026-11-22T10:00:00.500Z',"
                     "'routes':{'orders':{'window_ms':60000,'comparisons':20,'divergent':1,"
                     "'new_requests':100,'new_errors':2},'users.v2':{'window_ms':1000,"
                     "'comparisons':0,'divergent':0,'new_requests':0,'new_errors':0}}}");
    assert_string_equal(b.data, want);
    free(want);

    struct fleet_instance back;
    char why[FLEET_WHY_MAX];
    fleet_instance_init(&back);
    assert_int_equal(fleet_instance_decode(b.data, b.len, &back, why), 0);
    assert_string_equal(back.id, "web-1-4242-9f3a");
    assert_string_equal(back.ficus_version, "0.1.0");
    assert_true(back.at == in.at);
    assert_true(back.started_at == in.started_at);
    assert_int_equal(back.n_routes, 2);
    assert_string_equal(back.routes[0].route, "orders");
    assert_int_equal(back.routes[0].window_ms, 60000);
    assert_int_equal(back.routes[0].c.comparisons, 20);
    assert_int_equal(back.routes[0].c.divergent, 1);
    assert_int_equal(back.routes[0].c.new_requests, 100);
    assert_int_equal(back.routes[0].c.new_errors, 2);

    /* No routes at all. */
    in.n_routes = 0;
    in.ficus_version = "";
    in.started_at = 0;
    buf_reset(&b);
    assert_int_equal(fleet_instance_encode(&b, &in), 0);
    assert_string_equal(b.data, "{\"kind\":\"ficus.instance\",\"version\":1,\"id\":\"web-1-4242-"
                                "9f3a\",\"at\":\"2026-11-22T10:00:00.500Z\",\"routes\":{}}");
    assert_int_equal(fleet_instance_decode(b.data, b.len, &back, why), 0);
    assert_int_equal(back.n_routes, 0);

    /* Encoding refuses what decoding would. */
    const struct fleet_route_counts dup[] = {{"a", 1000, {0}}, {"a", 1000, {0}}};
    const struct fleet_route_counts odd[] = {{"a", 1000, {1, 2, 0, 0}}};
    const struct fleet_route_counts nowin[] = {{"a", 0, {0}}};
    const struct fleet_route_counts *lists[] = {dup, odd, nowin};
    size_t ns[] = {2, 1, 1};
    for (size_t i = 0; i < 3; i++) {
        in.routes = lists[i];
        in.n_routes = ns[i];
        buf_reset(&b);
        assert_int_equal(fleet_instance_encode(&b, &in), -EINVAL);
    }
    in.n_routes = 0;
    in.id = "";
    assert_int_equal(fleet_instance_encode(&b, &in), -EINVAL);
    fleet_instance_dispose(&back);
    buf_dispose(&b);
}

static void test_instance_refused(void **state)
{
    (void)state;
#define I "{'kind':'ficus.instance','version':1,'id':'i1','at':'2026-11-22T10:00:00Z',"
    static const struct {
        const char *value;
        const char *why;
    } cases[] = {
        {"{'kind':'ficus.instance','version':1,'at':'2026-11-22T10:00:00Z','routes':{}}",
         "id: is required"},
        {"{'kind':'ficus.instance','version':1,'id':'i1','routes':{}}", "at: is required"},
        {I "'routes':[]}", "routes: must be an object of route name to counts"},
        {"{'kind':'ficus.instance','version':1,'id':'i1','at':'2026-11-22T10:00:00Z'}",
         "routes: is required"},
        {I "'routes':{'a b':{}}}", "routes: \"a b\" is not a route name"},
        {I "'routes':{'a':7}}", "routes.a: must be an object"},
        {I "'routes':{'a':{'window_ms':1000,'comparisons':1,'divergent':0,'new_requests':0}}}",
         "routes.a.new_errors: is required"},
        {I "'routes':{'a':{'window_ms':0,'comparisons':1,'divergent':0,'new_requests':0,"
           "'new_errors':0}}}",
         "routes.a.window_ms: must be an integer from 1 to 86400000"},
        {I "'routes':{'a':{'window_ms':1000,'comparisons':-1,'divergent':0,'new_requests':0,"
           "'new_errors':0}}}",
         "routes.a.comparisons: must be an integer >= 0"},
        {I "'routes':{'a':{'window_ms':1000,'comparisons':1.5,'divergent':0,'new_requests':0,"
           "'new_errors':0}}}",
         "routes.a.comparisons: must be an integer >= 0"},
        {I "'routes':{'a':{'window_ms':1000,'comparisons':1,'divergent':2,'new_requests':0,"
           "'new_errors':0}}}",
         "routes.a: divergent is more than comparisons"},
        {I "'routes':{'a':{'window_ms':1000,'comparisons':1,'divergent':0,'new_requests':1,"
           "'new_errors':2}}}",
         "routes.a: new_errors is more than new_requests"},
        {I "'routes':{'a':{'window_ms':1000,'comparisons':1,'divergent':0,'new_requests':1,"
           "'new_errors':0,'p99':3}}}",
         "routes.a: unknown key \"p99\""},
        {I "'routes':{},'host':'x'}", "unknown key \"host\""},
        {I "'routes':{},'ficus':5}", "ficus: must be a string"},
    };
#undef I
    struct fleet_instance in;
    char why[FLEET_WHY_MAX];
    fleet_instance_init(&in);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *v = unq(cases[i].value);
        int rc = fleet_instance_decode(v, strlen(v), &in, why);
        if (rc != FICUS_EBADRESP)
            fail_msg("case %zu (%s): rc %d", i, v, rc);
        if (strstr(why, cases[i].why) == NULL)
            fail_msg("case %zu (%s): why \"%s\" lacks \"%s\"", i, v, why, cases[i].why);
        assert_int_equal(in.n_routes, 0);
        assert_string_equal(in.id, "");
        free(v);
    }
    fleet_instance_dispose(&in);
}

static void test_fleet_sum(void **state)
{
    (void)state;
    const int64_t now = 1795341600000LL, window = 60000, age = 3000;
    /* Ten instances with 20 comparisons each: 200, what min_comparisons 200 needs. */
    struct fleet_route_counts rc[10];
    struct fleet_instance in[10];
    const struct fleet_instance *ptr[12];
    for (int i = 0; i < 10; i++) {
        rc[i] =
            (struct fleet_route_counts){"orders", window, {20, (uint64_t)(i == 3 ? 5 : 0), 50, 1}};
        fleet_instance_init(&in[i]);
        in[i].id = "x";
        in[i].at = now - 500;
        in[i].routes = &rc[i];
        in[i].n_routes = 1;
        ptr[i] = &in[i];
    }
    ptr[10] = NULL;
    ptr[11] =
        &in[0]; /* the same instance twice would count twice: the caller's table has each once */
    struct fleet_counts sum;
    assert_int_equal(fleet_sum(ptr, 10, "orders", window, now, age, &sum), 10);
    assert_int_equal(sum.comparisons, 200);
    assert_int_equal(sum.divergent, 5);
    assert_int_equal(sum.new_requests, 500);
    assert_int_equal(sum.new_errors, 10);
    assert_int_equal(fleet_sum(ptr, 11, "orders", window, now, age, &sum), 10); /* NULL skipped */

    /* Stale, from the future beyond the tolerance, another window, another route. */
    in[0].at = now - age - 1;
    in[1].at = now + age + 1;
    in[2].at = now - age; /* just fresh */
    rc[4].window_ms = 30000;
    rc[5].route = "users";
    assert_int_equal(fleet_sum(ptr, 10, "orders", window, now, age, &sum), 6);
    assert_int_equal(sum.comparisons, 120);
    assert_int_equal(sum.divergent, 5);
    assert_int_equal(fleet_sum(ptr, 10, "users", window, now, age, &sum), 1);
    assert_int_equal(fleet_sum(ptr, 10, "none", window, now, age, &sum), 0);
    assert_int_equal(sum.comparisons, 0);

    /* Sums saturate instead of wrapping. */
    rc[6].c.comparisons = UINT64_MAX - 1;
    rc[7].c.comparisons = 10;
    assert_int_equal(fleet_sum(ptr, 10, "orders", window, now, age, &sum), 6);
    assert_true(sum.comparisons == UINT64_MAX);
}

static void test_reuse_and_failure_leave_nothing(void **state)
{
    (void)state;
    /* Decoding over a decoded value frees the old one (ASan checks), and a
     * refused value leaves the struct empty. */
    const char *good = "{\"kind\":\"ficus.route\",\"version\":1,\"new_percent\":3,"
                       "\"acknowledgements\":[{\"path\":\"/a\",\"kind\":\"json\"}]}";
    const char *bad = "{\"kind\":\"ficus.route\",\"version\":1,\"new_percent\":3,"
                      "\"acknowledgements\":[{\"path\":\"/a\",\"kind\":\"nope\"}]}";
    struct fleet_route r;
    char why[FLEET_WHY_MAX];
    fleet_route_init(&r);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(fleet_route_decode(good, strlen(good), &r, why), 0);
        assert_int_equal(r.n_acks, 1);
        assert_string_equal(why, "");
    }
    assert_int_equal(fleet_route_decode(bad, strlen(bad), &r, why), FICUS_EBADRESP);
    assert_int_equal(r.n_acks, 0);
    assert_null(r.acks);
    fleet_route_dispose(&r);
    fleet_route_dispose(NULL);
    fleet_instance_dispose(NULL);
}

/* ---- acknowledgements and changes ---- */

static void test_ack_ids(void **state)
{
    (void)state;
    char a[FLEET_ACK_ID_MAX + 1], b[FLEET_ACK_ID_MAX + 1], c[FLEET_ACK_ID_MAX + 1];
    fleet_ack_id("/id", "json", "GET /posts/{id}", a);
    fleet_ack_id("/id", "json", "GET /posts/{id}", b);
    assert_string_equal(a, b); /* the same difference names the same entry */
    assert_int_equal(strlen(a), 16);
    for (size_t i = 0; i < 16; i++)
        assert_non_null(strchr("0123456789abcdef", a[i]));
    fleet_ack_id("/id", "json", NULL, b);
    fleet_ack_id("/id", "json", "", c);
    assert_string_equal(b, c); /* no endpoint is "" */
    assert_string_not_equal(a, b);
    fleet_ack_id("ab", "", "", b);
    fleet_ack_id("a", "b", "", c);
    assert_string_not_equal(b, c); /* the parts are kept apart */
    assert_true(fleet_ack_kind_valid("json") && fleet_ack_kind_valid("error"));
    assert_false(fleet_ack_kind_valid("JSON") || fleet_ack_kind_valid("") ||
                 fleet_ack_kind_valid(NULL));

    /* Read back: an entry without an id gets the derived one; two entries with one
     * id are refused; a bad id or time too. */
    struct fleet_route r;
    char why[FLEET_WHY_MAX];
    fleet_route_init(&r);
    char *v = unq("{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':["
                  "{'path':'/id','kind':'json','endpoint':'GET /posts/{id}'},"
                  "{'id':'mine-1','path':'/x','kind':'added','at':'2026-11-22T10:00:00Z'}]}");
    assert_int_equal(fleet_route_decode(v, strlen(v), &r, why), 0);
    free(v);
    assert_string_equal(r.acks[0].id, a);
    assert_string_equal(r.acks[1].id, "mine-1");
    assert_true(r.acks[1].at == 1795341600000LL);
    static const struct {
        const char *value, *why;
    } bad[] = {
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':["
         "{'path':'/a','kind':'json'},{'path':'/a','kind':'json','note':'again'}]}",
         "appears twice"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':["
         "{'id':'a b','path':'/a','kind':'json'}]}",
         "acknowledgements[0].id: must be 1 to 32"},
        {"{'kind':'ficus.route','version':1,'new_percent':1,'acknowledgements':["
         "{'path':'/a','kind':'json','at':'yesterday'}]}",
         "acknowledgements[0].at: must be a UTC time"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char *t = unq(bad[i].value);
        assert_int_equal(fleet_route_decode(t, strlen(t), &r, why), FICUS_EBADRESP);
        free(t);
        if (strstr(why, bad[i].why) == NULL)
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, why, bad[i].why);
    }
    fleet_route_dispose(&r);
}

static void test_route_change(void **state)
{
    (void)state;
    const struct fleet_ack acks[] = {
        {.path = "/id", .kind = "json", .endpoint = "", .note = "strings now", .at = 5},
    };
    struct fleet_route cur, out;
    fleet_route_init(&cur);
    fleet_route_init(&out);
    cur.new_percent = 25;
    cur.shadow_percent = 50;
    cur.ramp_step = 1;
    cur.ramp_next_at = 1795345200000LL;
    cur.acks = acks;
    cur.n_acks = 1;
    const int64_t now = 1795341600123LL;

    /* Percentages: -1 leaves one as it is; who and when are recorded. */
    struct fleet_change ch;
    fleet_change_init(&ch, FLEET_CHANGE_PERCENT);
    ch.new_percent = 30;
    assert_int_equal(fleet_route_change(&cur, &ch, now, "web-1-1-0001", &out), 0);
    assert_true(out.new_percent == 30 && out.shadow_percent == 50);
    assert_int_equal(out.n_acks, 1);
    assert_string_equal(out.acks[0].note, "strings now");
    assert_ptr_not_equal(out.acks[0].note, acks[0].note); /* copied */
    assert_string_equal(out.updated_by, "web-1-1-0001");
    assert_true(out.updated_at == now);
    assert_int_equal(out.ramp_step, 1);

    /* A rollback: 0 %, the ramp stopped, reason, detail and time; shadow and the
     * acknowledgements stay. */
    char detail[64];
    snprintf(detail, sizeof(detail), "divergence rate 0.5 > 0.01");
    fleet_change_init(&ch, FLEET_CHANGE_ROLLBACK);
    ch.rollback = FLEET_ROLLBACK_GUARD;
    ch.detail = detail;
    assert_int_equal(fleet_route_change(&cur, &ch, now, "", &out), 0);
    detail[0] = 'X'; /* the caller's string was copied */
    assert_true(out.new_percent == 0 && out.shadow_percent == 50);
    assert_true(out.ramp_stopped);
    assert_int_equal(out.rollback, FLEET_ROLLBACK_GUARD);
    assert_string_equal(out.rollback_detail, "divergence rate 0.5 > 0.01");
    assert_true(out.rollback_at == now);
    assert_int_equal(out.n_acks, 1);
    struct buf b;
    buf_init(&b, 0);
    assert_int_equal(fleet_route_encode(&b, &out), 0); /* a valid value */

    /* A ramp step: its position and when the next is due. */
    fleet_change_init(&ch, FLEET_CHANGE_RAMP);
    ch.new_percent = 50;
    ch.ramp_step = 2;
    ch.ramp_next_at = now + 1000;
    assert_int_equal(fleet_route_change(&cur, &ch, now, "web-2-2-0002", &out), 0);
    assert_true(out.new_percent == 50 && out.ramp_step == 2 && out.ramp_next_at == now + 1000);
    assert_false(out.ramp_stopped);

    /* Acknowledgements replaced whole (here: emptied). */
    fleet_change_init(&ch, FLEET_CHANGE_ACKS);
    assert_int_equal(fleet_route_change(&cur, &ch, now, "", &out), 0);
    assert_int_equal(out.n_acks, 0);
    assert_null(out.acks);
    assert_true(out.new_percent == 25);

    /* Refused: a percentage out of range, a rollback without a reason, too many
     * acknowledgements, a bad kind. out is left empty. */
    struct fleet_ack many[FLEET_ACKS_MAX + 1];
    for (size_t i = 0; i < ARRAY_SIZE(many); i++)
        many[i] = (struct fleet_ack){.path = "/a", .kind = "json"};
    const struct fleet_ack weird = {.path = "/a", .kind = "weird"};
    for (int i = 0; i < 5; i++) {
        fleet_change_init(&ch, FLEET_CHANGE_PERCENT);
        switch (i) {
        case 0:
            ch.new_percent = 100.5;
            break;
        case 1:
            fleet_change_init(&ch, FLEET_CHANGE_ROLLBACK);
            break;
        case 2:
            fleet_change_init(&ch, FLEET_CHANGE_ACKS);
            ch.acks = many;
            ch.n_acks = ARRAY_SIZE(many);
            break;
        case 3:
            fleet_change_init(&ch, FLEET_CHANGE_ACKS);
            ch.acks = &weird;
            ch.n_acks = 1;
            break;
        case 4:
            ch.kind = FLEET_CHANGE_N;
            break;
        }
        if (fleet_route_change(&cur, &ch, now, "", &out) != -EINVAL)
            fail_msg("case %d was not refused", i);
        assert_int_equal(out.n_acks, 0);
        assert_true(out.new_percent == 0);
    }
    /* A copy is deep and independent of its source. */
    struct fleet_route copy;
    fleet_route_init(&copy);
    assert_int_equal(fleet_route_copy(&copy, &cur), 0);
    assert_ptr_not_equal(copy.acks, cur.acks);
    assert_string_equal(copy.acks[0].id[0] ? "has id" : "", "has id"); /* made on copy */
    buf_dispose(&b);
    fleet_route_dispose(&copy);
    fleet_route_dispose(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_instance_id),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_route_roundtrip),
        cmocka_unit_test(test_route_percent_precision),
        cmocka_unit_test(test_route_refused),
        cmocka_unit_test(test_route_limits),
        cmocka_unit_test(test_route_encode_refuses),
        cmocka_unit_test(test_driver),
        cmocka_unit_test(test_instance_roundtrip),
        cmocka_unit_test(test_instance_refused),
        cmocka_unit_test(test_fleet_sum),
        cmocka_unit_test(test_reuse_and_failure_leave_nothing),
        cmocka_unit_test(test_ack_ids),
        cmocka_unit_test(test_route_change),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
