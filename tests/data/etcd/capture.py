#!/usr/bin/env python3
"""Captures real answers of etcd's v3 JSON gateway (the etcd-server package, 3.4)
into the *.http files beside this script: each file is one HTTP response exactly
as it came off the socket (head, chunked framing, trailers), read with a raw
socket. tests/unit/test_etcdv3.c parses them through ficus's own HTTP/1.1 head
and chunk decoders and then the etcdv3 module.

Run it by hand when etcd changes (the files are checked in; ids, dates and
revisions differ at every run, the shapes do not):

    cd tests/data/etcd && python3 capture.py

It starts a single node and a three-node cluster with tests/integration/harness_etcd.py
on 127.0.0.1 and stops them before it exits.
"""

import json
import os
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "integration"))

from harness_etcd import EtcdCluster, b64, prefix_end  # noqa: E402

LEADER = b"Grpc-Metadata-hasleader: true\r\n"


def request(port, path, body=None, method="POST", extra=b""):
    """Sends one request on a new connection; returns the socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s" % (method.encode(), path.encode(), port,
                                                            extra)
    if body is not None:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
    s.sendall(head + b"\r\n" + data)
    return s


def complete(raw):
    """Is raw one complete response (Content-Length or chunked framing)?"""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = raw[:end].decode("latin-1").lower()
    body = raw[end + 4:]
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name == "content-length":
            return len(body) >= int(value)
    if "transfer-encoding: chunked" in head:
        i = 0
        while True:
            j = body.find(b"\r\n", i)
            if j < 0:
                return False
            size = int(body[i:j].split(b";")[0], 16)
            if size == 0:
                return body.find(b"\r\n\r\n", j) >= 0 or body[j:j + 4] == b"\r\n\r\n"
            i = j + 2 + size + 2
            if i > len(body):
                return False
    return False


def read_response(s, timeout=10):
    raw = b""
    deadline = time.monotonic() + timeout
    while not complete(raw):
        s.settimeout(max(0.01, deadline - time.monotonic()))
        d = s.recv(65536)
        if not d:
            break
        raw += d
    s.close()
    return raw


def read_for(s, seconds, until=None):
    """Reads what comes within seconds (or until the peer closes, or until(raw))."""
    raw = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not d:
            break
        raw += d
        if until is not None and until(raw):
            break
    return raw


def save(name, raw):
    with open(os.path.join(HERE, name + ".http"), "wb") as f:
        f.write(raw)
    print("%-28s %5d bytes  %s" % (name, len(raw), raw.split(b"\r\n", 1)[0].decode()))


def unary(port, name, path, body=None, method="POST", extra=LEADER):
    raw = read_response(request(port, path, body, method, extra))
    save(name, raw)
    return raw


def body_json(raw):
    """The JSON answer of a Content-Length response."""
    return json.loads(raw[raw.find(b"\r\n\r\n") + 4:])


def single_node(workdir):
    c = EtcdCluster(os.path.join(workdir, "single"), size=1)
    os.makedirs(c.workdir)
    c.start()
    m = c.members[0]
    p = m.client_port
    P = "/ficus/prod/"
    try:
        unary(p, "version", "/version", None, "GET", b"")
        unary(p, "range-empty", "/v3/kv/range",
              {"key": b64(P), "range_end": b64(prefix_end(P))})
        route = {"v": 1, "new_percent": 25, "shadow_percent": 100}
        unary(p, "put", "/v3/kv/put",
              {"key": b64(P + "routes/orders"), "value": b64(json.dumps(route))})
        lease = body_json(unary(p, "lease-grant", "/v3/lease/grant", {"TTL": "10"}))["ID"]
        unary(p, "put-lease", "/v3/kv/put", {"key": b64(P + "instances/i-1"),
                                             "value": b64('{"v":1}'), "lease": lease})
        unary(p, "range-prefix", "/v3/kv/range",
              {"key": b64(P), "range_end": b64(prefix_end(P))})
        unary(p, "range-limit", "/v3/kv/range",
              {"key": b64(P), "range_end": b64(prefix_end(P)), "limit": "1"})
        kv = m.post("/v3/kv/range", {"key": b64(P + "routes/orders")})["kvs"][0]
        mod = kv["mod_revision"]
        route["new_percent"] = 50
        unary(p, "txn-success", "/v3/kv/txn", {
            "compare": [{"key": b64(P + "routes/orders"), "target": "MOD", "result": "EQUAL",
                         "mod_revision": mod}],
            "success": [{"request_put": {"key": b64(P + "routes/orders"),
                                         "value": b64(json.dumps(route))}}],
            "failure": [{"request_range": {"key": b64(P + "routes/orders")}}]})
        unary(p, "txn-failure", "/v3/kv/txn", {
            "compare": [{"key": b64(P + "routes/orders"), "target": "MOD", "result": "EQUAL",
                         "mod_revision": mod}],
            "success": [{"request_put": {"key": b64(P + "routes/orders"),
                                         "value": b64('{"v":1,"new_percent":75}')}}],
            "failure": [{"request_range": {"key": b64(P + "routes/orders")}}]})
        # the election: the first create wins, the second sees the holder
        for name in ("txn-create-success", "txn-create-failure"):
            unary(p, name, "/v3/kv/txn", {
                "compare": [{"key": b64(P + "ramp/driver"), "target": "CREATE",
                             "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": b64(P + "ramp/driver"), "value": b64("i-1"),
                                             "lease": lease}}],
                "failure": [{"request_range": {"key": b64(P + "ramp/driver")}}]})
        unary(p, "lease-keepalive", "/v3/lease/keepalive", {"ID": lease})
        unary(p, "lease-keepalive-unknown", "/v3/lease/keepalive", {"ID": "12345"})
        unary(p, "lease-revoke", "/v3/lease/revoke", {"ID": lease})
        unary(p, "lease-revoke-unknown", "/v3/lease/revoke", {"ID": lease})
        unary(p, "error-lease-not-found", "/v3/kv/put",
              {"key": b64(P + "x"), "value": b64("x"), "lease": "12345"})
        save("error-bad-json", read_response(_raw(p, "/v3/kv/range", b'{"key":')))
        save("error-no-key", read_response(_raw(p, "/v3/kv/range", b"{}")))
        save("error-not-found", read_response(_raw(p, "/v3/nothing", b"{}")))

        # Watch: created, a put with prev_kv, a delete, a txn of two puts, then the
        # member stops (SIGTERM) under the watch.
        rev = int(m.post("/v3/kv/range", {"key": b64(P)})["header"]["revision"])
        s = request(p, "/v3/watch", {"create_request": {
            "key": b64(P), "range_end": b64(prefix_end(P)), "start_revision": str(rev + 1),
            "prev_kv": True, "fragment": True}})
        raw = read_for(s, 5, until=lambda r: b'"created":true' in r)
        c.put(P + "routes/orders", json.dumps({"v": 1, "new_percent": 60}))
        raw += read_for(s, 5, until=lambda r: r.count(b'"events"') >= 1)
        m.post("/v3/kv/deleterange", {"key": b64(P + "routes/orders")})
        raw += read_for(s, 5, until=lambda r: r.count(b'"events"') >= 2)
        m.post("/v3/kv/txn", {"success": [
            {"request_put": {"key": b64(P + "routes/a"), "value": b64('{"v":1}')}},
            {"request_put": {"key": b64(P + "routes/b"), "value": b64("not json")}}]})
        raw += read_for(s, 5, until=lambda r: r.count(b'"events"') >= 3)
        m.stop()
        raw += read_for(s, 10)
        s.close()
        save("watch-stopped", raw)
        m.start()
        c.wait_healthy()

        # Watch from a compacted revision.
        c.compact()
        s = request(p, "/v3/watch", {"create_request": {
            "key": b64(P), "range_end": b64(prefix_end(P)), "start_revision": "2"}}, extra=LEADER)
        save("watch-compacted", read_for(s, 5, until=lambda r: b"compact_revision" in r))
        s.close()
        # A range that is empty: created and canceled at once, with a reason.
        s = request(p, "/v3/watch", {"create_request": {"key": b64(P + "z"),
                                                        "range_end": b64(P + "a")}}, extra=LEADER)
        save("watch-bad-range", read_for(s, 5, until=lambda r: b"cancel_reason" in r))
        s.close()
        # A watch whose member is killed: the body ends without its last chunk.
        s = request(p, "/v3/watch", {"create_request": {"key": b64(P),
                                                        "range_end": b64(prefix_end(P))}},
                    extra=LEADER)
        raw = read_for(s, 5, until=lambda r: b'"created":true' in r)
        m.kill()
        raw += read_for(s, 5)
        save("watch-killed", raw)
        s.close()
    finally:
        c.close()


def _raw(port, path, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %d\r\n\r\n"
              % (path.encode(), port, LEADER, len(data)) + data)
    return s


def three_nodes(workdir):
    c = EtcdCluster(os.path.join(workdir, "three"), size=3)
    os.makedirs(c.workdir)
    c.start()
    P = "/ficus/prod/"
    try:
        leader = c.leader()
        f1, f2 = [m for m in c.members if m is not leader]
        lease = f1.post("/v3/lease/grant", {"TTL": "30"})["ID"]
        s = request(f1.client_port, "/v3/watch", {"create_request": {
            "key": b64(P), "range_end": b64(prefix_end(P))}}, extra=LEADER)
        raw = read_for(s, 5, until=lambda r: b'"created":true' in r)
        leader.kill()
        f2.kill()
        raw += read_for(s, 10, until=lambda r: b"no leader" in r)
        raw += read_for(s, 0.5)
        save("watch-no-leader", raw)
        s.close()
        save("error-no-leader", read_response(_raw(f1.client_port, "/v3/kv/range",
                                                   json.dumps({"key": b64(P)}).encode())))
        save("lease-keepalive-no-leader", read_response(
            _raw(f1.client_port, "/v3/lease/keepalive", json.dumps({"ID": lease}).encode())))
    finally:
        c.close()


def main():
    with tempfile.TemporaryDirectory(prefix="ficus-etcd-capture-") as d:
        single_node(d)
        three_nodes(d)


if __name__ == "__main__":
    main()
