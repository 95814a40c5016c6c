"""The unit's transition table: ``TRANSITIONS[(state, event)]`` is the handler to run.

Every cell is filled; :func:`ignore` marks an event that a state does not
expect, so such an arrival is a visible, deliberate no-op rather than an
accident. Handlers are functions of the unit (its methods, and the functions
of :mod:`.commands` and :mod:`.reload`), named ``<state>_<event>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import commands, reload, stopping
from .runtime import UnitRuntime
from .states import Event, State

Handler = Callable[..., None]


def ignore(unit: UnitRuntime, **_: Any) -> None:
    """The event means nothing in this state."""


U = UnitRuntime
_S, _E = State, Event
TRANSITIONS: dict[tuple[State, Event], Handler] = {(s, e): ignore for s in State for e in Event}
TRANSITIONS.update({
    (_S.INACTIVE, _E.START): U.down_start,
    (_S.FAILED, _E.START): U.down_start,
    (_S.FAILED, _E.RESET_FAILED): U.failed_reset,
    (_S.WAITING, _E.STOP): stopping.waiting_stop,
    (_S.WAITING, _E.DEPS_UP): U.waiting_deps_up,
    (_S.WAITING, _E.DEP_FAILED): U.waiting_dep_failed,
    (_S.START_PRE, _E.COMMAND_EXITED): commands.command_exited,
    (_S.START_PRE, _E.TIMEOUT): commands.command_timeout,
    (_S.START_PRE, _E.STOP): stopping.start_pre_stop,
    (_S.STARTING, _E.STOP): stopping.running_stop,
    (_S.STARTING, _E.READY): U.starting_ready,
    (_S.STARTING, _E.EXITED): U.running_exited,
    (_S.STARTING, _E.TIMEOUT): U.starting_timeout,
    (_S.STARTING, _E.WATCHDOG): stopping.running_watchdog,
    (_S.START_POST, _E.COMMAND_EXITED): commands.command_exited,
    (_S.START_POST, _E.TIMEOUT): commands.command_timeout,
    (_S.START_POST, _E.STOP): stopping.running_stop,
    (_S.START_POST, _E.EXITED): U.running_exited,
    (_S.START_POST, _E.WATCHDOG): stopping.running_watchdog,
    (_S.ACTIVE, _E.STOP): stopping.running_stop,
    (_S.ACTIVE, _E.EXITED): U.running_exited,
    (_S.ACTIVE, _E.WATCHDOG): stopping.running_watchdog,
    (_S.ACTIVE, _E.RELOAD): reload.active_reload,
    (_S.ACTIVE, _E.TIMEOUT): U.active_timeout,
    (_S.ACTIVE, _E.RELOADING): reload.active_reloading,
    (_S.RELOADING, _E.STOP): stopping.running_stop,
    (_S.RELOADING, _E.EXITED): U.running_exited,
    (_S.RELOADING, _E.WATCHDOG): stopping.running_watchdog,
    (_S.RELOADING, _E.READY): reload.reloading_ready,
    (_S.RELOADING, _E.RELOADING): reload.reloading_reloading,
    (_S.RELOADING, _E.TIMEOUT): reload.reloading_timeout,
    (_S.RELOADING, _E.COMMAND_EXITED): commands.command_exited,
    (_S.EXITED, _E.STOP): stopping.exited_stop,
    (_S.EXITED, _E.RELOAD): reload.exited_reload,
    (_S.STOP_PRE, _E.COMMAND_EXITED): commands.command_exited,
    (_S.STOP_PRE, _E.TIMEOUT): commands.command_timeout,
    (_S.STOP_PRE, _E.EXITED): stopping.stop_pre_exited,
    (_S.STOP_PRE, _E.START): stopping.stopping_start,
    (_S.STOP_PRE, _E.STOP): stopping.stopping_stop,
    (_S.STOP_POST, _E.COMMAND_EXITED): commands.command_exited,
    (_S.STOP_POST, _E.TIMEOUT): commands.command_timeout,
    (_S.STOP_POST, _E.START): stopping.stopping_start,
    (_S.STOP_POST, _E.STOP): stopping.stopping_stop,
    (_S.STOPPING, _E.START): stopping.stopping_start,
    (_S.STOPPING, _E.STOP): stopping.stopping_stop,
    (_S.STOPPING, _E.EXITED): stopping.stopping_exited,
    (_S.STOPPING, _E.GROUP_EMPTY): stopping.stopping_group_empty,
    (_S.STOPPING, _E.TIMEOUT): stopping.stopping_timeout,
    (_S.KILLING, _E.START): stopping.stopping_start,
    (_S.KILLING, _E.STOP): stopping.stopping_stop,
    (_S.KILLING, _E.EXITED): stopping.stopping_exited,
    (_S.KILLING, _E.GROUP_EMPTY): stopping.stopping_group_empty,
    (_S.KILLING, _E.TIMEOUT): stopping.killing_timeout,
    (_S.AUTO_RESTART, _E.START): U.auto_restart_due,
    (_S.AUTO_RESTART, _E.RESTART_DUE): U.auto_restart_due,
    (_S.AUTO_RESTART, _E.STOP): stopping.auto_restart_stop,
})


def markdown() -> str:
    """The table as docs/architecture.md shows it (a test keeps the two equal)."""
    rows = ["| state | event | handler |", "| --- | --- | --- |"]
    for (state, event), handler in TRANSITIONS.items():
        if handler is not ignore:
            where = handler.__module__.rsplit(".", 1)[-1]
            name = handler.__qualname__.split(".")[-1]
            rows.append(f"| {state.value} | {event.value} | `{where}.{name}` |")
    return "\n".join(rows) + "\n"
