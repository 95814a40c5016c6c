"""Many units with a real manager: shutdown, status, file-descriptor limits.

The old event core recursed from one unit's change into the next unit's stop
and hit RecursionError at a few hundred units on SIGTERM; it also never exited
on SIGTERM when nothing was running. bench/scale.py measures 100 to 5,000 units
beside supervisord; these tests hold the behaviour at sizes a test can afford.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import time
from pathlib import Path
from typing import Any

import psutil
from conftest import ROOT

SLEEP = 'service:\n  name: {name}\n  command: ["sleep", "300"]\n  restart: on-failure\n'


def many(n: int) -> dict[str, str]:
    return {f"s{i:04d}.yaml": SLEEP.format(name=f"s{i:04d}") for i in range(n)}


def pids_of(m: Any) -> list[int]:
    return [int(x) for x in re.findall(r"unit\.started unit=\S+ pid=(\d+)", m.output())]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_stops_400_units_and_the_manager_exits(aeterna: Any) -> None:
    m = aeterna(many(400))
    m.wait_line(r"unit\.started unit=s0399 ", 60)  # the last in start order
    pids = pids_of(m)
    assert len(pids) == 400
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(30) == 0
    assert time.monotonic() - t0 < 10
    assert "RecursionError" not in m.output() and "Traceback" not in m.output()
    assert m.count(r"unit\.state unit=\S+ old=stopping new=inactive") == 400
    assert not [p for p in pids if alive(p)]


def test_status_of_400_units_answers_with_every_unit_and_its_memory(aeterna: Any) -> None:
    m = aeterna(many(400))
    m.wait_ready()
    st = m.wait_status("s0399", lambda s: s["state"] == "active", timeout=60)
    assert st["rss"] and st["rss"] > 0
    t0 = time.monotonic()
    reply = m.ctl("status")
    elapsed = time.monotonic() - t0
    units = reply["result"]["units"]
    assert len(units) == 400 and all(u["state"] == "active" for u in units)
    assert all(u["rss"] > 0 and u["processes"] == 1 for u in units)
    assert elapsed < 2.0, elapsed  # goals are in bench/scale.py; this guards the order


def test_shutdown_with_every_unit_stopped_exits_at_once(aeterna: Any) -> None:
    m = aeterna(many(2))
    m.wait_ready()
    for name in ("s0000", "s0001"):
        m.wait_status(name, lambda s: s["state"] == "active")
        assert m.ctl("stop", name)["result"]["state"] == "inactive"
    assert m.proc.poll() is None  # held down by `aeterna stop`: the manager stays up
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(10) == 0
    assert time.monotonic() - t0 < 2


def test_stop_all_with_nothing_running_exits_at_once(aeterna: Any) -> None:
    m = aeterna(many(1))
    m.wait_ready()
    m.wait_status("s0000", lambda s: s["state"] == "active")
    m.ctl("stop", "s0000")
    assert m.ctl("stop")["ok"]
    assert m.wait_exit(10) == 128 + signal.SIGTERM  # one unit: its status, as tini


def _lower_soft_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))


def test_fd_limit_raised_for_the_manager_and_given_back_to_children(tmp_path: Path) -> None:
    """As systemd: the manager runs with its hard RLIMIT_NOFILE, its children with
    the soft limit it was started with (select() breaks above 1024)."""
    import subprocess

    from conftest import AETERNA, write_units

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    show = '["/bin/sh", "-c", "echo {name} soft=$(ulimit -Sn); exec sleep 300"]'
    units = write_units(tmp_path / "units", {
        "u.yaml": f"service:\n  name: u\n  command: {show.format(name='u')}\n",
        # A unit that sets its own (LimitNOFILE=, limit_nofile:) gets that one.
        "v.yaml": f"service:\n  name: v\n  command: {show.format(name='v')}\n"
                  "  limit_nofile: 300\n"})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*AETERNA, "--control", str(tmp_path / "c.sock"), "start", "-c",
                             str(units)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, preexec_fn=_lower_soft_nofile)
    try:
        assert proc.stdout is not None
        lines = sorted(proc.stdout.readline().decode().strip() for _ in range(2))
        assert lines[0].endswith(f"u soft={min(512, hard)}"), lines
        assert lines[1].endswith("v soft=300"), lines
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        row = next(r for r in limits.splitlines() if r.startswith("Max open files"))
        assert row.split()[3:5] == [str(hard), str(hard)], row
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
