"""Processes by pid: the one reaper, signals, and what /proc says of them.

There is one reaper in the whole manager: :func:`reap` loops
``waitpid(-1, WNOHANG)`` until nothing is left, and the manager dispatches each
status by pid. Orphans re-parented to us (as PID 1, or as a child subreaper)
come back through the same loop and are simply counted.
"""

from __future__ import annotations

import os

from ..results import ExitInfo


def reap() -> list[tuple[int, ExitInfo]]:
    """Collect every exited child, orphans included; never blocks."""
    out: list[tuple[int, ExitInfo]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        if pid == 0:
            break
        out.append((pid, ExitInfo.from_status(status)))
    return out


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def kill_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
