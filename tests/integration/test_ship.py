"""The shipped deployment files, checked against each other and against a real ficus.

- Prometheus: `promtool check config`, `check rules` and `test rules` pass; every alert has a
  unit test that makes it fire; the thresholds that mirror the guard match the shipped config.
- Metric names: every name that the rules and the Grafana dashboard read is in the /metrics
  output of a real ficus running the shipped configuration with the compose stack's own demo
  backends (docker/demo/demo.py) and some traffic; recorded names are defined by a rule.
- Grafana: summed across instances with an instance selector; the guard line; provisioning
  agrees with compose.
- Compose and Kubernetes parse as YAML and name the ports, paths, services and the token
  variable of the configuration they ship; that configuration passes `ficus check`.
- The image: the Dockerfile's build packages follow the Makefile, its runtime stage exposes the
  configuration's ports, runs as a numeric non-root user and stops with SIGTERM, .dockerignore
  keeps what the Dockerfile copies, and the HEALTHCHECK script tells a live admin API from a
  dead one.
- systemd: `systemd-analyze verify` passes on the unit (a copy pointed at the built binary) and
  the unit's stop timeout is above the drain.

A missing tool (promtool, systemd-analyze, PyYAML) makes its test skip with the reason, and a
run with a skip and no failure exits 77, which ctest reports as skipped rather than passed.
"""

import atexit
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Ficus, FicusTestCase, ficus_bin, free_port, sanitized, wait_until
from harness_admin import AdminClient, slow
from harness_ship import (DemoBackend, admin_port, configmap_config, dashboard_exprs,
                          drain_seconds, listen_port, load_json, load_yaml, load_yaml_all,
                          metric_names, repo_path, require_tool, require_yaml, rule_groups,
                          shipped_config)
from test_metrics import parse_exposition

PROM_DIR = repo_path("docker", "prometheus")

# Series a Prometheus server makes itself for each target; not exported by ficus.
PROMETHEUS_SERIES = {"up"}


_results = []


def load_tests(loader, tests, pattern):
    """Keeps the result of the run, so that a run with skips can end as skipped (below)."""
    class Suite(unittest.TestSuite):
        def run(self, result, debug=False):
            _results.append(result)
            return super().run(result, debug)
    return Suite([tests])


@atexit.register
def _skipped_exit():
    # unittest exits 0 when tests were skipped; ctest would call that a pass.
    if _results and all(r.wasSuccessful() for r in _results) and any(r.skipped for r in _results):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(77)


def run(cmd, cwd=None, timeout=60, env=None):
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def ficus_check(path):
    return run([ficus_bin(), "check", "-c", path], timeout=slow(30))


def guard_of(cfg):
    """The guard of the shipped configuration's guarded route (there must be exactly one)."""
    guarded = [r for r in cfg["routes"] if "guard" in r]
    if len(guarded) != 1:
        raise AssertionError("the shipped configuration has %d guarded routes, not 1"
                             % len(guarded))
    g = dict({"max_divergence_rate": 0.01, "min_comparisons": 200}, **guarded[0]["guard"])
    return g


class PromQLNames(unittest.TestCase):
    """The name extractor the metric test relies on: it must find metric names and only them."""

    def test_extracts_names_and_skips_the_rest(self):
        expr = ('sum by (route, backend) (rate(ficus_requests_total{code=~"5xx|error", '
                'instance=~"$instance"}[$__rate_interval])) / on (route) group_left (backend) '
                'histogram_quantile(0.99, sum without (instance) (rate(x_bucket[5m] offset 1h)))'
                ' > bool 1e3 and route:ficus_comparisons:rate5m unless up{job="ficus"}')
        self.assertEqual(metric_names(expr),
                         {"ficus_requests_total", "x_bucket", "route:ficus_comparisons:rate5m",
                          "up"})

    def test_a_misspelt_function_is_an_error(self):
        with self.assertRaises(ValueError):
            metric_names("sum(rat(ficus_requests_total[5m]))")


