"""Headless Chromium driven through the DevTools protocol, with the standard library only.

Chromium starts with --remote-debugging-port=0 and prints the port it chose on stderr
("DevTools listening on ws://..."); the page target's WebSocket is found through the
/json/list endpoint; the WebSocket client (handshake, masked frames, fragments, ping)
is written here over a raw socket.

    with Chromium() as browser:
        page = browser.page()
        page.navigate("http://127.0.0.1:9901/")
        page.wait_for("document.title.length > 0", 10, "a title")
        page.screenshot("/tmp/out.png")
        assert not page.errors            # console errors, uncaught exceptions, log errors
"""

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def chromium_path():
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevToolsError(Exception):
    pass


class WebSocket:
    """A minimal RFC 6455 client: text messages out (masked), messages in."""

    def __init__(self, url, timeout=10):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + ("?" + u.query if u.query else "")
        req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (
                   path, u.hostname, u.port, key))
        self.sock.sendall(req.encode("ascii"))
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        end = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end]
        if not re.match(r"HTTP/1\.1 101\b", head):
            raise DevToolsError("WebSocket handshake refused: %r" % head.splitlines()[0])
        want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        got = re.search(r"(?im)^sec-websocket-accept:\s*(\S+)", head)
        if not got or got.group(1) != want:
            raise DevToolsError("bad Sec-WebSocket-Accept in %r" % head)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        data = self.sock.recv(1 << 20)
        if not data:
            raise DevToolsError("the browser closed the DevTools connection")
        self.buf += data

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _send_frame(self, opcode, payload):
        head = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head.append(0x80 | n)
        elif n < 1 << 16:
            head.append(0x80 | 126)
            head += struct.pack(">H", n)
        else:
            head.append(0x80 | 127)
            head += struct.pack(">Q", n)
        mask = os.urandom(4)
        head += mask
        # XOR with the repeated mask, done on integers for speed.
        m = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big") \
            if n else b""
        self.sock.settimeout(10)
        self.sock.sendall(bytes(head) + masked)

    def send_text(self, text):
        self._send_frame(0x1, text.encode("utf-8"))

    def recv(self, deadline):
        """The next complete message (str for text, bytes for binary)."""
        parts = []
        opcode_first = None
        while True:
            b0, b1 = self._read_exact(2, deadline)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read_exact(2, deadline))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read_exact(8, deadline))[0]
            mask = self._read_exact(4, deadline) if b1 & 0x80 else None
            payload = self._read_exact(n, deadline)
            if mask:
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:  # pong
                continue
            if opcode == 0x8:
                raise DevToolsError("the browser closed the DevTools connection")
            if opcode in (0x1, 0x2):
                opcode_first = opcode
                parts = [payload]
            else:  # continuation
                parts.append(payload)
            if fin:
                data = b"".join(parts)
                return data.decode("utf-8") if opcode_first == 0x1 else data

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class Page:
    """One page target. Every event is kept in .events; console errors, uncaught
    exceptions and error log entries are also kept in .errors (as text)."""

    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []
        self.errors = []
        self.exceptions = []
        self.handlers = {}
        self.on("Runtime.consoleAPICalled", self._on_console)
        self.on("Runtime.exceptionThrown", self._on_exception)
        self.on("Log.entryAdded", self._on_log)
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.enable")

    def on(self, method, handler):
        self.handlers[method] = handler

    def _on_console(self, p):
        if p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.errors.append("console.%s: %s" % (p.get("type"), text))

    def _on_exception(self, p):
        d = p.get("exceptionDetails", {})
        text = (d.get("exception") or {}).get("description") or d.get("text", "exception")
        self.errors.append("uncaught: %s" % text)
        self.exceptions.append(text)

    def _on_log(self, p):
        e = p.get("entry", {})
        if e.get("level") == "error":
            self.errors.append("log.%s: %s %s" % (e.get("source"), e.get("text"), e.get("url", "")))

    def send(self, method, params=None):
        """Sends a command without waiting for its result."""
        self.next_id += 1
        self.ws.send_text(json.dumps({"id": self.next_id, "method": method,
                                      "params": params or {}}))
        return self.next_id

    def _read_one(self, deadline):
        msg = json.loads(self.ws.recv(deadline))
        if "method" in msg:
            self.events.append(msg)
            handler = self.handlers.get(msg["method"])
            if handler is not None:
                handler(msg.get("params", {}))
        return msg

    def call(self, method, params=None, timeout=20):
        mid = self.send(method, params)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_one(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise DevToolsError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})

    def pump(self, seconds):
        """Handles events for a while."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._read_one(deadline)
        except socket.timeout:
            pass

    def evaluate(self, expression, await_promise=False):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": await_promise})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise DevToolsError("evaluate %r: %s" % (
                expression[:80], (d.get("exception") or {}).get("description") or d.get("text")))
        return r.get("result", {}).get("value")

    def wait_for(self, expression, timeout, what=None):
        """Evaluates expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.evaluate(expression)
            if last:
                return last
            if time.monotonic() >= deadline:
                raise AssertionError("timed out after %.0fs waiting for %s (last value %r)" % (
                    timeout, what or expression, last))
            self.pump(0.1)

    def navigate(self, url, timeout=20):
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", timeout, "the page to load")

    def screenshot(self, path, full_page=True):
        params = {"format": "png"}
        if full_page:
            m = self.call("Page.getLayoutMetrics")
            size = m.get("cssContentSize") or m.get("contentSize")
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"],
                              "height": min(size["height"], 8000), "scale": 1}
        data = self.call("Page.captureScreenshot", params, timeout=60)["data"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        self.ws.close()


class Chromium:
    """A headless Chromium process with its own profile directory."""

    def __init__(self, width=1400, height=1000, timeout=30):
        self.profile = tempfile.mkdtemp(prefix="ficus-chromium-")
        self.stderr_lines = []
        args = [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--remote-debugging-port=0",
                "--user-data-dir=" + self.profile, "--window-size=%d,%d" % (width, height),
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-dev-shm-usage", "--hide-scrollbars", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        found = threading.Event()
        self.ws_url = None

        def drain():
            # Keeps reading stderr so that the browser never blocks on a full pipe.
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self.stderr_lines.append(line)
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m and not found.is_set():
                    self.ws_url = m.group(1)
                    found.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        if not found.wait(timeout):
            self.close()
            raise DevToolsError("chromium did not start its DevTools server:\n" +
                                "\n".join(self.stderr_lines[-30:]))
        self.port = urllib.parse.urlsplit(self.ws_url).port

    def page(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % self.port, timeout=10) as r:
            targets = json.load(r)
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise DevToolsError("no page target in %r" % targets)
        return Page(pages[0]["webSocketDebuggerUrl"])

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(5)
        self.proc.stderr.close()
        # Helper processes may still write to the profile for a moment after the browser
        # exits: try again briefly rather than leave the directory behind.
        for _ in range(20):
            shutil.rmtree(self.profile, ignore_errors=True)
            if not os.path.exists(self.profile):
                break
            time.sleep(0.1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
