"""Loading unit files: paths in, a validated set of frozen units out.

``load_paths`` reads YAML units (``*.yaml``/``*.yml``) and systemd units
(``*.service``/``*.socket`` with drop-ins) from files or directories (not
recursively, so ``units/examples/`` is not picked up by ``-c units/``), then
checks the set as a whole: unique names, known dependencies, no cycles.
Every problem is a ``UnitError``; all of them are collected before raising.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..model import UnitSpec
from .errors import UnitError, UnitErrors, UnitWarning
from .instances import (
    find_template,
    is_template_file,
    load_text,
    split_instance,
    template_for_missing,
)
from .instances import template_hint as _template_hint
from .yaml_units import FAST_FROM

YAML_SUFFIXES = (".yaml", ".yml")
# No unit file needs more; systemd caps a line at 1 MiB (LONG_LINE_MAX). A 100 MiB
# `env` list took two minutes and 2 GiB to parse.
MAX_UNIT_FILE = 1 << 20
SYSTEMD_SUFFIXES = (".service", ".socket")


@dataclass(frozen=True)
class LoadResult:
    units: tuple[UnitSpec, ...]
    warnings: tuple[UnitWarning, ...] = field(default=())
    errors: tuple[UnitError, ...] = field(default=())  # partial loads: the units left out

    def by_name(self) -> dict[str, UnitSpec]:
        return {u.name: u for u in self.units}


def load_paths(paths: list[str] | tuple[str, ...],
               instances: list[str] | tuple[str, ...] = (), partial: bool = False
               ) -> LoadResult:
    """Load and validate every unit under ``paths``; raise UnitErrors on any error.

    ``instances``: template instances (``web@8080``) to load besides the files,
    from the template ``web@.yaml`` among ``paths`` (see ``instances.py``).
    ``partial`` (the manager's start, as systemd's boot): a unit that cannot load,
    or that requires one that cannot, is left out and its errors are in the
    result; the others load. The same file named twice is one unit.
    """
    units: list[UnitSpec] = []
    warnings: list[UnitWarning] = []
    errors: list[UnitError] = []
    for path in paths:
        if is_template_file(path) and not os.path.isdir(path):
            if not instances:  # a template named on its own: never started by itself
                errors.append(UnitError(path, 0, "", _template_hint(path)))
            continue
        _load_one_path(path, units, warnings, errors)
    _load_instances(paths, instances, units, errors)
    # `validate ssh.service ssh.socket` reads one unit twice: it is not a duplicate.
    units = list({(u.name, u.source.file): u for u in units}.values())
    if partial:
        units = _without_broken(units, errors)
        return LoadResult(tuple(units), tuple(warnings), tuple(errors))
    if not errors:
        errors.extend(check_graph(units))
    if errors:
        raise UnitErrors(errors)
    return LoadResult(tuple(units), tuple(warnings))


def _without_broken(units: list[UnitSpec], errors: list[UnitError]) -> list[UnitSpec]:
    """Drop, with an error each, what the graph check refuses, until it refuses nothing."""
    while True:
        problems = check_graph(units)
        if not problems:
            return units
        errors.extend(problems)
        blamed = {(p.file, p.line) for p in problems}
        keep = [u for u in units if not any((d.source.file, d.source.line) in blamed
                                            for d in u.service.depends_on)
                and (u.source.file, u.source.line) not in blamed]
        if len(keep) == len(units):  # nothing pinned on one unit: give up on all named
            return []
        units = keep


def _load_one_path(path: str, units: list[UnitSpec], warnings: list[UnitWarning],
                   errors: list[UnitError]) -> None:
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            errors.append(UnitError(path, 0, "", f"cannot read directory: {exc.strerror}"))
            return
        yaml_files = [os.path.join(path, n) for n in names if n.endswith(YAML_SUFFIXES)]
        has_systemd = any(n.endswith(SYSTEMD_SUFFIXES) for n in names)
        if not yaml_files and not has_systemd:
            # A warning, not an error: a host's /etc/aeterna/units starts empty (as
            # systemd with no units of its own), and a reload may add files later.
            warnings.append(UnitWarning(path, 0, "", "no unit files (*.yaml, *.yml, "
                                        "*.service, *.socket) in this directory"))
            return
        fast = len(yaml_files) >= FAST_FROM
        for f in yaml_files:
            if os.path.isfile(f) and not is_template_file(f):
                _load_yaml_file(f, units, errors, fast)
        if has_systemd:
            _load_systemd(path, None, units, warnings, errors)
        return
    if path.endswith(SYSTEMD_SUFFIXES):
        _load_systemd(os.path.dirname(path) or ".", path, units, warnings, errors)
        return
    template = template_for_missing(path)
    if template is not None and not os.path.lexists(path):
        _load_yaml_file(template, units, errors, instance=split_instance(
            os.path.basename(path).rpartition(".")[0]))
        return
    if not os.path.exists(path):
        errors.append(UnitError(path, 0, "", "no such file or directory"))
        return
    _load_yaml_file(path, units, errors)


def _load_yaml_file(path: str, units: list[UnitSpec], errors: list[UnitError],
                    fast: bool = False, instance: tuple[str, str] | None = None) -> None:
    try:
        text = read_unit_file(path)
    except UnitError as exc:
        errors.append(exc)
        return
    try:
        units.append(load_text(text, path, fast, instance))
    except UnitError as exc:
        errors.append(exc)


def read_unit_file(path: str) -> str:
    """A unit file's text: UTF-8, at most MAX_UNIT_FILE bytes; else a UnitError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_UNIT_FILE + 1)
    except OSError as exc:
        raise UnitError(path, 0, "", f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_UNIT_FILE:
        raise UnitError(path, 0, "", f"expected a unit file of at most {MAX_UNIT_FILE >> 20} "
                        "MiB, found a larger file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnitError(path, 0, "", f"not UTF-8 text ({exc.reason})") from None


def _load_instances(paths: list[str] | tuple[str, ...], names: list[str] | tuple[str, ...],
                    units: list[UnitSpec], errors: list[UnitError]) -> None:
    loaded = {u.name for u in units}
    for name in names:
        if name in loaded:
            continue  # it has a file of its own (web@8080.yaml)
        try:
            instance = split_instance(name)
        except ValueError as exc:
            errors.append(UnitError(name, 0, "", str(exc)))
            continue
        template = find_template(paths, instance[0])
        if template is None:
            errors.append(UnitError(name, 0, "", f"expected a template {instance[0]}@.yaml "
                                    f"in {', '.join(paths)}, found none"))
            continue
        _load_yaml_file(template, units, errors, instance=instance)


def _load_systemd(directory: str, single: str | None, units: list[UnitSpec],
                  warnings: list[UnitWarning], errors: list[UnitError]) -> None:
    from . import systemd_units

    try:
        if single is None:
            loaded, warned = systemd_units.load_systemd_dir(directory, errors=errors)
        else:
            loaded, warned = systemd_units.load_systemd_file(single, errors=errors)
    except UnitErrors as exc:
        errors.extend(exc.errors)
        return
    except UnitError as exc:
        errors.append(exc)
        return
    if single is None:  # a directory: what its *.wants/ links enable
        from .systemd_install import apply

        loaded = apply(directory, list(loaded))
    units.extend(loaded)
    warnings.extend(warned)


def check_graph(units: list[UnitSpec]) -> list[UnitError]:
    """Unique names, dependencies that exist, and no ordering cycle."""
    errors: list[UnitError] = []
    seen: dict[str, UnitSpec] = {}
    for u in units:
        if u.name in seen:
            errors.append(UnitError(u.source.file, u.source.line, "service.name",
                                    f"duplicate unit name {u.name!r}, "
                                    f"also defined in {seen[u.name].source}"))
        else:
            seen[u.name] = u
    for u in units:
        for dep in u.service.depends_on:
            if dep.name not in seen and dep.require:
                errors.append(UnitError(dep.source.file, dep.source.line, "service.depends_on",
                                        f"expected the name of a loaded unit, found {dep.name!r}"))
    if errors:
        return errors
    cycle = find_cycle(seen)
    if cycle:
        # Point at the edge that closes the cycle: the last unit's entry for the first.
        closing = next(d for d in seen[cycle[-2]].service.depends_on if d.name == cycle[-1])
        errors.append(UnitError(closing.source.file, closing.source.line, "service.depends_on",
                                "expected no dependency cycle, found "
                                + " -> ".join(cycle)))
    return errors


def _ordered_deps(units: dict[str, UnitSpec], name: str) -> list[str]:
    return [d.name for d in units[name].service.depends_on if d.order and d.name in units]


def find_cycle(units: dict[str, UnitSpec]) -> list[str]:
    """Return one ordering cycle as a list of names (first == last), or [].

    An explicit stack, not recursion: a chain of thousands of units must not
    reach Python's recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(units, white)
    for root in sorted(units):
        if colour[root] != white:
            continue
        path = [root]
        todo = [iter(_ordered_deps(units, root))]
        colour[root] = grey
        while todo:
            dep = next(todo[-1], None)
            if dep is None:
                colour[path.pop()] = black
                todo.pop()
            elif colour[dep] == grey:
                return path[path.index(dep):] + [dep]
            elif colour[dep] == white:
                colour[dep] = grey
                path.append(dep)
                todo.append(iter(_ordered_deps(units, dep)))
    return []


def start_order(units: dict[str, UnitSpec]) -> list[str]:
    """Names in an order where each unit comes after the units it is ordered after
    (a depth-first post-order, with an explicit stack)."""
    order: list[str] = []
    done: set[str] = set()
    for root in sorted(units):
        if root in done:
            continue
        done.add(root)
        path = [root]
        todo = [iter(_ordered_deps(units, root))]
        while todo:
            dep = next(todo[-1], None)
            if dep is None:
                order.append(path.pop())
                todo.pop()
            elif dep not in done:
                done.add(dep)
                path.append(dep)
                todo.append(iter(_ordered_deps(units, dep)))
    return order
