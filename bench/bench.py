#!/usr/bin/env python3
"""ficus benchmark harness: ficus side by side with nginx and HAProxy.

Run it through bench/run (which checks the Debian packages and raises the file
descriptor limit). Python 3 standard library only.

What it does, per scenario: starts a fast backend (nginx, one worker, a small
JSON body, access_log off), then ficus, nginx and HAProxy as proxies in front of
it, each with one worker, each in its own temporary directory, every one of them
on 127.0.0.1 and a port picked free at run time. It then runs wrk against the
targets in alternation (A B C A B C ...) for BENCH_ROUNDS rounds of
BENCH_SECONDS seconds, and prints the median requests/s, p50 and p99 per target
with the ratio to nginx. See bench/README.md for the scenarios and the knobs.

Safety: every process started here runs in its own session and is stopped
(SIGTERM, then SIGKILL after a deadline) at exit, on an exception and on
SIGINT/SIGTERM/SIGHUP; every wait has a deadline. Nothing binds anything but
127.0.0.1; nginx runs with -p/-e and explicit pid, log and temp paths, so it
never touches /etc/nginx or /var.

Internal modes (used by the harness itself, not meant to be called by hand):
  bench.py _delay-backend PORT DELAY_MS    HTTP/1.1 keep-alive server answering after DELAY_MS
  bench.py _idle-client PORT N PATH SECS   open N keep-alive connections, one request each,
                                           print a JSON line, hold them until stdin closes
"""

import asyncio
import atexit
import base64
import datetime
import http.client
import json
import os
import platform
import re
import resource
import select
import selectors
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# ~100 B JSON bodies. "new" differs from "legacy" slightly: key order (ignored by a
# structural diff), /tags order (declared unordered), /meta/generated_at (declared
# ignored) and /price (a real divergence, so each comparison is logged).
SMALL_LEGACY = ('{"id":42,"name":"widget","price":9.99,"tags":["a","b"],'
                '"meta":{"generated_at":"2026-01-01T00:00:00Z"}}')
SMALL_NEW = ('{"name":"widget","id":42,"price":10.49,"tags":["b","a"],'
             '"meta":{"generated_at":"2026-01-01T00:00:07Z"}}')

SCENARIOS = [
    # (number, name, title)
    ("1", "plain", "Plain forwarding, small JSON (~100 B)"),
    ("2", "sizes", "Response size: 4 KiB and 256 KiB"),
    ("3", "shadow", "100 % shadow with JSON diff (nginx: mirror)"),
    ("4", "shadow-delay", "Shadow backend delayed (client latency with and without shadow)"),
    ("5", "idle", "Idle keep-alive connections: memory per connection"),
    ("6", "https", "HTTPS (TLS on the client side)"),
    ("7", "workers2", "Plain forwarding with 2 workers per proxy"),
    ("8", "fleet", "Plain forwarding with the live state in etcd, changed 10 times a second"),
    ("9", "pool2", "One backend of two servers, round robin"),
    ("10", "shadow-big", "100 % shadow of 256 KiB JSON documents (nginx: mirror)"),
    ("11", "shadow-w2", "100 % shadow with JSON diff, 2 workers per proxy"),
    ("12", "routes1000", "1,000 routes that do not match before the one that does"),
    ("13", "syscalls", "System calls per request in plain forwarding"),
    ("14", "idle-tls", "Idle connections, plain and TLS: memory per connection (bench/idle_memory.py)"),
]

PROXIES = ("ficus", "nginx", "haproxy")


# ---------------------------------------------------------------------------------------
# settings


def env_int(name, default, minimum=0):
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        die("%s: must be an integer, got %r" % (name, raw))
    if v < minimum:
        die("%s: must be at least %d, got %d" % (name, minimum, v))
    return v


def die(msg, code=2):
    print("bench: " + msg, file=sys.stderr)
    sys.exit(code)


class Settings:
    def __init__(self):
        self.rounds = env_int("BENCH_ROUNDS", 3, 1)
        self.seconds = env_int("BENCH_SECONDS", 10, 1)
        self.threads = env_int("BENCH_THREADS", 1, 1)
        self.connections = env_int("BENCH_CONNECTIONS", 50, 1)
        self.warmup = env_int("BENCH_WARMUP", 1, 0)
        self.idle_conns = env_int("BENCH_IDLE_CONNS", 10000, 1)
        self.delay_ms = env_int("BENCH_DELAY_MS", 200, 0)
        self.delay_connections = env_int("BENCH_DELAY_CONNECTIONS", self.connections, 1)
        self.backend_workers = env_int("BENCH_BACKEND_WORKERS", 1, 1)
        self.w2_threads = env_int("BENCH_W2_THREADS", 2, 1)
        self.keep_tmp = os.environ.get("BENCH_KEEP_TMP", "") not in ("", "0", "no", "false")
        self.idle_tls_conns = env_int("BENCH_IDLE_TLS_CONNS", 1000, 1)
        self.shadow_budget = env_int("BENCH_SHADOW_BUDGET_MIB", 64, 1)
        raw_svg = os.environ.get("BENCH_DOC_SVG", "").strip().lower()
        # docs/bench.svg: by default only from a run of every scenario.
        self.doc_svg = raw_svg in ("1", "yes", "true") or (
            raw_svg == "" and not os.environ.get("BENCH_SCENARIOS", "").strip())
        self.out_dir = Path(os.environ.get("BENCH_OUT_DIR") or (HERE / "out"))
        fb = os.environ.get("FICUS_BIN") or str(ROOT / "build" / "ficus")
        self.ficus_bin = str(Path(fb).resolve()) if os.path.isabs(fb) or os.path.exists(fb) \
            else str((ROOT / fb).resolve())
        # FICUS_BASE_BIN: another ficus binary (an older build), run beside FICUS_BIN as the
        # target "ficus (base)" in every scenario that runs all proxies, in the same alternation.
        base = os.environ.get("FICUS_BASE_BIN", "").strip()
        self.base_bin = str(Path(base).resolve()) if base else None
        if self.base_bin and not os.access(self.base_bin, os.X_OK):
            die("FICUS_BASE_BIN: not an executable: %s" % self.base_bin)
        if self.threads > self.connections:
            die("BENCH_THREADS (%d) must not exceed BENCH_CONNECTIONS (%d)"
                % (self.threads, self.connections))
        self.scenarios = self._scenarios(os.environ.get("BENCH_SCENARIOS", ""))
        raw_t = os.environ.get("BENCH_TARGETS", "").strip()
        self.targets = [t.strip() for t in raw_t.split(",") if t.strip()] if raw_t else list(PROXIES)
        for t in self.targets:
            if t not in PROXIES:
                die("BENCH_TARGETS: unknown target %r (use %s)" % (t, ",".join(PROXIES)))

    @staticmethod
    def _scenarios(raw):
        if not raw.strip():
            return [s[0] for s in SCENARIOS]
        chosen = []
        for item in re.split(r"[,\s]+", raw.strip()):
            if not item:
                continue
            hit = [s[0] for s in SCENARIOS if item in (s[0], s[1])]
            if not hit:
                die("BENCH_SCENARIOS: unknown scenario %r (use numbers 1-%d or names: %s)"
                    % (item, len(SCENARIOS), ", ".join(s[1] for s in SCENARIOS)))
            if hit[0] not in chosen:
                chosen.append(hit[0])
        return sorted(chosen, key=int)


# ---------------------------------------------------------------------------------------
# processes


def proc_children(pid):
    """Direct children of pid (all its threads), from /proc."""
    kids = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return kids
    for t in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def proc_tree(pid):
    out = [pid]
    i = 0
    while i < len(out):
        for k in proc_children(out[i]):
            if k not in out:
                out.append(k)
        i += 1
    return out


def rss_kib(pid):
    """VmRSS of pid and all its descendants, in KiB."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of pid and all its descendants, in seconds."""
    ticks = 0
    for p in proc_tree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLK_TCK


def pgid_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


class Proc:
    def __init__(self, name, popen, log):
        self.name = name
        self.popen = popen
        self.log = log
        self.stopped = False

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def exit_desc(self):
        rc = self.popen.poll()
        if rc is None:
            return "running"
        if rc < 0:
            try:
                return "killed by signal %s" % signal.Signals(-rc).name
            except ValueError:
                return "killed by signal %d" % -rc
        return "exited with code %d" % rc

    def log_tail(self, lines=15):
        try:
            with open(self.log, "rb") as f:
                data = f.read()[-8192:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])


class StartError(Exception):
    pass


