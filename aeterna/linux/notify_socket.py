"""The ``$NOTIFY_SOCKET`` endpoint: receive sd_notify datagrams with their credentials and fds.

The kernel-facing half of sd_notify; :mod:`aeterna.wire.notify` parses what
arrives. A bad datagram comes back as a :class:`Datagram` with a ``rejection``
and its fds already closed, so nothing a sender does raises here.
"""

from __future__ import annotations

import array
import os
import socket
import stat
import struct
from dataclasses import dataclass

from ..wire.notify import (
    NOTIFY_BUFFER_MAX,
    NOTIFY_FD_MAX,
    NotifyError,
    NotifyMessage,
    Rejection,
    validate,
)
from .fds import discard_fds
from .sockets import set_socket_node

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
_RECV_BUFSIZE = NOTIFY_BUFFER_MAX + 1  # one spare byte, so 4097 bytes is "too large", not cut
_RECV_ANCBUFSIZE = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(4 * NOTIFY_FD_MAX)
_RCVBUF_WANTED = 8 * 1024 * 1024  # systemd's NOTIFY_RCVBUF_SIZE


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received datagram: its credentials, fds and either a message or a rejection.

    On a rejection the fds have already been closed: ``fds`` is empty and
    ``n_fds`` says how many arrived. An accepted datagram's ``fds`` belong to the
    caller, who must pass them to :func:`close_fds` unless it keeps them
    (``FDSTORE=1``, ``MAINPIDFD=1``), also when :func:`authorise` refuses the sender.
    """

    payload: bytes
    pid: int | None
    uid: int | None
    gid: int | None
    fds: list[int]
    n_fds: int
    message: NotifyMessage | None = None
    rejection: Rejection | None = None


class NotifyReceiver:
    """The ``$NOTIFY_SOCKET`` endpoint: a non-blocking AF_UNIX datagram socket at ``path``.

    Usage from the manager's loop::

        loop.add_reader(receiver.fileno(), on_notify)

        def on_notify():
            while (d := receiver.receive()) is not None:
                if d.message is None:
                    log(d.rejection); continue
                if d.message.barrier:
                    close_fds(d.fds)  # the acknowledgement; systemd does it before authorising
                    continue
                ... find the unit, authorise(), dispatch, then close_fds(d.fds) unless stored

    Drain the socket before reaping children (systemd gives notify priority over
    SIGCHLD): a sender that is reaped first can no longer be mapped to its unit.
    """

    def __init__(self, path: str) -> None:
        """Bind ``path`` (a filesystem path, not abstract), replacing a stale socket there."""
        if not path or path[0] in "@\0":
            raise ValueError(f"notify socket must be a filesystem path: {path!r}")
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec (PEP 446)
        try:
            # Before bind: a datagram that arrives between bind() and SO_PASSCRED would
            # carry no credentials and be dropped.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # Clients send blocking datagrams and a full queue stalls every one of them; the
            # kernel caps this at net.core.rmem_max (systemd asks for 8 MiB as well).
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF_WANTED)
            self._sock.setblocking(False)
            _remove_stale_socket(path)
            # Children may run as other users; connect() needs write permission on the
            # node. The node is made with the socket inode's mode less the umask, and
            # widened through a pinned fd, never by path (see set_socket_node).
            os.fchmod(self._sock.fileno(), 0o777)
            self._sock.bind(path)
            self._node = set_socket_node(path, 0o777, path)
        except BaseException:
            self._sock.close()
            raise

    @classmethod
    def adopt(cls, path: str, fd: int) -> NotifyReceiver:
        """The socket a previous manager bound at ``path`` (daemon-reexec): nothing is
        re-bound, and the datagrams queued while no one read are still there to read."""
        self = cls.__new__(cls)
        self.path = path
        self._sock = socket.socket(fileno=fd)
        self._sock.setblocking(False)
        st = os.lstat(path)
        self._node = (st.st_dev, st.st_ino)
        return self

    def fileno(self) -> int:
        """The socket's fd, for a selector or ``loop.add_reader``."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket and unlink its node, unless another socket has replaced it."""
        if self._sock.fileno() == -1:
            return
        self._sock.close()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._node:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> NotifyReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def receive(self) -> Datagram | None:
        """Read one datagram, or return ``None`` when none is queued.

        Never raises because of what a sender did: every bad datagram comes back
        as a :class:`Datagram` with a ``rejection`` and its fds already closed.
        """
        if self._sock.fileno() == -1:
            return None  # closed at shutdown; a late SIGCHLD still drains first
        try:
            payload, ancdata, msg_flags, _ = self._sock.recvmsg(
                _RECV_BUFSIZE,
                _RECV_ANCBUFSIZE,
                socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
            )
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return None  # nothing a sender does gets here; never take the loop down
        # Collect every fd first: they are already open in this process, whatever the
        # verdict. MSG_CMSG_CLOEXEC keeps them out of children forked meanwhile.
        fds: list[int] = []
        ucred: tuple[int, int, int] | None = None
        for level, kind, data in ancdata:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_RIGHTS:
                ints = array.array("i")
                ints.frombytes(data[: len(data) - len(data) % ints.itemsize])
                fds.extend(ints)
            elif kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
                ucred = _UCRED.unpack_from(data)
        pid, uid, gid = ucred if ucred is not None else (None, None, None)
        n_fds = len(fds)
        try:
            message = validate(payload, msg_flags, pid, n_fds)
        except NotifyError as exc:
            discard_fds(fds)
            return Datagram(payload, pid, uid, gid, fds, n_fds, rejection=exc.reason)
        return Datagram(payload, pid, uid, gid, fds, n_fds, message=message)


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket node nobody listens on (a crashed manager's); bind() then succeeds.

    A live one is left alone, so bind() fails with EADDRINUSE instead of stealing it.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
        except OSError:
            pass
