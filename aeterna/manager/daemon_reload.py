"""Reloads: re-read the unit files, keep the running config when they are broken.

``reload_all`` is SIGHUP and ``aeterna reload``: every ``hot-relay`` unit is
relayed to its new definition, other changed units take theirs at their next
start, new units are started, and units whose file is gone run until stopped.
``reload_one`` decides what ``aeterna reload UNIT`` does.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..loader import load_paths, start_order
from ..loader.errors import UnitErrors
from ..model import ServiceType, Strategy, Unit
from ..unit.runtime import DOWN_STATES, UP_STATES, Event, State, UnitRuntime

if TYPE_CHECKING:
    from ..log import Log
    from .manager import Manager


def reload_all(m: Manager, relay: bool = True) -> dict[str, Any]:
    """Re-read and validate the unit files (SIGHUP, ``aeterna reload``).

    Broken files change nothing: the running configuration is kept and the
    errors are reported. Otherwise every ``hot-relay`` unit is relayed to its
    new definition; other changed units take theirs at their next start.
    """
    try:
        loaded = load_paths(m.paths)
    except UnitErrors as exc:
        for err in exc.errors:
            m.log.error("reload.invalid", error=str(err))
        m.log.error("reload.rejected", reason="invalid unit files",
                       kept="running configuration")
        return {"ok": False, "errors": [str(e) for e in exc.errors]}
    new = loaded.by_name()
    old = {n: r.unit for n, r in m.units.items()}
    m.observability_changed(list(new.values()))
    diff = {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(n for n in set(new) & set(old) if new[n] != old[n]),
    }
    for key, names in diff.items():
        for n in names:
            m.log.info("reload.diff", unit=n, change=key)
    m.log.info("reload.checked", added=len(diff["added"]), removed=len(diff["removed"]),
                  changed=len(diff["changed"]))
    for name in diff["removed"]:
        # As systemd does with a unit whose file is gone: it runs until stopped.
        if m.units[name].state not in DOWN_STATES:
            m.log.warning("reload.removed-still-running", unit=name,
                          hint=f"aeterna stop {name}")
    if diff["added"] and not m.shutting_down:
        _add_units(m, [new[n] for n in diff["added"]])
    relayed: list[str] = []
    futures: list[asyncio.Future[Any]] = []
    for name in m.order:
        unit = new.get(name)
        if unit is None:
            continue
        runtime = m.units[name]
        if (relay and unit.orchestration.strategy is Strategy.HOT_RELAY
                and runtime.state in UP_STATES):
            futures.append(m.relays.request(name, unit))
            relayed.append(name)
        elif name in diff["changed"]:
            runtime.unit = _keep_sockets(unit, runtime.unit, m.log)
            m.log.info("reload.applied", unit=name, when="next start")
    return {"ok": True, **diff, "relayed": relayed, "_futures": futures}

def _add_units(m: Manager, units: list[Unit]) -> None:
    """Bind and start the units of new files, as at boot.

    The directories given to ``aeterna start -c`` are what runs: a unit file that
    appears there starts like the others did (as ``supervisorctl update`` does;
    systemd would wait for ``systemctl start``).
    """
    for unit in units:
        runtime = m.units[unit.name] = UnitRuntime(unit, m)
        m.bind_unit(runtime)
        m.srp_for(runtime, unit)
    m.order = start_order({n: r.unit for n, r in m.units.items()})
    for unit in units:
        runtime = m.units[unit.name]
        if runtime.state is State.INACTIVE:  # not failed at bind
            m.log.info("reload.added", unit=unit.name, action="start")
            runtime.dispatch(Event.START)


def reload_one(m: Manager, name: str) -> tuple[str, Unit | None, str]:
    """For ``aeterna reload UNIT``: (action, new definition, error)."""
    try:
        loaded = load_paths(m.paths)
    except UnitErrors as exc:
        for err in exc.errors:
            m.log.error("reload.invalid", error=str(err))
        return "invalid", None, "\n".join(str(e) for e in exc.errors)
    unit = loaded.by_name().get(name)
    if unit is None:
        return "invalid", None, f"{name} is no longer defined in the unit files"
    if unit.orchestration.strategy is Strategy.HOT_RELAY:
        return "relay", unit, ""
    if ((unit.service.type is ServiceType.NOTIFY_RELOAD or unit.service.exec_reload)
            and unit == m.units[name].unit):
        return "in-place", unit, ""
    return "restart", _keep_sockets(unit, m.units[name].unit, m.log), ""


def _keep_sockets(new: Unit, old: Unit, log: Log) -> Unit:
    """Sockets are bound once for the manager's life: a changed list is not applied."""
    if new.service.sockets == old.service.sockets:
        return new
    log.warning("reload.sockets-kept", unit=new.name,
                reason="sockets are bound once; restart the manager to change them")
    return replace(new, service=replace(new.service, sockets=old.service.sockets))


