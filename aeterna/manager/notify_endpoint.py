"""The manager's end of sd_notify: receive, find the unit, authorise, act.

Targets are unit runtimes and, during a hot relay, the relay standing for its
canary (N+1): both expose the same small surface (main_pid, pgid, dispatch,
status_text, ...). One ``NotifyReceiver`` socket serves every unit (systemd does the same with
/run/systemd/notify). A datagram is matched to a unit by its sender's pid: the
unit's main pid, or any process of the unit's process group for
``NotifyAccess=all``. ``notify.authorise`` decides; every dropped datagram has
its fds closed and is logged with its ``Rejection`` name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..linux.fds import close_fds
from ..linux.notify_socket import Datagram, NotifyReceiver
from ..model import NotifyAccess
from ..unit.runtime import Event
from ..wire.notify import NotifyMessage, Rejection, authorise

if TYPE_CHECKING:
    from ..log import Log

# Bound on datagrams handled per wake-up, so a flood cannot starve the loop.
_BATCH = 256


class NotifyEndpoint:
    """Turns notify datagrams into unit events."""

    def __init__(self, path: str, log: Log):
        self.receiver = NotifyReceiver(path)
        self.path = path
        self.log = log
        self.rejected: dict[str, int] = {}
        self.retired: set[int] = set()  # main pids of draining generations
        self.accepted = 0

    def fileno(self) -> int:
        return self.receiver.fileno()

    def close(self) -> None:
        self.receiver.close()

    def drain(self, units: Iterable[Any]) -> bool:
        """Handle queued datagrams; True if more may be waiting (batch limit hit)."""
        runtimes = list(units)
        for _ in range(_BATCH):
            d = self.receiver.receive()
            if d is None:
                return False
            self._handle(d, runtimes)
        return True

    def _reject(self, reason: Rejection, d: Datagram, **fields: object) -> None:
        close_fds(d.fds)
        self.rejected[reason.value] = self.rejected.get(reason.value, 0) + 1
        self.log.warning("notify.dropped", reason=reason.value, pid=d.pid, fds=d.n_fds, **fields)

    def _handle(self, d: Datagram, runtimes: list[Any]) -> None:
        if d.rejection is not None or d.message is None or d.pid is None:
            self._reject(d.rejection or Rejection.NO_CREDENTIALS, d)
            return
        msg = d.message
        if msg.barrier:
            close_fds(d.fds)  # closing the fd is the acknowledgement
            return
        runtime = _find_unit(d.pid, runtimes)
        if runtime is None:
            if d.pid in self.retired:
                # A draining generation saying STOPPING=1 (or anything else): it no
                # longer speaks for its unit, but it is not a stranger either.
                close_fds(d.fds)
                self.log.debug("notify.retired", pid=d.pid)
                return
            self._reject(Rejection.UNKNOWN_SENDER, d)
            return
        access = runtime.effective_notify_access()
        # Group membership only matters for NotifyAccess=all: spare the syscall.
        group = ({d.pid} if access is NotifyAccess.ALL and _in_group(d.pid, runtime.pgid)
                 else set())
        control = getattr(runtime, "control_pid", None)
        controls = {control} if control is not None else set()
        if not authorise(access, d.pid, runtime.main_pid, controls, group):
            self._reject(Rejection.NOT_AUTHORISED, d, unit=runtime.name, access=access.value)
            return
        self.accepted += 1
        self._apply(runtime, msg, d.fds, d.uid == 0)

    def _apply(self, r: Any, msg: NotifyMessage, fds: list[int], root: bool) -> None:
        """Act on one authorised message; STOPPING/RELOADING before READY, as systemd."""
        if msg.notifyaccess is not None:
            r.notify_access_override = msg.notifyaccess
        if msg.mainpid is not None and (root or _in_group(msg.mainpid, r.pgid)):
            r.set_main_pid(msg.mainpid)
        if msg.status is not None:
            r.status_text = msg.status
        if msg.errno is not None:
            r.errno = msg.errno
        if msg.exit_status is not None:
            r.notified_exit_status = msg.exit_status
        if msg.fdstore and fds:
            self._store(r, msg, fds)
            fds = []
        close_fds(fds)
        if msg.fdstoreremove and msg.fdname is not None and r.fdstore is not None:
            n = r.fdstore.remove_name(msg.fdname)
            self.log.info("fdstore.removed", unit=r.name, name=msg.fdname, count=n)
        if msg.watchdog_usec is not None:
            r.set_watchdog_usec(msg.watchdog_usec)
        if msg.extend_timeout_usec is not None:
            r.extend_timeout(msg.extend_timeout_usec)
        if msg.stopping:
            r.stopping_notified = True
            self.log.info("unit.notify", unit=r.name, stopping=1)
            return  # STOPPING overrides READY/RELOADING in the same message
        if msg.reloading:
            r.dispatch(Event.RELOADING, usec=msg.monotonic_usec)
        if msg.ready:
            r.dispatch(Event.READY)
        if msg.watchdog_trigger:
            r.dispatch(Event.WATCHDOG)
        elif msg.watchdog_ping:
            r.watchdog_ping()

    def _store(self, r: Any, msg: NotifyMessage, fds: list[int]) -> None:
        if r.fdstore is None or r.fdstore.maximum <= 0:
            self.log.warning("fdstore.refused", unit=r.name, reason="fd_store_max=0",
                             fds=len(fds))
            close_fds(fds)
            return
        for fd in fds:
            # systemd names a stored fd "stored" only when FDNAME= is missing;
            # an empty FDNAME= stays empty.
            name = "stored" if msg.fdname is None else msg.fdname
            outcome = r.fdstore.add(fd, name, msg.fdpoll)
            self.log.info("fdstore.add", unit=r.name, name=name,
                          outcome=outcome)
        fds.clear()


def _find_unit(pid: int, runtimes: list[Any]) -> Any:
    """The unit (or a relay's canary) that ``pid`` speaks for: its main process
    first, then any member of its process group."""
    for r in runtimes:
        if r.main_pid == pid or getattr(r, "control_pid", None) == pid:
            return r
    for r in runtimes:
        if r.pgid is not None and _in_group(pid, r.pgid):
            return r
    return None


def _in_group(pid: int, pgid: int | None) -> bool:
    if pgid is None:
        return False
    try:
        return os.getpgid(pid) == pgid
    except OSError:
        return False


def wants_notify_socket(access: NotifyAccess) -> bool:
    """systemd gives NOTIFY_SOCKET to the main process iff NotifyAccess is not none."""
    return access is not NotifyAccess.NONE
