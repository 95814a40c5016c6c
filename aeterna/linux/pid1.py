"""PID 1 duties: become a subreaper, pick the signals to forward, keep fds and memory tidy.

The reaper itself is :func:`aeterna.linux.proc.reap`.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_CHILD_SUBREAPER = 36

# Signals that stop the manager, that it forwards to main processes, and reload.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
FORWARD_SIGNALS = (signal.SIGUSR1, signal.SIGWINCH)
REEXEC_SIGNAL = signal.SIGUSR2  # daemon-reexec, not forwarded (docs/reexec.md)
RELOAD_SIGNAL = signal.SIGHUP


def quiet_wakeup_fd(loop: object) -> None:
    """Keep the signal wakeup fd asyncio installed, minus the warning when it is full.

    A thousand children exiting at once send a thousand SIGCHLDs while the loop
    is busy; once the wakeup socket's buffer is full, Python prints a traceback
    for every further byte it cannot write. Those bytes only wake the loop, which
    is awake already, and one reaping pass collects every child, so a full buffer
    loses nothing.
    """
    # The loop's end of its self-pipe (asyncio's unix loop names it _csock): set
    # again in one call, so that no signal can fall into a gap with no wakeup fd.
    csock = getattr(loop, "_csock", None)
    if csock is not None:
        signal.set_wakeup_fd(csock.fileno(), warn_on_full_buffer=False)


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


def raise_fd_limit() -> int | None:
    """Raise our soft RLIMIT_NOFILE to the hard limit, as systemd does for itself.

    Each unit costs the manager a few fds (output pipes, listeners, SRP
    channels), so thousands of units need more than the usual 1024. Children
    must not inherit the raised limit: a program that select()s breaks on an
    fd above 1024, which is why systemd hands services the soft limit of 1024.
    Returns the soft limit we were started with, if it was raised.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return None
    return soft
