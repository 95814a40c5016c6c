"""The re-exec state: what one manager hands the next across ``exec`` (pure, versioned).

``daemon-reexec`` writes this into a sealed memfd; the new binary checks it
(``aeterna --check-state FD``) and then resumes from it. The payload is one
header line ``AETERNA-STATE <version>`` and a JSON object. fd numbers in it
are the manager's own: they survive ``exec`` with the same numbers, so the
record says which fd is what, and nothing else is kept open.

Monotonic times (``started_at``, deadlines) are CLOCK_MONOTONIC values: the
clock is the same before and after ``exec``, so a restart delay or a start
timeout keeps its deadline instead of starting over.

Pure: :func:`decode` takes bytes and returns frozen records or raises
:class:`StateError` naming the key and what was expected; it never raises
anything else (fuzzed in tests/pure/test_state_wire.py).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field
from typing import Any

MAGIC = b"AETERNA-STATE"
FORMAT_VERSION = 1
MAX_STATE = 64 << 20  # a state this large means something is wrong


class StateError(ValueError):
    """The state cannot be used: ``str()`` names where and what was expected."""


@dataclass(frozen=True)
class Named:
    """An fd with its name: a listener (LISTEN_FDNAMES) or an fd store entry (FDNAME=)."""

    name: str
    fd: int


@dataclass(frozen=True)
class Pipe:
    """The read end of a child's stdout or stderr, relayed as ``prefix line``."""

    fd: int
    prefix: str
    stream: str  # "out" | "err"
    partial: bytes = b""  # an unfinished last line, not yet written


@dataclass(frozen=True)
class Channel:
    """The manager's end of one generation's SRP socketpair."""

    generation: int
    fd: int
    asked: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """The latest SRP checkpoint: its fields and its sealed memfds."""

    generation: int
    fields: tuple[tuple[str, str], ...]
    fds: tuple[int, ...]


@dataclass(frozen=True)
class Srp:
    seq: int = 0
    channels: tuple[Channel, ...] = ()
    latest: Checkpoint | None = None


@dataclass(frozen=True)
class Unit:
    """One unit as it runs: its state machine's values, its process, its fds."""

    name: str
    state: str
    result: str = "success"
    want: str = "policy"
    main_pid: int | None = None
    pgid: int | None = None
    generation: int = 0
    last_generation: int = 0
    restarts: int = 0
    restart_attempt: int = 0
    started_at: float | None = None  # monotonic
    deadline: float | None = None  # monotonic: when the state's one timer fires
    timer_event: str = "timeout"
    exit_code: int | None = None
    exit_signal: int | None = None
    status_text: str = ""
    listeners: tuple[Named, ...] = ()
    fdstore: tuple[Named, ...] = ()
    srp: Srp | None = None


@dataclass(frozen=True)
class ManagerState:
    """Everything the next manager needs to carry on where this one stops."""

    aeterna_version: str
    pid: int
    paths: tuple[str, ...]
    control_path: str
    runtime_dir: str
    log_level: str
    notify_path: str
    notify_fd: int
    control_fd: int
    taken_at: float  # monotonic
    started_wall: float  # when the first manager of this line started (epoch)
    reexecs: int = 0
    last_reexec_wall: float | None = None
    reply_fd: int | None = None  # the control client waiting for the re-exec's answer
    units: tuple[Unit, ...] = ()
    pipes: tuple[Pipe, ...] = ()
    counters: tuple[tuple[str, int], ...] = ()
    format_version: int = field(default=FORMAT_VERSION)

    def fds(self) -> list[int]:
        """Every fd the record names: the ones that must stay open across ``exec``."""
        out = [self.notify_fd, self.control_fd]
        if self.reply_fd is not None:
            out.append(self.reply_fd)
        out += [p.fd for p in self.pipes]
        for u in self.units:
            out += [n.fd for n in u.listeners] + [n.fd for n in u.fdstore]
            if u.srp is not None:
                out += [c.fd for c in u.srp.channels]
                if u.srp.latest is not None:
                    out += list(u.srp.latest.fds)
        return out


