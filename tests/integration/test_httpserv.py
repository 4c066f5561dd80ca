"""The small HTTP/1.1 server of the admin API and the demo backends (httpserv), through
the real binary and raw sockets: strict framing (issue 15, item 5) and the behaviour both
servers share (issue 12).

Admin (AdminFraming): a body over 64 KiB gets exactly one 413 and a clean close (FIN, no
reset) after the server read and dropped the rest; a 20 MiB body too; the dropping is
bounded in bytes and time; a head line that never ends, sent at once or trickled, is
cut by the head deadline (408) within seconds; an idle keep-alive connection, and one
that never sent a byte, closes after the idle timeout; pipelined requests are answered
in order, also when the client reads nothing until it sent them all; HEAD has the GET's
Content-Length and no body; Expect: 100-continue; 431 for a head over 16 KiB.

Demo (DemoBackends): the same server under `ficus demo`'s backends: pipelining, HEAD,
one 413, and a clean stop.

The deadlines below mirror the constants in src/admin.c.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

import harness
from harness import (Client, FicusTestCase, SANITIZER_RE, _watchdog, ficus_bin, free_port,
                     make_workdir, sanitized, wait_until)
from harness_admin import AdminFicus, named_backend, slow

ADMIN_HEAD_S = 5  # ADMIN_HEAD_MS
ADMIN_IDLE_S = 10  # ADMIN_IDLE_MS
ADMIN_DRAIN_S = 5  # ADMIN_DRAIN_MS
ADMIN_DRAIN_BYTES = 32 << 20  # ADMIN_DRAIN_BYTES
# How late a deadline may be seen here: loop latency, scheduling, a loaded machine.
LATE = slow(3)


def patch_head(token, length, extra=""):
    return ("PATCH /api/v1/routes/all HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
            % (token, extra, length)).encode()


def read_clean_close(test, c, timeout, what):
    """Reads until the server closes; fails on a reset or on any byte (a second answer)."""
    closed, extra = c.wait_closed(timeout)
    test.assertTrue(closed, "%s: the connection is still open after %.0fs" % (what, timeout))
    test.assertFalse(c.reader.reset, "%s: closed with a reset, not a FIN" % what)
    test.assertEqual(extra, b"", "%s: bytes after the answer (a second answer?)" % what)


class AdminFraming(FicusTestCase):
    WATCHDOG_SECONDS = 120 if sanitized() else 60

    def admin_ficus(self):
        legacy = self.backend(named_backend, name="legacy")
        new = self.backend(named_backend, name="new")
        f = AdminFicus(legacy, new, config={"routes": [{"name": "all", "new_percent": 30}]})
        self._ficuses.append(f)
        return f.start()

    def test_body_over_64k_gets_one_413_and_a_clean_close(self):
        f = self.admin_ficus()
        # 200,000 bytes: beyond the old input buffer (16 + 64 KiB), which answered twice.
        for size in (65537, 70000, 200000, 1 << 20):
            with Client(f.admin_port, timeout=slow(10)) as c:
                # The whole body goes out: the server reads it (and drops it).
                c.send(patch_head(f.token, size) + b"{" * size, timeout=slow(10))
                r = c.read_response(timeout=slow(5))
                self.assertEqual(r.status, 413, size)
                self.assertEqual(r.header("connection"), "close", size)
                self.assertIn(b"64 KiB", r.body)
                read_clean_close(self, c, slow(5), "%d-byte body" % size)
        with f.admin() as a:
            self.assertEqual(a.get_json("/healthz"), (200, {"status": "ok"}))
            self.assertEqual(a.route("all")["new_percent"], 30, "a refused PATCH changed nothing")

    def test_20_mib_body_gets_the_413_not_a_reset(self):
        f = self.admin_ficus()
        size = 20 << 20
        with Client(f.admin_port, timeout=slow(10)) as c:
            t0 = time.monotonic()
            c.send(patch_head(f.token, size) + b"x" * size, timeout=slow(20))
            r = c.read_response(timeout=slow(5))
            self.assertEqual(r.status, 413)
            read_clean_close(self, c, slow(5), "20 MiB body")
            self.assertLess(time.monotonic() - t0, ADMIN_DRAIN_S + LATE,
                            "the 20 MiB were read within the drain deadline")

    def test_dropping_a_refused_body_is_bounded(self):
        f = self.admin_ficus()
        # In bytes: a client that never stops sending is cut off after about 32 MiB.
        with Client(f.admin_port, timeout=slow(10)) as c:
            c.send(patch_head(f.token, 1 << 40))
            chunk = b"y" * (1 << 20)
            sent, cut = 0, None
            t0 = time.monotonic()
            while sent < 4 * ADMIN_DRAIN_BYTES and time.monotonic() - t0 < slow(20):
                try:
                    c.send(chunk, timeout=slow(10))
                except OSError as e:  # EPIPE or ECONNRESET: the server closed
                    cut = e
                    break
                sent += len(chunk)
            self.assertIsNotNone(cut, "the server read %d bytes of a refused body" % sent)
            # Kernel buffers on both sides hold a few MiB beyond what the server read.
            self.assertLess(sent, ADMIN_DRAIN_BYTES + (16 << 20))
            self.assertGreaterEqual(sent, ADMIN_DRAIN_BYTES - (1 << 20))
            # The answer came before the reset and is still there to read.
            self.assertEqual(c.read_response(timeout=slow(5)).status, 413)

        # In time: a client that sends slowly is cut off after about 5 s. The FIN comes
        # with the 413; the close shows up as a failing send.
        with Client(f.admin_port, timeout=slow(10)) as c:
            c.send(patch_head(f.token, 1 << 30))
            r = c.read_response(timeout=slow(5))
            t0 = time.monotonic()
            self.assertEqual(r.status, 413)
            closed = None
            while time.monotonic() - t0 < ADMIN_DRAIN_S + LATE + 5:
                try:
                    c.send(b"z" * 1024)
                except OSError:
                    closed = time.monotonic() - t0
                    break
                time.sleep(0.1)
            self.assertIsNotNone(closed, "still reading a refused body after %.0fs"
                                 % (ADMIN_DRAIN_S + LATE + 5))
            self.assertGreater(closed, 1.0, "the server did not linger for the rest")
            self.assertLess(closed, ADMIN_DRAIN_S + LATE)

    def test_a_line_that_never_ends_is_cut_by_the_head_deadline(self):
        f = self.admin_ficus()
        whole = Client(f.admin_port, timeout=slow(10))
        trickle = Client(f.admin_port, timeout=slow(10))
        self.addCleanup(whole.close)
        self.addCleanup(trickle.close)
        t0 = time.monotonic()
        whole.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Long: " + b"a" * 1000)
        # One byte every 0.2 s: each read must not move the deadline.
        stop = threading.Event()

        def drip():
            try:
                trickle.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                while not stop.wait(0.2):
                    trickle.send(b"b")
            except OSError:
                pass  # the server closed
        t = threading.Thread(target=drip, daemon=True)
        t.start()
        self.addCleanup(t.join, 5)
        self.addCleanup(stop.set)
        for c, what in ((whole, "a line sent at once"), (trickle, "a line trickled")):
            r = c.read_response(timeout=ADMIN_HEAD_S + LATE + 1)
            took = time.monotonic() - t0
            self.assertEqual(r.status, 408, what)
            self.assertEqual(r.header("connection"), "close", what)
            self.assertGreater(took, ADMIN_HEAD_S - 0.5, what)
            self.assertLess(took, ADMIN_HEAD_S + LATE, what)
            closed, _ = c.wait_closed(2)
            self.assertTrue(closed, what)
        with f.admin() as a:
            self.assertEqual(a.get("/healthz")[0], 200)

    def test_an_idle_connection_closes_after_the_idle_timeout(self):
        f = self.admin_ficus()
        used = Client(f.admin_port, timeout=slow(10))
        silent = Client(f.admin_port, timeout=slow(10))
        self.addCleanup(used.close)
        self.addCleanup(silent.close)
        used.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(used.read_response(timeout=slow(5)).status, 200)
        t0 = time.monotonic()
        # Both stay open for most of the timeout...
        time.sleep(ADMIN_IDLE_S - 2)
        self.assertTrue(used.is_open(0.1), "a kept-alive connection closed early")
        self.assertTrue(silent.is_open(0.1), "a silent connection closed early")
        # ...and are closed soon after it, without a word.
        for c, what in ((used, "kept alive after a request"), (silent, "never sent a byte")):
            closed, extra = c.wait_closed(max(0.1, ADMIN_IDLE_S + LATE - (time.monotonic() - t0)))
            self.assertTrue(closed, "%s: open %.1fs after its last request"
                            % (what, time.monotonic() - t0))
            self.assertEqual(extra, b"", what)
            self.assertFalse(c.reader.reset, what)

    def test_pipelined_requests_are_answered_in_order_and_head_has_no_body(self):
        f = self.admin_ficus()
        with f.admin() as a:
            healthz = a.get("/healthz")[2]
            dashboard = a.get("/")[2]
        with Client(f.admin_port, timeout=slow(10)) as c:
            c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"GET /api/v1/routes/all HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"GET /api/v1/routes HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            r = c.read_response(timeout=slow(5))
            self.assertEqual((r.status, r.body), (200, healthz))
            r = c.read_response(timeout=slow(5))
            self.assertEqual((r.status, r.json()["name"]), (200, "all"))
            # HEAD: the GET's length, and no body: the next answer follows at once.
            r = c.read_response(timeout=slow(5), head=True)
            self.assertEqual(r.status, 200)
            self.assertEqual(int(r.header("content-length")), len(healthz))
            r = c.read_response(timeout=slow(5))
            self.assertEqual((r.status, r.json()), (404, {"error": "not found"}))
            r = c.read_response(timeout=slow(5), head=True)
            self.assertEqual(r.status, 200)
            self.assertTrue(r.header("content-type").startswith("text/html"))
            self.assertEqual(int(r.header("content-length")), len(dashboard))
            r = c.read_response(timeout=slow(5))
            self.assertEqual(r.status, 200)
            self.assertEqual([x["name"] for x in r.json()["routes"]], ["all"])
            self.assertEqual(r.header("connection"), "close")
            read_clean_close(self, c, slow(5), "after Connection: close")

    def test_many_pipelined_requests_sent_before_any_answer_is_read(self):
        f = self.admin_ficus()
        n = 2000  # about 3 MB of answers: more than the server queues before it stops reading
        reqs = b"".join(b"GET /api/v1/routes/all?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % i
                        for i in range(n - 1))
        reqs += b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        with Client(f.admin_port, timeout=slow(20)) as c:
            errors = []

            def send():
                try:
                    c.send(reqs, timeout=slow(30))
                except OSError as e:
                    errors.append(e)
            t = threading.Thread(target=send, daemon=True)
            t.start()
            time.sleep(0.5)  # let the server fill its queue and stop reading
            got = [c.read_response(timeout=slow(10)) for _ in range(n)]
            t.join(slow(10))
            self.assertEqual(errors, [])
            self.assertEqual([r.status for r in got], [200] * n)
            self.assertTrue(all(r.json()["name"] == "all" for r in got[:-1]))
            self.assertEqual(got[-1].json(), {"status": "ok"})
            read_clean_close(self, c, slow(5), "after the last pipelined request")

    def test_expect_100_continue(self):
        f = self.admin_ficus()
        body = b'{"new_percent": 40}'
        with Client(f.admin_port, timeout=slow(10)) as c:
            c.send(patch_head(f.token, len(body), "Expect: 100-continue\r\n"))
            r = c.read_response(timeout=slow(5))
            self.assertEqual(r.status, 100)
            c.send(body)
            r = c.read_response(timeout=slow(5))
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.json()["new_percent"], 40)
        # Too large: the 413 comes instead of the 100, and the body need not follow.
        with Client(f.admin_port, timeout=slow(10)) as c:
            c.send(patch_head(f.token, 1 << 20, "Expect: 100-continue\r\n"))
            r = c.read_response(timeout=slow(5))
            self.assertEqual(r.status, 413)
            read_clean_close(self, c, slow(5), "413 on Expect")

    def test_body_after_its_head_on_a_kept_alive_connection_and_pipelined_changes(self):
        """The head of a request whose body comes in a later read, after an earlier
        request on the connection was answered: its bytes move in the buffer meanwhile
        (the answered request is dropped from the front); the request is read as sent.
        Changes (answered through the state store's deferral) keep pipelined order."""
        f = self.admin_ficus()
        body = b'{"new_percent": 41' + b" " * 8000 + b"}"  # the buffer grows for it
        with Client(f.admin_port, timeout=slow(10)) as c:
            c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n" + patch_head(f.token, len(body)))
            self.assertEqual(c.read_response(timeout=slow(5)).status, 200)
            time.sleep(0.2)  # the body in a read of its own
            c.send(body)
            r = c.read_response(timeout=slow(5))
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.json()["new_percent"], 41)
            b2, b3 = b'{"new_percent": 42}', b'{"new_percent": 43}'
            c.send(patch_head(f.token, len(b2)) + b2 + b"GET /api/v1/routes/all HTTP/1.1\r\n"
                   b"Host: a\r\n\r\n" + patch_head(f.token, len(b3)) + b3 +
                   b"GET /api/v1/routes/all HTTP/1.1\r\nHost: a\r\n\r\n")
            got = [c.read_response(timeout=slow(5)) for _ in range(4)]
            self.assertEqual([r.status for r in got], [200] * 4)
            self.assertEqual([r.json()["new_percent"] for r in got], [42, 42, 43, 43])

    def test_head_over_16k_gets_one_431(self):
        f = self.admin_ficus()
        with Client(f.admin_port, timeout=slow(10)) as c:
            c.send(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
            r = c.read_response(timeout=slow(5))
            self.assertEqual(r.status, 431)
            read_clean_close(self, c, slow(5), "431")


class DemoBackends(unittest.TestCase):
    """`ficus demo`'s two backends run on the same server as the admin API."""

    @classmethod
    def setUpClass(cls):
        if not os.access(ficus_bin(), os.X_OK):
            raise unittest.SkipTest("no ficus binary at %s (set FICUS_BIN)" % ficus_bin())
        cls.workdir = make_workdir("demo-httpserv")
        for _ in range(50):
            port = free_port()
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                continue
            finally:
                s.close()
        env = dict(os.environ, TMPDIR=cls.workdir, FICUS_ADMIN_TOKEN="demo")
        cls.stderr_path = os.path.join(cls.workdir, "stderr.log")
        with open(cls.stderr_path, "wb") as err:
            cls.proc = subprocess.Popen([ficus_bin(), "demo", "--port", str(port)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=err, env=env, cwd=cls.workdir)
        try:
            m = wait_until(lambda: cls.proc.poll() is None and re.search(
                r"backends legacy=127\.0\.0\.1:(\d+) new=127\.0\.0\.1:(\d+)", cls.stderr()),
                slow(15), what="the demo backends' ports")
            cls.legacy, cls.new = int(m.group(1)), int(m.group(2))
            # The proxy's "listening" line comes after its signal handlers are in place:
            # a SIGINT before them would end the demo without its clean stop.
            wait_until(lambda: cls.proc.poll() is None and "mod=server listening" in cls.stderr(),
                       slow(15), what="the demo's proxy listening")
        except BaseException:
            cls.proc.kill()
            cls.proc.wait(10)
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait(10)
        if cls.workdir in harness._workdirs:  # a temporary directory, not the test output
            shutil.rmtree(cls.workdir, ignore_errors=True)

    @classmethod
    def stderr(cls):
        with open(cls.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def setUp(self):
        signal.signal(signal.SIGALRM, _watchdog)
        signal.alarm(120 if sanitized() else 60)

    def tearDown(self):
        signal.alarm(0)

    def test_1_pipelined_head_and_server_header(self):
        for port, server in ((self.legacy, "orders/1.4"), (self.new, "orders-v2/2.0")):
            with Client(port, timeout=slow(10)) as c:
                c.send(b"GET /api/orders/7 HTTP/1.1\r\nHost: a\r\n\r\n"
                       b"HEAD /api/orders/8 HTTP/1.1\r\nHost: a\r\n\r\n"
                       b"GET /api/orders/9 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                r = c.read_response(timeout=slow(5))
                self.assertEqual((r.status, r.json()["id"]), (200, 7))
                self.assertEqual(r.header("server"), server)
                self.assertEqual(r.header("cache-control"), "no-store")
                r = c.read_response(timeout=slow(5), head=True)
                self.assertEqual(r.status, 200)
                self.assertGreater(int(r.header("content-length")), 50)
                r = c.read_response(timeout=slow(5))
                self.assertEqual((r.status, r.json()["id"]), (200, 9))
                self.assertEqual(r.header("connection"), "close")
                read_clean_close(self, c, slow(5), "demo after Connection: close")

    def test_2_body_over_64k_gets_one_413(self):
        size = 300000
        with Client(self.legacy, timeout=slow(10)) as c:
            c.send(b"POST /api/orders HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
                   + b"p" * size, timeout=slow(10))
            r = c.read_response(timeout=slow(5))
            self.assertEqual(r.status, 413)
            read_clean_close(self, c, slow(5), "demo 413")

    def test_9_stops_cleanly(self):
        # A connection left open does not hold the stop up, and nothing leaks.
        c = Client(self.new, timeout=slow(10))
        self.addCleanup(c.close)
        c.send(b"GET /api/orders/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(c.read_response(timeout=slow(5)).status, 200)
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(slow(15))
        err = self.stderr()
        self.assertNotRegex(err, SANITIZER_RE)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual([l for l in err.splitlines() if "level=error" in l], [])


if __name__ == "__main__":
    unittest.main()
