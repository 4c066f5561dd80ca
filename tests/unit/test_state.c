/* Unit tests of the live route state's changes without a running loop: the
 * acknowledgements list replaced through the built-in writer (applied and in
 * the state file, read back at the next start, shown by `ficus check`), a
 * registered writer that refuses (409, 503: nothing applied), a change the
 * state file cannot take (undone, except a rollback), a corrupt list in the
 * state file refused with its location, and the changes counted by source. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ficus/common.h"
#include "ficus/config.h"
#include "ficus/endpoint.h"
#include "ficus/state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char config_text[] = "{\"listen\": \"127.0.0.1:18080\", \"backends\": {\"legacy\": "
                                  "{\"url\": \"http://127.0.0.1:1\"},"
                                  " \"new\": {\"url\": \"http://127.0.0.1:2\"}},"
                                  " \"routes\": [{\"name\": \"orders\", \"new_percent\": 10}]}";

struct fixture {
    char dir[64];
    char path[96];
    struct config *cfg;
    struct state_table *t;
    struct route_state *rs;
};

static struct config *config_of(void)
{
    struct config_errors errs = {0};
    struct config *cfg = config_parse(config_text, strlen(config_text), "t.json", &errs);
    assert_non_null(cfg);
    config_errors_dispose(&errs);
    return cfg;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/ficus-test-state-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/state.json", f->dir);
    f->cfg = config_of();
    f->t = state_table_new(1, f->path);
    if (f->t == NULL || state_table_bind(f->t, f->cfg) != 0)
        return -1;
    f->rs = state_find(f->t, "orders");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    state_table_free(f->t);
    config_unref(f->cfg);
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* What a change's callback heard. */
struct heard {
    int calls;
    int result;
    char why[200];
};

static void on_done(void *ctx, int result, const char *why)
{
    struct heard *h = ctx;
    h->calls++;
    h->result = result;
    snprintf(h->why, sizeof(h->why), "%s", why);
}

static const struct fleet_ack two[] = {
    {.path = "/*/id",
     .kind = "json",
     .endpoint = "GET /posts/{id}",
     .note = "ids are strings",
     .at = 1795341600000LL},
    {.id = "ct", .path = "content-type", .kind = "header", .endpoint = "", .note = ""},
};

static void test_acks_through_the_file_writer(void **state)
{
    struct fixture *f = *state;
    size_t n = 99;
    assert_null(state_acks(f->rs, &n));
    assert_int_equal(n, 0);
    struct heard h = {0};
    state_acks_replace(f->t, f->rs, two, 2, STATE_SRC_ADMIN, on_done, &h);
    assert_int_equal(h.calls, 1); /* the file writer answers at once */
    assert_int_equal(h.result, 0);
    const struct fleet_ack *a = state_acks(f->rs, &n);
    assert_int_equal(n, 2);
    assert_string_equal(a[0].path, "/*/id");
    assert_ptr_not_equal(a[0].path, two[0].path); /* copied */
    char id[FLEET_ACK_ID_MAX + 1];
    fleet_ack_id("/*/id", "json", "GET /posts/{id}", id);
    assert_string_equal(a[0].id, id); /* made when not given */
    assert_string_equal(a[1].id, "ct");
    assert_true(state_changes(f->t, STATE_SRC_ADMIN) == 1);
    assert_true(f->rs->overridden);

    /* The next start reads them back from the state file. */
    struct state_table *t2 = state_table_new(1, f->path);
    struct config_errors errs = {0};
    assert_int_equal(state_table_load(t2, &errs), 0);
    assert_int_equal(errs.n, 0);
    struct route_state *rs2 = state_find(t2, "orders");
    assert_non_null(rs2);
    a = state_acks(rs2, &n);
    assert_int_equal(n, 2);
    assert_string_equal(a[0].note, "ids are strings");
    assert_true(a[0].at == 1795341600000LL);
    assert_string_equal(a[1].id, "ct");
    assert_true(atomic_load(&rs2->new_percent) == 10);
    state_table_free(t2);

    /* `ficus check` says how many there are. */
    char *text = NULL;
    assert_int_equal(state_describe(f->path, &errs, &text), 0);
    assert_non_null(strstr(text, "route orders new_percent=10"));
    assert_non_null(strstr(text, "acknowledgements=2"));
    free(text);

    /* Emptied: the list goes from the file too. */
    state_acks_replace(f->t, f->rs, NULL, 0, STATE_SRC_ADMIN, on_done, &h);
    assert_int_equal(h.result, 0);
    assert_null(state_acks(f->rs, &n));
    FILE *fp = fopen(f->path, "r");
    char buf[4096] = "";
    assert_non_null(fp);
    size_t got = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[got] = '\0';
    assert_null(strstr(buf, "acknowledgements"));
    config_errors_dispose(&errs);
}

/* What comparisons match: the snapshot published at each change, each holder
 * keeping its own until it drops it, as the threadpool does. */
