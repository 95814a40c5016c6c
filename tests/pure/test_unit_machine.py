"""The unit's state machine, driven by a fake host through every cell of its table.

Each cell that is not ``ignore`` is entered from a unit brought to its state
by real events, then checked: the state it leads to, and what it did (signals,
spawns, results). A table completeness test guards that no cell is forgotten:
a new handler needs a row here.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fakes import FakeHost, spec

from aeterna.model import KillMode, RestartPolicy, ServiceType
from aeterna.results import ExitInfo, Result
from aeterna.unit.runtime import UnitRuntime
from aeterna.unit.states import DOWN_STATES, Deps, Event, State, Want
from aeterna.unit.table import TRANSITIONS, ignore

FAIL = ExitInfo(code=1)
OK = ExitInfo(code=0)


def unit_with(host: FakeHost, **service: Any) -> UnitRuntime:
    return UnitRuntime(spec(**service), host)


# --------------------------------------------------------------------- reaching each state
def inactive(h: FakeHost) -> UnitRuntime:
    return unit_with(h)


def failed(h: FakeHost) -> UnitRuntime:
    u = unit_with(h)
    u.fail_now(Result.RESOURCES, "unit.bind-failed")
    return u


def waiting(h: FakeHost) -> UnitRuntime:
    u = unit_with(h)
    h.deps = Deps.WAITING
    u.dispatch(Event.START)
    h.deps = Deps.UP
    return u


def start_pre(h: FakeHost) -> UnitRuntime:
    u = unit_with(h, exec_start_pre=(("/bin/pre",),))
    u.dispatch(Event.START)
    return u


def starting(h: FakeHost) -> UnitRuntime:
    u = unit_with(h, type=ServiceType.NOTIFY)
    u.dispatch(Event.START)
    return u


def start_post(h: FakeHost) -> UnitRuntime:
    u = unit_with(h, exec_start_post=(("/bin/post",),))
    u.dispatch(Event.START)
    return u


def active(h: FakeHost) -> UnitRuntime:
    u = unit_with(h, restart=RestartPolicy.NO)
    u.dispatch(Event.START)
    return u


def reloading(h: FakeHost) -> UnitRuntime:
    """Reloading with ExecReload= running (a notify-reload one below)."""
    u = unit_with(h, exec_reload=(("/bin/reload",),))
    u.dispatch(Event.START)
    u.dispatch(Event.RELOAD)
    return u


def reloading_signalled(h: FakeHost) -> UnitRuntime:
    u = unit_with(h, type=ServiceType.NOTIFY_RELOAD)
    u.dispatch(Event.START)
    u.dispatch(Event.READY)
    u.dispatch(Event.RELOAD)
    return u


def exited(h: FakeHost) -> UnitRuntime:
    u = unit_with(h, type=ServiceType.ONESHOT)
    u.dispatch(Event.START)
    assert u.main_pid is not None
    h.exit(u, u.main_pid, OK)
    return u


def stop_pre(h: FakeHost) -> UnitRuntime:
    u = unit_with(h, exec_stop=(("/bin/stop",),))
    u.dispatch(Event.START)
    u.dispatch(Event.STOP)
    return u


def stop_post(h: FakeHost) -> UnitRuntime:
    """ExecStopPost= running after a stop, the unit's processes gone."""
    u = unit_with(h, exec_stop_post=(("/bin/post",),))
    u.dispatch(Event.START)
    u.dispatch(Event.STOP)
    if u.state is State.STOPPING:
        assert u.main_pid is not None
        h.exit(u, u.main_pid, OK)
    return u


def active_max(h: FakeHost) -> UnitRuntime:
    """Active with RuntimeMaxSec=."""
    u = unit_with(h, runtime_max_sec=5.0)
    u.dispatch(Event.START)
    return u


def stopping(h: FakeHost) -> UnitRuntime:
    h.withstands = frozenset({signal.SIGTERM, signal.SIGHUP})  # it takes its time to stop
    u = unit_with(h)
    u.dispatch(Event.START)
    u.dispatch(Event.STOP)
    return u


