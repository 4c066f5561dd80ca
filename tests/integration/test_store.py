"""Live route state shared by a fleet through etcd (issue 13), through real ficus
processes and real etcd processes on 127.0.0.1.

Each class shares one etcd cluster between its tests (a prefix per test): a single
node for most, three members for the fault tests. Instances use leases of 2 s, so a
killed one is gone (and another drives the ramp) within seconds.

  Propagation   a PATCH on one instance reaches the others (p99 over 50 changes, the
                figure printed), 3,000 sticky keys agree on every instance, two
                concurrent PATCHes (one wins, the other is a 409 with the winner),
                a corrupt or foreign value written by hand (logged, ignored), and the
                acknowledgements API on the fleet (stored in etcd and the cache)
  Guard         a trip through one instance's traffic rolls back the others; the
                guard decides on the fleet's sum of published counts; a difference
                acknowledged through one instance is counted by no guard
  Ramp          each step taken exactly once (etcd's history of the key), on after
                the driver is killed with SIGKILL
  Outage        a restart during an etcd outage starts from the cached state; a
                deferred admin answer while etcd hangs (pipelined order kept, a client
                that leaves harms nothing)
  Faults        (three members) the leader killed, then every member, under load:
                no failed request, mutations 503 while down, /readyz 200 and stale,
                convergence after; a watch resumed over a compacted revision reads
                everything again (a key deleted meanwhile goes back to the config)
  Start         an endpoint that is not etcd stops the start with a clear line;
                etcd unreachable at start: served from the configuration, 503s,
                live once etcd comes up
  FileStore     the file store as before, with the new metrics and the
                acknowledgements API (persisted in the state file across a restart)
"""

import json
import re
import signal
import socket
import subprocess
import threading
import time
import unittest

from harness import Backend, Client, ficus_bin, make_workdir, sanitized, wait_until
from harness_admin import AdminClient, AdminFicus, LoadGenerator, metric, named_backend, \
    run_users, slow
from harness_etcd import EtcdCluster, etcd_available
from harness_store import (FleetCase, live, new_prefix, percent_is, route_of, store_config,
                           store_of, wait_all)

TOKEN = "s3cret-token"


