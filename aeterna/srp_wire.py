"""SRP wire format (docs/srp.md §3-4): pure parsing, formatting and state checks.

No asyncio here: ``parse`` is a pure function fuzzed with hypothesis, and
``check_state`` only looks at fds (fstat, F_GET_SEALS), never at their bytes.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from dataclasses import dataclass, field

MAX_MESSAGE = 16384
MAX_FDS = 253  # SCM_MAX_FD
VERSION = 1
VERBS = ("HELLO", "STATE", "LOADED", "CHECKPOINT", "RESUME")

SEALS_ARENA = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
SEALS_SNAPSHOT = SEALS_ARENA | fcntl.F_SEAL_WRITE
KINDS = ("snapshot", "arena", "conn")


class SrpError(Exception):
    """A message that is not SRP; ``reason`` is a short classified name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class SrpMessage:
    verb: str
    value: str  # "1" or "0"
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.value == "1"

    @property
    def seq(self) -> int | None:
        raw = self.fields.get("SEQ", "")
        return int(raw) if raw.isdigit() and len(raw) < 19 else None

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)


def parse(payload: bytes) -> SrpMessage:
    """One record to a message, or SrpError. First line wins for repeated keys."""
    if len(payload) > MAX_MESSAGE:
        raise SrpError("too-large", f"{len(payload)} bytes")
    if b"\0" in payload:
        raise SrpError("nul")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise SrpError("not-utf8") from None
    fields: dict[str, str] = {}
    verb = ""
    for line in text.split("\n"):
        if not line:
            continue
        key, eq, value = line.partition("=")
        if not eq or not key or not key.replace("_", "").isalnum() or not key.isascii():
            raise SrpError("bad-line", line[:40])
        if key in fields:
            continue
        fields[key] = value
        if not verb and key in VERBS:
            verb = key
    if not verb:
        raise SrpError("no-verb")
    value = fields.pop(verb)
    if value not in ("0", "1"):
        raise SrpError("bad-verb-value", f"{verb}={value[:20]}")
    return SrpMessage(verb, value, fields)


def format_message(verb: str, value: int | str = 1, **fields: object) -> bytes:
    """``VERB=value`` then ``KEY=value`` lines, skipping None values."""
    lines = [f"{verb}={value}"]
    for key, val in fields.items():
        if val is None:
            continue
        lines.append(f"{key}={val}")
    data = ("\n".join(lines) + "\n").encode()
    if len(data) > MAX_MESSAGE:
        raise SrpError("too-large", f"{len(data)} bytes")
    return data


def state_fields(msg: SrpMessage) -> dict[str, str]:
    """The metadata keys of a STATE/RESUME message, to forward as they are."""
    keep = ("FORMAT", "SCHEMA", "SIZE", "CHECKSUM", "FDNAMES", "FDKINDS")
    return {k: msg.fields[k] for k in keep if k in msg.fields}


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


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
