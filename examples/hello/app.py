"""The demo's web app: stdlib only, socket-activated when run under Aeterna.

It takes its listening socket from LISTEN_FDS (fd 3) when it is given one, or
binds 127.0.0.1:8080 itself, and tells the manager it is ready with sd_notify
when NOTIFY_SOCKET is set. It answers every GET with its pid and generation.
"""

import http.server
import os
import socket
import socketserver


def listener() -> socket.socket:
    activated = os.environ.get("LISTEN_PID") == str(os.getpid())
    if activated and int(os.environ.get("LISTEN_FDS", "0")) > 0:
        return socket.socket(fileno=3)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ.get("PORT", "8080"))))
    s.listen(128)
    return s


def notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(message.encode())


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (f"hello from pid {os.getpid()}, generation "
                f"{os.environ.get('AETERNA_GENERATION', '-')}\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket):
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket = sock


if __name__ == "__main__":
    server = Server(listener())
    host, port = server.socket.getsockname()[:2]
    print(f"serving on http://{host}:{port}/", flush=True)
    notify("READY=1\nSTATUS=serving")
    server.serve_forever()
