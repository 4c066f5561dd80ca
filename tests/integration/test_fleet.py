"""Backend fleets through the real binary (issue 19): several servers per backend.

- At start and reload: a host name that does not resolve is a warning when another server
  of the backend has an address, and an error (the start is refused) when none has. Names
  under the reserved .invalid domain (RFC 6761) never resolve.
- Balancing: three servers on 127.0.0.1, .2 and .3 (all of 127/8 is loopback on Linux)
  get requests within 10 % of their weights; least_requests sends fewer to a slow server.
- Ejection: a server killed with SIGKILL (a process of its own, fleet_backend.py) is
  ejected and no client request fails, during the first failures either (retried once on
  another server); started again, it gets traffic again. A backend whose every server is
  down still falls back to legacy. Health checks with health.path take a server out.
- DNS that follows: dnsserver.py, named in `resolvers`, changes its answer for a name from
  127.0.0.2 to 127.0.0.3; the new address takes traffic within one TTL while requests keep
  flowing and none fails; a DNS server that stops answering keeps the last good set.
"""

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from dnsserver import DnsServer
from harness import (FicusTestCase, ficus_bin, free_port, respond_with, sanitized,
                     wait_until)
from harness_admin import AdminFicus, KeepAlive, metric, named_backend, refused_url, slow

HERE = os.path.dirname(os.path.abspath(__file__))


class StartResolution(FicusTestCase):
    def test_unresolvable_server_is_a_warning_when_another_resolves(self):
        b = self.backend(respond_with(body=b"legacy"))
        f = self.ficus(start=False)
        f.config["backends"]["legacy"] = {
            "servers": [{"url": "http://nonexistent.invalid:8080", "weight": 2}, b.url]
        }
        f.start()
        r = f.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"legacy")
        warned = f.log_lines(
            r'level=warn .*backends\.legacy\.servers\[0\]: cannot resolve host "nonexistent\.invalid"'
        )
        self.assertEqual(len(warned), 1, f.stderr())

    def test_no_server_resolves_is_an_error(self):
        f = self.ficus(start=False)
        f.config["backends"]["legacy"] = {
            "servers": ["http://nonexistent.invalid", "http://also-nonexistent.invalid:81"]
        }
        f.write_config()
        proc = subprocess.run(
            [ficus_bin(), "-c", f.config_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60 if sanitized() else 30,
            text=True,
            env=f.env(),
        )
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = proc.stderr.splitlines()
        for i, host in enumerate(["nonexistent.invalid", "also-nonexistent.invalid"]):
            prefix = '%s: backends.legacy.servers[%d]: cannot resolve host "%s": ' % (
                f.config_path, i, host)
            self.assertTrue(any(l.startswith(prefix) for l in lines), proc.stderr)
        self.assertNotIn("Sanitizer", proc.stderr)

        # A url backend names its url, as before.
        f.config["backends"]["legacy"] = {"url": "http://nonexistent.invalid"}
        f.write_config()
        proc = subprocess.run([ficus_bin(), "-c", f.config_path], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=60 if sanitized() else 30, text=True, env=f.env())
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn('%s: backends.legacy.url: cannot resolve host "nonexistent.invalid": '
                      % f.config_path, proc.stderr)

    def test_reload_keeps_running_config_when_no_server_resolves(self):
        b = self.backend(respond_with(body=b"legacy"))
        f = self.ficus(legacy=b, allow_errors=[r"reload rejected: .*cannot resolve host"])
        cfg = dict(f.config)
        cfg["backends"] = dict(cfg["backends"])
        cfg["backends"]["legacy"] = {"servers": ["http://nonexistent.invalid"]}
        f.reload(cfg)
        wait_until(lambda: f.log_lines(r'reload rejected: .*backends\.legacy\.servers\[0\]: '
                                       r'cannot resolve host "nonexistent\.invalid"'),
                   10, what="the refused reload")
        r = f.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(r.body, b"legacy")


# ---------------------------------------------------------------------------------------
# helpers


def common_port(hosts):
    """A TCP port free on every one of hosts (servers of one DNS name share a port)."""
    for _ in range(50):
        port = free_port()
        socks = []
        try:
            for h in hosts:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((h, port))
                socks.append(s)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no port free on all of %s" % (hosts,))


class FleetServer:
    """fleet_backend.py as a process of its own: answers its name; kill() is SIGKILL."""

    def __init__(self, host, port, name, delay_ms=0, cwd=None):
        self.host, self.port, self.name = host, port, name
        self.delay_ms = delay_ms
        self.cwd = cwd
        self.proc = None

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    def start(self):
        args = [sys.executable, os.path.join(HERE, "fleet_backend.py"), self.host,
                str(self.port), self.name]
        if self.delay_ms:
            args += ["--delay-ms", str(self.delay_ms)]
        deadline = time.monotonic() + slow(10)
        while True:  # the address may still be held a moment after a kill
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd=self.cwd)
            line = self.proc.stdout.readline().decode()
            if line.startswith("listening"):
                return self
            self.proc.wait(5)
            if time.monotonic() > deadline:
                raise AssertionError("%s did not start: %s" % (
                    self.name, self.proc.stderr.read().decode()[-2000:]))
            time.sleep(0.1)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                f.close()
        self.proc = None


