"""How the manager starts processes: main processes, generations, control commands, hooks.

A mixin of ``Manager``. Every child gets the unit's environment (``environment``),
its fds laid out at 3.. (``spawn``), and output pipes whose lines are prefixed
``unit[pid]:``; its exit reaches whoever ``watch``-es its pid, through the one
reaper of the manager.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..linux import proc
from ..linux.output import LineRelay, make_pipe
from ..linux.spawn import SpawnError, SpawnRequest, spawn
from ..model import ServiceType, Unit
from ..results import ExitInfo
from ..unit.runtime import Event, UnitRuntime
from . import environment

if TYPE_CHECKING:
    from ..log import Log
    from ..relay.coordinator import Coordinator
    from ..relay.relay import Relay
    from ..relay.srp import SrpUnit
    from .notify_endpoint import NotifyEndpoint


class Spawning:
    """Starts every process the manager owns."""

    loop: asyncio.AbstractEventLoop | None
    log: Log
    relays: Coordinator
    notify: NotifyEndpoint
    base_env: dict[str, str]

    def watch(self, pid: int, callback: Callable[[ExitInfo], None]) -> None: ...  # pragma: no cover
    def srp_for(self, runtime: UnitRuntime, unit: Unit) -> SrpUnit | None: ...  # pragma: no cover
    def _background(self, coro: Coroutine[Any, Any, None]) -> None: ...  # pragma: no cover

    def _shares_listeners(self, runtime: UnitRuntime) -> bool:
        """Is another generation of this unit alive (and so using its listeners)?"""
        return (runtime.main_pid is not None or runtime.name in self.relays.current
                or self.relays.draining_count(runtime.name) > 0)

    def spawn_main(self, runtime: UnitRuntime) -> int:
        """Start the unit's main process (its current definition and generation)."""
        return self.spawn_process(runtime, runtime.unit, runtime.generation)

    def spawn_control(self, runtime: UnitRuntime, argv: tuple[str, ...], argv0: str) -> int:
        """An ExecStartPre/Post/Stop/Reload command: the unit's env and MAINPID, no fds."""
        pid = self.spawn_process(runtime, runtime.unit, runtime.generation, argv, "control",
                                 extra_env=runtime.control_env(runtime.main_pid), argv0=argv0)
        self.watch(pid, lambda info: runtime.dispatch(Event.CONTROL_EXITED, info=info))
        return pid

    def spawn_generation(self, runtime: UnitRuntime, unit: Unit, generation: int,
                         relay: Relay) -> int:
        """Start N+1 for a relay, on the unit's sockets, watched by the relay."""
        pid = self.spawn_process(runtime, unit, generation)
        self.watch(pid, relay.canary_exited)
        self.log.info("relay.started", unit=unit.name, pid=pid, generation=generation)
        return pid

    def spawn_process(self, runtime: UnitRuntime, unit: Unit, generation: int,
                      argv: tuple[str, ...] | None = None, label: str = "",
                      extra_env: dict[str, str] | None = None, argv0: str = "") -> int:
        """Fork/exec with env, identity and output pipes prefixed ``unit[pid]``."""
        assert self.loop is not None
        req = self.build_request(runtime, unit, generation)
        changes: dict[str, Any] = {}  # applied with one dataclasses.replace below
        srp_child = -1
        if argv is not None:  # a hook or probe: the unit's environment, no fds
            # systemd: control processes get NOTIFY_SOCKET only with NotifyAccess=exec|all.
            access = unit.service.effective_notify_access().value
            env = {k: v for k, v in req.env.items()
                   if not k.startswith(("LISTEN_", "WATCHDOG_")) and k != "FDSTORE"
                   and (k != "NOTIFY_SOCKET" or access in ("exec", "all"))}
            env.update(extra_env or {})
            changes.update(argv=argv, pass_fds=(), blocking_fds=frozenset(), pid_env=(),
                           argv0=argv0, env=env)
        else:
            if self._shares_listeners(runtime):
                # O_NONBLOCK lives on the open file description, which a running
                # generation shares: clearing it under an app that accepts until
                # EAGAIN (asyncio, Go, nginx) would block that app in accept().
                changes["blocking_fds"] = frozenset()
            srp = self.srp_for(runtime, unit)
            if srp is not None and unit.orchestration.state_handoff.enabled:
                # The SRP end goes right after the LISTEN_FDS range (docs/srp.md §2).
                srp_child = srp.open_channel(generation)
                target = 3 + len(req.pass_fds)
                env = dict(req.env, AETERNA_SRP_FD=str(target))
                if unit.orchestration.state_handoff.socket_path:
                    env["AETERNA_SRP_SOCKET"] = unit.orchestration.state_handoff.socket_path
                if unit.orchestration.state_handoff.required:
                    env["AETERNA_SRP_REQUIRED"] = "1"
                changes.update(extra_fd=(srp_child, target), env=env)
        out_r, out_w = make_pipe()
        err_r, err_w = make_pipe()
        try:
            req = environment.with_(req, stdout=out_w, stderr=err_w, **changes)
            pid = spawn(req, exact_exec=argv is None and unit.service.type is ServiceType.EXEC)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
            if srp_child >= 0:
                os.close(srp_child)  # the child has its copy; EOF on ours means it is gone
        prefix = f"{runtime.name}{'/' + label if label else ''}[{pid}]: "
        LineRelay(self.loop, out_r, prefix, sys.stdout.buffer)
        LineRelay(self.loop, err_r, prefix, sys.stderr.buffer)
        return pid

    async def run_helper(self, runtime: UnitRuntime, argv: tuple[str, ...], timeout: float,
                         label: str) -> ExitInfo | None:
        """Run a hook or exec probe to its end; None (and SIGKILL) if it times out."""
        assert self.loop is not None
        try:
            pid = self.spawn_process(runtime, runtime.unit, runtime.generation, argv, label)
        except (SpawnError, OSError) as exc:
            self.log.warning("hook.failed", unit=runtime.name, hook=label, error=str(exc))
            return ExitInfo(code=exc.exit_status if isinstance(exc, SpawnError) else 1)
        fut: asyncio.Future[ExitInfo] = self.loop.create_future()
        self.watch(pid, lambda info: None if fut.done() else fut.set_result(info))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            proc.kill_group(pid, signal.SIGKILL)
            self.log.warning("hook.timeout", unit=runtime.name, hook=label, pid=pid,
                             timeout=timeout)
            return None

    def spawn_background_hook(self, runtime: UnitRuntime, argv: tuple[str, ...],
                              outcome: str) -> None:
        """post_process hooks: run, log their result, never block the relay."""
        async def run() -> None:
            info = await self.run_helper(runtime, argv, 60.0, "post-process")
            self.log.info("hook.done", unit=runtime.name, hook="post-process",
                          outcome=outcome, result=str(info) if info else "timeout")
        self._background(run())

    def build_request(self, runtime: UnitRuntime, unit: Unit, generation: int) -> SpawnRequest:
        return environment.build_request(runtime, unit, generation, self.base_env,
                                         self.notify.path)
