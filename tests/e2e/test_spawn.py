"""The three ways spawn() starts a process give the child the same world.

vfork (the C extension), posix_spawn with the /bin/sh shim (no extension) and
fork (user switch, or no extension and an exact exec): same fds at 3.., same
LISTEN_PID == getpid(), own session, empty signal mask, default dispositions,
working directory, and exec failures carrying errno and path.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aeterna.linux import spawn as spawn_mod
from aeterna.linux.spawn import SpawnError, SpawnRequest, spawn

PROBE = r"""
import json, os, signal, sys
def alive(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False  # the fd listdir itself used
fds = sorted(int(f) for f in os.listdir('/proc/self/fd') if alive(int(f)))
mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
ign = [s.name for s in (signal.SIGUSR1,)  # python itself ignores SIGPIPE, SIGXFSZ
       if signal.getsignal(s) == signal.SIG_IGN]
print(json.dumps({"pid": os.getpid(), "listen_pid": os.environ.get("LISTEN_PID"),
                  "watchdog_pid": os.environ.get("WATCHDOG_PID"),
                  "sid": os.getsid(0), "pgid": os.getpgid(0), "cwd": os.getcwd(),
                  "fds": fds, "mask": sorted(int(s) for s in mask), "ignored": ign,
                  "fd3": os.get_blocking(3) if 3 in fds else None,
                  "argv0": sys.argv[0], "args": sys.argv[1:]}))
"""

PATHS = ["vfork", "posix_spawn", "fork"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    kind = request.param
    if kind == "vfork" and spawn_mod._fastspawn is None:
        pytest.skip("the C extension aeterna.linux._fastspawn is not built here")
    if kind != "vfork":
        monkeypatch.setattr(spawn_mod, "_fastspawn", None)
    yield kind


def _run(path: str, tmp: Path, **kw: object) -> dict[str, object]:
    r, w = os.pipe2(os.O_CLOEXEC)
    req = SpawnRequest(argv=(sys.executable, "-c", PROBE, "a b", "c"),
                       env={"PATH": os.environ["PATH"]}, stdout=w, **kw)  # type: ignore[arg-type]
    pid = spawn(req, exact_exec=(path == "fork"))
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    data: dict[str, object] = json.loads(out)
    assert data["pid"] == pid
    return data


def test_fds_env_session_and_signals(path: str, tmp_path: Path) -> None:
    # The manager's contract: every fd it holds is close-on-exec (it marks the
    # ones it inherited at start); the fast paths rely on it instead of closing.
    from aeterna.linux.pid1 import no_inherited_fds

    no_inherited_fds()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    lst.setblocking(False)
    other = socket.socket()  # a manager fd that must not leak
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # must not stay ignored
    try:
        data = _run(path, tmp_path, pass_fds=(lst.fileno(),),
                    blocking_fds=frozenset({lst.fileno()}),
                    pid_env=("LISTEN_PID", "WATCHDOG_PID"), cwd=str(tmp_path))
    finally:
        signal.signal(signal.SIGUSR1, old)
        other.close()
    assert data["listen_pid"] == str(data["pid"]) == data["watchdog_pid"]
    assert data["fds"] == [0, 1, 2, 3]
    assert data["fd3"] is True  # O_NONBLOCK cleared, as systemd hands listeners over
    assert data["sid"] == data["pid"] == data["pgid"]
    assert data["mask"] == [] and data["ignored"] == []
    assert data["cwd"] == str(tmp_path)
    assert data["args"] == ["a b", "c"]
    lst.close()


def test_missing_program_and_missing_directory(path: str, tmp_path: Path) -> None:
    with pytest.raises(SpawnError) as info:
        spawn(SpawnRequest(argv=(str(tmp_path / "nope"),), env={}),
              exact_exec=(path == "fork"))
    assert info.value.errno == errno.ENOENT and info.value.exit_status == 127
    with pytest.raises(SpawnError) as info:
        spawn(SpawnRequest(argv=("/bin/true",), env={}, cwd=str(tmp_path / "gone")),
              exact_exec=(path == "fork"))
    assert info.value.stage == "chdir" and info.value.errno == errno.ENOENT


def test_not_executable(path: str, tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(SpawnError) as info:
        spawn(SpawnRequest(argv=(str(script),), env={}), exact_exec=(path == "fork"))
    assert info.value.errno == errno.EACCES and info.value.exit_status == 126


def test_argv0_override(path: str, tmp_path: Path) -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = spawn(SpawnRequest(argv=("/bin/sh", "-c", "echo $0"), env={}, stdout=w,
                             argv0="renamed"), exact_exec=(path == "fork"))
    os.close(w)
    assert os.read(r, 100).strip() == b"renamed"
    os.close(r)
    os.waitpid(pid, 0)
