"""Upgrade tunnels (issue 15): a WebSocket through ficus to a real RFC 6455 echo backend.

An upgrade request is routed like any other (sticky split, override header), forwarded
with its upgrade headers, and on 101 both sides become a byte tunnel: backpressure both
ways, an idle timeout, the drain deadline on SIGTERM, one access-log line at the end with
the bytes each way, a gauge of open tunnels. Tunnels are never shadowed; a route can
refuse upgrades; an upgrade the backend refuses is an ordinary response; h2c is not an
upgrade ficus makes."""

import re
import signal
import socket
import threading
import time
import unittest

from harness import FicusTestCase, request_bytes, sanitized, wait_until
from harness_admin import AdminFicus, metric
from harness_ws import WsBackend, WsClient, accept_key, encode_frame, read_head


class TunnelCase(FicusTestCase):
    WATCHDOG_SECONDS = 180 if sanitized() else 90

    def ws_backend(self, **kw):
        b = WsBackend(**kw)
        self.addCleanup(b.close)
        return b

    def start(self, legacy, new=None, **config):
        cfg = {"routes": [{"name": "chat", "new_percent": 0, "override_header": "x-backend"}]}
        cfg.update(config)
        f = AdminFicus(legacy, new or legacy, config=cfg)
        self._ficuses.append(f)
        f.start()
        return f

    def open(self, f, **kw):
        c = WsClient(f.port, **kw)
        self.addCleanup(c.close)
        return c

    def tunnels_open(self, f):
        with f.admin() as a:
            return metric(a.metrics(), "ficus_tunnels_open")

    def access_lines(self, f):
        return [l for l in f.stdout().splitlines() if " status=101 " in l]


class Echo(TunnelCase):
    def test_echo_both_ways_and_the_close(self):
        legacy = self.ws_backend()
        new = self.ws_backend()
        f = self.start(legacy, new)
        c = self.open(f, headers=[("x-backend", "new")])
        self.assertEqual(c.status, 101)
        self.assertEqual(c.headers.get("upgrade", "").lower(), "websocket")
        self.assertEqual(c.headers.get("connection", "").lower(), "upgrade")
        self.assertEqual(c.headers["sec-websocket-accept"].encode(), accept_key(c.key))
        # The override header chose new; legacy saw nothing.
        self.assertEqual(len(new.heads), 1)
        self.assertEqual(legacy.heads, [])
        line, h = new.heads[0]
        self.assertEqual(line, "GET /ws HTTP/1.1")
        self.assertEqual(h.get("upgrade"), "websocket")
        self.assertEqual(h.get("connection"), "upgrade")
        self.assertEqual(h.get("sec-websocket-key"), c.key.decode())
        self.assertNotIn("x-backend", h)
        wait_until(lambda: self.tunnels_open(f) == 1, 5, what="one open tunnel")
        sent = 0
        for i, size in enumerate([1, 2, 125, 126, 65535, 65536, 100000, 7, 300000]):
            payload = bytes((i * 7 + k) % 256 for k in range(size))
            c.send(payload, opcode=2 if i % 2 else 1)
            opcode, got = c.recv()
            self.assertEqual(opcode, 2 if i % 2 else 1)
            self.assertEqual(got, payload, "message %d (%d bytes)" % (i, size))
            sent += size
        c.send(b"\x03\xe8bye", opcode=8)
        opcode, got = c.recv()
        self.assertEqual((opcode, got), (8, b"\x03\xe8bye"))
        c.sock.settimeout(5)
        self.assertEqual(c.sock.recv(10), b"", "ficus closes the client once the backend did")
        wait_until(lambda: self.tunnels_open(f) == 0, 5, what="no open tunnel")
        lines = wait_until(lambda: self.access_lines(f), 5, what="the tunnel's access-log line")
        self.assertEqual(len(lines), 1, lines)
        m = re.search(r" bytes=(\d+) .* bytes_up=(\d+) tunnel_end=backend", lines[0])
        self.assertIsNotNone(m, lines[0])
        self.assertGreater(int(m.group(2)), sent)  # payloads plus frame heads and masks
        self.assertGreater(int(m.group(1)), sent)
        with f.admin() as a:
            self.assertEqual(metric(a.metrics(), "ficus_requests_total", route="chat",
                                    backend="new", code="1xx"), 1)

    def test_bytes_the_client_sends_with_its_request_go_through(self):
        # A client may send its first frame right behind the upgrade request.
        be = self.ws_backend()
        f = self.start(be)
        s = socket.create_connection(("127.0.0.1", f.port), timeout=10)
        self.addCleanup(s.close)
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" +
                  encode_frame(1, b"early", mask=True))
        line, headers, rest = read_head(s)
        self.assertIn(" 101 ", line)
        from harness_ws import FrameReader
        self.assertEqual(FrameReader(s, rest).read(), (1, b"early"))


