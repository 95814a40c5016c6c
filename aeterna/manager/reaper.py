"""The one reaper: every child's exit, to whoever it concerns.

``waitpid(-1)`` until nothing is left (``linux.proc.reap``), then each status
goes to the unit whose main process it was (the pid index), or to the
callback watching that pid (canaries, draining generations, commands, hooks,
probes); anything else is an orphan re-parented to us, and counted. A main
process named by ``MAINPID=`` that is not our child is watched by pidfd.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from ..linux import proc
from ..log import Log
from ..results import ExitInfo
from ..unit.pids import PidIndex
from ..unit.runtime import UnitRuntime
from ..unit.states import Event

ExitCallback = Callable[[ExitInfo], None]


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop, log: Log, pids: PidIndex):
        self.loop = loop
        self.log = log
        self.pids = pids
        self.watched: dict[int, ExitCallback] = {}
        self.orphans = 0

    def watch(self, pid: int, callback: ExitCallback) -> None:
        self.watched[pid] = callback

    def unwatch(self, pid: int) -> None:
        self.watched.pop(pid, None)

    def reap(self) -> None:
        """Collect every exited child and tell whom it concerns."""
        mains = self.pids.mains
        for pid, info in proc.reap():
            runtime = mains.get(pid)
            callback = self.watched.pop(pid, None)
            if runtime is not None and runtime.main_pid == pid:
                runtime.dispatch(Event.EXITED, info=info)
            elif callback is not None:
                callback(info)
            else:
                self.orphans += 1

    def watch_foreign(self, unit: UnitRuntime, pid: int) -> None:
        """MAINPID= named a process whose parent is not us: notice its exit by pidfd.

        systemd cannot always tell either; it finishes such a service when its
        cgroup empties. A pidfd gets readable when the process exits, whoever
        its parent is; we then treat the exit as clean (its status is not ours).
        """
        if proc.parent_of(pid) == os.getpid():
            return  # our child (an adopted orphan): reap() reports it
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        loop = self.loop

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            if unit.main_pid == pid:
                self.log.info("unit.mainpid-exited", unit=unit.name, pid=pid,
                              how="not our child; status unknown")
                unit.dispatch(Event.EXITED, info=ExitInfo(code=0))
                unit.check_group()

        loop.add_reader(fd, exited)
