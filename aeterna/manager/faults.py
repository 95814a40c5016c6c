"""The manager's own bugs: an exception in a callback or task is logged once and counted.

asyncio keeps the loop running when a callback raises, but its default
handler prints a traceback for every occurrence, and a background task's
exception surfaces only when the task is collected. Here every such error is
one ``manager.internal-error`` line per distinct place (the exception type and
the innermost frame), then only counted: ``aeterna_internal_errors_total`` in
``/metrics``. The manager keeps serving; what failed is named, not hidden.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

from ..log import Log


class Faults:
    """The loop's exception handler and the background tasks' done callback."""

    def __init__(self, log: Log):
        self.log = log
        self.count = 0
        self._seen: set[tuple[str, str]] = set()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self._handler)

    def _handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is None:
            # asyncio's own complaints (an unclosed transport, a slow callback): one line.
            self.log.warning("manager.asyncio", message=str(context.get("message", "")))
            return
        self.record(exc, str(context.get("message", "")))

    def record(self, exc: BaseException, where: str = "") -> None:
        self.count += 1
        frames = traceback.extract_tb(exc.__traceback__)
        place = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        key = (type(exc).__name__, place)
        if key in self._seen:
            return
        self._seen.add(key)
        self.log.error("manager.internal-error", error=type(exc).__name__, detail=str(exc),
                       at=place, context=where or None,
                       note="logged once per place; counted in aeterna_internal_errors_total")

    def task_done(self, task: asyncio.Task[Any]) -> None:
        """A background task's exception is retrieved (and recorded) when it ends."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.record(exc, f"task {task.get_coro().__qualname__}")  # type: ignore[union-attr]
