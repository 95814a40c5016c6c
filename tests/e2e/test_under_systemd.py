"""Aeterna as a Type=notify service: driven by a parent that starts it as systemd does.

``tests/sdparent.py`` is that parent: a real NOTIFY_SOCKET (with the sender's
credentials), real listeners at fd 3.. with LISTEN_PID/LISTEN_FDS/
LISTEN_FDNAMES, WATCHDOG_USEC, and systemd's watchdog enforcement. These tests
check every message Aeterna sends upward, that it keeps its parent's
variables from its units, and that a listener of the parent's reaches the unit
that names it and serves through restarts of Aeterna with nothing refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import AETERNA, ROOT, free_port, write_units
from loadgen import LoadGen

PARENT = [sys.executable, str(ROOT / "tests" / "sdparent.py")]
NOTIFIER = [sys.executable, str(ROOT / "tests" / "apps" / "notifier.py")]
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
APPS = ROOT / "tests" / "apps"


class Parent:
    """``tests/sdparent.py`` running ``aeterna start -c UNITS`` under test."""

    def __init__(self, tmp: Path, units: Path, listen: tuple[str, ...] = (),
                 watchdog_usec: int = 0):
        self.tmp = tmp
        self.control = str(tmp / "control.sock")
        self.notify = str(tmp / "systemd-notify.sock")
        self.log = tmp / "aeterna.log"
        cmd = [*PARENT, "--notify", self.notify, "--log", str(self.log),
               "--watchdog-usec", str(watchdog_usec)]
        for item in listen:
            cmd += ["--listen", item]
        cmd += ["--", *AETERNA, "--control", self.control, "start", "-c", str(units)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def wait(self, pred: Callable[[dict[str, Any]], bool], start: int = 0,
             timeout: float = 15.0) -> tuple[int, dict[str, Any]]:
        """The first event from index ``start`` on that ``pred`` accepts."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.events)):
                    if pred(self.events[i]):
                        return i, self.events[i]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such event in {timeout}s; events: "
                                         f"{self.events[start:][-20:]}\nlog:\n{self.output()}")
                self.cond.wait(left)

    def wait_notify(self, key: str, value: str | None = None, start: int = 0,
                    timeout: float = 15.0) -> tuple[int, dict[str, Any]]:
        return self.wait(lambda e: e["event"] == "notify" and key in e["fields"]
                         and (value is None or e["fields"][key] == value), start, timeout)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def parent(tmp_path: Path) -> Any:
    made: list[Parent] = []

    def start(units: Path, **kw: Any) -> Parent:
        p = Parent(tmp_path, units, **kw)
        made.append(p)
        return p

    yield start
    for p in made:
        p.close()


def _aeterna_pid(p: Parent, start: int = 0) -> int:
    return int(p.wait(lambda e: e["event"] == "started", start)[1]["pid"])


