"""The manager as the relay layer sees it: ``RelayHost`` and ``SrpHost``, and no more.

The coordinator, the relays and the SRP units hold this port, not the
manager: each method is the one way they reach the manager's spawner, reaper,
notify socket, loop and unit files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..linux import proc
from ..log import Log
from ..model import UnitSpec
from ..results import ExitInfo
from ..unit.pids import PidIndex
from ..unit.runtime import UnitRuntime
from ..unit.watchdog import Timer

if TYPE_CHECKING:
    from ..relay.relay import Relay
    from ..relay.srp import SrpUnit
    from .manager import Manager

ExitCallback = Callable[[ExitInfo], None]


class RelayPort:
    def __init__(self, manager: Manager):
        self._m = manager
        self.log: Log = manager.log
        self.pids: PidIndex = manager.pids

    @property
    def shutting_down(self) -> bool:
        return self._m.shutting_down

    def unit(self, name: str) -> UnitRuntime:
        return self._m.units[name]

    def spawn_generation(self, runtime: UnitRuntime, spec: UnitSpec, generation: int,
                         exited: ExitCallback) -> int:
        return self._m.spawner.generation(runtime, spec, generation, exited)

    def run_helper(self, runtime: UnitRuntime, argv: tuple[str, ...], timeout: float,
                   label: str) -> Coroutine[Any, Any, ExitInfo | None]:
        return self._m.spawner.run_helper(runtime, argv, timeout, label)

    def background_hook(self, runtime: UnitRuntime, argv: tuple[str, ...],
                        outcome: str) -> None:
        self._m.spawner.background_hook(runtime, argv, outcome)

    def watch(self, pid: int, callback: ExitCallback) -> None:
        self._m.reaper.watch(pid, callback)

    def unwatch(self, pid: int) -> None:
        self._m.reaper.unwatch(pid)

    def retire(self, pid: int, retired: bool) -> None:
        """A draining generation's datagrams are expected, not a stranger's."""
        if retired:
            self._m.notify.retired.add(pid)
        else:
            self._m.notify.retired.discard(pid)

    def kill(self, pid: int, sig: int, group: bool) -> bool:
        return proc.kill_group(pid, sig) if group else proc.kill_pid(pid, sig)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._m.call_later(delay, callback)

    def wait_for(self, pred: Callable[[], bool],
                 timeout: float | None = None) -> Coroutine[Any, Any, bool]:
        return self._m.wait_for(pred, timeout)

    def wake(self) -> None:
        """Something that ``wait_for`` conditions look at changed (a relay's phase)."""
        self._m.wake()

    def reread_unit(self, name: str) -> UnitSpec | None:
        return self._m.reread_unit(name)

    def srp_of(self, name: str) -> SrpUnit | None:
        return self._m.srp.get(name)

    # ------------------------------------------------------------ SrpHost
    def relay_of(self, name: str) -> Relay | None:
        relays = self._m.relays
        return relays.current.get(name) if relays is not None else None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        self._m.background(coro)