class Harness:
    """Temp dir, free ports, and every process we start (stopped at exit)."""

    def __init__(self, settings):
        self.s = settings
        self.tmp = Path(tempfile.mkdtemp(prefix="ficus-bench-"))
        self.procs = []
        self.ports = set()
        self.seq = 0
        self.cleaned = False
        self.failed = False

    # ports ---------------------------------------------------------------------------
    def port(self):
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", 0))
                p = s.getsockname()[1]
            finally:
                s.close()
            if p not in self.ports:
                self.ports.add(p)
                return p
        raise StartError("no free port found")

    def dir(self, name):
        self.seq += 1
        d = self.tmp / ("%02d-%s" % (self.seq, re.sub(r"[^A-Za-z0-9_.-]", "_", name)))
        d.mkdir(parents=True)
        return d

    # processes -----------------------------------------------------------------------
    def spawn(self, name, argv, cwd=None, log=None, stdin=subprocess.DEVNULL, stdout=None):
        log = Path(log or (self.tmp / ("%s.log" % re.sub(r"[^A-Za-z0-9_.-]", "_", name))))
        with open(log, "ab") as lf:
            popen = subprocess.Popen(argv, cwd=cwd, stdin=stdin,
                                     stdout=stdout if stdout is not None else lf,
                                     stderr=lf, start_new_session=True)
        p = Proc(name, popen, log)
        self.procs.append(p)
        return p

    def stop(self, p, grace=5.0):
        if p.stopped:
            return
        p.stopped = True
        members = [x for x in proc_tree(p.pid) if pgid_of(x) == p.pid]
        if p.alive():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            p.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Members of its group that outlived the leader (e.g. nginx workers).
        for m in members:
            if m != p.pid and pgid_of(m) == p.pid:
                try:
                    os.kill(m, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for stream in (p.popen.stdin, p.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)

    def cleanup(self):
        if self.cleaned:
            return
        self.cleaned = True
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
            if self.s.keep_tmp or self.failed:
                print("bench: temp files kept in %s" % self.tmp, file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)

    # waiting -------------------------------------------------------------------------
    def wait_http(self, p, port, path="/", timeout=15.0, tls=False):
        """Waits until GET path on port answers (any status), p staying alive."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not p.alive():
                raise StartError("%s %s before answering on port %d; log:\n%s"
                                 % (p.name, p.exit_desc(), port, p.log_tail()))
            try:
                return http_get(port, path, timeout=1.0, tls=tls)
            except (OSError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.05)
        raise StartError("%s did not answer GET %s on port %d within %.0f s (%s); log:\n%s"
                         % (p.name, path, port, timeout, last, p.log_tail()))

    def wait_tcp(self, p, port, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not p.alive():
                raise StartError("%s %s before listening on port %d; log:\n%s"
                                 % (p.name, p.exit_desc(), port, p.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.05)
        raise StartError("%s did not listen on port %d within %.0f s" % (p.name, port, timeout))


def http_get(port, path, timeout=5.0, tls=False, headers=None):
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# tool versions


def tool_version(argv, pattern):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "unknown (%s)" % e
    m = re.search(pattern, r.stdout.decode("utf-8", "replace"))
    if m:
        return m.group(1)
    lines = r.stdout.decode("utf-8", "replace").strip().splitlines()
    return lines[0] if lines else "unknown"


def nginx_build_info():
    try:
        r = subprocess.run(["nginx", "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=10)
        return r.stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return "%.1f GiB" % (int(line.split()[1]) / 1048576)
    except OSError:
        pass
    return "unknown"


# ---------------------------------------------------------------------------------------
# configuration templates


def fill(tpl, **kw):
    for k, v in kw.items():
        tpl = tpl.replace("@%s@" % k.upper(), str(v))
    left = re.findall(r"@[A-Z_]+@", tpl)
    if left:
        raise ValueError("template placeholders left: %s" % left)
    return tpl


NGINX_MAIN = """\
# generated by bench/bench.py
@USER@
worker_processes @WORKERS@;
worker_rlimit_nofile @NOFILE@;
daemon off;
master_process on;
pid @PREFIX@/nginx.pid;
error_log @PREFIX@/error.log warn;
events {
    worker_connections 20000;
}
http {
    access_log off;
    default_type application/json;
@TEMP_PATHS@
    keepalive_timeout 600s;
    keepalive_requests 1000000;
@BODY@
}
"""

NGINX_BACKEND = """\
    sendfile on;
    server {
        listen 127.0.0.1:@LEGACY_PORT@ backlog=4096;
        root @WWW@/legacy;
        location = /small { return 200 '@SMALL_LEGACY@'; }
    }
    server {
        listen 127.0.0.1:@NEW_PORT@ backlog=4096;
        root @WWW@/new;
        location = /small { return 200 '@SMALL_NEW@'; }
    }
"""

NGINX_PROXY = """\
    upstream legacy {
        server 127.0.0.1:@UP_PORT@;
        keepalive 128;
    }
@MIRROR_UPSTREAM@
    server {
        listen 127.0.0.1:@PORT@@LISTEN_SSL@;
@SSL@
        location / {
@MIRROR@
            proxy_pass http://legacy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
@MIRROR_LOCATION@
    }
"""

NGINX_MIRROR_UPSTREAM = """\
    upstream shadow {
        server 127.0.0.1:@SHADOW_PORT@;
        keepalive 128;
    }
"""

NGINX_MIRROR_LOCATION = """\
        location = /mirror {
            internal;
            proxy_pass http://shadow$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
"""

# Scenario 8: two backend servers that answer alike; each says which it is in a header.
NGINX_BACKEND_PAIR = """\
    server {
        listen 127.0.0.1:@PORT_A@ backlog=4096;
        location = /small { add_header X-Server a; return 200 '@SMALL@'; }
    }
    server {
        listen 127.0.0.1:@PORT_B@ backlog=4096;
        location = /small { add_header X-Server b; return 200 '@SMALL@'; }
    }
"""

HAPROXY_CFG = """\
# generated by bench/bench.py
global
    nbthread @THREADS@
    maxconn 20000
    # maxconn 20000 asks for ~40,000 descriptors (client + server side); where the hard
    # limit is lower, run with what there is instead of refusing to start.
    no strict-limits
@GLOBAL_SSL@
defaults
    mode http
    maxconn 20000
    timeout connect 5s
    timeout client 600s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 600s
frontend fe
    bind 127.0.0.1:@PORT@@BIND_SSL@
    default_backend be
backend be
    http-reuse always
    server legacy 127.0.0.1:@UP_PORT@
"""


def json_of_size(size, seed):
    """A JSON document of exactly `size` bytes (size >= 64)."""
    parts = []
    total = 0
    i = 0
    while total < size - 120:
        item = json.dumps({"id": i, "sku": "SKU-%06d" % i, "price": round(1.5 + i * 0.25, 2)},
                          separators=(",", ":"))
        parts.append(item)
        total += len(item) + 1
        i += 1
    head = '{"id":%d,"items":[%s],"pad":"' % (seed, ",".join(parts))
    out = (head + "x" * max(0, size - len(head) - 2) + '"}').encode()
    assert len(out) == size, (len(out), size)
    json.loads(out)
    return out


def big_json(variant, size=262144):
    """About `size` bytes of JSON shaped like a list endpoint (the documents of
    bench/diffbench.c): integer ids, reals, strings, timestamps, nested objects and
    arrays. variant 1 changes a few fields (/items/N/price and /items/N/tags/1 of one
    item in 400), so that legacy and new differ in a handful of places."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "fox", "golf", "hotel", "india",
             "juliet", "kilo", "lima", "mike", "novem", "oscar", "papa", "quebec", "romeo",
             "sierra", "tango"]
    seed = 0x5eed5eed12345678
    parts = []
    total = 0
    i = 0
    while total < size - 400:
        seed ^= (seed >> 12)
        seed ^= (seed << 25) & 0xFFFFFFFFFFFFFFFF
        seed ^= (seed >> 27)
        r = (seed * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF
        changed = variant == 1 and i % 400 == 13
        item = ('{"id":%d,"user_id":%d,"title":"%s %s %s","price":%.2f,"ratio":%.15g,'
                '"active":%s,"created_at":"2026-11-%02dT10:%02d:%02dZ","tags":["%s","%s"],'
                '"dims":{"w":%d,"h":%d,"d":%.3f},"scores":[%d,%d,%d,%d],"note":null}'
                % (i, r % 1000000, words[r % 20], words[(r >> 8) % 20], words[(r >> 16) % 20],
                   (r % 100000) / 100.0 + (1 if changed else 0), (r % 1000003) / 1000003.0,
                   "true" if (r >> 20) & 1 else "false", 1 + (r >> 24) % 28, (r >> 30) % 60,
                   (r >> 36) % 60, words[(r >> 40) % 20],
                   "changed" if changed else words[(r >> 44) % 20], (r >> 48) % 1000,
                   (r >> 52) % 1000, (r % 997) / 7.0, r % 101, (r >> 7) % 101, (r >> 14) % 101,
                   (r >> 21) % 101))
        parts.append(item)
        total += len(item) + 1
        i += 1
    out = ('{"total":%d,"items":[%s]}' % (i, ",".join(parts))).encode()
    json.loads(out)
    return out


# ---------------------------------------------------------------------------------------
# wrk


UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_duration_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", text.strip())
    if not m:
        raise ValueError("bad wrk duration %r" % text)
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise ValueError("no Requests/sec line in wrk output")
    r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "99"):
        m = re.search(r"^\s*%s(?:\.0+)?%%\s+([\d.]+\w+)\s*$" % pct, out, re.M)
        if not m:
            raise ValueError("no %s%% latency line in wrk output" % pct)
        r["p" + pct] = parse_duration_ms(m.group(1))
    errs = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        for k, v in zip(("connect", "read", "write", "timeout"), m.groups()):
            if int(v):
                errs[k] = int(v)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m and int(m.group(1)):
        errs["non-2xx/3xx"] = int(m.group(1))
    r["errors"] = errs
    return r


# ---------------------------------------------------------------------------------------
# targets and measurement


class RssSampler:
    """VmRSS of some targets' processes every 50 ms from start() to stop(): the value
    at start and the largest seen."""

    def __init__(self, targets):
        self.targets = list(targets)
        self.base = {}
        self.peak = {}
        self.stop_ev = threading.Event()
        self.thread = None

    def _sample(self):
        for t in self.targets:
            try:
                v = rss_kib(t.proc.pid)
            except Exception:
                continue
            if v:
                self.peak[t.label] = max(self.peak.get(t.label, 0), v)

    def start(self):
        for t in self.targets:
            self.base[t.label] = rss_kib(t.proc.pid)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_ev.wait(0.05):
            self._sample()

    def stop(self):
        self.stop_ev.set()
        if self.thread is not None:
            self.thread.join(5)

    def result(self, t):
        b = self.base.get(t.label)
        return b, max(self.peak.get(t.label, 0), b or 0)


class Target:
    def __init__(self, label, kind, proc=None, port=None, ref=None, na=None, tls=False):
        self.label = label      # row label
        self.kind = kind        # ficus / nginx / haproxy
        self.proc = proc
        self.port = port
        self.ref = ref          # label of the nginx row this row is compared with
        self.na = na            # reason when not applicable
        self.tls = tls
        self.runs = []
        self.failure = None     # text when the target failed during the run

    def url(self, path):
        return "%s://127.0.0.1:%d%s" % ("https" if self.tls else "http", self.port, path)


class Section:
    def __init__(self, title, intro=""):
        self.title = title
        self.intro = intro
        self.rows = []          # list of Target
        self.notes = []
        self.na = None          # whole section not applicable (text)
        self.custom = None      # (header, rows) for non-wrk tables


class Bench:
    def __init__(self, settings, harness):
        self.s = settings
        self.h = harness
        self.problems = []
        info = nginx_build_info()
        self.nginx_has = lambda mod: ("--without-http_%s_module" % mod) not in info
        self.wrk_seq = 0

    def log(self, msg):
        print(msg, file=sys.stderr, flush=True)

    def problem(self, text):
        self.problems.append(text)
        self.log("bench: PROBLEM: " + text.splitlines()[0])

    # starting things -------------------------------------------------------------------
    def nginx_conf(self, prefix, workers, body):
        user = ""
        if os.geteuid() == 0:
            import grp
            import pwd
            user = "user %s %s;" % (pwd.getpwuid(os.getuid()).pw_name,
                                     grp.getgrgid(os.getgid()).gr_name)
        temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        lines = []
        for t in temp:
            if t in ("client_body", "proxy") or self.nginx_has(t):
                (prefix / "tmp" / t).mkdir(parents=True, exist_ok=True)
                lines.append("    %s_temp_path %s/tmp/%s;" % (t, prefix, t))
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY or nofile > 1048576:
            nofile = 1048576
        return fill(NGINX_MAIN, user=user, workers=workers, prefix=prefix, nofile=nofile,
                    temp_paths="\n".join(lines), body=body)

    def start_nginx(self, name, workers, body, port, probe_path="/small", tls=False):
        prefix = self.h.dir(name)
        conf = prefix / "nginx.conf"
        conf.write_text(self.nginx_conf(prefix, workers, body))
        p = self.h.spawn(name, ["nginx", "-p", str(prefix) + "/", "-e", str(prefix / "error.log"),
                                "-c", str(conf)], cwd=prefix, log=prefix / "stderr.log")
        p.conf = conf
        self.h.wait_http(p, port, probe_path, tls=tls)
        return p

    def start_backend(self, workers=None, new_delay=False):
        """nginx backend: legacy port and new port. With new_delay, "new" is the Python
        delay backend instead of nginx's second server."""
        workers = workers or self.s.backend_workers
        lp, np_ = self.h.port(), self.h.port()
        prefix = self.h.dir("backend-files")
        www = prefix / "www"
        for side in ("legacy", "new"):
            (www / side).mkdir(parents=True)
            for size, fname in ((4096, "4k.json"), (262144, "256k.json")):
                (www / side / fname).write_bytes(json_of_size(size, 1 if side == "legacy" else 2))
            (www / side / "big.json").write_bytes(big_json(0 if side == "legacy" else 1))
        body = fill(NGINX_BACKEND, legacy_port=lp, new_port=np_, www=www,
                    small_legacy=SMALL_LEGACY, small_new=SMALL_NEW)
        p = self.start_nginx("backend-nginx", workers, body, lp)
        self.h.wait_http(p, np_, "/small")
        be = {"proc": p, "legacy": lp, "new": np_, "www": www, "delay": None}
        if new_delay:
            dp = self.h.port()
            d = self.h.spawn("backend-delay", [sys.executable, str(Path(__file__).resolve()),
                                               "_delay-backend", str(dp), str(self.s.delay_ms)])
            self.h.wait_http(d, dp, "/small", timeout=15 + self.s.delay_ms / 1000.0)
            be["delay"] = dp
            be["delay_proc"] = d
        return be

    def ficus_config(self, port, legacy_port, new_port, workers=1, shadow=None, tls=None,
                     admin_port=None, extra_dir=None):
        listen = "127.0.0.1:%d" % port
        if tls:
            listen = [{"address": listen, "tls": {"cert_file": tls[0], "key_file": tls[1]}}]
        route = {"name": "all", "new_percent": 0}
        cfg = {
            "listen": listen,
            "workers": workers,
            "admin": {"address": "127.0.0.1:%d" % admin_port},
            "backends": {
                "legacy": {"url": "http://127.0.0.1:%d" % legacy_port, "max_connections": 1024},
                "new": {"url": "http://127.0.0.1:%d" % new_port, "max_connections": 1024},
            },
            "routes": [route],
            "access_log": {"path": ""},
            "limits": {"max_connections": 20000},
            "timeouts": {"client_idle_ms": 600000, "drain_ms": 1000},
        }
        if shadow is not None:
            route["shadow"] = shadow
            route["diff"] = {
                "ignore_headers": ["date", "server", "etag", "last-modified"],
                "headers": ["content-type"],
                "ignore": ["/meta/generated_at"],
                "unordered": ["/tags"],
                "tolerance": 0.000001,
            }
            cfg["divergence_log"] = {"path": str(extra_dir / "divergence.ndjson"),
                                     "max_bytes": 16777216, "keep": 1, "body_bytes": 4096}
        return cfg

    def start_ficus(self, name, cfg, probe_path="/small", tls=False, binary=None):
        binary = binary or self.s.ficus_bin
        d = self.h.dir(name)
        path = d / "ficus.json"
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        chk = subprocess.run([binary, "check", "-c", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=30, cwd=d)
        if chk.returncode != 0:
            raise StartError("ficus check rejected the generated config %s:\n%s"
                             % (path, chk.stdout.decode("utf-8", "replace")))
        p = self.h.spawn(name, [binary, "-c", str(path)], cwd=d, log=d / "ficus.log")
        p.conf = path
        p.admin_port = cfg["admin"]["address"].rsplit(":", 1)[1]
        port = int((cfg["listen"] if isinstance(cfg["listen"], str)
                    else cfg["listen"][0]["address"]).rsplit(":", 1)[1])
        self.h.wait_http(p, port, probe_path, tls=tls)
        return p

    def start_haproxy(self, name, threads, port, up_port, tls_pem=None):
        d = self.h.dir(name)
        cfg = d / "haproxy.cfg"
        cfg.write_text(fill(HAPROXY_CFG, threads=threads, port=port, up_port=up_port,
                            global_ssl="    ssl-default-bind-options ssl-min-ver TLSv1.2"
                            if tls_pem else "",
                            bind_ssl=(" ssl crt %s alpn http/1.1" % tls_pem) if tls_pem else ""))
        chk = subprocess.run(["haproxy", "-c", "-f", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=30, cwd=d)
        if chk.returncode != 0:
            raise StartError("haproxy -c rejected %s:\n%s" % (cfg, chk.stdout.decode()))
        p = self.h.spawn(name, ["haproxy", "-db", "-f", str(cfg)], cwd=d, log=d / "haproxy.log")
        p.conf = cfg
        self.h.wait_http(p, port, "/small", tls=bool(tls_pem))
        return p

    def proxies(self, be, workers=1, shadow=None, mirror_port=None, tls=None, labels=None,
                want=None, shadow_budget=None):
        """Starts the proxies in front of backend `be`. Returns a list of Target.

        shadow: ficus shadow object (None: no shadow); mirror_port: nginx mirror target
        (None: no mirror); tls: (cert, key, pem) or None."""
        all_proxies = want is None
        want = [k for k in (want or PROXIES) if k in self.s.targets]
        if all_proxies and self.s.base_bin and "ficus" in want:
            want.insert(want.index("ficus") + 1, "ficus-base")
        labels = labels or {}
        out = []
        shadow_port = mirror_port or be["new"]
        for kind in want:
            label = labels.get(kind, kind)
            binary = None
            if kind == "ficus-base":  # the same ficus target, another binary
                kind, binary = "ficus", self.s.base_bin
                label = labels.get("ficus", "ficus") + " (base)"
            port = self.h.port()
            if kind == "ficus":
                extra = self.h.dir(label + "-data")
                cfg = self.ficus_config(port, be["legacy"], shadow_port, workers=workers,
                                        shadow=shadow, tls=tls[:2] if tls else None,
                                        admin_port=self.h.port(), extra_dir=extra)
                if shadow_budget:
                    cfg["limits"]["shadow_memory_bytes"] = shadow_budget
                p = self.start_ficus(label, cfg, tls=bool(tls), binary=binary)
            elif kind == "nginx":
                ssl_lines = ""
                if tls:
                    ssl_lines = ("        ssl_certificate %s;\n        ssl_certificate_key %s;\n"
                                 "        ssl_protocols TLSv1.2 TLSv1.3;" % (tls[0], tls[1]))
                body = fill(NGINX_PROXY, up_port=be["legacy"], port=port,
                            listen_ssl=" ssl" if tls else "", ssl=ssl_lines,
                            mirror_upstream=fill(NGINX_MIRROR_UPSTREAM, shadow_port=mirror_port)
                            if mirror_port else "",
                            mirror="            mirror /mirror;\n            mirror_request_body on;"
                            if mirror_port else "",
                            mirror_location=NGINX_MIRROR_LOCATION if mirror_port else "")
                p = self.start_nginx(label, workers, body, port, tls=bool(tls))
            else:
                p = self.start_haproxy(label, workers, port, be["legacy"],
                                       tls_pem=tls[2] if tls else None)
            out.append(Target(label, kind, p, port, tls=bool(tls)))
        return out

    def stop_targets(self, targets):
        for t in targets:
            if t.proc is not None:
                self.h.stop(t.proc)

    # measuring ------------------------------------------------------------------------
    def wrk(self, target, path, seconds, threads, conns):
        self.wrk_seq += 1
        log = self.h.tmp / ("wrk-%04d.out" % self.wrk_seq)
        argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % seconds, "--latency",
                target.url(path)]
        with open(log, "wb") as out:
            p = self.h.spawn("wrk", argv, log=self.h.tmp / ("wrk-%04d.err" % self.wrk_seq),
                             stdout=out)
        try:
            p.popen.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            self.h.stop(p)
            raise RuntimeError("wrk did not finish within %d s: %s" % (seconds + 30,
                                                                       " ".join(argv)))
        self.h.stop(p)
        text = log.read_text(errors="replace")
        if p.popen.returncode != 0:
            raise RuntimeError("wrk %s: %s\n%s%s" % (p.exit_desc(), " ".join(argv), text,
                                                      p.log_tail()))
        r = parse_wrk(text)
        r["argv"] = argv
        r["raw"] = text
        return r

    def sanity(self, t, path, expect):
        try:
            st, hdr, body = http_get(t.port, path, timeout=10, tls=t.tls)
        except (OSError, http.client.HTTPException) as e:
            return "GET %s failed: %s" % (path, e)
        if st != 200:
            return "GET %s answered %d" % (path, st)
        if expect is not None and body != expect:
            return ("GET %s: body differs from the backend's (%d bytes, expected %d)"
                    % (path, len(body), len(expect)))
        return None

    def measure(self, sec, targets, path, expect=None, threads=None, conns=None):
        """Alternates wrk over the live targets for the configured rounds."""
        threads = threads or self.s.threads
        conns = conns or self.s.connections
        live = []
        for t in targets:
            sec.rows.append(t)
            if t.na:
                continue
            bad = self.sanity(t, path, expect)
            if bad:
                t.failure = "sanity check: " + bad
                self.problem("%s / %s: %s (config %s)" % (sec.title, t.label, bad,
                                                          getattr(t.proc, "conf", "?")))
                continue
            live.append(t)
        if self.s.warmup:
            for t in live:
                try:
                    self.wrk(t, path, self.s.warmup, threads, conns)
                except (RuntimeError, ValueError) as e:
                    self.log("bench: warm-up of %s: %s" % (t.label, e))
        for rnd in range(1, self.s.rounds + 1):
            for t in live:
                if t.failure:
                    continue
                if not t.proc.alive():
                    t.failure = "%s before round %d" % (t.proc.exit_desc(), rnd)
                    self.problem("%s / %s: %s; log tail:\n%s" % (sec.title, t.label, t.failure,
                                                                 t.proc.log_tail()))
                    continue
                c0 = cpu_seconds(t.proc.pid)
                try:
                    r = self.wrk(t, path, self.s.seconds, threads, conns)
                except (RuntimeError, ValueError) as e:
                    t.failure = "round %d: %s" % (rnd, str(e).splitlines()[0])
                    self.problem("%s / %s: %s" % (sec.title, t.label, e))
                    continue
                c1 = cpu_seconds(t.proc.pid)
                r["cpu_us"] = (c1 - c0) * 1e6 / r["requests"] if r["requests"] else None
                t.runs.append(r)
                self.log("  round %d/%d  %-28s %10.0f req/s  p50 %8.2f ms  p99 %8.2f ms%s"
                         % (rnd, self.s.rounds, t.label, r["rps"], r["p50"], r["p99"],
                            ("  errors: " + fmt_errors(r["errors"])) if r["errors"] else ""))
                if r["errors"]:
                    self.problem("%s / %s round %d: wrk reported errors: %s\n  command: %s\n"
                                 "  config: %s\n  wrk output:\n%s"
                                 % (sec.title, t.label, rnd, fmt_errors(r["errors"]),
                                    " ".join(r["argv"]), getattr(t.proc, "conf", "?"),
                                    indent(r["raw"], 4)))
                if not t.proc.alive():
                    t.failure = "%s during round %d" % (t.proc.exit_desc(), rnd)
                    self.problem("%s / %s: %s; command: %s; config: %s; log tail:\n%s"
                                 % (sec.title, t.label, t.failure, " ".join(r["argv"]),
                                    getattr(t.proc, "conf", "?"), t.proc.log_tail()))

    def ficus_metrics(self, t, prefixes=("ficus_shadow_total", "ficus_comparisons_total",
                                         "ficus_divergences_total")):
        try:
            st, _, body = http_get(int(t.proc.admin_port), "/metrics", timeout=5)
        except (OSError, http.client.HTTPException, AttributeError) as e:
            return "metrics unavailable: %s" % e
        keep = []
        for line in body.decode("utf-8", "replace").splitlines():
            if line.startswith(prefixes):
                name, _, val = line.rpartition(" ")
                try:
                    if float(val) == 0:
                        continue
                except ValueError:
                    pass
                keep.append("%s %s" % (name, val))
        return ", ".join(keep) if keep else "(no non-zero counters)"

    # scenarios ------------------------------------------------------------------------
    def scenario_plain(self):
        be = self.start_backend()
        targets = self.proxies(be)
        try:
            sec = Section("1. Plain forwarding, small JSON (%d B)" % len(SMALL_LEGACY),
                          "GET /small through each proxy to the nginx backend.")
            self.measure(sec, targets, "/small", SMALL_LEGACY.encode())
            return [sec]
        finally:
            self.stop_targets(targets)
            self.h.stop(be["proc"])

    def scenario_sizes(self):
        be = self.start_backend()
        targets = self.proxies(be)
        try:
            out = []
            for fname, label in (("4k.json", "4 KiB"), ("256k.json", "256 KiB")):
                expect = (be["www"] / "legacy" / fname).read_bytes()
                sec = Section("2%s. %s responses" % ("a" if fname.startswith("4k") else "b", label),
                              "GET /%s: a static file served by the backend (sendfile)." % fname)
                rows = [Target(t.label, t.kind, t.proc, t.port, tls=t.tls) for t in targets]
                self.measure(sec, rows, "/" + fname, expect)
                out.append(sec)
            return out
        finally:
            self.stop_targets(targets)
            self.h.stop(be["proc"])

    def scenario_shadow(self, workers=1, number="3", big=False):
        """100 % shadow with the JSON diff against nginx's mirror: small JSON (scenario 3),
        the same with 2 workers (11), or 256 KiB documents (10)."""
        be = self.start_backend(workers=max(workers, self.s.backend_workers))
        shadow = {"percent": 100, "max_inflight": 1000, "timeout_ms": 5000}
        mirror = be["new"] if self.nginx_has("mirror") else None
        want = [k for k in ("ficus", "nginx") if k != "nginx" or mirror]
        targets = self.proxies(be, workers=workers, shadow=shadow, mirror_port=mirror,
                               want=want, labels={"ficus": "ficus (shadow 100 %)",
                                                  "nginx": "nginx (mirror)"},
                               shadow_budget=self.s.shadow_budget << 20 if big else None)
        if big and "ficus" in self.s.targets:
            # The same ficus without shadow: what forwarding the documents costs in RSS
            # and req/s, so that the shadow's share can be told apart.
            targets += self.proxies(be, want=["ficus"], labels={"ficus": "ficus (no shadow)"})
        for t in targets:
            if t.kind == "ficus":
                t.ref = "nginx (mirror)"
        if "nginx" in self.s.targets and not mirror:
            targets.append(Target("nginx (mirror)", "nginx",
                                  na="n/a: this nginx has no mirror module"))
        if "haproxy" in self.s.targets:
            targets.append(Target("haproxy", "haproxy", na="n/a: HAProxy has no request mirroring"))
        threads = min(self.s.w2_threads, self.s.connections) if workers > 1 else None
        try:
            if big:
                path, expect = "/big.json", (be["www"] / "legacy" / "big.json").read_bytes()
                sec = Section("%s. 100 %% shadow with JSON diff, 256 KiB documents" % number,
                              "GET /big.json (%s bytes, the shape of a list endpoint: the "
                              "documents of bench/diffbench.c); new's answer differs from "
                              "legacy's in 6 fields. ficus diffs every pair and logs the "
                              "divergence, with limits.shadow_memory_bytes %d MiB; nginx "
                              "mirrors and discards." % (format(len(expect), ","),
                                                         self.s.shadow_budget))
            else:
                path, expect = "/small", SMALL_LEGACY.encode()
                sec = Section("%s. 100 %% shadow with JSON diff%s" % (
                    number, ", 2 workers per proxy" if workers > 1 else ""),
                    "GET /small; every request also goes to a second backend (\"new\") "
                    "whose JSON differs slightly (key order, an unordered array, an "
                    "ignored timestamp, one real difference). ficus diffs the two and "
                    "logs the divergence; nginx mirrors with `mirror /mirror;` and "
                    "discards the mirror's answer." + (
                        " ficus \"workers\": 2 (the diffs share the libuv thread pool), "
                        "nginx worker_processes 2; backend with 2 workers, wrk %d threads."
                        % threads if workers > 1 else ""))
            sampler = RssSampler([t for t in targets if t.kind == "ficus" and t.proc])
            sampler.start()
            try:
                self.measure(sec, targets, path, expect, threads=threads)
            finally:
                sampler.stop()
            sec.notes.append("ficus diffs on its libuv thread pool, so with %s it can "
                             "use more than %s: compare the proxy CPU µs/req column too"
                             % ("one worker" if workers == 1 else "2 workers",
                                "one core" if workers == 1 else "two cores"))
            for t in targets:
                if t.kind == "ficus" and t.proc and t.label == "ficus (no shadow)":
                    base, peak = sampler.result(t)
                    if base is not None:
                        sec.notes.append("ficus (no shadow) RSS: %.1f MiB before, %.1f MiB at "
                                         "most during the rounds (growth %.1f MiB): what "
                                         "forwarding the documents holds without any shadow"
                                         % (base / 1024.0, peak / 1024.0, (peak - base) / 1024.0))
                    continue
                if t.kind == "ficus" and t.proc:
                    sec.notes.append("ficus counters after the run (warm-up included): "
                                     + self.ficus_metrics(t, ("ficus_shadow_total",
                                                              "ficus_comparisons_total",
                                                              "ficus_divergences_total")))
                    base, peak = sampler.result(t)
                    if base is not None:
                        grow = (peak - base) / 1024.0
                        line = ("ficus RSS: %s MiB before the first round, %s MiB at most "
                                "during the rounds (growth %.1f MiB)"
                                % (format(round(base / 1024.0, 1), ","),
                                   format(round(peak / 1024.0, 1), ","), grow))
                        if big:
                            line += ("; shadow memory budget %d MiB: growth %s the budget. "
                                     "The budget bounds the request copies and captures; on "
                                     "top of it by design: the 1,000 most recent divergence "
                                     "records the admin API serves (each up to 2 × "
                                     "divergence_log.body_bytes, 4 KiB here, plus its diffs), "
                                     "the diff's parse of the pair in hand (about 5× its two "
                                     "bodies) and up to 4 MiB of freed arena blocks kept for "
                                     "the next parse"
                                     % (self.s.shadow_budget, "under" if grow <
                                        self.s.shadow_budget else "NOT under"))
                        sec.notes.append(line)
            if big:
                sec.notes.append(self.diffbench_note())
            return [sec]
        finally:
            self.stop_targets(targets)
            self.h.stop(be["proc"])

    def scenario_shadow_big(self):
        return self.scenario_shadow(number="10", big=True)

    def scenario_shadow_w2(self):
        return self.scenario_shadow(workers=2, number="11")

    def diffbench_note(self):
        """The diff micro-benchmark beside the end-to-end figure: build/diffbench next
        to the ficus binary, on the same kind of documents."""
        exe = Path(self.s.ficus_bin).parent / "diffbench"
        if not os.access(str(exe), os.X_OK):
            return ("diff micro-benchmark: %s not built (`cmake --build build --target "
                    "diffbench`)" % exe)
        try:
            r = subprocess.run([str(exe), "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return "diff micro-benchmark failed: %s" % e
        text = r.stdout.decode("utf-8", "replace")
        m = re.search(r"as in ficus\s+diff:\s+([\d.]+) MB/s", text)
        mp = re.search(r"as in ficus\s+parse:\s+([\d.]+) MB/s", text)
        if not m:
            return "diff micro-benchmark: no figure in its output: %s" % text.strip()[:200]
        return ("diff micro-benchmark (`%s 4`, one thread, malloc as in ficus): whole "
                "comparison %s MB/s, parse alone %s MB/s (both bodies counted; target "
                "400 MB/s)" % (exe.name, m.group(1), mp.group(1) if mp else "?"))

    def scenario_shadow_delay(self):
        be = self.start_backend(new_delay=True)
        dp = be["delay"]
        shadow = {"percent": 100, "max_inflight": 100, "timeout_ms": 5000}
        mirror_ok = self.nginx_has("mirror")
        targets = []
        targets += self.proxies(be, want=["ficus"], labels={"ficus": "ficus (no shadow)"})
        targets += self.proxies(be, want=["ficus"], shadow=shadow, mirror_port=dp,
                                labels={"ficus": "ficus (shadow, %d ms)" % self.s.delay_ms})
        targets += self.proxies(be, want=["nginx"], labels={"nginx": "nginx (no mirror)"})
        if mirror_ok:
            targets += self.proxies(be, want=["nginx"], mirror_port=dp,
                                    labels={"nginx": "nginx (mirror, %d ms)" % self.s.delay_ms})
        for t in targets:
            if t.label.startswith("ficus (no"):
                t.ref = "nginx (no mirror)"
            elif t.kind == "ficus":
                t.ref = "nginx (mirror, %d ms)" % self.s.delay_ms
        if "nginx" in self.s.targets and not mirror_ok:
            targets.append(Target("nginx (mirror)", "nginx",
                                  na="n/a: this nginx has no mirror module"))
        if "haproxy" in self.s.targets:
            targets.append(Target("haproxy", "haproxy", na="n/a: HAProxy has no request mirroring"))
        try:
            sec = Section("4. Shadow backend delayed %d ms" % self.s.delay_ms,
                          "GET /small; the shadow/mirror backend is a Python asyncio server "
                          "that answers every request after %d ms. The question is whether "
                          "the client waits for it. ficus runs with shadow.max_inflight 100, "
                          "so at most 100 shadows are open and the rest are skipped. wrk "
                          "connections: %d." % (self.s.delay_ms, self.s.delay_connections))
            self.measure(sec, targets, "/small", SMALL_LEGACY.encode(),
                         conns=self.s.delay_connections)
            sec.notes.append("ratios: each ficus row against the nginx row of the same kind "
                             "(no shadow vs no mirror, shadow vs mirror); nginx (mirror) "
                             "against nginx (no mirror)")
            byl = {t.label: t for t in targets}
            for base, shadowed in (("ficus (no shadow)", "ficus (shadow, %d ms)" % self.s.delay_ms),
                                   ("nginx (no mirror)", "nginx (mirror, %d ms)" % self.s.delay_ms)):
                a, b = byl.get(base), byl.get(shadowed)
                if a and b and a.runs and b.runs:
                    sec.notes.append("client p99 %s: %s without, %s with the delayed shadow "
                                     "(%s)" % (a.kind, fmt_ms(med(a, "p99")), fmt_ms(med(b, "p99")),
                                               ratio(med(b, "p99"), med(a, "p99"))))
            for t in targets:
                if t.kind == "ficus" and t.proc and "shadow," in t.label:
                    sec.notes.append("ficus counters after the run (warm-up included): "
                                     + self.ficus_metrics(t))
            return [sec]
        finally:
            self.stop_targets(targets)
            if be.get("delay_proc"):
                self.h.stop(be["delay_proc"])
            self.h.stop(be["proc"])

    def scenario_idle(self):
        n = self.s.idle_conns
        be = self.start_backend()
        sec = Section("5. %s idle keep-alive connections" % format(n, ","),
                      "Each proxy, started alone, gets %s client connections; each sends one "
                      "GET /small, reads the answer and stays open. RSS is VmRSS of the "
                      "proxy's processes (nginx: master + worker) from /proc, before and after."
                      % format(n, ","))
        header = ["target", "connections held", "RSS before", "RSS after", "KiB / connection",
                  "vs nginx"]
        results = {}
        try:
            for kind in self.s.targets:
                (t,) = self.proxies(be, want=[kind])
                try:
                    http_get(t.port, "/small", timeout=5)
                    time.sleep(0.5)
                    before = rss_kib(t.proc.pid)
                    res = self.idle_client(t.port, n)
                    time.sleep(1.0)
                    after = rss_kib(t.proc.pid)
                    alive = t.proc.alive()
                    self.idle_client_close(res)
                    ok = res["ok"]
                    per = (after - before) / ok if ok else None
                    results[kind] = (ok, before, after, per, alive, res)
                    self.log("  %-10s held %d/%d connections, RSS %d -> %d KiB (%s KiB/conn)%s"
                             % (kind, ok, n, before, after,
                                "%.2f" % per if per is not None else "?",
                                "" if alive else " -- PROXY DIED"))
                    if ok < n:
                        self.problem("%s / %s: only %d of %d connections got an answer and "
                                     "stayed open (%s); config %s"
                                     % (sec.title, kind, ok, n, json.dumps(res.get("errors")),
                                        t.proc.conf))
                    if not alive:
                        self.problem("%s / %s: %s; log tail:\n%s" % (sec.title, kind,
                                                                    t.proc.exit_desc(),
                                                                    t.proc.log_tail()))
                finally:
                    self.h.stop(t.proc)
        finally:
            self.h.stop(be["proc"])
        rows = []
        ref = results.get("nginx")
        for kind in self.s.targets:
            if kind not in results:
                rows.append([kind, "failed", "", "", "", ""])
                continue
            ok, before, after, per, alive, _ = results[kind]
            rows.append([kind, "%s / %s" % (format(ok, ","), format(n, ",")),
                         "%s KiB" % format(before, ","), "%s KiB" % format(after, ","),
                         "%.2f" % per if per is not None else "?",
                         ratio(per, ref[3]) if ref and per is not None and ref[3] else "-"])
        sec.custom = (header, rows)
        sec.notes.append("open-file limit %d; HAProxy wants 2 × maxconn descriptors and runs "
                         "with `no strict-limits`, so a lower limit only warns"
                         % resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if "ficus" in results and results["ficus"][3] is not None:
            per = results["ficus"][3]
            sec.notes.append("ficus target: under 8 KiB per idle connection: %s (%.2f KiB)"
                             % ("met" if per < 8 else "NOT met", per))
        return [sec]

    def idle_client(self, port, n):
        p = self.h.spawn("idle-client", [sys.executable, str(Path(__file__).resolve()),
                                         "_idle-client", str(port), str(n), "/small", "180"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        deadline = time.monotonic() + 200
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.h.stop(p)
                raise RuntimeError("idle client gave no result within 200 s")
            rl, _, _ = select.select([p.popen.stdout], [], [], min(left, 1.0))
            if rl:
                chunk = os.read(p.popen.stdout.fileno(), 65536)
                if not chunk:
                    self.h.stop(p)
                    raise RuntimeError("idle client %s; log:\n%s" % (p.exit_desc(), p.log_tail()))
                buf += chunk
        res = json.loads(buf.split(b"\n", 1)[0])
        res["proc"] = p
        return res

    def idle_client_close(self, res):
        p = res["proc"]
        try:
            p.popen.stdin.close()
        except OSError:
            pass
        try:
            p.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.h.stop(p)

    def tls_files(self):
        d = self.h.dir("tls")
        cert, key, pem = d / "cert.pem", d / "key.pem", d / "both.pem"
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                            "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        if r.returncode != 0:
            raise StartError("openssl could not make a test certificate:\n%s" % r.stdout.decode())
        pem.write_bytes(cert.read_bytes() + key.read_bytes())
        return str(cert), str(key), str(pem)

    def ficus_tls_probe(self, tls):
        """None when ficus serves TLS, else the reason it does not: `ficus check`
        must accept a tls listener and the running listener must complete a TLS
        handshake (a build without TLS, or a broken one, gives an n/a row with the
        reason rather than a misleading measurement)."""
        port = self.h.port()
        cfg = self.ficus_config(port, 9, 9, tls=tls[:2], admin_port=self.h.port())
        d = self.h.dir("ficus-tls-probe")
        path = d / "ficus.json"
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        chk = subprocess.run([self.s.ficus_bin, "check", "-c", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=30, cwd=d)
        if chk.returncode != 0:
            return "`ficus check` rejects a listen with tls: " + chk.stdout.decode().strip()
        p = self.h.spawn("ficus-tls-probe", [self.s.ficus_bin, "-c", str(path)], cwd=d,
                         log=d / "ficus.log")
        try:
            try:
                self.h.wait_tcp(p, port, timeout=10)
            except StartError as e:
                return "ficus did not start with a tls listener: %s" % str(e).splitlines()[0]
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                    with ctx.wrap_socket(s, server_hostname="localhost"):
                        return None
            except (OSError, ssl.SSLError) as e:
                return ("`ficus check` accepts a tls listener, but the running listener does "
                        "not complete a TLS handshake (%s)" % e)
        finally:
            self.h.stop(p)

    def scenario_https(self):
        sec = Section("6. HTTPS (TLS between client and proxy, plain HTTP to the backend)")
        try:
            tls = self.tls_files()
        except (StartError, OSError, subprocess.TimeoutExpired) as e:
            sec.na = "n/a: could not make a test certificate (%s)" % e
            return [sec]
        if "ficus" in self.s.targets:
            why = self.ficus_tls_probe(tls)
            if why:
                sec.na = "n/a: TLS not yet implemented in ficus"
                sec.notes.append("probe: " + why)
                return [sec]
        be = self.start_backend()
        targets = self.proxies(be, tls=tls)
        try:
            sec.intro = ("GET /small over HTTPS (ECDSA P-256 self-signed certificate, "
                         "keep-alive, so handshakes are few).")
            self.measure(sec, targets, "/small", SMALL_LEGACY.encode())
            return [sec]
        finally:
            self.stop_targets(targets)
            self.h.stop(be["proc"])

    def scenario_pool2(self):
        """One backend of two nginx servers: ficus's "servers" (smooth weighted round robin,
        per-server pools), nginx's upstream (round robin) and HAProxy's balance roundrobin."""
        workers = self.s.backend_workers
        pa, pb = self.h.port(), self.h.port()
        body = fill(NGINX_BACKEND_PAIR, port_a=pa, port_b=pb, small=SMALL_LEGACY)
        be = self.start_nginx("backend-pair", workers, body, pa)
        self.h.wait_http(be, pb, "/small")
        want = [k for k in PROXIES if k in self.s.targets]
        targets = []
        try:
            for kind in want:
                port = self.h.port()
                if kind == "ficus":
                    cfg = self.ficus_config(port, pa, pb, admin_port=self.h.port())
                    cfg["backends"]["legacy"] = {
                        "servers": ["http://127.0.0.1:%d" % pa, "http://127.0.0.1:%d" % pb],
                        "lb": "round_robin", "max_connections": 1024}
                    p = self.start_ficus("ficus-pool2", cfg)
                elif kind == "nginx":
                    up = fill(NGINX_PROXY, up_port=pa, port=port, listen_ssl="", ssl="",
                              mirror_upstream="", mirror="", mirror_location="")
                    up = up.replace("        server 127.0.0.1:%d;\n" % pa,
                                    "        server 127.0.0.1:%d;\n        server 127.0.0.1:%d;\n"
                                    % (pa, pb))
                    p = self.start_nginx("nginx-pool2", 1, up, port)
                else:
                    d = self.h.dir("haproxy-pool2")
                    cfg = d / "haproxy.cfg"
                    text = fill(HAPROXY_CFG, threads=1, port=port, up_port=pa, global_ssl="",
                                bind_ssl="")
                    text = text.replace("    server legacy 127.0.0.1:%d\n" % pa,
                                        "    balance roundrobin\n    server a 127.0.0.1:%d\n"
                                        "    server b 127.0.0.1:%d\n" % (pa, pb))
                    cfg.write_text(text)
                    p = self.h.spawn("haproxy-pool2", ["haproxy", "-db", "-f", str(cfg)], cwd=d,
                                     log=d / "haproxy.log")
                    p.conf = cfg
                    self.h.wait_http(p, port, "/small")
                targets.append(Target(kind, kind, p, port))
            sec = Section("9. One backend of two servers, round robin",
                          "GET /small through each proxy to one backend of two nginx servers "
                          "(two ports of the backend nginx): ficus \"servers\" with "
                          "\"lb\": \"round_robin\", nginx upstream with two servers, HAProxy "
                          "balance roundrobin with two servers.")
            self.measure(sec, targets, "/small", SMALL_LEGACY.encode())
            for t in targets:
                if t.kind == "ficus" and t.runs:
                    sec.notes.append("ficus requests per server after the run (warm-up "
                                     "included): " + self.ficus_metrics(
                                         t, ("ficus_upstream_server_requests_total",)))
            return [sec]
        finally:
            self.stop_targets(targets)
            self.h.stop(be)

    def scenario_workers2(self):
        be = self.start_backend(workers=max(2, self.s.backend_workers))
        targets = self.proxies(be, workers=2)
        try:
            w2t = min(self.s.w2_threads, self.s.connections)
            sec = Section("7. Plain forwarding, 2 workers per proxy",
                          "As scenario 1 with nginx worker_processes 2, HAProxy nbthread 2, "
                          "ficus \"workers\": 2; the backend has %d workers and wrk %d threads."
                          % (max(2, self.s.backend_workers), w2t))
            self.measure(sec, targets, "/small", SMALL_LEGACY.encode(), threads=w2t)
            return [sec]
        finally:
            self.stop_targets(targets)
            self.h.stop(be["proc"])


    def scenario_routes1000(self):
        """1,000 routes whose path_prefix never matches, before the one that does, against
        the same ficus with that one route only. The router's cost per request is the
        difference; nginx and HAProxy rows are scenario 1 again, for scale."""
        be = self.start_backend()
        targets = []
        try:
            if "ficus" in self.s.targets:
                for label, n in (("ficus (1 route)", 0), ("ficus (1,000 routes)", 1000)):
                    port = self.h.port()
                    cfg = self.ficus_config(port, be["legacy"], be["new"],
                                            admin_port=self.h.port())
                    cfg["routes"] = [{"name": "r%04d" % i, "new_percent": 0,
                                      "match": {"path_prefix": "/nomatch/%04d/" % i}}
                                     for i in range(n)] + cfg["routes"]
                    p = self.start_ficus(label.replace(" ", "-").replace(",", ""), cfg)
                    targets.append(Target(label, "ficus", p, port, ref="ficus (1 route)"))
            targets += self.proxies(be, want=["nginx", "haproxy"])
            for t in targets:
                if t.kind != "ficus":
                    t.ref = "ficus (1 route)"
            sec = Section("12. 1,000 routes before the match",
                          "GET /small through ficus with one catch-all route, and with 1,000 "
                          "prefix routes that do not match placed before it (routes are tried "
                          "in order). Ratios are against the one-route row; nginx and HAProxy "
                          "(plain forwarding) are there for scale.")
            self.measure(sec, targets, "/small", SMALL_LEGACY.encode())
            sec.notes.append("ratios (the \"vs nginx\" columns): every row against ficus "
                             "(1 route)")
            return [sec]
        finally:
            self.stop_targets(targets)
            self.h.stop(be["proc"])

    SYSCALL_EVENTS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto",
                      "sendmsg", "epoll_wait", "epoll_pwait", "epoll_ctl")

    def perf_syscalls_ok(self):
        if shutil.which("perf") is None:
            return "perf not found (Debian package linux-perf)"
        r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        out = r.stdout.decode("utf-8", "replace")
        if r.returncode != 0 or "raw_syscalls:sys_enter" not in out or "not supported" in out:
            return "perf cannot count syscall tracepoints here: " + out.strip()[:200]
        return None

    def scenario_syscalls(self):
        """System calls per request in plain forwarding: perf stat on the raw_syscalls and
        syscalls tracepoints of each proxy's processes while wrk runs (counted in the
        kernel, no ptrace: the proxy runs at its normal speed)."""
        sec = Section("13. System calls per request, plain forwarding")
        why = self.perf_syscalls_ok()
        if why:
            sec.na = "n/a: " + why
            return [sec]
        be = self.start_backend()
        header = ["target", "requests", "syscalls / req", "reads / req", "writes / req",
                  "epoll_wait / req", "epoll_ctl / req", "other / req", "proxy CPU µs/req",
                  "req/s"]
        rows = []
        self.syscall_rows = {}
        try:
            for kind in self.s.targets:
                (t,) = self.proxies(be, want=[kind])
                try:
                    if self.s.warmup:
                        self.wrk(t, "/small", self.s.warmup, self.s.threads, self.s.connections)
                    pids = ",".join(str(x) for x in proc_tree(t.proc.pid))
                    out = self.h.tmp / ("perf-%s.txt" % kind)
                    events = ["raw_syscalls:sys_enter"] + \
                        ["syscalls:sys_enter_" + e for e in self.SYSCALL_EVENTS]
                    perf = self.h.spawn("perf-" + kind, ["perf", "stat", "-x,", "-o", str(out),
                                                         "-e", ",".join(events), "-p", pids])
                    time.sleep(0.3)
                    c0 = cpu_seconds(t.proc.pid)
                    r = self.wrk(t, "/small", self.s.seconds, self.s.threads, self.s.connections)
                    c1 = cpu_seconds(t.proc.pid)
                    perf.popen.send_signal(signal.SIGINT)
                    try:
                        perf.popen.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
                    self.h.stop(perf)
                    counts = {}
                    for line in out.read_text(errors="replace").splitlines():
                        f = line.split(",")
                        if len(f) >= 3 and f[2].startswith(("raw_syscalls", "syscalls")):
                            try:
                                counts[f[2].split(":", 1)[1]] = int(f[0])
                            except ValueError:
                                pass
                    n = r["requests"] or 1
                    total = counts.get("sys_enter", 0)
                    reads = sum(counts.get("sys_enter_" + e, 0)
                                for e in ("read", "readv", "recvfrom", "recvmsg"))
                    writes = sum(counts.get("sys_enter_" + e, 0)
                                 for e in ("write", "writev", "sendto", "sendmsg"))
                    waits = counts.get("sys_enter_epoll_wait", 0) + \
                        counts.get("sys_enter_epoll_pwait", 0)
                    ctl = counts.get("sys_enter_epoll_ctl", 0)
                    cpu = (c1 - c0) * 1e6 / n
                    self.syscall_rows[kind] = total / n
                    rows.append([kind, format(r["requests"], ","), "%.2f" % (total / n),
                                 "%.2f" % (reads / n), "%.2f" % (writes / n),
                                 "%.2f" % (waits / n), "%.2f" % (ctl / n),
                                 "%.2f" % ((total - reads - writes - waits - ctl) / n),
                                 "%.1f" % cpu,
                                 format(round(r["rps"]), ",")])
                    self.log("  %-8s %.2f syscalls/req (%d requests)" % (kind, total / n, n))
                finally:
                    self.h.stop(t.proc)
        finally:
            self.h.stop(be["proc"])
        sec.intro = ("GET /small through each proxy alone (wrk -t%d -c%d, %d s), counting the "
                     "system calls of the proxy's processes (nginx: master and worker) with "
                     "`perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_...` over the run. "
                     "reads: read, readv, recvfrom, recvmsg; writes: write, writev, sendto, "
                     "sendmsg; both sides of the proxy are counted (client and backend)."
                     % (self.s.threads, self.s.connections, self.s.seconds))
        sec.custom = (header, rows)
        return [sec]

    def scenario_idle_tls(self):
        """bench/idle_memory.py: 1,000 idle connections to a fresh ficus per case, plain
        and TLS, with one request first and without."""
        n = self.s.idle_tls_conns
        sec = Section("14. %s idle connections to ficus, plain and TLS" % format(n, ","),
                      "bench/idle_memory.py -n %d: for each case a fresh ficus (one worker), "
                      "warmed with 8 connections, then %s connections opened and left idle "
                      "(with one GET /small each first, or none); VmRSS before and after." %
                      (n, format(n, ",")))
        try:
            r = subprocess.run([sys.executable, str(HERE / "idle_memory.py"), "-n", str(n),
                                "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=300, env=dict(os.environ, FICUS_BIN=self.s.ficus_bin))
        except subprocess.TimeoutExpired:
            raise RuntimeError("idle_memory.py did not finish within 300 s")
        rows = []
        for line in r.stdout.decode("utf-8", "replace").splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            rows.append([d["listener"], "yes" if d["request"] else "no",
                         "%s / %s" % (format(d["held"], ","), format(d["connections"], ",")),
                         "%s KiB" % format(d["rss_before_kib"], ","),
                         "%s KiB" % format(d["rss_after_kib"], ","), "%.2f" % d["kib_per_conn"]])
            if d["listener"] == "tls" and d["request"]:
                sec.notes.append("TLS target: at most 8 KiB per idle connection: %s (%.2f KiB); "
                                 "OpenSSL 3.0's SSL object alone is about 8 KiB"
                                 % ("met" if d["kib_per_conn"] <= 8 else "NOT met",
                                    d["kib_per_conn"]))
        if r.returncode != 0 or not rows:
            self.problem("%s: idle_memory.py exited %d: %s" % (
                sec.title, r.returncode, r.stderr.decode("utf-8", "replace")[-500:]))
        if not rows:
            sec.na = "failed: idle_memory.py gave no result"
            return [sec]
        sec.custom = (["listener", "one request first", "held", "RSS before", "RSS after",
                       "KiB / connection"], rows)
        return [sec]

    def start_etcd(self):
        """One etcd member on free ports (Debian's etcd-server); returns (proc, client URL)."""
        cp, pp = self.h.port(), self.h.port()
        d = self.h.dir("etcd")
        url, peer = "http://127.0.0.1:%d" % cp, "http://127.0.0.1:%d" % pp
        p = self.h.spawn("etcd", ["etcd", "--name", "bench", "--data-dir", str(d / "data"),
                                  "--listen-client-urls", url, "--advertise-client-urls", url,
                                  "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                  "--initial-cluster", "bench=" + peer, "--logger", "zap",
                                  "--log-outputs", "stderr"], cwd=d, log=d / "etcd.log")
        self.h.wait_http(p, cp, "/health")
        return p, url

    def scenario_fleet(self):
        sec = Section("8. Plain forwarding with the live state in etcd, changed 10 times a second")
        if "ficus" not in self.s.targets:
            sec.na = "n/a: ficus is not among BENCH_TARGETS"
            return [sec]
        if shutil.which("etcd") is None:
            sec.na = "n/a: etcd not found (Debian package etcd-server)"
            return [sec]
        etcd, url = self.start_etcd()
        be = self.start_backend()
        targets = []
        stop = threading.Event()
        changes = [0]
        prefix = "/bench/"

        def changer():
            """Writes the route's live state straight into etcd 10 times a second, as
            another instance's PATCH would: new_percent 0 and 0.01 in turn (a random
            request goes to new once in 10,000)."""
            i = 0
            while not stop.wait(0.1):
                i += 1
                value = json.dumps({"kind": "ficus.route", "version": 1,
                                    "new_percent": 0.01 if i % 2 else 0})
                body = json.dumps({"key": base64.b64encode((prefix + "routes/all").encode())
                                   .decode(), "value": base64.b64encode(value.encode()).decode()})
                req = urllib.request.Request(url + "/v3/kv/put", data=body.encode(),
                                             method="POST")
                try:
                    urllib.request.urlopen(req, timeout=2).read()
                    changes[0] += 1
                except OSError:
                    pass

        try:
            for label, store in (("ficus (state file)", None),
                                 ("ficus (etcd, 10 changes/s)",
                                  {"type": "etcd", "endpoints": [url], "prefix": prefix,
                                   "timeout_ms": 1000, "lease_ttl_s": 5})):
                port = self.h.port()
                d = self.h.dir(label + "-data")
                cfg = self.ficus_config(port, be["legacy"], be["new"], admin_port=self.h.port(),
                                        extra_dir=d)
                cfg["state_file"] = str(d / "state.json")
                if store:
                    cfg["state_store"] = store
                p = self.start_ficus(label, cfg)
                targets.append(Target(label, "ficus", p, port, ref="ficus (state file)"))
            sec.intro = ("GET /small through two ficus instances: one keeps the live state in "
                         "its state file, the other in etcd (one local member) while the "
                         "route's value there changes 10 times a second; the etcd instance's "
                         "watch applies each change to its workers' atomics on the control "
                         "thread. Ratios are against the state-file row.")
            t = threading.Thread(target=changer, daemon=True)
            t.start()
            self.measure(sec, targets, "/small", None)
            stop.set()
            t.join(5)
            sec.notes.append("%d changes written to etcd during the run; the etcd instance "
                             "counted: %s" % (changes[0], self.ficus_metrics(
                                 targets[1], prefixes=("ficus_state_changes_total",
                                                       "ficus_state_store_up"))))
            return [sec]
        finally:
            stop.set()
            self.stop_targets(targets)
            self.h.stop(be["proc"])
            self.h.stop(etcd)


# ---------------------------------------------------------------------------------------
# formatting


def med(t, key):
    vals = [r[key] for r in t.runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt_ms(v):
    if v is None:
        return "-"
    if v < 10:
        return "%.2f ms" % v
    if v < 1000:
        return "%.1f ms" % v
    return "%.2f s" % (v / 1000)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return "%.2f×" % (a / b)


def fmt_errors(errs):
    return ", ".join("%s %d" % (k, v) for k, v in errs.items()) if errs else "0"


def indent(text, n):
    pad = " " * n
    return "\n".join(pad + line for line in text.splitlines())


def md_table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else \
        [len(h) for h in header]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


WRK_HEADER = ["target", "req/s", "vs nginx", "p50", "p99", "p99 vs nginx", "proxy CPU µs/req",
              "errors"]


def render_section(sec):
    out = ["## " + sec.title, ""]
    if sec.intro:
        out += [sec.intro, ""]
    if sec.na:
        out += [sec.na, ""]
    elif sec.custom:
        out += [md_table(*sec.custom), ""]
    else:
        byl = {t.label: t for t in sec.rows}
        rows = []
        for t in sec.rows:
            if t.na:
                rows.append([t.label, t.na, "", "", "", "", "", ""])
                continue
            if not t.runs:
                rows.append([t.label, "failed: " + (t.failure or "no run"), "", "", "", "", "",
                             ""])
                continue
            ref = byl.get(t.ref or "nginx")
            if ref is None:
                ref = next((x for x in sec.rows if x.kind == "nginx" and x.runs), None)
            rps, p50, p99 = med(t, "rps"), med(t, "p50"), med(t, "p99")
            ok_ref = ref is not None and ref.runs
            errs = {}
            for r in t.runs:
                for k, v in r["errors"].items():
                    errs[k] = errs.get(k, 0) + v
            cpu = med(t, "cpu_us")
            rows.append([
                t.label + ("" if len(t.runs) == 0 or not t.failure else " (incomplete)"),
                format(round(rps), ","),
                ratio(rps, med(ref, "rps")) if ok_ref else "-",
                fmt_ms(p50), fmt_ms(p99),
                ratio(p99, med(ref, "p99")) if ok_ref else "-",
                "%.1f" % cpu if cpu is not None else "-",
                fmt_errors(errs),
            ])
        out += [md_table(WRK_HEADER, rows), ""]
        failed = [t for t in sec.rows if t.failure and t.runs]
        for t in failed:
            sec.notes.append("%s: %s" % (t.label, t.failure))
    for n in sec.notes:
        out.append("- " + n)
    if sec.notes:
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# SVG charts (plain text, no dependency)


def xml_escape(t):
    return (str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


COLORS = {"ficus": "#2e7d32", "nginx": "#1565c0", "haproxy": "#ef6c00"}


def svg_bars(title, subtitle, bars, unit, ref_line=None, cap=None):
    """A horizontal bar chart: bars is [(label, value, kind, note)]; kind picks the colour.
    With cap, longer bars stop there (their note gives the value)."""
    if not bars:
        return None
    width, left, right, row = 860, 250, 230, 26
    top = 58
    height = top + row * len(bars) + 34
    vmax = max([b[1] for b in bars] + ([ref_line] if ref_line else [])) or 1.0
    if cap:
        vmax = min(vmax, cap)
    scale = (width - left - right) / vmax
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="sans-serif" font-size="13">'
           % (width, height, width, height),
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           '<text x="10" y="22" font-size="15" font-weight="bold">%s</text>' % xml_escape(title),
           '<text x="10" y="42" fill="#555555">%s</text>' % xml_escape(subtitle)]
    if ref_line:  # first, so that bars and labels are drawn over it
        x = left + ref_line * scale
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000000" '
                   'stroke-dasharray="4,3"/>' % (x, top - 4, x, top + row * len(bars)))
    for i, (label, value, kind, note) in enumerate(bars):
        y = top + i * row
        w = max(1.0, (min(value, cap) if cap else value) * scale)
        color = COLORS.get(kind, "#757575")
        out.append('<text x="%d" y="%d" text-anchor="end">%s</text>'
                   % (left - 8, y + 16, xml_escape(label)))
        out.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>'
                   % (left, y + 3, w, row - 8, color))
        out.append('<text x="%.1f" y="%d">%s</text>'
                   % (left + w + 6, y + 16, xml_escape(note or fmt_num(value, unit))))
    out.append('<text x="10" y="%d" fill="#777777" font-size="11">%s</text>'
               % (height - 10, xml_escape("bench/run, %s" % datetime.datetime.now()
                                          .strftime("%Y-%m-%d %H:%M"))))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def fmt_num(v, unit):
    if unit == "req/s":
        return "%s req/s" % format(round(v), ",")
    if unit == "x":
        return "%.2f×" % v
    return "%.2f %s" % (v, unit)


def section_bars(sec):
    """(bars, unit) of one section, or None: req/s for wrk sections; the per-connection
    or per-request column of the custom tables."""
    if sec.na:
        return None
    if sec.custom:
        header, rows = sec.custom
        for col, unit in (("KiB / connection", "KiB/conn"), ("syscalls / req", "syscalls/req")):
            if col in header:
                i = header.index(col)
                bars = []
                for r in rows:
                    try:
                        v = float(str(r[i]).replace(",", ""))
                    except ValueError:
                        continue
                    label = r[0] if len(header) < 6 or header[1] != "one request first" else \
                        "%s, request %s" % (r[0], r[1])
                    bars.append((label, v, r[0] if r[0] in COLORS else "ficus", None))
                return (bars, unit) if bars else None
        return None
    bars = []
    for t in sec.rows:
        if t.na or not t.runs:
            continue
        rps, p99 = med(t, "rps"), med(t, "p99")
        bars.append((t.label, rps, t.kind, "%s req/s, p99 %s" % (format(round(rps), ","),
                                                                  fmt_ms(p99))))
    return (bars, "req/s") if bars else None


def write_svgs(s, started, sections):
    """One chart per section, and a summary of ficus's req/s against its reference row
    per section; returns the paths written."""
    written = []
    stamp = started.strftime("%Y%m%d-%H%M%S")
    summary = []
    for sec in sections:
        got = section_bars(sec)
        if not got:
            continue
        bars, unit = got
        num = sec.title.split(".", 1)[0].strip() or "x"
        sub = {"req/s": "median req/s over the rounds (longer is better); p99 beside each bar",
               "KiB/conn": "RSS growth per idle connection (shorter is better)",
               "syscalls/req": "system calls of the proxy per request (shorter is better)"}[unit]
        svg = svg_bars(sec.title, sub, bars, unit)
        path = s.out_dir / ("results-%s-%s.svg" % (stamp, num))
        path.write_text(svg)
        written.append(path)
        if unit == "req/s":
            byl = {t.label: t for t in sec.rows}
            for t in sec.rows:
                if t.kind != "ficus" or not t.runs:
                    continue
                ref = byl.get(t.ref or "nginx")
                if ref is not None and "no shadow" in t.label and "mirror" in ref.label:
                    continue  # scenario 10's baseline row: not a comparison with the mirror
                if ref is not None and ref.runs and ref is not t:
                    summary.append(("%s: %s" % (num, t.label), med(t, "rps") / med(ref, "rps"),
                                    "ficus", "%.2f× %s" % (med(t, "rps") / med(ref, "rps"),
                                                           ref.label)))
    if summary:
        svg = svg_bars("ficus req/s against the reference row of each scenario",
                       "1.00× (dashed) is the reference (nginx, or the row named); longer is "
                       "better; bars stop at 4×", summary, "x", ref_line=1.0, cap=4.0)
        path = s.out_dir / ("results-%s-summary.svg" % stamp)
        path.write_text(svg)
        written.append(path)
        if s.doc_svg:
            doc = ROOT / "docs" / "bench.svg"
            doc.write_text(svg)
            written.append(doc)
    return written


# ---------------------------------------------------------------------------------------
# main


def command_line():
    knobs = sorted(k for k in os.environ if k.startswith("BENCH_") and k not in
                   ("BENCH_INVOCATION",))
    if "FICUS_BIN" in os.environ:
        knobs.append("FICUS_BIN")
    inv = os.environ.get("BENCH_INVOCATION") or " ".join([sys.argv[0]] + sys.argv[1:])
    return " ".join("%s=%s" % (k, shlex.quote(os.environ[k])) for k in knobs) + \
        (" " if knobs else "") + inv


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (65536, hard):
        try:
            if want == resource.RLIM_INFINITY or hard == resource.RLIM_INFINITY or want <= hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            else:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main():
    s = Settings()
    if not os.access(s.ficus_bin, os.X_OK):
        die("ficus binary not found or not executable: %s (build it with `make build`, or set "
            "FICUS_BIN)" % s.ficus_bin, 1)
    for tool in ("wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            die("%s not found; run bench/run, which says which packages to install" % tool, 1)
    nofile = raise_nofile()
    if "5" in s.scenarios and nofile < 2 * s.idle_conns + 256:
        print("bench: warning: open-file limit %d is low for %d idle connections"
              % (nofile, s.idle_conns), file=sys.stderr)

    started = datetime.datetime.now().astimezone()
    load = os.getloadavg()
    header = [
        "# ficus benchmark results",
        "",
        "- date: %s" % started.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "- command: `%s`" % command_line(),
        "- machine: %d CPUs (nproc), %s, %s RAM, kernel %s %s, load average at start %.2f %.2f %.2f"
        % (os.cpu_count() or 0, cpu_model(), mem_total(), platform.system(), platform.release(),
           *load),
        "- versions: ficus %s (%s), nginx %s, HAProxy %s, wrk %s, Python %s" % (
            tool_version([s.ficus_bin, "--version"], r"ficus\s+(\S+)"), s.ficus_bin,
            tool_version(["nginx", "-v"], r"nginx/(\S+)"),
            tool_version(["haproxy", "-v"], r"version\s+(\S+)"),
            tool_version(["wrk", "-v"], r"wrk\s+(\S+)"), platform.python_version()),
        "- settings: %d round(s) of %d s per target, alternating targets, wrk -t%d -c%d --latency, "
        "%d s warm-up; every proxy with 1 worker (except scenario 7); backend: nginx, %d worker(s); "
        "open-file limit %d" % (s.rounds, s.seconds, s.threads, s.connections, s.warmup,
                                s.backend_workers, nofile),
        "- values are medians over the rounds; ratios are against the nginx row of the section "
        "(req/s: higher is better; p99: lower is better)",
        "",
    ]
    if load[0] > 0.5 * (os.cpu_count() or 1):
        header.insert(-1, "- WARNING: the machine was not quiet at start (load average %.2f); "
                          "numbers are indicative only" % load[0])
    print("\n".join(header), flush=True)

    h = Harness(s)
    atexit.register(h.cleanup)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    b = Bench(s, h)
    runners = {"1": b.scenario_plain, "2": b.scenario_sizes, "3": b.scenario_shadow,
               "4": b.scenario_shadow_delay, "5": b.scenario_idle, "6": b.scenario_https,
               "7": b.scenario_workers2, "8": b.scenario_fleet,
               "9": b.scenario_pool2, "10": b.scenario_shadow_big, "11": b.scenario_shadow_w2,
               "12": b.scenario_routes1000, "13": b.scenario_syscalls,
               "14": b.scenario_idle_tls}
    rendered = []
    all_secs = []
    rc = 0
    interrupted = None
    try:
        for num in s.scenarios:
            title = [x[2] for x in SCENARIOS if x[0] == num][0]
            b.log("bench: scenario %s: %s" % (num, title))
            try:
                secs = runners[num]()
            except (StartError, RuntimeError, OSError, subprocess.SubprocessError, ValueError) as e:
                rc = 1
                h.failed = True
                sec = Section("%s. %s" % (num, title))
                sec.na = "failed: " + str(e).splitlines()[0]
                b.problem("scenario %s (%s): %s" % (num, title, e))
                secs = [sec]
            for sec in secs:
                all_secs.append(sec)
                text = render_section(sec)
                rendered.append(text)
                print(text, flush=True)
    except SystemExit as e:
        interrupted = e
        msg = "**interrupted** (signal or exit %s); results above are partial\n" % e.code
        rendered.append(msg)
        print(msg, flush=True)
    finally:
        h.stop_all()
        tail = []
        if b.problems:
            tail += ["## Problems seen during the run", ""]
            for p in b.problems:
                lines = p.splitlines()
                tail.append("- " + lines[0])
                if len(lines) > 1:
                    tail += ["", "  ```"] + ["  " + x for x in lines[1:]] + ["  ```", ""]
            tail.append("")
            h.failed = True
        finished = datetime.datetime.now().astimezone()
        tail.append("Finished %s (%.0f s).\n" % (finished.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                                 (finished - started).total_seconds()))
        tail_text = "\n".join(tail)
        print(tail_text, flush=True)
        try:
            s.out_dir.mkdir(parents=True, exist_ok=True)
            out = s.out_dir / ("results-%s.md" % started.strftime("%Y%m%d-%H%M%S"))
            out.write_text("\n".join(header) + "\n" + "\n".join(rendered) + "\n" + tail_text)
            print("bench: results written to %s" % out, file=sys.stderr)
            for path in write_svgs(s, started, all_secs):
                print("bench: chart written to %s" % path, file=sys.stderr)
        except OSError as e:
            print("bench: could not write results: %s" % e, file=sys.stderr)
        h.cleanup()
    if interrupted is not None:
        raise interrupted
    return rc


# ---------------------------------------------------------------------------------------
# internal: delay backend


def delay_backend(port, delay_ms):
    body = SMALL_NEW.encode()
    resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body
    resp_close = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % len(body)) + body
    delay = delay_ms / 1000.0
    cl_re = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")

    async def handle(reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    break
                low = head.lower()
                m = cl_re.search(low)
                if m:
                    await reader.readexactly(int(m.group(1)))
                close = (b"\r\nconnection: close" in low or b"transfer-encoding" in low
                         or head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0"))
                if delay:
                    await asyncio.sleep(delay)
                writer.write(resp_close if close else resp)
                await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096,
                                            reuse_address=True)
        async with server:
            await server.serve_forever()

    raise_nofile()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------------------------
# internal: idle connections client


def idle_client(port, n, path, limit_s):
    raise_nofile()
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: ficus-bench-idle\r\n\r\n"
           % (path, port)).encode()
    sel = selectors.DefaultSelector()
    held = []
    errors = {}
    started = time.monotonic()
    deadline = started + limit_s
    next_i = 0
    inflight = 0
    max_inflight = 256

    def fail(sock, why):
        nonlocal inflight
        errors[why] = errors.get(why, 0) + 1
        inflight -= 1
        try:
            sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    while (next_i < n or inflight) and time.monotonic() < deadline:
        while next_i < n and inflight < max_inflight:
            next_i += 1
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as e:
                errors["socket: " + e.strerror] = errors.get("socket: " + e.strerror, 0) + 1
                continue
            s.setblocking(False)
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, 115):  # EINPROGRESS
                errors["connect errno %d" % rc] = errors.get("connect errno %d" % rc, 0) + 1
                s.close()
                continue
            inflight += 1
            sel.register(s, selectors.EVENT_WRITE, {"state": "connect", "buf": b""})
        for key, ev in sel.select(timeout=0.5):
            s, st = key.fileobj, key.data
            if st["state"] == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(s, "connect errno %d" % err)
                    continue
                try:
                    s.send(req)
                except OSError as e:
                    fail(s, "send: %s" % e.strerror)
                    continue
                st["state"] = "read"
                sel.modify(s, selectors.EVENT_READ, st)
            else:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    fail(s, "recv: %s" % e.strerror)
                    continue
                if not chunk:
                    fail(s, "closed by proxy before a full answer")
                    continue
                st["buf"] += chunk
                buf = st["buf"]
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                m = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", buf[:end].lower())
                need = end + 4 + (int(m.group(1)) if m else 0)
                if len(buf) < need:
                    continue
                if not buf.startswith(b"HTTP/1.1 200"):
                    fail(s, "status " + buf[:12].decode("latin-1", "replace"))
                    continue
                sel.unregister(s)
                inflight -= 1
                held.append(s)
    if next_i < n or inflight:
        errors["not done within %d s" % limit_s] = (n - next_i) + inflight
    # Are they still open? A proxy that closed them shows EOF now.
    closed = 0
    still = []
    for s in held:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                closed += 1
                s.close()
                continue
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
            s.close()
            continue
        still.append(s)
    if closed:
        errors["closed by proxy while idle"] = closed
    print(json.dumps({"ok": len(still), "errors": errors,
                      "seconds": round(time.monotonic() - started, 2)}), flush=True)
    # Hold until the parent closes our stdin (or 10 minutes).
    select.select([sys.stdin], [], [], 600)
    linger = struct.pack("ii", 1, 0)
    for s in still:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)  # RST: no TIME_WAIT
        except OSError:
            pass
        s.close()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "_delay-backend":
        delay_backend(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "_idle-client":
        idle_client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    elif len(sys.argv) == 1:
        sys.exit(main())
    else:
        die("usage: bench/run  (configure with BENCH_* environment variables; see bench/README.md)")
