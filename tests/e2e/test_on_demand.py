"""On-demand activation: a down unit with sockets is started by its first connection,
as systemd's socket units are, and the connections that woke it are served."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any

from conftest import ROOT, free_port

from aeterna.api.client import request

APP = ROOT / "tests" / "apps" / "activated_echo.py"


def unit(port: int, on_demand: bool) -> str:
    return (f"service:\n  name: echo\n  command: [{sys.executable}, {APP}]\n"
            f"  timeouts: {{stop: 5s}}\n  on_demand: {str(on_demand).lower()}\n"
            f"  sockets:\n    - listen: 127.0.0.1:{port}\n")


KEEP = "service:\n  name: keep\n  command: [sleep, '60']\n"


def ask(port: int, text: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(text.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode()


def test_a_stopped_socket_unit_is_started_by_a_connection(aeterna: Any) -> None:
    port = free_port()
    m = aeterna({"echo.yaml": unit(port, on_demand=False), "keep.yaml": KEEP})
    m.wait_ready()
    m.wait_status("echo", lambda s: s["state"] == "active")
    assert ask(port, "one").startswith("pong gen=1 ")
    assert m.ctl("stop", "echo")["result"]["state"] == "inactive"
    m.wait_line(r"unit\.waiting-for-connection unit=echo sockets=1")
    reply = ask(port, "two")  # waits in the accept queue while the unit starts
    assert reply.startswith("pong gen=2 "), reply
    m.wait_line(r"unit\.activated unit=echo by=socket")
    assert m.status("echo")["state"] == "active"
    # Started by the user again, it is no longer armed; stopped, it is again.
    assert m.ctl("stop", "echo")["ok"]
    assert ask(port, "three").startswith("pong gen=3 ")
    assert m.count(r"unit\.activated unit=echo") == 2


def test_200_concurrent_first_connections_are_all_served(aeterna: Any) -> None:
    port = free_port()
    m = aeterna({"echo.yaml": unit(port, on_demand=True)})  # the only unit: no exit
    m.wait_ready()
    m.wait_line(r"unit\.waiting-for-connection unit=echo")
    st = m.status("echo")
    assert st["state"] == "inactive" and st["main_pid"] is None
    replies: dict[int, str] = {}
    errors: list[BaseException] = []
    go = threading.Barrier(200)

    def client(i: int) -> None:
        try:
            go.wait(20)
            replies[i] = ask(port, f"c{i}")
        except BaseException as exc:  # a refused or reset connection fails the test
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert len(replies) == 200
    assert {r.split()[1] for r in replies.values()} == {"gen=1"}  # one start for all
    assert len({r.split()[2] for r in replies.values()}) == 1
    assert m.count(r"unit\.activated unit=echo") == 1
    assert m.status("echo")["state"] == "active"
    # The unit's log ring holds one "served" line per client (printed after the reply).
    deadline = time.monotonic() + 10
    while True:
        entries = request(m.control, "logs", "echo", lines=1000, timeout=10)["result"][
            "entries"]
        served = {e["text"] for e in entries if e["text"].startswith("served ")}
        if len(served) == 200:
            break
        assert time.monotonic() < deadline, len(served)
        time.sleep(0.05)
    assert served == {f"served c{i}" for i in range(200)}


def test_on_demand_needs_sockets(tmp_path: Any) -> None:
    import subprocess

    from conftest import AETERNA

    (tmp_path / "u.yaml").write_text("service:\n  name: x\n  command: [x]\n  on_demand: true\n")
    r = subprocess.run([*AETERNA, "validate", str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=30)
    assert r.returncode == 2
    assert r.stderr.startswith(f"{tmp_path}/u.yaml:4: service.on_demand: expected false, or "
                               "sockets to wait on")


def test_a_disabled_unit_waits_for_a_start_or_a_connection(aeterna: Any, tmp_path: Any) -> None:
    """``enabled: false``: not started at boot; with sockets, its first connection starts
    it; ``is-enabled`` says disabled (exit 1), as Debian's deb-systemd-invoke reads it."""
    import shutil
    import subprocess

    from conftest import AETERNA

    port = free_port()
    disabled = "service:\n  name: d\n  command: [sleep, '60']\n  enabled: false\n"
    m = aeterna({"d.yaml": disabled,
                 "echo.yaml": unit(port, on_demand=False) + "  enabled: false\n"})
    m.wait_ready()
    m.wait_line(r"unit\.waiting-for-connection unit=echo")
    assert m.status("d")["state"] == "inactive" and m.status("echo")["state"] == "inactive"
    assert m.proc.poll() is None  # nothing runs, and the manager waits
    r = subprocess.run([*AETERNA, "--control", m.control, "is-enabled", "d"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert (r.returncode, r.stdout) == (1, "disabled\n")
    assert ask(port, "hello").startswith("pong gen=1 ")
    if shutil.which("deb-systemd-invoke"):
        from test_systemctl import env_for, front_ends

        env = {**env_for(m, front_ends(tmp_path)), "DPKG_ROOT": str(tmp_path / "none")}
        r = subprocess.run(["deb-systemd-invoke", "start", "d.service"], capture_output=True,
                           text=True, timeout=60, env=env)
        assert "d.service is a disabled or a static unit, not starting it" in r.stderr
        assert m.status("d")["state"] == "inactive"
    r = subprocess.run([*AETERNA, "--control", m.control, "start", "d"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0 and m.status("d")["state"] == "active", r.stderr
