"""Relay triggers, merging, promotion and draining, across all units.

One relay per unit runs at a time. Triggers that arrive while one runs are
merged into a single follow-up relay, which re-reads the unit files when it
starts; every merged trigger gets that follow-up's outcome. Promotion swaps
the unit's main process for the canary and turns N into a *draining*
generation: it gets the drain signal, and SIGKILL after the drain timeout.

The manager creates the coordinator at its first relay: an idle manager has
not imported this package.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from dataclasses import dataclass
from typing import Any

from ..model import KillMode, UnitSpec
from ..results import ExitInfo
from ..unit.watchdog import Timer
from .host import RelayHost
from .outcome import Outcome, Reason, RelayFailed
from .relay import Relay


@dataclass
class Draining:
    unit: str
    pid: int
    pgid: int
    generation: int
    timer: Timer | None = None
    main_gone: bool = False


def _settle(fut: asyncio.Future[Outcome], value: Outcome) -> None:
    if not fut.done():
        fut.set_result(value)


class Coordinator:
    """Owns every running relay and every draining old generation."""

    def __init__(self, host: RelayHost):
        self.host = host
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
    def request(self, name: str, spec: UnitSpec | None = None) -> asyncio.Future[Outcome]:
        """Start a relay of ``name`` (or merge into the follow-up of the running one)."""
        loop = asyncio.get_running_loop()
        if name in self.current:
            fut = self.follow_up.get(name)
            if fut is None:
                fut = self.follow_up[name] = loop.create_future()
                self.host.log.info("relay.merged", unit=name, into="follow-up")
            return fut
        runtime = self.host.unit(name)
        relay = Relay(self.host, runtime, spec or runtime.spec,
                      functools.partial(self.draining_count, name))
        self.current[name] = relay
        self.count += 1
        fut = loop.create_future()
        task = asyncio.ensure_future(self._run(relay, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fut

    async def _run(self, relay: Relay, fut: asyncio.Future[Outcome]) -> None:
        outcome = await relay.run(self.promote)
        self.last[relay.name] = outcome
        key = (relay.name, outcome.outcome, outcome.reason)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if outcome.handoff:
            hkey = (relay.name, outcome.handoff)
            self.handoffs[hkey] = self.handoffs.get(hkey, 0) + 1
        del self.current[relay.name]
        _settle(fut, outcome)
        self.host.wake()
        follow = self.follow_up.pop(relay.name, None)
        if follow is None:
            return
        if self.host.shutting_down:
            follow.set_result(Outcome("aborted", relay.name, 0, reason="shutting-down"))
            return
        spec = self.host.reread_unit(relay.name)
        if spec is None:
            follow.set_result(Outcome("aborted", relay.name, 0, phase="pre-flight",
                                      reason="invalid-config",
                                      detail="the unit file no longer validates"))
            return
        nxt = self.request(relay.name, spec)
        nxt.add_done_callback(lambda f: _settle(follow, f.result()))

    def active(self) -> bool:
        """A relay runs, or an old generation still drains."""
        return bool(self.current or self.draining)

    def shares_listeners(self, name: str) -> bool:
        """Is a canary or a draining generation of ``name`` alive?"""
        return name in self.current or self.draining_count(name) > 0

    # -------------------------------------------------------------- promotion
    def promote(self, relay: Relay) -> int | None:
        """Make N+1 the unit's main process and start draining N; return N's pid."""
        runtime, canary = relay.runtime, relay.canary
        assert canary is not None and canary.main_pid is not None
        old_pid, old_pgid, old_gen = runtime.main_pid, runtime.pgid, runtime.generation
        # N gets its drain signal first: N+1 serves already, and every moment N keeps
        # accepting from the shared queue is a moment it must drain. Nothing can
        # reap N in between: the reaper runs on this loop, after this call.
        if old_pid is not None and old_pgid is not None:
            self.start_drain(relay.spec, old_pid, old_pgid, old_gen)
        self.host.unwatch(canary.main_pid)
        canary.retire()
        runtime.adopt(canary.main_pid, relay.generation, relay.spec, canary.notified)
        return old_pid

    def start_drain(self, spec: UnitSpec, pid: int, pgid: int, generation: int) -> None:
        drain = spec.orchestration.drain
        d = Draining(spec.name, pid, pgid, generation)
        self.draining[pid] = d
        self.host.retire(pid, True)
        self.host.watch(pid, functools.partial(self._drained_main, d))
        # The signal first, the log line after (see promote).
        if spec.service.kill_mode in (KillMode.PROCESS, KillMode.MIXED):
            self.host.kill(pid, drain.signal, group=False)
        else:
            self.host.kill(pgid, drain.signal, group=True)
            self.host.kill(pgid, signal.SIGCONT, group=True)
        self.host.log.info("relay.drain", unit=spec.name, pid=pid, generation=generation,
                           signal=drain.signal.name, timeout=drain.timeout)
        d.timer = self.host.call_later(drain.timeout, functools.partial(self._drain_timeout, d))

    def _drain_timeout(self, d: Draining) -> None:
        d.timer = None
        self.host.log.warning("relay.drain-timeout", unit=d.unit, pid=d.pid, action="SIGKILL")
        self.host.kill(d.pgid, signal.SIGKILL, group=True)

    def _drained_main(self, d: Draining, info: ExitInfo) -> None:
        d.main_gone = True
        self.host.log.info("relay.drained", unit=d.unit, pid=d.pid, generation=d.generation,
                           how=str(info))
        self.check_groups()

    def check_groups(self) -> None:
        """After reaping: a draining generation is done once its whole group is gone."""
        for pid, d in list(self.draining.items()):
            if d.main_gone and not self.host.kill(d.pgid, 0, group=True):
                if d.timer is not None:
                    d.timer.cancel()
                del self.draining[pid]
                self.host.retire(pid, False)
                self.host.wake()

    def draining_count(self, name: str) -> int:
        return sum(1 for d in self.draining.values() if d.unit == name)

    # ----------------------------------------------------------------- status
    def generations(self, name: str) -> list[dict[str, Any]]:
        """The canary and the draining generations of a unit, for ``aeterna status``."""
        out: list[dict[str, Any]] = []
        relay = self.current.get(name)
        if relay is not None and relay.canary is not None and relay.canary.main_pid is not None:
            out.append({"pid": relay.canary.main_pid, "generation": relay.generation,
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

    def abort_all(self) -> None:
        """Shutdown: every running relay rolls back (its canary is stopped)."""
        for relay in self.current.values():
            relay.fail(RelayFailed(Reason.STOPPED, "the manager is shutting down"))
