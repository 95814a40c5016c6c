"""The relay's phases with a fake host: every way a relay ends, without a process.

``FakeRelayHost`` is a ``RelayHost`` in memory: a canary is a pid above
pid_max whose readiness, exit and death by signal the test controls. The
relay runs on a real asyncio loop (it is a coroutine), with short timeouts.
"""

from __future__ import annotations

import asyncio
import io
import signal
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest
from fakes import PID_BASE, FakeHost, spec

from aeterna.log import Log
from aeterna.model import (
    Canary,
    Hook,
    ListenSpec,
    Orchestration,
    ServiceType,
    Strategy,
    UnitSpec,
)
from aeterna.relay.coordinator import Coordinator
from aeterna.relay.outcome import ALLOWED, Outcome, Phase, Reason
from aeterna.results import ExitInfo
from aeterna.unit.pids import PidIndex
from aeterna.unit.runtime import UnitRuntime
from aeterna.unit.states import Event, State


class FakeRelayHost:
    """What the relay layer needs, in memory; a canary behaves as ``canary`` says."""

    def __init__(self, loop: asyncio.AbstractEventLoop, runtime: UnitRuntime):
        self.loop = loop
        self.stream = io.StringIO()
        self.log = Log(stream=self.stream, level="debug")
        self.pids = PidIndex()
        self.shutting_down = False
        self.runtime = runtime
        self.spawn_error: Exception | None = None
        self.preflight: ExitInfo | None = ExitInfo(code=0)
        self.canary_ready_after: float | None = 0.0  # None: never says READY=1
        self.canary_exits_after: float | None = None
        self.canaries: list[int] = []
        self.signals: list[tuple[int, int, bool]] = []
        self.watched: dict[int, Callable[[ExitInfo], None]] = {}
        self.retired: set[int] = set()
        self.hooks: list[str] = []
        self._next = PID_BASE + 500
        self.coordinator: Coordinator | None = None

    def unit(self, name: str) -> UnitRuntime:
        return self.runtime

    def spawn_generation(self, runtime: UnitRuntime, spec: UnitSpec, generation: int,
                         exited: Callable[[ExitInfo], None]) -> int:
        if self.spawn_error is not None:
            raise self.spawn_error
        self._next += 1
        pid = self._next
        self.canaries.append(pid)
        self.watched[pid] = exited
        if self.canary_exits_after is not None:
            self.loop.call_later(self.canary_exits_after, self._exit, pid, ExitInfo(code=3))
        if self.canary_ready_after is not None and spec.service.type is ServiceType.NOTIFY:
            self.loop.call_later(self.canary_ready_after, self._ready, pid)
        return pid

    def _canary(self, pid: int) -> Any:
        return self.pids.groups.get(pid)

    def _ready(self, pid: int) -> None:
        canary = self._canary(pid)
        if canary is not None:
            canary.dispatch(Event.READY)

    def _exit(self, pid: int, info: ExitInfo) -> None:
        callback = self.watched.pop(pid, None)
        if callback is not None:
            callback(info)

    async def run_helper(self, runtime: UnitRuntime, argv: tuple[str, ...], timeout: float,
                         label: str) -> ExitInfo | None:
        return self.preflight

    def background_hook(self, runtime: UnitRuntime, argv: tuple[str, ...], outcome: str) -> None:
        self.hooks.append(outcome)

    def watch(self, pid: int, callback: Callable[[ExitInfo], None]) -> None:
        self.watched[pid] = callback

    def unwatch(self, pid: int) -> None:
        self.watched.pop(pid, None)

    def retire(self, pid: int, retired: bool) -> None:
        (self.retired.add if retired else self.retired.discard)(pid)

    def kill(self, pid: int, sig: int, group: bool) -> bool:
        self.signals.append((pid, sig, group))
        alive = pid in self.watched
        if alive and sig in (signal.SIGTERM, signal.SIGKILL):
            self.loop.call_soon(self._exit, pid, ExitInfo(signal=sig))
        return alive

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, callback)

    def wait_for(self, pred: Callable[[], bool],
                 timeout: float | None = None) -> Coroutine[Any, Any, bool]:
        async def wait() -> bool:
            deadline = self.loop.time() + (timeout if timeout is not None else 5.0)
            while not pred():
                if self.loop.time() > deadline:
                    return False
                await asyncio.sleep(0.001)
            return True
        return wait()

    def wake(self) -> None:
        pass

    def reread_unit(self, name: str) -> UnitSpec | None:
        return self.runtime.spec

    def srp_of(self, name: str) -> None:
        return None

    def phases(self) -> list[str]:
        return [line.split("phase=")[1].split()[0] for line in self.stream.getvalue().splitlines()
                if line.startswith("aeterna: relay.phase")]