class Load:
    """Client threads sending GET / on keep-alive connections until stop(), counting the
    answers by body (the server's name) and keeping every failure."""

    def __init__(self, port, threads=4, expect=()):
        self.port = port
        self.expect = set(expect)
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.first = {}  # name -> monotonic time of its first answer
        self.last = {}
        self.failures = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self):
        ka = None
        while not self.stopping.is_set():
            try:
                if ka is None or ka.conn.sock is None:
                    if ka is not None:
                        ka.close()
                    ka = KeepAlive(self.port)
                status, _, body = ka.request("GET", "/")
                name = body.decode()
                now = time.monotonic()
                with self.lock:
                    if status != 200 or (self.expect and name not in self.expect):
                        self.failures.append("status %d body %r" % (status, body[:80]))
                    else:
                        self.counts[name] += 1
                        self.first.setdefault(name, now)
                        self.last[name] = now
            except Exception as e:  # every failure is the test's business
                with self.lock:
                    self.failures.append(repr(e))
                if ka is not None:
                    ka.close()
                ka = None
        if ka is not None:
            ka.close()

    def snapshot(self):
        with self.lock:
            return collections.Counter(self.counts)

    def total(self):
        with self.lock:
            return sum(self.counts.values())

    def wait_more(self, n, timeout=None):
        start = self.total()
        wait_until(lambda: self.total() >= start + n or self.failures, timeout or slow(10),
                   what="%d more answers" % n)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(slow(15))


class FleetCase(FicusTestCase):
    WATCHDOG_SECONDS = 240 if sanitized() else 120

    def setUp(self):
        super().setUp()
        self._servers = []

    def tearDown(self):
        for s in self._servers:
            s.kill()
        super().tearDown()

    def server(self, host, port, name, **kw):
        s = FleetServer(host, port, name, **kw).start()
        self._servers.append(s)
        return s

    def fleet_ficus(self, legacy, new=None, config=None):
        """ficus with an admin API; legacy (and new) are backend objects for the file."""
        f = AdminFicus(None, None, config=config, state_file=None)
        f.config["backends"] = {"legacy": legacy, "new": new or {"url": refused_url()}}
        self._ficuses.append(f)
        return f.start()

    def backend_json(self, f, name="legacy"):
        with f.admin() as a:
            return a.get_json("/api/v1/routes")[1]["backends"][name]

    def address(self, f, addr, name="legacy"):
        for a in self.backend_json(f, name)["addresses"]:
            if a["address"] == addr:
                return a
        return None


# ---------------------------------------------------------------------------------------
# balancing


