"""Helpers for test_ship.py: the shipped deployment files and the tools that check them.

  repo_path(*parts)       a path in the source tree
  load_yaml / load_yaml_all / load_json   parsed shipped files (PyYAML: Debian's python3-yaml)
  shipped_config()        docker/ficus.json, parsed
  configmap_config()      the ficus.json inside deploy/kubernetes/configmap.yaml, parsed
  metric_names(expr)      the metric names a PromQL expression reads (functions, keywords,
                          labels, Grafana variables and recorded names told apart)
  DemoBackend             docker/demo/demo.py as a real backend process on a free port
  require_tool(test, t)   skips the test, with the reason, when a command is missing

Python standard library only, apart from PyYAML for the YAML files.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

from harness import free_port, source_dir, wait_until

try:
    import yaml
except ImportError:  # reported as a skip by the tests that need it
    yaml = None


def repo_path(*parts):
    return os.path.join(source_dir(), *parts)


def require_tool(test, tool, package):
    """The path of tool, or a skip naming the Debian package that brings it."""
    path = shutil.which(tool)
    if path is None:
        test.skipTest("%s not found (Debian package %s; `make deps` installs it)" % (tool, package))
    return path


def require_yaml(test):
    if yaml is None:
        test.skipTest("PyYAML not found (Debian package python3-yaml; `make deps` installs it)")


def load_json(*parts):
    with open(repo_path(*parts)) as f:
        return json.load(f)


def load_yaml(*parts):
    with open(repo_path(*parts)) as f:
        return yaml.safe_load(f)


def load_yaml_all(*parts):
    with open(repo_path(*parts)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def shipped_config():
    return load_json("docker", "ficus.json")


def configmap_config():
    docs = load_yaml_all("deploy", "kubernetes", "configmap.yaml")
    cms = [d for d in docs if d.get("kind") == "ConfigMap"]
    if len(cms) != 1:
        raise AssertionError("configmap.yaml holds %d ConfigMaps, not 1" % len(cms))
    return json.loads(cms[0]["data"]["ficus.json"])


def listen_port(cfg):
    listen = cfg["listen"]
    addr = listen if isinstance(listen, str) else listen[0]["address"]
    return int(addr.rsplit(":", 1)[1])


def admin_port(cfg):
    return int(cfg.get("admin", {}).get("address", "127.0.0.1:9901").rsplit(":", 1)[1])


def drain_seconds(cfg):
    return cfg.get("timeouts", {}).get("drain_ms", 10000) / 1000.0


# ---------------------------------------------------------------------------------------
# PromQL

# PromQL's functions and aggregation operators (Prometheus 2.x). A word followed by "(" that is
# not here is an error: either a typo or a function this list must learn.
PROMQL_FUNCTIONS = set("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month
deg delta deriv exp floor histogram_count histogram_fraction histogram_quantile histogram_sum
holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10 log2
mad_over_time max_over_time min_over_time minute month pi predict_linear present_over_time
quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc sqrt stddev_over_time
stdvar_over_time sum_over_time tan tanh time timestamp vector year
sum min max avg group stddev stdvar count count_values bottomk topk quantile
label_values
""".split())

# Words that are operators or modifiers, not metric names.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan", "atan2"}

# Clauses whose parenthesised list holds label names, not expressions.
_LABEL_LIST_RE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_WORD_RE = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr):
    """The metric names (and recorded-rule names) read by the PromQL expression expr, which may
    hold Grafana variables ($instance, ${x}, $__rate_interval). Raises ValueError on a word
    used as a function that PromQL does not have."""
    s = _STRING_RE.sub('""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries
    s = _LABEL_LIST_RE.sub(" ", s)
    s = re.sub(r"\$\{[^}]*\}|\$[A-Za-z0-9_]+", " ", s)  # Grafana variables
    names = set()
    for m in _WORD_RE.finditer(s):
        word = m.group(1)
        if s[m.end():].lstrip().startswith("("):
            if word not in PROMQL_FUNCTIONS:
                raise ValueError("%r is used as a function but PromQL has none of that name in %r"
                                 % (word, expr))
            continue
        if word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def rule_groups():
    """(file, rule) for every rule of the shipped Prometheus rule files."""
    out = []
    for name in ("ficus.rules.yml", "ficus.alerts.yml"):
        doc = load_yaml("docker", "prometheus", "rules", name)
        for g in doc["groups"]:
            for r in g["rules"]:
                out.append((name, r))
    return out


def dashboard_exprs(dash):
    """(where, expr) of every PromQL expression of a Grafana dashboard: panel targets (rows
    included), annotation queries and query variables."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(("panel %r" % p.get("title"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append(("annotation %r" % a.get("name"), a["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if v.get("type") == "query":
            q = q["query"] if isinstance(q, dict) else q
            # label_values(SELECTOR, LABEL): the selector is PromQL, the label is a label.
            m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", q)
            out.append(("variable %r" % v["name"], m.group(1) if m else q))
    return out


# ---------------------------------------------------------------------------------------
# demo backends


class DemoBackend:
    """docker/demo/demo.py backend --role ROLE on 127.0.0.1:free port, as a child process.
    env: extra environment (DEMO_DIVERGE, DEMO_ERRORS)."""

    def __init__(self, role, env=None):
        self.role = role
        self.port = free_port()
        e = dict(os.environ)
        e.update(env or {})
        # A file, not a pipe: a pipe nobody reads would stall the backend once full.
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, repo_path("docker", "demo", "demo.py"), "backend", "--role", role,
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=self.stderr, stdin=subprocess.DEVNULL, env=e)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError("demo backend %s exited with %d: %s" % (
                    role, self.proc.returncode, self.errors()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_until(listening, 10, what="demo backend %s on port %d" % (role, self.port))

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def errors(self):
        """What the backend wrote to stderr so far."""
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def close(self):
        """SIGTERM (the script exits 0 on it), with a deadline; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.stderr.close()
        return self.proc.returncode