def stopping_leftovers(h: FakeHost) -> UnitRuntime:
    """Stopping, the main process gone, a worker of its group still there."""
    u = stopping(h)
    pid = u.main_pid
    assert pid is not None
    h.leftovers[pid] = 1
    h.exit(u, pid, OK)
    assert u.state is State.STOPPING and u.main_pid is None
    return u


def killing_leftovers(h: FakeHost) -> UnitRuntime:
    h.unkillable_leftovers = True
    u = stopping_leftovers(h)
    u.dispatch(Event.TIMEOUT)
    assert u.state is State.KILLING
    return u


def killing(h: FakeHost) -> UnitRuntime:
    u = stopping(h)
    assert u.main_pid is not None
    h.procs[u.main_pid].unkillable = True
    u.dispatch(Event.TIMEOUT)
    return u


def auto_restart(h: FakeHost) -> UnitRuntime:
    u = unit_with(h, restart=RestartPolicy.ALWAYS)
    u.dispatch(Event.START)
    assert u.main_pid is not None
    h.exit(u, u.main_pid, FAIL)
    return u


REACH: dict[State, Callable[[FakeHost], UnitRuntime]] = {
    State.INACTIVE: inactive, State.FAILED: failed, State.WAITING: waiting,
    State.START_PRE: start_pre, State.STARTING: starting, State.START_POST: start_post,
    State.ACTIVE: active, State.RELOADING: reloading, State.EXITED: exited,
    State.STOP_PRE: stop_pre, State.STOP_POST: stop_post, State.STOPPING: stopping,
    State.KILLING: killing,
    State.AUTO_RESTART: auto_restart,
}


@pytest.mark.parametrize("state", list(State))
def test_each_state_is_reachable(state: State) -> None:
    assert REACH[state](FakeHost()).state is state


# --------------------------------------------------------------------- every cell
@dataclass(frozen=True)
class Cell:
    reach: Callable[[FakeHost], UnitRuntime]
    expect: State
    data: tuple[tuple[str, Any], ...] = ()
    check: Callable[[UnitRuntime, FakeHost], None] | None = None


def _spawned(n: int) -> Callable[[UnitRuntime, FakeHost], None]:
    def check(u: UnitRuntime, h: FakeHost) -> None:
        assert len([p for p in h.procs.values() if p.role == "main"]) == n
    return check


def _result(r: Result) -> Callable[[UnitRuntime, FakeHost], None]:
    def check(u: UnitRuntime, h: FakeHost) -> None:
        assert u.result is r
    return check


def _signalled(sig: int) -> Callable[[UnitRuntime, FakeHost], None]:
    def check(u: UnitRuntime, h: FakeHost) -> None:
        assert h.sent(sig) >= 1, h.signals
    return check


def _want(w: Want) -> Callable[[UnitRuntime, FakeHost], None]:
    def check(u: UnitRuntime, h: FakeHost) -> None:
        assert u.want is w
    return check


def _reloads(count: int, last: str) -> Callable[[UnitRuntime, FakeHost], None]:
    def check(u: UnitRuntime, h: FakeHost) -> None:
        assert (u.reload.count, u.reload.last) == (count, last)
    return check