class Prometheus(unittest.TestCase):
    def setUp(self):
        require_yaml(self)

    def test_promtool_check_config_and_rules(self):
        self.promtool = require_tool(self, "promtool", "prometheus")
        rc, out, err = run([self.promtool, "check", "config", "prometheus.yml"], cwd=PROM_DIR)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("2 rule files found", out + err)
        rc, out, err = run([self.promtool, "check", "rules", "rules/ficus.rules.yml",
                            "rules/ficus.alerts.yml"], cwd=PROM_DIR)
        self.assertEqual(rc, 0, out + err)

    def test_promtool_unit_tests_pass(self):
        self.promtool = require_tool(self, "promtool", "prometheus")
        rc, out, err = run([self.promtool, "test", "rules", "tests/ficus.test.yml"], cwd=PROM_DIR)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("SUCCESS", out + err)

    def test_every_alert_has_a_unit_test_in_which_it_fires(self):
        alerts = {r["alert"] for _, r in rule_groups() if "alert" in r}
        self.assertGreaterEqual(alerts, {"FicusDivergenceAboveGuard", "FicusGuardRollback",
                                         "FicusShadowBacklog", "FicusBackendErrors",
                                         "FicusBackendDown"})
        tests = load_yaml("docker", "prometheus", "tests", "ficus.test.yml")
        firing = {t["alertname"] for group in tests["tests"]
                  for t in group.get("alert_rule_test", []) if t.get("exp_alerts")}
        self.assertEqual(alerts - firing, set(), "alerts without a test that fires them")
        self.assertEqual(firing - alerts, set(), "tests of alerts that do not exist")

    def test_alert_thresholds_follow_the_shipped_guard(self):
        alert = [r for _, r in rule_groups() if r.get("alert") == "FicusDivergenceAboveGuard"]
        self.assertEqual(len(alert), 1)
        expr = alert[0]["expr"]
        m = re.search(r"route:ficus_divergence_rate:ratio_rate5m\s*>\s*([0-9.]+)", expr)
        self.assertIsNotNone(m, expr)
        m2 = re.search(r"route:ficus_comparisons:rate5m\s*\*\s*300\s*>=\s*([0-9]+)", expr)
        self.assertIsNotNone(m2, expr)
        for name, cfg in (("docker/ficus.json", shipped_config()),
                          ("configmap.yaml", configmap_config())):
            g = guard_of(cfg)
            self.assertEqual(float(m.group(1)), g["max_divergence_rate"], name)
            self.assertEqual(int(m2.group(1)), g["min_comparisons"], name)

    def test_recorded_names_are_defined(self):
        recorded = {r["record"] for _, r in rule_groups() if "record" in r}
        used = set()
        for _, r in rule_groups():
            used |= {n for n in metric_names(r["expr"]) if ":" in n}
        for _, e in dashboard_exprs(load_json("docker", "grafana", "ficus.json")):
            used |= {n for n in metric_names(e) if ":" in n}
        self.assertEqual(used - recorded, set(), "recorded names that no rule records")


