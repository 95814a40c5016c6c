"""SRP messages on the wire (docs/srp.md section 3): parse, format, send, receive.

One message is one SOCK_SEQPACKET record of newline-separated ``KEY=VALUE``
lines (at most 16384 bytes, no NUL, keys of ASCII letters, digits and ``_``),
with up to 253 fds attached by SCM_RIGHTS. The first line of a repeated key
wins; unknown keys are kept but ignored by the callers. The rules are those of
the manager's parser; ``sdk/testdata/srp-wire.json`` holds them as examples.
"""

from __future__ import annotations

import array
import os
import re
import socket

MAX_MESSAGE = 16384
MAX_FDS = 253  # SCM_MAX_FD
VERSION = 1
VERBS = ("HELLO", "STATE", "LOADED", "CHECKPOINT", "RESUME")
_KEY = re.compile(r"[A-Za-z0-9_]+")  # ASCII letters, digits and "_", as the manager has it


class Message:
    """One parsed record: its verb (``STATE``), value (``"1"``/``"0"``) and other keys."""

    __slots__ = ("verb", "value", "fields")

    def __init__(self, verb: str, value: str, fields: dict[str, str]):
        self.verb = verb
        self.value = value
        self.fields = fields

    @property
    def ok(self) -> bool:
        return self.value == "1"

    @property
    def seq(self) -> int | None:
        raw = self.fields.get("SEQ", "")
        return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def __repr__(self) -> str:
        return f"Message({self.verb}={self.value}, {self.fields!r})"


def parse(payload: bytes) -> Message | None:
    """A record to a Message, or None if it is not SRP (the caller drops it)."""
    if len(payload) > MAX_MESSAGE or b"\0" in payload:
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields: dict[str, str] = {}
    verb = ""
    for line in text.split("\n"):
        if not line:
            continue
        key, eq, value = line.partition("=")
        if not eq or not _KEY.fullmatch(key):
            return None
        if key in fields:
            continue
        fields[key] = value
        if not verb and key in VERBS:
            verb = key
    if not verb:
        return None
    value = fields.pop(verb)
    if value not in ("0", "1"):
        return None
    return Message(verb, value, fields)


def format_message(verb: str, value: int = 1, **fields: object) -> bytes:
    """``VERB=value`` then one ``KEY=value`` line per field (None values skipped)."""
    lines = [f"{verb}={value}"]
    for key, val in fields.items():
        if val is None:
            continue
        text = str(val)
        if not _KEY.fullmatch(key):
            raise ValueError(f"SRP key {key!r}: ASCII letters, digits and '_' only")
        if "\n" in text or "\0" in text:
            raise ValueError(f"SRP field {key} contains a newline or NUL")
        lines.append(f"{key}={text}")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"SRP message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def send(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    """Send one record (with fds); raises OSError."""
    if fds:
        if len(fds) > MAX_FDS:
            raise ValueError(f"{len(fds)} fds exceed the limit of {MAX_FDS}")
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", fds).tobytes())])
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[bytes, list[int], bool] | None:
    """Block for one record: (payload, fds, truncated), or None at EOF or error.

    Received fds are close-on-exec (MSG_CMSG_CLOEXEC); the caller owns them.
    """
    space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
    while True:
        try:
            data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, space,
                                               socket.MSG_CMSG_CLOEXEC)
            break
        except InterruptedError:
            continue
        except OSError:
            return None
    fds: list[int] = []
    for level, kind, blob in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(blob[: len(blob) - len(blob) % arr.itemsize])
            fds.extend(arr)
    if not data and not fds:
        return None
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
    return data, fds, truncated


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    del fds[:]
