"""Listeners that Aeterna itself was given (systemd's ``LISTEN_FDS``), for its units.

When systemd starts Aeterna with sockets (an ``aeterna.socket`` unit), the fds
arrive at 3.. with ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``, as for
any socket-activated service. Aeterna keeps them for its whole life and hands
each to the unit whose socket it is: the one whose socket ``name`` equals the
fd's name (``FileDescriptorName=``), else the one whose address is the one the
fd is bound to. That unit then gets the inherited socket instead of a socket
of Aeterna's own, so systemd holds it: it stays open, and keeps queueing
connections, while Aeterna itself restarts.

The originals stay in the pool (close-on-exec, like every fd of the manager);
a unit gets a duplicate, which it may close (a reload that drops the unit)
without losing the socket for a unit that names it later. An inherited
socket's file node, if any, is systemd's: Aeterna never unlinks it.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..model import ListenSpec, SocketType
from ..wire.address import parse_address
from .sockets import Listener, SocketError, bind_listener, remove_listener

SD_LISTEN_FDS_START = 3
_TYPES = {socket.SOCK_STREAM: SocketType.STREAM, socket.SOCK_DGRAM: SocketType.DATAGRAM,
          socket.SOCK_SEQPACKET: SocketType.SEQPACKET}


@dataclass
class Inherited:
    """One fd passed to us: its name, and what it is (for matching by address)."""

    fd: int
    name: str
    type: SocketType | None  # None: not a socket (a FIFO, say): matched by name only
    family: int = 0
    sockname: object = None
    used_by: list[str] = field(default_factory=list)


def take(env: Mapping[str, str]) -> list[Inherited]:
    """The fds systemd passed to *this* process (``LISTEN_PID`` is ours), or none.

    Each is made close-on-exec at once: our units get theirs through their own
    ``LISTEN_FDS``, never by inheriting ours.
    """
    try:
        if int(env.get("LISTEN_PID", "")) != os.getpid():
            return []
        n = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    out = []
    for i in range(max(0, n)):
        fd = SD_LISTEN_FDS_START + i
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # closed meanwhile: nothing to hand on
        os.set_inheritable(fd, False)
        name = names[i] if i < len(names) and names[i] else "unknown"
        entry = Inherited(fd, name, None)
        if stat.S_ISSOCK(st.st_mode):
            sock = socket.socket(fileno=os.dup(fd))
            try:
                entry.type = _TYPES.get(sock.type)
                entry.family = sock.family
                entry.sockname = sock.getsockname()
            finally:
                sock.close()
        out.append(entry)
    return out


def _same_address(entry: Inherited, spec: ListenSpec) -> bool:
    if entry.type is not spec.type:
        return False
    try:
        address = parse_address(spec.address, spec.type)
    except ValueError:
        return False
    if entry.family != address.family:
        return False
    if entry.family in (socket.AF_INET, socket.AF_INET6):
        got = entry.sockname
        assert isinstance(got, tuple)
        want = address.sockaddr
        assert isinstance(want, tuple)
        return bool(got[:2] == want[:2]) or (
            address.dual_stack and got[1] == want[1] and got[0] in ("::", "0.0.0.0"))
    return entry.sockname == address.sockaddr


def find(pool: Iterable[Inherited], spec: ListenSpec) -> Inherited | None:
    """The inherited fd for ``spec``: by name first, then by address.

    Every listener of one .socket unit has the same name (its one
    ``FileDescriptorName=``): among several of that name, the address decides.
    """
    pool = list(pool)
    named = [e for e in pool if spec.name and e.name == spec.name]
    if len(named) == 1:
        return named[0]
    for entry in named or pool:
        if entry.type is not None and _same_address(entry, spec):
            return entry
    return named[0] if named else None


def adopt(entry: Inherited, spec: ListenSpec) -> Listener:
    """A Listener for ``spec`` over a duplicate of the inherited fd."""
    try:
        address = parse_address(spec.address, spec.type)
    except ValueError as e:
        raise SocketError(spec.address, 0, str(e)) from None
    fd = os.dup(entry.fd)  # close-on-exec (PEP 446)
    if entry.type is None:
        return Listener(spec, address, None, fd, None)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)  # the child shares the file description: as systemd's default
    return Listener(spec, address, sock, fd, None)


def bind_listeners(specs: Iterable[ListenSpec], pool: list[Inherited],
                   unit: str) -> list[tuple[Listener, Inherited | None]]:
    """A unit's listeners, each with the inherited fd it is a copy of (or None:
    bound here); all or none, as ``sockets.bind_listeners``."""
    done: list[tuple[Listener, Inherited | None]] = []
    try:
        for spec in specs:
            entry = find(pool, spec) if pool else None
            done.append((bind_listener(spec) if entry is None else adopt(entry, spec), entry))
    except BaseException:
        for listener, _ in done:
            remove_listener(listener)
        raise
    for _, entry in done:
        if entry is not None and unit not in entry.used_by:
            entry.used_by.append(unit)
    return done
