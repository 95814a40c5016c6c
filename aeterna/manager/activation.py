"""On-demand activation: a down unit's listeners are watched, and their first
connection or datagram starts it, as systemd's socket units do.

The manager arms a unit that the user stopped (``aeterna stop``, ``systemctl
stop``) or that says ``on_demand: true`` (never started at boot). Nothing is
accepted or read here: the connection waits in the kernel's accept queue
(backlog 4096 by default) and the unit's process accepts it once started, so
a burst of first connections is served, none refused. A unit that failed, or
ended by itself, is not armed: ``reset-failed`` or ``start`` it (a crash loop
would otherwise be woken by every client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..log import Log
from ..unit.runtime import UnitRuntime


class Activation:
    """The set of armed units and their epoll registrations."""

    def __init__(self, log: Log, start: Callable[[UnitRuntime], None]):
        self.log = log
        self.start = start  # called once, on the first event, with the unit disarmed
        self.armed: set[UnitRuntime] = set()

    def arm(self, runtime: UnitRuntime) -> None:
        if runtime in self.armed:
            return
        fds = [lst.fd for lst in runtime.listeners if lst.fd >= 0]
        if not fds:
            return
        loop = asyncio.get_running_loop()
        for fd in fds:
            loop.add_reader(fd, self._fire, runtime)
        self.armed.add(runtime)
        self.log.info("unit.waiting-for-connection", unit=runtime.name, sockets=len(fds))

    def disarm(self, runtime: UnitRuntime) -> None:
        if runtime not in self.armed:
            return
        self.armed.discard(runtime)
        loop = asyncio.get_running_loop()
        for lst in runtime.listeners:
            if lst.fd >= 0:
                loop.remove_reader(lst.fd)

    def disarm_all(self) -> None:
        for runtime in list(self.armed):
            self.disarm(runtime)

    def _fire(self, runtime: UnitRuntime) -> None:
        # epoll is level-triggered here: stop watching first, or every turn of the
        # loop until the process accepts would call us again.
        self.disarm(runtime)
        self.log.info("unit.activated", unit=runtime.name, by="socket")
        self.start(runtime)
