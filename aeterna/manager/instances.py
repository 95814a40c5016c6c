"""Template instances asked for by name: ``aeterna start web@8080`` and
``aeterna enable web@8080`` on a running manager.

``start`` loads the instance from its template (``web@.yaml`` in a directory
given to ``-c``) and starts it as a new unit file would be; the manager keeps
its name, so a reload keeps it loaded (as systemd keeps a started instance).
``enable`` makes the symlink ``web@8080.yaml -> web@.yaml`` beside the template,
so that the instance is there at the manager's next start too, then does what
``start`` does (``systemctl enable`` reloads; Aeterna starts new unit files).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..loader.instances import find_template, split_instance
from . import daemon_reload, reloading

if TYPE_CHECKING:
    from .manager import Manager


def still_templated(paths: list[str], names: list[str] | tuple[str, ...]) -> list[str]:
    """The instances started by name whose template is still there: one whose
    template was removed is no longer defined (it runs until stopped, as a unit
    whose file is gone), rather than an error that would refuse every reload."""
    return [n for n in names if find_template(paths, n.partition("@")[0]) is not None]


def add(m: Manager, name: str) -> str:
    """Load ``name`` from its template and start it; "" or the reason it cannot."""
    if name in m.units:
        return ""
    if m.shutting_down:
        return "the manager is shutting down"
    try:
        prefix, _ = split_instance(name)
    except ValueError as exc:
        return str(exc)
    if find_template(m.paths, prefix) is None:
        return (f"expected a template {prefix}@.yaml in {', '.join(m.paths)}, found none "
                f"(a unit file of a new unit is read by 'aeterna reload')")
    new = daemon_reload.read(m.paths, m.log, [*m.instances, name])
    if isinstance(new, list):
        return "\n".join(new)
    spec = new.get(name)
    if spec is None:  # pragma: no cover - the template went between the two looks
        return f"expected a template for {name}, found none"
    m.instances.append(name)
    m.log.info("unit.instance", unit=name, source=spec.source.file)
    reloading.add_units(m, [spec])
    return ""


def enable(m: Manager, name: str) -> tuple[str, str]:
    """Make ``NAME.yaml`` a symlink to its template; (the link or "", the error or "")."""
    try:
        prefix, _ = split_instance(name)
    except ValueError as exc:
        return "", str(exc)
    dirs = [p for p in m.paths if os.path.isdir(p)]
    template = find_template(dirs, prefix)
    if template is None:
        return "", (f"expected a template {prefix}@.yaml in a directory given to -c "
                    f"({', '.join(m.paths)}), found none")
    link = os.path.join(os.path.dirname(template),
                        name + os.path.splitext(template)[1])
    made = ""
    if not os.path.lexists(link):
        try:
            os.symlink(os.path.basename(template), link)
        except OSError as exc:
            return "", f"{link}: {exc.strerror}"
        made = link
    elif os.path.realpath(link) != os.path.realpath(template):
        return "", f"{link} exists and is not a link to {template}"
    error = add(m, name)
    return made, error
