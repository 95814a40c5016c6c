"""Ordering across units with a run queue like the manager's: starts, stops, no recursion.

The host queues every change of state and drains the queue in a loop, as the
manager does; the stack depth must not depend on the number of units (the old
core recursed through ``changed`` and hit RecursionError at a few hundred).
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import replace

from fakes import FakeHost, spec

from aeterna.manager.ordering import Ordering
from aeterna.model import Dependency
from aeterna.unit.runtime import UnitRuntime
from aeterna.unit.states import DOWN_STATES, Deps, Event, State


class QueueHost(FakeHost):
    """A FakeHost whose ``changed`` feeds a run queue drained by ``drain``."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: deque[tuple[UnitRuntime, Event | None]] = deque()
        self.ordering: Ordering | None = None
        self.stop_order: list[str] = []
        self.dead: deque[UnitRuntime] = deque()

    def changed(self, unit: UnitRuntime) -> None:
        super().changed(unit)
        self.queue.append((unit, None))

    def post(self, unit: UnitRuntime, event: Event) -> None:
        self.queue.append((unit, event))

    def deps_state(self, unit: UnitRuntime) -> Deps:
        assert self.ordering is not None
        return self.ordering.deps_state(unit)

    def kill(self, pid: int, sig: int, group: bool) -> bool:
        alive = super().kill(pid, sig, group)
        owner = self.pids.mains.get(pid)
        if sig == 15 and owner is not None:
            self.stop_order.append(owner.name)
        if alive and owner is not None and not self.procs[pid].alive:
            self.dead.append(owner)  # for the reaper, as SIGCHLD would
        return alive

    def drain(self, units: dict[str, UnitRuntime]) -> None:
        assert self.ordering is not None
        while True:
            while self.queue:
                unit, event = self.queue.popleft()
                if event is not None:
                    unit.dispatch(event)
                else:
                    self.ordering.changed(unit)
            if not self.dead:
                return
            # The reaper: a process that a signal ended is reported.
            unit = self.dead.popleft()
            if unit.main_pid is not None:
                self.exit(unit, unit.main_pid)
            unit.check_group()


def build(n: int, chain: bool) -> tuple[QueueHost, dict[str, UnitRuntime]]:
    host = QueueHost()
    units: dict[str, UnitRuntime] = {}
    for i in range(n):
        deps = (Dependency(f"u{i - 1}"),) if chain and i else ()
        units[f"u{i}"] = UnitRuntime(replace(spec(f"u{i}"), service=replace(
            spec(f"u{i}").service, depends_on=deps)), host)
    host.ordering = Ordering(units, host.post)
    return host, units


def boot(host: QueueHost, units: dict[str, UnitRuntime]) -> None:
    assert host.ordering is not None
    for name in host.ordering.order:
        units[name].dispatch(Event.START)
    host.drain(units)


def test_a_chain_of_3000_units_starts_and_stops_in_order_without_recursion() -> None:
    host, units = build(3000, chain=True)
    limit = sys.getrecursionlimit()
    # Deep enough for pytest and one dispatch, far too shallow to recurse per unit.
    sys.setrecursionlimit(len(_frames()) + 120)
    try:
        boot(host, units)
        assert all(u.state is State.ACTIVE for u in units.values())
        assert host.ordering is not None
        host.ordering.stop_all()
        host.drain(units)
    finally:
        sys.setrecursionlimit(limit)
    assert all(u.state in DOWN_STATES for u in units.values())
    assert host.stop_order == [f"u{i}" for i in reversed(range(3000))]


def test_3000_independent_units_are_all_signalled_in_one_pass() -> None:
    host, units = build(3000, chain=False)
    host.withstands = frozenset({15})  # they take their time: nothing ends during the pass
    boot(host, units)
    assert host.ordering is not None
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(_frames()) + 120)
    try:
        host.ordering.stop_all()
    finally:
        sys.setrecursionlimit(limit)
    # Every unit got its stop signal before any process ended: timeouts run in parallel.
    assert len(host.stop_order) == 3000
    assert all(u.state is State.STOPPING for u in units.values())
    assert len(host.pending()) == 3000  # one stop timeout each, all armed now


def test_stop_all_with_nothing_running_is_done_at_once() -> None:
    host, units = build(5, chain=False)
    assert host.ordering is not None
    host.ordering.stop_all()
    host.drain(units)
    assert host.signals == [] and all(u.state is State.INACTIVE for u in units.values())


def test_stopping_one_unit_stops_what_requires_it_first_and_only_that() -> None:
    host, units = build(4, chain=True)  # u0 <- u1 <- u2 <- u3
    boot(host, units)
    assert host.ordering is not None
    host.ordering.stop("u1")
    host.drain(units)
    assert host.stop_order == ["u3", "u2", "u1"]
    assert units["u0"].state is State.ACTIVE
    # A later start of u1 is not undone by the stop that is over.
    units["u1"].dispatch(Event.START)
    host.drain(units)
    assert units["u1"].state is State.ACTIVE


def test_a_required_dependency_that_is_down_is_pulled_in() -> None:
    host, units = build(2, chain=True)  # u1 requires u0
    units["u1"].dispatch(Event.START)
    assert units["u1"].state is State.WAITING
    host.drain(units)
    assert units["u0"].state is State.ACTIVE and units["u1"].state is State.ACTIVE


def _frames() -> list[object]:
    frames, f = [], sys._getframe()
    while f is not None:
        frames.append(f)
        f = f.f_back  # type: ignore[assignment]
    return frames
