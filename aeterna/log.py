"""The manager's own log: one line per event, ``aeterna: EVENT key=value ...``.

Event names and values (``result=exit-code``) are the same strings that
``aeterna status`` and metrics use, so a log line can be grepped for what the
CLI showed. Lines go to stderr; unit output goes through ``output``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

# Warnings and errors of one event name: at most BURST lines per INTERVAL
# seconds, as journald rate-limits a service. The lines a stranger can cause
# (notify.dropped for 100k datagrams was 6 MB in 1.5 s) are warnings; the
# lifecycle lines that tests and users follow are info and never limited.
BURST = 50
INTERVAL = 5.0


def log_level(text: str) -> str:
    """A level name, as unit files give it; ValueError names the choices."""
    if text not in LEVELS:
        raise ValueError(f"expected one of {' | '.join(LEVELS)}, got {text!r}")
    return text


class Log:
    def __init__(self, stream: TextIO | None = None, level: str = "info"):
        self.stream = stream or sys.stderr
        self.level = LEVELS.get(level, 20)
        # observability.log_level of units that set one: it decides for the lines
        # about that unit (those with unit=NAME) instead of the manager's level.
        self.unit_levels: dict[str, int] = {}
        self._windows: dict[str, list[float]] = {}  # event -> [window start, lines, dropped]
        self.suppressed = 0  # lines dropped by the rate limit, for /metrics

    def set_unit_levels(self, levels: dict[str, str]) -> None:
        self.unit_levels = {name: LEVELS[lv] for name, lv in levels.items() if lv}

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        threshold = self.level
        if self.unit_levels and "unit" in fields:
            threshold = self.unit_levels.get(fields["unit"], threshold)
        if level < threshold:
            return
        if level >= 30 and not self._admit(event):
            return
        self._write(event, fields)

    def _admit(self, event: str) -> bool:
        """The rate limit; a window that ends with lines dropped says how many."""
        now = time.monotonic()
        w = self._windows.get(event)
        if w is None or now - w[0] >= INTERVAL:
            if w is not None and w[2]:
                self._write("log.suppressed", {"event": event, "lines": int(w[2]),
                                               "seconds": round(now - w[0], 1)})
            self._windows[event] = [now, 1, 0]
            return True
        if w[1] < BURST:
            w[1] += 1
            return True
        w[2] += 1
        self.suppressed += 1
        if w[2] == 1:
            self._write("log.rate-limited", {"event": event, "burst": BURST,
                                             "interval": INTERVAL})
        return False

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        parts = [f"aeterna: {event}"]
        for key, value in fields.items():
            if value is None:
                continue
            if type(value) is str:  # the common case first: this runs on hot paths
                text = value
            elif isinstance(value, (int, float, str)) or not hasattr(value, "value"):
                text = str(value)
            else:
                text = str(value.value)
            if not text or " " in text or '"' in text or "=" in text:
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(f"{key}={text}")
        try:
            self.stream.write(" ".join(parts) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full stderr must never take the manager down

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(10, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(20, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(30, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(40, event, fields)


def monotonic() -> float:
    return time.monotonic()
