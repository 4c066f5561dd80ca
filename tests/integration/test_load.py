"""A bounded mixed load: normal, malformed and aborted requests from several client
threads at once, against two workers. Afterwards ficus must be alive, answer a
normal request, and stop cleanly (exit 0, no sanitizer report, no error line).

Runs 10 s, or 60 s with FICUS_LONG=1."""

import collections
import os
import random
import socket
import threading
import time
import unittest

import harness
from harness import Client, FicusTestCase, IncompleteResponse, request_bytes
from test_malformed import load_rows

DURATION = 60.0 if os.environ.get("FICUS_LONG") == "1" else 10.0
THREADS = 6


def load_handler(req, out):
    path = req.target.split("?")[0]
    if path == "/slow":
        time.sleep(0.05)
        return harness.echo(req, out)
    if path == "/big":
        return harness.huge(1 << 20)(req, out)
    if path == "/chunked":
        return harness.chunked_response([b"a" * 100, b"b" * 5000, b"c"])(req, out)
    if path == "/close":  # closes without warning, the FIN riding with the response
        return harness.respond_and_close(req, out)
    if path == "/reset":
        return harness.reset_mid_response(body_sent=500, total=50000)(req, out)
    if path == "/204":
        return harness.status_only(204)(req, out)
    return harness.echo(req, out)


class Load(FicusTestCase):
    WATCHDOG_SECONDS = int(DURATION) + 90

    def test_mixed_load(self):
        be = self.backend(load_handler)
        fx = self.ficus(be, be, config={
            "workers": 2,
            "limits": {"max_request_body_bytes": 1 << 20, "max_header_bytes": 16384},
            "timeouts": {"upstream_ms": 5000, "client_idle_ms": 3000},
        })
        malformed = [raw for _, expected, raw in load_rows() if expected == "400"]
        stop_at = time.monotonic() + DURATION
        outcomes = collections.Counter()
        failures = []
        lock = threading.Lock()

        def note(kind, ok, detail=""):
            with lock:
                outcomes[kind + ("" if ok else ":FAIL")] += 1
                if not ok and len(failures) < 30:
                    failures.append("%s: %s" % (kind, detail))

        def normal(rng, port):
            with Client(port, timeout=10) as c:
                for i in range(rng.randint(1, 5)):
                    kind = rng.choice(["get", "post", "chunked", "slow", "big", "chunked_down",
                                       "204", "head"])
                    if kind == "get":
                        c.send(request_bytes("GET", "/echo?i=%d" % i))
                        r = c.read_response(timeout=10)
                        note(kind, r.status == 200, r)
                    elif kind == "post":
                        body = os.urandom(rng.randint(0, 200000))
                        c.send(request_bytes("POST", "/echo", body=body))
                        r = c.read_response(timeout=10)
                        note(kind, r.status == 200 and r.body == body, r)
                    elif kind == "chunked":
                        body = os.urandom(rng.randint(1, 50000))
                        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
                        r = c.read_response(timeout=10)
                        note(kind, r.status == 200 and r.body == body, r)
                    elif kind == "slow":
                        c.send(request_bytes("GET", "/slow"))
                        note(kind, c.read_response(timeout=10).status == 200)
                    elif kind == "big":
                        c.send(request_bytes("GET", "/big"))
                        r = c.read_response(timeout=20, keep=0)
                        note(kind, r.status == 200 and r.body_len == 1 << 20, r)
                    elif kind == "chunked_down":
                        c.send(request_bytes("GET", "/chunked"))
                        r = c.read_response(timeout=10)
                        note(kind, r.status == 200 and r.body_len == 5101, r)
                    elif kind == "204":
                        c.send(request_bytes("GET", "/204"))
                        note(kind, c.read_response(timeout=10).status == 204)
                    else:
                        c.send(request_bytes("HEAD", "/echo"))
                        note(kind, c.read_response(timeout=10, head=True).status == 200)

        def pipelined(rng, port):
            n = rng.randint(2, 8)
            with Client(port, timeout=10) as c:
                c.send(b"".join(request_bytes("GET", "/echo?p=%d" % i) for i in range(n)))
                got = [c.read_response(timeout=10).header("x-seen-target") for _ in range(n)]
            note("pipelined", got == ["/echo?p=%d" % i for i in range(n)], got)

        def bad(rng, port):
            with Client(port, timeout=10) as c:
                c.send(rng.choice(malformed))
                r = c.read_response(timeout=10)
                closed, _ = c.wait_closed(10)
            note("malformed", 400 <= r.status < 600 and closed, r)

        def aborted(rng, port):
            kind = rng.choice(["half_head", "half_body", "before_response", "mid_download",
                               "rst_mid_upload", "reset_backend", "close_backend"])
            c = Client(port, timeout=10)
            try:
                if kind == "half_head":
                    c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Partial: ")
                    c.abort()
                elif kind == "half_body":
                    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
                    time.sleep(rng.random() * 0.05)
                    c.close()
                elif kind == "before_response":
                    c.send(request_bytes("GET", "/slow"))
                    c.abort()
                elif kind == "mid_download":
                    c.send(request_bytes("GET", "/big"))
                    c.read_head(timeout=10)
                    c.reader.read_exact(rng.randint(1, 100000), time.monotonic() + 10)
                    c.abort()
                elif kind == "rst_mid_upload":
                    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"1000\r\n" + b"u" * 2000)
                    c.abort()
                elif kind == "reset_backend":
                    c.send(request_bytes("GET", "/reset"))
                    try:
                        c.read_response(timeout=10)
                        note(kind, False, "a reset response came out whole")
                        return
                    except IncompleteResponse:
                        pass
                elif kind == "close_backend":
                    c.send(request_bytes("POST", "/close", body=b"x"))
                    note(kind, c.read_response(timeout=10).status == 200)
                    return
                note(kind, True)
            finally:
                c.close()

        def client(seed):
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                scenario = rng.choices([normal, pipelined, bad, aborted], [5, 1, 2, 2])[0]
                try:
                    scenario(rng, fx.port)
                except (OSError, harness.Closed, IncompleteResponse, ValueError) as e:
                    note(scenario.__name__, False, repr(e))

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DURATION + 60)
            self.assertFalse(t.is_alive(), "a client thread hung")
        print("\n[load] %.0fs, outcomes: %s" % (DURATION, dict(sorted(outcomes.items()))))
        self.assertEqual(failures, [])
        self.assertGreater(sum(outcomes.values()), 50)

        self.assertTrue(fx.alive())
        r = fx.request(request_bytes("POST", "/echo", body=b"still here"))
        self.assertEqual((r.status, r.body), (200, b"still here"))
        self.assertEqual(fx.stop(), 0)


if __name__ == "__main__":
    unittest.main()
