"""Fake hosts: drive the unit's and the relay's state machines without a process.

``FakeHost`` is what ``unit.runtime.Host`` asks for, in memory: it hands out
pids above the kernel's pid_max (so a stray real ``kill`` could never reach a
real process), records every signal, keeps timers until a test fires them,
and models processes as alive until a test (or a signal the process does not
withstand) ends them. Like the manager's, its ``changed`` only records: it
never calls back into a unit.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aeterna.model import (
    Condition,
    KillMode,
    RestartPolicy,
    Service,
    ServiceType,
    Timeouts,
    UnitSpec,
)
from aeterna.results import ExitInfo
from aeterna.unit.pids import PidIndex
from aeterna.unit.runtime import UnitRuntime
from aeterna.unit.states import Deps, Event, State

PID_BASE = 10_000_000  # above /proc/sys/kernel/pid_max's ceiling (4194304)


@dataclass
class FakeTimer:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeProcess:
    pid: int
    role: str  # "main" | "command"
    alive: bool = True
    withstands: frozenset[int] = frozenset()  # signals it survives (never SIGKILL...
    unkillable: bool = False  # ...unless it is in uninterruptible sleep)
    status: ExitInfo | None = None
    reaped: bool = False


@dataclass
class FakeHost:
    deps: Deps = Deps.UP
    spawn_error: Exception | None = None
    pids: PidIndex = field(default_factory=PidIndex)
    procs: dict[int, FakeProcess] = field(default_factory=dict)
    signals: list[tuple[int, int, bool]] = field(default_factory=list)
    timers: list[FakeTimer] = field(default_factory=list)
    changes: list[tuple[str, State]] = field(default_factory=list)
    logs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    commands: list[tuple[str, ...]] = field(default_factory=list)
    now: float = 0.0
    withstands: frozenset[int] = frozenset({signal.SIGHUP})  # what new processes survive
    # Process group -> members left behind by its leader (a daemon's workers), which
    # the group's signals reach; ``unkillable`` ones survive SIGKILL too.
    leftovers: dict[int, int] = field(default_factory=dict)
    unkillable_leftovers: bool = False
    forked_pid: int = 0  # what forked_main_pid answers (Type=forking)
    _next: int = PID_BASE

    # ------------------------------------------------------------ Host
    def _spawn(self, role: str) -> int:
        if self.spawn_error is not None:
            raise self.spawn_error
        self._next += 1
        self.procs[self._next] = FakeProcess(self._next, role, withstands=self.withstands)
        return self._next

    def spawn_main(self, unit: UnitRuntime) -> int:
        return self._spawn("main")

    def spawn_command(self, unit: UnitRuntime, argv: tuple[str, ...], argv0: str,
                      privileged: bool = False) -> int:
        self.commands.append(argv)
        return self._spawn("command")

    def watch_foreign(self, unit: UnitRuntime, pid: int) -> None:
        pass

    def failed_condition(self, unit: UnitRuntime) -> Condition | None:
        return None

    def prepare_directories(self, unit: UnitRuntime) -> None:
        pass

    def forked_main_pid(self, unit: UnitRuntime) -> int:
        return self.forked_pid

    def group_of(self, pid: int) -> int | None:
        return pid

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def kill(self, pid: int, sig: int, group: bool) -> bool:
        self.signals.append((pid, sig, group))
        left = self.leftovers.get(pid, 0) if group else 0
        if left and sig not in (0, signal.SIGCONT) and sig not in self.withstands and not (
                sig == signal.SIGKILL and self.unkillable_leftovers):
            self.leftovers[pid] = left = 0
        proc = self.procs.get(pid)
        if left and (proc is None or not proc.alive):
            return True
        if proc is None or not proc.alive:
            return False
        if sig in (0, signal.SIGCONT):
            return True
        dies = not proc.unkillable if sig == signal.SIGKILL else sig not in proc.withstands
        if dies:
            proc.alive = False
            proc.status = ExitInfo(signal=sig)
        return True

    def deps_state(self, unit: UnitRuntime) -> Deps:
        return self.deps

    def changed(self, unit: UnitRuntime) -> None:
        self.changes.append((unit.name, unit.state))

    def info(self, event: str, **fields: Any) -> None:
        self.logs.append((event, fields))

    warning = info

    # ------------------------------------------------------------ driving
    def pending(self) -> list[FakeTimer]:
        return sorted((t for t in self.timers if not t.cancelled), key=lambda t: t.at)

    def fire_next(self) -> bool:
        """Run the earliest live timer (time jumps to it); False if there is none."""
        live = self.pending()
        if not live:
            return False
        timer = live[0]
        self.timers.remove(timer)
        self.now = max(self.now, timer.at)
        timer.callback()
        return True

    def exit(self, unit: UnitRuntime, pid: int, info: ExitInfo | None = None) -> None:
        """``pid`` ends (if a signal did not end it already) and the reaper reports it."""
        proc = self.procs[pid]
        proc.alive = False
        proc.reaped = True
        status = info or proc.status or ExitInfo(code=0)
        if proc.role == "command":
            if unit.command_pid == pid:
                unit.dispatch(Event.COMMAND_EXITED, info=status)
        elif self.pids.mains.get(pid) is unit and unit.main_pid == pid:
            unit.dispatch(Event.EXITED, info=status)

    def reap(self, unit: UnitRuntime) -> None:
        """One pass of the reaper: every process a signal ended is reported; then the
        manager's group check for a unit that is stopping."""
        for proc in list(self.procs.values()):
            if not proc.alive and proc.status is not None:
                status, proc.status = proc.status, None
                self.exit(unit, proc.pid, status)
        unit.check_group()

    def unreaped_mains(self) -> list[int]:
        """Main processes that ran and were not reaped yet (alive, or dead unreported)."""
        return [p.pid for p in self.procs.values() if p.role == "main" and not p.reaped]

    def sent(self, sig: int) -> int:
        return sum(1 for _pid, s, _g in self.signals if s == sig)


def spec(name: str = "u", **service: Any) -> UnitSpec:
    """A unit definition for tests: a simple service unless told otherwise."""
    svc = Service(name=name, command=("/bin/app",), timeouts=Timeouts(start=5, stop=5))
    return UnitSpec(service=replace(svc, **service))


__all__ = ["FakeHost", "FakeTimer", "KillMode", "RestartPolicy", "ServiceType", "spec"]
