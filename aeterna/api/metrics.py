"""Prometheus metrics (``/metrics``): every unit's and relay's figures, in the text format (0.0.4).

Label values are the same names that logs and ``aeterna status`` use
(``state="active"``, ``outcome="rolled-back"``, ``reason="probe-failed"``,
``reason="unknown_sender"``). A scrape takes a snapshot of plain values on
the event loop (O(units), cheap) and formats it in a worker thread beside the
shared /proc scan, so that thousands of units do not stall the loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..linux.proc import Usage, tree_usage
from ..unit.states import State
from ..wire.notify import Rejection
from .usage import UsageCache
from .view import ManagerView, generations

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_ROLES = ("serving", "canary", "draining")


# --------------------------------------------------------------------------- rendering
def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


class _Families:
    """Collects samples by family, so each family's HELP and TYPE come once.

    A sample's labels come formatted (``unit="web",state="active"``): a scrape of
    thousands of units formats each unit's label once, not once per sample.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[str, float]]) -> None:
        lines = self.lines
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            number = repr(float(value)) if isinstance(value, float) else str(int(value))
            lines.append(f"{name}{{{labels}}} {number}" if labels else f"{name} {number}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass(frozen=True)
class UnitSample:
    name: str
    state: State
    type: str
    strategy: str
    result: str
    main_pid: int | None
    generation: int
    restarts: int
    uptime: float
    roles: tuple[str, ...]
    relay_phase: str | None


@dataclass(frozen=True)
class Snapshot:
    """Plain values of one moment: what a scrape shows, safe to format in a thread."""

    units: list[UnitSample]
    outcomes: dict[tuple[str, str, str], int]
    handoffs: dict[tuple[str, str], int]
    last: list[tuple[str, float, dict[str, float]]]
    notify_accepted: int
    notify_rejected: dict[str, int]
    orphans_reaped: int
    internal_errors: int = 0
    log_suppressed: int = 0


def snapshot(view: ManagerView) -> Snapshot:
    """On the loop: copy out what a scrape needs, nothing more."""
    now = time.monotonic()
    relays = view.relays
    current = relays.current if relays is not None else {}
    units = []
    for name in view.order:
        u = view.units[name]
        units.append(UnitSample(
            name, u.state, u.spec.service.type.value, u.spec.orchestration.strategy.value,
            u.result.value, u.main_pid, u.generation, u.restarts,
            round(now - u.started_at, 3)
            if u.started_at is not None and u.main_pid is not None else 0.0,
            tuple(g["role"] for g in generations(view, name)),
            current[name].phase.value if name in current else None))
    last = []
    if relays is not None:
        last = [(n, o.total, dict(o.durations)) for n in view.order
                if (o := relays.last.get(n)) is not None]
    return Snapshot(units, dict(relays.outcomes) if relays else {},
                    dict(relays.handoffs) if relays else {}, last, view.notify.accepted,
                    dict(view.notify.rejected), view.orphans_reaped, view.internal_errors,
                    view.log.suppressed)


async def render(view: ManagerView, usage: UsageCache) -> str:
    """Every metric of the manager and its units, in the Prometheus text format."""
    snap = snapshot(view)
    table = await usage.table()
    roots = [u.main_pid for u in snap.units if u.main_pid is not None]
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: text(snap, tree_usage(table, roots)))


