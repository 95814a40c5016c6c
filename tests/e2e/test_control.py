"""The control socket and the CLI verbs that use it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import AETERNA, ROOT, is_root

SLEEPER = "service:\n  name: {n}\n  command: [sleep, '60']\n  timeouts: {{stop: 5s}}\n"


def cli(m: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AETERNA, "--control", m.control, *args], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def test_socket_is_private(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a")})
    m.wait_ready()
    mode = stat.S_IMODE(os.stat(m.control).st_mode)
    assert mode == 0o600


def test_status_json_and_table(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a"), "b.yaml": SLEEPER.format(n="b")})
    m.wait_ready()
    m.wait_status("b", lambda s: s["state"] == "active")
    r = cli(m, "status", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    (a,) = [u for u in data["units"] if u["name"] == "a"]
    assert a["state"] == "active" and a["generation"] == 1 and a["restarts"] == 0
    assert a["main_pid"] > 0 and a["uptime"] >= 0
    assert a["rss"] > 0 and a["cpu_seconds"] is not None
    r = cli(m, "status", "a")
    assert r.returncode == 0
    header, row = r.stdout.splitlines()
    assert header.split()[:4] == ["UNIT", "STATE", "RESULT", "PID"]
    assert row.split()[:4] == ["a", "active", "success", str(a["main_pid"])]


def test_stop_and_restart_wait_for_the_outcome(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a"), "b.yaml": SLEEPER.format(n="b")})
    m.wait_ready()
    first = m.wait_status("a", lambda s: s["state"] == "active")
    r = cli(m, "restart", "a")
    assert r.returncode == 0, r.stderr
    after = m.status("a")
    assert after["state"] == "active" and after["generation"] == 2
    assert after["main_pid"] != first["main_pid"]
    r = cli(m, "stop", "a")
    assert r.returncode == 0, r.stderr
    assert m.status("a")["state"] == "inactive"  # already stopped when the verb returned
    assert m.status("b")["state"] == "active"
    r = cli(m, "stop")
    assert r.returncode == 0
    assert m.wait_exit() == 0


def test_stop_of_a_required_unit_stops_its_dependents_first(aeterna: Any) -> None:
    m = aeterna({"db.yaml": SLEEPER.format(n="db"),
                 "web.yaml": SLEEPER.format(n="web") + "  depends_on: [db]\n",
                 "other.yaml": SLEEPER.format(n="other")})
    m.wait_ready()
    m.wait_status("web", lambda s: s["state"] == "active")
    assert cli(m, "stop", "db").returncode == 0
    assert m.status("web")["state"] == "inactive"
    assert m.status("other")["state"] == "active"
    exited = [line.split("unit=")[1].split()[0] for line in m.matching(r"unit\.exited")]
    assert exited == ["web", "db"]


def test_start_verb_is_systemctl_start(aeterna: Any) -> None:
    m = aeterna({"db.yaml": SLEEPER.format(n="db"),
                 "web.yaml": SLEEPER.format(n="web") + "  depends_on: [db]\n",
                 "other.yaml": SLEEPER.format(n="other")})  # the manager runs while one does
    m.wait_ready()
    web = m.wait_status("web", lambda s: s["state"] == "active")
    # Already up: nothing happens, the same process keeps running.
    r = cli(m, "start", "web", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["main_pid"] == web["main_pid"]
    assert cli(m, "stop", "db").returncode == 0  # takes web down with it
    assert m.status("web")["state"] == "inactive"
    # Starting web brings up db, which it requires, first; the verb waits for both.
    r = cli(m, "start", "web", "--json")
    assert r.returncode == 0, r.stderr
    after = json.loads(r.stdout)
    assert after["state"] == "active" and after["main_pid"] != web["main_pid"]
    assert m.status("db")["state"] == "active"
    started = [line.split("unit=")[1].split()[0] for line in m.matching(r"unit\.started")]
    assert started[-2:] == ["db", "web"], m.output()
    # Usage errors: neither -c nor a unit, or both.
    for args in (["start"], ["start", "web", "-c", str(m.tmp / "units")]):
        r = cli(m, *args)
        assert r.returncode == 2 and "start" in r.stderr and "Traceback" not in r.stderr


def test_stopping_the_last_unit_keeps_the_manager_for_a_start(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a")})
    m.wait_ready()
    first = m.wait_status("a", lambda s: s["state"] == "active")
    assert cli(m, "stop", "a").returncode == 0
    # Held down on request, not ended by itself: the manager stays (tini-style
    # exits are for a workload that ends on its own, checked in test_lifecycle).
    assert m.status("a")["state"] == "inactive" and m.proc.poll() is None
    r = cli(m, "start", "a", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["main_pid"] != first["main_pid"]
    assert cli(m, "stop").returncode == 0
    assert m.wait_exit() == 143  # tini's convention: the only unit's status, 128 + SIGTERM


def test_start_of_a_chain_starts_each_unit_once(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a"),
                 "b.yaml": SLEEPER.format(n="b") + "  depends_on: [a]\n",
                 "c.yaml": SLEEPER.format(n="c") + "  depends_on: [b]\n",
                 "other.yaml": SLEEPER.format(n="other")})
    m.wait_ready()
    m.wait_status("c", lambda s: s["state"] == "active")
    assert cli(m, "stop", "a").returncode == 0  # c, b, a go down, in that order
    mark = len(m.lines)
    r = cli(m, "restart", "c")
    assert r.returncode == 0, r.stderr
    started = [line.split("unit=")[1].split()[0] for line in m.lines[mark:]
               if "unit.started" in line]
    assert started == ["a", "b", "c"]
    assert all(m.status(n)["generation"] == 2 for n in "abc")


def test_failed_restart_exits_nonzero(aeterna: Any, tmp_path: Path) -> None:
    flag = tmp_path / "fail-next"
    unit = ("service:\n  name: f\n  command: [sh, -c, 'test -e "
            f"{flag} && exit 4; exec sleep 60']\n")
    m = aeterna({"f.yaml": unit, "keep.yaml": SLEEPER.format(n="keep")})
    m.wait_ready()
    m.wait_status("f", lambda s: s["state"] == "active")
    flag.write_text("")
    r = cli(m, "restart", "f")
    # a simple service is "up" after fork; it then fails and the verb reports it
    if r.returncode == 0:
        m.wait_status("f", lambda s: s["state"] == "failed")
    else:
        assert "failed" in r.stdout or "failed" in r.stderr


def test_reload_prints_what_it_did_with_added_and_removed_files(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a"), "gone.yaml": SLEEPER.format(n="gone")})
    m.wait_ready()
    m.wait_status("gone", lambda s: s["state"] == "active")
    units = m.tmp / "units"
    (units / "b.yaml").write_text(SLEEPER.format(n="b"))
    (units / "gone.yaml").unlink()
    r = cli(m, "reload")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["added: b (started)", "removed: gone (runs until stopped)"]
    m.wait_status("b", lambda s: s["state"] == "active")
    assert m.status("gone")["state"] == "active"


def test_unknown_unit_and_no_manager(aeterna: Any, tmp_path: Path) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a")})
    m.wait_ready()
    r = cli(m, "stop", "nope")
    assert r.returncode == 1 and "no such unit: 'nope'" in r.stderr
    r = cli(m, "reload", "nope")  # perhaps a file just added: say how it is picked up
    assert r.returncode == 1 and "'aeterna reload' without a unit" in r.stderr
    r = subprocess.run([*AETERNA, "--control", str(tmp_path / "none.sock"), "status"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 3
    assert "no manager is listening" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not is_root(), reason="needs root to connect as another uid")
def test_control_refuses_another_uid(aeterna: Any) -> None:
    shared = tempfile.mkdtemp(prefix="aeterna-ctl-")
    os.chmod(shared, 0o755)
    control = os.path.join(shared, "control.sock")
    m = aeterna({"a.yaml": SLEEPER.format(n="a")}, control=control)
    m.wait_ready()
    probe = ("import json,socket,sys\n"
             "s=socket.socket(socket.AF_UNIX); s.settimeout(10)\n"
             "try:\n    s.connect(sys.argv[1])\n"
             "except PermissionError:\n    print('EACCES'); sys.exit(0)\n"
             "s.sendall(b'{\"v\":1,\"verb\":\"stop\",\"unit\":null}\\n')\n"
             "print(s.makefile().readline().strip())\n")

    def as_nobody() -> str:
        # The venv's interpreter lives under /root; the system one is world-readable.
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        r = subprocess.run([python, "-c", probe, control], capture_output=True,
                           text=True, timeout=30, user=65534, group=65534, extra_groups=[],
                           cwd="/")
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    # The node is 0600: the kernel refuses the connection outright.
    assert as_nobody() == "EACCES"
    # Even with the node opened up, SO_PEERCRED makes the manager refuse.
    os.chmod(control, 0o666)
    reply = json.loads(as_nobody())
    assert reply["ok"] is False and reply["code"] == "denied"
    assert "uid 65534 may not control" in reply["error"]
    assert m.count(r"control\.refused uid=65534") == 1
    assert m.status("a")["state"] == "active"  # the stop was not carried out
