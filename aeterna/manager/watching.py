"""Relay when files change (``orchestration.watch``): inotify, a debounce, the reload paths.

Each watched path is watched through its directory (``linux/inotify.py`` says
why): a directory path sees any change of its entries; a file path sees its own
name change, and any ``..``-named entry of its directory, the names Kubernetes'
atomic writer uses for a ConfigMap or Secret volume. Its update of such a
volume is: write a new ``..<timestamp>`` directory, point a ``..data_tmp``
symlink at it, rename that over ``..data``, remove the old directory. The files
users see (``app.conf -> ..data/app.conf``) never change themselves.

Every event restarts one debounce timer (the longest ``watch_debounce`` of the
units concerned), so the burst of one update gives one action. When it fires,
the unit files are read again: when they do not validate, nothing is done (as
``aeterna reload`` refuses them); when a definition changed, everything is
reloaded as ``aeterna reload`` does (which relays every hot-relay unit);
otherwise each unit concerned takes its ``aeterna reload UNIT`` action: a hot
relay (which rolls back by itself when N+1 does not come up, say on a broken
new configuration), a reload in place, or a restart.

Log lines: ``watch.changed`` (what was done), ``watch.rejected``,
``watch.failed`` (a path that cannot be watched), ``watch.overflow``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..linux.inotify import IN_IGNORED, IN_Q_OVERFLOW, Inotify
from ..model import UnitSpec
from ..results import errno_name
from ..unit.states import State
from . import daemon_reload

if TYPE_CHECKING:
    from .manager import Manager

# A directory's rules: (unit, the name that concerns it, or None for any entry).
Rule = tuple[str, "str | None"]


def rules_for(specs: Iterable[UnitSpec]) -> dict[str, list[Rule]]:
    """Which directory to watch for each unit's paths, and for which names (pure)."""
    rules: dict[str, list[Rule]] = {}
    for spec in specs:
        for path in spec.orchestration.watch:
            path = os.path.normpath(path)
            if os.path.isdir(path):
                rules.setdefault(path, []).append((spec.name, None))
            else:
                parent = os.path.dirname(path) or "/"
                rules.setdefault(parent, []).append((spec.name, os.path.basename(path)))
    return rules


def concerns(name: str | None, entry: str) -> bool:
    """Does a change of ``entry`` (in a watched directory) concern a rule for ``name``?"""
    return name is None or entry == name or entry == "" or entry.startswith("..")


class Watcher:
    """One inotify fd for the manager, its watches, and the pending units' debounce."""

    def __init__(self, manager: Manager):
        assert manager.loop is not None
        self.m = manager
        self.loop: asyncio.AbstractEventLoop = manager.loop
        self.ino = Inotify()
        self.loop.add_reader(self.ino.fd, self._on_readable)
        self._wds: dict[str, int] = {}  # directory -> watch descriptor
        self._dirs: dict[int, str] = {}
        self._rules: dict[str, list[Rule]] = {}
        self._debounce: dict[str, float] = {}
        self._failed: set[str] = set()  # directories already reported as unwatchable
        self._pending: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    def sync(self, specs: Iterable[UnitSpec]) -> None:
        """Watch what these definitions name, and nothing else."""
        specs = list(specs)
        self._debounce = {s.name: s.orchestration.watch_debounce for s in specs}
        self._rules = rules_for(specs)
        for directory in [d for d in self._wds if d not in self._rules]:
            wd = self._wds.pop(directory)
            self._dirs.pop(wd, None)
            self.ino.remove(wd)
        for directory, rules in self._rules.items():
            if directory in self._wds:
                continue
            try:
                wd = self.ino.add(directory)
            except OSError as exc:
                if directory not in self._failed:  # once, not at every reload
                    self._failed.add(directory)
                    self.m.log.warning("watch.failed", path=directory,
                                       units=",".join(sorted({u for u, _ in rules})),
                                       error=errno_name(exc.errno or 0))
                continue
            self._failed.discard(directory)
            self._wds[directory] = wd
            self._dirs[wd] = directory

    def _on_readable(self) -> None:
        hit = False
        for ev in self.ino.read():
            if ev.mask & IN_Q_OVERFLOW:
                # Events were lost: every watching unit may be concerned.
                self.m.log.warning("watch.overflow")
                self._pending.update(u for rules in self._rules.values() for u, _ in rules)
                hit = True
                continue
            directory = self._dirs.get(ev.wd)
            if directory is None:
                continue
            if ev.mask & IN_IGNORED:  # the directory is gone; watched again at the next sync
                self._dirs.pop(ev.wd, None)
                self._wds.pop(directory, None)
            for unit, name in self._rules.get(directory, ()):
                if concerns(name, ev.name):
                    self._pending.add(unit)
                    hit = True
        if hit:  # every change restarts the debounce: a burst gives one action
            if self._timer is not None:
                self._timer.cancel()
            delay = max(self._debounce.get(u, 1.0) for u in self._pending)
            self._timer = self.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, set()
        m = self.m
        if m.shutting_down:
            return
        units = ",".join(sorted(pending))
        new = daemon_reload.read(m.paths, m.log)
        if isinstance(new, list):
            m.log.error("watch.rejected", units=units, reason="invalid unit files",
                        kept="running configuration")
            return
        d = daemon_reload.diff({n: r.spec for n, r in m.units.items()}, new)
        if d.added or d.removed or d.changed:
            m.log.info("watch.changed", units=units, action="reload")
            m.reload()  # re-syncs the watches from the new definitions
            return
        self.sync(new.values())  # a directory that was replaced is watched again
        for name in sorted(pending):
            runtime = m.units.get(name)
            if runtime is None or name not in new:
                continue
            if runtime.state not in (State.ACTIVE, State.RELOADING):
                m.log.info("watch.changed", unit=name, action="none", state=runtime.state.value)
                continue
            action = daemon_reload.action_for(new[name], runtime.spec)
            m.log.info("watch.changed", unit=name, action=action)
            if action == "relay":
                m.relay(name)
            elif action == "in-place":
                m.reload_in_place(name)
            else:
                m.restart_unit(name)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.ino.fd >= 0:
            self.loop.remove_reader(self.ino.fd)
        self.ino.close()
