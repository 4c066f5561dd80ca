"""ficus replay (issue 16): divergence records carry the request, and `ficus replay`
sends it again to both backends and says what still diverges.

A real ficus shadows 100 % of /api to a new backend that diverges on purpose on four
endpoints (a switch per endpoint in the test backend). The log it writes is then
replayed by the real binary against the backends "fixed" (or left broken), from the
file, from standard input and from the admin API.
"""

import json
import os
import subprocess
import threading

import harness
from harness import FicusTestCase, sanitized, wait_until
from harness_admin import KeepAlive, slow
from harness_shadow import ShadowFicus

SECRET = "Bearer s3cr3t-token-42"


class Service:
    """Both backends: legacy is the reference; new diverges where broken[name] is set.

    GET  /api/users/N         new: "name" upper case           (json)
    GET  /api/orders?page=N   new: 500                         (status)
    POST /api/orders          new: qty + 1                     (json; a write)
    GET  /api/secure          new: 401 unless Authorization is SECRET, else
                              {"ok": false} while broken         (json)
    Every request either side received is kept in .seen (method, path, headers, body)."""

    def __init__(self, side):
        self.side = side
        self.broken = {"users": True, "orders": True, "post": True, "secure": True}
        self.nonce = False  # /api/users answers carry a value that changes every time
        self.calls = 0
        self.seen = []
        self.lock = threading.Lock()

    def __call__(self, req, out):
        with self.lock:
            self.seen.append((req.method, req.target, req.headers, req.body))
        path = req.target.split("?")[0]
        new = self.side == "new"
        status, doc = 200, None
        if path.startswith("/api/users/"):
            n = path.rsplit("/", 1)[1]
            doc = {"id": n, "name": "USER" if new and self.broken["users"] else "user"}
            if self.nonce:
                with self.lock:
                    self.calls += 1
                    doc["nonce"] = "%s-%d" % (self.side, self.calls)
        elif path == "/api/orders" and req.method == "POST":
            qty = json.loads(req.body or b"{}").get("qty", 0)
            doc = {"created": True, "qty": qty + (1 if new and self.broken["post"] else 0)}
            status = 201
        elif path == "/api/orders":
            status = 500 if new and self.broken["orders"] else 200
            doc = {"page": req.target.rsplit("=", 1)[-1]}
        elif path == "/api/secure":
            if new and req.header("authorization") != SECRET:
                status, doc = 401, {"error": "unauthorized"}
            else:
                doc = {"ok": not (new and self.broken["secure"])}
        else:
            status, doc = 404, {"error": "no such thing"}
        out.respond(status, [("Content-Type", "application/json")], json.dumps(doc).encode())

    def fix(self, *names):
        for n in names or list(self.broken):
            self.broken[n] = False

    def replayed(self, method=None):
        with self.lock:
            return [s for s in self.seen if s[2].get("x-ficus-replay") == "1" and
                    (method is None or s[0] == method)]


