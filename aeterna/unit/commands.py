"""A unit's commands: ExecStartPre=, ExecStartPost=, ExecStop=, ExecReload=.

Each list runs one command at a time in a state of its own (START_PRE,
START_POST, STOP_PRE, RELOADING), under one deadline for the whole list; a
command prefixed with ``-`` may fail. Commands get the unit's environment
(plus ``MAINPID``) but no fds, as in systemd. ("Control" in Aeterna means the
control socket only; these are the unit's commands.)

:class:`CommandQueue` is the state, one per unit; the functions are the
unit's transitions for ``COMMAND_EXITED`` and ``TIMEOUT`` in those states,
named in the unit's table.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..linux.spawn import SpawnError
from ..loader.systemd_words import ExecCommand
from ..results import ExitInfo, Result
from .states import Event, State

if TYPE_CHECKING:
    from .runtime import UnitRuntime


def _nothing() -> None:
    pass


@dataclass
class CommandQueue:
    """The commands of the list being run, and the one running now."""

    todo: list[ExecCommand] = field(default_factory=list)
    pid: int | None = None
    ignore_failure: bool = False  # the running command has the "-" prefix
    last_exit: ExitInfo | None = None  # how the last command ended (ExecCondition=)
    done: Callable[[], None] = _nothing
    failed: Callable[[], None] = _nothing


def run(u: UnitRuntime, cmds: tuple[tuple[str, ...], ...], state: State,
        done: Callable[[], None], failed: Callable[[], None]) -> None:
    """Run ``cmds`` in ``state``; then ``done()``, or ``failed()`` at the first failure."""
    q = u.commands
    q.todo = [ExecCommand.decode(c) for c in cmds]
    q.done, q.failed = done, failed
    u.enter(state)
    svc = u.spec.service
    stop = state in (State.STOP_PRE, State.STOP_POST)
    u.arm(svc.timeouts.stop if stop else svc.timeouts.start, Event.TIMEOUT)
    _next(u)


def _next(u: UnitRuntime) -> None:
    q = u.commands
    while q.todo:
        cmd = q.todo.pop(0)
        q.ignore_failure = cmd.ignore_failure
        try:
            _set_pid(u, u.host.spawn_command(u, cmd.argv, cmd.argv0,
                                                 cmd.full_privileges))
            return
        except (SpawnError, OSError) as exc:
            u.host.warning("unit.command-failed", unit=u.name, state=u.state.value,
                           command=cmd.argv[0], error=str(exc))
            if not cmd.ignore_failure:
                u.disarm()
                u.record_failure(Result.EXEC)
                q.failed()
                return
    _set_pid(u, None)
    u.disarm()
    q.done()


def _set_pid(u: UnitRuntime, pid: int | None) -> None:
    # A command runs in a session of its own: its pid is its group, which is
    # how a notify datagram from it (NotifyAccess=exec) finds the unit.
    u.host.pids.group(u, u.commands.pid, pid)
    u.commands.pid = pid


def command_exited(u: UnitRuntime, info: ExitInfo) -> None:
    """A command ended: the next one, or the failure path."""
    _set_pid(u, None)
    u.commands.last_exit = info
    if info.code == 0 or u.commands.ignore_failure:
        _next(u)
        return
    u.disarm()
    u.record_failure(Result.EXIT_CODE if info.signal is None else Result.SIGNAL)
    u.host.warning("unit.command-failed", unit=u.name, state=u.state.value, how=str(info))
    u.commands.failed()


def command_timeout(u: UnitRuntime) -> None:
    """The list did not finish in time: SIGKILL the command, fail the step."""
    kill(u)
    u.record_failure(Result.TIMEOUT)
    u.host.warning("unit.command-timeout", unit=u.name, state=u.state.value)
    u.commands.todo = []
    u.commands.failed()


def kill(u: UnitRuntime) -> None:
    """SIGKILL the running command, if any (its exit is then of no interest)."""
    pid = u.commands.pid
    if pid is not None:
        u.host.kill(pid, signal.SIGKILL, group=True)
        _set_pid(u, None)


def command_env(main_pid: int | None) -> dict[str, str]:
    """What a command gets on top of the unit's environment."""
    return {"MAINPID": str(main_pid)} if main_pid is not None else {}
