"""The ``probe`` unit of bench/scale.py: READY=1 on a cue, with the send's timestamp.

Started by Aeterna as a ``type: notify`` unit. It writes a marker file (so the
bench knows it is blocked on its cue), blocks reading one byte from the FIFO
named by $SCALE_PROBE_FIFO, then sends ``READY=1`` to $NOTIFY_SOCKET and writes
``time.monotonic()`` of that send (CLOCK_MONOTONIC, the same clock as the
bench's) to the file named by $SCALE_PROBE_STAMP, and sleeps until stopped.
Standard library only; run with ``python -I -S`` so that it starts fast.
"""

from __future__ import annotations

import os
import socket
import time


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # the bench never sees half a number


def main() -> int:
    fifo = os.environ["SCALE_PROBE_FIFO"]
    stamp = os.environ["SCALE_PROBE_STAMP"]
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(addr)
    fd = os.open(fifo, os.O_RDONLY)  # the bench holds it open read-write: no wait here
    _write(stamp + ".waiting", str(os.getpid()))
    os.read(fd, 1)  # the cue
    sent = time.monotonic()
    sock.send(b"READY=1")
    _write(stamp, repr(sent))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
