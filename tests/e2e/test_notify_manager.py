"""The manager's side of sd_notify, end to end: who may notify, and what it does.

A real ``aeterna start`` runs ``tests/apps/notifier.py``, a client scripted from
its command line (send this, fork a child that sends that, wait for a file...),
and the tests watch the manager's log and ``aeterna status``. No mocks; every
wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import AETERNA, ROOT

PY = sys.executable
NOTIFIER = [PY, str(ROOT / "tests" / "apps" / "notifier.py")]


def unit(name: str, steps: list[str], command: list[str] | None = None, **extra: Any) -> str:
    """A YAML unit running the notifier with ``steps`` (or ``command``); ``extra``
    values are dumped as JSON, which YAML reads as flow style."""
    body = {"name": name, "command": command or [*NOTIFIER, *steps], **extra}
    return "service:\n" + "\n".join(f"  {k}: {json.dumps(v)}" for k, v in body.items()) + "\n"


def cli(m: Any, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AETERNA, "--control", m.control, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def unit_env(m: Any, name: str, generation: int = 1) -> dict[str, str]:
    line = m.wait_line(rf'^{name}\[\d+\]: ENV (\{{.*"AETERNA_GENERATION": "{generation}".*\}})$')
    env: dict[str, str] = json.loads(line.group(1))
    return env


def send(path: str, payload: bytes, fds: list[int] | None = None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.connect(path)
        if fds:
            socket.send_fds(s, [payload], fds)
        else:
            s.send(payload)


# --------------------------------------------------------------------------- 6. spoofing


def test_outsider_ready_is_dropped_as_unknown_sender(aeterna: Any) -> None:
    m = aeterna({"v.yaml": unit("v", ["env", "forever"], type="notify",
                                timeouts={"start": "20s", "stop": "5s"})})
    env = unit_env(m, "v")
    path = env["NOTIFY_SOCKET"]
    send(path, b"READY=1\nSTATUS=spoofed\nMAINPID=1")
    m.wait_line(rf"notify\.dropped reason=unknown_sender pid={os.getpid()} ")
    st = m.status("v")
    assert st["state"] == "starting" and st["status_text"] == "", st
    assert st["main_pid"] == int(env["getpid"])


def test_child_of_main_is_not_authorised_under_notify_access_main(aeterna: Any,
                                                                    tmp_path: Path) -> None:
    go = tmp_path / "go"
    m = aeterna({"v.yaml": unit("v", ["child:READY=1", "waitfile:" + str(go), "send:READY=1",
                                      "forever"], type="notify", notify_access="main",
                                timeouts={"start": "20s", "stop": "5s"})})
    child = m.wait_line(r"^v\[\d+\]: child (\d+) sent$").group(1)
    m.wait_line(rf"^v\[\d+\]: child {child} barrier=True$")
    m.wait_line(rf"notify\.dropped reason=not_authorised pid={child} .*unit=v access=main")
    assert m.status("v")["state"] == "starting"
    go.touch()
    m.wait_line(r"unit\.state unit=v old=starting new=active")
    assert m.count(r"notify\.dropped") == 1


def test_child_of_main_is_authorised_under_notify_access_all(aeterna: Any) -> None:
    m = aeterna({"v.yaml": unit("v", ["child:READY=1\\nSTATUS=from child", "forever"],
                                type="notify", notify_access="all",
                                timeouts={"start": "20s", "stop": "5s"})})
    m.wait_line(r"unit\.state unit=v old=starting new=active")
    assert m.status("v")["status_text"] == "from child"


_JOIN_AND_SEND = """
import os, select, socket, sys
pgid, path = int(sys.argv[1]), sys.argv[2]
try:
    os.setpgid(0, pgid)
    print("joined", flush=True)
