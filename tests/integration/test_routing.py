"""Routing, live changes and reload, through the real binary (issue 4).

The sticky monotonic split with 2,000 users, PATCH through the admin API, the state
file across a restart and `ficus check`, the override header, admin auth (401/403),
fallback to legacy, reload through the API and SIGHUP under load, rollback, the
admin server against garbage, and a corrupt state file refusing the start.

Backends answer with their own name as the body ("legacy", "new", "third"), so the
client always knows which backend served it.
"""

import json
import os
import random
import re
import socket
import subprocess
import time
import unittest

import harness
from harness import (Client, FicusTestCase, IncompleteResponse, ficus_bin, request_bytes, sanitized,
                     wait_until)
from harness_admin import (AdminClient, AdminFicus, KeepAlive, LoadGenerator, metric, named_backend,
                           refused_url, run_users, slow, status_backend)

USERS = ["user-%04d" % i for i in range(2000)]
STICKY_ROUTE = {"name": "all", "new_percent": 30, "sticky": {"header": "x-user-id"},
                "override_header": "x-ficus-backend"}


def placement(results):
    """{user: backend} from run_users results; fails when a user saw both backends."""
    out = {}
    for user, seen in results.items():
        if len(set(seen)) != 1:
            raise AssertionError("user %s is not sticky: %r" % (user, seen))
        out[user] = seen[0]
    return out


def on_new(place):
    return {u for u, b in place.items() if b == "new"}


class RoutingCase(FicusTestCase):
    WATCHDOG_SECONDS = 240 if sanitized() else 120

    def two_backends(self, new_handler=named_backend):
        legacy = self.backend(named_backend, name="legacy")
        new = self.backend(new_handler, name="new")
        return legacy, new

    def admin_ficus(self, legacy, new, start=True, **kw):
        f = AdminFicus(legacy, new, **kw)
        self._ficuses.append(f)
        if start:
            f.start()
        return f

    def assert_percent(self, f, name, percent, overridden=None):
        with f.admin() as a:
            rt = a.route(name)
            self.assertIsNotNone(rt, "route %s in GET /api/v1/routes" % name)
            self.assertAlmostEqual(rt["new_percent"], percent, places=6,
                                   msg="new_percent of %s" % name)
            if overridden is not None:
                self.assertEqual(rt["overridden"], overridden, "overridden flag of %s" % name)
            gauge = metric(a.metrics(), "ficus_route_new_percent", route=name)
            self.assertIsNotNone(gauge, "ficus_route_new_percent{route=%s} on /metrics" % name)
            self.assertAlmostEqual(gauge, percent, places=6, msg="ficus_route_new_percent")


# ---------------------------------------------------------------------------------------


class Split(RoutingCase):
    """2,000 users with a sticky header, several requests each, two workers."""

    def start(self, percent=30, state_file=True):
        legacy, new = self.two_backends()
        route = dict(STICKY_ROUTE, new_percent=percent)
        f = self.admin_ficus(legacy, new, state_file=state_file,
                             config={"workers": 2, "routes": [route]})
        return f, legacy, new

    def test_split_30_percent_is_sticky(self):
        f, legacy, new = self.start(30)
        place = placement(run_users(f.port, USERS, rounds=3))
        self.assertEqual(len(place), len(USERS))
        share = len(on_new(place)) / len(USERS)
        self.assertTrue(0.27 <= share <= 0.33, "share on new at 30%%: %.3f" % share)
        # Every request reached the backend the client was told about.
        self.assertEqual(len(new.requests), 3 * len(on_new(place)))
        self.assertEqual(len(legacy.requests), 3 * (len(USERS) - len(on_new(place))))
        for req in new.requests[:50] + legacy.requests[:50]:
            self.assertIsNotNone(req.header("x-user-id"))
        self.assert_percent(f, "all", 30, overridden=False)

    def test_raise_moves_only_legacy_users_and_lowering_moves_them_back(self):
        f, legacy, new = self.start(30)
        at30 = placement(run_users(f.port, USERS, rounds=1))
        with f.admin() as a:
            status, doc = a.patch("all", new_percent=60)
            self.assertEqual(status, 200, doc)
            self.assertAlmostEqual(doc["new_percent"], 60)
            self.assertIs(doc["persisted"], True)
        # Applied at once, on both workers: no waiting.
        at60 = placement(run_users(f.port, USERS, rounds=3))
        share = len(on_new(at60)) / len(USERS)
        self.assertTrue(0.57 <= share <= 0.63, "share on new at 60%%: %.3f" % share)
        back = sorted(on_new(at30) - on_new(at60))
        self.assertEqual(back, [], "users that went from new back to legacy when raising")
        moved = on_new(at60) - on_new(at30)
        self.assertGreater(len(moved), 0.25 * len(USERS), "legacy users moved to new")
        self.assert_percent(f, "all", 60, overridden=True)

        with f.admin() as a:
            status, doc = a.patch("all", new_percent=30)
            self.assertEqual(status, 200, doc)
        again = placement(run_users(f.port, USERS, rounds=1))
        self.assertEqual(again, at30, "lowering to 30 gives the placement of 30 again")

    def test_change_survives_restart(self):
        f, legacy, new = self.start(30)
        with f.admin() as a:
            status, doc = a.patch("all", new_percent=60)
            self.assertEqual(status, 200, doc)
        before = placement(run_users(f.port, USERS, rounds=2))
        state = f.read_state()
        self.assertEqual(state.get("version"), 1)
        self.assertAlmostEqual(state["routes"]["all"]["new_percent"], 60)

        f.restart()  # the same configuration, which still says 30
        with open(f.config_path) as fh:
            self.assertEqual(json.load(fh)["routes"][0]["new_percent"], 30)
        self.assert_percent(f, "all", 60, overridden=True)
        after = placement(run_users(f.port, USERS, rounds=2))
        changed = [u for u in USERS if before[u] != after[u]]
        self.assertEqual(changed, [], "users placed differently after the restart")
        share = len(on_new(after)) / len(USERS)
        self.assertTrue(0.57 <= share <= 0.63, "share on new after restart: %.3f" % share)

    def test_check_prints_state_overrides(self):
        f, legacy, new = self.start(30)
        with f.admin() as a:
            status, doc = a.patch("all", new_percent=60)
            self.assertEqual(status, 200, doc)
        f.stop()
        proc = subprocess.run([ficus_bin(), "check", "-c", f.config_path], cwd=f.workdir,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=slow(20))
        self.assertNotIn("Sanitizer", proc.stderr)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        lines = proc.stdout.splitlines()
        self.assertIn("ok", lines)
        overrides = [l for l in lines if "all" in l and "60" in l]
        self.assertTrue(overrides, "an override line for route all at 60 in:\n" + proc.stdout)

    def test_without_state_file_changes_are_not_persisted(self):
        f, legacy, new = self.start(30, state_file=None)
        self.assertTrue(f.log_lines(r"level=warn.*state_file"), "a warning about no state_file")
        with f.admin() as a:
            status, doc = a.patch("all", new_percent=45.5)
            self.assertEqual(status, 200, doc)
            self.assertIs(doc["persisted"], False)
            status, routes = a.get_json("/api/v1/routes")
            self.assertIs(routes["persisted"], False)
        self.assert_percent(f, "all", 45.5)
        f.restart()
        self.assert_percent(f, "all", 30, overridden=False)


