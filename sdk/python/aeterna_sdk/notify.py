"""sd_notify over ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket).

One datagram per call, from a fresh AF_UNIX SOCK_DGRAM socket; the kernel adds
our credentials. Without ``NOTIFY_SOCKET`` every call is a no-op returning
False, so the same code runs outside any manager.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Mapping, Sequence

MAX_DATAGRAM = 4096  # what systemd (and Aeterna) accept


def address(environ: Mapping[str, str]) -> str | None:
    """The socket address to send to, or None (unset, or a kind we do not speak)."""
    path = environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None


def notify(message: str, environ: Mapping[str, str], fds: Sequence[int] = ()) -> bool:
    """Send ``message`` (``KEY=VALUE`` lines); True if it was sent."""
    addr = address(environ)
    if addr is None:
        return False
    data = message.encode("utf-8")
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"notify message of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                sock.sendmsg([data], anc, 0, addr)
            else:
                sock.sendto(data, addr)
        except OSError:
            return False
    return True


def watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` if the watchdog is meant for this process (sd_watchdog_enabled)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec)