except OSError as exc:
    print("join refused", exc.errno, flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(path)
s.send(b"READY=1\\nSTATUS=spoofed by an outsider")
r, w = os.pipe()
socket.send_fds(s, [b"BARRIER=1"], [w])
os.close(w)
p = select.poll()
p.register(r, 0)
print("barrier", bool(p.poll(5000)), flush=True)
"""


def test_outsider_joining_the_process_group_cannot_notify(aeterna: Any) -> None:
    m = aeterna({"v.yaml": unit("v", ["env", "forever"], type="notify", notify_access="all",
                                timeouts={"start": "20s", "stop": "5s"})})
    env = unit_env(m, "v")
    r = subprocess.run([PY, "-c", _JOIN_AND_SEND, env["getpid"], env["NOTIFY_SOCKET"]],
                       capture_output=True, text=True, timeout=15)
    assert "barrier True" in r.stdout, (r.stdout, r.stderr)
    # The manager has handled the READY=1 (it came before the acknowledged barrier).
    st = m.status("v")
    assert st["state"] == "starting" and st["status_text"] == "", st


# --------------------------------------------------------------------------- 7. watchdog


def test_watchdog_expiry_kills_with_sigabrt_and_restarts(aeterna: Any) -> None:
    """Pings for 1.2 s (every 0.3 s, under watchdog_sec 1s), then stops pinging:
    about 1 s later the manager sends SIGABRT; result watchdog; on-failure restarts."""
    m = aeterna({"wd.yaml": unit("wd", ["env", "send:READY=1", "pings:0.3:4",
                                        "print:stopped pinging", "forever"],
                                 type="notify", watchdog_sec="1s", restart="on-failure",
                                 timeouts={"stop": "5s"})})
    env = unit_env(m, "wd")
    assert env["WATCHDOG_USEC"] == "1000000"
    assert env["WATCHDOG_PID"] == env["getpid"]
    assert env["NOTIFY_SOCKET"]
    m.wait_line(r"unit\.state unit=wd old=starting new=active")
    t_stop = time.monotonic()
    m.wait_line(r"^wd\[\d+\]: stopped pinging$")
    line = m.wait_line(r"unit\.watchdog unit=wd pid=(\d+) signal=SIGABRT", timeout=5)
    assert int(line.group(1)) == int(env["getpid"])
    assert time.monotonic() - t_stop >= 1.0  # not while it was still pinging
    assert m.index_of(r"stopped pinging") < m.index_of(r"unit\.watchdog")
    m.wait_line(r'unit\.exited unit=wd how="signal=SIGABRT"')
    m.wait_line(r"unit\.restart-scheduled unit=wd .*result=watchdog")
    env2 = unit_env(m, "wd", generation=2)
    assert env2["WATCHDOG_PID"] == env2["getpid"] != env["getpid"]
    st = m.wait_status("wd", lambda s: s["generation"] == 2 and s["state"] == "active")
    assert st["restarts"] == 1


def test_watchdog_trigger_and_exit_before_ready(aeterna: Any) -> None:
    m = aeterna({
        # WATCHDOG=trigger fails the service at once, even without watchdog_sec.
        "trig.yaml": unit("trig", ["send:READY=1", "send:WATCHDOG=trigger", "forever"],
                          type="notify", timeouts={"stop": "5s"}),
        # Type=notify that exits 0 before READY=1 broke the protocol.
        "early.yaml": unit("early", ["print:bye", "exit:0"], type="notify"),
        # READY=1 and an exit right after: the manager reads notify before it reaps,
        # so this is a clean run, not a protocol failure.
        "quick.yaml": unit("quick", ["send:READY=1\\nSTATUS=done", "exit:0"], type="notify"),
        "keep.yaml": unit("keep", ["forever"], timeouts={"stop": "5s"}),
    })
    m.wait_line(r"unit\.watchdog unit=trig .*signal=SIGABRT")
    m.wait_line(r"unit\.state unit=trig old=\w+ new=failed result=watchdog")
    assert m.status("trig")["result"] == "watchdog"
    m.wait_line(r'unit\.exited unit=early how="status=0" result=protocol')
    st = m.wait_status("early", lambda s: s["state"] == "failed")
    assert st["result"] == "protocol"
    m.wait_line(r'unit\.exited unit=quick how="status=0" result=success')
    st = m.wait_status("quick", lambda s: s["state"] == "inactive")
    assert st["result"] == "success" and st["status_text"] == "done"
    assert m.index_of(r"unit=quick old=starting new=active") < m.index_of(
        r"unit\.exited unit=quick")


def test_extend_timeout_usec_pushes_the_start_timeout(aeterna: Any) -> None:
    m = aeterna({
        "ext.yaml": unit("ext", ["send:EXTEND_TIMEOUT_USEC=4000000", "sleep:2",
                                 "send:READY=1", "forever"],
                         type="notify", timeouts={"start": "1s", "stop": "5s"}),
        "noext.yaml": unit("noext", ["sleep:2", "send:READY=1", "forever"],
                           type="notify", timeouts={"start": "1s", "stop": "5s"}),
        # An extension shorter than what is left never shortens the timeout.
        "short.yaml": unit("short", ["send:EXTEND_TIMEOUT_USEC=100000", "sleep:0.5",
                                     "send:READY=1", "forever"],
                           type="notify", timeouts={"start": "1s", "stop": "5s"}),
    })
    m.wait_line(r"unit\.state unit=short old=starting new=active")
    m.wait_line(r"unit\.start-timeout unit=noext")
    m.wait_line(r"unit\.state unit=ext old=starting new=active", timeout=5)
    assert m.count(r"unit\.start-timeout unit=(ext|short)") == 0
    st = m.status("ext")
    assert st["state"] == "active" and st["uptime"] >= 1.9


# --------------------------------------------------------------------------- notify-reload


def test_notify_reload_answered_and_unanswered(aeterna: Any) -> None:
    m = aeterna({
        "good.yaml": unit("good", ["reload:good", "send:READY=1", "forever"],
                          type="notify-reload", timeouts={"start": "5s", "stop": "5s"}),
        "deaf.yaml": unit("deaf", ["reload:ignore", "send:READY=1", "forever"],
                          type="notify-reload", timeouts={"start": "1s", "stop": "5s"}),
        # RELOADING=1 with no MONOTONIC_USEC does not answer a signalled reload.
        "stale.yaml": unit("stale", ["reload:nostamp", "send:READY=1", "forever"],
                           type="notify-reload", timeouts={"start": "1s", "stop": "5s"}),
    })
    for name in ("good", "deaf", "stale"):
        m.wait_line(rf"unit\.state unit={name} old=starting new=active")
    t0 = time.monotonic()
    procs = {name: subprocess.Popen([*AETERNA, "--control", m.control, "reload", name],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=ROOT) for name in ("deaf", "stale")}
    # An answered reload is over as soon as RELOADING=1 and READY=1 are in.
    t1 = time.monotonic()
    reply = m.ctl("reload", "good")
    assert time.monotonic() - t1 < 0.9
    assert reply["ok"] and reply["result"]["outcome"] == "success", reply
    m.wait_line(r"^good\[\d+\]: reloaded$")
    r = cli(m, "reload", "good")  # the CLI: exit 0 and one line
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert re.fullmatch(r"good: (reload )?success", r.stdout.strip()), r.stdout
    for name, p in procs.items():
        out, err = p.communicate(timeout=15)
        assert p.returncode == 1, (name, out, err)
        assert re.fullmatch(rf"{name}: (reload )?timeout", out.strip()), out
        m.wait_line(rf"unit\.reloaded unit={name} outcome=timeout")
        st = m.status(name)
        assert st["state"] == "active" and st["last_reload"] == "timeout", st
    assert time.monotonic() - t0 >= 1.0
    st = m.status("good")
    assert st["state"] == "active" and st["reloads"] == 2 and st["last_reload"] == "success"
    assert m.count(r"unit\.exited") == 0


# --------------------------------------------------------------------------- fd store


def test_fdstore_survives_restart_remove_and_hangup(aeterna: Any, tmp_path: Path) -> None:
    """Generation 1 stores a memfd (``state``), a pipe that loses its writer
    (``gone``, polled: dropped on HUP) and one stored with FDPOLL=0 (``kept``),
    then crashes. Generation 2 gets them after its socket fd, reads the memfd
    back, removes ``state`` and crashes. Generation 3 has only ``kept`` left."""
    gen = "${AETERNA_GENERATION}"
    script = (
        f'case {gen} in\n'
        '1) exec "$@" env store-twice:state:hello-from-gen-1 store-pipe:gone '
        'store-pipe:kept:nopoll sleep:0.3 exit:3;;\n'
        '2) exec "$@" env show-fds "send:FDSTOREREMOVE=1\\nFDNAME=state" sleep:0.2 exit:4;;\n'
        '*) exec "$@" env show-fds "send:READY=1\\nSTATUS=generation 3 up" forever;;\n'
        'esac\n')
    sock = str(tmp_path / "http.sock")
    m = aeterna({"st.yaml": unit("st", [], command=["sh", "-c", script, "sh", *NOTIFIER],
                                 type="notify", fd_store_max=4, restart="on-failure",
                                 restart_sec="200ms", timeouts={"stop": "5s"},
                                 sockets=[{"listen": sock, "name": "http"}])})
    env1 = unit_env(m, "st", 1)
    assert env1["FDSTORE"] == "4" and env1["LISTEN_FDNAMES"] == "http"
    m.wait_line(r"fdstore\.add unit=st name=state outcome=stored")
    m.wait_line(r"fdstore\.add unit=st name=gone outcome=stored")
    m.wait_line(r"fdstore\.add unit=st name=kept outcome=stored")
    # The pipe's writer is gone: the polled entry is dropped, the FDPOLL=0 one kept.
    m.wait_line(r"fdstore\.dropped unit=st name=gone reason=hangup")
    m.wait_line(r'unit\.exited unit=st how="status=3"')

    env2 = unit_env(m, "st", 2)
    # Socket fds first, then the store (in an order systemd leaves unspecified).
    names = env2["LISTEN_FDNAMES"].split(":")
    assert env2["LISTEN_FDS"] == "3" and names[0] == "http"
    assert sorted(names[1:]) == ["kept", "state"]
    assert env2["LISTEN_PID"] == env2["getpid"]
    m.wait_line(r"^st\[\d+\]: FD 3 http socket $")
    m.wait_line(r"^st\[\d+\]: FD [45] state file hello-from-gen-1$")
    m.wait_line(r"^st\[\d+\]: FD [45] kept fifo x$")
    m.wait_line(r"fdstore\.removed unit=st name=state count=1")
    m.wait_line(r'unit\.exited unit=st how="status=4"')

    env3 = unit_env(m, "st", 3)
    assert env3["LISTEN_FDS"] == "2" and env3["LISTEN_FDNAMES"] == "http:kept"
    m.wait_line(r"unit\.state unit=st old=starting new=active")
    r = cli(m, "status", "--json")
    assert r.returncode == 0, r.stderr
    (st,) = json.loads(r.stdout)["units"]
    assert st["status_text"] == "generation 3 up" and st["generation"] == 3
    # The same memfd sent twice is stored once (the second add is a duplicate).
    assert m.count(r"fdstore\.add unit=st name=state outcome=duplicate") == 1


# --------------------------------------------------------------------------- 8. fd-leak fuzz


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fd_count(pid: int, want: int | None = None, timeout: float = 5.0) -> int:
    """The manager's fd count once it stops moving (a control connection may be
    closing) or once it equals ``want``."""
    deadline = time.monotonic() + timeout
    last = _fd_count(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _fd_count(pid)
        if (want is not None and now == want) or (want is None and now == last):
            return now
        last = now
    return last


def test_hostile_datagram_flood_leaks_no_fd(aeterna: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    m = aeterna({"t.yaml": unit("t", ["env", "send:READY=1", "waitfile:" + str(go),
                                      "send:STATUS=drained", "forever"],
                                type="notify", timeouts={"stop": "5s"})})
    path = unit_env(m, "t")["NOTIFY_SOCKET"]
    m.wait_line(r"unit\.state unit=t old=starting new=active")
    pid = m.ctl("ping")["result"]["pid"]
    assert pid == m.proc.pid
    before = _settled_fd_count(pid)

    rng = random.Random(20240611)
    keys = [b"READY=1", b"STATUS=x", b"FDSTORE=1", b"FDNAME=a", b"WATCHDOG=trigger",
            b"WATCHDOG=1", b"MAINPID=1", b"RELOADING=1", b"STOPPING=1", b"NOTIFYACCESS=all",
            b"EXTEND_TIMEOUT_USEC=1", b"BARRIER=1", b"X_Y=\xff\xfe", b"ERRNO=2"]
    r_end, w_end = os.pipe()
    sent = silent = with_fds = 0
    t0 = time.monotonic()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(10)  # a stalled manager fails the test instead of hanging it
            s.connect(path)
            for i in range(10_000):
                kind = rng.random()
                if kind < 0.3:
                    payload = rng.randbytes(rng.randrange(0, 300))
                elif kind < 0.7:
                    payload = b"\n".join(rng.choice(keys) for _ in range(rng.randrange(1, 6)))
                elif kind < 0.8:
                    payload = b"STATUS=" + b"y" * rng.randrange(4090, 9000)  # oversized
                elif kind < 0.85:
                    payload = b"READY=1\0STATUS=nul"
                elif kind < 0.9:
                    payload = b"BARRIER=1"  # with one fd: acknowledged, not logged
                else:
                    payload = b"READY=1\\"  # trailing backslash
                fds: list[int] = []
                if payload == b"BARRIER=1":
                    fds = [w_end]
                    silent += 1
                elif rng.random() < 0.3:
                    fds = [r_end, w_end][: rng.randrange(1, 3)] * rng.randrange(1, 4)
                if i % 2000 == 0:
                    fds = [r_end] * 250  # near the kernel's SCM_MAX_FD
                if fds:
                    with_fds += 1
                    socket.send_fds(s, [payload], fds)
                else:
                    s.send(payload)
                sent += 1
    finally:
        os.close(r_end)
        os.close(w_end)
    assert sent == 10_000 and with_fds > 1000
    go.touch()  # the unit's STATUS=drained is queued behind every datagram above
    m.wait_status("t", lambda st: st["status_text"] == "drained", timeout=20)
    after = _settled_fd_count(pid, want=before)
    assert after == before, (before, after)
    assert time.monotonic() - t0 < 30
    # Every datagram was read and dropped (barriers silently acknowledged); the log
    # says so in a few lines and the rest are counted.
    rejected = m.ctl("status")["result"]["manager"]["notify"]["rejected"]
    assert sum(rejected.values()) == sent - silent, rejected
    assert rejected["unknown_sender"] > 1000 and rejected["truncated"] > 500, rejected
    assert m.count(r"notify\.dropped") <= 2 * 50
    m.wait_line(r"log\.rate-limited event=notify\.dropped")
    # still responsive, and the unit untouched by the flood
    st = m.status("t")
    assert st["state"] == "active" and st["generation"] == 1 and st["result"] == "success"
    reply = m.ctl("stop", "t")
    assert reply["ok"] and reply["result"]["state"] == "inactive", reply


def test_fdstore_keeps_an_empty_fdname(aeterna: Any, tmp_path: Path) -> None:
    script = ('if [ "$AETERNA_GENERATION" = 1 ]; then exec "$@" "store-memfd::x" exit:3; '
              'else exec "$@" env forever; fi')
    m = aeterna({"e.yaml": unit("e", [], command=["sh", "-c", script, "sh", *NOTIFIER],
                                fd_store_max=2, restart="on-failure", timeouts={"stop": "5s"},
                                sockets=[{"listen": str(tmp_path / "s.sock"), "name": "http"}])})
    env2 = unit_env(m, "e", 2)
    assert env2["LISTEN_FDS"] == "2"
    assert env2["LISTEN_FDNAMES"] == "http:"


def test_authorised_fdstore_fuzz_leaks_no_fd(aeterna: Any, tmp_path: Path) -> None:
    """The accepted path: 3000 datagrams from the unit's own main process, fd-store
    traffic with pipes, memfds and socket pairs attached (duplicates, full store,
    hang-ups, FDPOLL=0, bad names, bad barriers, junk). Once the unit has removed
    every name, the manager holds exactly the fds it held before."""
    go = tmp_path / "go"
    m = aeterna({"f.yaml": unit("f", ["send:READY=1", "waitfile:" + str(go), "fuzz:3000:7",
                                      "send:STATUS=fuzzed", "forever"],
                                type="notify", fd_store_max=8, timeouts={"stop": "5s"})})
    m.wait_line(r"unit\.state unit=f old=starting new=active")
    pid = m.proc.pid
    before = _settled_fd_count(pid)
    go.touch()
    m.wait_status("f", lambda st: st["status_text"] == "fuzzed", timeout=20)
    after = _settled_fd_count(pid, want=before)
    assert after == before, (before, after)
    assert m.count(r"fdstore\.add unit=f .*outcome=stored") > 8
    assert m.count(r"fdstore\.add unit=f .*outcome=full") > 0
    assert m.count(r"fdstore\.add unit=f .*outcome=duplicate") > 0
    assert m.count(r"fdstore\.dropped unit=f .*reason=hangup") > 0
    st = m.status("f")
    assert st["state"] == "active" and st["generation"] == 1
