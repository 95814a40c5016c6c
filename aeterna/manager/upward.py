"""sd_notify upward: what Aeterna tells the systemd (or other parent) that started it.

When Aeterna is itself a ``Type=notify`` service, systemd gave it
``NOTIFY_SOCKET`` (and ``WATCHDOG_USEC`` with ``WatchdogSec=``). It sends:

- ``READY=1`` once every unit has been asked to start and none is still on its
  way up (each is active, exited, failed or waiting to restart);
- ``RELOADING=1`` (with ``MONOTONIC_USEC=``, as ``Type=notify-reload`` wants) when
  a reload begins, and ``READY=1`` once its relays have an outcome;
- ``STATUS=`` with a one-line summary of the units, whenever it changes;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC``, from a timer of the event loop:
  a loop that is stuck stops the pings, and systemd restarts Aeterna;
- ``STOPPING=1`` when it begins to stop its units.

The variables are read once, at start; the manager never passes them on to
its units (``manager._PRIVATE_ENV``): they get Aeterna's own notify socket.
Sends never block (a full or gone socket drops the message), as libsystemd's.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping

from ..log import Log
from ..unit.states import State

# A unit in one of these is still coming up: READY=1 waits for it.
_COMING_UP = frozenset({State.WAITING, State.START_PRE, State.STARTING, State.START_POST})


def summary(states: Iterable[State]) -> str:
    """``3 units: 2 active, 1 failed`` (states in a fixed order, zero counts left out)."""
    counts: dict[str, int] = {}
    n = 0
    for s in states:
        n += 1
        counts[s.value] = counts.get(s.value, 0) + 1
    order = [s.value for s in State]
    parts = [f"{counts[k]} {k}" for k in order if k in counts]
    head = f"{n} unit" + ("" if n == 1 else "s")
    return head + (": " + ", ".join(parts) if parts else "")


def coming_up(states: Iterable[State]) -> bool:
    return any(s in _COMING_UP for s in states)


class Upward:
    """The datagrams to our own parent's ``NOTIFY_SOCKET``; inert without one."""

    def __init__(self, address: str | bytes, log: Log, watchdog_usec: int = 0):
        self.address = address
        self.log = log
        self.watchdog_usec = watchdog_usec
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec
        self.sock.setblocking(False)
        self.ready = False
        self.reloads = 0  # reloads in progress (READY=1 again when the last one ends)
        self._status = ""
        self._cancel: Callable[[], None] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], log: Log) -> Upward | None:
        """From systemd's variables, or None when nobody listens above us."""
        path = env.get("NOTIFY_SOCKET", "")
        if not path or path[0] not in "/@":
            return None
        address: str | bytes = ("\0" + path[1:]).encode() if path[0] == "@" else path
        usec = 0
        wd_pid = env.get("WATCHDOG_PID", "")
        if not wd_pid or wd_pid == str(os.getpid()):  # the watchdog is ours, not a parent's
            try:
                usec = max(0, int(env.get("WATCHDOG_USEC", "0")))
            except ValueError:
                usec = 0
        return cls(address, log, usec)

    # ------------------------------------------------------------ sending
    def send(self, *fields: str) -> bool:
        msg = "\n".join(fields).encode()
        try:
            self.sock.sendto(msg, self.address)
            return True
        except OSError as exc:
            # Nobody reads (the parent is gone or busy): systemd would time us
            # out; blocking the loop on it would only make that worse.
            self.log.warning("manager.notify-failed", error=exc.strerror or str(exc),
                             message=fields[0])
            return False

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    # ---------------------------------------------------------- lifecycle
    def booted(self, states: Callable[[], Iterable[State]]) -> bool:
        """After every change of the boot: READY=1 once nothing is coming up."""
        if self.ready:
            return True
        if coming_up(states()):
            return False
        self.ready = True
        self._status = summary(states())
        self.send("READY=1", f"STATUS={self._status}", f"MAINPID={os.getpid()}")
        self.log.info("manager.ready", notified="systemd", status=self._status)
        return True

    def reloading(self) -> None:
        self.reloads += 1
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")
        self._status = "reloading"

    def reloaded(self, status: str) -> None:
        self.reloads = max(0, self.reloads - 1)
        if self.reloads == 0:
            self._status = status
            self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        # The pings go on: the loop is still what drains the units.
        self._status = status
        self.send("STOPPING=1", f"STATUS={status}")

    # ----------------------------------------------------------- watchdog
    def start_watchdog(self, call_later: Callable[[float, Callable[[], None]], object],
                       status: Callable[[], str]) -> None:
        """Ping every half period from the loop's own timer; each ping also refreshes
        STATUS= if the units' summary changed."""
        if not self.watchdog_usec:
            return
        period = self.watchdog_usec / 2e6
        stopped = False

        def tick() -> None:
            if stopped:
                return
            self.send("WATCHDOG=1")
            if self.ready and not self.reloads:
                self.status(status())
            call_later(period, tick)

        def cancel() -> None:
            nonlocal stopped
            stopped = True

        self._cancel = cancel
        tick()

    def stop_watchdog(self) -> None:
        if self._cancel is not None:
            self._cancel()
            self._cancel = None

    def close(self) -> None:
        self.stop_watchdog()
        self.sock.close()
