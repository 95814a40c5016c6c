"""One /proc scan for status and /metrics, shared when they come close together.

A scan is O(processes) (``linux.proc.scan``) and at 1,000 units costs more
than the 20 ms that a request may hold the event loop, so it runs in a worker
thread: the loop goes on handling notify datagrams, child exits and timers
meanwhile (reading /proc releases the GIL, and the interpreter hands the GIL
back to the loop within its switch interval). A scan younger than ``MAX_AGE``
is reused, and callers that arrive during a scan wait for that one.
"""

from __future__ import annotations

import asyncio
import time

from ..linux import proc

MAX_AGE = 1.0  # seconds a scan is reused for


class UsageCache:
    def __init__(self) -> None:
        self._table: dict[int, proc.ProcStat] = {}
        self._at = -MAX_AGE
        self._running: asyncio.Future[dict[int, proc.ProcStat]] | None = None

    async def table(self) -> dict[int, proc.ProcStat]:
        if time.monotonic() - self._at < MAX_AGE:
            return self._table
        if self._running is None:
            self._running = asyncio.get_running_loop().run_in_executor(None, proc.scan)
            try:
                self._table = await self._running
                self._at = time.monotonic()
            finally:
                self._running = None
            return self._table
        return await asyncio.shield(self._running)

    async def usage(self, roots: list[int]) -> dict[int, proc.Usage]:
        """Usage of each root's process tree (missing: the process is gone)."""
        table = await self.table()
        return proc.tree_usage(table, roots)