def relay_spec(**orch: Any) -> UnitSpec:
    base = spec(type=ServiceType.NOTIFY)
    return replace(base, orchestration=Orchestration(strategy=Strategy.HOT_RELAY, **orch))


def serving(definition: UnitSpec) -> UnitRuntime:
    """Generation 1, up (driven by the unit's own fake host)."""
    runtime = UnitRuntime(definition, FakeHost())
    runtime.dispatch(Event.START)
    runtime.dispatch(Event.READY)
    assert runtime.state is State.ACTIVE
    return runtime


def relay(setup: Callable[[FakeRelayHost], None] | None = None, definition: UnitSpec | None = None,
          new: UnitSpec | None = None) -> tuple[Outcome, FakeRelayHost]:
    async def run() -> tuple[Outcome, FakeRelayHost]:
        runtime = serving(definition or relay_spec())
        host = FakeRelayHost(asyncio.get_running_loop(), runtime)
        if setup is not None:
            setup(host)
        coordinator = host.coordinator = Coordinator(host)
        outcome = await asyncio.wait_for(coordinator.request("u", new), 10)
        return outcome, host
    return asyncio.run(run())


def assert_phases_allowed(phases: list[str]) -> None:
    previous = Phase.IDLE
    for name in phases:
        phase = Phase(name)
        assert phase in ALLOWED[previous], (previous, phase)
        previous = phase
    assert previous is Phase.DONE


# --------------------------------------------------------------------- promotion
def test_promotion_swaps_the_main_process_and_drains_n() -> None:
    outcome, host = relay()
    assert outcome.outcome == "promoted" and outcome.reason == ""
    assert host.phases() == ["pre-flight", "starting", "soaking", "promoting", "done"]
    runtime = host.runtime
    assert runtime.main_pid == host.canaries[0] == outcome.new_pid
    assert runtime.generation == 2 and runtime.state is State.ACTIVE
    old = outcome.old_pid
    assert old is not None and (old, signal.SIGTERM, True) in host.signals  # N drains
    log = host.stream.getvalue()
    assert f"relay.drained unit=u pid={old}" in log
    assert host.retired == set()  # drained: its pid is no longer expected to speak
    assert host.hooks == []
    assert set(outcome.durations) == {"pre-flight", "starting", "soaking", "promoting"}


def test_a_canary_that_is_never_ready_times_out_and_n_keeps_serving() -> None:
    def setup(h: FakeRelayHost) -> None:
        h.canary_ready_after = None
    outcome, host = relay(setup, new=relay_spec(startup_timeout=0.05))
    assert (outcome.outcome, outcome.phase, outcome.reason) == (
        "rolled-back", "starting", Reason.START_TIMEOUT.value)
    assert host.runtime.generation == 1 and host.runtime.main_pid != host.canaries[0]
    assert (host.canaries[0], signal.SIGTERM, True) in host.signals  # the canary is stopped
    assert_phases_allowed(host.phases())
    assert host.phases()[-2:] == ["rolling-back", "done"]


