"""Just enough HTTP/1.1 for the agent: parse requests from a buffer, format responses.

The agent owns its connections byte by byte (no hidden buffers in a library)
so that, at a checkpoint, an idle keep-alive connection can be handed to the
next generation together with the bytes it has received but not yet parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 16384
MAX_BODY = 1 << 20
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 503: "Service Unavailable"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest(400, "the body is not JSON") from None


def parse(buf: bytearray) -> tuple[Request | None, int]:
    """(request, bytes used) when ``buf`` starts with a whole request, else (None, 0)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadRequest(400, "request head too large")
        return None, 0
    try:
        head = bytes(buf[:end]).decode("latin-1")
    except UnicodeDecodeError:
        raise BadRequest(400, "bad request head") from None
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(400, "bad header line")
        headers.setdefault(name.strip().lower(), value.strip())
    if "transfer-encoding" in headers:
        raise BadRequest(400, "chunked bodies are not supported")
    raw_len = headers.get("content-length", "0")
    if not raw_len.isdigit():
        raise BadRequest(400, "bad Content-Length")
    length = int(raw_len)
    if length > MAX_BODY:
        raise BadRequest(413, "body too large")
    start = end + 4
    if len(buf) < start + length:
        return None, 0
    body = bytes(buf[start:start + length])
    return Request(parts[0], parts[1], parts[2], headers, body), start + length


def response(status: int, payload: Any, keep_alive: bool,
             extra: dict[str, str] | None = None) -> bytes:
    body = (json.dumps(payload, separators=(",", ":")) + "\n").encode("utf-8")
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
             "Content-Type: application/json",
             f"Content-Length: {len(body)}",
             "Connection: " + ("keep-alive" if keep_alive else "close")]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
