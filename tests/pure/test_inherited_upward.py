"""Which inherited listener a unit gets, and the STATUS= summary (no processes)."""

from __future__ import annotations

import socket

from aeterna.linux.inherited import Inherited, find
from aeterna.manager.upward import coming_up, summary
from aeterna.model import ListenSpec, SocketType
from aeterna.unit.states import State


def _tcp(name: str, host: str, port: int, family: int = socket.AF_INET) -> Inherited:
    return Inherited(10, name, SocketType.STREAM, family,
                     (host, port) if family == socket.AF_INET else (host, port, 0, 0))


def test_a_name_wins_over_an_address() -> None:
    pool = [_tcp("other", "127.0.0.1", 8080), _tcp("web", "127.0.0.1", 9999)]
    assert find(pool, ListenSpec("127.0.0.1:8080", name="web")) is pool[1]


def test_among_listeners_of_one_name_the_address_decides() -> None:
    pool = [_tcp("web", "127.0.0.1", 8080), _tcp("web", "127.0.0.1", 8443)]
    assert find(pool, ListenSpec("127.0.0.1:8443", name="web")) is pool[1]
    assert find(pool, ListenSpec("127.0.0.1:9000", name="web")) is pool[0]


def test_without_a_name_the_address_decides() -> None:
    pool = [_tcp("aeterna.socket", "127.0.0.1", 8080),
            _tcp("aeterna.socket", "::", 8081, socket.AF_INET6)]
    assert find(pool, ListenSpec("127.0.0.1:8080", name="http")) is pool[0]
    # A bare port is systemd's dual-stack [::]:PORT on both sides.
    assert find(pool, ListenSpec("8081", name="http")) is pool[1]
    assert find(pool, ListenSpec("127.0.0.1:8082", name="http")) is None
    # The same address but another type is not the same socket.
    assert find(pool, ListenSpec("127.0.0.1:8080", type=SocketType.DATAGRAM)) is None


def test_a_fifo_or_other_non_socket_goes_by_name_only() -> None:
    pool = [Inherited(11, "log", None)]
    assert find(pool, ListenSpec("/run/x.fifo", type=SocketType.FIFO, name="log")) is pool[0]
    assert find(pool, ListenSpec("/run/x.fifo", type=SocketType.FIFO, name="x")) is None


def test_the_summary_counts_states_in_a_fixed_order() -> None:
    assert summary([]) == "0 units"
    assert summary([State.ACTIVE]) == "1 unit: 1 active"
    assert summary([State.FAILED, State.ACTIVE, State.ACTIVE]) == "3 units: 2 active, 1 failed"
    assert coming_up([State.ACTIVE, State.STARTING])
    assert not coming_up([State.ACTIVE, State.AUTO_RESTART, State.FAILED])
