"""Pure restart policy: what counts as clean, whether to restart, and when.

These are the decisions systemd documents for ``Restart=``, ``RestartSec=``,
``RestartSteps=`` and ``StartLimitBurst=``, kept free of I/O so they can be
tested exhaustively.
"""

from __future__ import annotations

import signal
from collections import deque

from ..model import Backoff, RestartPolicy, ServiceType, StartLimit
from ..results import ExitInfo, Result

_CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})


def classify_exit(info: ExitInfo, type_: ServiceType,
                  success_exit_status: tuple[int, ...] = (),
                  success_exit_signals: tuple[int, ...] = ()) -> Result:
    """SUCCESS for a clean exit: code 0 (or a listed code or signal), or for non-oneshot
    services one of SIGHUP/SIGINT/SIGTERM/SIGPIPE; otherwise the failure kind."""
    if info.signal is not None:
        if info.signal in success_exit_signals:
            return Result.SUCCESS
        if type_ is not ServiceType.ONESHOT and info.signal in _CLEAN_SIGNALS:
            return Result.SUCCESS
        return Result.CORE_DUMP if info.core else Result.SIGNAL
    if info.code == 0 or info.code in success_exit_status:
        return Result.SUCCESS
    return Result.EXIT_CODE


def exit_matches(info: ExitInfo, statuses: tuple[int | str, ...]) -> bool:
    """Is this exit in a RestartPreventExitStatus=/RestartForceExitStatus= list
    (exit codes as ints, signals by name)?"""
    if info.signal is not None:
        try:
            name = signal.Signals(info.signal).name
        except ValueError:
            return False
        return name in statuses
    return info.code is not None and info.code in statuses


def should_restart(policy: RestartPolicy, result: Result) -> bool:
    """systemd's table of which results each ``Restart=`` value restarts on."""
    if policy is RestartPolicy.NO:
        return False
    if policy is RestartPolicy.ALWAYS:
        return result is not Result.START_LIMIT
    if policy is RestartPolicy.ON_SUCCESS:
        return result is Result.SUCCESS
    if policy is RestartPolicy.ON_FAILURE:
        return result in (Result.EXIT_CODE, Result.SIGNAL, Result.CORE_DUMP, Result.TIMEOUT,
                          Result.WATCHDOG, Result.EXEC, Result.PROTOCOL)
    if policy is RestartPolicy.ON_ABNORMAL:
        return result in (Result.SIGNAL, Result.CORE_DUMP, Result.TIMEOUT, Result.WATCHDOG)
    if policy is RestartPolicy.ON_ABORT:
        return result in (Result.SIGNAL, Result.CORE_DUMP)
    if policy is RestartPolicy.ON_WATCHDOG:
        return result is Result.WATCHDOG
    return False


def restart_delay(restart_sec: float, backoff: Backoff, attempt: int) -> float:
    """Delay before restart number ``attempt`` (0-based): restart_sec * factor**attempt,
    capped at ``backoff.max_delay`` when that is set."""
    delay = restart_sec * (backoff.factor ** max(0, attempt))
    if backoff.max_delay > 0:
        delay = min(delay, backoff.max_delay)
    return max(0.0, delay)


class StartLimiter:
    """At most ``burst`` starts within ``interval`` seconds (systemd's StartLimit*)."""

    def __init__(self, limit: StartLimit):
        self.limit = limit
        self._starts: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a start at ``now`` if the limit permits it; False if it is hit."""
        if self.limit.burst <= 0 or self.limit.interval <= 0:
            return True
        while self._starts and now - self._starts[0] >= self.limit.interval:
            self._starts.popleft()
        if len(self._starts) >= self.limit.burst:
            return False
        self._starts.append(now)
        return True

    def reset(self) -> None:
        self._starts.clear()