class Replay(FicusTestCase):
    WATCHDOG_SECONDS = 120 if sanitized() else 60

    def setUp(self):
        super().setUp()
        self.legacy_svc = Service("legacy")
        self.new_svc = Service("new")
        self.legacy = self.backend(self.legacy_svc, name="legacy")
        self.new = self.backend(self.new_svc, name="new")
        route = {"name": "api", "new_percent": 0, "match": {"path_prefix": "/api"},
                 "shadow": {"methods": ["GET", "POST"]}}
        # A token and a state file: acknowledgements are stored there, replay reads them.
        self.f = ShadowFicus(self.legacy, self.new, config={"routes": [route]},
                             token="replay-admin-token", token_env=True, state_file=True)
        self._ficuses.append(self.f)
        self.f.start()
        self.record()

    def record(self):
        """Six divergent requests through the proxy; waits for their six records."""
        ka = KeepAlive(self.f.port)
        try:
            for rid, method, target, headers, body in [
                    ("u1", "GET", "/api/users/1", {}, None),
                    ("u2", "GET", "/api/users/2?full=1", {}, None),
                    ("o1", "GET", "/api/orders?page=1", {}, None),
                    ("p1", "POST", "/api/orders", {"Content-Type": "application/json"},
                     b'{"qty": 2, "note": "caf\xc3\xa9"}'),
                    ("s1", "GET", "/api/secure", {"Authorization": SECRET}, None),
                    ("u3", "GET", "/api/users/6f1c2d3e-0000-4000-8000-123456789abc", {},
                     None)]:
                h = dict(headers, **{"x-request-id": rid})
                status, _, _ = ka.request(method, target, h, body)
                self.assertLess(status, 500, target)  # legacy answers the client
        finally:
            ka.close()
        self.f.api("/api/v1/divergences?limit=1")  # drains what the workers handed over
        wait_until(lambda: len(self.f.records()) >= 6, slow(5), what="six records")
        self.log = self.f.divlog_path

    def replay(self, *args, stdin=None, expect=None):
        cmd = [harness.ficus_bin(), "replay"] + [str(a) for a in args]
        p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=slow(30))
        out, err = p.stdout.decode(), p.stderr.decode()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, err, err)
        if expect is not None:
            self.assertEqual(p.returncode, expect, "exit %d\nstdout:\n%s\nstderr:\n%s" % (
                p.returncode, out, err))
        return p.returncode, out, err

    def urls(self):
        return ["--legacy", "http://127.0.0.1:%d" % self.legacy.port,
                "--new", "http://127.0.0.1:%d" % self.new.port]

    def summary(self, out):
        """{endpoint: (verdict, equal, diverging, error, skipped)} from the table."""
        rows = {}
        lines = out.splitlines()
        table = lines[next(i for i, l in enumerate(lines) if l.startswith("verdict ")) + 1:]
        for line in table:
            parts = line.split()
            if len(parts) >= 7 and parts[1] == "api":
                endpoint = " ".join(parts[2:-4])
                rows[endpoint] = (parts[0],) + tuple(int(x) for x in parts[-4:])
        return rows

    # -------------------------------------------------------------------------------------

    def test_records_carry_the_request(self):
        """Each record has the request: method, target, headers with the redacted
        Authorization replaced by the marker (its value nowhere in the file), the body
        (UTF-8 text) and its length."""
        with open(self.log, "rb") as fh:
            raw = fh.read()
        self.assertNotIn(b"s3cr3t", raw)
        recs = {r["id"]: r for r in self.f.records()}
        self.assertEqual(set(recs), {"u1", "u2", "o1", "p1", "s1", "u3"})
        post = recs["p1"]["request"]
        self.assertEqual((post["v"], post["method"], post["target"]), (1, "POST", "/api/orders"))
        self.assertEqual(post["body"], '{"qty": 2, "note": "caf\u00e9"}')
        self.assertEqual(post["body_bytes"], len('{"qty": 2, "note": "caf\u00e9"}'.encode()))
        self.assertNotIn("body_truncated", post)
        names = [h[0].lower() for h in post["headers"]]
        self.assertIn("content-type", names)
        self.assertNotIn("content-length", names)
        secure = dict((h[0].lower(), h[1]) for h in recs["s1"]["request"]["headers"])
        self.assertEqual(secure["authorization"], "[redacted]")
        self.assertEqual(recs["u2"]["request"]["target"], "/api/users/2?full=1")

    def test_fixed_backend_is_equal_and_exit_0(self):
        """Everything fixed: every safe record is equal, the write is skipped (not
        sent) without --allow-writes, exit 0; with --allow-writes the POST goes to
        both backends with its body and is equal too."""
        self.new_svc.fix()
        code, out, err = self.replay("-c", self.f.config_path, "--header",
                                     "Authorization: " + SECRET, self.log, expect=0)
        rows = self.summary(out)
        self.assertEqual(rows["GET /api/users/{id}"], ("equal", 3, 0, 0, 0), out)
        self.assertEqual(rows["GET /api/orders"], ("equal", 1, 0, 0, 0), out)
        self.assertEqual(rows["GET /api/secure"], ("equal", 1, 0, 0, 0), out)
        self.assertEqual(rows["POST /api/orders"], ("skipped", 0, 0, 0, 1), out)
        self.assertIn("skipped api POST /api/orders", out)
        self.assertEqual(self.new_svc.replayed("POST"), [])
        self.assertEqual(self.legacy_svc.replayed("POST"), [])
        self.assertEqual(len(self.new_svc.replayed("GET")), 5)

        code, out, err = self.replay("-c", self.f.config_path, "--allow-writes", "--header",
                                     "Authorization: " + SECRET, self.log, expect=0)
        self.assertEqual(self.summary(out)["POST /api/orders"], ("equal", 1, 0, 0, 0), out)
        for svc in (self.legacy_svc, self.new_svc):
            posts = svc.replayed("POST")
            self.assertEqual(len(posts), 1)
            self.assertEqual(posts[0][3], '{"qty": 2, "note": "caf\u00e9"}'.encode())

    def test_one_left_broken_exit_1_and_named(self):
        """Users left broken: exit 1, the users endpoint diverging with its path named,
        the others equal. The URLs form (--legacy/--new) and standard input work too."""
        self.new_svc.fix("orders", "secure")
        code, out, err = self.replay(*self.urls(), "--header", "authorization: " + SECRET,
                                     self.log, expect=1)
        rows = self.summary(out)
        self.assertEqual(rows["GET /api/users/{id}"], ("diverging", 0, 3, 0, 0), out)
        self.assertEqual(rows["GET /api/orders"][0], "equal", out)
        self.assertEqual(rows["GET /api/secure"][0], "equal", out)
        self.assertRegex(out, r"diverging api GET /api/users/\{id\} id=u1 \(.*:\d+\): json /name")
        with open(self.log, "rb") as fh:
            code, out2, _ = self.replay(*self.urls(), "--header", "authorization: " + SECRET,
                                        "-", stdin=fh.read(), expect=1)
        self.assertEqual(self.summary(out2), rows)
        # Filtered to the fixed endpoints only: exit 0.
        self.replay(*self.urls(), "--header", "authorization: " + SECRET, "--endpoint",
                    "GET /api/orders", "--endpoint", "GET /api/secure", self.log, expect=0)
        self.replay(*self.urls(), "--id", "o1", self.log, expect=0)
        self.replay(*self.urls(), "--kind", "json", "--id", "o1", self.log, expect=0)
        code, out, _ = self.replay(*self.urls(), "--kind", "status", self.log, expect=0)
        self.assertEqual(list(self.summary(out)), ["GET /api/orders"])
        code, out, _ = self.replay(*self.urls(), "--until", "2000-01-01T00:00:00Z", self.log,
                                   expect=0)
        self.assertIn("total: 0 equal, 0 diverging", out)

    def test_redacted_header_supplied_by_option(self):
        """Without --header the redacted Authorization is not sent (said on stderr)
        and the backend that checks it answers 401: diverging; with it, equal."""
        self.new_svc.fix()
        code, out, err = self.replay(*self.urls(), "--id", "s1", self.log, expect=1)
        self.assertIn('header "authorization" is redacted', err.lower())
        self.assertIn("diverging api GET /api/secure", out)
        self.assertRegex(out, r"status status")
        got = self.new_svc.replayed()[-1][2]
        self.assertIsNone(got.get("authorization"))
        self.replay(*self.urls(), "--id", "s1", "--header", "Authorization: " + SECRET,
                    self.log, expect=0)
        self.assertEqual(self.new_svc.replayed()[-1][2].get("authorization"), SECRET)

    def test_bad_lines_reported_and_skipped(self):
        """A truncated line, a record of another version, one without a request, a line
        that is not a record and a route not in the configuration: each named with its
        file and line number, skipped; the good records still replay (exit 0)."""
        self.new_svc.fix()
        with open(self.log) as fh:
            good = [l for l in fh.read().splitlines() if l]
        rec = json.loads(good[0])
        other_version = dict(rec, request=dict(rec["request"], v=2))
        no_request = {k: v for k, v in rec.items() if k != "request"}
        other_route = dict(rec, route="gone")
        lines = [good[0], good[1][: len(good[1]) // 2], json.dumps(other_version),
                 json.dumps(no_request), "[1, 2, 3]", json.dumps(other_route), good[2]]
        path = os.path.join(self.f.workdir, "mixed.ndjson")
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        code, out, err = self.replay("-c", self.f.config_path, "--header",
                                     "Authorization: " + SECRET, path, expect=0)
        self.assertIn("%s:2: not JSON" % path, err)
        self.assertIn("%s:3: request of another version" % path, err)
        self.assertIn("%s:4: no \"request\" member" % path, err)
        self.assertIn("%s:5: not a divergence record" % path, err)
        self.assertIn("%s:6: route \"gone\" is not in the configuration" % path, err)
        self.assertIn("total: 2 equal, 0 diverging, 0 error", out)
        self.assertIn("bad input: 5 lines skipped", out)
        # A record whose body was cut by request_body_bytes is an error, not a guess.
        cut = dict(rec, request=dict(rec["request"], body_truncated=True))
        with open(path, "w") as fh:
            fh.write(json.dumps(cut) + "\n")
        code, out, err = self.replay(*self.urls(), path, expect=1)
        self.assertIn("only the start of the request body", out)

    def test_json_output(self):
        """--json: one result per record on stdout, each parsed; the summary on stderr."""
        self.new_svc.fix("orders", "secure", "post")
        code, out, err = self.replay(*self.urls(), "--json", "--allow-writes", "--header",
                                     "Authorization: " + SECRET, "--concurrency", "2", "--rate",
                                     "200", self.log, expect=1)
        results = [json.loads(l) for l in out.splitlines()]
        self.assertEqual(len(results), 6)
        by_id = {r["id"]: r for r in results}
        self.assertEqual(by_id["u1"]["outcome"], "diverging")
        self.assertEqual(by_id["u1"]["endpoint"], "GET /api/users/{id}")
        self.assertEqual(by_id["u1"]["diffs"], [{"kind": "json", "path": "/name"}])
        self.assertEqual(by_id["u3"]["endpoint"], "GET /api/users/{id}")
        self.assertEqual(by_id["o1"]["outcome"], "equal")
        self.assertEqual((by_id["o1"]["legacy"]["status"], by_id["o1"]["new"]["status"]),
                         (200, 200))
        self.assertEqual(by_id["p1"]["outcome"], "equal")
        self.assertRegex(by_id["p1"]["source"], r":\d+$")
        self.assertIn("total: 3 equal, 3 diverging", err)

    def test_from_admin_api(self):
        """--admin reads /api/v1/divergences from the running ficus."""
        self.new_svc.fix("orders", "secure")
        admin = "http://127.0.0.1:%d" % self.f.admin_port
        code, out, err = self.replay("--admin", admin, "--token", "replay-admin-token",
                                     *self.urls(), "--header", "Authorization: " + SECRET,
                                     expect=1)
        rows = self.summary(out)
        self.assertEqual(rows["GET /api/users/{id}"], ("diverging", 0, 3, 0, 0), out + err)
        self.assertEqual(rows["GET /api/orders"][0], "equal")
        self.assertRegex(out, r"id=u1 \(http://127\.0\.0\.1:\d+#\d+\)")

    def test_noise_of_the_route(self):
        """Answers that carry a value differing on every call: without diff.noise they
        diverge; with it in the configuration given, replay sends each safe request to
        legacy twice and what legacy shows against itself is noise: equal."""
        self.new_svc.fix()
        self.legacy_svc.nonce = self.new_svc.nonce = True
        code, out, _ = self.replay(*self.urls(), "--endpoint", "GET /api/users/{id}", self.log,
                                   expect=1)
        self.assertIn("added /nonce", out.replace("json /nonce", "added /nonce"))
        with open(self.f.config_path) as fh:
            cfg = json.load(fh)
        cfg["routes"][0]["diff"] = {"noise": {}}
        path = os.path.join(self.f.workdir, "noise.json")
        with open(path, "w") as fh:
            json.dump(cfg, fh)
        before = len(self.legacy_svc.replayed("GET"))
        code, out, _ = self.replay("-c", path, "--endpoint", "GET /api/users/{id}", self.log,
                                   expect=0)
        self.assertEqual(self.summary(out)["GET /api/users/{id}"], ("equal", 3, 0, 0, 0), out)
        self.assertEqual(len(self.legacy_svc.replayed("GET")) - before, 6)  # each one twice

    def test_acknowledged_difference_is_not_counted(self):
        """A difference acknowledged on the admin API (stored in the state file the
        configuration names) does not count: the users endpoint is equal with -c, and
        still diverging with --legacy/--new alone (no configuration, no acks)."""
        self.new_svc.fix("orders", "secure")
        with self.f.admin() as a:
            status, _ = a.json_call("POST", "/api/v1/routes/api/acknowledgements",
                                    {"path": "/name", "kind": "json",
                                     "endpoint": "GET /api/users/{id}"})
        self.assertEqual(status, 201)

        def stored():
            try:
                with open(self.f.state_path) as fh:
                    return "/name" in fh.read()
            except FileNotFoundError:
                return False
        wait_until(stored, slow(5), what="acknowledgement in the state file")
        code, out, _ = self.replay("-c", self.f.config_path, "--header",
                                   "Authorization: " + SECRET, self.log, expect=0)
        self.assertEqual(self.summary(out)["GET /api/users/{id}"], ("equal", 3, 0, 0, 0), out)
        self.replay(*self.urls(), "--header", "Authorization: " + SECRET, self.log, expect=1)
        with open(self.f.state_path, "rb") as fh:
            before = fh.read()
        self.replay("-c", self.f.config_path, self.log)
        with open(self.f.state_path, "rb") as fh:
            self.assertEqual(fh.read(), before)  # read, never written

    def test_progress_only_on_a_terminal(self):
        """A progress line on standard error when it is a terminal; none in a pipe."""
        import pty
        self.new_svc.fix()
        args = [harness.ficus_bin(), "replay"] + self.urls() + ["--header",
                                                               "Authorization: " + SECRET,
                                                               self.log]
        master, slave = pty.openpty()
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                piece = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not piece:
                break
            seen += piece
        os.close(master)
        p.stdout.read()
        p.stdout.close()
        self.assertEqual(p.wait(timeout=slow(10)), 0)
        self.assertIn(b"\rreplay: ", seen)
        self.assertIn(b"done (5 equal, 0 diverging, 0 error, 1 skipped)", seen)
        _, _, err = self.replay(*self.urls(), self.log)
        self.assertNotIn("\r", err)
        self.assertNotIn("in flight", err)

    def test_https_backend_through_the_tls_module(self):
        """-c naming an https new backend (verified against a test CA): the replayed
        requests reach it over TLS and the fixed endpoints are equal."""
        import shutil
        import tempfile
        if shutil.which("openssl") is None:
            self.skipTest("no openssl command")
        from harness_tls import Pki
        pki_dir = tempfile.mkdtemp(prefix="ficus-pki-")
        self.addCleanup(shutil.rmtree, pki_dir, True)
        pki = Pki(pki_dir)
        svc = Service("new")
        svc.fix()
        tls_new = self.backend(svc, name="new-tls", ssl_context=pki.server_context("backend"))
        with open(self.f.config_path) as fh:
            cfg = json.load(fh)
        cfg["backends"]["new"] = {"url": "https://127.0.0.1:%d" % tls_new.port,
                                  "tls": {"ca_file": pki.path("ca.pem")}}
        path = os.path.join(self.f.workdir, "tls.json")
        with open(path, "w") as fh:
            json.dump(cfg, fh)
        code, out, err = self.replay("-c", path, "--header", "Authorization: " + SECRET,
                                     self.log, expect=0)
        self.assertIn("total: 5 equal, 0 diverging, 0 error, 1 skipped", out)
        self.assertEqual(len(svc.replayed("GET")), 5)
        self.assertGreaterEqual(len(tls_new.tls_handshakes), 1)

    def test_usage(self):
        """Bad usage exits 2 with a reason; --help documents the options."""
        code, out, err = self.replay("--help", expect=0)
        for opt in ("--admin", "--legacy", "--allow-writes", "--header", "--concurrency",
                    "--rate", "--json", "--since", "--kind", "--endpoint"):
            self.assertIn(opt, out)
        self.replay(self.log, expect=2)  # no backends
        self.replay(*self.urls(), expect=2)  # no input
        self.replay(*self.urls(), "--kind", "bogus", self.log, expect=2)
        self.replay(*self.urls(), "--since", "yesterday", self.log, expect=2)
        self.replay(*self.urls(), "--concurrency", "0", self.log, expect=2)
        self.replay("--legacy", "http://127.0.0.1:1", self.log, expect=2)
        code, _, err = self.replay(*self.urls(), os.path.join(self.f.workdir, "nope"), expect=2)
        self.assertIn("nope", err)


if __name__ == "__main__":
    import unittest
    unittest.main()
