"""A cap on connections that have not sent their request yet, for the HTTP and control sockets.

A slow or idle client costs an fd and a task until it sends its request. Refusing
new connections once a cap is reached hands the endpoint to whoever opened the
most connections first (32 clients sending a byte a second took ``/healthz``
down that way). Instead, a new connection at the cap *evicts the oldest one
still waiting*: a real client sends its request within milliseconds of
connecting and is past the cap by then; a squatter is the oldest waiter and
goes first. The fds the manager needs to start processes stay free either way.
"""

from __future__ import annotations

import asyncio


class WaitingLimit:
    """At most ``limit`` connections waiting for their request; the oldest makes room."""

    def __init__(self, limit: int):
        self.limit = limit
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # insertion order: oldest first
        self.evicted = 0

    def admit(self, writer: asyncio.StreamWriter) -> None:
        while len(self._waiting) >= self.limit:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.transport.abort()
            self.evicted += 1
        self._waiting[writer] = None

    def served(self, writer: asyncio.StreamWriter) -> None:
        """The request arrived (or the connection ended): no longer counted."""
        self._waiting.pop(writer, None)

    def __len__(self) -> int:
        return len(self._waiting)
