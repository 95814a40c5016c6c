"""PID 1 duties, with Aeterna really PID 1 of a new PID namespace (and as subreaper)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import can_unshare_pid, is_root

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]

needs_pidns = pytest.mark.skipif(not (is_root() and can_unshare_pid()),
                                 reason="needs root and `unshare --pid --fork --mount-proc`")


def _manager_pid(unshare_pid: int, timeout: float = 10.0) -> int:
    """The pid, seen from outside, of the process that is PID 1 inside."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(unshare_pid).children()
        if children:
            return int(children[0].pid)
        time.sleep(0.01)
    raise AssertionError("unshare never forked")


def _zombies_under(pid: int) -> list[int]:
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                out.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out


@needs_pidns
def test_no_zombies_after_200_orphans_as_pid1(aeterna: Any) -> None:
    unit = ("service:\n  name: spawner\n  command: [sh, -c, 'for i in $(seq 200); do "
            "(sleep 0.3 &); done; echo spawned; exec sleep 60']\n")
    m = aeterna({"spawner.yaml": unit}, prefix=UNSHARE)
    m.wait_line(r"manager\.started pid=1 ")
    m.wait_line(r"spawner\[\d+\]: spawned")
    inner = _manager_pid(m.proc.pid)
    st: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        st = m.ctl("status")["result"]["manager"]
        if st["orphans_reaped"] >= 200:
            break
        time.sleep(0.05)
    assert st["orphans_reaped"] >= 200, st
    assert _zombies_under(inner) == []
    # Only the unit's main process is left under PID 1.
    assert [p.name() for p in psutil.Process(inner).children()] == ["sleep"]
    m.signal(signal.SIGTERM)  # to unshare, which forwards nothing: signal PID 1 directly
    psutil.Process(inner).send_signal(signal.SIGTERM)
    assert m.wait_exit() == 128 + signal.SIGTERM


@needs_pidns
def test_pid1_sigterm_stops_units_in_reverse_order(aeterna: Any) -> None:
    def unit(name: str, dep: str = "") -> str:
        d = f"  depends_on: [{dep}]\n" if dep else ""
        return (f"service:\n  name: {name}\n  command: [sh, -c, 'trap \"echo bye; exit 0\" TERM; "
                f"echo up; while :; do sleep 0.05; done']\n  timeouts: {{stop: 3s}}\n{d}")
    m = aeterna({"a.yaml": unit("a"), "b.yaml": unit("b", "a"), "c.yaml": unit("c", "b")},
                prefix=UNSHARE)
    for n in "abc":
        m.wait_line(rf"^{n}\[\d+\]: up")
    inner = _manager_pid(m.proc.pid)
    psutil.Process(inner).send_signal(signal.SIGTERM)
    assert m.wait_exit() == 0
    order = [line.split("unit=")[1].split()[0] for line in m.matching(r"unit\.exited")]
    assert order == ["c", "b", "a"]
    assert m.count(r"unit\.stop-timeout") == 0


def test_subreaper_adopts_orphans_of_a_daemonizing_child(aeterna: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    unit = ("service:\n  name: d\n  command: [sh, -c, '(sleep 30 & echo $! > "
            f"{pidfile}); echo forked; exec sleep 60']\n")
    m = aeterna({"d.yaml": unit})
    m.wait_line(r"d\[\d+\]: forked")
    daemon = int(pidfile.read_text())
    assert psutil.Process(daemon).ppid() == m.proc.pid  # re-parented to us, not to init
    psutil.Process(daemon).kill()
    deadline = time.monotonic() + 10
    while m.ctl("status")["result"]["manager"]["orphans_reaped"] < 1:
        assert time.monotonic() < deadline, "orphan never reaped"
        time.sleep(0.02)
    assert _zombies_under(m.proc.pid) == []
