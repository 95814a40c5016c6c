"""The demo's web app: stdlib only, socket-activated when run under Aeterna.

It takes its listening socket from LISTEN_FDS (fd 3) when it is given one, or
binds 127.0.0.1:8080 itself, and tells the manager it is ready with sd_notify
when NOTIFY_SOCKET is set. It answers every GET with its pid and generation
(``/slow?s=N`` after N seconds, at most 30).

SIGTERM (a stop, or the drain of a hot relay) is graceful: it stops accepting,
finishes the requests it holds, then exits 0. The listening socket stays open
in the manager, so what it no longer accepts waits for the next generation.
"""

import http.server
import os
import signal
import socket
import socketserver
import threading
import time
import urllib.parse


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
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/slow":
            seconds = urllib.parse.parse_qs(url.query).get("s", ["1"])[0]
            print(f"slow request: {seconds}s", flush=True)
            time.sleep(min(30.0, max(0.0, float(seconds))))
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
    daemon_threads = False  # server_close() joins the requests in hand
    block_on_close = True

    def __init__(self, sock: socket.socket):
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket = sock


if __name__ == "__main__":
    server = Server(listener())
    host, port = server.socket.getsockname()[:2]
    print(f"serving on http://{host}:{port}/", flush=True)
    # shutdown() waits for serve_forever() to return: call it from another thread.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    notify("READY=1\nSTATUS=serving")
    server.serve_forever()
    print("stopping: finishing the requests in hand", flush=True)
    notify("STOPPING=1")
    server.server_close()
    print("stopped", flush=True)
