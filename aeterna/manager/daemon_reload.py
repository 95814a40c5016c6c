"""Reloads, the decisions: what changed in the unit files, and what to do with each unit.

Pure but for reading the files. The manager applies the decisions
(``Manager.reload`` and ``Manager.reload_unit``): every ``hot-relay`` unit
that is up is relayed to its new definition; other changed units take theirs
at their next start; new units are bound and started; a unit whose file is
gone runs until stopped, as under systemd. Broken files change nothing.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, replace

from ..loader import load_paths
from ..loader.errors import UnitErrors
from ..log import Log
from ..model import ServiceType, Strategy, UnitSpec


@dataclass(frozen=True)
class Diff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": list(self.changed)}


def read(paths: list[str], log: Log,
         instances: list[str] | tuple[str, ...] = ()) -> dict[str, UnitSpec] | list[str]:
    """The unit files now (and the template instances started by name), by name;
    or the errors, each logged.

    Called in a worker thread. The cyclic collector is paused meanwhile: parsing
    allocates hundreds of thousands of objects, and the full collections they
    trigger run under the GIL, stalling the loop's thread for 100 ms at a time.
    """
    if instances:
        from .instances import still_templated

        instances = still_templated(paths, instances)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return load_paths(paths, instances).by_name()
    except UnitErrors as exc:
        for err in exc.errors:
            log.error("reload.invalid", error=str(err))
        return [str(e) for e in exc.errors]
    finally:
        if was_enabled:
            gc.enable()


def read_for(paths: list[str], log: Log, current: UnitSpec,
             instances: list[str] | tuple[str, ...] = ()) -> UnitSpec | list[str]:
    """``aeterna reload UNIT``: the unit's definition now, or the errors of its own
    file; other files' errors are logged and do not hold this unit back (as
    ``systemctl reload`` of a good unit beside a broken one). In a worker thread,
    with the cyclic collector paused as in ``read``."""
    if instances:
        from .instances import still_templated

        instances = still_templated(paths, instances)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = load_paths(paths, instances, partial=True)
    finally:
        if was_enabled:
            gc.enable()
    mine = [e for e in result.errors if e.file == current.source.file]
    for err in result.errors:
        log.error("reload.invalid", error=str(err))
    if mine:
        return [str(e) for e in mine]
    spec = result.by_name().get(current.name)
    if spec is None:
        return [f"{current.name} is no longer defined in the unit files"]
    return spec


def report(log: Log, d: Diff, removed_running: list[str]) -> None:
    """One line per changed unit, one summary; a removed unit runs until stopped."""
    for key, names in d.as_dict().items():
        for n in names:
            log.info("reload.diff", unit=n, change=key)
    log.info("reload.checked", added=len(d.added), removed=len(d.removed),
             changed=len(d.changed))
    for name in removed_running:
        # As systemd does with a unit whose file is gone: it runs until stopped.
        log.warning("reload.removed-still-running", unit=name, hint=f"aeterna stop {name}")


def diff(old: dict[str, UnitSpec], new: dict[str, UnitSpec]) -> Diff:
    return Diff(added=tuple(sorted(set(new) - set(old))),
                removed=tuple(sorted(set(old) - set(new))),
                changed=tuple(sorted(n for n in set(new) & set(old) if new[n] != old[n])))


def relays(spec: UnitSpec) -> bool:
    """Is a reload of this unit a hot relay?"""
    return spec.orchestration.strategy is Strategy.HOT_RELAY


def action_for(new: UnitSpec, current: UnitSpec) -> str:
    """``aeterna reload UNIT``, as ``systemctl reload`` after a daemon-reload:
    "relay" (``strategy: hot-relay``), "in-place" (ExecReload= or notify-reload,
    with the new definition), "restart" only when ``strategy: restart`` was
    asked for, else "not-applicable": a reload never costs a unit its
    process, and the state in it, unless the user asked for that."""
    if relays(new):
        return "relay"
    if new.service.type is ServiceType.NOTIFY_RELOAD or new.service.exec_reload:
        return "in-place"
    if new.orchestration.strategy_given:
        return "restart"
    return "not-applicable"


def keep_sockets(new: UnitSpec, old: UnitSpec, log: Log) -> UnitSpec:
    """Sockets are bound once for the manager's life: a changed list is not applied."""
    if new.service.sockets == old.service.sockets:
        return new
    log.warning("reload.sockets-kept", unit=new.name,
                reason="sockets are bound once; restart the manager to change them")
    return replace(new, service=replace(new.service, sockets=old.service.sockets))
