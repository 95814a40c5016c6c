"""Listening sockets and FIFOs that the manager binds once and hands to children.

Two phases, as everywhere in Aeterna: :func:`aeterna.wire.address.parse_address`
is pure and is what the loaders call to validate a unit; :func:`bind_listener`
does the I/O (user lookups, interface indexes, mkdir, bind, chmod, chown,
listen) when the unit is started. The behaviour follows systemd socket units (``ListenStream=``,
``ListenDatagram=``, ``ListenSequentialPacket=``, ``ListenFIFO=``).

Every fd made here is close-on-exec (Python's default, PEP 446) and blocking.
The spawner clears FD_CLOEXEC only on the copies it moves to fd 3.. of the
child (``os.dup2`` to a different number, or ``pass_fds``). O_NONBLOCK lives
on the open file description, which the child shares with us, so a flag set
here would leak into every child; systemd clears it by default
(``NonBlocking=no``) and the manager never accepts or reads on these fds, so
they stay blocking.

The fd name (``LISTEN_FDNAMES``) is ``ListenSpec.name``; its default is the
loader's decision, not this module's.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import grp
import os
import pwd
import socket
import stat
from collections.abc import Callable, Iterable

from ..model import ListenSpec, SocketType
from ..wire.address import Address, format_sockaddr, is_number, parse_address

_KINDS = {
    SocketType.STREAM: socket.SOCK_STREAM,
    SocketType.DATAGRAM: socket.SOCK_DGRAM,
    SocketType.SEQPACKET: socket.SOCK_SEQPACKET,
}
# Python 3.11 does not export these; the values are Linux's <asm-generic/socket.h>.
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

class SocketError(OSError):
    """Binding or preparing a listener failed.

    ``str()`` names the address, the step and the errno, as in
    ``127.0.0.1:8080: bind: EADDRINUSE (Address already in use)``. ``errno``
    is 0 for failures that are not system calls (an unknown user, a bad
    address), and the errno part is then left out.
    """

    def __init__(self, address: str, errno: int, message: str):
        super().__init__(errno, os.strerror(errno) if errno else message)
        self.address = address
        self.message = message

    def __str__(self) -> str:
        if not self.errno:
            return f"{self.address}: {self.message}"
        name = _errno.errorcode.get(self.errno, f"errno {self.errno}")
        return f"{self.address}: {self.message}: {name} ({os.strerror(self.errno)})"

    def __reduce__(self) -> tuple[type[SocketError], tuple[str, int, str]]:
        return (type(self), (self.address, self.errno or 0, self.message))


class Listener:
    """One bound listener, owned by the manager for the life of its unit.

    ``socket`` is the ``socket.socket`` (``None`` for a FIFO, a bare ``fd``);
    ``address`` is what was actually bound, so a bare port that fell back to
    IPv4 shows ``0.0.0.0:PORT``; ``node`` is the (st_dev, st_ino) of the file
    node, so removal never unlinks someone else's file put at the same path
    since. ``fd`` is close-on-exec and blocking, and -1 once closed.
    """

    def __init__(
        self,
        spec: ListenSpec,
        address: Address,
        sock: socket.socket | None,
        fd: int,
        node: tuple[int, int] | None,
    ):
        self.spec, self.address, self.socket, self.fd, self.node = spec, address, sock, fd, node

    @property
    def family(self) -> socket.AddressFamily:
        return self.address.family

    @property
    def type(self) -> SocketType:
        return self.spec.type

    def local_address(self) -> str:
        """The address as the kernel reports it: ephemeral ports filled in."""
        if self.socket is None:
            return self.address.display
        return format_sockaddr(self.address.family, self.socket.getsockname())

    def close(self) -> None:
        """Close the fd; idempotent. The file node, if any, is left alone."""
        if self.socket is not None:
            self.socket.close()
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __repr__(self) -> str:
        return f"<Listener {self.spec.type.value} {self.address} fd={self.fd}>"


def bind_listener(spec: ListenSpec) -> Listener:
    """Create, configure, bind and (for stream and seqpacket) listen ``spec``.

    Options are set before bind, as systemd does; a stale unix socket node is
    unlinked first; the node is chmod-ed to ``spec.mode`` and chown-ed to
    ``spec.user``/``spec.group`` (the group defaults to the user's group);
    missing parent directories are created with mode 0755. A FIFO is created
    with mkfifo, or reused if a FIFO already exists at the path.

    Raises:
        SocketError: naming the address, the failed step and the errno. The
            half-made listener is closed and any node it created removed.
    """
    try:
        address = parse_address(spec.address, spec.type)
    except ValueError as e:
        raise SocketError(spec.address, 0, str(e)) from None
    if spec.type is SocketType.FIFO:
        return _open_fifo(spec, address)
    return _bind_socket(spec, address)


def bind_listeners(specs: Iterable[ListenSpec]) -> list[Listener]:
    """Bind all of a unit's listeners in order, or none: on failure the ones
    already bound are removed again and the error is raised."""
    done: list[Listener] = []
    try:
        for spec in specs:
            done.append(bind_listener(spec))
    except BaseException:
        for listener in done:
            remove_listener(listener)
        raise
    return done


def remove_listener(listener: Listener) -> None:
    """Close the listener and, if its spec says ``remove_on_stop``, unlink its
    file node. Nodes stay by default because a service may still use the path
    (systemd's ``RemoveOnStop=no``)."""
    listener.close()
    if listener.spec.remove_on_stop and listener.node is not None:
        _unlink_if_node(listener.address.display, listener.node)
        listener.node = None


def _bind_socket(spec: ListenSpec, address: Address) -> Listener:
    try:
        sock = socket.socket(address.family, _KINDS[spec.type])
    except OSError as e:
        if not (address.dual_stack and e.errno == _errno.EAFNOSUPPORT):
            raise _failure(address.display, "socket", e) from None
        # A bare port on a kernel without IPv6 (ipv6.disable=1): IPv4 only.
        port = int(address.display.rpartition(":")[2])
        address = Address(socket.AF_INET, ("0.0.0.0", port), f"0.0.0.0:{port}")
        try:
            sock = socket.socket(address.family, _KINDS[spec.type])
        except OSError as e2:
            raise _failure(address.display, "socket", e2) from None
    where = address.display
    # Abstract names (bytes) have no file node; paths (str) do.
    path = address.sockaddr if isinstance(address.sockaddr, str) else None
    node: tuple[int, int] | None = None
    step = "setsockopt"
    try:
        _set_options(sock, spec, address)
        sockaddr = address.sockaddr
        if address.scope:
            step = "if_nametoindex"
            sockaddr = (*address.sockaddr[:3], socket.if_nametoindex(address.scope))
        if path is not None:
            step = "path"
            _refuse_foreign_symlinks(path, where)
            step = "mkdir"
            _make_parents(path)
            step = "unlink"
            _unlink_stale_socket(path, where)
            # Linux creates the node with the socket inode's mode minus the
            # umask, so an fchmod before bind() closes the window in which the
            # node would carry umask-only permissions; chmod below widens it.
            step = "fchmod"
            os.fchmod(sock.fileno(), spec.mode & 0o777)
        step = "bind"
        sock.bind(sockaddr)
        if path is not None:
            step = "chmod"
            node = _set_node(path, spec, where)
        if spec.type is not SocketType.DATAGRAM:
            step = "listen"
            # The kernel silently truncates to net.core.somaxconn; capping
            # here makes the effective backlog visible to whoever logs it.
            sock.listen(max(0, min(spec.backlog, _somaxconn())))
        sock.setblocking(True)  # explicit: the child shares the file description
    except BaseException as e:
        sock.close()
        if node is not None and path is not None:
            _unlink_if_node(path, node)
        if isinstance(e, OSError):
            raise _failure(where, step, e) from None
        raise
    return Listener(spec, address, sock, sock.fileno(), node)


def _set_options(sock: socket.socket, spec: ListenSpec, address: Address) -> None:
    """Apply the options that the kernel honours for this family and type;
    the others are ignored, as they mean nothing there (the loader warns)."""
    inet = address.family in (socket.AF_INET, socket.AF_INET6)
    stream = spec.type is SocketType.STREAM
    if inet and stream:
        # Lets a restarted manager rebind while old connections sit in
        # TIME_WAIT. Not for UDP: there it lets two sockets share a port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if inet and spec.reuse_port:
        # Only inet: recent kernels refuse SO_REUSEPORT on AF_UNIX (EOPNOTSUPP).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if address.family == socket.AF_INET6:
        # Explicit either way, so net.ipv6.bindv6only cannot change what a
        # bare port means.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(bool(spec.ipv6_only)))
    if inet and stream and spec.nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if stream and spec.keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for size, force, plain in (
        (spec.receive_buffer, _SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (spec.send_buffer, _SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        if size > 0:
            # The FORCE variants (CAP_NET_ADMIN) ignore net.core.[rw]mem_max;
            # unprivileged, fall back to the capped one. Either way the kernel
            # stores twice the value, for its bookkeeping overhead.
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _open_fifo(spec: ListenSpec, address: Address) -> Listener:
    path = address.display
    created = False
    fd = -1
    step = "mkdir"
    try:
        _make_parents(path)
        step = "mkfifo"
        try:
            os.mkfifo(path, spec.mode & 0o777)
            created = True
        except FileExistsError:
            if not stat.S_ISFIFO(os.lstat(path).st_mode):
                raise SocketError(path, _errno.EEXIST, "mkfifo: exists and is not a FIFO") from None
        step = "open"
        # O_RDWR keeps a writer open, so the reader never sees EOF and open()
        # never waits for a peer. O_NOCTTY/O_NOFOLLOW and the fstat below guard
        # against something else swapped in at the path; O_NONBLOCK is systemd's
        # flag, cleared below like on every listener.
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags)
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            raise SocketError(path, _errno.EEXIST, "open: exists and is not a FIFO")
        step = "fcntl"
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        step = "chmod"
        os.fchmod(fd, spec.mode & 0o7777)  # mkfifo's mode was cut by the umask
        step = "chown"
        _chown(fd, spec, path)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        if created:
            _unlink_if_node(path, None)
        if isinstance(e, OSError):
            raise _failure(path, step, e) from None
        raise
    return Listener(spec, address, None, fd, (st.st_dev, st.st_ino))


def _failure(where: str, step: str, e: OSError) -> SocketError:
    """``e`` as a SocketError naming the address and step (once only)."""
    if isinstance(e, SocketError):
        return e
    return SocketError(where, e.errno or 0, step if e.errno else f"{step}: {e}")


def _make_parents(path: str) -> None:
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)


def _unlink_stale_socket(path: str, where: str) -> None:
    """Unlink a socket node left at ``path`` by an earlier bind; refuse to
    touch anything else (systemd would unlink whatever is there)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError(where, _errno.EEXIST, "bind: exists and is not a socket")
    os.unlink(path)


def _unlink_if_node(path: str, node: tuple[int, int] | None) -> None:
    """Unlink ``path`` if it is still the node (st_dev, st_ino) that we made
    (any node when ``None``): never someone else's file put there since."""
    try:
        st = os.lstat(path)
        if node is None or (st.st_dev, st.st_ino) == node:
            os.unlink(path)
    except OSError:
        pass


def _set_node(path: str, spec: ListenSpec, where: str) -> tuple[int, int]:
    return set_socket_node(path, spec.mode & 0o7777, where,
                           lambda pinned: _chown(pinned, spec, where))


def set_socket_node(path: str, mode: int, where: str,
                    chown: Callable[[str], None] | None = None) -> tuple[int, int]:
    """chmod (and chown) the socket node bind() just made, without following a symlink;
    returns the node's (st_dev, st_ino).

    Whoever may write the node's directory can swap the node for a symlink
    between bind() and a chmod by path, and have the manager (root) chmod any
    file. So the node is pinned first with ``O_PATH | O_NOFOLLOW`` (a symlink
    put there is opened as itself, and refused), and changed through
    ``/proc/self/fd``, which names that inode and nothing else.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(where, _errno.EEXIST, "chmod: the socket node was replaced "
                              "by something else after bind; refused")
        node = (st.st_dev, st.st_ino)
        pinned = f"/proc/self/fd/{fd}"
        if not os.path.exists(pinned):  # no /proc: the fchmod before bind() must do
            return node
        try:
            os.chmod(pinned, mode)
            if chown is not None:
                chown(pinned)
        except BaseException:
            _unlink_if_node(path, node)
            raise
        return node
    finally:
        os.close(fd)


def _refuse_foreign_symlinks(path: str, where: str) -> None:
    """Refuse a path through a symlink owned by another user who is not root.

    The rule of ``fs.protected_symlinks``, for every directory of the path, not
    only sticky ones: otherwise that user chooses where the manager binds,
    creates directories and chmods.
    """
    mine = (0, os.geteuid())
    parts = os.path.abspath(path).split("/")[1:]
    here = ""
    for part in parts:
        here = f"{here}/{part}"
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return  # the rest is created by us
        except OSError:
            return  # bind() reports what is wrong with the path
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in mine:
                raise SocketError(where, _errno.EPERM, f"refusing to follow the symlink "
                                  f"{here} owned by uid {st.st_uid} (not root, not the "
                                  "manager's user)")
            here = os.path.realpath(here)


def _chown(target: str | int, spec: ListenSpec, where: str) -> None:
    """chown to ``spec.user``/``spec.group`` (names or numeric ids). The group
    defaults to the user's primary group, as systemd's SocketGroup= does."""
    uid = gid = -1
    if spec.user:
        try:
            pw = pwd.getpwuid(int(spec.user)) if is_number(spec.user) else pwd.getpwnam(spec.user)
            uid, gid = pw.pw_uid, pw.pw_gid
        except KeyError:
            if not is_number(spec.user):
                raise SocketError(where, 0, f"chown: no such user {spec.user!r}") from None
            uid = int(spec.user)  # a numeric uid needs no passwd entry
    if spec.group:
        try:
            gid = int(spec.group) if is_number(spec.group) else grp.getgrnam(spec.group).gr_gid
        except KeyError:
            raise SocketError(where, 0, f"chown: no such group {spec.group!r}") from None
    if uid == gid == -1:
        return
    if isinstance(target, int):
        os.fchown(target, uid, gid)
    elif target.startswith("/proc/self/fd/"):
        os.chown(target, uid, gid)  # the pinned inode itself (see _set_node)
    else:
        os.chown(target, uid, gid, follow_symlinks=False)


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return socket.SOMAXCONN


def describe(fd: int) -> dict[str, str | bool]:
    """What the kernel says ``fd`` is: for status output and tests.

    Keys: ``kind`` (socket/fifo/other), ``family`` (``AF_INET``...; empty when
    not a socket), ``type`` (``SOCK_STREAM``..., ``FIFO``), ``local`` (the
    bound address), ``listening`` (SO_ACCEPTCONN), ``blocking`` and
    ``inheritable``. The fd is inspected through a dup, so it stays open.
    """
    st = os.fstat(fd)
    info: dict[str, str | bool] = {
        "blocking": not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK,
        "inheritable": os.get_inheritable(fd),
    }
    if not stat.S_ISSOCK(st.st_mode):
        kind = "fifo" if stat.S_ISFIFO(st.st_mode) else "other"
        try:
            local = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            local = ""
        info.update(kind=kind, family="", type=kind.upper(), local=local, listening=False)
        return info
    # socket(fileno=) asks the kernel for family and type (SO_DOMAIN, SO_TYPE).
    # Unknown families and types come back as plain ints.
    with socket.socket(fileno=os.dup(fd)) as sock:
        family, stype = sock.family, sock.type
        info.update(
            kind="socket",
            family=getattr(family, "name", str(family)),
            type=getattr(stype, "name", str(stype)),
            local=format_sockaddr(family, sock.getsockname()),
            listening=bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
        )
    return info
