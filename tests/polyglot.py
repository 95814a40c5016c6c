"""Helpers of the polyglot tests (Go, Node.js, Java): build a toolchain's
example once under ``build/``, write its hot-relay unit, relay it N times
under a bounded load and count what failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from loadgen import LoadGen, Summary

from aeterna.api.client import request

BUILD = ROOT / "build"


def need(tool: str, why: str) -> str:
    """The path of ``tool``, or skip the test with a reason."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed ({why}); `make sysdeps` as root installs it")
    return path


def go_env() -> dict[str, str]:
    """Go with its caches under build/ (a CI run builds once) and no module downloads."""
    return dict(os.environ, GOCACHE=str(BUILD / "go-cache"), GOPATH=str(BUILD / "go"),
                GOPROXY="off", GOFLAGS="-mod=mod", GO111MODULE="on", CGO_ENABLED="0")


def unit_yaml(name: str, command: list[str], port: int, *, notify: bool = True,
              srp: bool = False, stdin_socket: bool = False, soak: str = "300ms",
              env: dict[str, str] | None = None, start: str = "30s",
              notify_access: str | None = None) -> str:
    """A hot-relay unit on one loopback socket (values dumped as JSON: YAML flow style)."""
    service: dict[str, Any] = {
        "name": name, "command": command, "type": "notify" if notify else "simple",
        "timeouts": {"start": start, "stop": "15s"},
        "sockets": [{"listen": f"127.0.0.1:{port}", "name": "http"}],
        "env": [f"{k}={v}" for k, v in (env or {}).items()],
    }
    if stdin_socket:
        service["stdin"] = "socket"
    if notify_access:
        service["notify_access"] = notify_access
    orch: dict[str, Any] = {"strategy": "hot-relay", "startup": {"timeout": start},
                            "canary": {"soak_time": soak},
                            "drain": {"timeout": "15s", "signal": "SIGTERM"}}
    if srp:
        orch["state_handoff"] = {"enabled": True, "required": True, "timeout": "15s"}
    lines = ['version: "1.0"', "service:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in service.items()]
    lines += ["orchestration:"] + [f"  {k}: {json.dumps(v)}" for k, v in orch.items()]
    return "\n".join(lines) + "\n"


def rewrite(m: Any, name: str, text: str) -> None:
    """Replace the unit file atomically; the next ``reload`` relays to it."""
    path = m.tmp / "units" / f"{name}.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def relay(m: Any, name: str) -> dict[str, Any]:
    """One relay (control ``reload``); its result, which must be a promotion."""
    reply = request(m.control, "reload", name, timeout=90)
    assert reply.get("ok"), reply
    result: dict[str, Any] = reply["result"]
    assert result["outcome"] == "promoted", (result, m.output()[-3000:])
    return result


def settled(m: Any, name: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the serving generation alone is left (no canary, nothing draining)."""
    st: dict[str, Any] = m.wait_status(
        name, lambda st: st["relay"]["phase"] == "idle"
        and [g["role"] for g in st["generations"]] == ["serving"], timeout=timeout)
    return st


def relays_under_load(m: Any, name: str, port: int, count: int, *, method: str = "GET",
                      threads: int = 4, keepalive: int = 0, srp: bool = False,
                      between: Any = None) -> tuple[Summary, list[dict[str, Any]]]:
    """``count`` relays while a bounded load runs; the load's summary and the results.

    ``between(i)`` runs before relay ``i`` (to rewrite the unit, say). After each
    promotion the new generation alone serves a few requests before the next.
    """
    lg = LoadGen(port, threads=threads, keepalive=keepalive, max_duration=150.0,
                 max_requests=500_000, timeout=15.0, pause=0.002, method=method).start()
    results = []
    try:
        lg.wait_for(20, timeout=20)
        for i in range(count):
            if between is not None:
                between(i)
            r = relay(m, name)
            if srp:
                assert r["relay"]["handoff"] == "ok", r
            results.append(r)
            gen = r["relay"]["generation"]
            lg.wait_for(5, timeout=20, pred=lambda rec, g=gen: rec.gen in (None, g))
        settled(m, name)
        time.sleep(0.2)  # a last window in which N+1 alone serves
    finally:
        summary = lg.stop()
    return summary, results


def build_go(example: Path, out: Path) -> Path:
    """``go build`` an example into ``out`` (cached under build/)."""
    r = subprocess.run([need("go", "Debian's golang-go"), "build", "-o", str(out), "."],
                       cwd=example, env=go_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out
