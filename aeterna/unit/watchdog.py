"""What a service says of itself over sd_notify, and its watchdog countdown.

Both belong to one run of one process (a unit's main process, or a relay's
canary) and start afresh with it. The watchdog is a timer of its own beside
the unit's state timer: ``WATCHDOG=1`` re-arms it, ``WATCHDOG_USEC=`` changes
it, ``EXTEND_TIMEOUT_USEC=`` pushes it out, and its expiry calls back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..model import NotifyAccess


class Timer(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], Timer]


@dataclass
class Notified:
    """What the process said over sd_notify since it started (reset at each start)."""

    status: str = ""  # STATUS=
    errno: int | None = None  # ERRNO=
    exit_status: int | None = None  # EXIT_STATUS=
    stopping: bool = False  # STOPPING=1
    access: NotifyAccess | None = None  # NOTIFYACCESS= overrides the unit's setting
    watchdog_usec: int | None = None  # WATCHDOG_USEC= overrides WatchdogSec=


class Watchdog:
    """One process's watchdog: armed while it runs, ``expired()`` when it lapses."""

    def __init__(self, call_later: CallLater, expired: Callable[[], None]):
        self._call_later = call_later
        self._expired = expired
        self._timer: Timer | None = None
        self.deadline = 0.0  # monotonic

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, usec: int) -> None:
        """(Re)start the countdown from now; 0 disarms."""
        self.disarm()
        if usec > 0:
            self.arm_for(usec / 1e6)

    def arm_for(self, delay: float) -> None:
        self.disarm()
        self.deadline = time.monotonic() + delay
        self._timer = self._call_later(delay, self._fire)

    def extend_to(self, deadline: float) -> None:
        """EXTEND_TIMEOUT_USEC=: never lapse before ``deadline`` (monotonic)."""
        if self._timer is not None and deadline > self.deadline:
            self.arm_for(deadline - time.monotonic())

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._expired()


def watchdog_usec(notified: Notified, watchdog_sec: float) -> int:
    """The timeout in force: ``WATCHDOG_USEC=`` if the process sent one, else the unit's."""
    if notified.watchdog_usec is not None:
        return notified.watchdog_usec
    return int(watchdog_sec * 1e6)

