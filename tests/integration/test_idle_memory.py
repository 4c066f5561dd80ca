"""Memory held by an idle client connection: 500 keep-alive connections, each
after one request, on a plain and on a TLS listener; the growth of ficus's RSS
divided by 500 must stay under a bound (bench/idle_memory.py measures the same
with 1,000 and without the request).

Bounds: plain under 1 KiB (0.63-0.67 KiB measured); TLS at most 16 KiB (14.9
KiB measured with OpenSSL 3.0, whose SSL object alone is 8.1 KiB: the bound
catches record buffers kept while idle, 16 KiB or more each, or input kept in
a buffer that never shrinks). RSS means nothing under the sanitizers: skipped
there."""

import resource
import shutil
import socket
import ssl
import tempfile
import time
import unittest

import harness
from harness import FicusTestCase, request_bytes
from harness_tls import Pki

N = 500


def setUpModule():
    global PKI, PKI_DIR
    if harness.sanitized():
        raise unittest.SkipTest("RSS is not the program's own under the sanitizers")
    if shutil.which("openssl") is None:
        raise unittest.SkipTest("no openssl command")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * N + 256 and (hard == resource.RLIM_INFINITY or hard >= 2 * N + 256):
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * N + 256, hard))
    PKI_DIR = tempfile.mkdtemp(prefix="ficus-pki-")
    PKI = Pki(PKI_DIR)


def tearDownModule():
    shutil.rmtree(PKI_DIR, ignore_errors=True)


class IdleMemory(FicusTestCase):
    def open_idle(self, fx, n, tls):
        """n connections, one GET each, answered and left open."""
        ctx = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        held = []
        try:
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", fx.port), timeout=10)
                if tls:
                    s = ctx.wrap_socket(s, server_hostname="localhost")
                held.append(s)
                s.sendall(request_bytes("GET", "/idle"))
                r = harness.SockReader(s)
                deadline = time.monotonic() + 10
                start, headers = harness.parse_head(r.read_until(b"\r\n\r\n", deadline))
                self.assertTrue(start.startswith("HTTP/1.1 200"), start)
                r.read_exact(int(harness.Headers(headers).get("content-length")), deadline)
        except BaseException:
            for s in held:
                s.close()
            raise
        return held

    def per_connection_kib(self, tls):
        be = self.backend(harness.respond_with(200, [("Content-Type", "application/json")],
                                               b'{"ok":true}'))
        cfg = {"limits": {"max_connections": 4 * N},
               "timeouts": {"client_idle_ms": 60000}}
        if tls:
            fx = self.ficus(be, start=False, config=cfg)
            fx.config["listen"] = [{"address": "127.0.0.1:%d" % fx.port,
                                    "tls": {"cert_file": PKI.path("proxy.pem"),
                                            "key_file": PKI.path("proxy.key")}}]
            fx.start()
        else:
            fx = self.ficus(be, config=cfg)
        for s in self.open_idle(fx, 8, tls):  # what is allocated once is not counted
            s.close()
        before = fx.rss_kb()
        held = self.open_idle(fx, N, tls)
        try:
            after = fx.rss_kb()
        finally:
            for s in held:
                s.close()
        return (after - before) / N

    def test_plain_idle_connection_under_1_kib(self):
        kib = self.per_connection_kib(False)
        self.assertLess(kib, 1.0, "%.2f KiB per idle plain connection" % kib)

    def test_tls_idle_connection_at_most_16_kib(self):
        kib = self.per_connection_kib(True)
        self.assertLessEqual(kib, 16.0, "%.2f KiB per idle TLS connection" % kib)


if __name__ == "__main__":
    unittest.main()
