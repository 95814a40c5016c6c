"""How the manager starts processes: main processes, generations, commands, hooks.

Every child gets the unit's environment (:mod:`.environment`), its fds laid
out at 3.. (:mod:`aeterna.linux.spawn`), and output pipes whose lines are
prefixed ``unit[pid]:`` and kept in the unit's log ring (:mod:`.journal`).
Its exit reaches whoever watches its pid, through the manager's one reaper;
a main process is found through the pid index instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ..linux import proc
from ..linux.output import LineRelay, make_pipe
from ..linux.spawn import SpawnError, spawn
from ..log import Log
from ..model import ServiceType, UnitSpec
from ..results import ExitInfo
from ..unit.commands import command_env
from ..unit.runtime import UnitRuntime
from ..unit.states import Event
from . import environment
from .journal import Journals

ExitCallback = Callable[[ExitInfo], None]


class SpawnerHost(Protocol):
    """What the spawner needs of the manager."""

    def watch(self, pid: int, callback: ExitCallback) -> None: ...
    def shares_listeners(self, runtime: UnitRuntime) -> bool: ...
    def srp_channel(self, runtime: UnitRuntime, spec: UnitSpec, generation: int) -> int: ...
    def background(self, coro: Coroutine[Any, Any, None]) -> None: ...


class Spawner:
    """Starts every process the manager owns."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: Log, host: SpawnerHost,
                 base_env: dict[str, str], notify_path: str, nofile: int | None = None,
                 journals: Journals | None = None):
        self.loop = loop
        self.journals = journals if journals is not None else Journals()
        self.log = log
        self.host = host
        self.base_env = base_env
        self.notify_path = notify_path
        self.nofile = nofile  # children's soft RLIMIT_NOFILE: the one we were started with

    def main(self, runtime: UnitRuntime) -> int:
        """The unit's main process (its current definition and generation)."""
        return self.process(runtime, runtime.spec, runtime.generation)

    def command(self, runtime: UnitRuntime, argv: tuple[str, ...], argv0: str,
                privileged: bool = False) -> int:
        """An ExecStartPre/Post/Stop/Reload command: the unit's env and MAINPID, no fds;
        ``privileged`` (the ``+`` and ``!`` prefixes): as the manager's user."""
        pid = self.process(runtime, runtime.spec, runtime.generation, argv, "command",
                           extra_env=command_env(runtime.main_pid), argv0=argv0,
                           privileged=privileged)

        def exited(info: ExitInfo) -> None:
            if runtime.commands.pid == pid:  # not one killed and forgotten since
                runtime.dispatch(Event.COMMAND_EXITED, info=info)

        self.host.watch(pid, exited)
        return pid

    def generation(self, runtime: UnitRuntime, spec: UnitSpec, generation: int,
                   exited: ExitCallback) -> int:
        """N+1 for a relay, on the unit's sockets; ``exited`` hears of its end."""
        pid = self.process(runtime, spec, generation)
        self.host.watch(pid, exited)
        self.log.info("relay.started", unit=spec.name, pid=pid, generation=generation)
        return pid

    def process(self, runtime: UnitRuntime, spec: UnitSpec, generation: int,
                argv: tuple[str, ...] | None = None, label: str = "",
                extra_env: dict[str, str] | None = None, argv0: str = "",
                privileged: bool = False) -> int:
        """Fork/exec with env, identity and output pipes prefixed ``unit[pid]``."""
        req = environment.build_request(runtime, spec, generation, self.base_env,
                                        self.notify_path, self.nofile)
        changes: dict[str, Any] = {}  # applied with one dataclasses.replace below
        if privileged or (argv is None and spec.service.privileged):
            changes.update(uid=None, gid=None, groups=None)
        srp_child = -1
        if argv is not None:  # a command, hook or probe: the unit's environment, no fds
            # systemd: such processes get NOTIFY_SOCKET only with NotifyAccess=exec|all.
            access = spec.service.effective_notify_access().value
            env = {k: v for k, v in req.env.items()
                   if not k.startswith(("LISTEN_", "WATCHDOG_")) and k != "FDSTORE"
                   and (k != "NOTIFY_SOCKET" or access in ("exec", "all"))}
            env.update(extra_env or {})
            if spec.service.expand_env:
                # systemd expands $VAR, ${VAR} and $MAINPID in every Exec line, with
                # the environment this command gets (MAINPID included).
                argv = environment.expand_command(argv, env, spec.name)
            changes.update(argv=argv, pass_fds=(), blocking_fds=frozenset(), pid_env=(),
                           argv0=argv0, env=env, stdin=None)
        else:
            if self.host.shares_listeners(runtime):
                # O_NONBLOCK lives on the open file description, which a running
                # generation shares: clearing it under an app that accepts until
                # EAGAIN (asyncio, Go, nginx) would block that app in accept().
                changes["blocking_fds"] = frozenset()
            handoff = spec.orchestration.state_handoff
            if handoff.enabled:
                # The SRP end goes right after the LISTEN_FDS range (docs/srp.md §2).
                srp_child = self.host.srp_channel(runtime, spec, generation)
                target = 3 + len(req.pass_fds)
                env = dict(req.env, AETERNA_SRP_FD=str(target))
                if handoff.socket_path:
                    env["AETERNA_SRP_SOCKET"] = handoff.socket_path
                if handoff.required:
                    env["AETERNA_SRP_REQUIRED"] = "1"
                changes.update(extra_fd=(srp_child, target), env=env)
        out_r, out_w = make_pipe()
        err_r, err_w = make_pipe()
        try:
            req = environment.with_(req, stdout=out_w, stderr=err_w, **changes)
            pid = spawn(req, exact_exec=argv is None and spec.service.type is ServiceType.EXEC)
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
        taps = self.journals
        LineRelay(self.loop, out_r, prefix, sys.stdout.buffer,
                  taps.tap(runtime.name, "stdout", pid, generation))
        LineRelay(self.loop, err_r, prefix, sys.stderr.buffer,
                  taps.tap(runtime.name, "stderr", pid, generation))
        return pid

    async def run_helper(self, runtime: UnitRuntime, argv: tuple[str, ...], timeout: float,
                         label: str) -> ExitInfo | None:
        """Run a hook or exec probe to its end; None (and SIGKILL) if it times out."""
        try:
            pid = self.process(runtime, runtime.spec, runtime.generation, argv, label)
        except (SpawnError, OSError) as exc:
            self.log.warning("hook.failed", unit=runtime.name, hook=label, error=str(exc))
            return ExitInfo(code=exc.exit_status if isinstance(exc, SpawnError) else 1)
        fut: asyncio.Future[ExitInfo] = self.loop.create_future()
        self.host.watch(pid, lambda info: None if fut.done() else fut.set_result(info))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            proc.kill_group(pid, signal.SIGKILL)
            self.log.warning("hook.timeout", unit=runtime.name, hook=label, pid=pid,
                             timeout=timeout)
            return None

    def background_hook(self, runtime: UnitRuntime, argv: tuple[str, ...],
                        outcome: str) -> None:
        """post_process hooks: run, log their result, never block the relay."""
        async def run() -> None:
            info = await self.run_helper(runtime, argv, 60.0, "post-process")
            self.log.info("hook.done", unit=runtime.name, hook="post-process",
                          outcome=outcome, result=str(info) if info else "timeout")
        self.host.background(run())
