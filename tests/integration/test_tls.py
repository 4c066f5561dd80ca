"""TLS on both sides: a TLS listener (certificate chain, TLS 1.2 minimum, ALPN,
SNI, reload on SIGHUP, handshake deadline) and https backends (verification
against a CA file, hostname and IP checks, expiry, verify false, session
resumption), with certificates made by openssl for each run."""

import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from harness import FicusTestCase, request_bytes, wait_until
from harness_tls import Pki

HAVE_OPENSSL = shutil.which("openssl") is not None


def setUpModule():
    global PKI, PKI_DIR
    if not HAVE_OPENSSL:
        raise unittest.SkipTest("no openssl command")
    PKI_DIR = tempfile.mkdtemp(prefix="ficus-pki-")
    PKI = Pki(PKI_DIR)


def tearDownModule():
    if HAVE_OPENSSL:
        shutil.rmtree(PKI_DIR, ignore_errors=True)


class TlsCase(FicusTestCase):
    def tls_backend(self, handler=None, cert="backend", name="new"):
        return self.backend(handler, name=name, ssl_context=PKI.server_context(cert))

    def https_ficus(self, backend, tls=None, listen_tls=True, start=True, **kw):
        """ficus with its route on `new` = backend (an https Backend or URL), a TLS
        listener with the chain proxy.pem unless listen_tls is False."""
        legacy = self.backend(name="legacy")
        fx = harness.Ficus(legacy, backend, **kw)
        cfg = fx.config
        cfg["routes"] = [{"name": "all", "new_percent": 100}]
        cfg["backends"]["new"]["tls"] = tls if tls is not None else {
            "ca_file": PKI.path("ca.pem"), "server_name": "backend.test"}
        if listen_tls:
            cfg["listen"] = [{"address": "127.0.0.1:%d" % fx.port,
                              "tls": {"cert_file": PKI.path("proxy.pem"),
                                      "key_file": PKI.path("proxy.key")}}]
        self._ficuses.append(fx)
        if start:
            fx.start()
        return fx

    def client(self, fx, ca="ca", hostname="localhost", **kw):
        return harness.Client(fx.port, ssl_context=PKI.client_context(ca, **kw),
                              server_hostname=hostname)


