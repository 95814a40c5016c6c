"""In-place reload of a unit: ExecReload=, and Type=notify-reload's handshake.

``aeterna reload UNIT`` on a unit that is not relayed sends ``RELOAD``: its
ExecReload= commands run first; then, for ``notify-reload``, the reload signal
goes to the main process, which answers ``RELOADING=1`` (stamped with
``MONOTONIC_USEC=`` after our signal) and then ``READY=1``. A service may also
reload by itself with the same two messages.

:class:`ReloadState` is the bookkeeping, one per unit; the functions are the
unit's transitions in ACTIVE and RELOADING, named in the unit's table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model import ServiceType
from . import commands
from .states import Event, State

if TYPE_CHECKING:
    from .runtime import UnitRuntime


@dataclass
class ReloadState:
    t0_usec: int = 0  # CLOCK_MONOTONIC of our reload signal
    requested: bool = False  # we sent the signal (not a reload the service began)
    seen: bool = False  # the RELOADING=1 that answers it arrived
    count: int = 0
    last: str = ""  # "", "success", "failed", "timeout"
    back: State = State.ACTIVE  # where a reload returns: EXITED for RemainAfterExit=


def _finish(u: UnitRuntime, outcome: str) -> None:
    u.reload.count += 1
    u.reload.last = outcome
    log = u.host.info if outcome == "success" else u.host.warning
    log("unit.reloaded", unit=u.name, outcome=outcome)
    u.enter(u.reload.back)
    if u.reload.back is State.ACTIVE:
        u.arm_runtime_max()
    u.reload.back = State.ACTIVE


def active_reload(u: UnitRuntime) -> None:
    """An in-place reload: ExecReload= first, then the reload signal (notify-reload)."""
    cmds = u.spec.service.exec_reload
    if cmds:
        commands.run(u, cmds, State.RELOADING, lambda: _signal(u), lambda: _finish(u, "failed"))
    else:
        _signal(u)


def exited_reload(u: UnitRuntime) -> None:
    """Reload of a unit that is "active (exited)" (RemainAfterExit=, postgresql.service):
    its ExecReload= commands run, and it stays exited."""
    u.reload.back = State.EXITED
    cmds = u.spec.service.exec_reload
    if cmds:
        commands.run(u, cmds, State.RELOADING, lambda: _finish(u, "success"),
                     lambda: _finish(u, "failed"))
    else:
        _finish(u, "success")


def _signal(u: UnitRuntime) -> None:
    svc = u.spec.service
    if svc.type is not ServiceType.NOTIFY_RELOAD:
        _finish(u, "success")
        return
    u.reload.t0_usec = time.monotonic_ns() // 1000
    u.reload.requested = True
    u.reload.seen = False
    u.enter(State.RELOADING)
    if u.main_pid is not None:
        u.host.kill(u.main_pid, svc.reload_signal, group=False)
    u.arm(svc.timeouts.start, Event.TIMEOUT)


def active_reloading(u: UnitRuntime, usec: int | None = None) -> None:
    """An unsolicited RELOADING=1: a reload the service started itself."""
    u.reload.requested = False
    u.reload.seen = True
    u.enter(State.RELOADING)
    u.arm(u.spec.service.timeouts.start, Event.TIMEOUT)


def reloading_reloading(u: UnitRuntime, usec: int | None = None) -> None:
    """RELOADING=1 while we wait: it answers our signal only if stamped after it."""
    if not u.reload.requested or (usec is not None and usec >= u.reload.t0_usec):
        u.reload.seen = True


def reloading_ready(u: UnitRuntime) -> None:
    """READY=1 ends the reload, if the RELOADING=1 that answers it came first."""
    if u.reload.seen:
        u.disarm()
        _finish(u, "success")


def reloading_timeout(u: UnitRuntime) -> None:
    """The reload did not finish in time; the service keeps running as it is."""
    commands.kill(u)
    _finish(u, "timeout")
