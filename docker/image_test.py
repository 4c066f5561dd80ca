#!/usr/bin/env python3
"""make image-test: the built image, run without a container runtime (buildah run, chroot
isolation, host network).

1. The image's configuration: a numeric non-root user, the proxy and admin ports exposed,
   STOPSIGNAL SIGTERM, a HEALTHCHECK, ficus as the entrypoint.
2. `ficus check` on the shipped /etc/ficus/ficus.json, inside the image, as its user.
3. ficus started inside the image on loopback ports with two backends running outside it
   (Python on this host): a request is proxied and compared, /metrics is scraped, a PATCH
   through the admin API is persisted in /var/lib/ficus (writable by the image's user), the
   divergence log is written in /var/log/ficus, and the image's HEALTHCHECK script passes.
4. SIGTERM to that ficus: it exits 0 (the drain ran), and then the HEALTHCHECK fails.

Environment: IMAGE (default localhost/ficus:latest). Prints each step with its time; exits 1
on the first failure. Python standard library only (the integration harness's backends).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from harness import Backend, free_port, wait_until  # noqa: E402

IMAGE = os.environ.get("IMAGE", "localhost/ficus:latest")
TOKEN = "image-test-token"
START = time.monotonic()


def step(msg):
    print("[%6.1fs] %s" % (time.monotonic() - START, msg), flush=True)


def fail(msg):
    print("image-test: FAILED: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def buildah(*args, timeout=120, check_rc=True):
    p = subprocess.run(["buildah"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if check_rc and p.returncode != 0:
        fail("buildah %s exited %d:\n%s%s" % (" ".join(args), p.returncode, p.stdout.decode(),
                                              p.stderr.decode()))
    return p


def run_in(ctr, *cmd, env=None, timeout=60):
    """Runs cmd inside the container (chroot isolation, host network); returns the process."""
    args = ["run", "--isolation=chroot", "--network=host"]
    for k, v in (env or {}).items():
        args += ["--env", "%s=%s" % (k, v)]
    return buildah(*(args + [ctr, "--"] + list(cmd)), timeout=timeout, check_rc=False)


def descendants(pid):
    """Every process below pid (from /proc: no tool needed)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        children.setdefault(ppid, []).append((int(d), comm))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def http(method, url, body=None, token=None, timeout=5):
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def json_backend(side):
    """200 application/json; new differs from legacy in "v"."""
    def handler(req, out):
        body = json.dumps({"path": req.target, "v": 2 if side == "new" else 1}).encode()
        out.respond(200, [("Content-Type", "application/json")], body)
    return handler


def inspect_image():
    info = json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)
    cfg = (info.get("Docker") or {}).get("config") or {}
    user = cfg.get("User", "")
    check(user.split(":")[0].isdigit() and int(user.split(":")[0]) > 0,
          "the image's user is %r, not a numeric non-root user" % user)
    check({"8080/tcp", "9901/tcp"} <= set(cfg.get("ExposedPorts") or {}),
          "exposed ports %r" % cfg.get("ExposedPorts"))
    check(cfg.get("StopSignal") == "SIGTERM", "StopSignal %r" % cfg.get("StopSignal"))
    hc = cfg.get("Healthcheck") or {}
    check(hc.get("Test") == ["CMD", "/usr/libexec/ficus/healthcheck"], "Healthcheck %r" % hc)
    check(cfg.get("Entrypoint") == ["/usr/bin/ficus"], "Entrypoint %r" % cfg.get("Entrypoint"))
    size = buildah("images", "--noheading", "--format", "{{.Size}}", IMAGE).stdout.decode()
    step("image %s (%s): user %s, ports %s, StopSignal SIGTERM, HEALTHCHECK %s" % (
        IMAGE, size.strip(), user, ",".join(sorted(cfg["ExposedPorts"])), hc["Test"][1]))
    return user


