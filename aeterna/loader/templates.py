"""Jinja2 unit templates: ``web@.yaml`` rendered for the instance ``web@8080``.

A YAML file whose name has an ``@`` is a template; it is rendered before it is
parsed, in jinja2's sandbox with undefined names as errors, with:

* ``instance``: the text after the ``@`` (``8080``);
* ``env``: the manager's environment (``env.HOME``, ``env.get("PORT", "8080")``);
* ``host``: ``hostname``, ``cpus`` (the CPUs this process may run on),
  ``memory`` (bytes) and ``memory_mib``, so ``workers: {{ host.cpus * 2 }}`` works.

Every failure (an undefined name, a syntax error, an unsafe attribute, a
runtime error inside an expression) is one ``UnitError`` naming the file and
the template's line; no traceback reaches a user. Pure: no files are read here.

The same sandbox renders ``aeterna init``'s scaffolds (``scaffold_environment``),
with block tags trimmed, since those files are written, not parsed in place.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import jinja2
import yaml
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from .errors import UnitError

# A rendered unit larger than this is refused: a loop in a template must not
# be able to make the manager build a gigabyte string.
MAX_RENDERED = 1 << 20



@dataclass(frozen=True)
class HostFacts:
    """What a template may know of the machine (``host`` in the template)."""

    hostname: str = "localhost"
    cpus: int = 1
    memory: int = 0  # bytes

    @property
    def memory_mib(self) -> int:
        return self.memory >> 20

    @classmethod
    def from_process(cls) -> HostFacts:
        """This machine as this process sees it (CPU affinity, not the whole box)."""
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        try:
            memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            memory = 0
        return cls(hostname=socket.gethostname(), cpus=cpus, memory=memory)


class _Sandbox(SandboxedEnvironment):
    """jinja2's sandbox, and no giant values: ``"x" * 10**10`` or ``9 ** 9 ** 9`` would
    hold the manager for minutes (the sandbox bounds ``range`` only)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError("an exponent above 64 is refused")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) \
                        and len(seq) * count > MAX_RENDERED:
                    raise SecurityError(f"a value longer than {MAX_RENDERED >> 10} KiB "
                                        f"is refused")
        return super().call_binop(context, operator, left, right)


def unit_environment() -> SandboxedEnvironment:
    """The sandbox for unit templates: lines kept as written, so that the line of
    a YAML error in the rendered text is the template's line."""
    return _Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                    autoescape=False)


def scaffold_environment() -> SandboxedEnvironment:
    """The sandbox for ``aeterna init``: block tags take their line with them."""
    return _Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                    trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render_unit(text: str, file: str, instance: str, env: Mapping[str, str] | None = None,
                host: HostFacts | None = None) -> str:
    """Render a unit template for ``instance``; raise UnitError (file, template line)."""
    context = {"instance": instance,
               "env": dict(os.environ if env is None else env),
               "host": host or HostFacts.from_process()}
    return render(unit_environment(), text, file, context)


def render(environment: SandboxedEnvironment, text: str, file: str,
           context: Mapping[str, Any]) -> str:
    """Render ``text`` (named ``file`` in errors) in ``environment``; UnitError on any
    failure, located to the template's line."""
    try:
        template = environment.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise UnitError(file, exc.lineno or 0, "", f"template syntax error: {exc.message}") \
            from None
    except RecursionError:
        raise UnitError(file, 0, "", "template syntax error: nested too deeply") from None
    return render_template(template, file, context)


def render_template(template: jinja2.Template, file: str, context: Mapping[str, Any]) -> str:
    """Render a compiled template; UnitError on any failure (see ``render``)."""
    out: list[str] = []
    size = 0
    try:
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > MAX_RENDERED:
                raise UnitError(file, 0, "", f"template renders to more than "
                                f"{MAX_RENDERED >> 10} KiB; a runaway loop?")
            out.append(chunk)
    except UnitError:
        raise
    except jinja2.TemplateSyntaxError as exc:  # in an included template
        raise UnitError(exc.filename or file, exc.lineno or 0, "",
                        f"template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise UnitError(*_where(exc.__traceback__, file), "",
                        f"template error: {_undefined(str(exc))}") from None
    except SecurityError as exc:
        raise UnitError(*_where(exc.__traceback__, file), "",
                        f"template error: {str(exc).rstrip('.')} (the sandbox refuses it)") \
            from None
    except jinja2.TemplateError as exc:
        raise UnitError(*_where(exc.__traceback__, file), "",
                        f"template error: {exc}") from None
    except Exception as exc:  # an expression failed: 1/0, int("x"), a bad filter argument
        raise UnitError(*_where(exc.__traceback__, file), "",
                        f"template error: {type(exc).__name__}: {exc}") from None
    return "".join(out)


def _undefined(message: str) -> str:
    """jinja2's words, and what they mean here."""
    m = re.fullmatch(r"'(\w+)' is undefined", message)
    if m:
        return (f"undefined name {m.group(1)!r} (a template knows instance, env and "
                f"host)")
    m = re.fullmatch(r"'dict object' has no attribute '(\w+)'", message)
    if m:
        return (f"undefined name {m.group(1)!r}: not in the mapping (for env: not set in "
                f"the manager's environment; env.get({m.group(1)!r}, 'default') has a "
                f"default)")
    return message


def _where(tb: TracebackType | None, file: str) -> tuple[str, int]:
    """The template file and line of an exception raised while rendering.

    jinja2 rewrites the traceback so that frames of a template's code carry the
    template's name (``<template>`` for ``from_string``, the path of an included
    one) and its line numbers; the innermost such frame is the line that failed.
    """
    where, line = file, 0
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name == "<template>":
            where, line = file, tb.tb_lineno
        elif not name.endswith(".py") and not name.startswith("<"):
            where, line = name, tb.tb_lineno
        tb = tb.tb_next
    return where, line


def prepare_instance(root: yaml.Node, file: str, prefix: str, instance: str) -> None:
    """After rendering: expand ``%i``, ``%I``, ``%n``... in every scalar value (the
    INI loader's meanings), and give the unit its instance's name.

    ``service.name`` may be left out of a template (it is ``prefix@instance``);
    if it is there, it must render to that name.
    """
    from .ini import SpecifierContext, UnitName, expand_specifiers

    name = f"{prefix}@{instance}"
    unit = UnitName(f"{name}.service", prefix, instance, "service")
    ctx = SpecifierContext.from_process()
    todo = [root]
    while todo:  # an explicit stack: YAML nesting must not reach the recursion limit
        node = todo.pop()
        if isinstance(node, yaml.MappingNode):
            todo.extend(v for _, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, yaml.ScalarNode) and isinstance(node.value, str):
            try:
                node.value = expand_specifiers(node.value, unit, ctx)
            except ValueError as exc:
                raise UnitError(file, node.start_mark.line + 1, "", str(exc)) from None
    if not isinstance(root, yaml.MappingNode):
        return  # the parser says what is wrong with it
    service = next((v for k, v in root.value if k.value == "service"), None)
    if not isinstance(service, yaml.MappingNode):
        return
    named = next(((k, v) for k, v in service.value if k.value == "name"), None)
    if named is None:
        mark = service.start_mark
        service.value.insert(0, (yaml.ScalarNode("tag:yaml.org,2002:str", "name", mark, mark),
                                 yaml.ScalarNode("tag:yaml.org,2002:str", name, mark, mark)))
    elif named[1].value != name:
        raise UnitError(file, named[1].start_mark.line + 1, "service.name",
                        f"expected the instance's name {name!r} (or no name: a template's "
                        f"instances are named by the file), found {named[1].value!r}")
