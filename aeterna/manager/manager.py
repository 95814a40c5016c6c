"""The manager: one asyncio loop that owns the units and turns everything into events.

Signals (through asyncio's wakeup fd: the handlers only wake the loop), child
exits (one reaper), control requests and timers all arrive here and are
dispatched to the units' state machines. There are no threads and nothing is
polled: an idle manager sleeps in epoll_wait with no timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..linux import pid1, proc
from ..linux.sockets import SocketError, bind_listeners, remove_listener
from ..loader import LoadResult, load_paths, start_order
from ..loader.errors import UnitErrors
from ..log import Log
from ..model import Unit
from ..relay.coordinator import Coordinator
from ..results import EXIT_FAILED, EXIT_OK, ExitInfo, Result, errno_name
from . import daemon_reload as reloading
from .notify_endpoint import NotifyEndpoint

if TYPE_CHECKING:
    from ..relay.srp import SrpUnit

from ..unit.runtime import DOWN_STATES, UP_STATES, Event, State, UnitRuntime
from .spawner import Spawning

# Variables that describe *our* activation and must never leak to a child.
_PRIVATE_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID",
                "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE",
                "AETERNA_CONTROL", "AETERNA_SRP_FD", "AETERNA_UNIT", "AETERNA_GENERATION")


class Manager(Spawning):
    """Owns the units of one ``aeterna start`` and runs them until all have stopped."""

    def __init__(self, paths: list[str], loaded: LoadResult, log: Log,
                 control_path: str | None = None):
        self.paths = paths
        self.log = log
        self.control_path = control_path
        self.loop: asyncio.AbstractEventLoop | None = None
        self.units: dict[str, UnitRuntime] = {}
        for unit in loaded.units:
            self.units[unit.name] = UnitRuntime(unit, self)
        self.order = start_order({n: r.unit for n, r in self.units.items()})
        log.set_unit_levels({u.name: u.observability.log_level for u in loaded.units})
        self.shutting_down = False
        self.orphans_reaped = 0
        self._done: asyncio.Future[int] | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._control: Any = None
        self._pending_stops: set[str] = set()  # a `stop UNIT` still working down its closure
        self._booted = False  # every unit was asked to start: "all down" means done
        # Processes that are not a unit's main one but whose exit someone awaits:
        # canaries, draining generations, hooks and exec probes.
        self.watched: dict[int, Callable[[ExitInfo], None]] = {}
        self.relays = Coordinator(self)
        self.srp: dict[str, SrpUnit] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        self.metrics: dict[str, Any] = {}  # address -> metrics.MetricsServer
        self.base_env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        """Start every unit, serve until all have stopped, return the exit status."""
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        pid1.no_inherited_fds()
        if not pid1.is_pid1():
            pid1.set_subreaper()
        loop = self.loop
        loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)
        for sig in pid1.STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        for sig in pid1.FORWARD_SIGNALS:
            loop.add_signal_handler(sig, self._forward, sig)
        loop.add_signal_handler(pid1.RELOAD_SIGNAL, self._on_sighup)
        self._open_notify()
        self._bind_sockets()
        for runtime in self.units.values():
            self.srp_for(runtime, runtime.unit)
        if self.control_path:
            from ..api.server import ControlServer

            self._control = ControlServer(self, self.control_path)
            await self._control.start()
        await self.sync_metrics([r.unit for r in self.units.values()])
        self.log.info("manager.started", pid=os.getpid(), units=len(self.units),
                      control=self.control_path)
        pid1.trim_memory()  # loading and parsing left freed pages behind
        for name in self.order:
            if self.units[name].state is State.INACTIVE:
                self.units[name].dispatch(Event.START)
        self._booted = True
        self._check_finished()
        # A child may have exited before our SIGCHLD handler existed.
        self._on_sigchld()
        try:
            return await self._done
        finally:
            if self._control is not None:
                await self._control.close()
            await self.sync_metrics([])
            self._close_resources()
            for sig in (signal.SIGCHLD, *pid1.STOP_SIGNALS, *pid1.FORWARD_SIGNALS,
                        pid1.RELOAD_SIGNAL):
                loop.remove_signal_handler(sig)

    # -------------------------------------------------------------- signals
    def _open_notify(self) -> None:
        """The notify socket lives beside the control socket (a path, never abstract:
        abstract sockets do not cross network namespaces)."""
        assert self.loop is not None
        base = os.path.dirname(self.control_path) if self.control_path else ""
        if not base:
            import tempfile

            base = tempfile.mkdtemp(prefix="aeterna-")
        os.makedirs(base, exist_ok=True)
        path = os.path.join(base, f"notify-{os.getpid()}.sock")
        self.notify = NotifyEndpoint(path, self.log)
        self.loop.add_reader(self.notify.fileno(), self._on_notify)

    def _on_notify(self) -> None:
        if self.notify.drain(self.notify_targets()):
            assert self.loop is not None
            self.loop.call_soon(self._on_notify)  # more queued: yield, then continue

    def _bind_sockets(self) -> None:
        """Bind every unit's sockets once; a failure fails that unit only."""
        for runtime in self.units.values():
            self.bind_unit(runtime)

    def bind_unit(self, runtime: UnitRuntime) -> None:
        """Bind one unit's sockets (at boot, or when a reload adds it)."""
        assert self.loop is not None
        if runtime.fdstore is not None:
            self.loop.add_reader(runtime.fdstore.epoll_fd(), self._on_fdstore, runtime)
        try:
            runtime.listeners = bind_listeners(runtime.unit.service.sockets)
        except SocketError as exc:
            runtime.fail_now(Result.RESOURCES, "unit.bind-failed", error=str(exc),
                             address=exc.address, errno=errno_name(exc.errno or 0))
            return
        for lst in runtime.listeners:
            self.log.info("socket.bound", unit=runtime.name, name=lst.spec.name,
                          address=lst.local_address(), fd=lst.fd)

    def _on_fdstore(self, runtime: UnitRuntime) -> None:
        assert runtime.fdstore is not None
        for name in runtime.fdstore.on_events():
            self.log.info("fdstore.dropped", unit=runtime.name, name=name, reason="hangup")

    def _close_resources(self) -> None:
        assert self.loop is not None
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

    def _on_sigchld(self) -> None:
        """Reap everything; dispatch main-process exits; count orphans."""
        # Read pending notify messages first: once a sender is reaped its pid no
        # longer maps to its unit (and may even be reused).
        self.notify.drain(self.notify_targets())
        by_pid = {r.main_pid: r for r in self.units.values() if r.main_pid is not None}
        for pid, info in proc.reap():
            runtime = by_pid.pop(pid, None)
            callback = self.watched.pop(pid, None)
            if runtime is not None:
                runtime.dispatch(Event.EXITED, info=info)
            elif callback is not None:
                callback(info)
            else:
                self.orphans_reaped += 1
        for runtime in self.units.values():
            if runtime.state in (State.STOPPING, State.KILLING):
                runtime.check_group()
        self.relays.check_groups()
        self.wake_waiters()  # someone may wait for a process group to empty

    def srp_for(self, runtime: UnitRuntime, unit: Unit) -> SrpUnit | None:
        """The unit's SRP state, created the first time a definition enables it."""
        if not unit.orchestration.state_handoff.enabled:
            return self.srp.get(runtime.name)
        if runtime.name not in self.srp:
            from ..relay import srp as srp_module  # loaded only by units that use SRP

            self.srp[runtime.name] = srp_module.SrpUnit(self, runtime)
        return self.srp[runtime.name]

    def notify_targets(self) -> list[Any]:
        return [*self.relays.current.values(), *self.units.values()]

    def watch_foreign(self, runtime: UnitRuntime, pid: int) -> None:
        """MAINPID= named a process whose parent is not us: notice its exit by pidfd.

        systemd cannot always tell either; it finishes such a service when its
        cgroup empties. A pidfd gets readable when the process exits, whoever
        its parent is; we then treat the exit as clean (its status is not ours).
        """
        if proc.parent_of(pid) == os.getpid():
            return  # our child (an adopted orphan): the reaper reports it
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        assert self.loop is not None
        loop = self.loop

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            if runtime.main_pid == pid:
                self.log.info("unit.mainpid-exited", unit=runtime.name, pid=pid,
                              how="not our child; status unknown")
                runtime.dispatch(Event.EXITED, info=ExitInfo(code=0))
                if runtime.state in (State.STOPPING, State.KILLING):
                    runtime.check_group()

        loop.add_reader(fd, exited)

    def watch(self, pid: int, callback: Callable[[ExitInfo], None]) -> None:
        self.watched[pid] = callback

    def unwatch(self, pid: int) -> None:
        self.watched.pop(pid, None)

    def _on_stop_signal(self, sig: int) -> None:
        self.log.info("manager.signal", signal=signal.Signals(sig).name, action="stop-all")
        self.shutdown()

    def _forward(self, sig: int) -> None:
        for runtime in self.units.values():
            if runtime.main_pid is not None:
                proc.kill_pid(runtime.main_pid, sig)
        self.log.info("manager.signal", signal=signal.Signals(sig).name, action="forwarded")

    def _on_sighup(self) -> None:
        self.log.info("manager.signal", signal="SIGHUP", action="reload")
        self.reload().pop("_futures", None)

    # ------------------------------------------------------------- actions
    def shutdown(self) -> None:
        """Stop every unit in reverse dependency order, then exit."""
        self.shutting_down = True
        self.relays.abort_all()
        self._pending_stops |= set(self.units)
        self._advance_stops()

    def _dependents(self, name: str) -> list[UnitRuntime]:
        return [r for r in self.units.values()
                if any(d.name == name and d.order for d in r.unit.service.depends_on)]

    def _advance_stops(self) -> None:
        """Stop each pending unit once the pending units ordered after it are down
        (reverse dependency order, for shutdown and for ``stop UNIT`` alike)."""
        pending = self._pending_stops
        for name in reversed(self.order):
            runtime = self.units[name]
            if name in pending and runtime.state not in DOWN_STATES and all(
                    d.state in DOWN_STATES for d in self._dependents(name)
                    if d.name in pending):
                runtime.dispatch(Event.STOP)

    def stop_unit(self, name: str) -> None:
        """Stop a unit, and first the units ordered after it that require it."""
        todo = self._closure(name)
        for n in todo:
            self.units[n].stop_requested = True
        self._pending_stops |= todo
        self._advance_stops()

    def _closure(self, name: str) -> set[str]:
        todo = {name}
        changed = True
        while changed:
            changed = False
            for r in self.units.values():
                if r.name not in todo and any(d.name in todo and d.require
                                              for d in r.unit.service.depends_on):
                    todo.add(r.name)
                    changed = True
        return todo

    def restart_unit(self, name: str) -> None:
        runtime = self.units[name]
        if runtime.state in DOWN_STATES or runtime.state is State.AUTO_RESTART:
            runtime.dispatch(Event.START)
        else:
            runtime.pending_start = True
            runtime.dispatch(Event.STOP)

    def reload(self, relay: bool = True) -> dict[str, Any]:
        """Re-read and validate the unit files (SIGHUP, ``aeterna reload``)."""
        return reloading.reload_all(self, relay)

    async def sync_metrics(self, units: list[Unit]) -> None:
        """Serve the metrics addresses that ``units`` name, and only those."""
        if not self.metrics and not any(u.observability.metrics_port for u in units):
            return  # the HTTP code is loaded only by units that ask for it
        from ..api import metrics

        await metrics.sync(self, self.metrics, metrics.addresses(units))

    def observability_changed(self, units: list[Unit]) -> None:
        """A reload read new unit files: follow their metrics addresses and log levels."""
        self.log.set_unit_levels({u.name: u.observability.log_level for u in units})
        self._background(self.sync_metrics(units))

    def _background(self, coro: Any) -> None:
        """Run ``coro`` on its own, holding a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def reload_unit(self, name: str) -> tuple[str, Unit | None, str]:
        """For ``aeterna reload UNIT``: (action, new definition, error)."""
        return reloading.reload_one(self, name)

    # ---------------------------------------------------------- host API
    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        assert self.loop is not None
        return self.loop.call_later(delay, callback)

    def info(self, event: str, **fields: Any) -> None:
        self.log.info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log.warning(event, **fields)

    def deps_state(self, unit: UnitRuntime) -> str:
        """"up" when every ordered dependency is up, "failed" when a required one failed."""
        result = "up"
        for dep in unit.unit.service.depends_on:
            other = self.units.get(dep.name)
            if other is None:
                continue
            if other.state is State.FAILED:
                if dep.require:
                    return "failed"
                continue
            if other.state is State.INACTIVE and dep.require and not self.shutting_down:
                other.dispatch(Event.START)
            if dep.order and other.state not in UP_STATES and (
                    dep.require or other.state is not State.INACTIVE):
                result = "waiting"
        return result

    def reread_unit(self, name: str) -> Unit | None:
        """The unit's definition from the files now, or None if they do not validate."""
        try:
            loaded = load_paths(self.paths)
        except UnitErrors as exc:
            for err in exc.errors:
                self.log.error("reload.invalid", error=str(err))
            return None
        return loaded.by_name().get(name)

    def changed(self, runtime: UnitRuntime) -> None:
        """Every state change: wake waiters, unblock dependents, advance shutdown."""
        if (runtime.state in DOWN_STATES and runtime.fdstore is not None
                and not runtime.pending_start and runtime.fdstore.entries):
            # FileDescriptorStorePreserve=restart: kept across restarts only.
            self.log.info("fdstore.released", unit=runtime.name,
                          count=len(runtime.fdstore.entries))
            runtime.fdstore.clear()
        if runtime.state in UP_STATES or runtime.state is State.FAILED:
            for other in self.units.values():
                if other.state is State.WAITING and other is not runtime:
                    deps = self.deps_state(other)
                    if deps == "up":
                        other.dispatch(Event.DEPS_UP)
                    elif deps == "failed":
                        other.dispatch(Event.DEP_FAILED)
        if runtime.state in DOWN_STATES and not self.shutting_down:
            self._pending_stops.discard(runtime.name)  # a later start is not undone
        if self._pending_stops:
            self._advance_stops()
        self.wake_waiters()

    def wake_waiters(self) -> None:
        """Resolve every ``wait_for`` whose condition now holds; maybe finish."""
        still = []
        for pred, fut in self._waiters:
            if fut.done():
                continue
            if pred():
                fut.set_result(None)
            else:
                still.append((pred, fut))
        self._waiters = still
        self._check_finished()

    def _check_finished(self) -> None:
        if (self._done is None or self._done.done() or not self._booted
                or self.relays.current or self.relays.draining):
            return  # the cheap answers first: this runs at every state change
        # A oneshot that finished counts as settled, except when we shut down.
        settled = DOWN_STATES if self.shutting_down else DOWN_STATES | {State.EXITED}
        units = self.units.values()
        if not all(r.state in settled for r in units) or any(r.pending_start for r in units):
            return
        # Everything ended by itself: exit, as tini does when its child exits. But a
        # unit held down by `aeterna stop UNIT` is being administered, and `aeterna
        # start UNIT` must still find a manager (systemd's stays up too).
        if self.shutting_down or not any(r.stop_requested and r.state in DOWN_STATES
                                         for r in units):
            code = self.exit_status()
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
