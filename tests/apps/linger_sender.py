"""Send the manager a TCP socket that would hold whoever closes it last for a while.

``linger_sender.py PORT SECONDS [FD]``: connect to 127.0.0.1:PORT (a listener
that never reads), fill the send buffer until it would block, set
``SO_LINGER`` to SECONDS, and send that socket with ``STATUS=linger`` to the
notify socket: through the already connected datagram socket on FD if given
(so a process that cannot reach the socket's path, running as ``nobody``, still
sends as itself), else to ``$NOTIFY_SOCKET``. Closes its own copy, so the
manager's is the last; prints ``linger sent``, then stays (``forever`` as the
fourth argument) or exits.
"""

import os
import socket
import struct
import sys
import time


def main() -> None:
    port, seconds = int(sys.argv[1]), int(sys.argv[2])
    via = sys.argv[3] if len(sys.argv) > 3 else "-"
    gate = os.environ.get("LINGER_WAITFILE")  # wait for the test's go-ahead (20 s at most)
    deadline = time.monotonic() + 20
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    tcp.setblocking(False)
    sent = 0
    try:
        while sent < 64 << 20:
            sent += tcp.send(b"x" * 65536)
    except BlockingIOError:
        pass
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, seconds))
    if via not in ("-", "forever"):
        out = socket.socket(fileno=int(via))
        socket.send_fds(out, [b"STATUS=linger"], [tcp.fileno()])
    else:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.connect(os.environ["NOTIFY_SOCKET"])
            socket.send_fds(out, [b"STATUS=linger"], [tcp.fileno()])
    # Our close is not the last one (the manager holds a reference now), so it
    # returns at once: the linger is the manager's to wait out.
    os.close(tcp.detach())
    print(f"linger sent unsent={sent}", flush=True)
    if "forever" in sys.argv[3:]:
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
