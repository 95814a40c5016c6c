"""How the state object becomes bytes, by ``FORMAT=`` (docs/srp.md section 4).

- ``json`` (the default): any JSON-serialisable object, UTF-8.
- ``bytes``: a bytes-like object (bytes, bytearray, memoryview, numpy array...)
  as it is; it decodes to ``bytes``.
- ``pickle``: only when asked for explicitly, on both ends. **Unpickling runs
  code chosen by whoever wrote the bytes**: accept it only from a previous
  generation of the same, trusted app (the manager forwards what it is given
  without reading it, but anything that can write into the SRP channel or the
  ``persist_dir`` file can choose those bytes).
"""

from __future__ import annotations

import json
from typing import Any

FORMATS = ("json", "bytes", "pickle")


class CodecError(Exception):
    """The state cannot be encoded or decoded; ``reason`` is the LOADED ERROR= word."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def is_bytes_like(obj: object) -> bool:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return True
    try:
        memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        return False
    return not isinstance(obj, (str, dict, list))


def choose(obj: object, fmt: str | None) -> str:
    """The format for ``obj``: ``fmt`` if given, else bytes for a buffer, else json."""
    if fmt is None:
        return "bytes" if is_bytes_like(obj) else "json"
    if fmt not in FORMATS and not fmt.startswith("x-"):
        raise CodecError("format", f"unknown format {fmt!r} (json, bytes, pickle, x-...)")
    return fmt


def encode(obj: object, fmt: str) -> bytes | memoryview:
    if fmt == "json":
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise CodecError("encode", str(exc)) from None
    if fmt == "pickle":
        import pickle

        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    # bytes and x-...: the app gives the bytes.
    try:
        return memoryview(obj).cast("B")  # type: ignore[arg-type]
    except TypeError:
        raise CodecError("encode", f"FORMAT={fmt} needs a bytes-like object, "
                         f"got {type(obj).__name__}") from None


def decode(data: bytes, fmt: str, allow_pickle: bool = False) -> Any:
    if fmt == "json":
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CodecError("decode", str(exc)[:80]) from None
    if fmt == "pickle":
        if not allow_pickle:
            raise CodecError("format", "pickle refused (AeternaClient(allow_pickle=True))")
        import pickle

        try:
            return pickle.loads(data)  # noqa: S301 - opted in, see the module docstring
        except Exception as exc:
            raise CodecError("decode", f"{type(exc).__name__}: {exc}"[:80]) from None
    if fmt == "bytes" or fmt.startswith("x-"):
        return data
    raise CodecError("format", f"unknown FORMAT={fmt}")
