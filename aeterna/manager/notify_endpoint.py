"""The manager's end of sd_notify: receive, find the sender's unit, authorise, act.

One socket serves every unit (systemd does the same with /run/systemd/notify).
A datagram is matched to its unit, or to the relay standing for a canary
(N+1), through the pid index by its sender's process group: the main process
and each command lead a group of their own, so the usual sender is found
without a syscall. ``wire.notify.authorise`` decides; every dropped datagram
has its fds closed and is logged with its ``Rejection`` name.
"""

from __future__ import annotations

import os
from typing import Protocol

from ..linux.fds import close_fds, discard_fds
from ..linux.fdstore import FdStore
from ..linux.notify_socket import Datagram, NotifyReceiver
from ..log import Log
from ..model import NotifyAccess
from ..unit.pids import PidIndex
from ..unit.states import Event
from ..unit.watchdog import Notified
from ..wire.notify import NotifyMessage, Rejection, authorise

# Bound on datagrams handled per wake-up, so a flood cannot starve the loop.
_BATCH = 256


class NotifyTarget(Protocol):
    """What a datagram acts on: a unit, or a relay's canary."""

    notified: Notified
    fdstore: FdStore | None

    @property
    def name(self) -> str: ...
    @property
    def main_pid(self) -> int | None: ...
    @property
    def pgid(self) -> int | None: ...
    @property
    def command_pid(self) -> int | None: ...
    def effective_notify_access(self) -> NotifyAccess: ...
    def set_main_pid(self, pid: int) -> None: ...
    def set_watchdog_usec(self, usec: int) -> None: ...
    def extend_timeout(self, usec: int) -> None: ...
    def watchdog_ping(self) -> None: ...
    def dispatch(self, event: Event, **data: object) -> None: ...