class Listener(TlsCase):
    def test_https_client_through_to_https_backend(self):
        be = self.tls_backend()
        fx = self.https_ficus(be)
        with self.client(fx, alpn=("h2", "http/1.1")) as c:
            self.assertEqual(c.sock.selected_alpn_protocol(), "http/1.1")
            self.assertIn(c.sock.version(), ("TLSv1.2", "TLSv1.3"))
            for i in range(3):  # keep-alive on both sides
                c.send(request_bytes("POST", "/echo/%d" % i, body=b"payload %d" % i))
                r = c.read_response()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.body, b"payload %d" % i)
        reqs = be.wait_requests(3)
        self.assertEqual(reqs[0].header("x-forwarded-proto"), "https")
        self.assertEqual(be.request_connections, 1, "the upstream TLS connection is pooled")
        self.assertEqual(len(be.tls_handshakes), 1)
        self.assertEqual(be.tls_handshakes[0][1], "backend.test", "SNI is tls.server_name")
        lines = fx.wait_access_lines(3)
        self.assertRegex(lines[0], r" tls=TLSv1\.[23] sni=localhost$")

    def test_large_bodies_both_ways(self):
        total = 3 << 20
        crc = harness.pattern_crc(total)

        def handler(req, out):
            if req.method == "POST":
                out.respond(200, [("X-Got", "%d/%d" % (req.body_len, req.body_crc))], b"ok")
            else:
                harness.huge(total)(req, out)
        be = self.tls_backend(handler)
        fx = self.https_ficus(be)
        with self.client(fx) as c:
            c.send(request_bytes("POST", "/up", headers=[("Content-Length", str(total))]))
            for piece in harness.pattern_stream(total):
                c.send(piece)
            r = c.read_response(timeout=30)
            self.assertEqual((r.status, r.header("x-got")), (200, "%d/%d" % (total, crc)))
            c.send(request_bytes("GET", "/down"))
            r = c.read_response(timeout=30, keep=0)
            self.assertEqual((r.status, r.body_len, r.body_crc), (200, total, crc))

    def test_plain_backend_behind_tls_listener_and_chain_verifies(self):
        be = self.backend(name="new")
        fx = self.https_ficus(be, start=False)
        del fx.config["backends"]["new"]["tls"]
        fx.start()
        # The client trusts only the root: the intermediate must come from ficus.
        with self.client(fx, hostname="proxy.test") as c:
            c.send(request_bytes("GET", "/x"))
            self.assertEqual(c.read_response().status, 200)

    def test_tls11_client_refused_by_the_server(self):
        fx = self.https_ficus(self.tls_backend())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with self.assertRaises(ssl.SSLError) as e:
            harness.Client(fx.port, ssl_context=ctx, server_hostname="localhost")
        # The server's alert, not the client's own refusal to offer TLS 1.1.
        self.assertIn("ALERT_PROTOCOL_VERSION", str(e.exception).upper())
        # TLS 1.2 still works.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("DEFAULT")
        with harness.Client(fx.port, ssl_context=ctx, server_hostname="localhost") as c:
            self.assertEqual(c.sock.version(), "TLSv1.2")
            c.send(request_bytes("GET", "/"))
            self.assertEqual(c.read_response().status, 200)

    def test_plain_http_on_tls_port_is_closed(self):
        fx = self.https_ficus(self.tls_backend())
        with fx.connect() as c:
            c.send(request_bytes("GET", "/"))
            closed, extra = c.wait_closed(5)
            self.assertTrue(closed)
            self.assertNotIn(b"HTTP/1.1 200", extra)

    def test_stalled_handshake_cut_at_header_deadline(self):
        fx = self.https_ficus(self.tls_backend(), config={"timeouts": {"client_idle_ms": 1000}})
        # A TLS record header announcing a ClientHello that never comes in full.
        with fx.connect() as c:
            t0 = time.monotonic()
            c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            closed, _ = c.wait_closed(5)
            self.assertTrue(closed, "a stalled handshake was not cut")
            self.assertGreater(time.monotonic() - t0, 0.5, "cut before the deadline")
        # One that sends nothing at all is cut too.
        with fx.connect() as c:
            self.assertTrue(c.wait_closed(5)[0])

    def test_certificate_reload_on_sighup_keeps_open_connections(self):
        be = self.tls_backend()
        fx = self.https_ficus(be)
        old = self.client(fx)
        old.send(request_bytes("GET", "/before"))
        self.assertEqual(old.read_response().status, 200)
        # Swap the files for a certificate from another CA, then SIGHUP.
        listen = fx.config["listen"][0]["tls"]
        listen["cert_file"] = PKI.path("other.pem")
        listen["key_file"] = PKI.path("other.key")
        fx.reload()
        wait_until(lambda: fx.log_lines(r"configuration reloaded"), 5, what="reload logged")

        with self.client(fx, ca="other-ca") as c:
            c.send(request_bytes("GET", "/after"))
            self.assertEqual(c.read_response().status, 200)
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.client(fx, ca="ca")
        # The connection made before the reload goes on with its session.
        old.send(request_bytes("GET", "/still"))
        self.assertEqual(old.read_response().status, 200)
        old.close()

    def test_bad_certificate_reload_keeps_the_running_one(self):
        fx = self.https_ficus(self.tls_backend(), allow_errors=[r"reload rejected"])
        fx.config["listen"][0]["tls"]["key_file"] = PKI.path("other.key")  # does not match
        fx.reload()
        wait_until(lambda: fx.log_lines(r"reload rejected.*does not match"), 5,
                   what="reload rejected")
        with self.client(fx) as c:
            c.send(request_bytes("GET", "/"))
            self.assertEqual(c.read_response().status, 200)


