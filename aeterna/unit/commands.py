"""Control commands of a unit: ExecStartPre=, ExecStartPost=, ExecStop=, ExecReload=.

A mixin of ``UnitRuntime``. Each list runs one command at a time in a state of
its own (START_PRE, START_POST, STOP_PRE, RELOADING), under one deadline for
the whole list; a command prefixed with ``-`` may fail. Control processes get
the unit's environment (plus ``MAINPID``) but no fds, as in systemd.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..linux import proc
from ..linux.spawn import SpawnError
from ..loader.systemd_words import ExecCommand
from ..model import Unit
from ..results import ExitInfo, Result
from .states import Event, State

if TYPE_CHECKING:
    from .runtime import Host


class ControlCommands:
    """Runs a unit's control command lists as steps of its lifecycle."""

    unit: Unit
    host: Host
    state: State
    control_pid: int | None
    _controls: list[ExecCommand]
    _control_ignore: bool
    _controls_done: Callable[[], None]
    _controls_failed: Callable[[], None]

    def _set_state(self, state: State) -> None: ...  # pragma: no cover
    def _arm(self, delay: float, event: Event) -> None: ...  # pragma: no cover
    def _disarm(self) -> None: ...  # pragma: no cover
    def _fail(self, result: Result) -> None: ...  # pragma: no cover

    @property
    def _unit_name(self) -> str:
        return self.unit.name

    def _run_controls(self, cmds: tuple[tuple[str, ...], ...], state: State,
                      done: Callable[[], None], failed: Callable[[], None]) -> None:
        """Run ``cmds`` in ``state``; then ``done()``, or ``failed()`` at the first failure."""
        self._controls = [ExecCommand.decode(c) for c in cmds]
        self._controls_done = done
        self._controls_failed = failed
        self._set_state(state)
        svc = self.unit.service
        self._arm(svc.timeouts.stop if state is State.STOP_PRE else svc.timeouts.start,
                  Event.TIMEOUT)
        self._next_control()

    def _next_control(self) -> None:
        if not self._controls:
            self.control_pid = None
            self._disarm()
            self._controls_done()
            return
        cmd = self._controls.pop(0)
        self._control_ignore = cmd.ignore_failure
        try:
            self.control_pid = self.host.spawn_control(self, cmd.argv, cmd.argv0)  # type: ignore[arg-type]
        except (SpawnError, OSError) as exc:
            self.host.warning("unit.control-failed", unit=self._unit_name,
                              state=self.state.value, command=cmd.argv[0], error=str(exc))
            if cmd.ignore_failure:
                self._next_control()
                return
            self._disarm()
            self._fail(Result.EXEC)
            self._controls_failed()

    def control_exited(self, info: ExitInfo) -> None:
        """A control command ended: the next one, or the failure path."""
        self.control_pid = None
        if info.code == 0 or self._control_ignore:
            self._next_control()
            return
        self._disarm()
        self._fail(Result.EXIT_CODE if info.signal is None else Result.SIGNAL)
        self.host.warning("unit.control-failed", unit=self._unit_name, state=self.state.value,
                          how=str(info))
        self._controls_failed()

    def control_timeout(self) -> None:
        """The command list did not finish in time: SIGKILL the command, fail the step."""
        self._kill_control()
        self._fail(Result.TIMEOUT)
        self.host.warning("unit.control-timeout", unit=self._unit_name, state=self.state.value)
        self._controls = []
        self._controls_failed()

    def _kill_control(self) -> None:
        if self.control_pid is not None:
            proc.kill_group(self.control_pid, signal.SIGKILL)
            self.control_pid = None

    def control_env(self, main_pid: int | None) -> dict[str, Any]:
        return {"MAINPID": str(main_pid)} if main_pid is not None else {}