class Balancing(FleetCase):
    HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]

    def test_requests_spread_by_weight(self):
        port = common_port(self.HOSTS)
        servers = [self.server(h, port, "s%d" % (i + 1)) for i, h in enumerate(self.HOSTS)]
        weights = [1, 2, 3]
        f = self.fleet_ficus({"servers": [{"url": s.url, "weight": w}
                                          for s, w in zip(servers, weights)]},
                             config={"workers": 2})
        total = 600
        counts = collections.Counter()
        for i in range(total // 10):  # 10 requests per connection, new connections spread
            ka = KeepAlive(f.port)    # over both workers by the kernel
            for _ in range(10):
                status, _, body = ka.request("GET", "/")
                self.assertEqual(status, 200)
                counts[body.decode()] += 1
            ka.close()
        for s, w in zip(servers, weights):
            want = total * w / sum(weights)
            self.assertLessEqual(abs(counts[s.name] - want), 0.1 * want,
                                 "%s: %d answers, weight %d wants %d (%r)" % (
                                     s.name, counts[s.name], w, want, counts))
        # The admin API and the metrics count the same requests per address.
        be = self.backend_json(f)
        self.assertEqual(be["lb"], "round_robin")
        self.assertEqual([sv["weight"] for sv in be["servers"]], weights)
        by_addr = {a["address"]: a for a in be["addresses"]}
        with f.admin() as a:
            m = a.metrics()
        for s in servers:
            a = by_addr[s.address]
            self.assertEqual((a["state"], a["up"], a["requests"], a["errors"]),
                             ("up", True, counts[s.name], 0), a)
            self.assertEqual(metric(m, "ficus_upstream_server_requests_total", backend="legacy",
                                    server=s.address, code="2xx"), counts[s.name])
            wait_until(lambda: metric(self._metrics(f), "ficus_upstream_server_up",
                                      backend="legacy", server=s.address) == 1, slow(10),
                       what="%s up" % s.address)

    def _metrics(self, f):
        with f.admin() as a:
            return a.metrics()

    def _share_of_fast(self, lb):
        port = common_port(self.HOSTS[:2])
        slow_s = self.server("127.0.0.1", port, "slow", delay_ms=300)
        fast = self.server("127.0.0.2", port, "fast")
        f = self.fleet_ficus({"servers": [slow_s.url, fast.url], "lb": lb})
        load = Load(f.port, threads=6, expect=("slow", "fast")).start()
        try:
            time.sleep(slow(3))
        finally:
            load.stop()
        self.assertEqual(load.failures, [])
        c = load.snapshot()
        f.stop()
        slow_s.kill()
        fast.kill()
        return c["fast"] / max(1, c["fast"] + c["slow"]), c

    def test_least_requests_prefers_the_idle_server(self):
        share, c = self._share_of_fast("least_requests")
        self.assertGreater(share, 0.85, "least_requests: %r" % c)
        # The contrast that shows the test can tell: round robin gives each half.
        share, c = self._share_of_fast("round_robin")
        self.assertLess(abs(share - 0.5), 0.1, "round_robin: %r" % c)


    def test_reload_adds_and_removes_servers_under_load(self):
        port = common_port(self.HOSTS[:2])
        s1 = self.server("127.0.0.1", port, "s1")
        s2 = self.server("127.0.0.2", port, "s2")
        f = self.fleet_ficus({"servers": [s1.url]}, config={"workers": 2})
        load = Load(f.port, threads=4, expect=("s1", "s2")).start()
        try:
            load.wait_more(100)
            cfg = json.loads(json.dumps(f.config))
            cfg["backends"]["legacy"] = {"servers": [s1.url, s2.url]}
            f.reload(cfg)
            added = time.monotonic()
            wait_until(lambda: load.last.get("s2", 0) > added, slow(10), what="s2 answering")
            cfg["backends"]["legacy"] = {"servers": [s2.url]}
            f.reload(cfg)
            wait_until(lambda: [a["address"] for a in self.backend_json(f)["addresses"]
                                if a["state"] != "draining"] == [s2.address], slow(10),
                       what="s1 out of the backend")
            time.sleep(0.3)
            gone = load.last["s1"]
            load.wait_more(200)
            self.assertEqual(load.last["s1"], gone, "s1 still got requests")
        finally:
            load.stop()
        self.assertEqual(load.failures, [])


# ---------------------------------------------------------------------------------------
# ejection


class Ejection(FleetCase):
    HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]

    def test_killed_server_is_ejected_and_comes_back(self):
        port = common_port(self.HOSTS)
        servers = [self.server(h, port, "s%d" % (i + 1)) for i, h in enumerate(self.HOSTS)]
        f = self.fleet_ficus({"servers": [s.url for s in servers],
                              "ejection": {"consecutive_failures": 2, "base_ms": 1500,
                                           "max_ms": 3000}},
                             config={"workers": 2})
        load = Load(f.port, threads=4, expect=[s.name for s in servers]).start()
        try:
            load.wait_more(300)
            victim = servers[1]
            victim.kill()
            killed_at = time.monotonic()
            # Ejected on a worker (the other may still be probing it), and reported down.
            wait_until(lambda: self.address(f, victim.address)["state"] in ("ejected", "down"),
                       slow(10), what="the killed server ejected")
            wait_until(lambda: metric(self._metrics(f), "ficus_upstream_server_up",
                                      backend="legacy", server=victim.address) == 0,
                       slow(10), what="ficus_upstream_server_up 0")
            # The connect check (readiness only: no health.path) may show the address
            # down before a worker has ejected it; the workers still send to it until
            # they do.
            wait_until(lambda: metric(self._metrics(f), "ficus_upstream_server_ejections_total",
                                      backend="legacy", server=victim.address) > 0,
                       slow(10), what="the killed server's ejection counted")
            load.wait_more(300)
            self.assertEqual(load.failures, [], "a client request failed after the kill")
            self.assertLess(load.last.get("s2", 0), killed_at + 0.5)
            # Back: it gets traffic again once its ejection is over.
            victim.start()
            back_at = time.monotonic()
            wait_until(lambda: load.last.get("s2", 0) > back_at, slow(15),
                       what="the restarted server answering again")
            wait_until(lambda: self.address(f, victim.address)["state"] == "up", slow(15),
                       what="the restarted server up")
            load.wait_more(200)
        finally:
            load.stop()
        self.assertEqual(load.failures, [])
        self.assertTrue(f.log_lines(r"level=warn .*server ejected backend=legacy server=%s"
                                    % victim.address.replace(".", r"\.")), f.stderr()[-3000:])

    def _metrics(self, f):
        with f.admin() as a:
            return a.metrics()

    def test_every_server_down_falls_back_to_legacy(self):
        legacy = self.backend(named_backend, name="legacy")
        f = AdminFicus(legacy, None, state_file=None,
                       config={"routes": [{"name": "all", "new_percent": 100,
                                           "fallback": ["connect_error"]}]})
        f.config["backends"]["new"] = {"servers": [refused_url(), refused_url()],
                                       "ejection": {"consecutive_failures": 1, "base_ms": 500}}
        self._ficuses.append(f)
        f.start()
        # Before, during and after ejection (panic mode then tries the least recently
        # failed server): every request is answered by legacy.
        deadline = time.monotonic() + slow(2)
        n = 0
        while n < 30 or time.monotonic() < deadline:
            status, _, body = KeepAlive(f.port).request("GET", "/x")
            self.assertEqual((status, body), (200, b"legacy"))
            n += 1
        with f.admin() as a:
            self.assertEqual(metric(a.metrics(), "ficus_fallbacks_total", route="all"), n)
        states = {a["state"] for a in self.backend_json(f, "new")["addresses"]}
        self.assertTrue(states <= {"ejected", "down", "probing"}, states)


