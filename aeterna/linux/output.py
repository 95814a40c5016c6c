"""Pass a child's stdout and stderr through, line by line, prefixed with its unit.

Each started process gets a pipe per stream; the manager reads the other end
from its event loop (no thread, no polling) and writes ``unit[pid]: line`` to
its own stdout or stderr. A partial last line is flushed at EOF. Lines longer
than ``MAX_LINE`` are cut into pieces so one chatty child cannot grow our memory.
A ``tap`` also gets each batch of lines, unprefixed (the unit's log ring).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import BinaryIO

MAX_LINE = 16 * 1024

# Every open relay by its fd: what a re-exec hands over (the children keep
# writing into these pipes while the manager is replaced).
LIVE: dict[int, LineRelay] = {}


class LineRelay:
    """Reads one pipe and writes prefixed lines to ``sink``; closes itself at EOF."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, prefix: str, sink: BinaryIO,
                 tap: Callable[[list[bytes]], None] | None = None):
        self.loop = loop
        self.tap = tap
        self.fd = fd
        self.prefix = prefix.encode()
        self.sink = sink
        self.partial = b""
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)
        LIVE[fd] = self

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        buf = self.partial + data
        lines = buf.split(b"\n")
        self.partial = lines.pop()
        while len(self.partial) > MAX_LINE:
            lines.append(self.partial[:MAX_LINE])
            self.partial = self.partial[MAX_LINE:]
        self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self.tap is not None:
            self.tap(lines)
        out = b"".join(self.prefix + line + b"\n" for line in lines)
        try:
            self.sink.write(out)
            self.sink.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.partial:
            self._write([self.partial])
            self.partial = b""
        self.loop.remove_reader(self.fd)
        LIVE.pop(self.fd, None)
        os.close(self.fd)
        self.fd = -1


def make_pipe() -> tuple[int, int]:
    """A close-on-exec pipe (read end, write end); the spawner dups the write end."""
    return os.pipe2(os.O_CLOEXEC)
