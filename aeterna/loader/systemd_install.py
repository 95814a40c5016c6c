"""Enabled systemd units: what the boot targets want, and the links ``enable`` writes.

A directory of systemd units that has ``*.wants/`` directories is an installed
tree: a unit starts at boot only if ``default.target.wants/``,
``multi-user.target.wants/`` or ``graphical.target.wants/`` links its
``.service``; a unit whose ``.socket`` is linked from ``sockets.target.wants/``
gets its sockets bound and is started by their first connection; every
other unit is disabled (loaded, not started). A directory without any
``*.wants/`` is a plain set of files and every unit in it starts, as before.

``enable`` links ``NAME.service`` (or ``.socket``) from each target its
``[Install] WantedBy=`` names (``multi-user.target`` when it names none);
``disable`` removes every such link. Pure, but for reading and writing the
directory (no process, no asyncio).
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..model import UnitSpec
from .ini import parse_ini

BOOT_TARGETS = ("default.target", "multi-user.target", "graphical.target")
SOCKETS_TARGET = "sockets.target"


def _wants_dirs(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if n.endswith(".wants")
                  and os.path.isdir(os.path.join(directory, n)))


def linked(directory: str) -> set[str] | None:
    """The unit file names the boot and sockets targets want; None if ``directory``
    has no ``*.wants/`` at all (a plain directory: everything is enabled)."""
    if not _wants_dirs(directory):
        return None
    out: set[str] = set()
    for target in (*BOOT_TARGETS, SOCKETS_TARGET):
        try:
            out.update(os.listdir(os.path.join(directory, f"{target}.wants")))
        except OSError:
            pass
    return out


def apply(directory: str, units: list[UnitSpec]) -> list[UnitSpec]:
    """``units`` of ``directory`` with ``enabled`` and ``on_demand`` as its links say."""
    links = linked(directory)
    if links is None:
        return units
    out = []
    for u in units:
        if f"{u.name}.service" in links:
            out.append(u)
        elif f"{u.name}.socket" in links and u.service.sockets:
            out.append(replace(u, service=replace(u.service, on_demand=True)))
        else:
            out.append(replace(u, service=replace(u.service, enabled=False)))
    return out


def wanted_by(path: str) -> list[str]:
    """The targets a unit file's ``[Install] WantedBy=`` names (empty: none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return []
    targets: list[str] = []
    for section in parse_ini(text, path):
        if section.name == "Install":
            for e in section.entries:
                if e.key == "WantedBy":
                    targets += e.value.split() if e.value else []
    return targets


def enable(path: str) -> list[str]:
    """Link the unit file at ``path`` from its targets; the links made (created or
    already there). A directory with no ``*.wants/`` yet gets the other units'
    links too, so that enabling one unit does not disable the rest."""
    directory, base = os.path.split(path)
    directory = directory or "."
    if not _wants_dirs(directory):
        for other in sorted(os.listdir(directory)):
            if other.endswith(".service") and other != base and "@" not in other:
                _link(directory, "multi-user.target", other)
    made = []
    for target in wanted_by(path) or ["multi-user.target"]:
        made.append(_link(directory, target, base))
    return made


def disable(path: str) -> list[str]:
    """Remove every ``*.wants/`` link to the unit file at ``path``; the links removed.
    In a directory with no ``*.wants/`` yet, the other units are linked first (they
    stay enabled)."""
    directory, base = os.path.split(path)
    directory = directory or "."
    if not _wants_dirs(directory):
        for other in sorted(os.listdir(directory)):
            if other.endswith(".service") and other != base and "@" not in other:
                _link(directory, "multi-user.target", other)
    removed = []
    for wants in _wants_dirs(directory):
        link = os.path.join(directory, wants, base)
        if os.path.islink(link) or os.path.exists(link):
            os.unlink(link)
            removed.append(link)
    return removed


def _link(directory: str, target: str, base: str) -> str:
    wants = os.path.join(directory, f"{target}.wants")
    os.makedirs(wants, exist_ok=True)
    link = os.path.join(wants, base)
    if not os.path.lexists(link):
        os.symlink(os.path.join("..", base), link)
    return link