def main():
    if shutil.which("buildah") is None:
        fail("buildah is missing (make image-deps installs it)")
    user = inspect_image()
    ctr = "ficus-image-test-%d" % os.getpid()
    buildah("from", "--pull-never", "--name", ctr, IMAGE)
    legacy = new = proc = None
    try:
        p = run_in(ctr, "id", "-u")
        check(p.returncode == 0 and p.stdout.decode().strip() == user.split(":")[0],
              "buildah run is not the image's user: %r" % p.stdout)
        p = run_in(ctr, "/usr/bin/ficus", "check", "-c", "/etc/ficus/ficus.json")
        check(p.returncode == 0 and p.stdout.decode().strip() == "ok",
              "ficus check on the shipped config: exit %d\n%s%s" % (
                  p.returncode, p.stdout.decode(), p.stderr.decode()))
        step("ficus check -c /etc/ficus/ficus.json inside the image: ok")

        legacy = Backend(json_backend("legacy"), name="legacy")
        new = Backend(json_backend("new"), name="new")
        port, admin = free_port(), free_port()
        cfg = {
            "listen": "127.0.0.1:%d" % port,
            "workers": 1,
            "admin": {"address": "127.0.0.1:%d" % admin, "token_env": "FICUS_ADMIN_TOKEN"},
            "state_file": "/var/lib/ficus/state.json",
            "backends": {"legacy": {"url": legacy.url}, "new": {"url": new.url}},
            "routes": [{"name": "all", "new_percent": 0, "shadow": {}}],
            "divergence_log": {"path": "/var/log/ficus/divergence.ndjson"},
            "timeouts": {"drain_ms": 3000},
        }
        tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "%s.json" % ctr)
        with open(tmp, "w") as f:
            json.dump(cfg, f)
        try:
            buildah("copy", "--chmod", "0644", ctr, tmp, "/etc/ficus/image-test.json")
        finally:
            os.unlink(tmp)
        log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "%s.log" % ctr), "w+b")
        proc = subprocess.Popen(
            ["buildah", "run", "--isolation=chroot", "--network=host", "--env",
             "FICUS_ADMIN_TOKEN=" + TOKEN, ctr, "--", "/usr/bin/ficus", "run", "-c",
             "/etc/ficus/image-test.json"], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

        def ready():
            if proc.poll() is not None:
                log.seek(0)
                fail("ficus exited %d at start:\n%s" % (proc.returncode, log.read().decode()))
            try:
                return http("GET", "http://127.0.0.1:%d/readyz" % admin, timeout=1)[0] == 200
            except OSError:
                return False
        wait_until(ready, 30, 0.1, what="/readyz of ficus in the image")
        step("ficus runs in the image on 127.0.0.1:%d (admin %d), ready" % (port, admin))

        status, body = http("GET", "http://127.0.0.1:%d/hello" % port)
        check(status == 200 and json.loads(body)["v"] == 1, "proxied %d %r" % (status, body))
        wait_until(lambda: len(new.requests) >= 1, 10, what="the shadow request at new")
        step("GET /hello proxied to legacy (200) and shadowed to new")

        def metrics():
            return http("GET", "http://127.0.0.1:%d/metrics" % admin)[1].decode()
        wait_until(lambda: 'ficus_comparisons_total{route="all"} 1' in metrics(), 10,
                   what="the comparison in /metrics")
        text = metrics()
        check('ficus_requests_total{route="all",backend="legacy",code="2xx"} 1' in text,
              "requests counter:\n" + text[:2000])
        check('ficus_divergences_total{route="all",kind="json"} 1' in text,
              "divergence counter:\n" + text[:2000])
        step("/metrics scraped: 1 request, 1 comparison, 1 json divergence")

        status, body = http("PATCH", "http://127.0.0.1:%d/api/v1/routes/all" % admin,
                            b'{"new_percent": 5}', token=TOKEN)
        check(status == 200 and json.loads(body).get("persisted") is True,
              "PATCH answered %d %r" % (status, body))
        p = run_in(ctr, "cat", "/var/lib/ficus/state.json")
        check(p.returncode == 0 and b'"all"' in p.stdout, "state file: %r" % p.stdout)
        p = run_in(ctr, "cat", "/var/log/ficus/divergence.ndjson")
        check(p.returncode == 0 and b'"route":"all"' in p.stdout, "divergence log: %r" % p.stdout)
        step("PATCH persisted in /var/lib/ficus/state.json; divergence in /var/log/ficus")

        hc_env = {"FICUS_HEALTH_ADDR": "127.0.0.1:%d" % admin}
        p = run_in(ctr, "/usr/libexec/ficus/healthcheck", env=hc_env)
        check(p.returncode == 0, "HEALTHCHECK on a running ficus exited %d" % p.returncode)
        step("HEALTHCHECK script: healthy")

        pids = [pid for pid, comm in descendants(proc.pid) if comm == "ficus"]
        check(len(pids) == 1, "ficus processes under buildah run: %r" % descendants(proc.pid))
        t0 = time.monotonic()
        os.kill(pids[0], signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            fail("ficus did not exit within 30 s of SIGTERM")
        log.seek(0)
        out = log.read().decode("utf-8", "replace")
        log.close()
        check(rc == 0, "ficus exited %d after SIGTERM:\n%s" % (rc, out[-3000:]))
        check("level=error" not in out, "error lines in ficus's log:\n" + out[-3000:])
        step("SIGTERM: ficus exited 0 after %.2f s" % (time.monotonic() - t0))
        proc = None

        p = run_in(ctr, "/usr/libexec/ficus/healthcheck", env=hc_env)
        check(p.returncode == 1, "HEALTHCHECK with ficus stopped exited %d" % p.returncode)
        step("HEALTHCHECK script: unhealthy once ficus is gone")
    finally:
        if proc is not None and proc.poll() is None:
            for pid, comm in descendants(proc.pid):
                if comm == "ficus":
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait(10)
        for b in (legacy, new):
            if b is not None:
                b.close()
        buildah("rm", ctr, check_rc=False)
        logpath = os.path.join(os.environ.get("TMPDIR", "/tmp"), "%s.log" % ctr)
        if os.path.exists(logpath):
            os.unlink(logpath)
    step("image-test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
