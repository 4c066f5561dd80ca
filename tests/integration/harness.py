"""Integration harness: the real ficus binary against real backends on loopback.

Python standard library only. Everything here has a deadline: socket waits use
timeouts, process waits use timeouts, and FicusTestCase arms a per-test alarm
(a watchdog) so that no test can hang the suite.

Pieces:
  free_port()            a free TCP port on 127.0.0.1 (bind port 0, read, close)
  Backend                an HTTP/1.1 server in background threads, raw sockets,
                         recording every request; handlers below give fault modes
  Ficus                  writes a config, runs the binary, stops it with SIGTERM,
                         reloads with SIGHUP, checks its stderr for error lines
                         and sanitizer reports
  Client                 raw-socket client: send bytes, read one response with a
                         deadline, tell whether the connection was closed
  FicusTestCase          unittest base class: watchdog, cleanup, log checks

Environment:
  FICUS_BIN         the binary (ctest sets it to the build's; default: build/ficus of this
                    source tree)
  FICUS_SANITIZE    ON for an ASan/UBSan build (stricter log checks, slower limits)
  FICUS_SOURCE_DIR  the source tree (test data is found beside it)
  FICUS_TEST_OUTPUT where to keep configs and logs of each run (default: a temp dir,
                    removed when the test passes)
"""

import errno
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------
# environment


def ficus_bin():
    return os.environ.get("FICUS_BIN") or os.path.join(source_dir(), "build", "ficus")


def sanitized():
    return os.environ.get("FICUS_SANITIZE", "").strip().upper() in ("ON", "1", "TRUE", "YES", "Y")


def source_dir():
    return os.environ.get("FICUS_SOURCE_DIR") or os.path.normpath(os.path.join(HERE, "..", ".."))


def testdata(name):
    """A file of the repository's own test data (tests/data)."""
    return os.path.join(source_dir(), "tests", "data", name)


def shared_testdata(name):
    """The project's shared copy of a test data file, when this checkout has one beside it
    (a clone alone has none: None then). Tests read the repository's own copy; this is only
    for checking that the two agree."""
    c = os.path.normpath(os.path.join(source_dir(), "..", "shared", "testdata", name))
    return c if os.path.exists(c) else None


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Polls pred() until it is true; raises AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# byte streams


class Closed(Exception):
    """The peer closed (or reset) the connection before the expected bytes came."""

    def __init__(self, msg, partial=b""):
        super().__init__(msg)
        self.partial = partial


class SockReader:
    """Buffered reads from a socket with one deadline per call."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def _fill(self, deadline):
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, sep, deadline, limit=1 << 20):
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError("no %r within %d bytes" % (sep, limit))
            start = max(0, len(self.buf) - len(sep) + 1)
            if not self._fill(deadline):
                raise Closed("closed while waiting for %r" % sep, bytes(self.buf))

    def read_exact(self, n, deadline, sink=None):
        """Reads n bytes; gives them to sink (in pieces) or returns them."""
        out = [] if sink is None else None
        while n > 0:
            if not self.buf and not self._fill(deadline):
                raise Closed("closed with %d bytes missing" % n, b"".join(out or []))
            take = min(n, len(self.buf))
            piece = bytes(self.buf[:take])
            del self.buf[:take]
            n -= take
            if sink is None:
                out.append(piece)
            else:
                sink(piece)
        return b"".join(out) if sink is None else b""

    def read_to_eof(self, deadline, sink=None):
        out = []
        while True:
            if self.buf:
                piece = bytes(self.buf)
                self.buf.clear()
                if sink is None:
                    out.append(piece)
                else:
                    sink(piece)
            if not self._fill(deadline):
                return b"".join(out)


def parse_head(raw):
    """Splits a raw head into (start line parts, [(name, value)]). Tolerant: it is
    for reading what the proxy produced, which the tests check separately."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    start = lines[0]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return start, headers


