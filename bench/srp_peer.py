"""Baselines for bench/srp.py: two plain processes, no Aeterna, no SDK.

    python bench/srp_peer.py MODE SIZE REPS

This process is the receiver; it starts a sender (this file with ``--sender``)
and gives it both ends' sockets. Before each repetition the sender has its data
ready (not timed); the receiver sends ``go`` on a control socket; the sender
stamps ``t0`` (``time.monotonic_ns``) and sends; the receiver stamps ``t1`` once
it has the data, then the sender reports ``t0`` on the control socket. One JSON
line on stdout: ``{"mode", "size", "ns": [t1 - t0 per repetition]}``.

MODE:

- ``pickle-stream``: the sender holds a ``bytes`` of SIZE; ``pickle.dump`` (protocol 5)
  into a unix stream socket (``makefile``); the receiver ``pickle.load``s it.
- ``memfd-fresh``: the sender holds a ``bytes`` of SIZE; it creates a memfd, writes
  the bytes, seals it (snapshot seals), sends the fd (SCM_RIGHTS, SEQPACKET); the
  receiver maps it (``mmap`` of the whole size, read-only).
- ``memfd-filled``: the sender holds a memfd of SIZE already filled (an arena); it
  sends the fd; the receiver maps it read/write. Every repetition sends the same memfd
  and maps it afresh.
- ``pingpong``: calibration of the kernel's transit. A ~150-byte record with one memfd
  fd attached goes to the sender, which echoes it at once (record and fd); blocking
  ``recvmsg`` on both sides (REPS round trips, after 200 warm-up ones). ``ns`` holds the
  round trips; half of one is the one-way transit plus one wake-up of a blocked
  Python thread.

Run without arguments (as ``make bench`` does) it prints this and exits 0.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import pickle
import socket
import subprocess
import sys
import time

SEALS_ARENA = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
SEALS_SNAPSHOT = SEALS_ARENA | fcntl.F_SEAL_WRITE
MODES = ("pickle-stream", "memfd-fresh", "memfd-filled", "pingpong")
RECORD = b"STATE=1\nSEQ=1\nFORMAT=arena\nSIZE=1073741824\nFDNAMES=bench\nFDKINDS=arena\n" \
    + b"X-PAD=" + b"p" * 64 + b"\n"


def blob(size: int) -> bytes:
    block = hashlib.shake_256(b"aeterna-srp-bench").digest(1 << 20)
    return block * (size // len(block)) + block[:size % len(block)]


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:done + (1 << 30)])


def sender(mode: str, size: int, reps: int, data_fd: int, ctl_fd: int) -> None:
    data = socket.socket(fileno=data_fd)
    ctl = socket.socket(fileno=ctl_fd)
    if mode == "pingpong":
        for _ in range(reps + 200):
            msg, fds, _, _ = socket.recv_fds(data, 1024, 4)
            socket.send_fds(data, [msg], fds)
            for fd in fds:
                os.close(fd)
        return
    payload = blob(size) if mode in ("pickle-stream", "memfd-fresh") else None
    filled = -1
    if mode == "memfd-filled":
        filled = os.memfd_create("srpb-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(filled, size)
        write_all(filled, blob(size))
        fcntl.fcntl(filled, fcntl.F_ADD_SEALS, SEALS_ARENA)
    wfile = data.makefile("wb") if mode == "pickle-stream" else None
    for _ in range(reps):
        if ctl.recv(16) != b"go":
            return
        t0 = time.monotonic_ns()
        if mode == "pickle-stream":
            assert wfile is not None
            pickle.dump(payload, wfile, protocol=5)
            wfile.flush()
        elif mode == "memfd-fresh":
            assert payload is not None
            fd = os.memfd_create("srpb-snapshot", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, size)
            os.lseek(fd, 0, os.SEEK_SET)
            write_all(fd, payload)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS_SNAPSHOT)
            socket.send_fds(data, [RECORD], [fd])
            os.close(fd)
        else:
            socket.send_fds(data, [RECORD], [filled])
        ctl.send(str(t0).encode())


def receiver(mode: str, size: int, reps: int) -> list[int]:
    kind = socket.SOCK_STREAM if mode == "pickle-stream" else socket.SOCK_SEQPACKET
    mine, theirs = socket.socketpair(socket.AF_UNIX, kind)
    ctl_mine, ctl_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([sys.executable, __file__, "--sender", mode, str(size), str(reps),
                             str(theirs.fileno()), str(ctl_theirs.fileno())],
                            pass_fds=(theirs.fileno(), ctl_theirs.fileno()))
    theirs.close()
    ctl_theirs.close()
    out: list[int] = []
    try:
        if mode == "pingpong":
            probe = os.memfd_create("srpb-probe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            for i in range(reps + 200):
                t0 = time.monotonic_ns()
                socket.send_fds(mine, [RECORD], [probe])
                _, fds, _, _ = socket.recv_fds(mine, 1024, 4)
                t1 = time.monotonic_ns()
                for fd in fds:
                    os.close(fd)
                if i >= 200:
                    out.append(t1 - t0)
            return out
        rfile = mine.makefile("rb") if mode == "pickle-stream" else None
        for _ in range(reps):
            ctl_mine.send(b"go")
            if mode == "pickle-stream":
                assert rfile is not None
                obj = pickle.load(rfile)
                t1 = time.monotonic_ns()
                ok = isinstance(obj, bytes) and len(obj) == size
                del obj
            else:
                _, fds, _, _ = socket.recv_fds(mine, 1024, 4)
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if mode == "memfd-filled" else 0)
                m = mmap.mmap(fds[0], size, mmap.MAP_SHARED, prot)
                t1 = time.monotonic_ns()
                ok = len(m) == size
                m.close()
                for fd in fds:
                    os.close(fd)
            t0 = int(ctl_mine.recv(64))
            if not ok:
                raise SystemExit(f"{mode}: wrong data received")
            out.append(t1 - t0)
        return out
    finally:
        mine.close()
        ctl_mine.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    args = sys.argv[1:]
    if args and args[0] == "--sender":
        sender(args[1], int(args[2]), int(args[3]), int(args[4]), int(args[5]))
        return 0
    if len(args) != 3 or args[0] not in MODES:
        print(__doc__)
        return 0
    mode, size, reps = args[0], int(args[1]), int(args[2])
    ns = receiver(mode, size, reps)
    print(json.dumps({"mode": mode, "size": size, "ns": ns}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