# --------------------------------------------------------------------------- encode
def encode(state: ManagerState) -> bytes:
    """The header line and the JSON object (bytes fields as base64)."""
    body = asdict(state)
    for pipe in body["pipes"]:
        pipe["partial"] = base64.b64encode(pipe["partial"]).decode()
    header = MAGIC + b" " + str(state.format_version).encode() + b"\n"
    return header + json.dumps(body, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- decode
def decode(data: bytes) -> ManagerState:
    """Parse and check a state; raises StateError (only) naming the key at fault."""
    if len(data) > MAX_STATE:
        raise StateError(f"state of {len(data)} bytes exceeds {MAX_STATE}")
    header, sep, body = data.partition(b"\n")
    words = header.split(b" ")
    if not sep or len(words) != 2 or words[0] != MAGIC:
        raise StateError("not an Aeterna state (no 'AETERNA-STATE <version>' header)")
    if not words[1].isdigit() or int(words[1]) != FORMAT_VERSION:
        raise StateError(f"state format version {words[1].decode(errors='replace')!r}: "
                         f"this Aeterna reads version {FORMAT_VERSION}")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise StateError(f"state body: not JSON ({type(exc).__name__})") from None
    r = _Reader(obj, "state")
    if r.integer("format_version") != FORMAT_VERSION:
        raise StateError(f"state.format_version: expected {FORMAT_VERSION}")
    return ManagerState(
        aeterna_version=r.text("aeterna_version"), pid=r.integer("pid"),
        paths=tuple(r.strs("paths")), control_path=r.text("control_path"),
        runtime_dir=r.text("runtime_dir"), log_level=r.text("log_level"),
        notify_path=r.text("notify_path"), notify_fd=r.fd("notify_fd"),
        control_fd=r.fd("control_fd"), taken_at=r.number("taken_at"),
        started_wall=r.number("started_wall"), reexecs=r.integer("reexecs"),
        last_reexec_wall=r.opt_float("last_reexec_wall"), reply_fd=r.opt_fd("reply_fd"),
        units=tuple(_unit(u) for u in r.items("units")),
        pipes=tuple(_pipe(p) for p in r.items("pipes")),
        counters=tuple((r.sub_str(c, 0), r.sub_int(c, 1)) for c in r.pairs("counters")),
    )


def _unit(r: _Reader) -> Unit:
    srp = r.opt_obj("srp")
    return Unit(
        name=r.text("name"), state=r.text("state"), result=r.text("result"), want=r.text("want"),
        main_pid=r.opt_pid("main_pid"), pgid=r.opt_pid("pgid"),
        generation=r.integer("generation"), last_generation=r.integer("last_generation"),
        restarts=r.integer("restarts"), restart_attempt=r.integer("restart_attempt"),
        started_at=r.opt_float("started_at"), deadline=r.opt_float("deadline"),
        timer_event=r.text("timer_event"), exit_code=r.opt_int("exit_code"),
        exit_signal=r.opt_int("exit_signal"), status_text=r.text("status_text"),
        listeners=tuple(_named(n) for n in r.items("listeners")),
        fdstore=tuple(_named(n) for n in r.items("fdstore")),
        srp=_srp(srp) if srp is not None else None,
    )


def _named(r: _Reader) -> Named:
    return Named(name=r.text("name"), fd=r.fd("fd"))


def _pipe(r: _Reader) -> Pipe:
    stream = r.text("stream")
    if stream not in ("out", "err"):
        raise StateError(f"{r.where}.stream: expected 'out' or 'err'")
    try:
        partial = base64.b64decode(r.text("partial"), validate=True)
    except (binascii.Error, ValueError):
        raise StateError(f"{r.where}.partial: expected base64") from None
    return Pipe(fd=r.fd("fd"), prefix=r.text("prefix"), stream=stream, partial=partial)


def _srp(r: _Reader) -> Srp:
    latest = r.opt_obj("latest")
    return Srp(seq=r.integer("seq"),
               channels=tuple(Channel(generation=c.integer("generation"), fd=c.fd("fd"),
                                      asked=c.flag("asked")) for c in r.items("channels")),
               latest=None if latest is None else Checkpoint(
                   generation=latest.integer("generation"),
                   fields=tuple((latest.sub_str(p, 0), latest.sub_str(p, 1))
                                for p in latest.pairs("fields")),
                   fds=tuple(latest.fds("fds"))))


class _Reader:
    """Typed access to one JSON object; every failure names ``where.key``."""

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise StateError(f"{where}: expected an object")
        self.obj, self.where = obj, where

    def _get(self, key: str) -> Any:
        if key not in self.obj:
            raise StateError(f"{self.where}.{key}: missing")
        return self.obj[key]

    def _fail(self, key: str, what: str) -> StateError:
        return StateError(f"{self.where}.{key}: expected {what}")

    def text(self, key: str) -> str:
        v = self._get(key)
        if not isinstance(v, str):
            raise self._fail(key, "a string")
        return v

    def integer(self, key: str) -> int:
        v = self._get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise self._fail(key, "a non-negative integer")
        return v

    def flag(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise self._fail(key, "true or false")
        return v

    def opt_int(self, key: str) -> int | None:
        return None if self._get(key) is None else self.integer(key)

    def opt_pid(self, key: str) -> int | None:
        v = self.opt_int(key)
        if v is not None and not 0 < v < 1 << 22:
            raise self._fail(key, "a pid")
        return v

    def fd(self, key: str) -> int:
        v = self.integer(key)
        if not 2 < v < 1 << 20:
            raise self._fail(key, "an fd number above 2")
        return v

    def opt_fd(self, key: str) -> int | None:
        return None if self._get(key) is None else self.fd(key)

    def number(self, key: str) -> float:
        v = self._get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v < 0:
            raise self._fail(key, "a non-negative number")
        return float(v)

    def opt_float(self, key: str) -> float | None:
        return None if self._get(key) is None else self.number(key)

    def items(self, key: str) -> list[_Reader]:
        v = self._get(key)
        if not isinstance(v, list):
            raise self._fail(key, "a list")
        return [_Reader(x, f"{self.where}.{key}[{i}]") for i, x in enumerate(v)]

    def opt_obj(self, key: str) -> _Reader | None:
        v = self._get(key)
        return None if v is None else _Reader(v, f"{self.where}.{key}")

    def strs(self, key: str) -> list[str]:
        v = self._get(key)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._fail(key, "a list of strings")
        return v

    def fds(self, key: str) -> list[int]:
        v = self._get(key)
        if not isinstance(v, list):
            raise self._fail(key, "a list of fds")
        return [_Reader({"fd": x}, f"{self.where}.{key}[{i}]").fd("fd")
                for i, x in enumerate(v)]

    def pairs(self, key: str) -> list[tuple[int, list[Any]]]:
        v = self._get(key)
        if not isinstance(v, list) or not all(isinstance(x, list) and len(x) == 2 for x in v):
            raise self._fail(key, "a list of [name, value] pairs")
        return list(enumerate(v))

    def sub_str(self, pair: tuple[int, list[Any]], i: int) -> str:
        v = pair[1][i]
        if not isinstance(v, str):
            raise StateError(f"{self.where}[{pair[0]}][{i}]: expected a string")
        return v

    def sub_int(self, pair: tuple[int, list[Any]], i: int) -> int:
        v = pair[1][i]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise StateError(f"{self.where}[{pair[0]}][{i}]: expected a non-negative integer")
        return v
