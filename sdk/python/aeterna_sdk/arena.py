"""StateArena: the app's big state, kept all the time in a memfd it can hand over.

The arena is a fixed-size memfd sealed ``SHRINK|GROW|SEAL`` (never
``WRITE``) and mapped shared read/write. The app keeps its large state there
(bytes, or numpy arrays over ``arena.buffer``) instead of in Python objects, so
a checkpoint passes the fd as kind ``arena`` and copies nothing; the next
generation maps the same memory and goes on using it.

Ownership moves with a relay checkpoint: the sender must stop writing before
the checkpoint is answered (``AeternaClient.on_checkpoint`` does that for you
if your callback stops your writers).

Where memfds do not exist (macOS), the arena is an anonymous mapping with no
fd: everything works locally, nothing can be handed over.
"""

from __future__ import annotations

import mmap
import os

from . import memfd


class StateArena:
    """A fixed-size, memfd-backed, writable buffer.

    >>> arena = StateArena(64 << 20)
    >>> arena.write(b"hello", 0)
    >>> bytes(arena.buffer[:5])
    b'hello'
    >>> # with numpy (not required by the SDK):
    >>> # vectors = numpy.frombuffer(arena.buffer, dtype=numpy.float32).reshape(-1, 384)
    """

    def __init__(self, size: int, name: str = "aeterna-arena", *, _fd: int | None = None):
        if _fd is None and size <= 0:
            raise ValueError("a StateArena needs a size > 0")
        self._fd: int | None = None
        self.name = name
        self.writable = True
        if _fd is not None:
            self._fd = _fd
            size = memfd.size_of(_fd)
            seals = memfd.get_seals(_fd) or 0
            self.writable = not seals & memfd.SEAL_WRITE
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.writable else 0)
            self._map = mmap.mmap(_fd, size, mmap.MAP_SHARED, prot) if size else None
        elif memfd.supported():
            self._fd = memfd.create(name, size)
            try:
                memfd.add_seals(self._fd, memfd.SEALS_ARENA)
                self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
            except BaseException:
                os.close(self._fd)
                raise
        else:
            self._map = mmap.mmap(-1, size)
        self.size = size
        self._view: memoryview | None = memoryview(self._map) if self._map is not None \
            else memoryview(b"")
        if not self.writable:
            self._view = self._view.toreadonly()

    @classmethod
    def from_fd(cls, fd: int, name: str = "aeterna-arena") -> StateArena:
        """Map a received memfd (the arena takes ownership of ``fd``).

        An fd sealed against writes (a snapshot) is mapped read-only
        (``writable`` is False).
        """
        if memfd.get_seals(fd) is None:
            raise ValueError("not a memfd: cannot be mapped as an arena")
        if not memfd.has_seals(fd, memfd.SEAL_SHRINK | memfd.SEAL_GROW):
            raise ValueError("the memfd is not sealed against shrinking and growing")
        return cls(0, name, _fd=fd)

    # ------------------------------------------------------------ access
    @property
    def buffer(self) -> memoryview:
        """The whole arena as a writable byte memoryview (numpy.frombuffer works on it)."""
        if self._view is None:
            raise ValueError("the arena is closed")
        return self._view

    def fileno(self) -> int:
        """The memfd (-1 where memfds do not exist)."""
        if self._view is None:
            raise ValueError("the arena is closed")
        return -1 if self._fd is None else self._fd

    @property
    def seals(self) -> int | None:
        return None if self._fd is None else memfd.get_seals(self._fd)

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.size:
            raise ValueError(f"write of {len(view)} bytes at {offset} exceeds the arena "
                             f"of {self.size} bytes")
        self.buffer[offset:offset + len(view)] = view

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        end = self.size if length is None else offset + length
        if offset < 0 or end > self.size:
            raise ValueError("read past the end of the arena")
        return bytes(self.buffer[offset:end])

    def checksum(self) -> str:
        """``sha256:<hex>`` of the whole arena."""
        import hashlib

        h = hashlib.sha256()
        step = 1 << 20
        for off in range(0, self.size, step):
            h.update(self.buffer[off:off + step])
        return "sha256:" + h.hexdigest()

    def copy_fd(self) -> int:
        """A new memfd holding a copy of the arena, sealed as an arena (for save_context)."""
        fd = memfd.create(self.name + "-copy", self.size)
        try:
            memfd.write_all(fd, self.buffer)
            memfd.add_seals(fd, memfd.SEALS_ARENA)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ----------------------------------------------------------- lifetime
    @property
    def closed(self) -> bool:
        return self._view is None

    def close(self) -> None:
        """Unmap and close. Raises BufferError while views of ``buffer`` are alive."""
        if self._view is None:
            return
        self._view.release()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                self._view = memoryview(self._map)
                raise
        self._view = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateArena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<StateArena {self.name!r} {self.size} bytes {state}>"