class Headers:
    """An ordered, case-insensitive multi-map of header fields."""

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def get(self, name, default=None):
        n = name.lower()
        for k, v in self.pairs:
            if k.lower() == n:
                return v
        return default

    def get_all(self, name):
        n = name.lower()
        return [v for k, v in self.pairs if k.lower() == n]

    def __contains__(self, name):
        return self.get(name) is not None

    def names(self):
        return [k.lower() for k, _ in self.pairs]

    def __repr__(self):
        return "Headers(%r)" % self.pairs


def read_chunked(reader, deadline, sink, max_line=8192):
    """Reads a chunked body; gives data to sink; returns (trailers, chunk sizes)."""
    sizes = []
    while True:
        line = reader.read_until(b"\r\n", deadline, limit=max_line)
        size_txt = line[:-2].split(b";", 1)[0].strip()
        size = int(size_txt, 16)
        sizes.append(size)
        if size == 0:
            break
        reader.read_exact(size, deadline, sink)
        crlf = reader.read_exact(2, deadline)
        if crlf != b"\r\n":
            raise ValueError("chunk data not followed by CRLF: %r" % crlf)
    trailers = []
    while True:
        line = reader.read_until(b"\r\n", deadline, limit=max_line)
        if line == b"\r\n":
            return trailers, sizes
        trailers.append(line[:-2])


class BodySink:
    """Collects a body, keeping at most keep bytes but counting and checksumming all."""

    def __init__(self, keep=16 << 20):
        self.keep = keep
        self.parts = []
        self.kept = 0
        self.length = 0
        self.crc = 0

    def __call__(self, piece):
        self.length += len(piece)
        self.crc = zlib.crc32(piece, self.crc)
        if self.kept < self.keep:
            piece = piece[: self.keep - self.kept]
            self.parts.append(piece)
            self.kept += len(piece)

    def data(self):
        return b"".join(self.parts)


def pattern_block(size=65536, seed=0):
    """A deterministic block of bytes used for generated bodies."""
    out = bytearray()
    x = 0x9E3779B9 ^ seed
    while len(out) < size:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        out += struct.pack("<I", x)
    return bytes(out[:size])


def pattern_stream(total, block=None):
    """Yields total bytes of the repeated pattern block."""
    block = block or pattern_block()
    sent = 0
    while sent < total:
        n = min(len(block), total - sent)
        yield block if n == len(block) else block[:n]
        sent += n


def pattern_crc(total, block=None):
    crc = 0
    for piece in pattern_stream(total, block):
        crc = zlib.crc32(piece, crc)
    return crc


# ---------------------------------------------------------------------------------------
# backend


class Request:
    """One request as a backend received it."""

    def __init__(self, conn_id, index, raw_head):
        self.conn_id = conn_id  # which backend connection (accept order, from 1)
        self.index = index  # which request on that connection (from 0)
        self.raw_head = raw_head
        start, pairs = parse_head(raw_head)
        parts = start.split(" ")
        self.method = parts[0] if parts else ""
        self.target = parts[1] if len(parts) > 1 else ""
        self.version = parts[2] if len(parts) > 2 else ""
        self.headers = Headers(pairs)
        self.body = b""  # the first BodySink.keep bytes
        self.body_len = 0
        self.body_crc = 0
        self.chunk_sizes = None  # for a chunked request: the sizes it came in
        self.complete = False
        self.received_at = time.monotonic()

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def __repr__(self):
        return "<Request %s %s conn=%d #%d body=%d>" % (
            self.method, self.target, self.conn_id, self.index, self.body_len)


