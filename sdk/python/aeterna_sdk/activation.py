"""Socket activation, like systemd's ``sd_listen_fds_with_names()``.

The manager passes fds at 3, 4, ... with ``LISTEN_FDS=N``,
``LISTEN_FDNAMES=a:b`` and ``LISTEN_PID`` (the pid they are meant for): first
the unit's sockets, then fd-store entries. Nothing is used unless
``LISTEN_PID`` is our own pid, so a child that inherited the environment does
not take its parent's fds. Found fds get FD_CLOEXEC. ``LISTEN_PIDFDID`` is not
checked.

Each fd is wrapped in at most one ``socket.socket`` per process (a second
wrapper would close the fd under the first when collected), so the same
object comes back every time. The blocking mode of a listener is left as the
manager set it (blocking, like systemd); remember that O_NONBLOCK is shared
by every process holding the same listener during a relay.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import threading
from collections.abc import Mapping

LISTEN_FDS_START = 3

_lock = threading.Lock()
_sockets: dict[int, socket.socket] = {}


def listen_fds(environ: Mapping[str, str]) -> list[tuple[int, str]]:
    """The passed fds and their names; [] when there are none or they are not ours."""
    pid = environ.get("LISTEN_PID", "")
    if not pid.isdigit() or int(pid) != os.getpid():
        return []
    raw = environ.get("LISTEN_FDS", "")
    if not raw.isdigit() or int(raw) <= 0:
        return []
    count = int(raw)
    names = environ.get("LISTEN_FDNAMES", "").split(":") if "LISTEN_FDNAMES" in environ \
        else []
    if len(names) != count:
        names = ["unknown"] * count
    found = []
    for i in range(count):
        fd = LISTEN_FDS_START + i
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError:
            continue  # not open: skip it rather than hand out a stranger's fd later
        found.append((fd, names[i]))
    return found


def is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def wrap(fd: int) -> socket.socket:
    """The one socket object of this process for ``fd`` (family and type detected)."""
    with _lock:
        sock = _sockets.get(fd)
        if sock is None or sock.fileno() != fd:
            sock = socket.socket(fileno=fd)
            _sockets[fd] = sock
        return sock


def listeners(environ: Mapping[str, str]) -> dict[str, socket.socket]:
    """name -> socket for every passed fd that is a socket (the first of a name wins)."""
    out: dict[str, socket.socket] = {}
    for fd, name in listen_fds(environ):
        if name not in out and is_socket(fd):
            out[name] = wrap(fd)
    return out


def stored_fds(environ: Mapping[str, str]) -> dict[str, int]:
    """name -> fd for passed fds that are not sockets (fd-store memfds, files, pipes)."""
    out: dict[str, int] = {}
    for fd, name in listen_fds(environ):
        if name not in out and not is_socket(fd):
            out[name] = fd
    return out
