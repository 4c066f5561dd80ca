"""The parallel run through the real binary (issue 5): shadow traffic, response
diffing, noise learning and the divergence log.

Both backends serve the same JSON document for /.../item/N (harness_shadow.item_doc).
New differs from legacy in ignored fields (the etags under /items/*/etag), in the order
of an unordered array (/tags) and of object keys; each test adds a known set of real
differences for known ids and checks that exactly those are reported.

Comparisons finish after the client's response, so every count is polled on /metrics
with a deadline before it is asserted exactly.
"""

import json
import os
import signal
import threading
import time
import unittest

import harness
from harness import Client, FicusTestCase, request_bytes, sanitized, stall, wait_until
from harness_admin import KeepAlive, metric, refused_url, slow
from harness_shadow import (ProcessBackend, ShadowFicus, assert_record_shape, diff_set, item_doc,
                            json_app, percentile, read_records)

ITEM_DIFF = {"ignore": ["/items/*/etag"], "unordered": ["/tags"], "match_by": {"/items": "id"}}


def route(name="items", prefix=None, shadow=None, diff=None, **extra):
    r = {"name": name, "new_percent": 0, "shadow": dict(shadow or {}),
         "diff": dict(ITEM_DIFF, **(diff or {}))}
    if prefix is not None:
        r["match"] = {"path_prefix": prefix}
    r.update(extra)
    return r


def price_differs(ids, new_price=12.5):
    """A mutate for new: /price is new_price for the given ids."""
    def mutate(n, doc, req):
        if n in ids:
            doc["price"] = new_price
    return mutate


class ShadowCase(FicusTestCase):
    WATCHDOG_SECONDS = 120 if sanitized() else 60

    def shadow_ficus(self, legacy, new, routes, log_level="info", **kw):
        cfg = kw.pop("config", {})
        cfg["routes"] = routes
        f = ShadowFicus(legacy, new, config=cfg, log_level=log_level, **kw)
        self._ficuses.append(f)
        f.start()
        return f

    def get(self, f, target, rid=None, headers=None, ka=None):
        h = dict(headers or {})
        if rid is not None:
            h["x-request-id"] = rid
        if ka is not None:
            return ka.request("GET", target, h)
        k = KeepAlive(f.port)
        try:
            return k.request("GET", target, h)
        finally:
            k.close()

    def wait_records(self, f, n, path=None):
        """Waits for n lines in the divergence log; the admin call first drains what the
        workers handed over, so the count is final once the comparisons are counted."""
        f.api("/api/v1/divergences?limit=1")
        try:
            wait_until(lambda: len(f.records(path)) >= n, slow(5))
        except AssertionError:
            raise AssertionError("%d divergence records expected, the log has %d: %r" % (
                n, len(f.records(path)), [r["id"] for r in f.records(path)]))
        return f.records(path)


# ---------------------------------------------------------------------------------------


