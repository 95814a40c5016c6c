"""A socket-activated server using the ``sdnotify`` package for readiness.

``sdnotify`` only speaks sd_notify, so the fds are taken by hand the way
``sd_listen_fds`` does: LISTEN_PID must be our pid, then fds 3..3+LISTEN_FDS-1.
"""

import os
import selectors
import socket
import sys

import sdnotify


def main() -> int:
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        print("LISTEN_PID is not me", flush=True)
        return 1
    n = int(os.environ["LISTEN_FDS"])
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    socks = [(socket.socket(fileno=3 + i), names[i]) for i in range(n)]
    for s, name in socks:
        print(f"fd {s.fileno()} {name} family={s.family.name} "
              f"listening={s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)}", flush=True)
    sdnotify.SystemdNotifier(debug=True).notify("READY=1\nSTATUS=sdnotify serving")
    sel = selectors.DefaultSelector()
    for s, name in socks:
        sel.register(s, selectors.EVENT_READ, name)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            with conn:
                conn.sendall(f"sdnotify {key.data} fd={key.fileobj.fileno()}\n".encode())


if __name__ == "__main__":
    sys.exit(main())
