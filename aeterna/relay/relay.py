"""Hot relay: replace a unit's process while the manager keeps its sockets.

Generation N+1 starts beside N on the same listening sockets (the same kernel
accept queues), must become ready, then soaks as a canary under real traffic
(both generations accept from the shared queue). If it stays alive, healthy and
within its limits it is promoted and N is drained; on any failure it is stopped
and N, untouched, keeps serving.

The relay is one coroutine, but its phases are an explicit enum and every
change of phase is checked against ``ALLOWED``; each phase's duration is kept
for ``aeterna status`` and for the one structured log line of the outcome.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..linux import proc
from ..linux.spawn import SpawnError
from ..model import NotifyAccess, ServiceType, Unit
from ..results import ExitInfo
from ..unit.runtime import Event
from .probes import ResourceWatch, check

if TYPE_CHECKING:
    from ..manager.manager import Manager
    from ..unit.runtime import UnitRuntime


class Phase(enum.Enum):
    IDLE = "idle"
    PREFLIGHT = "pre-flight"
    WAITING = "waiting-for-drain"  # max_draining old generations are still draining
    STARTING = "starting"
    SOAKING = "soaking"
    PROMOTING = "promoting"
    ROLLING_BACK = "rolling-back"
    DONE = "done"


ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.PREFLIGHT}),
    Phase.PREFLIGHT: frozenset({Phase.WAITING, Phase.STARTING, Phase.DONE}),
    Phase.WAITING: frozenset({Phase.STARTING, Phase.DONE}),
    Phase.STARTING: frozenset({Phase.SOAKING, Phase.ROLLING_BACK}),
    Phase.SOAKING: frozenset({Phase.PROMOTING, Phase.ROLLING_BACK}),
    Phase.PROMOTING: frozenset({Phase.DONE}),
    Phase.ROLLING_BACK: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


class Reason(enum.Enum):
    """Why a relay rolled back (names shared by logs, the CLI and metrics)."""

    PREFLIGHT_FAILED = "pre-flight-failed"
    PREFLIGHT_TIMEOUT = "pre-flight-timeout"
    SPAWN_FAILED = "spawn-failed"
    EXITED_AT_START = "exited-at-start"
    START_TIMEOUT = "start-timeout"
    CRASHED = "crashed-during-soak"
    PROBE_FAILED = "probe-failed"
    RESOURCES = "resource-limit"
    WATCHDOG = "watchdog"
    NOT_RELAYABLE = "not-relayable"
    HANDOFF = "handoff-failed"  # SRP with required: true
    STOPPED = "unit-stopped"


class RelayFailed(Exception):
    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass
class Outcome:
    outcome: str  # "promoted" | "rolled-back" | "aborted"
    unit: str
    generation: int
    phase: str = ""  # the phase that failed
    reason: str = ""
    detail: str = ""
    handoff: str = ""  # SRP: "ok", a failure reason, or "" when SRP is off
    old_pid: int | None = None
    new_pid: int | None = None
    durations: dict[str, float] = field(default_factory=dict)
    total: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Relay:
    """One relay of one unit from generation N to N+1."""

    def __init__(self, manager: Manager, runtime: UnitRuntime, unit: Unit):
        self.m = manager
        self.runtime = runtime
        self.unit = unit  # the definition N+1 runs with
        self.phase = Phase.IDLE
        self.generation = 0
        self.main_pid: int | None = None  # the canary's pid (named for the notify code)
        self.pgid: int | None = None
        self.status_text = ""
        self.follow_up = False
        self.durations: dict[str, float] = {}
        self._phase_started = time.monotonic()
        self._ready: asyncio.Future[None] | None = None
        self._exited: asyncio.Future[ExitInfo] | None = None
        self._failed: asyncio.Future[RelayFailed] | None = None
        self._wd_handle: asyncio.TimerHandle | None = None
        self.fdstore = runtime.fdstore
        self.notify_access_override: NotifyAccess | None = None
        self.stopping_notified = False
        self.errno: int | None = None
        self.notified_exit_status: int | None = None
        self.handoff = ""  # SRP outcome, set by srp.SrpUnit.handoff
        self.handoff_checkpointed = False  # N was asked for its state (may stop taking work)
        self.handoff_fresh = False  # a checkpoint of this relay is what the manager keeps

    @property
    def name(self) -> str:
        return self.runtime.name

    # ---------------------------------------------------------------- phases
    def _enter(self, phase: Phase) -> None:
        if phase not in ALLOWED[self.phase]:
            raise AssertionError(f"relay {self.name}: {self.phase.value} -> {phase.value}")
        now = time.monotonic()
        if self.phase is not Phase.IDLE:
            self.durations[self.phase.value] = round(now - self._phase_started, 6)
        self._phase_started = now
        self.phase = phase
        self.m.log.info("relay.phase", unit=self.name, generation=self.generation or None,
                        phase=phase.value)
        self.m.relays.changed(self)

    async def run(self) -> Outcome:
        """Run the relay to its end; never raises."""
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        self._ready, self._exited, self._failed = (loop.create_future(), loop.create_future(),
                                                   loop.create_future())
        old_pid = self.runtime.main_pid
        failed_phase = Phase.IDLE
        try:
            self._enter(Phase.PREFLIGHT)
            failed_phase = Phase.PREFLIGHT
            self._check_relayable()
            await self._preflight()
            if self.m.relays.draining_count(self.name) >= self.unit.orchestration.max_draining:
                self._enter(Phase.WAITING)
                await self.m.wait_for(lambda: self.m.relays.draining_count(self.name)
                                      < self.unit.orchestration.max_draining)
            self.generation = self.runtime.allocate_generation()
            self._enter(Phase.STARTING)
            failed_phase = Phase.STARTING
            await self._start()
            self._enter(Phase.SOAKING)
            failed_phase = Phase.SOAKING
            await self._soak()
            self._enter(Phase.PROMOTING)
            old_pid = self.m.relays.promote(self)
            self._enter(Phase.DONE)
            outcome = Outcome("promoted", self.name, self.generation, old_pid=old_pid,
                              new_pid=self.main_pid)
            hooks = self.unit.orchestration.on_success
        except RelayFailed as exc:
            if self.main_pid is not None or self.handoff_checkpointed:
                self._enter(Phase.ROLLING_BACK)
                srp = self.m.srp.get(self.name)
                if srp is not None:
                    await srp.rollback(self)
                await self._stop_canary()
            self._enter(Phase.DONE)
            # Whatever phase failed, N keeps serving: the relay is rolled back.
            outcome = Outcome("rolled-back", self.name,
                              self.generation, phase=failed_phase.value, reason=exc.reason.value,
                              detail=exc.detail, old_pid=old_pid, new_pid=None)
            hooks = self.runtime.unit.orchestration.on_failure
        finally:
            self._disarm_watchdog()
        outcome.durations = dict(self.durations)
        outcome.handoff = self.handoff
        outcome.total = round(time.monotonic() - t0, 6)
        self.m.log.info("relay.outcome", unit=self.name, outcome=outcome.outcome,
                        generation=outcome.generation, phase=outcome.phase or None,
                        reason=outcome.reason or None, detail=outcome.detail or None,
                        old_pid=outcome.old_pid, new_pid=outcome.new_pid, total=outcome.total,
                        handoff=outcome.handoff or None,
                        **{f"t_{k.replace('-', '_')}": v for k, v in outcome.durations.items()})
        for argv in hooks:
            self.m.spawn_background_hook(self.runtime, argv, outcome.outcome)
        return outcome

    def _check_relayable(self) -> None:
        if self.unit.service.type is ServiceType.ONESHOT:
            raise RelayFailed(Reason.NOT_RELAYABLE, "a oneshot unit cannot be relayed")
        if self.unit.service.sockets != self.runtime.unit.service.sockets:
            raise RelayFailed(Reason.NOT_RELAYABLE, "the unit's sockets changed; sockets are "
                              "bound once for the manager's life, restart the manager")

    async def _preflight(self) -> None:
        for i, hook in enumerate(self.unit.orchestration.pre_flight):
            label = hook.name or f"pre_flight[{i}]"
            info = await self.m.run_helper(self.runtime, hook.command, hook.timeout, label)
            if info is None:
                raise RelayFailed(Reason.PREFLIGHT_TIMEOUT, f"{label} timed out after "
                                  f"{hook.timeout}s")
            if info.code != 0:
                raise RelayFailed(Reason.PREFLIGHT_FAILED, f"{label} {info}")

    async def _start(self) -> None:
        assert self._ready is not None and self._exited is not None
        try:
            pid = self.m.spawn_generation(self.runtime, self.unit, self.generation, self)
        except (SpawnError, OSError) as exc:
            raise RelayFailed(Reason.SPAWN_FAILED, str(exc)) from None
        self.main_pid = self.pgid = pid
        svc = self.unit.service
        if svc.type in (ServiceType.SIMPLE, ServiceType.EXEC):
            self._ready.set_result(None)
        timeout = self.unit.orchestration.startup_timeout or svc.timeouts.start
        assert self._failed is not None
        waits: set[asyncio.Future[Any]] = {self._ready, self._exited, self._failed}
        done, _ = await asyncio.wait(waits,
                                     timeout=None if timeout == float("inf") else timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._exited in done:
            raise RelayFailed(Reason.EXITED_AT_START, str(self._exited.result()))
        if self._failed in done:
            raise self._failed.result()
        if self._ready not in done:
            raise RelayFailed(Reason.START_TIMEOUT, f"not ready within {timeout}s")
        self._arm_watchdog()

    async def _soak(self) -> None:
        assert self._exited is not None and self._failed is not None
        canary = self.unit.orchestration.canary
        soak = canary.soak_time if canary.enabled else 0.0
        if soak <= 0 and not (canary.enabled and canary.probes):
            # No soak: judge what already happened, without a turn of the loop.
            if self._exited.done():
                raise RelayFailed(Reason.CRASHED, str(self._exited.result()))
            if self._failed.done():
                raise self._failed.result()
            return
        tasks = [asyncio.ensure_future(self._probe_loop(p)) for p in canary.probes
                 if canary.enabled]
        watch = ResourceWatch(canary, self.main_pid or 0)
        if canary.enabled and watch.enabled():
            tasks.append(asyncio.ensure_future(self._resource_loop(watch)))
        try:
            waits: set[asyncio.Future[Any]] = {self._exited, self._failed}
            done, _ = await asyncio.wait(waits, timeout=soak,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
        if self._exited in done:
            raise RelayFailed(Reason.CRASHED, str(self._exited.result()))
        if self._failed in done:
            raise self._failed.result()
        if canary.enabled and canary.probes:
            # One last round: a canary is promoted only on a passing probe.
            for probe in canary.probes:
                reason = await check(probe, self._exec_probe, self._probe_target)
                if reason is not None:
                    raise RelayFailed(Reason.PROBE_FAILED, reason)

    async def _probe_loop(self, probe: Any) -> None:
        while True:
            reason = await check(probe, self._exec_probe, self._probe_target)
            if reason is not None:
                self.fail(RelayFailed(Reason.PROBE_FAILED, reason))
                return
            await asyncio.sleep(probe.interval)

    async def _resource_loop(self, watch: ResourceWatch) -> None:
        while True:
            reason = watch.check()
            if reason is not None:
                self.fail(RelayFailed(Reason.RESOURCES, reason))
                return
            await asyncio.sleep(0.25)

    def _probe_target(self) -> int | None:
        """Probes judge the canary: only its process tree's answers count."""
        return self.main_pid

    async def _exec_probe(self, argv: tuple[str, ...], timeout: float) -> ExitInfo | None:
        return await self.m.run_helper(self.runtime, argv, timeout, "probe")

    def fail(self, failure: RelayFailed) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(failure)

    async def _stop_canary(self) -> None:
        """Stop N+1's whole process group: its stop signal, SIGKILL after its stop timeout.

        The group matters even when N+1's main process is already gone: the
        orphaned workers of a crashed arbiter may still be serving requests from
        the shared queue, and they get the same graceful signal first.
        """
        pgid = self.pgid
        if pgid is None:
            return
        svc = self.unit.service
        def gone() -> bool:
            return not proc.kill_group(pgid, 0) and (self._exited is None
                                                     or self._exited.done())

        if not gone():
            proc.kill_group(pgid, svc.stop_signal)
            proc.kill_group(pgid, signal.SIGCONT)
            if not await self.m.wait_for(gone, svc.timeouts.stop):
                proc.kill_group(pgid, signal.SIGKILL)
                if not await self.m.wait_for(gone, 5.0):
                    self.m.log.warning("relay.canary-abandoned", unit=self.name,
                                       pid=self.main_pid)
        self.main_pid = None

    # ------------------------------------------------------ canary events
    def canary_exited(self, info: ExitInfo) -> None:
        """The reaper found N+1's main process gone."""
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(info)

    def dispatch(self, event: Event, **_: Any) -> None:
        """The subset of unit events that sd_notify produces, applied to N+1."""
        if event is Event.READY and self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        elif event is Event.WATCHDOG:
            self.fail(RelayFailed(Reason.WATCHDOG, "WATCHDOG=trigger"))

    def effective_notify_access(self) -> NotifyAccess:
        return self.notify_access_override or self.unit.service.effective_notify_access()

    def set_main_pid(self, pid: int) -> None:
        pass  # MAINPID= from a canary is not honoured: it would escape the rollback

    def extend_timeout(self, usec: int) -> None:
        pass

    def watchdog_usec(self) -> int:
        return int(self.unit.service.watchdog_sec * 1e6)

    def set_watchdog_usec(self, usec: int) -> None:
        self._arm_watchdog(usec)

    def watchdog_ping(self) -> None:
        self._arm_watchdog()

    def _arm_watchdog(self, usec: int | None = None) -> None:
        self._disarm_watchdog()
        usec = self.watchdog_usec() if usec is None else usec
        if usec > 0:
            loop = asyncio.get_running_loop()
            self._wd_handle = loop.call_later(
                usec / 1e6, self.fail, RelayFailed(Reason.WATCHDOG, "watchdog expired"))

    def _disarm_watchdog(self) -> None:
        if self._wd_handle is not None:
            self._wd_handle.cancel()
            self._wd_handle = None
