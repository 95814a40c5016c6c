"""What ``aeterna status`` shows of a unit: its state plus RSS and CPU from psutil.

psutil is imported on first use only, so a manager that nobody asks for status
does not pay for it in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..unit.runtime import UnitRuntime


def collect(runtime: UnitRuntime) -> dict[str, Any]:
    """The unit's snapshot, with memory and CPU summed over its process tree."""
    snap = runtime.snapshot()
    snap["rss"] = None
    snap["cpu_seconds"] = None
    if runtime.main_pid is not None:
        snap.update(tree_usage(runtime.main_pid))
    return snap


def tree_usage(pid: int) -> dict[str, Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    rss = 0
    cpu = 0.0
    for p in procs:
        try:
            rss += p.memory_info().rss
            t = p.cpu_times()
            cpu += t.user + t.system
        except psutil.Error:
            continue
    return {"rss": rss, "cpu_seconds": round(cpu, 2), "processes": len(procs)}


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


def render(reply: dict[str, Any]) -> str:
    """A table for humans; ``--json`` prints the reply as it is."""
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
    return "\n".join(lines)
