"""The dashboard (GET / of the admin server) in headless Chromium, and `ficus demo`.

The real ficus binary runs with two small Python backends; Chromium loads the page
through the DevTools protocol (browser.py, standard library only) and the tests check
what an operator sees and does: routes and numbers from the JSON API, the split
control and the rollback (with the admin token dialog), divergence records with the
side-by-side view and "copy as curl", the banner when the admin API goes away, and
no console error or uncaught exception along the way. Screenshots go to
$FICUS_TEST_OUTPUT (dashboard.png, dashboard-dark.png, dashboard-records.png,
dashboard-unreachable.png, dashboard-servers.png, demo-dashboard.png).

Environment: FICUS_BIN (default: build/ficus of this source tree), FICUS_SANITIZE, FICUS_TEST_OUTPUT.
Exits 77 (skipped, for ctest) when chromium is not installed.
"""

import shutil
import sys

if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
    print("SKIPPED: chromium not installed")
    sys.exit(77)

import base64
import http.client
import http.server
import json
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from browser import Chromium

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN_ENV = "FICUS_DASHBOARD_TEST_TOKEN"
TOKEN = "s3cret-token"
SANITIZER_RE = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer)|runtime error:"
    r"|UndefinedBehaviorSanitizer|SUMMARY: (Address|Undefined|Leak)")


def ficus_bin():
    return os.environ.get("FICUS_BIN") or os.path.join(HERE, "..", "..", "build", "ficus")


def sanitized():
    return os.environ.get("FICUS_SANITIZE", "").strip().upper() in ("ON", "1", "TRUE", "YES", "Y")


def output_dir():
    d = os.environ.get("FICUS_TEST_OUTPUT") or os.path.join(tempfile.gettempdir(),
                                                            "ficus-test-output")
    os.makedirs(d, exist_ok=True)
    return d


