"""The verbs a systemd user expects: show, cat, kill, reset-failed, daemon-reload, logs.

``show`` answers with systemctl's property names and values (``ActiveState``,
``SubState``, ``MainPID``, ...), so the ``systemctl`` front end, Debian's
``service`` and configuration-management tools read what they read from
systemd. ``is-active``, ``is-failed``, ``is-enabled``, ``list-units`` and
``status``'s exit code are worked out from it on the client side, as
systemctl does from the same properties.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..model import ServiceType, Strategy
from ..unit.states import State
from ..wire.control import ControlError
from .view import ManagerView, UnitView

if TYPE_CHECKING:
    from .server import ControlServer

# Aeterna's states as systemd's (ActiveState, SubState).
_SYSTEMD_STATE: dict[State, tuple[str, str]] = {
    State.INACTIVE: ("inactive", "dead"),
    State.WAITING: ("activating", "start-pre"),  # a queued start job, in systemd
    State.START_PRE: ("activating", "start-pre"),
    State.STARTING: ("activating", "start"),
    State.START_POST: ("activating", "start-post"),
    State.ACTIVE: ("active", "running"),
    State.RELOADING: ("reloading", "reload"),
    State.EXITED: ("active", "exited"),
    State.STOP_PRE: ("deactivating", "stop"),
    State.STOPPING: ("deactivating", "stop-sigterm"),
    State.KILLING: ("deactivating", "stop-sigkill"),
    State.AUTO_RESTART: ("activating", "auto-restart"),
    State.FAILED: ("failed", "failed"),
}

SUFFIXES = (".service", ".socket")


def resolve_name(units: Mapping[str, UnitView], name: str) -> str:
    """A unit's own name for ``name``, as systemctl takes it: as written, without its
    ``.service`` or ``.socket`` suffix, or one of its aliases (Alias=, alias
    symlinks); else ``name`` itself."""
    if name in units:
        return name
    stem = name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    if stem in units:
        return stem
    for own, u in units.items():
        if stem in u.spec.service.aliases:
            return own
    return name


def resolve(view: ManagerView, name: str) -> str | None:
    """The unit a user means by ``name`` (see ``resolve_name``), or None."""
    found = resolve_name(view.units, name)
    return found if found in view.units else None


def systemd_timestamp(t: float | None) -> str:
    """systemctl's format: ``Wed 2026-12-02 17:38:32 UTC`` (empty when never)."""
    if not t:
        return ""
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def can_reload(u: UnitView) -> bool:
    spec = u.spec
    return bool(spec.service.exec_reload or spec.service.type is ServiceType.NOTIFY_RELOAD
                or spec.orchestration.strategy is Strategy.HOT_RELAY)


def properties(u: UnitView) -> dict[str, str]:
    """One unit's systemctl properties, as ``systemctl show`` prints them."""
    active, sub = _SYSTEMD_STATE[u.state]
    exit_info = u.snapshot().get("exit")
    last = u.last_exit
    status = 0
    if last is not None:
        status = last.signal if last.signal is not None else (last.code or 0)
    spec = u.spec
    listen = " ".join(f"{s.address}" for s in spec.service.sockets)
    return {
        "Id": f"{u.name}.service",
        "Names": f"{u.name}.service",
        "Description": spec.description or u.name,
        "LoadState": "loaded",
        "ActiveState": active,
        "SubState": sub,
        "Result": u.result.value,
        "Type": spec.service.type.value,
        "MainPID": str(u.main_pid or 0),
        "ExecMainStatus": str(status),
        "ExecMainCode": "" if exit_info is None else ("2" if last and last.signal else "1"),
        "NRestarts": str(u.restarts),
        "UnitFileState": "enabled" if spec.service.enabled else "disabled",
        "UnitFilePreset": "enabled",
        "ActiveEnterTimestamp": systemd_timestamp(u.active_since),
        "FragmentPath": spec.source.file,
        "CanReload": "yes" if can_reload(u) else "no",
        "CanStart": "yes",
        "CanStop": "yes",
        "Triggers": "",
        "Listen": listen,
        "StatusText": u.snapshot().get("status_text") or "",
        "X-AeternaState": u.state.value,
        "X-AeternaGeneration": str(u.generation),
    }


def not_found(name: str) -> dict[str, str]:
    """What systemctl shows of a unit it cannot load."""
    unit = name if name.endswith(SUFFIXES) or "." in name else f"{name}.service"
    return {"Id": unit, "Names": unit, "Description": unit, "LoadState": "not-found",
            "ActiveState": "inactive", "SubState": "dead", "Result": "success",
            "MainPID": "0", "ExecMainStatus": "0", "NRestarts": "0", "UnitFileState": "",
            "ActiveEnterTimestamp": "", "CanReload": "no", "Triggers": ""}


