"""SRP wire format (docs/srp.md §3-4): pure parsing and formatting.

No I/O here: ``parse`` is a pure function fuzzed with hypothesis. The checks
that look at fds (seals, sizes) are :func:`aeterna.linux.memfd.check_state`.
"""

from __future__ import annotations

import fcntl
import re
from dataclasses import dataclass, field

MAX_MESSAGE = 16384
MAX_FDS = 253  # SCM_MAX_FD
VERSION = 1
VERBS = ("HELLO", "STATE", "LOADED", "CHECKPOINT", "RESUME")

SEALS_ARENA = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
SEALS_SNAPSHOT = SEALS_ARENA | fcntl.F_SEAL_WRITE
KINDS = ("snapshot", "arena", "conn")
_KEY = re.compile(r"[A-Za-z0-9_]+")  # docs/srp.md §3: ASCII letters, digits, "_"


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
        return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None

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
        if not eq or not _KEY.fullmatch(key):
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
