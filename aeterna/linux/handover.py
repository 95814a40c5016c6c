"""The kernel side of ``daemon-reexec``: the state's sealed memfd, the check child, ``exec``.

Every fd of the manager is close-on-exec; ``exec_keeping`` clears the flag on
exactly the fds the state names (and the state's memfd), so the new manager
starts with those and nothing else, under the same numbers. The new manager
sets them close-on-exec again at once (``pid1.no_inherited_fds``).
"""

from __future__ import annotations

import fcntl
import os
import sys

from . import memfd

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
CHECK_OUTPUT_MAX = 16 * 1024  # what a refusing binary says is cut here


def seal_state(data: bytes) -> int:
    """A close-on-exec memfd holding ``data``, sealed against any change."""
    fd = memfd.create("aeterna-state", len(data))
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_state(fd: int, limit: int) -> bytes:
    """The whole content of the state memfd ``fd`` (refused if not sealed for writing:
    a state someone could still change is not one to trust)."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        raise ValueError(f"fd {fd}: not a sealed memfd ({exc.strerror})") from None
    if seals & fcntl.F_SEAL_WRITE == 0:
        raise ValueError(f"fd {fd}: the state memfd is not sealed against writes")
    size = os.fstat(fd).st_size
    if size > limit:
        raise ValueError(f"fd {fd}: state of {size} bytes exceeds {limit}")
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def spawn_check(path: str, state_fd: int) -> tuple[int, int]:
    """Start ``path --check-state 3`` with the state at fd 3 and its stdout and stderr
    on a pipe. Returns (pid, the pipe's read end); the caller's reaper sees the exit."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        # A new session, so a Ctrl-C on our terminal does not reach the check
        # child, and its own children die with its group if we kill it.
        pid = os.posix_spawn(path, [path, "--check-state", "3"], dict(os.environ),
                             file_actions=[(os.POSIX_SPAWN_DUP2, state_fd, 3),
                                           (os.POSIX_SPAWN_DUP2, out_w, 1),
                                           (os.POSIX_SPAWN_DUP2, out_w, 2)],
                             setsid=True)
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
    os.set_blocking(out_r, False)
    return pid, out_r


def read_output(fd: int) -> str:
    """What the check child wrote (it has exited: read what the pipe holds), and close."""
    chunks: list[bytes] = []
    try:
        while sum(map(len, chunks)) < CHECK_OUTPUT_MAX:
            chunk = os.read(fd, CHECK_OUTPUT_MAX)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass  # a grandchild still holds the write end: what we have is enough
    finally:
        os.close(fd)
    return b"".join(chunks)[:CHECK_OUTPUT_MAX].decode(errors="replace").strip()


def exec_keeping(path: str, argv: list[str], keep: list[int]) -> OSError:
    """``execv(path, argv)`` with ``keep`` (and only those) inherited.

    Returns only if the exec failed, with the error, after making ``keep``
    close-on-exec again so nothing leaks into the next child we spawn.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for fd in keep:
        os.set_inheritable(fd, True)
    try:
        os.execv(path, argv)
    except OSError as exc:
        for fd in keep:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
        return exc
    raise AssertionError("unreachable")  # pragma: no cover
