"""A socket-activated line server: takes fd 3 (LISTEN_FDS), answers each line with
``pong gen=<AETERNA_GENERATION> pid=<pid>`` and closes. Prints one line per
connection served, so a test can count them in the unit's log."""

import os
import socket
import sys
import threading

LOCK = threading.Lock()


def serve(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(20)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        gen = os.environ.get("AETERNA_GENERATION", "?")
        conn.sendall(f"pong gen={gen} pid={os.getpid()}\n".encode())
    with LOCK:  # print() from threads may interleave a line with another's newline
        sys.stdout.write(f"served {data.decode().strip()}\n")
        sys.stdout.flush()


def main() -> int:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        print("not socket-activated", flush=True)
        return 1
    listener = socket.socket(fileno=3)
    listener.setblocking(True)
    print(f"started pid={os.getpid()}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