class MetricNames(FicusTestCase):
    """Every metric the rules and the dashboard read exists in a real ficus's /metrics."""

    WATCHDOG_SECONDS = 180 if sanitized() else 90

    def start_shipped(self):
        """ficus with docker/ficus.json on loopback: the demo backends, free ports, files in
        the work directory. The new backend diverges and fails often, so that divergences,
        5xx and fallbacks happen within a few requests."""
        self.legacy = DemoBackend("legacy")
        self.addCleanup(self.legacy.close)
        self.new = DemoBackend("new", {"DEMO_DIVERGE": "0.25", "DEMO_ERRORS": "0.1"})
        self.addCleanup(self.new.close)
        f = Ficus(self.legacy.url, self.new.url, name="ship")
        cfg = shipped_config()
        cfg["listen"] = "127.0.0.1:%d" % f.port
        cfg["workers"] = 1
        cfg["admin"]["address"] = "127.0.0.1:%d" % free_port()
        cfg["backends"]["legacy"]["url"] = self.legacy.url
        cfg["backends"]["new"]["url"] = self.new.url
        cfg["state_file"] = os.path.join(f.workdir, "state.json")
        cfg["divergence_log"]["path"] = os.path.join(f.workdir, "divergence.ndjson")
        cfg["access_log"]["path"] = ""
        f.config = cfg
        self._ficuses.append(f)
        f.start()
        # The proxy listens first; the admin API comes up on the control thread a moment later.
        def admin_up():
            try:
                with AdminClient(admin_port(cfg)) as a:
                    return a.get("/healthz")[0] == 200
            except OSError:
                return False
        wait_until(admin_up, slow(10), what="admin API")
        self.admin = AdminClient(admin_port(cfg))
        self.addCleanup(self.admin.close)
        return f

    def drive(self, f, n=60):
        for i in range(n):
            route = "orders" if i % 4 else "catalog"
            raw = ("GET /api/%s/%d HTTP/1.1\r\nHost: x\r\nx-user-id: u%d\r\n\r\n"
                   % (route, i + 1, i)).encode()
            r = f.request(raw)
            self.assertIn(r.status, (200, 503), r)

    def exported(self):
        text = self.admin.metrics()
        families = parse_exposition(text)
        return {name for fam in families.values() for name, _, _ in fam["samples"]}, text

    def test_every_metric_read_by_rules_and_dashboard_is_exported(self):
        f = self.start_shipped()
        self.drive(f)

        def compared():
            m = re.search(r'^ficus_comparisons_total\{route="orders"\} (\d+)',
                          self.admin.metrics(), re.M)
            return m is not None and int(m.group(1)) >= 20
        wait_until(compared, slow(10), what="20 comparisons on route orders")
        names, text = self.exported()
        self.assertRegex(text, r'ficus_divergences_total\{route="orders",kind="json"\} [1-9]')

        used = {}
        for file, r in rule_groups():
            for n in metric_names(r["expr"]):
                used.setdefault(n, set()).add("%s: %s" % (file, r.get("record") or r["alert"]))
        for where, e in dashboard_exprs(load_json("docker", "grafana", "ficus.json")):
            for n in metric_names(e):
                used.setdefault(n, set()).add("ficus.json: " + where)
        self.assertIn("ficus_request_duration_seconds_bucket", used)
        self.assertIn("ficus_rollbacks_total", used)
        missing = {n: sorted(w) for n, w in used.items()
                   if ":" not in n and n not in PROMETHEUS_SERIES and n not in names}
        self.assertEqual(missing, {}, "metric names read but not exported by ficus")

    def test_healthcheck_script_tells_a_live_admin_api_from_a_dead_one(self):
        script = repo_path("docker", "healthcheck.sh")
        f = self.start_shipped()
        env = dict(os.environ, FICUS_HEALTH_ADDR="127.0.0.1:%d" % admin_port(f.config))
        self.assertEqual(run([script], env=env, timeout=10)[0], 0)
        # A port where nothing listens, and a server that answers 503.
        env["FICUS_HEALTH_ADDR"] = "127.0.0.1:%d" % free_port()
        self.assertEqual(run([script], env=env, timeout=10)[0], 1)

        class Unwell(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Unwell)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            env["FICUS_HEALTH_ADDR"] = "127.0.0.1:%d" % srv.server_address[1]
            self.assertEqual(run([script], env=env, timeout=10)[0], 1)
        finally:
            srv.shutdown()
            srv.server_close()
        # The default address is the shipped configuration's admin port.
        with open(script) as fh:
            m = re.search(r"FICUS_HEALTH_ADDR:-[0-9.]+:(\d+)", fh.read())
        self.assertEqual(int(m.group(1)), admin_port(shipped_config()))


class ShippedConfigs(unittest.TestCase):
    def test_shipped_configurations_pass_ficus_check(self):
        if not os.access(ficus_bin(), os.X_OK):
            self.skipTest("no ficus binary at %s (set FICUS_BIN)" % ficus_bin())
        require_yaml(self)
        rc, out, err = ficus_check(repo_path("docker", "ficus.json"))
        self.assertEqual((rc, out.strip()), (0, "ok"), err)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ficus.json")
            with open(path, "w") as fh:
                json.dump(configmap_config(), fh)
            rc, out, err = ficus_check(path)
            self.assertEqual((rc, out.strip()), (0, "ok"), err)


