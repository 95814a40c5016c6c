"""Classified results: one name per outcome, shared by logs, the CLI and metrics.

Like systemd's ``SERVICE_RESULT`` strings, each value is the exact text that
appears in a log line (``result=exit-code``), in ``aeterna status`` and as a
metric label. Record only the first failure of a run.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import os
import signal
from dataclasses import dataclass


class Result(enum.Enum):
    SUCCESS = "success"
    EXIT_CODE = "exit-code"
    SIGNAL = "signal"
    CORE_DUMP = "core-dump"
    TIMEOUT = "timeout"
    WATCHDOG = "watchdog"
    START_LIMIT = "start-limit-hit"
    EXEC = "exec"  # the program could not be executed (missing, permission)
    DEPENDENCY = "dependency"
    PROTOCOL = "protocol"  # e.g. Type=notify exited 0 before READY=1
    RESOURCES = "resources"  # could not set up what the process needs (sockets, user)
    ASSERT = "assert"  # an Assert*= did not hold (systemd's job result of that name)


# Exit codes of the aeterna command itself, in one place.
EXIT_OK = 0
EXIT_FAILED = 1  # an action failed, or a unit failed
EXIT_USAGE = 2  # bad unit files or bad command line
EXIT_UNREACHABLE = 3  # no manager listening on the control socket
EXIT_EXEC_NOT_FOUND = 127
EXIT_EXEC_DENIED = 126


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended, decoded from a wait status."""

    code: int | None = None
    signal: int | None = None
    core: bool = False

    @classmethod
    def from_status(cls, status: int) -> ExitInfo:
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status), core=os.WCOREDUMP(status))
        if os.WIFEXITED(status):
            return cls(code=os.WEXITSTATUS(status))
        return cls(code=255)

    @property
    def shell_status(self) -> int:
        """The status a shell (and tini) reports: the code, or 128+N for signal N."""
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code is not None else 255

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"signal={name}" + (" (core dumped)" if self.core else "")
        return f"status={self.code}"


def errno_name(err: int) -> str:
    """``ENOENT`` for 2: the name logs and errors use for an errno."""
    return errno_mod.errorcode.get(err, str(err))
