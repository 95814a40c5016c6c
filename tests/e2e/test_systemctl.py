"""The verbs of a systemd user, their exit codes as systemctl's, and the front ends.

Every test runs a real manager and drives it with the ``aeterna`` command, a
``systemctl``/``journalctl`` program name (a script whose argv[0] is that
name, as a symlink would give), and Debian's own ``service`` and
``deb-systemd-invoke`` scripts (package init-system-helpers), which nobody
here wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import AETERNA, ROOT, is_root

SLEEPER = "service:\n  name: {n}\n  command: [sleep, '60']\n  timeouts: {{stop: 5s}}\n"
FAILING = "service:\n  name: {n}\n  command: [sh, -c, 'echo broken >&2; exit 3']\n" \
          "  restart: 'no'\n"
# Becomes ready 0.5 s after it starts: a verb that returns earlier did not wait.
SLOW_NOTIFY = """\
service:
  name: {n}
  type: notify
  notify_access: all
  command: [sh, -c, 'sleep 0.5; systemd-notify --ready; exec sleep 60']
  timeouts: {{start: 10s, stop: 5s}}
"""


def cli(m: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AETERNA, "--control", m.control, *args], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def front_ends(tmp: Path) -> Path:
    """A bin directory with ``systemctl`` and ``journalctl``: Python scripts of those
    names that run ``aeterna.cli.main``, so the program name picks the front end."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("systemctl", "journalctl"):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                        "from aeterna.cli import main\nsys.exit(main())\n")
        path.chmod(0o755)
    return bin_dir


