"""``aeterna daemon-reexec``: the manager replaces its own code and every unit runs on.

Two installed versions: this checkout, and a copy of its ``aeterna`` package with
another ``__version__`` (tests/e2e's ``versions`` fixture), each behind an
``aeterna`` script as a package would install it. Real processes, real sockets,
real signals; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import AETERNA, ROOT, can_unshare_pid, free_port, write_units
from loadgen import LoadGen
from test_relay import assert_clean, relay_unit
from test_relay import load_runs as load_runs  # the fixture
from test_srp import agent_unit, check_no_loss, get_json, run_chatters, stop_chatters

from aeterna.api.client import request

PY = sys.executable


def wrapper(path: Path, pythonpath: Path) -> str:
    path.write_text(f"#!/bin/sh\nPYTHONPATH={pythonpath} exec {PY} -m aeterna.cli \"$@\"\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def versions(tmp_path: Path) -> tuple[str, str]:
    """(this checkout's aeterna, a copy of it that says it is version 9.9.9-test)."""
    other = tmp_path / "v2"
    shutil.copytree(ROOT / "aeterna", other / "aeterna",
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "aeterna" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9-test+'))
    return (wrapper(tmp_path / "aeterna-v1", ROOT), wrapper(tmp_path / "aeterna-v2", other))


def reexec(m: Any, path: str, timeout: float = 30.0) -> dict[str, Any]:
    return request(m.control, "daemon-reexec", None, timeout=timeout, exec=path)


def manager_status(m: Any) -> dict[str, Any]:
    reply = m.ctl("status")
    assert reply["ok"], reply
    return reply["result"]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ------------------------------------------------------------------------------- tests
@pytest.mark.timeout(240)
def test_twenty_reexecs_under_load_keep_pids_sockets_state_and_counters(
        aeterna: Any, versions: tuple[str, str], load_runs: list[LoadGen]) -> None:  # noqa: F811
    web_port, agent_port = free_port(), free_port()
    m = aeterna({"web.yaml": relay_unit(web_port, soak="300ms"),
                 "u.yaml": agent_unit(agent_port, {"AGENT_THINK_MS": "2"}, soak="200ms")})
    m.wait_ready(20)
    m.wait_status("web", lambda st: st["state"] == "active", timeout=30)
    m.wait_status("u", lambda st: st["state"] == "active", timeout=30)
    lg = LoadGen(web_port, threads=3, keepalive=1, max_duration=200.0, timeout=10.0,
                 pause=0.002).start()
    load_runs.append(lg)
    lg.wait_for(20, timeout=15)
    chatters, stop = run_chatters(agent_port, n_keepalive=2, n_fresh=1)
    counters: list[tuple[int, int]] = []
    try:
        for i in range(20):
            before = {u: m.status(u)["main_pid"] for u in ("web", "u")}
            reply = reexec(m, versions[i % 2])
            assert reply["ok"], reply
            assert reply["result"]["version"].startswith("9.9.9") == (i % 2 == 1), reply
            assert reply["result"]["pid"] == m.proc.pid
            after = {u: m.status(u)["main_pid"] for u in ("web", "u")}
            assert after == before, (i, before, after)  # nothing was restarted
            ms = manager_status(m)
            assert ms["manager"]["reexecs"] == i + 1
            counters.append((ms["manager"]["notify"]["accepted"], ms["manager"]["relays"]))
            # A relay after the re-exec promotes as usual, the agent's state handed over.
            name = "web" if i % 2 else "u"
            out = m.ctl("reload", name, timeout=60)
            assert out["ok"] and out["result"]["relay"]["outcome"] == "promoted", (i, out)
            if name == "u":
                assert out["result"]["relay"]["handoff"] == "ok", out
    finally:
        stop_chatters(chatters, stop)
        summary = lg.stop()
    assert_clean(summary, "20 re-execs")
    check_no_loss(agent_port, chatters)
    assert counters == sorted(counters) and counters[-1][1] == 19  # monotone, carried over
    assert m.count(r"socket\.bound") == 1 + 1  # web's http, the agent's: bound once each
    assert m.count(r"manager\.reexecuted") == 20
    _, cache = get_json(agent_port, "/cache")
    assert cache["origin"] == "adopted"
    # the /metrics counters come from the same numbers: they kept their values
    st = manager_status(m)
    assert st["manager"]["relays"] == 20 and st["manager"]["version"].startswith("9.9.9")
    assert st["manager"]["previous_version"] == "0.1.0"


def test_broken_new_version_cancels_and_changes_nothing(aeterna: Any, tmp_path: Path) -> None:
    broken = tmp_path / "aeterna-broken"
    broken.write_text("#!/bin/sh\necho 'state format 7 is not supported by this build' >&2\n"
                      "exit 1\n")
    broken.chmod(0o755)
    m = aeterna({"a.yaml": "service:\n  name: a\n  command: [sleep, '600']\n"})
    m.wait_ready()
    pid = m.wait_status("a", lambda st: st["state"] == "active")["main_pid"]
    reply = reexec(m, str(broken))
    assert not reply["ok"] and reply["code"] == "refused", reply
    assert "refused the state (status=1)" in reply["error"], reply
    assert "state format 7 is not supported" in reply["error"], reply
    assert "carries on unchanged" in reply["error"]
    fds = fd_count(m.proc.pid)
    r = subprocess.run([*AETERNA, "--control", m.control, "daemon-reexec", "--exec", str(broken)],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and "state format 7 is not supported" in r.stderr, r
    missing = reexec(m, str(tmp_path / "nothing-here"))
    assert not missing["ok"] and "not an executable file" in missing["error"], missing
    assert m.status("a")["main_pid"] == pid and m.ctl("ping")["result"]["pid"] == m.proc.pid
    assert manager_status(m)["manager"]["reexecs"] == 0
    # the memfd, the check's pipe: all closed (a control connection may still be closing)
    _wait(lambda: fd_count(m.proc.pid) == fds, 5, f"fds: {fds} -> {fd_count(m.proc.pid)}")
    assert m.count(r"manager\.reexec-refused") == 3


def test_a_second_reexec_during_one_is_refused(aeterna: Any, tmp_path: Path) -> None:
    gate = tmp_path / "checking"
    slow = tmp_path / "aeterna-slow-check"
    slow.write_text(f'#!/bin/sh\nif [ "$1" = --check-state ]; then touch {gate}; sleep 1; fi\n'
                    f'PYTHONPATH={ROOT} exec {PY} -m aeterna.cli "$@"\n')
    slow.chmod(0o755)
    m = aeterna({"a.yaml": "service:\n  name: a\n  command: [sleep, '600']\n"})
    m.wait_ready()
    pid = m.wait_status("a", lambda st: st["state"] == "active")["main_pid"]
    result: dict[str, Any] = {}

    import threading

    t = threading.Thread(target=lambda: result.update(reexec(m, str(slow))), daemon=True)
    t.start()
    _wait(gate.exists, 20, "the first re-exec never ran its check")
    second = reexec(m, str(slow))
    assert not second["ok"] and "already in progress" in second["error"], second
    t.join(30)
    assert result.get("ok"), result
    assert m.status("a")["main_pid"] == pid
    assert manager_status(m)["manager"]["reexecs"] == 1


def test_exit_and_ready_during_the_exec_window_are_handled(aeterna: Any,
                                                          tmp_path: Path) -> None:
    """The new manager is held before it starts until unit ``a`` has died (a zombie) and
    unit ``b`` has sent READY=1: the first reap restarts ``a``, the queued datagram
    makes ``b`` active."""
    gate = tmp_path / "gate"
    gate.mkdir()
    # The hold must not fork: a shell loop would wait() for its own children and reap
    # ours (dash waits for any child).
    hold = tmp_path / "hold.py"
    hold.write_text("import os, sys, time\n"
                    "if sys.argv[1] == '--resume-state':\n"
                    f"    open('{gate}/window', 'w').close()\n"
                    "    for _ in range(400):\n"
                    f"        if os.path.exists('{gate}/go'): break\n"
                    "        time.sleep(0.025)\n"
                    f"os.execv({PY!r}, [{PY!r}, '-m', 'aeterna.cli', *sys.argv[1:]])\n")
    new = str(tmp_path / "aeterna-held")
    Path(new).write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {PY} {hold} \"$@\"\n")
    Path(new).chmod(0o755)
    ready = (f"import os,socket,time\n"
             f"while not os.path.exists('{gate}/ready-now'): time.sleep(0.02)\n"
             f"s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n"
             f"s.sendto(b'READY=1\\nSTATUS=ready in the window',os.environ['NOTIFY_SOCKET'])\n"
             f"open('{gate}/sent','w').close()\n"
             f"time.sleep(600)\n")
    m = aeterna({
        "a.yaml": "service:\n  name: a\n  command: [sleep, '600']\n  restart: always\n"
                  "  restart_sec: 100ms\n",
        "b.yaml": f"service:\n  name: b\n  type: notify\n  command: [{PY!r}, -c, {ready!r}]\n"
                  "  notify_access: all\n  timeouts: {start: 60s}\n",
    })
    m.wait_ready()
    a_pid = m.wait_status("a", lambda st: st["state"] == "active")["main_pid"]
    m.wait_status("b", lambda st: st["state"] == "starting")
    result: dict[str, Any] = {}

    import threading

    t = threading.Thread(target=lambda: result.update(reexec(m, new)), daemon=True)
    t.start()
    _wait(lambda: (gate / "window").exists(), 20, "the new manager never reached its window")
    os.kill(a_pid, signal.SIGKILL)
    _wait(lambda: _zombie(a_pid), 5, "a never became a zombie")
    (gate / "ready-now").touch()
    _wait(lambda: (gate / "sent").exists(), 5, "b never sent READY=1")
    (gate / "go").touch()
    t.join(30)
    assert result.get("ok"), result
    st = m.wait_status("a", lambda st: st["main_pid"] not in (None, a_pid)
                       and st["state"] == "active")
    assert st["restarts"] == 1
    b = m.wait_status("b", lambda st: st["state"] == "active")
    assert b["status_text"] == "ready in the window"
    i = m.index_of(r"manager\.reexecuted")
    assert m.index_of(r"unit\.exited unit=a how=\"signal=SIGKILL\"") > i


def test_sigusr2_reexecs_the_aeterna_on_path(aeterna: Any, tmp_path: Path,
                                            versions: tuple[str, str]) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(versions[1], bin_dir / "aeterna")
    m = aeterna({"a.yaml": "service:\n  name: a\n  command: [sleep, '600']\n"},
                env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    m.wait_ready()
    pid = m.wait_status("a", lambda st: st["state"] == "active")["main_pid"]
    m.signal(signal.SIGUSR2)
    m.wait_line(r"manager\.reexecuted pid=\d+ version=9\.9\.9-test", 30)
    assert m.status("a")["main_pid"] == pid
    assert manager_status(m)["manager"]["version"].startswith("9.9.9-test")
    r = subprocess.run([*AETERNA, "--control", m.control, "status"], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "re-executed 1 times, last at" in r.stdout, r
    assert r.stdout.splitlines()[-1].startswith("aeterna 9.9.9-test+"), r.stdout


@pytest.mark.timeout(200)
def test_fd_count_is_flat_over_a_hundred_reexecs(aeterna: Any, versions: tuple[str, str]
                                                 ) -> None:
    port = free_port()
    m = aeterna({"a.yaml": "service:\n  name: a\n  command: [sleep, '600']\n"
                           f"  sockets: [{{listen: '127.0.0.1:{port}'}}]\n"})
    m.wait_ready()
    pid = m.wait_status("a", lambda st: st["state"] == "active")["main_pid"]
    assert reexec(m, versions[0])["ok"]
    first = _settled_fds(m.proc.pid)
    for i in range(99):
        reply = reexec(m, versions[i % 2])
        assert reply["ok"], (i, reply)
    assert _settled_fds(m.proc.pid) == first
    assert m.status("a")["main_pid"] == pid
    assert manager_status(m)["manager"]["reexecs"] == 100


def test_as_pid1_reexec_keeps_pid1_reaps_orphans_and_propagates_the_status(
        tmp_path: Path, versions: tuple[str, str]) -> None:
    if os.geteuid() != 0 or not can_unshare_pid():
        pytest.skip("needs root and unshare --pid --fork (a PID namespace)")
    flag = tmp_path / "exit-now"
    # Orphans all the time: each (sleep &) subshell exits and leaves its sleep to PID 1.
    script = (f"while [ ! -e {flag} ]; do (sleep 0.05 &); sleep 0.02; done; exit 7")
    units = write_units(tmp_path / "units", {"o.yaml": "service:\n  name: o\n"
                                             f"  command: [sh, -c, {script!r}]\n"})
    control = str(tmp_path / "control.sock")
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", *AETERNA,
                             "--control", control, "start", "-c", str(units)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: os.path.exists(control), 20, "no control socket")
        _wait(lambda: request(control, "status", None, timeout=10)["result"]["manager"]
              ["orphans_reaped"] > 3, 20, "no orphans reaped")
        for path in versions:
            reply = request(control, "daemon-reexec", None, timeout=30, exec=path)
            assert reply["ok"] and reply["result"]["pid"] == 1, reply
        before = request(control, "status", None, timeout=10)["result"]["manager"]
        assert before["pid"] == 1 and before["reexecs"] == 2
        _wait(lambda: request(control, "status", None, timeout=10)["result"]["manager"]
              ["orphans_reaped"] > before["orphans_reaped"] + 3, 20, "orphans not reaped")
        flag.touch()
        assert proc.wait(30) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _settled_fds(pid: int) -> list[str]:
    """The manager's fds once a control connection that may still be closing is gone:
    the same list twice, 100 ms apart (bounded)."""
    last: list[str] = []
    for _ in range(50):
        now = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.02)


# ------------------------------------------------------------------ after the manager died
def test_after_kill_9_a_new_manager_stops_the_strays_first_never_two_copies(
        aeterna: Any, tmp_path: Path) -> None:
    """The fallback of crash recovery: what the dead manager left running is stopped
    before the new manager binds and starts (adopting it instead is not built yet)."""
    port = free_port()
    marker = f"aeterna-worker-{port}"
    units = {"web.yaml": relay_unit(port),
             "worker.yaml": "service:\n  name: worker\n"
                            f"  command: [{PY!r}, -c, 'import time; time.sleep(600)', {marker}]\n"}
    m = aeterna(units)
    m.wait_ready(20)
    web = m.wait_status("web", lambda st: st["state"] == "active", timeout=30)["main_pid"]
    worker = m.wait_status("worker", lambda st: st["state"] == "active")["main_pid"]
    record = Path(m.control + ".units")
    _wait(lambda: record.exists() and f"+\t{worker}\t" in record.read_text(), 5, "no record")
    # A pid the record names that is now someone else's (its start time differs).
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        with record.open("a") as f:
            f.write(f"+\t{bystander.pid}\t1\tghost\n")
        m.proc.kill()
        m.proc.wait(10)
        assert _alive(web) and _alive(worker)  # orphans, serving unmanaged
        m2 = aeterna(tmp_path / "units", control=m.control)
        m2.wait_ready(40)
        new_web = m2.wait_status("web", lambda st: st["state"] == "active", timeout=40)
        new_worker = m2.wait_status("worker", lambda st: st["state"] == "active")
        assert new_web["main_pid"] != web and new_worker["main_pid"] != worker
        assert not _alive(web) and not _alive(worker)
        assert m2.count(r"bind-failed|EADDRINUSE") == 0, m2.output()
        assert m2.count(r"recovery\.stopped-stale unit=(web|worker)") == 2, m2.output()
        assert m2.count(rf"recovery\.left-alone unit=ghost pid={bystander.pid} "
                        r"reason=\"pid reused\"") == 1, m2.output()
        assert bystander.poll() is None  # the unrelated process was left alone
        copies = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(int(p))]
        assert len(copies) == 1, copies
        lg = LoadGen(port, threads=2, keepalive=1, max_duration=10.0, timeout=10.0,
                     max_requests=50).start()
        try:
            lg.wait_for(50, timeout=15)
        finally:
            summary = lg.stop()
        assert_clean(summary, "after recovery")
    finally:
        bystander.kill()
        bystander.wait(5)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []
