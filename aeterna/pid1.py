"""PID 1 duties: reap every child, become a subreaper, and pick signals to forward.

There is one reaper in the whole manager: ``reap()`` loops ``waitpid(-1, WNOHANG)``
until nothing is left, and the manager dispatches each status by pid. Orphans
re-parented to us (as PID 1, or as a child subreaper) come back through the same
loop and are simply counted.
"""

from __future__ import annotations

import ctypes
import os
import signal

from .results import ExitInfo

PR_SET_CHILD_SUBREAPER = 36

# Signals that stop the manager, that it forwards to main processes, and reload.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
FORWARD_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
RELOAD_SIGNAL = signal.SIGHUP


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


def is_pid1() -> bool:
    return os.getpid() == 1


def set_subreaper() -> bool:
    """Ask the kernel to re-parent our orphaned descendants to us (Linux >= 3.4).

    Without this, the orphans of a daemonizing child go to the real PID 1 and
    we could neither reap nor account for them.
    """
    try:
        # CDLL(None) is the running program with libc's symbols; ctypes.util's
        # find_library would pull in subprocess, shutil and tempfile for nothing.
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        return False


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


def trim_memory() -> None:
    """Give freed heap pages back to the kernel (glibc's malloc_trim); best effort."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def no_inherited_fds() -> None:
    """Mark every fd we were started with (above stdio) close-on-exec.

    The fast spawn path relies on "every fd of the manager is CLOEXEC" instead
    of closing all fds in the child; fds inherited from whoever started us are
    the only ones Python did not create that way.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the fd of the listdir itself, closed meanwhile


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