def env_for(m: Any, bin_dir: Path) -> dict[str, str]:
    return {**os.environ, "AETERNA_CONTROL": m.control,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def test_is_active_is_failed_and_show_with_systemctl_exit_codes(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a"), "b.yaml": FAILING.format(n="b"),
                 "c.yaml": SLEEPER.format(n="c")})
    m.wait_ready()
    a = m.wait_status("a", lambda s: s["state"] == "active")
    m.wait_status("b", lambda s: s["state"] == "failed")
    r = cli(m, "is-active", "a")
    assert (r.returncode, r.stdout) == (0, "active\n")
    r = cli(m, "is-active", "a.service")  # the suffix is optional
    assert (r.returncode, r.stdout) == (0, "active\n")
    r = cli(m, "is-active", "b")
    assert (r.returncode, r.stdout) == (3, "failed\n")
    r = cli(m, "is-active", "nosuch")
    assert (r.returncode, r.stdout) == (3, "inactive\n")
    r = cli(m, "is-active", "--quiet", "a")
    assert (r.returncode, r.stdout) == (0, "")
    assert cli(m, "is-failed", "b").returncode == 0
    assert cli(m, "is-failed", "a").returncode == 1
    assert cli(m, "is-enabled", "a").stdout == "enabled\n"
    assert cli(m, "is-enabled", "nosuch").returncode == 1
    r = cli(m, "show", "-p", "ActiveState,SubState,MainPID,Result,Id,LoadState", "a")
    assert r.stdout.splitlines() == ["ActiveState=active", "SubState=running",
                                     f"MainPID={a['main_pid']}", "Result=success",
                                     "Id=a.service", "LoadState=loaded"]
    r = cli(m, "show", "b", "--property=Result", "--property=ExecMainStatus", "--value")
    assert r.stdout.splitlines() == ["exit-code", "3"]
    r = cli(m, "show", "-p", "LoadState", "nosuch")
    assert (r.returncode, r.stdout) == (0, "LoadState=not-found\n")
    full = dict(line.split("=", 1) for line in cli(m, "show", "a").stdout.splitlines())
    for prop in ("Id", "Names", "LoadState", "ActiveState", "SubState", "Result", "MainPID",
                 "ExecMainStatus", "NRestarts", "UnitFileState", "ActiveEnterTimestamp"):
        assert prop in full, prop
    assert full["NRestarts"] == "0" and full["ActiveEnterTimestamp"].endswith(
        time.strftime("%Z"))
    # list-units: active and failed by default, everything with --all, --state filters.
    m.ctl("stop", "c")
    r = cli(m, "list-units", "--no-legend")
    rows = [line.split()[:4] for line in r.stdout.splitlines()]
    assert rows == [["a.service", "loaded", "active", "running"],
                    ["b.service", "loaded", "failed", "failed"]]
    r = cli(m, "list-units", "--all", "--no-legend")
    assert [line.split()[0] for line in r.stdout.splitlines()] == [
        "a.service", "b.service", "c.service"]
    r = cli(m, "list-units", "--state=failed", "--no-legend", "--type=service")
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["b.service"]
    r = cli(m, "list-unit-files", "--no-legend")
    assert [line.split()[:2] for line in r.stdout.splitlines()] == [
        ["a.service", "enabled"], ["b.service", "enabled"], ["c.service", "enabled"]]
    r = cli(m, "status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["units"]


def test_start_stop_restart_block_and_print_text(aeterna: Any) -> None:
    m = aeterna({"n.yaml": SLOW_NOTIFY.format(n="n"), "other.yaml": SLEEPER.format(n="other")})
    m.wait_ready()
    first = m.wait_status("n", lambda s: s["state"] == "active")
    t0 = time.monotonic()
    r = cli(m, "restart", "n")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    after = m.status("n")
    # It waited for READY=1 (0.5 s after the start), not just for the fork.
    assert after["state"] == "active" and took >= 0.5, (took, after)
    assert after["main_pid"] != first["main_pid"]
    assert r.stdout == f"n: active (pid {after['main_pid']})\n"
    # --control after the verb; --json for machines.
    r = subprocess.run([*AETERNA, "stop", "n", "--control", m.control, "--json"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"unit": "n", "state": "inactive", "result": "success"}
    r = cli(m, "start", "n.service")
    assert r.returncode == 0 and r.stdout.startswith("n: active (pid "), r
    # --no-block returns at once, before READY=1 (0.5 s after the new start).
    r = cli(m, "restart", "--no-block", "n")
    assert r.returncode == 0
    st = m.status("n")
    assert (st["state"], st["generation"]) != ("active", 4), st
    m.wait_status("n", lambda s: s["state"] == "active" and s["generation"] == 4)


def test_kill_reset_failed_cat_and_daemon_reload(aeterna: Any, tmp_path: Path) -> None:
    trap = ("service:\n  name: t\n  command: [sh, -c, \"trap 'echo got-usr1' USR1; "
            "while :; do sleep 0.05; done\"]\n  restart: 'no'\n")
    m = aeterna({"t.yaml": trap, "b.yaml": FAILING.format(n="b"),
                 "keep.yaml": SLEEPER.format(n="keep")})  # the manager stays up
    m.wait_ready()
    m.wait_status("t", lambda s: s["state"] == "active")
    r = cli(m, "kill", "-s", "SIGUSR1", "--kill-whom=main", "t")
    assert r.returncode == 0, r.stderr
    m.wait_line(r"^t\[\d+\]: got-usr1$")
    assert m.status("t")["state"] == "active"
    r = cli(m, "kill", "--signal=KILL", "t")
    assert r.returncode == 0, r.stderr
    m.wait_status("t", lambda s: s["state"] == "failed" and s["result"] == "signal")
    assert cli(m, "kill", "t").returncode == 1  # nothing left to signal
    # reset-failed: both failed units become inactive, their result forgotten.
    assert cli(m, "reset-failed").returncode == 0
    for n in ("t", "b"):
        st = m.status(n)
        assert (st["state"], st["result"]) == ("inactive", "success")
    r = cli(m, "is-active", "b")
    assert (r.returncode, r.stdout) == (3, "inactive\n")
    r = cli(m, "cat", "b.service")
    assert r.stdout == f"# {m.tmp / 'units' / 'b.yaml'}\n{FAILING.format(n='b')}"
    # daemon-reload re-reads the files and starts nothing: the new command applies at
    # the unit's next start.
    (m.tmp / "units" / "b.yaml").write_text(SLEEPER.format(n="b"))
    r = cli(m, "daemon-reload")
    assert r.returncode == 0, r.stderr
    assert m.status("b")["state"] == "inactive"
    assert cli(m, "start", "b").returncode == 0
    assert m.status("b")["state"] == "active"
    (m.tmp / "units" / "b.yaml").write_text("service: {name: b\n")
    r = cli(m, "daemon-reload")
    assert r.returncode == 1 and "b.yaml" in r.stderr and "kept" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_units_and_usage_errors(aeterna: Any, tmp_path: Path) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(n="a")})
    m.wait_ready()
    bin_dir = front_ends(tmp_path)
    env = env_for(m, bin_dir)

    def sc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemctl", *args], capture_output=True, text=True,
                              timeout=30, env=env)

    r = sc("start", "nosuch")
    assert r.returncode == 5 and "Unit nosuch.service not found." in r.stderr
    r = sc("status", "nosuch.service")
    assert r.returncode == 4 and "could not be found" in r.stderr
    r = sc("status", "a")
    assert r.returncode == 0 and "Active: active (running)" in r.stdout
    r = sc("frobnicate", "a")
    assert r.returncode == 1 and "Unknown command verb" in r.stderr
    r = sc("--frob", "status", "a")
    assert r.returncode == 1 and "unrecognized option '--frob'" in r.stderr
    r = sc("--version")
    assert r.returncode == 0 and r.stdout.startswith("systemd ")
    assert sc("-q", "is-active", "--", "a").returncode == 0
    r = subprocess.run(["systemctl", "is-active", "a"], capture_output=True, text=True,
                       timeout=30, env={**env, "AETERNA_CONTROL": str(tmp_path / "none")})
    assert r.returncode == 1 and "no manager is listening" in r.stderr
    assert "Traceback" not in r.stderr


