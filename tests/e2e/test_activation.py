"""Socket activation and readiness with unchanged third-party programs.

Every test runs a real ``aeterna start`` on real sockets bound to 127.0.0.1 (or
unix sockets in ``tmp_path``) and a real server: gunicorn, uvicorn, hypercorn,
programs written against systemd-python and sdnotify, and systemd's own
``systemd-notify`` and ``systemd-socket-activate``. No mocks; every wait is
bounded. The probe and app programs live in ``tests/apps/``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import AETERNA, ROOT, free_port, is_root

PY = sys.executable
APPS = ROOT / "tests" / "apps"
BIN = Path(sys.executable).parent
GUNICORN = str(BIN / "gunicorn")
UVICORN = str(BIN / "uvicorn")
HYPERCORN = str(BIN / "hypercorn")


def http_get(port: int, path: str = "/", timeout: float = 15.0) -> tuple[int, str]:
    """One GET. The manager's socket is listening from the start, so a request made
    before the server is up waits in the accept queue instead of being refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def line_from(port_or_path: int | str, timeout: float = 10.0) -> str:
    """Connect (TCP port or unix path) and read the one line the server sends."""
    if isinstance(port_or_path, int):
        s = socket.create_connection(("127.0.0.1", port_or_path), timeout=timeout)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(port_or_path)
    with s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode()