class Grafana(unittest.TestCase):
    def setUp(self):
        require_yaml(self)
        self.dash = load_json("docker", "grafana", "ficus.json")

    def test_summed_across_instances_with_an_instance_selector(self):
        var = {v["name"]: v for v in self.dash["templating"]["list"]}
        self.assertIn("instance", var)
        self.assertTrue(var["instance"]["multi"] and var["instance"]["includeAll"])
        for where, e in dashboard_exprs(self.dash):
            if where.startswith("variable"):
                continue
            # Every selector of a ficus metric is narrowed to the chosen instances.
            for sel in re.finditer(r"\b((?:ficus|process)_[a-z_]+)(\{[^}]*\})?", e):
                self.assertIn('instance=~"$instance"', sel.group(2) or "",
                              "%s: %s has no instance selector" % (where, sel.group(1)))
            # Anything but the per-instance process panels is aggregated without instance.
            if "process_" not in e:
                self.assertRegex(e, r"\b(sum|max|min) by \((?![^)]*instance)", where)

    def test_panels_of_the_issue_are_there(self):
        titles = " | ".join(p["title"] for p in self.dash["panels"])
        for want in ("Split per route", "Traffic per backend", "Divergence rate",
                     "Top divergence kinds", "Latency: legacy vs new"):
            self.assertIn(want, titles)
        annotations = [a for a in self.dash["annotations"]["list"] if a.get("expr")]
        self.assertTrue(any("ficus_rollbacks_total" in a["expr"] for a in annotations))

    def test_guard_line_is_the_shipped_guard(self):
        panel = [p for p in self.dash["panels"] if p["title"].startswith("Divergence rate")][0]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        self.assertEqual(panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"],
                         "line")
        self.assertEqual(steps[-1]["value"], guard_of(shipped_config())["max_divergence_rate"])

    def test_provisioning_agrees_with_compose(self):
        compose = load_yaml("docker", "compose.yaml")
        vols = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"]
                    if v.startswith("./"))
        self.assertEqual(vols["./grafana/provisioning"], "/etc/grafana/provisioning")
        provider = load_yaml("docker", "grafana", "provisioning", "dashboards", "ficus.yml")
        path = provider["providers"][0]["options"]["path"]
        self.assertEqual(os.path.dirname(vols["./grafana/ficus.json"]), path)
        ds = load_yaml("docker", "grafana", "provisioning", "datasources", "prometheus.yml")
        url = ds["datasources"][0]["url"]
        self.assertEqual(url, "http://prometheus:9090")
        self.assertIn("prometheus", compose["services"])


