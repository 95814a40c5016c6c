"""The manager: one asyncio loop that owns the units and turns everything into events.

Signals (through asyncio's wakeup fd: the handlers only wake the loop), child
exits (one reaper), notify datagrams, control requests and timers all arrive
here and become events of the units' state machines. A unit's change of state
is queued on the run queue, which the loop drains in one pass: a unit never
re-enters another's transition, so the stack stays shallow at any number of
units. There are no threads on the hot paths and nothing is polled: an idle
manager sleeps in epoll_wait with no timeout.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ..linux import conditions, forking, inherited, pid1, proc, unitdirs
from ..linux.sockets import SocketError, remove_listener
from ..loader import LoadResult
from ..log import Log
from ..model import Condition, UnitSpec
from ..results import EXIT_FAILED, EXIT_OK, Result, errno_name
from ..unit.pids import PidIndex
from ..unit.runtime import UnitRuntime
from ..unit.states import DOWN_STATES, STOPPING_STATES, Deps, Event, State, Want
from ..unit.watchdog import Timer
from . import daemon_reload, environment, recovery, reexec, reloading
from .activation import Activation
from .faults import Faults
from .journal import Journals, Ring
from .notify_endpoint import NotifyEndpoint
from .ordering import Ordering
from .reaper import Reaper
from .relay_port import RelayPort
from .spawner import ExitCallback, Spawner
from .upward import Upward, summary

if TYPE_CHECKING:
    from ..relay.coordinator import Coordinator
    from ..relay.relay import Outcome
    from ..relay.srp import SrpUnit
    from ..wire.state import ManagerState
    from .watching import Watcher

# Variables that describe *our* activation and must never leak to a child.
_PRIVATE_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID",
                "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE",
                "AETERNA_CONTROL", "AETERNA_SRP_FD", "AETERNA_UNIT", "AETERNA_GENERATION")


class Surfaces(Protocol):
    """The user-facing servers (control socket, metrics), given by the caller (the CLI)."""

    async def start(self) -> None: ...
    async def sync(self, specs: list[UnitSpec]) -> None: ...  # serve the metrics they name
    async def close(self) -> None: ...
    def control_fd(self) -> int: ...  # the control socket's listening fd (daemon-reexec)


class Manager:
    """Owns the units of one ``aeterna start`` and runs them until all have stopped."""

    def __init__(self, paths: list[str], loaded: LoadResult, log: Log, runtime_dir: str = ""):
        self.paths = paths
        self.instances: list[str] = []  # template instances started by name (web@8080)
        self.log = log
        self.runtime_dir = runtime_dir  # where the notify socket goes (beside the control one)
        self.faults = Faults(log)
        self.surfaces: Surfaces | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        journal = recovery.RecordedPids()  # a PidIndex that journals (issue 15)
        self.pids: PidIndex = journal
        self.journals = Journals()  # each unit's output lines, bounded (aeterna logs)
        self.units: dict[str, UnitRuntime] = {u.name: UnitRuntime(u, self) for u in loaded.units}
        self.ordering = Ordering(self.units, self.post)
        log.set_unit_levels({u.name: u.observability.log_level for u in loaded.units})
        self.relays: Coordinator | None = None  # loaded by the first relay
        self.srp: dict[str, SrpUnit] = {}  # loaded by units that enable SRP
        self.watcher: Watcher | None = None  # loaded by the first unit with watch paths
        self.port = RelayPort(self)  # what the relay layer holds instead of the manager
        self.base_env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        # Started by systemd: our own notify socket and listeners (manager/upward.py).
        self.upward = Upward.from_env(os.environ, log)
        self.inherited = inherited.take(os.environ)
        self._queue: deque[tuple[UnitRuntime, Event | None]] = deque()
        self._draining = False
        self._busy: set[UnitRuntime] = set()  # neither down nor a finished oneshot
        self._exited: set[UnitRuntime] = set()  # finished oneshots ("active (exited)")
        self._stopping: set[UnitRuntime] = set()  # waiting for their group to empty
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._done: asyncio.Future[int] | None = None
        self._booted = False  # every unit was asked to start: "all down" means done
        self._bg: set[asyncio.Task[Any]] = set()
        self.activation = Activation(log, self._activate)  # down units their sockets wake
        # daemon-reexec (issue 15, manager/reexec.py): who we are across re-execs, and
        # the state handed over by the manager we replace (None: a fresh start).
        self.reexec = reexec.Reexec(self)
        self.resume: ManagerState | None = None
        self.recorder = recovery.Recorder(self, journal)  # what a crash would leave running

    @property
    def order(self) -> list[str]:
        return self.ordering.order

    @property
    def shutting_down(self) -> bool:
        return self.ordering.shutting_down

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        """Start every unit, serve until all have stopped, return the exit status."""
        loop = self.loop = asyncio.get_running_loop()
        self.faults.install(loop)
        self._done = loop.create_future()
        pid1.no_inherited_fds()
        child_nofile = pid1.raise_fd_limit()
        if not pid1.is_pid1():
            pid1.set_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)
        for sig in pid1.STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        for sig in pid1.FORWARD_SIGNALS:
            loop.add_signal_handler(sig, self._forward, sig)
        loop.add_signal_handler(pid1.RELOAD_SIGNAL, self._on_sighup)
        loop.add_signal_handler(pid1.REEXEC_SIGNAL, self._on_sigusr2)  # issue 15
        pid1.quiet_wakeup_fd(loop)
        if self.upward is not None:  # the first ping now: binding many units takes a while
            self.upward.start_watchdog(self.call_later, self.summary)
        resume = self.resume
        if resume is not None:  # daemon-reexec: adopt, never re-bind (manager/reexec.py)
            reexec.open_notify(self, resume)
        else:
            recovery.stop_stale(self)  # a dead manager's processes: never two copies
            self._open_notify()
        self.recorder.open(fresh=resume is None)
        self.reaper = Reaper(loop, self.log, self.pids)
        self.spawner = Spawner(loop, self.log, self, self.base_env, self.notify.path,
                               child_nofile, self.journals)
        added = reexec.adopt_units(self, resume) if resume is not None else list(self.units)
        for name in added:
            self.bind_unit(self.units[name])
            self.srp_for(self.units[name], self.units[name].spec)
        self.watch_paths([r.spec for r in self.units.values()])
        if self.surfaces is not None:
            await self.surfaces.start()
            await self.surfaces.sync([r.spec for r in self.units.values()])
        if resume is not None:
            reexec.answer(self, resume)
        self.log.info("manager.started", pid=os.getpid(), units=len(self.units),
                      control=self.runtime_dir or None)
        pid1.trim_memory()  # loading and parsing left freed pages behind
        for name in self.order:
            runtime = self.units[name]
            if name in added and runtime.state is State.INACTIVE:
                self._boot(runtime)
        self._booted = True
        self._schedule()
        if self.upward is not None:
            self._upward_boot(self.upward)
        pid1.trim_memory()  # and starting them left more
        # What booting allocated lives as long as the manager: keep the cyclic
        # collector from walking it at every full collection (tens of ms of
        # stalled loop at thousands of units).
        gc.freeze()
        # A child may have exited before our SIGCHLD handler existed.
        self._on_sigchld()
        try:
            return await self._done
        finally:
            if self.surfaces is not None:
                await self.surfaces.close()
            self._close_resources()
            self.recorder.remove()
            for sig in (signal.SIGCHLD, *pid1.STOP_SIGNALS, *pid1.FORWARD_SIGNALS,
                        pid1.RELOAD_SIGNAL, pid1.REEXEC_SIGNAL):
                loop.remove_signal_handler(sig)

    def _open_notify(self) -> None:
        """The notify socket lives beside the control socket (a path, never abstract:
        abstract sockets do not cross network namespaces)."""
        assert self.loop is not None
        base = self.runtime_dir
        if not base:
            import tempfile

            base = tempfile.mkdtemp(prefix="aeterna-")
        os.makedirs(base, exist_ok=True)
        self.notify = NotifyEndpoint(os.path.join(base, f"notify-{os.getpid()}.sock"),
                                     self.log, self.pids)
        self.loop.add_reader(self.notify.fileno(), self._on_notify)

    def _on_notify(self) -> None:
        if self.notify.drain():
            assert self.loop is not None
            self.loop.call_soon(self._on_notify)  # more queued: yield, then continue

    def bind_unit(self, runtime: UnitRuntime) -> None:
        """Bind one unit's sockets (at boot, or when a reload adds it); a failure
        fails that unit only."""
        assert self.loop is not None
        if runtime.fdstore is not None:
            self.loop.add_reader(runtime.fdstore.epoll_fd(), self._on_fdstore, runtime)
        try:
            bound = inherited.bind_listeners(runtime.spec.service.sockets, self.inherited,
                                             runtime.name)
        except SocketError as exc:
            runtime.fail_now(Result.RESOURCES, "unit.bind-failed", error=str(exc),
                             address=exc.address, errno=errno_name(exc.errno or 0))
            return
        runtime.listeners = [lst for lst, _ in bound]
        for lst, entry in bound:
            self.log.info("socket.bound", unit=runtime.name, name=lst.spec.name,
                          address=lst.local_address(), fd=lst.fd,
                          inherited=None if entry is None else entry.name)

    def _on_fdstore(self, runtime: UnitRuntime) -> None:
        assert runtime.fdstore is not None
        for name in runtime.fdstore.on_events():
            self.log.info("fdstore.dropped", unit=runtime.name, name=name, reason="hangup")

    def _upward_boot(self, upward: Upward) -> None:
        """READY=1 to whoever started us once the boot is done; the watchdog pings."""
        for entry in self.inherited:
            if not entry.used_by:
                self.log.warning("socket.inherited-unused", name=entry.name, fd=entry.fd)
        self.background(self._upward_ready(upward))

    async def _upward_ready(self, upward: Upward) -> None:
        await self.wait_for(lambda: upward.booted(lambda: (r.state for r in
                                                           self.units.values())))

    def summary(self) -> str:
        """One line on the units, for STATUS=: ``3 units: 2 active, 1 failed``."""
        return summary(r.state for r in self.units.values())

    def _close_resources(self) -> None:
        assert self.loop is not None
        if self.upward is not None:
            self.upward.close()
        self.activation.disarm_all()
        self.loop.remove_reader(self.notify.fileno())
        self.notify.close()
        for runtime in self.units.values():
            for lst in runtime.listeners:
                remove_listener(lst)
            runtime.listeners = []
            if runtime.fdstore is not None:
                self.loop.remove_reader(runtime.fdstore.epoll_fd())
                runtime.fdstore.close()
        for srp in self.srp.values():
            srp.close()
        if self.watcher is not None:
            self.watcher.close()

    # ------------------------------------------------------------- the reaper
    def _on_sigchld(self) -> None:
        """Reap everything; then see which stopping units and drains are done."""
        # Read pending notify messages first: once a sender is reaped its pid no
        # longer maps to its unit (and may even be reused).
        self.notify.drain()
        self.reaper.reap()
        for runtime in list(self._stopping):
            runtime.check_group()
        if self.relays is not None:
            self.relays.check_groups()
        self._schedule()  # someone may wait for a process group to empty

    @property
    def internal_errors(self) -> int:
        return self.faults.count

    @property
    def orphans_reaped(self) -> int:
        return self.reaper.orphans

    def watch(self, pid: int, callback: ExitCallback) -> None:
        """``SpawnerHost``: tell ``callback`` when ``pid`` exits."""
        self.reaper.watch(pid, callback)

    def watch_foreign(self, unit: UnitRuntime, pid: int) -> None:
        """MAINPID= (``Host``): its datagrams may come from outside the unit's group,
        and its exit may not reach our reaper."""
        if unit.pgid is None or pid != unit.pgid:
            self.notify.foreign[pid] = unit
        self.reaper.watch_foreign(unit, pid)

    # -------------------------------------------------------------- signals
    def _on_stop_signal(self, sig: int) -> None:
        self.log.info("manager.signal", signal=signal.Signals(sig).name, action="stop-all")
        self.shutdown()

    def _forward(self, sig: int) -> None:
        for pid in list(self.pids.mains):
            proc.kill_pid(pid, sig)
        self.log.info("manager.signal", signal=signal.Signals(sig).name, action="forwarded")

    def _on_sighup(self) -> None:
        self.log.info("manager.signal", signal="SIGHUP", action="reload")
        self.background(self._reload_read_off_loop())

    async def _reload_read_off_loop(self) -> None:
        self.reload(new=await self.read_units())

    def _on_sigusr2(self) -> None:
        self.log.info("manager.signal", signal="SIGUSR2", action="daemon-reexec")
        self.background(self._reexec_by_signal())

    async def _reexec_by_signal(self) -> None:
        try:
            await self.daemon_reexec(None, None)
        except reexec.Refused as exc:
            self.log.warning("manager.reexec-refused", reason=str(exc))

    async def daemon_reexec(self, exec_path: str | None, reply_fd: int | None) -> None:
        """``aeterna daemon-reexec``: replace our code, keep everything (manager/reexec.py).
        Returns never if it worked; raises ``reexec.Refused`` saying why it did not."""
        await self.reexec.run(exec_path, reply_fd)

    @property
    def identity(self) -> dict[str, Any]:
        """The manager's version, start and last re-exec (``aeterna status``)."""
        return self.reexec.identity.as_dict()

    # ------------------------------------------------------------- run queue
    def post(self, unit: UnitRuntime, event: Event) -> None:
        """Queue ``event`` for ``unit``: it is dispatched when the run queue drains."""
        self._queue.append((unit, event))
        self._schedule()

    def changed(self, unit: UnitRuntime) -> None:
        """Every state change (``Host``): keep the state sets, queue what follows."""
        state = unit.state
        # RemainAfterExit=: "active (exited)" is up until stopped, and keeps us up.
        remain = state is State.EXITED and unit.spec.service.remain_after_exit
        for members, belongs in ((self._busy, state not in DOWN_STATES
                                  and (state is not State.EXITED or remain)),
                                 (self._exited, state is State.EXITED),
                                 (self._stopping, state in STOPPING_STATES)):
            if belongs:
                members.add(unit)
            else:
                members.discard(unit)
        self._queue.append((unit, None))
        self._schedule()

    def _schedule(self) -> None:
        if not self._draining and self.loop is not None:
            self._draining = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        """One pass over the run queue, then wake waiters and see whether we are done."""
        queue = self._queue
        try:
            while queue:
                unit, event = queue.popleft()
                if event is not None:
                    unit.dispatch(event)
                else:
                    self._after_change(unit)
        finally:
            self._draining = False
            if queue:
                self._schedule()
        self._wake_waiters()
        if self.recorder.pids.changes:  # processes came or went: journal them (issue 15)
            self.recorder.flush()
        self._check_finished()

    def _after_change(self, unit: UnitRuntime) -> None:
        """What one unit's change of state means for the rest: dependents, stops, fds."""
        if (unit.state in DOWN_STATES and unit.fdstore is not None
                and unit.want is not Want.START and unit.fdstore.entries):
            # FileDescriptorStorePreserve=restart: kept across restarts only.
            self.log.info("fdstore.released", unit=unit.name, count=len(unit.fdstore.entries))
            unit.fdstore.clear()
        if (unit.state in DOWN_STATES and unit.want is not Want.START
                and unit.spec.service.directories
                and unit.spec.service.runtime_directory_preserve == "no"):
            for path in unitdirs.remove_runtime(unit.spec.service):
                self.log.info("unit.directory-removed", unit=unit.name, path=path)
        if unit.state is State.INACTIVE and unit.listeners and not self.shutting_down and (
                unit.want is Want.STAY_DOWN or unit.spec.service.on_demand):
            self.activation.arm(unit)  # stopped by the user, or on demand: sockets wake it
        elif unit.state is not State.INACTIVE:
            self.activation.disarm(unit)
        self.ordering.changed(unit)

    def _boot(self, runtime: UnitRuntime) -> None:
        """At boot (or when a reload adds it): start an enabled unit; a disabled or
        on-demand one waits for a start, or for a connection on its sockets."""
        service = runtime.spec.service
        if service.enabled and not service.on_demand:
            runtime.dispatch(Event.START)
            return
        if not service.enabled:
            runtime.hold_down()  # being administered: the manager waits for a start
        self.activation.arm(runtime)

    def _activate(self, runtime: UnitRuntime) -> None:
        """Its socket's first connection: start it (``activation.Activation``)."""
        if runtime.state is State.INACTIVE and not self.shutting_down:
            runtime.dispatch(Event.START)

    # ------------------------------------------------------------- actions
    def shutdown(self) -> None:
        """Stop every unit in reverse dependency order, then exit."""
        if self.upward is not None and not self.shutting_down:
            self.upward.stopping()
        self.activation.disarm_all()
        if self.relays is not None:
            self.relays.abort_all()
        self.ordering.stop_all()
        self._schedule()  # with nothing running, nothing else would look

    def stop_unit(self, name: str) -> None:
        """Stop a unit, and first the units ordered after it that require it."""
        self.ordering.stop(name)
        self._schedule()

    def start_unit(self, name: str) -> None:
        """``systemctl start``: a down unit starts (its required dependencies first); one
        on its way down starts again after; one up or coming up is left alone."""
        runtime = self.units[name]
        if runtime.state in DOWN_STATES:
            runtime.dispatch(Event.START)
        elif runtime.state in (State.AUTO_RESTART, State.STOP_PRE, State.STOP_POST,
                               *STOPPING_STATES):
            runtime.restart()

    def restart_unit(self, name: str, spec: UnitSpec | None = None) -> None:
        """Stop (if running) and start again, with ``spec`` if given."""
        runtime = self.units[name]
        if spec is not None:
            runtime.spec = spec
        runtime.restart()

    def reload_in_place(self, name: str, spec: UnitSpec | None = None) -> None:
        """ExecReload= / notify-reload of an active unit, with ``spec`` if given (the
        definition a daemon-reload read, as systemd applies it before the reload)."""
        runtime = self.units[name]
        if spec is not None:
            runtime.spec = spec
        runtime.dispatch(Event.RELOAD)

    def kill_unit(self, name: str, sig: int, whom: str) -> list[int]:
        """``systemctl kill``: signal the main process (``main``), or every process of the
        unit's group and of its other live generations (``all``); the pids signalled."""
        runtime = self.units[name]
        done: list[int] = []
        if whom == "control":
            pids = [runtime.command_pid] if runtime.command_pid else []
            return [p for p in pids if proc.kill_group(p, sig)]
        if runtime.main_pid is not None:
            if whom == "main":
                return [runtime.main_pid] if proc.kill_pid(runtime.main_pid, sig) else []
            group = runtime.pgid or runtime.main_pid
            if proc.kill_group(group, sig):
                done.append(group)
        if whom == "all" and self.relays is not None:
            for gen in self.relays.generations(name):
                pid = gen.get("pid")
                if pid and pid not in done and proc.kill_group(pid, sig):
                    done.append(pid)
        return done

    def reset_failed(self, name: str | None = None) -> list[str]:
        """``systemctl reset-failed [UNIT]``: failed units become inactive."""
        names = [name] if name is not None else list(self.order)
        reset = [n for n in names if self.units[n].state is State.FAILED]
        for n in reset:
            self.units[n].dispatch(Event.RESET_FAILED)
        return reset

    def journal(self, name: str) -> Ring:
        return self.journals.ring(name)

    def relay(self, name: str, spec: UnitSpec | None = None) -> asyncio.Future[Outcome]:
        """Hot-relay ``name`` to ``spec`` (default: its current definition)."""
        if self.relays is None:
            from ..relay.coordinator import Coordinator  # loaded by the first relay

            self.relays = Coordinator(self.port)
        return self.relays.request(name, spec)

    # -------------------------------------------------------------- reloads
    async def read_units(self) -> dict[str, UnitSpec] | list[str]:
        """The unit files now (or their errors), parsed in a worker thread: a 10 MiB
        file parsed on the loop stalled it for seconds."""
        assert self.loop is not None
        return await self.loop.run_in_executor(None, daemon_reload.read, self.paths, self.log,
                                               list(self.instances))

    def reload(self, relay: bool = True, new: dict[str, UnitSpec] | list[str] | None = None
               ) -> tuple[dict[str, Any], list[asyncio.Future[Outcome]]]:
        """SIGHUP, ``aeterna reload``: apply the unit files (``new``: as ``read_units``
        gave them; read here if not given). See reloading.apply."""
        return reloading.apply(self, relay, new)

    async def _upward_reloaded(self, upward: Upward, futures: list[asyncio.Future[Outcome]]
                               ) -> None:
        """READY=1 again once the reload's relays have their outcomes."""
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)
        upward.reloaded(self.summary())

    def watch_paths(self, specs: list[UnitSpec]) -> None:
        """Watch the paths these definitions name (``orchestration.watch``)."""
        if self.watcher is None:
            if not any(s.orchestration.watch for s in specs):
                return
            from .watching import Watcher  # loaded by the first unit that watches

            self.watcher = Watcher(self)
        self.watcher.sync(specs)

    def add_instance(self, name: str) -> str:
        """``aeterna start web@8080``: load an instance from its template and start it
        as a new unit file would be; "" or why not (instances.py)."""
        from . import instances

        return instances.add(self, name)

    def enable_instance(self, name: str) -> tuple[str, str]:
        """``aeterna enable web@8080``: (the symlink made, or "", why not, or "")."""
        from . import instances

        return instances.enable(self, name)

    async def read_unit(self, name: str) -> UnitSpec | list[str]:
        """One unit's definition now (or its file's errors), parsed in a worker thread."""
        assert self.loop is not None
        return await self.loop.run_in_executor(None, daemon_reload.read_for, self.paths,
                                               self.log, self.units[name].spec,
                                               list(self.instances))

    def reload_unit(self, name: str, new: UnitSpec | list[str] | None = None
                    ) -> tuple[str, UnitSpec | None, str]:
        """For ``aeterna reload UNIT``: (action, new definition, error); ``new`` as
        ``read_unit`` gave it (read here if not given). See reloading.unit_action."""
        return reloading.unit_action(self, name, new)

    def reread_unit(self, name: str) -> UnitSpec | None:
        """The unit's definition from the files now, or None if they do not validate."""
        new = daemon_reload.read(self.paths, self.log, self.instances)
        return None if isinstance(new, list) else new.get(name)

    # ------------------------------------------------------------- Host (units)
    def spawn_main(self, unit: UnitRuntime) -> int:
        return self.spawner.main(unit)

    def spawn_command(self, unit: UnitRuntime, argv: tuple[str, ...], argv0: str,
                      privileged: bool = False) -> int:
        return self.spawner.command(unit, argv, argv0, privileged)

    def failed_condition(self, unit: UnitRuntime) -> Condition | None:
        return conditions.first_failed(unit.spec.service.conditions, os.environ)

    def prepare_directories(self, unit: UnitRuntime) -> None:
        svc = unit.spec.service
        if svc.directories:
            uid, gid = environment.identity(svc)
            unitdirs.prepare(svc, uid, gid)

    def forked_main_pid(self, unit: UnitRuntime) -> int:
        """Type=forking (``Host``): PIDFile=, else the one orphan of ours nobody owns."""
        svc = unit.spec.service
        if svc.pid_file:
            return forking.read_pid_file(svc.pid_file) or -1
        if not svc.guess_main_pid:
            return 0
        known = set(self.pids.mains) | set(self.pids.groups) | set(self.reaper.watched)
        unknown = [p for p in forking.children_of(os.getpid()) if p not in known]
        return unknown[0] if len(unknown) == 1 else 0

    def group_of(self, pid: int) -> int | None:
        return forking.group_of(pid)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        assert self.loop is not None
        return self.loop.call_later(delay, callback)

    def kill(self, pid: int, sig: int, group: bool) -> bool:
        return proc.kill_group(pid, sig) if group else proc.kill_pid(pid, sig)

    def deps_state(self, unit: UnitRuntime) -> Deps:
        return self.ordering.deps_state(unit)

    def info(self, event: str, **fields: Any) -> None:
        self.log.info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log.warning(event, **fields)

    # ------------------------------------------------ SpawnerHost, RelayHost
    def shares_listeners(self, runtime: UnitRuntime) -> bool:
        """Is another generation of this unit alive (and so using its listeners)?"""
        return runtime.main_pid is not None or (
            self.relays is not None and self.relays.shares_listeners(runtime.name))

    def srp_for(self, runtime: UnitRuntime, spec: UnitSpec) -> SrpUnit | None:
        """The unit's SRP state, created the first time a definition enables it."""
        if spec.orchestration.state_handoff.enabled and runtime.name not in self.srp:
            from ..relay.srp import SrpUnit  # loaded only by units that use SRP

            self.srp[runtime.name] = SrpUnit(self.port, runtime)
        return self.srp.get(runtime.name)

    def srp_channel(self, runtime: UnitRuntime, spec: UnitSpec, generation: int) -> int:
        srp = self.srp_for(runtime, spec)
        assert srp is not None
        return srp.open_channel(generation)

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on its own, holding a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        task.add_done_callback(self.faults.task_done)

    # -------------------------------------------------------------- waiting
    def wake(self) -> None:
        """Something that ``wait_for`` conditions look at changed (a relay's phase)."""
        self._schedule()

    def _wake_waiters(self) -> None:
        """Resolve every ``wait_for`` whose condition now holds."""
        if not self._waiters:
            return
        still = []
        for pred, fut in self._waiters:
            if fut.done():
                continue
            if pred():
                fut.set_result(None)
            else:
                still.append((pred, fut))
        self._waiters = still

    async def wait_for(self, pred: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``pred()`` holds after some state change (or already does)."""
        if pred():
            return True
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    def _check_finished(self) -> None:
        if (self._done is None or self._done.done() or not self._booted or self._busy
                or (self.relays is not None and self.relays.active())):
            return  # the cheap answers first: this runs after every pass of the queue
        if not self.units and not self.shutting_down:
            return  # no units (yet): a host service waits for a reload to add some
        if self.shutting_down:
            if self._exited:
                return  # a finished oneshot still counts as up until it is stopped
        elif self.activation.armed:
            return  # units waiting for their first connection
        elif any(r.want is Want.STAY_DOWN and r.state in DOWN_STATES
                 for r in self.units.values()):
            # Everything ended by itself: exit, as tini does when its child exits. But
            # a unit held down by `aeterna stop UNIT` is being administered, and
            # `aeterna start UNIT` must still find a manager (systemd's stays up too).
            return
        code = self.exit_status()
        if self.upward is not None and not self.shutting_down:
            self.upward.stopping(f"exiting: {self.summary()}")  # its units ended by themselves
        self.log.info("manager.exiting", status=code, orphans_reaped=self.orphans_reaped)
        self._done.set_result(code)

    def exit_status(self) -> int:
        """tini's convention for one unit; for several, non-zero if any failed."""
        if len(self.units) == 1:
            runtime = next(iter(self.units.values()))
            if runtime.last_exit is not None:
                return runtime.last_exit.shell_status
            return EXIT_FAILED if runtime.state is State.FAILED else EXIT_OK
        if any(r.state is State.FAILED for r in self.units.values()):
            return EXIT_FAILED
        return EXIT_OK
