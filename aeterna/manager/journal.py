"""Per-unit log rings: each unit's stdout and stderr lines, bounded, for ``aeterna logs``.

Every line a unit's processes write (main process, commands, both
generations of a relay) is kept in its unit's ring with a sequence number,
wall-clock time, stream, pid and generation, besides going to the manager's
own output as before. A ring holds at most ``MAX_LINES`` lines and
``MAX_BYTES`` bytes (line text plus ``ENTRY_OVERHEAD`` for the entry itself),
whichever is reached first: the oldest lines go. So a unit printing 100k
lines a second costs the same memory as one printing ten. All rings together
stay under ``TOTAL_BYTES``: with more than 16 units that print, each gets an
equal share (at least ``MIN_BYTES``).

Readers use the sequence number as a cursor: ``since(seq)`` returns what came
after, and tells how many lines the ring dropped in between, so a follower
(``logs -f``) knows whether it lost any. ``wait`` lets a follower sleep until
the next line arrives; nothing is polled.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

MAX_LINES = 10_000
MAX_BYTES = 4 * 1024 * 1024
# All rings together: with many units each ring gets its share, never less than
# MIN_BYTES (so 1,000 chatty units cost 64 MiB at most, not 4 GiB).
TOTAL_BYTES = 64 * 1024 * 1024
MIN_BYTES = 64 * 1024
# What an entry costs beyond its text, measured with sys.getsizeof on CPython
# 3.11 (the tuple, its float, ints and the bytes object's header), rounded up.
ENTRY_OVERHEAD = 200


class Entry(NamedTuple):
    seq: int
    time: float  # wall clock (time.time())
    stream: str  # "stdout" or "stderr"
    pid: int
    generation: int
    text: bytes

    def as_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "time": round(self.time, 6), "stream": self.stream,
                "pid": self.pid, "generation": self.generation,
                "text": self.text.decode("utf-8", "replace")}


class Ring:
    """One unit's lines, oldest first; bounded by lines and by bytes."""

    def __init__(self, max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES):
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.entries: deque[Entry] = deque()
        self.bytes = 0
        self.last_seq = 0  # of the newest line ever appended
        self.dropped = 0  # lines pushed out by newer ones
        self._arrived: asyncio.Event | None = None  # made by the first waiting follower

    def append(self, stream: str, pid: int, generation: int, lines: list[bytes]) -> None:
        now = time.time()
        entries = self.entries
        seq = self.last_seq
        size = self.bytes
        for text in lines:
            seq += 1
            entries.append(Entry(seq, now, stream, pid, generation, text))
            size += len(text) + ENTRY_OVERHEAD
        while entries and (size > self.max_bytes or len(entries) > self.max_lines):
            size -= len(entries.popleft().text) + ENTRY_OVERHEAD
            self.dropped += 1
        self.last_seq = seq
        self.bytes = size
        if self._arrived is not None:
            self._arrived.set()

    def since(self, seq: int, limit: int | None = None) -> tuple[list[Entry], int]:
        """Lines after ``seq`` (at most ``limit``, the oldest first) and how many lines
        after ``seq`` the ring no longer holds."""
        entries = self.entries
        if seq >= self.last_seq:
            return [], 0
        if not entries:  # everything after seq was pushed out (by one huge line, say)
            return [], self.last_seq - seq
        first = entries[0].seq
        lost = max(0, first - seq - 1)
        start = max(0, seq + 1 - first)
        count = len(entries) - start
        if limit is not None:
            count = min(count, limit)
        return [entries[i] for i in range(start, start + count)], lost

    def tail(self, n: int) -> list[Entry]:
        """The newest ``n`` lines, oldest first."""
        n = min(n, len(self.entries))
        return [self.entries[i] for i in range(len(self.entries) - n, len(self.entries))]

    async def wait(self, seq: int, timeout: float) -> None:
        """Until a line after ``seq`` exists, or ``timeout`` seconds passed."""
        if self.last_seq > seq:
            return
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            pass

    def stats(self) -> dict[str, int]:
        return {"lines": len(self.entries), "bytes": self.bytes, "last_seq": self.last_seq,
                "dropped": self.dropped, "max_lines": self.max_lines,
                "max_bytes": self.max_bytes}


class Journals:
    """Every unit's ring, made on the unit's first line."""

    def __init__(self, total_bytes: int = TOTAL_BYTES) -> None:
        self.rings: dict[str, Ring] = {}
        self.total_bytes = total_bytes

    def ring(self, unit: str) -> Ring:
        ring = self.rings.get(unit)
        if ring is None:
            ring = self.rings[unit] = Ring()
            # A new ring shrinks every ring's share; a ring over its new limit is
            # trimmed at its next line.
            share = max(MIN_BYTES, min(MAX_BYTES, self.total_bytes // len(self.rings)))
            for r in self.rings.values():
                r.max_bytes = share
        return ring

    def tap(self, unit: str, stream: str, pid: int,
            generation: int) -> Callable[[list[bytes]], None]:
        """What a process's output relay calls with each batch of complete lines."""
        ring = self.ring(unit)

        def add(lines: list[bytes]) -> None:
            ring.append(stream, pid, generation, lines)

        return add
