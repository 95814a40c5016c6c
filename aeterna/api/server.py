"""The control socket: a small, versioned JSON protocol over a unix stream socket.

One request per connection, one JSON object per line each way::

    -> {"v": 1, "verb": "status", "unit": null}
    <- {"v": 1, "ok": true, "result": {...}}
    <- {"v": 1, "ok": false, "error": "no such unit: 'x'", "code": "not-found"}

The socket node is mode 0600 and the peer's uid is checked with SO_PEERCRED:
only root and the manager's own uid may control it. Verbs that act (stop,
restart) answer when the action is done, as ``systemctl`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..manager.manager import Manager

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024


def default_path() -> str:
    """``$AETERNA_CONTROL``, else /run/aeterna for root, else $XDG_RUNTIME_DIR."""
    env = os.environ.get("AETERNA_CONTROL")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/aeterna/control.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "aeterna", "control.sock")
    return f"/tmp/aeterna-{os.geteuid()}/control.sock"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ControlServer:
    """Serves the control protocol for one manager."""

    def __init__(self, manager: Manager, path: str):
        self.manager = manager
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.allowed = {0, os.geteuid()}
        self._clients: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
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
        os.chmod(self.path, 0o600)

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
        import json  # on first use: an idle manager does not carry it

        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            # Read the request before answering even a refused peer, so that our
            # close never races its write (it would see EPIPE instead of the answer).
            try:
                line = await asyncio.wait_for(reader.readline(), 10.0)
            except (TimeoutError, ValueError):
                return
            if uid not in self.allowed:
                self.manager.log.warning("control.refused", uid=uid, reason="uid")
                await _send(writer, {"v": PROTOCOL_VERSION, "ok": False, "code": "denied",
                                     "error": f"uid {uid} may not control this manager"})
                return
            try:
                request = json.loads(line[:MAX_REQUEST])
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                await _send(writer, {"v": PROTOCOL_VERSION, "ok": False, "code": "bad-request",
                                     "error": "expected one JSON object per line"})
                return
            try:
                result = await self.handle(request)
                reply: dict[str, Any] = {"v": PROTOCOL_VERSION, "ok": True, "result": result}
            except ControlError as exc:
                reply = {"v": PROTOCOL_VERSION, "ok": False, "code": exc.code, "error": str(exc)}
            await _send(writer, reply)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle(self, request: dict[str, Any]) -> Any:
        if request.get("v") != PROTOCOL_VERSION:
            raise ControlError("version", f"protocol version {PROTOCOL_VERSION} expected")
        verb = request.get("verb")
        unit = request.get("unit")
        m = self.manager
        if unit is not None and unit not in m.units:
            hint = (" (a new unit file is read, and started, by 'aeterna reload' without a "
                    "unit)" if verb in ("reload", "start") else "")
            raise ControlError("not-found", f"no such unit: {unit!r}{hint}")
        if verb == "ping":
            return {"pid": os.getpid()}
        if verb == "status":
            from .status import collect

            names = [unit] if unit else list(m.order)
            units = []
            for n in names:
                st = collect(m.units[n])
                st["generations"] = m.relays.generations(n)
                st["relay"] = m.relays.status(n)
                units.append(st)
            return {"manager": {"pid": os.getpid(), "orphans_reaped": m.orphans_reaped,
                                "shutting_down": m.shutting_down,
                                "relays": m.relays.count,
                                "notify": {"accepted": m.notify.accepted,
                                           "rejected": m.notify.rejected}},
                    "units": units}
        if verb == "stop":
            if unit is None:
                m.shutdown()
                return {"stopping": "all"}
            m.stop_unit(unit)
            runtime = m.units[unit]
            await m.wait_for(lambda: runtime.state.value in ("inactive", "failed"))
            return {"unit": unit, "state": runtime.state.value, "result": runtime.result.value}
        if verb == "start":
            if unit is None:
                raise ControlError("bad-request", "start needs a unit (the manager itself "
                                   "runs with: aeterna start -c PATH)")
            runtime = m.units[unit]
            await m.wait_for(_start(m, unit))
            return {"unit": unit, "state": runtime.state.value, "result": runtime.result.value,
                    "main_pid": runtime.main_pid}
        if verb == "restart":
            if unit is None:
                raise ControlError("bad-request", "restart needs a unit")
            runtime = m.units[unit]
            await m.wait_for(_restart(m, unit))
            return {"unit": unit, "state": runtime.state.value, "result": runtime.result.value,
                    "main_pid": runtime.main_pid}
        if verb == "reload":
            return await self._reload(unit, bool(request.get("no_block")))
        raise ControlError("bad-request", f"unknown verb {verb!r}")


    async def _reload(self, unit: str | None, no_block: bool) -> dict[str, Any]:
        """Re-read the unit files; relay, restart or reload in place; wait for outcomes."""
        m = self.manager
        if unit is None:
            result = m.reload()
            futures = result.pop("_futures", [])
            if no_block or not futures:
                return result
            outcomes = [(await f).as_dict() for f in futures]
            result["outcomes"] = outcomes
            result["ok"] = all(o["outcome"] == "promoted" for o in outcomes)
            return result
        action, new, error = m.reload_unit(unit)
        runtime = m.units[unit]
        if action == "invalid" or new is None:
            raise ControlError("invalid", error + "\nthe running configuration is kept")
        if action == "relay":
            if runtime.state.value not in ("active", "reloading"):
                raise ControlError("bad-state", f"{unit} is {runtime.state.value}: only an "
                                   "active unit can be relayed")
            fut = m.relays.request(unit, new)
            if no_block:
                return {"ok": True, "unit": unit, "outcome": "queued"}
            outcome = await fut
            return {"ok": outcome.outcome == "promoted", "unit": unit,
                    "outcome": outcome.outcome, "relay": outcome.as_dict()}
        if action == "in-place":
            if runtime.state.value != "active":
                raise ControlError("bad-state", f"{unit} is {runtime.state.value}, "
                                   "not active: nothing to reload")
            before = runtime.reloads
            from ..unit.runtime import Event

            runtime.dispatch(Event.RELOAD)
            if no_block:
                return {"ok": True, "unit": unit, "outcome": "queued"}
            await m.wait_for(lambda: runtime.reloads > before
                             or runtime.state.value not in ("reloading", "active"))
            outcome_name = runtime.last_reload if runtime.reloads > before else "failed"
            return {"ok": outcome_name == "success", "unit": unit, "outcome": outcome_name,
                    "state": runtime.state.value}
        runtime.unit = new
        settled = _restart(m, unit)
        if no_block:
            return {"ok": True, "unit": unit, "outcome": "queued"}
        await m.wait_for(settled)
        ok = runtime.state.value in ("active", "exited")
        return {"ok": ok, "unit": unit, "outcome": "restarted" if ok else "failed",
                "state": runtime.state.value}


def _start(m: Manager, unit: str) -> Callable[[], bool]:
    """``systemctl start``: nothing for a unit that is up or on its way up; else a
    start (its required dependencies come up first). Returns "it settled"."""
    from ..unit.runtime import DOWN_STATES, UP_STATES, State

    runtime = m.units[unit]
    if runtime.state in UP_STATES:
        return lambda: True
    if runtime.state in DOWN_STATES | {State.AUTO_RESTART, State.STOP_PRE, State.STOPPING,
                                       State.KILLING}:
        return _restart(m, unit)  # a stopping unit starts again once it is down
    return lambda: runtime.state in UP_STATES or runtime.state in DOWN_STATES


def _restart(m: Manager, unit: str) -> Callable[[], bool]:
    """Restart ``unit``; return the condition "its next generation settled (or it failed)"."""
    runtime = m.units[unit]
    gen = runtime.generation
    m.restart_unit(unit)
    return lambda: runtime.state.value == "failed" or (
        runtime.generation > gen and runtime.state.value in ("active", "exited", "failed",
                                                             "inactive"))


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


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    import json

    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


def request(path: str, verb: str, unit: str | None = None, timeout: float | None = None,
            **extra: Any) -> dict[str, Any]:
    """Client side: send one request, return the reply object (blocking)."""
    import json

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"v": PROTOCOL_VERSION, "verb": verb, "unit": unit,
                              **extra}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if not data:
        raise ConnectionError("the manager closed the connection without answering")
    reply: dict[str, Any] = json.loads(data)
    return reply
