"""A relay's vocabulary: its phases and their allowed order, why it failed, how it ended.

The string values are the names that logs, ``aeterna status``, the CLI and
metric labels share (``phase=soaking``, ``reason=probe-failed``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

E = TypeVar("E", bound=enum.Enum)


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
    Phase.STARTING: frozenset({Phase.SOAKING, Phase.ROLLING_BACK,
                               Phase.DONE}),  # DONE: N+1 could not even be spawned
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



def transitions_markdown(allowed: Mapping[E, frozenset[E]]) -> str:
    """A phase table (``ALLOWED``) as docs/architecture.md shows it."""
    rows = ["| phase | may go to |", "| --- | --- |"]
    for phase, nxt in allowed.items():
        ordered = [p.value for p in allowed if p in nxt]  # in the enum's order
        rows.append(f"| {phase.value} | {', '.join(ordered) or '-'} |")
    return "\n".join(rows) + "\n"


def markdown() -> str:
    """The relay's phases and where each may go (a test keeps the doc equal to it)."""
    return transitions_markdown(ALLOWED)
