"""The HTTP/1.1 forwarding core against real backends: header rules, framing both
ways, limits, upstream faults, signals (drain, reload) and the access log."""

import errno
import re
import signal
import socket
import threading
import time
import unittest

import harness
from harness import (Client, FicusTestCase, IncompleteResponse, request_bytes, sanitized,
                     wait_until)

HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade")


def counting_handler(req, out):
    """Answers with what arrived (length and CRC of the body), never echoing it."""
    out.respond(200, [("Content-Type", "text/plain")],
                b"%d %d" % (req.body_len, req.body_crc))


class Headers(FicusTestCase):
    def test_hop_by_hop_removed_and_forwarding_headers_added(self):
        def handler(req, out):
            out.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                     b"Connection: keep-alive, X-Resp-Hop\r\nX-Resp-Hop: secret\r\n"
                     b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                     b"Upgrade: h2c\r\nTrailer: X-T\r\nX-Plain: yes\r\n\r\nok")
        be = self.backend(handler)
        fx = self.ficus(be, be)
        # An Upgrade header without "upgrade" in Connection asks for nothing: it is
        # hop-by-hop and dropped (a real upgrade request is tunnelled: test_tunnel).
        raw = request_bytes("GET", "/a?b=c", host="shop.example", headers=[
            ("Connection", "keep-alive, X-Hop"), ("X-Hop", "drop me"),
            ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"), ("Trailer", "X-T"), ("Upgrade", "websocket"),
            ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"), ("Via", "1.0 edge"),
            ("X-Keep", "kept")])
        with fx.connect() as c:
            c.send(raw)
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"ok")
            for name in HOP_BY_HOP + ("x-resp-hop",):
                self.assertNotIn(name, r.headers.names(), "response kept %s" % name)
            self.assertEqual(r.header("x-plain"), "yes")
            self.assertTrue(c.is_open(), "keep-alive connection closed")
        req = be.wait_requests(1)[0]
        for name in HOP_BY_HOP + ("x-hop",):
            self.assertNotIn(name, req.headers.names(), "forwarded %s" % name)
        self.assertEqual(req.version, "HTTP/1.1")
        self.assertEqual(req.target, "/a?b=c")
        self.assertEqual(req.header("host"), "shop.example")
        self.assertEqual(req.header("x-keep"), "kept")
        self.assertEqual(req.headers.get_all("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"])
        self.assertEqual(req.headers.get_all("x-forwarded-proto"), ["http"])
        self.assertEqual(req.headers.get_all("x-forwarded-host"), ["shop.example"])
        self.assertEqual(req.headers.get_all("via"), ["1.0 edge, 1.1 ficus"])

    def test_forwarding_headers_without_incoming_ones(self):
        be = self.backend()
        fx = self.ficus(be, be)
        self.assertEqual(fx.request(request_bytes("GET", "/", host="h.example:8080")).status, 200)
        req = be.wait_requests(1)[0]
        self.assertEqual(req.headers.get_all("x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(req.headers.get_all("x-forwarded-proto"), ["http"])
        self.assertEqual(req.headers.get_all("x-forwarded-host"), ["h.example:8080"])
        self.assertEqual(req.headers.get_all("via"), ["1.1 ficus"])
        self.assertEqual(req.headers.get_all("host"), ["h.example:8080"])

    def test_connection_header_cannot_strip_forwarding_headers(self):
        be = self.backend()
        fx = self.ficus(be, be)
        raw = request_bytes("GET", "/", host="h.example", headers=[
            ("Connection", "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Via, "
                           "X-Request-Id, Host"),
            ("X-Request-Id", "req-abc-123")])
        self.assertEqual(fx.request(raw).status, 200)
        req = be.wait_requests(1)[0]
        self.assertEqual(req.headers.get_all("x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(req.headers.get_all("x-forwarded-proto"), ["http"])
        self.assertEqual(req.headers.get_all("x-forwarded-host"), ["h.example"])
        self.assertEqual(req.headers.get_all("via"), ["1.1 ficus"])
        self.assertEqual(req.headers.get_all("x-request-id"), ["req-abc-123"])
        self.assertEqual(req.headers.get_all("host"), ["h.example"],
                         "Connection: Host stripped the Host header")
        self.assertNotIn("connection", req.headers.names())

    def test_request_id_kept_or_generated(self):
        be = self.backend()
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/1", headers=[("X-Request-Id", "client-id-42")]))
            self.assertEqual(c.read_response().status, 200)
            c.send(request_bytes("GET", "/2"))
            self.assertEqual(c.read_response().status, 200)
            c.send(request_bytes("GET", "/3"))
            self.assertEqual(c.read_response().status, 200)
            c.send(request_bytes("GET", "/4", headers=[("X-Request-Id", 'bad"quote')]))
            self.assertEqual(c.read_response().status, 200)
        reqs = be.wait_requests(4)
        self.assertEqual(reqs[0].headers.get_all("x-request-id"), ["client-id-42"])
        gen = [r.header("x-request-id") for r in reqs[1:]]
        for g in gen:
            self.assertRegex(g or "", r"^[0-9a-f]{32}$")
        self.assertEqual(len(set(gen)), 3, "generated ids repeat: %s" % gen)
        lines = fx.wait_access_lines(4)
        self.assertIn("id=client-id-42", lines[0])
        self.assertIn("id=%s" % gen[0], lines[1])


class Bodies(FicusTestCase):
    def test_content_length_both_ways(self):
        be = self.backend()
        fx = self.ficus(be, be)
        body = bytes(range(256)) * 1000
        with fx.connect() as c:
            c.send(request_bytes("POST", "/cl", body=body))
            r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.framing, "length")
        self.assertEqual(r.header("content-length"), str(len(body)))
        self.assertEqual(r.body, body)
        req = be.wait_requests(1)[0]
        self.assertEqual(req.header("content-length"), str(len(body)))
        self.assertIsNone(req.header("transfer-encoding"))
        self.assertEqual(req.body, body)

    def test_empty_body_and_content_length_zero(self):
        be = self.backend()
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("POST", "/zero", body=b""))
            r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b""))
        req = be.wait_requests(1)[0]
        self.assertEqual(req.header("content-length"), "0")

    def test_chunked_request_goes_up_chunked(self):
        be = self.backend()
        fx = self.ficus(be, be)
        chunks = [b"a" * 10, b"b" * 70000, b"c"]
        raw = (b"POST /ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
               b"".join(b"%x;ext=1\r\n%s\r\n" % (len(ch), ch) for ch in chunks) +
               b"0\r\nX-Trailer: t\r\n\r\n")
        with fx.connect() as c:
            c.send(raw)
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"".join(chunks))
            self.assertTrue(c.is_open())
        req = be.wait_requests(1)[0]
        self.assertEqual(req.header("transfer-encoding"), "chunked")
        self.assertIsNone(req.header("content-length"))
        self.assertEqual(req.body, b"".join(chunks))

    def test_chunked_response_goes_down_chunked(self):
        be = self.backend(harness.chunked_response([b"hello ", b"chunked ", b"world"],
                                                   trailers=[b"X-Sum: 1"]))
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.framing, "chunked")
            self.assertEqual(r.body, b"hello chunked world")
            self.assertIsNone(r.header("content-length"))
            self.assertTrue(c.is_open())
            c.send(request_bytes("GET", "/again"))
            self.assertEqual(c.read_response().body, b"hello chunked world")

    def test_close_delimited_response(self):
        def handler(req, out):
            out.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
            return "close"
        be = self.backend(handler)
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.framing, "chunked", "a 1.1 client gets the body chunked")
            self.assertEqual(r.body, b"until the end")
        with fx.connect() as c:
            c.send(request_bytes("GET", "/", version="1.0"))
            r = c.read_response()
            self.assertEqual((r.status, r.framing, r.body), (200, "close", b"until the end"))

    def test_http10_client_gets_chunked_body_unchunked(self):
        be = self.backend(harness.chunked_response([b"one ", b"two"]))
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/", version="1.0", host=None))
            r = c.read_response()
        self.assertEqual((r.status, r.framing, r.body), (200, "close", b"one two"))
        self.assertIsNone(r.header("transfer-encoding"))

    def test_slow_response_body_streams(self):
        be = self.backend(harness.slow_body(pieces=5, interval=0.15))
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            t0 = time.monotonic()
            r = c.read_head()
            self.assertLess(time.monotonic() - t0, 0.5, "the head waited for the body")
            self.assertEqual(r.status, 200)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            self.assertEqual(r.body, b"slow." * 5)

    def test_slow_request_body_longer_than_upstream_timeout(self):
        """upstream_ms times the backend, not a client that is still sending."""
        be = self.backend()
        fx = self.ficus(be, be, config={"timeouts": {"upstream_ms": 700}})
        with fx.connect() as c:
            c.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
            for b in b"abcdef":
                time.sleep(0.25)
                c.send(bytes([b]))
            r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"abcdef"))

    def test_large_bodies_stream_with_flat_rss(self):
        """Hundreds of MB up (chunked, from a generator) and down (generated by the
        backend) pass through while ficus's resident memory stays flat."""
        total = 300 << 20  # under ASan too: ficus streams it in a few seconds
        limit_kb = 40 * 1024
        be = self.backend(counting_handler, keep_body=0)
        fx = self.ficus(be, be, config={"limits": {"max_request_body_bytes": 1 << 40},
                                        "timeouts": {"upstream_ms": 30000}})
        # Warm up: the read buffers and pools that steady state uses.
        self.assertEqual(fx.request(request_bytes("POST", "/warm", body=b"w" * 300000)).status,
                         200)
        base = fx.rss_kb()
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], fx.rss_kb())
                except (OSError, AssertionError):
                    return
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            t0 = time.monotonic()
            # Up: a chunked POST from a generator, 1 MiB chunks.
            with fx.connect() as c:
                c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                block = harness.pattern_block(1 << 20)
                sent = 0
                while sent < total:
                    piece = block[: min(len(block), total - sent)]
                    c.send(b"%x\r\n" % len(piece) + piece + b"\r\n", timeout=30)
                    sent += len(piece)
                c.send(b"0\r\n\r\n")
                r = c.read_response(timeout=30)
            up_s = time.monotonic() - t0
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"%d %d" % (total, harness.pattern_crc(total, block)))
            # Down: the backend generates, the client counts.
            be.set_handler(harness.huge(total))
            t0 = time.monotonic()
            with fx.connect() as c:
                c.send(request_bytes("GET", "/down"))
                r = c.read_response(timeout=30, keep=0)
            down_s = time.monotonic() - t0
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body_len, total)
            self.assertEqual(r.body_crc, harness.pattern_crc(total))
        finally:
            stop.set()
            sampler.join(2)
        growth = peak[0] - base
        print("\n[rss] %d MiB each way: up %.1fs, down %.1fs, rss base %d KiB, peak %d KiB, "
              "growth %d KiB" % (total >> 20, up_s, down_s, base, peak[0], growth))
        self.assertLess(growth, limit_kb, "RSS grew by %d KiB streaming %d MiB" % (
            growth, total >> 20))


