"""The HTTP endpoints (``observability.metrics_port``): /metrics, /healthz, /readyz.

GET or HEAD, one request per connection:

- ``/metrics``: the Prometheus text format (:mod:`.metrics`).
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

from ..linux.sockets import SocketError, bind_listener
from ..model import ListenSpec
from ..results import Result
from ..unit.states import UP_STATES, State
from .limits import WaitingLimit
from .metrics import CONTENT_TYPE, render
from .usage import UsageCache
from .view import ManagerView

MAX_HEAD = 8192  # bytes of request line and headers
READ_TIMEOUT = 5.0  # s for a client to send its whole request head
# Connections still sending their request head; a new one beyond this evicts the
# oldest (see .limits): idle clients can neither use up the manager's fds nor
# keep a probe out.
MAX_WAITING = 256


def readiness(m: ManagerView) -> tuple[bool, str]:
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

    def __init__(self, view: ManagerView, usage: UsageCache, address: str):
        self.m = view
        self.usage = usage
        self.address = address
        self.server: asyncio.AbstractServer | None = None
        self.bound = ""
        self.waiting = WaitingLimit(MAX_WAITING)

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
        self.waiting.admit(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            head = None
        finally:
            self.waiting.served(writer)
        if writer.transport.is_closing():  # evicted, or the client went away
            return
        await self._serve(head, writer)

    async def _serve(self, head: bytes | None, writer: asyncio.StreamWriter) -> None:
        if head is None:
            status, ctype, body, allow_body = "400 Bad Request", "text/plain", "bad request\n", 1
        else:
            status, ctype, body, allow_body = await self._answer(head)
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

    async def _answer(self, head: bytes) -> tuple[str, str, str, int]:
        """(status, content type, body, whether to send the body) for one request."""
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", "bad request\n", 1
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", "GET or HEAD\n", 1
        send = int(method == "GET")
        if target == "/metrics":
            return "200 OK", CONTENT_TYPE, await render(self.m, self.usage), send
        if target == "/healthz":
            return "200 OK", "text/plain", "ok\n", send
        if target == "/readyz":
            ok, body = readiness(self.m)
            return ("200 OK" if ok else "503 Service Unavailable"), "text/plain", body, send
        return "404 Not Found", "text/plain", json.dumps(
            {"endpoints": ["/metrics", "/healthz", "/readyz"]}) + "\n", send


async def sync(m: ManagerView, usage: UsageCache, servers: dict[str, MetricsServer],
               wanted: list[str]) -> None:
    """Serve exactly ``wanted``: bind the new addresses, close the ones no unit names."""
    for address in [a for a in servers if a not in wanted]:
        await servers.pop(address).close()
        m.log.info("metrics.closed", address=address)
    for address in wanted:
        if address in servers:
            continue
        server = MetricsServer(m, usage, address)
        try:
            await server.start()
        except SocketError as exc:
            m.log.error("metrics.failed", address=address, error=str(exc))
            continue
        servers[address] = server
        m.log.info("metrics.listening", address=server.bound)
