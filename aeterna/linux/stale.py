"""What a dead manager left running: identify its processes exactly, and stop them.

A pid alone is not a process: after the manager died, a pid it recorded may
have been reused by something unrelated. A process is identified by its pid
and its start time (``/proc/PID/stat`` field 22, clock ticks since boot),
which no later process with the same pid can share.
"""

from __future__ import annotations

import os
import select
import signal
import time

from .proc import kill_group, kill_pid


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def same_process(pid: int, started: int) -> bool:
    return pid > 1 and start_time(pid) == started


def stop(pid: int, pgid: int | None, sig: int, timeout: float) -> str:
    """Stop a process that is not our child: ``sig`` to its group (or itself), then
    SIGKILL after ``timeout``. Its exit is seen through a pidfd (we cannot wait for
    it). Returns how it ended: "stopped", "killed" or "gone"."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return "gone"
    try:
        target_group = pgid is not None and pgid == pid
        for s, how in ((sig, "stopped"), (signal.SIGKILL, "killed")):
            sent = kill_group(pid, s) if target_group else kill_pid(pid, s)
            if not sent:
                return "gone"
            if s != signal.SIGKILL:
                (kill_group if target_group else kill_pid)(pid, signal.SIGCONT)
            wait = min(timeout, 90.0) if s != signal.SIGKILL else 5.0
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([pidfd], [], [], left)
                if ready:
                    if target_group:  # and what is left of its group
                        kill_group(pid, signal.SIGKILL)
                    return how
        return "killed"
    finally:
        os.close(pidfd)