# ---------------------------------------------------------------------------------------


class OverrideHeader(RoutingCase):
    def test_override_chooses_backend_and_is_not_forwarded(self):
        legacy, new = self.two_backends()
        f = self.admin_ficus(legacy, new, config={"routes": [STICKY_ROUTE]})
        place = placement(run_users(f.port, USERS[:300], rounds=1))
        on_legacy = [u for u in USERS[:300] if place[u] == "legacy"][:20]
        on_n = [u for u in USERS[:300] if place[u] == "new"][:20]
        self.assertEqual((len(on_legacy), len(on_n)), (20, 20))

        ka = KeepAlive(f.port)
        try:
            for users, want in ((on_legacy, "new"), (on_n, "legacy"), (on_legacy, "legacy"),
                                (on_n, "new")):
                for u in users:
                    for name in ("x-ficus-backend", "X-Ficus-Backend"):
                        status, _, body = ka.request("GET", "/", {"x-user-id": u, name: want})
                        self.assertEqual((status, body.decode()), (200, want),
                                         "user %s (split: %s) with %s: %s" % (u, place[u], name,
                                                                            want))
            # Without the header the split applies again.
            for u in on_legacy + on_n:
                status, _, body = ka.request("GET", "/", {"x-user-id": u})
                self.assertEqual(body.decode(), place[u])
        finally:
            ka.close()

        before = (len(legacy.requests), len(new.requests))
        for bad in ("both", "", "newer", "legacy,new", "1"):
            ka = KeepAlive(f.port)
            try:
                status, _, body = ka.request("GET", "/", {"x-user-id": on_n[0],
                                                          "x-ficus-backend": bad})
            finally:
                ka.close()
            self.assertEqual(status, 400, "override value %r" % bad)
        self.assertEqual((len(legacy.requests), len(new.requests)), before,
                         "a request with a bad override value reached a backend")

        seen = legacy.requests + new.requests
        self.assertGreater(len(seen), 300)
        leaked = [r for r in seen if r.header("x-ficus-backend") is not None]
        self.assertEqual(leaked, [], "the override header was forwarded")


# ---------------------------------------------------------------------------------------


