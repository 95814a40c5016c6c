"""Sealed memfds: create, fill from a file, seal, check what a sender sealed (docs/srp.md §4)."""

from __future__ import annotations

import fcntl
import os
import stat
from typing import BinaryIO

from ..wire.srp import KINDS, SEALS_ARENA, SEALS_SNAPSHOT, SrpMessage


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


def check_state(msg: SrpMessage, fds: list[int], max_size: int) -> str | None:
    """docs/srp.md §4: seals, kinds and sizes. None if acceptable, else the reason."""
    kinds = msg.get("FDKINDS").split(":") if msg.get("FDKINDS") else []
    if len(kinds) != len(fds):
        return f"FDKINDS names {len(kinds)} fds, {len(fds)} attached"
    names = msg.get("FDNAMES").split(":") if msg.get("FDNAMES") else []
    if names and len(names) != len(fds):
        return f"FDNAMES names {len(names)} fds, {len(fds)} attached"
    total = 0
    for i, (fd, kind) in enumerate(zip(fds, kinds, strict=True)):
        if kind not in KINDS:
            return f"fd {i}: unknown kind {kind!r}"
        try:
            st = os.fstat(fd)
        except OSError as exc:
            return f"fd {i}: {exc.strerror}"
        if kind == "conn":
            if not stat.S_ISSOCK(st.st_mode):
                return f"fd {i}: a conn must be a socket"
            continue
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            return f"fd {i}: not a memfd (no seals)"
        need = SEALS_SNAPSHOT if kind == "snapshot" else SEALS_ARENA
        if seals & need != need:
            return f"fd {i}: {kind} lacks seals {_seal_names(need & ~seals)}"
        total += st.st_size
    declared = msg.get("SIZE")
    if not declared.isdigit() or int(declared) != total:
        return f"SIZE={declared or '?'} but the memfds hold {total} bytes"
    if max_size and total > max_size:
        return f"state of {total} bytes exceeds max_size {max_size}"
    return None


def _seal_names(bits: int) -> str:
    names = {fcntl.F_SEAL_SHRINK: "SHRINK", fcntl.F_SEAL_GROW: "GROW",
             fcntl.F_SEAL_WRITE: "WRITE", fcntl.F_SEAL_SEAL: "SEAL"}
    return "|".join(n for b, n in names.items() if bits & b)