class Divergences(ShadowCase):

    def test_known_differences_logged_exactly(self):
        """Twenty requests; new differs from legacy for six ids in known ways (and for
        every id in an ignored field, an unordered array and key order). Exactly six
        records, each with SPEC's shape and exactly the expected diffs."""
        def mutate(n, doc, req):
            if n == 3:
                doc["price"] = 12.5
            elif n == 5:
                doc["items"].insert(0, {"id": 9, "etag": "N-9", "qty": 9})  # match_by
            elif n == 7:
                del doc["name"]
            elif n == 11:
                doc["tags"] = ["d", "b", "a"]  # c removed, d added (unordered)
            elif n == 13:
                doc["items"] = [{"id": 2, "etag": "x", "qty": 5}, {"id": 1, "etag": "y", "qty": 1}]
            elif n == 17:
                doc["extra"] = True
        new_app = json_app("N", mutate=mutate,
                           headers=lambda n, req: [("X-Status-Hint", "x")] if n == 19 else [])
        legacy_app = json_app("L")
        legacy = self.backend(legacy_app, name="legacy")
        new = self.backend(new_app, name="new")
        f = self.shadow_ficus(legacy, new, [route(prefix="/shop")])

        expected = {
            3: {("json", "/price")},
            5: {("added", "/items/0")},
            7: {("removed", "/name")},
            11: {("removed", "/tags/2"), ("added", "/tags/0")},
            13: {("json", "/items/1/qty")},
            17: {("added", "/extra")},
        }
        ka = KeepAlive(f.port)
        for n in range(20):
            status, _, body = self.get(f, "/shop/item/%d?x=1" % n, rid="known-%d" % n, ka=ka)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body), item_doc(n, "L"), "the client gets legacy's answer")
        ka.close()
        self.assertEqual(f.wait_metric("ficus_comparisons_total", 20, route="items"), 20)
        recs = self.wait_records(f, len(expected))
        self.assertEqual(len(recs), len(expected),
                         "records for %s" % sorted(r["id"] for r in recs))
        by_id = {r["id"]: r for r in recs}
        self.assertEqual(set(by_id), {"known-%d" % n for n in expected})
        for n, want in expected.items():
            rec = by_id["known-%d" % n]
            assert_record_shape(self, rec)
            self.assertEqual(diff_set(rec), want, "diffs of id %d: %r" % (n, rec["diffs"]))
            self.assertEqual(rec["noise"], [])
            self.assertEqual(rec["route"], "items")
            self.assertEqual(rec["method"], "GET")
            self.assertEqual(rec["target"], "/shop/item/%d?x=1" % n)
            self.assertEqual(rec["primary"], "legacy")
            self.assertEqual(rec["legacy"]["status"], 200)
            self.assertEqual(rec["new"]["status"], 200)
            lb = legacy_app.bodies["known-%d" % n]
            nb = new_app.bodies["known-%d" % n]
            self.assertEqual(rec["legacy"]["bytes"], len(lb))
            self.assertEqual(rec["new"]["bytes"], len(nb))
            self.assertEqual(rec["bodies"]["legacy"], lb.decode())
            self.assertEqual(rec["bodies"]["new"], nb.decode())
        # Values of the diffs.
        d3 = by_id["known-3"]["diffs"][0]
        self.assertEqual((d3["legacy"], d3["new"]), (10, 12.5))
        d5 = by_id["known-5"]["diffs"][0]
        self.assertEqual((d5["legacy"], d5["new"]), (None, {"id": 9, "etag": "N-9", "qty": 9}))
        d7 = by_id["known-7"]["diffs"][0]
        self.assertEqual((d7["legacy"], d7["new"]), ("item-7", None))
        d13 = by_id["known-13"]["diffs"][0]
        self.assertEqual((d13["legacy"], d13["new"]), (2, 5))
        # Every count by kind.
        m = f.metrics()
        for kind, n in (("json", 2), ("added", 3), ("removed", 2)):
            self.assertEqual(metric(m, "ficus_divergences_total", route="items", kind=kind), n,
                             "ficus_divergences_total{kind=%s}" % kind)
        for kind in ("status", "header", "body", "error"):
            self.assertIn(metric(m, "ficus_divergences_total", route="items", kind=kind),
                          (None, 0.0), kind)
        self.assertEqual(metric(m, "ficus_shadow_total", route="items", outcome="compared"), 20)

    def test_target_that_is_not_utf8_still_gets_its_record(self):
        """A divergent request whose target holds bytes that are not UTF-8 (a Latin-1
        query string) gets its record, with those bytes written as \\xNN: a client cannot
        hide its divergences behind its bytes. Nothing is counted as dropped."""
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(json_app("N", mutate=price_differs({4, 6})), name="new")
        f = self.shadow_ficus(legacy, new, [route(prefix="/shop")])
        targets = {4: b"/shop/item/4?q=caf\xe9&x=\xfe", 6: b"/shop/item/6?ok=1"}
        for n, t in targets.items():
            with Client(f.port) as c:
                c.send(b"GET " + t + b" HTTP/1.1\r\nHost: x\r\nx-request-id: latin-%d\r\n"
                       b"Connection: close\r\n\r\n" % n)
                self.assertEqual(c.read_response().status, 200)
        self.assertEqual(f.wait_metric("ficus_comparisons_total", 2, route="items"), 2)
        recs = {r["id"]: r for r in self.wait_records(f, 2)}
        self.assertEqual(set(recs), {"latin-4", "latin-6"})
        self.assertEqual(recs["latin-4"]["target"], "/shop/item/4?q=caf\\xE9&x=\\xFE")
        self.assertEqual(diff_set(recs["latin-4"]), {("json", "/price")})
        api = f.api("/api/v1/divergences?route=items")["divergences"]
        self.assertIn("/shop/item/4?q=caf\\xE9&x=\\xFE", [r["target"] for r in api])
        self.assertEqual(f.metric("ficus_divergence_records_dropped_total"), 0)

    def test_status_and_header_differences(self):
        """New answers 503 for one id and another x-version for another: one status diff
        and one header diff. A header that is not compared (x-other) and a compared but
        ignored one (cache-control) differ on every request and make none."""
        def legacy_headers(n, req):
            return [("X-Other", "legacy-%d" % n), ("Cache-Control", "max-age=1"),
                    ("X-Version", "1")]

        def new_app(req, out):
            n = int(req.target.rsplit("/", 1)[1])
            body = json.dumps(item_doc(n, "L")).encode()
            hdrs = [("Content-Type", "application/json"), ("X-Other", "new-%d" % n),
                    ("Cache-Control", "no-store"), ("X-Version", "2" if n == 2 else "1")]
            if n == 1:
                out.respond(503, hdrs, body, reason="Service Unavailable")
            else:
                out.respond(200, hdrs, body)

        legacy = self.backend(json_app("L", headers=legacy_headers), name="legacy")
        new = self.backend(new_app, name="new")
        f = self.shadow_ficus(legacy, new, [route(diff={
            "headers": ["content-type", "x-version", "cache-control"],
            "ignore_headers": ["cache-control"]})])
        for n in range(4):
            self.assertEqual(self.get(f, "/item/%d" % n, rid="sh-%d" % n)[0], 200)
        self.assertEqual(f.wait_metric("ficus_comparisons_total", 4, route="items"), 4)
        recs = self.wait_records(f, 2)
        by_id = {r["id"]: r for r in recs}
        self.assertEqual(set(by_id), {"sh-1", "sh-2"})
        for r in recs:
            assert_record_shape(self, r)
        self.assertEqual(by_id["sh-1"]["diffs"],
                         [{"kind": "status", "path": "status", "legacy": 200, "new": 503}])
        self.assertEqual(by_id["sh-1"]["new"]["status"], 503)
        self.assertEqual(by_id["sh-2"]["diffs"],
                         [{"kind": "header", "path": "x-version", "legacy": "1", "new": "2"}])
        self.assertEqual(f.metric("ficus_divergences_total", route="items", kind="status"), 1)
        self.assertEqual(f.metric("ficus_divergences_total", route="items", kind="header"), 1)

    def test_metrics_after_known_workload(self):
        """20 requests, 5 known ids differ in one field: comparisons 20, json
        divergences 5, compared 20, divergent comparisons 5, five log lines."""
        ids = {2, 5, 9, 13, 17}
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(json_app("N", mutate=price_differs(ids)), name="new")
        f = self.shadow_ficus(legacy, new, [route()])
        ka = KeepAlive(f.port)
        for n in range(20):
            self.assertEqual(self.get(f, "/item/%d" % n)[0], 200)
        ka.close()
        self.assertEqual(f.wait_metric("ficus_comparisons_total", 20, route="items"), 20)
        self.assertEqual(f.wait_metric("ficus_divergences_total", 5, route="items", kind="json"), 5)
        self.assertEqual(f.metric("ficus_shadow_total", route="items", outcome="compared"), 20)
        self.assertEqual(f.metric("ficus_noise_total", route="items"), 0)
        for kind in ("status", "header", "added", "removed", "body", "error"):
            self.assertEqual(f.metric("ficus_divergences_total", route="items", kind=kind), 0, kind)
        with f.admin() as a:
            self.assertEqual(a.route("items")["divergences"], 5)
        recs = self.wait_records(f, 5)
        self.assertEqual(len(recs), 5)
        self.assertEqual(sorted(json.loads(r["bodies"]["legacy"])["id"] for r in recs), sorted(ids))

    def test_concurrent_clients_two_workers(self):
        """Four clients at once on two workers, with noise samples: every comparison is
        counted once, every divergent id logged once, no noise where legacy is stable."""
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(json_app("N", mutate=lambda n, doc, req: doc.update(price=1)
                                    if n % 10 == 0 else None), name="new")
        f = self.shadow_ficus(legacy, new, [route(diff={"noise": {"percent": 50,
                                                                   "threshold": 0.5}})],
                              config={"workers": 2})
        errors = []

        def client(t):
            try:
                ka = KeepAlive(f.port)
                for i in range(50):
                    n = t * 50 + i
                    status, _, body = ka.request("GET", "/item/%d" % n,
                                                 {"x-request-id": "c-%d" % n})
                    if status != 200 or json.loads(body) != item_doc(n, "L"):
                        errors.append((n, status, body[:100]))
                ka.close()
            except Exception as e:  # reported below
                errors.append(repr(e))
        threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(slow(20))
        self.assertFalse(any(t.is_alive() for t in threads), "clients still running")
        self.assertEqual(errors, [])
        self.assertEqual(f.wait_metric("ficus_comparisons_total", 200, route="items"), 200)
        self.assertEqual(f.metric("ficus_shadow_total", route="items", outcome="compared"), 200)
        self.assertEqual(f.metric("ficus_divergences_total", route="items", kind="json"), 20)
        self.assertEqual(f.metric("ficus_noise_total", route="items"), 0)
        recs = self.wait_records(f, 20)
        self.assertEqual(sorted(r["id"] for r in recs),
                         sorted("c-%d" % n for n in range(0, 200, 10)))
        for r in recs:
            self.assertEqual(diff_set(r), {("json", "/price")})
        self.assertGreater(len(legacy.requests), 200, "noise samples went to legacy as well")

    def test_gzip_json_equals_plain_json(self):
        """Legacy answers gzip-encoded JSON, new plain JSON with the same content (in
        another key order): no divergence. One id whose decoded content differs gives
        one json diff (not a byte diff of compressed data)."""
        legacy = self.backend(json_app("L", gzip_body=True), name="legacy")
        new = self.backend(json_app("N", mutate=price_differs({4})), name="new")
        legacy2 = self.backend(json_app("L"), name="legacy2")
        f = self.shadow_ficus(legacy, new, [
            route("gz", prefix="/gz"),
            route("gz2", prefix="/rev", legacy="legacy2", new="new2")],
            config={"backends": {"legacy2": {"url": legacy2.url}, "new2": {
                "url": self.backend(json_app("N", gzip_body=True), name="new2").url}}})
        for n in range(6):
            self.assertEqual(self.get(f, "/gz/item/%d" % n, rid="gz-%d" % n)[0], 200)
            self.assertEqual(self.get(f, "/rev/item/%d" % n, rid="gz2-%d" % n)[0], 200)
        self.assertEqual(f.wait_metric("ficus_comparisons_total", 6, route="gz"), 6)
        self.assertEqual(f.wait_metric("ficus_comparisons_total", 6, route="gz2"), 6)
        recs = self.wait_records(f, 1)
        self.assertEqual([r["id"] for r in recs], ["gz-4"])
        self.assertEqual(recs[0]["diffs"], [{"kind": "json", "path": "/price", "legacy": 10,
                                             "new": 12.5}])
        for r in ("gz", "gz2"):
            for kind in ("body", "error", "header"):
                self.assertEqual(f.metric("ficus_divergences_total", route=r, kind=kind), 0)
        self.assertEqual(f.metric("ficus_divergences_total", route="gz2", kind="json"), 0)