def port_pair():
    """Two consecutive free ports on 127.0.0.1: the proxy and, one above, the admin server."""
    for _ in range(200):
        p = random.randint(20000, 60000)
        socks = []
        try:
            for q in (p, p + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no two consecutive free ports")


def ficus_env(extra=None):
    env = dict(os.environ)
    env.pop("FICUS_LOG_LEVEL", None)
    if sanitized():
        opts = env.get("ASAN_OPTIONS", "")
        if "detect_leaks" not in opts:
            env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "detect_leaks=1"
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.update(extra or {})
    return env


def http_get(port, target, headers=None, timeout=10):
    """(status, headers dict, body bytes) of one GET on a fresh connection."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", target, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def api_json(admin_port, target):
    status, _, body = http_get(admin_port, target)
    if status != 200:
        raise AssertionError("GET %s: %d %r" % (target, status, body[:200]))
    return json.loads(body)


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
        except (OSError, http.client.HTTPException):
            v = None
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(0.1)


def js(s):
    """A Python string as a JavaScript string literal."""
    return json.dumps(s)


# ---------------------------------------------------------------------------------------
# backends


class OrdersHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    is_new = False

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        status, body = 200, None
        m = re.match(r"^/api/orders/(\w+)$", path)
        if m and m.group(1).isdigit():
            n = int(m.group(1))
            price = 10 + n % 17 + (0.5 if self.is_new and n % 5 == 0 else 0)
            body = {"id": n, "price": price, "tags": ["a", "b"] if not self.is_new else ["b", "a"],
                    "generated_at": time.time()}
        elif m and m.group(1) == "missing":
            status, body = 404, {"error": "no such order"}
        elif m and m.group(1) == "boom":
            status, body = (500, {"error": "boom"}) if self.is_new else (200, {"ok": True})
        else:
            body = {"path": path, "backend": "new" if self.is_new else "legacy"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Backend:
    def __init__(self, is_new):
        handler = type("Handler", (OrdersHandler,), {"is_new": is_new})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------
# ficus


class Ficus:
    def __init__(self, workdir, config, env=None):
        self.workdir = workdir
        self.config = config
        self.port = int(config["listen"].rsplit(":", 1)[1])
        self.admin_port = int(config["admin"]["address"].rsplit(":", 1)[1])
        self.env = env or {}
        self.proc = None
        self.runs = 0

    def start(self, timeout=None):
        timeout = timeout or (30 if sanitized() else 15)
        path = os.path.join(self.workdir, "ficus.json")
        with open(path, "w") as f:
            json.dump(self.config, f, indent=2)
        self.runs += 1
        self.stderr_path = os.path.join(self.workdir, "stderr-%d.log" % self.runs)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([ficus_bin(), "-c", path], cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, env=ficus_env(self.env))
        wait_until(lambda: self.proc.poll() is None and
                   api_json(self.admin_port, "/healthz").get("status") == "ok",
                   timeout, "ficus to answer on its admin port (%s)" % self.stderr())
        return self

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, AttributeError):
            return ""

    def stop(self, sig=signal.SIGTERM):
        """Stops ficus; returns its exit code (None when it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30 if sanitized() else 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


def _watchdog(signum, frame):
    raise TimeoutError("watchdog: the test ran past its time limit")


RECORDS = [
    {"ts": "2026-11-22T10:00:03.123Z", "id": "4f1c9a0000000001", "route": "orders",
     "method": "GET", "target": "/api/orders/42?x=1", "primary": "legacy",
     "legacy": {"status": 200, "ms": 3.1, "bytes": 312},
     "new": {"status": 200, "ms": 5.2, "bytes": 298},
     "diffs": [{"kind": "json", "path": "/items/0/price", "legacy": 9.99, "new": 10.0},
               {"kind": "header", "path": "content-type", "legacy": "application/json",
                "new": "text/json"}],
     "noise": ["/meta/generated_at"],
     "bodies": {"legacy": json.dumps({"id": 42, "items": [{"sku": "A-1", "price": 9.99}],
                                      "meta": {"generated_at": "10:00:03.101"}}),
                "new": json.dumps({"meta": {"generated_at": "10:00:03.119"}, "id": 42,
                                   "items": [{"sku": "A-1", "price": 10.0}]})}},
    {"ts": "2026-11-22T10:00:01.500Z", "id": "4f1c9a0000000002", "route": "orders",
     "method": "POST", "target": "/api/orders", "primary": "new",
     "legacy": {"status": 201, "ms": 12.0, "bytes": 40},
     "new": {"status": 500, "ms": 2.4, "bytes": 22},
     "diffs": [{"kind": "status", "path": "status", "legacy": 201, "new": 500}],
     "noise": [], "truncated": True,
     "bodies": {"legacy": "{\"id\":43,\"created\":true}", "new": "{\"error\":\"boom\"}"},
     "request_headers": {"authorization": "Bearer leaked", "cookie": "s=1"}},
]
SUMMARY = [
    {"route": "orders", "path": "/items/0/price", "kind": "json", "count": 17, "rate": 0.042,
     "noise": False, "example_id": "4f1c9a0000000001"},
    {"route": "orders", "path": "status", "kind": "status", "count": 3, "rate": 0.0074,
     "noise": False, "example_id": "4f1c9a0000000002"},
    {"route": "orders", "path": "/meta/generated_at", "kind": "json", "count": 400, "rate": 0.99,
     "noise": True, "example_id": "4f1c9a0000000001"},
]


class DashboardTest(unittest.TestCase):
    """One ficus with two routes and a ramped third, one browser, for the whole class."""

    @classmethod
    def setUpClass(cls):
        if not os.access(ficus_bin(), os.X_OK):
            raise unittest.SkipTest("no ficus binary at %s (set FICUS_BIN)" % ficus_bin())
        cls.out = output_dir()
        cls.workdir = tempfile.mkdtemp(prefix="dashboard-", dir=cls.out)
        cls.legacy = Backend(False)
        cls.legacy2 = Backend(False)  # monolith runs on two servers
        cls.new = Backend(True)
        port = port_pair()
        cls.config = {
            "listen": "127.0.0.1:%d" % port,
            "workers": 1,
            "admin": {"address": "127.0.0.1:%d" % (port + 1), "token_env": TOKEN_ENV},
            "state_file": os.path.join(cls.workdir, "state.json"),
            "backends": {"monolith": {"servers": [cls.legacy.url, cls.legacy2.url]},
                         "orders-svc": {"url": cls.new.url}},
            "routes": [
                {"name": "orders", "match": {"path_prefix": "/api/orders",
                                             "headers": {"x-tenant": "acme"}},
                 "legacy": "monolith", "new": "orders-svc", "new_percent": 30,
                 "sticky": {"header": "x-user-id"}, "override_header": "x-ficus-backend",
                 "shadow": {"percent": 100}, "diff": {"ignore": ["/generated_at"],
                                                      "unordered": ["/tags"]}},
                {"name": "search", "match": {"path_prefix": "/search"},
                 "legacy": "monolith", "new": "orders-svc", "new_percent": 1,
                 "ramp": {"steps": [1, 5, 25, 50, 100], "every_ms": 3600000}},
                {"name": "catalog", "legacy": "monolith", "new": "orders-svc",
                 "new_percent": 0},
            ],
            "divergence_log": {"path": os.path.join(cls.workdir, "divergences.ndjson")},
            "access_log": {"path": ""},
            "timeouts": {"drain_ms": 2000},
        }
        cls.ficus = Ficus(cls.workdir, cls.config, {TOKEN_ENV: TOKEN}).start()
        cls.port, cls.admin = cls.ficus.port, cls.ficus.admin_port
        cls.send_traffic()
        cls.browser = Chromium(1400, 1000)
        cls.page = cls.browser.page()

    @classmethod
    def tearDownClass(cls):
        for closer in (lambda: cls.page.close(), lambda: cls.browser.close(),
                       lambda: cls.ficus.stop(), lambda: cls.legacy.close(),
                       lambda: cls.legacy2.close(), lambda: cls.new.close()):
            try:
                closer()
            except Exception:  # cleanup goes on whatever failed before
                pass

    @classmethod
    def send_traffic(cls):
        c = http.client.HTTPConnection("127.0.0.1", cls.port, timeout=10)
        try:
            for i in range(60):
                c.request("GET", "/api/orders/%d" % i,
                          headers={"x-user-id": "user-%d" % i, "x-tenant": "acme"})
                c.getresponse().read()
            for target in ("/api/orders/missing", "/api/orders/missing", "/api/orders/boom"):
                for backend in ("legacy", "new"):
                    c.request("GET", target, headers={"x-tenant": "acme",
                                                      "x-ficus-backend": backend})
                    c.getresponse().read()
            for i in range(20):
                c.request("GET", "/catalog/item/%d" % i)
                c.getresponse().read()
            for i in range(5):
                c.request("GET", "/search?q=%d" % i)
                c.getresponse().read()
        finally:
            c.close()

    def setUp(self):
        signal.signal(signal.SIGALRM, _watchdog)
        signal.alarm(180 if sanitized() else 90)

    def tearDown(self):
        signal.alarm(0)

    # -- helpers

    def routes(self):
        return {r["name"]: r for r in api_json(self.admin, "/api/v1/routes")["routes"]}

    def stable_routes(self):
        """The routes once two reads a moment apart agree (counters settled)."""
        prev = None
        for _ in range(50):
            cur = self.routes()
            strip = {n: (r["backends"], r["new_percent"]) for n, r in cur.items()}
            if strip == prev:
                return cur
            prev = strip
            time.sleep(0.3)
        return cur

    def open_dashboard(self, fresh_storage=True):
        p = self.page
        p.call("Fetch.disable")
        p.navigate("http://127.0.0.1:%d/" % self.admin)
        if fresh_storage:
            p.evaluate("sessionStorage.clear(); localStorage.clear(); true")
        p.errors.clear()
        p.exceptions.clear()
        p.wait_for("document.querySelectorAll('section.route').length > 0", 15, "route cards")
        return p

    def field(self, route, name):
        return self.page.evaluate(
            "(() => { const e = document.querySelector('[data-route=%s] [data-field=\"%s\"]');"
            " return e ? e.textContent : null; })()" % (js(route)[1:-1], name))

    def assert_no_page_errors(self):
        self.assertEqual(self.page.errors, [], "console errors or uncaught exceptions")

    # -- tests (they run in name order and share the ficus and the browser)

    def test_1_routes_and_numbers(self):
        p = self.open_dashboard()
        api = self.stable_routes()
        # The page polls every 2 s: wait for it to show the settled numbers.
        for name, r in api.items():
            for role in ("legacy", "new"):
                want = "{:,}".format(r["backends"][role]["requests"])
                p.wait_for("(() => { const e = document.querySelector("
                           "'[data-route=\"%s\"] [data-field=\"%s-requests\"]');"
                           " return e && e.textContent === %s; })()" % (name, role, js(want)),
                           10, "%s %s requests = %s" % (name, role, want))
        names = p.evaluate("[...document.querySelectorAll('section.route h2')]"
                           ".map(e => e.textContent)")
        self.assertEqual(names, ["orders", "search", "catalog"])
        orders = api["orders"]
        self.assertGreater(orders["backends"]["legacy"]["requests"], 0)
        self.assertGreater(orders["backends"]["new"]["requests"], 0)
        self.assertEqual(self.field("orders", "new-percent"), "30")
        self.assertEqual(self.field("catalog", "new-percent"), "0")
        self.assertEqual(self.field("orders", "legacy-name"), "monolith")
        self.assertEqual(self.field("orders", "new-name"), "orders-svc")
        self.assertIn("x-tenant: acme", self.field("orders", "match"))
        # The 4xx and 5xx answers show in the status legend of each backend.
        legend = self.field("orders", "new-legend")
        self.assertIn("4xx %d" % orders["backends"]["new"]["4xx"], legend)
        self.assertIn("5xx %d" % orders["backends"]["new"]["5xx"], legend)
        total = sum(r["backends"][b]["requests"] for r in api.values() for b in ("legacy", "new"))
        self.assertEqual(p.evaluate("document.getElementById('ov-requests').textContent"),
                         "{:,}".format(total))
        self.assertEqual(p.evaluate("document.getElementById('ov-routes').textContent"), "3")
        # Comparisons and the divergence rate, as the API gives them.
        comps = "{:,}".format(orders["comparisons"])
        self.assertIn("of " + comps, self.field("orders", "total-counts"))
        # The ramped route cannot be changed by hand: its controls say so.
        self.assertTrue(p.evaluate("document.querySelector('[data-route=search] "
                                   "[data-action=apply]').disabled"))
        self.assertIn("1 %", self.field("search", "ramp"))
        # The route without a shadow says so instead of showing an empty chart.
        self.assertIn("Not shadowed", self.field("catalog", "chart"))
        self.assertTrue(p.evaluate("document.getElementById('banner').classList"
                                   ".contains('hidden')"), "no unreachable banner")
        # A few polls go by without any console error.
        p.pump(4.5)
        self.assert_no_page_errors()
        p.screenshot(os.path.join(self.out, "dashboard.png"))
        p.call("Emulation.setEmulatedMedia",
               {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        p.pump(0.5)
        p.screenshot(os.path.join(self.out, "dashboard-dark.png"))
        p.call("Emulation.setEmulatedMedia", {"features": []})
        self.assert_no_page_errors()

    def test_2_split_control_and_rollback(self):
        p = self.open_dashboard()
        p.wait_for("document.querySelector('[data-route=orders] [data-field=\"new-percent\"]')"
                   ".textContent === '30'", 10, "orders at 30 %")
        # A new percentage: the page asks for the token, a wrong one is refused and asked
        # again, the right one goes through.
        p.evaluate("""(() => {
            const c = document.querySelector('[data-route=orders]');
            const i = c.querySelector('[data-field="percent-input"]');
            i.value = '45'; i.dispatchEvent(new Event('input', {bubbles: true}));
            c.querySelector('[data-action=apply]').click(); return true; })()""")
        p.wait_for("document.getElementById('token-dlg').open", 5, "the token dialog")
        p.evaluate("document.getElementById('token-input').value = 'wrong';"
                   "document.getElementById('token-ok').click(); true")
        p.wait_for("document.getElementById('token-dlg').open && document.getElementById"
                   "('token-msg').textContent.includes('refused')", 10,
                   "the token dialog again after a 401")
        self.assertEqual(self.routes()["orders"]["new_percent"], 30)
        p.evaluate("document.getElementById('token-input').value = %s;"
                   "document.getElementById('token-ok').click(); true" % js(TOKEN))
        wait_until(lambda: self.routes()["orders"]["new_percent"] == 45, 10,
                   "new_percent 45 through the API")
        p.wait_for("document.querySelector('[data-route=orders] [data-field=\"new-percent\"]')"
                   ".textContent === '45'", 10, "the page to show 45 %")
        self.assertEqual(p.evaluate("sessionStorage.getItem('ficus.adminToken')"), TOKEN)
        self.assertTrue(self.routes()["orders"]["overridden"])
        # Rollback: confirm, then new_percent is 0 and the page shows the rollback.
        p.evaluate("document.querySelector('[data-route=orders] [data-action=rollback]')"
                   ".click(); true")
        p.wait_for("document.getElementById('confirm-dlg').open", 5, "the confirm dialog")
        p.evaluate("document.getElementById('confirm-ok').click(); true")
        wait_until(lambda: self.routes()["orders"]["new_percent"] == 0, 10, "the rollback")
        self.assertIsNotNone(self.routes()["orders"]["last_rollback"])
        p.wait_for("(() => { const e = document.querySelector('[data-route=orders] "
                   "[data-field=\"last-rollback\"]'); return e && "
                   "e.textContent.includes('Manual rollback'); })()", 10, "the rollback note")
        self.assertEqual(self.field("orders", "new-percent"), "0")
        # Cancelling the confirmation changes nothing.
        p.evaluate("document.querySelector('[data-route=catalog] [data-action=rollback]')"
                   ".click(); true")
        p.wait_for("document.getElementById('confirm-dlg').open", 5, "the confirm dialog")
        p.evaluate("document.getElementById('confirm-dlg').close('cancel'); true")
        p.pump(0.5)
        self.assertIsNone(self.routes()["catalog"]["last_rollback"])
        # The browser logs the refused PATCH (401) itself; nothing else may be logged.
        unexpected = [e for e in p.errors
                      if not re.search(r"status of 401 .*/api/v1/routes/orders$", e)]
        self.assertEqual(unexpected, [], "console errors or uncaught exceptions")

    def test_2a_badges_and_chart_agree(self):
        """The page never contradicts itself: the "rolled back" badge of orders (rolled
        back by test_2) goes once the route is raised again, the note says so; with
        comparisons in the window the chart does not say there are none."""
        p = self.open_dashboard()
        pills = "document.querySelector('[data-route=orders] [data-field=pills]').textContent"
        if self.routes()["orders"]["new_percent"] != 0:
            self.skipTest("orders is not rolled back (test_2 did not run)")
        p.wait_for(pills + ".includes('rolled back')", 10, "the rolled-back badge")
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        try:
            c.request("PATCH", "/api/v1/routes/orders", body=json.dumps({"new_percent": 30}),
                      headers={"Authorization": "Bearer " + TOKEN,
                               "Content-Type": "application/json"})
            self.assertEqual(c.getresponse().status, 200)
        finally:
            c.close()
        p.wait_for("!" + pills + ".includes('rolled back')", 10, "the badge gone at 30 %")
        self.assertIn("Raised again", self.field("orders", "rollback-note"))
        # Rolled back again (the later tests expect it): the badge is back.
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        try:
            c.request("POST", "/api/v1/routes/orders/rollback",
                      headers={"Authorization": "Bearer " + TOKEN})
            self.assertEqual(c.getresponse().status, 200)
        finally:
            c.close()
        p.wait_for(pills + ".includes('rolled back')", 10, "the badge back at 0 %")
        self.send_traffic()
        p.wait_for("/[1-9][0-9,]* comparisons diverged/.test(document.querySelector("
                   "'[data-route=orders] [data-field=\"window-counts\"]').textContent)", 10,
                   "comparisons in the window tile")
        self.assertFalse(p.evaluate("!!document.querySelector('[data-route=orders] "
                                    "[data-field=chart] .chart-empty')"),
                         "the chart says there are no comparisons beside the tile's count")
        self.assertTrue(p.evaluate("document.querySelectorAll('[data-route=orders] "
                                   "[data-field=chart] rect:not(.empty-bar)').length > 0"))
        self.assert_no_page_errors()

    def test_3_divergence_records(self):
        """Records and the summary (served by a DevTools interception in the shapes of
        SPEC "Divergence record"): the list, the side-by-side view and copy as curl."""
        p = self.page
        p.call("Fetch.disable")
        p.navigate("about:blank")

        def fulfil(params):
            url = params["request"]["url"]
            if "/summary" in url:
                body = {"paths": SUMMARY}
            elif "route=orders" in url:
                body = {"divergences": RECORDS}
            else:
                body = {"divergences": []}
            p.send("Fetch.fulfillRequest", {
                "requestId": params["requestId"], "responseCode": 200,
                "responseHeaders": [{"name": "content-type", "value": "application/json"}],
                "body": base64.b64encode(json.dumps(body).encode()).decode()})

        p.on("Fetch.requestPaused", fulfil)
        p.call("Fetch.enable", {"patterns": [{"urlPattern": "*/api/v1/divergences*"}]})
        try:
            p.call("Browser.grantPermissions", {
                "origin": "http://127.0.0.1:%d" % self.admin,
                "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
            clipboard = True
        except Exception:
            clipboard = False
        p.navigate("http://127.0.0.1:%d/" % self.admin)
        p.errors.clear()
        p.wait_for("document.querySelectorAll('[data-route=orders] .rec').length === 2", 15,
                   "two divergence records")
        rows = p.evaluate("[...document.querySelectorAll('[data-route=orders] .rec-row')]"
                          ".map(e => e.textContent)")
        self.assertIn("/api/orders/42?x=1", rows[0])
        self.assertIn("2 diffs", rows[0])
        self.assertIn("POST", rows[1])
        self.assertIn("500", rows[1])
        # The summary: top paths, noise apart.
        paths = p.evaluate("[...document.querySelectorAll('[data-route=orders] table.paths "
                           "tbody tr')].map(e => e.textContent)")
        self.assertEqual(len(paths), 3)
        self.assertIn("/items/0/price", paths[0])
        self.assertIn("17", paths[0])
        self.assertIn("noise", paths[2])
        # A click on a top path opens its example record.
        p.evaluate("document.querySelector('[data-route=orders] table.paths tbody tr').click();"
                   "true")
        p.wait_for("!!document.querySelector('[data-id=\"4f1c9a0000000001\"] .detail')", 5,
                   "the example record to open")
        detail = p.evaluate("document.querySelector('[data-id=\"4f1c9a0000000001\"] .detail')"
                            ".textContent")
        for text in ("/items/0/price", "9.99", "10", "content-type", "text/json",
                     "/meta/generated_at", "legacy (primary)", "new (shadow)"):
            self.assertIn(text, detail)
        # Side by side: both bodies, keys sorted, the differing line marked on each side.
        dels = p.evaluate("[...document.querySelectorAll('[data-id=\"4f1c9a0000000001\"] "
                          ".sbs-grid .ln.del')].map(e => e.textContent)")
        inss = p.evaluate("[...document.querySelectorAll('[data-id=\"4f1c9a0000000001\"] "
                          ".sbs-grid .ln.ins')].map(e => e.textContent)")
        self.assertTrue(any("9.99" in t for t in dels), dels)
        self.assertTrue(any("10" in t for t in inss), inss)
        # Copy as curl: the proxy URL, the target, the route's match headers, and the
        # override header when the API names one; never a redacted header.
        curls = p.evaluate("Object.fromEntries([...document.querySelectorAll("
                           "'[data-id=\"4f1c9a0000000001\"] pre[data-curl]')]"
                           ".map(e => [e.dataset.curl, e.textContent]))")
        override = self.routes()["orders"].get("override_header")
        base = "curl -i 'http://127.0.0.1:%d/api/orders/42?x=1'" % self.port
        if override:
            self.assertEqual(sorted(curls), ["legacy", "new"])
            for b in ("legacy", "new"):
                self.assertTrue(curls[b].startswith(base), curls[b])
                self.assertIn("-H '%s: %s'" % (override, b), curls[b])
        else:
            self.assertEqual(list(curls), ["any"])
            self.assertTrue(curls["any"].startswith(base), curls["any"])
        for cmd in curls.values():
            self.assertIn("-H 'x-tenant: acme'", cmd)
            self.assertNotIn("authorization", cmd.lower())
            self.assertNotIn("cookie", cmd.lower())
        # The POST record reproduces with -X POST.
        p.evaluate("document.querySelector('[data-id=\"4f1c9a0000000002\"] .rec-row').click();"
                   "true")
        p.wait_for("!!document.querySelector('[data-id=\"4f1c9a0000000002\"] pre[data-curl]')", 5,
                   "the second record")
        post = p.evaluate("document.querySelector('[data-id=\"4f1c9a0000000002\"] "
                          "pre[data-curl]').textContent")
        self.assertIn("-X POST 'http://127.0.0.1:%d/api/orders'" % self.port, post)
        self.assertNotIn("leaked", post)
        self.assertIn("truncated", p.evaluate(
            "document.querySelector('[data-id=\"4f1c9a0000000002\"] .detail').textContent"))
        # Open records stay open across refreshes.
        p.pump(2.5)
        self.assertEqual(p.evaluate("document.querySelectorAll('[data-route=orders] "
                                    ".rec.open').length"), 2)
        if clipboard:
            # The clipboard API wants a focused page; headless has none unless emulated.
            p.call("Emulation.setFocusEmulationEnabled", {"enabled": True})
            p.evaluate("document.querySelector('[data-id=\"4f1c9a0000000001\"] "
                       "button[data-copy]').click(); true")
            p.wait_for("[...document.querySelectorAll('.toast')].map(t => t.textContent)"
                       ".join(' | ').includes('copied') || [...document.querySelectorAll("
                       "'.toast')].map(t => t.textContent).join(' | ')", 5, "the copied toast")
            self.assertIn("copied", p.evaluate("[...document.querySelectorAll('.toast')]"
                                               ".map(t => t.textContent).join(' | ')"))
            first = curls.get("legacy") or curls.get("any")
            got = p.evaluate("navigator.clipboard.readText()", await_promise=True)
            self.assertEqual(got, first)
        p.evaluate("window.scrollTo(0, 0); true")
        p.screenshot(os.path.join(self.out, "dashboard-records.png"))
        p.call("Fetch.disable")
        self.assert_no_page_errors()

    def test_4_unreachable_banner_and_recovery(self):
        p = self.open_dashboard()
        p.wait_for("document.getElementById('status-text').textContent.startsWith('live')", 10,
                   "the live status")
        code = self.ficus.stop()
        self.assertEqual(code, 0, "ficus exit code on SIGTERM:\n" + self.ficus.stderr()[-3000:])
        self.assertNotRegex(self.ficus.stderr(), SANITIZER_RE)
        p.wait_for("!document.getElementById('banner').classList.contains('hidden')", 10,
                   "the unreachable banner")
        self.assertIn("admin API unreachable", p.evaluate(
            "document.getElementById('banner').textContent"))
        # The last figures stay on screen, and the page keeps polling.
        self.assertEqual(p.evaluate("document.querySelectorAll('section.route').length"), 3)
        p.screenshot(os.path.join(self.out, "dashboard-unreachable.png"), full_page=False)
        self.ficus.start()
        p.wait_for("document.getElementById('banner').classList.contains('hidden')", 10,
                   "the banner to go once the admin API is back")
        self.assertEqual(p.exceptions, [], "uncaught exceptions while the API was away")
        # The rollback of test 2 was persisted in the state file.
        if self.routes()["orders"]["overridden"]:
            self.assertEqual(self.field("orders", "new-percent"), "0")

    def test_5_state_store_panel(self):
        """Where the live state comes from: the state file here (from the real API), and
        an etcd fleet that lost its store (the real answer with an etcd state_store put
        in by a DevTools interception, in the shape /api/v1/routes gives it)."""
        p = self.open_dashboard()
        p.wait_for("!document.getElementById('store').classList.contains('hidden')", 10,
                   "the state store panel")
        store = lambda f: p.evaluate(  # noqa: E731
            "document.querySelector('#store [data-field=\"%s\"]').textContent" % f)
        self.assertEqual(store("store-status"), "state file · live")
        self.assertEqual(api_json(self.admin, "/api/v1/routes")["state_store"]["type"], "file")
        self.assertTrue(p.evaluate("document.getElementById('store-banner').classList"
                                   ".contains('hidden')"))
        fleet = {"type": "etcd", "status": "stale", "last_contact_s": 12.4, "revision": 42,
                 "source": "etcd", "prefix": "/ficus/prod/", "endpoint": "http://10.0.0.1:2379",
                 "phase": "backoff", "error": "http://10.0.0.1:2379: watch ended: end of file",
                 "instance": "web-1-42-00aa",
                 "instances": [{"id": "web-1-42-00aa", "self": True},
                               {"id": "web-2-77-0b0b", "self": False},
                               {"id": "web-3-19-0c0c", "self": False}],
                 "ramp_driver": "web-2-77-0b0b", "values_ignored": 0}

        def fulfil(params):
            doc = api_json(self.admin, "/api/v1/routes")
            doc["state_store"] = fleet
            p.send("Fetch.fulfillRequest", {
                "requestId": params["requestId"], "responseCode": 200,
                "responseHeaders": [{"name": "content-type", "value": "application/json"}],
                "body": base64.b64encode(json.dumps(doc).encode()).decode()})

        p.on("Fetch.requestPaused", fulfil)
        p.call("Fetch.enable", {"patterns": [{"urlPattern": "*/api/v1/routes"}]})
        try:
            p.wait_for("document.querySelector('#store [data-field=\"store-status\"]')"
                       ".textContent === 'etcd · stale'", 10, "the etcd store, stale")
            self.assertEqual(store("store-revision"), "revision 42")
            self.assertEqual(store("store-contact"), "last contact 12 s ago")
            self.assertEqual(store("store-count"), "3 live instances:")
            chips = p.evaluate("[...document.querySelectorAll('#store [data-instance]')]"
                               ".map(e => [e.dataset.instance, e.className, e.textContent])")
            self.assertEqual([c[0] for c in chips], [i["id"] for i in fleet["instances"]])
            self.assertIn("self", chips[0][1])
            self.assertIn("drives the ramp", chips[1][2])
            banner = p.evaluate("document.getElementById('store-banner').textContent")
            self.assertFalse(p.evaluate("document.getElementById('store-banner').classList"
                                        ".contains('hidden')"))
            self.assertIn("serving the last state seen 12 s ago", banner)
            self.assertIn("refused (503)", banner)
            p.screenshot(os.path.join(self.out, "dashboard-fleet.png"), full_page=False)
        finally:
            p.call("Fetch.disable")
        p.wait_for("document.querySelector('#store [data-field=\"store-status\"]')"
                   ".textContent === 'state file · live'", 10, "the file store again")
        self.assertTrue(p.evaluate("document.getElementById('store-banner').classList"
                                   ".contains('hidden')"))
        self.assert_no_page_errors()

    def test_6_backend_servers(self):
        """Each backend's servers: address, state, active requests, requests and errors as
        the API gives them; a server that goes away shows down, and its backend 1 of 2 up."""
        p = self.open_dashboard()
        self.send_traffic()
        servers = lambda: api_json(self.admin, "/api/v1/routes")["backends"]
        p.wait_for("document.querySelectorAll('[data-backend-servers]').length === 2", 10,
                   "two backend cards")
        api = wait_until(lambda: (lambda b: b if all(a["requests"] > 0 for a in
                                                     b["monolith"]["addresses"]) else None)(
                             servers()), 10, "requests on both monolith servers")
        self.assertEqual(len(api["monolith"]["addresses"]), 2)
        row = "(() => { const e = document.querySelector('[data-backend-servers=%s] " \
              "tr[data-address=\"%s\"] [data-field=%s]'); return e ? e.textContent : null; })()"
        def shown(be, addr):
            return tuple(p.evaluate(row % (be, addr, f)) for f in ("state", "requests", "errors"))

        for be in ("monolith", "orders-svc"):
            for a in api[be]["addresses"]:
                # The page polls every 2 s: it shows what the API says, settled.
                want = lambda: (lambda x: ("up", "{:,}".format(x["requests"]),
                                           "{:,}".format(x["errors"])))(
                    {y["address"]: y for y in servers()[be]["addresses"]}[a["address"]])
                wait_until(lambda: shown(be, a["address"]) == want(), 10,
                           "%s %s as the API shows it" % (be, a["address"]))
        # orders-svc answered /api/orders/boom with a 500 (an error of its server).
        self.assertGreater(servers()["orders-svc"]["addresses"][0]["errors"], 0)
        self.assertEqual(p.evaluate("document.querySelector('[data-backend-servers=monolith] "
                                    "[data-field=ready]').textContent"), "2 of 2 up")
        # The second server goes away: its health checks fail, it shows down.
        gone = "127.0.0.1:%d" % self.legacy2.port
        self.legacy2.close()
        wait_until(lambda: {a["address"]: a for a in servers()["monolith"]["addresses"]}[gone][
            "state"] == "down", 15, "the closed server down in the API")
        p.wait_for("%s === 'down'" % (row % ("monolith", gone, "state")), 10,
                   "the closed server down on the page")
        self.assertEqual(p.evaluate("document.querySelector('[data-backend-servers=monolith] "
                                    "[data-field=ready]').textContent"), "1 of 2 up")
        p.evaluate("document.getElementById('fleet-section').scrollIntoView(); true")
        p.pump(0.3)
        p.screenshot(os.path.join(self.out, "dashboard-servers.png"), full_page=False)
        self.assert_no_page_errors()

    def endpoint_rows(self):
        return self.page.evaluate(
            "[...document.querySelectorAll('[data-route=orders] table.endpoints tbody tr')]"
            ".map(tr => Object.fromEntries([...tr.querySelectorAll('td[data-col]')]"
            ".map(td => [td.dataset.col, td.textContent])))")

    def test_7_endpoint_table(self):
        """The endpoints of orders as GET /api/v1/routes/orders/endpoints gives them:
        name, comparisons, divergent share, verdict and reason; a click on a column
        head sorts by it."""
        p = self.open_dashboard()
        self.send_traffic()
        want = {}

        def settled():
            doc = api_json(self.admin, "/api/v1/routes/orders/endpoints")
            eps = {e["endpoint"]: e for e in doc["endpoints"]
                   if e["endpoint"] != "other" or e["comparisons_total"] > 0}
            want.clear()
            want.update(eps)
            return "GET /api/orders/{id}" in eps and all(
                e["comparisons"] == e["comparisons_total"] for e in eps.values())
        wait_until(settled, 10, "the orders endpoints")
        shown = lambda: {r["endpoint"]: r for r in self.endpoint_rows()}
        expect = lambda: {name: {"endpoint": name, "comparisons": "{:,}".format(e["comparisons"]),
                                 "verdict": e["verdict"], "reason": e["reason"]}
                          for name, e in want.items()}
        strip = lambda rows: {n: {k: v for k, v in r.items() if k != "divergence_rate"}
                              for n, r in rows.items()}
        wait_until(lambda: settled() and strip(shown()) == expect(), 10,
                   "the endpoint table to show what the API says")
        rows = shown()
        ids = want["GET /api/orders/{id}"]
        self.assertGreater(ids["divergent"], 0, ids)  # every fifth price differs
        self.assertIn("%", rows["GET /api/orders/{id}"]["divergence_rate"])
        self.assertEqual(ids["verdict"], "not enough data")  # no guard: 200 needed
        # Most compared first; a click on "endpoint" sorts by name, again reverses.
        order = [r["endpoint"] for r in self.endpoint_rows()]
        self.assertEqual(order[0], "GET /api/orders/{id}")
        p.evaluate("document.querySelector('[data-route=orders] table.endpoints "
                   "th[data-sort=endpoint]').click(); true")
        names = [r["endpoint"] for r in self.endpoint_rows()]
        self.assertEqual(names, sorted(names))
        p.evaluate("document.querySelector('[data-route=orders] table.endpoints "
                   "th[data-sort=endpoint]').click(); true")
        self.assertEqual([r["endpoint"] for r in self.endpoint_rows()], sorted(names, reverse=True))
        self.assertEqual(p.evaluate("document.querySelector('[data-route=orders] "
                                    "th[data-sort=endpoint]').getAttribute('aria-sort')"),
                         "descending")
        self.assert_no_page_errors()

    def test_8_acknowledge_button(self):
        """The Acknowledge button of a top path POSTs to the real server with the admin
        token; the path then shows as acknowledged, counted apart."""
        p = self.open_dashboard()
        self.send_traffic()
        btn = ("document.querySelector('[data-route=orders] table.paths "
               "tr[data-path=\"/price\"] button[data-action=ack]')")
        p.wait_for("!!" + btn, 10, "an Acknowledge button next to /price")
        p.evaluate(btn + ".click(); true")
        p.wait_for("document.getElementById('token-dlg').open", 5, "the token dialog")
        p.evaluate("document.getElementById('token-input').value = %s;"
                   "document.getElementById('token-ok').click(); true" % js(TOKEN))

        def acks():
            return api_json(self.admin, "/api/v1/routes/orders/acknowledgements")[
                "acknowledgements"]
        wait_until(lambda: [(a["path"], a["kind"]) for a in acks()] == [("/price", "json")],
                   10, "the acknowledgement through the API")
        p.wait_for("(() => { const tr = document.querySelector('[data-route=orders] "
                   "table.paths tr[data-path=\"/price\"]'); return tr && "
                   "tr.classList.contains('acked') && !tr.querySelector('button'); })()", 10,
                   "/price shown as acknowledged")
        self.assertIn("1 acknowledged", self.field("orders", "paths-note"))
        # New comparisons of /price count as acknowledged, not as divergences.
        before = self.routes()["orders"]["divergences"]
        self.send_traffic()
        wait_until(lambda: any(x["path"] == "/price" and x.get("acknowledged_count", 0) > 0
                               for x in api_json(self.admin, "/api/v1/divergences/summary?"
                                                 "route=orders")["paths"]),
                   10, "acknowledged /price in the summary")
        p.wait_for("document.querySelector('[data-route=orders] table.paths "
                   "tr[data-path=\"/price\"]').textContent.includes('ack.')", 10,
                   "the acknowledged count on the page")
        after = self.routes()["orders"]["divergences"]
        # Only the status difference of /api/orders/boom (once per send_traffic) is new.
        self.assertLessEqual(after - before, 2)
        # Shown in the records too: the acknowledged item is marked.
        recs = api_json(self.admin, "/api/v1/divergences?route=orders&limit=20")["divergences"]
        marked = [d for r in recs for d in r["diffs"] if d["path"] == "/price"]
        self.assertTrue(marked and marked[0].get("acknowledged") is True, marked[:2])
        self.assert_no_page_errors()

    def test_9_clean_exit(self):
        """Every ficus run of this class exits 0 on SIGTERM with a clean log."""
        code = self.ficus.stop()
        self.assertEqual(code, 0, self.ficus.stderr()[-3000:])
        for name in sorted(os.listdir(self.workdir)):
            if name.startswith("stderr-"):
                with open(os.path.join(self.workdir, name), encoding="utf-8",
                          errors="replace") as f:
                    text = f.read()
                self.assertNotRegex(text, SANITIZER_RE, name)
                self.assertEqual([l for l in text.splitlines() if "level=error" in l], [], name)


class DemoTest(unittest.TestCase):
    """`ficus demo`: starts everything in one process, serves the dashboard, compares, and
    stops cleanly on SIGINT."""

    @classmethod
    def setUpClass(cls):
        if not os.access(ficus_bin(), os.X_OK):
            raise unittest.SkipTest("no ficus binary at %s (set FICUS_BIN)" % ficus_bin())
        cls.out = output_dir()
        cls.workdir = tempfile.mkdtemp(prefix="demo-", dir=cls.out)
        cls.port = port_pair()
        cls.admin = cls.port + 1
        env = ficus_env()
        env.pop("FICUS_ADMIN_TOKEN", None)
        cls.stdout_path = os.path.join(cls.workdir, "stdout.log")
        cls.stderr_path = os.path.join(cls.workdir, "stderr.log")
        with open(cls.stdout_path, "wb") as out, open(cls.stderr_path, "wb") as err:
            cls.proc = subprocess.Popen([ficus_bin(), "demo", "--port", str(cls.port)],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        env=env, cwd=cls.workdir)
        try:
            wait_until(lambda: "dashboard" in cls.stdout() or cls.proc.poll() is not None,
                       30 if sanitized() else 15, "the demo to print its URLs")
            if cls.proc.poll() is not None:
                raise AssertionError("ficus demo exited with %d:\n%s" % (
                    cls.proc.returncode, cls.stderr()))
            wait_until(lambda: api_json(cls.admin, "/healthz"), 15, "the demo admin API")
        except BaseException:
            cls.proc.kill()
            cls.proc.wait(10)
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait(10)

    @classmethod
    def stdout(cls):
        with open(cls.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    @classmethod
    def stderr(cls):
        with open(cls.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def setUp(self):
        signal.signal(signal.SIGALRM, _watchdog)
        signal.alarm(180 if sanitized() else 90)

    def tearDown(self):
        signal.alarm(0)

    def orders(self):
        return api_json(self.admin, "/api/v1/routes")["routes"][0]

    def test_1_prints_urls_and_serves(self):
        out = self.stdout()
        self.assertIn("http://127.0.0.1:%d" % self.port, out)
        self.assertIn("http://127.0.0.1:%d/" % self.admin, out)
        self.assertRegex(out, r"token\s+demo\b")
        status, headers, body = http_get(self.admin, "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"))
        self.assertIn(b"<title>ficus", body)
        # Both demo backends through the proxy: the deliberate differences are there.
        answers = {}
        for backend in ("legacy", "new"):
            status, headers, body = http_get(self.port, "/api/orders/7",
                                             {"x-ficus-backend": backend, "x-user-id": "t"})
            self.assertEqual(status, 200, body)
            self.assertTrue(headers["content-type"].startswith("application/json"))
            answers[backend] = json.loads(body)
        legacy, new = answers["legacy"], answers["new"]
        self.assertEqual(legacy["id"], 7)
        self.assertNotEqual(legacy["price"], new["price"])  # price differs for ids % 7 == 0
        self.assertEqual(sorted(legacy["tags"]), sorted(new["tags"]))
        self.assertNotEqual(legacy["tags"], new["tags"])  # reordered
        self.assertIn("generated_at", legacy)
        status, _, body = http_get(self.port, "/api/orders/8", {"x-ficus-backend": "new"})
        status2, _, body2 = http_get(self.port, "/api/orders/8", {"x-ficus-backend": "legacy"})
        a, b = json.loads(body), json.loads(body2)
        self.assertEqual(a["price"], b["price"])  # id 8: same price
        self.assertNotEqual(a["generated_at"], b["generated_at"])  # noise
        status, _, body = http_get(self.port, "/api/orders?limit=3", {"x-user-id": "t"})
        self.assertEqual(status, 200)
        self.assertEqual(len(json.loads(body)["orders"]), 3)
        r = self.orders()
        self.assertEqual(r["name"], "orders")
        self.assertEqual(r["new_percent"], 10)
        self.assertEqual(r["shadow"]["percent"], 100)

    def test_2_traffic_flows(self):
        """The generator sends a few requests a second with an x-user-id."""
        wait_until(lambda: sum(b["requests"] for b in self.orders()["backends"].values()) >= 8,
                   15, "demo traffic through the proxy")

    # Comparisons need the parallel run (shadow, diff, divergence log) in ficus; with it,
    # the demo's traffic is compared within a few seconds.
    def test_3_comparisons(self):
        wait_until(lambda: self.orders()["comparisons"] > 0, 10, "comparisons > 0")

    def test_4_dashboard(self):
        with Chromium(1400, 1000) as browser:
            p = browser.page()
            try:
                p.navigate("http://127.0.0.1:%d/" % self.admin)
                p.wait_for("(() => { const e = document.querySelector('[data-route=orders] "
                           "[data-field=\"legacy-requests\"]'); return e && "
                           "e.textContent !== '' && e.textContent !== '0'; })()", 15,
                           "the demo's traffic on the dashboard")
                if api_json(self.admin, "/api/v1/divergences?route=orders&limit=1")[
                        "divergences"]:
                    p.wait_for("document.querySelectorAll('[data-route=orders] .rec').length",
                               10, "divergence records")
                    p.evaluate("document.querySelector('[data-route=orders] .rec-row').click();"
                               "true")
                p.pump(3)
                p.screenshot(os.path.join(self.out, "demo-dashboard.png"))
                self.assertEqual(p.errors, [], "console errors or uncaught exceptions")
            finally:
                p.close()

    def test_9_stops_cleanly_on_sigint(self):
        m = re.search(r"files\s+(\S+)", self.stdout())
        self.assertIsNotNone(m, self.stdout())
        tempdir = m.group(1)
        self.assertTrue(os.path.isdir(tempdir))
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(30 if sanitized() else 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self.fail("ficus demo did not exit on SIGINT:\n" + self.stderr()[-3000:])
        err = self.stderr()
        self.assertNotRegex(err, SANITIZER_RE)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual([l for l in err.splitlines() if "level=error" in l], [])
        self.assertFalse(os.path.exists(tempdir), "the demo's temp dir is removed")


if __name__ == "__main__":
    unittest.main()