class Compose(unittest.TestCase):
    def setUp(self):
        require_yaml(self)
        self.compose = load_yaml("docker", "compose.yaml")
        self.services = self.compose["services"]
        self.cfg = shipped_config()

    def test_services_of_the_stack(self):
        self.assertGreaterEqual(set(self.services),
                                {"ficus", "legacy", "new", "prometheus", "grafana"})

    def test_bind_mounts_and_build_context_exist(self):
        base = repo_path("docker")
        for name, svc in self.services.items():
            for v in svc.get("volumes", []):
                src = v.split(":")[0]
                if src.startswith("."):
                    self.assertTrue(os.path.exists(os.path.join(base, src)), "%s: %s" % (name, v))
        build = self.services["ficus"]["build"]
        self.assertTrue(os.path.isfile(os.path.join(base, build["context"], build["dockerfile"])))

    def test_ficus_service_matches_its_configuration(self):
        svc = self.services["ficus"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        self.assertEqual(mounts["/etc/ficus/ficus.json"], "./ficus.json")
        self.assertIn(os.path.dirname(self.cfg["state_file"]), mounts)
        self.assertIn(os.path.dirname(self.cfg["divergence_log"]["path"]), mounts)
        published = {int(p.rsplit(":", 1)[1]) for p in svc["ports"]}
        self.assertEqual(published, {listen_port(self.cfg), admin_port(self.cfg)})
        self.assertIn(self.cfg["admin"]["token_env"], svc["environment"])
        grace = svc["stop_grace_period"]
        self.assertTrue(grace.endswith("s"))
        self.assertGreater(int(grace[:-1]), drain_seconds(self.cfg))

    def test_backends_and_traffic_reach_the_right_ports(self):
        for role, be in self.cfg["backends"].items():
            m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", be["url"])
            self.assertIsNotNone(m, be["url"])
            host, port = m.group(1), m.group(2)
            cmd = self.services[host]["command"]
            self.assertEqual(cmd[cmd.index("--port") + 1], port, host)
            self.assertEqual(cmd[cmd.index("--role") + 1], role, host)
        cmd = self.services["traffic"]["command"]
        self.assertEqual(cmd[cmd.index("--target") + 1],
                         "http://ficus:%d" % listen_port(self.cfg))

    def test_prometheus_scrapes_the_admin_port_with_the_rules(self):
        svc = self.services["prometheus"]
        self.assertIn("./prometheus:/etc/prometheus:ro", svc["volumes"])
        self.assertIn("--config.file=/etc/prometheus/prometheus.yml", svc["command"])
        prom = load_yaml("docker", "prometheus", "prometheus.yml")
        targets = [t for sc in prom["scrape_configs"] if sc["job_name"] == "ficus"
                   for s in sc["static_configs"] for t in s["targets"]]
        self.assertEqual(targets, ["ficus:%d" % admin_port(self.cfg)])
        for rf in prom["rule_files"]:
            self.assertTrue(os.path.isfile(os.path.join(PROM_DIR, rf)), rf)


class ComposeFleet(unittest.TestCase):
    """The compose profile "fleet": two ficus instances sharing their live state through one
    etcd (docker/ficus-fleet.json), scraped by Prometheus when they run."""

    FLEET = ("etcd", "ficus-a", "ficus-b", "traffic-fleet")

    def setUp(self):
        require_yaml(self)
        self.compose = load_yaml("docker", "compose.yaml")
        self.services = self.compose["services"]
        self.cfg = load_json("docker", "ficus-fleet.json")

    def test_fleet_services_are_in_the_profile_only(self):
        for name, svc in self.services.items():
            self.assertEqual(svc.get("profiles", []), ["fleet"] if name in self.FLEET else [],
                             name)

    def test_instances_share_one_etcd_with_the_shipped_routes(self):
        store = self.cfg["state_store"]
        self.assertEqual(store["type"], "etcd")
        cmd = self.services["etcd"]["command"]
        flags = dict(a.split("=", 1) for a in cmd if a.startswith("--"))
        port = flags["--listen-client-urls"].rsplit(":", 1)[1]
        self.assertEqual(store["endpoints"], ["http://etcd:%s" % port])
        self.assertEqual(flags["--advertise-client-urls"], store["endpoints"][0])
        shipped = shipped_config()
        self.assertEqual({k: v for k, v in self.cfg.items() if k != "state_store"}, shipped,
                         "the fleet runs the shipped configuration with a state_store")
        for name in ("ficus-a", "ficus-b"):
            svc = self.services[name]
            mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
            self.assertEqual(mounts["/etc/ficus/ficus.json"], "./ficus-fleet.json")
            self.assertIn(os.path.dirname(self.cfg["state_file"]), mounts)
            self.assertIn("etcd", svc["depends_on"])
            self.assertIn(self.cfg["admin"]["token_env"], svc["environment"])
            self.assertGreater(int(svc["stop_grace_period"][:-1]), drain_seconds(self.cfg))
            published = {int(p.rsplit(":", 2)[-1]) for p in svc["ports"]}
            self.assertEqual(published, {listen_port(self.cfg), admin_port(self.cfg)})
        # Each instance keeps its own cache and logs; no two services publish one port.
        a, b = (set(self.services[n]["volumes"]) for n in ("ficus-a", "ficus-b"))
        self.assertEqual(a & b, {"./ficus-fleet.json:/etc/ficus/ficus.json:ro"})
        host_ports = [p.rsplit(":", 1)[0].rsplit(":", 1)[-1] for svc in self.services.values()
                      for p in svc.get("ports", [])]
        self.assertEqual(len(host_ports), len(set(host_ports)), host_ports)
        cmd = self.services["traffic-fleet"]["command"]
        self.assertEqual(cmd[cmd.index("--target") + 1], "http://ficus-a:%d"
                         % listen_port(self.cfg))

    def test_fleet_configuration_passes_ficus_check(self):
        if not os.access(ficus_bin(), os.X_OK):
            self.skipTest("no ficus binary at %s (set FICUS_BIN)" % ficus_bin())
        rc, out, err = ficus_check(repo_path("docker", "ficus-fleet.json"))
        self.assertEqual((rc, out.strip()), (0, "ok"), err)

    def test_prometheus_scrapes_the_fleet_when_it_runs(self):
        prom = load_yaml("docker", "prometheus", "prometheus.yml")
        jobs = {sc["job_name"]: sc for sc in prom["scrape_configs"]}
        sd = jobs["ficus-fleet"]["dns_sd_configs"]
        self.assertEqual(sorted(n for c in sd for n in c["names"]), ["ficus-a", "ficus-b"])
        self.assertEqual({c["port"] for c in sd}, {admin_port(self.cfg)})
        self.assertEqual(jobs["ficus-fleet"]["metrics_path"], "/metrics")


class Kubernetes(unittest.TestCase):
    def setUp(self):
        require_yaml(self)
        k = "deploy/kubernetes"
        self.docs = {}
        for name in sorted(os.listdir(repo_path(k))):
            if name.endswith(".yaml"):
                for d in load_yaml_all(k, name):
                    self.docs.setdefault(d["kind"], []).append(d)
        self.cfg = configmap_config()
        self.dep = self.docs["Deployment"][0]
        self.pod = self.dep["spec"]["template"]["spec"]
        self.ctr = self.pod["containers"][0]

    def test_kustomization_lists_every_manifest(self):
        kust = self.docs["Kustomization"][0]
        files = {n for n in os.listdir(repo_path("deploy", "kubernetes"))
                 if n.endswith(".yaml") and n != "kustomization.yaml"}
        self.assertEqual(set(kust["resources"]), files)
        for kind in ("Deployment", "ConfigMap", "Service", "PodDisruptionBudget"):
            self.assertEqual(len(self.docs.get(kind, [])), 1, kind)

    def test_deployment_ports_probes_and_config_path(self):
        self.assertEqual(self.dep["spec"]["replicas"], 2)
        ports = {p["name"]: p["containerPort"] for p in self.ctr["ports"]}
        self.assertEqual(ports, {"http": listen_port(self.cfg), "admin": admin_port(self.cfg)})
        self.assertEqual(self.ctr["readinessProbe"]["httpGet"], {"path": "/readyz",
                                                                 "port": "admin"})
        self.assertEqual(self.ctr["livenessProbe"]["httpGet"], {"path": "/healthz",
                                                                "port": "admin"})
        ann = self.dep["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(int(ann["prometheus.io/port"]), admin_port(self.cfg))
        # -c names the ConfigMap's key inside the directory the ConfigMap is mounted on.
        args = self.ctr["args"]
        path = args[args.index("-c") + 1]
        mounts = {m["name"]: m for m in self.ctr["volumeMounts"]}
        vols = {v["name"]: v for v in self.pod["volumes"]}
        cm_vol = [n for n, v in vols.items() if "configMap" in v][0]
        self.assertEqual(vols[cm_vol]["configMap"]["name"],
                         self.docs["ConfigMap"][0]["metadata"]["name"])
        self.assertEqual(path, os.path.join(mounts[cm_vol]["mountPath"], "ficus.json"))
        self.assertNotIn("subPath", mounts[cm_vol], "a subPath mount never sees an update")

    def test_state_and_divergence_log_are_writable_mounts(self):
        sec = self.ctr["securityContext"]
        self.assertTrue(sec["readOnlyRootFilesystem"])
        self.assertFalse(sec["allowPrivilegeEscalation"])
        mounts = {m["mountPath"]: m for m in self.ctr["volumeMounts"]}
        vols = {v["name"]: v for v in self.pod["volumes"]}
        for path in (self.cfg["state_file"], self.cfg["divergence_log"]["path"]):
            m = mounts.get(os.path.dirname(path))
            self.assertIsNotNone(m, path)
            self.assertFalse(m.get("readOnly", False), path)
        logs = vols[mounts[os.path.dirname(self.cfg["divergence_log"]["path"])]["name"]]
        limit = logs["emptyDir"]["sizeLimit"]
        self.assertTrue(limit.endswith("Mi"))
        dl = self.cfg["divergence_log"]
        self.assertGreaterEqual(int(limit[:-2]) << 20, (dl["keep"] + 1) * dl["max_bytes"])

    def test_runs_as_the_images_non_root_user(self):
        sc = self.pod["securityContext"]
        self.assertTrue(sc["runAsNonRoot"])
        self.assertEqual("%d:%d" % (sc["runAsUser"], sc["runAsGroup"]),
                         dockerfile_runtime()["USER"][0])

    def test_termination_grace_covers_prestop_and_drain(self):
        cmd = self.ctr["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(cmd[0], "sleep")
        grace = self.pod["terminationGracePeriodSeconds"]
        self.assertGreater(grace, float(cmd[1]) + drain_seconds(self.cfg))

    def test_admin_token_comes_from_a_secret(self):
        env = {e["name"]: e for e in self.ctr["env"]}
        tok = env[self.cfg["admin"]["token_env"]]
        self.assertIn("secretKeyRef", tok["valueFrom"])
        self.assertNotIn("value", tok)

    def test_service_targets_the_proxy_port(self):
        svc = self.docs["Service"][0]
        names = {p["name"] for p in self.ctr["ports"]}
        for p in svc["spec"]["ports"]:
            self.assertIn(p["targetPort"], names)
        labels = self.dep["spec"]["template"]["metadata"]["labels"]
        for k, v in svc["spec"]["selector"].items():
            self.assertEqual(labels[k], v)


def dockerfile_stages():
    """The Dockerfile as a list of stages, each a list of (INSTRUCTION, argument text) with
    continuation lines joined and comments dropped."""
    with open(repo_path("docker", "Dockerfile")) as f:
        text = f.read()
    lines, cur = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        if raw.endswith("\\"):
            cur += raw[:-1] + " "
            continue
        lines.append(cur + raw)
        cur = ""
    stages = []
    for line in lines:
        instr, _, arg = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, arg.strip()))
    return stages


def dockerfile_runtime():
    """The last stage's instructions: {INSTRUCTION: [arguments]}."""
    out = {}
    for instr, arg in dockerfile_stages()[-1]:
        out.setdefault(instr, []).append(arg)
    return out


def makefile_packages():
    with open(repo_path("Makefile")) as f:
        text = f.read()
    m = re.search(r"^PACKAGES\s*=\s*((?:.*\\\n)*.*)$", text, re.M)
    return set(m.group(1).replace("\\\n", " ").split())


def apt_packages(run_arg):
    m = re.search(r"apt-get install ((?:(?!&&).)*)", run_arg)
    return {w for w in m.group(1).split() if not w.startswith("-")} if m else set()


class Dockerfile(unittest.TestCase):
    def test_build_packages_follow_the_makefile(self):
        build = dockerfile_stages()[0]
        pkgs = set()
        for instr, arg in build:
            if instr == "RUN":
                pkgs |= apt_packages(arg)
        make = makefile_packages()
        self.assertEqual(pkgs - make, set(), "build packages the Makefile does not install")
        needed = {p for p in make if p.endswith("-dev") and not p.startswith("libclang")}
        needed |= {"build-essential", "cmake", "pkg-config", "node-llhttp", "python3"}
        self.assertEqual(needed - pkgs, set(), "Makefile build packages missing in the image")

    def test_runtime_stage(self):
        rt = dockerfile_runtime()
        cfg = shipped_config()
        user = rt["USER"][-1]
        self.assertRegex(user, r"^[1-9][0-9]*:[0-9]+$", "a numeric, non-root USER")
        self.assertEqual(rt["STOPSIGNAL"], ["SIGTERM"])
        exposed = {int(p) for e in rt["EXPOSE"] for p in e.split()}
        self.assertEqual(exposed, {listen_port(cfg), admin_port(cfg)})
        self.assertEqual(len(rt["HEALTHCHECK"]), 1)
        copies = {}
        for c in rt["COPY"]:
            parts = c.split()
            if not parts[0].startswith("--"):
                copies[parts[0]] = parts[1]
        self.assertIn(copies["docker/healthcheck.sh"], rt["HEALTHCHECK"][0])
        cmd = json.loads(rt["CMD"][-1])
        self.assertEqual(cmd[cmd.index("-c") + 1], copies["docker/ficus.json"])
        self.assertEqual(json.loads(rt["ENTRYPOINT"][-1]), ["/usr/bin/ficus"])
        runtime_pkgs = set()
        for arg in rt["RUN"]:
            runtime_pkgs |= apt_packages(arg)
        self.assertFalse({p for p in runtime_pkgs if p.endswith("-dev")},
                         "no build packages in the runtime stage")

    def test_dockerignore_keeps_what_the_dockerfile_copies(self):
        with open(repo_path(".dockerignore")) as f:
            rules = [l.strip() for l in f if l.strip() and not l.startswith("#")]

        def excluded(path):
            # Docker's rule: the last pattern that matches the path or a parent decides.
            parts = path.split("/")
            verdict = False
            for r in rules:
                neg = r.startswith("!")
                pat = r[1:] if neg else r
                if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat)
                       for i in range(1, len(parts) + 1)):
                    verdict = not neg
            return verdict
        sources = []
        for stage in dockerfile_stages():
            for instr, arg in stage:
                if instr == "COPY" and not arg.startswith("--from"):
                    sources += [s.rstrip("/") for s in shlex.split(arg)[:-1]]
        self.assertIn("src", sources)
        for s in sources:
            self.assertTrue(os.path.exists(repo_path(s)), s)
            self.assertFalse(excluded(s), "%s is copied but excluded by .dockerignore" % s)
            if os.path.isdir(repo_path(s)):
                for name in os.listdir(repo_path(s)):
                    self.assertFalse(excluded(s + "/" + name), s + "/" + name)
        for heavy in ("build", "build-asan", ".git", "tests/integration/test_ship.py",
                      "docs/dashboard.png", "bench"):
            self.assertTrue(excluded(heavy), "%s is in the build context" % heavy)


