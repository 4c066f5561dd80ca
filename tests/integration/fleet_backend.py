"""A backend server as a process of its own, so that a test can kill it (SIGKILL: the
kernel closes its sockets, as when a VM or a pod dies) and start it again on the same
address. Python standard library only.

    python3 fleet_backend.py HOST PORT NAME [--delay-ms N]

answers every request with 200 and NAME as the body (HTTP/1.1, keep-alive), after
--delay-ms when given; GET /healthz answers 200 unless a file NAME.down exists in the
current directory (then 503), so a test can fail its health checks. Prints
"listening HOST:PORT" on standard output once it accepts connections. Exits by itself
when its standard input closes (the test went away), so that nothing outlives a test.
"""

import http.server
import os
import socketserver
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleet-backend"

    def log_message(self, fmt, *args):  # quiet: the test reads stdout
        pass

    def do_GET(self):
        if self.path == "/healthz":
            down = os.path.exists(self.server.name + ".down")
            self.answer(503 if down else 200, b"down" if down else b"ok")
            return
        if self.server.delay > 0:
            time.sleep(self.server.delay)
        self.answer(200, self.server.name.encode())

    do_HEAD = do_GET

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    args = sys.argv[1:]
    delay_ms = 0
    if "--delay-ms" in args:
        i = args.index("--delay-ms")
        delay_ms = int(args[i + 1])
        del args[i : i + 2]
    host, port, name = args[0], int(args[1]), args[2]
    srv = Server((host, port), Handler)
    srv.name = name
    srv.delay = delay_ms / 1000.0

    def watch_stdin():
        sys.stdin.read()  # EOF: the test is gone
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("listening %s:%d" % (host, srv.server_address[1]), flush=True)
    srv.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
