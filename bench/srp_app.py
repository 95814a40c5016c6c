"""The app that bench/srp.py relays: it holds a state of a given size and hands it over by SRP.

Started by Aeterna as a ``type: notify`` unit with ``state_handoff`` on. Run by
hand (or by ``make bench``, which runs every ``bench/*.py``) it prints this
and exits 0.

Environment:

``SRPB_METHOD``  ``arena``: a :class:`StateArena` of ``SRPB_SIZE`` bytes, filled
                 before READY=1; the checkpoint callback returns it (``FORMAT=arena``,
                 the live memfd, nothing copied).
                 ``pickle``: a ``bytes`` object of ``SRPB_SIZE`` bytes,
                 ``on_checkpoint(format="pickle")``.
                 ``json``: a list of distinct 1024-character ASCII strings, as many as
                 make its JSON text ``SRPB_SIZE`` bytes (1027 bytes an item).
``SRPB_SIZE``    the state's size in bytes (a multiple of 1 MiB).
``SRPB_OUT``     a directory: generation G writes ``stamps-G.json`` there (rewritten
                 at each event below).
``SRPB_CKPT_DELAY``  seconds the checkpoint callback sleeps first (default 0;
                 bench/srp.py's idle series sets 2: the manager idles meanwhile).

The first generation builds its state; the next calls ``load_context()``.
Stamps are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, the clock perf uses with
``-k CLOCK_MONOTONIC``). The SDK is not changed: a few of its module functions
are wrapped *in this process* to stamp when they are called and return:

- ``wire.recv`` returns a ``CHECKPOINT`` (``ckpt_recv``: it arrived in N) or a
  ``STATE=1`` (``state_recv``: it arrived in N+1), on the SDK's reader thread;
- ``wire.send`` of our ``STATE=1`` (``state_send0``/``state_send1`` around sendmsg),
  of ``HELLO`` (``hello``) and of ``LOADED=1`` (``loaded_send``);
- spans ``build``, ``encode``, ``snapshot`` (new memfd + write), ``sha256``
  (sender), and ``receive``, ``sha256``, ``read_all``, ``decode`` (receiver).

The file is also rewritten every 0.2 s when something changed (with the spans
still running), so that a relay the bench has to kill leaves a trace.

N+1 stamps ``loaded`` in the ``validate`` callback of ``load_context``: the SDK
calls it with the decoded object or the mapped arena, before it answers
``LOADED=1``. For an arena it then stamps ``touch0``/``touch1`` around reading
one byte of every 4 KiB page (the mapping is lazy: the first access of each page
faults), and checks the pattern at both ends; for the others it checks the length.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

PATTERN_SIZE = 1 << 20
ITEM = 1024  # characters of one JSON string; 1027 bytes in the text with '"', '"' and ','
NAME = "bench"

stamps: dict[str, Any] = {}
spans: list[tuple[str, int, int]] = []
open_spans: dict[str, int] = {}  # label -> start, while it runs
_lock = threading.Lock()


def now() -> int:
    return time.monotonic_ns()


def stamp(name: str, t: int | None = None) -> None:
    stamps.setdefault(name, now() if t is None else t)  # the first occurrence wins


def set_comm(name: bytes) -> None:
    """Thread name for perf's filter; threads started later (the SDK's) inherit it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def pattern() -> bytes:
    return hashlib.shake_256(b"aeterna-srp-bench").digest(PATTERN_SIZE)


