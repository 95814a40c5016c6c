"""Sealed memfds: create, fill from a file, seal (docs/srp.md §4)."""

from __future__ import annotations

import fcntl
import os
from typing import BinaryIO

from .srp_wire import SEALS_ARENA, SEALS_SNAPSHOT


def create(name: str, size: int = 0) -> int:
    """A close-on-exec memfd that accepts seals, ``size`` bytes long."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    if size:
        os.ftruncate(fd, size)
    return fd


def seal(fd: int, kind: str) -> None:
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS_SNAPSHOT if kind == "snapshot" else SEALS_ARENA)


def sealed_from_file(f: BinaryIO, size: int, kind: str) -> int:
    """Copy ``size`` bytes from ``f`` into a new memfd and seal it as ``kind``."""
    fd = create("aeterna-srp-restored", size)
    offset = 0
    while offset < size:
        chunk = f.read(min(1 << 20, size - offset))
        if not chunk:
            break
        os.pwrite(fd, chunk, offset)
        offset += len(chunk)
    seal(fd, kind if kind in ("snapshot", "arena") else "snapshot")
    return fd