class Responder:
    """What a handler uses to answer on the backend connection."""

    def __init__(self, backend, sock):
        self.backend = backend
        self.sock = sock
        self.closed = False

    def send(self, data):
        self.sock.sendall(data)

    def respond(self, status=200, headers=None, body=b"", reason=None, chunked=False):
        """Sends a complete response. headers: list of (name, value); Content-Length is
        added unless given or chunked (then body may be a list of chunks)."""
        reason = reason or {200: "OK", 204: "No Content", 304: "Not Modified",
                            404: "Not Found", 500: "Internal Server Error"}.get(status, "X")
        headers = list(headers or [])
        names = [k.lower() for k, _ in headers]
        if chunked:
            if "transfer-encoding" not in names:
                headers.append(("Transfer-Encoding", "chunked"))
        elif "content-length" not in names and body is not None:
            headers.append(("Content-Length", str(len(body))))
        head = "HTTP/1.1 %d %s\r\n" % (status, reason)
        head += "".join("%s: %s\r\n" % (k, v) for k, v in headers) + "\r\n"
        out = head.encode("latin-1")
        if chunked:
            chunks = body if isinstance(body, list) else [body]
            for c in chunks:
                if c:
                    out += b"%x\r\n" % len(c) + c + b"\r\n"
            out += b"0\r\n\r\n"
        elif body:
            out += body
        self.send(out)

    def send_and_close(self, data):
        """Sends data and the FIN in one TCP segment (MSG_MORE holds the data until the
        shutdown), so that the proxy gets the last response and the close together."""
        self.sock.send(data, socket.MSG_MORE)
        self.sock.shutdown(socket.SHUT_WR)
        self.close()

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def reset(self):
        """Closes with a TCP RST (SO_LINGER 0)."""
        if not self.closed:
            self.closed = True
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self.sock.close()


def echo(req, out):
    """200 with the request body, and what was received in x-seen-* headers."""
    extra = [("Content-Type", "application/octet-stream"),
             ("X-Backend", out.backend.name),
             ("X-Seen-Method", req.method),
             ("X-Seen-Target", req.target),
             ("X-Seen-Body-Length", str(req.body_len))]
    if req.method == "HEAD":
        out.send(("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (
            len(req.body), "".join("%s: %s\r\n" % kv for kv in extra))).encode("latin-1"))
        return None
    out.respond(200, extra, req.body)
    return None


def respond_with(status=200, headers=None, body=b"", chunked=False):
    def handler(req, out):
        out.respond(status, headers, body, chunked=chunked)
    return handler


def delay(ms, inner=echo):
    """Answers after ms milliseconds."""
    def handler(req, out):
        if out.backend.stopping.wait(ms / 1000.0):
            return "close"
        return inner(req, out)
    return handler


def stall(req, out):
    """Never answers (until the backend stops)."""
    out.backend.stopping.wait(120)
    return "close"


def reset_mid_response(body_sent=1000, total=100000):
    """Starts a Content-Length response, then resets the connection."""
    def handler(req, out):
        out.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total + b"r" * body_sent)
        time.sleep(0.05)
        out.reset()
        return "close"
    return handler


def close_mid_chunked(chunks=(b"hello ", b"world"), rst=False):
    """Sends some chunks of a chunked response, then closes (FIN, or RST)."""
    def handler(req, out):
        data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        for c in chunks:
            data += b"%x\r\n" % len(c) + c + b"\r\n"
        out.send(data)
        time.sleep(0.05)
        out.reset() if rst else out.close()
        return "close"
    return handler


def close_mid_length(body_sent=100, total=1000):
    """Sends part of a Content-Length body, then closes cleanly (FIN)."""
    def handler(req, out):
        out.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total + b"c" * body_sent)
        time.sleep(0.05)
        out.close()
        return "close"
    return handler


def close_after_response(delay_ms=0, inner=echo):
    """Answers (keep-alive, no Connection: close) and closes the idle connection
    delay_ms later, the way a backend with a short keep-alive timeout does."""
    def handler(req, out):
        inner(req, out)
        if delay_ms <= 0:
            out.close()
            return "close"
        time.sleep(delay_ms / 1000.0)
        out.close()
        return "close"
    return handler