S, E = State, Event
CELLS: dict[tuple[State, Event], Cell] = {
    (S.INACTIVE, E.START): Cell(inactive, S.ACTIVE, check=_spawned(1)),
    (S.FAILED, E.START): Cell(failed, S.ACTIVE, check=_result(Result.SUCCESS)),
    (S.FAILED, E.RESET_FAILED): Cell(failed, S.INACTIVE, check=_result(Result.SUCCESS)),
    (S.WAITING, E.STOP): Cell(waiting, S.INACTIVE, check=_want(Want.STAY_DOWN)),
    (S.WAITING, E.DEPS_UP): Cell(waiting, S.ACTIVE, check=_spawned(1)),
    (S.WAITING, E.DEP_FAILED): Cell(waiting, S.FAILED, check=_result(Result.DEPENDENCY)),
    (S.START_PRE, E.COMMAND_EXITED): Cell(start_pre, S.ACTIVE, (("info", OK),), _spawned(1)),
    (S.START_PRE, E.TIMEOUT): Cell(start_pre, S.FAILED, check=_result(Result.TIMEOUT)),
    (S.START_PRE, E.STOP): Cell(start_pre, S.INACTIVE, check=_signalled(signal.SIGKILL)),
    (S.STARTING, E.STOP): Cell(starting, S.INACTIVE, check=_signalled(signal.SIGTERM)),
    (S.STARTING, E.READY): Cell(starting, S.ACTIVE),
    (S.STARTING, E.EXITED): Cell(starting, S.FAILED, (("info", FAIL),),
                                 _result(Result.EXIT_CODE)),
    (S.STARTING, E.TIMEOUT): Cell(starting, S.FAILED, check=_result(Result.TIMEOUT)),
    (S.STARTING, E.WATCHDOG): Cell(starting, S.FAILED, check=_result(Result.WATCHDOG)),
    (S.START_POST, E.COMMAND_EXITED): Cell(start_post, S.ACTIVE, (("info", OK),)),
    (S.START_POST, E.TIMEOUT): Cell(start_post, S.FAILED, check=_result(Result.TIMEOUT)),
    (S.START_POST, E.STOP): Cell(start_post, S.INACTIVE, check=_signalled(signal.SIGKILL)),
    (S.START_POST, E.EXITED): Cell(start_post, S.FAILED, (("info", FAIL),)),
    (S.START_POST, E.WATCHDOG): Cell(start_post, S.FAILED, check=_signalled(signal.SIGABRT)),
    (S.ACTIVE, E.STOP): Cell(active, S.INACTIVE, check=_signalled(signal.SIGTERM)),
    (S.ACTIVE, E.EXITED): Cell(active, S.FAILED, (("info", FAIL),), _result(Result.EXIT_CODE)),
    (S.ACTIVE, E.WATCHDOG): Cell(active, S.FAILED, check=_signalled(signal.SIGABRT)),
    (S.ACTIVE, E.RELOAD): Cell(active, S.ACTIVE, check=_reloads(1, "success")),
    (S.ACTIVE, E.RELOADING): Cell(active, S.RELOADING, (("usec", 1),)),
    (S.RELOADING, E.STOP): Cell(reloading, S.INACTIVE, check=_signalled(signal.SIGTERM)),
    (S.RELOADING, E.EXITED): Cell(reloading, S.FAILED, (("info", FAIL),)),
    (S.RELOADING, E.WATCHDOG): Cell(reloading, S.FAILED, check=_result(Result.WATCHDOG)),
    # READY before the RELOADING=1 that answers our signal does not end the reload.
    (S.RELOADING, E.READY): Cell(reloading_signalled, S.RELOADING, check=_reloads(0, "")),
    (S.RELOADING, E.RELOADING): Cell(reloading_signalled, S.RELOADING, (("usec", 2**62),)),
    (S.RELOADING, E.TIMEOUT): Cell(reloading_signalled, S.ACTIVE, check=_reloads(1, "timeout")),
    (S.RELOADING, E.COMMAND_EXITED): Cell(reloading, S.ACTIVE, (("info", OK),),
                                          _reloads(1, "success")),
    (S.EXITED, E.STOP): Cell(exited, S.INACTIVE),
    (S.EXITED, E.RELOAD): Cell(exited, S.EXITED, check=_reloads(1, "success")),
    (S.STOP_PRE, E.COMMAND_EXITED): Cell(stop_pre, S.INACTIVE, (("info", OK),),
                                         _signalled(signal.SIGTERM)),
    (S.STOP_PRE, E.TIMEOUT): Cell(stop_pre, S.FAILED, check=_result(Result.TIMEOUT)),
    (S.STOP_PRE, E.EXITED): Cell(stop_pre, S.INACTIVE, (("info", OK),)),
    (S.STOP_PRE, E.START): Cell(stop_pre, S.STOP_PRE, check=_want(Want.START)),
    (S.STOP_PRE, E.STOP): Cell(stop_pre, S.STOP_PRE, check=_want(Want.STAY_DOWN)),
    (S.STOP_POST, E.COMMAND_EXITED): Cell(stop_post, S.INACTIVE, (("info", OK),)),
    (S.STOP_POST, E.TIMEOUT): Cell(stop_post, S.FAILED, check=_result(Result.TIMEOUT)),
    (S.STOP_POST, E.START): Cell(stop_post, S.STOP_POST, check=_want(Want.START)),
    (S.STOP_POST, E.STOP): Cell(stop_post, S.STOP_POST, check=_want(Want.STAY_DOWN)),
    (S.ACTIVE, E.TIMEOUT): Cell(active_max, S.FAILED, check=_result(Result.TIMEOUT)),
    (S.STOPPING, E.START): Cell(stopping, S.STOPPING, check=_want(Want.START)),
    (S.STOPPING, E.STOP): Cell(stopping, S.STOPPING, check=_want(Want.STAY_DOWN)),
    (S.STOPPING, E.EXITED): Cell(stopping, S.INACTIVE, (("info", OK),)),
    (S.STOPPING, E.GROUP_EMPTY): Cell(stopping_leftovers, S.INACTIVE),
    # SIGKILL ends it: killing, then failed (with the timeout) once it is reaped.
    (S.STOPPING, E.TIMEOUT): Cell(stopping, S.FAILED, check=_signalled(signal.SIGKILL)),
    (S.KILLING, E.START): Cell(killing, S.KILLING, check=_want(Want.START)),
    (S.KILLING, E.STOP): Cell(killing, S.KILLING, check=_want(Want.STAY_DOWN)),
    (S.KILLING, E.EXITED): Cell(killing, S.FAILED, (("info", ExitInfo(signal=9)),),
                                _result(Result.TIMEOUT)),
    (S.KILLING, E.GROUP_EMPTY): Cell(killing_leftovers, S.FAILED, check=_result(Result.TIMEOUT)),
    (S.KILLING, E.TIMEOUT): Cell(killing, S.FAILED, check=_result(Result.TIMEOUT)),
    (S.AUTO_RESTART, E.START): Cell(auto_restart, S.ACTIVE, check=_spawned(2)),
    (S.AUTO_RESTART, E.RESTART_DUE): Cell(auto_restart, S.ACTIVE, check=_spawned(2)),
    (S.AUTO_RESTART, E.STOP): Cell(auto_restart, S.FAILED, check=_result(Result.EXIT_CODE)),
}


