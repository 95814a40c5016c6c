"""Listen addresses as unit files write them: pure parsing and formatting.

:func:`parse_address` is what the loaders call to validate a unit and what
:mod:`aeterna.linux.sockets` binds from; it does no I/O (interface names are
turned into scope ids at bind time, because interfaces come and go).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import TypeAlias

from ..model import SocketType

SockAddr: TypeAlias = str | bytes | tuple[str, int] | tuple[str, int, int, int]

SUN_PATH_MAX = 108
"""sizeof(sockaddr_un.sun_path) on Linux, the terminating NUL included."""

_PORT = r"([0-9]{1,5})"
_IPV4_RE = re.compile(r"([0-9.]+):" + _PORT)
# [host]:port, with the scope either inside the brackets or after the port.
_IPV6_RE = re.compile(r"\[([^\]]*)\]:" + _PORT + r"(?:%(.*))?")
_IFNAME_RE = re.compile(r"[^\s/:%]{1,15}")  # IFNAMSIZ is 16 with the NUL
_EXPECTED = "expected PORT, IPV4:PORT, [IPV6]:PORT, /PATH or @NAME"


@dataclass(frozen=True)
class Address:
    """A parsed listen address.

    ``sockaddr`` is what ``socket.bind`` takes (for FIFOs: the path).
    ``display`` is the canonical text used in logs and errors, and parses back
    to the same address. ``dual_stack`` marks a bare port: ``[::]:PORT`` with
    IPV6_V6ONLY off, or ``0.0.0.0:PORT`` when the kernel has no IPv6, which is
    only known at bind time. ``scope`` is an interface name of a scoped IPv6
    address; it is turned into ``sockaddr``'s scope id at bind time, because
    interfaces come and go. A FIFO has family ``AF_UNSPEC``: it is no socket.
    """

    family: socket.AddressFamily
    sockaddr: SockAddr
    display: str
    dual_stack: bool = False
    scope: str = ""

    def __str__(self) -> str:
        return self.display


def parse_address(text: str, type: SocketType) -> Address:
    """Parse a systemd-style listen address for a listener of ``type``.

    Accepted forms: ``PORT`` (dual-stack ``[::]:PORT``), ``1.2.3.4:PORT``,
    ``[::1]:PORT``, ``[fe80::1%eth0]:PORT`` or ``[fe80::1]:PORT%eth0``, an
    absolute ``/path`` and an abstract ``@name``. Port 0 is accepted and means
    an ephemeral port chosen by the kernel (handy in tests). Host names are
    not resolved. Sequential-packet sockets are AF_UNIX only and a FIFO takes
    an absolute path only.

    Raises:
        ValueError: with a message saying what was expected and what was found.
    """
    if not text:
        raise ValueError(f"empty address: {_EXPECTED}")
    if "\0" in text:
        raise ValueError(f"address must not contain NUL characters: {text!r}")
    if type is SocketType.FIFO:
        if not text.startswith("/"):
            raise ValueError(f"a FIFO needs an absolute path, got {text!r}")
        _fs_bytes(text, limit=4095)  # PATH_MAX with the NUL
        return Address(socket.AF_UNSPEC, text, text)
    if text.startswith("/"):
        if text.endswith("/"):
            raise ValueError(f"unix socket path names a directory: {text!r}")
        _fs_bytes(text, limit=SUN_PATH_MAX - 1)
        return Address(socket.AF_UNIX, text, text)
    if text.startswith("@"):
        if len(text) == 1:
            raise ValueError("abstract socket name after '@' must not be empty")
        # Abstract names are exactly the given bytes after a leading NUL: no
        # terminator, and the length is part of the name.
        name = _fs_bytes(text[1:], limit=SUN_PATH_MAX - 1)
        return Address(socket.AF_UNIX, b"\0" + name, text)
    if type is SocketType.SEQPACKET:
        raise ValueError(f"seqpacket is AF_UNIX only: expected /PATH or @NAME, got {text!r}")
    return _parse_inet(text)


def parse_metrics_address(text: str) -> str:
    """``observability.metrics_port``: the listen address to bind, or ValueError.

    An inet stream address as :func:`parse_address` takes it, or Go's ``:PORT``
    (every interface, which is what a bare ``PORT`` means here too).
    """
    listen = text[1:] if re.fullmatch(":" + _PORT, text) else text
    try:
        if listen.startswith(("/", "@")):
            raise ValueError(text)  # a scraper speaks TCP
        parse_address(listen, SocketType.STREAM)
    except ValueError:
        raise ValueError(f"expected PORT, :PORT, IPV4:PORT or [IPV6]:PORT, got {text!r}") from None
    return listen


def _fs_bytes(text: str, limit: int) -> bytes:
    """Encode a path or abstract name as the kernel will see it, within ``limit``."""
    try:
        data = os.fsencode(text)
    except UnicodeError:
        raise ValueError(f"address is not encodable as a file name: {text!r}") from None
    if len(data) > limit:
        raise ValueError(f"address is {len(data)} bytes long, at most {limit} fit: {text!r}")
    return data


def _port(digits: str, text: str) -> int:
    port = int(digits)
    if port > 65535:
        raise ValueError(f"port must be 1-65535 (or 0 for any), got {port} in {text!r}")
    return port


def _parse_inet(text: str) -> Address:
    if re.fullmatch(_PORT, text):
        port = _port(text, text)
        return Address(socket.AF_INET6, ("::", port, 0, 0), f"[::]:{port}", dual_stack=True)
    if m := _IPV4_RE.fullmatch(text):
        try:
            import ipaddress

            host4 = ipaddress.IPv4Address(m[1])
        except ValueError as e:
            raise ValueError(f"invalid IPv4 address in {text!r}: {e}") from None
        port = _port(m[2], text)
        return Address(socket.AF_INET, (str(host4), port), f"{host4}:{port}")
    if m := _IPV6_RE.fullmatch(text):
        host, pct, scope = m[1].partition("%")
        if m[3] is not None:
            if pct:
                raise ValueError(f"two scopes in {text!r}: give the interface once")
            pct, scope = "%", m[3]
        if pct and not scope:
            raise ValueError(f"empty interface name after '%' in {text!r}")
        try:
            import ipaddress

            host6 = ipaddress.IPv6Address(host)
        except ValueError as e:
            raise ValueError(f"invalid IPv6 address in {text!r}: {e}") from None
        port = _port(m[2], text)
        scope_id = 0
        if is_number(scope):
            scope_id = int(scope)
            if not 0 < scope_id <= 0xFFFFFFFF:
                raise ValueError(f"interface index must be 1 to 2**32-1 in {text!r}")
        elif scope and not _IFNAME_RE.fullmatch(scope):
            raise ValueError(f"invalid interface name {scope!r} in {text!r}")
        elif host6.is_link_local and not scope:
            raise ValueError(f"a link-local address needs an interface: [{host6}%IFACE]:{port}")
        bracket = f"{host6}%{scope}" if scope else str(host6)
        sockaddr = (str(host6), port, 0, scope_id)
        named = "" if scope_id else scope
        return Address(socket.AF_INET6, sockaddr, f"[{bracket}]:{port}", scope=named)
    if text.startswith("vsock:"):
        raise ValueError(f"vsock addresses are not supported: {text!r}")
    if ":" in text and text.count(":") > 1 and "[" not in text:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:80, got {text!r}")
    if "/" in text:
        raise ValueError(f"a unix socket path must be absolute, got {text!r}")
    raise ValueError(f"{_EXPECTED} (host names are not resolved), got {text!r}")


def is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def format_sockaddr(family: int, sockaddr: object) -> str:
    """Render a kernel sockaddr (as ``getsockname`` returns it) in the
    address syntax of :func:`parse_address`."""
    if family == socket.AF_INET and isinstance(sockaddr, tuple):
        return f"{sockaddr[0]}:{sockaddr[1]}"
    if family == socket.AF_INET6 and isinstance(sockaddr, tuple):
        host = str(sockaddr[0])
        if len(sockaddr) > 3 and sockaddr[3] and "%" not in host:
            host = f"{host}%{sockaddr[3]}"
        return f"[{host}]:{sockaddr[1]}"
    if isinstance(sockaddr, bytes):
        # Python hands abstract names back as bytes with the leading NUL.
        return "@" + os.fsdecode(sockaddr[1:]) if sockaddr[:1] == b"\0" else os.fsdecode(sockaddr)
    return str(sockaddr)
