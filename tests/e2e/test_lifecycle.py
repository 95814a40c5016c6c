"""The manager core with real processes: order, stop, kill, exit status, restarts."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import idle_activity

PY = sys.executable

# A unit that prints when it gets SIGTERM, then exits after a short delay.
GRACEFUL = (f"{PY} -c \"import signal,sys,time\n"
            "def bye(*a):\n"
            "    print('stopping', flush=True); time.sleep(0.1); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            "print('up', flush=True)\n"
            "while True: time.sleep(60)\"")


def _unit(name: str, command: str, extra: str = "") -> str:
    return f"service:\n  name: {name}\n  command: {json.dumps(command)}\n{extra}"


def test_sigterm_stops_dependents_first_in_reverse_order(aeterna: Any) -> None:
    units = {
        "a.yaml": _unit("a", GRACEFUL, "  timeouts: {stop: 5s}\n"),
        "b.yaml": _unit("b", GRACEFUL, "  timeouts: {stop: 5s}\n  depends_on: [a]\n"),
        "c.yaml": _unit("c", GRACEFUL, "  timeouts: {stop: 5s}\n  depends_on: [b]\n"),
    }
    m = aeterna(units)
    for n in "abc":
        m.wait_line(rf"^{n}\[\d+\]: up$")
    started = [re.search(r"unit=(\w)", x).group(1)  # type: ignore[union-attr]
               for x in m.matching(r"unit\.started")]
    assert started == ["a", "b", "c"]
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 0
    elapsed = time.monotonic() - t0
    exited = [re.search(r"unit=(\w)", x).group(1)  # type: ignore[union-attr]
              for x in m.matching(r"unit\.exited")]
    assert exited == ["c", "b", "a"]
    # each stop takes ~0.1 s; all three well within one unit's 5 s timeout
    assert elapsed < 5.0
    assert m.count(r"unit\.stop-timeout") == 0


def test_unit_ignoring_sigterm_is_killed_after_stop_timeout(aeterna: Any) -> None:
    stubborn = (f"{PY} -c \"import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "print('up', flush=True); time.sleep(60)\"")
    m = aeterna({"s.yaml": _unit("s", stubborn, "  timeouts: {stop: 1s}\n")})
    m.wait_line(r"^s\[\d+\]: up$")
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    rc = m.wait_exit()
    elapsed = time.monotonic() - t0
    assert m.count(r"unit\.stop-timeout unit=s") == 1
    assert m.count(r'unit\.exited unit=s how="signal=SIGKILL"') == 1
    assert rc == 128 + signal.SIGKILL
    assert 1.0 <= elapsed < 4.0


@pytest.mark.parametrize("command,status", [
    ("exit 7", 7),
    ("exit 0", 0),
    ("kill -USR1 $$", 128 + signal.SIGUSR1),
    ("kill -SEGV $$", 128 + signal.SIGSEGV),
])
def test_single_unit_exit_status_is_propagated(aeterna: Any, command: str, status: int) -> None:
    m = aeterna({"one.yaml": _unit("one", f"sh -c '{command}'")})
    assert m.wait_exit() == status


def test_several_units_exit_nonzero_if_any_failed(aeterna: Any) -> None:
    m = aeterna({"ok.yaml": _unit("ok", "true"), "bad.yaml": _unit("bad", "false")})
    assert m.wait_exit() == 1
    m2 = aeterna({"ok.yaml": _unit("ok", "true"), "ok2.yaml": _unit("ok2", "sh -c 'exit 0'")})
    assert m2.wait_exit() == 0


def test_sigterm_propagates_128_plus_n_for_single_unit(aeterna: Any) -> None:
    m = aeterna({"s.yaml": _unit("s", "sleep 60")})
    m.wait_line(r"unit\.started unit=s")
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 128 + signal.SIGTERM


def test_exec_failure_is_reported_with_errno_and_path(aeterna: Any, tmp_path: Path) -> None:
    m = aeterna({"x.yaml": _unit("x", "/nonexistent/prog --flag")})
    line = m.wait_line(r"unit\.exec-failed").string
    assert "errno=ENOENT" in line and "path=/nonexistent/prog" in line
    assert m.wait_exit() == 127
    assert m.count(r"unit\.exited") == 0  # not mistaken for a crash

    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    m2 = aeterna({"y.yaml": _unit("y", str(script))})
    line = m2.wait_line(r"unit\.exec-failed").string
    assert "errno=EACCES" in line and f"path={script}" in line
    assert m2.wait_exit() == 126


def test_output_is_prefixed_line_by_line(aeterna: Any) -> None:
    m = aeterna({"o.yaml": _unit("o", "sh -c 'echo out1; echo err1 >&2; printf partial'")})
    assert m.wait_exit() == 0
    pid = re.search(r"unit\.started unit=o pid=(\d+)", m.output()).group(1)  # type: ignore
    for text in ("out1", "err1", "partial"):
        assert f"o[{pid}]: {text}" in m.output().splitlines()


def test_restart_on_failure_with_backoff_then_start_limit(aeterna: Any) -> None:
    units = {
        "crash.yaml": _unit("crash", "sh -c 'exit 3'",
                            "  restart: on-failure\n  restart_sec: 100ms\n"
                            "  backoff: {factor: 2, max_delay: 10s}\n"
                            "  start_limit: {burst: 4, interval: 30s}\n"),
        "steady.yaml": _unit("steady", "sleep 60"),
    }
    m = aeterna(units)
    m.wait_line(r"unit\.start-limit-hit unit=crash", timeout=15)
    delays = [float(x) for x in re.findall(r"restart-scheduled unit=crash delay=([\d.]+)",
                                           m.output())]
    assert delays == [0.1, 0.2, 0.4, 0.8]
    assert m.count(r"unit\.started unit=crash") == 4
    m.wait_ready()
    assert m.status("crash")["state"] == "failed"
    assert m.status("crash")["result"] == "start-limit-hit"
    assert m.status("steady")["state"] == "active"  # the others keep running
    # the timestamps of the starts show the delays were really waited
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 1


@pytest.mark.parametrize("policy,code,restarts", [
    ("no", 1, False), ("always", 0, True), ("always", 1, True),
    ("on-success", 0, True), ("on-success", 1, False),
    ("on-failure", 0, False), ("on-failure", 1, True),
    ("on-abnormal", 1, False), ("on-abort", 1, False),
])
def test_restart_policies(aeterna: Any, policy: str, code: int, restarts: bool) -> None:
    m = aeterna({"p.yaml": _unit("p", f"sh -c 'exit {code}'",
                                 f"  restart: {policy}\n  restart_sec: 50ms\n"
                                 "  start_limit: {burst: 2, interval: 60s}\n"),
                 "keep.yaml": _unit("keep", "sleep 60")})
    if restarts:
        m.wait_line(r"unit\.start-limit-hit unit=p")
        assert m.count(r"unit\.started unit=p") == 2
    else:
        m.wait_line(r"unit\.state unit=p old=active new=(inactive|failed)")
        m.wait_ready()
        st = m.status("p")
        assert st["state"] == ("inactive" if code == 0 else "failed")
        assert m.count(r"unit\.started unit=p") == 1


def test_restart_on_abort_restarts_on_signal(aeterna: Any) -> None:
    m = aeterna({"p.yaml": _unit("p", "sh -c 'kill -ABRT $$'",
                                 "  restart: on-abort\n  restart_sec: 50ms\n"
                                 "  start_limit: {burst: 2, interval: 60s}\n")})
    m.wait_line(r"unit\.start-limit-hit unit=p")
    assert m.count(r"unit\.started unit=p") == 2


def test_oneshot_finishes_before_dependent_starts(aeterna: Any, tmp_path: Path) -> None:
    marker = tmp_path / "prepared"
    m = aeterna({
        "prep.yaml": _unit("prep", f"sh -c 'sleep 0.3; touch {marker}'", "  type: oneshot\n"),
        "app.yaml": _unit("app", f"sh -c 'test -e {marker} && echo saw-marker; sleep 60'",
                          "  depends_on: [prep]\n"),
    })
    m.wait_line(r"app\[\d+\]: saw-marker")
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 0


def test_failed_required_dependency_fails_dependent(aeterna: Any) -> None:
    m = aeterna({
        "db.yaml": _unit("db", "sh -c 'exit 1'", "  type: oneshot\n"),
        "app.yaml": _unit("app", "sleep 60", "  depends_on: [db]\n"),
    })
    m.wait_line(r"unit\.dependency-failed unit=app")
    assert m.wait_exit() == 1
    assert m.count(r"unit\.started unit=app") == 0


def test_env_cwd_and_env_file(aeterna: Any, tmp_path: Path) -> None:
    envfile = tmp_path / "app.env"
    envfile.write_text("# comment\nFROM_FILE='quoted value'\nexport SECOND=2\n")
    work = tmp_path / "work"
    work.mkdir()
    m = aeterna({"e.yaml": _unit(
        "e", "sh -c 'echo \"$FOO|$FROM_FILE|$SECOND|$AETERNA_UNIT|$AETERNA_GENERATION|$(pwd)\"'",
        f"  env: [FOO=bar]\n  env_file: [{envfile}, -/nonexistent.env]\n"
        f"  working_directory: {work}\n")})
    m.wait_line(rf"e\[\d+\]: bar\|quoted value\|2\|e\|1\|{work}$")
    assert m.wait_exit() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_user_and_group(aeterna: Any) -> None:
    m = aeterna({"u.yaml": _unit("u", "sh -c 'echo $(id -u):$(id -g):$USER'",
                                 "  user: nobody\n  group: nogroup\n")})
    m.wait_line(r"u\[\d+\]: 65534:65534:nobody$")
    assert m.wait_exit() == 0


def test_forwarded_signals_reach_main_process(aeterna: Any) -> None:
    script = ("import signal,time\n"
              "for s in (signal.SIGUSR1, signal.SIGWINCH):\n"
              "    signal.signal(s, lambda n, f: print('got', signal.Signals(n).name,\n"
              "                                        flush=True))\n"
              "print('up', flush=True)\n"
              "while True: time.sleep(60)\n")
    m = aeterna({"f.yaml": _unit("f", f"{PY} -c \"{script}\"")})
    m.wait_line(r"f\[\d+\]: up")
    for sig in (signal.SIGUSR1, signal.SIGWINCH):  # SIGUSR2 is daemon-reexec (test_reexec)
        m.signal(sig)
        m.wait_line(rf"f\[\d+\]: got {sig.name}")
    m.signal(signal.SIGTERM)
    m.wait_exit()


def test_sighup_rereads_and_reports_changes_keeping_config_on_error(aeterna: Any,
                                                                    tmp_path: Path) -> None:
    m = aeterna({"a.yaml": _unit("a", "sleep 60"), "b.yaml": _unit("b", "sleep 60")})
    m.wait_ready()
    units = m.tmp / "units"
    (units / "a.yaml").write_text(_unit("a", "sleep 61"))
    (units / "c.yaml").write_text(_unit("c", "sleep 60"))
    (units / "b.yaml").unlink()
    m.signal(signal.SIGHUP)
    m.wait_line(r"reload\.checked added=1 removed=1 changed=1")
    assert m.count(r"reload\.diff unit=a change=changed") == 1
    (units / "c.yaml").write_text("service:\n  name: c\n  command: []\n")
    mark = len(m.lines)
    m.signal(signal.SIGHUP)
    m.wait_line(r"reload\.invalid error=.*c\.yaml:3: service\.command: expected a non-empty "
                r"command", start=mark)
    m.wait_line(r"reload\.rejected", start=mark)
    assert m.status("a")["state"] == "active"
    assert m.status("b")["state"] == "active"  # nothing the user started is lost
    assert m.status("c")["state"] == "active"  # started by the first reload, kept by this


def test_reload_starts_an_added_unit_with_its_socket_and_order(aeterna: Any) -> None:
    import socket

    m = aeterna({"a.yaml": _unit("a", GRACEFUL, "  timeouts: {stop: 5s}\n"),
                 "old.yaml": _unit("old", "sleep 60")})
    m.wait_line(r"^a\[\d+\]: up$")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    units = m.tmp / "units"
    (units / "b.yaml").write_text(_unit("b", GRACEFUL, (
        "  timeouts: {stop: 5s}\n  depends_on: [a]\n"
        f"  sockets: [{{listen: \"127.0.0.1:{port}\", name: http}}]\n")))
    (units / "old.yaml").unlink()
    m.signal(signal.SIGHUP)
    m.wait_line(r"reload\.added unit=b action=start")
    m.wait_line(r"^b\[\d+\]: up$")
    assert m.status("b")["state"] == "active"
    # The manager bound b's socket: connections queue in its backlog.
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # A unit whose file is gone runs until stopped, as under systemd.
    m.wait_line(r"reload\.removed-still-running unit=old")
    assert m.status("old")["state"] == "active"
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 0
    exited = [re.search(r"unit=(\w+)", x).group(1)  # type: ignore[union-attr]
              for x in m.matching(r"unit\.exited")]
    assert exited.index("b") < exited.index("a")  # b depends on a: it stops first


def test_idle_manager_makes_no_wakeups(aeterna: Any) -> None:
    m = aeterna({"s.yaml": _unit("s", "sleep 60")})
    m.wait_ready()
    m.wait_line(r"unit\.state unit=s old=waiting new=active")
    switches, cpu = idle_activity(m.proc.pid, 2.0)
    assert switches == 0 and cpu == 0


def test_bind_failure_fails_that_unit_only(aeterna: Any) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        m = aeterna({
            "web.yaml": _unit("web", "sleep 60",
                              f"  sockets: [{{listen: \"127.0.0.1:{port}\", name: http}}]\n"),
            "other.yaml": _unit("other", "sleep 60"),
        })
        line = m.wait_line(r"unit\.bind-failed unit=web").string
        assert f"address=127.0.0.1:{port}" in line and "errno=EADDRINUSE" in line
        assert m.wait_status("web", lambda s: s["state"] == "failed")["result"] == "resources"
        assert m.wait_status("other", lambda s: s["state"] == "active")
        assert m.count(r"unit\.started unit=web") == 0
    finally:
        busy.close()