class AdminAuth(RoutingCase):
    def test_missing_or_wrong_token_is_401(self):
        legacy, new = self.two_backends()
        f = self.admin_ficus(legacy, new, token="right-token", config={"routes": [STICKY_ROUTE]})
        good = f.token
        bad_auth = [None, "Bearer wrong-token", "Bearer " + good + "x", "Bearer " + good[:-1],
                    "Basic " + good, good, "Bearer", "Bearer  " + good]
        with AdminClient(f.admin_port) as a:
            for auth in bad_auth:
                headers = {} if auth is None else {"Authorization": auth}
                for method, path, body in (("PATCH", "/api/v1/routes/all", {"new_percent": 90}),
                                           ("POST", "/api/v1/routes/all/rollback", None),
                                           ("POST", "/api/v1/reload", None)):
                    status, doc = a.json_call(method, path, body, token=None, headers=headers)
                    self.assertEqual(status, 401, "%s %s with Authorization %r" % (
                        method, path, auth))
                    self.assertIn("error", doc)
            # Reading needs no token.
            self.assertEqual(a.get("/api/v1/routes")[0], 200)
        self.assert_percent(f, "all", 30, overridden=False)
        self.assertFalse(os.path.exists(f.state_path), "a refused call wrote the state file")

        with f.admin() as a:
            status, doc = a.patch("all", new_percent=90)
            self.assertEqual(status, 200, doc)
        self.assert_percent(f, "all", 90, overridden=True)

    def test_no_token_configured_is_403(self):
        legacy, new = self.two_backends()
        cases = (("token_env names an unset variable", dict(token=None, token_env=True)),
                 ("token_env names an empty variable", dict(token="", token_env=True)),
                 ("no token_env", dict(token="some-token", token_env=False)))
        for what, kw in cases:
            with self.subTest(what):
                f = self.admin_ficus(legacy, new, config={"routes": [STICKY_ROUTE]}, **kw)
                with AdminClient(f.admin_port) as a:
                    for auth in (None, "Bearer some-token", "Bearer "):
                        headers = {} if auth is None else {"Authorization": auth}
                        for method, path, body in (
                                ("PATCH", "/api/v1/routes/all", {"new_percent": 90}),
                                ("POST", "/api/v1/routes/all/rollback", None),
                                ("POST", "/api/v1/reload", None)):
                            status, doc = a.json_call(method, path, body, token=None,
                                                      headers=headers)
                            self.assertEqual(status, 403, "%s %s with %r" % (method, path, auth))
                            self.assertIn("error", doc)
                self.assert_percent(f, "all", 30, overridden=False)
                f.stop()


# ---------------------------------------------------------------------------------------


class Fallback(RoutingCase):
    ROUTES = [
        {"name": "nofb", "match": {"path_prefix": "/nofb"}, "new_percent": 100},
        {"name": "all", "new_percent": 100, "fallback": ["connect_error", "5xx"]},
    ]

    def check_fallback(self, f, legacy, new_seen, direct_status):
        n = 10
        ka = KeepAlive(f.port)
        try:
            for i in range(n):
                status, _, body = ka.request("GET", "/item/%d" % i)
                self.assertEqual((status, body.decode()), (200, "legacy"), "GET %d" % i)
            status, _, body = ka.request("HEAD", "/item/head")
            self.assertEqual(status, 200, "HEAD falls back too")
        finally:
            ka.close()
        self.assertEqual(len(legacy.requests), n + 1)
        new_seen(n + 1)

        # A POST is not idempotent: never retried on legacy.
        ka = KeepAlive(f.port)
        try:
            status, _, body = ka.request("POST", "/item/post")
        finally:
            ka.close()
        self.assertEqual(status, direct_status, "POST on a failing new: %r" % body)
        # A route without fallback answers with new's failure.
        ka = KeepAlive(f.port)
        try:
            status, _, body = ka.request("GET", "/nofb/x")
        finally:
            ka.close()
        self.assertEqual(status, direct_status, "GET on a route without fallback")
        self.assertEqual(len(legacy.requests), n + 1, "only the fallbacks reached legacy")

        with f.admin() as a:
            text = a.metrics()
            self.assertEqual(metric(text, "ficus_fallbacks_total", route="all"), n + 1)
            self.assertEqual(metric(text, "ficus_fallbacks_total", route="nofb"), 0)
            self.assertEqual(a.route("all")["fallbacks"], n + 1)

    def test_fallback_on_503(self):
        legacy = self.backend(named_backend, name="legacy")
        new = self.backend(status_backend(503), name="new")
        f = self.admin_ficus(legacy, new, config={"routes": self.ROUTES})

        def new_seen(n):
            self.assertEqual(len(new.requests), n, "new was tried first")
        self.check_fallback(f, legacy, new_seen, 503)
        # new's 503 answers: 11 fallbacks + the POST + the /nofb GET.
        self.assertEqual(len(new.requests), 13)

    def test_fallback_on_connection_refused(self):
        legacy = self.backend(named_backend, name="legacy")
        f = self.admin_ficus(legacy, refused_url(), config={"routes": self.ROUTES},
                             allow_errors=())
        self.check_fallback(f, legacy, lambda n: None, 502)


