"""The control socket's client side: where the socket is, and one blocking request.

Used by the ``aeterna`` verbs other than ``start`` (and by tests); it imports
nothing of the manager.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from ..wire.control import request_line


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


def request(path: str, verb: str, unit: str | None = None, timeout: float | None = None,
            **extra: Any) -> dict[str, Any]:
    """Send one request, return the reply object (blocking)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(request_line(verb, unit, **extra))
        chunks: list[bytes] = []
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        s.close()
    data = b"".join(chunks)
    if not data:
        raise ConnectionError("the manager closed the connection without answering")
    reply: dict[str, Any] = json.loads(data)
    return reply
