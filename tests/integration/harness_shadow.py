"""Helpers for the parallel-run tests (shadow, diff, noise, divergence log).

Builds on harness.py and harness_admin.py without changing them:

  item_doc / item_number   the JSON document both backends serve for /.../item/N
  json_app                 a backend handler serving item_doc, with per-id changes
                           (mutate), extra headers, gzip, a delay
  ShadowFicus              an AdminFicus (own admin port, no token, no state file)
                           with a divergence log in its work directory
  read_records             the divergence log as parsed JSON lines
  assert_record_shape      one record has exactly SPEC's shape
  diff_set                 {(kind, path)} of a record's diffs
  percentile               nearest-rank percentile
  ProcessBackend           a json_app backend in a child process (python3 this file
                           --serve), so that its threads do not compete with the
                           test's client for the GIL (latency measurements)

Python standard library only. Every wait has a deadline.
"""

import gzip
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time

from harness import Backend, wait_until
from harness_admin import AdminFicus, metric, slow

ITEM_RE = re.compile(r"/item/(\d+)")


def item_number(target):
    m = ITEM_RE.search(target)
    return int(m.group(1)) if m else 0


def item_doc(n, side):
    """What both backends agree on, up to ignored and unordered parts. side ("L" or "N")
    changes only ignored fields (the etags); new also reverses /tags (unordered) and
    the key order (structural comparison)."""
    doc = {
        "id": n,
        "name": "item-%d" % n,
        "price": 10,
        "tags": ["a", "b", "c"],
        "items": [{"id": 1, "etag": "%s-1-%d" % (side, n), "qty": 1},
                  {"id": 2, "etag": "%s-2-%d" % (side, n), "qty": 2}],
    }
    if side == "N":
        doc["tags"] = list(reversed(doc["tags"]))
        doc = dict(reversed(list(doc.items())))
    return doc


def json_app(side, mutate=None, headers=None, gzip_body=False, delay_ms=0,
             ctype="application/json"):
    """A handler serving item_doc(n, side) as JSON for any target containing /item/N.

    mutate(n, doc, req) may change the document in place (or return a new one);
    headers(n, req) gives extra response headers; gzip_body sends it gzip-encoded;
    delay_ms answers that much later. Every body it sent is kept in .bodies by
    x-request-id (the last one), for the test to compare with the record."""
    sent = {}
    lock = threading.Lock()

    def handler(req, out):
        if delay_ms and out.backend.stopping.wait(delay_ms / 1000.0):
            return "close"
        n = item_number(req.target)
        doc = item_doc(n, side)
        if mutate is not None:
            doc = mutate(n, doc, req) or doc
        body = json.dumps(doc).encode()
        hdrs = [("Content-Type", ctype)]
        if headers is not None:
            hdrs += list(headers(n, req))
        if gzip_body:
            body = gzip.compress(body)
            hdrs.append(("Content-Encoding", "gzip"))
        with lock:
            sent[req.header("x-request-id", "")] = body
        if req.method == "HEAD":
            out.send(("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (
                len(body), "".join("%s: %s\r\n" % kv for kv in hdrs))).encode("latin-1"))
            return None
        out.respond(200, hdrs, body)
        return None

    handler.bodies = sent
    return handler


class ShadowFicus(AdminFicus):
    """ficus with an admin API on its own port (no token, no state file) and a divergence
    log at <workdir>/div.ndjson unless the configuration names another."""

    def __init__(self, legacy=None, new=None, config=None, **kw):
        kw.setdefault("token", None)
        kw.setdefault("token_env", False)
        kw.setdefault("state_file", None)
        kw.setdefault("allow_errors", ())
        super().__init__(legacy, new, config=None, **kw)
        self.divlog_path = os.path.join(self.workdir, "div.ndjson")
        self.config["divergence_log"] = {"path": self.divlog_path}
        if config:
            from harness import deep_merge
            deep_merge(self.config, config)
        self.divlog_path = self.config["divergence_log"]["path"]

    def records(self, path=None):
        return read_records(path or self.divlog_path)

    def metrics(self):
        with self.admin() as a:
            return a.metrics()

    def metric(self, name, **labels):
        return metric(self.metrics(), name, **labels) or 0.0

    def wait_metric(self, name, value, timeout=None, **labels):
        """Waits until the counter reaches value (comparisons finish after the client's
        response), then returns what /metrics says (the caller asserts equality)."""
        last = [None]

        def reached():
            last[0] = self.metric(name, **labels)
            return last[0] >= value
        try:
            wait_until(reached, timeout or slow(10), interval=0.03,
                       what="%s%r >= %s" % (name, labels, value))
        except AssertionError:
            raise AssertionError("%s%r stayed at %s, expected %s" % (name, labels, last[0], value))
        return last[0]

    def api(self, path):
        with self.admin() as a:
            status, _, body = a.get(path)
        if status != 200:
            raise AssertionError("GET %s answered %d: %r" % (path, status, body[:300]))
        return json.loads(body)

    def api_raw(self, path):
        with self.admin() as a:
            return a.get(path)


