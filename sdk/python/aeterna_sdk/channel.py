"""The app's end of its SRP channel (docs/srp.md section 2) and its reader thread.

The manager puts a SOCK_SEQPACKET socket at fd ``AETERNA_SRP_FD``. We check
that it really is one, mark it close-on-exec and take the variable out of
``os.environ`` so our own children neither inherit the fd nor believe a stale
number. One daemon thread reads every message: it hands ``STATE`` replies to
whoever waits in ``load_context`` and ``CHECKPOINT``/``RESUME`` requests to the
client's handler. Sends are serialised by a lock.
"""

from __future__ import annotations

import fcntl
import os
import queue
import socket
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Optional

from . import wire

Handler = Callable[[wire.Message, "list[int]"], None]
Received = Optional[tuple[wire.Message, "list[int]"]]

_claim_lock = threading.Lock()
_process_channel: dict[int, Channel] = {}  # pid -> the channel claimed from os.environ


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.closed = False
        self.handler: Handler | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._waiter: queue.Queue[Received] | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- claim
    @classmethod
    def claim(cls, environ: Mapping[str, str]) -> Channel | None:
        """The channel named by ``AETERNA_SRP_FD`` in ``environ``, or None."""
        with _claim_lock:
            own = environ is os.environ
            if own and os.getpid() in _process_channel:
                return _process_channel[os.getpid()]
            raw = environ.get("AETERNA_SRP_FD", "")
            if not raw.isdigit():
                return None
            fd = int(raw)
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                return None
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
                sock.detach()  # not ours to close
                return None
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            chan = cls(sock)
            if own:
                _process_channel[os.getpid()] = chan
                if isinstance(environ, MutableMapping):
                    environ.pop("AETERNA_SRP_FD", None)
            return chan

    # --------------------------------------------------------------- send
    def send(self, data: bytes, fds: list[int] | None = None) -> bool:
        if self.closed:
            return False
        with self._send_lock:
            try:
                wire.send(self.sock, data, fds)
                return True
            except OSError:
                return False

    def reply(self, verb: str, value: int, **fields: object) -> bool:
        return self.send(wire.format_message(verb, value, **fields))

    # ------------------------------------------------------------- receive
    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self.closed:
                self._thread = threading.Thread(target=self._run, name="aeterna-srp",
                                                daemon=True)
                self._thread.start()

    def expect_state(self) -> queue.Queue[Received]:
        """Register the one waiter for the manager's STATE reply (before sending HELLO)."""
        q: queue.Queue[Received] = queue.Queue()
        with self._lock:
            self._waiter = q
            if self.closed:
                q.put(None)
        self.start()
        return q

    def cancel_state(self, q: queue.Queue[Received]) -> None:
        with self._lock:
            if self._waiter is q:
                self._waiter = None
        # Whatever arrived in between was not used: answer it and close its fds.
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._unwanted(*item)

    def _run(self) -> None:
        while True:
            rec = wire.recv(self.sock)
            if rec is None:
                break
            data, fds, truncated = rec
            msg = None if truncated else wire.parse(data)
            if msg is None:
                wire.close_fds(fds)
                continue
            try:
                self._dispatch(msg, fds)
            except Exception:  # a bug in a callback must not kill the channel
                wire.close_fds(fds)
        with self._lock:
            self.closed = True
            if self._waiter is not None:
                self._waiter.put(None)
                self._waiter = None

    def _dispatch(self, msg: wire.Message, fds: list[int]) -> None:
        if msg.verb == "STATE":
            with self._lock:
                waiter, self._waiter = self._waiter, None
            if waiter is not None:
                waiter.put((msg, fds))
            else:
                self._unwanted(msg, fds)
            return
        if msg.verb in ("CHECKPOINT", "RESUME"):
            handler = self.handler
            if handler is not None:
                handler(msg, fds)
                return
            wire.close_fds(fds)
            if msg.verb == "CHECKPOINT":
                self.reply("STATE", 0, SEQ=msg.seq, ERROR="no-checkpoint-callback")
            else:
                self.reply("LOADED", 0, SEQ=msg.seq, ERROR="no-resume-callback")
            return
        wire.close_fds(fds)

    def _unwanted(self, msg: wire.Message, fds: list[int]) -> None:
        """A state nobody waits for any more (load_context timed out): refuse it."""
        wire.close_fds(fds)
        if msg.ok and msg.seq is not None:
            self.reply("LOADED", 0, SEQ=msg.seq, ERROR="not-waiting")

    def close(self) -> None:
        """Shut the channel down, let the reader thread end, close the fd."""
        with self._lock:
            self.closed = True
            thread = self._thread
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        self.sock.close()
