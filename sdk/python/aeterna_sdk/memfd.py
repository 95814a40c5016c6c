"""Sealed memfds (docs/srp.md section 4): create, seal, inspect, read.

A *snapshot* is sealed ``SHRINK|GROW|WRITE|SEAL``: nobody can change it any
more. An *arena* is sealed ``SHRINK|GROW|SEAL`` but stays writable: its size
is fixed, so any holder can map all of it without risking SIGBUS.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable, Iterator

F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
SEAL_SEAL = getattr(fcntl, "F_SEAL_SEAL", 0x1)
SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x2)
SEAL_GROW = getattr(fcntl, "F_SEAL_GROW", 0x4)
SEAL_WRITE = getattr(fcntl, "F_SEAL_WRITE", 0x8)

SEALS_ARENA = SEAL_SHRINK | SEAL_GROW | SEAL_SEAL
SEALS_SNAPSHOT = SEALS_ARENA | SEAL_WRITE

CHUNK = 1 << 20


def supported() -> bool:
    """True where memfds exist (Linux)."""
    return hasattr(os, "memfd_create")


def create(name: str, size: int = 0) -> int:
    """A close-on-exec memfd that accepts seals, ``size`` bytes of zeros."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        if size:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def add_seals(fd: int, seals: int) -> None:
    fcntl.fcntl(fd, F_ADD_SEALS, seals)


def get_seals(fd: int) -> int | None:
    """The fd's seals, or None if it is not a memfd (or cannot be sealed)."""
    try:
        return int(fcntl.fcntl(fd, F_GET_SEALS))
    except OSError:
        return None


def has_seals(fd: int, need: int) -> bool:
    seals = get_seals(fd)
    return seals is not None and seals & need == need


def snapshot(data: bytes | bytearray | memoryview, name: str = "aeterna-snapshot") -> int:
    """A new memfd holding ``data``, sealed as a snapshot (read-only for everyone)."""
    view = memoryview(data).cast("B")
    fd = create(name, len(view))
    try:
        write_all(fd, view)
        add_seals(fd, SEALS_SNAPSHOT)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, view: memoryview, offset: int = 0) -> None:
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:done + CHUNK], offset + done)
        if n <= 0:
            raise OSError("short write to memfd")
        done += n


def size_of(fd: int) -> int:
    return os.fstat(fd).st_size


def _chunks(fd: int) -> Iterator[bytes]:
    """The content of a memfd (or any regular file) from offset 0, CHUNK bytes at a time."""
    size, offset = size_of(fd), 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            return
        yield chunk
        offset += len(chunk)


def read_all(fd: int) -> bytes:
    """The whole content of a memfd (or any regular file), from offset 0."""
    return b"".join(_chunks(fd))


def sha256_of(fds: Iterable[int]) -> str:
    """``sha256:<hex>`` over the concatenated contents, in order (the CHECKSUM= key)."""
    h = hashlib.sha256()
    for fd in fds:
        for chunk in _chunks(fd):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