def respond_and_close(req, out):
    """200 with the request body and, in the same segment, the close: no
    Connection: close warns the proxy, which may already be reusing the connection."""
    out.send_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(req.body) + req.body)
    return "close"


def garbage(req, out):
    out.send(b"this is not http at all\r\n\r\n")
    time.sleep(0.05)
    out.close()
    return "close"


def cl_and_te(req, out):
    """An ambiguous response: both Content-Length and Transfer-Encoding."""
    out.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\nhello\r\n0\r\n\r\n")
    return None


def chunked_response(chunks, trailers=()):
    def handler(req, out):
        data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        for c in chunks:
            data += b"%x\r\n" % len(c) + c + b"\r\n"
        data += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
        out.send(data)
    return handler


def slow_body(pieces=5, piece=b"slow.", interval=0.1, chunked=True):
    """Sends the body a piece at a time."""
    def handler(req, out):
        total = pieces * len(piece)
        if chunked:
            out.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            out.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(pieces):
            if out.backend.stopping.wait(interval):
                return "close"
            out.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            out.send(b"0\r\n\r\n")
    return handler


def huge(total, chunked=False):
    """Streams total generated bytes (pattern_stream), never holding them."""
    def handler(req, out):
        if chunked:
            out.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in pattern_stream(total):
                out.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            out.send(b"0\r\n\r\n")
        else:
            out.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            for piece in pattern_stream(total):
                out.send(piece)
    return handler


def status_only(status, headers=()):
    """A body-less answer (204, 304, or anything to a HEAD): the head alone."""
    def handler(req, out):
        reason = {204: "No Content", 304: "Not Modified"}.get(status, "OK")
        out.send(("HTTP/1.1 %d %s\r\n%s\r\n" % (
            status, reason, "".join("%s: %s\r\n" % kv for kv in headers))).encode("latin-1"))
    return handler


