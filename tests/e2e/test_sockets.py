"""Tests of linux.sockets and wire.address: real sockets on loopback and in a temp dir."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import pickle
import pwd
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aeterna.linux.sockets import (
    Listener,
    SocketError,
    bind_listener,
    bind_listeners,
    describe,
    remove_listener,
)
from aeterna.model import ListenSpec, SocketType
from aeterna.wire.address import Address, parse_address

STREAM, DGRAM, SEQPACKET, FIFO = (
    SocketType.STREAM,
    SocketType.DATAGRAM,
    SocketType.SEQPACKET,
    SocketType.FIFO,
)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")


def _has_cap_chown() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & 1)  # bit 0: CAP_CHOWN
    return False


needs_cap_chown = pytest.mark.skipif(not _has_cap_chown(), reason="chown needs CAP_CHOWN")


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    """Listeners appended here are removed after the test, whatever happens."""
    made: list[Listener] = []
    yield made
    for listener in made:
        remove_listener(listener)


class Bind(Protocol):
    def __call__(self, address: str, type: SocketType = ..., **options: Any) -> Listener: ...


@pytest.fixture
def bind(listeners: list[Listener]) -> Bind:
    """Bind a ListenSpec built from the arguments; removed after the test."""

    def _bind(address: str, type: SocketType = STREAM, **options: Any) -> Listener:
        listener = bind_listener(ListenSpec(address, type, **options))
        listeners.append(listener)
        return listener

    return _bind


def sock(listener: Listener) -> socket.socket:
    assert listener.socket is not None
    return listener.socket


# --- parse_address ---------------------------------------------------------------------------

VALID = [
    # text, type, family, sockaddr, display
    ("8080", STREAM, socket.AF_INET6, ("::", 8080, 0, 0), "[::]:8080"),
    ("0", DGRAM, socket.AF_INET6, ("::", 0, 0, 0), "[::]:0"),
    ("65535", STREAM, socket.AF_INET6, ("::", 65535, 0, 0), "[::]:65535"),
    ("1.2.3.4:80", STREAM, socket.AF_INET, ("1.2.3.4", 80), "1.2.3.4:80"),
    ("127.0.0.1:053", DGRAM, socket.AF_INET, ("127.0.0.1", 53), "127.0.0.1:53"),
    ("[::1]:80", STREAM, socket.AF_INET6, ("::1", 80, 0, 0), "[::1]:80"),
    ("[0:0::0001]:80", STREAM, socket.AF_INET6, ("::1", 80, 0, 0), "[::1]:80"),
    ("[fe80::1%lo]:80", STREAM, socket.AF_INET6, ("fe80::1", 80, 0, 0), "[fe80::1%lo]:80"),
    ("[fe80::1]:80%lo", STREAM, socket.AF_INET6, ("fe80::1", 80, 0, 0), "[fe80::1%lo]:80"),
    ("[fe80::1%2]:80", STREAM, socket.AF_INET6, ("fe80::1", 80, 0, 2), "[fe80::1%2]:80"),
    ("/run/app.sock", STREAM, socket.AF_UNIX, "/run/app.sock", "/run/app.sock"),
    ("/run/app.sock", SEQPACKET, socket.AF_UNIX, "/run/app.sock", "/run/app.sock"),
    ("/" + "a" * 106, DGRAM, socket.AF_UNIX, "/" + "a" * 106, "/" + "a" * 106),
    ("@app", STREAM, socket.AF_UNIX, b"\0app", "@app"),
    ("@a b", SEQPACKET, socket.AF_UNIX, b"\0a b", "@a b"),
    ("@" + "x" * 107, DGRAM, socket.AF_UNIX, b"\0" + b"x" * 107, "@" + "x" * 107),
    ("/run/app.fifo", FIFO, socket.AF_UNSPEC, "/run/app.fifo", "/run/app.fifo"),
]


@pytest.mark.parametrize(("text", "type", "family", "sockaddr", "display"), VALID)
def test_parse_valid(
    text: str, type: SocketType, family: int, sockaddr: object, display: str
) -> None:
    address = parse_address(text, type)
    assert (address.family, address.sockaddr, address.display) == (family, sockaddr, display)
    assert str(address) == display
    again = parse_address(display, type)
    assert (again.family, again.sockaddr, again.display) == (family, sockaddr, display)


def test_parse_marks_bare_port_dual_stack_and_named_scope() -> None:
    assert parse_address("80", STREAM).dual_stack
    assert not parse_address("[::]:80", STREAM).dual_stack
    assert parse_address("[fe80::1]:80%eth0", STREAM).scope == "eth0"
    assert parse_address("[fe80::1%3]:80", STREAM).scope == ""


INVALID = [
    # text, type, a fragment of the message
    ("", STREAM, "empty address"),
    ("65536", STREAM, "port must be 1-65535"),
    ("1.2.3.4:99999", STREAM, "port must be 1-65535"),
    ("123456", STREAM, "expected PORT"),
    ("-1", STREAM, "expected PORT"),
    ("localhost:80", STREAM, "host names are not resolved"),
    ("example.com:80", DGRAM, "host names are not resolved"),
    ("1.2.3:80", STREAM, "invalid IPv4 address"),
    ("01.2.3.4:80", STREAM, "invalid IPv4 address"),
    ("1.2.3.4", STREAM, "expected PORT"),
    ("::1:80", STREAM, "needs brackets"),
    ("[::1]", STREAM, "expected PORT"),
    ("[::g]:80", STREAM, "invalid IPv6 address"),
    ("[1.2.3.4]:80", STREAM, "invalid IPv6 address"),
    ("[fe80::1]:80", STREAM, "link-local address needs an interface"),
    ("[fe80::1%lo]:80%lo", STREAM, "two scopes"),
    ("[fe80::1%]:80", STREAM, "empty interface name"),
    ("[fe80::1]:80%", STREAM, "empty interface name"),
    ("[fe80::1%a/b]:80", STREAM, "invalid interface name"),
    ("[fe80::1%abcdefghijklmnop]:80", STREAM, "invalid interface name"),
    ("[fe80::1%99999999999]:80", STREAM, "interface index must be"),
    ("[fe80::1%0]:80", STREAM, "interface index must be"),
    ("run/app.sock", STREAM, "must be absolute"),
    ("/run/", STREAM, "names a directory"),
    ("/" + "a" * 107, STREAM, "at most 107 fit"),
    ("@", STREAM, "must not be empty"),
    ("@" + "x" * 108, STREAM, "at most 107 fit"),
    ("/a\0b", STREAM, "NUL"),
    ("/a\udcff\ud800", STREAM, "not encodable"),
    ("vsock:2:80", STREAM, "vsock addresses are not supported"),
    ("8080", SEQPACKET, "seqpacket is AF_UNIX only"),
    ("127.0.0.1:80", SEQPACKET, "seqpacket is AF_UNIX only"),
    ("@fifo", FIFO, "FIFO needs an absolute path"),
    ("8080", FIFO, "FIFO needs an absolute path"),
    ("/" + "a" * 4095, FIFO, "at most 4095 fit"),
    (" 80", STREAM, "expected PORT"),
    ("\u0661\u0662", STREAM, "expected PORT"),  # Arabic-Indic digits are no port
]


@pytest.mark.parametrize(("text", "type", "fragment"), INVALID)
def test_parse_invalid(text: str, type: SocketType, fragment: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_address(text, type)
    assert fragment in str(info.value)


@given(st.text(), st.sampled_from(list(SocketType)))
def test_parse_fuzz_only_value_error(text: str, type: SocketType) -> None:
    _parse_or_value_error(text, type)


ADDRESSISH = st.from_regex(
    r"(@.*|/.*|[0-9]{0,6}|[0-9.]{0,16}:[0-9]{0,6}|\[[0-9a-fA-F:.%a-z]{0,40}\](:[0-9]{0,6})?(%.*)?)",
    fullmatch=True,
)


@given(ADDRESSISH, st.sampled_from(list(SocketType)))
def test_parse_fuzz_structured(text: str, type: SocketType) -> None:
    _parse_or_value_error(text, type)


def _parse_or_value_error(text: str, type: SocketType) -> None:
    try:
        address = parse_address(text, type)
    except ValueError as e:
        assert str(e)
        return
    assert isinstance(address, Address)
    again = parse_address(address.display, type)
    assert (again.family, again.sockaddr, again.display) == (
        address.family,
        address.sockaddr,
        address.display,
    )


# --- binding each family ---------------------------------------------------------------------


def test_tcp4(bind: Bind) -> None:
    listener = bind("127.0.0.1:0")
    info = describe(listener.fd)
    assert info["family"] == "AF_INET" and info["type"] == "SOCK_STREAM"
    assert info["listening"] is True and info["blocking"] is True
    port = int(str(info["local"]).rpartition(":")[2])
    assert port > 0 and listener.local_address() == f"127.0.0.1:{port}"


@needs_ipv6
def test_tcp6(bind: Bind) -> None:
    listener = bind("[::1]:0")
    info = describe(listener.fd)
    assert info["family"] == "AF_INET6" and info["listening"] is True
    assert str(info["local"]).startswith("[::1]:")
    with socket.create_connection(sock(listener).getsockname()[:2], timeout=5):
        pass


@needs_ipv6
def test_dual_stack_bare_port_accepts_ipv4(bind: Bind) -> None:
    listener = bind("0")
    s = sock(listener)
    assert listener.family == socket.AF_INET6 and listener.address.display == "[::]:0"
    assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    port = s.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with socket.create_connection(("::1", port), timeout=5):
        pass


@needs_ipv6
def test_ipv6_only(bind: Bind) -> None:
    listener = bind("0", ipv6_only=True)
    assert sock(listener).getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    port = sock(listener).getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_udp_is_bound_but_never_listening(bind: Bind) -> None:
    listener = bind("127.0.0.1:0", DGRAM)
    info = describe(listener.fd)
    assert info["type"] == "SOCK_DGRAM" and info["listening"] is False
    # SO_REUSEADDR would let a second UDP socket share the port: not set.
    assert sock(listener).getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"ping", sock(listener).getsockname())
    assert sock(listener).recv(16) == b"ping"


def test_unix_path_mode_and_stale_node(bind: Bind, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "app.sock"
    first = bind(str(path), mode=0o660)
    st_ = os.stat(path)
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(path.parent).st_mode) & 0o755 == 0o755
    first.close()  # the node stays behind, as after a crash
    assert path.exists()
    second = bind(str(path), mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert describe(second.fd)["local"] == str(path)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))


def test_unix_path_refuses_to_replace_a_non_socket(bind: Bind, tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("keep me")
    with pytest.raises(SocketError) as info:
        bind(str(path))
    assert str(info.value) == f"{path}: bind: exists and is not a socket: EEXIST (File exists)"
    assert path.read_text() == "keep me"


def test_abstract(bind: Bind) -> None:
    name = f"@aeterna-test-{uuid.uuid4().hex}"
    listener = bind(name)
    assert describe(listener.fd)["local"] == name
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(b"\0" + name[1:].encode())


def test_seqpacket(bind: Bind, tmp_path: Path) -> None:
    listener = bind(str(tmp_path / "s.sock"), SEQPACKET)
    info = describe(listener.fd)
    assert info["family"] == "AF_UNIX" and info["type"] == "SOCK_SEQPACKET"
    assert info["listening"] is True


def test_fifo(bind: Bind, tmp_path: Path) -> None:
    path = tmp_path / "app.fifo"
    listener = bind(str(path), FIFO, mode=0o620)
    assert listener.socket is None and listener.family == socket.AF_UNSPEC
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o620
    info = describe(listener.fd)
    assert info["kind"] == "fifo" and info["local"] == str(path)
    assert info["blocking"] is True and info["inheritable"] is False
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b"hi")
    os.close(writer)
    assert os.read(listener.fd, 2) == b"hi"
    # An existing FIFO is reused, anything else refused.
    listener.close()
    again = bind(str(path), FIFO)
    assert stat.S_ISFIFO(os.fstat(again.fd).st_mode)
    (tmp_path / "file").write_text("")
    with pytest.raises(SocketError, match="exists and is not a FIFO: EEXIST"):
        bind(str(tmp_path / "file"), FIFO)


# --- errors ----------------------------------------------------------------------------------


def test_eaddrinuse_names_address_and_errno(bind: Bind) -> None:
    port = sock(bind("127.0.0.1:0")).getsockname()[1]
    with pytest.raises(SocketError) as info:
        bind(f"127.0.0.1:{port}")
    error = info.value
    assert str(error) == f"127.0.0.1:{port}: bind: EADDRINUSE (Address already in use)"
    assert isinstance(error, OSError) and error.errno == errno.EADDRINUSE
    assert error.address == f"127.0.0.1:{port}"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_bad_address_and_unknown_user_are_socket_errors(bind: Bind, tmp_path: Path) -> None:
    with pytest.raises(SocketError, match=r"^localhost:80: .*host names"):
        bind("localhost:80")
    path = tmp_path / "u.sock"
    with pytest.raises(SocketError, match=r"chown: no such user 'no-such-user-aeterna'$"):
        bind(str(path), user="no-such-user-aeterna")
    assert not path.exists()  # the half-made node is cleaned up


def test_unknown_interface(bind: Bind) -> None:
    with pytest.raises(SocketError, match=r"nosuchif0\]:0: if_nametoindex: no interface"):
        bind("[fe80::1%nosuchif0]:0")


def test_bind_listeners_is_all_or_nothing(tmp_path: Path) -> None:
    good = ListenSpec(str(tmp_path / "a.sock"), remove_on_stop=True)
    bad = ListenSpec("192.0.2.1:0")  # TEST-NET-1: not a local address
    with pytest.raises(SocketError, match="EADDRNOTAVAIL"):
        bind_listeners([good, bad])
    assert not (tmp_path / "a.sock").exists()


# --- options ---------------------------------------------------------------------------------


def test_options_are_set(bind: Bind) -> None:
    listener = bind(
        "127.0.0.1:0",
        reuse_port=True,
        nodelay=True,
        keepalive=True,
        receive_buffer=65536,
        send_buffer=32768,
    )
    s = sock(listener)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    # The kernel stores twice the requested size.
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 65536
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 32768
    # SO_REUSEPORT really lets a second listener share the port.
    port = s.getsockname()[1]
    bind(f"127.0.0.1:{port}", reuse_port=True)


def test_defaults_leave_options_off(bind: Bind) -> None:
    s = sock(bind("127.0.0.1:0"))
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_options_meaningless_for_unix_are_ignored(bind: Bind, tmp_path: Path) -> None:
    listener = bind(str(tmp_path / "o.sock"), reuse_port=True, nodelay=True)
    assert describe(listener.fd)["listening"] is True


def test_listen_queue_accepts_before_accept(bind: Bind, tmp_path: Path) -> None:
    tcp = bind("127.0.0.1:0", backlog=8)
    unix = bind(str(tmp_path / "q.sock"), backlog=8)
    clients = [socket.create_connection(sock(tcp).getsockname(), timeout=5) for _ in range(3)]
    u = socket.socket(socket.AF_UNIX)
    u.settimeout(5)
    u.connect(str(tmp_path / "q.sock"))
    clients.append(u)
    # Nobody has accepted: the kernel completed the handshakes into the queue.
    for client in clients:
        client.close()
    assert describe(unix.fd)["listening"] is True
    conn, _ = sock(tcp).accept()
    conn.close()


# --- lifetime and fd hygiene -----------------------------------------------------------------


def test_remove_on_stop_unlinks(tmp_path: Path) -> None:
    path = tmp_path / "r.sock"
    listener = bind_listener(ListenSpec(str(path), remove_on_stop=True))
    remove_listener(listener)
    assert listener.fd == -1 and not path.exists()
    remove_listener(listener)  # idempotent


def test_nodes_stay_by_default(tmp_path: Path) -> None:
    path = tmp_path / "k.sock"
    fifo = tmp_path / "k.fifo"
    for spec in (ListenSpec(str(path)), ListenSpec(str(fifo), FIFO)):
        remove_listener(bind_listener(spec))
    assert path.exists() and fifo.exists()


def test_remove_on_stop_spares_a_replaced_node(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    listener = bind_listener(ListenSpec(str(path), remove_on_stop=True))
    os.unlink(path)
    path.write_text("someone else's")
    remove_listener(listener)
    assert path.read_text() == "someone else's"


def test_fifo_remove_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "r.fifo"
    remove_listener(bind_listener(ListenSpec(str(path), FIFO, remove_on_stop=True)))
    assert not path.exists()


def test_fds_are_not_inheritable_and_blocking(bind: Bind, tmp_path: Path) -> None:
    made = [
        bind("127.0.0.1:0"),
        bind("127.0.0.1:0", DGRAM),
        bind(str(tmp_path / "i.sock")),
        bind(str(tmp_path / "d.sock"), DGRAM),
        bind(f"@aeterna-test-{uuid.uuid4().hex}", SEQPACKET),
        bind(str(tmp_path / "i.fifo"), FIFO),
    ]
    for listener in made:
        assert os.get_inheritable(listener.fd) is False
        assert fcntl.fcntl(listener.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert not fcntl.fcntl(listener.fd, fcntl.F_GETFL) & os.O_NONBLOCK


@needs_cap_chown
def test_chown_user_defaults_group_to_users_group(bind: Bind, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "c.sock"
    bind(str(path), user="nobody")
    st_ = os.stat(path)
    assert (st_.st_uid, st_.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    fifo = tmp_path / "c.fifo"
    bind(str(fifo), FIFO, user=str(nobody.pw_uid), group="0")
    assert (os.stat(fifo).st_uid, os.stat(fifo).st_gid) == (nobody.pw_uid, 0)


def test_describe_keeps_fd_open(bind: Bind) -> None:
    listener = bind("127.0.0.1:0")
    describe(listener.fd)
    describe(listener.fd)
    assert sock(listener).getsockname()[1] > 0
    assert "fd=" in repr(listener)


def _link_local() -> tuple[str, str] | None:
    """A link-local IPv6 address of this host and its interface, if any."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hexaddr, _, _, scope, _, ifname = line.split()
        if scope == "20":
            groups = [hexaddr[i : i + 4] for i in range(0, 32, 4)]
            return str(ipaddress.IPv6Address(":".join(groups))), ifname
    return None


@pytest.mark.skipif(_link_local() is None, reason="no link-local IPv6 address")
def test_scoped_link_local_by_interface_name(bind: Bind) -> None:
    found = _link_local()
    assert found is not None
    host, ifname = found
    listener = bind(f"[{host}]:0%{ifname}")
    assert listener.address.scope == ifname
    assert sock(listener).getsockname()[3] == socket.if_nametoindex(ifname)


def test_mode_is_exact_whatever_the_umask(bind: Bind, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path, fifo = tmp_path / "m.sock", tmp_path / "m.fifo"
        bind(str(path), mode=0o666)
        bind(str(fifo), FIFO, mode=0o666)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o666


def test_huge_backlog_is_capped_not_an_error(bind: Bind) -> None:
    listener = bind("127.0.0.1:0", backlog=2**40)
    assert describe(listener.fd)["listening"] is True
