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
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..linux.spawn import SpawnError
from ..model import UnitSpec
from ..results import ExitInfo
from ..unit.runtime import UnitRuntime
from .canary import Canary
from .host import RelayHost
from .outcome import ALLOWED, Outcome, Phase, Reason, RelayFailed
from .probes import ResourceWatch, check

if TYPE_CHECKING:
    from .handoff import Handoff, HandoffResult

__all__ = ["ALLOWED", "Outcome", "Phase", "Reason", "Relay", "RelayFailed"]


class Relay:
    """One relay of one unit from generation N to N+1."""

    def __init__(self, host: RelayHost, runtime: UnitRuntime, spec: UnitSpec,
                 draining: Callable[[], int]):
        self.host = host
        self.runtime = runtime
        self.spec = spec  # the definition N+1 runs with
        self._draining = draining  # how many of this unit's old generations still drain
        self.phase = Phase.IDLE
        self.generation = 0
        self.canary: Canary | None = None
        self.handoff: Handoff | None = None  # set by the unit's SrpUnit when N+1 asks
        self.durations: dict[str, float] = {}
        self._phase_started = time.monotonic()
        self._failed: asyncio.Future[RelayFailed] | None = None
        self._asked: asyncio.Future[None] | None = None  # N+1 said HELLO WANT_STATE=1
        self._settled: asyncio.Future[None] | None = None  # ... and its handoff ended

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
        self.host.log.info("relay.phase", unit=self.name, generation=self.generation or None,
                           phase=phase.value)
        self.host.wake()

    async def run(self, promote: Callable[[Relay], int | None]) -> Outcome:
        """Run the relay to its end (``promote(relay)`` swaps N for N+1); never raises."""
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        self._asked = loop.create_future()
        self._settled = loop.create_future()
        old_pid = self.runtime.main_pid
        failed_phase = Phase.IDLE
        try:
            self._enter(Phase.PREFLIGHT)
            failed_phase = Phase.PREFLIGHT
            self._check_relayable()
            await self._preflight()
            limit = self.spec.orchestration.max_draining
            if self._draining() >= limit:
                self._enter(Phase.WAITING)
                await self.host.wait_for(lambda: self._draining() < limit)
            self.generation = self.runtime.allocate_generation()
            self._enter(Phase.STARTING)
            failed_phase = Phase.STARTING
            await self._start()
            self._enter(Phase.SOAKING)
            failed_phase = Phase.SOAKING
            await self._soak()
            await self._await_handoff()
            self._enter(Phase.PROMOTING)
            old_pid = promote(self)
            self._enter(Phase.DONE)
            assert self.canary is not None
            outcome = Outcome("promoted", self.name, self.generation, old_pid=old_pid,
                              new_pid=self.canary.main_pid)
            hooks = self.spec.orchestration.on_success
        except RelayFailed as exc:
            handoff = self.handoff
            if self.canary is not None or (handoff is not None and handoff.checkpointed):
                self._enter(Phase.ROLLING_BACK)
                srp = self.host.srp_of(self.name)
                if srp is not None and handoff is not None:
                    await srp.rollback(handoff)
                await self._stop_canary()
            self._enter(Phase.DONE)
            # Whatever phase failed, N keeps serving: the relay is rolled back.
            outcome = Outcome("rolled-back", self.name, self.generation,
                              phase=failed_phase.value, reason=exc.reason.value,
                              detail=exc.detail, old_pid=old_pid, new_pid=None)
            hooks = self.runtime.spec.orchestration.on_failure
        finally:
            if self.canary is not None:
                self.canary.watchdog.disarm()
        outcome.durations = dict(self.durations)
        outcome.handoff = self.handoff.result.value if self.handoff and self.handoff.result else ""
        outcome.total = round(time.monotonic() - t0, 6)
        self.host.log.info(
            "relay.outcome", unit=self.name, outcome=outcome.outcome,
            generation=outcome.generation, phase=outcome.phase or None,
            reason=outcome.reason or None, detail=outcome.detail or None,
            old_pid=outcome.old_pid, new_pid=outcome.new_pid, total=outcome.total,
            handoff=outcome.handoff or None,
            **{f"t_{k.replace('-', '_')}": v for k, v in outcome.durations.items()})
        for argv in hooks:
            self.host.background_hook(self.runtime, argv, outcome.outcome)
        return outcome

    def _check_relayable(self) -> None:
        if self.spec.service.type.value == "oneshot":
            raise RelayFailed(Reason.NOT_RELAYABLE, "a oneshot unit cannot be relayed")
        if self.spec.service.sockets != self.runtime.spec.service.sockets:
            raise RelayFailed(Reason.NOT_RELAYABLE, "the unit's sockets changed; sockets are "
                              "bound once for the manager's life, restart the manager")

    async def _preflight(self) -> None:
        for i, hook in enumerate(self.spec.orchestration.pre_flight):
            label = hook.name or f"pre_flight[{i}]"
            info = await self.host.run_helper(self.runtime, hook.command, hook.timeout, label)
            if info is None:
                raise RelayFailed(Reason.PREFLIGHT_TIMEOUT, f"{label} timed out after "
                                  f"{hook.timeout}s")
            if info.code != 0:
                raise RelayFailed(Reason.PREFLIGHT_FAILED, f"{label} {info}")

    async def _start(self) -> None:
        canary = Canary(self.host, self.runtime, self.spec, self.fail)
        try:
            pid = self.host.spawn_generation(self.runtime, self.spec, self.generation,
                                             canary.exited)
        except (SpawnError, OSError) as exc:
            raise RelayFailed(Reason.SPAWN_FAILED, str(exc)) from None
        self.canary = canary
        canary.started(pid)
        svc = self.spec.service
        timeout = self.spec.orchestration.startup_timeout or svc.timeouts.start
        assert self._failed is not None
        waits: set[asyncio.Future[Any]] = {canary.ready, canary.gone, self._failed}
        done, _ = await asyncio.wait(waits,
                                     timeout=None if timeout == float("inf") else timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if canary.gone in done:
            raise RelayFailed(Reason.EXITED_AT_START, str(canary.gone.result()))
        if self._failed in done:
            raise self._failed.result()
        if canary.ready not in done:
            raise RelayFailed(Reason.START_TIMEOUT, f"not ready within {timeout}s")
        canary.watchdog_ping()

    async def _soak(self) -> None:
        assert self.canary is not None and self._failed is not None
        gone = self.canary.gone
        canary = self.spec.orchestration.canary
        soak = canary.soak_time if canary.enabled else 0.0
        if soak <= 0 and not (canary.enabled and canary.probes):
            # No soak: judge what already happened, without a turn of the loop.
            if gone.done():
                raise RelayFailed(Reason.CRASHED, str(gone.result()))
            if self._failed.done():
                raise self._failed.result()
            return
        tasks = [asyncio.ensure_future(self._probe_loop(p)) for p in canary.probes
                 if canary.enabled]
        watch = ResourceWatch(canary, self.canary.main_pid or 0)
        if canary.enabled and watch.enabled():
            tasks.append(asyncio.ensure_future(self._resource_loop(watch)))
        try:
            waits: set[asyncio.Future[Any]] = {gone, self._failed}
            done, _ = await asyncio.wait(waits, timeout=soak,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
        if gone in done:
            raise RelayFailed(Reason.CRASHED, str(gone.result()))
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
        return self.canary.main_pid if self.canary is not None else None

    async def _exec_probe(self, argv: tuple[str, ...], timeout: float) -> ExitInfo | None:
        return await self.host.run_helper(self.runtime, argv, timeout, "probe")

    def fail(self, failure: RelayFailed) -> None:
        """Fail the relay at its next step (a probe, the watchdog, the handoff, a stop)."""
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(failure)

    def handoff_started(self, handoff: Handoff) -> None:
        self.handoff = handoff
        if self._asked is not None and not self._asked.done():
            self._asked.set_result(None)

    def handoff_settled(self) -> None:
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    async def _await_handoff(self) -> None:
        """``required: true``: no promotion before N+1 said ``LOADED=1``, whatever the soak.

        READY=1 and HELLO travel on different sockets, so one may be read before
        the other: N+1 gets ``timeout`` after its READY to ask, then the handoff's
        own two bounded steps (checkpoint, load) to finish.
        """
        sh = self.spec.orchestration.state_handoff
        if not (sh.enabled and sh.required):
            return
        assert self.canary is not None and self._failed is not None
        assert self._asked is not None and self._settled is not None
        ends: set[asyncio.Future[Any]] = {self.canary.gone, self._failed}
        for step, timeout in ((self._asked, sh.timeout), (self._settled, 2 * sh.timeout + 1)):
            if not step.done():
                await asyncio.wait(ends | {step}, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            if self.canary.gone.done():
                raise RelayFailed(Reason.CRASHED, str(self.canary.gone.result()))
            if self._failed.done():
                raise self._failed.result()
        handoff = self.handoff
        if handoff is None:
            from .handoff import HandoffResult
            raise RelayFailed(Reason.HANDOFF, f"{HandoffResult.NOT_ASKED.value}: ready without "
                              "HELLO WANT_STATE=1 and the state is required")
        if handoff.result is None:
            raise RelayFailed(Reason.HANDOFF, "load-timeout")
        if handoff.failed:
            raise RelayFailed(Reason.HANDOFF, handoff.result.value)

    def handoff_failed(self, result: HandoffResult) -> None:
        """SRP with ``required: true``: a failed handoff rolls the relay back."""
        self.fail(RelayFailed(Reason.HANDOFF, result.value))

    async def _stop_canary(self) -> None:
        """Stop N+1's whole process group: its stop signal, SIGKILL after its stop timeout.

        The group matters even when N+1's main process is already gone: the
        orphaned workers of a crashed arbiter may still be serving requests from
        the shared queue, and they get the same graceful signal first.
        """
        canary = self.canary
        if canary is None or canary.pgid is None:
            return
        pgid = canary.pgid
        svc = self.spec.service
        host = self.host

        def gone() -> bool:
            return not host.kill(pgid, 0, group=True) and canary.gone.done()

        if not gone():
            host.kill(pgid, svc.stop_signal, group=True)
            host.kill(pgid, signal.SIGCONT, group=True)
            if not await host.wait_for(gone, svc.timeouts.stop):
                host.kill(pgid, signal.SIGKILL, group=True)
                if not await host.wait_for(gone, 5.0):
                    host.log.warning("relay.canary-abandoned", unit=self.name,
                                     pid=canary.main_pid)
        canary.retire()
