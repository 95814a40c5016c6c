"""sd_notify on a real socket (linux.notify_socket): setup, credentials, fds, hostile floods."""

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

import pytest
import sdnotify
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import NOTIFY_PAYLOADS as PAYLOADS

from aeterna.linux.fds import close_fds, wait_closed
from aeterna.linux.notify_socket import Datagram, NotifyReceiver
from aeterna.wire.notify import (
    NOTIFY_BUFFER_MAX,
    Rejection,
)

REPO = ROOT


def fd_count() -> int:
    """This process's open fds, once the closer thread has closed what it was given."""
    assert wait_closed(5.0)
    return len(os.listdir("/proc/self/fd"))


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
