"""What the relay layer needs from the manager, and no more (a fake host in tests/pure).

The relay package sits below the manager: it never imports it, it holds a
``RelayHost``. Every write to the manager's state goes through one of these
methods.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ..log import Log
from ..model import UnitSpec
from ..results import ExitInfo
from ..unit.pids import PidIndex
from ..unit.runtime import UnitRuntime
from ..unit.watchdog import Timer

if TYPE_CHECKING:
    from .srp import SrpUnit

ExitCallback = Callable[[ExitInfo], None]


class RelayHost(Protocol):
    log: Log
    pids: PidIndex  # a canary's process group speaks for it over sd_notify

    @property
    def shutting_down(self) -> bool: ...
    def unit(self, name: str) -> UnitRuntime: ...
    def spawn_generation(self, runtime: UnitRuntime, spec: UnitSpec, generation: int,
                         exited: ExitCallback) -> int: ...
    def run_helper(self, runtime: UnitRuntime, argv: tuple[str, ...], timeout: float,
                   label: str) -> Coroutine[Any, Any, ExitInfo | None]: ...
    def background_hook(self, runtime: UnitRuntime, argv: tuple[str, ...],
                        outcome: str) -> None: ...
    def watch(self, pid: int, callback: ExitCallback) -> None: ...
    def unwatch(self, pid: int) -> None: ...
    def retire(self, pid: int, retired: bool) -> None: ...  # a draining N, for notify
    def kill(self, pid: int, sig: int, group: bool) -> bool: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...
    def wait_for(self, pred: Callable[[], bool],
                 timeout: float | None = None) -> Coroutine[Any, Any, bool]: ...
    def wake(self) -> None: ...  # a relay changed: re-check what waits on it
    def reread_unit(self, name: str) -> UnitSpec | None: ...
    def srp_of(self, name: str) -> SrpUnit | None: ...
