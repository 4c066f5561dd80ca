#!/usr/bin/env python3
"""Memory per idle client connection of a real ficus, plain and TLS.

    bench/idle_memory.py [-n 1000] [--json]        (FICUS_BIN: default build/ficus)

For each of four cases (plain / TLS listener; with one request per connection
before it goes idle, and without any) a fresh ficus is started (one worker, a
small Python backend on 127.0.0.1, a throw-away ECDSA P-256 certificate made
with `openssl`), warmed with one connection, and then N connections are opened
and left idle. The table gives VmRSS of ficus before and after, and the
difference divided by N: what one idle connection costs. A fresh process per
case, so that memory freed by one case is not reused by the next.

Python 3 standard library only; everything listens on 127.0.0.1, ports picked
free, files in a temporary directory removed at the end. Exit status 1 when a
case could not run or ficus closed connections that should have stayed open.
bench/run runs it as scenario 10 (`idle-tls`).
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BODY = b'{"id":42,"name":"widget","price":9.99,"tags":["a","b"]}'


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


class Backend:
    """A keep-alive HTTP/1.1 server answering every request with BODY."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
        resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(BODY)) + BODY
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf.split(b"\r\n\r\n", 1)[1]
                c.sendall(resp)
        except OSError:
            pass
        finally:
            c.close()


def read_response(s):
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(buf) >= end + 4 + n:
                if not buf.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("answer: %r" % buf[:40])
                return
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed before a full answer")
        buf += chunk


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def open_conns(port, n, tls, request, held):
    """Opens n connections (appended to held), each with one request when request."""
    ctx = client_ctx() if tls else None
    req = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ficus-idle-memory\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        if request:
            s.sendall(req)
            read_response(s)
        held.append(s)


def still_open(held):
    """How many of held the proxy has not closed (a closed one reads EOF now)."""
    ok = 0
    for s in held:
        raw = s
        try:
            raw.setblocking(False)
            data = raw.recv(1, socket.MSG_PEEK) if not isinstance(raw, ssl.SSLSocket) else None
            if data == b"":
                continue
            if isinstance(raw, ssl.SSLSocket):
                # TLS 1.3 session tickets may wait unread: read records, not bytes.
                try:
                    if raw.recv(1) == b"":
                        continue
                except ssl.SSLWantReadError:
                    pass
            ok += 1
        except (BlockingIOError, ssl.SSLWantReadError):
            ok += 1
        except (OSError, ssl.SSLError):
            pass
    return ok


def make_cert(d):
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return str(cert), str(key)


def start_ficus(ficus_bin, d, backend_port, tls):
    port, admin = free_port(), free_port()
    listen = "127.0.0.1:%d" % port
    if tls:
        listen = [{"address": listen, "tls": {"cert_file": tls[0], "key_file": tls[1]}}]
    cfg = {
        "listen": listen, "workers": 1,
        "admin": {"address": "127.0.0.1:%d" % admin},
        "backends": {"legacy": {"url": "http://127.0.0.1:%d" % backend_port},
                     "new": {"url": "http://127.0.0.1:%d" % backend_port}},
        "routes": [{"name": "all", "new_percent": 0}],
        "access_log": {"path": ""},
        "limits": {"max_connections": 20000},
        "timeouts": {"client_idle_ms": 600000, "drain_ms": 1000},
    }
    path = d / ("ficus-%d.json" % port)
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    log = open(d / ("ficus-%d.log" % port), "wb")
    p = subprocess.Popen([ficus_bin, "-c", str(path)], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 15
    while True:
        if p.poll() is not None:
            raise RuntimeError("ficus exited with %s; log %s" % (p.returncode, log.name))
        try:
            held = []
            open_conns(port, 1, tls, True, held)  # also warms what the first request allocates
            for s in held:
                s.close()
            return p, port
        except (OSError, RuntimeError, ssl.SSLError):
            if time.monotonic() > deadline:
                p.kill()
                raise RuntimeError("ficus did not answer within 15 s; log %s" % log.name)
            time.sleep(0.05)


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def measure(ficus_bin, d, backend_port, n, tls, request):
    p, port = start_ficus(ficus_bin, d, backend_port, tls)
    held = []
    try:
        # A few connections first, so that what ficus allocates once (read buffer
        # pools, the upstream connection, OpenSSL's per-thread state) is not counted.
        warm = []
        open_conns(port, 8, bool(tls), True, warm)
        for s in warm:
            s.close()
        time.sleep(0.3)
        before = rss_kib(p.pid)
        t0 = time.monotonic()
        open_conns(port, n, bool(tls), request, held)
        secs = time.monotonic() - t0
        time.sleep(0.5)
        after = rss_kib(p.pid)
        ok = still_open(held)
        alive = p.poll() is None
    finally:
        for s in held:
            try:
                s.close()
            except OSError:
                pass
        stop(p)
    return {"listener": "tls" if tls else "plain", "request": request, "connections": n,
            "held": ok, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": round((after - before) / n, 2), "open_seconds": round(secs, 2),
            "ficus_alive": alive}


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(max(soft, need), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run(ficus_bin, n):
    raise_nofile(2 * n + 256)
    d = Path(tempfile.mkdtemp(prefix="ficus-idle-mem-"))
    be = Backend()
    try:
        tls = make_cert(d) if shutil.which("openssl") else None
        out = []
        for use_tls in (False, True):
            if use_tls and tls is None:
                continue
            for request in (True, False):
                out.append(measure(ficus_bin, d, be.port, n, tls if use_tls else None, request))
        return out
    finally:
        be.sock.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="idle connections per case")
    ap.add_argument("--json", action="store_true", help="one JSON line per case")
    a = ap.parse_args()
    fb = os.environ.get("FICUS_BIN") or str(ROOT / "build" / "ficus")
    if not os.access(fb, os.X_OK):
        print("idle_memory: ficus binary not found: %s" % fb, file=sys.stderr)
        return 1
    rows = run(fb, a.n)
    bad = False
    if a.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print("| listener | one request first | held | RSS before | RSS after | KiB / connection |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print("| %s | %s | %d / %d | %d KiB | %d KiB | %.2f |"
                  % (r["listener"], "yes" if r["request"] else "no", r["held"], r["connections"],
                     r["rss_before_kib"], r["rss_after_kib"], r["kib_per_conn"]))
    for r in rows:
        if r["held"] < r["connections"] or not r["ficus_alive"]:
            bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
