"""AeternaClient: everything an app asks of Aeterna, and nothing outside it.

Outside Aeterna (no ``LISTEN_*``, ``NOTIFY_SOCKET`` or ``AETERNA_SRP_FD``)
every method is a harmless no-op: notifications return False, lookups return
None or ``{}``, ``load_context`` returns None at once. The app runs unchanged
on a laptop.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from . import activation, codec, notify, state, wire
from .arena import StateArena
from .channel import Channel

DEFAULT_LOAD_TIMEOUT = 60.0


class AeternaClient:
    """The app's side of socket activation, sd_notify and SRP.

    ``environ``: where to read the variables (default ``os.environ``; the SRP
    variable is removed from ``os.environ`` once claimed).
    ``allow_pickle``: accept ``FORMAT=pickle`` states. Off by default:
    unpickling runs code chosen by whoever wrote the bytes.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, allow_pickle: bool = False):
        self._env: Mapping[str, str] = os.environ if environ is None else environ
        self.allow_pickle = allow_pickle
        self.unit: str | None = self._env.get("AETERNA_UNIT") or None
        gen = self._env.get("AETERNA_GENERATION", "")
        self.generation: int | None = int(gen) if gen.isdigit() else None
        self._chan = Channel.claim(self._env)
        self._lock = threading.Lock()
        self._hello_sent = False
        self._arenas: dict[str, StateArena] = {}
        self._handoff: dict[str, socket.socket] = {}
        self._adopted: dict[str, socket.socket] = {}
        self._callback: Callable[[], Any] | None = None
        self._on_quiesce: Callable[[str], None] | None = None
        self._on_resume: Callable[[Any], None] | None = None
        self._format: str | None = None
        self._schema: int | None = None
        self.quiesced = False
        #: Metadata of the last state loaded or resumed (FORMAT, SCHEMA, SIZE...).
        self.loaded: dict[str, str] | None = None
        #: Why the last load_context returned None (``none``, ``timeout``,
        #: ``checksum``...), or None after a successful load.
        self.load_error: str | None = None
        if self._chan is not None:
            self._chan.handler = self._on_request

    # ---------------------------------------------------------- properties
    @property
    def in_aeterna(self) -> bool:
        """True when started by Aeterna (``AETERNA_UNIT`` is set)."""
        return self.unit is not None

    @property
    def srp_required(self) -> bool:
        """The unit says ``state_handoff.required: true`` (``AETERNA_SRP_REQUIRED=1``).

        Then a generation that could not load its predecessor's state should not
        serve: the relay rolls back and anything it acknowledged would be lost.
        """
        return self._env.get("AETERNA_SRP_REQUIRED") == "1"

    @property
    def srp_enabled(self) -> bool:
        """True when this generation has an SRP channel (``state_handoff`` on)."""
        return self._chan is not None and not self._chan.closed

    # ------------------------------------------------------ socket activation
    def get_listener_socket(self, name: str | None = None) -> socket.socket | None:
        """The passed listening socket called ``name`` (None: the first one), or None."""
        found = activation.listeners(self._env)
        if name is None:
            return next(iter(found.values()), None)
        return found.get(name)

    def listeners(self) -> dict[str, socket.socket]:
        """Every passed fd that is a socket, by name (``LISTEN_FDNAMES``).

        Fd-store entries that are sockets are included; those that are not
        (memfds, files, pipes) are in :meth:`stored_fds` instead.
        """
        return activation.listeners(self._env)

    def stored_fds(self) -> dict[str, int]:
        """Passed fds that are not sockets (fd-store entries), by name, as raw fds."""
        return activation.stored_fds(self._env)

    # --------------------------------------------------------------- notify
    def notify(self, message: str, fds: list[int] | None = None) -> bool:
        """Send raw sd_notify ``KEY=VALUE`` lines; False when there is no manager."""
        return notify.notify(message, self._env, fds or ())

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and ``STATUS=``): the app serves."""
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """One watchdog ping (``WATCHDOG=1``); ping every :meth:`watchdog_interval` seconds."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Half the watchdog timeout in seconds, or None without a watchdog for us."""
        usec = notify.watchdog_usec(self._env)
        return None if usec is None else usec / 2e6

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    # ------------------------------------------------------------ SRP: load
    def load_context(self, timeout: float = DEFAULT_LOAD_TIMEOUT,
                     validate: Callable[[Any], bool] | None = None) -> Any:
        """Ask for the predecessor's state (or the kept checkpoint); None if there is none.

        Sends ``HELLO WANT_STATE=1`` and waits (at most ``timeout`` seconds) for
        the manager's ``STATE=1``/``STATE=0``. A state whose CHECKSUM does not
        match, whose format is refused or that ``validate(obj)`` rejects
        (returns False or raises) is answered ``LOADED=0 ERROR=...`` and None is
        returned (``load_error`` says why); otherwise ``LOADED=1`` and the
        object. Arenas that came with it are in :meth:`arena`, connections in
        :meth:`adopted_connections`.
        """
        chan = self._chan
        if chan is None:
            self.load_error = "no-srp"
            return None
        q = chan.expect_state()
        self._hello_sent = True
        if not chan.send(wire.format_message("HELLO", 1, VERSION=wire.VERSION, WANT_STATE=1)):
            chan.cancel_state(q)
            self.load_error = "peer-gone"
            return None
        import queue

        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            item = None
            self.load_error = "timeout"
        finally:
            chan.cancel_state(q)
        if item is None:
            self.load_error = self.load_error or "peer-gone"
            return None
        msg, fds = item
        if not msg.ok:
            wire.close_fds(fds)
            self.load_error = msg.get("REASON") or "none"
            return None
        inc = self._accept(msg, fds, validate)
        if inc is None:
            return None
        chan.reply("LOADED", 1, SEQ=msg.seq)
        return inc.obj

    def _accept(self, msg: wire.Message, fds: list[int],
                validate: Callable[[Any], bool] | None) -> state.Incoming | None:
        """Decode, check, answer LOADED; keep arenas and connections on success."""
        assert self._chan is not None
        try:
            inc = state.receive(msg, fds, self.allow_pickle)
        except codec.CodecError as exc:
            self.load_error = exc.reason
            self._chan.reply("LOADED", 0, SEQ=msg.seq, ERROR=exc.reason)
            return None
        if validate is not None:
            try:
                ok = validate(inc.obj)
            except Exception:
                ok = False
            if not ok:
                inc.close()
                self.load_error = "invalid"
                self._chan.reply("LOADED", 0, SEQ=msg.seq, ERROR="invalid")
                return None
        with self._lock:
            for name, arena in inc.arenas.items():
                self._arenas[name] = arena
            self._adopted.update(inc.conns)
        self.loaded = dict(inc.meta)
        self.load_error = None
        return inc

    def arena(self, name: str) -> StateArena | None:
        """The arena called ``name`` received with the last state (or shared), or None."""
        with self._lock:
            return self._arenas.get(name)

    def adopted_connections(self) -> dict[str, socket.socket]:
        """Connections handed over with the last loaded state, by name.

        Ownership moves to the caller: a second call returns only what arrived since.
        """
        with self._lock:
            conns, self._adopted = self._adopted, {}
        return conns

    # ------------------------------------------------------ SRP: checkpoint
    def share_arena(self, name: str, arena: StateArena) -> None:
        """Include ``arena`` (kind ``arena``) in every checkpoint under ``name``.

        A relay checkpoint passes the live memfd (no copy; stop writing to it
        before your checkpoint callback returns); :meth:`save_context` passes a
        sealed copy, since the app goes on writing.
        """
        state.check_name(name)
        with self._lock:
            self._arenas[name] = arena

    def handoff_connections(self, conns: Mapping[str, socket.socket]) -> None:
        """Hand these connections over with the next answered CHECKPOINT (kind ``conn``).

        The SDK sends their fds with the checkpoint and then closes the socket
        objects given here (pass ``socket.dup()``s if something else owns them).
        """
        for name in conns:
            state.check_name(name)
        with self._lock:
            self._handoff.update(conns)

    def save_context(self, obj: Any, format: str | None = None,
                     schema: int | None = None, arenas: bool = True) -> bool:
        """An unsolicited checkpoint (``STATE=1`` without SEQ) the manager keeps.

        It survives a crash of the app (the next generation loads it) and, with
        ``persist_dir``, a restart of the manager. Shared arenas are copied
        (``arenas=False`` leaves them out: a cheap checkpoint of the object
        alone). It replaces the manager's previous checkpoint, so a state left
        without its arenas comes back without them.
        Returns False outside Aeterna, after a relay checkpoint (the state now
        belongs to the next generation) or if the channel is gone.
        """
        chan = self._chan
        if chan is None or chan.closed or self.quiesced:
            return False
        with self._lock:
            shared = dict(self._arenas) if arenas else {}
        out = state.build(obj, format or self._format, arenas=shared, conns={},
                          copy_arenas=True, schema=schema if schema is not None else self._schema)
        try:
            return chan.send(wire.format_message("STATE", 1, **out.fields), out.fds)
        finally:
            out.close()

    def on_checkpoint(self, callback: Callable[[], Any],
                      on_quiesce: Callable[[str], None] | None = None,
                      on_resume: Callable[[Any], None] | None = None,
                      format: str | None = None, schema: int | None = None) -> None:
        """Answer the manager's CHECKPOINT requests with ``callback()``'s state.

        A daemon thread listens on the SRP channel. On ``CHECKPOINT``:
        ``callback()`` returns the state object (or a StateArena). It runs on
        that thread: make it atomic with respect to your request handling (take
        your lock, stop accepting, finish in-flight work, then snapshot), since
        after a relay checkpoint anything you acknowledge is lost. The answer
        carries the object, the shared arenas (live) and the connections given
        to :meth:`handoff_connections`. Then ``on_quiesce(reason)`` is called
        (``relay`` or ``rollback``): take no new work.

        On ``RESUME`` (a failed relay gives the state back):
        ``on_resume(obj)`` gets the newest state (arenas in :meth:`arena`,
        connections in :meth:`adopted_connections`), or None when the manager
        resumes us without one (keep your own); take work again.

        ``format``: None (json, or bytes for a bytes-like state), ``"json"``,
        ``"bytes"`` or ``"pickle"`` (explicitly only: see ``codec``).
        """
        self._callback = callback
        self._on_quiesce = on_quiesce
        self._on_resume = on_resume
        self._format = format
        self._schema = schema
        if format is not None:
            codec.choose(None, format)
        chan = self._chan
        if chan is None:
            return
        chan.start()
        if not self._hello_sent:
            self._hello_sent = True
            chan.send(wire.format_message("HELLO", 1, VERSION=wire.VERSION, WANT_STATE=0))

    # ------------------------------------------------------------ requests
    def _on_request(self, msg: wire.Message, fds: list[int]) -> None:
        """Runs on the SRP thread: CHECKPOINT and RESUME."""
        assert self._chan is not None
        if msg.verb == "CHECKPOINT":
            wire.close_fds(fds)
            self._checkpoint(msg)
        else:
            self._resume(msg, fds)

    def _checkpoint(self, msg: wire.Message) -> None:
        assert self._chan is not None
        reason = msg.get("REASON") or "relay"
        callback = self._callback
        if callback is None:
            self._chan.reply("STATE", 0, SEQ=msg.seq, ERROR="no-checkpoint-callback")
            return
        try:
            obj = callback()
        except Exception as exc:
            self._chan.reply("STATE", 0, SEQ=msg.seq, ERROR=f"callback-{type(exc).__name__}")
            return
        with self._lock:
            arenas = dict(self._arenas)
            conns, self._handoff = self._handoff, {}
        try:
            out = state.build(obj, self._format, arenas=arenas, conns=conns,
                              copy_arenas=False, schema=self._schema)
        except (codec.CodecError, ValueError, OSError) as exc:
            for sock in conns.values():
                sock.close()
            reason = exc.reason if isinstance(exc, codec.CodecError) else "invalid"
            self._chan.reply("STATE", 0, SEQ=msg.seq, ERROR=reason)
            return
        try:
            sent = self._chan.send(wire.format_message("STATE", 1, SEQ=msg.seq, **out.fields),
                                   out.fds)
        except ValueError as exc:  # over the message size
            sent = False
            self._chan.reply("STATE", 0, SEQ=msg.seq, ERROR=str(exc)[:60])
        finally:
            out.close()
            for sock in conns.values():
                sock.close()
        if not sent:
            return
        self.quiesced = True
        if self._on_quiesce is not None:
            self._on_quiesce(reason)

    def _resume(self, msg: wire.Message, fds: list[int]) -> None:
        assert self._chan is not None
        handler = self._on_resume
        if handler is None:
            wire.close_fds(fds)
            self._chan.reply("LOADED", 0, SEQ=msg.seq, ERROR="no-resume-callback")
            return
        obj = None
        if fds or msg.get("FDKINDS"):
            inc = self._accept(msg, fds, None)
            if inc is None:
                return
            obj = inc.obj
        try:
            handler(obj)
        except Exception as exc:
            self._chan.reply("LOADED", 0, SEQ=msg.seq, ERROR=f"resume-{type(exc).__name__}")
            return
        self.quiesced = False
        self._chan.reply("LOADED", 1, SEQ=msg.seq)

    # ------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stop listening on the SRP channel (the process keeps its other fds)."""
        if self._chan is not None:
            self._chan.close()