# --------------------------------------------------------------------------- verbs
async def show(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """Properties of the units named (any may be unknown: LoadState=not-found), or of
    every unit."""
    m = srv.view
    names = req.get("names")
    if not names:
        return {"units": [properties(m.units[n]) for n in m.order]}
    out = []
    for name in names:
        found = resolve(m, name)
        out.append(properties(m.units[found]) if found else not_found(name))
    return {"units": out}


async def cat(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """The unit's file as it is on disk now, headed by its path (``systemctl cat``)."""
    if unit is None:
        raise ControlError("bad-request", "cat needs a unit")
    path = srv.view.units[unit].spec.source.file
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        raise ControlError("failed", f"{path}: {exc.strerror}")
    return {"unit": unit, "path": path, "text": text}


async def kill(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """Signal the unit's main process (``--kill-whom=main``) or its whole process group
    (``all``, the default, as systemctl's); the unit's policy sees the outcome."""
    if unit is None:
        raise ControlError("bad-request", "kill needs a unit")
    name = req.get("signal") or "SIGTERM"
    try:
        sig = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"] \
            if not name.isdigit() else signal.Signals(int(name))
    except (KeyError, ValueError):
        raise ControlError("bad-request", f"signal: expected a signal name like SIGTERM, "
                           f"found {name!r}")
    whom = req.get("whom") or "all"
    if whom not in ("main", "all", "control"):
        raise ControlError("bad-request", f"kill-whom: expected main or all, found {whom!r}")
    signalled = srv.view.kill_unit(unit, int(sig), whom)
    if not signalled:
        raise ControlError("failed", f"{unit} has no process to signal")
    return {"unit": unit, "signal": sig.name, "whom": whom, "pids": signalled}


async def reset_failed(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    return {"reset": srv.view.reset_failed(unit)}


async def daemon_reload(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """Re-read the unit files; new definitions apply at each unit's next start."""
    m = srv.view
    result, _ = m.reload(relay=False, new=await m.read_units())
    if not result.get("ok", True):
        raise ControlError("invalid", "\n".join(result.get("errors", []))
                           + "\nthe running configuration is kept")
    return result


async def enable(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """Link a systemd unit from its ``WantedBy=`` targets, then re-read the files."""
    return await _install(srv, unit, "enable")


async def disable(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """Remove a systemd unit's ``*.wants/`` links, then re-read the files."""
    return await _install(srv, unit, "disable")


async def _install(srv: ControlServer, unit: str | None, verb: str) -> Any:
    from ..loader import systemd_install

    if unit is None:
        raise ControlError("bad-request", f"{verb} needs a unit")
    m = srv.view
    path = m.units[unit].spec.source.file
    if not path.endswith((".service", ".socket")):
        raise ControlError("bad-request", f"{unit} is defined by {path}: a YAML unit is "
                           "enabled unless it says 'service.enabled: false'")
    try:
        links = (systemd_install.enable if verb == "enable" else systemd_install.disable)(path)
    except OSError as exc:
        raise ControlError("failed", f"{path}: {exc.strerror}")
    result, _ = m.reload(relay=False, new=await m.read_units())
    return {"unit": unit, "links": links, "target": path, "reload": result.get("ok", True)}


FOLLOW_WAIT_MAX = 30.0  # s a follower's long poll may wait for its next line


async def logs(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """Lines of a unit's ring: the last ``lines`` of them, or those after cursor
    ``after`` (waiting up to ``wait`` s for one: how ``logs -f`` follows)."""
    if unit is None:
        raise ControlError("bad-request", "logs needs a unit")
    ring = srv.view.journal(unit)
    after = req.get("after")
    if after is None:
        entries = ring.tail(max(0, int(req.get("lines") or 0)))
        lost = 0
    else:
        wait = min(float(req.get("wait") or 0), FOLLOW_WAIT_MAX)
        if wait > 0:
            await ring.wait(int(after), wait)
        entries, lost = ring.since(int(after), limit=5000)
    # Where the next read starts: past what was sent and what the ring lost.
    if after is None:
        cursor = ring.last_seq
    else:
        cursor = entries[-1].seq if entries else int(after) + lost
    since = req.get("since")
    if since is not None:
        entries = [e for e in entries if e.time >= float(since)]
    return {"unit": unit, "entries": [e.as_dict() for e in entries], "lost": lost,
            "cursor": cursor, "ring": ring.stats()}
