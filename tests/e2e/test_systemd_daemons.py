"""Issue 13 with real processes: a forking daemon as Debian ships them, limits and
friends applied before exec, RuntimeDirectory=, ExecReload= with $MAINPID,
ExecStopPost=, a reload that is not applicable, and names with .service.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, is_root

PY = sys.executable

# A classic daemon: fork, setsid, the parent exits 0 at once; the child writes its
# PID file a little later (nginx writes it after its parent is gone, which is the
# race systemd waits out), serves one line per connection, re-reads its message on
# SIGHUP, and exits on SIGTERM.
DAEMON = r'''
import os, signal, socket, sys, time
pidfile, port, msgfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen(16)
msg = [open(msgfile).read().strip()]
def hup(*_):
    msg[0] = open(msgfile).read().strip()
signal.signal(signal.SIGHUP, hup)
time.sleep(0.2)
with open(pidfile + ".tmp", "w") as f:
    f.write(f"{os.getpid()}\n")
os.rename(pidfile + ".tmp", pidfile)
while True:
    try:
        conn, _ = sock.accept()
    except InterruptedError:
        continue
    conn.sendall((msg[0] + "\n").encode())
    conn.close()
'''


def ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.makefile().readline().strip()


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        assert time.monotonic() < deadline, f"pid {pid} still there"
        time.sleep(0.02)


def proc_facts(pid: int) -> dict[str, Any]:
    with open(f"/proc/{pid}/limits") as f:
        limits = {line[:26].strip(): line[26:].split()[:2] for line in f.read().splitlines()[1:]}
    with open(f"/proc/{pid}/status") as f:
        umask = next(line.split()[1] for line in f if line.startswith("Umask:"))
    with open(f"/proc/{pid}/stat") as f:
        nice = int(f.read().rsplit(")", 1)[1].split()[16])
    with open(f"/proc/{pid}/oom_score_adj") as f:
        oom = int(f.read())
    return {"nofile": limits["Max open files"], "core": limits["Max core file size"],
            "umask": umask, "nice": nice, "oom": oom}


def test_a_forking_daemon_with_debian_s_directives(aeterna: Any, tmp_path: Path) -> None:
    port = free_port()
    app = tmp_path / "app"
    app.mkdir()
    (app / "daemon.py").write_text(DAEMON)
    (app / "msg").write_text("v1\n")
    runtime_name = f"aeterna-i13-{os.getpid()}"
    base = "/run" if is_root() else os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    if not os.access(base, os.W_OK):
        pytest.skip(f"{base} is not writable, where RuntimeDirectory= goes")
    rundir = Path(base) / runtime_name
    units = tmp_path / "units"
    units.mkdir()
    (units / "d.service").write_text(textwrap.dedent(f"""\
        [Unit]
        Description=a forking daemon
        ConditionPathExists={app}/msg
        [Service]
        Type=forking
        PIDFile={app}/d.pid
        Environment=PORT={port} "APP={app}"
        ExecStartPre=/bin/sh -c "test -f {app}/msg"
        ExecStart={PY} ${{APP}}/daemon.py {app}/d.pid $PORT {app}/msg
        ExecReload=/bin/kill -HUP $MAINPID
        ExecStopPost=/bin/sh -c "echo stopped > {app}/post"
        RuntimeDirectory={runtime_name}
        RuntimeDirectoryMode=0750
        LimitNOFILE=1234:2345
        LimitCORE=0
        UMask=0027
        Nice=3
        OOMScoreAdjust=250
        SuccessExitStatus=DATAERR
        """))
    (units / "plain.service").write_text(f"[Service]\nExecStart={PY} -c 'import time; "
                                         "time.sleep(60)'\n")
    (units / "skipped.service").write_text("[Unit]\nConditionPathExists=/nonexistent/x\n"
                                           "[Service]\nExecStart=/bin/false\n")
    (units / "broken.service").write_text("[Service]\nType=dbus\nExecStart=/bin/false\n")
    m = aeterna(units)
    m.wait_ready()
    # The broken unit is reported and left out; the others start.
    m.wait_line(r"unit\.not-loaded .*broken\.service:2: Service\.Type: Type=dbus")
    st = m.wait_status("d.service", lambda s: s["state"] == "active")
    pid = st["main_pid"]
    assert pid == int((app / "d.pid").read_text()), st
    assert ask(port) == "v1"
    facts = proc_facts(pid)
    assert facts == {"nofile": ["1234", "2345"], "core": ["0", "0"], "umask": "0027",
                     "nice": 3, "oom": 250}, facts
    assert rundir.is_dir() and (rundir.stat().st_mode & 0o777) == 0o750
    assert m.status("skipped")["state"] == "inactive"
    assert m.count(r"unit\.condition-failed unit=skipped") == 1

    # ExecReload=/bin/kill -HUP $MAINPID reloads in place: same main pid, new message.
    (app / "msg").write_text("v2\n")
    reply = m.ctl("reload", "d")
    assert reply["ok"] and reply["result"]["outcome"] == "success", reply
    assert m.status("d")["main_pid"] == pid
    deadline = time.monotonic() + 5
    while ask(port) != "v2":
        assert time.monotonic() < deadline, "the reload never took"
        time.sleep(0.02)

    # No ExecReload= and no strategy: not applicable, and the process is untouched.
    plain = m.status("plain")["main_pid"]
    reply = m.ctl("reload", "plain.service")
    assert not reply["ok"] and "not applicable" in reply["error"], reply
    assert m.status("plain")["main_pid"] == plain

    reply = m.ctl("stop", "d.service")
    assert reply["ok"] and reply["result"]["state"] == "inactive", reply
    wait_gone(pid)
    assert (app / "post").read_text() == "stopped\n"
    assert not rundir.exists()
    m.ctl("stop")
    assert m.wait_exit() == 0


def test_full_privileges_prefix_and_limits_on_the_fork_path(aeterna: Any,
                                                            tmp_path: Path) -> None:
    """User= takes the fork path; ``+`` runs a command as the manager's user."""
    if not is_root():
        pytest.skip("switching to User=nobody needs root")
    # Somewhere User=nobody can reach (pytest's own directory is root's, 0700).
    out = Path(tempfile.mkdtemp(prefix="aeterna-i13-"))
    os.chmod(out, 0o777)
    units = tmp_path / "units"
    units.mkdir()
    (units / "n.service").write_text(textwrap.dedent(f"""\
        [Service]
        User=nobody
        ExecStartPre=+/bin/sh -c "id -u > {out}/pre"
        ExecStartPre=/bin/sh -c "id -u > {out}/pre-user"
        ExecStart=/bin/sleep 60
        LimitNOFILE=777
        UMask=0077
        """))
    m = aeterna(units)
    st = m.wait_status("n", lambda s: s["state"] == "active")
    assert (out / "pre").read_text().strip() == "0"
    assert (out / "pre-user").read_text().strip() != "0"
    facts = proc_facts(st["main_pid"])
    assert facts["nofile"] == ["777", "777"] and facts["umask"] == "0077", facts
    m.ctl("stop")
    assert m.wait_exit() == 128 + signal.SIGTERM  # one unit: tini's convention, sleep's end
    shutil.rmtree(out)
