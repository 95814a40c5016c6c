"""The parts of a unit's lifecycle that sd_notify drives: watchdog and in-place reload.

A mixin of ``UnitRuntime`` (same object, same table): the watchdog has its own
timer beside the state timer, and ``notify-reload`` is the ``RELOADING`` state
of the table, entered by our reload signal or by the service itself.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..linux import proc
from ..model import NotifyAccess, ServiceType, Unit
from ..results import Result
from .states import RUNNING_STATES, Event, State

if TYPE_CHECKING:
    from .runtime import Host


class NotifyDriven:
    """Watchdog, reload and the notify-facing setters of a unit runtime."""

    # Provided by UnitRuntime.
    unit: Unit
    host: Host
    state: State
    main_pid: int | None
    status_text: str
    notify_access_override: NotifyAccess | None
    watchdog_usec_override: int | None
    reload_t0_usec: int
    reload_requested: bool
    reload_seen: bool
    reloads: int
    last_reload: str
    restart_after_stop: bool
    _wd_timer: Any
    _wd_deadline: float

    @property
    def name(self) -> str:
        return self.unit.name

    def dispatch(self, event: Event, **data: Any) -> None: ...  # pragma: no cover
    def _set_state(self, state: State) -> None: ...  # pragma: no cover
    def _arm(self, delay: float, event: Event) -> None: ...  # pragma: no cover
    def _disarm(self) -> None: ...  # pragma: no cover
    def _fail(self, result: Result) -> None: ...  # pragma: no cover
    def _signal(self, sig: int, first: bool) -> None: ...  # pragma: no cover

    # ------------------------------------------------------------ watchdog
    def watchdog_usec(self) -> int:
        if self.watchdog_usec_override is not None:
            return self.watchdog_usec_override
        return int(self.unit.service.watchdog_sec * 1e6)

    def _arm_watchdog(self, delay: float | None = None) -> None:
        self._disarm_watchdog()
        usec = self.watchdog_usec()
        if usec <= 0 and delay is None:
            return
        delay = usec / 1e6 if delay is None else delay
        self._wd_deadline = time.monotonic() + delay
        self._wd_timer = self.host.call_later(delay, self._watchdog_expired)

    def _disarm_watchdog(self) -> None:
        if self._wd_timer is not None:
            self._wd_timer.cancel()
            self._wd_timer = None

    def _watchdog_expired(self) -> None:
        self._wd_timer = None
        self.dispatch(Event.WATCHDOG)

    def watchdog_ping(self) -> None:
        """WATCHDOG=1: the service is alive; restart the countdown."""
        if self.state in RUNNING_STATES:
            self._arm_watchdog()

    def set_watchdog_usec(self, usec: int) -> None:
        """WATCHDOG_USEC=: a new timeout, re-armed from now (0 disables)."""
        self.watchdog_usec_override = usec
        if self.state in RUNNING_STATES:
            self._arm_watchdog()

    def running_watchdog(self) -> None:
        """The watchdog expired (or WATCHDOG=trigger): kill with the watchdog signal."""
        self._disarm_watchdog()
        self._fail(Result.WATCHDOG)
        self.host.warning("unit.watchdog", unit=self.name, pid=self.main_pid,
                          signal=self.unit.service.watchdog_signal.name)
        self.restart_after_stop = True
        svc = self.unit.service
        self._set_state(State.STOPPING)
        self._signal(svc.watchdog_signal, first=True)
        self._arm(svc.timeouts.stop, Event.TIMEOUT)

    # ------------------------------------------------------------ reload
    def active_reload(self) -> None:
        """In-place reload: ExecReload= first; then, for notify-reload, the reload
        signal and a wait for RELOADING=1 then READY=1."""
        cmds = self.unit.service.exec_reload
        if cmds:
            self._run_controls(cmds, State.RELOADING, self._reload_signal,  # type: ignore[attr-defined]
                               self._reload_failed)
        else:
            self._reload_signal()

    def _reload_signal(self) -> None:
        svc = self.unit.service
        if svc.type is not ServiceType.NOTIFY_RELOAD:
            self.reloads += 1
            self.last_reload = "success"
            self.host.info("unit.reloaded", unit=self.name, outcome="success")
            self._set_state(State.ACTIVE)
            return
        self.reload_t0_usec = time.monotonic_ns() // 1000
        self.reload_requested = True
        self.reload_seen = False
        self._set_state(State.RELOADING)
        if self.main_pid is not None:
            proc.kill_pid(self.main_pid, svc.reload_signal)
        self._arm(svc.timeouts.start, Event.TIMEOUT)

    def _reload_failed(self) -> None:
        self.reloads += 1
        self.last_reload = "failed"
        self.host.warning("unit.reloaded", unit=self.name, outcome="failed")
        self._set_state(State.ACTIVE)

    def active_reloading(self, usec: int | None = None) -> None:
        """An unsolicited RELOADING=1: a reload the service started itself."""
        self.reload_requested = False
        self.reload_seen = True
        self._set_state(State.RELOADING)
        self._arm(self.unit.service.timeouts.start, Event.TIMEOUT)

    def reloading_reloading(self, usec: int | None = None) -> None:
        """RELOADING=1 while we wait: it answers our signal only if stamped after it."""
        if not self.reload_requested or (usec is not None and usec >= self.reload_t0_usec):
            self.reload_seen = True

    def reloading_ready(self) -> None:
        """READY=1 ends the reload, if the RELOADING=1 that answers it came first."""
        if not self.reload_seen:
            return
        self._disarm()
        self.reloads += 1
        self.last_reload = "success"
        self.host.info("unit.reloaded", unit=self.name, outcome="success")
        self._set_state(State.ACTIVE)

    def reloading_timeout(self) -> None:
        """The reload did not finish in time; the service keeps running as it is."""
        self._kill_control()  # type: ignore[attr-defined]
        self.reloads += 1
        self.last_reload = "timeout"
        self.host.warning("unit.reloaded", unit=self.name, outcome="timeout")
        self._set_state(State.ACTIVE)

    # ------------------------------------------------------------ notify
    def effective_notify_access(self) -> NotifyAccess:
        return self.notify_access_override or self.unit.service.effective_notify_access()

    def set_main_pid(self, pid: int) -> None:
        """MAINPID=: the service says another process is its main one now."""
        if self.state in RUNNING_STATES and pid != self.main_pid:
            self.host.info("unit.mainpid", unit=self.name, old=self.main_pid, new=pid)
            self.main_pid = pid
            # A main process that is not our child never reaches our reaper:
            # the host watches it with a pidfd instead.
            self.host.watch_foreign(self, pid)  # type: ignore[arg-type]

