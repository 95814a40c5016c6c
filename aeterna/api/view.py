"""What the control socket and the HTTP endpoints see of the manager: a read-only view.

The surfaces read the manager through these protocols, whose members are
read-only, and act on it only through its methods (stop, start, restart,
reload, relay): mypy refuses an assignment through a view, so no request
handler can write the manager's state behind its back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..log import Log
from ..model import UnitSpec
from ..results import Result
from ..unit.states import State

if TYPE_CHECKING:
    from ..relay.outcome import Outcome


class UnitView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> UnitSpec: ...
    @property
    def state(self) -> State: ...
    @property
    def result(self) -> Result: ...
    @property
    def main_pid(self) -> int | None: ...
    @property
    def generation(self) -> int: ...
    @property
    def restarts(self) -> int: ...
    @property
    def started_at(self) -> float | None: ...
    def snapshot(self) -> dict[str, Any]: ...


class RelayPhaseView(Protocol):
    @property
    def phase(self) -> Any: ...  # relay.outcome.Phase


class RelaysView(Protocol):
    """The coordinator, once a relay ran."""

    @property
    def count(self) -> int: ...
    @property
    def current(self) -> Mapping[str, RelayPhaseView]: ...
    @property
    def last(self) -> Mapping[str, Outcome]: ...
    @property
    def outcomes(self) -> Mapping[tuple[str, str, str], int]: ...
    @property
    def handoffs(self) -> Mapping[tuple[str, str], int]: ...
    def generations(self, name: str) -> list[dict[str, Any]]: ...
    def status(self, name: str) -> dict[str, Any]: ...


class NotifyView(Protocol):
    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...


class ManagerView(Protocol):
    log: Log

    @property
    def order(self) -> list[str]: ...
    @property
    def units(self) -> Mapping[str, UnitView]: ...
    @property
    def relays(self) -> RelaysView | None: ...
    @property
    def notify(self) -> NotifyView: ...
    @property
    def orphans_reaped(self) -> int: ...
    @property
    def internal_errors(self) -> int: ...
    @property
    def shutting_down(self) -> bool: ...
    @property
    def identity(self) -> dict[str, Any]: ...  # version, last re-exec (issue 15)

    # Actions: every write goes through one of these.
    def shutdown(self) -> None: ...
    def stop_unit(self, name: str) -> None: ...
    def start_unit(self, name: str) -> None: ...
    def restart_unit(self, name: str, spec: UnitSpec | None = None) -> None: ...
    def reload_in_place(self, name: str) -> None: ...
    def relay(self, name: str, spec: UnitSpec | None = None) -> asyncio.Future[Outcome]: ...
    def read_units(self) -> Coroutine[Any, Any, dict[str, UnitSpec] | list[str]]: ...
    def reload(self, relay: bool = True, new: dict[str, UnitSpec] | list[str] | None = None
               ) -> tuple[dict[str, Any], list[asyncio.Future[Outcome]]]: ...
    def reload_unit(self, name: str, new: dict[str, UnitSpec] | list[str] | None = None
                    ) -> tuple[str, UnitSpec | None, str]: ...
    def daemon_reexec(self, exec_path: str | None,
                      reply_fd: int | None) -> Coroutine[Any, Any, None]: ...
    def wait_for(self, pred: Callable[[], bool],
                 timeout: float | None = None) -> Coroutine[Any, Any, bool]: ...


def generations(view: ManagerView, name: str) -> list[dict[str, Any]]:
    """Every live generation of a unit: serving, canary, draining."""
    unit = view.units[name]
    out = ([{"pid": unit.main_pid, "generation": unit.generation, "role": "serving"}]
           if unit.main_pid is not None else [])
    if view.relays is not None:
        out += view.relays.generations(name)
    return out


def relay_status(view: ManagerView, name: str) -> dict[str, Any]:
    if view.relays is None:
        return {"phase": "idle", "last": None}
    return view.relays.status(name)
