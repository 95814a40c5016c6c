"""Aeterna's YAML unit files: text in, a frozen ``UnitSpec`` out, or a located error.

The schema is the original Aeterna design's (``version``, ``service``,
``orchestration``, ``observability``) extended with systemd's service settings.
We walk PyYAML's *node* tree rather than ``safe_load`` output so that every
error can name the line of the offending key or value. YAML 1.1 would read
``restart: no`` as a boolean; reading the scalar's raw text avoids that trap.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import yaml

from ..log import log_level
from ..model import (
    Backoff,
    Dependency,
    KillMode,
    ListenSpec,
    NotifyAccess,
    Observability,
    Orchestration,
    RestartPolicy,
    Service,
    ServiceType,
    SocketType,
    Source,
    StandardInput,
    StartLimit,
    Strategy,
    Timeouts,
    UnitSpec,
)
from ..wire.address import parse_metrics_address
from .durations import parse_bool, parse_duration, parse_signal, parse_size
from .errors import UnitError

E = TypeVar("E", bound="Any")

_NULL = "tag:yaml.org,2002:null"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# systemd's characters; the first one is a letter, digit or "_", so that "..", "."
# "-rf" and ":" are not names (they would be paths and options elsewhere).
_UNIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:\-]{0,254}")


class _Doc:
    """A unit file being read: its name, for locating errors."""

    def __init__(self, file: str):
        self.file = file

    # ------------------------------------------------------------- errors
    def error(self, node: yaml.Node, path: str, expected: str) -> UnitError:
        return UnitError(self.file, node.start_mark.line + 1, path,
                         f"expected {expected}, found {_describe(node)}")

    # ----------------------------------------------------------- shapes
    def mapping(self, node: yaml.Node, path: str,
                allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The mapping at ``node`` as {key: (key node, value node)}; strict keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, path or "(top level)", "a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = str(knode.value)
            kpath = f"{path}.{key}" if path else key
            if not isinstance(knode, yaml.ScalarNode):
                raise self.error(knode, path or "(top level)", "a plain key")
            if key not in allowed:
                import difflib

                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UnitError(self.file, knode.start_mark.line + 1, kpath,
                                f"unknown key{hint}, expected one of: {', '.join(allowed)}")
            if key in out:
                raise UnitError(self.file, knode.start_mark.line + 1, kpath,
                                "expected each key once, found it again (duplicate key)")
            out[key] = (knode, vnode)
        return out

    def seq(self, node: yaml.Node, path: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, path, "a list")
        return list(node.value)

    # ---------------------------------------------------------- scalars
    def text(self, node: yaml.Node, path: str, *, empty: bool = True) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            raise self.error(node, path, "a string")
        value = str(node.value)
        if not empty and not value.strip():
            raise self.error(node, path, "a non-empty string")
        return value

    def parsed(self, node: yaml.Node, path: str, parse: Callable[[str], Any],
               expected: str) -> Any:
        raw = self.text(node, path)
        try:
            return parse(raw)
        except (ValueError, OverflowError):
            raise self.error(node, path, expected) from None

    def boolean(self, node: yaml.Node, path: str) -> bool:
        return bool(self.parsed(node, path, parse_bool, "true or false"))

    def integer(self, node: yaml.Node, path: str, lo: int = 0) -> int:
        value = self.parsed(node, path, int, "a whole number")
        if value < lo:
            raise self.error(node, path, f"a whole number >= {lo}")
        return int(value)

    def number(self, node: yaml.Node, path: str, lo: float = 0.0) -> float:
        value = self.parsed(node, path, float, "a number")
        if not value >= lo:
            raise self.error(node, path, f"a number >= {lo}")
        return float(value)

    def duration(self, node: yaml.Node, path: str) -> float:
        return float(self.parsed(node, path, parse_duration,
                                 'a duration like "30s", "1m30s" or "250ms"'))

    def signal_(self, node: yaml.Node, path: str) -> signal.Signals:
        sig: signal.Signals = self.parsed(node, path, parse_signal,
                                          'a signal name like "SIGTERM"')
        return sig

    def choice(self, node: yaml.Node, path: str, enum_cls: type[E]) -> E:
        raw = self.text(node, path)
        for member in enum_cls:
            if member.value == raw:
                return member  # type: ignore[no-any-return]
        names = " | ".join(m.value for m in enum_cls)
        raise self.error(node, path, f"one of {names}")

    def argv(self, node: yaml.Node, path: str) -> tuple[str, ...]:
        """A command: a non-empty list of strings (or one string, split like a shell)."""
        if isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
            import shlex

            try:
                words = shlex.split(str(node.value))
            except ValueError:
                raise self.error(node, path, "a command with balanced quotes") from None
        else:
            words = [self.text(n, f"{path}[{i}]") for i, n in enumerate(self.seq(node, path))]
        if not words or not words[0].strip():
            raise self.error(node, path, "a non-empty command")
        return tuple(words)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list" if node.value else "an empty list"
    if node.tag == _NULL:
        return "nothing"
    value = str(node.value)
    if len(value) > 40:
        value = value[:37] + "..."
    return repr(value)


# ------------------------------------------------------------------ sections

_TOP = ("version", "service", "orchestration", "observability", "description")
_SERVICE = (
    "name", "command", "type", "env", "env_file", "working_directory", "user", "group",
    "restart", "restart_sec", "backoff", "start_limit", "timeouts", "stop_signal",
    "kill_mode", "depends_on", "notify_access", "watchdog_sec", "watchdog_signal",
    "reload_signal", "fd_store_max", "limit_nofile", "success_exit_status", "sockets",
    "exec_start_pre", "exec_start_post", "exec_stop", "exec_reload", "stdin", "on_demand",
    "enabled",
)
_SOCKET = (
    "listen", "type", "name", "backlog", "reuse_port", "ipv6_only", "nodelay", "keepalive",
    "receive_buffer", "send_buffer", "mode", "user", "group", "remove_on_stop",
)


# libyaml's parser, when PyYAML has it, for many files only: it is 15x faster
# (about 1 ms less per file, a second for 1,000 units at start and at every
# reload), but touching its pages costs the manager 0.2 MiB of RSS for good,
# which a small manager (the 20 MiB footprint budget) should not pay.
FAST_FROM = 32  # unit files in one load
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


def _compose(text: str, fast: bool) -> yaml.Node | None:
    if fast and _FAST_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            pass  # parsed again below, for the Python parser's messages
    return yaml.compose(text, Loader=yaml.SafeLoader)


def load_yaml_unit(text: str, file: str, fast: bool = False,
                   instance: tuple[str, str] | None = None) -> UnitSpec:
    """Parse one YAML unit file's text. Pure: raises UnitError, never anything else.

    ``fast``: many files are being loaded; use libyaml if there is one.
    ``instance``: (prefix, instance) of a rendered template (``templates.py``):
    its values' specifiers are expanded and its name is the instance's.
    """
    doc = _Doc(file)
    try:
        root = _compose(text, fast)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise UnitError(file, line, "", f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise UnitError(file, 0, "", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise UnitError(file, 0, "", "invalid YAML: nested too deeply") from None
    if root is None:
        raise UnitError(file, 1, "", "expected a mapping with a 'service' key, found an empty file")
    if instance is not None:
        from .templates import prepare_instance

        prepare_instance(root, file, *instance)
    top = doc.mapping(root, "", _TOP)
    if "version" in top:
        knode, vnode = top["version"]
        if doc.text(vnode, "version") not in ("1", "1.0"):
            raise doc.error(vnode, "version", '"1.0"')
    if "service" not in top:
        raise UnitError(file, root.start_mark.line + 1, "service",
                        "expected a mapping, found nothing (missing key)")
    service = _service(doc, top["service"][1])
    from .yaml_orchestration import orchestration as _orchestration

    orchestration = (_orchestration(doc, top["orchestration"][1])
                     if "orchestration" in top else Orchestration())
    if (service.type is ServiceType.FORKING and orchestration.strategy is Strategy.HOT_RELAY):
        node = top["orchestration"][1]
        raise UnitError(file, node.start_mark.line + 1, "orchestration.strategy",
                        "expected restart for type: forking, found 'hot-relay': the daemon "
                        "binds and forks on its own, so N+1 cannot share N's accept queue in "
                        "a controlled way")
    observability = (_observability(doc, top["observability"][1])
                     if "observability" in top else Observability())
    description = doc.text(top["description"][1], "description") if "description" in top else ""
    return UnitSpec(service=service, orchestration=orchestration, observability=observability,
                source=Source(file, root.start_mark.line + 1), description=description)


def _service(doc: _Doc, node: yaml.Node) -> Service:
    m = doc.mapping(node, "service", _SERVICE)
    p = "service"
    if "name" not in m:
        raise UnitError(doc.file, node.start_mark.line + 1, "service.name",
                        "expected the unit's name, found nothing (missing key)")
    if "command" not in m:
        raise UnitError(doc.file, node.start_mark.line + 1, "service.command",
                        "expected a non-empty list of strings, found nothing (missing key)")
    name_node = m["name"][1]
    name = doc.text(name_node, "service.name", empty=False)
    if not _UNIT_NAME.fullmatch(name):
        raise doc.error(name_node, "service.name", "a unit name: letters, digits and _.@:-, "
                        "starting with a letter, digit or _, at most 255 characters")
    kw: dict[str, Any] = {"name": name, "command": doc.argv(m["command"][1], "service.command")}
    simple: dict[str, Callable[[yaml.Node, str], Any]] = {
        "type": lambda n, q: doc.choice(n, q, ServiceType),
        "working_directory": lambda n, q: doc.text(n, q, empty=False),
        "user": lambda n, q: doc.text(n, q, empty=False),
        "group": lambda n, q: doc.text(n, q, empty=False),
        "restart": lambda n, q: doc.choice(n, q, RestartPolicy),
        "restart_sec": doc.duration,
        "stop_signal": doc.signal_,
        "watchdog_signal": doc.signal_,
        "reload_signal": doc.signal_,
        "kill_mode": lambda n, q: doc.choice(n, q, KillMode),
        "notify_access": lambda n, q: doc.choice(n, q, NotifyAccess),
        "watchdog_sec": doc.duration,
        "fd_store_max": doc.integer,
        "limit_nofile": lambda n, q: doc.integer(n, q, lo=1),
        "stdin": lambda n, q: doc.choice(n, q, StandardInput),
    }
    for key, fn in simple.items():
        if key in m:
            kw[key] = fn(m[key][1], f"{p}.{key}")
    if "env" in m:
        kw["env"] = _env(doc, m["env"][1], f"{p}.env")
    if "env_file" in m:
        kw["env_files"] = _env_files(doc, m["env_file"][1], f"{p}.env_file")
    if "backoff" in m:
        b = doc.mapping(m["backoff"][1], f"{p}.backoff", ("factor", "max_delay"))
        kw["backoff"] = Backoff(
            factor=doc.number(b["factor"][1], f"{p}.backoff.factor", 1.0) if "factor" in b else 2.0,
            max_delay=doc.duration(b["max_delay"][1], f"{p}.backoff.max_delay")
            if "max_delay" in b else 0.0)
    if "start_limit" in m:
        s = doc.mapping(m["start_limit"][1], f"{p}.start_limit", ("burst", "interval"))
        d = StartLimit()
        kw["start_limit"] = StartLimit(
            burst=doc.integer(s["burst"][1], f"{p}.start_limit.burst") if "burst" in s else d.burst,
            interval=doc.duration(s["interval"][1], f"{p}.start_limit.interval")
            if "interval" in s else d.interval)
    if "timeouts" in m:
        t = doc.mapping(m["timeouts"][1], f"{p}.timeouts", ("start", "stop"))
        d2 = Timeouts()
        kw["timeouts"] = Timeouts(
            start=doc.duration(t["start"][1], f"{p}.timeouts.start") if "start" in t else d2.start,
            stop=doc.duration(t["stop"][1], f"{p}.timeouts.stop") if "stop" in t else d2.stop)
    if "depends_on" in m:
        kw["depends_on"] = _depends(doc, m["depends_on"][1], f"{p}.depends_on", name)
    if "success_exit_status" in m:
        nodes = doc.seq(m["success_exit_status"][1], f"{p}.success_exit_status")
        kw["success_exit_status"] = tuple(
            doc.integer(n, f"{p}.success_exit_status[{i}]") for i, n in enumerate(nodes))
    for key in ("exec_start_pre", "exec_start_post", "exec_stop", "exec_reload"):
        # Lists of commands; a leading "-" on the program lets it fail, as in systemd.
        if key in m:
            nodes = doc.seq(m[key][1], f"{p}.{key}")
            kw[key] = tuple(doc.argv(n, f"{p}.{key}[{i}]") for i, n in enumerate(nodes))
    if "sockets" in m:
        nodes = doc.seq(m["sockets"][1], f"{p}.sockets")
        kw["sockets"] = tuple(_socket(doc, n, f"{p}.sockets[{i}]", name)
                              for i, n in enumerate(nodes))
    if kw.get("stdin") is StandardInput.SOCKET and not kw.get("sockets"):
        raise doc.error(m["stdin"][1], f"{p}.stdin",
                        "null, or socket with at least one entry in service.sockets")
    if "enabled" in m:
        kw["enabled"] = doc.boolean(m["enabled"][1], f"{p}.enabled")
    if "on_demand" in m:
        kw["on_demand"] = doc.boolean(m["on_demand"][1], f"{p}.on_demand")
        if kw["on_demand"] and not kw.get("sockets"):
            raise doc.error(m["on_demand"][1], f"{p}.on_demand",
                            "false, or sockets to wait on (a unit started by its first "
                            "connection needs service.sockets)")
    return Service(**kw)


def _env(doc: _Doc, node: yaml.Node, path: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            key = doc.text(knode, path)
            if not _ENV_NAME.fullmatch(key):
                raise doc.error(knode, f"{path}.{key}", "an environment variable name")
            pairs.append((key, doc.text(vnode, f"{path}.{key}")))
        return tuple(pairs)
    for i, item in enumerate(doc.seq(node, path)):
        raw = doc.text(item, f"{path}[{i}]")
        key, eq, value = raw.partition("=")
        if not eq or not _ENV_NAME.fullmatch(key):
            raise doc.error(item, f"{path}[{i}]", '"NAME=value"')
        pairs.append((key, value))
    return tuple(pairs)


def _env_files(doc: _Doc, node: yaml.Node, path: str) -> tuple[tuple[str, bool], ...]:
    items = [node] if isinstance(node, yaml.ScalarNode) else doc.seq(node, path)
    out = []
    for item in items:
        raw = doc.text(item, path, empty=False)
        optional = raw.startswith("-")
        out.append((raw[1:] if optional else raw, optional))
    return tuple(out)


def _depends(doc: _Doc, node: yaml.Node, path: str, me: str) -> tuple[Dependency, ...]:
    deps: list[Dependency] = []
    for i, item in enumerate(doc.seq(node, path)):
        q = f"{path}[{i}]"
        if isinstance(item, yaml.MappingNode):
            m = doc.mapping(item, q, ("name", "require", "order"))
            if "name" not in m:
                raise UnitError(doc.file, item.start_mark.line + 1, f"{q}.name",
                                "expected a unit name, found nothing (missing key)")
            dep = Dependency(
                name=doc.text(m["name"][1], f"{q}.name", empty=False),
                require=doc.boolean(m["require"][1], f"{q}.require") if "require" in m else True,
                order=doc.boolean(m["order"][1], f"{q}.order") if "order" in m else True)
        else:
            dep = Dependency(name=doc.text(item, q, empty=False))
        dep = replace(dep, source=Source(doc.file, item.start_mark.line + 1))
        if dep.name == me:
            raise doc.error(item, q, "another unit's name (a unit cannot depend on itself)")
        deps.append(dep)
    return tuple(deps)


def _socket(doc: _Doc, node: yaml.Node, path: str, unit: str) -> ListenSpec:
    m = doc.mapping(node, path, _SOCKET)
    if "listen" not in m:
        raise UnitError(doc.file, node.start_mark.line + 1, f"{path}.listen",
                        'expected an address like "127.0.0.1:8080" or "/run/app.sock", '
                        'found nothing (missing key)')
    kw: dict[str, Any] = {"source": Source(doc.file, node.start_mark.line + 1)}
    if "type" in m:
        kw["type"] = doc.choice(m["type"][1], f"{path}.type", SocketType)
    lnode = m["listen"][1]
    kw["address"] = doc.text(lnode, f"{path}.listen", empty=False)
    check_address(doc, lnode, f"{path}.listen", kw["address"], kw.get("type", SocketType.STREAM))
    kw["name"] = (doc.text(m["name"][1], f"{path}.name") if "name" in m else f"{unit}.socket")
    if ":" in kw["name"] or len(kw["name"]) > 255 or not kw["name"].isprintable():
        raise doc.error(m["name"][1], f"{path}.name",
                        "a name of printable ASCII without ':' (at most 255 characters)")
    for key in ("reuse_port", "nodelay", "keepalive", "remove_on_stop", "ipv6_only"):
        if key in m:
            kw[key] = doc.boolean(m[key][1], f"{path}.{key}")
    if "backlog" in m:
        kw["backlog"] = doc.integer(m["backlog"][1], f"{path}.backlog", 1)
    for key in ("receive_buffer", "send_buffer"):
        if key in m:
            kw[key] = doc.parsed(m[key][1], f"{path}.{key}", parse_size, 'a size like "256KiB"')
    if "mode" in m:
        kw["mode"] = doc.parsed(m["mode"][1], f"{path}.mode", _octal, 'an octal mode like "0660"')
    for key in ("user", "group"):
        if key in m:
            kw[key] = doc.text(m[key][1], f"{path}.{key}", empty=False)
    return ListenSpec(**kw)


def _octal(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise ValueError(text)
    return value


def check_address(doc: _Doc, node: yaml.Node, path: str, address: str,
                  type_: SocketType) -> None:
    """Validate a listen address with the sockets module's pure parser."""
    try:
        from ..wire.address import parse_address
    except ImportError:  # pragma: no cover - during bootstrap only
        return
    try:
        parse_address(address, type_)
    except ValueError as exc:
        raise UnitError(doc.file, node.start_mark.line + 1, path, str(exc)) from None


def _observability(doc: _Doc, node: yaml.Node) -> Observability:
    p = "observability"
    m = doc.mapping(node, p, ("metrics_port", "log_level"))
    kw: dict[str, Any] = {}
    if "metrics_port" in m:
        kw["metrics_port"] = doc.parsed(m["metrics_port"][1], f"{p}.metrics_port",
                                        parse_metrics_address,
                                        "PORT, :PORT, IPV4:PORT or [IPV6]:PORT")
    if "log_level" in m:
        kw["log_level"] = doc.parsed(m["log_level"][1], f"{p}.log_level", log_level,
                                     "one of debug | info | warning | error")
    return Observability(**kw)