class Connections(FicusTestCase):
    def test_pipelining(self):
        be = self.backend()
        fx = self.ficus(be, be)
        raw = (request_bytes("GET", "/p1") + request_bytes("POST", "/p2", body=b"second") +
               b"POST /p3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nthird\r\n0\r\n\r\n" + request_bytes("HEAD", "/p4") +
               request_bytes("GET", "/p5"))
        with fx.connect() as c:
            c.send(raw)
            rs = [c.read_response(), c.read_response(), c.read_response(),
                  c.read_response(head=True), c.read_response()]
            self.assertTrue(c.is_open())
        self.assertEqual([r.status for r in rs], [200] * 5)
        self.assertEqual([r.header("x-seen-target") for r in rs],
                         ["/p1", "/p2", "/p3", "/p4", "/p5"])
        self.assertEqual(rs[1].body, b"second")
        self.assertEqual(rs[2].body, b"third")
        reqs = be.wait_requests(5)
        self.assertEqual([r.target for r in reqs], ["/p1", "/p2", "/p3", "/p4", "/p5"])

    def test_pipelining_byte_by_byte(self):
        be = self.backend()
        fx = self.ficus(be, be)
        raw = request_bytes("POST", "/a", body=b"xyz") + request_bytes("GET", "/b")
        with fx.connect() as c:
            for i in range(len(raw)):
                c.send(raw[i:i + 1])
            rs = [c.read_response(), c.read_response()]
        self.assertEqual([(r.status, r.body) for r in rs], [(200, b"xyz"), (200, b"")])

    def test_expect_100_continue(self):
        be = self.backend()
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                   b"Content-Length: 11\r\n\r\n")
            interim = c.read_response(timeout=5)
            self.assertEqual(interim.status, 100)
            c.send(b"hello world")
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"hello world"))
            self.assertTrue(c.is_open())
            # Again, now on the pooled upstream connection.
            c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
            self.assertEqual(c.read_response(timeout=5).status, 100)
            c.send(b"5\r\nagain\r\n0\r\n\r\n")
            self.assertEqual(c.read_response().body, b"again")
        with fx.connect() as c:  # refused before any 100: the body need not come
            c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                   b"Content-Length: 999999999999\r\n\r\n")
            self.assertEqual(c.read_response(timeout=5).status, 413)
        reqs = be.wait_requests(2)
        for req in reqs:
            self.assertIsNone(req.header("expect"), "Expect went upstream")
        self.assertEqual([r.body for r in reqs], [b"hello world", b"again"])
        self.assertEqual(be.request_connections, 1)

    def test_backend_interim_response_is_not_forwarded(self):
        def handler(req, out):
            out.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        be = self.backend(handler)
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"body"))

    def test_head_204_304(self):
        def handler(req, out):
            if req.target == "/204":
                out.send(b"HTTP/1.1 204 No Content\r\nX-K: 1\r\n\r\n")
            elif req.target == "/304":
                out.send(b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 1234\r\n\r\n")
            else:  # HEAD: the length of the body a GET would have
                out.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nContent-Type: t/p\r\n\r\n")
        be = self.backend(handler)
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("HEAD", "/head"))
            r = c.read_response(head=True)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("content-length"), "5000")
            self.assertIsNone(r.header("transfer-encoding"))
            c.send(request_bytes("GET", "/204"))
            r = c.read_response()
            self.assertEqual(r.status, 204)
            self.assertIsNone(r.header("content-length"))
            self.assertIsNone(r.header("transfer-encoding"))
            self.assertEqual(r.header("x-k"), "1")
            c.send(request_bytes("GET", "/304"))
            r = c.read_response()
            self.assertEqual(r.status, 304)
            self.assertEqual(r.header("etag"), '"e"')
            self.assertIsNone(r.header("transfer-encoding"))
            # The connection is still in step: no stray body bytes were read or sent.
            c.send(request_bytes("HEAD", "/head"))
            r = c.read_response(head=True)
            self.assertEqual(r.status, 200)
            closed, extra = c.wait_closed(0.3)
            self.assertFalse(closed)
            self.assertEqual(extra, b"", "bytes after a body-less response")
        self.assertEqual(len(be.requests), 4)

    def test_keep_alive_reuses_upstream_connection(self):
        be = self.backend()
        fx = self.ficus(be, be)
        for i in range(5):
            self.assertEqual(fx.request(request_bytes("GET", "/%d" % i)).status, 200)
        be.wait_requests(5)
        self.assertEqual(be.request_connections, 1, "the pooled connection was not reused")

    def test_client_connection_close_honoured(self):
        be = self.backend()
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/", headers=[("Connection", "close")]))
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual((r.header("connection") or "").lower(), "close")
            self.assertEqual(c.wait_closed(3), (True, b""))

    def test_max_connections(self):
        be = self.backend()
        fx = self.ficus(be, be, config={"limits": {"max_connections": 3}})
        time.sleep(0.3)  # the start-up check's connection must be gone from the count
        held = [fx.connect() for _ in range(3)]
        try:
            for c in held:
                c.send(request_bytes("GET", "/held"))
                self.assertEqual(c.read_response().status, 200)
            extra = [fx.connect() for _ in range(5)]
            for c in extra:
                closed, data = c.wait_closed(3)
                self.assertTrue(closed, "a connection over the limit stayed open")
                self.assertEqual(data, b"")
                c.close()
            # The held ones still work.
            held[0].send(request_bytes("GET", "/still"))
            self.assertEqual(held[0].read_response().status, 200)
        finally:
            for c in held:
                c.close()
        # Slots come back once the held connections close.
        wait_until(lambda: self._one_request_ok(fx), 5, interval=0.1,
                   what="a connection accepted after the held ones closed")
        self.assertTrue(fx.alive())

    def _one_request_ok(self, fx):
        try:
            return fx.request(request_bytes("GET", "/after"), timeout=2).status == 200
        except (OSError, harness.Closed, IncompleteResponse, ValueError):
            return False

    def test_client_idle_keep_alive_closed(self):
        be = self.backend()
        fx = self.ficus(be, be, config={"timeouts": {"client_idle_ms": 500}})
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            self.assertEqual(c.read_response().status, 200)
            t0 = time.monotonic()
            self.assertEqual(c.wait_closed(5), (True, b""))
            self.assertGreater(time.monotonic() - t0, 0.3)


