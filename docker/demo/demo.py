#!/usr/bin/env python3
"""The compose stack's demo backends and traffic generator (Python standard library only).

ficus's own demo backends live inside `ficus demo` and cannot run alone, so the compose stack
uses these:

  demo.py backend --role legacy --port 9001    the legacy orders service
  demo.py backend --role new --port 9002       its replacement, with a few deliberate differences
  demo.py traffic --target http://ficus:8080   a few requests a second from many sticky users

The new service differs from legacy on a share of the orders it serves (DEMO_DIVERGE, default
0.003: the price includes VAT) and answers 503 to a share of requests (DEMO_ERRORS, default
0.001). The shares are kept by counting (every 333rd order, every 1000th request), not by
chance, so that the divergence rate stays under the guard's 1 % in every window. Both services
stamp every answer with generated_at, which the shipped configuration ignores. Raise
DEMO_DIVERGE on the new service (say to 0.05) and the guard rolls the route back within a
minute; Grafana shows the rollback as an annotation.
"""

import argparse
import datetime
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATUSES = ("pending", "paid", "shipped", "delivered")
TAGS = ("gift", "express", "fragile", "eu", "priority")
MAX_ID = 100000


def share(name, default):
    """A fraction from 0 to 1 read from the environment."""
    try:
        v = float(os.environ.get(name, default))
    except ValueError:
        sys.exit("demo: %s must be a number from 0 to 1" % name)
    if not 0 <= v <= 1:
        sys.exit("demo: %s must be a number from 0 to 1" % name)
    return v


class Every:
    """True on every round(1/fraction)-th call (never for 0): a share kept exactly."""

    def __init__(self, fraction):
        self.every = round(1 / fraction) if fraction > 0 else 0
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
            return self.every > 0 and self.calls % self.every == 0


def order(n, is_new, diverge):
    cents = 500 + (n * 3779) % 20000
    if diverge:
        cents = (cents * 6 + 2) // 5  # the new service adds VAT: the bug the demo shows
    tags = [TAGS[(n + k) % len(TAGS)] for k in range(3)]
    if is_new:
        tags.reverse()  # a different order; the configuration declares /tags unordered
    return {"id": n, "customer": "customer-%d" % ((n * 31) % 997), "status": STATUSES[n % 4],
            "currency": "EUR", "price": cents / 100,
            "items": [{"sku": "SKU-%d-%d" % (n, k + 1), "qty": 1 + (n + k) % 4}
                      for k in range(1 + n % 3)],
            "tags": tags}


def catalog(n):
    return {"id": n, "name": "article-%d" % n, "stock": (n * 7) % 50}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as ficus's upstream pools expect
    server_version = "orders"

    def log_message(self, fmt, *args):
        pass  # ficus keeps the access log

    def send_json(self, status, obj):
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        cfg = self.server.demo
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            return self.send_json(200, {"status": "ok"})
        if cfg["is_new"] and cfg["errors"]():
            return self.send_json(503, {"error": "temporarily unavailable"})
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        for prefix, make in (("/api/orders/",
                              lambda n: order(n, cfg["is_new"], cfg["is_new"] and cfg["diverge"]())),
                             ("/api/catalog/", catalog)):
            if path.startswith(prefix):
                tail = path[len(prefix):]
                if not tail.isdigit() or not 1 <= int(tail) <= MAX_ID:
                    return self.send_json(404, {"error": "not found"})
                obj = make(int(tail))
                obj["generated_at"] = stamp
                return self.send_json(200, obj)
        return self.send_json(404, {"error": "not found"})


def run_backend(args):
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.demo = {"is_new": args.role == "new", "diverge": Every(share("DEMO_DIVERGE", 0.003)),
                   "errors": Every(share("DEMO_ERRORS", 0.001))}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("demo backend %s on %s:%d" % (args.role, args.host, server.server_address[1]),
          flush=True)
    server.serve_forever()


def run_traffic(args):
    """Sends requests at args.rate per second until stopped; reconnects when ficus is away."""
    target = urllib.parse.urlsplit(args.target)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn, sent, failed = None, 0, 0
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    while args.count == 0 or sent < args.count:
        next_at += interval
        user = "user-%d" % random.randrange(args.users)
        if random.random() < 0.8:
            path = "/api/orders/%d" % random.randrange(1, 1001)
        else:
            path = "/api/catalog/%d" % random.randrange(1, 201)
        try:
            if conn is None:
                conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=10)
            conn.request("GET", path, headers={"x-user-id": user})
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            failed += 1
            if conn is not None:
                conn.close()
            conn = None
        sent += 1
        if sent % 1000 == 0:
            print("traffic: %d sent, %d failed" % (sent, failed), flush=True)
        time.sleep(max(0.0, next_at - time.monotonic()))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backend", help="run a demo backend")
    b.add_argument("--role", choices=("legacy", "new"), required=True)
    b.add_argument("--host", default="0.0.0.0")
    b.add_argument("--port", type=int, required=True)
    t = sub.add_parser("traffic", help="send requests to ficus")
    t.add_argument("--target", default="http://ficus:8080")
    t.add_argument("--rate", type=float, default=5.0, help="requests a second")
    t.add_argument("--users", type=int, default=200)
    t.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    args = p.parse_args()
    return run_backend(args) if args.cmd == "backend" else run_traffic(args)


if __name__ == "__main__":
    sys.exit(main())
