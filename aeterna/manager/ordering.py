"""Ordering across units: who may start now, who must stop first (systemd's jobs).

``depends_on`` entries with ``order`` start a unit after what it depends on
and stop it before; ``require`` pulls the dependency in and fails the
dependent when it fails. This object holds the pending stops and the reverse
index (unit -> its dependents), so that a change of one unit touches only its
neighbours: O(edges) per change, whatever the number of units. It is called
from the manager's run queue, never from inside a unit's transition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..loader import start_order
from ..model import Dependency
from ..unit.runtime import UnitRuntime
from ..unit.states import DOWN_STATES, UP_STATES, Deps, Event, State

Post = Callable[[UnitRuntime, Event], None]


class Ordering:
    """Start and stop order of the manager's units."""

    def __init__(self, units: dict[str, UnitRuntime], post: Post):
        self.units = units
        self._post = post  # queue an event for a unit (never dispatched re-entrantly)
        self.order: list[str] = []
        self._dependents: dict[str, list[tuple[UnitRuntime, Dependency]]] = {}
        self.pending_stops: set[str] = set()  # stops working down their closure
        self.shutting_down = False
        self.reindex()

    def reindex(self) -> None:
        """After units were added, or their definitions changed."""
        self.order = start_order({n: r.spec for n, r in self.units.items()})
        deps: dict[str, list[tuple[UnitRuntime, Dependency]]] = {n: [] for n in self.units}
        for runtime in self.units.values():
            for dep in runtime.spec.service.depends_on:
                if dep.name in deps:
                    deps[dep.name].append((runtime, dep))
        self._dependents = deps

    # ------------------------------------------------------------ starting
    def deps_state(self, unit: UnitRuntime) -> Deps:
        """UP when every ordered dependency is up, FAILED when a required one failed.

        A required dependency that is inactive is pulled in: its START is queued.
        """
        result = Deps.UP
        for dep in unit.spec.service.depends_on:
            other = self.units.get(dep.name)
            if other is None:
                continue
            if other.state is State.FAILED:
                if dep.require:
                    return Deps.FAILED
                continue
            if other.state is State.INACTIVE and dep.require and not self.shutting_down:
                self._post(other, Event.START)
            if dep.order and other.state not in UP_STATES and (
                    dep.require or other.state is not State.INACTIVE):
                result = Deps.WAITING
        return result

    # ------------------------------------------------------------ stopping
    def stop(self, name: str) -> None:
        """Stop a unit, and first the units ordered after it that require it."""
        todo = self._closure(name)
        for n in todo:
            self.units[n].hold_down()
        self.pending_stops |= todo
        self._try_stops(n for n in reversed(self.order) if n in todo)

    def stop_all(self) -> None:
        """Shutdown: one pass over every unit, dependents first; what waits for a
        dependent is signalled when that one is down. Stop timeouts run in parallel."""
        self.shutting_down = True
        self.pending_stops |= set(self.units)
        self._try_stops(reversed(self.order))

    def _closure(self, name: str) -> set[str]:
        todo, frontier = {name}, [name]
        while frontier:
            for runtime, dep in self._dependents.get(frontier.pop(), ()):
                if dep.require and runtime.name not in todo:
                    todo.add(runtime.name)
                    frontier.append(runtime.name)
        return todo

    def _try_stops(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.pending_stops:
                continue
            runtime = self.units[name]
            if runtime.state in DOWN_STATES:
                continue
            if all(d.state in DOWN_STATES for d, dep in self._dependents.get(name, ())
                   if dep.order and d.name in self.pending_stops):
                runtime.dispatch(Event.STOP)

    # ------------------------------------------------------------ after a change
    def changed(self, unit: UnitRuntime) -> None:
        """``unit`` changed state: unblock its waiting dependents, advance stops."""
        state = unit.state
        if state in UP_STATES or state in DOWN_STATES:
            for other, _dep in self._dependents.get(unit.name, ()):
                if other.state is State.WAITING:
                    deps = self.deps_state(other)
                    if deps is Deps.UP:
                        other.dispatch(Event.DEPS_UP)
                    elif deps is Deps.FAILED:
                        other.dispatch(Event.DEP_FAILED)
        if state in DOWN_STATES and self.pending_stops:
            if not self.shutting_down:
                self.pending_stops.discard(unit.name)  # a later start is not undone
            self._try_stops(d.name for d in unit.spec.service.depends_on if d.order)