# ---------------------------------------------------------------------------------------
# health checks


class Health(FleetCase):
    def test_failing_health_check_takes_a_server_out(self):
        port = common_port(["127.0.0.1", "127.0.0.2"])
        cwd = tempfile.mkdtemp(prefix="ficus-fleet-")  # where b.down makes b's check fail
        self.addCleanup(shutil.rmtree, cwd, True)
        a = self.server("127.0.0.1", port, "a", cwd=cwd)
        b = self.server("127.0.0.2", port, "b", cwd=cwd)
        f = self.fleet_ficus({"servers": [a.url, b.url],
                              "health": {"path": "/healthz", "interval_ms": 200}})
        wait_until(lambda: self.address(f, b.address)["reachable"] is True, slow(10),
                   what="b's first check")
        load = Load(f.port, threads=2, expect=("a", "b")).start()
        try:
            load.wait_more(50)
            open(os.path.join(cwd, "b.down"), "w").close()  # b's /healthz answers 503
            wait_until(lambda: self.address(f, b.address)["state"] == "down", slow(10),
                       what="b down")
            down_at = time.monotonic()
            load.wait_more(100)
            self.assertLess(load.last["b"], down_at + 0.5, "b still got traffic")
            os.remove(os.path.join(cwd, "b.down"))
            up_at = time.monotonic()
            wait_until(lambda: load.last["b"] > up_at, slow(10), what="b back")
        finally:
            load.stop()
        self.assertEqual(load.failures, [])
        self.assertTrue(f.log_lines(r'health check failed backend=legacy server=127\.0\.0\.2:%d '
                                    r'reason="answered 503"' % port), f.stderr()[-3000:])


# ---------------------------------------------------------------------------------------
# DNS


