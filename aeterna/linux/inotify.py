"""inotify(7) through libc: one non-blocking, close-on-exec fd that watches directories.

A small ctypes binding rather than a library: three libc calls and a struct to
unpack are less than any wrapper's API, and the manager, its Debian package and
its container image keep their three dependencies. The manager loads this
module only when a unit has ``orchestration.watch``.

Directories are watched, not files: an editor's save or Kubernetes' ConfigMap
update replaces a file by rename, which a watch on the file's old inode never
sees, while its directory sees the new name arrive (IN_MOVED_TO).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import NamedTuple

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000  # the kernel's queue overflowed: events were lost
IN_IGNORED = 0x00008000  # the watch is gone (its directory was removed or unmounted)
IN_ONLYDIR = 0x01000000

# What "changed" means for a watched directory: an entry written, created,
# renamed in or out, removed or chmod-ed, or the directory itself gone.
CHANGES = (IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF)

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name[len]


class Event(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: str  # the entry's name in the watched directory; "" for the directory itself


def parse(buf: bytes) -> list[Event]:
    """The events in one read(2) of an inotify fd (the kernel never splits an event)."""
    events: list[Event] = []
    off = 0
    while off + _HEADER.size <= len(buf):
        wd, mask, cookie, length = _HEADER.unpack_from(buf, off)
        off += _HEADER.size
        raw = buf[off:off + length]
        off += length
        events.append(Event(wd, mask, cookie, os.fsdecode(raw.split(b"\0", 1)[0])))
    return events


class Inotify:
    """The fd, its watches, and a read that returns whatever is queued (never blocks)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def fileno(self) -> int:
        return self.fd

    def add(self, directory: str, mask: int = CHANGES) -> int:
        """Watch a directory; the same directory twice gives the same watch descriptor."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), directory)
        return int(wd)

    def remove(self, wd: int) -> None:
        # EINVAL: the kernel dropped the watch already (IN_IGNORED is on its way).
        if self._libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def read(self) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return events
            if not buf:
                return events
            events.extend(parse(buf))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
