"""sd_notify (wire.notify, linux.notify_socket): the parser, authorisation, a real socket."""

from __future__ import annotations

import os
import random
import resource
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sdnotify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aeterna.linux.fds import close_fds
from aeterna.linux.notify_socket import Datagram, NotifyReceiver
from aeterna.model import NotifyAccess
from aeterna.wire.notify import (
    NOTIFY_BUFFER_MAX,
    NotifyError,
    NotifyMessage,
    Rejection,
    _split_lines,  # private: checked against a port of systemd's loop
    authorise,
    parse,
    validate,
)

REPO = Path(__file__).resolve().parents[1]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- parser ---------------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, bytes, dict[str, Any]]] = [
    ("empty", b"", {"ready": False, "raw_keys": ()}),
    ("ready", b"READY=1", {"ready": True}),
    ("ready-newline", b"READY=1\n", {"ready": True}),
    ("ready-crlf", b"READY=1\r\n", {"ready": True}),  # systemd splits on \r too
    ("blank-lines", b"\n\n\nREADY=1\n\n", {"ready": True}),
    ("trailing-nul", b"READY=1\0", {"ready": True}),
    ("trailing-space", b"READY=1 ", {"ready": False, "raw_keys": ("READY",)}),
    ("spaces-around-eq", b"READY = 1", {"ready": False, "raw_keys": ("READY ",)}),
    ("leading-space", b" READY=1", {"ready": False}),
    ("ready-true", b"READY=true", {"ready": False}),
    ("flag-any-line", b"READY=0\nREADY=1", {"ready": True}),
    (
        "reloading",
        b"RELOADING=1\nMONOTONIC_USEC=123456",
        {"reloading": True, "monotonic_usec": 123456},
    ),
    ("stopping", b"STOPPING=1", {"stopping": True}),
    ("fdstore-fdname", b"FDSTORE=1\nFDNAME=db", {"fdstore": True, "fdname": "db", "fdpoll": True}),
    ("fdpoll-0", b"FDSTORE=1\nFDPOLL=0", {"fdstore": True, "fdpoll": False, "fdname": None}),
    ("fdpoll-1", b"FDPOLL=1", {"fdpoll": True}),
    ("fdstoreremove", b"FDSTOREREMOVE=1\nFDNAME=db", {"fdstoreremove": True, "fdname": "db"}),
    ("fdname-colon", b"FDSTORE=1\nFDNAME=a:b", {"fdstore": True, "fdname": None}),
    ("fdname-empty", b"FDNAME=", {"fdname": ""}),
    ("fdname-too-long", b"FDNAME=" + b"n" * 256, {"fdname": None}),
    ("fdname-255", b"FDNAME=" + b"n" * 255, {"fdname": "n" * 255}),
    ("barrier", b"BARRIER=1", {"barrier": True}),
    ("barrier-newline", b"BARRIER=1\n", {"barrier": True}),
    ("watchdog-ping", b"WATCHDOG=1", {"watchdog_ping": True, "watchdog_trigger": False}),
    ("watchdog-trigger", b"WATCHDOG=trigger", {"watchdog_trigger": True, "watchdog_ping": False}),
    ("watchdog-first-wins", b"WATCHDOG=x\nWATCHDOG=1", {"watchdog_ping": False}),
    ("watchdog-space", b"WATCHDOG=1 ", {"watchdog_ping": False}),
    ("mainpidfd", b"MAINPIDFD=1", {"mainpidfd": True}),
    ("restart-reset", b"RESTART_RESET=1", {"restart_reset": True}),
    ("status", b"STATUS=Serving 3 clients", {"status": "Serving 3 clients"}),
    ("status-first-wins", b"STATUS=a\nSTATUS=b", {"status": "a"}),
    ("status-empty-clears", b"STATUS=", {"status": ""}),
    ("status-absent", b"READY=1", {"status": None}),
    ("status-utf8", "STATUS=héllo ✓ 日本".encode(), {"status": "héllo ✓ 日本"}),
    ("status-bad-utf8", b"STATUS=a\xffb", {"status": "a\ufffdb"}),
    ("status-equals", b"STATUS=a=b", {"status": "a=b"}),
    ("status-4096", b"STATUS=" + b"x" * (NOTIFY_BUFFER_MAX - 7), {"status": "x" * 4089}),
    ("backslash-escape", b"STATUS=a\\b", {"status": "ab"}),
    ("backslash-double", b"STATUS=C:\\\\tmp", {"status": "C:\\tmp"}),
    ("backslash-joins-lines", b"STATUS=a\\\nb", {"status": "a\nb"}),
    ("backslash-in-key", b"READY\\=1", {"ready": True}),
    ("mainpid", b"MAINPID=4711", {"mainpid": 4711}),
    ("mainpid-zero", b"MAINPID=0", {"mainpid": None}),
    ("mainpid-negative", b"MAINPID=-5", {"mainpid": None}),
    ("mainpid-too-big", b"MAINPID=2147483648", {"mainpid": None}),
    ("mainpid-max", b"MAINPID=2147483647", {"mainpid": 2147483647}),
    ("mainpid-junk-keeps-rest", b"MAINPID=abc\nREADY=1", {"mainpid": None, "ready": True}),
    ("mainpid-leading-ws", b"MAINPID= 42", {"mainpid": 42}),
    ("mainpid-trailing-ws", b"MAINPID=42 ", {"mainpid": None}),
    ("mainpid-first-wins", b"MAINPID=7\nMAINPID=8", {"mainpid": 7}),
    ("watchdog-usec", b"WATCHDOG_USEC=20000000", {"watchdog_usec": 20_000_000}),
    ("watchdog-usec-hex", b"WATCHDOG_USEC=0x10", {"watchdog_usec": 16}),
    ("watchdog-usec-octal", b"WATCHDOG_USEC=010", {"watchdog_usec": 8}),
    ("watchdog-usec-bad-octal", b"WATCHDOG_USEC=08", {"watchdog_usec": None}),
    ("watchdog-usec-binary", b"WATCHDOG_USEC=0b101", {"watchdog_usec": 5}),
    ("watchdog-usec-u64-max", b"WATCHDOG_USEC=18446744073709551615", {"watchdog_usec": 2**64 - 1}),
    ("watchdog-usec-overflow", b"WATCHDOG_USEC=18446744073709551616", {"watchdog_usec": None}),
    ("watchdog-usec-minus-zero", b"WATCHDOG_USEC=-0", {"watchdog_usec": 0}),
    ("watchdog-usec-negative", b"WATCHDOG_USEC=-1", {"watchdog_usec": None}),
    ("watchdog-usec-empty", b"WATCHDOG_USEC=", {"watchdog_usec": None}),
    ("watchdog-usec-underscore", b"WATCHDOG_USEC=1_000", {"watchdog_usec": None}),
    ("extend-timeout", b"EXTEND_TIMEOUT_USEC=5000000", {"extend_timeout_usec": 5_000_000}),
    ("extend-timeout-junk", b"EXTEND_TIMEOUT_USEC=5s", {"extend_timeout_usec": None}),
    ("notifyaccess-all", b"NOTIFYACCESS=all", {"notifyaccess": NotifyAccess.ALL}),
    ("notifyaccess-none", b"NOTIFYACCESS=none", {"notifyaccess": NotifyAccess.NONE}),
    ("notifyaccess-case", b"NOTIFYACCESS=ALL", {"notifyaccess": None}),
    ("notifyaccess-bogus", b"NOTIFYACCESS=everyone", {"notifyaccess": None}),
    ("errno-number", b"ERRNO=2", {"errno": 2}),
    ("errno-name", b"ERRNO=ENOENT", {"errno": 2}),
    ("errno-zero", b"ERRNO=0", {"errno": 0}),
    ("errno-too-big", b"ERRNO=4096", {"errno": None}),
    ("errno-negative", b"ERRNO=-1", {"errno": None}),
    ("exit-status", b"EXIT_STATUS=3", {"exit_status": 3}),
    ("exit-status-too-big", b"EXIT_STATUS=256", {"exit_status": None}),
    ("no-equals-ignored", b"garbage\nREADY=1", {"ready": True, "raw_keys": ("READY",)}),
    (
        "extra-first-wins",
        b"X_FOO=bar\nX_FOO=baz\nBUSERROR=org.x.Err\nREADY=1",
        {
            "extra": {"X_FOO": "bar", "BUSERROR": "org.x.Err"},
            "raw_keys": ("X_FOO", "BUSERROR", "READY"),
        },
    ),
    ("known-keys-not-extra", b"READY=0\nSTATUS=x", {"extra": {}}),
]


