"""The user-facing servers of one manager: its control socket and its metrics endpoints.

The CLI gives these to the manager (``Manager.surfaces``), which starts them
once its units are bound and tells them when a reload changes the metrics
addresses. The manager layer never imports this one: it only knows the
``Surfaces`` protocol. The HTTP code is imported only once a unit names a
``metrics_port``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model import UnitSpec
from .server import ControlServer
from .view import ManagerView

if TYPE_CHECKING:
    from .http import MetricsServer


class Surfaces:
    def __init__(self, view: ManagerView, control_path: str, adopt_fd: int | None = None):
        self.view = view
        # adopt_fd: the control socket a re-executed manager carries over (issue 15)
        self.control = ControlServer(view, control_path, adopt_fd)
        self.metrics: dict[str, MetricsServer] = {}

    async def start(self) -> None:
        await self.control.start()

    async def sync(self, specs: list[UnitSpec]) -> None:
        """Serve the metrics addresses that ``specs`` name, and only those."""
        wanted = list(dict.fromkeys(u.observability.metrics_port for u in specs
                                    if u.observability.metrics_port))
        if not self.metrics and not wanted:
            return  # the HTTP code is loaded only by units that ask for it
        from . import http

        await http.sync(self.view, self.control.usage, self.metrics, wanted)

    def control_fd(self) -> int:
        """The control socket's listening fd, for daemon-reexec."""
        return self.control.fileno()

    async def close(self) -> None:
        await self.control.close()
        await self.sync([])

