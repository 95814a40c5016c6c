"""After the manager itself died: never two copies of a unit, never EADDRINUSE.

While it runs, the manager keeps a small record beside its control socket
(``CONTROL.units``): its own pid and start time, and for each unit every live
generation's pid, process group and start time, one tab-separated line each
(no json: an idle manager does not load it)::

    aeterna-units 1
    manager PID START
    unit NAME PID PGID START

It is rewritten shortly after a pass of the run queue that changed a unit
(atomically: a new file renamed over the old one), and removed when the
manager exits cleanly.

A manager started on the same control socket that finds a record of a
manager that is gone stops what that manager left running, gracefully (the
unit's stop signal, then SIGKILL after its stop timeout), before binding and
starting anything. A pid whose start time differs is someone else's now and
is left alone. Adopting the survivors instead (``pidfd_getfd`` of their
listeners) is not built yet (docs/reexec.md).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from ..linux import stale

if TYPE_CHECKING:
    from .manager import Manager

RECORD_VERSION = 1
DEBOUNCE = 0.05  # s: at most 20 writes a second, whatever the number of units


def record_path(m: Manager) -> str | None:
    control = m.reexec.identity.control_path
    return control + ".units" if control else None


class Recorder:
    """Writes the record when something changed (once per run-queue pass)."""

    def __init__(self, m: Manager):
        self.m = m
        self.dirty = False
        self._starts: dict[int, int] = {}  # pid -> start time, read once per process
        self._me = stale.start_time(os.getpid())
        self._pending = False

    def soon(self) -> None:
        """Something changed: write the record shortly (a burst of changes, one write)."""
        if not self._pending and self.m.loop is not None:
            self._pending = True
            self.m.loop.call_later(DEBOUNCE, self.write)

    def write(self) -> None:
        self.dirty = self._pending = False
        path = record_path(self.m)
        if path is None:
            return
        lines = [f"aeterna-units\t{RECORD_VERSION}", f"manager\t{os.getpid()}\t{self._me or 0}"]
        live: dict[int, int] = {}
        for name, r in self.m.units.items():
            for pid, pgid in _pids(self.m, name, r):
                started = self._starts.get(pid) or stale.start_time(pid)
                if started is None:
                    continue
                live[pid] = started
                lines.append(f"unit\t{name}\t{pid}\t{pgid or 0}\t{started}")
        self._starts = live
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            self.m.log.warning("recovery.record-failed", path=path, error=exc.strerror)

    def remove(self) -> None:
        path = record_path(self.m)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _pids(m: Manager, name: str, r: Any) -> list[tuple[int, int | None]]:
    out: list[tuple[int, int | None]] = []
    if r.main_pid is not None:
        out.append((r.main_pid, r.pgid))
    if m.relays is not None:
        out += [(g["pid"], g["pid"]) for g in m.relays.generations(name)
                if g.get("pid") and g["pid"] != r.main_pid]
    return out


def parse_record(text: str) -> tuple[tuple[int, int], list[tuple[str, int, int, int]]]:
    """(the manager's (pid, start), [(unit, pid, pgid, start)]); ValueError if malformed."""
    lines = text.splitlines()
    if not lines or lines[0] != f"aeterna-units\t{RECORD_VERSION}":
        raise ValueError("not an aeterna-units record of version 1")
    dead: tuple[int, int] | None = None
    procs = []
    for n, line in enumerate(lines[1:], 2):
        f = line.split("\t")
        if f[0] == "manager" and len(f) == 3:
            dead = (int(f[1]), int(f[2]))
        elif f[0] == "unit" and len(f) == 5:
            procs.append((f[1], int(f[2]), int(f[3]), int(f[4])))
        else:
            raise ValueError(f"line {n}: expected 'manager PID START' or "
                             "'unit NAME PID PGID START'")
    if dead is None:
        raise ValueError("no manager line")
    return dead, procs


def stop_stale(m: Manager) -> None:
    """At a fresh start: stop what a dead manager of this control socket left running."""
    path = record_path(m)
    if path is None:
        return
    try:
        with open(path) as f:
            dead, procs = parse_record(f.read())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        m.log.warning("recovery.record-unreadable", path=path, error=str(exc))
        return
    if dead[0] != os.getpid() and stale.same_process(*dead):
        m.log.warning("recovery.manager-alive", pid=dead[0], action="left alone")
        return
    for name, pid, pgid, started in procs:
        if not stale.same_process(pid, started):
            m.log.info("recovery.left-alone", unit=name, pid=pid,
                       reason="gone" if stale.start_time(pid) is None else "pid reused")
            continue
        r = m.units.get(name)
        svc = r.spec.service if r is not None else None
        how = stale.stop(pid, pgid or None, svc.stop_signal if svc else 15,
                         svc.timeouts.stop if svc else 10.0)
        m.log.warning("recovery.stopped-stale", unit=name, pid=pid, how=how,
                      note="the previous manager died; adoption is not built yet")
    with contextlib.suppress(OSError):
        os.unlink(path)