class UpstreamVerification(TlsCase):
    def assert_502(self, fx, reason_re):
        with self.client(fx) as c:
            c.send(request_bytes("GET", "/x"))
            r = c.read_response()
            self.assertEqual(r.status, 502)
            self.assertIn(b"TLS", r.body)
        lines = fx.log_lines(r"TLS handshake failed backend=new")
        self.assertTrue(lines, "no log line for the failed handshake")
        self.assertRegex(lines[0], reason_re)

    def test_wrong_ca_is_502(self):
        be = self.tls_backend()
        fx = self.https_ficus(be, tls={"ca_file": PKI.path("other-ca.pem"),
                                       "server_name": "backend.test"})
        self.assert_502(fx, r"certificate verify failed: unable to get local issuer")
        self.assertEqual(be.requests, [])

    def test_wrong_hostname_is_502(self):
        be = self.tls_backend()
        fx = self.https_ficus(be, tls={"ca_file": PKI.path("ca.pem"),
                                       "server_name": "orders.internal"})
        self.assert_502(fx, r"certificate verify failed: [Hh]ostname mismatch")

    def test_expired_certificate_is_502(self):
        be = self.tls_backend(cert="expired")
        fx = self.https_ficus(be)
        self.assert_502(fx, r"certificate verify failed: certificate has expired")

    def test_plain_http_backend_behind_https_url_is_502(self):
        # A plain HTTP server answers the ClientHello with a 400 and closes.
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        self.addCleanup(lsock.close)

        def serve():  # readiness probes connect too: answer whoever comes
            while True:
                try:
                    s, _ = lsock.accept()
                except OSError:
                    return
                try:
                    if s.recv(4096):
                        s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass
                s.close()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        fx = self.https_ficus("https://127.0.0.1:%d" % lsock.getsockname()[1])
        with self.client(fx) as c:
            c.send(request_bytes("GET", "/x"))
            self.assertEqual(c.read_response().status, 502)
        self.assertTrue(fx.log_lines(r"TLS handshake failed backend=new"))

    def test_verify_false_connects_and_warns(self):
        be = self.tls_backend(cert="expired")
        fx = self.https_ficus(be, tls={"verify": False})
        self.assertTrue(fx.log_lines(r"level=warn.*backend new: TLS certificate verification is off"))
        with self.client(fx) as c:
            c.send(request_bytes("GET", "/x"))
            self.assertEqual(c.read_response().status, 200)

    def test_ip_literal_verified_as_address_without_sni(self):
        be = self.tls_backend()
        fx = self.https_ficus(be, tls={"ca_file": PKI.path("ca.pem")})  # URL host 127.0.0.1
        with self.client(fx) as c:
            c.send(request_bytes("GET", "/x"))
            self.assertEqual(c.read_response().status, 200)
        self.assertEqual(be.tls_handshakes[0][1], None, "no SNI for an IP address")

    def test_ip_literal_mismatch_is_502(self):
        # The backend certificate names 127.0.0.1, not ::1 or 127.0.0.2.
        be = self.tls_backend()
        fx = self.https_ficus(be, tls={"ca_file": PKI.path("ca.pem"), "server_name": "127.0.0.2"})
        self.assert_502(fx, r"certificate verify failed: IP address mismatch")

    def test_session_resumed_on_new_pooled_connections(self):
        def close_each(req, out):
            out.respond(200, [("Connection", "close")], b"one")
            return "close"
        be = self.tls_backend(close_each)
        fx = self.https_ficus(be)
        with self.client(fx) as c:
            for i in range(4):
                c.send(request_bytes("GET", "/r%d" % i))
                self.assertEqual(c.read_response().status, 200)
        wait_until(lambda: len(be.tls_handshakes) >= 4, 5, what="4 upstream handshakes")
        reused = [r for r, _ in be.tls_handshakes]
        self.assertFalse(reused[0])
        self.assertTrue(all(reused[1:]), "later connections did not resume: %r" % reused)


