"""The running side of one unit: its process, state, timers and counters.

``dispatch(event)`` runs the handler that :data:`aeterna.unit.table.TRANSITIONS`
holds for ``(state, event)``; every cell is filled (``ignore`` where nothing
happens) and a test checks it. Each timed state has one deadline (start, stop,
kill, restart delay) whose expiry is just another event. Only the first
failure of a run is recorded, as a ``Result`` whose name is shared by logs,
``aeterna status`` and metrics.

The unit talks to the manager only through the small :class:`Host` protocol:
it spawns, signals and schedules through it and tells it of every change of
state, which the host queues. A unit never dispatches to another unit, so the
depth of the stack does not depend on how many units there are, and a fake
host can drive the whole machine without processes (tests/pure).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..linux.fdstore import FdStore
from ..linux.sockets import Listener
from ..linux.spawn import SpawnError
from ..model import Condition, KillMode, NotifyAccess, ServiceType, UnitSpec
from ..results import ExitInfo, Result, errno_name
from . import commands, reload
from .pids import PidIndex
from .policy import StartLimiter, classify_exit, exit_matches, restart_delay, should_restart
from .states import DOWN_STATES, RUNNING_STATES, Deps, Event, State, Want
from .watchdog import Notified, Timer, Watchdog, watchdog_usec

__all__ = ["Host", "UnitRuntime"]


class Host(Protocol):
    """What a unit needs from the manager (a fake host in tests/pure)."""

    pids: PidIndex

    def spawn_main(self, unit: UnitRuntime) -> int: ...
    def spawn_command(self, unit: UnitRuntime, argv: tuple[str, ...], argv0: str,
                      privileged: bool = False) -> int: ...
    def watch_foreign(self, unit: UnitRuntime, pid: int) -> None: ...
    def failed_condition(self, unit: UnitRuntime) -> Condition | None: ...
    def prepare_directories(self, unit: UnitRuntime) -> None: ...  # OSError: cannot
    def forked_main_pid(self, unit: UnitRuntime) -> int: ...  # >0 pid, 0 none, -1 not yet
    def group_of(self, pid: int) -> int | None: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...
    def kill(self, pid: int, sig: int, group: bool) -> bool: ...  # False: no such process
    def deps_state(self, unit: UnitRuntime) -> Deps: ...
    def changed(self, unit: UnitRuntime) -> None: ...  # queued: never calls back into units
    def info(self, event: str, **fields: Any) -> None: ...
    def warning(self, event: str, **fields: Any) -> None: ...


class UnitRuntime:
    """One unit as it runs; ``spec`` is its frozen definition (``UnitSpec``)."""

    def __init__(self, spec: UnitSpec, host: Host):
        self.spec = spec
        self.host = host
        self.state = State.INACTIVE
        self.result = Result.SUCCESS
        self.want = Want.POLICY
        self._main_pid: int | None = None
        self._pgid: int | None = None
        self.generation = 0  # of the serving process
        self.last_generation = 0  # the highest generation number handed out
        self.restarts = 0
        self.restart_attempt = 0  # consecutive automatic restarts, for backoff
        self.started_at: float | None = None  # monotonic, of the current process
        self.active_since: float | None = None  # wall clock, when it last became active
        self.last_exit: ExitInfo | None = None
        self.limiter = StartLimiter(spec.service.start_limit)
        self.fdstore = FdStore(spec.service.fd_store_max) if spec.service.fd_store_max else None
        self.listeners: list[Listener] = []  # bound by the manager, kept for its life
        self.notified = Notified()
        self.watchdog = Watchdog(host.call_later, lambda: self.dispatch(Event.WATCHDOG))
        self.commands = commands.CommandQueue()
        self.reload = reload.ReloadState()
        self._timer: Timer | None = None
        self._deadline = 0.0  # monotonic time the state timer fires
        self._timer_event = Event.TIMEOUT
        self._poll: Timer | None = None  # Type=forking: waiting for the PID file
        self.stop_post_done = True  # ExecStopPost= ran for this run (or nothing ran)

    @property
    def name(self) -> str:
        return self.spec.name

    # ------------------------------------------------------------ pids (indexed by the host)
    @property
    def main_pid(self) -> int | None:
        return self._main_pid

    @main_pid.setter
    def main_pid(self, pid: int | None) -> None:
        self.host.pids.main(self, self._main_pid, pid)
        self._main_pid = pid

    @property
    def pgid(self) -> int | None:
        return self._pgid

    @pgid.setter
    def pgid(self, pgid: int | None) -> None:
        self.host.pids.group(self, self._pgid, pgid)
        self._pgid = pgid

    @property
    def command_pid(self) -> int | None:
        return self.commands.pid

    # ------------------------------------------------------------ plumbing
    def dispatch(self, event: Event, **data: Any) -> None:
        """Run the handler the table holds for (state, event)."""
        table.TRANSITIONS[(self.state, event)](self, **data)

    def enter(self, state: State) -> None:
        """Change state, log it, and tell the host (which queues what follows)."""
        if state is self.state:
            return
        old = self.state
        self.state = state
        if state in (State.ACTIVE, State.EXITED) and old not in (State.RELOADING, State.ACTIVE):
            self.active_since = time.time()  # systemctl's ActiveEnterTimestamp
        self.host.info("unit.state", unit=self.name, old=old.value, new=state.value,
                       result=self.result.value if state is State.FAILED else None)
        self.host.changed(self)

    def arm(self, delay: float, event: Event) -> None:
        """The state's one deadline: ``event`` fires after ``delay`` unless disarmed."""
        self.disarm()
        if delay == float("inf"):
            return
        self._deadline = time.monotonic() + delay
        self._timer_event = event
        self._timer = self.host.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.dispatch(self._timer_event)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def record_failure(self, result: Result) -> None:
        """Record the first failure of this run."""
        if self.result is Result.SUCCESS:
            self.result = result

    def allocate_generation(self) -> int:
        self.last_generation += 1
        return self.last_generation

    # ------------------------------------------------------------ requests from the host
    def restart(self) -> None:
        """``aeterna restart``: stop if running, then start again once down."""
        if self.state not in DOWN_STATES and self.state is not State.AUTO_RESTART:
            self.dispatch(Event.STOP)
            if self.state not in DOWN_STATES:
                self.want = Want.START
                return
        self.dispatch(Event.START)

    def hold_down(self) -> None:
        """``aeterna stop``: whatever state it is in, no automatic start until a start."""
        self.want = Want.STAY_DOWN

    def fail_now(self, result: Result, event: str, **fields: Any) -> None:
        """Fail without starting (e.g. its socket could not be bound)."""
        self.result = result
        self.host.warning(event, unit=self.name, **fields)
        self.enter(State.FAILED)

    def failed_reset(self) -> None:
        """``reset-failed``: forget the failure (result, start limit, backoff)."""
        self.result = Result.SUCCESS
        self.restart_attempt = 0
        self.limiter.reset()
        self.enter(State.INACTIVE)

    # ------------------------------------------------------------ starting
    def down_start(self) -> None:
        """Start requested while inactive or failed."""
        self.result = Result.SUCCESS
        self.want = Want.POLICY
        self.restart_attempt = 0
        if self.state is State.FAILED:
            self.limiter.reset()
        self.enter(State.WAITING)
        self._try_deps()

    def _try_deps(self) -> None:
        deps = self.host.deps_state(self)
        if deps is Deps.UP:
            self._spawn()
        elif deps is Deps.FAILED:
            self.waiting_dep_failed()

    def waiting_deps_up(self) -> None:
        """Every ordered dependency is up: start the process."""
        self._spawn()

    def waiting_dep_failed(self) -> None:
        """A required dependency failed: fail without starting."""
        self.record_failure(Result.DEPENDENCY)
        self.host.warning("unit.dependency-failed", unit=self.name)
        self.enter(State.FAILED)

    def _spawn(self) -> None:
        if not self.limiter.allow(time.monotonic()):
            self.result = Result.START_LIMIT  # overrides the failure that led here
            self.host.warning("unit.start-limit-hit", unit=self.name,
                              burst=self.spec.service.start_limit.burst,
                              interval=self.spec.service.start_limit.interval)
            self.enter(State.FAILED)
            return
        self.result = Result.SUCCESS
        svc = self.spec.service
        failed = self.host.failed_condition(self) if svc.conditions else None
        if failed is not None:
            kind = "Assert" if failed.assertion else "Condition"
            how = f"{kind}{failed.check}={'!' if failed.negate else ''}{failed.value}"
            if failed.assertion:  # systemd: the start job fails
                self.record_failure(Result.ASSERT)
                self.host.warning("unit.assert-failed", unit=self.name, check=how,
                                  where=str(failed.source))
                self.enter(State.FAILED)
            else:  # systemd: the unit is skipped, and that is no failure
                self.host.info("unit.condition-failed", unit=self.name, check=how,
                               where=str(failed.source))
                self.settle(State.INACTIVE)
            return
        try:
            self.host.prepare_directories(self)
        except OSError as exc:
            self.record_failure(Result.RESOURCES)
            self.host.warning("unit.spawn-failed", unit=self.name,
                              errno=errno_name(exc.errno or 0), error=str(exc))
            self.after_exit()
            return
        if svc.exec_condition:
            commands.run(self, svc.exec_condition, State.START_PRE, self._start_pre,
                         self._exec_condition_failed)
        else:
            self._start_pre()

    def _start_pre(self) -> None:
        self.stop_post_done = False  # from here on, ExecStopPost= runs when the run ends
        pre = self.spec.service.exec_start_pre
        if pre:
            commands.run(self, pre, State.START_PRE, self._spawn_main, self.after_exit)
        else:
            self._spawn_main()

    def _exec_condition_failed(self) -> None:
        """ExecCondition= exited 1 to 254: skip the unit, no failure; 255 or a signal
        is a failure (systemd.service(5))."""
        info = self.commands.last_exit
        if info is not None and info.signal is None and info.code is not None \
                and 0 < info.code < 255:
            self.result = Result.SUCCESS
            self.host.info("unit.condition-failed", unit=self.name,
                           check="ExecCondition=", how=str(info))
            self.settle(State.INACTIVE)
            return
        self.after_exit()

    def _spawn_main(self) -> None:
        self.generation = self.allocate_generation()
        try:
            pid = self.host.spawn_main(self)
        except SpawnError as exc:
            self.record_failure(Result.EXEC)
            self.last_exit = ExitInfo(code=exc.exit_status)
            self.host.warning("unit.exec-failed", unit=self.name, stage=exc.stage,
                              errno=errno_name(exc.errno), path=exc.path, error=str(exc))
            self.after_exit()
            return
        except OSError as exc:
            self.record_failure(Result.RESOURCES)
            self.last_exit = ExitInfo(code=1)
            self.host.warning("unit.spawn-failed", unit=self.name,
                              errno=errno_name(exc.errno or 0), error=str(exc))
            self.after_exit()
            return
        self.main_pid = self.pgid = pid
        self.started_at = time.monotonic()
        self.notified = Notified()
        self.host.info("unit.started", unit=self.name, pid=pid, generation=self.generation)
        if self.spec.service.type in (ServiceType.SIMPLE, ServiceType.EXEC):
            self._started()
        else:
            self.enter(State.STARTING)
            self.arm(self.spec.service.timeouts.start, Event.TIMEOUT)

    def starting_ready(self) -> None:
        """READY=1 from an authorised sender: the unit is up (after ExecStartPost=)."""
        self.disarm()
        self._started()

    def _started(self) -> None:
        post = self.spec.service.exec_start_post
        if post:
            commands.run(self, post, State.START_POST, self._up, self._post_failed)
        else:
            self._up()

    def _up(self) -> None:
        # Like systemd's restart counter, the backoff step is not reset by success;
        # only an explicit start resets it (RestartMaxDelaySec caps the growth).
        svc = self.spec.service
        oneshot_done = svc.type is ServiceType.ONESHOT and self.main_pid is None
        self.enter(State.EXITED if oneshot_done else State.ACTIVE)
        if not oneshot_done:
            self.watchdog.arm(self.watchdog_usec())
            self.arm_runtime_max()

    def arm_runtime_max(self) -> None:
        """ACTIVE's one deadline: what is left of RuntimeMaxSec= since the start (a
        reload, which uses the state timer, re-arms it on its way back)."""
        limit = self.spec.service.runtime_max_sec
        if limit != float("inf") and self.started_at is not None:
            self.arm(max(0.0, limit - (time.monotonic() - self.started_at)), Event.TIMEOUT)

    def active_timeout(self) -> None:
        """RuntimeMaxSec= passed: stop it, and count a timeout (as systemd does)."""
        self.record_failure(Result.TIMEOUT)
        self.host.warning("unit.runtime-max", unit=self.name,
                          limit=self.spec.service.runtime_max_sec)
        self.enter_stopping(self.spec.service.stop_signal)

    def _post_failed(self) -> None:
        """An ExecStartPost= command failed: the unit fails and its process is stopped."""
        if self.main_pid is not None:
            self.enter_stopping(self.spec.service.stop_signal)
        else:
            self.after_exit()

    def starting_timeout(self) -> None:
        """Not ready within the start timeout: stop it, and count a failure."""
        self.record_failure(Result.TIMEOUT)
        self.host.warning("unit.start-timeout", unit=self.name,
                          timeout=self.spec.service.timeouts.start)
        self.enter_stopping(self.spec.service.stop_signal)

    def adopt(self, pid: int, generation: int, spec: UnitSpec, notified: Notified) -> None:
        """Hot relay promotion: N+1 becomes this unit's main process, whatever N was doing."""
        self.disarm()
        self.watchdog.disarm()
        self.spec = spec
        self.main_pid = self.pgid = pid
        self.generation = generation
        self.started_at = time.monotonic()
        self.notified = notified
        self.result = Result.SUCCESS
        self.want = Want.POLICY
        self.restart_attempt = 0
        self.enter(State.ACTIVE)
        self.watchdog.arm(self.watchdog_usec())

    # ------------------------------------------------------------ exits
    def running_exited(self, info: ExitInfo) -> None:
        """The main process exited on its own."""
        self.disarm()
        self.watchdog.disarm()
        self.last_exit = info
        self.main_pid = None
        svc = self.spec.service
        result = classify_exit(info, svc.type, svc.success_exit_status,
                               svc.success_exit_signals)
        if svc.ignore_failure and result is not Result.SUCCESS:
            result = Result.SUCCESS
        commands.kill(self)
        if result is Result.SUCCESS and self.state is State.STARTING:
            if svc.type is ServiceType.FORKING:
                # The parent exited 0: the daemon is up once its main pid is known.
                self.host.info("unit.forked", unit=self.name, how=str(info))
                self._find_forked()
                return
            if svc.type is ServiceType.ONESHOT:
                self.host.info("unit.exited", unit=self.name, how=str(info), result="success")
                self._reap_group_leftovers()
                self._started()
                return
            if svc.type in (ServiceType.NOTIFY, ServiceType.NOTIFY_RELOAD):
                result = Result.PROTOCOL
        if result is Result.SUCCESS and svc.remain_after_exit and self.state is State.ACTIVE:
            self.host.info("unit.exited", unit=self.name, how=str(info), result="success")
            self.enter(State.EXITED)  # RemainAfterExit=: "active (exited)"
            return
        self.record_failure(result)
        self.host.info("unit.exited", unit=self.name, how=str(info), result=result.value)
        self._reap_group_leftovers()
        self.after_exit()

    def _find_forked(self) -> None:
        """Type=forking: PIDFile= (waiting for it until the start timeout, as the
        daemon may write it after its parent exited), else the guess."""
        self._poll = None
        if self.state is not State.STARTING or self.main_pid is not None:
            return
        pid = self.host.forked_main_pid(self)
        if pid < 0:
            self._poll = self.host.call_later(0.02, self._find_forked)
            return
        self.disarm()
        if pid > 0:
            self.main_pid = pid
            # A daemon that called setsid() leads a group of its own: stop signals go
            # there (its workers are in it), not to its parent's, now empty.
            group = self.host.group_of(pid)
            if group is not None and group != self.pgid:
                self.pgid = group
            self.host.watch_foreign(self, pid)
            self.host.info("unit.mainpid", unit=self.name, old=None, new=pid)
        else:
            self.host.info("unit.mainpid", unit=self.name, old=None, new=None,
                           note="no main process found; the unit's group is supervised")
        self._started()

    def _reap_group_leftovers(self) -> None:
        """The main process is gone; tell what is left of its group to go too."""
        if self.pgid is not None and self.spec.service.kill_mode in (
                KillMode.CONTROL_GROUP, KillMode.MIXED):
            if self.host.kill(self.pgid, self.spec.service.stop_signal, group=True):
                self.host.kill(self.pgid, signal.SIGCONT, group=True)

    def after_exit(self) -> None:
        """A run ended: ExecStopPost= first, then restart after RestartSec=, or settle
        inactive or failed."""
        if self._stop_post(self.after_exit):
            return
        svc = self.spec.service
        restart = should_restart(svc.restart, self.result)
        if self.last_exit is not None and exit_matches(self.last_exit, svc.restart_prevent):
            restart = False
        elif self.last_exit is not None and exit_matches(self.last_exit, svc.restart_force):
            restart = True
        if self.want is Want.POLICY and restart and self.result is not Result.START_LIMIT:
            delay = restart_delay(svc.restart_sec, svc.backoff, self.restart_attempt)
            self.restart_attempt += 1
            self.host.info("unit.restart-scheduled", unit=self.name, delay=round(delay, 3),
                           result=self.result.value)
            self.enter(State.AUTO_RESTART)
            self.arm(delay, Event.RESTART_DUE)
            return
        self.settle()

    def _stop_post(self, then: Callable[[], None]) -> bool:
        """Run ExecStopPost= once per run (after a stop, a failure or a failed start);
        True while they run, ``then`` being called when they are done."""
        post = self.spec.service.exec_stop_post
        if not post or self.state is State.STOP_POST or self.stop_post_done:
            return False
        self.stop_post_done = True
        commands.run(self, post, State.STOP_POST, then, then)
        return True

    def settle(self, state: State | None = None) -> None:
        """Down (``state``, else inactive or failed by the result); a restart asked
        for starts now."""
        if self._stop_post(lambda: self.settle(state)):
            return
        if state is None:
            state = State.INACTIVE if self.result is Result.SUCCESS else State.FAILED
        self.enter(state)
        if self.want is Want.START:
            self.dispatch(Event.START)

    def auto_restart_due(self) -> None:
        """RestartSec elapsed (or a start was asked for): start again."""
        self.disarm()
        self.restarts += 1
        self.enter(State.WAITING)
        self._try_deps()

    # ------------------------------------------------------------ stopping (see .stopping)
    def enter_stopping(self, sig: int | None) -> None:
        """The one way into STOPPING: signal the unit (unless ``sig`` is None), arm the
        stop timeout. What comes after is ``want``'s: a failure's stop leaves it POLICY."""
        self.watchdog.disarm()
        self.enter(State.STOPPING)
        if sig is not None:
            self._signal(sig, first=True)
        self.arm(self.spec.service.timeouts.stop, Event.TIMEOUT)

    def _signal(self, sig: int, first: bool) -> None:
        mode = self.spec.service.kill_mode
        if mode is KillMode.NONE:
            return
        group = mode is KillMode.CONTROL_GROUP or (mode is KillMode.MIXED and not first)
        target = self.pgid if group else self.main_pid
        if target is None:
            return
        self.host.kill(target, sig, group=group)
        if sig != signal.SIGKILL:
            self.host.kill(target, signal.SIGCONT, group=group)

    def check_group(self) -> None:
        """After each round of reaping while stopping: is anything of the unit left?"""
        if self.state not in (State.STOPPING, State.KILLING) or self.main_pid is not None:
            return
        mode = self.spec.service.kill_mode
        if (mode in (KillMode.PROCESS, KillMode.NONE) or self.pgid is None
                or not self.host.kill(self.pgid, 0, group=True)):
            self.dispatch(Event.GROUP_EMPTY)

    # ------------------------------------------------------------ what sd_notify drives
    def effective_notify_access(self) -> NotifyAccess:
        return self.notified.access or self.spec.service.effective_notify_access()

    def watchdog_usec(self) -> int:
        return watchdog_usec(self.notified, self.spec.service.watchdog_sec)

    def watchdog_ping(self) -> None:
        """WATCHDOG=1: the service is alive; restart the countdown."""
        if self.state in RUNNING_STATES:
            self.watchdog.arm(self.watchdog_usec())

    def set_watchdog_usec(self, usec: int) -> None:
        """WATCHDOG_USEC=: a new timeout, re-armed from now (0 disables)."""
        self.notified.watchdog_usec = usec
        if self.state in RUNNING_STATES:
            self.watchdog.arm(usec)

    def extend_timeout(self, usec: int) -> None:
        """EXTEND_TIMEOUT_USEC: push the state timer and the watchdog to >= now+usec."""
        want = time.monotonic() + usec / 1e6
        if self._timer is not None and want > self._deadline:
            self.arm(want - time.monotonic(), self._timer_event)
        self.watchdog.extend_to(want)

    def set_main_pid(self, pid: int) -> None:
        """MAINPID=: the service says another process is its main one now."""
        if self.state in RUNNING_STATES and pid != self.main_pid:
            self.host.info("unit.mainpid", unit=self.name, old=self.main_pid, new=pid)
            self.main_pid = pid
            # A main process that is not our child never reaches our reaper:
            # the host watches it with a pidfd instead.
            self.host.watch_foreign(self, pid)

    # ------------------------------------------------------------ status
    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        uptime = (now - self.started_at
                  if self.started_at is not None and self.main_pid is not None else None)
        return {
            "name": self.name,
            "state": self.state.value,
            "result": self.result.value,
            "type": self.spec.service.type.value,
            "main_pid": self.main_pid,
            "generation": self.generation,
            "uptime": round(uptime, 3) if uptime is not None else None,
            "restarts": self.restarts,
            "status_text": self.notified.status,
            "exit": str(self.last_exit) if self.last_exit else None,
            "errno": self.notified.errno,
            "reloads": self.reload.count,
            "last_reload": self.reload.last or None,
        }


# Last: the table holds this module's methods (and imports it first, if it is
# imported first; its TRANSITIONS is looked up at dispatch time).
from . import table  # noqa: E402
