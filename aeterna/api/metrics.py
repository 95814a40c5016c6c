"""Prometheus metrics and health checks over HTTP (``observability.metrics_port``).

Endpoints, GET or HEAD, one request per connection:

- ``/metrics``: the Prometheus text format (0.0.4). Label values are the same
  names that logs and ``aeterna status`` use (``state="active"``,
  ``outcome="rolled-back"``, ``reason="probe-failed"``, ``reason="unknown_sender"``).
- ``/healthz``: 200 while the manager's loop answers (a liveness probe).
- ``/readyz``: 200 when every unit is up (``active``, ``reloading``, a oneshot
  that ``exited``) or ended successfully (``inactive`` with result ``success``:
  done, or stopped on request), else 503 listing the others (a readiness probe).

The manager serves every address that a unit file names, each with the whole
manager's metrics: the original design set ``metrics_port`` per service file,
and one endpoint per address is what a scraper expects. Sockets are bound
with the unit listeners' code (close-on-exec, SO_REUSEADDR, a bare port is
dual-stack); a bind failure is logged and leaves the units alone. Nothing here
runs until a scraper connects, so an idle manager stays idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..linux.sockets import SocketError, bind_listener
from ..model import ListenSpec
from ..results import Result
from ..unit.runtime import UP_STATES, State
from ..wire.notify import Rejection

if TYPE_CHECKING:
    from ..manager.manager import Manager

MAX_HEAD = 8192  # bytes of request line and headers
READ_TIMEOUT = 5.0  # s for a client to send its request
# Connections served at once; more are closed at once. Idle clients must not be
# able to use up the manager's fds, which it needs to start processes.
MAX_CLIENTS = 32
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- rendering
def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Families:
    """Collects samples by family, so each family's HELP and TYPE come once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, Any], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            number = repr(float(value)) if isinstance(value, float) else str(int(value))
            self.lines.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(m: Manager) -> str:
    """Every metric of the manager and its units, in the Prometheus text format."""
    from .status import tree_usage

    f = _Families()
    names = list(m.order)
    units = [m.units[n] for n in names]
    f.family("aeterna_unit_state", "gauge", "1 for the unit's current state, 0 for the others.",
             (({"unit": r.name, "state": s.value}, int(r.state is s))
              for r in units for s in State))
    f.family("aeterna_unit_info", "gauge", "The unit's type, strategy and last result.",
             (({"unit": r.name, "type": r.unit.service.type.value,
                "strategy": r.unit.orchestration.strategy.value, "result": r.result.value}, 1)
              for r in units))
    f.family("aeterna_unit_main_pid", "gauge", "The serving generation's main pid (0: none).",
             (({"unit": r.name}, r.main_pid or 0) for r in units))
    f.family("aeterna_unit_generation", "gauge", "The serving generation's number.",
             (({"unit": r.name}, r.generation) for r in units))
    f.family("aeterna_unit_restarts_total", "counter", "Automatic restarts of the unit.",
             (({"unit": r.name}, r.restarts) for r in units))
    now = time.monotonic()
    f.family("aeterna_unit_uptime_seconds", "gauge", "Time since the serving generation "
             "started (0 when nothing runs).",
             (({"unit": r.name}, round(now - r.started_at, 3)
               if r.started_at is not None and r.main_pid is not None else 0.0)
              for r in units))
    usage = {r.name: tree_usage(r.main_pid) if r.main_pid is not None else {} for r in units}
    f.family("aeterna_unit_memory_rss_bytes", "gauge",
             "Resident memory of the unit's process tree.",
             (({"unit": n}, u["rss"]) for n, u in usage.items() if "rss" in u))
    # A gauge, not a counter: the tree's processes come and go (a relay replaces
    # them all), so the sum can fall, which a counter must never do.
    f.family("aeterna_unit_cpu_seconds", "gauge",
             "CPU time used so far by the processes of the unit's tree that are alive.",
             (({"unit": n}, float(u["cpu_seconds"])) for n, u in usage.items() if u))
    roles = ("serving", "canary", "draining")
    gens = {n: [g["role"] for g in m.relays.generations(n)] for n in names}
    f.family("aeterna_generations", "gauge", "Live generations of the unit, by role.",
             (({"unit": n, "role": role}, gens[n].count(role)) for n in names for role in roles))
    f.family("aeterna_relay_in_progress", "gauge", "1 while a relay of the unit runs.",
             (({"unit": n, "phase": m.relays.current[n].phase.value}, 1)
              for n in names if n in m.relays.current))
    counts = dict(m.relays.outcomes)
    for r in units:  # a zero to start from, for every unit that relays
        if r.unit.orchestration.strategy.value == "hot-relay":
            counts.setdefault((r.name, "promoted", ""), 0)
    f.family("aeterna_relays_total", "counter", "Finished relays, by outcome and reason.",
             (({"unit": u, "outcome": o, "reason": why}, v)
              for (u, o, why), v in sorted(counts.items())))
    f.family("aeterna_srp_handoffs_total", "counter",
             "State handoffs (SRP) of finished relays, by outcome.",
             (({"unit": u, "outcome": o}, v) for (u, o), v in sorted(m.relays.handoffs.items())))
    last = [(n, m.relays.last[n]) for n in names if n in m.relays.last]
    f.family("aeterna_relay_last_seconds", "gauge",
             "The last relay's duration, in total and by phase.",
             [({"unit": n, "phase": "total"}, o.total) for n, o in last]
             + [({"unit": n, "phase": p}, float(d)) for n, o in last
                for p, d in o.durations.items()])
    notify = m.notify
    f.family("aeterna_notify_accepted_total", "counter", "sd_notify datagrams acted on.",
             [({}, notify.accepted)])
    f.family("aeterna_notify_rejected_total", "counter", "sd_notify datagrams dropped, by "
             "reason.", (({"reason": r.value}, notify.rejected.get(r.value, 0))
                         for r in Rejection))
    f.family("aeterna_orphans_reaped_total", "counter",
             "Processes reaped that were no unit's main process.", [({}, m.orphans_reaped)])
    _process_families(f)
    return f.text()