class GuardSeesNewFailures(RoutingCase):
    """The guard rolls back on new's error rate; a fallback must not hide new's errors
    from it (else a new backend answering only 503 is never rolled back)."""

    # min_comparisons equals the requests sent: the guard cannot trip before the last
    # of them reached new, however slowly a loaded machine sends them.
    GUARD = {"max_divergence_rate": 0.5, "max_error_rate": 0.1, "min_comparisons": 40,
             "window_ms": 60000}

    def run_guard(self, fallback):
        legacy = self.backend(named_backend, name="legacy")
        new = self.backend(status_backend(503), name="new")
        route = dict(STICKY_ROUTE, new_percent=100, guard=self.GUARD)
        if fallback:
            route["fallback"] = ["connect_error", "5xx"]
        f = self.admin_ficus(legacy, new, config={"routes": [route]})
        ka = KeepAlive(f.port)
        try:
            for i in range(40):
                status, _, body = ka.request("GET", "/g/%d" % i, {"x-user-id": "u%d" % i})
                self.assertEqual(status, 200 if fallback else 503)
        finally:
            ka.close()
        self.assertEqual(len(new.requests), 40)
        with f.admin() as a:
            wait_until(lambda: a.route("all")["new_percent"] == 0, 10,
                       what="the guard's rollback (new answered 40 of 40 with 503)")
            self.assertEqual(metric(a.metrics(), "ficus_rollbacks_total", route="all",
                                    reason="guard"), 1)

    def test_guard_rolls_back_on_new_errors(self):
        self.run_guard(fallback=False)

    def test_guard_rolls_back_on_new_errors_hidden_by_fallback(self):
        self.run_guard(fallback=True)

    def test_guard_rolls_back_when_new_breaks_mid_body(self):
        """A new backend that sends 200 and then cuts the body: the client saw a 200
        head, but the request is new's error and the guard rolls the route back."""
        legacy = self.backend(named_backend, name="legacy")
        new = self.backend(harness.close_mid_length(body_sent=10, total=1000), name="new")
        route = dict(STICKY_ROUTE, new_percent=100, guard=self.GUARD)
        f = self.admin_ficus(legacy, new, config={"routes": [route]})
        for i in range(40):
            with Client(f.port) as c:
                c.send(request_bytes("GET", "/g/%d" % i, headers=[("x-user-id", "u%d" % i)]))
                with self.assertRaises(IncompleteResponse):
                    c.read_response()
        self.assertEqual(len(new.requests), 40)
        with f.admin() as a:
            wait_until(lambda: a.route("all")["new_percent"] == 0, 10,
                       what="the guard's rollback (new cut 40 of 40 bodies)")
            m = a.metrics()
            self.assertEqual(metric(m, "ficus_rollbacks_total", route="all", reason="guard"), 1)
            self.assertEqual(metric(m, "ficus_requests_total", route="all", backend="new",
                                    code="error"), 40)


# ---------------------------------------------------------------------------------------


class Reload(RoutingCase):
    def config_with(self, f, routes, third=None):
        cfg = json.loads(json.dumps(f.config))
        cfg["routes"] = routes
        if third is not None:
            cfg["backends"]["third"] = {"url": third.url}
        return cfg

    def served(self, f, path, user="u-1"):
        ka = KeepAlive(f.port)
        try:
            status, _, body = ka.request("GET", path, {"x-user-id": user})
        finally:
            ka.close()
        return status, body.decode()

    def test_reload_under_load_api_and_sighup(self):
        legacy, new = self.two_backends()
        third = self.backend(named_backend, name="third")
        base = dict(STICKY_ROUTE, new_percent=50)
        f = self.admin_ficus(legacy, new, config={"workers": 2, "routes": [base]},
                             allow_errors=(r"reload rejected",))
        one = {"name": "one", "match": {"path_prefix": "/one"}, "legacy": "third",
               "new": "third"}
        two = {"name": "two", "match": {"path_prefix": "/two"}, "legacy": "third",
               "new": "third"}
        self.assertIn(self.served(f, "/one")[1], ("legacy", "new"))

        load = LoadGenerator(f.port, threads=4, path="/").start()
        try:
            load.wait_more(100)
            with f.admin() as a:
                # 1. POST /api/v1/reload adds a route (and a backend).
                f.write_config(self.config_with(f, [one, base], third))
                status, doc = a.reload()
                self.assertEqual(status, 200, doc)
                self.assertEqual(doc.get("routes"), 2)
                self.assertEqual(self.served(f, "/one"), (200, "third"))
                self.assertEqual(a.route("one")["legacy"], "third")
                load.wait_more(100)

                # 2. Bad reloads through the API: 400 with the errors, nothing changes.
                bad_docs = {
                    "semantic": json.dumps(self.config_with(
                        f, [dict(one, new_percent=150), dict(base, colour="red")], third)),
                    "syntax": '{"listen": "127.0.0.1:1", "routes": [',
                    "unknown backend": json.dumps(self.config_with(
                        f, [dict(two, new="nowhere"), one, base], third)),
                }
                for what, text in bad_docs.items():
                    f.write_config(text=text)
                    status, doc = a.reload()
                    self.assertEqual(status, 400, "%s: %r" % (what, doc))
                    self.assertIsInstance(doc.get("errors"), list, what)
                    self.assertTrue(doc["errors"], "%s: error lines" % what)
                    self.assertTrue(all(f.config_path in e for e in doc["errors"]),
                                    "%s: error lines name the file: %r" % (what, doc["errors"]))
                    self.assertIn("error", doc)
                    self.assertEqual(self.served(f, "/one"), (200, "third"), what)
                    self.assertIn(self.served(f, "/two")[1], ("legacy", "new"), what)
                    status, routes = a.get_json("/api/v1/routes")
                    self.assertEqual([r["name"] for r in routes["routes"]], ["one", "all"])
                    load.wait_more(50)
                self.assertTrue(any("new_percent" in e for e in
                                    self._last_errors(a, f, bad_docs["semantic"])))

                # 3. SIGHUP with a good file: route two appears (polled, with a deadline).
                f.reload(self.config_with(f, [two, one, base], third))
                wait_until(lambda: self.served(f, "/two") == (200, "third"), slow(10),
                           what="route two after SIGHUP")
                load.wait_more(100)

                # 4. SIGHUP with a bad file: logged, nothing changes.
                rejected = len(f.log_lines(r"reload rejected"))
                f.reload(text=bad_docs["semantic"])
                wait_until(lambda: len(f.log_lines(r"reload rejected")) > rejected, slow(10),
                           what="the rejected SIGHUP reload in the log")
                self.assertEqual(self.served(f, "/two"), (200, "third"))
                self.assertEqual(self.served(f, "/one"), (200, "third"))
                self.assertTrue(f.alive())

                # 5. A reload can remove a route again.
                f.write_config(self.config_with(f, [two, base], third))
                status, doc = a.reload()
                self.assertEqual(status, 200, doc)
                self.assertIn(self.served(f, "/one")[1], ("legacy", "new"))
                self.assertEqual(self.served(f, "/two"), (200, "third"))
                load.wait_more(100)

                # 6. A storm: good and bad reloads, through the API and SIGHUP, in turn.
                with_one = self.config_with(f, [one, two, base], third)
                without_one = self.config_with(f, [two, base], third)
                for i in range(8):
                    f.write_config(with_one)
                    self.assertEqual(a.reload()[0], 200)
                    self.assertEqual(self.served(f, "/one"), (200, "third"), "storm %d" % i)
                    f.write_config(text=bad_docs["syntax"])
                    self.assertEqual(a.reload()[0], 400)
                    f.reload(without_one)
                    wait_until(lambda: self.served(f, "/one")[1] != "third", slow(10),
                               what="route one removed by SIGHUP (storm %d)" % i)
                    rejected = len(f.log_lines(r"reload rejected"))
                    f.reload(text=bad_docs["unknown backend"])
                    wait_until(lambda: len(f.log_lines(r"reload rejected")) > rejected, slow(10),
                               what="the rejected SIGHUP reload (storm %d)" % i)
                    self.assertEqual(self.served(f, "/two"), (200, "third"), "storm %d" % i)
                load.wait_more(100)
                self.assertTrue(f.alive())
        finally:
            load.stop()
        self.assertEqual(load.failures, [], "requests failed during the reloads")
        self.assertGreater(load.ok, 500)

    def _last_errors(self, a, f, text):
        f.write_config(text=text)
        status, doc = a.reload()
        self.assertEqual(status, 400)
        return doc["errors"]

    def test_reload_keeps_runtime_override_and_applies_new_config_values(self):
        legacy, new = self.two_backends()
        other = {"name": "other", "match": {"path_prefix": "/other"}, "new_percent": 10}
        f = self.admin_ficus(legacy, new, config={"routes": [other, STICKY_ROUTE]})
        with f.admin() as a:
            status, doc = a.patch("all", new_percent=20)
            self.assertEqual(status, 200, doc)
            cfg = json.loads(json.dumps(f.config))
            cfg["routes"][0]["new_percent"] = 70  # not overridden: the file wins
            cfg["routes"][1]["new_percent"] = 90  # overridden: the state wins
            f.write_config(cfg)
            status, doc = a.reload()
            self.assertEqual(status, 200, doc)
        self.assert_percent(f, "other", 70, overridden=False)
        self.assert_percent(f, "all", 20, overridden=True)
        # A restart agrees (the state file holds the override).
        f.restart()
        self.assert_percent(f, "other", 70, overridden=False)
        self.assert_percent(f, "all", 20, overridden=True)



