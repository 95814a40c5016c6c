"""Pure parsers for durations, sizes and signal names shared by all loaders.

Durations accept Aeterna's compact form (``30s``, ``1m30s``, ``250ms``) and
systemd's time spans (``2min 200ms``, bare seconds, ``infinity``).
"""

from __future__ import annotations

import math
import re
import signal

_UNITS = {
    "us": 1e-6, "usec": 1e-6, "µs": 1e-6,
    "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zµ]*)")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}


def parse_duration(text: str) -> float:
    """Return seconds for a duration string, or raise ValueError.

    A bare number is seconds, as in systemd. ``infinity`` is math.inf.
    """
    s = text.strip().lower()
    if s == "infinity":
        return math.inf
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad duration {text!r}")
        number, unit = m.group(1), m.group(2)
        if unit not in _UNITS and unit != "":
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += float(number) * (_UNITS[unit] if unit else 1.0)
        pos = m.end()
        while pos < len(s) and s[pos] == " ":
            pos += 1
    return total


def parse_size(text: str) -> int:
    """Return bytes for ``512MiB``, ``1G``, ``4096``; raise ValueError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_signal(text: str) -> signal.Signals:
    """Return the signal for ``SIGTERM``, ``TERM`` or ``15``; raise ValueError."""
    s = text.strip()
    if s.isdigit():
        try:
            return signal.Signals(int(s))
        except ValueError:
            raise ValueError(f"unknown signal {text!r}") from None
    name = s.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        sig = signal.Signals[name]
    except KeyError:
        raise ValueError(f"unknown signal {text!r}") from None
    return sig


def parse_bool(text: str) -> bool:
    """systemd booleans: 1/yes/true/on and 0/no/false/off."""
    s = text.strip().lower()
    if s in ("1", "yes", "y", "true", "t", "on"):
        return True
    if s in ("0", "no", "n", "false", "f", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")