class NotifyEndpoint:
    """Turns notify datagrams into events of the units they speak for."""

    def __init__(self, path: str, log: Log, pids: PidIndex, adopt_fd: int | None = None):
        self.receiver = (NotifyReceiver(path) if adopt_fd is None
                         else NotifyReceiver.adopt(path, adopt_fd))  # daemon-reexec
        self.path = path
        self.log = log
        self.pids = pids
        self.rejected: dict[str, int] = {}
        self.retired: set[int] = set()  # main pids of draining generations
        self.foreign: dict[int, NotifyTarget] = {}  # MAINPID= outside the unit's group
        self.accepted = 0

    def fileno(self) -> int:
        return self.receiver.fileno()

    def close(self) -> None:
        self.receiver.close()

    def drain(self) -> bool:
        """Handle queued datagrams; True if more may be waiting (batch limit hit)."""
        for _ in range(_BATCH):
            d = self.receiver.receive()
            if d is None:
                return False
            self._handle(d)
        return True

    def _reject(self, reason: Rejection, d: Datagram, **fields: object) -> None:
        discard_fds(d.fds)
        self.rejected[reason.value] = self.rejected.get(reason.value, 0) + 1
        self.log.warning("notify.dropped", reason=reason.value, pid=d.pid, fds=d.n_fds, **fields)

    def find(self, pid: int) -> tuple[NotifyTarget | None, int | None]:
        """(the unit or canary ``pid`` speaks for, ``pid``'s process group)."""
        groups = self.pids.groups
        target = groups.get(pid)  # a group leader: main process, command, canary
        if target is not None:
            return target, pid
        foreign = self.foreign.get(pid)
        if foreign is not None:
            if foreign.main_pid == pid:
                return foreign, None
            del self.foreign[pid]
        pgid = _pgid(pid)
        return (groups.get(pgid) if pgid is not None else None), pgid

    def _handle(self, d: Datagram) -> None:
        if d.rejection is not None or d.message is None or d.pid is None:
            self._reject(d.rejection or Rejection.NO_CREDENTIALS, d)
            return
        msg = d.message
        if msg.barrier:
            close_fds(d.fds)  # closing the fd is the acknowledgement
            return
        target, pgid = self.find(d.pid)
        if target is None:
            if d.pid in self.retired:
                # A draining generation saying STOPPING=1 (or anything else): it no
                # longer speaks for its unit, but it is not a stranger either.
                close_fds(d.fds)
                self.log.debug("notify.retired", pid=d.pid)
                return
            self._reject(Rejection.UNKNOWN_SENDER, d)
            return
        access = target.effective_notify_access()
        group = {d.pid} if pgid is not None and pgid == target.pgid else set()
        commands = {target.command_pid} if target.command_pid is not None else set()
        if not authorise(access, d.pid, target.main_pid, commands, group):
            self._reject(Rejection.NOT_AUTHORISED, d, unit=target.name, access=access.value)
            return
        self.accepted += 1
        self._apply(target, msg, d.fds, d.uid == 0)

    def _apply(self, t: NotifyTarget, msg: NotifyMessage, fds: list[int], root: bool) -> None:
        """Act on one authorised message; STOPPING/RELOADING before READY, as systemd."""
        said = t.notified
        if msg.notifyaccess is not None:
            said.access = msg.notifyaccess
        if msg.mainpid is not None:
            refused = self._refuse_main_pid(t, msg.mainpid, root)
            if refused is None:
                t.set_main_pid(msg.mainpid)
            else:
                self.log.warning("notify.mainpid-refused", unit=t.name, pid=msg.mainpid,
                                 reason=refused)
        if msg.status is not None:
            said.status = msg.status
        if msg.errno is not None:
            said.errno = msg.errno
        if msg.exit_status is not None:
            said.exit_status = msg.exit_status
        if msg.fdstore and fds:
            self._store(t, msg, fds)
        discard_fds(fds)  # fds sent with a message that takes none
        if msg.fdstoreremove and msg.fdname is not None and t.fdstore is not None:
            n = t.fdstore.remove_name(msg.fdname)
            self.log.info("fdstore.removed", unit=t.name, name=msg.fdname, count=n)
        if msg.watchdog_usec is not None:
            t.set_watchdog_usec(msg.watchdog_usec)
        if msg.extend_timeout_usec is not None:
            t.extend_timeout(msg.extend_timeout_usec)
        if msg.stopping:
            said.stopping = True
            self.log.info("unit.notify", unit=t.name, stopping=1)
            return  # STOPPING overrides READY/RELOADING in the same message
        if msg.reloading:
            t.dispatch(Event.RELOADING, usec=msg.monotonic_usec)
        if msg.ready:
            t.dispatch(Event.READY)
        if msg.watchdog_trigger:
            t.dispatch(Event.WATCHDOG)
        elif msg.watchdog_ping:
            t.watchdog_ping()

    def _refuse_main_pid(self, t: NotifyTarget, pid: int, root: bool) -> str | None:
        """Why ``MAINPID=pid`` may not be believed, or None (systemd refuses the same).

        The manager would otherwise watch, signal and kill that pid as the unit's:
        itself (a watchdog SIGABRT, a stop's SIGKILL), init, a dead pid (the unit
        stays "active" and its real crash goes unseen), another unit's process.
        A sender not running as root may only name a process of its own group.
        """
        if pid <= 1 or pid == os.getpid():
            return "the manager or init"
        owner = self.pids.mains.get(pid)
        if owner is not None and owner is not t and pid != t.main_pid:
            return "another unit's main process"
        pgid = _pgid(pid)
        if pgid is None:
            return "no such process"
        if pgid == os.getpgrp():
            return "the manager's process group"
        group_owner = self.pids.groups.get(pgid)
        if group_owner is not None and group_owner is not t:
            return "another unit's process"
        if not root and pgid != t.pgid:
            return "not in the unit's process group (the sender is not root)"
        return None

    def _store(self, t: NotifyTarget, msg: NotifyMessage, fds: list[int]) -> None:
        """FDSTORE=1: the store takes the fds (and empties ``fds``), or they are closed."""
        if t.fdstore is None or t.fdstore.maximum <= 0:
            self.log.warning("fdstore.refused", unit=t.name, reason="fd_store_max=0",
                             fds=len(fds))
            close_fds(fds)
            return
        # systemd names a stored fd "stored" only when FDNAME= is missing;
        # an empty FDNAME= stays empty.
        name = "stored" if msg.fdname is None else msg.fdname
        for fd in fds:
            outcome = t.fdstore.add(fd, name, msg.fdpoll)
            self.log.info("fdstore.add", unit=t.name, name=name, outcome=outcome)
        fds.clear()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None

