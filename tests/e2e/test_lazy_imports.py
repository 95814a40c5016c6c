"""An idle manager carries only what it uses: relay, SRP, metrics and status code load on use.

The manager of a plain unit, up and idle, must not have imported the relay
package, the SRP side, the HTTP endpoints, the status collector, psutil or a
thread pool; a unit that names a metrics address loads the HTTP code, and
one with SRP its channels, and nothing more.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, write_units

LAZY = ("aeterna.relay.relay", "aeterna.relay.coordinator", "aeterna.relay.srp",
        "aeterna.relay.handoff", "aeterna.relay.probes", "aeterna.api.http",
        "aeterna.api.metrics", "aeterna.api.status", "psutil", "concurrent.futures.thread",
        "json", "jinja2", "aeterna.loader.templates", "aeterna.scaffold",
        "aeterna_sdk")


def idle_modules(tmp_path: Path, unit: str) -> set[str]:
    units = write_units(tmp_path / "units", {"u.yaml": unit})
    out = tmp_path / "modules.txt"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "apps" / "idle_modules.py"),
                        str(units), str(tmp_path / "control.sock"), str(out)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    # One unit: the manager exits with its status, 128+SIGTERM after the stop (tini's way).
    assert r.returncode == 143 and out.exists(), r.stderr
    return set(out.read_text().split())


SLEEP = 'service:\n  name: u\n  command: ["sleep", "60"]\n'


def test_an_idle_manager_has_not_imported_relay_srp_metrics_or_status(tmp_path: Path) -> None:
    mods = idle_modules(tmp_path, SLEEP)
    assert "aeterna.manager.manager" in mods and "aeterna.api.server" in mods
    assert not mods & set(LAZY), sorted(mods & set(LAZY))


def test_metrics_address_loads_the_http_code_only(tmp_path: Path) -> None:
    from conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    mods = idle_modules(tmp_path, SLEEP + f'observability:\n  metrics_port: "{address}"\n')
    assert {"aeterna.api.http", "aeterna.api.metrics"} <= mods
    assert not mods & {"aeterna.relay.relay", "aeterna.relay.srp", "aeterna.api.status"}


def test_srp_loads_its_channels_not_the_relay(tmp_path: Path) -> None:
    mods = idle_modules(tmp_path, SLEEP + "orchestration:\n  strategy: hot-relay\n"
                        "  state_handoff: {enabled: true}\n")
    assert "aeterna.relay.srp" in mods
    assert not mods & {"aeterna.relay.relay", "aeterna.relay.coordinator",
                       "aeterna.api.metrics", "aeterna.api.status"}


def test_aeterna_re_exports_the_sdk_on_first_use_only() -> None:
    """``from aeterna import AeternaClient`` is the SDK's class; ``import aeterna`` alone
    does not load the SDK."""
    code = ("import sys, aeterna\n"
            "assert 'aeterna_sdk' not in sys.modules, 'loaded at import'\n"
            "from aeterna import AeternaClient, StateArena\n"
            "import aeterna_sdk\n"
            "assert AeternaClient is aeterna_sdk.AeternaClient\n"
            "assert StateArena is aeterna_sdk.StateArena\n"
            "try:\n"
            "    aeterna.NoSuchThing\n"
            "except AttributeError:\n"
            "    print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