# ---------------------------------------------------------------------------------------


class Noise(ShadowCase):

    def test_timestamp_learnt_as_noise(self):
        """A /ts field that differs on every legacy call: after five legacy-vs-legacy
        samples it is noise. Then a comparison whose only difference is /ts is neither a
        divergence nor a log line; one with a real difference lists /ts under "noise"."""
        seq = [0]

        def stamp(n, doc, req):
            seq[0] += 1
            doc["ts"] = "%.6f-%d" % (time.time(), seq[0])

        def new_mutate(n, doc, req):
            stamp(n, doc, req)
            if n % 4 == 0:
                doc["price"] = 11

        legacy = self.backend(json_app("L", mutate=stamp), name="legacy")
        new = self.backend(json_app("N", mutate=new_mutate), name="new")
        f = self.shadow_ficus(legacy, new, [route(diff={"noise": {"percent": 100,
                                                                   "threshold": 0.5}})])
        # Warm-up: five samples, one comparison at a time (no real difference).
        warm = [1, 2, 3, 5, 6]
        for i, n in enumerate(warm, 1):
            self.assertEqual(self.get(f, "/item/%d" % n, rid="warm-%d" % n)[0], 200)
            f.wait_metric("ficus_comparisons_total", i, route="items")
        # Every shadowed request was also sent a second time to legacy (the sample).
        wait_until(lambda: len(legacy.requests) >= 2 * len(warm), slow(5), what="noise twins")
        self.assertEqual(len(legacy.requests), 2 * len(warm))
        f.api("/api/v1/divergences?limit=1")
        warm_recs = f.records()
        self.assertLessEqual(len(warm_recs), 5)
        for r in warm_recs:
            self.assertEqual(diff_set(r), {("json", "/ts")}, "warm-up record %r" % r)
        json_before = f.metric("ficus_divergences_total", route="items", kind="json")
        self.assertEqual(json_before, len(warm_recs))
        with f.admin() as a:
            divergent_before = a.route("items")["divergences"]
        noise_before = f.metric("ficus_noise_total", route="items")

        ids = list(range(10, 20))  # 12 and 16 have a real difference
        ka = KeepAlive(f.port)
        for n in ids:
            self.assertEqual(self.get(f, "/item/%d" % n, rid="after-%d" % n, ka=ka)[0], 200)
        ka.close()
        f.wait_metric("ficus_comparisons_total", len(warm) + len(ids), route="items")
        self.assertEqual(f.metric("ficus_noise_total", route="items") - noise_before, len(ids))
        self.assertEqual(f.metric("ficus_divergences_total", route="items", kind="json")
                         - json_before, 2, "only /price counts, /ts is noise")
        with f.admin() as a:
            self.assertEqual(a.route("items")["divergences"] - divergent_before, 2)
        recs = self.wait_records(f, len(warm_recs) + 2)
        new_recs = recs[len(warm_recs):]
        self.assertEqual(sorted(r["id"] for r in new_recs), ["after-12", "after-16"],
                         "noise-only comparisons are not logged")
        for r in new_recs:
            assert_record_shape(self, r)
            self.assertEqual(r["diffs"], [{"kind": "json", "path": "/price", "legacy": 10,
                                           "new": 11}])
            self.assertEqual(r["noise"], ["/ts"])
        summary = {p["path"]: p for p in f.api("/api/v1/divergences/summary?route=items")["paths"]}
        self.assertIn("/ts", summary)
        self.assertIs(summary["/ts"]["noise"], True, summary["/ts"])
        self.assertIs(summary["/price"]["noise"], False, summary["/price"])
        self.assertEqual(summary["/price"]["count"], 2)
        self.assertIn(summary["/price"]["example_id"], ("after-12", "after-16"))


# ---------------------------------------------------------------------------------------


