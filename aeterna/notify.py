"""sd_notify: receive, classify and parse readiness datagrams, wire-compatible with systemd.

Three layers, each usable on its own:

* :func:`parse` turns one payload into a frozen :class:`NotifyMessage` or raises
  :class:`NotifyError`. It is pure, so it can be fuzzed and table-tested.
* :class:`Rejection` names every reason a datagram is dropped (its values are the
  labels shared by logs and metrics), and :func:`authorise` applies ``NotifyAccess=``.
* :class:`NotifyReceiver` owns the AF_UNIX datagram socket whose path goes into
  ``$NOTIFY_SOCKET`` and turns each datagram into a :class:`Datagram`.

The rules follow systemd's ``notify_recv_with_fds()``, ``strv_split_newlines()`` and
``service_notify_message()``; where systemd differs from the man page, systemd wins.
"""

from __future__ import annotations

import array
import enum
import errno as _errno
import functools
import os
import re
import socket
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from aeterna.model import NotifyAccess

NOTIFY_BUFFER_MAX = 4096  # systemd's PIPE_BUF limit on one payload
NOTIFY_FD_MAX = 768  # fds systemd makes control-buffer room for
FDNAME_MAX = 255
ERRNO_MAX = 4095

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
_RECV_BUFSIZE = NOTIFY_BUFFER_MAX + 1  # one spare byte, so 4097 bytes is "too large", not cut
_RECV_ANCBUFSIZE = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(4 * NOTIFY_FD_MAX)
_RCVBUF_WANTED = 8 * 1024 * 1024  # systemd's NOTIFY_RCVBUF_SIZE

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
    control_pids: set[int],
    unit_pids: set[int],
) -> bool:
    """Whether ``sender_pid`` may notify for a unit under ``NotifyAccess=access``.

    ``none`` refuses everyone; ``main`` accepts only the main pid (never an unknown
    one); ``exec`` also the current control processes; ``all`` any process of the unit.
    """
    if sender_pid <= 0 or access is NotifyAccess.NONE:
        return False
    if main_pid is not None and sender_pid == main_pid:
        return True
    if access is NotifyAccess.MAIN:
        return False
    if sender_pid in control_pids:
        return True
    return access is NotifyAccess.ALL and sender_pid in unit_pids


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received datagram: its credentials, fds and either a message or a rejection.

    On a rejection the fds have already been closed: ``fds`` is empty and
    ``n_fds`` says how many arrived. An accepted datagram's ``fds`` belong to the
    caller, who must pass them to :func:`close_fds` unless it keeps them
    (``FDSTORE=1``, ``MAINPIDFD=1``), also when :func:`authorise` refuses the sender.
    """

    payload: bytes
    pid: int | None
    uid: int | None
    gid: int | None
    fds: list[int]
    n_fds: int
    message: NotifyMessage | None = None
    rejection: Rejection | None = None


def close_fds(fds: list[int]) -> None:
    """Close every fd in ``fds`` and empty the list, so a second call is harmless.

    Emptying matters: closing a number twice could close an unrelated fd that
    the kernel handed out in between. Closing a barrier's fd is its acknowledgement.
    """
    # Synchronous, unlike systemd's asynchronous_close(): closing the last reference to a
    # hostile fd (a lingering socket, a FUSE file) can block the caller for a while.
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


class NotifyReceiver:
    """The ``$NOTIFY_SOCKET`` endpoint: a non-blocking AF_UNIX datagram socket at ``path``.

    Usage from the manager's loop::

        loop.add_reader(receiver.fileno(), on_notify)

        def on_notify():
            while (d := receiver.receive()) is not None:
                if d.message is None:
                    log(d.rejection); continue
                if d.message.barrier:
                    close_fds(d.fds)  # the acknowledgement; systemd does it before authorising
                    continue
                ... find the unit, authorise(), dispatch, then close_fds(d.fds) unless stored

    Drain the socket before reaping children (systemd gives notify priority over
    SIGCHLD): a sender that is reaped first can no longer be mapped to its unit.
    """

    def __init__(self, path: str) -> None:
        """Bind ``path`` (a filesystem path, not abstract), replacing a stale socket there."""
        if not path or path[0] in "@\0":
            raise ValueError(f"notify socket must be a filesystem path: {path!r}")
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec (PEP 446)
        try:
            # Before bind: a datagram that arrives between bind() and SO_PASSCRED would
            # carry no credentials and be dropped.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # Clients send blocking datagrams and a full queue stalls every one of them; the
            # kernel caps this at net.core.rmem_max (systemd asks for 8 MiB as well).
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF_WANTED)
            self._sock.setblocking(False)
            _remove_stale_socket(path)
            self._sock.bind(path)
            st = os.stat(path)
            self._node = (st.st_dev, st.st_ino)
            # Children may run as other users; connect() needs write permission on the node.
            os.chmod(path, 0o777)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        """The socket's fd, for a selector or ``loop.add_reader``."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket and unlink its node, unless another socket has replaced it."""
        if self._sock.fileno() == -1:
            return
        self._sock.close()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._node:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> NotifyReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def receive(self) -> Datagram | None:
        """Read one datagram, or return ``None`` when none is queued.

        Never raises because of what a sender did: every bad datagram comes back
        as a :class:`Datagram` with a ``rejection`` and its fds already closed.
        """
        try:
            payload, ancdata, msg_flags, _ = self._sock.recvmsg(
                _RECV_BUFSIZE,
                _RECV_ANCBUFSIZE,
                socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
            )
        except (BlockingIOError, InterruptedError):
            return None
        # Collect every fd first: they are already open in this process, whatever the
        # verdict. MSG_CMSG_CLOEXEC keeps them out of children forked meanwhile.
        fds: list[int] = []
        ucred: tuple[int, int, int] | None = None
        for level, kind, data in ancdata:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_RIGHTS:
                ints = array.array("i")
                ints.frombytes(data[: len(data) - len(data) % ints.itemsize])
                fds.extend(ints)
            elif kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
                ucred = _UCRED.unpack_from(data)
        pid, uid, gid = ucred if ucred is not None else (None, None, None)
        n_fds = len(fds)
        try:
            message = validate(payload, msg_flags, pid, n_fds)
        except NotifyError as exc:
            close_fds(fds)
            return Datagram(payload, pid, uid, gid, fds, n_fds, rejection=exc.reason)
        return Datagram(payload, pid, uid, gid, fds, n_fds, message=message)


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket node nobody listens on (a crashed manager's); bind() then succeeds.

    A live one is left alone, so bind() fails with EADDRINUSE instead of stealing it.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
        except OSError:
            pass


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
