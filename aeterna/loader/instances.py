"""Template instances of YAML units: which file is a template, and where an
instance's template is.

``web@.yaml`` is a template: it is never loaded by itself. ``web@8080`` is an
instance of it, from any of:

* a file ``web@8080.yaml``, usually a symlink to ``web@.yaml`` (``aeterna enable``
  makes one), rendered with ``instance`` = ``8080``;
* a name asked for by ``load_paths(..., instances=["web@8080"])``: ``aeterna
  start web@8080`` on a running manager, ``aeterna validate web@.yaml --instance
  8080``; the template is looked for in the directories (and files) loaded.

Pure but for reading files, like the rest of the loader. jinja2 (templates.py)
is imported by the first template rendered: a manager without templates never
carries it.
"""

from __future__ import annotations

import os
import re

from ..model import UnitSpec
from .errors import UnitError
from .yaml_units import load_yaml_unit

TEMPLATE_SUFFIXES = (".yaml", ".yml")
_INSTANCE = re.compile(r"[A-Za-z0-9:_.\\-]+")


def is_template_file(path: str) -> bool:
    """``web@.yaml``: a template, never started by itself."""
    stem = os.path.basename(path).rpartition(".")[0]
    return stem.endswith("@") and stem.count("@") == 1


def instance_of(path: str) -> tuple[str, str] | None:
    """``web@8080.yaml`` -> ("web", "8080"); None for a plain file or a template."""
    stem = os.path.basename(path).rpartition(".")[0]
    prefix, at, instance = stem.partition("@")
    if not at or not prefix or not instance:
        return None
    return prefix, instance


def check_instance(instance: str) -> str:
    """The instance part of a name, checked as systemd checks one; ValueError if not."""
    if not _INSTANCE.fullmatch(instance) or len(instance) > 200:
        raise ValueError(f"expected an instance of letters, digits and :_.\\-, "
                         f"found {instance!r}")
    return instance


def load_text(text: str, path: str, fast: bool = False,
              instance: tuple[str, str] | None = None) -> UnitSpec:
    """A YAML unit from its text: rendered first if it is an instance
    (``instance``, or the file's own name ``web@8080.yaml``)."""
    if is_template_file(path) and instance is None:
        raise UnitError(path, 0, "", template_hint(path))
    instance = instance or instance_of(path)
    if instance is None:
        return load_yaml_unit(text, path, fast)
    try:
        check_instance(instance[1])
    except ValueError as exc:
        raise UnitError(path, 0, "", str(exc)) from None
    from .templates import render_unit  # jinja2, loaded by the first template only

    return load_yaml_unit(render_unit(text, path, instance[1]), path, fast, instance)


def template_hint(path: str) -> str:
    stem = os.path.basename(path).rpartition(".")[0]
    return (f"a template is not started by itself; name an instance: a symlink "
            f"{stem}NAME.yaml -> {os.path.basename(path)}, 'aeterna start {stem}NAME', "
            f"or 'aeterna validate {path} --instance NAME'")


def split_instance(name: str) -> tuple[str, str]:
    """``web@8080`` -> ("web", "8080"); ValueError for a name that is not an instance."""
    prefix, at, instance = name.partition("@")
    if not at or not prefix or not instance:
        raise ValueError(f"expected an instance name like web@8080, found {name!r}")
    return prefix, check_instance(instance)


def find_template(paths: list[str] | tuple[str, ...], prefix: str) -> str | None:
    """The template ``prefix@.yaml`` among ``paths`` (directories, or template files
    named directly), first found first."""
    for path in paths:
        if os.path.isdir(path):
            for suffix in TEMPLATE_SUFFIXES:
                candidate = os.path.join(path, f"{prefix}@{suffix}")
                if os.path.isfile(candidate):
                    return candidate
        elif is_template_file(path) and os.path.basename(path).startswith(f"{prefix}@."):
            return path
    return None


def template_for_missing(path: str) -> str | None:
    """For a named file ``dir/web@8080.yaml`` that does not exist, its template
    ``dir/web@.yaml`` if that does (as systemd finds ``foo@.service``)."""
    inst = instance_of(path)
    if inst is None or not path.endswith(TEMPLATE_SUFFIXES):
        return None
    candidate = os.path.join(os.path.dirname(path), f"{inst[0]}@{os.path.splitext(path)[1]}")
    return candidate if os.path.isfile(candidate) else None
