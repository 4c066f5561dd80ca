"""Helpers for tests that drive ficus's admin API, route split and state file.

Builds on harness.py (Backend, Ficus, FicusTestCase) without changing it:

  AdminFicus        a Ficus with its own admin port, an admin token in its
                    environment (or none), a state file, and restart()
  AdminClient       a keep-alive http.client connection to the admin API, with
                    JSON, token and /metrics helpers
  named_backend     a handler that answers 200 with the backend's name as body
  KeepAlive         one persistent http.client connection to the proxy
  run_users         sends requests for many sticky users over a few keep-alive
                    connections in threads, returns who landed where
  LoadGenerator     client threads sending requests continuously until stopped,
                    counting every failure

Python standard library only. Every wait has a deadline.
"""

import http.client
import json
import os
import re
import socket
import threading
import time

from harness import Ficus, deep_merge, free_port, sanitized, wait_until

TOKEN_ENV = "FICUS_IT_ADMIN_TOKEN"


def slow(seconds):
    """A time limit, stretched for a sanitizer build."""
    return seconds * (3 if sanitized() else 1)


# ---------------------------------------------------------------------------------------
# backends


def named_backend(req, out):
    """200 text/plain with the backend's name as the body ("legacy" or "new")."""
    body = out.backend.name.encode()
    if req.method == "HEAD":
        out.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                 % len(body))
    else:
        out.respond(200, [("Content-Type", "text/plain"), ("X-Backend", out.backend.name)], body)
    return None


def status_backend(status, body=b"down"):
    """Answers every request with status and a small body (e.g. 503)."""
    def handler(req, out):
        reason = "Service Unavailable" if status == 503 else None
        if req.method == "HEAD":
            out.send(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n" % (
                status, (reason or "X").encode(), len(body)))
        else:
            out.respond(status, [("Content-Type", "text/plain")], body, reason=reason)
        return None
    return handler


def refused_url():
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    return "http://127.0.0.1:%d" % free_port()


# ---------------------------------------------------------------------------------------
# ficus with an admin API


class AdminFicus(Ficus):
    """A Ficus whose admin API listens on a free port of its own.

    token: the admin token put into the process environment under TOKEN_ENV (None:
    the variable is absent). token_env: whether the configuration names TOKEN_ENV.
    state_file: True for <workdir>/state.json, a path, or None for none."""

    def __init__(self, legacy=None, new=None, config=None, token="s3cret-token",
                 token_env=True, state_file=True, **kw):
        super().__init__(legacy, new, config=None, **kw)
        self.admin_port = free_port()
        self.token = token
        admin = {"address": "127.0.0.1:%d" % self.admin_port}
        if token_env:
            admin["token_env"] = TOKEN_ENV
        self.config["admin"] = admin
        if state_file is True:
            state_file = os.path.join(self.workdir, "state.json")
        self.state_path = state_file
        if state_file:
            self.config["state_file"] = state_file
        if config:
            deep_merge(self.config, config)

    def env(self):
        env = super().env()
        env.pop(TOKEN_ENV, None)
        if self.token is not None:
            env[TOKEN_ENV] = self.token
        return env

    def start(self, timeout=None):
        super().start(timeout)
        self.wait_admin(timeout)
        return self

    def wait_admin(self, timeout=None):
        """Polls GET /healthz on the admin port until it answers 200."""
        timeout = timeout or slow(10)

        def up():
            if not self.alive():
                raise AssertionError("ficus exited while waiting for the admin API:\n" +
                                     self.stderr()[-4000:])
            try:
                with self.admin() as a:
                    return a.get("/healthz")[0] == 200
            except OSError:
                return False
        wait_until(up, timeout, interval=0.02, what="admin API on port %d" % self.admin_port)

    def restart(self, timeout=None):
        """Stops with SIGTERM (checked: exit 0, clean logs) and starts again with the
        configuration file as it is on disk (not rewritten from .config), the same
        ports and the same state file."""
        self.stop()
        self.exit_code = None
        self.proc = None
        with open(self.config_path) as f:
            self._keep_text = f.read()
        try:
            return self.start(timeout)
        finally:
            self._keep_text = None

    _keep_text = None

    def write_config(self, cfg=None, text=None):
        if cfg is None and text is None and self._keep_text is not None:
            text = self._keep_text
        super().write_config(cfg, text)

    def admin(self, token="default"):
        """An AdminClient; token "default" means this process's token."""
        return AdminClient(self.admin_port, self.token if token == "default" else token)

    def read_state(self):
        with open(self.state_path) as f:
            return json.load(f)