def text(snap: Snapshot, trees: dict[int, Usage]) -> str:
    """Format a snapshot (pure)."""
    f = _Families()
    units = [(f'unit="{_escape(r.name)}"', r) for r in snap.units]
    states = [(s, f',state="{s.value}"') for s in State]
    f.family("aeterna_unit_state", "gauge", "1 for the unit's current state, 0 for the others.",
             ((u + label, int(r.state is s)) for u, r in units for s, label in states))
    f.family("aeterna_unit_info", "gauge", "The unit's type, strategy and last result.",
             ((u + "," + _labels(type=r.type, strategy=r.strategy, result=r.result), 1)
              for u, r in units))
    f.family("aeterna_unit_main_pid", "gauge", "The serving generation's main pid (0: none).",
             ((u, r.main_pid or 0) for u, r in units))
    f.family("aeterna_unit_generation", "gauge", "The serving generation's number.",
             ((u, r.generation) for u, r in units))
    f.family("aeterna_unit_restarts_total", "counter", "Automatic restarts of the unit.",
             ((u, r.restarts) for u, r in units))
    f.family("aeterna_unit_uptime_seconds", "gauge", "Time since the serving generation "
             "started (0 when nothing runs).", ((u, r.uptime) for u, r in units))
    usage = [(u, trees[r.main_pid]) for u, r in units
             if r.main_pid is not None and r.main_pid in trees]
    f.family("aeterna_unit_memory_rss_bytes", "gauge",
             "Resident memory of the unit's process tree.", ((u, t.rss) for u, t in usage))
    # A gauge, not a counter: the tree's processes come and go (a relay replaces
    # them all), so the sum can fall, which a counter must never do.
    f.family("aeterna_unit_cpu_seconds", "gauge",
             "CPU time used so far by the processes of the unit's tree that are alive.",
             ((u, float(round(t.cpu_seconds, 2))) for u, t in usage))
    roles = [(role, f',role="{role}"') for role in _ROLES]
    f.family("aeterna_generations", "gauge", "Live generations of the unit, by role.",
             ((u + label, r.roles.count(role)) for u, r in units for role, label in roles))
    f.family("aeterna_relay_in_progress", "gauge", "1 while a relay of the unit runs.",
             ((u + "," + _labels(phase=r.relay_phase), 1)
              for u, r in units if r.relay_phase is not None))
    counts = dict(snap.outcomes)
    for r in snap.units:  # a zero to start from, for every unit that relays
        if r.strategy == "hot-relay":
            counts.setdefault((r.name, "promoted", ""), 0)
    f.family("aeterna_relays_total", "counter", "Finished relays, by outcome and reason.",
             ((_labels(unit=n, outcome=o, reason=why), v)
              for (n, o, why), v in sorted(counts.items())))
    f.family("aeterna_srp_handoffs_total", "counter",
             "State handoffs (SRP) of finished relays, by outcome.",
             ((_labels(unit=n, outcome=o), v) for (n, o), v in sorted(snap.handoffs.items())))
    f.family("aeterna_relay_last_seconds", "gauge",
             "The last relay's duration, in total and by phase.",
             [(_labels(unit=n, phase="total"), total) for n, total, _ in snap.last]
             + [(_labels(unit=n, phase=p), float(d)) for n, _, durations in snap.last
                for p, d in durations.items()])
    f.family("aeterna_notify_accepted_total", "counter", "sd_notify datagrams acted on.",
             [("", snap.notify_accepted)])
    f.family("aeterna_notify_rejected_total", "counter", "sd_notify datagrams dropped, by "
             "reason.", ((_labels(reason=r.value), snap.notify_rejected.get(r.value, 0))
                         for r in Rejection))
    f.family("aeterna_orphans_reaped_total", "counter",
             "Processes reaped that were no unit's main process.", [("", snap.orphans_reaped)])
    f.family("aeterna_internal_errors_total", "counter", "Exceptions in the manager's own "
             "callbacks and tasks (each place is logged once).", [("", snap.internal_errors)])
    f.family("aeterna_log_suppressed_total", "counter", "Warning lines dropped by the log's "
             "rate limit.", [("", snap.log_suppressed)])
    _process_families(f)
    return f.text()


def _process_families(f: _Families) -> None:
    """The manager's own process, under the names of Prometheus' client libraries."""
    try:
        with open("/proc/self/stat") as fh:
            stat = fh.read().rpartition(")")[2].split()
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, StopIteration, ValueError):
        return
    # Fields after the ")" start at field 3 (state): utime is 14, stime 15,
    # starttime 22, rss 24 (in pages).
    f.family("process_cpu_seconds_total", "counter", "User and system CPU time of the manager.",
             [("", (int(stat[11]) + int(stat[12])) / _CLK_TCK)])
    f.family("process_resident_memory_bytes", "gauge", "Resident memory of the manager.",
             [("", int(stat[21]) * _PAGE)])
    f.family("process_start_time_seconds", "gauge", "The manager's start, in Unix time.",
             [("", btime + int(stat[19]) / _CLK_TCK)])
    f.family("process_open_fds", "gauge", "Open fds of the manager.", [("", fds)])
