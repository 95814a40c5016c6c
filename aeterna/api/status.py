"""``aeterna status``: the reply the manager builds, and the table the CLI prints.

Imported on the first status request, so an idle manager does not carry it.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .usage import UsageCache
    from .view import ManagerView


SLICE = 250  # units snapshotted per turn of the loop (~2 ms)


async def collect(view: ManagerView, usage: UsageCache, unit: str | None) -> dict[str, Any]:
    """The ``status`` reply: the manager, and each unit's snapshot with the RSS and CPU
    summed over its process tree (one /proc scan for all of them, off the loop)."""
    from .view import generations, relay_status

    names = [unit] if unit else list(view.order)
    units = []
    for i, n in enumerate(names):
        if i and not i % SLICE:
            await asyncio.sleep(0)  # let the loop breathe between slices of units
        if n not in view.units:
            continue  # cannot happen today (units are never removed), but cheap
        snap = view.units[n].snapshot()
        snap["generations"] = generations(view, n)
        snap["relay"] = relay_status(view, n)
        units.append(snap)
    roots = [u["main_pid"] for u in units if u["main_pid"] is not None]
    trees = await usage.usage(roots) if roots else {}
    for snap in units:
        tree = trees.get(snap["main_pid"]) if snap["main_pid"] is not None else None
        snap.update(tree.as_dict() if tree is not None
                    else {"rss": None, "cpu_seconds": None})
    relays = view.relays
    return {"manager": {"pid": os.getpid(), **view.identity,
                        "orphans_reaped": view.orphans_reaped,
                        "shutting_down": view.shutting_down,
                        "relays": relays.count if relays is not None else 0,
                        "notify": {"accepted": view.notify.accepted,
                                   "rejected": dict(view.notify.rejected)}},
            "units": units}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{value:.1f}GiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _manager_line(m: dict[str, Any]) -> str:
    """The manager's own version and re-execs (issue 15)."""
    import time

    line = f"aeterna {m.get('version', '?')} pid {m.get('pid', '?')}"
    last = m.get("last_reexec")
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last))
        line += (f"; re-executed {m.get('reexecs', 0)} times, last at {when} "
                 f"(from {m.get('previous_version') or '?'})")
    else:
        line += "; never re-executed"
    return line


def render(reply: dict[str, Any], manager: bool = False) -> str:
    """A table for humans; ``--json`` prints the reply as it is. ``manager``: end with
    the manager's own line (``aeterna status`` of everything)."""
    rows = [("UNIT", "STATE", "RESULT", "PID", "GEN", "UPTIME", "RESTARTS", "RSS", "CPU",
             "STATUS")]
    for u in reply["units"]:
        rows.append((
            u["name"], u["state"], u["result"], str(u["main_pid"] or "-"), str(u["generation"]),
            human_seconds(u["uptime"]), str(u["restarts"]), human_bytes(u["rss"]),
            f"{u['cpu_seconds']:.2f}s" if u["cpu_seconds"] is not None else "-",
            u["status_text"] or "",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    # Hot relay: every live generation and the relay's phase and last outcome.
    for u in reply["units"]:
        gens = u.get("generations") or []
        relay = u.get("relay") or {}
        last = relay.get("last")
        if len(gens) > 1 or relay.get("phase", "idle") != "idle" or last:
            lines.append(f"{u['name']}: relay {relay.get('phase', 'idle')}; generations: "
                         + ", ".join(f"{g['generation']} pid {g['pid']} {g['role']}"
                                     for g in gens))
            if last:
                phases = " ".join(f"{k}={v:.3f}s" for k, v in last["durations"].items())
                why = f" ({last['phase']}: {last['reason']})" if last["reason"] else ""
                lines.append(f"{u['name']}: last relay: {last['outcome']}{why} "
                             f"generation {last['generation']} in {last['total']:.3f}s "
                             f"[{phases}]")
    if manager:
        lines.append(_manager_line(reply.get("manager", {})))
    return "\n".join(lines)
