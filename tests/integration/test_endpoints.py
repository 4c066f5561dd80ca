"""Per-endpoint readiness through the real binary (issue 14).

A legacy and a new backend serve a small JSON API: /posts/N (the same, with a
timestamp that differs on every call), /tags (the same), /users/N (new sends the id
as a string) and /comments/N (new changes the body). The endpoints API must name
exactly users and comments as diverging and the rest ready; the timestamp must be
noise well within 50 requests at the default noise settings; an acknowledged
difference must stop counting toward the guard; records carry the endpoint, mark
acknowledged items and hide redacted body values and echoed secret header values.

Comparisons finish after the client's response: every count is waited for with a
deadline before it is asserted.
"""

import itertools
import json
import threading
import unittest

from harness import FicusTestCase, sanitized, wait_until
from harness_admin import KeepAlive, slow
from harness_shadow import ShadowFicus, assert_record_shape

SECRET = "Bearer s3cr3t-t0ken-abcdef123456"


def api_app(side):
    """The API both backends serve; side is "L" or "N"."""
    seq = itertools.count()
    lock = threading.Lock()

    def handler(req, out):
        parts = req.target.split("?")[0].strip("/").split("/")
        n = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        with lock:
            tick = next(seq)
        if parts[0] == "posts":
            doc = {"id": n, "title": "post %d" % n, "generated_at": 1796166754000 + tick}
        elif parts[0] == "users":
            doc = {"id": n if side == "L" else str(n), "name": "user %d" % n}
        elif parts[0] == "comments":
            doc = {"id": n, "body": "first" if side == "L" else "second"}
        elif parts[0] == "echo":
            doc = {"id": n, "password": "%s-pw-%d" % (side, n), "side": side,
                   "auth": req.header("authorization", "")}
        else:
            doc = ["a", "b", "c"]
        out.respond(200, [("Content-Type", "application/json")], json.dumps(doc).encode())
        return None
    return handler


