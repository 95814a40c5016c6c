"""Applying a reload: what ``aeterna reload`` and SIGHUP do with the unit files read.

The files are read (in a worker thread) by ``Manager.read_units``/``read_unit``;
what changed is worked out by :mod:`.daemon_reload` (pure). This module applies
it to the running manager: relays, definitions for the next start, units of new
files bound and started, and the reload's upward notifications.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..model import ServiceType, UnitSpec
from ..unit.runtime import UnitRuntime
from ..unit.states import DOWN_STATES, UP_STATES, State
from . import daemon_reload

if TYPE_CHECKING:
    from ..relay.relay import Outcome
    from .manager import Manager


def apply(m: Manager, relay: bool, new: dict[str, UnitSpec] | list[str] | None
          ) -> tuple[dict[str, Any], list[asyncio.Future[Outcome]]]:
    """SIGHUP, ``aeterna reload``: apply the unit files (``new``: as ``read_units``
    gave them; read here if not given).

    Broken files change nothing: the running configuration is kept and the
    errors are reported. Returns (what was done, the relays' outcomes to come).
    """
    if m.upward is not None:
        m.upward.reloading()
    if new is None:
        new = daemon_reload.read(m.paths, m.log, m.instances)
    if isinstance(new, list):
        m.log.error("reload.rejected", reason="invalid unit files",
                    kept="running configuration")
        if m.upward is not None:
            m.upward.reloaded(f"reload rejected: {len(new)} errors; " + m.summary())
        return {"ok": False, "errors": new}, []
    d = daemon_reload.diff({n: r.spec for n, r in m.units.items()}, new)
    daemon_reload.report(m.log, d, [n for n in d.removed
                                    if m.units[n].state not in DOWN_STATES])
    m.log.set_unit_levels({u.name: u.observability.log_level for u in new.values()})
    if m.surfaces is not None:
        m.background(m.surfaces.sync(list(new.values())))
    m.watch_paths(list(new.values()))
    if d.added and not m.shutting_down:
        add_units(m, [new[n] for n in d.added])
    relayed: list[str] = []
    futures: list[asyncio.Future[Outcome]] = []
    for name in m.order:
        spec = new.get(name)
        runtime = m.units[name]
        if spec is None:
            continue
        if relay and daemon_reload.relays(spec) and runtime.state in UP_STATES:
            futures.append(m.relay(name, spec))
            relayed.append(name)
        elif name in d.changed:
            runtime.spec = daemon_reload.keep_sockets(spec, runtime.spec, m.log)
            m.log.info("reload.applied", unit=name, when="next start")
    if d.changed:
        m.ordering.reindex()
    if m.upward is not None:
        m.background(m._upward_reloaded(m.upward, futures))
    return {"ok": True, **d.as_dict(), "relayed": relayed}, futures


def add_units(m: Manager, specs: list[UnitSpec]) -> None:
    """Bind and start the units of new files, as at boot.

    The directories given to ``aeterna start -c`` are what runs: a unit file that
    appears there starts like the others did (as ``supervisorctl update`` does;
    systemd would wait for ``systemctl start``).
    """
    for spec in specs:
        runtime = m.units[spec.name] = UnitRuntime(spec, m)
        m.bind_unit(runtime)
        m.srp_for(runtime, spec)
    m.ordering.reindex()
    for spec in specs:
        runtime = m.units[spec.name]
        if runtime.state is State.INACTIVE:  # not failed at bind
            svc = spec.service
            m.log.info("reload.added", unit=spec.name, action="start" if svc.enabled
                       and not svc.on_demand else "wait")
            m._boot(runtime)


def unit_action(m: Manager, name: str, new: UnitSpec | list[str] | None
                ) -> tuple[str, UnitSpec | None, str]:
    """For ``aeterna reload UNIT``: (action, new definition, error); ``new`` as
    ``read_unit`` gave it (read here if not given)."""
    current = m.units[name].spec
    spec_or_errors = new if new is not None else daemon_reload.read_for(
        m.paths, m.log, current, m.instances)
    if isinstance(spec_or_errors, list):
        return "invalid", None, "\n".join(spec_or_errors)
    spec = spec_or_errors
    action = daemon_reload.action_for(spec, current)
    if action == "relay" and spec.service.type is ServiceType.FORKING:
        return "refused", None, (f"{name} is Type=forking: a hot relay needs N+1 to "
                                 "accept beside N on the sockets it was handed, which a "
                                 "daemon that forks and binds its own cannot do; set "
                                 "Strategy=restart in [X-Aeterna], or use ExecReload=")
    if action in ("restart", "in-place"):
        spec = daemon_reload.keep_sockets(spec, current, m.log)
    return action, spec, ""