class ReloadOnChange(RoutingCase):
    """reload_on_change: the file is watched and reloaded as on SIGHUP when its bytes
    change, also when it changes the way a mounted Kubernetes ConfigMap does (the path
    is a symlink into a "..data" symlink that is swapped atomically to a new directory);
    a broken file is logged and the running configuration stays."""

    def configmap_swap(self, mount, cfg=None, text=None, n=[0]):
        """Writes a new ..data_N directory and swaps ..data to it with one rename."""
        n[0] += 1
        d = os.path.join(mount, "..data_%d" % n[0])
        os.mkdir(d)
        with open(os.path.join(d, "ficus.json"), "w") as f:
            f.write(text if text is not None else json.dumps(cfg, indent=2))
        tmp = os.path.join(mount, "..data_tmp")
        os.symlink(os.path.basename(d), tmp)
        os.rename(tmp, os.path.join(mount, "..data"))

    def test_configmap_symlink_swap_reloads_and_a_broken_file_is_refused(self):
        legacy, new = self.two_backends()
        f = AdminFicus(legacy, new, config={
            "reload_on_change": True,
            "routes": [{"name": "a", "match": {"path_prefix": "/a"}, "new_percent": 0}]})
        self._ficuses.append(f)
        mount = os.path.join(f.workdir, "configmap")
        os.mkdir(mount)
        self.configmap_swap(mount, f.config)
        os.symlink("..data/ficus.json", os.path.join(mount, "ficus.json"))
        f.config_path = os.path.join(mount, "ficus.json")
        f.write_config = lambda *a, **k: None  # the mount is written by configmap_swap only
        f.start()
        status, _, _ = KeepAlive(f.port).request("GET", "/b/1")
        self.assertEqual(status, 404)
        # A new route arrives by a symlink swap: served without SIGHUP or API call.
        cfg = json.loads(json.dumps(f.config))
        cfg["routes"].append({"name": "b", "match": {"path_prefix": "/b"}, "new_percent": 100})
        self.configmap_swap(mount, cfg)

        def served_by_new():
            ka = KeepAlive(f.port)
            try:
                st, _, body = ka.request("GET", "/b/1")
            finally:
                ka.close()
            return st == 200 and body.decode() == "new"
        wait_until(served_by_new, 10, what="route b after the ConfigMap swap")
        self.assertEqual(len(f.log_lines(r"configuration file changed")), 1)
        # A broken file: logged, the running configuration stays.
        self.configmap_swap(mount, text='{"routes": [')
        wait_until(lambda: f.log_lines(r"level=error.*reload rejected"), 10,
                   what="the rejected reload in the log")
        self.assertTrue(served_by_new(), "route b still served after a broken file")
        # The same bytes again (a touch, or a swap to identical content) reload nothing.
        self.configmap_swap(mount, cfg)
        wait_until(lambda: len(f.log_lines(r"configuration reloaded")) == 2, 10,
                   what="the good file reloaded again")
        self.configmap_swap(mount, cfg)
        time.sleep(2.5)  # two poll intervals: a reload of unchanged bytes would be logged
        self.assertEqual(len(f.log_lines(r"configuration reloaded")), 2)
        f.allow_errors.append(re.compile(r"reload rejected"))

    def test_off_by_default(self):
        legacy, new = self.two_backends()
        f = self.admin_ficus(legacy, new, config={
            "routes": [{"name": "a", "match": {"path_prefix": "/a"}, "new_percent": 0}]})
        cfg = json.loads(json.dumps(f.config))
        cfg["routes"].append({"name": "b", "match": {"path_prefix": "/b"}, "new_percent": 100})
        f.write_config(cfg)
        time.sleep(2.5)  # two poll intervals of a watcher that must not exist
        with f.admin() as a:
            self.assertIsNone(a.route("b"))
        self.assertEqual(f.log_lines(r"configuration file changed"), [])


