"""The resolver module (c-ares on a libuv loop) against a real DNS server on loopback.

The module is not reachable through the ficus binary yet, so a small driver built by
CMake (tests/integration/resolver_driver.c) runs it on a real loop and prints every
callback; the DNS server is dnsserver.py (Python standard library, UDP on 127.0.0.1).

Environment: FICUS_RESOLVER_DRIVER is the driver (ctest sets it; default: build/ of this
source tree), FICUS_SANITIZE=ON for an ASan/UBSan build (slower: longer deadlines).
"""

import os
import queue
import subprocess
import threading
import time
import unittest

from dnsserver import DnsServer
from harness import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.environ.get("FICUS_RESOLVER_DRIVER") or os.path.join(
    HERE, "..", "..", "build", "resolver_driver"
)
SANITIZED = os.environ.get("FICUS_SANITIZE", "").strip().upper() in ("ON", "1", "TRUE", "YES")
SLACK = 0.6 if not SANITIZED else 1.0  # seconds a lookup may take beyond its schedule


def parse_event(line):
    """'event name=N state=S changed=C addrs=A,B error="E"' -> dict."""
    head, _, error = line.partition(' error="')
    fields = dict(kv.split("=", 1) for kv in head.split()[1:])
    fields["addrs"] = [a for a in fields.get("addrs", "").split(",") if a]
    fields["changed"] = fields.get("changed") == "1"
    fields["error"] = error[:-1] if error.endswith('"') else error
    return fields


