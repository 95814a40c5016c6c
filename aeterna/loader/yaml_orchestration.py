"""The ``orchestration`` block of a YAML unit: hot relay, canary, handoff, hooks.

Split from ``yaml_units`` to keep each module to one job; it uses the same
located-node reader, so errors name the file, line and key path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from ..model import (
    Canary,
    Drain,
    Hook,
    Orchestration,
    Probe,
    ProbeKind,
    StateHandoff,
    Strategy,
)
from .durations import parse_size
from .errors import UnitError

if TYPE_CHECKING:
    from .yaml_units import _Doc

_KEYS = ("strategy", "canary", "state_handoff", "pre_flight", "startup", "drain",
         "max_draining", "post_process", "watch", "watch_debounce")


def orchestration(doc: _Doc, node: yaml.Node) -> Orchestration:
    p = "orchestration"
    m = doc.mapping(node, p, _KEYS)
    kw: dict[str, Any] = {}
    if "strategy" in m:
        kw["strategy"] = doc.choice(m["strategy"][1], f"{p}.strategy", Strategy)
        kw["strategy_given"] = True
    if "canary" in m:
        kw["canary"] = _canary(doc, m["canary"][1], f"{p}.canary")
    if "state_handoff" in m:
        kw["state_handoff"] = _handoff(doc, m["state_handoff"][1], f"{p}.state_handoff")
    if "pre_flight" in m:
        q = f"{p}.pre_flight"
        kw["pre_flight"] = tuple(_hook(doc, n, f"{q}[{i}]")
                                 for i, n in enumerate(doc.seq(m["pre_flight"][1], q)))
    if "startup" in m:
        s = doc.mapping(m["startup"][1], f"{p}.startup", ("timeout",))
        if "timeout" in s:
            kw["startup_timeout"] = doc.duration(s["timeout"][1], f"{p}.startup.timeout")
    if "drain" in m:
        d = doc.mapping(m["drain"][1], f"{p}.drain", ("timeout", "signal"))
        default = Drain()
        kw["drain"] = Drain(
            timeout=doc.duration(d["timeout"][1], f"{p}.drain.timeout")
            if "timeout" in d else default.timeout,
            signal=doc.signal_(d["signal"][1], f"{p}.drain.signal")
            if "signal" in d else default.signal)
    if "max_draining" in m:
        kw["max_draining"] = doc.integer(m["max_draining"][1], f"{p}.max_draining", 1)
    if "post_process" in m:
        q = f"{p}.post_process"
        pp = doc.mapping(m["post_process"][1], q, ("on_success", "on_failure"))
        for key in ("on_success", "on_failure"):
            if key in pp:
                nodes = doc.seq(pp[key][1], f"{q}.{key}")
                kw[key] = tuple(doc.argv(n, f"{q}.{key}[{i}]") for i, n in enumerate(nodes))
    if "watch" in m:
        kw["watch"] = tuple(_absolute(doc, n, f"{p}.watch[{i}]")
                            for i, n in enumerate(doc.seq(m["watch"][1], f"{p}.watch")))
    if "watch_debounce" in m:
        kw["watch_debounce"] = doc.duration(m["watch_debounce"][1], f"{p}.watch_debounce")
    return Orchestration(**kw)


def _absolute(doc: _Doc, node: yaml.Node, q: str) -> str:
    path = doc.text(node, q, empty=False)
    if not path.startswith("/"):
        raise doc.error(node, q, 'an absolute path like "/etc/app/config"')
    return path


def _canary(doc: _Doc, node: yaml.Node, q: str) -> Canary:
    c = doc.mapping(node, q, ("enabled", "soak_time", "probes", "max_rss", "max_cpu_percent"))
    kw: dict[str, Any] = {
        "enabled": doc.boolean(c["enabled"][1], f"{q}.enabled") if "enabled" in c else True}
    if "soak_time" in c:
        kw["soak_time"] = doc.duration(c["soak_time"][1], f"{q}.soak_time")
    if "probes" in c:
        nodes = doc.seq(c["probes"][1], f"{q}.probes")
        kw["probes"] = tuple(_probe(doc, n, f"{q}.probes[{i}]") for i, n in enumerate(nodes))
    if "max_rss" in c:
        kw["max_rss"] = doc.parsed(c["max_rss"][1], f"{q}.max_rss", parse_size,
                                   'a size like "512MiB"')
    if "max_cpu_percent" in c:
        kw["max_cpu_percent"] = doc.number(c["max_cpu_percent"][1], f"{q}.max_cpu_percent")
    return Canary(**kw)


def _probe(doc: _Doc, node: yaml.Node, q: str) -> Probe:
    m = doc.mapping(node, q, ("http", "tcp", "exec", "expect_status", "interval", "timeout"))
    kinds = [k for k in ("http", "tcp", "exec") if k in m]
    if len(kinds) != 1:
        raise UnitError(doc.file, node.start_mark.line + 1, q,
                        "expected exactly one of http, tcp or exec, found "
                        + (", ".join(kinds) if kinds else "none"))
    kind = kinds[0]
    kw: dict[str, Any] = {"kind": ProbeKind(kind)}
    if kind == "exec":
        kw["command"] = doc.argv(m["exec"][1], f"{q}.exec")
    else:
        target = doc.text(m[kind][1], f"{q}.{kind}", empty=False)
        if kind == "http" and not target.startswith("http://"):
            raise doc.error(m[kind][1], f"{q}.http", 'a URL like "http://127.0.0.1:8080/healthz"')
        if kind == "tcp" and ":" not in target:
            raise doc.error(m[kind][1], f"{q}.tcp", 'an address like "127.0.0.1:8080"')
        kw["target"] = target
    if "expect_status" in m:
        kw["expect_status"] = doc.integer(m["expect_status"][1], f"{q}.expect_status", 100)
    for key in ("interval", "timeout"):
        if key in m:
            kw[key] = doc.duration(m[key][1], f"{q}.{key}")
    return Probe(**kw)


def _hook(doc: _Doc, node: yaml.Node, q: str) -> Hook:
    if not isinstance(node, yaml.MappingNode):
        return Hook(command=doc.argv(node, q))
    m = doc.mapping(node, q, ("name", "command", "timeout"))
    if "command" not in m:
        raise UnitError(doc.file, node.start_mark.line + 1, f"{q}.command",
                        "expected a non-empty list of strings, found nothing (missing key)")
    return Hook(command=doc.argv(m["command"][1], f"{q}.command"),
                name=doc.text(m["name"][1], f"{q}.name") if "name" in m else "",
                timeout=doc.duration(m["timeout"][1], f"{q}.timeout")
                if "timeout" in m else 30.0)


def _handoff(doc: _Doc, node: yaml.Node, q: str) -> StateHandoff:
    s = doc.mapping(node, q, ("enabled", "socket_path", "timeout", "required", "max_size",
                              "persist_dir"))
    d = StateHandoff()
    return StateHandoff(
        enabled=doc.boolean(s["enabled"][1], f"{q}.enabled") if "enabled" in s else True,
        socket_path=doc.text(s["socket_path"][1], f"{q}.socket_path")
        if "socket_path" in s else "",
        timeout=doc.duration(s["timeout"][1], f"{q}.timeout") if "timeout" in s else d.timeout,
        required=doc.boolean(s["required"][1], f"{q}.required") if "required" in s else False,
        max_size=doc.parsed(s["max_size"][1], f"{q}.max_size", parse_size,
                            'a size like "1GiB"') if "max_size" in s else d.max_size,
        persist_dir=doc.text(s["persist_dir"][1], f"{q}.persist_dir")
        if "persist_dir" in s else "")