def test_every_handled_cell_has_a_row_and_every_row_a_handler() -> None:
    assert set(TRANSITIONS) == {(s, e) for s in State for e in Event}
    handled = {cell for cell, handler in TRANSITIONS.items() if handler is not ignore}
    assert handled == set(CELLS)


def _settle(u: UnitRuntime, h: FakeHost) -> None:
    """What the manager's reaper does after a signal: report the processes it ended."""
    h.reap(u)


@pytest.mark.parametrize("cell", list(CELLS), ids=lambda c: f"{c[0].value}+{c[1].value}")
def test_cell(cell: tuple[State, Event]) -> None:
    state, event = cell
    row = CELLS[cell]
    h = FakeHost()
    u = row.reach(h)
    assert u.state is state
    if event is Event.COMMAND_EXITED:
        assert u.command_pid is not None
        h.exit(u, u.command_pid, dict(row.data)["info"])
    elif event is Event.EXITED and u.main_pid is not None:
        h.exit(u, u.main_pid, dict(row.data)["info"])
    else:
        u.dispatch(event, **dict(row.data))
    _settle(u, h)
    assert u.state is row.expect, (cell, u.state, h.logs[-5:])
    if row.check is not None:
        row.check(u, h)
    if u.state is State.FAILED:
        assert u.result is not Result.SUCCESS
    if u.state in DOWN_STATES:
        assert u.main_pid is None or not h.procs[u.main_pid].alive


@pytest.mark.parametrize("cell", [c for c, h in TRANSITIONS.items() if h is ignore],
                         ids=lambda c: f"{c[0].value}+{c[1].value}")
def test_ignored_cells_change_nothing(cell: tuple[State, Event]) -> None:
    state, event = cell
    h = FakeHost()
    u = REACH[state](h)
    before = (u.state, u.main_pid, len(h.signals), len(h.procs), u.result)
    data: dict[str, Any] = {}
    if event in (Event.EXITED, Event.COMMAND_EXITED):
        data["info"] = OK
    if event is Event.RELOADING:
        data["usec"] = 1
    u.dispatch(event, **data)
    assert (u.state, u.main_pid, len(h.signals), len(h.procs), u.result) == before


