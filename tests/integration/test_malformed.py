"""Every row of tests/data/http1-requests.tsv against the real binary.

The table is the repository's own copy of the project's shared table (every row of the
shared copy, then rows of ficus's own below a marked line); when the shared copy sits
beside this checkout, a test checks that each of its rows is here unchanged.

A "400" row must be refused with a 4xx (or 501/505), the connection closed, and
nothing of it reaching the backend. An "ok" row must reach the backend with the
right body and be answered 200."""

import time
import unittest

from harness import Client, FicusTestCase, shared_testdata, testdata, wait_until


def unescape(s):
    """Decodes the C-style escapes of the table (\\r \\n \\t \\\\ \\xHH, \\0) into bytes."""
    out = bytearray()
    i = 0
    simple = {"r": 13, "n": 10, "t": 9, "\\": 92, "0": 0, "a": 7, "b": 8, "f": 12, "v": 11,
              '"': 34, "'": 39}
    while i < len(s):
        ch = s[i]
        if ch != "\\":
            out += ch.encode("latin-1")
            i += 1
            continue
        nxt = s[i + 1]
        if nxt == "x":
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        elif nxt in simple:
            out.append(simple[nxt])
            i += 2
        else:
            raise ValueError("unknown escape \\%s in %r" % (nxt, s))
    return bytes(out)


def load_rows(path=None):
    rows = []
    with open(path or testdata("http1-requests.tsv"), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            name, expected, raw = line.split("\t", 2)
            rows.append((name, expected, unescape(raw)))
    return rows


def request_host(raw):
    """The Host value of a raw request head, or None when it has none."""
    head = raw.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"host":
            return value.strip(b" \t").decode("latin-1")
    return None


def expected_body(raw):
    """The body the backend must see for an ok row: decoded from the raw request."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        body = b""
        while True:
            line, _, rest = rest.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                return body
            body += rest[:size]
            rest = rest[size + 2:]
    return rest


class MalformedRequests(FicusTestCase):
    def test_unescape(self):
        self.assertEqual(unescape(r"a\r\n\t\x0b\x00\\"), b"a\r\n\t\x0b\x00\\")

    def test_table_is_complete(self):
        rows = load_rows()
        self.assertGreaterEqual(len(rows), 30)
        self.assertEqual(len({r[0] for r in rows}), len(rows), "row names are unique")
        for name, expected, _ in rows:
            self.assertIn(expected, ("400", "ok"), name)

    def test_shared_rows_are_all_here(self):
        shared = shared_testdata("http1-requests.tsv")
        if shared is None:
            self.skipTest("no shared copy beside this checkout")
        ours = {r[0]: r for r in load_rows()}
        for row in load_rows(shared):
            self.assertEqual(ours.get(row[0]), row, "shared row %s differs or is missing" % row[0])

    def test_every_row(self):
        backend = self.backend(name="legacy")
        fx = self.ficus(backend, backend)
        for name, expected, raw in load_rows():
            with self.subTest(row=name, expected=expected):
                backend.clear()
                with Client(fx.port) as c:
                    c.send(raw)
                    if expected == "400":
                        r = c.read_response(timeout=5)
                        self.assertTrue(400 <= r.status < 500 or r.status in (501, 505),
                                        "%s: got status %d" % (name, r.status))
                        closed, extra = c.wait_closed(5)
                        self.assertTrue(closed, "%s: connection left open" % name)
                        self.assertEqual(extra, b"", "%s: bytes after the refusal" % name)
                        # Give a wrongly forwarded request time to arrive.
                        time.sleep(0.1)
                        self.assertEqual(backend.requests, [],
                                         "%s: a request reached the backend" % name)
                        self.assertEqual(backend.partial, [],
                                         "%s: a request head reached the backend" % name)
                        self.assertEqual(backend.bytes_received, 0,
                                         "%s: bytes reached the backend" % name)
                    else:
                        r = c.read_response(timeout=5)
                        self.assertEqual(r.status, 200, name)
                        wait_until(lambda: backend.requests, 5, what="the request at backend")
                        self.assertEqual(len(backend.requests), 1, name)
                        got = backend.requests[0]
                        self.assertEqual(got.method, "POST")
                        self.assertEqual(got.target, "/echo")
                        # Upstream is always HTTP/1.1 with a Host: the client's, or for an
                        # HTTP/1.0 request without one, the backend's own host and port.
                        self.assertEqual(got.version, "HTTP/1.1", name)
                        want_host = request_host(raw) or "127.0.0.1:%d" % backend.port
                        self.assertEqual(got.header("host"), want_host, name)
                        self.assertEqual(got.body, expected_body(raw), name)
                        self.assertEqual(r.body, expected_body(raw), name)
                        self.assertTrue(c.is_open(), "%s: a good request closed the connection"
                                        % name)
        self.assertIn("status=", fx.stdout())

    def test_access_log_escapes_the_target(self):
        """A quote, a backslash or a byte outside ASCII in a target cannot forge or break
        the access log line: they are written as \\", \\\\ and \\xHH."""
        backend = self.backend(name="legacy")
        fx = self.ficus(backend, backend)
        with Client(fx.port) as c:
            c.send(b'GET /echo?q="x"\\y\xff&z=1 HTTP/1.1\r\nHost: x\r\n\r\n')
            self.assertEqual(c.read_response(timeout=5).status, 200)
        wait_until(lambda: backend.requests, 5, what="the request at backend")
        self.assertEqual(backend.requests[0].target.encode("latin-1"),
                         b'/echo?q="x"\\y\xff&z=1', "the target goes upstream unchanged")
        lines = fx.wait_access_lines(1)
        self.assertIn('target="/echo?q=\\"x\\"\\\\y\\xff&z=1" ', lines[0])
        # The line still splits into key=value fields where the target's quotes end.
        self.assertRegex(lines[0], r' target="(?:[^"\\]|\\.)*" route=all backend=legacy ')


if __name__ == "__main__":
    unittest.main()
