"""Who owns a pid: the index that the reaper and the notify socket look senders up in.

Kept up to date by the owners themselves (a unit's ``main_pid`` and ``pgid``
setters, a relay's canary), so a child exit or a notify datagram finds its
unit in O(1) whatever the number of units, instead of a scan of all of them.

Every child starts in a session of its own, so its pid is its process group's
id: a group leader (the usual sender: the main process, an ExecStartPost=
command, a canary) is found without a syscall; any other member through
``getpgid``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import UnitRuntime


class PidIndex:
    """main pid -> unit, and process group -> the unit or canary it belongs to."""

    def __init__(self) -> None:
        self.mains: dict[int, UnitRuntime] = {}
        self.groups: dict[int, Any] = {}  # units, canaries (relays), command processes

    def main(self, owner: UnitRuntime, old: int | None, new: int | None) -> None:
        """``owner``'s main pid went from ``old`` to ``new`` (either may be None)."""
        if old is not None and self.mains.get(old) is owner:
            del self.mains[old]
        if new is not None:
            self.mains[new] = owner

    def group(self, owner: object, old: int | None, new: int | None) -> None:
        """``owner``'s process group (or a command's) went from ``old`` to ``new``."""
        if old is not None and self.groups.get(old) is owner:
            del self.groups[old]
        if new is not None:
            self.groups[new] = owner