def patch_raw(path, body):
    data = json.dumps(body).encode()
    return (b"PATCH %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (path.encode(), TOKEN.encode(), len(data))) + data


def quantile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


class HealthyCluster(FleetCase):
    """Each test starts with every member of the shared cluster running and healthy
    (a test before may have stopped or frozen some)."""

    def setUp(self):
        super().setUp()
        c = self.cluster
        for m in c.members:
            m.thaw()
            if not m.running:
                m.start()
        c.wait_healthy(slow(20))


# ---------------------------------------------------------------------------------------


class Propagation(HealthyCluster):
    def test_patch_reaches_every_instance_p99_under_a_second(self):
        legacy, new = self.backends()
        a, b, c = self.fleet(3, legacy, new, new_prefix("prop"))
        clients = {f: AdminClient(f.admin_port, TOKEN) for f in (a, b, c)}
        try:
            delays = []
            for i in range(50):
                value = 1 + (i * 7) % 97
                t0 = time.monotonic()
                status, doc = clients[a].patch("all", new_percent=value)
                self.assertEqual(status, 200, doc)
                self.assertEqual(doc["new_percent"], value)
                waiting = {b, c}
                deadline = t0 + slow(5)
                while waiting:
                    for f in list(waiting):
                        st, rt = clients[f].get_json("/api/v1/routes/all")
                        if st == 200 and abs(rt["new_percent"] - value) < 1e-9:
                            delays.append(time.monotonic() - t0)
                            waiting.discard(f)
                    self.assertLess(time.monotonic(), deadline,
                                    "change %d (%g) not on every instance" % (i, value))
            p50, p99 = quantile(delays, 0.5), quantile(delays, 0.99)
            print("\n[propagation of a PATCH to two other instances, 50 changes: "
                  "p50 %.1f ms, p99 %.1f ms, max %.1f ms]"
                  % (p50 * 1000, p99 * 1000, max(delays) * 1000))
            self.assertEqual(len(delays), 100)
            self.assertLess(p99, 1.0, "p99 of the propagation")
            # Each instance counts where its changes came from.
            self.assertEqual(metric(clients[a].metrics(), "ficus_state_changes_total",
                                    source="admin"), 50)
            for f in (b, c):
                self.assertGreaterEqual(
                    metric(clients[f].metrics(), "ficus_state_changes_total", source="store"), 50)
                self.assertEqual(metric(clients[f].metrics(), "ficus_state_changes_total",
                                        source="admin"), 0)
            self.assertEqual(metric(clients[b].metrics(), "ficus_state_store_up", type="etcd"), 1)
        finally:
            for cl in clients.values():
                cl.close()

    def test_3000_sticky_keys_get_one_backend_from_every_instance(self):
        legacy, new = self.backends()
        fs = self.fleet(3, legacy, new, new_prefix("sticky"), extra={"workers": 2})
        with fs[1].admin() as adm:
            status, doc = adm.patch("all", new_percent=30)
            self.assertEqual(status, 200, doc)
        wait_all(fs, percent_is("all", 30), slow(5), "30 % everywhere")
        users = ["key-%05d" % i for i in range(3000)]
        placements = [run_users(f.port, users, rounds=1, threads=6) for f in fs]
        first = {u: seen[0] for u, seen in placements[0].items()}
        self.assertEqual(len(first), 3000)
        for i, p in enumerate(placements[1:], 1):
            differ = [u for u in users if p[u][0] != first[u]]
            self.assertEqual(differ, [], "keys placed differently by instance %d" % i)
        share = sum(1 for v in first.values() if v == "new") / 3000
        self.assertTrue(0.27 <= share <= 0.33, "share on new: %.3f" % share)

    def test_concurrent_patches_one_wins_the_other_is_409(self):
        legacy, new = self.backends()
        fs = self.fleet(3, legacy, new, new_prefix("race"))
        a, b = fs[0], fs[1]
        conflicts = 0
        for round_ in range(8):
            va, vb = 10 + round_, 60 + round_
            ca, cb = AdminClient(a.admin_port, TOKEN), AdminClient(b.admin_port, TOKEN)
            ca.get("/healthz"), cb.get("/healthz")  # connected before the race
            barrier = threading.Barrier(2)
            out = {}

            def send(name, cl, v):
                barrier.wait()
                out[name] = cl.patch("all", new_percent=v)

            ts = [threading.Thread(target=send, args=("a", ca, va)),
                  threading.Thread(target=send, args=("b", cb, vb))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(slow(10))
            ca.close(), cb.close()
            (sa, da), (sb, db) = out["a"], out["b"]
            self.assertIn((sa, sb), ((200, 409), (409, 200), (200, 200)), (da, db))
            if (sa, sb) == (200, 200):
                continue  # one came after the other: no race this round
            conflicts += 1
            winner, loser = (va, db) if sa == 200 else (vb, da)
            self.assertIn("changed by another instance", loser["error"])
            self.assertEqual(loser["route"]["new_percent"], winner, "the 409 shows the winner")
            wait_all(fs, percent_is("all", winner), slow(5), "every instance on the winner")
            break
        self.assertGreater(conflicts, 0, "no round raced in 8 tries")

    def test_corrupt_or_foreign_values_are_logged_and_ignored(self):
        legacy, new = self.backends()
        prefix = new_prefix("corrupt")
        fs = self.fleet(2, legacy, new, prefix)
        with fs[0].admin() as adm:
            self.assertEqual(adm.patch("all", new_percent=20)[0], 200)
        wait_all(fs, percent_is("all", 20), slow(5), "20 %")
        key = prefix + "routes/all"
        bad = [
            ("this is not json", "not JSON"),
            (json.dumps({"kind": "ficus.instance", "version": 1, "id": "x"}),
             'a "ficus.instance" value where a "ficus.route" belongs'),
            (json.dumps({"kind": "ficus.route", "version": 2, "new_percent": 5}),
             "format version 2 is newer"),
            (json.dumps({"kind": "ficus.route", "version": 1, "new_percent": 500}),
             "new_percent: must be a number from 0 to 100"),
        ]
        for value, why in bad:
            self.cluster.put(key, value)
            for f in fs:
                wait_until(lambda: [l for l in f.log_lines(r"level=warn .*value ignored")
                                    if key in l and why in l],
                           slow(5), what="%s logged by %s" % (why, f.name))
            for f in fs:
                self.assertEqual(route_of(f)["new_percent"], 20, "the last good value stays")
        self.cluster.put(prefix + "strange/key", "x")
        for f in fs:
            wait_until(lambda: f.log_lines(r'value ignored key="%sstrange/key"' % re.escape(prefix)),
                       slow(5), what="the foreign key logged")
        self.assertGreaterEqual(store_of(fs[1])["values_ignored"], 5)
        # A PATCH writes over the corrupt value (its revision is the one compared).
        with fs[1].admin() as adm:
            status, doc = adm.patch("all", new_percent=35)
            self.assertEqual(status, 200, doc)
        wait_all(fs, percent_is("all", 35), slow(5), "35 % after the corrupt value")
        # A valid value written by hand is applied.
        self.cluster.put(key, {"kind": "ficus.route", "version": 1, "new_percent": 42})
        wait_all(fs, percent_is("all", 42), slow(5), "the hand-written 42 %")

    def test_acknowledgements_api_is_shared_by_the_fleet(self):
        legacy, new = self.backends()
        prefix = new_prefix("acks")
        a, b = self.fleet(2, legacy, new, prefix)
        path = "/api/v1/routes/all/acknowledgements"
        with a.admin() as adm:
            status, doc = adm.json_call("POST", path, {"path": "/id", "kind": "json"}, token=None)
            self.assertEqual(status, 401, doc)
            for body, why in [
                ("[1]", "JSON object"), ({"kind": "json"}, "path is required"),
                ({"path": "/id", "kind": "weird"}, "kind must be one of"),
                ({"path": "/id", "kind": "json", "colour": "red"}, "unknown key"),
                ({"path": "/" + "p" * 600, "kind": "json"}, "at most 512 bytes"),
                ({"path": "/id", "kind": "json", "note": "a\u0001b"}, "control characters"),
                ({"path": "/id", "kind": "json", "endpoint": 7}, "endpoint must be"),
            ]:
                status, doc = adm.json_call("POST", path, body)
                self.assertEqual(status, 400, (body, doc))
                self.assertIn(why, doc["error"])
            ack = {"path": "/*/id", "kind": "json", "endpoint": "GET /posts/{id}",
                   "note": "ids are strings now"}
            status, doc = adm.json_call("POST", path, ack)
            self.assertEqual(status, 201, doc)
            entry = doc["acknowledgement"]
            for k, v in ack.items():
                self.assertEqual(entry[k], v)
            self.assertRegex(entry["id"], r"^[0-9a-f]{16}$")
            self.assertRegex(entry["at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            # The same difference again is the same entry.
            status, again = adm.json_call("POST", path, dict(ack, note="twice"))
            self.assertEqual((status, again["acknowledgement"]["id"]), (200, entry["id"]))
            status, doc = adm.json_call("POST", path, {"path": "content-type", "kind": "header"})
            self.assertEqual(status, 201, doc)
            second = doc["acknowledgement"]["id"]

        def listed(f):
            with f.admin() as adm:
                st, doc = adm.get_json(path)
            return st == 200 and sorted(x["id"] for x in doc["acknowledgements"])
        wait_all([b], lambda f: listed(f) == sorted([entry["id"], second]), slow(5),
                 "both acknowledgements on the other instance")
        stored = self.cluster.get_json(prefix + "routes/all")
        self.assertEqual([x["id"] for x in stored["acknowledgements"]], [entry["id"], second])
        # The other instance's cache file holds them too (written within a second).
        wait_until(lambda: len(b.read_state()["routes"].get("all", {}).get("acknowledgements", [])) == 2,
                   slow(5), what="the acknowledgements in the state file")
        with b.admin() as adm:
            status, one = adm.get_json(path + "/" + entry["id"])
            self.assertEqual((status, one["note"]), (200, "ids are strings now"))
            self.assertEqual(adm.get_json(path + "/ffffffffffffffff")[0], 404)
            status, doc = adm.json_call("DELETE", path + "/ffffffffffffffff")
            self.assertEqual(status, 404, doc)
            status, doc = adm.json_call("DELETE", path + "/" + entry["id"])
            self.assertEqual(status, 200, doc)
            self.assertEqual([x["id"] for x in doc["acknowledgements"]], [second])
        wait_all([a], lambda f: listed(f) == [second], slow(5), "the removal on the first")
        self.assertEqual(route_of(a)["acknowledgements"][0]["kind"], "header")


# ---------------------------------------------------------------------------------------


GUARDED = {"name": "all", "new_percent": 50, "sticky": {"header": "x-user-id"},
           "shadow": {"percent": 100},
           "guard": {"max_divergence_rate": 0.5, "max_error_rate": 0.5, "min_comparisons": 30,
                     "window_ms": 20000}}


def send(f, n, tag):
    """n requests to f, each compared (the backends answer with their names: every
    comparison diverges)."""
    for i in range(n):
        r = f.request(b"GET /x HTTP/1.1\r\nHost: x\r\nx-user-id: %s-%d\r\n\r\n"
                      % (tag.encode(), i))
        assert r.status == 200, r


def comparisons(f):
    with f.admin() as adm:
        return metric(adm.metrics(), "ficus_comparisons_total", route="all") or 0


class Guard(HealthyCluster):
    def rolled_back(self, f):
        r = route_of(f)
        return r is not None and r["new_percent"] == 0 and r["last_rollback"] is not None

    def test_trip_through_one_instance_rolls_back_the_others(self):
        legacy, new = self.backends()
        a, b, c = self.fleet(3, legacy, new, new_prefix("guard"), route=GUARDED)
        send(a, 40, "a")
        wait_all([a, b, c], self.rolled_back, slow(10), "every instance rolled back")
        for f in (b, c):
            r = route_of(f)
            self.assertIn("guard: divergence rate", r["last_rollback"])
            self.assertEqual(comparisons(f), 0, "the others compared nothing themselves")
        with b.admin() as adm:
            m = adm.metrics()
        self.assertEqual(metric(m, "ficus_rollbacks_total", route="all", reason="guard"), 1)
        self.assertEqual(metric(m, "ficus_route_new_percent", route="all"), 0)

    def test_an_acknowledged_difference_counts_on_no_instance(self):
        """A difference acknowledged through one instance (stored in etcd) is not counted
        by the other's guard (its snapshot comes from the store's watch); once the
        acknowledgement is removed, the same traffic rolls the fleet back."""
        legacy, new = self.backends()
        a, b = self.fleet(2, legacy, new, new_prefix("ackguard"), route=GUARDED)
        path = "/api/v1/routes/all/acknowledgements"
        with a.admin() as adm:
            status, doc = adm.json_call("POST", path, {"path": "body", "kind": "body",
                                                       "note": "each answers its name"})
            self.assertEqual(status, 201, doc)
            ack_id = doc["acknowledgement"]["id"]
        wait_all([b], lambda f: len(route_of(f)["acknowledgements"]) == 1, slow(5),
                 "the acknowledgement on the other instance")
        send(b, 40, "b")
        wait_until(lambda: route_of(b)["window"]["comparisons"] >= 40, slow(10),
                   what="b's sampler and guard to see its 40 comparisons")
        for f in (a, b):
            r = route_of(f)
            self.assertEqual(r["new_percent"], 50, "an acknowledged difference tripped the guard")
        self.assertEqual(route_of(b)["divergences"], 0)
        self.assertEqual(route_of(b)["acknowledged"], 40)
        with a.admin() as adm:
            status, doc = adm.json_call("DELETE", path + "/" + ack_id)
            self.assertEqual(status, 200, doc)
        wait_all([b], lambda f: route_of(f)["acknowledgements"] == [], slow(5),
                 "the removal on the other instance")
        # 60 counted of 100 in the window: above the guard's 0.5.
        send(b, 60, "b2")
        wait_all([a, b], self.rolled_back, slow(10), "the fleet rolled back without it")

    def test_the_guard_decides_on_the_sum_of_the_fleet(self):
        legacy, new = self.backends()
        a, b, c = self.fleet(3, legacy, new, new_prefix("sum"), route=GUARDED)
        # 12 + 12 comparisons: under min_comparisons (30) even summed.
        send(a, 12, "a")
        send(b, 12, "b")
        wait_until(lambda: comparisons(a) >= 12 and comparisons(b) >= 12, slow(5),
                   what="the comparisons counted")
        time.sleep(2.5)  # published twice at least: a trip would have happened by now
        for f in (a, b, c):
            self.assertEqual(route_of(f)["new_percent"], 50, "no trip below the minimum")
        # 12 more on a third instance: no instance has 30, the fleet has 36.
        send(c, 12, "c")
        wait_all([a, b, c], self.rolled_back, slow(10), "the fleet's guard rolled back")
        r = route_of(a)
        self.assertIn("of the fleet", r["last_rollback"])
        for f in (a, b, c):
            self.assertLess(comparisons(f), 30, "no instance reached the minimum alone")


# ---------------------------------------------------------------------------------------


RAMP_STEPS = [10, 20, 30, 40, 50]


class Ramp(HealthyCluster):
    def test_each_step_once_and_on_after_the_driver_is_killed(self):
        legacy, new = self.backends()
        prefix = new_prefix("ramp")
        route = {"name": "all", "new_percent": 0, "sticky": {"header": "x-user-id"},
                 "ramp": {"steps": RAMP_STEPS, "every_ms": 1000}}
        fs = self.fleet(3, legacy, new, prefix, route=route)

        def driver():
            d = {store_of(f)["ramp_driver"] for f in fs if f.alive()}
            return d.pop() if len(d) == 1 and None not in d else None
        wait_until(driver, slow(10), what="one ramp driver the instances agree on")
        wait_all(fs, lambda f: route_of(f)["new_percent"] >= 20, slow(10), "the second step")
        d = driver()
        killed = next(f for f in fs if store_of(f)["instance"] == d)
        killed.kill()
        killed.exit_code = -signal.SIGKILL  # killed on purpose: its teardown checks logs only
        rest = [f for f in fs if f is not killed]
        wait_until(lambda: driver() not in (None, d), slow(10), what="another driver")
        wait_all(rest, lambda f: route_of(f)["new_percent"] == 50 and
                 not route_of(f)["ramp"]["active"], slow(20), "the ramp finished")

        history = [json.loads(v) for _, v in self.cluster.history(prefix + "routes/all")]
        steps = [(h["ramp_step"], h["new_percent"], h["ramp_stopped"], h["updated_by"])
                 for h in history]
        taken = [s for s in steps if not s[2]]
        self.assertEqual([(s[0], s[1]) for s in taken], list(enumerate(RAMP_STEPS)),
                         "each step written exactly once, in order: %r" % steps)
        self.assertEqual(steps[-1][:3], (4, 50, True), "the last write ends the ramp")
        self.assertTrue(any(s[3] == d for s in taken), "the first driver took steps")
        self.assertNotEqual(taken[-1][3], d, "another instance took the last steps")


# ---------------------------------------------------------------------------------------


class Outage(HealthyCluster):
    def test_restart_during_an_outage_starts_from_the_cache(self):
        legacy, new = self.backends()
        f = self.fleet(1, legacy, new, new_prefix("cache"))[0]
        with f.admin() as adm:
            self.assertEqual(adm.patch("all", new_percent=40)[0], 200)
        wait_until(lambda: f.read_state()["routes"].get("all", {}).get("new_percent") == 40 and
                   f.read_state().get("revision"), slow(5), what="the cache written")
        m = self.cluster.members[0]
        m.stop()
        wait_until(lambda: store_of(f)["status"] == "stale", slow(10), what="stale")
        f.restart()
        r = route_of(f)
        self.assertEqual(r["new_percent"], 40, "served from the cache")
        st = store_of(f)
        self.assertEqual((st["status"], st["source"]), ("stale", "cache"))
        with f.admin() as adm:
            status, doc = adm.patch("all", new_percent=41)
            self.assertEqual(status, 503, doc)
            self.assertIn("unreachable", doc["error"])
            status, ready = adm.get_json("/readyz")
            self.assertEqual(status, 200, ready)
            self.assertEqual(ready["state_store"]["status"], "stale")
            self.assertEqual(metric(adm.metrics(), "ficus_state_store_up", type="etcd"), 0)
        users = ["u%d" % i for i in range(200)]
        place = run_users(f.port, users)
        share = sum(1 for v in place.values() if v[0] == "new") / len(users)
        self.assertTrue(0.3 < share < 0.5, share)
        m.start()
        self.cluster.wait_healthy(slow(20))
        wait_until(lambda: live(f), slow(15), what="live again")
        self.assertEqual(store_of(f)["source"], "etcd")
        self.assertEqual(route_of(f)["new_percent"], 40)

    def test_deferred_answers_keep_order_and_survive_a_client_that_leaves(self):
        legacy, new = self.backends()
        f = self.fleet(1, legacy, new, new_prefix("defer"))[0]
        m = self.cluster.members[0]
        m.freeze()  # etcd holds its connections and answers nothing
        try:
            gone = Client(f.admin_port)
            gone.send(patch_raw("/api/v1/routes/all", {"new_percent": 5}))
            gone.abort()  # leaves while its answer waits for etcd
            with Client(f.admin_port) as c:
                c.send(patch_raw("/api/v1/routes/all", {"new_percent": 6}) +
                       b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                first = c.read_response(timeout=slow(10))
                second = c.read_response(timeout=slow(10))
            self.assertEqual(first.status, 503, first.body)
            self.assertIn(b"did not answer in time", first.body)
            self.assertIn(b"may still be applied", first.body)
            self.assertEqual((second.status, second.json()), (200, {"status": "ok"}))
        finally:
            m.thaw()
        wait_until(lambda: live(f), slow(15), what="live again")

        # etcd may apply one of the changes that timed out once it runs again (then a
        # change based on the older state is a 409 until its event arrives).
        def changed():
            with f.admin() as adm:
                status, doc = adm.patch("all", new_percent=7)
            self.assertIn(status, (200, 409), doc)
            return status == 200
        wait_until(changed, slow(10), interval=0.1, what="a change once etcd is back")


# ---------------------------------------------------------------------------------------


class Faults(HealthyCluster):
    CLUSTER_SIZE = 3

    def test_leader_then_all_of_etcd_killed_under_load(self):
        legacy, new = self.backends()
        fs = self.fleet(3, legacy, new, new_prefix("faults"))
        loads = [LoadGenerator(f.port, threads=2).start() for f in fs]
        try:
            for ld in loads:
                ld.wait_more(20)
            old = self.cluster.kill_leader()
            self.cluster.wait_new_leader(old, slow(15))

            def patched(v):
                def go():
                    with fs[0].admin() as adm:
                        return adm.patch("all", new_percent=v)[0] == 200
                return go
            wait_until(patched(25), slow(20), interval=0.2, what="a PATCH after the leader died")
            wait_all(fs, percent_is("all", 25), slow(15), "25 % everywhere")

            self.cluster.kill_all()
            wait_all(fs, lambda f: store_of(f)["status"] == "stale", slow(10), "stale everywhere")
            for f in fs:
                with f.admin() as adm:
                    status, doc = adm.patch("all", new_percent=60)
                    self.assertEqual(status, 503, doc)
                    self.assertIn("unreachable", doc["error"])
                    self.assertEqual(adm.rollback("all")[0], 503)
                    status, ready = adm.get_json("/readyz")
                    self.assertEqual(status, 200, ready)
                    self.assertEqual(ready["state_store"]["status"], "stale")
                    self.assertIsNotNone(ready["state_store"]["last_contact_s"])
                    self.assertEqual(metric(adm.metrics(), "ficus_state_store_up", type="etcd"),
                                     0)
            for ld in loads:
                ld.wait_more(20)
            for f in fs:
                self.assertEqual(route_of(f)["new_percent"], 25, "the last state is served")

            for m in self.cluster.members:
                m.start()
            self.cluster.wait_healthy(slow(30))
            wait_all(fs, live, slow(20), "live again")
            wait_until(patched(70), slow(10), interval=0.2, what="a PATCH after the outage")
            wait_all(fs, percent_is("all", 70), slow(10), "converged on 70 %")
            for ld in loads:
                ld.wait_more(20)
        finally:
            for ld in loads:
                ld.stop()
        for ld in loads:
            self.assertEqual(ld.failures, [], "client requests failed")
            self.assertGreater(ld.ok, 60)

    def test_resume_over_a_compacted_revision_reads_everything_again(self):
        legacy, new = self.backends()
        prefix = new_prefix("compact")
        m1 = self.cluster.members[0]
        routes = {"routes": [{"name": "all", "new_percent": 0},
                             {"name": "aux", "new_percent": 5, "match": {"path_prefix": "/aux"}}]}
        a = self.instance(legacy, new, prefix, endpoints=[m1.client_url], extra=routes)
        b = self.instance(legacy, new, prefix, extra=routes, name="ficus-b")
        wait_all([a, b], live, slow(15), "live")
        with a.admin() as adm:
            self.assertEqual(adm.patch("all", new_percent=10)[0], 200)
            self.assertEqual(adm.patch("aux", new_percent=60)[0], 200)
        wait_all([a, b], percent_is("aux", 60), slow(5), "aux at 60")
        m1.kill()
        wait_until(lambda: store_of(a)["status"] == "stale", slow(10), what="a stale")
        wait_until(lambda: live(b), slow(15), what="b on another member")
        wait_until(lambda: b_patch(b, 77), slow(10), interval=0.2, what="a PATCH through b")
        self.cluster.etcdctl("del", prefix + "routes/aux")
        self.cluster.compact()
        m1.start()
        self.cluster.wait_healthy(slow(20))
        wait_until(lambda: a.log_lines(r"is compacted .*reading everything again"), slow(20),
                   what="the compacted watch seen")
        wait_until(lambda: live(a) and a.log_lines(r"state read from etcd") and
                   len(a.log_lines(r"state read from etcd")) == 2, slow(20),
                   what="a read everything again and is live")
        wait_all([a], percent_is("all", 77), slow(5), "the change made meanwhile")
        aux = route_of(a, "aux")
        self.assertEqual((aux["new_percent"], aux["overridden"]), (5, False),
                         "a key deleted meanwhile: back to the configuration")


def b_patch(f, v):
    with f.admin() as adm:
        return adm.patch("all", new_percent=v)[0] == 200


# ---------------------------------------------------------------------------------------


class Start(FleetCase):
    CLUSTER_SIZE = 0

    def test_an_endpoint_that_is_not_etcd_stops_the_start(self):
        legacy, new = self.backends()
        for handler, why in [(named_backend, "/version"),  # answers 200 text/plain
                             (None, "GET /version answered 404")]:
            not_etcd = self.backend(handler or (lambda req, out: out.respond(404, [], b"no")),
                                    name="web")
            f = self.instance(legacy, new, new_prefix("notetcd"), endpoints=[not_etcd.url],
                              start=False, allow_errors=[r"is not etcd 3\.4 or newer"])
            f.write_config()
            proc = subprocess.run([ficus_bin(), "-c", f.config_path], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=slow(20),
                                  env=f.env(), cwd=f.workdir)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            line = "%s: state_store.endpoints[0]: %s is not etcd 3.4 or newer" % (
                f.config_path, not_etcd.url)
            self.assertIn(line, proc.stderr)
            self.assertIn(why, proc.stderr)
            self.assertNotIn("Sanitizer", proc.stderr)

    def test_etcd_unreachable_at_start_then_up(self):
        if not etcd_available():
            self.skipTest("etcd not installed")
        legacy, new = self.backends()
        cluster = EtcdCluster(make_workdir("etcd"), size=1)  # ports picked, not started
        self.addCleanup(cluster.close)
        f = self.instance(legacy, new, new_prefix("late"), endpoints=cluster.endpoints,
                          route={"name": "all", "new_percent": 15})
        self.assertEqual(route_of(f)["new_percent"], 15, "the configuration's state")
        with f.admin() as adm:
            status, doc = adm.patch("all", new_percent=20)
            self.assertEqual(status, 503, doc)
            self.assertIn("the state store (etcd) is unreachable", doc["error"])
            self.assertIn("last contact never", doc["error"])
            status, ready = adm.get_json("/readyz")
            self.assertEqual((status, ready["state_store"]["status"]), (200, "stale"))
            self.assertIsNone(ready["state_store"]["last_contact_s"])
        cluster.start()
        if cluster.endpoints != f.config["state_store"]["endpoints"]:
            self.skipTest("etcd had to move to other ports")
        wait_until(lambda: live(f), slow(15), what="live once etcd is up")
        with f.admin() as adm:
            status, doc = adm.patch("all", new_percent=20)
            self.assertEqual(status, 200, doc)
        self.assertEqual(json.loads(cluster.get(f.config["state_store"]["prefix"] +
                                                "routes/all"))["new_percent"], 20)


# ---------------------------------------------------------------------------------------


class FileStore(FleetCase):
    CLUSTER_SIZE = 0

    def test_metrics_status_and_acknowledgements_with_the_state_file(self):
        legacy, new = self.backends()
        f = AdminFicus(legacy, new, config={"routes": [{"name": "all", "new_percent": 10}]})
        self._ficuses.append(f)
        f.start()
        with f.admin() as adm:
            m = adm.metrics()
            self.assertEqual(metric(m, "ficus_state_store_up", type="file"), 1)
            self.assertEqual(metric(m, "ficus_state_store_last_contact_seconds", type="file"), 0)
            self.assertEqual(metric(m, "ficus_state_changes_total", source="admin"), 0)
            st = store_of(f)
            self.assertEqual((st["type"], st["status"], st["source"]), ("file", "live", "file"))
            self.assertEqual(adm.get_json("/readyz")[1]["state_store"]["type"], "file")
            self.assertEqual(adm.patch("all", new_percent=12)[0], 200)
            status, doc = adm.json_call("POST", "/api/v1/routes/all/acknowledgements",
                                        {"path": "/id", "kind": "json", "note": "strings"})
            self.assertEqual(status, 201, doc)
            ack_id = doc["acknowledgement"]["id"]
            self.assertEqual(metric(adm.metrics(), "ficus_state_changes_total", source="admin"),
                             2)
        self.assertEqual(f.read_state()["routes"]["all"]["acknowledgements"][0]["id"], ack_id)
        f.restart()
        with f.admin() as adm:
            status, doc = adm.get_json("/api/v1/routes/all/acknowledgements")
            self.assertEqual([x["note"] for x in doc["acknowledgements"]], ["strings"])
            self.assertEqual(route_of(f)["new_percent"], 12)
            status, doc = adm.json_call("DELETE", "/api/v1/routes/all/acknowledgements/" + ack_id)
            self.assertEqual((status, doc["acknowledgements"]), (200, []))
        self.assertNotIn("acknowledgements", f.read_state()["routes"]["all"])


if __name__ == "__main__":
    unittest.main()