def test_logs_and_journalctl_read_the_unit_s_ring(aeterna: Any, tmp_path: Path) -> None:
    talker = ("service:\n  name: talk\n  command: [sh, -c, 'for i in 1 2 3 4 5; do echo "
              "out $i; echo err $i >&2; done; exec sleep 60']\n")
    m = aeterna({"talk.yaml": talker, "a.yaml": SLEEPER.format(n="a")})
    m.wait_ready()
    m.wait_line(r"^talk\[\d+\]: err 5$")
    pid = m.status("talk")["main_pid"]
    r = cli(m, "logs", "talk", "--output", "json")
    entries = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(e["text"] for e in entries) == sorted(
        [f"out {i}" for i in range(1, 6)] + [f"err {i}" for i in range(1, 6)])
    assert {(e["pid"], e["generation"], e["unit"]) for e in entries} == {(pid, 1, "talk")}
    assert {e["stream"] for e in entries if e["text"].startswith("err")} == {"stderr"}
    r = cli(m, "logs", "talk", "-n", "2", "-o", "cat")
    assert len(r.stdout.splitlines()) == 2
    r = cli(m, "logs", "talk", "--since=-1h", "-o", "cat")
    assert len(r.stdout.splitlines()) == 10
    r = cli(m, "logs", "talk", "--since", "1h ago", "-o", "cat")
    assert len(r.stdout.splitlines()) == 10
    r = cli(m, "logs", "talk", "--since", "@" + str(int(time.time()) + 3600), "-o", "cat")
    assert r.stdout == ""
    r = cli(m, "logs", "talk", "--since", "yesterdayish")
    assert r.returncode == 2 and "--since" in r.stderr and "Traceback" not in r.stderr
    env = env_for(m, front_ends(tmp_path))
    r = subprocess.run(["journalctl", "-u", "talk.service", "-n", "3", "--no-pager"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(f" talk[{pid}]: " in line for line in lines)
    r = subprocess.run(["journalctl", "-u", "talk", "-o", "json"], capture_output=True,
                       text=True, timeout=30, env=env)
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == 10 and records[0]["_SYSTEMD_UNIT"] == "talk.service"
    assert {rec["_PID"] for rec in records} == {str(pid)}


def _follow_lines(proc: subprocess.Popen[str], out: list[str], stop: Any) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line.rstrip("\n"))
        if stop():
            break


def test_logs_follow_through_five_relays_loses_no_line(aeterna: Any, tmp_path: Path) -> None:
    """Each generation prints numbered lines and writes each to a file of its own, too;
    ``logs -f`` started before the first relay must show every line of every
    generation that the files hold, each marked with its generation."""
    import threading

    record = tmp_path / "record"
    record.mkdir()
    cmd = (f"systemd-notify --ready; i=0; while :; do l=\\\"g=$AETERNA_GENERATION n=$i\\\"; "
           f"echo \\\"$l\\\"; echo \\\"$l\\\" >> {record}/$AETERNA_GENERATION; i=$((i+1)); "
           "sleep 0.005; done")
    unit = f"""\
service:
  name: chat
  command: [sh, -c, "{cmd}"]
  type: notify
  notify_access: all
  timeouts: {{start: 10s, stop: 5s}}
orchestration:
  strategy: hot-relay
  canary: {{soak_time: 0.2s}}
  drain: {{timeout: 5s}}
"""
    m = aeterna({"chat.yaml": unit, "other.yaml": SLEEPER.format(n="other")})
    m.wait_ready()
    m.wait_status("chat", lambda s: s["state"] == "active")
    follower = subprocess.Popen([*AETERNA, "--control", m.control, "logs", "chat", "-f",
                                 "-n", "100000", "-o", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT)
    seen: list[str] = []
    t = threading.Thread(target=_follow_lines, args=(follower, seen, lambda: False),
                         daemon=True)
    t.start()
    try:
        for gen in range(2, 7):
            r = cli(m, "reload", "chat")
            assert r.returncode == 0 and "promoted generation" in r.stdout, r.stdout + r.stderr
            assert m.status("chat")["generation"] == gen
        # Let the last old generation be gone, and the follower catch up with the
        # file of generation 6 as it is now.
        m.wait_status("chat", lambda s: len([g for g in s.get("generations", [])
                                              if g["role"] == "draining"]) == 0)
        deadline = time.monotonic() + 20
        while True:
            want = {f"g={g} n={i}" for g in range(1, 6)
                    for i in range(len((record / str(g)).read_text().splitlines()))}
            got = {json.loads(line)["text"] for line in list(seen)}
            if want <= got and any(x.startswith("g=6 ") for x in got):
                break
            assert time.monotonic() < deadline, sorted(want - got)[:10]
            time.sleep(0.05)
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait(5)
    records = [json.loads(line) for line in seen]
    texts = [rec["text"] for rec in records]
    assert len(texts) == len(set(texts)), "a line was shown twice"
    for rec in records:  # every line marked with the generation that printed it
        assert rec["text"].startswith(f"g={rec['generation']} ")
    assert {rec["generation"] for rec in records} == set(range(1, 7))
    assert "dropped" not in follower.stderr.read() if follower.stderr else True


def _in_systemd_namespace(cmd: list[str], env: dict[str, str]
                          ) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a mount namespace of its own where /run/systemd/system exists, the
    sign by which Debian's scripts know systemd is the init system (and so call
    systemctl); the host's /run/systemd is untouched."""
    script = ('mount -t tmpfs aeterna-test /run/systemd && mkdir /run/systemd/system '
              '&& exec "$@"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, "sh", *cmd], capture_output=True, text=True, timeout=60,
                          env=env)


def _can_make_namespaces() -> bool:
    if not is_root() or not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10)
    return r.returncode == 0


