"""Generation N+1 on trial: the process a relay started, as sd_notify sees it.

While the relay runs, the canary's datagrams (READY=1, WATCHDOG=1, STATUS=...)
reach this object, not the unit: N is still the unit's main process. Its
process group is in the pid index for that time, and its exit is watched by
the relay. On promotion the unit adopts its pid and what it said.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..linux.fdstore import FdStore
from ..model import NotifyAccess, ServiceType, UnitSpec
from ..results import ExitInfo
from ..unit.runtime import UnitRuntime
from ..unit.states import Event
from ..unit.watchdog import Notified, Watchdog, watchdog_usec
from .host import RelayHost
from .outcome import Reason, RelayFailed


class Canary:
    """N+1's main process while its relay runs."""

    command_pid: int | None = None  # a canary runs no ExecStartPre=-style commands

    def __init__(self, host: RelayHost, runtime: UnitRuntime, spec: UnitSpec,
                 fail: Callable[[RelayFailed], None]):
        self.host = host
        self.spec = spec
        self.name = runtime.name
        self.fdstore: FdStore | None = runtime.fdstore
        self.notified = Notified()
        self.main_pid: int | None = None
        self.pgid: int | None = None
        self._fail = fail
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[ExitInfo] = loop.create_future()
        self.watchdog = Watchdog(host.call_later,
                                 lambda: fail(RelayFailed(Reason.WATCHDOG, "watchdog expired")))

    def started(self, pid: int) -> None:
        self.main_pid = self.pgid = pid
        self.host.pids.group(self, None, pid)
        if self.spec.service.type in (ServiceType.SIMPLE, ServiceType.EXEC):
            self.ready.set_result(None)

    def retire(self) -> None:
        """Stopped (rolled back) or promoted: it no longer speaks as a canary."""
        self.watchdog.disarm()
        self.host.pids.group(self, self.pgid, None)

    def exited(self, info: ExitInfo) -> None:
        """The reaper found N+1's main process gone."""
        if not self.gone.done():
            self.gone.set_result(info)

    # ------------------------------------------------------------ what sd_notify drives
    def dispatch(self, event: Event, **_: object) -> None:
        """The unit events that sd_notify produces, applied to N+1."""
        if event is Event.READY and not self.ready.done():
            self.ready.set_result(None)
        elif event is Event.WATCHDOG:
            self._fail(RelayFailed(Reason.WATCHDOG, "WATCHDOG=trigger"))

    def effective_notify_access(self) -> NotifyAccess:
        return self.notified.access or self.spec.service.effective_notify_access()

    def set_main_pid(self, pid: int) -> None:
        """MAINPID= from a canary is not honoured: it would escape the rollback."""

    def extend_timeout(self, usec: int) -> None:
        """The relay's own timeouts are not extended by the canary."""

    def set_watchdog_usec(self, usec: int) -> None:
        self.notified.watchdog_usec = usec
        self.watchdog.arm(usec)

    def watchdog_ping(self) -> None:
        self.watchdog.arm(watchdog_usec(self.notified, self.spec.service.watchdog_sec))