@pytest.mark.parametrize("setup,phase,reason", [
    (lambda h: setattr(h, "preflight", ExitInfo(code=1)), "pre-flight", Reason.PREFLIGHT_FAILED),
    (lambda h: setattr(h, "preflight", None), "pre-flight", Reason.PREFLIGHT_TIMEOUT),
    (lambda h: setattr(h, "spawn_error", OSError(24, "EMFILE")), "starting",
     Reason.SPAWN_FAILED),
    (lambda h: setattr(h, "canary_exits_after", 0.0), "starting", Reason.EXITED_AT_START),
], ids=["pre-flight-failed", "pre-flight-timeout", "spawn-failed", "exited-at-start"])
def test_failures_before_soak_roll_back(setup: Callable[[FakeRelayHost], None], phase: str,
                                        reason: Reason) -> None:
    def with_ready_later(h: FakeRelayHost) -> None:
        setup(h)
        h.canary_ready_after = 0.05
    hook = Hook(command=("/bin/check",), timeout=1)
    outcome, host = relay(with_ready_later, new=relay_spec(pre_flight=(hook,)))
    assert (outcome.outcome, outcome.phase, outcome.reason) == ("rolled-back", phase,
                                                                reason.value)
    assert host.runtime.generation == 1 and host.runtime.state is State.ACTIVE
    assert_phases_allowed(host.phases())


def test_a_crash_during_the_soak_rolls_back() -> None:
    def setup(h: FakeRelayHost) -> None:
        h.canary_exits_after = 0.05
    outcome, host = relay(setup, new=relay_spec(canary=Canary(enabled=True, soak_time=5)))
    assert (outcome.phase, outcome.reason) == ("soaking", Reason.CRASHED.value)
    assert host.runtime.generation == 1
    assert outcome.durations["soaking"] < 2


def test_the_canary_watchdog_fails_the_soak() -> None:
    new = relay_spec(canary=Canary(enabled=True, soak_time=5))
    new = replace(new, service=replace(new.service, watchdog_sec=0.05))
    outcome, host = relay(new=new)
    assert (outcome.phase, outcome.reason) == ("soaking", Reason.WATCHDOG.value)


def test_a_oneshot_or_changed_sockets_are_not_relayable() -> None:
    oneshot = replace(relay_spec(), service=replace(relay_spec().service,
                                                   type=ServiceType.ONESHOT))
    outcome, host = relay(new=oneshot)
    assert (outcome.phase, outcome.reason) == ("pre-flight", Reason.NOT_RELAYABLE.value)
    assert host.canaries == []
    moved = replace(relay_spec(), service=replace(
        relay_spec().service, sockets=(ListenSpec(address="127.0.0.1:1", name="x"),)))
    outcome, _ = relay(new=moved)
    assert outcome.reason == Reason.NOT_RELAYABLE.value


def test_triggers_during_a_relay_merge_into_one_follow_up() -> None:
    async def run() -> tuple[list[Outcome], FakeRelayHost]:
        runtime = serving(relay_spec())
        host = FakeRelayHost(asyncio.get_running_loop(), runtime)
        host.canary_ready_after = 0.05
        coordinator = Coordinator(host)
        first = coordinator.request("u")
        merged = [coordinator.request("u") for _ in range(4)]
        assert len({id(f) for f in merged}) == 1  # one follow-up for them all
        return [await first, *[await f for f in merged]], host
    outcomes, host = asyncio.run(run())
    assert [o.outcome for o in outcomes] == ["promoted"] * 5
    assert {o.generation for o in outcomes} == {2, 3}
    assert len(host.canaries) == 2


def test_a_shutdown_rolls_a_running_relay_back() -> None:
    async def run() -> Outcome:
        runtime = serving(relay_spec())
        host = FakeRelayHost(asyncio.get_running_loop(), runtime)
        host.canary_ready_after = None
        coordinator = Coordinator(host)
        fut = coordinator.request("u")
        await asyncio.sleep(0.02)
        coordinator.abort_all()
        return await asyncio.wait_for(fut, 5)
    outcome = asyncio.run(run())
    assert (outcome.outcome, outcome.reason) == ("rolled-back", Reason.STOPPED.value)
