/* Unit tests of the per-worker server address counters: entries found again by
 * (backend, address), the cap, statuses marked gone, and the sums over the
 * workers' tables that metrics and the admin API read (best status wins, an
 * ejection that ran out reads as probing). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ficus/upstats.h"

#include <stdio.h>
#include <string.h>

static void test_entries_are_found_again(void **state)
{
    (void)state;
    struct upstats *s = upstats_new();
    assert_non_null(s);
    struct upstats_entry *a = upstats_entry(s, "legacy", "127.0.0.1:80");
    struct upstats_entry *b = upstats_entry(s, "legacy", "127.0.0.2:80");
    struct upstats_entry *c = upstats_entry(s, "new", "127.0.0.1:80");
    assert_non_null(a);
    assert_true(a != b && a != c && b != c);
    assert_ptr_equal(upstats_entry(s, "legacy", "127.0.0.1:80"), a);
    assert_int_equal(upstats_count(s), 3);
    assert_string_equal(upstats_at(s, 2)->backend, "new");
    /* A new entry is gone until a pool publishes its status. */
    assert_int_equal(atomic_load(&a->status), UPSTATS_GONE);
    upstats_set_status(a, LB_STATUS_UP, 0);
    upstats_all_gone(s);
    assert_int_equal(atomic_load(&a->status), UPSTATS_GONE);
    upstats_free(s);
    upstats_free(NULL);
}

static void test_table_is_capped(void **state)
{
    (void)state;
    struct upstats *s = upstats_new();
    char addr[32];
    for (int i = 0; i < UPSTATS_MAX; i++) {
        snprintf(addr, sizeof(addr), "10.0.%d.%d:80", i / 256, i % 256);
        assert_non_null(upstats_entry(s, "b", addr));
    }
    assert_null(upstats_entry(s, "b", "192.0.2.1:80"));
    assert_null(upstats_entry(s, "b", "192.0.2.2:80"));
    assert_int_equal(upstats_dropped(s), 2);
    assert_int_equal(upstats_count(s), UPSTATS_MAX);
    /* Existing entries are still found when the table is full. */
    assert_non_null(upstats_entry(s, "b", "10.0.0.7:80"));
    upstats_free(s);
}

static void test_collect_sums_over_workers(void **state)
{
    (void)state;
    struct upstats *w[3] = {upstats_new(), upstats_new(), NULL};
    /* Worker 0 saw two addresses, worker 1 one of them and another backend. */
    struct upstats_entry *a0 = upstats_entry(w[0], "legacy", "127.0.0.2:80");
    struct upstats_entry *b0 = upstats_entry(w[0], "legacy", "127.0.0.1:80");
    struct upstats_entry *a1 = upstats_entry(w[1], "legacy", "127.0.0.2:80");
    struct upstats_entry *n1 = upstats_entry(w[1], "new", "127.0.0.9:80");
    upstats_add(&a0->requests[CODE_2XX], 5);
    upstats_add(&a1->requests[CODE_2XX], 7);
    upstats_add(&a1->requests[CODE_5XX], 1);
    upstats_add(&a1->failures, 1);
    upstats_active(a0, 2);
    upstats_active(a1, 1);
    upstats_add(&a1->ejections, 1);
    /* Ejected on worker 0 until t=1000, up on worker 1: up wins. */
    upstats_set_status(a0, LB_STATUS_EJECTED, 1000);
    upstats_set_status(a1, LB_STATUS_UP, 0);
    /* Ejected on the only worker that has it: ejected before 1000, probing after. */
    upstats_set_status(b0, LB_STATUS_EJECTED, 1000);
    upstats_set_status(n1, LB_STATUS_DRAINING, 0);

    struct upstats_view v[8];
    int n = upstats_collect(w, 3, 500, v, 8);
    assert_int_equal(n, 3);
    /* Sorted by backend, then address. */
    assert_string_equal(v[0].server, "127.0.0.1:80");
    assert_string_equal(v[1].server, "127.0.0.2:80");
    assert_string_equal(v[2].backend, "new");
    assert_int_equal(v[0].status, LB_STATUS_EJECTED);
    assert_int_equal(v[0].ejected_until_ms, 1000);
    const struct upstats_view *a = upstats_find(v, n, "legacy", "127.0.0.2:80");
    assert_non_null(a);
    assert_int_equal(a->requests[CODE_2XX], 12);
    assert_int_equal(a->requests[CODE_5XX], 1);
    assert_int_equal(a->failures, 1);
    assert_int_equal(a->ejections, 1);
    assert_int_equal(a->active, 3);
    assert_int_equal(a->status, LB_STATUS_UP);
    assert_int_equal(a->ejected_until_ms, 0);
    assert_int_equal(v[2].status, LB_STATUS_DRAINING);
    assert_null(upstats_find(v, n, "new", "127.0.0.2:80"));

    n = upstats_collect(w, 3, 1000, v, 8);
    assert_int_equal(v[0].status, LB_STATUS_PROBING);
    assert_string_equal(upstats_status_name(v[0].status), "probing");
    assert_string_equal(upstats_status_name(UPSTATS_GONE), "gone");

    /* A short output keeps the first views. */
    assert_int_equal(upstats_collect(w, 3, 0, v, 1), 1);
    assert_string_equal(v[0].server, "127.0.0.1:80");
    /* Nothing at all. */
    struct upstats *none[1] = {NULL};
    assert_int_equal(upstats_collect(none, 1, 0, v, 8), 0);
    upstats_free(w[0]);
    upstats_free(w[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entries_are_found_again),
        cmocka_unit_test(test_table_is_capped),
        cmocka_unit_test(test_collect_sums_over_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
