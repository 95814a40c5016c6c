"""After the manager itself died: never two copies of a unit, never EADDRINUSE.

While it runs, the manager keeps a journal beside its control socket
(``CONTROL.units``) of every process it leads a group for (main processes,
canaries, commands), with its start time, one tab-separated line per change
(no json: an idle manager does not load it)::

    aeterna-units 2
    manager PID START
    + PID START NAME
    - PID

Lines are appended (O(1) per spawn or exit, whatever the number of units) at
the end of the run-queue pass that saw the change, so an idle manager never
writes; the file is rewritten with only the live processes once it holds
more dead ones than live ones. It is removed when the manager exits cleanly.

A manager started on the same control socket that finds the journal of a
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
from ..unit.pids import PidIndex

if TYPE_CHECKING:
    from .manager import Manager

RECORD_VERSION = 2


def record_path(m: Manager) -> str | None:
    control = m.reexec.identity.control_path
    return control + ".units" if control else None


class RecordedPids(PidIndex):
    """The pid index, noting each group leader that comes or goes for the journal."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[bool, int, str]] = []  # (started, pid, owner's name)

    def main(self, owner: Any, old: int | None, new: int | None) -> None:
        super().main(owner, old, new)
        self._note(owner, old, new)

    def group(self, owner: object, old: int | None, new: int | None) -> None:
        super().group(owner, old, new)
        self._note(owner, old, new)

    def _note(self, owner: object, old: int | None, new: int | None) -> None:
        name = str(getattr(owner, "name", "") or type(owner).__name__)
        if old is not None and old != new:
            self.changes.append((False, old, name))
        if new is not None and new != old:
            self.changes.append((True, new, name))


class Recorder:
    """Appends the pid index's changes to the journal (once per run-queue pass)."""

    def __init__(self, m: Manager, pids: RecordedPids):
        self.m = m
        self.pids = pids
        self.live: dict[int, tuple[int, str]] = {}  # pid -> (start time, unit)
        self.lines = 0
        self._fd = -1
        self._me = stale.start_time(os.getpid()) or 0

    def open(self, fresh: bool) -> None:
        """At start (``fresh``: truncate; after a re-exec: go on appending)."""
        path = record_path(self.m)
        if path is None:
            return
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                               | (os.O_TRUNC if fresh else 0), 0o600)
        except OSError as exc:
            self.m.log.warning("recovery.record-failed", path=path, error=exc.strerror)
            return
        if fresh or os.fstat(self._fd).st_size == 0:
            self._append([f"aeterna-units\t{RECORD_VERSION}",
                          f"manager\t{os.getpid()}\t{self._me}"])

    def flush(self) -> None:
        changes, self.pids.changes = self.pids.changes, []
        lines = []
        for started, pid, name in changes:
            if started:
                t = stale.start_time(pid)
                if t is None:
                    continue  # gone already
                self.live[pid] = (t, name)
                lines.append(f"+\t{pid}\t{t}\t{name}")
            elif self.live.pop(pid, None) is not None:
                lines.append(f"-\t{pid}")
        if self._fd < 0 or not lines:
            return
        if self.lines + len(lines) > 2 * len(self.live) + 256:
            self._compact()
        else:
            self._append(lines)

    def _append(self, lines: list[str]) -> None:
        try:
            os.write(self._fd, ("\n".join(lines) + "\n").encode())
            self.lines += len(lines)
        except OSError as exc:
            self.m.log.warning("recovery.record-failed", error=exc.strerror)

    def _compact(self) -> None:
        path = record_path(self.m)
        assert path is not None
        body = [f"aeterna-units\t{RECORD_VERSION}", f"manager\t{os.getpid()}\t{self._me}"]
        body += [f"+\t{pid}\t{t}\t{name}" for pid, (t, name) in self.live.items()]
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write("\n".join(body) + "\n")
            os.replace(tmp, path)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            self.m.log.warning("recovery.record-failed", path=path, error=exc.strerror)
            return
        os.close(self._fd)
        self._fd, self.lines = fd, len(body)

    def remove(self) -> None:
        path = record_path(self.m)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def parse_record(text: str) -> tuple[tuple[int, int], list[tuple[str, int, int]]]:
    """(the manager's (pid, start), [(unit, pid, start)] still live at the end of the
    journal); ValueError naming the line if malformed."""
    lines = text.splitlines()
    if not lines or lines[0] != f"aeterna-units\t{RECORD_VERSION}":
        raise ValueError(f"line 1: expected 'aeterna-units\t{RECORD_VERSION}'")
    dead: tuple[int, int] | None = None
    live: dict[int, tuple[str, int]] = {}
    for n, line in enumerate(lines[1:], 2):
        f = line.split("\t")
        if f[0] == "manager" and len(f) == 3:
            dead = (int(f[1]), int(f[2]))
        elif f[0] == "+" and len(f) == 4:
            live[int(f[1])] = (f[3], int(f[2]))
        elif f[0] == "-" and len(f) == 2:
            live.pop(int(f[1]), None)
        elif line:
            raise ValueError(f"line {n}: expected 'manager PID START', '+ PID START NAME' "
                             "or '- PID'")
    if dead is None:
        raise ValueError("no manager line")
    return dead, [(name, pid, t) for pid, (name, t) in live.items()]


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
    for name, pid, started in procs:
        if not stale.same_process(pid, started):
            m.log.info("recovery.left-alone", unit=name, pid=pid,
                       reason="gone" if stale.start_time(pid) is None else "pid reused")
            continue
        r = m.units.get(name)
        svc = r.spec.service if r is not None else None
        leader = pid if stale.group_of(pid) == pid else None
        how = stale.stop(pid, leader, svc.stop_signal if svc else 15,
                         svc.timeouts.stop if svc else 10.0)
        m.log.warning("recovery.stopped-stale", unit=name, pid=pid, how=how,
                      note="the previous manager died; adoption is not built yet")
    with contextlib.suppress(OSError):
        os.unlink(path)
