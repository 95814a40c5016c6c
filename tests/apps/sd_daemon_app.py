"""A socket-activated server written against systemd-python (``systemd.daemon``).

It takes its listeners with ``daemon.listen_fds_with_names()``, checks them with
``daemon.is_socket*``, says ``READY=1`` with ``daemon.notify`` and answers every
connection with one line naming the fd it came in on.
"""

import selectors
import socket
import sys

from systemd import daemon


def main() -> int:
    named = daemon.listen_fds_with_names()  # {fd: name}; unsets LISTEN_* (sd_listen_fds(1))
    print(f"listen_fds_with_names={sorted(named.items())}", flush=True)
    socks = []
    for fd, name in sorted(named.items()):
        print(f"fd {fd} {name} is_socket={daemon.is_socket(fd, listening=1)} "
              f"inet={daemon.is_socket_inet(fd, listening=1)} "
              f"unix={daemon.is_socket_unix(fd, listening=1)}", flush=True)
        socks.append((socket.socket(fileno=fd), name))
    if not socks:
        print("no fds", flush=True)
        return 1
    daemon.notify("READY=1\nSTATUS=systemd-python serving")
    sel = selectors.DefaultSelector()
    for s, name in socks:
        sel.register(s, selectors.EVENT_READ, name)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            with conn:
                conn.sendall(f"systemd-python {key.data} fd={key.fileobj.fileno()}\n".encode())


if __name__ == "__main__":
    sys.exit(main())
