"""Health checks for a canary: tcp, http and exec probes, and resource limits.

Each check returns ``None`` when healthy or a short reason (``"http 503"``,
``"tcp refused"``, ``"exit status 1"``, ``"rss 600MiB > 512MiB"``); the relay
turns the first reason into a rollback. Probes run only during a soak, so the
interval timers they use never wake an idle manager.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from ..linux import sockowner
from ..model import Canary, Probe, ProbeKind
from ..results import ExitInfo

# Runs a command for an exec probe: (argv, timeout) -> ExitInfo, or None on timeout.
ExecRunner = Callable[[tuple[str, ...], float], Awaitable[ExitInfo | None]]
# The pid whose process tree must answer a tcp/http probe (the canary), or None.
Target = Callable[[], int | None]


class NotReached(Exception):
    """No probe connection was accepted by the canary in time."""


async def check(probe: Probe, run_exec: ExecRunner, target: Target | None = None) -> str | None:
    """Run one probe once; None if healthy, else the reason.

    With ``target``, a tcp/http probe is only judged on a connection that the
    target's process tree accepted (see ``sockowner``); connections that the
    other generation accepted are closed unused and retried.
    """
    try:
        if probe.kind is ProbeKind.TCP:
            return await asyncio.wait_for(_tcp(probe.target, target), probe.timeout)
        if probe.kind is ProbeKind.HTTP:
            return await asyncio.wait_for(_http(probe.target, probe.expect_status, target),
                                          probe.timeout)
        info = await run_exec(probe.command, probe.timeout)
        if info is None:
            return f"exec timed out after {probe.timeout}s"
        if info.code != 0:
            return f"exec {info}"
        return None
    except NotReached:
        return f"{probe.kind.value}: no connection reached the canary in {probe.timeout}s"
    except TimeoutError:
        return f"{probe.kind.value} timed out after {probe.timeout}s"
    except OSError as exc:
        return f"{probe.kind.value} {type(exc).__name__}: {exc.strerror or exc}"


def _split_hostport(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


async def _connect(host: str, port: int, target: Target | None,
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to host:port that the target's process tree accepted."""
    while True:
        reader, writer = await asyncio.open_connection(host, port)
        if target is None:
            return reader, writer
        pid = target()
        sock = writer.get_extra_info("socket")
        if pid is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return reader, writer
        owner = await _accepted_by(sock, pid)
        if owner:
            return reader, writer
        # The other generation took it: hand it back untouched and try again.
        writer.close()
        await asyncio.sleep(0.01)


async def _accepted_by(sock: socket.socket, pid: int) -> bool:
    """Wait (the caller's timeout bounds it) until someone accepted; is it pid's tree?"""
    delay = 0.001
    while True:
        inode = sockowner.server_inode(sock)
        if inode is not None:
            return bool(sockowner.holders(inode, sockowner.tree(pid)))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


async def _tcp(target_addr: str, target: Target | None) -> str | None:
    host, port = _split_hostport(target_addr)
    _reader, writer = await _connect(host, port, target)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


async def _http(url: str, expect: int, target: Target | None) -> str | None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    reader, writer = await _connect(host, port, target)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: aeterna-probe\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        fields = status_line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            return "http bad response"
        status = int(fields[1])
        await reader.read()  # drain the body so the server can finish cleanly
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    return None if status == expect else f"http {status}, expected {expect}"


class ResourceWatch:
    """max_rss and max_cpu_percent over a process tree (psutil, imported lazily)."""

    def __init__(self, canary: Canary, pid: int):
        self.canary = canary
        self.pid = pid
        self._cpu_last: dict[int, float] = {}
        self._seen: dict[int, object] = {}

    def enabled(self) -> bool:
        return self.canary.max_rss > 0 or self.canary.max_cpu_percent > 0

    def check(self) -> str | None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None  # gone: the exit is reported on its own
        rss = 0
        cpu = 0.0
        for p in procs:
            try:
                rss += p.memory_info().rss
                if self.canary.max_cpu_percent > 0:
                    proc = self._seen.setdefault(p.pid, p)
                    cpu += proc.cpu_percent(None)  # type: ignore[attr-defined]
            except psutil.Error:
                continue
        if self.canary.max_rss and rss > self.canary.max_rss:
            return f"rss {_mib(rss)} > {_mib(self.canary.max_rss)}"
        if self.canary.max_cpu_percent and cpu > self.canary.max_cpu_percent:
            return f"cpu {cpu:.0f}% > {self.canary.max_cpu_percent:.0f}%"
        return None


def _mib(n: int) -> str:
    return f"{n / 1048576:.0f}MiB"
