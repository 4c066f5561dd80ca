#!/usr/bin/env python3
"""Measures, on a real three-node etcd on 127.0.0.1, what the fleet client's design
rests on (run by hand: cd tests/data/etcd && python3 measure.py):
  1. a put through one member reaches a watch on another: p50, p99 over 200 puts;
  4. three concurrent compare-and-swaps on one mod_revision: exactly one wins;
  5. the leader is SIGKILLed: when a new one is elected, and whether watches with
     Grpc-Metadata-hasleader on the followers survive and see the next write;
  3. a lease of TTL 2 s: how long after its last keepalive its key is deleted.
"""
import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "integration"))
from harness_etcd import EtcdCluster, b64, prefix_end, unb64  # noqa: E402

class Watch:
    def __init__(self, member, prefix, hasleader=True, start=0):
        self.s = socket.create_connection(("127.0.0.1", member.client_port))
        cr = {"key": b64(prefix), "range_end": b64(prefix_end(prefix)), "prev_kv": False}
        if start: cr["start_revision"] = str(start)
        body = json.dumps({"create_request": cr}).encode()
        h = b"Grpc-Metadata-hasleader: true\r\n" if hasleader else b""
        self.s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\n" + h + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.events = []   # (t, key, value)
        self.msgs = []
        self.closed_at = None
        self.t = threading.Thread(target=self.run, daemon=True); self.t.start()
    def run(self):
        buf = b""
        while True:
            try: d = self.s.recv(65536)
            except OSError: d = b""
            now = time.monotonic()
            if not d:
                self.closed_at = now; return
            buf += d
            for line in buf.split(b"\n")[:-1]:
                i = line.find(b"{")
                if i < 0: continue
                try: j = json.loads(line[i:])
                except ValueError: continue
                self.msgs.append((now, j))
                for ev in j.get("result", {}).get("events", []):
                    self.events.append((now, unb64(ev["kv"]["key"]), unb64(ev["kv"].get("value"))))
            buf = buf.split(b"\n")[-1]

def post(m, path, body, timeout=5):
    req = urllib.request.Request(m.client_url + path, data=json.dumps(body).encode(), method="POST", headers={"Grpc-Metadata-hasleader": "true"})
    with urllib.request.urlopen(req, timeout=timeout) as r: return json.loads(r.read())

workdir = tempfile.TemporaryDirectory(prefix="ficus-etcd-measure-")
c = EtcdCluster(workdir.name, size=3).start()
L = c.leader(); F = [m for m in c.members if m is not L]
# 1. propagation: write on leader, watch on follower
w = Watch(F[0], "/p/")
time.sleep(0.3)
lat = []
for i in range(200):
    t0 = time.monotonic()
    post(F[1], "/v3/kv/put", {"key": b64("/p/k"), "value": b64(str(i))})
    while not any(v == str(i).encode() for _, _, v in w.events[-3:]):
        time.sleep(0.0005)
    lat.append(time.monotonic() - t0)
lat.sort()
print("1. put via follower -> event on other follower's watch, 200 puts: p50 %.1f ms p99 %.1f ms max %.1f ms" % (lat[100]*1e3, lat[197]*1e3, lat[-1]*1e3))
# 4. concurrent CAS
kv = post(L, "/v3/kv/range", {"key": b64("/p/k")})["kvs"][0]
mod = kv["mod_revision"]
res = []
def cas(m, v):
    r = post(m, "/v3/kv/txn", {"compare": [{"key": b64("/p/k"), "target": "MOD", "result": "EQUAL", "mod_revision": mod}],
        "success": [{"request_put": {"key": b64("/p/k"), "value": b64(v)}}], "failure": [{"request_range": {"key": b64("/p/k")}}]})
    res.append((v, r.get("succeeded", False)))
ths = [threading.Thread(target=cas, args=(m, "cas-%d" % i)) for i, m in enumerate(c.members)]
[t.start() for t in ths]; [t.join() for t in ths]
print("4. three concurrent CAS on the same mod_revision:", res)
# 5. leader kill with hasleader watches on both followers
w2 = Watch(F[1], "/p/")
time.sleep(0.3)
tk = time.monotonic()
L.kill()
newL = c.wait_new_leader(L)
t_leader = time.monotonic() - tk
# write after re-election
post(newL, "/v3/kv/put", {"key": b64("/p/k"), "value": b64("after")})
time.sleep(0.5)
def fate(w):
    errs = [j for _, j in w.msgs if "error" in j]
    got = any(v == b"after" for _, _, v in w.events)
    return "closed=%s errors=%s got_after=%s" % (None if w.closed_at is None else "%.2fs" % (w.closed_at - tk), [e["error"].get("message") for e in errs], got)
print("5. leader SIGKILL: new leader after %.2fs; follower watches: %s | %s" % (t_leader, fate(w), fate(w2)))
L.start(); c.wait_healthy(members=c.members)
# 3. lease expiry -> DELETE event
w3 = Watch(c.members[0], "/i/")
time.sleep(0.3)
lid = post(c.members[0], "/v3/lease/grant", {"TTL": 2})["ID"]
post(c.members[0], "/v3/kv/put", {"key": b64("/i/x"), "value": b64("v"), "lease": lid})
t0 = time.monotonic()
post(c.members[0], "/v3/lease/keepalive", {"ID": lid})
t_ka = time.monotonic()
while not any(k == b"/i/x" and v == b"" for _, k, v in w3.events):
    time.sleep(0.01)
    if time.monotonic() - t0 > 20: break
dels = [t for t, k, v in w3.events if k == b"/i/x" and v == b""]
print("3. lease TTL 2s, last keepalive -> DELETE event after %.2fs" % (dels[0] - t_ka if dels else -1))
c.close()
workdir.cleanup()