class Systemd(unittest.TestCase):
    def setUp(self):
        with open(repo_path("deploy", "systemd", "ficus.service")) as f:
            self.text = f.read()
        self.keys = {}
        for line in self.text.splitlines():
            if "=" in line and not line.startswith("#"):
                k, _, v = line.partition("=")
                self.keys.setdefault(k.strip(), []).append(v.strip())

    def test_systemd_analyze_verify(self):
        tool = require_tool(self, "systemd-analyze", "systemd")
        if not os.access(ficus_bin(), os.X_OK):
            self.skipTest("no ficus binary at %s (set FICUS_BIN)" % ficus_bin())
        # verify wants the ExecStart binaries to exist: a copy of the unit points at this build.
        with tempfile.TemporaryDirectory() as d:
            unit = os.path.join(d, "ficus.service")
            with open(unit, "w") as f:
                f.write(self.text.replace("/usr/local/bin/ficus", os.path.abspath(ficus_bin())))
            rc, out, err = run([tool, "verify", unit], timeout=60)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual((out + err).strip(), "", "systemd-analyze verify warned")

    def test_signals_timeouts_and_sandbox(self):
        k = {n: v[-1] for n, v in self.keys.items()}
        self.assertEqual(k["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual(k["KillSignal"], "SIGTERM")
        stop = k["TimeoutStopSec"]
        self.assertTrue(stop.endswith("s"))
        self.assertGreater(int(stop[:-1]), drain_seconds(shipped_config()))
        self.assertGreater(int(stop[:-1]), drain_seconds({}))  # the default drain_ms
        for name, want in (("DynamicUser", "yes"), ("ProtectSystem", "strict"),
                           ("StateDirectory", "ficus"), ("LogsDirectory", "ficus"),
                           ("NoNewPrivileges", "yes"), ("CapabilityBoundingSet", "")):
            self.assertEqual(k.get(name), want, name)
        self.assertIn("/etc/ficus/ficus.json", k["ExecStart"])


if __name__ == "__main__":
    unittest.main()