class PerServer(TlsCase):
    """A backend of several https servers (issue 19): each server is sent its own host as
    SNI and verified against it, and resumes its own TLS sessions (servers do not share
    session caches or ticket keys, so one session for the whole backend never resumes)."""

    def test_sni_verification_and_resumption_per_server(self):
        from dnsserver import DnsServer

        def close_each(req, out):
            out.respond(200, [("Connection", "close")], out.backend.name.encode())
            return "close"
        one = self.backend(close_each, name="one", ssl_context=PKI.server_context("backend"))
        two = self.backend(close_each, name="two", ssl_context=PKI.server_context("proxy"))
        dns = DnsServer().start()
        self.addCleanup(dns.close)
        dns.set("backend.test", ["127.0.0.1"], ttl=60)
        dns.set("proxy.test", ["127.0.0.1"], ttl=60)
        fx = self.https_ficus(None, listen_tls=False, start=False)
        fx.config["resolvers"] = ["127.0.0.1:%d" % dns.port]
        fx.config["backends"]["new"] = {
            "servers": ["https://backend.test:%d" % one.port, "https://proxy.test:%d" % two.port],
            "tls": {"ca_file": PKI.path("ca.pem")}}
        fx.start()
        bodies = []
        for i in range(6):
            r = fx.request(request_bytes("GET", "/r%d" % i))
            self.assertEqual(r.status, 200, r.body)
            bodies.append(r.body)
        self.assertEqual(sorted(bodies), [b"one"] * 3 + [b"two"] * 3)
        wait_until(lambda: len(one.tls_handshakes) >= 3 and len(two.tls_handshakes) >= 3, 5,
                   what="3 handshakes per server")
        for be, sni in ((one, "backend.test"), (two, "proxy.test")):
            self.assertEqual([n for _, n in be.tls_handshakes], [sni] * 3, be.name)
            reused = [r for r, _ in be.tls_handshakes]
            self.assertEqual(reused, [False, True, True], "%s resumed %r" % (be.name, reused))


    def test_health_checks_over_tls_per_server(self):
        """With health.path, each https server is checked over TLS with its own SNI and its
        host in Host; a server whose check answers 503 is down, the other stays up."""
        from dnsserver import DnsServer
        import json
        import http.client

        def health(req, out):
            ok = req.target != "/health" or out.backend.name == "one"
            out.respond(200 if ok else 503, [], b"ok" if ok else b"down")
        one = self.backend(health, name="one", ssl_context=PKI.server_context("backend"))
        two = self.backend(health, name="two", ssl_context=PKI.server_context("proxy"))
        dns = DnsServer().start()
        self.addCleanup(dns.close)
        dns.set("backend.test", ["127.0.0.1"], ttl=60)
        dns.set("proxy.test", ["127.0.0.1"], ttl=60)
        fx = self.https_ficus(None, listen_tls=False, start=False)
        fx.config["resolvers"] = ["127.0.0.1:%d" % dns.port]
        fx.config["backends"]["new"] = {
            "servers": ["https://backend.test:%d" % one.port, "https://proxy.test:%d" % two.port],
            "tls": {"ca_file": PKI.path("ca.pem")},
            "health": {"path": "/health", "interval_ms": 200}}
        fx.start()
        admin = int(fx.config["admin"]["address"].rsplit(":", 1)[1])

        def states():
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
            try:
                c.request("GET", "/api/v1/routes")
                be = json.loads(c.getresponse().read())["backends"]["new"]
            except OSError:  # the admin API comes up a moment after the proxy port
                return None
            finally:
                c.close()
            return {a["address"]: (a["state"], a["reachable"]) for a in be["addresses"]}
        want = {"127.0.0.1:%d" % one.port: ("up", True), "127.0.0.1:%d" % two.port: ("down", False)}
        wait_until(lambda: states() == want, 10, what="one up, two down")
        for be, sni in ((one, "backend.test"), (two, "proxy.test")):
            checks = [r for r in be.requests if r.target == "/health"]
            self.assertTrue(checks, be.name)
            self.assertEqual(checks[0].header("host"), "%s:%d" % (sni, be.port))
            self.assertEqual({n for _, n in be.tls_handshakes}, {sni}, be.name)
        # Every request goes to the server that passes its checks.
        for i in range(4):
            r = fx.request(request_bytes("GET", "/r%d" % i))
            self.assertEqual((r.status, r.body), (200, b"ok"))
        self.assertEqual([r.target for r in two.requests if r.target != "/health"], [])
        self.assertTrue(fx.log_lines(r'health check failed backend=new server=127\.0\.0\.1:%d '
                                     r'reason="answered 503"' % two.port))