def read_records(path):
    """Every line of the divergence log parsed as JSON; [] when there is no file. A line
    that is not one JSON object fails."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    if data and not data.endswith(b"\n"):
        # The writer flushes whole lines; a partial line may be in flight. Ignore it.
        data = data[: data.rfind(b"\n") + 1]
    out = []
    for i, line in enumerate(data.split(b"\n")):
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise AssertionError("%s line %d is not JSON (%s): %r" % (path, i + 1, e, line[:300]))
        if not isinstance(rec, dict):
            raise AssertionError("%s line %d is not an object: %r" % (path, i + 1, line[:300]))
        out.append(rec)
    return out


RECORD_KEYS = {"ts", "id", "route", "method", "target", "endpoint", "primary", "legacy", "new",
               "diffs", "noise", "bodies", "request"}
REQUEST_KEYS = {"v", "method", "target", "headers", "body", "body_bytes"}
SIDE_KEYS = {"status", "ms", "bytes"}
DIFF_KEYS = {"kind", "path", "legacy", "new"}
KINDS = {"status", "header", "json", "added", "removed", "body", "error"}
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def assert_record_shape(tc, rec, allow_error_side=False):
    """SPEC's record: exactly these keys ("truncated" only when true), sides with
    status/ms/bytes, diffs with kind/path/legacy/new, noise a list of paths, bodies
    with both sides as strings. allow_error_side: a failed side may say "error"."""
    keys = set(rec)
    extra = keys - RECORD_KEYS - {"truncated"}
    tc.assertEqual(keys & RECORD_KEYS, RECORD_KEYS, "record keys missing: %r" % rec)
    tc.assertFalse(extra, "record has keys SPEC does not name: %r in %r" % (extra, rec))
    if "truncated" in rec:
        tc.assertIs(rec["truncated"], True)
    tc.assertRegex(rec["ts"], TS_RE)
    for k in ("id", "route", "method", "target"):
        tc.assertIsInstance(rec[k], str, k)
    tc.assertIn(rec["primary"], ("legacy", "new"))
    req = rec["request"]  # issue 16: the request, for ficus replay
    tc.assertEqual(set(req) & REQUEST_KEYS, REQUEST_KEYS, "request keys missing: %r" % req)
    tc.assertFalse(set(req) - REQUEST_KEYS - {"body_encoding", "body_truncated",
                                                         "body_redacted"}, repr(req))
    tc.assertEqual(req["v"], 1)
    tc.assertEqual(req["method"], rec["method"])
    for h in req["headers"]:
        tc.assertEqual(len(h), 2, repr(req["headers"]))
        tc.assertNotIn(h[0].lower(), ("x-ficus-shadow", "content-length", "transfer-encoding",
                                      "connection"), repr(req["headers"]))
    for side in ("legacy", "new"):
        s = rec[side]
        tc.assertIsInstance(s, dict)
        if allow_error_side and "error" in s:
            tc.assertLessEqual(set(s) - {"error"}, SIDE_KEYS, "%s side %r" % (side, s))
        else:
            tc.assertEqual(set(s), SIDE_KEYS, "%s side of %r" % (side, rec))
            tc.assertIsInstance(s["status"], int)
        tc.assertIsInstance(s["ms"], (int, float))
        tc.assertGreaterEqual(s["ms"], 0)
        tc.assertIsInstance(s["bytes"], int)
    tc.assertIsInstance(rec["diffs"], list)
    tc.assertLessEqual(len(rec["diffs"]), 50)
    tc.assertIsInstance(rec["endpoint"], str)
    for d in rec["diffs"]:
        tc.assertEqual(set(d) - {"acknowledged"}, DIFF_KEYS, "diff %r" % d)
        if "acknowledged" in d:
            tc.assertIs(d["acknowledged"], True)
        tc.assertIn(d["kind"], KINDS)
        tc.assertIsInstance(d["path"], str)
    tc.assertIsInstance(rec["noise"], list)
    for p in rec["noise"]:
        tc.assertIsInstance(p, str)
    tc.assertEqual(set(rec["bodies"]), {"legacy", "new"})
    tc.assertIsInstance(rec["bodies"]["legacy"], str)
    tc.assertIsInstance(rec["bodies"]["new"], str)


def diff_set(rec):
    return {(d["kind"], d["path"]) for d in rec["diffs"]}


def percentile(values, p):
    """Nearest-rank percentile of values (p from 0 to 100)."""
    s = sorted(values)
    k = max(1, int(math.ceil(p / 100.0 * len(s))))
    return s[k - 1]


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


class ProcessBackend:
    """json_app(side, delay_ms=...) served by a child Python process on 127.0.0.1. The
    child prints its port, then serves until its stdin closes (the test ended or died)."""

    def __init__(self, side="N", delay_ms=0, timeout=10):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", side, str(delay_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.close()
                raise AssertionError("backend process gave no port within %ss" % timeout)
            c = os.read(self.proc.stdout.fileno(), 1)
            if not c:
                self.close()
                raise AssertionError("backend process exited: %r" % self.proc.stderr.read())
            line += c
        self.port = int(line)
        self.url = "http://127.0.0.1:%d" % self.port
        self.errors = []
        self.name = "process-" + side

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def _serve(side, delay_ms):
    b = Backend(json_app(side, delay_ms=int(delay_ms)), name=side)
    sys.stdout.write("%d\n" % b.port)
    sys.stdout.flush()
    try:
        while sys.stdin.buffer.read(1):
            pass
    finally:
        b.close()


__all__ = ["item_number", "item_doc", "json_app", "ShadowFicus", "read_records",
           "assert_record_shape", "diff_set", "percentile", "timed", "slow",
           "ProcessBackend"]

if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--serve":
    _serve(sys.argv[2], sys.argv[3])