def _process_families(f: _Families) -> None:
    """The manager's own process, under the names of Prometheus' client libraries."""
    try:
        with open("/proc/self/stat") as fh:
            stat = fh.read().rpartition(")")[2].split()
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, StopIteration, ValueError):
        return
    # Fields after the ")" start at field 3 (state): utime is 14, stime 15,
    # starttime 22, rss 24 (in pages).
    f.family("process_cpu_seconds_total", "counter", "User and system CPU time of the manager.",
             [({}, (int(stat[11]) + int(stat[12])) / _CLK_TCK)])
    f.family("process_resident_memory_bytes", "gauge", "Resident memory of the manager.",
             [({}, int(stat[21]) * _PAGE)])
    f.family("process_start_time_seconds", "gauge", "The manager's start, in Unix time.",
             [({}, btime + int(stat[19]) / _CLK_TCK)])
    f.family("process_open_fds", "gauge", "Open fds of the manager.", [({}, fds)])


def readiness(m: Manager) -> tuple[bool, str]:
    """(ready, body) for ``/readyz``: every unit up, or done and successful (a
    service that ended with success and no restart, or one stopped on request)."""
    down = [f"{r.name}: {r.state.value}" for n in m.order
            if (r := m.units[n]).state not in UP_STATES
            and not (r.state is State.INACTIVE and r.result is Result.SUCCESS)]
    if m.shutting_down:
        down.insert(0, "manager: shutting down")
    return not down, ("ready\n" if not down else "not ready\n" + "\n".join(down) + "\n")


# --------------------------------------------------------------------------- serving
class MetricsServer:
    """One HTTP endpoint; ``start`` binds and serves, ``close`` stops."""

    def __init__(self, manager: Manager, address: str):
        self.m = manager
        self.address = address
        self.server: asyncio.AbstractServer | None = None
        self.bound = ""
        self.clients = 0

    async def start(self) -> None:
        """Bind and serve; raises SocketError naming the address and the errno."""
        listener = bind_listener(ListenSpec(address=self.address, name="metrics", backlog=64))
        assert listener.socket is not None
        self.bound = listener.local_address()
        try:
            self.server = await asyncio.start_server(self._client, sock=listener.socket,
                                                     limit=MAX_HEAD)
        except OSError as exc:
            listener.close()
            raise SocketError(self.address, exc.errno or 0, f"serve: {exc}") from None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:
            writer.transport.abort()
            return
        self.clients += 1
        try:
            await self._serve(reader, writer)
        finally:
            self.clients -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, ctype, body, allow_body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            status, ctype, body, allow_body = "400 Bad Request", "text/plain", "bad request\n", 1
        data = body.encode()
        headers = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                   f"Content-Length: {len(data)}\r\nConnection: close\r\n")
        if status.startswith("405"):
            headers += "Allow: GET, HEAD\r\n"
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(headers.encode() + b"\r\n" + (data if allow_body else b""))
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[str, str, str, int]:
        """(status, content type, body, whether to send the body) for one request."""
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", "bad request\n", 1
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", "GET or HEAD\n", 1
        send = int(method == "GET")
        if target == "/metrics":
            return "200 OK", CONTENT_TYPE, render(self.m), send
        if target == "/healthz":
            return "200 OK", "text/plain", "ok\n", send
        if target == "/readyz":
            ok, body = readiness(self.m)
            return ("200 OK" if ok else "503 Service Unavailable"), "text/plain", body, send
        return "404 Not Found", "text/plain", json.dumps(
            {"endpoints": ["/metrics", "/healthz", "/readyz"]}) + "\n", send


def addresses(units: Iterable[Any]) -> list[str]:
    """Every distinct metrics address that the units name, in order."""
    seen: dict[str, None] = {}
    for unit in units:
        if unit.observability.metrics_port:
            seen.setdefault(unit.observability.metrics_port, None)
    return list(seen)


async def sync(m: Manager, servers: dict[str, MetricsServer], wanted: list[str]) -> None:
    """Serve exactly ``wanted``: bind the new addresses, close the ones no unit names."""
    for address in [a for a in servers if a not in wanted]:
        await servers.pop(address).close()
        m.log.info("metrics.closed", address=address)
    for address in wanted:
        if address in servers:
            continue
        server = MetricsServer(m, address)
        try:
            await server.start()
        except SocketError as exc:
            m.log.error("metrics.failed", address=address, error=str(exc))
            continue
        servers[address] = server
        m.log.info("metrics.listening", address=server.bound)