@pytest.mark.parametrize(
    ("payload", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse(payload: bytes, expected: dict[str, Any]) -> None:
    message = parse(payload)
    for name, value in expected.items():
        got = getattr(message, name)
        assert (dict(got) if name == "extra" else got) == value, name


REJECT_CASES: list[tuple[str, bytes, Rejection]] = [
    ("nul-middle", b"READY=1\0STATUS=x", Rejection.NUL),
    ("nul-first", b"\0READY=1", Rejection.NUL),
    ("two-nuls", b"\0\0", Rejection.NUL),
    ("too-large-4097", b"STATUS=" + b"x" * (NOTIFY_BUFFER_MAX - 6), Rejection.TOO_LARGE),
    ("trailing-backslash", b"STATUS=x\\", Rejection.BAD_ESCAPE),
    ("barrier-with-lines", b"BARRIER=1\nREADY=1", Rejection.BAD_BARRIER),
    ("barrier-twice", b"BARRIER=1\nBARRIER=1", Rejection.BAD_BARRIER),
]


@pytest.mark.parametrize(
    ("payload", "reason"), [c[1:] for c in REJECT_CASES], ids=[c[0] for c in REJECT_CASES]
)
def test_parse_rejects(payload: bytes, reason: Rejection) -> None:
    with pytest.raises(NotifyError) as info:
        parse(payload)
    assert info.value.reason is reason


def test_single_nul_is_an_empty_message() -> None:
    assert parse(b"\0") == NotifyMessage()


def test_message_is_frozen_and_hashable() -> None:
    message = parse(b"READY=1\nX_A=b")
    with pytest.raises(AttributeError):
        message.ready = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        message.extra["X_A"] = "c"  # type: ignore[index]
    assert hash(message) == hash(parse(b"READY=1\nX_A=b"))


def test_validate_order_and_credentials() -> None:
    assert validate(b"READY=1", 0, 42, 0).ready
    for pid in (None, 0, -1):
        with pytest.raises(NotifyError) as info:
            validate(b"READY=1", 0, pid, 0)
        assert info.value.reason is Rejection.NO_CREDENTIALS
    with pytest.raises(NotifyError) as info:
        validate(b"x", socket.MSG_TRUNC, 42, 0)
    assert info.value.reason is Rejection.TRUNCATED
    with pytest.raises(NotifyError) as info:  # CTRUNC wins, as in recvmsg_safe()
        validate(b"x", socket.MSG_TRUNC | socket.MSG_CTRUNC, None, 0)
    assert info.value.reason is Rejection.CTRUNC


@pytest.mark.parametrize("n_fds", [0, 2, 3])
def test_barrier_needs_exactly_one_fd(n_fds: int) -> None:
    assert validate(b"BARRIER=1", 0, 42, 1).barrier
    with pytest.raises(NotifyError) as info:
        validate(b"BARRIER=1", 0, 42, n_fds)
    assert info.value.reason is Rejection.BAD_BARRIER


# --- authorisation -------------------------------------------------------------------------

MAIN, CONTROL, OTHER, STRANGER = 100, 200, 300, 400
AUTH_CASES = [
    (NotifyAccess.NONE, MAIN, False),
    (NotifyAccess.MAIN, MAIN, True),
    (NotifyAccess.MAIN, CONTROL, False),
    (NotifyAccess.MAIN, OTHER, False),
    (NotifyAccess.EXEC, MAIN, True),
    (NotifyAccess.EXEC, CONTROL, True),
    (NotifyAccess.EXEC, OTHER, False),
    (NotifyAccess.ALL, MAIN, True),
    (NotifyAccess.ALL, CONTROL, True),
    (NotifyAccess.ALL, OTHER, True),
    (NotifyAccess.ALL, STRANGER, False),
]


@pytest.mark.parametrize(("access", "sender", "allowed"), AUTH_CASES)
def test_authorise(access: NotifyAccess, sender: int, allowed: bool) -> None:
    assert authorise(access, sender, MAIN, {CONTROL}, {MAIN, CONTROL, OTHER}) is allowed


def test_authorise_unknown_main_pid_and_bad_sender() -> None:
    assert not authorise(NotifyAccess.MAIN, MAIN, None, set(), {MAIN})
    assert authorise(NotifyAccess.EXEC, CONTROL, None, {CONTROL}, set())
    assert not authorise(NotifyAccess.ALL, 0, 0, {0}, {0})


# --- receiver on a real socket -------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # Short on purpose: sun_path holds 107 bytes, and pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="aeterna-nt-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(sock_dir: str) -> Iterator[NotifyReceiver]:
    with NotifyReceiver(os.path.join(sock_dir, "notify")) as rcv:
        yield rcv


@pytest.fixture
def sender(receiver: NotifyReceiver) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as snd:
        snd.connect(receiver.path)
        yield snd


def receive_one(receiver: NotifyReceiver, timeout: float = 5.0) -> Datagram:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        datagram = receiver.receive()
        if datagram is not None:
            return datagram
        select.select([receiver], [], [], 0.1)
    raise AssertionError("no datagram arrived")


def test_socket_setup(receiver: NotifyReceiver) -> None:
    st_ = os.stat(receiver.path)
    assert stat.S_ISSOCK(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o777
    sock = socket.socket(fileno=os.dup(receiver.fileno()))
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
        assert sock.type == socket.SOCK_DGRAM and sock.family == socket.AF_UNIX
    finally:
        sock.close()
    assert not os.get_inheritable(receiver.fileno())
    assert not os.get_blocking(receiver.fileno())
    assert receiver.receive() is None


def test_close_unlinks_and_is_idempotent(sock_dir: str) -> None:
    rcv = NotifyReceiver(os.path.join(sock_dir, "n"))
    rcv.close()
    rcv.close()
    assert not os.path.exists(rcv.path)


def test_stale_socket_is_replaced_live_one_is_not(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "n")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # the node stays behind, as after a crash
    with NotifyReceiver(path):
        with pytest.raises(OSError):
            NotifyReceiver(path)
        assert os.path.exists(path)


def test_abstract_address_refused() -> None:
    with pytest.raises(ValueError):
        NotifyReceiver("@aeterna")


def test_sdnotify_package(receiver: NotifyReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.path)
    notifier = sdnotify.SystemdNotifier(debug=True)
    notifier.notify("READY=1\nSTATUS=Serving\nMAINPID=4711")
    notifier.notify("WATCHDOG=1")
    first, second = receive_one(receiver), receive_one(receiver)
    assert first.message is not None and second.message is not None
    assert (first.message.ready, first.message.status, first.message.mainpid) == (
        True,
        "Serving",
        4711,
    )
    assert second.message.watchdog_ping
    assert (first.pid, first.uid, first.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert first.fds == [] and first.rejection is None
    assert receiver.receive() is None


@pytest.mark.skipif(
    shutil.which("systemd-notify") is None, reason="systemd-notify is not installed"
)
def test_systemd_notify_binary(receiver: NotifyReceiver) -> None:
    version_text = subprocess.run(
        ["systemd-notify", "--version"], capture_output=True, text=True, check=True
    ).stdout
    version = int(version_text.split()[1])  # "systemd 252 (252.38-1~deb12u1)"
    env = {**os.environ, "NOTIFY_SOCKET": receiver.path}
    proc = subprocess.Popen(["systemd-notify", "--ready", "--status=hi"], env=env)
    try:
        first = receive_one(receiver)
        assert first.message is not None
        assert first.message.ready and first.message.status == "hi"
        # systemd-notify speaks for its parent when the kernel lets it forge credentials
        # (root), else for itself.
        assert first.pid in (os.getpid(), proc.pid)
        # v252 then sends BARRIER=1 with a pipe's write end and waits (5 s, then exit 1)
        # for POLLHUP: closing the fd is the acknowledgement.
        if version >= 252 or proc.poll() is None:
            barrier = receive_one(receiver)
            assert barrier.message is not None and barrier.message.barrier
            assert barrier.pid == proc.pid and barrier.n_fds == 1
            close_fds(barrier.fds)
            assert barrier.fds == []
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert receiver.receive() is None


def test_oversized_datagram_is_truncated(receiver: NotifyReceiver, sender: socket.socket) -> None:
    sender.send(b"STATUS=" + b"x" * 4993)  # 5000 bytes
    datagram = receive_one(receiver)
    assert datagram.rejection is Rejection.TRUNCATED and datagram.message is None


def test_size_boundary(receiver: NotifyReceiver, sender: socket.socket) -> None:
    sender.send(b"STATUS=" + b"x" * (NOTIFY_BUFFER_MAX - 7))
    assert receive_one(receiver).message is not None
    sender.send(b"STATUS=" + b"x" * (NOTIFY_BUFFER_MAX - 6))
    assert receive_one(receiver).rejection is Rejection.TOO_LARGE


def test_rejected_datagram_fds_are_closed(receiver: NotifyReceiver, sender: socket.socket) -> None:
    before = fd_count()
    r, w = os.pipe()
    socket.send_fds(sender, [b"READY=1\0junk"], [r, w])
    os.close(r)
    os.close(w)
    datagram = receive_one(receiver)
    assert datagram.rejection is Rejection.NUL
    assert datagram.fds == [] and datagram.n_fds == 2
    assert fd_count() == before


def test_accepted_datagram_fds_belong_to_caller(
    receiver: NotifyReceiver, sender: socket.socket
) -> None:
    before = fd_count()
    r, w = os.pipe()
    socket.send_fds(sender, [b"FDSTORE=1\nFDNAME=pipe"], [r])
    os.close(r)
    datagram = receive_one(receiver)
    assert datagram.message is not None and datagram.message.fdstore
    (fd,) = datagram.fds
    assert not os.get_inheritable(fd)  # MSG_CMSG_CLOEXEC
    os.write(w, b"x")
    assert os.read(fd, 1) == b"x"  # really the pipe we sent
    close_fds(datagram.fds)
    close_fds(datagram.fds)  # emptied: a second call closes nothing
    os.close(w)
    assert fd_count() == before


def test_barrier_with_two_fds_is_rejected_and_closed(
    receiver: NotifyReceiver, sender: socket.socket
) -> None:
    before = fd_count()
    r, w = os.pipe()
    socket.send_fds(sender, [b"BARRIER=1"], [r, w])
    os.close(r)
    os.close(w)
    datagram = receive_one(receiver)
    assert datagram.rejection is Rejection.BAD_BARRIER and datagram.fds == []
    assert fd_count() == before


def test_fd_exhaustion_is_ctrunc(receiver: NotifyReceiver, sender: socket.socket) -> None:
    # The kernel cannot install passed fds past RLIMIT_NOFILE: it drops them and sets
    # MSG_CTRUNC, and the datagram must be rejected.
    r, w = os.pipe()
    socket.send_fds(sender, [b"FDSTORE=1"], [r, w])
    os.close(r)
    os.close(w)
    used = {int(n) for n in os.listdir("/proc/self/fd")}
    lowest_free = min(n for n in range(len(used) + 2) if n not in used)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        datagram = receiver.receive()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert datagram is not None
    assert datagram.rejection is Rejection.CTRUNC and datagram.fds == []


@pytest.mark.root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_sender_invisible_in_pid_namespace_has_no_credentials(sock_dir: str) -> None:
    # A receiver in a child pid namespace sees a sender from outside as pid 0.
    path = os.path.join(sock_dir, "n")
    script = (
        "import select, sys\n"
        "from aeterna.linux.notify_socket import NotifyReceiver\n"
        f"with NotifyReceiver({path!r}) as r:\n"
        "    print('bound', flush=True)\n"
        "    select.select([r], [], [], 10)\n"
        "    d = r.receive()\n"
        "    print(d.rejection.value if d and d.rejection else d, d and d.pid, flush=True)\n"
    )
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "bound":
            pytest.skip("cannot create a pid namespace here")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as snd:
            snd.sendto(b"READY=1", path)
        assert proc.stdout.readline().split() == ["no_credentials", "0"]
    finally:
        proc.kill()
        proc.wait()


# --- fuzzing -------------------------------------------------------------------------------

KEYS = [
    b"READY", b"RELOADING", b"STOPPING", b"STATUS", b"ERRNO", b"EXIT_STATUS", b"MAINPID",
    b"WATCHDOG", b"WATCHDOG_USEC", b"EXTEND_TIMEOUT_USEC", b"MONOTONIC_USEC", b"FDSTORE",
    b"FDSTOREREMOVE", b"FDNAME", b"FDPOLL", b"BARRIER", b"NOTIFYACCESS", b"X_APP", b"",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from([b"1", b"0", b"trigger", b"all", b"-0", b"0x", b"ENOENT", b"\\", b" 1"]),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.binary(max_size=24),
)
LINES = st.one_of(
    st.builds(lambda k, v: k + b"=" + v, st.sampled_from(KEYS), VALUES), st.binary(max_size=32)
)
PAYLOADS = st.one_of(
    st.binary(max_size=NOTIFY_BUFFER_MAX + 64),
    st.builds(
        lambda lines, sep, tail: sep.join(lines) + tail,
        st.lists(LINES, max_size=12),
        st.sampled_from([b"\n", b"\r\n", b"\r", b"\\\n"]),
        st.sampled_from([b"", b"\n", b"\0", b"\\"]),
    ),
)


@settings(max_examples=1500, deadline=None)
@given(PAYLOADS)
def test_parse_only_raises_notify_error(payload: bytes) -> None:
    try:
        message = parse(payload)
    except NotifyError as exc:
        assert isinstance(exc.reason, Rejection)
        return
    assert message == parse(payload)
    assert len(set(message.raw_keys)) == len(message.raw_keys)
    assert message.mainpid is None or 0 < message.mainpid < 2**31
    assert message.errno is None or 0 <= message.errno <= 4095


def reference_split(text: bytes) -> list[bytes] | None:
    """A line-by-line port of extract_first_word(NEWLINE, flags=0); None for -EINVAL."""
    lines: list[bytes] = []
    word = bytearray()
    in_word = False
    i = 0
    while i < len(text):
        c = text[i : i + 1]
        if c == b"\\":
            if i + 1 == len(text):
                return None
            word += text[i + 1 : i + 2]
            in_word, i = True, i + 2
            continue
        if c in (b"\n", b"\r"):
            if in_word:
                lines.append(bytes(word))
            word, in_word = bytearray(), False
        else:
            word += c
            in_word = True
        i += 1
    return [*lines, bytes(word)] if in_word else lines


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from([b"\\", b"\n", b"\r", b"A", b"=", b"1", b"\xff"]), max_size=40))
def test_line_splitting_matches_systemd_algorithm(pieces: list[bytes]) -> None:
    text = b"".join(pieces)
    expected = reference_split(text)
    if expected is None:
        with pytest.raises(NotifyError):
            _split_lines(text)
    else:
        assert _split_lines(text) == expected


def send_hostile(sender: socket.socket, payload: bytes, n_fds: int) -> None:
    """Send ``payload`` with ``n_fds`` pipe ends attached, then drop this side's copies."""
    fds: list[int] = []
    while len(fds) < n_fds:
        fds.extend(os.pipe())
    try:
        if fds:
            socket.send_fds(sender, [payload], fds[:n_fds])
        else:
            sender.send(payload)
    finally:
        close_fds(fds)


def drain(receiver: NotifyReceiver) -> int:
    """Receive everything queued, closing accepted messages' fds as the manager would."""
    count = 0
    while (datagram := receiver.receive()) is not None:
        count += 1
        if datagram.message is None:
            assert datagram.fds == []
        close_fds(datagram.fds)
    return count


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(PAYLOADS | st.binary(min_size=4097, max_size=6000), st.integers(0, 3)), max_size=8
    )
)
def test_receiver_survives_hostile_batches(
    receiver: NotifyReceiver, sender: socket.socket, batch: list[tuple[bytes, int]]
) -> None:
    before = fd_count()
    for payload, n_fds in batch:
        send_hostile(sender, payload, n_fds)
        assert drain(receiver) == 1
    assert fd_count() == before


def test_receiver_10000_hostile_datagrams(receiver: NotifyReceiver, sender: socket.socket) -> None:
    rng = random.Random(20240611)
    pieces = [b"READY=1", b"BARRIER=1", b"FDSTORE=1", b"FDNAME=x", b"\0", b"\\", b"\n", b"\r", b"="]
    before = fd_count()
    received = 0
    start = time.monotonic()
    for i in range(10_000):
        kind = rng.random()
        if kind < 0.1:
            payload = rng.randbytes(rng.randint(4097, 8000))  # oversized
        elif kind < 0.5:
            payload = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        else:
            payload = rng.randbytes(rng.randint(0, 300))
        n_fds = rng.choice([0, 0, 1, 2, 3])
        send_hostile(sender, payload, n_fds)
        # max_dgram_qlen may be as low as 10: drain often so the blocking send never stalls.
        if i % 5 == 4:
            received += drain(receiver)
    received += drain(receiver)
    assert received == 10_000
    assert fd_count() == before
    assert time.monotonic() - start < 20