def cli(m: Any, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AETERNA, "--control", m.control, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def unit(name: str, command: str | list[str], **extra: Any) -> str:
    """A YAML unit; ``extra`` values are dumped as JSON (valid YAML flow style)."""
    body = {"name": name, "command": command, **extra}
    lines = [f"  {k}: {json.dumps(v)}" for k, v in body.items()]
    return "service:\n" + "\n".join(lines) + "\n"


def gunicorn_cmd(*extra: str) -> list[str]:
    # --no-control-socket: gunicorn 27 would otherwise create ~/.gunicorn/gunicorn.ctl.
    return [GUNICORN, "--chdir", str(APPS), "-w", "2", "--no-control-socket",
            "--graceful-timeout", "2", *extra, "wsgi_app:app"]


# --------------------------------------------------------------------------- 1. gunicorn


def test_gunicorn_notify_with_manager_socket(aeterna: Any) -> None:
    port = free_port()
    m = aeterna({"web.yaml": unit(
        "web", gunicorn_cmd(), type="notify",
        sockets=[{"listen": f"127.0.0.1:{port}", "name": "http"}],
        timeouts={"start": "20s", "stop": "10s"})})
    m.wait_line(rf"socket\.bound unit=web name=http address=127\.0\.0\.1:{port} ")
    m.wait_line(r"unit\.state unit=web old=starting new=active", timeout=20)
    # gunicorn took the manager's socket (LISTEN_FDS) instead of binding its own.
    listening = m.index_of(rf"web\[\d+\]: .*Listening at: http://127\.0\.0\.1:{port} ")
    assert m.index_of(r"unit\.state unit=web old=waiting new=starting") < listening
    assert listening < m.index_of(r"unit\.state unit=web old=starting new=active")
    for _ in range(4):  # several requests: both workers serve on the same fd
        status, body = http_get(port)
        assert status == 200 and body.startswith("hello from wsgi pid="), body
    st = m.status("web")
    assert st["state"] == "active" and st["type"] == "notify"
    # gunicorn 27 sends "READY=1\nSTATUS=Gunicorn arbiter booted" from the arbiter.
    assert st["status_text"] == "Gunicorn arbiter booted"
    r = cli(m, "status", "web")
    assert r.returncode == 0, r.stderr
    assert "Gunicorn arbiter booted" in r.stdout.splitlines()[1]
    assert m.count(r"notify\.dropped") == 0
    assert m.count("Connection in use|Address already in use") == 0
    m.signal(signal.SIGTERM)
    assert m.wait_exit() in (0, 128 + signal.SIGTERM)
    assert m.count(r'unit\.exited unit=web how="status=0"') == 1


def test_gunicorn_is_starting_until_ready(aeterna: Any) -> None:
    """With --preload the arbiter imports the app (1.5 s here) before it notifies:
    the unit is ``starting`` all that time, and a request made meanwhile waits in
    the manager's accept queue and is answered once gunicorn is up. (Without
    --preload gunicorn says READY=1 as soon as it listens, before workers import.)"""
    port = free_port()
    m = aeterna({"web.yaml": unit(
        "web", gunicorn_cmd("--preload"), type="notify", env={"APP_IMPORT_SLEEP": "1.5"},
        sockets=[{"listen": f"127.0.0.1:{port}", "name": "http"}],
        timeouts={"start": "20s", "stop": "10s"})})
    m.wait_line(r"unit\.started unit=web")
    t0 = time.monotonic()
    time.sleep(0.5)
    st = m.status("web")
    assert st["state"] == "starting", st
    assert m.count(r"Listening at") == 0
    status, body = http_get(port)  # queued by the kernel until a worker accepts
    assert status == 200 and "hello from wsgi" in body
    m.wait_line(r"unit\.state unit=web old=starting new=active", timeout=20)
    assert time.monotonic() - t0 >= 1.0
    assert m.index_of(r"Listening at") < m.index_of(r"old=starting new=active")
    assert m.status("web")["status_text"] == "Gunicorn arbiter booted"


def test_gunicorn_systemd_socket_and_service_pair(aeterna: Any, tmp_path: Path) -> None:
    port = free_port()
    units = tmp_path / "sd"
    units.mkdir()
    (units / "web.socket").write_text(
        "[Unit]\nDescription=web socket\n\n"
        f"[Socket]\nListenStream=127.0.0.1:{port}\nFileDescriptorName=http\n\n"
        "[Install]\nWantedBy=sockets.target\n")
    (units / "web.service").write_text(
        "[Unit]\nDescription=gunicorn\nRequires=web.socket\nAfter=web.socket\n\n"
        "[Service]\nType=notify\nExecStart=" + " ".join(gunicorn_cmd()) + "\n"
        "TimeoutStartSec=20\nTimeoutStopSec=10\n")
    m = aeterna(units)
    m.wait_line(rf"socket\.bound unit=web name=http address=127\.0\.0\.1:{port} ")
    m.wait_line(r"unit\.state unit=web old=starting new=active", timeout=20)
    status, body = http_get(port)
    assert status == 200 and body.startswith("hello from wsgi"), body
    st = m.status("web")
    assert st["state"] == "active" and st["status_text"] == "Gunicorn arbiter booted"


# --------------------------------------------------------------------------- 2. ASGI servers


def test_uvicorn_fd_and_hypercorn_fd_bind(aeterna: Any, tmp_path: Path) -> None:
    uport = free_port()
    hsock = str(tmp_path / "hyper.sock")
    m = aeterna({
        "uv.yaml": unit("uv", [UVICORN, "--app-dir", str(APPS), "--fd", "3",
                               "--log-level", "info", "asgi_app:app"],
                        sockets=[{"listen": f"127.0.0.1:{uport}", "name": "http"}],
                        timeouts={"stop": "5s"}),
        "hyper.yaml": unit("hyper", [HYPERCORN, "--bind", "fd://3", "asgi_app:app"],
                           working_directory=str(APPS),
                           sockets=[{"listen": hsock, "name": "http"}],
                           timeouts={"stop": "5s"}),
    })
    m.wait_ready()  # every socket is bound before manager.started
    status, body = http_get(uport)
    assert status == 200 and body.startswith("hello from asgi pid="), body
    assert f"pid={m.status('uv')['main_pid']}" in body
    # hypercorn over the manager's unix socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(hsock)
    with s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body2 = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), data
    assert body2.startswith("hello from asgi pid=")
    # hypercorn serves from a worker process: one of the unit's process group
    worker = int(body2.split("pid=")[1])
    assert os.getpgid(worker) == m.status("hyper")["main_pid"]
    assert m.count("address already in use|Errno 98") == 0


# --------------------------------------------------------------------------- 3. libraries