# ---------------------------------------------------------------------------------------


class Rollback(RoutingCase):
    def test_rollback_sets_zero_and_persists(self):
        legacy, new = self.two_backends()
        f = self.admin_ficus(legacy, new, config={"workers": 2, "routes": [
            dict(STICKY_ROUTE, new_percent=40)]})
        with f.admin() as a:
            status, doc = a.patch("all", new_percent=70)
            self.assertEqual(status, 200, doc)
            users = USERS[:400]
            self.assertGreater(len(on_new(placement(run_users(f.port, users)))), 200)
            status, doc = a.rollback("all")
            self.assertEqual(status, 200, doc)
            self.assertEqual(doc["new_percent"], 0)
            self.assertIs(doc["persisted"], True)
            self.assertTrue(doc.get("last_rollback"), "last_rollback is set")
            text = a.metrics()
            self.assertEqual(metric(text, "ficus_rollbacks_total", route="all", reason="manual"), 1)
        self.assert_percent(f, "all", 0, overridden=True)
        self.assertEqual(on_new(placement(run_users(f.port, users, rounds=2))), set(),
                         "users on new after the rollback")
        self.assertEqual(f.read_state()["routes"]["all"]["new_percent"], 0)

        f.restart()  # the configuration says 40
        self.assert_percent(f, "all", 0, overridden=True)
        self.assertEqual(on_new(placement(run_users(f.port, users))), set())

    def ticks(self, f):
        """Seconds of samples the control thread has taken (it ticks once a second)."""
        with f.admin() as a:
            return a.route("all")["window"]["seconds"]

    def wait_ticks(self, f, n):
        start = self.ticks(f)
        wait_until(lambda: self.ticks(f) >= start + n, slow(n + 10),
                   what="%d control ticks" % n)

    def test_rollback_stops_the_ramp_also_after_a_restart(self):
        legacy, new = self.two_backends()
        route = dict(STICKY_ROUTE, new_percent=0, ramp={"steps": [10, 20, 30], "every_ms": 1000})
        f = self.admin_ficus(legacy, new, config={"routes": [route]})
        with f.admin() as a:
            wait_until(lambda: a.route("all")["new_percent"] >= 10, slow(10),
                       what="the ramp's first step")
            status, doc = a.patch("all", new_percent=50)
            self.assertIn(status, (200, 409), doc)  # 409: the route is under an active ramp
            status, doc = a.rollback("all")
            self.assertEqual(status, 200, doc)
            self.assertEqual(doc["new_percent"], 0)
            self.assertIs(doc["ramp"]["active"], False)
        self.wait_ticks(f, 3)  # more than every_ms: a running ramp would have stepped
        self.assert_percent(f, "all", 0)

        # The rollback is what the state file holds; a restart must not start the ramp
        # again from 0 and silently move users back to new.
        f.restart()
        self.wait_ticks(f, 3)
        self.assert_percent(f, "all", 0)
        with f.admin() as a:
            self.assertIs(a.route("all")["ramp"]["active"], False)
        self.assertEqual(on_new(placement(run_users(f.port, USERS[:200]))), set())


# ---------------------------------------------------------------------------------------


