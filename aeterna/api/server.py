"""The control socket: serves the control protocol (``wire.control``), one function per verb.

One request per connection. The socket node is mode 0600 and the peer's uid
is checked with SO_PEERCRED: only root and the manager's own uid may control
it. Verbs that act (stop, start, restart, reload) answer when the action is
done, as ``systemctl`` does. Handlers read the manager through a read-only
``ManagerView`` and act through its methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from ..unit.states import DOWN_STATES, GOING_DOWN_STATES, UP_STATES, State
from ..wire.control import ControlError, parse_request, reply_error, reply_ok
from . import systemd_verbs
from .limits import WaitingLimit
from .systemd_verbs import resolve_name
from .usage import UsageCache
from .view import ManagerView, UnitView


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# Connections that have not sent their request line yet; a new one beyond this
# evicts the oldest (see .limits), so idle clients cannot use up the fds a
# restarting unit needs.
MAX_WAITING = 128
REQUEST_TIMEOUT = 10.0  # s to send the request line
# The connection a request came in on (per task): daemon-reexec hands it to the
# new manager, which answers it.
CONNECTION: contextvars.ContextVar[asyncio.StreamWriter] = contextvars.ContextVar("connection")


class ControlServer:
    """Serves the control protocol for one manager."""

    def __init__(self, view: ManagerView, path: str, adopt_fd: int | None = None):
        self.view = view
        self.path = path
        self.adopt_fd = adopt_fd  # daemon-reexec: the socket is already bound and listening
        self.usage = UsageCache()
        self.server: asyncio.AbstractServer | None = None
        self.allowed = {0, os.geteuid()}
        self._clients: set[asyncio.Task[Any]] = set()
        self.waiting = WaitingLimit(MAX_WAITING)

    async def start(self) -> None:
        if self.adopt_fd is not None:  # daemon-reexec: the backlog's clients wait in it
            sock = socket.socket(fileno=self.adopt_fd)
            self.server = await asyncio.start_unix_server(self._serve, sock=sock)
            return
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if _someone_listening(self.path):
                raise OSError(f"{self.path}: another manager is listening here")
            os.unlink(self.path)
        # Create the node with no access for others from the start (no chmod race).
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=self.path)
        finally:
            os.umask(old)

    def fileno(self) -> int:
        assert isinstance(self.server, asyncio.Server)
        return int(self.server.sockets[0].fileno())

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            # Requests still being served (a `stop` waiting for the end, say) are
            # cancelled and awaited, so the loop never closes on a pending task.
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.gather(*self._clients, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)
        CONNECTION.set(writer)
        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            # Read the request before answering even a refused peer, so that our
            # close never races its write (it would see EPIPE instead of the answer).
            self.waiting.admit(writer)
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            except (TimeoutError, ValueError):
                return
            finally:
                self.waiting.served(writer)
            if writer.transport.is_closing():
                return
            try:
                if uid not in self.allowed:
                    self.view.log.warning("control.refused", uid=uid, reason="uid")
                    raise ControlError("denied", f"uid {uid} may not control this manager")
                result = await self.handle(parse_request(line))
                # A status of thousands of units, or a log ring of 10,000 lines, is
                # a large JSON document: encoded in a worker thread, not on the loop.
                reply = (await asyncio.get_running_loop().run_in_executor(None, reply_ok, result)
                         if isinstance(result, dict) and (len(result.get("units", ())) > 100
                                                          or len(result.get("entries", ())) > 500)
                         else reply_ok(result))
            except ControlError as exc:
                reply = reply_error(exc)
            writer.write(reply)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle(self, request: dict[str, Any]) -> Any:
        verb = request.get("verb")
        unit = request.get("unit")
        handler = VERBS.get(verb) if isinstance(verb, str) else None
        if handler is None:
            raise ControlError("bad-request", f"unknown verb {verb!r}")
        if isinstance(unit, str):
            unit = resolve_name(self.view.units, unit)
        if unit is not None and unit not in self.view.units and verb == "start" and "@" in unit:
            error = self.view.add_instance(unit)  # a template's instance, by name
            if error:
                raise ControlError("not-found", error)
        instance_to_enable = verb == "enable" and unit is not None and "@" in unit
        if unit is not None and unit not in self.view.units and not instance_to_enable:
            hint = (" (a new unit file is read, and started, by 'aeterna reload' without a "
                    "unit)" if verb in ("reload", "start") else "")
            raise ControlError("not-found", f"no such unit: {unit!r}{hint}")
        return await handler(self, unit, request)


# --------------------------------------------------------------------------- verbs
Verb = Callable[[ControlServer, Any, dict[str, Any]], Awaitable[Any]]


async def ping(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    return {"pid": os.getpid()}


async def status(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    from .status import collect  # on first use: an idle manager does not carry it

    return await collect(srv.view, srv.usage, unit)


async def stop(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """``stop``: everything (the manager exits), or one unit and what requires it."""
    m = srv.view
    if unit is None:
        m.shutdown()
        return {"stopping": "all"}
    m.stop_unit(unit)
    u = m.units[unit]
    if req.get("no_block"):
        return _settled(unit, u)
    await m.wait_for(lambda: u.state in DOWN_STATES)
    return _settled(unit, u)


async def start(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """``systemctl start``: nothing for a unit that is up or on its way up; else a
    start (its required dependencies come up first)."""
    if unit is None:
        raise ControlError("bad-request", "start needs a unit (the manager itself runs "
                           "with: aeterna start -c PATH)")
    m = srv.view
    u = m.units[unit]
    if u.state in UP_STATES:
        settled = _always
    elif u.state in DOWN_STATES | GOING_DOWN_STATES:
        settled = _next_generation(u)
        m.start_unit(unit)
    else:
        settled = lambda: u.state in UP_STATES or u.state in DOWN_STATES  # noqa: E731
    if not req.get("no_block"):
        await m.wait_for(settled)
    return {**_settled(unit, u), "main_pid": u.main_pid}


async def enable(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """``enable UNIT``: a systemd unit is linked from its ``WantedBy=`` targets
    (systemd_verbs); a YAML template's instance (``web@8080``) gets its symlink to
    the template and is started (instances.py)."""
    if unit is None:
        raise ControlError("bad-request", "enable needs a unit")
    m = srv.view
    u = m.units.get(unit)
    if "@" not in unit or (u is not None and u.spec.source.file.endswith(
            (".service", ".socket"))):
        return await systemd_verbs.enable(srv, unit, req)
    created, error = m.enable_instance(unit)
    if error:
        raise ControlError("failed", error)
    result = await start(srv, unit, req)
    return {**result, "enabled": True, "created": created,
            "links": [created] if created else [],
            "target": os.path.realpath(created) if created else ""}


async def restart(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    if unit is None:
        raise ControlError("bad-request", "restart needs a unit")
    m = srv.view
    u = m.units[unit]
    settled = _next_generation(u)
    m.restart_unit(unit)
    if not req.get("no_block"):
        await m.wait_for(settled)
    return {**_settled(unit, u), "main_pid": u.main_pid}


async def reload(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """Re-read the unit files; relay, restart or reload in place; wait for outcomes."""
    m = srv.view
    no_block = bool(req.get("no_block"))
    if unit is None:
        result, futures = m.reload(new=await m.read_units())
        if no_block or not futures:
            return result
        outcomes = [(await f).as_dict() for f in futures]
        return {**result, "outcomes": outcomes,
                "ok": all(o["outcome"] == "promoted" for o in outcomes)}
    action, new, error = m.reload_unit(unit, await m.read_unit(unit))
    u = m.units[unit]
    if action == "refused":
        raise ControlError("not-relayable", error)
    if action == "not-applicable":
        raise ControlError("not-applicable", f"{unit} has no ExecReload= and no hot-relay "
                           "strategy: reload is not applicable (systemctl refuses it too); "
                           f"'aeterna restart {unit}' restarts it, or set Strategy=restart "
                           "in [X-Aeterna] (strategy: restart in YAML) to make reload restart")
    if action == "invalid" or new is None:
        raise ControlError("invalid", error + "\nthe running configuration is kept")
    if action == "relay":
        if u.state not in (State.ACTIVE, State.RELOADING):
            raise ControlError("bad-state", f"{unit} is {u.state.value}: only an active "
                               "unit can be relayed")
        fut = m.relay(unit, new)
        if no_block:
            return {"ok": True, "unit": unit, "outcome": "queued"}
        outcome = await fut
        return {"ok": outcome.outcome == "promoted", "unit": unit, "outcome": outcome.outcome,
                "relay": outcome.as_dict()}
    if action == "in-place":
        if u.state not in (State.ACTIVE, State.EXITED):
            raise ControlError("bad-state", f"{unit} is {u.state.value}, not active: "
                               "nothing to reload")
        before = u.snapshot()["reloads"]
        m.reload_in_place(unit, new)
        if no_block:
            return {"ok": True, "unit": unit, "outcome": "queued"}
        await m.wait_for(lambda: u.snapshot()["reloads"] > before
                         or u.state not in (State.RELOADING, State.ACTIVE, State.EXITED))
        snap = u.snapshot()
        outcome_name = snap["last_reload"] if snap["reloads"] > before else "failed"
        return {"ok": outcome_name == "success", "unit": unit, "outcome": outcome_name,
                "state": u.state.value}
    settled = _next_generation(u)
    m.restart_unit(unit, new)
    if no_block:
        return {"ok": True, "unit": unit, "outcome": "queued"}
    await m.wait_for(settled)
    ok = u.state in (State.ACTIVE, State.EXITED)
    return {"ok": ok, "unit": unit, "outcome": "restarted" if ok else "failed",
            "state": u.state.value}


async def daemon_reexec(srv: ControlServer, unit: str | None, req: dict[str, Any]) -> Any:
    """Replace the manager's code, keeping every unit (manager/reexec.py). On success the
    new manager answers this connection; a refusal is answered here, and nothing changed."""
    from ..manager.reexec import Refused

    writer = CONNECTION.get(None)
    reply_fd = os.dup(writer.get_extra_info("socket").fileno()) if writer is not None else None
    try:
        await srv.view.daemon_reexec(req.get("exec"), reply_fd)
    except Refused as exc:
        srv.view.log.warning("manager.reexec-refused", reason=str(exc))
        raise ControlError("refused", f"daemon-reexec cancelled: {exc}; the running "
                           "manager carries on unchanged") from None
    finally:
        if reply_fd is not None:
            with contextlib.suppress(OSError):
                os.close(reply_fd)
    raise ControlError("internal", "daemon-reexec returned without exec")


VERBS: dict[str, Verb] = {"ping": ping, "status": status, "stop": stop, "start": start,
                          "restart": restart, "reload": reload,
                          "show": systemd_verbs.show, "cat": systemd_verbs.cat,
                          "kill": systemd_verbs.kill, "reset-failed": systemd_verbs.reset_failed,
                          "daemon-reload": systemd_verbs.daemon_reload,
                          "logs": systemd_verbs.logs, "enable": enable,
                          "disable": systemd_verbs.disable,
                          "daemon-reexec": daemon_reexec}  # issue 15


def _always() -> bool:
    return True


def _next_generation(u: UnitView) -> Callable[[], bool]:
    """"The unit's next generation settled (or it failed)", for a start or restart."""
    gen = u.generation
    return lambda: u.state is State.FAILED or (
        u.generation > gen and u.state in (State.ACTIVE, State.EXITED, State.FAILED,
                                           State.INACTIVE))


def _settled(unit: str, u: UnitView) -> dict[str, Any]:
    return {"unit": unit, "state": u.state.value, "result": u.result.value}


def _someone_listening(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
