"""A state as SRP carries it: metadata keys plus one fd per part.

Parts, in fd order (the SDK's convention; the protocol only names kinds):

1. the state object, encoded by ``FORMAT=``, in a snapshot memfd named
   ``state`` (absent when the state is only an arena: ``FORMAT=arena``);
2. every shared :class:`StateArena`, kind ``arena``, by its name;
3. every handed-over connection, kind ``conn``, by its name.

``CHECKSUM=`` covers the memfds in fd order. The SDK only writes it when the
state has no arena: an arena is live memory that its receiver keeps writing,
so a checksum of it would stop matching as soon as it is used (and the manager
may give the same checkpoint again after a crash).
"""

from __future__ import annotations

import socket
from typing import Any

from . import codec, memfd
from .arena import StateArena
from .wire import MAX_FDS, Message, close_fds

OBJECT_NAME = "state"


def check_name(name: str) -> str:
    """LISTEN_FDNAMES rules: printable ASCII, no ``:``, at most 255 characters."""
    if len(name) > 255 or ":" in name or any(not (0x20 <= ord(c) <= 0x7E) for c in name):
        raise ValueError(f"invalid fd name {name!r}: printable ASCII, no ':', <= 255 chars")
    return name


class Outgoing:
    """The keys and fds of one STATE=1 message; ``close()`` after sending."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.fds: list[int] = []
        self.names: list[str] = []
        self.kinds: list[str] = []
        self._owned: list[int] = []

    def add(self, name: str, kind: str, fd: int, owned: bool) -> None:
        self.names.append(check_name(name))
        self.kinds.append(kind)
        self.fds.append(fd)
        if owned:
            self._owned.append(fd)

    def close(self) -> None:
        close_fds(self._owned)


def build(obj: Any, fmt: str | None, *, arenas: dict[str, StateArena],
          conns: dict[str, socket.socket], copy_arenas: bool,
          schema: int | None = None, checksum: bool = True) -> Outgoing:
    """Encode ``obj`` and list the arenas and connections; raises CodecError/ValueError.

    ``copy_arenas``: send sealed copies of the arenas (an unsolicited checkpoint,
    after which the app goes on writing) instead of the live memfds.
    """
    out = Outgoing()
    try:
        arenas = dict(arenas)
        if isinstance(obj, StateArena):
            if not any(a is obj for a in arenas.values()):
                arenas[obj.name] = obj
            fmt_name = "arena"
        else:
            fmt_name = codec.choose(obj, fmt)
            data = codec.encode(obj, fmt_name)
            out.add(OBJECT_NAME, "snapshot", memfd.snapshot(data), owned=True)
        for name, arena in arenas.items():
            if arena.closed or arena.fileno() < 0:
                raise ValueError(f"arena {name!r} has no memfd to hand over")
            if copy_arenas:
                out.add(name, "arena", arena.copy_fd(), owned=True)
            else:
                out.add(name, "arena", arena.fileno(), owned=False)
        blobs = list(out.fds)
        for name, sock in conns.items():
            out.add(name, "conn", sock.fileno(), owned=False)
        if len(out.fds) > MAX_FDS:
            raise ValueError(f"{len(out.fds)} fds exceed SCM_RIGHTS' {MAX_FDS}")
        f = out.fields
        f["FORMAT"] = fmt_name
        if schema is not None:
            f["SCHEMA"] = str(int(schema))
        f["SIZE"] = str(sum(memfd.size_of(fd) for fd in blobs))
        if checksum and not arenas:
            f["CHECKSUM"] = memfd.sha256_of(blobs)
        f["FDNAMES"] = ":".join(out.names)
        f["FDKINDS"] = ":".join(out.kinds)
    except BaseException:
        out.close()
        raise
    return out


class Incoming:
    """A received state: the decoded object, adopted arenas and connections."""

    def __init__(self, meta: dict[str, str]):
        self.meta = meta
        self.obj: Any = None
        self.arenas: dict[str, StateArena] = {}
        self.conns: dict[str, socket.socket] = {}

    def close(self) -> None:
        for arena in self.arenas.values():
            try:
                arena.close()
            except BufferError:
                pass
        for sock in self.conns.values():
            sock.close()
        self.arenas.clear()
        self.conns.clear()


def receive(msg: Message, fds: list[int], allow_pickle: bool = False) -> Incoming:
    """Check and decode a STATE=1/RESUME=1; takes ownership of ``fds``.

    Raises CodecError (``reason`` is the LOADED ERROR= word: ``fds``,
    ``checksum``, ``format``, ``decode``...); every fd is closed then.
    """
    meta = {k: v for k, v in msg.fields.items()
            if k in ("FORMAT", "SCHEMA", "SIZE", "CHECKSUM", "FDNAMES", "FDKINDS")}
    inc = Incoming(meta)
    pending = list(fds)
    try:
        kinds = meta["FDKINDS"].split(":") if meta.get("FDKINDS") else []
        names = meta["FDNAMES"].split(":") if meta.get("FDNAMES") else []
        if len(kinds) != len(fds) or (names and len(names) != len(fds)):
            raise codec.CodecError("fds", f"{len(fds)} fds, FDKINDS names {len(kinds)}")
        if not names:
            names = [f"fd{i}" for i in range(len(fds))]
        blobs = []
        for fd, kind in zip(fds, kinds):
            if kind == "conn":
                continue
            need = memfd.SEALS_SNAPSHOT if kind == "snapshot" else memfd.SEALS_ARENA
            if kind not in ("snapshot", "arena") or not memfd.has_seals(fd, need):
                raise codec.CodecError("seals", f"a {kind} fd without its seals")
            blobs.append(fd)
        want = meta.get("CHECKSUM")
        if want and memfd.sha256_of(blobs) != want:
            raise codec.CodecError("checksum")
        fmt = meta.get("FORMAT") or "json"
        obj_fd = -1
        for fd, kind, name in zip(fds, kinds, names):
            if kind == "snapshot" and obj_fd < 0 and fmt != "arena":
                obj_fd = fd
            elif kind == "conn":
                sock = socket.socket(fileno=fd)
                pending.remove(fd)
                inc.conns[name] = sock
            else:
                arena = StateArena.from_fd(fd, name)
                pending.remove(fd)
                inc.arenas[name] = arena
        if obj_fd >= 0:
            inc.obj = codec.decode(memfd.read_all(obj_fd), fmt, allow_pickle)
        elif fmt == "arena":
            inc.obj = next(iter(inc.arenas.values())) if len(inc.arenas) == 1 \
                else dict(inc.arenas)
    except (codec.CodecError, ValueError, OSError) as exc:
        close_fds(pending)
        inc.close()
        if isinstance(exc, codec.CodecError):
            raise
        raise codec.CodecError("invalid", str(exc)[:80]) from None
    close_fds(pending)  # the object's snapshot, now decoded
    return inc