# --------------------------------------------------------------------- scenarios
def test_a_stop_that_outlives_its_timeout_escalates_to_sigkill_then_gives_up() -> None:
    h = FakeHost()
    u = killing(h)
    assert h.sent(signal.SIGTERM) == 1 and h.sent(signal.SIGKILL) == 1
    assert h.fire_next()  # the kill timeout: the process is abandoned
    assert u.state is State.FAILED and u.result is Result.TIMEOUT
    assert ("unit.abandoned", {"unit": "u", "pid": u.main_pid}) in h.logs or u.main_pid is None


def test_restart_of_a_stopping_unit_starts_it_again_once_down() -> None:
    h = FakeHost()
    u = stopping(h)
    u.restart()
    assert u.want is Want.START
    pid = u.main_pid
    assert pid is not None
    h.procs[pid].withstands = frozenset()
    h.exit(u, pid, OK)
    assert u.state is State.ACTIVE and u.main_pid != pid


def test_a_stop_during_a_restart_wins() -> None:
    h = FakeHost()
    u = stopping(h)
    u.dispatch(Event.START)
    u.dispatch(Event.STOP)
    assert u.main_pid is not None
    h.exit(u, u.main_pid, OK)
    assert u.state is State.INACTIVE


def test_failure_stop_applies_the_restart_policy() -> None:
    h = FakeHost()
    u = unit_with(h, type=ServiceType.NOTIFY, restart=RestartPolicy.ON_FAILURE)
    u.dispatch(Event.START)
    u.dispatch(Event.TIMEOUT)  # not ready in time: stopped, then Restart= decides
    h.reap(u)
    assert u.state is State.AUTO_RESTART and u.result is Result.TIMEOUT
    assert h.fire_next()
    assert u.state is State.STARTING and u.restarts == 1


def test_restart_policy_never_applies_after_a_requested_stop() -> None:
    h = FakeHost()
    u = unit_with(h, restart=RestartPolicy.ALWAYS)
    u.dispatch(Event.START)
    u.dispatch(Event.STOP)
    h.reap(u)
    assert u.state is State.INACTIVE and not h.pending()


def test_hold_down_keeps_a_unit_whose_process_exits_from_restarting() -> None:
    h = FakeHost()
    u = unit_with(h, restart=RestartPolicy.ALWAYS)
    u.dispatch(Event.START)
    u.hold_down()  # `aeterna stop` waits for its dependents to stop first
    assert u.main_pid is not None
    h.exit(u, u.main_pid, FAIL)
    assert u.state is State.FAILED and not h.pending()


def test_mixed_kill_mode_signals_main_first_then_sigkills_the_group() -> None:
    h = FakeHost()
    u = unit_with(h, kill_mode=KillMode.MIXED)
    u.dispatch(Event.START)
    u.dispatch(Event.STOP)
    main_sigterm = [s for s in h.signals if s[1] == signal.SIGTERM]
    assert main_sigterm and not main_sigterm[0][2]  # to the main process, not the group
    h.reap(u)
    assert u.state is State.INACTIVE
    assert any(sig == signal.SIGKILL and group for _p, sig, group in h.signals)


def test_exec_failure_is_not_a_crash_and_restarts_by_policy() -> None:
    from aeterna.linux.spawn import SpawnError

    h = FakeHost(spawn_error=SpawnError("exec", 2, "/bin/app"))
    u = unit_with(h, restart=RestartPolicy.ON_FAILURE)
    u.dispatch(Event.START)
    assert u.state is State.AUTO_RESTART and u.result is Result.EXEC
    assert u.last_exit is not None and u.last_exit.code == 127


def test_start_limit_fails_the_unit() -> None:
    from aeterna.model import StartLimit

    h = FakeHost()
    u = unit_with(h, restart=RestartPolicy.ALWAYS, start_limit=StartLimit(burst=3, interval=60))
    u.dispatch(Event.START)
    for _ in range(3):
        assert u.main_pid is not None
        h.exit(u, u.main_pid, FAIL)
        h.fire_next()
    assert u.state is State.FAILED and u.result is Result.START_LIMIT
