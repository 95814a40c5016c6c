"""sd_notify: classify and parse readiness datagrams, wire-compatible with systemd.

Pure, so every rule can be fuzzed and table-tested:

* :func:`parse` turns one payload into a frozen :class:`NotifyMessage` or raises
  :class:`NotifyError`; :func:`validate` first applies the receiver's checks.
* :class:`Rejection` names every reason a datagram is dropped (its values are the
  labels shared by logs and metrics), and :func:`authorise` applies ``NotifyAccess=``.

The socket that receives them is :mod:`aeterna.linux.notify_socket`.

The rules follow systemd's ``notify_recv_with_fds()``, ``strv_split_newlines()`` and
``service_notify_message()``; where systemd differs from the man page, systemd wins.
"""

from __future__ import annotations

import enum
import errno as _errno
import functools
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..model import NotifyAccess

NOTIFY_BUFFER_MAX = 4096  # systemd's PIPE_BUF limit on one payload
NOTIFY_FD_MAX = 768  # fds systemd makes control-buffer room for
FDNAME_MAX = 255
ERRNO_MAX = 4095


# Flags are only recognised when a whole line matches exactly (strv_contains()).
_FLAGS = {
    b"READY=1": "ready", b"RELOADING=1": "reloading", b"STOPPING=1": "stopping",
    b"FDSTORE=1": "fdstore", b"FDSTOREREMOVE=1": "fdstoreremove", b"BARRIER=1": "barrier",
    b"MAINPIDFD=1": "mainpidfd", b"RESTART_RESET=1": "restart_reset",
}  # fmt: skip
_KNOWN_KEYS = frozenset(
    {line.partition(b"=")[0] for line in _FLAGS}
    | {b"FDPOLL", b"WATCHDOG", b"STATUS", b"ERRNO", b"EXIT_STATUS", b"MAINPID"}
    | {b"MONOTONIC_USEC", b"WATCHDOG_USEC", b"EXTEND_TIMEOUT_USEC", b"FDNAME", b"NOTIFYACCESS"}
)
_ERRNO_NAMES = {
    name: value
    for name in dir(_errno)
    if name.startswith("E") and isinstance(value := getattr(_errno, name), int)
}
_NOTIFY_ACCESS = {access.value.encode(): access for access in NotifyAccess}
_NEWLINES = re.compile(rb"[\n\r]+")
_TOKENS = re.compile(rb"\\(.)|([\n\r]+)|([^\\\n\r]+)", re.DOTALL)
_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}
_U64_MAX = 2**64 - 1


class Rejection(enum.Enum):
    """Why a datagram or message was dropped; the values are log and metric labels."""

    TOO_LARGE = "too_large"  # payload over NOTIFY_BUFFER_MAX
    TRUNCATED = "truncated"  # MSG_TRUNC: the kernel cut the payload
    CTRUNC = "ctrunc"  # MSG_CTRUNC: control data (fds, creds) cut
    NUL = "nul"  # a NUL byte before the last byte
    BAD_ESCAPE = "bad_escape"  # a lone trailing backslash: systemd fails to split the lines
    NO_CREDENTIALS = "no_credentials"  # no SCM_CREDENTIALS, or pid 0 (sender in another pid ns)
    BAD_BARRIER = "bad_barrier"  # BARRIER=1 with other lines, or without exactly one fd
    UNKNOWN_SENDER = "unknown_sender"  # manager: the pid belongs to no unit
    NOT_AUTHORISED = "not_authorised"  # manager: authorise() said no


