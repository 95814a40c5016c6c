"""Received fds: close them off the loop, and read one SEQPACKET record with its fds.

Every fd that arrives is close-on-exec (MSG_CMSG_CLOEXEC), so a child
spawned meanwhile never inherits one.

Closing is asynchronous, as systemd's ``asynchronous_close()``: dropping the
last reference to a file someone else sent can block the closing thread for as
long as that someone likes (a TCP socket with unsent data and ``SO_LINGER``
waits out its linger time in ``close()``; a FUSE file waits for its daemon's
FLUSH; a tty waits for its output to drain). So received fds are closed by one
daemon thread, never by the event loop. Fds that were sent for nothing (a
stranger's, a rejected datagram's, a message that takes no fds) are also
*discarded*: a socket among them is first set to abortive close (``SO_LINGER``
on, 0 s), so it cannot even hold the closing thread or an fd slot.
"""

from __future__ import annotations

import os
import queue
import socket
import stat
import struct
import threading

from ..wire.srp import MAX_FDS, MAX_MESSAGE

_ABORT = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


class _Closer:
    """One daemon thread that closes fds handed to it, in order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Each counter is written by one thread only: queued by callers on the loop,
        # closed by the closer thread.
        self.queued = 0
        self.closed = 0
        self._idle = threading.Condition()

    def put(self, fd: int, abort: bool) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="aeterna-closer",
                                                    daemon=True)
                    self._thread.start()
        self.queued += 1
        self._queue.put((fd, abort))

    def _run(self) -> None:
        while True:
            fd, abort = self._queue.get()
            try:
                if abort:
                    _abortive(fd)
                os.close(fd)
            except OSError:
                pass
            finally:
                with self._idle:
                    self.closed += 1
                    self._idle.notify_all()

    def wait(self, timeout: float) -> bool:
        """Block until every fd queued so far is closed (tests, shutdown); False on timeout."""
        target = self.queued
        with self._idle:
            return self._idle.wait_for(lambda: self.closed >= target, timeout)


def _abortive(fd: int) -> None:
    """Make a socket's close() send RST and return at once instead of lingering."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
    except OSError:
        pass
    finally:
        sock.detach()


_closer = _Closer()


def close_fds(fds: list[int]) -> None:
    """Close every fd in ``fds`` off the loop, and empty the list.

    Emptying matters: closing a number twice could close an unrelated fd that
    the kernel handed out in between (the number stays taken until the closer
    thread gets to it). Closing a barrier's fd is its acknowledgement.
    """
    while fds:
        _closer.put(fds.pop(), False)


def discard_fds(fds: list[int]) -> None:
    """Close fds that were sent for nothing; sockets among them close abortively.

    Only for fds nobody asked for: a kept connection must close gracefully.
    """
    while fds:
        _closer.put(fds.pop(), True)


def close_pending() -> int:
    """How many fds the closer thread has not closed yet."""
    return _closer.queued - _closer.closed


def wait_closed(timeout: float = 5.0) -> bool:
    """Wait until the fds handed to the closer so far are closed; False on timeout."""
    return _closer.wait(timeout)


def peer_closed(sock: socket.socket) -> bool:
    """Whether the other end of a connected socket hung up (poll's POLLHUP/POLLRDHUP)."""
    import select

    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR)
               for _, ev in poller.poll(0))


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
