"""Value syntax of systemd directives: one string in, one Python value out.

Each converter raises ValueError("expected ..., found ...") for a bad value;
``systemd_directives`` adds the file, line and ``Section.Key``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from ..model import SocketType
from .durations import parse_bool, parse_duration, parse_signal, parse_size
from .ini import show

REFUSED = {
    "Type=dbus": "Type=dbus is not supported: Aeterna has no D-Bus; use Type=notify",
    "Accept=yes": "Accept=yes is not supported (per-connection service instances are "
                  "not implemented); use Accept=no and accept() in the service",
}

def expect(what: str, value: str) -> ValueError:
    return ValueError(f"expected {what}, found {show(value)}")


def enum_value(cls: Any) -> Callable[[str], Any]:
    def conv(v: str) -> Any:
        for m in cls:
            if m.value == v:
                return m
        raise expect("one of " + ", ".join(m.value for m in cls), v)
    return conv


def checked(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def conv(v: str) -> Any:
        try:
            return parse(v)
        except (ValueError, OverflowError):
            raise expect(what, v) from None
    return conv


def whole_number(lo: int, hi: int) -> Callable[[str], int]:
    def conv(v: str) -> int:
        if not re.fullmatch(r"[0-9]{1,12}", v) or not lo <= int(v) <= hi:
            raise expect(f"a whole number from {lo} to {hi}", v)
        return int(v)
    return conv


def octal_mode(v: str) -> int:
    if not re.fullmatch(r"[0-7]{1,4}", v):
        raise expect("an octal file mode like 0660", v)
    return int(v, 8)


def absolute_path(v: str) -> str:
    if not v.startswith("/"):
        raise expect("an absolute path", v)
    return v


def timeout_span(v: str) -> float:
    """A time span where 0 means "no limit" (systemd's timeouts)."""
    seconds = DURATION(v)
    return math.inf if seconds == 0 else float(seconds)


def fd_name(v: str) -> str:
    if len(v) > 255 or ":" in v or any(not " " <= c <= "~" for c in v):
        raise expect("a name of at most 255 printable ASCII characters without ':'", v)
    return v


def ipv6_only(v: str) -> bool | None:
    values = {"default": None, "both": False, "ipv6-only": True}
    if v not in values:
        raise expect("one of default, both, ipv6-only", v)
    return values[v]


BOOL = checked(parse_bool, "a boolean (yes or no)")
DURATION = checked(parse_duration, "a time span like 90s, 2min 200ms or infinity")
SIGNAL = checked(parse_signal, "a signal name like SIGTERM")
SIZE = checked(parse_size, "a size like 256K or 4M")


def is_signal(word: str) -> bool:
    try:
        parse_signal(word)
    except ValueError:
        return False
    return True


def check_address(address: str, kind: SocketType) -> None:
    """Validate with the sockets module's pure parser, the one the binder uses."""
    try:
        from ..wire.address import parse_address
    except ImportError:  # pragma: no cover - only while the package is assembled
        return
    parse_address(address, kind)