class AdminGarbage(RoutingCase):
    def raw(self, f, data, timeout=None, half_close=False):
        """Sends raw bytes to the admin port (then shuts down writing when half_close);
        returns (response or None, closed)."""
        timeout = timeout or slow(5)
        with Client(f.admin_port) as c:
            try:
                c.send(data)
                if half_close:
                    c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may close while we are still sending
            try:
                r = c.read_response(timeout=timeout)
            except Exception:
                r = None
            closed, _ = c.wait_closed(timeout)
            return r, closed

    def alive(self, f):
        with f.admin() as a:
            self.assertEqual(a.get_json("/healthz"), (200, {"status": "ok"}))

    def test_admin_survives_garbage(self):
        legacy, new = self.two_backends()
        # A shadow at 0 %: shadow_percent can be changed, nothing is shadowed.
        f = self.admin_ficus(legacy, new, config={"routes": [
            dict(STICKY_ROUTE, shadow={"percent": 0})]})
        rnd = random.Random(4)

        # Random bytes ending a head: 400, and the connection ends.
        for i in range(30):
            n = rnd.choice((1, 7, 64, 1000, 5000, 15000))
            data = bytes(rnd.getrandbits(8) for _ in range(n)) + b"\r\n\r\n"
            r, closed = self.raw(f, data)
            self.assertIsNotNone(r, "random bytes #%d (%d bytes): no answer" % (i, n))
            self.assertEqual(r.status, 400, "random bytes #%d" % i)
            self.assertTrue(closed, "random bytes #%d: the connection stays open" % i)
        # Random bytes, then the client stops sending: a 400 or nothing, and closed.
        for i in range(20):
            n = rnd.choice((1, 7, 64, 1000, 5000))
            r, closed = self.raw(f, bytes(rnd.getrandbits(8) for _ in range(n)), half_close=True)
            self.assertTrue(r is None or r.status == 400, "random bytes, half-closed #%d" % i)
            self.assertTrue(closed, "random bytes, half-closed #%d: still open" % i)
        # Almost HTTP.
        for data in (b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
                     b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                     b"Content-Length: 2\r\n\r\nab",
                     b"GET /healthz HTTP/1.1\nHost: a\n\n",
                     b"GET /healthz HTTP/1.1\r\nHost a\r\n\r\n",
                     b"GET\x00/healthz HTTP/1.1\r\n\r\n",
                     b"\r\n\r\n"):
            r, closed = self.raw(f, data)
            self.assertIsNotNone(r, "no answer to %r" % data)
            self.assertEqual(r.status, 400, data)
            self.assertTrue(closed, data)
        self.alive(f)

        # Pipelined requests on one connection are answered in order.
        with Client(f.admin_port) as c:
            c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"GET /api/v1/routes/all HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"PATCH /api/v1/routes/all HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
                   b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            got = [c.read_response(timeout=slow(5)).status for _ in range(4)]
            self.assertEqual(got, [200, 200, 401, 200])

        # A body over 64 KiB: 413, whether the body follows or not.
        for body_sent in (0, 70000, 200000):
            head = ("PATCH /api/v1/routes/all HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\n"
                    "Content-Length: %d\r\n\r\n" % (f.token, max(body_sent, 65537)))
            r, closed = self.raw(f, head.encode() + b"{" * body_sent)
            self.assertIsNotNone(r, "no answer to a %d-byte body" % body_sent)
            self.assertEqual(r.status, 413, body_sent)
            self.assertTrue(closed)
        # A head over the admin's limit, and a chunked body: refused.
        r, closed = self.raw(f, b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 +
                             b"\r\n\r\n")
        self.assertTrue(r is None or r.status in (400, 431), r)
        self.assertTrue(closed)
        r, closed = self.raw(f, ("PATCH /api/v1/routes/all HTTP/1.1\r\nHost: a\r\nAuthorization: "
                                 "Bearer %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "13\r\n{\"new_percent\": 99}\r\n0\r\n\r\n" % f.token).encode())
        self.assertIsNotNone(r)
        self.assertEqual(r.status, 400)
        self.alive(f)

        with f.admin() as a:
            bodies = [b"", b"{new_percent: 5", b"{\"new_percent\": 5", b"\xff\xfe", b"null",
                      b"[50]", b"\"50\"", b"50", b"{\"new_percent\": NaN}",
                      b"{\"new_percent\": 5, \"new_percent\": 6}"]
            for body in bodies:
                status, doc = a.json_call("PATCH", "/api/v1/routes/all", body)
                self.assertEqual(status, 400, "body %r" % body)
                self.assertIn("error", doc)
            for fields in ({"new_percent": 5, "colour": "red"}, {"colour": "red"},
                           {"New_percent": 5}, {}):
                status, doc = a.json_call("PATCH", "/api/v1/routes/all", fields)
                self.assertEqual(status, 400, "fields %r" % fields)
            for value in (100.5, -1, -0.001, 1e9, "50", None, True, [50], {"v": 50}):
                status, doc = a.json_call("PATCH", "/api/v1/routes/all", {"new_percent": value})
                self.assertEqual(status, 400, "new_percent %r" % (value,))
                status, doc = a.json_call("PATCH", "/api/v1/routes/all",
                                          {"new_percent": 10, "shadow_percent": value})
                self.assertEqual(status, 400, "shadow_percent %r" % (value,))
            for method, path in (("PATCH", "/api/v1/routes/nope"),
                                 ("POST", "/api/v1/routes/nope/rollback"),
                                 ("GET", "/api/v1/routes/nope"),
                                 ("GET", "/api/v1/nothing"),
                                 ("PATCH", "/api/v1/routes/all/more"),
                                 ("GET", "/nothing")):
                status, doc = a.json_call(method, path, {"new_percent": 5})
                self.assertEqual(status, 404, "%s %s" % (method, path))
            for method, path in (("DELETE", "/api/v1/routes/all"), ("PUT", "/api/v1/routes/all"),
                                 ("POST", "/api/v1/routes/all"), ("GET", "/api/v1/reload"),
                                 ("PUT", "/api/v1/reload"), ("POST", "/api/v1/routes"),
                                 ("GET", "/api/v1/routes/all/rollback"), ("PUT", "/metrics"),
                                 ("POST", "/healthz"), ("DELETE", "/")):
                status, hdrs, body = a.request(method, path, b"{}")
                self.assertEqual(status, 405, "%s %s" % (method, path))
                self.assertIn("allow", hdrs, "%s %s: an Allow header" % (method, path))
                self.assertNotIn(method, hdrs["allow"])
            # The same keep-alive connection still works after all that.
            self.assertEqual(a.get("/healthz")[0], 200)

        self.alive(f)
        self.assert_percent(f, "all", 30, overridden=False)
        with f.admin() as a:
            self.assertEqual(a.route("all")["shadow"]["percent"], 0)
        self.assertFalse(os.path.exists(f.state_path), "a refused call wrote the state file")
        # And the proxy still routes.
        self.assertEqual(len(run_users(f.port, USERS[:50])), 50)

        # The bounds are valid values (the refusals above were not blanket refusals).
        with f.admin() as a:
            for value in (0, 100, 0.1, 99.9, 100.0):
                status, doc = a.patch("all", new_percent=value, shadow_percent=value)
                self.assertEqual(status, 200, "percent %r: %r" % (value, doc))
                self.assertAlmostEqual(doc["new_percent"], value)
                self.assertAlmostEqual(doc["shadow"]["percent"], value)
            status, doc = a.patch("all", shadow_percent=0)
            self.assertEqual(status, 200, doc)
        self.assert_percent(f, "all", 100.0, overridden=True)
        self.assertAlmostEqual(f.read_state()["routes"]["all"]["new_percent"], 100.0)


# ---------------------------------------------------------------------------------------


class CorruptStateFile(RoutingCase):
    CASES = {
        "not JSON": "{\"version\": 1, \"routes\": {\"all\": {\"new_percent\": 60",
        "empty": "",
        "binary": "\x00\x01\x02garbage",
        "wrong shape": "[1, 2, 3]",
        "wrong version": "{\"version\": 2, \"routes\": {\"all\": {\"new_percent\": 60}}}",
        "no routes": "{\"version\": 1}",
        "percent out of range": "{\"version\": 1, \"routes\": {\"all\": {\"new_percent\": 150}}}",
        "percent not a number": "{\"version\": 1, \"routes\": {\"all\": {\"new_percent\": \"60\"}}}",
        "duplicate key": "{\"version\": 1, \"routes\": {\"all\": {\"new_percent\": 60}, "
                         "\"all\": {\"new_percent\": 0}}}",
    }

    def test_corrupt_state_file_refuses_start(self):
        legacy, new = self.two_backends()
        for what, text in self.CASES.items():
            with self.subTest(what):
                f = self.admin_ficus(legacy, new, start=False, config={"routes": [STICKY_ROUTE]})
                f.write_config()
                with open(f.state_path, "w") as fh:
                    fh.write(text)
                proc = subprocess.run([ficus_bin(), "-c", f.config_path], cwd=f.workdir,
                                      env=f.env(), stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=slow(20))
                self.assertNotRegex(proc.stderr, r"Sanitizer|runtime error:")
                self.assertEqual(proc.returncode, 1, "%s: exit code; stderr:\n%s" % (
                    what, proc.stderr))
                self.assertIn(f.state_path, proc.stderr, "%s: the file is named" % what)
                with open(f.state_path) as fh:
                    self.assertEqual(fh.read(), text, "%s: the state file was changed" % what)
                # `ficus check` says so too.
                proc = subprocess.run([ficus_bin(), "check", "-c", f.config_path], cwd=f.workdir,
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                      timeout=slow(20))
                self.assertNotRegex(proc.stderr, r"Sanitizer|runtime error:")
                self.assertEqual(proc.returncode, 1, "%s: check exit code:\n%s" % (
                    what, proc.stdout + proc.stderr))
                self.assertIn(f.state_path, proc.stdout + proc.stderr, "%s: check names it" % what)
                self.assertNotIn("ok", proc.stdout.splitlines(), what)

    def test_valid_state_file_from_outside_is_applied(self):
        legacy, new = self.two_backends()
        f = self.admin_ficus(legacy, new, start=False, config={"routes": [STICKY_ROUTE]})
        with open(f.state_path, "w") as fh:
            json.dump({"version": 1, "routes": {"all": {"new_percent": 12.5},
                                                "gone": {"new_percent": 50}}}, fh)
        f.start()
        self.assert_percent(f, "all", 12.5, overridden=True)


if __name__ == "__main__":
    unittest.main()
