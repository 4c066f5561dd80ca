"""Id correlation for shadowed writes (shadow.correlate), end to end.

Two test backends with separate stores issue different ids for the same creates:
legacy numbers (1, 2, ...), new strings ("p-1", "c-1", ...). A POST / GET / PATCH /
POST-with-a-reference / GET-a-list / DELETE sequence goes through ficus with every
request shadowed to new:

  - correlation on: zero divergences; new received its own ids in paths and in the
    body field, legacy and the client saw only legacy's;
  - a planted difference (new answers PATCH with another title): exactly that one
    divergence, nothing else;
  - correlation off: the 404s of new (and the id pairs) show, so the test can fail;
  - the bound: 100,000 creates with max_entries 1000 keep the map at 1000 (admin API
    and metrics) and ficus's RSS within a stated bound. The creates go from an asyncio
    keep-alive client to minimal asyncio backends in child processes. Under ASan the
    count is FICUS_CORRELATE_CREATES (default 20,000 there) and the RSS bound is not
    checked (ASan's quarantine holds freed memory on purpose).

Each step waits until its comparison is counted before the next request: a pair is
learnt when both responses of the create are in and compared, and a request that
follows sooner is not rewritten (README, "Parallel runs with writes").
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import FicusTestCase, sanitized, wait_until  # noqa: E402
from harness_admin import KeepAlive, metric, slow  # noqa: E402
from harness_shadow import ShadowFicus  # noqa: E402


# ---------------------------------------------------------------------------------------
# the two services: the same API, separate stores, different ids


def store_app(side, planted=None):
    """A small JSON API over its own store. side "L" issues 1, 2, ...; "N" issues
    "p-1", "c-1", ... planted: a set of differences new makes on purpose
    ("patch_title": PATCH answers with another title, the store keeps the right one)."""
    planted = planted or set()
    store = {"posts": {}, "comments": {}}
    seq = {"posts": 0, "comments": 0}
    prefix = {"posts": "p-", "comments": "c-"}

    def new_id(kind):
        seq[kind] += 1
        return seq[kind] if side == "L" else "%s%d" % (prefix[kind], seq[kind])

    def key(s):
        return int(s) if side == "L" and s.isdigit() else s

    def send(out, status, doc=None, headers=()):
        body = b"" if doc is None else json.dumps(doc).encode()
        hdrs = [("Content-Type", "application/json")] + list(headers)
        out.respond(status, hdrs, body, reason={201: "Created"}.get(status))

    def handler(req, out):
        path = req.target.split("?")[0]
        parts = [p for p in path.split("/") if p]
        body = json.loads(req.body) if req.body else {}
        if parts == ["posts"] and req.method == "POST":
            pid = new_id("posts")
            store["posts"][pid] = {"id": pid, "title": body.get("title")}
            return send(out, 201, store["posts"][pid], [("Location", "/posts/%s" % pid)])
        if parts == ["comments"] and req.method == "POST":
            if key(str(body.get("post_id"))) not in store["posts"]:
                return send(out, 404, {"error": "no such post"})
            cid = new_id("comments")
            store["comments"][cid] = {"id": cid, "post_id": body["post_id"],
                                      "text": body.get("text")}
            return send(out, 201, store["comments"][cid], [("Location", "/comments/%s" % cid)])
        if parts == ["posts"] and req.method == "GET":
            return send(out, 200, list(store["posts"].values()))
        if len(parts) >= 2 and parts[0] == "posts":
            post = store["posts"].get(key(parts[1]))
            if post is None:
                return send(out, 404, {"error": "no such post"})
            if len(parts) == 3 and parts[2] == "comments" and req.method == "GET":
                return send(out, 200, [c for c in store["comments"].values()
                                       if c["post_id"] == post["id"]])
            if len(parts) == 2 and req.method == "GET":
                return send(out, 200, post)
            if len(parts) == 2 and req.method == "PATCH":
                post.update({k: v for k, v in body.items() if k != "id"})
                doc = dict(post)
                if "patch_title" in planted:
                    doc["title"] = doc["title"] + " (v2)"
                return send(out, 200, doc)
            if len(parts) == 2 and req.method == "DELETE":
                del store["posts"][post["id"]]
                return send(out, 204)
        return send(out, 404, {"error": "no route"})

    return handler


CORRELATE = {"id_pointer": "/id", "location": True,
             "body_fields": [{"pointer": "/post_id", "collection": "/posts"}],
             "max_entries": 100, "ttl_ms": 600000}


def route(correlate=CORRELATE, max_entries=None, noise=False):
    shadow = {"percent": 100, "methods": ["GET", "POST", "PATCH", "DELETE"]}
    if correlate is not None:
        shadow["correlate"] = dict(correlate)
        if max_entries is not None:
            shadow["correlate"]["max_entries"] = max_entries
    diff = {"headers": ["content-type", "location"]}
    if noise:
        # Every safe request also goes to legacy a second time (the noise twin): it
        # must get the client's ids, not new's.
        diff["noise"] = {"percent": 100}
    return {"name": "api", "new_percent": 0, "shadow": shadow, "diff": diff,
            "override_header": "x-ficus-backend"}


class CorrelateSequence(FicusTestCase):

    def run_sequence(self, correlate=CORRELATE, planted=None, steps=None):
        """The sequence through ficus; returns (ficus, legacy, new, client answers). A
        step with a fourth member True goes to new (override header): its shadow goes
        to legacy."""
        legacy = self.backend(store_app("L"), name="legacy")
        new = self.backend(store_app("N", planted), name="new")
        f = ShadowFicus(legacy, new, config={"routes": [route(correlate, noise=True)]})
        self._ficuses.append(f)
        f.start()
        f.wait_admin()
        steps = steps or [
            ("POST", "/posts", {"title": "first"}),
            ("POST", "/posts", {"title": "second"}),
            ("GET", "/posts/1", None),
            ("PATCH", "/posts/1", {"title": "first, edited"}),
            ("POST", "/comments", {"post_id": 1, "text": "hello"}),
            ("GET", "/posts/1/comments", None),
            ("DELETE", "/posts/2", None),
            ("GET", "/posts/2", None),
            ("GET", "/posts/1", None),
            ("GET", "/posts", None),
        ]
        answers = []
        c = KeepAlive(f.port)
        try:
            for i, step in enumerate(steps):
                method, path, doc = step[:3]
                body = json.dumps(doc).encode() if doc is not None else None
                hdrs = {"Content-Type": "application/json"} if body else {}
                if len(step) > 3 and step[3]:
                    hdrs["x-ficus-backend"] = "new"
                status, _, data = c.request(method, path, headers=hdrs, body=body)
                answers.append((method, path, status, data))
                # The comparison (and a create's pair) is in before the next request.
                f.wait_metric("ficus_comparisons_total", i + 1, route="api")
        finally:
            c.close()
        return f, legacy, new, answers

    def test_correlated_sequence_has_no_divergence(self):
        f, legacy, new, answers = self.run_sequence()
        # The client saw legacy's answers, with legacy's ids.
        self.assertEqual([a[2] for a in answers], [201, 201, 200, 200, 201, 200, 204, 404, 200,
                                                 200])
        self.assertEqual(json.loads(answers[0][3])["id"], 1)
        self.assertEqual(f.metric("ficus_divergences_total", route="api", kind="status"), 0)
        total = sum(f.metric("ficus_divergences_total", route="api", kind=k)
                    for k in ("status", "header", "json", "added", "removed", "body", "error"))
        self.assertEqual(total, 0, f.records())
        self.assertEqual(f.records(), [])
        # New got its own ids in the path and in the body field; legacy got the client's.
        new_seen = [(r.method, r.target) for r in new.requests]
        self.assertIn(("PATCH", "/posts/p-1"), new_seen)
        self.assertIn(("GET", "/posts/p-1/comments"), new_seen)
        self.assertIn(("DELETE", "/posts/p-2"), new_seen)
        self.assertIn(("GET", "/posts/p-2"), new_seen)
        legacy_seen = [(r.method, r.target) for r in legacy.requests]
        self.assertIn(("PATCH", "/posts/1"), legacy_seen)
        # Each GET reached legacy twice (the client's, the noise twin), never with new's ids.
        self.assertEqual(legacy_seen.count(("GET", "/posts/1")), 4, legacy_seen)
        self.assertFalse([t for t in legacy_seen if "p-" in t[1]], legacy_seen)
        comment_new = [r for r in new.requests if r.target == "/comments"][0]
        self.assertEqual(json.loads(comment_new.body)["post_id"], "p-1")
        self.assertEqual(int(comment_new.header("content-length")), len(comment_new.body))
        comment_legacy = [r for r in legacy.requests if r.target == "/comments"][0]
        self.assertEqual(json.loads(comment_legacy.body)["post_id"], 1)
        # Visible per route: the admin API and the metrics.
        cor = f.api("/api/v1/routes/api")["correlation"]
        self.assertEqual(cor["learnt"], 3, cor)  # two posts, one comment
        self.assertEqual(cor["size"], 3, cor)
        self.assertEqual(cor["max_entries"], 100)
        self.assertEqual(cor["ttl_ms"], 600000)
        # /posts/p-1 twice, p-1/comments, p-2 twice, post_id once, PATCH once.
        self.assertEqual(cor["rewritten"], 7, cor)
        self.assertGreater(cor["matched"], 0, cor)
        self.assertEqual(f.metric("ficus_correlation_total", route="api", event="learnt"), 3)
        self.assertEqual(f.metric("ficus_correlation_total", route="api", event="rewritten"), 7)
        self.assertEqual(f.metric("ficus_correlation_entries", route="api"), 3)

    def test_clients_on_new_get_legacy_ids_on_legacy(self):
        """A client routed to new carries new's ids; its shadow to legacy gets legacy's."""
        f, legacy, new, answers = self.run_sequence(steps=[
            ("POST", "/posts", {"title": "first"}),
            ("GET", "/posts/p-1", None, True),
            ("POST", "/posts", {"title": "second"}, True),
            ("PATCH", "/posts/p-2", {"title": "second, edited"}, True),
            ("POST", "/comments", {"post_id": "p-2", "text": "hi"}, True),
            ("GET", "/posts/p-2/comments", None, True),
            ("GET", "/posts/2", None),
        ])
        self.assertEqual([a[2] for a in answers], [201, 200, 201, 200, 201, 200, 200])
        self.assertEqual(json.loads(answers[2][3])["id"], "p-2")  # new answered the client
        self.assertEqual(f.records(), [])
        self.assertEqual(f.api("/api/v1/routes/api")["divergences"], 0)
        legacy_seen = [(r.method, r.target) for r in legacy.requests]
        for want in [("GET", "/posts/1"), ("PATCH", "/posts/2"), ("GET", "/posts/2/comments")]:
            self.assertIn(want, legacy_seen)
        self.assertFalse([t for t in legacy_seen if "p-" in t[1]], legacy_seen)
        comment = [r for r in legacy.requests if r.target == "/comments"][0]
        self.assertEqual(json.loads(comment.body)["post_id"], 2)  # legacy's type: a number
        self.assertIn(("GET", "/posts/p-2"), [(r.method, r.target) for r in new.requests])

    def test_planted_difference_is_the_only_divergence(self):
        f, _, _, _ = self.run_sequence(planted={"patch_title"})
        f.wait_metric("ficus_divergences_total", 1, route="api", kind="json")
        # The record is written by the control thread, after the count.
        wait_until(lambda: f.records(), slow(10), what="the divergence record")
        recs = f.records()
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual((recs[0]["method"], recs[0]["target"]), ("PATCH", "/posts/1"))
        self.assertEqual(recs[0]["diffs"], [{"kind": "json", "path": "/title",
                                             "legacy": "first, edited",
                                             "new": "first, edited (v2)"}])
        self.assertEqual(f.metric("ficus_divergences_total", route="api", kind="json"), 1)

    def test_without_correlation_new_answers_404(self):
        f, _, new, _ = self.run_sequence(correlate=None)
        self.assertIn(("PATCH", "/posts/1"), [(r.method, r.target) for r in new.requests])
        divergent = f.api("/api/v1/routes/api")["divergences"]
        wait_until(lambda: len(f.records()) >= divergent, slow(10), what="the records")
        recs = f.records()
        by_req = {(r["method"], r["target"]): r for r in recs}
        for req in [("GET", "/posts/1"), ("PATCH", "/posts/1"), ("POST", "/comments"),
                    ("DELETE", "/posts/2")]:
            self.assertIn(req, by_req, sorted(by_req))
            self.assertEqual(by_req[req]["new"]["status"], 404, by_req[req])
        self.assertIn(("json", "/id"), {(d["kind"], d["path"])
                                        for d in by_req[("POST", "/posts")]["diffs"]})
        self.assertIsNone(f.api("/api/v1/routes/api")["correlation"])
        self.assertGreaterEqual(f.metric("ficus_divergences_total", route="api", kind="status"), 4)


# ---------------------------------------------------------------------------------------
# the bound: many creates through minimal asyncio services


ROUND = 2000
# New's ids are long (about 110 bytes): a map that kept every pair would grow by 15 MiB
# and more over the creates measured, well past the RSS bound below.
PAD = b"x" * 100
OUTCOMES = ("compared", "skipped_inflight", "skipped_body", "skipped_method", "timeout", "error",
            "skipped_queue", "skipped_memory")
SERVE_RE = re.compile(rb"content-length:\s*(\d+)", re.I)


class CreateProtocol(asyncio.Protocol):
    """Answers every request with 201 and {"id": <next id>}: numbers for legacy,
    "p-<n>-xxx..." for new. Keep-alive, Content-Length bodies only."""

    def __init__(self, side, counter):
        self.side = side
        self.counter = counter
        self.buf = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            m = SERVE_RE.search(self.buf, 0, end)
            n = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + n:
                break
            self.buf = self.buf[end + 4 + n:]
            self.counter[0] += 1
            i = self.counter[0]
            body = (b'{"id":%d}' % i) if self.side == "L" else (b'{"id":"p-%d-%s"}' % (i, PAD))
            out.append(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        if out:
            self.transport.write(b"".join(out))


def serve(side):
    async def main():
        counter = [0]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: CreateProtocol(side, counter), "127.0.0.1", 0,
                                          backlog=512)
        sys.stdout.write("%d\n" % server.sockets[0].getsockname()[1])
        sys.stdout.flush()
        # Until the test closes stdin (it ended, or died).
        await loop.run_in_executor(None, sys.stdin.read)
    asyncio.run(main())


class ServiceProcess:
    def __init__(self, side):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", side],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise AssertionError("the %s service did not start" % side)
        self.url = "http://127.0.0.1:%d" % int(line)

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.stdout.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def post_many(port, total, conns=32):
    """total POST /posts over conns keep-alive connections; returns the statuses seen."""
    statuses = {}
    left = [total]
    req = (b"POST /posts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
           b"Content-Length: 11\r\n\r\n{\"title\":1}")

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                w.write(req)
                head = await r.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                m = SERVE_RE.search(head)
                await r.readexactly(int(m.group(1)) if m else 0)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            w.close()
    await asyncio.wait_for(asyncio.gather(*[one() for _ in range(conns)]), slow(120))
    return statuses


class CorrelateBound(FicusTestCase):
    WATCHDOG_SECONDS = 300

    def test_map_stays_at_its_bound_under_many_creates(self):
        asan = sanitized()
        total = int(os.environ.get("FICUS_CORRELATE_CREATES", "20000" if asan else "100000"))
        legacy, new = ServiceProcess("L"), ServiceProcess("N")
        self.addCleanup(legacy.close)
        self.addCleanup(new.close)
        rt = route(max_entries=1000)
        # Shadows outlive the client's answer: the client's concurrency does not bound
        # them (the rounds below do), and every create must be compared.
        rt["shadow"]["max_inflight"] = 100000
        f = ShadowFicus(legacy.url, new.url, config={
            "routes": [rt],
            "access_log": {"path": ""},
        })
        self._ficuses.append(f)
        f.start()
        f.wait_admin()

        def shadows():
            m = f.metrics()
            return {o: metric(m, "ficus_shadow_total", route="api", outcome=o) or 0
                    for o in OUTCOMES}

        def creates(n):
            # In rounds, each waiting until its shadows are all counted: the client
            # moves on when legacy answered, and an unbounded backlog of shadows to a
            # slower new would time out (under ASan) instead of being compared.
            for k in range(0, n, ROUND):
                r = min(ROUND, n - k)
                want = sum(shadows().values()) + r
                self.assertEqual(asyncio.run(post_many(f.port, r)), {201: r})
                wait_until(lambda: sum(shadows().values()) >= want, slow(30),
                           what="the shadows of a round counted")

        t0 = time.monotonic()
        warm = min(10000, total // 5)
        creates(warm)
        base = f.rss_kb()
        creates(total - warm)
        elapsed = time.monotonic() - t0
        rss = f.rss_kb()
        cor = f.api("/api/v1/routes/api")["correlation"]
        print("\n[correlate] %d creates in %.1fs, map %d of %d, evicted %d, rss %d KiB after "
              "%d creates, %d KiB after all" % (total, elapsed, cor["size"], cor["max_entries"],
                                                cor["evicted"], base, warm, rss))
        # Every compared create taught one pair and none diverged: each pair was learnt
        # before its own diff took the ids as equal. On a busy machine a few shadows
        # may be skipped when the diff queue is full (skipped_queue): nothing else.
        sh = shadows()
        compared = sh.pop("compared")
        self.assertGreaterEqual(compared, total * 0.95, sh)
        self.assertEqual({o: n for o, n in sh.items() if n and o != "skipped_queue"}, {})
        self.assertEqual(f.metric("ficus_divergences_total", route="api", kind="json"), 0)
        self.assertEqual(cor["size"], 1000, cor)
        self.assertEqual(cor["learnt"], compared, cor)
        self.assertEqual(cor["evicted"], compared - 1000, cor)
        self.assertEqual(f.metric("ficus_correlation_entries", route="api"), 1000)
        if not asan:
            # The bound: what the other creates add is the allocator's noise (shadows of
            # a round in flight), not the map: 90,000 more pairs kept would be 15 MiB.
            self.assertLess(rss - base, 8192, "rss grew from %d to %d KiB" % (base, rss))
            self.assertLess(rss, 64 * 1024, "rss %d KiB" % rss)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        unittest.main()