class Dns(FleetCase):
    TTL = 2

    def test_new_address_takes_traffic_within_one_ttl(self):
        port = common_port(["127.0.0.2", "127.0.0.3"])
        old = self.server("127.0.0.2", port, "old")
        new = self.server("127.0.0.3", port, "new")
        dns = DnsServer().start()
        self.addCleanup(dns.close)
        dns.set("svc.test", ["127.0.0.2"], ttl=self.TTL)
        f = self.fleet_ficus({"url": "http://svc.test:%d" % port,
                              "min_resolve_interval_ms": 100},
                             config={"resolvers": ["127.0.0.1:%d" % dns.port], "workers": 2})
        load = Load(f.port, threads=4, expect=("old", "new")).start()
        try:
            load.wait_more(100)
            self.assertEqual(set(load.snapshot()), {"old"})
            dns.set("svc.test", ["127.0.0.3"], ttl=self.TTL)
            changed_at = time.monotonic()
            wait_until(lambda: "new" in load.first, self.TTL + slow(3),
                       what="the new address answering")
            took = load.first["new"] - changed_at
            self.assertLess(took, self.TTL + slow(0.5), "the new address took %.2fs" % took)
            # The old address gets no new request once the change is applied.
            time.sleep(0.3)
            last_old = load.last["old"]
            load.wait_more(200)
            self.assertEqual(load.last["old"], last_old, "the old address still got requests")
            be = self.backend_json(f)
            self.assertEqual(be["servers"][0]["addresses"], [new.address])
            self.assertEqual(be["servers"][0]["resolve"], {"state": "ok", "error": None})
            self.assertNotIn(old.address, [a["address"] for a in be["addresses"]])
            # A DNS server that stops answering: the last good set stays, one log line.
            dns.stop_answering()
            failing = lambda: self.backend_json(f)["servers"][0]["resolve"]["state"] == "failing"
            wait_until(failing, slow(15), what="resolution failing")
            load.wait_more(200)
            dns.resume()
            wait_until(lambda: not failing(), slow(15), what="resolution ok again")
        finally:
            load.stop()
        self.assertEqual(load.failures, [])
        self.assertEqual(len(f.log_lines(r"cannot resolve name=svc\.test")), 1, f.stderr()[-3000:])
        self.assertEqual(len(f.log_lines(r"resolves again name=svc\.test")), 1)

    def test_removed_address_finishes_its_requests_and_is_not_reused(self):
        port = common_port(["127.0.0.2", "127.0.0.3"])
        def answer_after(req, out):  # GET /?ms=N answers the backend's name after N ms
            ms = int(req.target.partition("ms=")[2] or 0)
            if out.backend.stopping.wait(ms / 1000.0):
                return "close"
            return named_backend(req, out)
        old = self.backend(answer_after, name="old", host="127.0.0.2", port=port)
        new = self.backend(named_backend, name="new", host="127.0.0.3", port=port)
        dns = DnsServer().start()
        self.addCleanup(dns.close)
        dns.set("svc.test", ["127.0.0.2"], ttl=1)
        f = self.fleet_ficus({"url": "http://svc.test:%d" % port,
                              "min_resolve_interval_ms": 100},
                             config={"resolvers": ["127.0.0.1:%d" % dns.port]})
        got = {}

        def request(name, target):
            c = KeepAlive(f.port)
            try:
                got[name] = c.request("GET", target)
            finally:
                c.close()
        # Two requests at once leave two pooled connections to old.
        warm = [threading.Thread(target=request, args=("w%d" % i, "/?ms=300")) for i in (1, 2)]
        for w in warm:
            w.start()
        for w in warm:
            w.join(slow(10))
        self.assertEqual((got["w1"][2], got["w2"][2], old.request_connections), (b"old", b"old", 2))
        t = threading.Thread(target=request, args=("r", "/?ms=3000"))
        t.start()
        wait_until(lambda: len(old.requests) == 3, slow(5), what="the slow request at old")
        ka = KeepAlive(f.port)
        dns.set("svc.test", ["127.0.0.3"], ttl=1)
        wait_until(lambda: self.backend_json(f)["servers"][0]["addresses"] ==
                   ["127.0.0.3:%d" % port], slow(5), what="the new address applied")
        self.assertTrue(t.is_alive(), "the slow request ended before the change: retry")
        # The idle pooled connection to the removed address is closed at once; the one
        # carrying the slow request stays until its answer is through.
        wait_until(lambda: len(old.sockets) == 1, slow(5), what="old's idle connection closed")
        # Meanwhile requests go to the new address only.
        self.assertEqual(ka.request("GET", "/after")[2], b"new")
        t.join(slow(10))
        self.assertEqual((got["r"][0], got["r"][2]), (200, b"old"), "the in-flight request")
        # Its connection, and the idle one, are closed rather than pooled (an idle pooled
        # connection would stay open for 30 s).
        wait_until(lambda: not old.sockets, slow(5), what="old's connections closed")
        for i in range(10):
            self.assertEqual(ka.request("GET", "/n%d" % i)[2], b"new")
        self.assertEqual(len(old.requests), 3)
        ka.close()

    def test_name_only_the_resolvers_know_resolves_at_start(self):
        b = self.server("127.0.0.2", free_port(), "only")
        dns = DnsServer().start()
        self.addCleanup(dns.close)
        dns.set("only.test", ["127.0.0.2"], ttl=60)
        f = self.fleet_ficus({"url": "http://only.test:%d" % b.port},
                             config={"resolvers": ["127.0.0.1:%d" % dns.port]})
        status, _, body = KeepAlive(f.port).request("GET", "/")
        self.assertEqual((status, body), (200, b"only"))


if __name__ == "__main__":
    unittest.main()
