"""The control protocol's framing: one JSON object per line each way, versioned.

::

    -> {"v": 1, "verb": "status", "unit": null}
    <- {"v": 1, "ok": true, "result": {...}}
    <- {"v": 1, "ok": false, "error": "no such unit: 'x'", "code": "not-found"}

Pure: the server (:mod:`aeterna.api.server`) and the client
(:mod:`aeterna.api.client`) both frame with these.
"""

from __future__ import annotations

from typing import Any

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """A request that cannot be served; ``code`` is the reply's machine-readable name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def encode(obj: dict[str, Any]) -> bytes:
    import json  # on first use: an idle manager does not carry it

    return json.dumps(obj).encode() + b"\n"


def request_line(verb: str, unit: str | None = None, **extra: Any) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "verb": verb, "unit": unit, **extra})


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line, or ControlError("bad-request" | "version")."""
    import json

    try:
        request = json.loads(line[:MAX_REQUEST])
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        request = None
    if not isinstance(request, dict):
        raise ControlError("bad-request", "expected one JSON object per line")
    if request.get("v") != PROTOCOL_VERSION:
        raise ControlError("version", f"protocol version {PROTOCOL_VERSION} expected")
    for key, types, what in _FIELDS:
        if key in request and not isinstance(request[key], types):
            raise ControlError("bad-request", f"{key!r}: expected {what}, "
                               f"got {type(request[key]).__name__}")
    return request


# The request keys the server reads, with what each must be.
_FIELDS: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("verb", (str,), "a string"),
    ("unit", (str, type(None)), "a unit name or null"),
    ("no_block", (bool,), "true or false"),
    ("names", (list,), "a list of unit names"),
    ("signal", (str,), "a signal name"),
    ("whom", (str,), "main, all or control"),
    ("after", (int,), "a line number"),
    ("lines", (int,), "a number of lines"),
    ("wait", (int, float), "seconds"),
    ("since", (int, float), "a time in seconds since the epoch"),
    ("exec", (str,), "a path"),  # daemon-reexec
)


def reply_ok(result: Any) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "ok": True, "result": result})


def reply_error(exc: ControlError) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "ok": False, "code": exc.code, "error": str(exc)})