def build_state(method: str, size: int) -> Any:
    if method == "arena":
        from aeterna_sdk import StateArena

        arena = StateArena(size, name=NAME)
        block = pattern()
        for off in range(0, size, PATTERN_SIZE):
            arena.write(block[:size - off], off)
        return arena
    if method == "pickle":
        block = pattern()
        return block * (size // PATTERN_SIZE) + block[:size % PATTERN_SIZE]
    if method == "json":
        text = hashlib.shake_256(b"aeterna-srp-bench-json").hexdigest(1 << 19)  # 1 MiB ASCII
        count = max(1, (size - 1) // (ITEM + 3))
        span = len(text) - ITEM
        return [text[(i * 4099) % span:(i * 4099) % span + ITEM] for i in range(count)]
    raise SystemExit(f"unknown SRPB_METHOD={method!r}")


def check_state(method: str, size: int, obj: Any) -> str:
    """'ok' or what is wrong with a loaded state (after the timed part)."""
    if method == "arena":
        block = pattern()
        if obj is None or obj.size != size:
            return f"arena of {getattr(obj, 'size', None)} bytes"
        head = bytes(obj.buffer[:min(4096, size)])
        last = (size - 1) // PATTERN_SIZE * PATTERN_SIZE
        tail = bytes(obj.buffer[last:size])
        return "ok" if head == block[:len(head)] and tail == block[:len(tail)] else "pattern"
    if method == "pickle":
        return "ok" if isinstance(obj, bytes) and len(obj) == size else "length"
    want = max(1, (size - 1) // (ITEM + 3))
    return "ok" if isinstance(obj, list) and len(obj) == want else "length"


def instrument() -> None:
    """Wrap SDK module functions (in this process only) to stamp calls and returns."""
    from aeterna_sdk import codec, memfd, state, wire

    orig_recv, orig_send = wire.recv, wire.send

    def recv(sock: Any) -> Any:
        rec = orig_recv(sock)
        t = now()
        if rec is not None:
            if rec[0].startswith(b"CHECKPOINT=1"):
                stamp("ckpt_recv", t)
            elif rec[0].startswith(b"STATE=1"):
                stamp("state_recv", t)
        return rec

    def send(sock: Any, data: bytes, fds: Any = None) -> None:
        if data.startswith(b"STATE=1"):
            stamp("state_send0")
            orig_send(sock, data, fds)
            stamp("state_send1")
            return
        if data.startswith(b"HELLO"):
            stamp("hello")
        orig_send(sock, data, fds)
        if data.startswith(b"LOADED=1"):
            stamp("loaded_send")

    wire.recv, wire.send = recv, send

    def timed(module: Any, attr: str, label: str) -> None:
        fn = getattr(module, attr)

        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = now()
            open_spans[label] = t0
            try:
                return fn(*a, **kw)
            finally:
                spans.append((label, t0, now()))
                open_spans.pop(label, None)

        setattr(module, attr, wrapper)

    timed(state, "build", "build")
    timed(state, "receive", "receive")
    timed(codec, "encode", "encode")
    timed(codec, "decode", "decode")
    timed(memfd, "snapshot", "snapshot")
    timed(memfd, "sha256_of", "sha256")
    timed(memfd, "read_all", "read_all")


def main() -> int:
    method = os.environ.get("SRPB_METHOD", "")
    size = int(os.environ.get("SRPB_SIZE", "0") or 0)
    out = os.environ.get("SRPB_OUT", "")
    if not (method and size and out and os.environ.get("AETERNA_SRP_FD")):
        print(__doc__)
        return 0
    set_comm(b"srpb-app")
    instrument()
    from aeterna_sdk import AeternaClient

    client = AeternaClient(allow_pickle=True)
    gen = client.generation or 0
    path = os.path.join(out, f"stamps-{gen}.json")
    info: dict[str, Any] = {"gen": gen, "pid": os.getpid(), "method": method, "size": size}

    def dump() -> None:
        with _lock:
            data = {**info, "stamps": dict(stamps), "spans": list(spans),
                    "open": dict(open_spans), "dumped": now()}
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)

    stop = threading.Event()

    def dumper() -> None:
        """Every 0.2 s, write what changed: a relay the bench kills leaves its trace."""
        seen = None
        while not stop.wait(0.2):
            key = (len(stamps), len(spans), tuple(open_spans))
            if key != seen:
                seen = key
                dump()

    threading.Thread(target=dumper, name="srpb-dumper", daemon=True).start()

    holder: dict[str, Any] = {}

    def validate(obj: Any) -> bool:
        stamp("loaded")
        return True

    loaded = client.load_context(timeout=600, validate=validate)
    stamp("load_return")
    if loaded is None:
        info["cold"] = client.load_error
        t0 = now()
        holder["state"] = build_state(method, size)
        info["build_s"] = (now() - t0) / 1e9
    else:
        if method == "arena":
            arena = loaded
            stamp("touch0")
            touched = bytes(arena.buffer[::4096])
            stamp("touch1")
            info["touched_pages"] = len(touched)
        info["check"] = check_state(method, size, loaded)
        holder["state"] = loaded
    loaded = None

    delay = float(os.environ.get("SRPB_CKPT_DELAY", "0") or 0)

    def on_checkpoint() -> Any:
        stamp("callback")
        if delay > 0:  # N answers late: the manager idles meanwhile
            time.sleep(delay)
        obj = holder.pop("state", None)  # N hands it over; dropped here to save memory
        if method == "arena" and obj is not None:
            holder["state"] = obj  # the arena stays mapped (the same memory as N+1's)
        return obj

    def on_quiesce(reason: str) -> None:
        stamp("quiesced")
        info["quiesce_reason"] = reason
        dump()

    def on_resume(obj: Any) -> None:
        info["resumed"] = obj is not None

    if method == "arena":
        client.share_arena(NAME, holder["state"])
    client.on_checkpoint(on_checkpoint, on_quiesce=on_quiesce, on_resume=on_resume,
                         format=None if method == "arena" else method)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stamp("ready")
    info["ready"] = True
    dump()
    client.ready()
    stop.wait(900)  # bounded: the bench stops the manager long before
    info["stopped"] = True
    dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