class Driver:
    """The resolver driver as a child process: events read by a thread, commands on stdin."""

    def __init__(self, dns, names, min_ms=100, max_ms=60000, timeout_ms=300, tries=1, system=False):
        args = [DRIVER, "--min-ms", str(min_ms), "--max-ms", str(max_ms)]
        args += ["--timeout-ms", str(timeout_ms), "--tries", str(tries), "--watchdog-ms", "60000"]
        if not system:
            args += ["--resolver", "127.0.0.1:%d" % dns.port]
        self.proc = subprocess.Popen(
            args + list(names),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = queue.Queue()
        self.seen = []  # every stdout line, in order
        self.err = []
        self.out_thread = threading.Thread(target=self._read, args=(self.proc.stdout, True))
        self.err_thread = threading.Thread(target=self._read, args=(self.proc.stderr, False))
        self.out_thread.start()
        self.err_thread.start()

    def _read(self, stream, is_out):
        for line in stream:
            line = line.rstrip("\n")
            if is_out:
                self.seen.append(line)
                self.lines.put(line)
            else:
                self.err.append(line)

    def send(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def wait_line(self, pred, timeout, what):
        """The next stdout line (parsed event when it is one) for which pred holds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    "timed out after %.1fs waiting for %s; lines so far:\n%s"
                    % (timeout, what, "\n".join(self.seen))
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            item = parse_event(line) if line.startswith("event ") else line
            if pred(item):
                return item

    def wait_event(self, name, timeout, what, **want):
        def pred(ev):
            return isinstance(ev, dict) and ev["name"] == name and all(
                ev[k] == v for k, v in want.items()
            )

        return self.wait_line(pred, timeout, what)

    def wait_seen(self, name, timeout, what, **want):
        """Any event of name so far (read or not by wait_line) that has want."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events(name):
                if all(ev[k] == v for k, v in want.items()):
                    return ev
            if time.monotonic() >= deadline:
                raise AssertionError(
                    "timed out after %.1fs waiting for %s; lines so far:\n%s"
                    % (timeout, what, "\n".join(self.seen))
                )
            time.sleep(0.02)

    def events(self, name):
        return [parse_event(l) for l in list(self.seen) if l.startswith("event name=%s " % name)]

    def log_lines(self, text):
        return [l for l in list(self.err) if text in l]

    def close(self):
        """quit: every handle must close and the loop close cleanly (exit 0, "closed")."""
        if self.proc.poll() is None:
            try:
                self.send("quit")
            except BrokenPipeError:
                pass
        try:
            rc = self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.out_thread.join(timeout=5)
            self.err_thread.join(timeout=5)
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc.stderr.close()
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            if any(marker in l for l in self.err):
                raise AssertionError("sanitizer report:\n" + "\n".join(self.err))
        if rc != 0 or "closed" not in self.seen:
            raise AssertionError(
                "driver exit %s, stdout:\n%s\nstderr:\n%s"
                % (rc, "\n".join(self.seen), "\n".join(self.err))
            )


@unittest.skipUnless(os.path.exists(DRIVER), "resolver_driver is not built")
class ResolverTest(unittest.TestCase):
    def setUp(self):
        self.dns = DnsServer().start()
        self.drivers = []

    def tearDown(self):
        try:
            for d in self.drivers:
                d.close()
        finally:
            self.dns.close()

    def driver(self, *names, **kw):
        d = Driver(self.dns, names, **kw)
        self.drivers.append(d)
        return d

    def test_follows_a_change_within_one_ttl(self):
        ttl = 1
        self.dns.set("svc.test", ["127.0.0.2"], ttl=ttl)
        d = self.driver("svc.test:8080")
        d.wait_event("svc.test", 5, "the first answer", state="ok", addrs=["127.0.0.2:8080"])

        # Let a few lookups go by: they follow the TTL (1 s), not the 100 ms minimum.
        time.sleep(2.2)
        changed_at = time.monotonic()
        self.dns.set("svc.test", ["127.0.0.3"], ttl=ttl)
        ev = d.wait_event(
            "svc.test", ttl + SLACK, "the new address within one TTL", addrs=["127.0.0.3:8080"]
        )
        took = time.monotonic() - changed_at
        self.assertEqual(ev["state"], "ok")
        self.assertTrue(ev["changed"])
        self.assertLessEqual(took, ttl + SLACK)

        times = self.dns.query_times("svc.test", "A")
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertGreaterEqual(len(times), 3, times)
        self.assertTrue(all(g >= ttl * 0.9 for g in gaps), "lookups closer than the TTL: %s" % gaps)
        # Only changes are reported: one event per address set.
        self.assertEqual([e["addrs"] for e in d.events("svc.test")],
                         [["127.0.0.2:8080"], ["127.0.0.3:8080"]])

    def test_keeps_the_last_good_set_and_logs_once(self):
        self.dns.set("svc.test", ["127.0.0.2", "127.0.0.5"], ttl=1)
        d = self.driver("svc.test:80", min_ms=100, max_ms=400, timeout_ms=200)
        good = ["127.0.0.2:80", "127.0.0.5:80"]
        d.wait_event("svc.test", 5, "the first answer", state="ok", addrs=good)

        self.dns.stop_answering()
        ev = d.wait_event("svc.test", 3 + SLACK, "the failure", state="failing")
        self.assertEqual(ev["addrs"], good, "the last good set stays")
        self.assertFalse(ev["changed"])
        self.assertIn("Timeout", ev["error"])

        # Several more attempts fail: none is reported or logged again.
        asked = self.dns.count("svc.test", "A")
        deadline = time.monotonic() + 8
        while self.dns.count("svc.test", "A") < asked + 4:
            self.assertLess(time.monotonic(), deadline, "the resolver stopped retrying")
            time.sleep(0.05)
        self.assertEqual([e["state"] for e in d.events("svc.test")], ["ok", "failing"])
        self.assertEqual(len(d.log_lines("cannot resolve name=svc.test")), 1, d.err)

        # It answers again, with another address: taken, and logged once.
        self.dns.set("svc.test", ["127.0.0.4"], ttl=1)
        self.dns.resume()
        ev = d.wait_event("svc.test", 2 + SLACK, "the recovery", state="ok")
        self.assertEqual(ev["addrs"], ["127.0.0.4:80"])
        self.assertTrue(ev["changed"])
        # The log line and the event are written by the same callback but to two pipes:
        # the event may be read first.
        wait_until(lambda: d.log_lines("resolves again name=svc.test"), 2,
                   what="the recovery's log line")
        self.assertEqual(len(d.log_lines("resolves again name=svc.test")), 1, d.err)

    def test_ttl_is_kept_within_the_intervals(self):
        self.dns.set("zero.test", ["127.0.0.2"], ttl=0)
        self.dns.set("long.test", ["127.0.0.3"], ttl=3600)
        short = self.driver("zero.test:80", min_ms=400, max_ms=60000)
        capped = self.driver("long.test:80", min_ms=100, max_ms=300)
        short.wait_event("zero.test", 5, "zero.test", state="ok")
        capped.wait_event("long.test", 5, "long.test", state="ok")
        time.sleep(2)

        zero = self.dns.query_times("zero.test", "A")
        gaps = [b - a for a, b in zip(zero, zero[1:])]
        self.assertGreaterEqual(len(zero), 3, zero)
        self.assertTrue(all(g >= 0.35 for g in gaps), "a TTL of 0 asked sooner than 400 ms: %s" % gaps)
        self.assertLessEqual(len(zero), 8, zero)

        long_ = self.dns.query_times("long.test", "A")
        self.assertGreaterEqual(len(long_), 5, "a TTL of one hour is not re-checked every 300 ms")

    def test_every_address_sorted_nxdomain_and_literals(self):
        self.dns.set("many.test", ["127.0.0.3", "::1", "127.0.0.2", "127.0.0.3"], ttl=30)
        d = self.driver("many.test:81", "nothing.test:80", "127.0.0.9:82", "::2:83")
        ev = d.wait_seen("many.test", 5, "many.test", state="ok")
        self.assertEqual(ev["addrs"], ["127.0.0.2:81", "127.0.0.3:81", "[::1]:81"])
        ev = d.wait_seen("nothing.test", 5, "nothing.test", state="failing")
        self.assertEqual(ev["addrs"], [])
        self.assertIn("not found", ev["error"])
        ev = d.wait_seen("127.0.0.9", 5, "the IPv4 literal", state="ok")
        self.assertEqual(ev["addrs"], ["127.0.0.9:82"])
        ev = d.wait_seen("::2", 5, "the IPv6 literal", state="ok")
        self.assertEqual(ev["addrs"], ["[::2]:83"])
        time.sleep(0.3)
        self.assertEqual(self.dns.names_asked(), {"many.test", "nothing.test"})
        self.assertEqual(len(d.events("127.0.0.9")), 1)
        self.assertEqual(self.dns.malformed, 0)

    def test_unwatch_and_close_with_lookups_in_flight(self):
        self.dns.set("a.test", ["127.0.0.2"], ttl=1)
        self.dns.set("b.test", ["127.0.0.3"], ttl=1)
        d = self.driver("a.test:80", "b.test:80", timeout_ms=2000)
        d.wait_seen("a.test", 5, "a.test", state="ok")
        d.wait_seen("b.test", 5, "b.test", state="ok")

        # Silence: the next lookups of both names wait in c-ares (2 s timeout).
        self.dns.stop_answering()
        asked = self.dns.count("a.test", "A")
        deadline = time.monotonic() + 3
        while self.dns.count("a.test", "A") <= asked or self.dns.count("b.test", "A") <= asked:
            self.assertLess(time.monotonic(), deadline, "no lookup in flight")
            time.sleep(0.02)
        d.send("unwatch a.test")
        d.wait_line(lambda l: l == "unwatched name=a.test", 5, "unwatch")
        self.dns.set("a.test", ["127.0.0.7"], ttl=1)
        self.dns.resume()
        # b.test's lookup times out (reported), the next one answers; a.test's lookup
        # ends too, and nobody hears of it.
        d.wait_event("b.test", 2 + 1 + SLACK, "b.test failing", state="failing")
        d.wait_event("b.test", 1 + SLACK, "b.test still followed", state="ok")
        time.sleep(0.5)
        self.assertEqual(len(d.events("a.test")), 1)

        self.dns.stop_answering()
        asked = self.dns.count("b.test", "A")
        deadline = time.monotonic() + 3
        while self.dns.count("b.test", "A") <= asked:
            self.assertLess(time.monotonic(), deadline, "no lookup in flight")
            time.sleep(0.02)
        # close() quits with b.test's lookup in flight: every handle closes, nothing leaks.

    def test_system_configuration(self):
        # Without resolvers, names go through the system's configuration: the hosts file.
        d = self.driver("localhost:80", system=True)
        ev = d.wait_event("localhost", 10, "localhost", state="ok")
        self.assertIn("127.0.0.1:80", ev["addrs"])
        self.assertEqual(self.dns.count(), 0)


if __name__ == "__main__":
    unittest.main()