class Limits(FicusTestCase):
    def test_431_head_too_large(self):
        be = self.backend()
        fx = self.ficus(be, be, config={"limits": {"max_header_bytes": 4096}})
        with fx.connect() as c:
            c.send(request_bytes("GET", "/", headers=[("X-Big", "a" * 5000)]))
            r = c.read_response()
            self.assertEqual(r.status, 431)
            self.assertEqual(c.wait_closed(3), (True, b""))
        with fx.connect() as c:  # many small headers count too
            c.send(request_bytes("GET", "/", headers=[("X-H%d" % i, "v" * 40)
                                                      for i in range(200)]))
            self.assertEqual(c.read_response().status, 431)
        # Just under the limit passes.
        self.assertEqual(fx.request(request_bytes("GET", "/", headers=[("X-Ok", "b" * 3000)]))
                         .status, 200)
        self.assertEqual(len(be.requests), 1)

    def test_trickled_head_is_scanned_once(self):
        """A head that arrives a byte at a time is examined once, not again from its first
        byte on every read: the scan work is the head's length (linear), for 16 KiB as for
        60 KiB. ficus logs, at debug level, the bytes it examined per head and the reads
        that brought them."""
        be = self.backend()
        fx = self.ficus(be, be, log_level="debug")
        scanned = {}
        for kib in (16, 60):
            # A few large headers (at most 128 fit) make a head of exactly kib KiB.
            head = request_bytes("GET", "/trickle%d" % kib,
                                 headers=[("X-Pad%d" % i, "p" * (kib * 200)) for i in range(4)])
            head = head[:-2] + b"X-Fill: "
            head += b"f" * (kib * 1024 - len(head) - 4) + b"\r\n\r\n"
            self.assertEqual(len(head), kib * 1024)
            with fx.connect() as c:
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(head)):
                    c.send(head[i:i + 1])
                self.assertEqual(c.read_response(timeout=20).status, 200)
            lines = wait_until(lambda: fx.log_lines(r"request head .* bytes=%d " % len(head)),
                               10, what="the head's debug line")
            m = re.search(r"bytes=(\d+) scanned=(\d+) reads=(\d+)", lines[-1])
            n, work, reads = int(m.group(1)), int(m.group(2)), int(m.group(3))
            self.assertGreater(reads, 100, "the head did not trickle in: %s" % lines[-1])
            self.assertEqual(work, n, "bytes examined for a %d-byte head in %d reads"
                             % (n, reads))
            scanned[kib] = work
        self.assertEqual(scanned[60] * 16, scanned[16] * 60)

    def refused_while_sending(self, fx, head, total, expect):
        """Sends head, then total body bytes from a thread while reading the answer.
        Returns (status, closed cleanly, bytes the sender got out, the sender's error)."""
        c = fx.connect()
        c.send(head)
        sent, err = [0], [None]

        def send_body():
            block = b"b" * 65536
            try:
                while sent[0] < total:
                    n = min(len(block), total - sent[0])
                    c.sock.sendall(block[:n])
                    sent[0] += n
            except OSError as e:
                err[0] = e
        t = threading.Thread(target=send_body, daemon=True)
        t.start()
        try:
            r = c.read_response(timeout=10)
            self.assertEqual(r.status, expect)
            closed, extra = c.wait_closed(15)
            t.join(15)
            return closed and extra == b"", sent[0], err[0]
        finally:
            c.close()

    def test_refusal_lingers_so_the_client_reads_it(self):
        """A request refused before its body was read (413 by Content-Length, 404 with a
        body on its way): ficus sends the answer and its FIN, then reads and drops what
        the client still sends, so a client busy sending its body reads the refusal and
        a clean close instead of a reset."""
        be = self.backend()
        fx = self.ficus(be, be, config={"limits": {"max_request_body_bytes": 1000},
                                        "routes": [{"name": "all", "new_percent": 0,
                                                    "match": {"path_prefix": "/in"}}]})
        total = 4 << 20
        for target, expect in (("/in", 413), ("/elsewhere", 404)):
            head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
                target.encode(), total if expect == 413 else 900)
            clean, sent, err = self.refused_while_sending(
                fx, head, total if expect == 413 else 900, expect)
            self.assertIsNone(err, "%s: the client's send failed after %d bytes" % (target, sent))
            self.assertEqual(sent, total if expect == 413 else 900)
            self.assertTrue(clean, "%s: no clean close after the refusal" % target)
        self.assertEqual(be.requests, [])

    def test_lingering_is_bounded(self):
        """A client that never stops sending after a refusal is cut off: ficus drops at
        most 16 MiB (and waits at most 5 s) before it closes."""
        be = self.backend()
        fx = self.ficus(be, be, config={"limits": {"max_request_body_bytes": 1000}})
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1 << 30)
        t0 = time.monotonic()
        clean, sent, err = self.refused_while_sending(fx, head, 1 << 30, 413)
        self.assertLess(time.monotonic() - t0, 12)
        self.assertIsNotNone(err, "the endless sender was never cut off")
        self.assertLess(sent, 64 << 20, "ficus read %d bytes after refusing" % sent)

    def test_413_body_too_large(self):
        be = self.backend()
        fx = self.ficus(be, be, config={"limits": {"max_request_body_bytes": 1000}})
        with fx.connect() as c:
            c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 413)
            self.assertEqual(c.wait_closed(3), (True, b""))
        self.assertEqual(be.requests, [])
        with fx.connect() as c:  # chunked: found out while streaming
            c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3e8\r\n" + b"a" * 1000 + b"\r\n")
            time.sleep(0.2)
            c.send(b"1\r\nb\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 413)
            self.assertTrue(c.wait_closed(3)[0])
        self.assertEqual(be.requests, [], "a too large body was completed upstream")
        self.assertEqual(fx.request(request_bytes("POST", "/", body=b"c" * 1000)).status, 200)

    def test_408_slowloris_head(self):
        """One header byte a second is cut at the header deadline with 408."""
        be = self.backend()
        fx = self.ficus(be, be, config={"timeouts": {"client_idle_ms": 2000}})
        raw = request_bytes("GET", "/", headers=[("X-Slow", "x" * 50)])
        with fx.connect() as c:
            t0 = time.monotonic()
            got = None
            for i in range(len(raw)):
                try:
                    c.send(raw[i:i + 1])
                except OSError:
                    break
                if not c.is_open(wait=1.0):
                    break
                if c.reader.buf:
                    break
            elapsed = time.monotonic() - t0
            try:
                got = c.read_response(timeout=3)
            except (harness.Closed, OSError) as e:
                self.fail("no 408 before the close: %r" % e)
            self.assertEqual(got.status, 408)
            self.assertTrue(c.wait_closed(3)[0])
        self.assertGreater(elapsed, 1.5, "cut before the header deadline")
        self.assertLess(elapsed, 4.0, "the header deadline was extended by each byte")
        self.assertEqual(be.requests, [])

    def test_408_request_body_stalls(self):
        be = self.backend()
        fx = self.ficus(be, be, config={"timeouts": {"client_idle_ms": 800}})
        with fx.connect() as c:
            c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            r = c.read_response(timeout=5)
            self.assertEqual(r.status, 408)
            self.assertTrue(c.wait_closed(3)[0])
        self.assertEqual(be.requests, [])

    def test_404_no_route(self):
        be = self.backend()
        fx = self.ficus(be, be, config={"routes": [
            {"name": "api", "match": {"path_prefix": "/api"}, "new_percent": 0}]})
        with fx.connect() as c:
            c.send(request_bytes("GET", "/elsewhere"))
            r = c.read_response()
            self.assertEqual(r.status, 404)
            self.assertEqual(r.header("content-type"), "application/json")
            self.assertEqual(r.json(), {"error": "no route"})
            self.assertTrue(c.is_open(), "a 404 need not close the connection")
            c.send(request_bytes("GET", "/api/x"))
            self.assertEqual(c.read_response().status, 200)
        self.assertEqual([r.target for r in be.requests], ["/api/x"])


class UpstreamFaults(FicusTestCase):
    def test_502_backend_unreachable(self):
        fx = self.ficus("http://127.0.0.1:%d" % harness.free_port(), None)
        r = fx.request(request_bytes("GET", "/"))
        self.assertEqual(r.status, 502)
        self.assertIn("error", r.json())

    def test_502_garbage_response(self):
        be = self.backend(harness.garbage)
        fx = self.ficus(be, be)
        self.assertEqual(fx.request(request_bytes("GET", "/")).status, 502)

    def test_502_ambiguous_response_cl_and_te(self):
        be = self.backend(harness.cl_and_te)
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            self.assertEqual(r.status, 502)
            self.assertNotEqual(r.body, b"hello")

    def test_502_bad_upstream_chunked_framing(self):
        def handler(req, out):
            out.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
            return "close"
        be = self.backend(handler)
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            try:
                r = c.read_response()
            except IncompleteResponse as e:
                r = e.response  # the head went out before the bad chunk: cut short
                self.assertTrue(c.wait_closed(3)[0])
            else:
                self.assertEqual(r.status, 502)

    def test_502_upstream_head_too_large(self):
        def handler(req, out):
            out.send(b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * 10000 + b"\r\nContent-Length: 0\r\n\r\n")
        be = self.backend(handler)
        fx = self.ficus(be, be, config={"limits": {"max_header_bytes": 4096}})
        self.assertEqual(fx.request(request_bytes("GET", "/")).status, 502)

    def test_504_backend_timeout(self):
        be = self.backend(harness.stall)
        fx = self.ficus(be, be, config={"timeouts": {"upstream_ms": 700}})
        t0 = time.monotonic()
        r = fx.request(request_bytes("GET", "/"))
        self.assertEqual(r.status, 504)
        self.assertGreater(time.monotonic() - t0, 0.5)

    def _unreachable_backend(self):
        """A backend whose accept queue is full: ficus's connects to it hang (the kernel
        drops the SYNs) until it starts accepting."""
        be = self.backend(name="full", backlog=0, accept=False)
        fillers = []
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", be.port))
            fillers.append(s)
        self.addCleanup(lambda: [s.close() for s in fillers])
        return be

    def _let_probes_finish(self, be):
        # ficus's health checks (discovery.c) connect to every backend address and may keep
        # the process from exiting while a handshake hangs: see
        # test_sigterm_exits_while_a_backend_handshake_hangs. Accepting lets it end at
        # the next SYN retry, so that these tests check what they are about.
        be.start_accepting()

    def test_504_connect_timeout(self):
        be = self._unreachable_backend()
        fx = self.ficus(be, be, config={"timeouts": {"connect_ms": 600}})
        t0 = time.monotonic()
        r = fx.request(request_bytes("GET", "/"))
        self.assertEqual(r.status, 504)
        self.assertGreater(time.monotonic() - t0, 0.4)
        self.assertEqual(r.json(), {"error": "upstream connect timeout"})
        self._let_probes_finish(be)

    def test_drain_deadline_while_connecting(self):
        """The drain deadline closes a client whose exchange still waits for its
        connect; the connect that ends later must not touch the freed exchange."""
        be = self._unreachable_backend()
        fx = self.ficus(be, be, config={"timeouts": {"connect_ms": 1500, "drain_ms": 300}})
        c = fx.connect()
        c.send(request_bytes("GET", "/stuck"))
        time.sleep(0.2)
        fx.signal(signal.SIGTERM)
        self.assertTrue(c.wait_closed(5)[0])
        c.close()
        time.sleep(1.6)  # past the connect deadline of the abandoned attempt
        self._let_probes_finish(be)
        self.assertEqual(fx.wait(20), 0, fx.stderr()[-6000:])
        fx.stop()

    def test_sigterm_exits_while_a_backend_handshake_hangs(self):
        # The readiness probe connects to every backend; a backend that never
        # completes the handshake must not keep ficus alive after SIGTERM (the
        # probe has a deadline and stopping cancels it). SIGTERM must exit
        # within drain_ms.
        be = self._unreachable_backend()
        fx = self.ficus(be, be, config={"timeouts": {"drain_ms": 500}})
        time.sleep(0.2)
        fx.signal(signal.SIGTERM)
        code = fx.wait(6)
        if code is None:
            fx.kill()
            fx.exit_code = -9
        self.assertEqual(code, 0)

    def test_backend_reset_mid_response(self):
        be = self.backend(harness.reset_mid_response(body_sent=1000, total=100000))
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            with self.assertRaises(IncompleteResponse) as cm:
                c.read_response()
            self.assertEqual(cm.exception.response.status, 200)
            self.assertLess(cm.exception.response.body_len, 100000)
            self.assertTrue(c.wait_closed(3)[0])
        be.set_handler(harness.echo)
        self.assertEqual(fx.request(request_bytes("GET", "/after")).status, 200)

    def test_backend_reset_before_response(self):
        def handler(req, out):
            out.reset()
            return "close"
        be = self.backend(handler)
        fx = self.ficus(be, be)
        self.assertEqual(fx.request(request_bytes("POST", "/", body=b"x")).status, 502)

    def test_upstream_close_mid_chunked_body(self):
        """No final chunk: the client must see the response cut short."""
        be = self.backend(harness.close_mid_chunked())
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            with self.assertRaises(IncompleteResponse) as cm:
                c.read_response()
            r = cm.exception.response
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hello world")
            self.assertTrue(c.wait_closed(3)[0])

    def test_upstream_close_mid_length_body(self):
        be = self.backend(harness.close_mid_length(body_sent=100, total=1000))
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            with self.assertRaises(IncompleteResponse) as cm:
                c.read_response()
            self.assertEqual(cm.exception.response.body_len, 100)

    def test_idle_pooled_connection_closed_by_backend(self):
        be = self.backend(harness.close_after_response(delay_ms=100))
        fx = self.ficus(be, be)
        for i in range(3):
            r = fx.request(request_bytes("GET", "/%d" % i))
            self.assertEqual(r.status, 200)
            time.sleep(0.4)  # the backend closes the pooled connection meanwhile
        self.assertEqual(be.request_connections, 3)

    def test_backend_closing_right_after_each_response(self):
        """The close races the next request on the pooled connection: ficus retries
        an idempotent request on a fresh connection instead of failing it."""
        be = self.backend(harness.close_after_response(delay_ms=0))
        fx = self.ficus(be, be)
        with fx.connect() as c:
            for i in range(20):
                c.send(request_bytes("GET", "/%d" % i))
                self.assertEqual(c.read_response().status, 200, "request %d" % i)

    def test_backend_close_arriving_with_the_response(self):
        """The backend's FIN comes in the same segment as its response, and the next
        (pipelined, non-idempotent) request is ready at once: ficus must not write it on
        the dead connection (it could not retry a POST) but take a fresh one."""
        be = self.backend(harness.respond_and_close)
        fx = self.ficus(be, be)
        with fx.connect() as c:
            c.send(b"".join(request_bytes("POST", "/%d" % i, body=b"body%d" % i)
                            for i in range(4)))
            for i in range(4):
                r = c.read_response()
                self.assertEqual((r.status, r.body), (200, b"body%d" % i), "request %d" % i)
        self.assertEqual(be.request_connections, 4)

    def test_backend_connection_close_header(self):
        def handler(req, out):
            out.respond(200, [("Connection", "close")], b"bye")
            return "close"
        be = self.backend(handler)
        fx = self.ficus(be, be)
        with fx.connect() as c:
            for i in range(3):
                c.send(request_bytes("POST", "/", body=b"p"))
                r = c.read_response()
                self.assertEqual((r.status, r.body), (200, b"bye"))
                self.assertIsNone(r.header("connection"), "the backend's close is hop-by-hop")
        self.assertEqual(be.request_connections, 3)


class Signals(FicusTestCase):
    def test_graceful_drain_on_sigterm(self):
        be = self.backend(harness.delay(1500))
        fx = self.ficus(be, be)
        idle = fx.connect()  # an idle keep-alive connection: closed at once
        slow = fx.connect()
        slow.send(request_bytes("GET", "/slow"))
        be.wait_requests(1, timeout=5)
        fx.signal(signal.SIGTERM)

        def refused():
            # A SYN that reached a listener's accept queue just before the
            # listener closed is answered with a reset: also "not accepted".
            try:
                s = socket.create_connection(("127.0.0.1", fx.port), timeout=1)
            except (ConnectionRefusedError, ConnectionResetError):
                return True
            s.close()
            return False

        wait_until(refused, 1.0, what="new connections refused after SIGTERM")
        self.assertTrue(idle.wait_closed(2)[0], "an idle connection stayed open in drain")
        r = slow.read_response(timeout=5)
        self.assertEqual(r.status, 200)
        self.assertEqual((r.header("connection") or "").lower(), "close")
        self.assertTrue(slow.wait_closed(3)[0])
        code = fx.wait(10)
        self.assertEqual(code, 0)
        fx.stop()  # collects the exit and checks the logs
        idle.close()
        slow.close()
        self.assertEqual(len(fx.access_lines()), 1)

    def test_drain_deadline_cuts_what_is_left(self):
        be = self.backend(harness.stall)
        fx = self.ficus(be, be, config={"timeouts": {"drain_ms": 500}})
        c = fx.connect()
        c.send(request_bytes("GET", "/stuck"))
        be.wait_requests(1)
        t0 = time.monotonic()
        fx.signal(signal.SIGTERM)
        self.assertEqual(fx.wait(10), 0)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertTrue(c.wait_closed(2)[0])
        c.close()
        fx.stop()

    def test_reload_bad_file_keeps_config_good_file_applies(self):
        legacy = self.backend(name="legacy")
        new = self.backend(name="new")
        fx = self.ficus(legacy, new, allow_errors=[r"reload rejected"], config={"routes": [
            {"name": "v1", "match": {"path_prefix": "/v1"}, "new_percent": 0}]})
        self.assertEqual(fx.request(request_bytes("GET", "/v1/a")).status, 200)
        self.assertEqual(fx.request(request_bytes("GET", "/v2/a")).status, 404)

        fx.reload(text='{"listen": "127.0.0.1:1", "routes": [ this is not json')
        wait_until(lambda: fx.log_lines("reload rejected"), 5, what="the reload rejection")
        self.assertEqual(fx.request(request_bytes("GET", "/v1/b")).status, 200)
        self.assertEqual(fx.request(request_bytes("GET", "/v2/b")).status, 404)

        bad = dict(fx.config)
        bad["routes"] = [{"name": "v1", "match": {"path_prefix": "/v1"}, "new_percent": 400}]
        n = len(fx.log_lines("reload rejected"))
        fx.reload(bad)
        wait_until(lambda: len(fx.log_lines("reload rejected")) > n, 5,
                   what="the second reload rejection")
        self.assertEqual(fx.request(request_bytes("GET", "/v1/c")).status, 200)

        good = dict(fx.config)
        good["routes"] = [
            {"name": "v1", "match": {"path_prefix": "/v1"}, "new_percent": 0},
            {"name": "v2", "match": {"path_prefix": "/v2"}, "new_percent": 100}]
        fx.reload(good)
        wait_until(lambda: fx.log_lines("configuration reloaded"), 5, what="the reload")
        wait_until(lambda: fx.request(request_bytes("GET", "/v2/c")).status == 200, 5,
                   what="the new route")
        self.assertEqual(new.last().target, "/v2/c")
        self.assertEqual(fx.request(request_bytes("GET", "/v1/d")).status, 200)
        self.assertEqual(legacy.last().target, "/v1/d")

    def test_reload_with_request_in_flight(self):
        be = self.backend(harness.delay(600))
        fx = self.ficus(be, be)
        c = fx.connect()
        c.send(request_bytes("GET", "/during"))
        be.wait_requests(1)
        cfg = dict(fx.config)
        cfg["routes"] = [{"name": "renamed", "new_percent": 0}]
        fx.reload(cfg)
        wait_until(lambda: fx.log_lines("configuration reloaded"), 5, what="the reload")
        self.assertEqual(c.read_response().status, 200)
        c.close()
        self.assertEqual(fx.request(request_bytes("GET", "/after")).status, 200)
        lines = fx.wait_access_lines(2)
        self.assertIn("route=all", lines[0])
        self.assertIn("route=renamed", lines[1])


class AccessLog(FicusTestCase):
    def test_one_line_per_request(self):
        be = self.backend()
        fx = self.ficus(be, be, config={"routes": [
            {"name": "api", "match": {"path_prefix": "/api"}, "new_percent": 0}]})
        with fx.connect() as c:
            c.send(request_bytes("GET", "/api/1") + request_bytes("POST", "/api/2", body=b"x"))
            c.read_response()
            c.read_response()
            c.send(request_bytes("GET", "/nope"))
            self.assertEqual(c.read_response().status, 404)
        with fx.connect() as c:
            c.send(b"POST /api/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2"
                   b"\r\n\r\nab")
            self.assertEqual(c.read_response().status, 400)
        lines = fx.wait_access_lines(4)
        time.sleep(0.5)  # nothing more is coming
        lines = fx.access_lines()
        self.assertEqual(len(lines), 4, "\n".join(lines))
        self.assertRegex(lines[0], r'method=GET target="/api/1" route=api backend=legacy '
                                   r'status=200 ')
        self.assertRegex(lines[1], r'method=POST target="/api/2" .*status=200 bytes=1 ')
        self.assertRegex(lines[2], r'target="/nope" route=- .*status=404')
        self.assertIn("status=400", lines[3])
        for line in lines:
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z client=127\.0\.0\.1 ")

    def test_refused_heads_are_logged(self):
        """Heads refused before routing (bad bytes, too large, too slow) get a line too."""
        be = self.backend()
        fx = self.ficus(be, be, config={"limits": {"max_header_bytes": 4096},
                                        "timeouts": {"client_idle_ms": 700}})
        self.assertEqual(fx.request(b"GET / HTTP/1.1\nHost: x\n\n").status, 400)
        self.assertEqual(fx.request(request_bytes("GET", "/", headers=[("X-Big", "a" * 5000)]))
                         .status, 431)
        with fx.connect() as c:
            c.send(b"GET / HTTP/1.1\r\nHost:")
            self.assertEqual(c.read_response(timeout=5).status, 408)
        lines = fx.wait_access_lines(3)
        time.sleep(0.4)
        lines = fx.access_lines()
        self.assertEqual(len(lines), 3, "\n".join(lines))
        for line, status in zip(lines, (400, 431, 408)):
            self.assertIn("status=%d " % status, line)
            self.assertIn("client=127.0.0.1 ", line)
        self.assertEqual(be.requests, [])


if __name__ == "__main__":
    unittest.main()
