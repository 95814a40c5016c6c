"""go-counter's twin in Python, on the Python SDK: the same HTTP service and the
same checkpoint (the JSON object ``{"count": N}``), so a relay can go from the Go
program to this one and back without losing an increment.

Each POST adds one (answering ``COUNT PID gen=G``); a GET answers ``COUNT PID``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aeterna_sdk import AeternaClient

client = AeternaClient()
lock = threading.Lock()
count = 0
gen = client.generation if client.generation is not None else -1
prefix = f"py-counter gen={gen}"


def log(text: str) -> None:
    print(f"{prefix}: {text}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    def _answer(self, text: str) -> None:
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        global count
        with lock:
            count += 1
            n = count
        self._answer(f"{n} {os.getpid()} gen={gen}\n")

    def do_GET(self) -> None:  # noqa: N802
        with lock:
            n = count
        self._answer(f"{n} {os.getpid()}\n")

    def log_message(self, *args: Any) -> None:
        pass


class Server:
    """Serves on a dup of the inherited listener, so a checkpoint can stop it and
    a RESUME start it again on the same socket."""

    def __init__(self, listener: Any):
        self.listener = listener
        self.httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        httpd = ThreadingHTTPServer(self.listener.getsockname(), Handler,
                                    bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = self.listener.dup()
        httpd.daemon_threads = False  # server_close() joins the requests in flight
        self.httpd = httpd
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()  # no new connection is accepted
            httpd.server_close()  # and the requests in flight are done


def decode(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("count"), int) and obj["count"] >= 0


def main() -> None:
    global count
    listener = client.get_listener_socket()
    if listener is None:
        import socket

        listener = socket.create_server(("127.0.0.1", 8080))
    server = Server(listener)
    obj = client.load_context(timeout=30, validate=decode)
    if obj is not None:
        count = obj["count"]
        log(f"state loaded: count={count}")
    else:
        log(f"starting cold ({client.load_error})")

    def checkpoint() -> Any:
        server.stop()
        with lock:
            log(f"checkpoint: count={count}")
            return {"count": count}

    def resume(state: Any) -> None:
        global count
        if state is not None:
            with lock:
                count = state["count"]
        log(f"RESUME: serving again: count={count}")
        server.start()

    client.on_checkpoint(checkpoint, on_resume=resume)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    client.ready(f"serving count={count}")
    log(f"serving: count={count}")
    stop.wait()
    client.stopping()
    if not client.quiesced:
        server.stop()
        with lock:
            client.save_context({"count": count})


if __name__ == "__main__":
    main()