class Check(TlsCase):
    def check(self, cfg):
        fx = harness.Ficus(config=cfg, name="check")
        fx.write_config()  # cfg's listen, if any, replaced the default in the merge
        p = subprocess.run([harness.ficus_bin(), "check", "-c", fx.config_path],
                           capture_output=True, text=True, timeout=20, env=fx.env())
        shutil.rmtree(fx.workdir, ignore_errors=True)
        return p.returncode, p.stdout

    def listen(self, cert, key):
        return {"listen": [{"address": "127.0.0.1:1", "tls": {"cert_file": cert,
                                                             "key_file": key}}]}

    def test_missing_certificate_named(self):
        code, out = self.check(self.listen("/nonexistent/cert.pem", PKI.path("proxy.key")))
        self.assertEqual(code, 1)
        self.assertRegex(out, r"ficus\.json: listen\[0\]\.tls\.cert_file: cannot read "
                              r"\"/nonexistent/cert\.pem\": No such file")

    def test_key_not_matching_certificate(self):
        code, out = self.check(self.listen(PKI.path("proxy.pem"), PKI.path("backend.key")))
        self.assertEqual(code, 1)
        self.assertRegex(out, r"listen\[0\]\.tls\.key_file: the key \".*backend\.key\" does not "
                              r"match the certificate")

    def test_not_a_certificate(self):
        code, out = self.check(self.listen(PKI.path("ca.cnf"), PKI.path("proxy.key")))
        self.assertEqual(code, 1)
        self.assertRegex(out, r"listen\[0\]\.tls\.cert_file: \".*ca\.cnf\" is not a PEM certificate")

    def test_bad_ca_file_named(self):
        cfg = {"backends": {"new": {"url": "https://127.0.0.1:1",
                                    "tls": {"ca_file": PKI.path("ca.cnf")}}}}
        code, out = self.check(cfg)
        self.assertEqual(code, 1)
        self.assertRegex(out, r"backends\.new\.tls\.ca_file: \".*ca\.cnf\" holds no PEM")

    def test_good_tls_config_passes(self):
        cfg = self.listen(PKI.path("proxy.pem"), PKI.path("proxy.key"))
        cfg["backends"] = {"new": {"url": "https://127.0.0.1:1",
                                   "tls": {"ca_file": PKI.path("ca.pem")}}}
        code, out = self.check(cfg)
        self.assertEqual((code, out.strip()), (0, "ok"))


class Volume(TlsCase):
    """Many TLS requests and connections: under ASan the exit reports any leak."""
    WATCHDOG_SECONDS = 240

    def test_keepalive_requests_and_new_connections(self):
        be = self.tls_backend(harness.respond_with(200, body=b"x" * 100))
        fx = self.https_ficus(be)
        keepalive, fresh = 10000, 1000
        errors = []

        def keepalive_worker(n):
            try:
                with self.client(fx) as c:
                    for _ in range(n):
                        c.send(request_bytes("GET", "/k"))
                        if c.read_response().status != 200:
                            errors.append("status")
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(repr(e))

        def fresh_worker(n):
            ctx = PKI.client_context()
            try:
                for _ in range(n):
                    with harness.Client(fx.port, ssl_context=ctx,
                                        server_hostname="localhost") as c:
                        c.send(request_bytes("GET", "/n", headers=[("Connection", "close")]))
                        if c.read_response().status != 200:
                            errors.append("status")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=keepalive_worker, args=(keepalive // 4,))
                   for _ in range(4)]
        threads += [threading.Thread(target=fresh_worker, args=(fresh // 4,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(200)
        self.assertEqual(errors, [])
        self.assertEqual(len(be.requests), keepalive + fresh)
        fx.stop()  # a leak or a sanitizer report fails here


if __name__ == "__main__":
    unittest.main()