class Secrets(ShadowCase):

    SECRETS = ("SECRET-TOKEN-XYZ", "SECRET-COOKIE-XYZ", "SECRET-SETCOOKIE-XYZ")

    def test_credentials_never_logged(self):
        """Authorization, Cookie and Set-Cookie values reach the backends and the client
        but appear nowhere in the divergence log, ficus's stdout/stderr (debug level) or
        the admin API, although a compared set-cookie header differs."""
        def cookie(side):
            def headers(n, req):
                return [("Set-Cookie", "sid=SECRET-SETCOOKIE-XYZ-%s; HttpOnly" % side)]
            return headers
        legacy = self.backend(json_app("L", headers=cookie("L")), name="legacy")
        new = self.backend(json_app("N", headers=cookie("N"), mutate=price_differs({1})),
                           name="new")
        f = self.shadow_ficus(legacy, new, [route(diff={"headers": ["content-type",
                                                                     "set-cookie"]})],
                              log_level="debug")
        secret_headers = {"Authorization": "Bearer SECRET-TOKEN-XYZ",
                          "Cookie": "session=SECRET-COOKIE-XYZ"}
        for n in range(3):
            status, hdrs, _ = self.get(f, "/item/%d" % n, rid="sec-%d" % n, headers=secret_headers)
            self.assertEqual(status, 200)
            self.assertIn("SECRET-SETCOOKIE-XYZ-L", hdrs.get("set-cookie", ""),
                          "the client gets legacy's Set-Cookie")
        f.wait_metric("ficus_comparisons_total", 3, route="items")
        recs = self.wait_records(f, 3)
        # The backends did see the credentials (they passed through ficus).
        for b in (legacy, new):
            wait_until(lambda: len(b.requests) >= 3, slow(5), what="requests at " + b.name)
            self.assertEqual(b.requests[0].header("authorization"), "Bearer SECRET-TOKEN-XYZ")
            self.assertEqual(b.requests[0].header("cookie"), "session=SECRET-COOKIE-XYZ")
        # The differing set-cookie is reported, its values are not.
        for r in recs:
            self.assertIn(("header", "set-cookie"), diff_set(r), r)
        with open(f.divlog_path, "rb") as fh:
            outputs = {"divergence log": fh.read().decode("utf-8", "replace")}
        for path in ("/api/v1/divergences", "/api/v1/divergences?route=items&limit=10",
                     "/api/v1/divergences/summary", "/api/v1/routes", "/metrics", "/"):
            status, _, body = f.api_raw(path)
            self.assertEqual(status, 200, path)
            outputs["admin " + path] = body.decode("utf-8", "replace")
        f.stop()
        outputs["stdout"] = f.stdout()
        outputs["stderr"] = f.stderr()
        for where, text in outputs.items():
            for s in self.SECRETS:
                i = text.find(s)
                self.assertEqual(i, -1, "%s leaks %s: ...%s..." % (where, s, text[i - 200:i + 50]))


# ---------------------------------------------------------------------------------------


