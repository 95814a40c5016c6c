"""The manager's side of SRP, the State Relay Protocol (docs/srp.md).

Per unit: one SEQPACKET channel per generation, the latest checkpoint (fds the
manager owns, never reads), and the handoff that runs during a relay:
N+1 asks -> N checkpoints -> seals and sizes are checked -> N+1 loads. On a
rollback the newest state goes back to N with ``RESUME=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..linux.fds import close_fds as close_all
from ..linux.fds import recv_record
from ..linux.memfd import check_state
from ..wire.srp import SrpError, SrpMessage, format_message, parse, state_fields

if TYPE_CHECKING:
    from ..manager.manager import Manager
    from ..unit.runtime import UnitRuntime
    from .relay import Relay

Reply = tuple[SrpMessage, list[int]]


@dataclass
class Checkpoint:
    fields: dict[str, str]
    fds: list[int]
    generation: int

    def close(self) -> None:
        close_all(self.fds)


@dataclass
class Channel:
    """The manager's end of one generation's socketpair."""

    sock: socket.socket
    generation: int
    waiters: dict[tuple[str, int], asyncio.Future[Reply]] = field(default_factory=dict)
    closed: bool = False

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
    """SRP for one unit: channels, the kept checkpoint, handoffs and rollbacks."""

    def __init__(self, manager: Manager, runtime: UnitRuntime):
        self.m = manager
        self.runtime = runtime
        self.channels: dict[int, Channel] = {}
        self.latest: Checkpoint | None = None
        self._seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._relay_settings: Any = None  # during a relay: N+1's definition decides
        self.load_persisted()

    @property
    def settings(self) -> Any:
        if self._relay_settings is not None:
            return self._relay_settings
        return self.runtime.unit.orchestration.state_handoff

    # ------------------------------------------------------------ channels
    def open_channel(self, generation: int) -> int:
        """A new socketpair; returns the child's end (the caller closes it after spawn)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        chan = Channel(ours, generation)
        self.channels[generation] = chan
        assert self.m.loop is not None
        self.m.loop.add_reader(ours.fileno(), self._readable, chan)
        fd = theirs.detach()
        return fd

    def _close_channel(self, chan: Channel) -> None:
        if chan.closed:
            return
        chan.closed = True
        assert self.m.loop is not None
        self.m.loop.remove_reader(chan.sock.fileno())
        chan.sock.close()
        self.channels.pop(chan.generation, None)
        for fut in chan.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("peer-gone"))

    def close(self) -> None:
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
                self._close_channel(chan)
                return
            try:
                if truncated:
                    raise SrpError("truncated")
                msg = parse(data)
            except SrpError as exc:
                close_all(fds)
                self.m.log.warning("srp.dropped", unit=self.runtime.name,
                                   generation=chan.generation, reason=exc.reason)
                continue
            self._on_message(chan, msg, fds)

    def _on_message(self, chan: Channel, msg: SrpMessage, fds: list[int]) -> None:
        seq = msg.seq
        waiter = chan.waiters.pop((msg.verb, seq), None) if seq is not None else None
        if waiter is not None and not waiter.done():
            waiter.set_result((msg, fds))
            return
        if msg.verb == "HELLO":
            close_all(fds)
            if msg.get("WANT_STATE") == "1":
                self._spawn_task(self._want_state(chan.generation))
            return
        if msg.verb == "STATE" and msg.ok and seq is None:
            if chan.generation != self.runtime.generation:
                # A canary being rolled back, or a draining N, must not overwrite
                # the serving generation's checkpoint.
                close_all(fds)
                self.m.log.info("srp.push-ignored", unit=self.runtime.name,
                                generation=chan.generation, reason="not the serving generation")
                return
            self._keep(msg, fds, chan.generation, "push")
            return
        close_all(fds)
        self.m.log.debug("srp.unexpected", unit=self.runtime.name, verb=msg.verb, seq=seq)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------- checkpoints
    def _keep(self, msg: SrpMessage, fds: list[int], generation: int, how: str) -> str | None:
        """Check and keep a checkpoint as the latest; returns the rejection reason."""
        reason = check_state(msg, fds, self.settings.max_size)
        if reason is not None:
            close_all(fds)
            self.m.log.warning("srp.rejected", unit=self.runtime.name, generation=generation,
                               how=how, reason=reason)
            return reason
        if self.latest is not None:
            self.latest.close()
        self.latest = Checkpoint(state_fields(msg), fds, generation)
        self.m.log.info("srp.checkpoint", unit=self.runtime.name, generation=generation,
                        how=how, size=msg.get("SIZE"), fds=len(fds))
        if self.settings.persist_dir:
            self.persist()
        return None

    async def _request(self, generation: int, verb: str, reply_verb: str,
                       fds: list[int] | None = None, **fields: object) -> Reply | str:
        """Send a message carrying a new SEQ and wait for the matching reply."""
        chan = self.channels.get(generation)
        if chan is None:
            return "peer-gone"
        self._seq += 1
        seq = self._seq
        assert self.m.loop is not None
        fut: asyncio.Future[Reply] = self.m.loop.create_future()
        chan.waiters[(reply_verb, seq)] = fut
        if not chan.send(format_message(verb, 1, SEQ=seq, **fields), fds):
            chan.waiters.pop((reply_verb, seq), None)
            return "peer-gone"
        try:
            return await asyncio.wait_for(fut, self.settings.timeout)
        except TimeoutError:
            chan.waiters.pop((reply_verb, seq), None)
            return "timeout"
        except ConnectionError:
            return "peer-gone"

    async def checkpoint(self, generation: int, reason: str) -> str | None:
        """Ask ``generation`` for its state and keep it; None on success, else why not."""
        reply = await self._request(generation, "CHECKPOINT", "STATE", REASON=reason)
        if isinstance(reply, str):
            return "checkpoint-timeout" if reply == "timeout" else reply
        msg, fds = reply
        if not msg.ok:
            close_all(fds)
            return "checkpoint-refused"
        return "rejected" if self._keep(msg, fds, generation, reason) else None

    async def give(self, generation: int, verb: str = "STATE") -> str | None:
        """Send the latest checkpoint (or STATE=0 none); None once LOADED=1 came back."""
        if self.latest is None:
            chan = self.channels.get(generation)
            if chan is not None:
                chan.send(format_message("STATE", 0, REASON="none"))
            return "none"
        reply = await self._request(generation, verb, "LOADED", list(self.latest.fds),
                                    **self.latest.fields)
        if isinstance(reply, str):
            return "load-timeout" if reply == "timeout" else reply
        msg, fds = reply
        close_all(fds)
        if not msg.ok:
            self.m.log.warning("srp.load-failed", unit=self.runtime.name,
                               generation=generation, error=msg.get("ERROR"))
            return "load-failed"
        self._release_connections()
        return None

    def _release_connections(self) -> None:
        """The receiver adopted the connections: our copies must go, or a client
        would see no FIN when its new owner closes, and a later generation could
        be handed a connection that is already someone else's."""
        ck = self.latest
        if ck is None:
            return
        kinds = ck.fields.get("FDKINDS", "").split(":") if ck.fields.get("FDKINDS") else []
        if "conn" not in kinds:
            return
        names = ck.fields.get("FDNAMES", "").split(":") if ck.fields.get("FDNAMES") else []
        keep_fds, keep_names, keep_kinds = [], [], []
        for i, (fd, kind) in enumerate(zip(ck.fds, kinds, strict=False)):
            if kind == "conn":
                os.close(fd)
                continue
            keep_fds.append(fd)
            keep_kinds.append(kind)
            if names:
                keep_names.append(names[i])
        ck.fds = keep_fds
        ck.fields["FDKINDS"] = ":".join(keep_kinds)
        if names:
            ck.fields["FDNAMES"] = ":".join(keep_names)

    def refuse(self, generation: int, reason: str) -> None:
        chan = self.channels.get(generation)
        if chan is not None:
            chan.send(format_message("STATE", 0, REASON=reason))

    # -------------------------------------------------------------- flows
    async def _want_state(self, generation: int) -> None:
        """A generation asked for state: a relay handoff, or the kept checkpoint."""
        relay = self.m.relays.current.get(self.runtime.name)
        if relay is not None and relay.generation == generation:
            await self.handoff(relay)
            return
        outcome = await self.give(generation)
        self.m.log.info("srp.restore", unit=self.runtime.name, generation=generation,
                        outcome=outcome or "loaded")

    async def handoff(self, relay: Relay) -> None:
        """docs/srp.md §5: N checkpoints, the manager checks, N+1 loads."""
        self._relay_settings = relay.unit.orchestration.state_handoff
        serving = self.runtime.generation
        reason: str | None = None
        if serving in self.channels and self.runtime.main_pid is not None:
            # From here on N may have stopped taking work, whatever its answer:
            # a rollback must tell it to resume.
            relay.handoff_checkpointed = True
            reason = await self.checkpoint(serving, "relay")
            relay.handoff_fresh = reason is None
        if reason is None:
            reason = await self.give(relay.generation)
            if reason == "none" and not relay.handoff_checkpointed:
                reason = None  # nothing to hand over is not a failure
        relay.handoff = reason or "ok"
        required = self.settings.required
        self._relay_settings = None
        self.m.log.info("srp.handoff", unit=self.runtime.name, generation=relay.generation,
                        outcome=relay.handoff)
        if reason is None:
            return
        if required:
            from .relay import Reason, RelayFailed

            relay.fail(RelayFailed(Reason.HANDOFF, reason))
        elif reason not in ("load-failed", "none"):
            self.refuse(relay.generation, reason)

    async def rollback(self, relay: Relay) -> None:
        """N was asked to checkpoint, so it may have stopped taking work: resume it.

        With the newest state (N+1's, if it loaded N's and can still checkpoint;
        else the one N gave). If no state of this relay was kept (N's answer was
        late or rejected), N is told to keep its own: ``RESUME=1`` without fds.
        """
        if not relay.handoff_checkpointed:
            return
        self._relay_settings = relay.unit.orchestration.state_handoff
        try:
            if relay.handoff == "ok" and relay.generation in self.channels:
                why = await self.checkpoint(relay.generation, "rollback")
                relay.handoff_fresh = relay.handoff_fresh or why is None
                self.m.log.info("srp.rollback-checkpoint", unit=self.runtime.name,
                                generation=relay.generation, outcome=why or "ok")
            serving = self.runtime.generation
            if relay.handoff_fresh and self.latest is not None:
                outcome = await self.give(serving, verb="RESUME")
            else:
                # No fds: "keep the state you have and take work again".
                reply = await self._request(serving, "RESUME", "LOADED",
                                            REASON=relay.handoff or "rollback")
                if isinstance(reply, str):
                    outcome = reply
                else:
                    close_all(reply[1])
                    outcome = "keep-own-state"
            self.m.log.info("srp.resume", unit=self.runtime.name, generation=serving,
                            outcome=outcome or "loaded")
        finally:
            self._relay_settings = None

    # --------------------------------------------------------- persistence
    def _persist_path(self) -> str:
        return os.path.join(self.settings.persist_dir, f"{self.runtime.name}.srp")

    def persist(self) -> None:
        """Write the latest checkpoint atomically: temp file, fsync, rename."""
        ck = self.latest
        if ck is None:
            return
        kinds = ck.fields.get("FDKINDS", "").split(":")
        blobs = [fd for fd, k in zip(ck.fds, kinds, strict=False) if k != "conn"]
        path = self._persist_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        header = {"fields": ck.fields, "sizes": [os.fstat(fd).st_size for fd in blobs],
                  "generation": ck.generation}
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

    def load_persisted(self) -> None:
        """At manager start: the persisted checkpoint back into sealed memfds."""
        if not self.settings.enabled or not self.settings.persist_dir:
            return
        try:
            f = open(self._persist_path(), "rb")  # noqa: SIM115
        except OSError:
            return
        with f:
            try:
                header = json.loads(f.readline())
                fields: dict[str, str] = dict(header["fields"])
                sizes = [int(s) for s in header["sizes"]]
            except (ValueError, KeyError, TypeError):
                self.m.log.warning("srp.persisted-unreadable", unit=self.runtime.name)
                return
            from ..linux.memfd import sealed_from_file

            kinds = [k for k in fields.get("FDKINDS", "").split(":") if k != "conn"]
            fds = [sealed_from_file(f, size, kind) for size, kind in zip(sizes, kinds,
                                                                        strict=False)]
        names = fields.get("FDNAMES", "").split(":")
        allkinds = fields.get("FDKINDS", "").split(":")
        kept = [(n, k) for n, k in zip(names, allkinds, strict=False) if k != "conn"]
        fields["FDNAMES"] = ":".join(n for n, _ in kept)
        fields["FDKINDS"] = ":".join(k for _, k in kept)
        self.latest = Checkpoint(fields, fds, int(header.get("generation", 0)))
        self.m.log.info("srp.restored-from-disk", unit=self.runtime.name,
                        size=sum(sizes), path=self._persist_path())
