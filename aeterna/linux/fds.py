"""Received fds: close them safely, and read one SEQPACKET record with its fds.

Every fd that arrives is close-on-exec (MSG_CMSG_CLOEXEC), so a child
spawned meanwhile never inherits one.
"""

from __future__ import annotations

import os
import socket

from ..wire.srp import MAX_FDS, MAX_MESSAGE


def close_fds(fds: list[int]) -> None:
    """Close every fd in ``fds`` and empty the list, so a second call is harmless.

    Emptying matters: closing a number twice could close an unrelated fd that
    the kernel handed out in between. Closing a barrier's fd is its acknowledgement.
    """
    # Synchronous, unlike systemd's asynchronous_close(): closing the last reference to a
    # hostile fd (a lingering socket, a FUSE file) can block the caller for a while.
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


def recv_record(sock: socket.socket) -> tuple[bytes, list[int], bool] | None:
    """One SEQPACKET record: (payload, fds, truncated); None on EAGAIN; b"" at EOF."""
    fds_size = socket.CMSG_SPACE(MAX_FDS * 4)
    try:
        data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, fds_size,
                                           socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b"", [], False
    fds: list[int] = []
    for level, kind, blob in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(blob) - len(blob) % 4
            fds.extend(int.from_bytes(blob[i:i + 4], "little", signed=True)
                       for i in range(0, usable, 4))
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
    return data, fds, truncated