def test_systemd_python_and_sdnotify_programs(aeterna: Any, tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    path1, path2 = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    m = aeterna({
        "sdpy.yaml": unit("sdpy", [PY, str(APPS / "sd_daemon_app.py")], type="notify",
                          sockets=[{"listen": f"127.0.0.1:{p1}", "name": "tcp"},
                                   {"listen": path1, "name": "local"}]),
        "sdn.yaml": unit("sdn", [PY, str(APPS / "sdnotify_app.py")], type="notify",
                         sockets=[{"listen": f"127.0.0.1:{p2}", "name": "tcp"},
                                  {"listen": path2, "name": "local"}]),
    })
    m.wait_line(r"unit\.state unit=sdpy old=starting new=active")
    m.wait_line(r"unit\.state unit=sdn old=starting new=active")
    # (stdout: read on another thread than the manager's log, so wait for it too)
    m.wait_line(r"^sdpy\[\d+\]: listen_fds_with_names=\[\(3, 'tcp'\), \(4, 'local'\)\]$")
    m.wait_line(r"^sdpy\[\d+\]: fd 3 tcp is_socket=True inet=True unix=False$")
    m.wait_line(r"^sdpy\[\d+\]: fd 4 local is_socket=True inet=False unix=True$")
    m.wait_line(r"^sdn\[\d+\]: fd 3 tcp family=AF_INET listening=1$")
    m.wait_line(r"^sdn\[\d+\]: fd 4 local family=AF_UNIX listening=1$")
    assert line_from(p1) == "systemd-python tcp fd=3\n"
    assert line_from(path1) == "systemd-python local fd=4\n"
    assert line_from(p2) == "sdnotify tcp fd=3\n"
    assert line_from(path2) == "sdnotify local fd=4\n"
    assert m.status("sdpy")["status_text"] == "systemd-python serving"
    assert m.status("sdn")["status_text"] == "sdnotify serving"


# --------------------------------------------------------------------------- 4. systemd-notify

NEEDS_SYSTEMD_NOTIFY = pytest.mark.skipif(shutil.which("systemd-notify") is None,
                                          reason="systemd-notify is not installed")

# Times systemd-notify and reports its exit status; then the shell becomes `sleep`.
_TIMED = ('t0=$(date +%s%N); systemd-notify {args}; rc=$?; t1=$(date +%s%N); '
          'echo "rc=$rc ms=$(( (t1 - t0) / 1000000 ))"; {after}')


@NEEDS_SYSTEMD_NOTIFY
def test_systemd_notify_ready_status_pid_and_barrier(aeterna: Any) -> None:
    """``systemd-notify`` runs as a child of the unit's shell. v252 sends as root
    with the *parent's* pid forged into SCM_CREDENTIALS (sd_pid_notify(getppid())),
    unprivileged with its own pid: ``notify_access: all`` accepts either, since
    both are processes of the unit. It then sends BARRIER=1 with a pipe and waits
    for the manager to close it; rc=0 within well under its 5 s barrier timeout
    shows the manager acknowledges barriers."""
    m = aeterna({
        "sn.yaml": unit("sn", ["sh", "-c", _TIMED.format(
            args='--ready "--status=hello from systemd-notify"', after="exec sleep 30")],
            type="notify", notify_access="all"),
        # --pid: MAINPID= moves the main pid to a child (and, as root, the datagram
        # carries that child's pid).
        "snpid.yaml": unit("snpid", ["sh", "-c", "sleep 30 & echo child=$!; " + _TIMED.format(
            args='--ready --pid=$!', after="wait")],
            type="notify", notify_access="all"),
    })
    m.wait_line(r"unit\.state unit=sn old=starting new=active")
    m.wait_line(r"unit\.state unit=snpid old=starting new=active")
    for name in ("sn", "snpid"):
        rc, ms = m.wait_line(rf"^{name}\[\d+\]: rc=(\d+) ms=(\d+)$").groups()
        assert rc == "0" and int(ms) < 2500, (name, rc, ms)
    st = m.status("sn")
    assert st["status_text"] == "hello from systemd-notify"
    child = int(m.wait_line(r"^snpid\[\d+\]: child=(\d+)$").group(1))
    st = m.status("snpid")
    assert st["main_pid"] == child, st
    m.wait_line(rf"unit\.mainpid unit=snpid old=\d+ new={child}")
    assert m.count(r"notify\.dropped") == 0


@NEEDS_SYSTEMD_NOTIFY
def test_systemd_notify_pid_main_process_exit_is_noticed(aeterna: Any) -> None:
    m = aeterna({
        "snpid.yaml": unit("snpid", ["sh", "-c", "sleep 1 & echo child=$!; "
                                     "systemd-notify --ready --pid=$!; wait; echo shell-exiting"],
                           type="notify", notify_access="all"),
        "other.yaml": unit("other", ["sleep", "60"]),  # keeps the manager up
    })
    other = m.wait_status("other", lambda s: s["state"] == "active")["main_pid"]
    try:
        child = int(m.wait_line(r"^snpid\[\d+\]: child=(\d+)$").group(1))
        m.wait_line(rf"unit\.mainpid unit=snpid old=\d+ new={child}")
        # The new main process is not our child: its exit is seen by pidfd, and
        # what is left of the unit (the shell) gets the stop signal, as systemd
        # stops the rest of a cgroup whose main process exited.
        m.wait_line(rf"unit\.mainpid-exited unit=snpid pid={child}", timeout=5)
        st = m.wait_status("snpid", lambda s: s["state"] in ("inactive", "failed"), timeout=3)
        assert st["main_pid"] is None
    finally:
        # While the bug lasts a stop would wait out the stop timeout for a process
        # that is long gone: end the manager and its other unit by hand.
        if m.proc.poll() is None and m.status("snpid")["state"] == "active":
            m.proc.kill()
            m.proc.wait(5)
            os.killpg(other, signal.SIGKILL)


@NEEDS_SYSTEMD_NOTIFY
def test_systemd_notify_under_notify_access_main(aeterna: Any) -> None:
    """With the default ``main``: as root systemd-notify forges its parent's pid,
    which is the main pid (the shell), so READY=1 counts; unprivileged it sends as
    itself, a child, and is refused, which is why such units need ``all``."""
    m = aeterna({"sn.yaml": unit("sn", ["sh", "-c", _TIMED.format(
        args="--ready", after="exec sleep 30")], type="notify")})
    rc, _ms = m.wait_line(r"^sn\[\d+\]: rc=(\d+) ms=(\d+)$").groups()
    assert rc == "0"
    if is_root():
        m.wait_line(r"unit\.state unit=sn old=starting new=active")
    else:
        m.wait_line(r"notify\.dropped reason=not_authorised .*unit=sn")
        assert m.status("sn")["state"] == "starting"


# --------------------------------------------------------------------------- 5. differential

PROBE = [PY, str(APPS / "probe.py")]


def probe_report(text: str) -> dict[str, Any]:
    m = re.search(r"PROBE (\{.*\})", text)
    assert m, text
    report: dict[str, Any] = json.loads(m.group(1))
    return report


def normalised(report: dict[str, Any], port: int, path: str) -> dict[str, Any]:
    """The parts that must match, with this run's pid, port and path replaced."""
    fds = json.loads(json.dumps(report["fds"]).replace(path, "PATH"))
    for info in fds.values():
        if info.get("family") == "AF_INET":
            assert info["local"] == ["127.0.0.1", port]
            info["local"] = ["127.0.0.1", "PORT"]
    env = dict(report["env"])
    assert env.pop("LISTEN_PID") == str(report["pid"])
    return {"env": env, "listen_pid_is_me": report["listen_pid_is_me"], "fds": fds,
            "open_fds": report["open_fds"]}


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_probe_layout_matches_systemd_socket_activate(aeterna: Any, tmp_path: Path) -> None:
    # systemd's own tool
    port1 = free_port()
    path1 = str(tmp_path / "ref" / "local.sock")
    os.makedirs(os.path.dirname(path1))
    sa = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port1}", "-l", path1,
                           "--fdname=a:b", *PROBE], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # It waits for a first connection before it execs the program.
        deadline = time.monotonic() + 10
        while True:
            try:
                trigger = socket.create_connection(("127.0.0.1", port1), timeout=5)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        out, err = sa.communicate(timeout=15)
        trigger.close()
    finally:
        sa.kill()
        sa.wait()
    assert sa.returncode == 0, err
    ref = probe_report(out)

    # the same sockets and names under Aeterna
    port2 = free_port()
    path2 = str(tmp_path / "ours" / "local.sock")
    m = aeterna({"p.yaml": unit("p", PROBE, sockets=[
        {"listen": f"127.0.0.1:{port2}", "name": "a"}, {"listen": path2, "name": "b"}])})
    assert m.wait_exit() == 0
    ours = probe_report(m.output())

    want = normalised(ref, port1, path1)
    got = normalised(ours, port2, path2)
    assert got == want
    assert want["env"] == {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert want["open_fds"] == [0, 1, 2, 3, 4]
    assert want["fds"]["3"] == {"cloexec": False, "nonblock": False, "kind": "socket",
                                "family": "AF_INET", "type": "SOCK_STREAM",
                                "listening": True, "local": ["127.0.0.1", "PORT"]}
    assert want["fds"]["4"]["family"] == "AF_UNIX" and want["fds"]["4"]["local"] == "PATH"
    # No manager fd in the child: stdin is /dev/null, stdout/stderr our pipes.
    assert ours["targets"]["0"] == "/dev/null"
    assert ours["targets"]["3"].startswith("socket:") and ours["targets"]["4"].startswith(
        "socket:")


def test_child_env_and_fds_without_sockets(aeterna: Any) -> None:
    """No sockets: no LISTEN_* at all (never LISTEN_FDS=0); NOTIFY_SOCKET only for
    a unit whose NotifyAccess is not none; only fds 0, 1 and 2 open."""
    m = aeterna({
        "plain.yaml": unit("plain", PROBE),
        "notif.yaml": unit("notif", [*PROBE, "--wait", "30"], type="notify"),
        "wd.yaml": unit("wd", [*PROBE, "--wait", "30"], watchdog_sec="60s"),
        "store.yaml": unit("store", [*PROBE, "--wait", "30"], fd_store_max=3),
        "none.yaml": unit("none", [*PROBE, "--wait", "30"], type="notify",
                          notify_access="none"),
    })
    reports = {}
    for name in ("plain", "notif", "wd", "store", "none"):
        reports[name] = probe_report(m.wait_line(rf"^{name}\[\d+\]: PROBE .*").group(0))
    for name, rep in reports.items():
        assert rep["open_fds"] == [0, 1, 2], (name, rep["targets"])
        assert rep["fds"] == {}
        assert not any(k.startswith("LISTEN_") for k in rep["env"]), (name, rep["env"])
    assert reports["plain"]["env"] == {}
    assert reports["none"]["env"] == {}
    notify_path = reports["notif"]["env"]["NOTIFY_SOCKET"]
    assert os.path.isabs(notify_path) and os.path.exists(notify_path)
    assert reports["notif"]["env"] == {"NOTIFY_SOCKET": notify_path}
    wd = reports["wd"]
    assert wd["env"] == {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "60000000",
                         "WATCHDOG_PID": str(wd["pid"])}
    assert reports["store"]["env"] == {"NOTIFY_SOCKET": notify_path, "FDSTORE": "3"}


def test_no_manager_fd_leaks_into_a_socket_activated_child(aeterna: Any,
                                                           tmp_path: Path) -> None:
    """Three listeners of three kinds: the child has exactly 0-2 and 3-5."""
    m = aeterna({"p.yaml": unit("p", PROBE, sockets=[
        {"listen": "127.0.0.1:0", "name": "tcp"},
        {"listen": str(tmp_path / "d.sock"), "name": "dgram", "type": "datagram"},
        {"listen": str(tmp_path / "fifo"), "name": "fifo", "type": "fifo"}])})
    rep = probe_report(m.wait_line(r"PROBE .*").group(0))
    assert rep["open_fds"] == [0, 1, 2, 3, 4, 5], rep["targets"]
    assert rep["env"]["LISTEN_FDS"] == "3" and rep["env"]["LISTEN_FDNAMES"] == "tcp:dgram:fifo"
    assert rep["listen_pid_is_me"]
    assert rep["fds"]["4"]["type"] == "SOCK_DGRAM" and not rep["fds"]["4"]["listening"]
    assert rep["fds"]["5"]["kind"] == "fifo"
    assert not any(info["cloexec"] or info["nonblock"] for info in rep["fds"].values())
