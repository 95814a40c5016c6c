"""The scaffolds of ``aeterna init`` run: the files it writes, unedited, under a real
manager. ``web`` (gunicorn) survives 5 hot relays under load with 0 failed
requests; ``agent``, ``worker`` and ``socket`` start and answer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import AETERNA, ROOT, free_port
from loadgen import LoadGen

GUNICORN = str(Path(sys.executable).parent / "gunicorn")
AETERNA_BIN = str(Path(sys.executable).parent / "aeterna")
APPS = ROOT / "tests" / "apps"


def init(*args: str) -> str:
    r = subprocess.run([*AETERNA, "init", *args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\nnext: " in r.stdout, r.stdout
    return r.stdout


def test_web_scaffold_survives_five_relays_under_load(aeterna: Any, tmp_path: Path) -> None:
    port = free_port()
    app = (f"{GUNICORN} --chdir {APPS} -w 2 --preload --no-control-socket "
           f"--graceful-timeout 5 relay_app:app")
    init("web", str(tmp_path / "units"), "--name", "shop", "--port", str(port), "--app", app,
         "--set", "probe_path=/healthz", "--set", "metrics=")
    m = aeterna(tmp_path / "units")
    m.wait_ready(15)
    st = m.wait_status("shop", lambda s: s["state"] == "active", timeout=30)
    gen, pid = st["generation"], st["main_pid"]
    with LoadGen(port, threads=4, keepalive=2, max_duration=90.0, timeout=10.0,
                 pause=0.002) as lg:
        lg.start()
        lg.wait_for(20, timeout=15)
        for i in range(5):
            r = m.ctl("reload", "shop", timeout=60)
            assert r["ok"], r
            res = r["result"]
            assert res["outcome"] == "promoted", (i, res)
            assert res["relay"]["old_pid"] == pid and res["relay"]["new_pid"] != pid
            gen, pid = res["relay"]["generation"], res["relay"]["new_pid"]
            lg.wait_for(5, timeout=10, pred=lambda rec, g=gen: rec.gen == g)
        summary = lg.stop()
    assert summary.requests > 0 and summary.failed == 0, summary.describe()
    assert len(summary.gens) >= 5, summary.describe()
    assert m.count(r"relay\.outcome unit=shop outcome=promoted") == 5
    print(f"web scaffold, 5 relays: {summary.describe()}")


def test_agent_worker_and_socket_scaffolds_run_and_answer(aeterna: Any,
                                                         tmp_path: Path) -> None:
    py = sys.executable
    agent_port, socket_port = free_port(), free_port()
    init("agent", str(tmp_path / "agent"), "--port", str(agent_port),
         "--app", f"{py} {ROOT}/examples/agent/agent.py")
    init("worker", str(tmp_path / "worker"), "--name", "beat",
         "--app", "sh -c 'while true; do echo beat-line; sleep 5; done'")
    init("socket", str(tmp_path / "socket"), "--name", "greet", "--port", str(socket_port),
         "--app", f"{py} {ROOT}/examples/hello/app.py")
    m = aeterna([tmp_path / "agent", tmp_path / "worker", tmp_path / "socket"])
    m.wait_ready(20)
    for unit in ("agent", "beat", "greet"):
        m.wait_status(unit, lambda s: s["state"] == "active", timeout=60)

    req = urllib.request.Request(f"http://127.0.0.1:{agent_port}/chat", method="POST",
                                 data=json.dumps({"session": "s1", "message": "hi"}).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        chat = json.loads(r.read())
    assert chat["session"] == "s1" and chat["messages"] == 2

    m.wait_line(r"beat-line", timeout=10)

    pid = m.status("greet")["main_pid"]
    with urllib.request.urlopen(f"http://127.0.0.1:{socket_port}/", timeout=10) as r:
        assert r.read().decode().startswith(f"hello from pid {pid}")
    # The socket's own unit file bound it: the service was started with LISTEN_FDS.
    deadline = time.monotonic() + 5
    while not m.matching(r"socket\.\S+ .*greet"):
        assert time.monotonic() < deadline, m.output()[-3000:]
        time.sleep(0.05)


def test_host_scaffold_manager_says_ready_and_stopping(aeterna: Any, tmp_path: Path) -> None:
    """templates/host/aeterna.service says Type=notify: the manager tells its own
    supervisor READY=1 once booted and STOPPING=1 on SIGTERM (systemd's protocol,
    on a datagram socket of the test's, as systemd would give it)."""
    port = free_port()
    init("host", str(tmp_path / "host"), "--name", "site", "--port", str(port),
         "--app", f"{sys.executable} {ROOT}/examples/hello/app.py", "--set", "metrics=")
    unit = (tmp_path / "host" / "aeterna.service").read_text()
    assert "Type=notify" in unit and "KillMode=mixed" in unit
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sup:
        sup.bind(path)
        sup.settimeout(20)
        m = aeterna(tmp_path / "host" / "units", env={"NOTIFY_SOCKET": path})
        ready = sup.recv(4096).decode()
        assert ready.startswith("READY=1\n") and f"MAINPID={m.proc.pid}" in ready, ready
        m.wait_status("site", lambda s: s["state"] == "active", timeout=20)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
        m.signal(signal.SIGTERM)
        assert sup.recv(4096).split(b"\n")[0] == b"STOPPING=1"
        # One unit: its status, as tini does. examples/hello drains on SIGTERM and
        # exits 0; an app that dies of the signal gives 143 (SuccessExitStatus=).
        assert m.wait_exit(20) == 0
    assert "SuccessExitStatus=143" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="needs systemd-analyze (Debian: systemd)")
def test_systemd_itself_accepts_the_host_and_socket_files(tmp_path: Path) -> None:
    """systemd's own parser reads the files systemd would read: not one warning."""
    init("host", str(tmp_path / "host"), "--set", f"aeterna={AETERNA_BIN}")
    init("socket", str(tmp_path / "socket"), "--name", "greet")
    for files in (["host/aeterna.service"], ["socket/greet.socket", "socket/greet.service"]):
        r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                            *[str(tmp_path / f) for f in files]],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", (files, r.stderr)
