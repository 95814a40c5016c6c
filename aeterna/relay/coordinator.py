"""Relay triggers, merging, promotion and draining, across all units.

One relay per unit runs at a time. Triggers that arrive while one runs are
merged into a single follow-up relay, which re-reads the unit files when it
starts; every merged trigger gets that follow-up's outcome. Promotion swaps
the unit's main process for the canary and turns N into a *draining*
generation: it gets the drain signal, and SIGKILL after the drain timeout.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..linux import proc

if TYPE_CHECKING:
    from ..manager.manager import Manager
    from ..model import Unit
    from .relay import Outcome, Relay


@dataclass
class Draining:
    unit: str
    pid: int
    pgid: int
    generation: int
    timer: asyncio.TimerHandle | None = None
    main_gone: bool = False


def _settle(fut: asyncio.Future[Outcome], value: Outcome) -> None:
    if not fut.done():
        fut.set_result(value)


class Coordinator:
    """Owns every running relay and every draining old generation."""

    def __init__(self, manager: Manager):
        self.m = manager
        self.current: dict[str, Relay] = {}
        self.follow_up: dict[str, asyncio.Future[Outcome]] = {}
        self.draining: dict[int, Draining] = {}
        self.last: dict[str, Outcome] = {}
        self.count = 0
        # Finished relays by (unit, outcome, reason) and SRP handoffs by (unit,
        # outcome): the counters behind aeterna_relays_total and _srp_handoffs_total.
        self.outcomes: dict[tuple[str, str, str], int] = {}
        self.handoffs: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --------------------------------------------------------------- triggers
    def request(self, name: str, unit: Unit | None = None) -> asyncio.Future[Outcome]:
        """Start a relay of ``name`` (or merge into the follow-up of the running one)."""
        loop = asyncio.get_running_loop()
        if name in self.current:
            fut = self.follow_up.get(name)
            if fut is None:
                fut = self.follow_up[name] = loop.create_future()
                self.m.log.info("relay.merged", unit=name, into="follow-up")
            return fut
        from .relay import Relay

        runtime = self.m.units[name]
        relay = Relay(self.m, runtime, unit or runtime.unit)
        self.current[name] = relay
        self.count += 1
        fut = loop.create_future()
        task = asyncio.ensure_future(self._run(relay, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fut

    async def _run(self, relay: Relay, fut: asyncio.Future[Outcome]) -> None:
        outcome = await relay.run()
        self.last[relay.name] = outcome
        key = (relay.name, outcome.outcome, outcome.reason)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if outcome.handoff:
            hkey = (relay.name, outcome.handoff)
            self.handoffs[hkey] = self.handoffs.get(hkey, 0) + 1
        del self.current[relay.name]
        if not fut.done():
            fut.set_result(outcome)
        self.changed(relay)
        follow = self.follow_up.pop(relay.name, None)
        if follow is not None and not self.m.shutting_down:
            unit = self.m.reread_unit(relay.name)
            if unit is None:
                from .relay import Outcome

                follow.set_result(Outcome("aborted", relay.name, 0, phase="pre-flight",
                                          reason="invalid-config",
                                          detail="the unit file no longer validates"))
                return
            nxt = self.request(relay.name, unit)
            nxt.add_done_callback(lambda f: _settle(follow, f.result()))
        elif follow is not None:
            from .relay import Outcome

            follow.set_result(Outcome("aborted", relay.name, 0, reason="shutting-down"))

    def changed(self, relay: Relay) -> None:
        self.m.wake_waiters()

    def busy(self, name: str) -> bool:
        return name in self.current

    # -------------------------------------------------------------- promotion
    def promote(self, relay: Relay) -> int | None:
        """Make N+1 the unit's main process and start draining N; return N's pid."""
        runtime = relay.runtime
        assert relay.main_pid is not None and relay.pgid is not None
        old_pid, old_pgid, old_gen = runtime.main_pid, runtime.pgid, runtime.generation
        self.m.unwatch(relay.main_pid)
        runtime.adopt(relay.main_pid, relay.generation, relay.unit, relay.status_text)
        if old_pid is not None and old_pgid is not None:
            self.start_drain(relay.unit, old_pid, old_pgid, old_gen)
        return old_pid

    def start_drain(self, unit: Unit, pid: int, pgid: int, generation: int) -> None:
        drain = unit.orchestration.drain
        d = Draining(unit.name, pid, pgid, generation)
        self.draining[pid] = d
        self.m.notify.retired.add(pid)
        self.m.watch(pid, functools.partial(self._drained_main, d))
        # The signal first, the log line after: N+1 is already serving, and every
        # moment N keeps accepting from the shared queue is a moment it must drain.
        if unit.service.kill_mode.value in ("process", "mixed"):
            proc.kill_pid(pid, drain.signal)
        else:
            proc.kill_group(pgid, drain.signal)
            proc.kill_group(pgid, signal.SIGCONT)
        self.m.log.info("relay.drain", unit=unit.name, pid=pid, generation=generation,
                        signal=drain.signal.name, timeout=drain.timeout)
        assert self.m.loop is not None
        d.timer = self.m.loop.call_later(drain.timeout, self._drain_timeout, d)

    def _drain_timeout(self, d: Draining) -> None:
        d.timer = None
        self.m.log.warning("relay.drain-timeout", unit=d.unit, pid=d.pid, action="SIGKILL")
        proc.kill_group(d.pgid, signal.SIGKILL)

    def _drained_main(self, d: Draining, info: Any) -> None:
        d.main_gone = True
        self.m.log.info("relay.drained", unit=d.unit, pid=d.pid, generation=d.generation,
                        how=str(info))
        self.check_groups()

    def check_groups(self) -> None:
        """After reaping: a draining generation is done once its whole group is gone."""
        for pid, d in list(self.draining.items()):
            if d.main_gone and not proc.kill_group(d.pgid, 0):
                if d.timer is not None:
                    d.timer.cancel()
                del self.draining[pid]
                self.m.notify.retired.discard(pid)
                self.m.wake_waiters()

    def draining_count(self, name: str) -> int:
        return sum(1 for d in self.draining.values() if d.unit == name)

    def generations(self, name: str) -> list[dict[str, Any]]:
        """Every live generation of a unit, for ``aeterna status``."""
        runtime = self.m.units[name]
        out: list[dict[str, Any]] = []
        if runtime.main_pid is not None:
            out.append({"pid": runtime.main_pid, "generation": runtime.generation,
                        "role": "serving"})
        relay = self.current.get(name)
        if relay is not None and relay.main_pid is not None:
            out.append({"pid": relay.main_pid, "generation": relay.generation,
                        "role": "canary"})
        for d in self.draining.values():
            if d.unit == name:
                out.append({"pid": d.pid, "generation": d.generation, "role": "draining"})
        return out

    def status(self, name: str) -> dict[str, Any]:
        relay = self.current.get(name)
        last = self.last.get(name)
        return {"phase": relay.phase.value if relay else "idle",
                "last": last.as_dict() if last else None}

    def stop_all(self) -> None:
        """Shutdown: kill what is still draining."""
        for d in self.draining.values():
            proc.kill_group(d.pgid, signal.SIGKILL)

    def abort_all(self) -> None:
        """Shutdown: every running relay rolls back (its canary is stopped)."""
        from .relay import Reason, RelayFailed

        for relay in self.current.values():
            relay.fail(RelayFailed(Reason.STOPPED, "the manager is shutting down"))