class Isolation(ShadowCase):
    """The client's exchange never waits for the shadow."""

    def test_slow_new_backend_leaves_latency_unchanged(self):
        """New answers 200 ms late. The p99 of requests on a shadowed route is compared,
        as a ratio, with the p99 of the same requests on an unshadowed route measured in
        the same run (interleaved), and must also stay well below the 200 ms."""
        # Both backends run in child processes: their threads must not take the GIL
        # from the client thread that measures.
        legacy = ProcessBackend("L")
        self._backends.append(legacy)
        new = ProcessBackend("N", delay_ms=200)
        self._backends.append(new)
        f = self.shadow_ficus(legacy, new, [
            route("shadowed", prefix="/s", shadow={"max_inflight": 1000}),
            {"name": "plain", "new_percent": 0, "match": {"path_prefix": "/p"}}])
        ka_s, ka_p = KeepAlive(f.port), KeepAlive(f.port)
        for i in range(5):  # warm-up: connections to both backends exist
            for ka, prefix in ((ka_s, "/s"), (ka_p, "/p")):
                self.assertEqual(ka.request("GET", "%s/item/%d" % (prefix, i))[0], 200)
        sent = 5
        # A round is 100 interleaved pairs (the order inside a pair alternates). The host
        # is shared, so a load spike can inflate one round's p99: up to three rounds are
        # measured and one must pass. A client that waits for the shadow (or pays for it
        # on every request) fails every round alike.
        floor = 0.010 if sanitized() else 0.004  # jitter floor for sub-ms baselines
        rounds = []
        for _ in range(3):
            with_s, without_s = [], []
            for i in range(100):
                pair = [(ka_s, "/s", with_s), (ka_p, "/p", without_s)]
                for ka, prefix, out in (pair if i % 2 == 0 else pair[::-1]):
                    t0 = time.perf_counter()
                    status, _, body = ka.request("GET", "%s/item/%d" % (prefix, i))
                    out.append(time.perf_counter() - t0)
                    self.assertEqual(status, 200)
            sent += 100
            p99_with, p99_without = percentile(with_s, 99), percentile(without_s, 99)
            ratio = p99_with / max(p99_without, floor)
            rounds.append("p99 with shadow %.1f ms, without %.1f ms, ratio %.2f "
                          "(medians %.2f / %.2f ms)" % (
                              p99_with * 1000, p99_without * 1000, ratio,
                              percentile(with_s, 50) * 1000, percentile(without_s, 50) * 1000))
            if ratio < 1.5 and p99_with < 0.1:
                break
        ka_s.close()
        ka_p.close()
        if os.environ.get("FICUS_IT_VERBOSE"):
            print("\n" + "\n".join(rounds))
        # The shadows really went out and new answered every one (late).
        self.assertEqual(f.wait_metric("ficus_shadow_total", sent, route="shadowed",
                                       outcome="compared", timeout=slow(10)), sent)
        self.assertEqual(f.metric("ficus_comparisons_total", route="shadowed"), sent)
        self.assertEqual(f.metric("ficus_comparisons_total", route="plain"), 0)
        self.assertTrue(ratio < 1.5 and p99_with < 0.1,
                        "client latency depends on the shadow in every round:\n" +
                        "\n".join(rounds))

    def test_max_inflight_skips_never_queues(self):
        """max_inflight 2 and a stalled new backend: every request is answered by legacy
        at once, two shadows are in flight, the rest are counted skipped_inflight and
        never sent later. Once the two time out, shadowing resumes."""
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(stall, name="new")
        f = self.shadow_ficus(legacy, new, [route(shadow={"max_inflight": 2,
                                                          "timeout_ms": 1500})])
        ka = KeepAlive(f.port)
        times = []
        for n in range(10):
            t0 = time.perf_counter()
            status, _, body = self.get(f, "/item/%d" % n, ka=ka)
            times.append(time.perf_counter() - t0)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(body), item_doc(n, "L"))
        ka.close()
        self.assertLess(max(times), 0.75, "requests waited on the stalled shadow: %r" % times)
        self.assertEqual(f.wait_metric("ficus_shadow_total", 8, route="items",
                                       outcome="skipped_inflight"), 8)
        wait_until(lambda: len(new.requests) >= 2, slow(5), what="2 shadows at new")
        # The skipped ones are never queued: after the two time out, new has seen two.
        self.assertEqual(f.wait_metric("ficus_shadow_total", 2, route="items", outcome="timeout",
                                       timeout=slow(6)), 2)
        self.assertEqual(len(new.requests), 2)
        self.assertEqual(
            f.metric("ficus_shadow_total", route="items", outcome="skipped_inflight"), 8)
        # The slots are free again.
        self.assertEqual(self.get(f, "/item/99")[0], 200)
        wait_until(lambda: len(new.requests) >= 3, slow(5), what="a shadow after the timeouts")
        self.assertEqual(
            f.metric("ficus_shadow_total", route="items", outcome="skipped_inflight"), 8)

    def test_shadow_timeout_is_an_error_diff(self):
        """New stalls past shadow.timeout_ms 300: the client gets legacy's answer at once,
        the record has one diff of kind error for new, and outcome="timeout" counts it."""
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(stall, name="new")
        f = self.shadow_ficus(legacy, new, [
            route(shadow={"timeout_ms": 300}, match={"path_prefix": "/item"}),
            route("down", prefix="/down", new="gone")],
            config={"backends": {"gone": {"url": refused_url()}}},
            allow_errors=(r"mod=upstream",))
        for n in range(2):
            t0 = time.perf_counter()
            status, _, _ = self.get(f, "/item/%d" % n, rid="to-%d" % n)
            self.assertEqual(status, 200)
            self.assertLess(time.perf_counter() - t0, 0.25, "the client waited for the shadow")
        self.assertEqual(
            f.wait_metric("ficus_shadow_total", 2, route="items", outcome="timeout"), 2)
        self.assertEqual(f.metric("ficus_comparisons_total", route="items"), 2)
        self.assertEqual(f.metric("ficus_divergences_total", route="items", kind="error"), 2)
        self.assertEqual(f.metric("ficus_shadow_total", route="items", outcome="compared"), 0)
        recs = self.wait_records(f, 2)
        self.assertEqual(sorted(r["id"] for r in recs), ["to-0", "to-1"])
        for r in recs:
            assert_record_shape(self, r, allow_error_side=True)
            self.assertEqual(len(r["diffs"]), 1, r["diffs"])
            d = r["diffs"][0]
            self.assertEqual((d["kind"], d["path"]), ("error", "new"))
            self.assertIn("timeout", json.dumps(d["new"]))
            self.assertEqual(r["legacy"]["status"], 200)
            self.assertGreaterEqual(r["new"]["ms"], 250)
        # A new backend that refuses connections: outcome error, an error diff.
        self.assertEqual(self.get(f, "/down/item/1", rid="down-1")[0], 200)
        self.assertEqual(f.wait_metric("ficus_shadow_total", 1, route="down", outcome="error"), 1)
        self.assertEqual(f.metric("ficus_shadow_total", route="down", outcome="timeout"), 0)
        recs = self.wait_records(f, 3)
        down = [r for r in recs if r["id"] == "down-1"]
        self.assertEqual(len(down), 1)
        self.assertEqual([(d["kind"], d["path"]) for d in down[0]["diffs"]], [("error", "new")])


    def test_pooled_shadow_connection_dropped_is_retried(self):
        """New drops every connection at its second request without a byte of answer
        (a keep-alive timeout racing the reuse). Shadows of GET skip the liveness peek
        and are sent once more on a fresh connection instead: every comparison is
        made, none is an error, and new saw each dropped attempt."""
        answer = json_app("L")

        def drop_reused(req, out):
            if req.index >= 1:
                out.close()
                return "close"
            return answer(req, out)
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(drop_reused, name="new")
        f = self.shadow_ficus(legacy, new, [route(match={"path_prefix": "/item"})])
        ka = KeepAlive(f.port)
        try:
            for n in range(4):
                self.assertEqual(self.get(f, "/item/%d" % n, rid="rt-%d" % n, ka=ka)[0], 200)
                f.wait_metric("ficus_shadow_total", n + 1, route="items", outcome="compared")
        finally:
            ka.close()
        self.assertEqual(f.metric("ficus_shadow_total", route="items", outcome="error"), 0)
        self.assertEqual(f.metric("ficus_divergences_total", route="items", kind="error"), 0)
        self.assertEqual(len([r for r in new.requests if r.index >= 1]), 3,
                         "the 2nd-4th shadows were not sent on a pooled connection first")


# ---------------------------------------------------------------------------------------