class NotifyError(Exception):
    """A payload or datagram that must be dropped as a whole; ``reason`` classifies it."""

    def __init__(self, reason: Rejection, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NotifyMessage:
    """One parsed sd_notify payload. Absent or malformed values are ``None``.

    Valued keys take their first line, as systemd does; a malformed value is
    ignored (systemd logs it) without dropping the rest of the message.
    ``WATCHDOG=`` is a valued key too: only its first line counts, so
    ``WATCHDOG=x`` followed by ``WATCHDOG=1`` is not a ping. ``status == ""``
    means "clear the status"; invalid UTF-8 in it becomes U+FFFD (systemd would
    clear the status instead), and systemd's 16 KiB cap on it is moot since a
    payload is at most 4096 bytes. ``fdname`` is ``None`` when absent or not a valid
    fd name. ``extra`` holds the first value of every key Aeterna does not
    interpret (``X_*``, ``BUSERROR=``...); ``raw_keys`` lists every key seen, in order.
    """

    ready: bool = False
    reloading: bool = False
    monotonic_usec: int | None = None
    stopping: bool = False
    status: str | None = None
    errno: int | None = None
    exit_status: int | None = None
    mainpid: int | None = None
    mainpidfd: bool = False
    watchdog_ping: bool = False
    watchdog_trigger: bool = False
    watchdog_usec: int | None = None
    extend_timeout_usec: int | None = None
    fdstore: bool = False
    fdname: str | None = None
    fdpoll: bool = True
    fdstoreremove: bool = False
    barrier: bool = False
    restart_reset: bool = False
    notifyaccess: NotifyAccess | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    raw_keys: tuple[str, ...] = ()


def parse(payload: bytes) -> NotifyMessage:
    """Parse one sd_notify payload.

    Lines end at ``\\n`` or ``\\r``, empty lines vanish, and a backslash escapes the
    next byte, exactly as systemd splits them (see :func:`_split_lines`). Short
    payloads (``READY=1``, ``WATCHDOG=1``...) are on the path of every start and
    relay and mostly repeat; their messages are frozen, so they are memoised.

    Raises:
        NotifyError: with ``TOO_LARGE``, ``NUL``, ``BAD_ESCAPE`` or ``BAD_BARRIER``,
            the cases where systemd drops the whole datagram. Nothing else is raised,
            whatever the bytes.
    """
    if len(payload) <= _MEMO_MAX:
        return _parse_short(payload)
    return _parse(payload)


_MEMO_MAX = 64  # bytes: at most 256 such payloads are kept, so about 16 KiB


def _parse(payload: bytes) -> NotifyMessage:
    """:func:`parse` without the memo."""
    if len(payload) > NOTIFY_BUFFER_MAX:
        raise NotifyError(Rejection.TOO_LARGE, f"{len(payload)} bytes")
    nul = payload.find(b"\0")
    if nul != -1:
        # systemd tolerates exactly one NUL, as the very last byte (a C string's terminator).
        if nul < len(payload) - 1:
            raise NotifyError(Rejection.NUL, f"NUL at byte {nul}")
        payload = payload[:nul]
    lines = _split_lines(payload)
    if b"BARRIER=1" in lines and len(lines) != 1:
        # systemd: "Extra notification messages sent with BARRIER=1, ignoring everything."
        raise NotifyError(Rejection.BAD_BARRIER, "BARRIER=1 with other lines")

    first: dict[bytes, bytes] = {}
    for line in lines:
        key, sep, value = line.partition(b"=")
        if sep:
            first.setdefault(key, value)
    line_set = set(lines)
    flags = {name: line in line_set for line, name in _FLAGS.items()}
    watchdog = first.get(b"WATCHDOG")
    status = first.get(b"STATUS")
    fdname = first.get(b"FDNAME")
    extra: dict[str, str] = {}
    for key, value in first.items():
        if key not in _KNOWN_KEYS:
            extra.setdefault(_text(key), _text(value))
    return NotifyMessage(
        **flags,
        monotonic_usec=_unsigned(first.get(b"MONOTONIC_USEC")),
        status=None if status is None else _text(status),
        errno=_errno_value(first.get(b"ERRNO")),
        exit_status=_unsigned(first.get(b"EXIT_STATUS"), 0xFF),
        mainpid=_pid(first.get(b"MAINPID")),
        watchdog_ping=watchdog == b"1",
        watchdog_trigger=watchdog == b"trigger",
        watchdog_usec=_unsigned(first.get(b"WATCHDOG_USEC")),
        extend_timeout_usec=_unsigned(first.get(b"EXTEND_TIMEOUT_USEC")),
        fdname=fdname.decode("ascii") if fdname is not None and _fdname_ok(fdname) else None,
        fdpoll=b"FDPOLL=0" not in line_set,
        notifyaccess=_NOTIFY_ACCESS.get(first.get(b"NOTIFYACCESS", b"")),
        extra=MappingProxyType(extra),
        raw_keys=tuple(_text(key) for key in first),
    )


_parse_short = functools.lru_cache(maxsize=256)(_parse)


def validate(payload: bytes, msg_flags: int, pid: int | None, n_fds: int) -> NotifyMessage:
    """Apply the receiver's checks in systemd's order, then :func:`parse`.

    Pure, so the credential and barrier rules can be tested without forging
    kernel credentials. ``pid`` is the SCM_CREDENTIALS pid, ``None`` if absent.
    """
    if msg_flags & socket.MSG_CTRUNC:
        raise NotifyError(Rejection.CTRUNC, "control data truncated (too many fds?)")
    if msg_flags & socket.MSG_TRUNC:
        raise NotifyError(Rejection.TRUNCATED, "payload truncated")
    if pid is None or pid <= 0:
        raise NotifyError(Rejection.NO_CREDENTIALS, f"pid {pid}")
    message = parse(payload)
    if message.barrier and n_fds != 1:
        # systemd warns and closes them; a barrier is acknowledged by closing its one fd.
        raise NotifyError(Rejection.BAD_BARRIER, f"BARRIER=1 with {n_fds} fds")
    return message


def authorise(
    access: NotifyAccess,
    sender_pid: int,
    main_pid: int | None,
    command_pids: set[int],
    unit_pids: set[int],
) -> bool:
    """Whether ``sender_pid`` may notify for a unit under ``NotifyAccess=access``.

    ``none`` refuses everyone; ``main`` accepts only the main pid (never an unknown
    one); ``exec`` also its running commands (ExecStartPre= and the like; systemd's
    "control processes"); ``all`` any process of the unit.
    """
    if sender_pid <= 0 or access is NotifyAccess.NONE:
        return False
    if main_pid is not None and sender_pid == main_pid:
        return True
    if access is NotifyAccess.MAIN:
        return False
    if sender_pid in command_pids:
        return True
    return access is NotifyAccess.ALL and sender_pid in unit_pids


def _split_lines(text: bytes) -> list[bytes]:
    """systemd's ``strv_split_newlines()``: lines end at ``\\n`` or ``\\r``, empty lines vanish.

    It splits with ``extract_first_word(..., NEWLINE, 0)``, and flags 0 still honours
    backslashes: ``\\x`` becomes ``x`` (even an escaped newline joins two lines) and a
    lone trailing backslash makes the split fail, which drops the whole datagram.
    """
    if b"\\" not in text:
        return [line for line in _NEWLINES.split(text) if line]
    lines: list[bytes] = []
    word: bytearray | None = None  # None between words: separators coalesce
    for escaped, separator, plain in _TOKENS.findall(text):
        if separator:
            if word is not None:
                lines.append(bytes(word))
            word = None
        else:
            word = word if word is not None else bytearray()
            word += escaped or plain
    if text.endswith(b"\\") and (len(text) - len(text.rstrip(b"\\"))) % 2:
        raise NotifyError(Rejection.BAD_ESCAPE, "trailing backslash")
    if word is not None:
        lines.append(bytes(word))
    return lines


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _strtol(value: bytes) -> int | None:
    """systemd's ``safe_atou64()``/``safe_atoi()`` grammar, on bytes; ``None`` if invalid.

    Leading whitespace and a sign are accepted; ``0b``/``0o``/``0x`` prefixes and C's
    leading-zero octal are honoured (``010`` is 8, ``08`` is invalid); trailing junk
    is not. Returns the signed value: range checks are the caller's.
    """
    try:
        s = value.decode("ascii").lstrip(" \t\n\r")
    except UnicodeDecodeError:
        return None
    base = 0
    if s[:2] in ("0b", "0B", "0o", "0O"):
        base, s = (2 if s[1] in "bB" else 8), s[2:]
    s = s.lstrip(" \t\n\v\f\r")  # strtoul()'s own isspace() skip
    sign = -1 if s[:1] == "-" else 1
    if s[:1] in ("+", "-"):
        s = s[1:]
    if base == 0:
        if s[:2] in ("0x", "0X") and s[2:3] and s[2] in _DIGITS[16]:
            base, s = 16, s[2:]
        else:
            base = 8 if s.startswith("0") else 10
    if not s or any(c not in _DIGITS[base] for c in s):
        return None
    return sign * int(s, base)


def _unsigned(value: bytes | None, maximum: int = _U64_MAX) -> int | None:
    """``safe_atou64()`` and friends: ``None`` if absent, malformed, negative or too big."""
    if value is None:
        return None
    number = _strtol(value)
    # "-0" is fine; any other negative is ERANGE in safe_atou*(), as is overflow.
    return number if number is not None and 0 <= number <= maximum else None


def _pid(value: bytes | None) -> int | None:
    """``parse_pid()``: a positive number that fits pid_t."""
    number = _unsigned(value, 2**31 - 1)
    return number if number else None


def _errno_value(value: bytes | None) -> int | None:
    """``parse_errno()``: an errno name (``ENOENT``) or a number in 0..ERRNO_MAX."""
    if value is None:
        return None
    named = _ERRNO_NAMES.get(value.decode("ascii", errors="replace"))
    if named:
        return named
    number = _strtol(value)
    return number if number is not None and 0 <= number <= ERRNO_MAX else None


def _fdname_ok(name: bytes) -> bool:
    """``fdname_is_valid()``: printable ASCII without ``:``, at most 255 bytes, may be empty."""
    return len(name) <= FDNAME_MAX and all(0x20 <= c < 0x7F and c != 0x3A for c in name)
