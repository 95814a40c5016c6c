"""The lifecycle of one unit: an enum of states, an enum of events, and a table.

``TRANSITIONS[(state, event)]`` names the handler ``<state>_<event>`` or
``ignore``; every cell is filled and a test checks it. Each timed state has one
deadline (start timeout, stop timeout, kill timeout, restart delay) whose expiry
is just another event. Only the first failure of a run is recorded, as a
``Result`` whose name is shared by logs, ``aeterna status`` and metrics.

The unit talks to the manager through the small ``Host`` protocol so that it
needs no asyncio: the host owns the loop, the reaper and spawning.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..linux import proc
from ..linux.fdstore import FdStore
from ..linux.sockets import Listener
from ..linux.spawn import SpawnError
from ..model import KillMode, NotifyAccess, ServiceType, Unit
from ..results import ExitInfo, Result, errno_name
from .commands import ControlCommands
from .policy import StartLimiter, classify_exit, restart_delay, should_restart
from .states import (
    DOWN_STATES,
    KILL_TIMEOUT,
    RUNNING_STATES,
    TRANSITIONS,
    UP_STATES,
    Event,
    State,
)
from .watchdog import NotifyDriven

__all__ = ["DOWN_STATES", "RUNNING_STATES", "TRANSITIONS", "UP_STATES", "Event", "Host",
           "State", "UnitRuntime"]


class Host(Protocol):
    """What a unit needs from the manager."""

    def spawn_main(self, unit: UnitRuntime) -> int: ...
    def spawn_control(self, unit: UnitRuntime, argv: tuple[str, ...], argv0: str) -> int: ...
    def watch_foreign(self, unit: UnitRuntime, pid: int) -> None: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...
    def deps_state(self, unit: UnitRuntime) -> str: ...  # "up" | "waiting" | "failed"
    def changed(self, unit: UnitRuntime) -> None: ...
    def info(self, event: str, **fields: Any) -> None: ...
    def warning(self, event: str, **fields: Any) -> None: ...


class UnitRuntime(NotifyDriven, ControlCommands):
    """The running side of one unit: its process, state, timers and counters."""

    def __init__(self, unit: Unit, host: Host):
        self.unit = unit
        self.host = host
        self.state = State.INACTIVE
        self.result = Result.SUCCESS
        self.main_pid: int | None = None
        self.pgid: int | None = None
        self.generation = 0  # of the serving process
        self.last_generation = 0  # the highest generation number handed out
        self.restarts = 0
        self.restart_attempt = 0  # consecutive automatic restarts, for backoff
        self.started_at: float | None = None  # monotonic, of the current process
        self.last_exit: ExitInfo | None = None
        self.status_text = ""
        self.limiter = StartLimiter(unit.service.start_limit)
        self.fdstore = FdStore(unit.service.fd_store_max) if unit.service.fd_store_max else None
        self.listeners: list[Listener] = []  # bound by the manager, kept for its life
        self.stop_requested = False  # a manual stop: never restart automatically
        self.pending_start = False  # start again once stopped (restart verb)
        self.restart_after_stop = False  # the stop was caused by a failure
        self._timer: Any = None
        self.control_pid: int | None = None  # an ExecStartPre/Post/Stop/Reload command
        self._controls = []
        self._control_ignore = False
        self._deadline = 0.0  # monotonic time the state timer fires
        self._timer_event = Event.TIMEOUT
        # sd_notify-driven settings, reset at every start.
        self.notify_access_override: NotifyAccess | None = None
        self.watchdog_usec_override: int | None = None
        self._wd_timer: Any = None
        self._wd_deadline = 0.0
        self.errno: int | None = None
        self.notified_exit_status: int | None = None
        self.stopping_notified = False
        # notify-reload bookkeeping
        self.reload_t0_usec = 0
        self.reload_requested = False
        self.reload_seen = False
        self.reloads = 0
        self.last_reload = ""  # "", "success", "timeout"

    # ------------------------------------------------------------ plumbing
    def dispatch(self, event: Event, **data: Any) -> None:
        """Run the handler the table names for (state, event)."""
        handler = TRANSITIONS[(self.state, event)]
        if handler == "ignore":
            return
        getattr(self, handler)(**data)

    def _set_state(self, state: State) -> None:
        if state is self.state:
            return
        old = self.state
        self.state = state
        self.host.info("unit.state", unit=self.name, old=old.value, new=state.value,
                       result=self.result.value if state is State.FAILED else None)
        self.host.changed(self)

    def _arm(self, delay: float, event: Event) -> None:
        self._disarm()
        if delay == float("inf"):
            return
        self._deadline = time.monotonic() + delay
        self._timer_event = event
        self._timer = self.host.call_later(delay, lambda: self._fire(event))

    def extend_timeout(self, usec: int) -> None:
        """EXTEND_TIMEOUT_USEC: push the state timer and watchdog to >= now+usec."""
        want = time.monotonic() + usec / 1e6
        if self._timer is not None and want > self._deadline:
            self._arm(want - time.monotonic(), self._timer_event)
        if self._wd_timer is not None and want > self._wd_deadline:
            self._arm_watchdog(want - time.monotonic())

    def _fire(self, event: Event) -> None:
        self._timer = None
        self.dispatch(event)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, result: Result) -> None:
        """Record the first failure of this run."""
        if self.result is Result.SUCCESS:
            self.result = result

    # ------------------------------------------------------------ starting
    def down_start(self) -> None:
        """Start requested while inactive or failed."""
        self.result = Result.SUCCESS
        self.stop_requested = False
        self.restart_attempt = 0
        if self.state is State.FAILED:
            self.limiter.reset()
        self._set_state(State.WAITING)
        self._try_deps()

    def _try_deps(self) -> None:
        deps = self.host.deps_state(self)
        if self.state is not State.WAITING:
            # deps_state started a required dependency that came up at once and
            # its DEPS_UP already started us, re-entrantly: starting again would
            # spawn a second main process and orphan the first.
            return
        if deps == "up":
            self._spawn()
        elif deps == "failed":
            self.waiting_dep_failed()

    def waiting_deps_up(self) -> None:
        """Every ordered dependency is up: start the process."""
        self._spawn()

    def waiting_dep_failed(self) -> None:
        """A required dependency failed: fail without starting."""
        self._fail(Result.DEPENDENCY)
        self.host.warning("unit.dependency-failed", unit=self.name)
        self._set_state(State.FAILED)

    def waiting_stop(self) -> None:
        self.stop_requested = True
        self._set_state(State.INACTIVE)

    def _spawn(self) -> None:
        if not self.limiter.allow(time.monotonic()):
            self.result = Result.START_LIMIT  # overrides the failure that led here
            self.host.warning("unit.start-limit-hit", unit=self.name,
                              burst=self.unit.service.start_limit.burst,
                              interval=self.unit.service.start_limit.interval)
            self._set_state(State.FAILED)
            return
        self.result = Result.SUCCESS
        self.restart_after_stop = False
        pre = self.unit.service.exec_start_pre
        if pre:
            self._run_controls(pre, State.START_PRE, self._spawn_main, self._after_exit)
        else:
            self._spawn_main()

    def _spawn_main(self) -> None:
        self.generation = self.allocate_generation()
        try:
            pid = self.host.spawn_main(self)
        except SpawnError as exc:
            self._fail(Result.EXEC)
            self.last_exit = ExitInfo(code=exc.exit_status)
            self.host.warning("unit.exec-failed", unit=self.name, stage=exc.stage,
                              errno=errno_name(exc.errno), path=exc.path, error=str(exc))
            self._after_exit()
            return
        except OSError as exc:
            self._fail(Result.RESOURCES)
            self.last_exit = ExitInfo(code=1)
            self.host.warning("unit.spawn-failed", unit=self.name,
                              errno=errno_name(exc.errno or 0), error=str(exc))
            self._after_exit()
            return
        self.main_pid = self.pgid = pid
        self.started_at = time.monotonic()
        self.status_text = ""
        self.notify_access_override = None
        self.watchdog_usec_override = None
        self.errno = self.notified_exit_status = None
        self.stopping_notified = False
        self.host.info("unit.started", unit=self.name, pid=pid, generation=self.generation)
        t = self.unit.service.type
        if t in (ServiceType.SIMPLE, ServiceType.EXEC):
            self._started()
        else:
            self._set_state(State.STARTING)
            self._arm(self.unit.service.timeouts.start, Event.TIMEOUT)

    def starting_ready(self) -> None:
        """READY=1 from an authorised sender: the unit is up (after ExecStartPost=)."""
        self._disarm()
        self._started()

    def _started(self) -> None:
        post = self.unit.service.exec_start_post
        if post:
            self._run_controls(post, State.START_POST, self._up, self._post_failed)
        else:
            self._up()

    def _up(self) -> None:
        # Like systemd's restart counter, the backoff step is not reset by success;
        # only an explicit start resets it (RestartMaxDelaySec caps the growth).
        oneshot_done = self.unit.service.type is ServiceType.ONESHOT and self.main_pid is None
        self._set_state(State.EXITED if oneshot_done else State.ACTIVE)
        if not oneshot_done:
            self._arm_watchdog()

    def _post_failed(self) -> None:
        """An ExecStartPost= command failed: the unit fails and its process is stopped."""
        self.restart_after_stop = True
        if self.main_pid is not None:
            self._begin_stop()
        else:
            self._after_exit()

    def start_pre_stop(self) -> None:
        """Stopped while ExecStartPre= runs: kill it, the main process never starts."""
        self._disarm()
        self._kill_control()
        self.stop_requested = True
        self._set_state(State.INACTIVE)

    def stop_pre_exited(self, info: ExitInfo) -> None:
        """The main process ended while ExecStop= ran: finish stopping."""
        self._kill_control()
        self._set_state(State.STOPPING)
        self._arm(self.unit.service.timeouts.stop, Event.TIMEOUT)
        self.stopping_exited(info)

    def allocate_generation(self) -> int:
        self.last_generation += 1
        return self.last_generation

    def adopt(self, pid: int, generation: int, unit: Unit, status_text: str) -> None:
        """Hot relay promotion: N+1 becomes this unit's main process, whatever N was doing."""
        self._disarm()
        self._disarm_watchdog()
        self.unit = unit
        self.main_pid = self.pgid = pid
        self.generation = generation
        self.started_at = time.monotonic()
        self.status_text = status_text
        self.result = Result.SUCCESS
        self.stop_requested = False
        self.restart_attempt = 0
        self.notify_access_override = None
        self.watchdog_usec_override = None
        self._set_state(State.ACTIVE)
        self._arm_watchdog()

    def fail_now(self, result: Result, event: str, **fields: Any) -> None:
        """Fail without starting (e.g. its socket could not be bound)."""
        self.result = result
        self.host.warning(event, unit=self.name, **fields)
        self._set_state(State.FAILED)
    def starting_timeout(self) -> None:
        """Not ready within the start timeout: stop it, and count a failure."""
        self._fail(Result.TIMEOUT)
        self.host.warning("unit.start-timeout", unit=self.name,
                          timeout=self.unit.service.timeouts.start)
        self.restart_after_stop = True
        self._begin_stop()

    # ------------------------------------------------------------ exits
    def running_exited(self, info: ExitInfo) -> None:
        """The main process exited on its own."""
        self._disarm()
        self._disarm_watchdog()
        self.last_exit = info
        self.main_pid = None
        svc = self.unit.service
        result = classify_exit(info, svc.type, svc.success_exit_status)
        if svc.ignore_failure and result is not Result.SUCCESS:
            result = Result.SUCCESS
        self._kill_control()
        if result is Result.SUCCESS and self.state is State.STARTING:
            if svc.type is ServiceType.ONESHOT:
                self.host.info("unit.exited", unit=self.name, how=str(info), result="success")
                self._reap_group_leftovers()
                self._started()
                return
            if svc.type in (ServiceType.NOTIFY, ServiceType.NOTIFY_RELOAD):
                result = Result.PROTOCOL
        self._fail(result)
        self.host.info("unit.exited", unit=self.name, how=str(info), result=result.value)
        self._reap_group_leftovers()
        self._after_exit()

    def _reap_group_leftovers(self) -> None:
        """The main process is gone; tell what is left of its group to go too."""
        if self.pgid is not None and self.unit.service.kill_mode in (
                KillMode.CONTROL_GROUP, KillMode.MIXED):
            if proc.kill_group(self.pgid, self.unit.service.stop_signal):
                proc.kill_group(self.pgid, signal.SIGCONT)

    def _after_exit(self) -> None:
        """Decide between restarting, inactive and failed after a run ended."""
        svc = self.unit.service
        if not self.stop_requested and should_restart(svc.restart, self.result):
            delay = restart_delay(svc.restart_sec, svc.backoff, self.restart_attempt)
            self.restart_attempt += 1
            self.host.info("unit.restart-scheduled", unit=self.name, delay=round(delay, 3),
                           result=self.result.value)
            self._set_state(State.AUTO_RESTART)
            self._arm(delay, Event.RESTART_DUE)
            return
        self._set_state(State.INACTIVE if self.result is Result.SUCCESS else State.FAILED)

    def auto_restart_due(self) -> None:
        """RestartSec elapsed (or a start was asked for): start again."""
        self._disarm()
        self.restarts += 1
        self._set_state(State.WAITING)
        self._try_deps()

    def auto_restart_stop(self) -> None:
        self._disarm()
        self.stop_requested = True
        self._set_state(State.INACTIVE if self.result is Result.SUCCESS else State.FAILED)

    # ------------------------------------------------------------ stopping
    def running_stop(self) -> None:
        """A manual stop: ExecStop= if any, then signal the group, arm the stop timeout."""
        self.stop_requested = True
        self._kill_control()
        stop = self.unit.service.exec_stop
        if stop and self.main_pid is not None:
            self._run_controls(stop, State.STOP_PRE, self._begin_stop, self._begin_stop)
        else:
            self._begin_stop()

    def exited_stop(self) -> None:
        self.stop_requested = True
        self._set_state(State.INACTIVE)

    def _begin_stop(self) -> None:
        self._disarm_watchdog()
        svc = self.unit.service
        self._set_state(State.STOPPING)
        self._signal(svc.stop_signal, first=True)
        self._arm(svc.timeouts.stop, Event.TIMEOUT)

    def _signal(self, sig: int, first: bool) -> None:
        mode = self.unit.service.kill_mode
        if mode is KillMode.NONE:
            return
        group = mode is KillMode.CONTROL_GROUP or (mode is KillMode.MIXED and not first)
        if group and self.pgid is not None:
            proc.kill_group(self.pgid, sig)
            if sig != signal.SIGKILL:
                proc.kill_group(self.pgid, signal.SIGCONT)
        elif self.main_pid is not None:
            proc.kill_pid(self.main_pid, sig)
            if sig != signal.SIGKILL:
                proc.kill_pid(self.main_pid, signal.SIGCONT)

    def stopping_exited(self, info: ExitInfo) -> None:
        """The main process is gone; the unit is down once its group is empty too."""
        self.last_exit = info
        self.main_pid = None
        self.host.info("unit.exited", unit=self.name, how=str(info))
        if self.unit.service.kill_mode is KillMode.MIXED and self.pgid is not None:
            proc.kill_group(self.pgid, signal.SIGKILL)
        self.check_group()

    def check_group(self) -> None:
        """Called after each round of reaping while stopping."""
        if self.state not in (State.STOPPING, State.KILLING) or self.main_pid is not None:
            return
        mode = self.unit.service.kill_mode
        if (mode in (KillMode.PROCESS, KillMode.NONE) or self.pgid is None
                or not proc.kill_group(self.pgid, 0)):
            self.dispatch(Event.GROUP_EMPTY)

    def stopping_group_empty(self) -> None:
        """Everything of the unit is gone: inactive, failed, or start again."""
        self._disarm()
        self.pgid = None
        if self.restart_after_stop:
            self._after_exit()
        else:
            self._set_state(State.FAILED if self.result is not Result.SUCCESS
                            else State.INACTIVE)
        if self.pending_start:
            self.pending_start = False
            self.dispatch(Event.START)

    def stopping_timeout(self) -> None:
        """The stop timeout passed: SIGKILL the group."""
        self.host.warning("unit.stop-timeout", unit=self.name, pid=self.main_pid,
                          timeout=self.unit.service.timeouts.stop)
        self._fail(Result.TIMEOUT)
        self._set_state(State.KILLING)
        if self.unit.service.kill_mode is not KillMode.NONE:
            if self.pgid is not None and self.unit.service.kill_mode is not KillMode.PROCESS:
                proc.kill_group(self.pgid, signal.SIGKILL)
            elif self.main_pid is not None:
                proc.kill_pid(self.main_pid, signal.SIGKILL)
        self._arm(KILL_TIMEOUT, Event.TIMEOUT)

    def killing_timeout(self) -> None:
        """Even SIGKILL did not end it (uninterruptible sleep): give up on it."""
        self.host.warning("unit.abandoned", unit=self.name, pid=self.main_pid)
        self.main_pid = None
        self.stopping_group_empty()

    def stopping_start(self) -> None:
        """A start asked for while stopping: start again once stopped."""
        self.pending_start = True

    # ------------------------------------------------------------ status
    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        uptime = (now - self.started_at
                  if self.started_at is not None and self.main_pid is not None else None)
        return {
            "name": self.name,
            "state": self.state.value,
            "result": self.result.value,
            "type": self.unit.service.type.value,
            "main_pid": self.main_pid,
            "generation": self.generation,
            "uptime": round(uptime, 3) if uptime is not None else None,
            "restarts": self.restarts,
            "status_text": self.status_text,
            "exit": str(self.last_exit) if self.last_exit else None,
            "errno": self.errno,
            "reloads": self.reloads,
            "last_reload": self.last_reload or None,
        }