class Backend:
    """A real HTTP/1.1 server on 127.0.0.1, one thread per connection.

    handler(req, responder) answers each complete request; it returns None to keep
    the connection (unless the request said close) or "close" to end it. Every
    request is recorded in .requests (complete ones) or .partial (a head whose body
    never finished). .bytes_received counts every byte read from any connection."""

    def __init__(self, handler=None, name="backend", keep_body=16 << 20, backlog=128,
                 accept=True, ssl_context=None, host="127.0.0.1", port=0):
        self.handler = handler or echo
        # ssl_context (server side): every connection is TLS. .tls_handshakes records
        # (session_reused, sni) per finished handshake, .tls_failures each failure.
        self.ssl_context = ssl_context
        self.tls_handshakes = []
        self.tls_failures = []
        if ssl_context is not None:
            def record_sni(sock, name, ctx):
                sock.ficus_sni = name
            ssl_context.sni_callback = record_sni
        self.name = name
        self.keep_body = keep_body
        self.lock = threading.Lock()
        self.requests = []
        self.partial = []
        self.connections = 0
        self.bytes_received = 0
        self.errors = []
        self.stopping = threading.Event()
        self.sockets = set()
        self.threads = []
        # host: any address of 127/8 (all loopback on Linux) for fleets of servers;
        # port: 0 for a free one, or a given one (several hosts may share a port).
        self.host = host
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(backlog)
        self.port = self.lsock.getsockname()[1]
        self.accept_thread = None
        if accept:
            self.start_accepting()

    def start_accepting(self):
        """Starts taking connections (a Backend made with accept=False holds them in
        its accept queue until then, and drops SYNs once the queue is full)."""
        if self.accept_thread is None:
            self.accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                                  name="backend-%s-accept" % self.name)
            self.accept_thread.start()

    @property
    def url(self):
        return "%s://%s:%d" % ("https" if self.ssl_context else "http", self.host, self.port)

    def _tls_wrap(self, s):
        """Server-side handshake; returns the TLS socket or None when it failed."""
        try:
            s.settimeout(10)
            t = self.ssl_context.wrap_socket(s, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.tls_failures.append(repr(e))
                self.sockets.discard(s)
            s.close()
            return None
        with self.lock:
            self.tls_handshakes.append((t.session_reused, getattr(t, "ficus_sni", None)))
            self.sockets.discard(s)
            self.sockets.add(t)
        return t

    def set_handler(self, handler):
        self.handler = handler

    def _accept_loop(self):
        try:
            self.lsock.settimeout(0.1)
        except OSError:  # stopped before this thread ran
            return
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
                conn_id = self.connections
                self.sockets.add(s)
            t = threading.Thread(target=self._serve, args=(s, conn_id), daemon=True,
                                 name="backend-%s-%d" % (self.name, conn_id))
            self.threads.append(t)
            t.start()

    def _count(self, piece_len):
        with self.lock:
            self.bytes_received += piece_len

    def _serve(self, s, conn_id):
        if self.ssl_context is not None:
            s = self._tls_wrap(s)
            if s is None:
                return
        reader = SockReader(s)
        orig_fill = reader._fill

        def counting_fill(deadline):
            before = len(reader.buf)
            ok = orig_fill(deadline)
            if ok:
                self._count(len(reader.buf) - before)
            return ok

        reader._fill = counting_fill
        out = Responder(self, s)
        index = 0
        try:
            while not self.stopping.is_set() and not out.closed:
                deadline = time.monotonic() + 120
                try:
                    if not reader.buf and not reader._fill(deadline):
                        return  # closed between requests
                    raw = reader.read_until(b"\r\n\r\n", deadline, limit=1 << 20)
                except (Closed, socket.timeout, OSError):
                    return
                req = Request(conn_id, index, raw)
                index += 1
                sink = BodySink(self.keep_body)
                try:
                    te = (req.header("transfer-encoding") or "").lower()
                    cl = req.header("content-length")
                    if "chunked" in te:
                        _, req.chunk_sizes = read_chunked(reader, deadline, sink)
                    elif cl is not None:
                        reader.read_exact(int(cl), deadline, sink)
                except (Closed, socket.timeout, OSError, ValueError):
                    req.body, req.body_len, req.body_crc = sink.data(), sink.length, sink.crc
                    with self.lock:
                        self.partial.append(req)
                    return
                req.body, req.body_len, req.body_crc = sink.data(), sink.length, sink.crc
                req.complete = True
                with self.lock:
                    self.requests.append(req)
                try:
                    action = self.handler(req, out)
                except OSError:
                    return  # the proxy went away while we answered
                if action == "close" or "close" in (req.header("connection") or "").lower():
                    return
        except Exception as e:  # recorded for the test to see, never silent
            self.errors.append(repr(e))
        finally:
            out.close()
            with self.lock:
                self.sockets.discard(s)

    @property
    def request_connections(self):
        """How many connections carried at least one request (readiness probes that
        connect and close do not count)."""
        with self.lock:
            return len({r.conn_id for r in self.requests + self.partial})

    def wait_requests(self, n, timeout=10):
        wait_until(lambda: len(self.requests) >= n, timeout,
                   what="%d requests at backend %s (have %d)" % (n, self.name, len(self.requests)))
        return self.requests[:n]

    def last(self):
        with self.lock:
            return self.requests[-1] if self.requests else None

    def clear(self):
        with self.lock:
            self.requests = []
            self.partial = []
            self.bytes_received = 0

    def close(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.accept_thread is not None:
            self.accept_thread.join(5)
        for t in self.threads:
            t.join(2)


# ---------------------------------------------------------------------------------------
# ficus


SANITIZER_RE = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer|MemorySanitizer)"
    r"|runtime error:|UndefinedBehaviorSanitizer|SUMMARY: (Address|Undefined|Leak)")
ERROR_LINE_RE = re.compile(r"\blevel=error\b")


def deep_merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v
    return base