class Backpressure(TunnelCase):
    TOTAL = 48 << 20

    def test_backend_flood_to_a_slow_client(self):
        be = self.ws_backend(flood=self.TOTAL)
        f = self.start(be)
        c = self.open(f)
        base = f.rss_kb()
        peak = base
        got = 0
        while got < self.TOTAL:
            _, payload = c.recv(timeout=30)
            got += len(payload)
            if got % (4 << 20) < 65536:
                time.sleep(0.2)  # a slow reader: ficus must stop reading the backend
                peak = max(peak, f.rss_kb())
        self.assertEqual(got, self.TOTAL)
        self.assertLess(peak - base, 16 * 1024, "RSS grew %d KiB" % (peak - base))

    def test_client_flood_to_a_slow_backend(self):
        be = self.ws_backend(slow_read=True)
        f = self.start(be)
        c = self.open(f)
        base = f.rss_kb()
        block = b"u" * (1 << 20)
        done = threading.Event()
        sent = [0]

        def flood():
            try:
                while sent[0] < self.TOTAL:
                    c.send(block)
                    sent[0] += len(block)
            except OSError:
                pass
            done.set()
        threading.Thread(target=flood, daemon=True).start()
        # The backend reads nothing: the client must be held back, ficus's memory flat.
        wait_until(lambda: sent[0] >= 4 << 20, 10, what="some of the flood sent")
        time.sleep(1.0)
        stuck_at = sent[0]
        self.assertLess(stuck_at, self.TOTAL, "nothing held the client back")
        self.assertLess(f.rss_kb() - base, 16 * 1024)
        be.release.set()  # the backend reads (and echoes) again
        got = 0
        while got < self.TOTAL:
            _, payload = c.recv(timeout=30)
            got += len(payload)
        self.assertTrue(done.wait(10))
        self.assertEqual(be.received, self.TOTAL)


class Limits(TunnelCase):
    def test_idle_tunnel_closed(self):
        be = self.ws_backend()
        f = self.start(be, timeouts={"tunnel_idle_ms": 600})
        c = self.open(f)
        c.send(b"ping")
        self.assertEqual(c.recv()[1], b"ping")
        t0 = time.monotonic()
        c.sock.settimeout(10)
        self.assertEqual(c.sock.recv(10), b"")
        self.assertLess(time.monotonic() - t0, 5)
        lines = wait_until(lambda: self.access_lines(f), 5, what="the access-log line")
        self.assertIn("tunnel_end=idle", lines[0])

    def test_sigterm_gives_open_tunnels_the_drain_deadline(self):
        be = self.ws_backend()
        f = self.start(be, timeouts={"drain_ms": 1500})
        c = self.open(f)
        f.signal(signal.SIGTERM)
        time.sleep(0.3)
        c.send(b"still here")  # the tunnel goes on during the drain
        self.assertEqual(c.recv()[1], b"still here")
        t0 = time.monotonic()
        c.sock.settimeout(10)
        try:
            self.assertEqual(c.sock.recv(10), b"")
        except ConnectionResetError:
            pass
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(f.wait(15), 0)
        lines = wait_until(lambda: self.access_lines(f), 5, what="the access-log line")
        self.assertIn("tunnel_end=shutdown", lines[0])

    def test_route_refusing_upgrades(self):
        be = self.ws_backend()
        f = self.start(be, routes=[{"name": "chat", "new_percent": 0, "allow_upgrade": False}])
        c = self.open(f)
        self.assertEqual(c.status, 403)
        self.assertEqual(be.heads, [])

    def test_backend_refusing_the_upgrade_is_an_ordinary_response(self):
        be = self.ws_backend(refuse=True)
        f = self.start(be)
        c = self.open(f)
        self.assertEqual(c.status, 426)
        self.assertEqual(len(be.heads), 1)
        wait_until(lambda: [l for l in f.stdout().splitlines() if " status=426 " in l], 5,
                   what="an ordinary access-log line")
        self.assertEqual(self.tunnels_open(f), 0)

    def test_h2c_is_not_an_upgrade_ficus_makes(self):
        be = self.ws_backend()
        f = self.start(be)
        with f.connect() as c:
            c.send(request_bytes("GET", "/h", headers=[
                ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")]))
            r = c.read_response()
        self.assertEqual(r.status, 426)  # the echo backend's answer to a plain request
        line, h = be.heads[0]
        self.assertNotIn("upgrade", h)
        self.assertNotIn("http2-settings", h)

    def test_upgrades_are_never_shadowed(self):
        legacy = self.ws_backend()
        new = self.ws_backend()
        f = self.start(legacy, new, routes=[{"name": "chat", "new_percent": 0,
                                             "shadow": {"percent": 100}}])
        c = self.open(f)
        self.assertEqual(c.status, 101)
        c.send(b"x")
        self.assertEqual(c.recv()[1], b"x")
        time.sleep(0.3)  # a wrongly sent shadow would have arrived by now
        self.assertEqual(new.heads, [])


if __name__ == "__main__":
    unittest.main()