@pytest.mark.root
def test_debian_service_and_deb_systemd_invoke_drive_units(aeterna: Any,
                                                            tmp_path: Path) -> None:
    """Debian's ``service NAME restart|stop|start|status`` and ``deb-systemd-invoke``
    (what maintainer scripts run) call our ``systemctl`` and get what they expect."""
    if not shutil.which("service") or not shutil.which("deb-systemd-invoke"):
        pytest.skip("Debian's init-system-helpers (service, deb-systemd-invoke) not installed")
    if not _can_make_namespaces():
        pytest.skip("needs root and mount namespaces (unshare --mount)")
    m = aeterna({"web.yaml": SLOW_NOTIFY.format(n="web"), "a.yaml": SLEEPER.format(n="a")})
    m.wait_ready()
    first = m.wait_status("web", lambda s: s["state"] == "active")
    env = env_for(m, front_ends(tmp_path))
    r = _in_systemd_namespace(["service", "web", "restart"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    st = m.status("web")  # restart blocked until READY=1
    assert st["state"] == "active" and st["generation"] == 2
    assert st["main_pid"] != first["main_pid"]
    r = _in_systemd_namespace(["service", "web", "status"], env)
    assert r.returncode == 0 and "Active: active (running)" in r.stdout, r.stdout + r.stderr
    r = _in_systemd_namespace(["service", "web", "stop"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert m.status("web")["state"] == "inactive"
    r = _in_systemd_namespace(["service", "web", "status"], env)
    assert r.returncode == 3, r.stdout + r.stderr  # LSB: not running
    r = _in_systemd_namespace(["service", "web", "start"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert m.status("web")["state"] == "active"
    # deb-systemd-invoke asks is-enabled and is-active, then restarts. policy-rc.d
    # (Docker images ship one that says 101, "do not start services") is looked up
    # under $DPKG_ROOT: an empty root has none, as on a normal machine.
    gen = m.status("web")["generation"]
    denv = {**env, "DPKG_ROOT": str(tmp_path / "dpkg-root")}
    r = subprocess.run(["deb-systemd-invoke", "restart", "web.service"], capture_output=True,
                       text=True, timeout=60, env=denv)
    assert r.returncode == 0, r.stdout + r.stderr
    st = m.status("web")
    assert st["state"] == "active" and st["generation"] == gen + 1, st
    r = subprocess.run(["deb-systemd-invoke", "stop", "web.service"], capture_output=True,
                       text=True, timeout=60, env=denv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert m.status("web")["state"] == "inactive"
    r = subprocess.run(["deb-systemd-invoke", "start", "web.service"], capture_output=True,
                       text=True, timeout=60, env=denv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert m.status("web")["state"] == "active"
    r = subprocess.run(["deb-systemd-invoke", "start", "nosuch.service"], capture_output=True,
                       text=True, timeout=60, env=denv)
    assert "nosuch.service is a disabled or a static unit" in r.stderr


def _ansible(m: Any, bin_dir: Path, tmp: Path, args: str) -> tuple[int, dict[str, Any]]:
    """One ad-hoc ``ansible.builtin.systemd_service`` task against localhost."""
    ansible = Path(sys.executable).parent / "ansible"
    env = {**env_for(m, bin_dir), "ANSIBLE_HOME": str(tmp / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "0"}
    r = subprocess.run([str(ansible), "localhost", "-c", "local", "-i", "localhost,",
                        "-e", f"ansible_python_interpreter={sys.executable}",
                        "-m", "ansible.builtin.systemd_service", "-a", args],
                       capture_output=True, text=True, timeout=120, env=env)
    head, _, body = r.stdout.partition("=>")
    assert body, r.stdout + r.stderr
    return r.returncode, json.loads(body)


def test_ansible_systemd_service_module_drives_a_unit(aeterna: Any, tmp_path: Path) -> None:
    """ansible-core's own module reads ``systemctl show`` and acts with our verbs."""
    if not (Path(sys.executable).parent / "ansible").exists():
        pytest.skip("ansible-core is not installed (the test extra has it)")
    m = aeterna({"web.yaml": SLOW_NOTIFY.format(n="web"), "a.yaml": SLEEPER.format(n="a")})
    m.wait_ready()
    first = m.wait_status("web", lambda s: s["state"] == "active")
    bin_dir = front_ends(tmp_path)
    rc, out = _ansible(m, bin_dir, tmp_path, "name=web state=started")
    assert rc == 0 and out["changed"] is False, out  # already running: nothing to do
    assert out["status"]["ActiveState"] == "active"
    assert out["status"]["MainPID"] == str(first["main_pid"])
    rc, out = _ansible(m, bin_dir, tmp_path, "name=web.service state=restarted")
    assert rc == 0 and out["changed"] is True, out
    st = m.status("web")
    assert st["state"] == "active" and st["generation"] == 2  # restarted, and ready
    rc, out = _ansible(m, bin_dir, tmp_path, "name=web state=stopped")
    assert rc == 0 and out["changed"] is True, out
    assert m.status("web")["state"] == "inactive"
    rc, out = _ansible(m, bin_dir, tmp_path, "name=web state=started enabled=true")
    assert rc == 0 and out["changed"] is True and out["enabled"] is True, out
    assert m.status("web")["state"] == "active"
    rc, out = _ansible(m, bin_dir, tmp_path, "name=nosuch state=started")
    assert rc != 0 and "Could not find the requested service nosuch" in out["msg"], out


def test_control_after_the_verb_runs_the_manager_there(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (units / "a.yaml").write_text(SLEEPER.format(n="a"))
    control = tmp_path / "here.sock"
    proc = subprocess.Popen([*AETERNA, "start", "-c", str(units), "--control", str(control)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "AETERNA_CONTROL": str(tmp_path / "not-here")})
    try:
        deadline = time.monotonic() + 20
        while not control.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        r = subprocess.run([*AETERNA, "is-active", "a", "--control", str(control)],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert (r.returncode, r.stdout) in ((0, "active\n"), (3, "activating\n"))
        r = subprocess.run([*AETERNA, "stop", "--control", str(control)], capture_output=True,
                           text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert proc.wait(20) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_a_systemd_tree_starts_what_its_targets_want(aeterna: Any, tmp_path: Path) -> None:
    """With ``*.wants/`` links, only what the boot targets want starts; a linked
    ``.socket`` waits for its first connection; ``enable``/``disable`` write the links."""
    from conftest import free_port
    from test_on_demand import APP, ask

    port = free_port()
    tree = tmp_path / "system"
    tree.mkdir()
    service = "[Service]\nExecStart=/bin/sleep 60\n[Install]\nWantedBy=multi-user.target\n"
    (tree / "a.service").write_text(service)
    (tree / "b.service").write_text(service)
    (tree / "s.service").write_text(f"[Service]\nExecStart={sys.executable} {APP}\n")
    (tree / "s.socket").write_text(f"[Socket]\nListenStream=127.0.0.1:{port}\n"
                                   "[Install]\nWantedBy=sockets.target\n")
    for target, unit in (("multi-user.target", "a.service"), ("sockets.target", "s.socket")):
        (tree / f"{target}.wants").mkdir()
        (tree / f"{target}.wants" / unit).symlink_to(f"../{unit}")
    m = aeterna(tree)
    m.wait_ready()
    m.wait_status("a", lambda s: s["state"] == "active")
    m.wait_line(r"unit\.waiting-for-connection unit=s")
    assert m.status("b")["state"] == "inactive" and m.status("s")["state"] == "inactive"
    assert cli(m, "is-enabled", "b").stdout == "disabled\n"
    assert cli(m, "is-enabled", "b").returncode == 1
    assert ask(port, "x").startswith("pong gen=1 ")  # the socket started s
    # enable writes the link (and does not start); --now starts too.
    r = cli(m, "enable", "b.service")
    assert r.returncode == 0, r.stderr
    link = tree / "multi-user.target.wants" / "b.service"
    assert os.readlink(link) == "../b.service"
    assert f"Created symlink {link}" in r.stderr
    assert cli(m, "is-enabled", "b").stdout == "enabled\n"
    assert m.status("b")["state"] == "inactive"
    r = cli(m, "disable", "--now", "a")
    assert r.returncode == 0, r.stderr
    assert not (tree / "multi-user.target.wants" / "a.service").exists()
    assert m.status("a")["state"] == "inactive"
    assert cli(m, "is-enabled", "a").stdout == "disabled\n"
    r = cli(m, "enable", "--now", "a")
    assert r.returncode == 0 and m.status("a")["state"] == "active", r.stderr
    # A YAML unit is enabled by its file, not by links: enable says so.
    m2 = aeterna({"y.yaml": SLEEPER.format(n="y")})
    m2.wait_ready()
    r = cli(m2, "enable", "y")
    assert r.returncode == 1 and "service.enabled: false" in r.stderr