def test_notify_ready_reload_status_watchdog_stopping(tmp_path: Path, parent: Any) -> None:
    """READY=1 only once the (slow) unit is up, STATUS=, WATCHDOG=1 at half the period,
    RELOADING=1 ... READY=1 around a reload (SIGHUP and `aeterna reload`), STOPPING=1;
    the unit sees Aeterna's notify socket, not the parent's, and none of its fds."""
    units = write_units(tmp_path / "units", {"slow.yaml": (
        "service:\n  name: slow\n  type: notify\n"
        f"  command: {json.dumps([*NOTIFIER, 'env', 'sleep:0.7', 'send:READY=1', 'forever'])}\n"
    )})
    # Passed down by the parent but named by no unit: kept by Aeterna, seen by no unit.
    spare = f"spare=127.0.0.1:{free_port()}"
    p = parent(units, watchdog_usec=1_000_000, listen=(spare,))
    pid = _aeterna_pid(p)
    started = p.events[0]["t"]
    i, ready = p.wait_notify("READY", "1")
    # From Aeterna itself (NotifyAccess=main holds), after the unit's own READY=1.
    assert ready["pid"] == pid
    assert ready["t"] - started >= 0.7
    assert ready["fields"]["STATUS"] == "1 unit: 1 active"
    assert ready["fields"]["MAINPID"] == str(pid)

    # The unit got Aeterna's variables, not the parent's, and none of its fds.
    env = json.loads(re.search(r"ENV (\{.*\})", p.output()).group(1))  # type: ignore[union-attr]
    assert env["NOTIFY_SOCKET"] != p.notify
    assert "WATCHDOG_USEC" not in env and "LISTEN_FDS" not in env
    unit_pid = int(env["getpid"])
    theirs = {os.readlink(f"/proc/{unit_pid}/fd/{fd}") for fd in os.listdir(f"/proc/{unit_pid}/fd")}
    parents = {os.readlink(f"/proc/{p.proc.pid}/fd/{fd}")
               for fd in os.listdir(f"/proc/{p.proc.pid}/fd")}
    assert not {f for f in theirs & parents if f.startswith("socket:")}, theirs & parents
    assert re.search(r"socket\.inherited-unused name=spare fd=3", p.output())

    # Pings every half period (0.5 s), each from us, and the parent's watchdog (armed
    # at READY=1) never fires.
    j = i
    for _ in range(3):
        j, ping = p.wait_notify("WATCHDOG", "1", start=j + 1, timeout=3.0)
        assert ping["pid"] == pid
    assert not any(e["event"] == "watchdog-timeout" for e in p.events)

    # SIGHUP: RELOADING=1 with a timestamp, then READY=1 again.
    k = len(p.events)
    p.send("hup")
    k, reloading = p.wait_notify("RELOADING", "1", start=k)
    assert int(reloading["fields"]["MONOTONIC_USEC"]) > 0
    k, again = p.wait_notify("READY", "1", start=k + 1)
    assert again["fields"]["STATUS"] == "1 unit: 1 active"

    # ExecReload=aeterna reload: the same around the control verb, and a broken file
    # is a failed reload that keeps the running configuration and says so.
    (units / "broken.yaml").write_text("service:\n  name: broken\n  type: bogus\n")
    k = len(p.events)
    r = subprocess.run([*AETERNA, "--control", p.control, "reload"], capture_output=True,
                       text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 1 and "broken.yaml:2: service.command" in r.stderr
    k, _ = p.wait_notify("RELOADING", "1", start=k)
    k, back = p.wait_notify("READY", "1", start=k + 1)
    assert back["fields"]["STATUS"].startswith("reload rejected: 1 errors; 1 unit: 1 active")

    # SIGTERM: STOPPING=1 first, then the unit stops and Aeterna exits with its one
    # unit's status, as tini (143: the unit ended by SIGTERM; SuccessExitStatus=143).
    k = len(p.events)
    p.send("term")
    k, stopping = p.wait_notify("STOPPING", "1", start=k)
    _, exited = p.wait(lambda e: e["event"] == "exited", start=k)
    assert exited["status"] == 143
    assert stopping["t"] <= exited["t"]


def test_watchdog_stops_when_the_loop_stops(tmp_path: Path, parent: Any) -> None:
    """A stopped loop sends no pings: the parent's watchdog fires (and SIGABRTs it)."""
    units = write_units(tmp_path / "units", {"idle.yaml": (
        "service:\n  name: idle\n"
        f"  command: {json.dumps([*NOTIFIER, 'forever'])}\n")})
    p = parent(units, watchdog_usec=1_000_000)
    pid = _aeterna_pid(p)
    i, _ = p.wait_notify("READY", "1")
    p.wait_notify("WATCHDOG", "1", start=i)
    units_left = psutil.Process(pid).children(recursive=True)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _, fired = p.wait(lambda e: e["event"] == "watchdog-timeout", timeout=5)
        assert fired["pid"] == pid
        assert time.monotonic() - stopped < 3.0  # one period, and slack for a busy machine
    finally:
        os.kill(pid, signal.SIGCONT)
        p.wait(lambda e: e["event"] == "exited", timeout=20)
        # Aeterna died of SIGABRT: what systemd's KillMode=mixed does with the rest of
        # the cgroup, the test does with the units it left behind.
        for child in units_left:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def test_units_that_end_by_themselves_end_aeterna_with_stopping(tmp_path: Path,
                                                                 parent: Any) -> None:
    units = write_units(tmp_path / "units", {"once.yaml": (
        "service:\n  name: once\n"
        f"  command: {json.dumps([*NOTIFIER, 'sleep:0.3', 'exit:0'])}\n")})
    p = parent(units)
    i, ready = p.wait_notify("READY", "1")
    _, stopping = p.wait_notify("STOPPING", "1", start=i + 1)
    assert stopping["fields"]["STATUS"] == "exiting: 1 unit: 1 inactive"
    _, exited = p.wait(lambda e: e["event"] == "exited")
    assert exited["status"] == 0


def test_an_empty_units_directory_is_a_ready_idle_manager(tmp_path: Path, parent: Any) -> None:
    """/etc/aeterna/units as installed (only a disabled example): READY=1, 0 units,
    and the manager stays up for a reload to add units."""
    units = tmp_path / "units"
    units.mkdir()
    (units / "example.yaml.disabled").write_text("# nothing\n")
    p = parent(units)
    _, ready = p.wait_notify("READY", "1")
    assert ready["fields"]["STATUS"] == "0 units"
    write_units(units, {"late.yaml": "service:\n  name: late\n"
                        f"  command: {json.dumps([*NOTIFIER, 'forever'])}\n"})
    k = len(p.events)
    p.send("hup")
    _, again = p.wait_notify("READY", "1", start=k)
    assert again["fields"]["STATUS"] == "1 unit: 1 active"
    assert not any(e["event"] == "exited" for e in p.events)


@pytest.mark.skipif(not Path(GUNICORN).exists(), reason="gunicorn is not installed")
def test_a_parents_listener_reaches_the_unit_and_survives_restarts(
        tmp_path: Path, parent: Any) -> None:
    """The parent (systemd, aeterna.socket) holds 127.0.0.1:PORT as "web"; the unit that
    names "web" serves on it. Aeterna restarts twice under load: the socket stays
    open in the parent, connections wait in its queue, none is refused or lost."""
    port = free_port()
    unit = {
        "name": "web", "type": "notify",
        "command": [GUNICORN, "--chdir", str(APPS), "-w", "2", "--preload",
                    "--no-control-socket", "--graceful-timeout", "5", "relay_app:app"],
        "timeouts": {"start": "15s", "stop": "10s"},
        "sockets": [{"listen": f"127.0.0.1:{port}", "name": "web"}],
    }
    units = write_units(tmp_path / "units", {"web.yaml": "service:\n" + "".join(
        f"  {k}: {json.dumps(v)}\n" for k, v in unit.items())})
    p = parent(units, listen=(f"web=127.0.0.1:{port}",))
    first = _aeterna_pid(p)
    p.wait_notify("READY", "1", timeout=30)
    # Aeterna did not bind the port (the parent holds it: a bind would have failed).
    assert re.search(r"socket\.bound unit=web name=web .*inherited=web", p.output())

    pids = {first}
    with LoadGen(port, threads=4, keepalive=2, max_duration=60, timeout=20) as load:
        load.wait_for(50, timeout=15)
        for _ in range(2):
            k = len(p.events)
            p.send("restart")
            _, ev = p.wait(lambda e: e["event"] == "started", start=k, timeout=30)
            pids.add(ev["pid"])
            p.wait_notify("READY", "1", start=k, timeout=30)
            n = load.count()
            load.wait_for(n + 50, timeout=15)
        summary = load.stop()
    assert len(pids) == 3
    assert len(summary.ppids) == 3  # one gunicorn arbiter per Aeterna, on the one socket
    by = summary.as_dict()
    print("restarts under load:", by)
    assert summary.ok > 150
    assert summary.counts.get("refused", 0) == 0, summary.describe()
    assert summary.failed == 0, summary.describe()