class AdminClient:
    """A keep-alive client for the admin API. Mutating helpers send the bearer token."""

    def __init__(self, port, token=None, timeout=None):
        self.port = port
        self.token = token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout or slow(10))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.conn.close()

    def request(self, method, path, body=None, headers=None, token="default"):
        """Returns (status, headers dict with lower-case names, body bytes)."""
        h = dict(headers or {})
        tok = self.token if token == "default" else token
        if tok is not None and "Authorization" not in h:
            h["Authorization"] = "Bearer " + tok
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def get(self, path):
        return self.request("GET", path, token=None)

    def get_json(self, path):
        status, _, body = self.get(path)
        return status, json.loads(body)

    def json_call(self, method, path, body=None, token="default", headers=None):
        """A call whose answer must be JSON: returns (status, parsed body)."""
        status, hdrs, data = self.request(method, path, body, headers, token)
        try:
            doc = json.loads(data)
        except ValueError:
            raise AssertionError("%s %s answered %d with non-JSON %r" % (
                method, path, status, data[:200]))
        return status, doc

    def route(self, name):
        status, routes = self.get_json("/api/v1/routes")
        if status != 200:
            raise AssertionError("GET /api/v1/routes answered %d" % status)
        for r in routes["routes"]:
            if r["name"] == name:
                return r
        return None

    def patch(self, name, token="default", **fields):
        return self.json_call("PATCH", "/api/v1/routes/" + name, fields, token)

    def rollback(self, name, token="default"):
        return self.json_call("POST", "/api/v1/routes/%s/rollback" % name, None, token)

    def reload(self, token="default"):
        return self.json_call("POST", "/api/v1/reload", None, token)

    def metrics(self):
        status, _, body = self.get("/metrics")
        if status != 200:
            raise AssertionError("GET /metrics answered %d" % status)
        return body.decode()


# Label values may hold any character ("GET /posts/{id}"): a quoted value is read whole.
_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)$')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(text, name, **labels):
    """The value of the sample of metric name whose labels include labels, or None.
    Fails when several samples match (the test must name enough labels)."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m is None or m.group(1) != name:
            continue
        have = dict(_LABEL_RE.findall(m.group(3) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            found.append(float(m.group(4)))
    if len(found) > 1:
        raise AssertionError("%d samples of %s match %r" % (len(found), name, labels))
    return found[0] if found else None


# ---------------------------------------------------------------------------------------
# proxy clients


class KeepAlive:
    """One persistent HTTP/1.1 connection to the proxy. A connection the proxy closed
    is an error here, not something to reconnect over silently."""

    def __init__(self, port, timeout=None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout or slow(10))
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.requests = 0

    def request(self, method="GET", path="/", headers=None, body=None):
        """Returns (status, headers dict with lower-case names, body bytes)."""
        if self.conn.sock is None:
            raise ConnectionError("the proxy closed the keep-alive connection after %d "
                                  "requests" % self.requests)
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        data = r.read()
        self.requests += 1
        if r.will_close:
            self.conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def close(self):
        self.conn.close()


def run_users(port, users, rounds=1, threads=8, header="x-user-id", path="/",
              extra_headers=None, timeout=None):
    """Sends rounds requests for every user (one user's requests one after the other,
    on one keep-alive connection). Returns {user: [body, ...]} in request order.
    Any status other than 200 or any connection error fails."""
    timeout = timeout or slow(60)
    deadline = time.monotonic() + timeout
    results = {}
    errors = []
    lock = threading.Lock()
    parts = [users[i::threads] for i in range(threads)]

    def worker(mine):
        try:
            ka = KeepAlive(port)
            try:
                for u in mine:
                    seen = []
                    for _ in range(rounds):
                        if time.monotonic() > deadline:
                            raise TimeoutError("run_users passed its deadline")
                        h = {header: u}
                        h.update(extra_headers or {})
                        status, _, body = ka.request("GET", path, h)
                        if status != 200:
                            raise AssertionError("user %s: status %d body %r" % (u, status, body))
                        seen.append(body.decode())
                    with lock:
                        results[u] = seen
            finally:
                ka.close()
        except Exception as e:  # reported to the test below
            with lock:
                errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(p,), daemon=True) for p in parts if p]
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic() + 5))
    if any(t.is_alive() for t in ts):
        raise AssertionError("run_users: client threads still running after %.0fs" % timeout)
    if errors:
        raise AssertionError("run_users: %d client threads failed: %s" % (len(errors), errors[:5]))
    return results


class LoadGenerator:
    """Client threads sending GET path continuously (keep-alive, reconnecting only
    when the proxy closes a connection after a complete response) until stop().
    Every non-200, wrong body or connection error is recorded in failures."""

    def __init__(self, port, threads=4, path="/", expect=("legacy", "new")):
        self.port = port
        self.path = path
        self.expect = set(expect)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, i):
        ka = None
        n = 0
        while not self.stopping.is_set():
            try:
                if ka is None or ka.conn.sock is None:
                    if ka is not None:
                        ka.close()
                    ka = KeepAlive(self.port)
                n += 1
                status, _, body = ka.request("GET", self.path, {"x-user-id": "load-%d-%d" % (i, n)})
                if status != 200 or body.decode() not in self.expect:
                    with self.lock:
                        self.failures.append("status %d body %r" % (status, body[:100]))
                else:
                    with self.lock:
                        self.ok += 1
            except Exception as e:
                with self.lock:
                    self.failures.append(repr(e))
                if ka is not None:
                    ka.close()
                ka = None
        if ka is not None:
            ka.close()

    def count(self):
        with self.lock:
            return self.ok

    def wait_more(self, n, timeout=None):
        """Waits until n more requests succeeded (proves the load is flowing)."""
        start = self.count()
        wait_until(lambda: self.count() >= start + n or self.failures, timeout or slow(10),
                   what="%d more load requests (have %d)" % (n, self.count() - start))

    def stop(self, timeout=None):
        self.stopping.set()
        deadline = time.monotonic() + (timeout or slow(15))
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            raise AssertionError("load threads did not stop")
