"""How a unit stops: its transitions into and through STOPPING and KILLING.

One way into STOPPING (``UnitRuntime.enter_stopping``); what follows the stop
is the unit's ``want``: a stop that was asked for stays down, a restart starts
again once down, a stop caused by a failure lets ``Restart=`` decide. Each of
the escalation steps (stop timeout, SIGKILL, the kill timeout) is a timed state
whose expiry is an event. These are functions of the unit, named in its table.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from ..model import KillMode
from ..results import ExitInfo, Result
from . import commands
from .states import KILL_TIMEOUT, Event, State, Want

if TYPE_CHECKING:
    from .runtime import UnitRuntime


def waiting_stop(u: UnitRuntime) -> None:
    """Stopped with no process of the unit running (waiting, ExecStartPre=, a
    oneshot that finished): inactive at once."""
    u.disarm()
    commands.kill(u)
    u.want = Want.STAY_DOWN
    u.settle(State.INACTIVE)


def exited_stop(u: UnitRuntime) -> None:
    """A oneshot that finished is stopped."""
    waiting_stop(u)


def start_pre_stop(u: UnitRuntime) -> None:
    """Stopped while ExecStartPre= runs: its command is killed, nothing else ran."""
    waiting_stop(u)


def auto_restart_stop(u: UnitRuntime) -> None:
    """Stopped during RestartSec=: the failure that led there stays the result."""
    u.disarm()
    u.want = Want.STAY_DOWN
    u.settle()


def running_stop(u: UnitRuntime) -> None:
    """A manual stop: ExecStop= if any, then signal the group, arm the stop timeout."""
    u.want = Want.STAY_DOWN
    commands.kill(u)
    stop_signal = u.spec.service.stop_signal
    if u.spec.service.exec_stop and u.main_pid is not None:
        commands.run(u, u.spec.service.exec_stop, State.STOP_PRE,
                     lambda: u.enter_stopping(stop_signal),
                     lambda: u.enter_stopping(stop_signal))
    else:
        u.enter_stopping(stop_signal)


def running_watchdog(u: UnitRuntime) -> None:
    """The watchdog expired (or WATCHDOG=trigger): kill with the watchdog signal."""
    u.record_failure(Result.WATCHDOG)
    u.host.warning("unit.watchdog", unit=u.name, pid=u.main_pid,
                      signal=u.spec.service.watchdog_signal.name)
    u.enter_stopping(u.spec.service.watchdog_signal)


def stop_pre_exited(u: UnitRuntime, info: ExitInfo) -> None:
    """The main process ended while ExecStop= ran: finish stopping."""
    commands.kill(u)
    u.enter_stopping(None)
    stopping_exited(u, info)


def stopping_exited(u: UnitRuntime, info: ExitInfo) -> None:
    """The main process is gone; the unit is down once its group is empty too."""
    u.last_exit = info
    u.main_pid = None
    u.host.info("unit.exited", unit=u.name, how=str(info))
    if u.spec.service.kill_mode is KillMode.MIXED and u.pgid is not None:
        u.host.kill(u.pgid, signal.SIGKILL, group=True)
    u.check_group()


def stopping_group_empty(u: UnitRuntime) -> None:
    """Everything of the unit is gone: restart by policy, start again, or settle."""
    u.disarm()
    u.pgid = None
    if u.want is Want.POLICY:
        u.after_exit()
    else:
        u.settle()


def stopping_timeout(u: UnitRuntime) -> None:
    """The stop timeout passed: SIGKILL the group."""
    u.host.warning("unit.stop-timeout", unit=u.name, pid=u.main_pid,
                      timeout=u.spec.service.timeouts.stop)
    u.record_failure(Result.TIMEOUT)
    u.enter(State.KILLING)
    mode = u.spec.service.kill_mode
    if mode is not KillMode.NONE:
        if u.pgid is not None and mode is not KillMode.PROCESS:
            u.host.kill(u.pgid, signal.SIGKILL, group=True)
        elif u.main_pid is not None:
            u.host.kill(u.main_pid, signal.SIGKILL, group=False)
    u.arm(KILL_TIMEOUT, Event.TIMEOUT)


def killing_timeout(u: UnitRuntime) -> None:
    """Even SIGKILL did not end it (uninterruptible sleep): give up on it."""
    u.host.warning("unit.abandoned", unit=u.name, pid=u.main_pid)
    u.main_pid = None
    stopping_group_empty(u)


def stopping_start(u: UnitRuntime) -> None:
    """A start asked for while stopping (or running ExecStop=): start again once down."""
    u.want = Want.START


def stopping_stop(u: UnitRuntime) -> None:
    """A stop asked for while stopping (for a failure, or a restart) or running
    ExecStop=: it stays down after, whatever was pending."""
    u.want = Want.STAY_DOWN
