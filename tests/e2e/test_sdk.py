"""The Python SDK (``sdk/python``, package ``aeterna_sdk``) on its own.

No manager here: real sockets, real memfds and real child processes stand in
for it. The test plays the manager's end of the SRP socketpair, and checks
what the SDK sends with the manager's own parser and seal checks
(``aeterna.wire.srp``). Every wait is bounded.
"""

from __future__ import annotations

import array
import ast
import fcntl
import json
import mmap
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from aeterna.linux.memfd import check_state
from aeterna.wire import srp as srp_wire
from aeterna_sdk import AeternaClient, StateArena
from aeterna_sdk import memfd as sdk_memfd
from aeterna_sdk import wire as sdk_wire

SDK = ROOT / "sdk" / "python"
PKG = SDK / "aeterna_sdk"
PY = sys.executable


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until(pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# --------------------------------------------------------------------- source rules

def test_sdk_source_parses_as_python39() -> None:
    files = sorted(PKG.glob("*.py"))
    assert len(files) >= 5
    for f in files:
        ast.parse(f.read_text(), filename=str(f), feature_version=(3, 9))


def test_sdk_imports_only_the_standard_library() -> None:
    for f in sorted(PKG.glob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", (f, name)


def test_sdk_annotations_are_never_evaluated() -> None:
    """``X | None`` at run time needs 3.10: every module defers its annotations."""
    for f in sorted(PKG.glob("*.py")):
        text = f.read_text()
        if "def " in text:
            assert "from __future__ import annotations" in text, f


def _python39() -> str | None:
    """A working Python 3.9 (a pyenv shim may exist without one behind it)."""
    cands = [shutil.which("python3.9"), *sorted(Path("~/.pyenv/versions").expanduser()
                                                .glob("3.9*/bin/python3.9"))]
    for cand in cands:
        if not cand:
            continue
        try:
            r = subprocess.run([str(cand), "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.stdout.strip() == "(3, 9)":
            return str(cand)
    return None


def test_sdk_runs_on_a_real_python39(tmp_path: Path) -> None:
    py39 = _python39()
    if py39 is None:
        pytest.skip("no Python 3.9 interpreter on this machine")
    code = textwrap.dedent("""
        import sys
        assert sys.version_info[:2] == (3, 9), sys.version
        from aeterna_sdk import AeternaClient, StateArena
        c = AeternaClient(environ={})
        assert c.load_context() is None and not c.ready() and c.listeners() == {}
        a = StateArena(1 << 16)
        a.write(b"abc", 10)
        assert a.read(10, 3) == b"abc"
        a.close()
        print("ok")
    """)
    r = subprocess.run([py39, "-c", code], capture_output=True, text=True, timeout=30,
                       env={"PYTHONPATH": str(SDK), "PATH": os.environ.get("PATH", "")})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_sdk_installs_alone_with_pip(tmp_path: Path) -> None:
    """``pip install sdk/python`` into an empty target: it builds, and pulls in nothing."""
    target = tmp_path / "site"
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ beside the sources
    shutil.copytree(SDK, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".ruff_cache"))
    r = subprocess.run([PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=240)
    if r.returncode != 0 and any(w in r.stderr.lower() for w in (
            "no matching distribution", "connection", "network", "temporary failure")):
        pytest.skip("pip cannot reach a package index to build the SDK")
    assert r.returncode == 0, r.stderr
    installed = sorted(p.name for p in target.iterdir() if not p.name.startswith("."))
    assert [n for n in installed if not n.startswith("aeterna_sdk")] == [], installed
    r = subprocess.run([PY, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "import aeterna_sdk; print(aeterna_sdk.__version__)", str(target)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


# --------------------------------------------------------------------- outside Aeterna

def test_every_call_is_a_no_op_outside_aeterna() -> None:
    c = AeternaClient(environ={})
    assert not c.in_aeterna and not c.srp_enabled and not c.srp_required
    assert AeternaClient(environ={"AETERNA_SRP_REQUIRED": "1"}).srp_required
    assert c.get_listener_socket() is None and c.get_listener_socket("http") is None
    assert c.listeners() == {} and c.stored_fds() == {}
    assert c.ready() is False and c.ready("up") is False
    assert c.status("x") is False and c.watchdog() is False and c.stopping() is False
    assert c.watchdog_interval() is None
    t0 = time.monotonic()
    assert c.load_context(timeout=5) is None
    assert time.monotonic() - t0 < 0.5
    assert c.load_error == "no-srp"
    assert c.save_context({"a": 1}) is False
    c.on_checkpoint(lambda: {"a": 1}, on_quiesce=lambda r: None, on_resume=lambda s: None)
    a, b = socket.socketpair()
    c.handoff_connections({"c1": a})
    assert c.adopted_connections() == {} and c.arena("x") is None
    c.close()
    a.close()
    b.close()


def test_a_plain_process_without_variables_runs_unchanged() -> None:
    code = ("from aeterna_sdk import AeternaClient as C; c = C(); "
            "print(c.in_aeterna, c.get_listener_socket(), c.ready(), c.load_context(), "
            "c.save_context([1]))")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LISTEN_", "NOTIFY_", "AETERNA_", "WATCHDOG_"))}
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert r.stdout.split() == ["False", "None", "False", "None", "False"], r.stderr


# --------------------------------------------------------------------- socket activation

LAUNCHER = textwrap.dedent("""
    # Put the fds listed in SRC_FDS at 3, 4, ... and exec argv with LISTEN_PID=our pid,
    # like the manager does (exec keeps the pid).
    import fcntl, os, sys
    src = [int(x) for x in os.environ.pop("SRC_FDS").split(",") if x]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in src]
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
    for fd in high:
        os.close(fd)
    if os.environ.pop("WRONG_PID", ""):
        os.environ["LISTEN_PID"] = str(os.getpid() + 1)
    else:
        os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
""")

CHILD = textwrap.dedent("""
    import fcntl, json, os, socket
    from aeterna_sdk import AeternaClient
    c = AeternaClient()
    out = {"listeners": {}, "stored": sorted(c.stored_fds())}
    for name, s in c.listeners().items():
        out["listeners"][name] = {
            "fd": s.fileno(), "family": int(s.family), "type": int(s.type),
            "cloexec": bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)}
    first = c.get_listener_socket()
    out["first"] = None if first is None else first.fileno()
    out["same_object"] = c.get_listener_socket("web") is c.listeners().get("web")
    web = c.get_listener_socket("web")
    if web is not None:
        conn, _ = web.accept()
        conn.sendall(b"hello from the child\\n")
        conn.close()
    print(json.dumps(out), flush=True)
""")


def _run_activated(fds: list[int], names: str, wrong_pid: bool = False) -> dict[str, Any]:
    env = dict(os.environ, SRC_FDS=",".join(map(str, fds)), LISTEN_FDS=str(len(fds)),
               LISTEN_FDNAMES=names)
    if wrong_pid:
        env["WRONG_PID"] = "1"
    proc = subprocess.Popen([PY, "-c", LAUNCHER, "-c", CHILD], pass_fds=fds, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_listeners_from_a_real_listen_fds_layout(tmp_path: Path) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "u.sock"))
    unix.listen()
    stored = os.memfd_create("stored", os.MFD_CLOEXEC)
    port = tcp.getsockname()[1]
    # Connect first: the connection waits in the accept queue for the child.
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        out = _run_activated([tcp.fileno(), udp.fileno(), unix.fileno(), stored],
                             "web:dns:ctl:blob")
        assert client.recv(100) == b"hello from the child\n"
    finally:
        client.close()
    ls = out["listeners"]
    assert sorted(ls) == ["ctl", "dns", "web"]
    assert out["stored"] == ["blob"]  # a non-socket fd-store entry is not a listener
    assert ls["web"]["fd"] == 3 and ls["dns"]["fd"] == 4 and ls["ctl"]["fd"] == 5
    assert ls["web"]["family"] == socket.AF_INET and ls["web"]["type"] == socket.SOCK_STREAM
    assert ls["dns"]["type"] == socket.SOCK_DGRAM
    assert ls["ctl"]["family"] == socket.AF_UNIX
    assert all(v["cloexec"] for v in ls.values())
    assert out["first"] == 3 and out["same_object"]
    for s in (tcp, udp, unix):
        s.close()
    os.close(stored)


def test_listen_fds_for_another_pid_are_ignored() -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    try:
        out = _run_activated([tcp.fileno()], "other", wrong_pid=True)
    finally:
        tcp.close()
    assert out["listeners"] == {} and out["first"] is None and out["stored"] == []


def test_listen_fds_without_names_are_called_unknown() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
    r, w = os.pipe()
    saved = os.dup(3)
    try:
        os.dup2(r, 3)
        c = AeternaClient(environ=env)
        assert c.stored_fds() == {"unknown": 3}
        assert c.listeners() == {}
    finally:
        os.dup2(saved, 3)
        os.close(saved)
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------- sd_notify

@pytest.fixture
def notify_sock(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    s.bind(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.settimeout(5)
    yield s, path
    s.close()


def _recv_notify(s: socket.socket) -> tuple[str, int]:
    data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = 0
    for level, kind, blob in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = array.array("i", blob[:12])[0]
    return data.decode(), pid


def test_notify_datagrams_reach_a_real_socket(notify_sock: tuple[socket.socket, str]) -> None:
    s, path = notify_sock
    c = AeternaClient(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000",
                               "WATCHDOG_PID": str(os.getpid())})
    assert c.ready()
    assert _recv_notify(s) == ("READY=1", os.getpid())
    assert c.ready(status="serving 3 sessions")
    assert _recv_notify(s)[0] == "READY=1\nSTATUS=serving 3 sessions"
    assert c.status("busy") and _recv_notify(s)[0] == "STATUS=busy"
    assert c.watchdog() and _recv_notify(s)[0] == "WATCHDOG=1"
    assert c.stopping() and _recv_notify(s)[0] == "STOPPING=1"
    assert c.watchdog_interval() == 2.0
    other = AeternaClient(environ={"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval() is None


def test_notify_to_an_abstract_socket() -> None:
    name = f"aeterna-sdk-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        c = AeternaClient(environ={"NOTIFY_SOCKET": "@" + name})
        assert c.ready("x")
        assert s.recv(4096) == b"READY=1\nSTATUS=x"
    finally:
        s.close()


def test_notify_to_nobody_is_false_not_an_error(tmp_path: Path) -> None:
    c = AeternaClient(environ={"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert c.ready() is False
    assert AeternaClient(environ={"NOTIFY_SOCKET": "vsock:2:999"}).ready() is False


# --------------------------------------------------------------------- memfds and arenas

def test_state_arena_is_sealed_fixed_size_and_writable() -> None:
    arena = StateArena(1 << 20, name="test-arena")
    fd = arena.fileno()
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals == fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    assert arena.seals == seals
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 1 << 19)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 1 << 21)
    with pytest.raises(PermissionError):  # F_SEAL_SEAL: nobody can add WRITE later
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:test-arena")
    arena.write(b"abc", 100)
    assert arena.read(100, 3) == b"abc" and os.pread(fd, 3, 100) == b"abc"
    with pytest.raises(ValueError):
        arena.write(b"x" * 10, (1 << 20) - 5)
    arena.close()
    assert arena.closed


def test_arena_holds_numpy_arrays_without_copies() -> None:
    np = pytest.importorskip("numpy")
    arena = StateArena(4 * 1000 * 16)
    vectors = np.frombuffer(arena.buffer, dtype=np.float32).reshape(1000, 16)
    vectors[7, :] = 1.5
    assert np.frombuffer(arena.read(7 * 64, 64), dtype=np.float32).tolist() == [1.5] * 16
    del vectors
    arena.close()


def test_a_receiver_maps_the_same_memfd_writable() -> None:
    """What a checkpoint does with an arena: the fd moves, the memory does not."""
    arena = StateArena(1 << 16)
    other = StateArena.from_fd(os.dup(arena.fileno()), "received")
    assert other.writable and other.size == arena.size
    other.write(b"written by the receiver", 0)
    assert arena.read(0, 23) == b"written by the receiver"
    assert os.fstat(other.fileno()).st_ino == os.fstat(arena.fileno()).st_ino
    # ... and in another process, through a passed fd:
    code = ("import os, sys; from aeterna_sdk import StateArena; "
            "a = StateArena.from_fd(int(sys.argv[1])); a.write(b'child', 100); print(a.size)")
    r = subprocess.run([PY, "-c", code, str(arena.fileno())], pass_fds=[arena.fileno()],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == str(1 << 16), r.stderr
    assert arena.read(100, 5) == b"child"
    other.close()
    arena.close()


def test_from_fd_refuses_what_is_not_a_size_sealed_memfd() -> None:
    r, w = os.pipe()
    with pytest.raises(ValueError):
        StateArena.from_fd(r)
    os.close(r)
    os.close(w)
    fd = os.memfd_create("unsealed", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4096)
    with pytest.raises(ValueError):
        StateArena.from_fd(fd)
    os.close(fd)


def test_snapshots_are_sealed_against_every_change() -> None:
    fd = sdk_memfd.snapshot(b"frozen state")
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals == srp_wire.SEALS_SNAPSHOT
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"x", 0)
    with pytest.raises(PermissionError):
        mmap.mmap(fd, 12, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    ro = mmap.mmap(fd, 12, mmap.MAP_SHARED, mmap.PROT_READ)
    assert ro[:] == b"frozen state"
    ro.close()
    snap = StateArena.from_fd(fd)  # a snapshot maps read-only
    assert not snap.writable and snap.read(0, 6) == b"frozen"
    snap.close()


# --------------------------------------------------------------------- SRP, the test as the manager

class FakeManager:
    """The manager's end of one generation's SRP socketpair."""

    def __init__(self) -> None:
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ours.settimeout(10)
        self.env = {"AETERNA_SRP_FD": str(theirs.detach()), "AETERNA_UNIT": "t",
                    "AETERNA_GENERATION": "1"}

        self.clients: list[AeternaClient] = []

    def client(self, **kw: Any) -> AeternaClient:
        c = AeternaClient(environ=self.env, **kw)
        self.clients.append(c)
        return c

    def recv(self) -> tuple[srp_wire.SrpMessage, list[int]]:
        data, fds, _flags, _ = socket.recv_fds(self.ours, 16384, 253)
        return srp_wire.parse(data), fds

    def send(self, verb: str, value: int = 1, fds: list[int] | None = None,
             **fields: object) -> None:
        data = srp_wire.format_message(verb, value, **fields)
        if fds:
            socket.send_fds(self.ours, [data], fds)
        else:
            self.ours.send(data)

    def close(self, c: AeternaClient | None = None) -> None:
        """Close our end; the client's end is closed by its own close()."""
        for client in self.clients:
            client.close()
        self.ours.close()


def checkpoint_of(obj: Any, **on_kw: Any) -> tuple[srp_wire.SrpMessage, list[int], Any]:
    """Have a client answer CHECKPOINT with ``obj``; returns the STATE=1 and its fds."""
    fm = FakeManager()
    c = fm.client()
    quiesced: list[str] = []
    c.on_checkpoint(lambda: obj, on_quiesce=quiesced.append, **on_kw)
    hello, _ = fm.recv()
    assert hello.verb == "HELLO" and hello.get("WANT_STATE") == "0"
    fm.send("CHECKPOINT", SEQ=7, REASON="relay")
    msg, fds = fm.recv()
    assert msg.verb == "STATE" and msg.ok and msg.seq == 7
    assert wait_until(lambda: quiesced == ["relay"] and c.quiesced)
    assert c.save_context({"late": 1}) is False  # the state belongs to the next one now
    fm.close(c)
    return msg, fds, c


def load_from(msg: srp_wire.SrpMessage, fds: list[int], **client_kw: Any
              ) -> tuple[Any, AeternaClient, srp_wire.SrpMessage]:
    """A new client loads the state the way the manager forwards it; returns its LOADED."""
    fm = FakeManager()
    c = fm.client(**client_kw)
    result: dict[str, Any] = {}
    import threading

    t = threading.Thread(target=lambda: result.setdefault("obj", c.load_context(timeout=10)))
    t.start()
    hello, _ = fm.recv()
    assert hello.verb == "HELLO" and hello.get("WANT_STATE") == "1"
    fm.send("STATE", 1, fds, SEQ=9, **srp_wire.state_fields(msg))
    loaded, _ = fm.recv()
    t.join(10)
    assert loaded.verb == "LOADED" and loaded.seq == 9
    fm.close()
    return result["obj"], c, loaded


@pytest.mark.parametrize("obj,fmt,expected_format", [
    ({"sessions": {"a": ["hi", "ho"]}, "n": 3}, None, "json"),
    ([1, 2.5, None, "é"], "json", "json"),
    (b"\x00\x01raw bytes\xff", None, "bytes"),
    (bytearray(b"buffer"), "bytes", "bytes"),
])
def test_round_trip_json_and_bytes(obj: Any, fmt: str | None, expected_format: str) -> None:
    base = fd_count()
    msg, fds, _ = checkpoint_of(obj, format=fmt)
    assert msg.get("FORMAT") == expected_format
    assert msg.get("FDKINDS") == "snapshot" and msg.get("FDNAMES") == "state"
    assert msg.get("CHECKSUM").startswith("sha256:")
    assert check_state(msg, fds, 0) is None  # the manager's own checks pass
    got, _c, loaded = load_from(msg, fds)
    assert loaded.ok
    assert got == (bytes(obj) if isinstance(obj, (bytes, bytearray)) else obj)
    for fd in fds:
        os.close(fd)
    assert fd_count() == base


def test_round_trip_numpy_array_as_bytes() -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(1000, dtype=np.int64)
    msg, fds, _ = checkpoint_of(arr)
    assert msg.get("FORMAT") == "bytes" and msg.get("SIZE") == "8000"
    got, _c, loaded = load_from(msg, fds)
    assert loaded.ok and np.frombuffer(got, dtype=np.int64).tolist() == list(range(1000))


class Point:
    def __init__(self, x: int):
        self.x = x


def test_pickle_only_when_asked_on_both_ends() -> None:
    msg, fds, _ = checkpoint_of({"p": Point(3)}, format="pickle")
    assert msg.get("FORMAT") == "pickle"
    dup = [os.dup(fd) for fd in fds]
    got, c, loaded = load_from(msg, fds)  # default client: refused
    assert got is None and not loaded.ok and loaded.get("ERROR") == "format"
    assert c.load_error == "format"
    got, _c, loaded = load_from(msg, dup, allow_pickle=True)
    assert loaded.ok and isinstance(got["p"], Point) and got["p"].x == 3
    # and json never falls back to pickle:
    fm = FakeManager()
    c = fm.client()
    c.on_checkpoint(lambda: {"p": Point(1)})
    fm.recv()
    fm.send("CHECKPOINT", SEQ=1, REASON="relay")
    refused, _ = fm.recv()
    assert refused.verb == "STATE" and not refused.ok and refused.get("ERROR") == "encode"
    assert not c.quiesced
    fm.close(c)


def test_checksum_mismatch_is_answered_loaded_0_and_leaks_nothing() -> None:
    base = fd_count()
    msg, fds, _ = checkpoint_of({"balance": 100})
    fields = srp_wire.state_fields(msg)
    fields["CHECKSUM"] = "sha256:" + "0" * 64
    bad = srp_wire.SrpMessage("STATE", "1", fields)
    got, c, loaded = load_from(bad, fds)
    assert got is None and c.load_error == "checksum"
    assert not loaded.ok and loaded.get("ERROR") == "checksum"
    for fd in fds:
        os.close(fd)
    assert fd_count() == base  # the SDK closed its copies


def test_arena_and_connections_move_without_copies() -> None:
    arena = StateArena(1 << 20, name="cache")
    arena.write(b"learned", 0)
    a, b = socket.socketpair()
    fm = FakeManager()
    c = fm.client()

    def cb() -> dict[str, Any]:
        c.handoff_connections({"client-1": a})
        return {"n": 1}

    c.share_arena("cache", arena)
    c.on_checkpoint(cb)
    fm.recv()
    fm.send("CHECKPOINT", SEQ=3, REASON="relay")
    msg, fds = fm.recv()
    assert msg.get("FDNAMES") == "state:cache:client-1"
    assert msg.get("FDKINDS") == "snapshot:arena:conn"
    assert "CHECKSUM" not in msg.fields  # an arena is live memory
    assert int(msg.get("SIZE")) == os.fstat(fds[0]).st_size + (1 << 20)
    assert check_state(msg, fds, 0) is None
    assert os.fstat(fds[1]).st_ino == os.fstat(arena.fileno()).st_ino  # the live memfd
    assert wait_until(lambda: a.fileno() == -1)  # handed over: the SDK closed it
    fm.close(c)
    got, c2, loaded = load_from(msg, fds)
    assert loaded.ok and got == {"n": 1}
    received = c2.arena("cache")
    assert received is not None and received.read(0, 7) == b"learned"
    received.write(b"updated", 0)  # the receiver keeps using the same memory
    assert arena.read(0, 7) == b"updated"
    conns = c2.adopted_connections()
    assert list(conns) == ["client-1"] and c2.adopted_connections() == {}
    conns["client-1"].sendall(b"still connected")
    b.settimeout(5)
    assert b.recv(100) == b"still connected"
    conns["client-1"].close()
    b.close()


def test_save_context_is_an_unsolicited_checkpoint_with_arena_copies() -> None:
    arena = StateArena(4096, name="cache")
    fm = FakeManager()
    c = fm.client()
    c.share_arena("cache", arena)
    assert c.save_context({"v": 1})
    msg, fds = fm.recv()
    assert msg.verb == "STATE" and msg.ok and msg.seq is None
    assert msg.get("FDKINDS") == "snapshot:arena"
    assert check_state(msg, fds, 0) is None
    assert os.fstat(fds[1]).st_ino != os.fstat(arena.fileno()).st_ino  # a copy
    for fd in fds:
        os.close(fd)
    assert c.save_context({"v": 2}, arenas=False)
    msg, fds = fm.recv()
    assert msg.get("FDKINDS") == "snapshot" and msg.get("CHECKSUM").startswith("sha256:")
    for fd in fds:
        os.close(fd)
    fm.close(c)
    arena.close()


def test_resume_gives_the_state_back_and_work_resumes() -> None:
    fm = FakeManager()
    c = fm.client()
    resumed: list[Any] = []
    c.on_checkpoint(lambda: {"n": 1}, on_resume=resumed.append)
    fm.recv()
    fm.send("CHECKPOINT", SEQ=1, REASON="relay")
    state_msg, fds = fm.recv()
    assert wait_until(lambda: c.quiesced)
    fields = srp_wire.state_fields(state_msg)
    fm.send("RESUME", 1, fds, SEQ=2, **fields)
    loaded, _ = fm.recv()
    assert loaded.verb == "LOADED" and loaded.ok and loaded.seq == 2
    assert resumed == [{"n": 1}] and not c.quiesced
    for fd in fds:
        os.close(fd)
    fm.send("RESUME", 1, SEQ=3)  # resumed without a state: keep your own
    loaded, _ = fm.recv()
    assert loaded.ok and resumed[-1] is None
    fm.close(c)


def test_requests_without_callbacks_are_refused() -> None:
    fm = FakeManager()
    c = fm.client()
    c.load_context(timeout=0.2)  # starts the reader; nobody answers: timeout
    assert c.load_error == "timeout"
    fm.recv()  # the HELLO
    fm.send("CHECKPOINT", SEQ=1, REASON="relay")
    msg, _ = fm.recv()
    assert msg.verb == "STATE" and not msg.ok and msg.get("ERROR") == "no-checkpoint-callback"
    fm.send("RESUME", 1, SEQ=2)
    msg, _ = fm.recv()
    assert msg.verb == "LOADED" and not msg.ok
    # A state that comes after load_context gave up is refused, its fds closed.
    fd = sdk_memfd.snapshot(b"{}")
    fm.send("STATE", 1, [fd], SEQ=4, FORMAT="json", SIZE=2, FDKINDS="snapshot")
    os.close(fd)
    msg, _ = fm.recv()
    assert msg.verb == "LOADED" and not msg.ok and msg.get("ERROR") == "not-waiting"
    fm.close(c)


def test_state_0_means_start_cold() -> None:
    fm = FakeManager()
    c = fm.client()
    import threading

    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(c.load_context(timeout=10)))
    t.start()
    fm.recv()
    fm.send("STATE", 0, REASON="checkpoint-timeout")
    t.join(10)
    assert out == [None] and c.load_error == "checkpoint-timeout"
    fm.close(c)


def test_the_srp_fd_is_checked_claimed_and_hidden_from_children() -> None:
    r, w = os.pipe()
    c = AeternaClient(environ={"AETERNA_SRP_FD": str(r)})  # not a seqpacket socket
    assert not c.srp_enabled
    os.fstat(r)  # ... and not closed either
    os.close(r)
    os.close(w)
    code = textwrap.dedent("""
        import fcntl, os, socket
        fd = int(os.environ["AETERNA_SRP_FD"])
        from aeterna_sdk import AeternaClient
        c = AeternaClient()
        again = AeternaClient()
        print(c.srp_enabled, again.srp_enabled, "AETERNA_SRP_FD" in os.environ,
              bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
    """)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ, AETERNA_SRP_FD=str(theirs.fileno()))
    r2 = subprocess.run([PY, "-c", code], pass_fds=[theirs.fileno()], env=env,
                        capture_output=True, text=True, timeout=30)
    assert r2.stdout.split() == ["True", "True", "False", "True"], r2.stderr
    ours.close()
    theirs.close()


def test_the_sdk_parser_never_raises() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
    def check(data: bytes) -> None:
        msg = sdk_wire.parse(data)
        if msg is not None:
            assert msg.verb in sdk_wire.VERBS and msg.value in ("0", "1")

    check()


def test_the_sdk_speaks_the_grammar_the_manager_parses() -> None:
    data = sdk_wire.format_message("STATE", 1, SEQ=4, FORMAT="json", SIZE=2)
    assert srp_wire.parse(data).fields == {"SEQ": "4", "FORMAT": "json", "SIZE": "2"}
    with pytest.raises(ValueError):
        sdk_wire.format_message("STATE", 1, ERROR="two\nlines")
    with pytest.raises(ValueError):
        sdk_wire.format_message("STATE", 1, BIG="x" * 20000)
