"""A small "AI agent" HTTP service that keeps its memory across hot relays.

Routes (JSON in, JSON out, HTTP/1.1 keep-alive):

- ``POST /chat`` ``{"session": s, "message": m}``: appends the message and the
  agent's reply to the session's conversation; answers
  ``{"session", "reply", "messages", "generation"}`` (``messages``: how many
  the conversation holds now).
- ``GET /context/<session>``: the conversation (404 for an unknown session).
- ``GET /cache``: size, sha256 and memfd inode of the embedding cache.
- ``GET /healthz``: ``ok`` (503 once ``AGENT_UNHEALTHY_AFTER`` seconds passed).
- ``GET /``: generation, pid, sessions, connections.

Under Aeterna (see ``units/agent.yaml``) the listener comes from socket
activation and the state moves with SRP: on a relay checkpoint the agent
stops accepting, lets in-flight requests finish, then hands over the
conversations (a JSON snapshot), the embedding cache (a StateArena, no copy)
and every idle keep-alive connection with the bytes it has read but not yet
parsed. One event loop thread does all request handling, so "snapshot" and
"stop taking work" happen as one step: nothing is acknowledged after the
snapshot. Outside Aeterna it binds ``AGENT_ADDR`` itself and starts empty.

If the hand-over fails and the unit says ``required: true``, N+1 does not
serve (the relay rolls back) and N resumes with its own state, keeping its own
dups of the connections it had handed over. Crash safety: the conversations
(not the cache, which is rebuilt) are checkpointed every
``AGENT_CHECKPOINT_INTERVAL`` seconds, and everything, cache included, when the
agent is stopped (kept on disk with ``persist_dir``).

Environment: ``AGENT_ADDR`` (127.0.0.1:8081, standalone only),
``AGENT_CACHE_MIB`` (64), ``AGENT_THINK_MS`` (0: simulated inference time),
``AGENT_CHECKPOINT_INTERVAL`` (1.0 s between crash-safety checkpoints, 0 =
off), ``AGENT_UNHEALTHY_AFTER`` (unset), ``AGENT_LOAD_TIMEOUT`` (60 s),
``AGENT_DEBUG`` (1: ``kill -USR1`` dumps every thread's stack).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import aeterna_sdk  # noqa: F401
except ImportError:  # run from a checkout without the SDK installed
    sys.path.insert(0, os.path.join(HERE, "..", "..", "sdk", "python"))

import http11  # noqa: E402

from aeterna_sdk import AeternaClient, StateArena  # noqa: E402

GEN = os.environ.get("AETERNA_GENERATION", "0")
CACHE_NAME = "embeddings"
STATE_VERSION = 1
VECTOR = 64  # bytes per cached "embedding"
QUIESCE_WAIT = 10.0  # bound on in-flight requests at a checkpoint (below SRP's timeout)
MAX_HANDOFF = 250  # SCM_RIGHTS carries 253 fds: the snapshot, the arena, connections


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


def say(msg: str) -> None:
    print(f"agent gen={GEN} pid={os.getpid()}: {msg}", flush=True)


def build_cache(size: int) -> StateArena:
    """The deterministic 'embedding cache' (an expensive build in real life)."""
    arena = StateArena(size, name=CACHE_NAME)
    step = 1 << 20
    for i, off in enumerate(range(0, size, step)):
        n = min(step, size - off)
        arena.write(hashlib.shake_256(b"aeterna-agent-embeddings:%d" % i).digest(n), off)
    return arena


class Conn(asyncio.Protocol):
    """One client connection: parses requests from its own buffer, one at a time."""

    def __init__(self, agent: Agent, name: str, pending: bytes = b""):
        self.agent = agent
        self.name = name
        self.buf = bytearray(pending)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.paused = False
        self.closed = False
        self.eof = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.agent.connecting -= 1
        self.agent.conns[self.name] = self
        if self.agent.quiescing:
            self.pause()
        else:
            self.pump()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.pump()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.busy:
            self.pump()
        return True  # keep our side open until the last answer is written

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.agent.conns.get(self.name) is self:
            del self.agent.conns[self.name]

    # request handling
    def pump(self) -> None:
        while not (self.busy or self.paused or self.closed):
            try:
                req, used = http11.parse(self.buf)
            except http11.BadRequest as exc:
                self.send(http11.response(exc.status, {"error": str(exc)}, False), False)
                return
            if req is None:
                if self.eof and self.transport is not None:
                    self.transport.close()
                return
            del self.buf[:used]
            self.busy = True
            if self.agent.think > 0:
                asyncio.ensure_future(self.think_then_answer(req))
                return
            self.answer(req)

    async def think_then_answer(self, req: http11.Request) -> None:
        await asyncio.sleep(self.agent.think)
        self.answer(req)
        self.pump()

    def answer(self, req: http11.Request) -> None:
        try:
            status, payload = self.agent.route(req)
        except http11.BadRequest as exc:
            status, payload = exc.status, {"error": str(exc)}
        self.busy = False
        self.send(http11.response(status, payload, req.keep_alive, {"X-Generation": GEN}),
                  req.keep_alive)

    def send(self, data: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.closed:
            return
        self.transport.write(data)
        if not keep_alive:
            self.paused = True
            self.transport.close()

    # hand-over
    def pause(self) -> None:
        self.paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def settled(self) -> bool:
        return self.closed or (not self.busy and self.transport is not None
                               and self.transport.get_write_buffer_size() == 0)

    def detach(self) -> socket.socket:
        """A dup of the socket for the next generation; our transport closes without FIN."""
        assert self.transport is not None
        raw = self.transport.get_extra_info("socket")
        dup = socket.socket(raw.family, raw.type, raw.proto, fileno=os.dup(raw.fileno()))
        self.closed = True
        self.transport.close()  # closes our fd only: the dup keeps the connection open
        return dup


class Agent:
    def __init__(self, client: AeternaClient):
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.contexts: dict[str, list[dict[str, str]]] = {}
        self.conns: dict[str, Conn] = {}
        self.connecting = 0
        self.accepting = False
        self.quiescing = False
        self.quiesced = False
        self.dirty = False
        self.serial = 0
        self.think = env_float("AGENT_THINK_MS", 0.0) / 1000
        self.unhealthy_after = env_float("AGENT_UNHEALTHY_AFTER", -1.0)
        self.ready_at = 0.0
        self.cache_size = int(env_float("AGENT_CACHE_MIB", 64) * (1 << 20))
        self.cache: StateArena | None = None
        self.cache_origin = ""
        self.listener: socket.socket | None = None
        self.stopped = self.loop.create_future()
        # Our own dups of the connections handed over at the last checkpoint, until
        # the relay's outcome is known: a RESUME without state (our answer could not
        # be kept) gives them back to us; anything else closes them.
        self.parked: list[tuple[str, socket.socket, bytes]] = []

    # ------------------------------------------------------------- start
    def load(self, loaded: Any) -> list[tuple[str, socket.socket, bytes]]:
        """Install a loaded/resumed state; returns the connections to adopt."""
        pending: dict[str, str] = {}
        if isinstance(loaded, dict) and loaded.get("version") == STATE_VERSION:
            self.contexts = {str(k): list(v) for k, v in loaded.get("contexts", {}).items()}
            pending = dict(loaded.get("pending", {}))
        arena = self.client.arena(CACHE_NAME)
        if arena is not None and arena is not self.cache:
            if arena.size == self.cache_size and arena.writable:
                old, self.cache = self.cache, arena
                self.cache_origin = "adopted"
                if old is not None:
                    old.close()
            else:
                say(f"ignoring a handed-over cache of {arena.size} bytes")
                arena.close()
        return [(name, sock, base64.b64decode(pending.get(name, "")))
                for name, sock in self.client.adopted_connections().items()]

    def adopt(self, conns: list[tuple[str, socket.socket, bytes]]) -> None:
        for name, sock, data in conns:
            sock.setblocking(False)
            self.connecting += 1
            task = self.loop.create_task(self.loop.connect_accepted_socket(
                functools.partial(Conn, self, name, data), sock))
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.connecting -= 1

    async def start(self, loaded: Any) -> None:
        conns = self.load(loaded)
        if self.cache is None:
            t0 = time.monotonic()
            self.cache = build_cache(self.cache_size)
            self.cache_origin = "built"
            say(f"cache built: {self.cache_size >> 20} MiB in {time.monotonic() - t0:.2f}s")
        self.client.share_arena(CACHE_NAME, self.cache)
        self.client.on_checkpoint(self.on_checkpoint, on_quiesce=self.on_quiesce,
                                  on_resume=self.on_resume)
        self.listener = self.client.get_listener_socket("http")
        if self.listener is None:
            host, _, port = os.environ.get("AGENT_ADDR", "127.0.0.1:8081").rpartition(":")
            self.listener = socket.create_server((host, int(port)), backlog=1024)
        self.listener.setblocking(False)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                 struct.pack("ll", 0, 20000))  # 20 ms
        self.adopt(conns)
        self.start_accepting()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.shutdown()))
        interval = env_float("AGENT_CHECKPOINT_INTERVAL", 1.0)
        if interval > 0 and self.client.srp_enabled:
            asyncio.ensure_future(self.saver(interval))
        self.ready_at = time.monotonic()
        say(f"serving sessions={len(self.contexts)} messages={self.message_count()} "
            f"cache={self.cache_origin} adopted_conns={len(conns)} "
            f"on {self.listener.getsockname()}")
        self.client.ready(status=f"serving {len(self.contexts)} sessions")

    # ------------------------------------------------------------ accepting
    def start_accepting(self) -> None:
        assert self.listener is not None
        if not self.accepting:
            self.accepting = True
            self.loop.add_reader(self.listener.fileno(), self.accept)

    def stop_accepting(self) -> None:
        if self.accepting and self.listener is not None:
            self.accepting = False
            self.loop.remove_reader(self.listener.fileno())

    def accept(self) -> None:
        assert self.listener is not None
        # O_NONBLOCK lives on the open file description that every generation and
        # the manager share; anyone may clear it (systemd's NonBlocking=no, another
        # app): set it again, and SO_RCVTIMEO bounds a blocking accept() anyway.
        os.set_blocking(self.listener.fileno(), False)
        for _ in range(64):
            if not self.accepting:
                return
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return  # the other generation took it: the queue is shared
            except OSError as exc:
                say(f"accept failed: {exc}")
                return
            self.serial += 1
            self.adopt([(f"c{GEN}-{self.serial}", sock, b"")])

    # ------------------------------------------------------------- routes
    def route(self, req: http11.Request) -> tuple[int, Any]:
        path = req.path.split("?", 1)[0]
        if path == "/chat":
            if req.method != "POST":
                return 405, {"error": "POST only"}
            return 200, self.chat(req.json())
        if req.method != "GET":
            return 405, {"error": "GET only"}
        if path.startswith("/context/"):
            session = path[len("/context/"):]
            if session not in self.contexts:
                return 404, {"error": f"no session {session!r}"}
            return 200, {"session": session, "messages": self.contexts[session],
                         "generation": int(GEN)}
        if path == "/cache":
            assert self.cache is not None
            return 200, {"size": self.cache.size, "sha256": self.cache.checksum(),
                         "origin": self.cache_origin, "generation": int(GEN),
                         "inode": os.fstat(self.cache.fileno()).st_ino
                         if self.cache.fileno() >= 0 else None}
        if path == "/healthz":
            if self.unhealthy_after >= 0 and time.monotonic() - self.ready_at > \
                    self.unhealthy_after:
                return 503, {"health": "unhealthy"}
            return 200, {"health": "ok"}
        if path == "/":
            return 200, {"generation": int(GEN), "pid": os.getpid(),
                         "sessions": len(self.contexts), "connections": len(self.conns)}
        return 404, {"error": "no such route"}

    def chat(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("session"), str) \
                or not isinstance(body.get("message"), str) or not body["session"]:
            raise http11.BadRequest(400, 'expected {"session": str, "message": str}')
        if self.quiesced:  # cannot happen: connections are paused first
            raise http11.BadRequest(503, "handing over")
        session, message = body["session"], body["message"]
        context = self.contexts.setdefault(session, [])
        context.append({"role": "user", "content": message})
        context.append({"role": "assistant", "content": self.reply(message, len(context) + 1)})
        self.dirty = True
        return {"session": session, "reply": context[-1]["content"],
                "messages": len(context), "generation": int(GEN)}

    def reply(self, message: str, n: int) -> str:
        assert self.cache is not None
        digest = hashlib.sha256(message.encode("utf-8")).digest()
        slots = self.cache.size // VECTOR
        slot = int.from_bytes(digest[:8], "big") % slots
        memory = self.cache.read(slot * VECTOR, 4).hex()
        return f"(gen {GEN}) I hear you about {message[:40]!r}: memory {memory}, message {n}."

    def message_count(self) -> int:
        return sum(len(v) for v in self.contexts.values())

    # -------------------------------------------------------- checkpoints
    def snapshot(self) -> dict[str, Any]:
        return {"version": STATE_VERSION,
                "contexts": {k: list(v) for k, v in self.contexts.items()}}

    async def saver(self, interval: float) -> None:
        """Crash safety: the conversations (not the cache) every ``interval`` if changed."""
        while not self.quiesced:
            await asyncio.sleep(interval)
            if self.dirty and not self.quiescing and not self.quiesced:
                self.dirty = False
                self.client.save_context(self.snapshot(), arenas=False)

    def on_checkpoint(self) -> dict[str, Any]:
        """SDK thread: run the hand-over on the loop and wait for it."""
        fut = asyncio.run_coroutine_threadsafe(self.quiesce(), self.loop)
        return fut.result(QUIESCE_WAIT + 5)

    async def quiesce(self) -> dict[str, Any]:
        """Stop taking work, let in-flight requests finish, snapshot, hand over."""
        self.quiescing = True
        self.stop_accepting()
        for conn in list(self.conns.values()):
            conn.pause()
        deadline = self.loop.time() + QUIESCE_WAIT
        while self.connecting or not all(c.settled() for c in self.conns.values()):
            if self.loop.time() > deadline:
                say("in-flight requests did not finish in time")
                break
            await asyncio.sleep(0.002)
        state = self.snapshot()
        pending: dict[str, str] = {}
        handoff: dict[str, socket.socket] = {}
        for name, conn in list(self.conns.items()):
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if len(handoff) >= MAX_HANDOFF:
                conn.transport.close()  # beyond what one message can carry
                continue
            pending[name] = base64.b64encode(bytes(conn.buf)).decode("ascii")
            handoff[name] = conn.detach()
            self.parked.append((name, handoff[name].dup(), bytes(conn.buf)))
        state["pending"] = pending
        self.client.handoff_connections(handoff)
        self.quiesced = True
        return state

    def on_quiesce(self, reason: str) -> None:
        say(f"quiesced reason={reason} sessions={len(self.contexts)} "
            f"messages={self.message_count()}")

    def on_resume(self, state: Any) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.resume(state), self.loop)
        fut.result(QUIESCE_WAIT)

    async def resume(self, state: Any) -> None:
        parked, self.parked = self.parked, []
        if state is not None:
            conns = self.load(state)  # the connections come back with the state
            for _name, sock, _data in parked:
                sock.close()
        else:  # "keep your own state": it is still here, and so are our dups
            conns = self.load({"version": STATE_VERSION, "contexts": self.contexts})
            conns += parked
        self.quiesced = self.quiescing = False
        self.adopt(conns)
        for conn in list(self.conns.values()):
            if conn.paused and not conn.closed and conn.transport is not None:
                conn.paused = False
                conn.transport.resume_reading()
                conn.pump()
        self.start_accepting()
        say(f"resumed sessions={len(self.contexts)} messages={self.message_count()} "
            f"adopted_conns={len(conns)}")

    # ------------------------------------------------------------- stop
    async def shutdown(self) -> None:
        """SIGTERM: a drain after a relay (nothing left to do) or a stop."""
        if not self.quiesced:
            self.client.stopping()
            self.quiescing = True
            self.stop_accepting()
            for conn in list(self.conns.values()):
                conn.pause()
            deadline = self.loop.time() + QUIESCE_WAIT
            while not all(c.settled() for c in self.conns.values()) and \
                    self.loop.time() < deadline:
                await asyncio.sleep(0.005)
            if self.dirty or self.client.srp_enabled:
                self.client.save_context(self.snapshot())  # with a copy of the cache
            for conn in list(self.conns.values()):
                if conn.transport is not None:
                    conn.transport.close()
        for _name, sock, _data in self.parked:
            sock.close()
        say(f"stopping sessions={len(self.contexts)} messages={self.message_count()}")
        if not self.stopped.done():
            self.stopped.set_result(None)


async def main(loaded: Any, client: AeternaClient) -> None:
    agent = Agent(client)
    await agent.start(loaded)
    await agent.stopped


if __name__ == "__main__":
    if os.environ.get("AGENT_DEBUG"):  # kill -USR1 <pid>: every thread's stack
        import faulthandler

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    client = AeternaClient()
    loaded = None
    if client.srp_enabled:
        loaded = client.load_context(timeout=env_float("AGENT_LOAD_TIMEOUT", 60.0))
        if loaded is None and client.srp_required and client.load_error != "none":
            # The relay will roll back: answers given now would be lost. Wait to be stopped.
            say(f"not serving: the state is required and could not be loaded "
                f"({client.load_error})")
            stop_signals = {signal.SIGTERM, signal.SIGINT}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
            sys.exit(0)
        if loaded is None:
            say(f"starting cold ({client.load_error})")
    asyncio.run(main(loaded, client))