class Ficus:
    """The real binary with a generated configuration.

    legacy/new: Backend objects or URLs. config: merged over the defaults (listen on
    a free port, one worker, backends legacy/new, one catch-all route). allow_errors:
    regexes of level=error lines the test expects."""

    def __init__(self, legacy=None, new=None, config=None, log_level="info", allow_errors=(),
                 workdir=None, name="ficus"):
        self.port = free_port()
        self.name = name
        self.workdir = workdir or make_workdir(name)
        self.config_path = os.path.join(self.workdir, "ficus.json")
        self.stdout_path = os.path.join(self.workdir, "stdout.log")
        self.stderr_path = os.path.join(self.workdir, "stderr.log")
        self.log_level = log_level
        self.allow_errors = [re.compile(p) for p in allow_errors]
        self.proc = None
        self.exit_code = None
        self.legacy = legacy
        self.new = new
        self.config = self.default_config()
        if config:
            deep_merge(self.config, config)

    def _url(self, b, fallback_port):
        if b is None:
            return "http://127.0.0.1:%d" % fallback_port
        return b if isinstance(b, str) else b.url

    def default_config(self):
        return {
            "listen": "127.0.0.1:%d" % self.port,
            "workers": 1,
            # Never the default admin port: several instances run side by side.
            "admin": {"address": "127.0.0.1:%d" % free_port()},
            "backends": {
                "legacy": {"url": self._url(self.legacy, free_port())},
                "new": {"url": self._url(self.new, free_port())},
            },
            "routes": [{"name": "all", "new_percent": 0}],
            "timeouts": {"connect_ms": 2000, "upstream_ms": 10000, "client_idle_ms": 10000,
                         "drain_ms": 5000},
        }

    def write_config(self, cfg=None, text=None):
        """Writes the file atomically (a reader never sees half of it)."""
        if text is None:
            text = json.dumps(cfg if cfg is not None else self.config, indent=2)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def env(self):
        env = dict(os.environ)
        if sanitized():
            opts = env.get("ASAN_OPTIONS", "")
            if "detect_leaks" not in opts:
                opts = (opts + ":" if opts else "") + "detect_leaks=1"
            env["ASAN_OPTIONS"] = opts
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        env.pop("FICUS_LOG_LEVEL", None)
        return env

    def start(self, timeout=None):
        timeout = timeout or (20 if sanitized() else 10)
        self.write_config()
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [ficus_bin(), "-c", self.config_path, "-l", self.log_level],
            stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=self.env(),
            cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("ficus exited with %d at start:\n%s" % (
                    self.proc.returncode, self.stderr()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise AssertionError("ficus did not accept on port %d within %ss:\n%s" % (
                    self.port, timeout, self.stderr()))
            time.sleep(0.02)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        """Waits for the exit; returns the code or None when still running."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=None, check=True):
        """SIGTERM, wait (with a deadline) and return the exit code. With check, fails
        unless the exit code is 0 and the logs are clean."""
        timeout = timeout or (30 if sanitized() else 15)
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
            raise AssertionError("ficus did not exit within %ss of SIGTERM:\n%s" % (
                timeout, self.stderr()[-4000:]))
        self._close_files()
        self.exit_code = code
        if check:
            self.check_logs()
            if code != 0:
                raise AssertionError("ficus exited with %d, not 0:\n%s" % (
                    code, self.stderr()[-4000:]))
        return code

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._close_files()

    def _close_files(self):
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f is not None and not f.closed:
                f.close()

    def reload(self, cfg=None, text=None):
        """Rewrites the configuration (a dict, or raw text) and sends SIGHUP."""
        self.write_config(cfg, text)
        self.proc.send_signal(signal.SIGHUP)

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for pid %d" % self.proc.pid)

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def access_lines(self):
        return [l for l in self.stdout().splitlines() if " status=" in l]

    def wait_access_lines(self, n, timeout=5):
        return wait_until(lambda: len(self.access_lines()) >= n and self.access_lines(),
                          timeout, what="%d access log lines" % n)

    def log_lines(self, pattern):
        r = re.compile(pattern)
        return [l for l in self.stderr().splitlines() if r.search(l)]

    def check_logs(self):
        """Fails on a sanitizer report or an unexpected level=error line."""
        text = self.stderr()
        if SANITIZER_RE.search(text):
            raise AssertionError("sanitizer report in ficus stderr (%s):\n%s" % (
                self.stderr_path, text[-12000:]))
        bad = [l for l in text.splitlines()
               if ERROR_LINE_RE.search(l) and not any(p.search(l) for p in self.allow_errors)]
        if bad:
            raise AssertionError("unexpected error lines in ficus stderr:\n" + "\n".join(bad))

    def connect(self, timeout=5):
        return Client(self.port, timeout=timeout)

    def request(self, raw, timeout=10, head=False):
        """One request on a fresh connection; returns the Response."""
        with self.connect() as c:
            c.send(raw)
            return c.read_response(timeout=timeout, head=head)


_workdirs = []


def make_workdir(name):
    base = os.environ.get("FICUS_TEST_OUTPUT")
    if base:
        os.makedirs(base, exist_ok=True)
        d = tempfile.mkdtemp(prefix=name + "-", dir=base)
    else:
        d = tempfile.mkdtemp(prefix="ficus-it-" + name + "-")
        _workdirs.append(d)
    return d


# ---------------------------------------------------------------------------------------
# client


class Response:
    def __init__(self, status, reason, version, headers, raw_head):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.raw_head = raw_head
        self.body = b""
        self.body_len = 0
        self.body_crc = 0
        self.chunk_sizes = None
        self.trailers = []
        self.framing = None  # "length", "chunked", "close", "none"

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %d %s body=%d>" % (self.status, self.framing, self.body_len)


class IncompleteResponse(Exception):
    """The connection ended before the response did."""

    def __init__(self, msg, response):
        super().__init__(msg)
        self.response = response


def request_bytes(method="GET", target="/", headers=None, body=None, host="x", version="1.1"):
    """A well-formed request; headers: list of (name, value); body adds Content-Length."""
    h = [("Host", host)] if host is not None else []
    h += list(headers or [])
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                    for k, _ in h):
        h.append(("Content-Length", str(len(body))))
    out = "%s %s HTTP/%s\r\n" % (method, target, version)
    out += "".join("%s: %s\r\n" % kv for kv in h) + "\r\n"
    return out.encode("latin-1") + (body or b"")


class Client:
    """A raw-socket HTTP/1.1 client connection."""

    def __init__(self, port, host="127.0.0.1", timeout=5, ssl_context=None,
                 server_hostname=None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:  # TLS: the handshake happens here
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.reader = SockReader(self.sock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Closes with a RST."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def send(self, data, timeout=10):
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def read_head(self, timeout=10):
        deadline = time.monotonic() + timeout
        raw = self.reader.read_until(b"\r\n\r\n", deadline, limit=1 << 20)
        start, pairs = parse_head(raw)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError("bad status line %r" % start)
        return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", parts[0],
                        Headers(pairs), raw)

    def read_response(self, timeout=10, head=False, sink=None, keep=16 << 20):
        """Reads one response (a 1xx counts as one). head: the request was HEAD.
        The body goes to sink if given, else into response.body (first keep bytes).
        Raises IncompleteResponse when the connection ends inside the body."""
        deadline = time.monotonic() + timeout
        r = self.read_head(timeout)
        body = BodySink(keep)

        def feed(piece):
            body(piece)
            if sink is not None:
                sink(piece)

        te = (r.header("transfer-encoding") or "").lower()
        cl = r.header("content-length")
        try:
            if head or r.status < 200 or r.status in (204, 304):
                r.framing = "none"
            elif "chunked" in te:
                r.framing = "chunked"
                r.trailers, r.chunk_sizes = read_chunked(self.reader, deadline, feed)
            elif cl is not None:
                r.framing = "length"
                self.reader.read_exact(int(cl), deadline, feed)
            else:
                r.framing = "close"
                self.reader.read_to_eof(deadline, feed)
        except Closed as e:
            r.body, r.body_len, r.body_crc = body.data(), body.length, body.crc
            raise IncompleteResponse("connection ended inside the body: %s" % e, r)
        r.body, r.body_len, r.body_crc = body.data(), body.length, body.crc
        return r

    def read_final_response(self, timeout=10, head=False, **kw):
        """Skips interim (1xx) responses."""
        while True:
            r = self.read_response(timeout=timeout, head=head, **kw)
            if r.status >= 200:
                return r

    def wait_closed(self, timeout=5):
        """Waits for the peer to close. Returns (closed, extra bytes read meanwhile)."""
        deadline = time.monotonic() + timeout
        extra = bytearray(self.reader.buf)
        self.reader.buf.clear()
        while True:
            try:
                if not self.reader._fill(deadline):
                    return True, bytes(extra)
            except socket.timeout:
                return False, bytes(extra)
            except OSError:
                return True, bytes(extra)
            extra += self.reader.buf
            self.reader.buf.clear()

    def is_open(self, wait=0.2):
        """True when the connection is still open (no close seen within wait seconds)."""
        closed, extra = self.wait_closed(wait)
        if extra:
            self.reader.buf[:0] = extra
        return not closed


# ---------------------------------------------------------------------------------------
# test case base


class WatchdogExpired(BaseException):
    """Raised by the per-test alarm. A BaseException, so that no handler meant for
    socket timeouts (TimeoutError) or other errors can swallow it."""


def _watchdog(signum, frame):
    raise WatchdogExpired("watchdog: the test ran past its time limit")


class FicusTestCase(unittest.TestCase):
    """Arms a watchdog per test, tracks backends and ficus processes, and on teardown
    stops every ficus still running: a non-zero exit, an unexpected level=error line or
    a sanitizer report fails the test."""

    WATCHDOG_SECONDS = 60

    def setUp(self):
        if not os.access(ficus_bin(), os.X_OK):
            self.skipTest("no ficus binary at %s (set FICUS_BIN)" % ficus_bin())
        self._backends = []
        self._ficuses = []
        signal.signal(signal.SIGALRM, _watchdog)
        signal.alarm(self.WATCHDOG_SECONDS)

    def tearDown(self):
        problems = []
        for f in self._ficuses:
            if f.proc is None:
                continue
            try:
                if f.exit_code is None:
                    f.stop()
                else:
                    f.check_logs()
            except AssertionError as e:
                problems.append(str(e))
            finally:
                f.kill()
        for b in self._backends:
            b.close()
            if b.errors:
                problems.append("backend %s errors: %s" % (b.name, b.errors))
        signal.alarm(0)
        ok = not problems and self._outcome_ok()
        if ok:
            for f in self._ficuses:
                if f.workdir in _workdirs:
                    shutil.rmtree(f.workdir, ignore_errors=True)
        else:
            for f in self._ficuses:
                print("\n[ficus %s logs kept in %s]" % (f.name, f.workdir))
        if problems:
            self.fail("\n".join(problems))

    def _outcome_ok(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is None:
            return True
        result = getattr(outcome, "result", None)
        if result is not None:  # Python 3.11+
            errs = getattr(result, "errors", []) + getattr(result, "failures", [])
            return not any(getattr(t, "test_case", t) is self for t, _ in errs)
        return all(e[1] is None for e in getattr(outcome, "errors", []))

    def backend(self, handler=None, name="legacy", **kw):
        b = Backend(handler, name=name, **kw)
        self._backends.append(b)
        return b

    def ficus(self, legacy=None, new=None, start=True, **kw):
        f = Ficus(legacy, new, **kw)
        self._ficuses.append(f)
        if start:
            f.start()
        return f
