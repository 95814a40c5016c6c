"""One relay's state handoff (docs/srp.md §5-6): a state machine of its own.

Forward: N+1 asks (``HELLO WANT_STATE=1``) -> N is asked to checkpoint ->
the manager checks seals and sizes and keeps the state -> N+1 loads it.
Back, when the relay rolls back after N was asked: N+1 is asked for its state
(it may have learned something) and N resumes with the newest state kept, or
with its own (``RESUME=1`` without fds).

Every step is bounded by ``state_handoff.timeout``; the result names are
those of docs/srp.md and appear as ``handoff=`` in the relay's outcome, in
logs and in the ``aeterna_srp_handoffs_total`` metric.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ..model import StateHandoff
from .outcome import transitions_markdown

if TYPE_CHECKING:
    from .srp import SrpUnit


class HandoffResult(enum.Enum):
    OK = "ok"
    NONE = "none"  # there was no state to hand over
    CHECKPOINT_TIMEOUT = "checkpoint-timeout"
    CHECKPOINT_REFUSED = "checkpoint-refused"
    REJECTED = "rejected"  # N's state failed the seal/size checks
    LOAD_TIMEOUT = "load-timeout"
    LOAD_FAILED = "load-failed"
    PEER_GONE = "peer-gone"
    NOT_ASKED = "not-asked"  # required, and N+1 became ready without asking


class Phase(enum.Enum):
    IDLE = "idle"  # N+1 has not asked for state
    CHECKPOINTING = "checkpointing"  # CHECKPOINT sent to N
    LOADING = "loading"  # STATE sent to N+1
    DONE = "done"  # N+1 loaded the state, or starts cold
    RECLAIMING = "reclaiming"  # rolling back: CHECKPOINT sent to N+1
    RESUMING = "resuming"  # rolling back: RESUME sent to N
    RESUMED = "resumed"


ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.CHECKPOINTING, Phase.LOADING}),
    Phase.CHECKPOINTING: frozenset({Phase.LOADING, Phase.DONE, Phase.RESUMING}),
    Phase.LOADING: frozenset({Phase.DONE, Phase.RESUMING, Phase.RECLAIMING}),
    Phase.DONE: frozenset({Phase.RECLAIMING, Phase.RESUMING}),
    Phase.RECLAIMING: frozenset({Phase.RESUMING}),
    Phase.RESUMING: frozenset({Phase.RESUMED}),
    Phase.RESUMED: frozenset(),
}
_ROLLING_BACK = frozenset({Phase.RECLAIMING, Phase.RESUMING, Phase.RESUMED})


class Handoff:
    """The handoff of one relay of one unit, from generation ``serving`` to ``canary``."""

    def __init__(self, srp: SrpUnit, serving: int, canary: int, settings: StateHandoff):
        self.srp = srp
        self.serving = serving
        self.canary = canary
        self.settings = settings  # N+1's definition decides
        self.phase = Phase.IDLE
        self.result: HandoffResult | None = None
        # N was asked for its state: from then on it may have stopped taking
        # work, whatever its answer, so a rollback must tell it to resume.
        self.checkpointed = False
        self.fresh = False  # a checkpoint taken during this relay is what is kept

    def _enter(self, phase: Phase) -> None:
        if phase not in ALLOWED[self.phase]:
            raise AssertionError(f"handoff {self.srp.name}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    @property
    def failed(self) -> bool:
        return self.result not in (None, HandoffResult.OK, HandoffResult.NONE)

    async def run(self, serving_alive: bool) -> HandoffResult:
        """N checkpoints (if it is alive and has a channel), N+1 loads."""
        srp = self.srp
        result: HandoffResult | None = None
        if serving_alive and srp.has_channel(self.serving):
            self._enter(Phase.CHECKPOINTING)
            self.checkpointed = True
            result = await srp.checkpoint(self.serving, "relay", self.settings)
            self.fresh = result is None
            if self.phase in _ROLLING_BACK:  # the relay failed meanwhile
                return result or HandoffResult.OK
        if result is None:
            self._enter(Phase.LOADING)
            result = await srp.give(self.canary, self.settings)
            if result is HandoffResult.NONE and not self.checkpointed:
                result = None  # nothing to hand over is not a failure
        self.result = result or HandoffResult.OK
        if self.phase not in _ROLLING_BACK:
            self._enter(Phase.DONE)
        return self.result

    async def rollback(self) -> str:
        """Give N the newest state kept (N+1's if it can still checkpoint), or tell it
        to keep its own; returns what N was told (for the log)."""
        srp = self.srp
        if self.result is HandoffResult.OK and srp.has_channel(self.canary):
            self._enter(Phase.RECLAIMING)
            why = await srp.checkpoint(self.canary, "rollback", self.settings)
            self.fresh = self.fresh or why is None
            srp.log.info("srp.rollback-checkpoint", unit=srp.name, generation=self.canary,
                         outcome=why.value if why else "ok")
        self._enter(Phase.RESUMING)
        if self.fresh and srp.latest is not None:
            given = await srp.give(self.serving, self.settings, verb="RESUME")
            outcome = given.value if given else "loaded"
        else:
            # No fds: "keep the state you have and take work again".
            outcome = await srp.resume_own(self.serving, self.settings,
                                           self.result.value if self.result else "rollback")
        self._enter(Phase.RESUMED)
        return outcome



def markdown() -> str:
    """The handoff's phases and where each may go, as docs/architecture.md shows them."""
    return transitions_markdown(ALLOWED)