class MemoryBudget(ShadowCase):
    """limits.shadow_memory_bytes bounds what every comparison of the process holds: with
    100 clients at once each asking for a 4 MiB JSON document (both backends answer it),
    comparisons beyond the budget are skipped and counted (skipped_memory), every client
    still gets its whole answer, and ficus's resident memory stays under the budget plus
    a margin (read buffers, the diff's parse of one pair at a time)."""

    BUDGET = 64 << 20
    MARGIN = 48 << 20
    CLIENTS = 100
    WATCHDOG_SECONDS = 300 if sanitized() else 180

    def test_rss_stays_under_the_budget(self):
        doc = {"items": [{"id": i, "name": "item-%d" % i, "tags": ["a", "b"], "price": i / 7}
                         for i in range(48000)]}
        body = json.dumps(doc).encode()
        body += b" " * ((4 << 20) - len(body))  # exactly 4 MiB, still JSON
        self.assertEqual(len(body), 4 << 20)
        handler = harness.respond_with(200, [("Content-Type", "application/json")], body)
        legacy = self.backend(handler, name="legacy", keep_body=0)
        new = self.backend(handler, name="new", keep_body=0)
        f = self.shadow_ficus(legacy, new, [route(shadow={"max_body_bytes": 8 << 20,
                                                          "max_inflight": 1000,
                                                          "timeout_ms": 60000})],
                              config={"limits": {"shadow_memory_bytes": self.BUDGET},
                                      # 800 MB from Python backends on a busy machine:
                                      # slow, and not what is tested here.
                                      "timeouts": {"upstream_ms": 120000}})
        self.assertEqual(self.get(f, "/item/0")[0], 200)  # warm: pools, buffers
        f.wait_metric("ficus_comparisons_total", 1, route="items")
        base = f.rss_kb()
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], f.rss_kb())
                except (OSError, AssertionError):
                    return
                time.sleep(0.01)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        got = []
        lock = threading.Lock()
        start = threading.Barrier(self.CLIENTS)

        def client(n):
            start.wait(30)
            with Client(f.port, timeout=60) as c:
                c.send(request_bytes("GET", "/item/%d" % n))
                r = c.read_response(timeout=60)
                with lock:
                    got.append((r.status, len(r.body)))
        threads = [threading.Thread(target=client, args=(n,), daemon=True)
                   for n in range(1, self.CLIENTS + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(sorted(got), [(200, 4 << 20)] * self.CLIENTS)

        def accounted():
            m = f.metrics()
            return sum(metric(m, "ficus_shadow_total", route="items", outcome=o) or 0
                       for o in ("compared", "skipped_memory", "skipped_inflight",
                                 "skipped_queue", "error", "timeout"))
        wait_until(lambda: accounted() == self.CLIENTS + 1, slow(60),
                   what="every shadow counted")
        stop.set()
        sampler.join(2)
        m = f.metrics()
        skipped = metric(m, "ficus_shadow_total", route="items", outcome="skipped_memory")
        compared = metric(m, "ficus_shadow_total", route="items", outcome="compared")
        growth = (peak[0] - base) * 1024
        if os.environ.get("FICUS_IT_VERBOSE"):
            print("\n[budget] compared %d, skipped_memory %d, rss growth %d MiB"
                  % (compared, skipped, growth >> 20))
        self.assertGreater(skipped, 0, "the budget was never reached")
        self.assertGreater(compared, 1, "nothing was compared")
        if not sanitized():  # ASan's allocator keeps freed memory in quarantine
            self.assertLess(growth, self.BUDGET + self.MARGIN, "RSS grew %d MiB with a %d MiB "
                            "budget" % (growth >> 20, self.BUDGET >> 20))
        # The budget is given back: a comparison after the storm goes through.
        self.assertEqual(self.get(f, "/item/999")[0], 200)
        f.wait_metric("ficus_shadow_total", compared + 1, route="items", outcome="compared")


class Admission(ShadowCase):
    """Admission before work: with a 1 MiB budget and comparisons that hold about
    600 KiB each (two 300 KiB JSON bodies), a burst of 20 clients at once gets every
    answer, at most a few shadows are sent, and every shadow not compared was
    skipped before it was sent: the new backend saw exactly as many shadows as
    were compared. What a comparison holds is learnt from the ones before, so the
    burst is admitted against it from the first loop turn, not against the budget
    before any capture has grown."""

    CLIENTS = 20

    def test_burst_over_the_budget_is_skipped_before_it_is_sent(self):
        body = json.dumps({"rows": [{"id": i, "name": "item-%d" % i, "price": i / 7}
                                    for i in range(5000)]}).encode()
        body += b" " * ((300 << 10) - len(body))
        self.assertEqual(len(body), 300 << 10)
        handler = harness.respond_with(200, [("Content-Type", "application/json")], body)
        legacy = self.backend(handler, name="legacy", keep_body=0)
        new = self.backend(handler, name="new", keep_body=0)
        f = self.shadow_ficus(legacy, new, [route(shadow={"max_body_bytes": 1 << 20,
                                                          "max_inflight": 1000})],
                              config={"limits": {"shadow_memory_bytes": 1 << 20}})
        ka = KeepAlive(f.port)
        for n in range(24):  # one at a time: each is compared, and teaches the size
            self.assertEqual(self.get(f, "/item/%d" % n)[0], 200)
            f.wait_metric("ficus_shadow_total", n + 1, route="items", outcome="compared")
        ka.close()
        sent_before = len(new.requests)
        self.assertEqual(sent_before, 24)
        got = []
        lock = threading.Lock()
        start = threading.Barrier(self.CLIENTS)

        def client(n):
            start.wait(30)
            with Client(f.port, timeout=30) as c:
                c.send(request_bytes("GET", "/item/%d" % n))
                r = c.read_response(timeout=30)
                with lock:
                    got.append((r.status, len(r.body)))
        threads = [threading.Thread(target=client, args=(n,), daemon=True)
                   for n in range(100, 100 + self.CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(sorted(got), [(200, len(body))] * self.CLIENTS)

        def outcomes():
            m = f.metrics()
            return {o: metric(m, "ficus_shadow_total", route="items", outcome=o) or 0
                    for o in ("compared", "skipped_memory", "skipped_inflight", "skipped_queue",
                              "error", "timeout")}
        wait_until(lambda: sum(outcomes().values()) == 24 + self.CLIENTS, slow(30),
                   what="every shadow counted")
        o = outcomes()
        self.assertGreater(o["skipped_memory"], 0, o)
        self.assertEqual(o["error"] + o["timeout"], 0, o)
        # Every shadow that went out was compared: none was sent and then dropped.
        self.assertEqual(len(new.requests) - sent_before, o["compared"] - 24, o)


class Methods(ShadowCase):

    def test_shadow_request_carries_marker_and_request_id(self):
        """The shadow (and the noise twin) carry x-ficus-shadow: 1 and the primary's
        x-request-id, given or generated; the primary does not carry the marker. With new
        as the primary (override), legacy is the shadow."""
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(json_app("N", mutate=price_differs({7})), name="new")
        f = self.shadow_ficus(legacy, new, [route(override_header="x-ficus-backend", diff={
            "noise": {"percent": 100, "threshold": 0.5}})])
        self.assertEqual(self.get(f, "/item/1", rid="given-id-1")[0], 200)
        wait_until(lambda: len(new.requests) >= 1 and len(legacy.requests) >= 2, slow(5),
                   what="primary, twin and shadow")
        prim = [r for r in legacy.requests if r.header("x-ficus-shadow") is None]
        twin = [r for r in legacy.requests if r.header("x-ficus-shadow") is not None]
        self.assertEqual(len(prim), 1)
        self.assertEqual(len(twin), 1)
        self.assertEqual(twin[0].header("x-ficus-shadow"), "1")
        self.assertEqual(new.requests[0].header("x-ficus-shadow"), "1")
        for r in (prim[0], twin[0], new.requests[0]):
            self.assertEqual(r.header("x-request-id"), "given-id-1")
            self.assertEqual(r.target, "/item/1")
            self.assertEqual(r.method, "GET")
        legacy.clear()
        new.clear()
        # No incoming id: the generated one is the same on every side.
        self.assertEqual(self.get(f, "/item/2")[0], 200)
        wait_until(lambda: len(new.requests) >= 1 and len(legacy.requests) >= 2, slow(5),
                   what="primary, twin and shadow")
        ids = {r.header("x-request-id") for r in legacy.requests + new.requests}
        self.assertEqual(len(ids), 1, ids)
        self.assertTrue(ids.pop())
        legacy.clear()
        new.clear()
        # New as the primary: legacy gets the shadow (and the twin), new does not.
        status, _, body = self.get(f, "/item/7", rid="on-new-7",
                                   headers={"x-ficus-backend": "new"})
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["price"], 12.5, "new answered")
        wait_until(lambda: len(legacy.requests) >= 2, slow(5), what="shadow and twin at legacy")
        self.assertIsNone(new.requests[0].header("x-ficus-shadow"))
        self.assertEqual([r.header("x-ficus-shadow") for r in legacy.requests], ["1", "1"])
        f.wait_metric("ficus_comparisons_total", 3, route="items")
        recs = self.wait_records(f, 1)
        self.assertEqual([r["id"] for r in recs], ["on-new-7"])
        self.assertEqual(recs[0]["primary"], "new")
        self.assertEqual(recs[0]["diffs"], [{"kind": "json", "path": "/price", "legacy": 10,
                                             "new": 12.5}])

    def test_post_shadowed_only_when_listed(self):
        """POST on a route with the default shadow methods is not shadowed (counted
        skipped_method); on a route listing POST the new backend gets the same body with
        x-ficus-shadow: 1."""
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(json_app("N"), name="new")
        f = self.shadow_ficus(legacy, new, [
            route("safe", prefix="/safe"),
            route("writes", prefix="/writes", shadow={"methods": ["GET", "POST"]})])
        body = json.dumps({"order": 42, "note": "x" * 300}).encode()
        ka = KeepAlive(f.port)
        status, _, _ = ka.request("POST", "/safe/item/1", {"x-request-id": "post-safe"}, body)
        self.assertEqual(status, 200)
        status, _, _ = ka.request("POST", "/writes/item/2", {"x-request-id": "post-writes"}, body)
        self.assertEqual(status, 200)
        # A GET on the safe route afterwards: it is shadowed, the POST before it was not.
        status, _, _ = ka.request("GET", "/safe/item/3", {"x-request-id": "get-safe"})
        self.assertEqual(status, 200)
        ka.close()
        self.assertEqual(f.wait_metric("ficus_shadow_total", 1, route="safe",
                                       outcome="skipped_method"), 1)
        f.wait_metric("ficus_comparisons_total", 1, route="safe")
        f.wait_metric("ficus_comparisons_total", 1, route="writes")
        wait_until(lambda: len(new.requests) >= 2, slow(5), what="2 shadows at new")
        seen = {r.header("x-request-id"): r for r in new.requests}
        self.assertEqual(set(seen), {"post-writes", "get-safe"})
        r = seen["post-writes"]
        self.assertEqual(r.method, "POST")
        self.assertEqual(r.header("x-ficus-shadow"), "1")
        self.assertEqual(r.body, body)
        self.assertEqual(r.body_len, len(body))
        self.assertEqual(
            f.metric("ficus_shadow_total", route="writes", outcome="skipped_method"), 0)
        self.assertEqual(f.metric("ficus_shadow_total", route="writes", outcome="compared"), 1)

    def test_body_over_max_not_shadowed(self):
        """shadow.max_body_bytes 1000: a body over it (Content-Length or chunked, 1001 or
        5000 bytes) is not shadowed and counts skipped_body; bodies up to 1000 bytes are
        shadowed whole."""
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(json_app("N"), name="new")
        f = self.shadow_ficus(legacy, new, [route(shadow={"methods": ["POST"],
                                                          "max_body_bytes": 1000})])

        def cl(rid, size):
            return request_bytes("POST", "/item/1", [("x-request-id", rid)], body_of(rid, size))

        def chunked(rid, size, pieces):
            data = body_of(rid, size)
            step = (len(data) + pieces - 1) // pieces
            out = b"".join(b"%x\r\n" % len(data[i:i + step]) + data[i:i + step] + b"\r\n"
                           for i in range(0, len(data), step)) + b"0\r\n\r\n"
            return request_bytes("POST", "/item/1", [("x-request-id", rid),
                                                     ("Transfer-Encoding", "chunked")]) + out

        def body_of(rid, size):
            return (rid.encode() + b":" + b"x" * size)[:size]

        reqs = [  # (id, raw request, body size, shadowed)
            ("cl-500", cl("cl-500", 500), 500, True),
            ("cl-5000", cl("cl-5000", 5000), 5000, False),
            ("cl-1000", cl("cl-1000", 1000), 1000, True),
            ("cl-1001", cl("cl-1001", 1001), 1001, False),
            ("ch-5000", chunked("ch-5000", 5000, 5), 5000, False),
            ("ch-500", chunked("ch-500", 500, 3), 500, True),
            ("ch-1000", chunked("ch-1000", 1000, 4), 1000, True),
            ("ch-1001", chunked("ch-1001", 1001, 2), 1001, False),
        ]
        with Client(f.port) as c:
            for rid, raw, _, _ in reqs:
                c.send(raw)
                self.assertEqual(c.read_response().status, 200, rid)
        n_skip = sum(1 for r in reqs if not r[3])
        n_shadow = len(reqs) - n_skip
        self.assertEqual(f.wait_metric("ficus_shadow_total", n_skip, route="items",
                                       outcome="skipped_body"), n_skip)
        self.assertEqual(f.wait_metric("ficus_shadow_total", n_shadow, route="items",
                                       outcome="compared"), n_shadow)
        wait_until(lambda: len(legacy.requests) >= len(reqs), slow(5), what="requests at legacy")
        self.assertEqual([r.body_len for r in legacy.requests], [r[2] for r in reqs])
        seen = {r.header("x-request-id"): r for r in new.requests}
        self.assertEqual(set(seen), {r[0] for r in reqs if r[3]})
        for rid, _, size, _ in reqs:
            if rid in seen:
                self.assertEqual(seen[rid].body, body_of(rid, size), rid)
                self.assertEqual(seen[rid].header("x-ficus-shadow"), "1")
        self.assertEqual(f.metric("ficus_shadow_total", route="items", outcome="skipped_body"),
                         n_skip)
        self.assertEqual(f.metric("ficus_shadow_total", route="items", outcome="error"), 0)


# ---------------------------------------------------------------------------------------


class AdminAPI(ShadowCase):

    def test_divergences_newest_first_with_filters(self):
        """Six divergences over two routes in a known order: /api/v1/divergences is
        newest first and honours route= and limit= alone and together; the summary counts
        per path and route."""
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(json_app("N", mutate=price_differs(set(range(100)))), name="new")
        f = self.shadow_ficus(legacy, new, [route("ra", prefix="/ra"), route("rb", prefix="/rb")])
        order = [("ra", 1), ("ra", 2), ("rb", 3), ("ra", 4), ("rb", 5), ("ra", 6)]
        done = {"ra": 0, "rb": 0}
        for r, n in order:
            self.assertEqual(self.get(f, "/%s/item/%d" % (r, n), rid="adm-%d" % n)[0], 200)
            done[r] += 1
            f.wait_metric("ficus_comparisons_total", done[r], route=r)
            wait_until(lambda: any(x["id"] == "adm-%d" % n for x in
                                   f.api("/api/v1/divergences?limit=1")["divergences"]),
                       slow(5), what="record adm-%d" % n)

        def ids(q):
            doc = f.api("/api/v1/divergences" + q)
            for rec in doc["divergences"]:
                assert_record_shape(self, rec)
            return [rec["id"] for rec in doc["divergences"]]
        self.assertEqual(ids(""), ["adm-6", "adm-5", "adm-4", "adm-3", "adm-2", "adm-1"])
        self.assertEqual(ids("?limit=3"), ["adm-6", "adm-5", "adm-4"])
        self.assertEqual(ids("?route=ra"), ["adm-6", "adm-4", "adm-2", "adm-1"])
        self.assertEqual(ids("?route=ra&limit=2"), ["adm-6", "adm-4"])
        self.assertEqual(ids("?limit=1&route=rb"), ["adm-5"])
        self.assertEqual(ids("?route=rb"), ["adm-5", "adm-3"])
        self.assertEqual(ids("?route=nosuch"), [])
        for bad in ("?limit=0", "?limit=abc", "?limit=100000"):
            status, _, body = f.api_raw("/api/v1/divergences" + bad)
            self.assertEqual(status, 400, bad)
            self.assertIn("error", json.loads(body))
        # The records the API shows are the ones in the file.
        file_ids = [r["id"] for r in f.records()]
        self.assertEqual(file_ids, ["adm-%d" % n for _, n in order])
        summary = f.api("/api/v1/divergences/summary")["paths"]
        got = {(p["route"], p["path"]): p for p in summary}
        self.assertEqual(set(got), {("ra", "/price"), ("rb", "/price")})
        self.assertEqual(got[("ra", "/price")]["count"], 4)
        self.assertEqual(got[("rb", "/price")]["count"], 2)
        self.assertIs(got[("ra", "/price")]["noise"], False)
        self.assertEqual(got[("ra", "/price")]["example_id"], "adm-6")
        self.assertEqual(got[("rb", "/price")]["example_id"], "adm-5")
        self.assertAlmostEqual(got[("ra", "/price")]["rate"], 1.0)
        only_rb = f.api("/api/v1/divergences/summary?route=rb")["paths"]
        self.assertEqual([(p["route"], p["path"], p["count"]) for p in only_rb],
                         [("rb", "/price", 2)])


# ---------------------------------------------------------------------------------------


class LogFile(ShadowCase):

    def divergent_pair(self):
        legacy = self.backend(json_app("L"), name="legacy")
        new = self.backend(json_app("N", mutate=price_differs(set(range(1000)))), name="new")
        return legacy, new

    def send_one_by_one(self, f, ids, prefix="rot"):
        """One divergent request at a time, each comparison counted before the next
        starts, so that the log's order is the sending order."""
        ka = KeepAlive(f.port)
        base = f.metric("ficus_comparisons_total", route="items")
        for i, n in enumerate(ids, 1):
            self.assertEqual(self.get(f, "/item/%d" % n, rid="%s-%d" % (prefix, n), ka=ka)[0], 200)
            f.wait_metric("ficus_comparisons_total", base + i, route="items")
        ka.close()

    def test_rotation_keeps_two(self):
        """max_bytes 4096, keep 2: the log rotates into path.1 and path.2, never a
        path.3; no file passes max_bytes; the kept records are the newest, in order."""
        legacy, new = self.divergent_pair()
        f = self.shadow_ficus(legacy, new, [route()], config={
            "divergence_log": {"max_bytes": 4096, "keep": 2, "body_bytes": 64}})
        total = 40
        self.send_one_by_one(f, range(total))
        f.api("/api/v1/divergences?limit=1")  # drains what is queued
        path = f.divlog_path
        wait_until(lambda: (f.records() or [{}])[-1].get("id") == "rot-%d" % (total - 1),
                   slow(5), what="the last record in %s" % path)
        for p in (path, path + ".1", path + ".2"):
            self.assertTrue(os.path.exists(p), p)
            self.assertLessEqual(os.path.getsize(p), 4096, p)
        d = os.path.dirname(path)
        names = sorted(n for n in os.listdir(d) if n.startswith(os.path.basename(path)))
        self.assertEqual(names, ["div.ndjson", "div.ndjson.1", "div.ndjson.2"])
        kept = []
        for p in (path + ".2", path + ".1", path):
            recs = read_records(p)
            self.assertTrue(recs, "%s is empty" % p)
            for r in recs:
                assert_record_shape(self, r)
                self.assertLessEqual(len(r["bodies"]["legacy"]), 64)
            kept += [int(r["id"].split("-")[1]) for r in recs]
        self.assertEqual(kept, list(range(kept[0], total)), "kept records are the newest, "
                         "in order, none lost between the kept files")
        self.assertGreater(kept[0], 0, "40 records do not fit in three 4096-byte files")

    def test_sigusr1_reopens(self):
        """The log is renamed away and SIGUSR1 sent: later records go to a new file at the
        path, the renamed file keeps the earlier ones and gets nothing more."""
        legacy, new = self.divergent_pair()
        f = self.shadow_ficus(legacy, new, [route()])
        self.send_one_by_one(f, [1, 2], prefix="usr1")
        self.wait_records(f, 2)
        moved = f.divlog_path + ".moved"
        os.rename(f.divlog_path, moved)
        f.signal(signal.SIGUSR1)
        wait_until(lambda: f.log_lines(r"log files reopened"), slow(5), what="reopen log line")
        wait_until(lambda: os.path.exists(f.divlog_path), slow(5), what="a new file at the path")
        self.send_one_by_one(f, [3, 4], prefix="usr1")
        recs = self.wait_records(f, 2)
        self.assertEqual([r["id"] for r in recs], ["usr1-3", "usr1-4"])
        self.assertEqual([r["id"] for r in read_records(moved)], ["usr1-1", "usr1-2"])


if __name__ == "__main__":
    unittest.main()