class Endpoints(FicusTestCase):
    WATCHDOG_SECONDS = 120 if sanitized() else 60

    def start(self, routes, token=None, config=None):
        legacy = self.backend(api_app("L"), name="legacy")
        new = self.backend(api_app("N"), name="new")
        cfg = dict(config or {})
        cfg["routes"] = routes
        kw = {"token": token, "token_env": token is not None}
        f = ShadowFicus(legacy, new, config=cfg, **kw)
        self._ficuses.append(f)
        f.start()
        return f

    def send(self, f, targets, headers=None):
        ka = KeepAlive(f.port)
        try:
            for t in targets:
                status, _, _ = ka.request("GET", t, dict(headers or {}))
                self.assertEqual(status, 200, t)
        finally:
            ka.close()

    def endpoints(self, f, route="api"):
        doc = f.api("/api/v1/routes/%s/endpoints" % route)
        self.assertEqual(doc["route"], route)
        return {e["endpoint"]: e for e in doc["endpoints"]}

    def test_verdicts_and_noise(self):
        """30 requests per endpoint at the default noise settings: the timestamp of
        posts is noise (learnt in its endpoint's warm-up), users and comments diverge
        with their reason, posts and tags are ready."""
        f = self.start([{"name": "api", "new_percent": 0, "shadow": {},
                         "diff": {"noise": {}},
                         "guard": {"min_comparisons": 10, "max_divergence_rate": 0.01}}])
        n = 30
        targets = []
        for i in range(1, n + 1):
            targets += ["/posts/%d" % i, "/tags", "/users/%d" % i, "/comments/%d" % i]
        self.send(f, targets)
        f.wait_metric("ficus_comparisons_total", len(targets), route="api")
        eps = self.endpoints(f)
        self.assertEqual(eps.pop("other")["comparisons_total"], 0)
        self.assertEqual(set(eps), {"GET /posts/{id}", "GET /tags", "GET /users/{id}",
                                    "GET /comments/{id}"}, eps.keys())
        verdicts = {name: e["verdict"] for name, e in eps.items()}
        self.assertEqual(verdicts, {"GET /posts/{id}": "ready", "GET /tags": "ready",
                                    "GET /users/{id}": "diverging",
                                    "GET /comments/{id}": "diverging"}, eps)
        self.assertIn("/id", eps["GET /users/{id}"]["reason"])
        self.assertIn("/body", eps["GET /comments/{id}"]["reason"])
        for name, e in eps.items():
            # The default warm-up (20) is out of the window: 10 comparisons each.
            self.assertEqual(e["comparisons_total"], n, name)
            self.assertEqual(e["comparisons"], n - 20, name)
            self.assertLessEqual(e["divergence_rate"], 1.0)
        self.assertEqual(eps["GET /users/{id}"]["divergent"], n - 20)
        self.assertEqual(eps["GET /posts/{id}"]["divergent"], 0)
        self.assertEqual(eps["GET /posts/{id}"]["noise"], n - 20)
        # The summary shows the timestamp as noise now.
        summary = {p["path"]: p for p in
                   f.api("/api/v1/divergences/summary?route=api")["paths"]}
        self.assertIs(summary["/generated_at"]["noise"], True, summary)
        self.assertIs(summary["/id"]["noise"], False, summary)
        # Prometheus, per endpoint.
        self.assertEqual(f.metric("ficus_endpoint_comparisons_total", route="api",
                                  endpoint="GET /users/{id}"), n)
        self.assertEqual(f.metric("ficus_endpoint_divergences_total", route="api",
                                  endpoint="GET /users/{id}"), n - 20)
        self.assertEqual(f.metric("ficus_endpoint_divergences_total", route="api",
                                  endpoint="GET /posts/{id}"), 0)
        # Records name their endpoint.
        f.api("/api/v1/divergences?limit=1")
        recs = f.records()
        self.assertTrue(recs)
        for r in recs:
            assert_record_shape(self, r)
            self.assertIn(r["endpoint"], eps)
        # An unknown route is a 404.
        status, _, _ = f.api_raw("/api/v1/routes/nope/endpoints")
        self.assertEqual(status, 404)

    def test_acknowledged_difference_does_not_count_toward_the_guard(self):
        """new takes every request and differs on /id of users: acknowledged, 20
        comparisons leave the guard quiet (the sampler saw them and the guard ran);
        once the acknowledgement is removed, 20 more roll the route back."""
        guard = {"min_comparisons": 10, "max_divergence_rate": 0.01, "window_ms": 60000}
        f = self.start([{"name": "api", "new_percent": 100, "shadow": {}, "guard": guard}],
                       token="tok-123")
        with f.admin() as a:
            status, doc = a.json_call("POST", "/api/v1/routes/api/acknowledgements",
                                      {"path": "/id", "kind": "json",
                                       "endpoint": "GET /users/{id}", "note": "ids are strings"})
            self.assertIn(status, (200, 201), doc)
            ack_id = doc["id"] if "id" in doc else doc["acknowledgement"]["id"]
        self.send(f, ["/users/%d" % i for i in range(1, 21)])
        f.wait_metric("ficus_comparisons_total", 20, route="api")

        def window_comparisons():
            with f.admin() as a:
                return a.route("api")["window"]["comparisons"]
        # The guard runs right after the sampler on every tick: once the window shows
        # the comparisons, the guard has judged them.
        wait_until(lambda: window_comparisons() >= 20, slow(5), what="the sampler's window")
        with f.admin() as a:
            r = a.route("api")
            self.assertEqual(r["new_percent"], 100, "acknowledged differences rolled back")
            self.assertEqual(r["divergences"], 0)
            self.assertEqual(r["acknowledged"], 20)
        eps = self.endpoints(f)
        self.assertEqual(eps["GET /users/{id}"]["acknowledged"], 20)
        self.assertEqual(eps["GET /users/{id}"]["verdict"], "ready")
        f.api("/api/v1/divergences?limit=1")
        recs = f.records()
        self.assertEqual(len(recs), 20, "acknowledged differences are still logged")
        for r in recs:
            self.assertEqual(r["endpoint"], "GET /users/{id}")
            self.assertEqual(r["diffs"][0]["path"], "/id")
            self.assertIs(r["diffs"][0].get("acknowledged"), True, r)

        with f.admin() as a:
            status, _, body = a.request("DELETE",
                                        "/api/v1/routes/api/acknowledgements/" + ack_id)
            self.assertEqual(status, 200, body)
        self.send(f, ["/users/%d" % i for i in range(21, 41)])
        with f.admin() as a:
            wait_until(lambda: a.route("api")["new_percent"] == 0, slow(10),
                       what="the guard's rollback once the acknowledgement is gone")

    def test_redaction_in_records(self):
        """redact_json hides a body field in the excerpts and in diff values; the
        value of the request's Authorization header, echoed by both backends, is
        masked in the excerpts."""
        f = self.start([{"name": "api", "new_percent": 0, "shadow": {}}],
                       config={"divergence_log": {"redact_json": ["/password"]}})
        self.send(f, ["/echo/%d" % i for i in range(1, 4)], {"Authorization": SECRET})
        f.wait_metric("ficus_comparisons_total", 3, route="api")
        f.api("/api/v1/divergences?limit=1")
        wait_until(lambda: len(f.records()) >= 3, slow(5), what="three records")
        token = SECRET.split(" ", 1)[1]
        for r in f.records():
            assert_record_shape(self, r)
            line = json.dumps(r)
            self.assertNotIn(token, line)
            self.assertNotIn("-pw-", line)
            diffs = {d["path"]: d for d in r["diffs"]}
            self.assertEqual(diffs["/password"]["legacy"], "[redacted]")
            self.assertEqual(diffs["/password"]["new"], "[redacted]")
            self.assertEqual(diffs["/side"]["legacy"], "L")
            for side in ("legacy", "new"):
                body = json.loads(r["bodies"][side])
                self.assertEqual(body["password"], "[redacted]")
                self.assertIn("[redacted]", body["auth"])


if __name__ == "__main__":
    unittest.main()
