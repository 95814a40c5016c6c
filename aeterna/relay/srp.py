"""The manager's side of SRP, the State Relay Protocol (docs/srp.md): channels and checkpoints.

Per unit: one SEQPACKET channel per generation, and the latest checkpoint
(fds the manager owns, never reads), persisted when ``persist_dir`` is set.
The relay handoff that uses them is :class:`aeterna.relay.handoff.Handoff`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..linux.fds import close_fds, discard_fds, peer_closed, recv_record
from ..linux.memfd import check_state
from ..log import Log
from ..model import StateHandoff
from ..unit.runtime import UnitRuntime
from ..wire.srp import SrpError, SrpMessage, format_message, parse, state_fields
from .handoff import Handoff, HandoffResult

if TYPE_CHECKING:
    from .relay import Relay

Reply = tuple[SrpMessage, list[int]]


class SrpHost(Protocol):
    log: Log

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def relay_of(self, name: str) -> Relay | None: ...
    def background(self, coro: Coroutine[Any, Any, None]) -> None: ...


@dataclass
class Checkpoint:
    fields: dict[str, str]
    fds: list[int]
    generation: int

    def close(self) -> None:
        close_fds(self.fds)


@dataclass
class Channel:
    """The manager's end of one generation's socketpair."""

    sock: socket.socket
    generation: int
    waiters: dict[tuple[str, int], asyncio.Future[Reply]] = field(default_factory=dict)
    closed: bool = False
    asked: bool = False  # HELLO WANT_STATE=1 was acted on; one per channel

    def send(self, data: bytes, fds: list[int] | None = None) -> bool:
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.send(data)
            return True
        except OSError:
            return False


class SrpUnit:
    """SRP for one unit: its channels and the checkpoint it keeps."""

    def __init__(self, host: SrpHost, runtime: UnitRuntime):
        self.host = host
        self.log = host.log
        self.runtime = runtime
        self.channels: dict[int, Channel] = {}
        self.latest: Checkpoint | None = None
        self._seq = 0
        self._persisting = False
        self._persist_again: str | None = None
        self.load_persisted()

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def settings(self) -> StateHandoff:
        """The serving definition's settings (a handoff carries N+1's)."""
        return self.runtime.spec.orchestration.state_handoff

    # ------------------------------------------------------------ channels
    def open_channel(self, generation: int) -> int:
        """A new socketpair; returns the child's end (the caller closes it after spawn)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        chan = Channel(ours, generation)
        self.channels[generation] = chan
        self.host.add_reader(ours.fileno(), lambda: self._readable(chan))
        return theirs.detach()

    def adopt_channel(self, generation: int, fd: int, asked: bool) -> None:
        """daemon-reexec: the previous manager's end of a live generation's channel.
        What the agent sent meanwhile waits in the socket's queue."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        chan = Channel(sock, generation, asked=asked)
        self.channels[generation] = chan
        self.host.add_reader(fd, lambda: self._readable(chan))

    def adopt_checkpoint(self, fields: dict[str, str], fds: list[int], generation: int,
                         seq: int) -> None:
        """daemon-reexec: the checkpoint the previous manager held (it wins over one
        restored from disk, which can only be older)."""
        if self.latest is not None:
            self.latest.close()
        self.latest = Checkpoint(fields, fds, generation) if fds or fields else None
        self._seq = max(self._seq, seq)

    @property
    def seq(self) -> int:
        return self._seq

    def has_channel(self, generation: int) -> bool:
        return generation in self.channels

    def _close_channel(self, chan: Channel) -> None:
        if chan.closed:
            return
        chan.closed = True
        self.host.remove_reader(chan.sock.fileno())
        chan.sock.close()
        self.channels.pop(chan.generation, None)
        for fut in chan.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("peer-gone"))

    def close(self) -> None:
        if self._persist_again is not None:  # a newer checkpoint than the thread's: now
            self.persist(self._persist_again)
            self._persist_again = None
        for chan in list(self.channels.values()):
            self._close_channel(chan)
        if self.latest is not None:
            self.latest.close()
            self.latest = None

    def _readable(self, chan: Channel) -> None:
        for _ in range(64):
            rec = recv_record(chan.sock)
            if rec is None:
                return
            data, fds, truncated = rec
            if not data and not fds:
                # SEQPACKET: a zero-length record reads like EOF; only a hang-up is one.
                if peer_closed(chan.sock):
                    self._close_channel(chan)
                    return
                self.log.warning("srp.dropped", unit=self.name, generation=chan.generation,
                                 reason="empty")
                continue
            try:
                if truncated:
                    raise SrpError("truncated")
                msg = parse(data)
            except SrpError as exc:
                discard_fds(fds)
                self.log.warning("srp.dropped", unit=self.name, generation=chan.generation,
                                 reason=exc.reason)
                continue
            self._on_message(chan, msg, fds)

    def _on_message(self, chan: Channel, msg: SrpMessage, fds: list[int]) -> None:
        seq = msg.seq
        waiter = chan.waiters.pop((msg.verb, seq), None) if seq is not None else None
        if waiter is not None and not waiter.done():
            waiter.set_result((msg, fds))
            return
        if msg.verb == "HELLO":
            discard_fds(fds)
            if msg.get("WANT_STATE") != "1":
                return
            if chan.asked:
                # One handoff per generation: a repeated HELLO must not make N
                # checkpoint again (5,000 HELLOs were 5,000 CHECKPOINTs).
                self.log.warning("srp.hello-repeated", unit=self.name,
                                 generation=chan.generation)
                return
            chan.asked = True
            self.host.background(self._want_state(chan.generation))
            return
        if msg.verb == "STATE" and msg.ok and seq is None:
            if chan.generation != self.runtime.generation:
                # A canary being rolled back, or a draining N, must not overwrite
                # the serving generation's checkpoint.
                close_fds(fds)
                self.log.info("srp.push-ignored", unit=self.name, generation=chan.generation,
                              reason="not the serving generation")
                return
            self._keep(msg, fds, chan.generation, "push", self.settings)
            return
        discard_fds(fds)
        self.log.debug("srp.unexpected", unit=self.name, verb=msg.verb, seq=seq)

    # ----------------------------------------------------------- checkpoints
    def _keep(self, msg: SrpMessage, fds: list[int], generation: int, how: str,
              settings: StateHandoff) -> str | None:
        """Check and keep a checkpoint as the latest; returns the rejection reason."""
        reason = check_state(msg, fds, settings.max_size)
        if reason is not None:
            close_fds(fds)
            self.log.warning("srp.rejected", unit=self.name, generation=generation, how=how,
                             reason=reason)
            return reason
        if self.latest is not None:
            self.latest.close()
        self.latest = Checkpoint(state_fields(msg), fds, generation)
        self.log.info("srp.checkpoint", unit=self.name, generation=generation, how=how,
                      size=msg.get("SIZE"), fds=len(fds))
        if settings.persist_dir:
            self.persist_soon(settings.persist_dir)
        return None

    async def _request(self, generation: int, verb: str, reply_verb: str, timeout: float,
                       fds: list[int] | None = None, **fields: object) -> Reply | str:
        """Send a message carrying a new SEQ and wait for the matching reply; or the
        word for why not: "timeout", "peer-gone"."""
        chan = self.channels.get(generation)
        if chan is None:
            return "peer-gone"
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        chan.waiters[(reply_verb, seq)] = fut
        if not chan.send(format_message(verb, 1, SEQ=seq, **fields), fds):
            chan.waiters.pop((reply_verb, seq), None)
            return "peer-gone"
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            chan.waiters.pop((reply_verb, seq), None)
            return "timeout"
        except ConnectionError:
            return "peer-gone"

    async def checkpoint(self, generation: int, reason: str,
                         settings: StateHandoff) -> HandoffResult | None:
        """Ask ``generation`` for its state and keep it; None on success, else why not."""
        reply = await self._request(generation, "CHECKPOINT", "STATE", settings.timeout,
                                    REASON=reason)
        if isinstance(reply, str):
            return (HandoffResult.CHECKPOINT_TIMEOUT if reply == "timeout"
                    else HandoffResult.PEER_GONE)
        msg, fds = reply
        if not msg.ok:
            close_fds(fds)
            return HandoffResult.CHECKPOINT_REFUSED
        if self._keep(msg, fds, generation, reason, settings) is not None:
            return HandoffResult.REJECTED
        return None

    async def give(self, generation: int, settings: StateHandoff,
                   verb: str = "STATE") -> HandoffResult | None:
        """Send the latest checkpoint (or STATE=0 none); None once LOADED=1 came back."""
        if self.latest is None:
            chan = self.channels.get(generation)
            if chan is not None:
                chan.send(format_message("STATE", 0, REASON="none"))
            return HandoffResult.NONE
        reply = await self._request(generation, verb, "LOADED", settings.timeout,
                                    list(self.latest.fds), **self.latest.fields)
        if isinstance(reply, str):
            return HandoffResult.LOAD_TIMEOUT if reply == "timeout" else HandoffResult.PEER_GONE
        msg, fds = reply
        close_fds(fds)
        if not msg.ok:
            self.log.warning("srp.load-failed", unit=self.name, generation=generation,
                             error=msg.get("ERROR"))
            return HandoffResult.LOAD_FAILED
        self._release_connections()
        return None

    async def resume_own(self, generation: int, settings: StateHandoff, reason: str) -> str:
        """``RESUME=1`` without fds: keep the state you have and take work again."""
        reply = await self._request(generation, "RESUME", "LOADED", settings.timeout,
                                    REASON=reason)
        if isinstance(reply, str):
            return reply
        close_fds(reply[1])
        return "keep-own-state"

    def _release_connections(self) -> None:
        """The receiver adopted the connections: our copies must go, or a client
        would see no FIN when its new owner closes, and a later generation could
        be handed a connection that is already someone else's."""
        ck = self.latest
        if ck is None or "conn" not in _split(ck.fields.get("FDKINDS", "")):
            return
        kinds = _split(ck.fields.get("FDKINDS", ""))
        names = _split(ck.fields.get("FDNAMES", ""))
        keep = [i for i, kind in enumerate(kinds) if kind != "conn"]
        for i, fd in enumerate(ck.fds):
            if i < len(kinds) and kinds[i] == "conn":
                os.close(fd)
        ck.fds = [ck.fds[i] for i in keep]
        ck.fields["FDKINDS"] = ":".join(kinds[i] for i in keep)
        if names:
            ck.fields["FDNAMES"] = ":".join(names[i] for i in keep)

    def refuse(self, generation: int, reason: str) -> None:
        chan = self.channels.get(generation)
        if chan is not None:
            chan.send(format_message("STATE", 0, REASON=reason))

    # -------------------------------------------------------------- flows
    async def _want_state(self, generation: int) -> None:
        """A generation asked for state: a relay handoff, or the kept checkpoint."""
        relay = self.host.relay_of(self.name)
        if relay is not None and relay.generation == generation:
            await self.hand_over(relay)
            return
        outcome = await self.give(generation, self.settings)
        self.log.info("srp.restore", unit=self.name, generation=generation,
                      outcome=outcome.value if outcome else "loaded")

    async def hand_over(self, relay: Relay) -> None:
        """docs/srp.md §5: N checkpoints, the manager checks, N+1 loads."""
        settings = relay.spec.orchestration.state_handoff
        handoff = Handoff(self, self.runtime.generation, relay.generation, settings)
        relay.handoff_started(handoff)
        try:
            result = await handoff.run(serving_alive=self.runtime.main_pid is not None)
        finally:
            relay.handoff_settled()
        self.log.info("srp.handoff", unit=self.name, generation=relay.generation,
                      outcome=result.value)
        if not handoff.failed:
            return
        if settings.required:
            relay.handoff_failed(result)
        elif result is not HandoffResult.LOAD_FAILED:
            self.refuse(relay.generation, result.value)

    async def rollback(self, handoff: Handoff) -> None:
        """N was asked to checkpoint, so it may have stopped taking work: resume it."""
        if not handoff.checkpointed:
            return
        outcome = await handoff.rollback()
        self.log.info("srp.resume", unit=self.name, generation=handoff.serving, outcome=outcome)

    # --------------------------------------------------------- persistence
    def _persist_path(self, directory: str) -> str:
        return os.path.join(directory, f"{self.name}.srp")

    def persist_soon(self, directory: str) -> None:
        """Persist the latest checkpoint in a thread; one write at a time, the newest wins.

        Writing 4 x 256 MiB on the loop stalled it for over a second. The thread
        reads dups of the memfds, so a newer checkpoint may replace (and close)
        this one meanwhile. That is sound for sealed snapshots only: an ``arena``
        is writable, and its bytes are the state only at the moment it is handed
        over, so a checkpoint holding one is written at once, on the loop.
        """
        ck = self.latest
        if ck is None:
            return
        kinds = _split(ck.fields.get("FDKINDS", ""))
        if "arena" in kinds and not self._persisting:
            self.persist(directory)
            return
        if self._persisting:
            self._persist_again = directory
            return
        blobs = [os.dup(fd) for fd, k in zip(ck.fds, kinds, strict=False) if k != "conn"]
        self._persisting = True
        self.host.background(self._persist_in_thread(directory, dict(ck.fields), blobs,
                                                     ck.generation))

    async def _persist_in_thread(self, directory: str, fields: dict[str, str],
                                 blobs: list[int], generation: int) -> None:
        try:
            await asyncio.to_thread(_write_checkpoint, self._persist_path(directory),
                                    fields, blobs, generation)
        except OSError as exc:
            self.log.warning("srp.persist-failed", unit=self.name, error=str(exc))
        finally:
            close_fds(blobs)
            self._persisting = False
        again, self._persist_again = self._persist_again, None
        if again is not None:
            self.persist_soon(again)

    def persist(self, directory: str) -> None:
        """Write the latest checkpoint now, on the caller's thread."""
        ck = self.latest
        if ck is None:
            return
        kinds = _split(ck.fields.get("FDKINDS", ""))
        blobs = [fd for fd, k in zip(ck.fds, kinds, strict=False) if k != "conn"]
        _write_checkpoint(self._persist_path(directory), ck.fields, blobs, ck.generation)

    def load_persisted(self) -> None:
        """At manager start: the persisted checkpoint back into sealed memfds."""
        settings = self.settings
        if not settings.enabled or not settings.persist_dir:
            return
        path = self._persist_path(settings.persist_dir)
        try:
            f = open(path, "rb")  # noqa: SIM115
        except OSError:
            return
        with f:
            try:
                header = json.loads(f.readline())
                fields: dict[str, str] = dict(header["fields"])
                sizes = [int(s) for s in header["sizes"]]
            except (ValueError, KeyError, TypeError):
                self.log.warning("srp.persisted-unreadable", unit=self.name)
                return
            from ..linux.memfd import sealed_from_file

            kinds = [k for k in _split(fields.get("FDKINDS", "")) if k != "conn"]
            fds = [sealed_from_file(f, size, kind)
                   for size, kind in zip(sizes, kinds, strict=False)]
        kept = [(n, k) for n, k in zip(fields.get("FDNAMES", "").split(":"),
                                       fields.get("FDKINDS", "").split(":"), strict=False)
                if k != "conn"]
        fields["FDNAMES"] = ":".join(n for n, _ in kept)
        fields["FDKINDS"] = ":".join(k for _, k in kept)
        self.latest = Checkpoint(fields, fds, int(header.get("generation", 0)))
        self.log.info("srp.restored-from-disk", unit=self.name, size=sum(sizes), path=path)


def _write_checkpoint(path: str, fields: dict[str, str], blobs: list[int],
                      generation: int) -> None:
    """Write a checkpoint atomically: temp file, fsync, rename (the blobs are only read)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"  # the loop's and a thread's
    header = {"fields": fields, "sizes": [os.fstat(fd).st_size for fd in blobs],
              "generation": generation}
    with open(tmp, "wb") as f:
        f.write(json.dumps(header).encode() + b"\n")
        for fd in blobs:
            offset, size = 0, os.fstat(fd).st_size
            while offset < size:
                chunk = os.pread(fd, min(1 << 20, size - offset), offset)
                if not chunk:
                    break
                f.write(chunk)
                offset += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _split(text: str) -> list[str]:
    """A colon-separated FDKINDS=/FDNAMES= list ("" is none)."""
    return text.split(":") if text else []
