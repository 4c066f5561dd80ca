"""A WebSocket (RFC 6455) backend and client for the tunnel tests, Python standard library
only.

WsBackend        a server on 127.0.0.1: answers an upgrade request with 101 and the
                 Sec-WebSocket-Accept of its key, then echoes every data frame (unmasked,
                 as a server sends) and answers a close frame with a close; modes: refuse
                 (answer 426 instead of upgrading), flood (send that many bytes of binary
                 frames to the client at once, then echo), slow_read (read nothing after
                 the handshake until released). It records the request heads it got.
WsClient         a raw socket client: the upgrade request, masked frames out, frames in.
"""

import base64
import hashlib
import os
import socket
import struct
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def encode_frame(opcode, payload, mask):
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _mask_fast(payload, key)


def _mask_fast(payload, key):
    """payload XOR the 4-byte key repeated (masking and unmasking are the same)."""
    words = (len(payload) + 3) // 4
    padded = payload + b"\0" * (words * 4 - len(payload))
    mask_int = int.from_bytes(key * words, "big")
    return (int.from_bytes(padded, "big") ^ mask_int).to_bytes(words * 4, "big")[:len(payload)]


class FrameReader:
    """Reads whole frames from a socket (unmasking when masked)."""

    def __init__(self, sock, buf=b""):
        self.sock = sock
        self.buf = bytearray(buf)

    def _need(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no whole frame in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk

    def read(self, timeout=10):
        deadline = time.monotonic() + timeout
        self._need(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        opcode, masked, n = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        pos = 2
        if n == 126:
            self._need(4, deadline)
            n = struct.unpack(">H", bytes(self.buf[2:4]))[0]
            pos = 4
        elif n == 127:
            self._need(10, deadline)
            n = struct.unpack(">Q", bytes(self.buf[2:10]))[0]
            pos = 10
        key = b""
        if masked:
            self._need(pos + 4, deadline)
            key = bytes(self.buf[pos:pos + 4])
            pos += 4
        self._need(pos + n, deadline)
        payload = bytes(self.buf[pos:pos + n])
        del self.buf[:pos + n]
        if masked:
            payload = _mask_fast(payload, key)
        return opcode, payload


def read_head(sock, timeout=10):
    """Reads an HTTP head; returns (status line or request line, {name: value}, rest)."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\r\n\r\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no head")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before the head")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, rest


class WsBackend:
    def __init__(self, refuse=False, flood=0, slow_read=False):
        self.refuse, self.flood, self.slow_read = refuse, flood, slow_read
        self.heads = []
        self.received = 0  # payload bytes of data frames read
        self.release = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            while True:
                line, headers, rest = read_head(s, timeout=60)
                with self.lock:
                    self.heads.append((line, headers))
                if headers.get("upgrade", "").lower() != "websocket" or self.refuse:
                    body = b"no upgrade here"
                    s.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: %d\r\n"
                              b"Content-Type: text/plain\r\n\r\n" % len(body) + body)
                    continue
                key = headers["sec-websocket-key"].encode()
                s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(key) +
                          b"\r\n\r\n")
                break
            if self.flood:
                block = bytes(range(256)) * 256  # 64 KiB
                sent = 0
                while sent < self.flood:
                    n = min(len(block), self.flood - sent)
                    s.sendall(encode_frame(2, block[:n], mask=False))
                    sent += n
            if self.slow_read:
                self.release.wait(60)
            reader = FrameReader(s, rest)
            while True:
                opcode, payload = reader.read(timeout=120)
                if opcode == 8:
                    s.sendall(encode_frame(8, payload, mask=False))
                    break
                with self.lock:
                    self.received += len(payload)
                s.sendall(encode_frame(opcode, payload, mask=False))
        except (OSError, EOFError, TimeoutError, KeyError):
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.stopping.set()
        self.release.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


class WsClient:
    """An upgraded connection through ficus (or any proxy) on 127.0.0.1:port."""

    def __init__(self, port, path="/ws", headers=(), sock=None, timeout=10):
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.key = base64.b64encode(os.urandom(16))
        req = (b"GET %s HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               % (path.encode(), self.key))
        for k, v in headers:
            req += b"%s: %s\r\n" % (k.encode(), v.encode())
        self.sock.sendall(req + b"\r\n")
        self.status_line, self.headers, rest = read_head(self.sock, timeout)
        self.status = int(self.status_line.split()[1])
        self.reader = FrameReader(self.sock, rest)

    def send(self, payload, opcode=2):
        self.sock.sendall(encode_frame(opcode, payload, mask=True))

    def recv(self, timeout=10):
        return self.reader.read(timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
