"""Random walks through the unit's state machine (hypothesis' RuleBasedStateMachine).

Rules are what can happen to a unit: starts, stops and restarts asked for,
its process becoming ready, exiting, ignoring signals, a timer firing, the
watchdog lapsing, a reload. After every step the invariants must hold:

- at most one main process is alive and it is the unit's ``main_pid``, and a
  down unit has none (abandoned, unkillable ones aside);
- ``failed`` only with a result that says why;
- at most one state timer is pending;
- a stop always ends: asked to stop, the unit is down once the timers that
  are pending have fired and the processes its signals ended are reaped.
"""

from __future__ import annotations

import signal

from fakes import FakeHost, spec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aeterna.model import RestartPolicy, ServiceType, StartLimit
from aeterna.results import ExitInfo, Result
from aeterna.unit.runtime import UnitRuntime
from aeterna.unit.states import DOWN_STATES, Event, State


class UnitMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host = FakeHost()
        self.unit: UnitRuntime | None = None

    @rule(type_=st.sampled_from([ServiceType.SIMPLE, ServiceType.NOTIFY, ServiceType.ONESHOT,
                                 ServiceType.NOTIFY_RELOAD]),
          restart=st.sampled_from([RestartPolicy.NO, RestartPolicy.ON_FAILURE,
                                   RestartPolicy.ALWAYS]),
          pre=st.booleans(), post=st.booleans(), stop_cmd=st.booleans(),
          watchdog=st.sampled_from([0.0, 1.0]))
    @precondition(lambda self: self.unit is None)
    def define(self, type_: ServiceType, restart: RestartPolicy, pre: bool, post: bool,
               stop_cmd: bool, watchdog: float) -> None:
        self.unit = UnitRuntime(spec(
            type=type_, restart=restart, restart_sec=0.1, watchdog_sec=watchdog,
            start_limit=StartLimit(burst=50, interval=10),
            exec_start_pre=(("/bin/pre",),) if pre else (),
            exec_start_post=(("/bin/post",),) if post else (),
            exec_stop=(("/bin/stop",),) if stop_cmd else ()), self.host)

    def _u(self) -> UnitRuntime:
        assert self.unit is not None
        return self.unit

    @rule()
    @precondition(lambda self: self.unit is not None)
    def start(self) -> None:
        self._u().dispatch(Event.START)

    @rule()
    @precondition(lambda self: self.unit is not None)
    def stop(self) -> None:
        self._u().dispatch(Event.STOP)

    @rule()
    @precondition(lambda self: self.unit is not None)
    def restart(self) -> None:
        self._u().restart()

    @rule()
    @precondition(lambda self: self.unit is not None)
    def ready(self) -> None:
        self._u().dispatch(Event.READY)

    @rule(code=st.sampled_from([0, 1, 3]))
    @precondition(lambda self: self.unit is not None and self.unit.main_pid is not None)
    def main_exits(self, code: int) -> None:
        u = self._u()
        assert u.main_pid is not None
        self.host.exit(u, u.main_pid, ExitInfo(code=code))

    @rule(code=st.sampled_from([0, 1]))
    @precondition(lambda self: self.unit is not None and self.unit.command_pid is not None)
    def command_exits(self, code: int) -> None:
        u = self._u()
        assert u.command_pid is not None
        self.host.exit(u, u.command_pid, ExitInfo(code=code))

    @rule()
    @precondition(lambda self: self.unit is not None and self.unit.main_pid is not None)
    def main_ignores_sigterm(self) -> None:
        u = self._u()
        assert u.main_pid is not None
        self.host.procs[u.main_pid].withstands |= {signal.SIGTERM}

    @rule()
    @precondition(lambda self: self.unit is not None)
    def timer_fires(self) -> None:
        self.host.fire_next()

    @rule()
    @precondition(lambda self: self.unit is not None)
    def reap(self) -> None:
        self.host.reap(self._u())

    @rule(event=st.sampled_from([Event.WATCHDOG, Event.RELOAD, Event.RELOADING, Event.TIMEOUT]))
    @precondition(lambda self: self.unit is not None)
    def notify_event(self, event: Event) -> None:
        data = {"usec": 2**62} if event is Event.RELOADING else {}
        self._u().dispatch(event, **data)

    @rule()
    @precondition(lambda self: self.unit is not None)
    def a_stop_always_ends(self) -> None:
        u = self._u()
        u.dispatch(Event.STOP)
        for _ in range(50):  # stop timeout, kill timeout, commands: a handful of steps
            self.host.reap(u)
            if u.state in DOWN_STATES:
                break
            if u.command_pid is not None:
                self.host.exit(u, u.command_pid, ExitInfo(code=0))
            elif not self.host.fire_next():
                break
        assert u.state in DOWN_STATES, (u.state, self.host.logs[-6:])

    # ---------------------------------------------------------------- invariants
    @invariant()
    def at_most_one_main_process(self) -> None:
        """No main process but the unit's current one runs (bar one SIGKILL could not
        end, which the unit abandoned), so two generations never run as the unit."""
        if self.unit is None:
            return
        # Dead but not yet reported by the reaper is not running.
        others = [p for p in self.host.unreaped_mains()
                  if p != self.unit.main_pid and self.host.procs[p].alive
                  and not self.host.procs[p].unkillable]
        assert others == [], (others, self.unit.main_pid, self.unit.state)

    @invariant()
    def failed_only_with_a_result(self) -> None:
        if self.unit is not None and self.unit.state is State.FAILED:
            assert self.unit.result is not Result.SUCCESS

    @invariant()
    def down_means_no_main_pid(self) -> None:
        if self.unit is not None and self.unit.state in DOWN_STATES:
            assert self.unit.main_pid is None or not self.host.procs[self.unit.main_pid].alive

    @invariant()
    def one_state_timer(self) -> None:
        if self.unit is None:
            return
        timers = [t for t in self.host.pending() if t.callback != self.unit.watchdog._fire]
        assert len(timers) <= 1, timers


TestUnitMachine = UnitMachine.TestCase
TestUnitMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
