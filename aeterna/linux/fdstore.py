"""The fd store: fds a unit asked the manager to keep (``FDSTORE=1``), as systemd does.

Stored fds are handed to every new main process of the unit after its socket
fds, with their names in ``LISTEN_FDNAMES``. Rules from systemd's
FILE_DESCRIPTOR_STORE.md:

* the same open file is stored once (we compare the fstat identity and the
  file status flags, which is what a kcmp would tell apart in practice);
* fds beyond ``FileDescriptorStoreMax`` are closed;
* an entry is dropped when its fd reports EPOLLHUP or EPOLLERR, unless it was
  stored with ``FDPOLL=0``;
* ``FDSTOREREMOVE=1`` with ``FDNAME=`` removes every entry with that name.

Polling uses one private epoll instance per store registered with *no* events
(HUP and ERR are always reported), and the event loop only watches that epoll
fd: a readable socket in the store never makes the loop spin.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass

from .fds import close_fds


@dataclass
class Entry:
    fd: int
    name: str
    poll: bool


class FdStore:
    """The stored fds of one unit; owned by the manager, outliving generations."""

    def __init__(self, maximum: int):
        self.maximum = maximum
        self.entries: list[Entry] = []
        self._epoll: select.epoll | None = None

    def epoll_fd(self) -> int:
        """The fd the event loop watches for HUP/ERR on polled entries."""
        if self._epoll is None:
            self._epoll = select.epoll()  # close-on-exec by default
        return self._epoll.fileno()

    def add(self, fd: int, name: str, poll: bool) -> str:
        """Keep ``fd`` (we own it from now on). Returns "stored", "duplicate" or "full"."""
        try:
            st = os.fstat(fd)
        except OSError:
            close_fds([fd])
            return "invalid"
        for e in self.entries:
            try:
                other = os.fstat(e.fd)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino) and _same_description(
                    e.fd, fd):
                close_fds([fd])
                return "duplicate"
        if len(self.entries) >= self.maximum:
            close_fds([fd])
            return "full"
        os.set_inheritable(fd, False)
        self.entries.append(Entry(fd, name, poll))
        if poll:
            try:
                self._ep().register(fd, 0)
            except OSError:
                pass  # not pollable (a regular file): kept, never dropped by HUP
        return "stored"

    def _ep(self) -> select.epoll:
        self.epoll_fd()
        assert self._epoll is not None
        return self._epoll

    def remove_name(self, name: str) -> int:
        """FDSTOREREMOVE=1: drop every entry called ``name``; return how many."""
        gone = [e for e in self.entries if e.name == name]
        for e in gone:
            self._drop(e)
        return len(gone)

    def on_events(self) -> list[str]:
        """Drop the entries whose fd hung up or errored; return their names."""
        if self._epoll is None:
            return []
        dropped = []
        for fd, _events in self._epoll.poll(0):
            for e in list(self.entries):
                if e.fd == fd:
                    dropped.append(e.name)
                    self._drop(e)
        return dropped

    def _drop(self, e: Entry) -> None:
        self.entries.remove(e)
        if e.poll and self._epoll is not None:
            try:
                self._epoll.unregister(e.fd)
            except OSError:
                pass
        close_fds([e.fd])

    def fds(self) -> list[int]:
        return [e.fd for e in self.entries]

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def clear(self) -> None:
        for e in list(self.entries):
            self._drop(e)

    def close(self) -> None:
        self.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None


def _same_description(a: int, b: int) -> bool:
    """Best effort "is this the same open file": same inode and same status flags."""
    try:
        import fcntl

        return fcntl.fcntl(a, fcntl.F_GETFL) == fcntl.fcntl(b, fcntl.F_GETFL)
    except OSError:
        return False
