"""A small authoritative DNS server for tests: UDP on 127.0.0.1, Python standard library only.

It answers A and AAAA queries for the names it is given, with the TTL it is given; a
name it does not know gets NXDOMAIN; a known name without records of the asked type
gets an empty NOERROR answer (NODATA). Answers can be changed while it runs, it can
stop answering (queries are read and dropped, as from a dead server) and resume, and
it records every query it receives.

    dns = DnsServer()                       # binds 127.0.0.1, port 0
    dns.set("svc.test", ["127.0.0.2"], ttl=1)
    dns.start()
    ... resolvers: ["127.0.0.1:%d" % dns.port] ...
    dns.set("svc.test", ["127.0.0.3"], ttl=1)
    dns.count("svc.test", "A")              # queries seen so far
    dns.stop_answering(); dns.resume()
    dns.close()

Only what a stub resolver sends is understood: one question, no compression in it.
Malformed packets are counted in `malformed` and ignored.
"""

import ipaddress
import socket
import struct
import threading
import time

TYPE_A = 1
TYPE_AAAA = 28
TYPE_NAMES = {TYPE_A: "A", TYPE_AAAA: "AAAA"}
CLASS_IN = 1
RCODE_NXDOMAIN = 3
RCODE_FORMERR = 1
MAX_PACKET = 4096


class DnsServer:
    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)  # so that the thread notices close() promptly
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.records = {}  # lower-case name -> (list of ip strings, ttl)
        self.answering = True
        self.queries = []  # (monotonic time, name, type name)
        self.malformed = 0
        self.running = False
        self.thread = None

    # ---- control (any thread) ----

    def set(self, name, ips, ttl=1):
        """Serves name with the given IPv4 and IPv6 addresses (a list, possibly empty)."""
        for ip in ips:
            ipaddress.ip_address(ip)  # refuse nonsense early
        with self.lock:
            self.records[name.lower().rstrip(".")] = (list(ips), int(ttl))

    def remove(self, name):
        with self.lock:
            self.records.pop(name.lower().rstrip("."), None)

    def stop_answering(self):
        with self.lock:
            self.answering = False

    def resume(self):
        with self.lock:
            self.answering = True

    def count(self, name=None, qtype=None):
        """Queries received, for name and/or type ("A", "AAAA") when given."""
        with self.lock:
            return sum(
                1
                for _, n, t in self.queries
                if (name is None or n == name.lower()) and (qtype is None or t == qtype)
            )

    def query_times(self, name, qtype="A"):
        with self.lock:
            return [ts for ts, n, t in self.queries if n == name.lower() and t == qtype]

    def names_asked(self):
        with self.lock:
            return {n for _, n, _ in self.queries}

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._serve, name="dnsserver", daemon=True)
        self.thread.start()
        return self

    def close(self):
        self.running = False
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- the server thread ----

    def _serve(self):
        while self.running:
            try:
                packet, peer = self.sock.recvfrom(MAX_PACKET)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self._handle(packet)
            if reply is not None:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass

    def _handle(self, packet):
        try:
            qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
            if flags & 0x8000 or qdcount != 1:
                raise ValueError("not a query with one question")
            labels, off = [], 12
            while True:
                n = packet[off]
                off += 1
                if n == 0:
                    break
                if n & 0xC0:
                    raise ValueError("compressed question")
                labels.append(packet[off : off + n].decode("ascii"))
                off += n
            qtype, qclass = struct.unpack("!HH", packet[off : off + 4])
            question = packet[12 : off + 4]
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            with self.lock:
                self.malformed += 1
            return None
        name = ".".join(labels).lower()
        with self.lock:
            self.queries.append((time.monotonic(), name, TYPE_NAMES.get(qtype, str(qtype))))
            if not self.answering:
                return None
            entry = self.records.get(name)
        rd = flags & 0x0100
        opcode = flags & 0x7800
        rflags = 0x8000 | 0x0400 | opcode | rd | 0x0080  # QR, AA, RD copied, RA
        answers = []
        if entry is None:
            rflags |= RCODE_NXDOMAIN
        elif qclass == CLASS_IN and qtype in (TYPE_A, TYPE_AAAA):
            ips, ttl = entry
            for ip in ips:
                addr = ipaddress.ip_address(ip)
                if (addr.version == 4) != (qtype == TYPE_A):
                    continue
                rdata = addr.packed
                # The name is a pointer to the question (offset 12).
                answers.append(struct.pack("!HHHIH", 0xC00C, qtype, CLASS_IN, ttl, len(rdata)) + rdata)
        header = struct.pack("!HHHHHH", qid, rflags, 1, len(answers), 0, 0)
        return header + question + b"".join(answers)