static void test_published_snapshot(void **state)
{
    struct fixture *f = *state;
    size_t n = 99;
    assert_null(state_acks_hold(f->rs));
    assert_null(state_acks_view(NULL, &n));
    assert_int_equal(n, 0);
    struct heard h = {0};
    state_acks_replace(f->t, f->rs, two, 2, STATE_SRC_ADMIN, on_done, &h);
    assert_int_equal(h.result, 0);
    struct state_acks *old = state_acks_hold(f->rs);
    assert_non_null(old);
    const struct endpoint_ack *m = state_acks_view(old, &n);
    assert_int_equal(n, 2);
    assert_string_equal(m[0].path, "/*/id");
    assert_string_equal(m[0].endpoint, "GET /posts/{id}");
    assert_string_equal(m[1].kind, "header");
    /* Replaced: the new list is published, the held one stays readable. */
    state_acks_replace(f->t, f->rs, two + 1, 1, STATE_SRC_ADMIN, on_done, &h);
    struct state_acks *cur = state_acks_hold(f->rs);
    assert_ptr_not_equal(cur, old);
    assert_int_equal((state_acks_view(cur, &n), n), 1);
    assert_string_equal(state_acks_view(cur, &n)[0].path, "content-type");
    assert_string_equal(m[0].path, "/*/id");
    state_acks_drop(old);
    state_acks_drop(cur);
    /* A reset (the store's value gone) publishes none. */
    state_reset(f->t, f->rs, NULL, STATE_SRC_STORE);
    assert_null(state_acks_hold(f->rs));
}

/* A writer like the etcd store's when it refuses: nothing is applied here. */
static int refuse_with;
static void refusing_change(void *wctx, struct route_state *rs, const struct fleet_change *ch,
                            enum state_source src, state_change_cb cb, void *ctx)
{
    (void)wctx;
    (void)rs;
    (void)ch;
    (void)src;
    cb(ctx, refuse_with, refuse_with == FICUS_ECONFLICT ? "changed meanwhile" : "unreachable");
}

static void test_a_writer_that_refuses_changes_nothing(void **state)
{
    struct fixture *f = *state;
    static const struct state_writer refusing = {.change = refusing_change};
    state_set_writer(f->t, &refusing, NULL);
    int results[] = {FICUS_ECONFLICT, FICUS_EUNAVAILABLE};
    for (size_t i = 0; i < 2; i++) {
        refuse_with = results[i];
        struct heard h = {0};
        state_acks_replace(f->t, f->rs, two, 2, STATE_SRC_ADMIN, on_done, &h);
        assert_int_equal(h.calls, 1);
        assert_int_equal(h.result, results[i]);
        size_t n;
        assert_null(state_acks(f->rs, &n));
        struct fleet_change ch;
        fleet_change_init(&ch, FLEET_CHANGE_PERCENT);
        ch.new_percent = 50;
        state_change(f->t, f->rs, &ch, STATE_SRC_ADMIN, on_done, &h);
        assert_int_equal(h.result, results[i]);
        assert_true(atomic_load(&f->rs->new_percent) == 10);
    }
    assert_true(state_changes(f->t, STATE_SRC_ADMIN) == 0);
    assert_false(f->rs->overridden);
    state_set_writer(f->t, NULL, NULL);
    struct heard h = {0};
    state_acks_replace(f->t, f->rs, two, 1, STATE_SRC_ADMIN, on_done, &h);
    assert_int_equal(h.result, 0); /* the built-in writer again */
}

static void test_a_state_file_that_cannot_be_written(void **state)
{
    struct fixture *f = *state;
    /* A state file in a directory that does not exist. */
    struct state_table *t = state_table_new(1, "/nonexistent-dir-of-ficus/state.json");
    assert_int_equal(state_table_bind(t, f->cfg), 0);
    struct route_state *rs = state_find(t, "orders");
    struct heard h = {0};
    struct fleet_change ch;
    fleet_change_init(&ch, FLEET_CHANGE_PERCENT);
    ch.new_percent = 40;
    state_change(t, rs, &ch, STATE_SRC_ADMIN, on_done, &h);
    assert_true(h.result < 0);
    assert_non_null(strstr(h.why, "nothing was changed"));
    assert_true(atomic_load(&rs->new_percent) == 10); /* undone */
    assert_false(rs->overridden);
    assert_true(state_changes(t, STATE_SRC_ADMIN) == 0); /* not counted either */
    /* A rollback stays: new's traffic stops whatever the disk says. */
    fleet_change_init(&ch, FLEET_CHANGE_ROLLBACK);
    ch.rollback = FLEET_ROLLBACK_GUARD;
    ch.detail = "divergence";
    state_change(t, rs, &ch, STATE_SRC_GUARD, on_done, &h);
    assert_int_equal(h.result, 0);
    assert_true(atomic_load(&rs->new_percent) == 0);
    assert_true(rs->ramp_stopped);
    assert_int_equal(rs->rollback, FLEET_ROLLBACK_GUARD);
    assert_true(rs->rollbacks_guard == 1);
    assert_true(state_changes(t, STATE_SRC_GUARD) == 1);
    assert_non_null(strstr(rs->last_rollback, "guard: divergence"));
    state_table_free(t);
}

static void test_corrupt_acknowledgements_in_the_state_file(void **state)
{
    struct fixture *f = *state;
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fputs("{\"version\":1,\"routes\":{\"orders\":{\"new_percent\":5,"
          "\"acknowledgements\":[{\"path\":\"/a\",\"kind\":\"colour\"}]}}}\n",
          fp);
    fclose(fp);
    struct state_table *t = state_table_new(1, f->path);
    struct config_errors errs = {0};
    assert_int_equal(state_table_load(t, &errs), FICUS_ECONFIG);
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.lines[0], "state.json: routes.orders: acknowledgements[0].kind"));
    config_errors_dispose(&errs);
    state_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_acks_through_the_file_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_published_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_writer_that_refuses_changes_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_state_file_that_cannot_be_written, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_acknowledgements_in_the_state_file, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
