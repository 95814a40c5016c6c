"""A parent that starts a program the way systemd starts a Type=notify service.

It binds its listeners itself and keeps them for its whole life (systemd's
socket units), creates a real ``NOTIFY_SOCKET`` datagram socket (with
SO_PASSCRED, so each message carries the sender's pid), and starts the child
as systemd does: fork, the listeners moved to fd 3.., ``LISTEN_PID`` (the
child's own pid), ``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``NOTIFY_SOCKET``,
``WATCHDOG_USEC`` and ``WATCHDOG_PID`` set, then exec. It is single-threaded, so
the fork is safe. The watchdog is enforced as systemd does: once the child
said READY=1, no ``WATCHDOG=1`` for ``WATCHDOG_USEC`` and it gets SIGABRT.

It reports on stdout, one JSON object a line: ``started``, ``notify`` (the
sender's pid and the message's fields), ``exited``, ``watchdog-timeout``; and
takes commands on stdin, one a line: ``term``, ``hup``, ``restart`` (SIGTERM,
wait for the exit, start again with the same listeners), ``quit``.

    python tests/sdparent.py --notify PATH [--listen NAME=HOST:PORT]...
        [--watchdog-usec N] [--log FILE] -- PROGRAM ARGS...
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any

SD_LISTEN_FDS_START = 3


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


class Parent:
    def __init__(self, args: argparse.Namespace):
        self.argv: list[str] = args.argv
        self.log: str = args.log
        self.watchdog_usec: int = args.watchdog_usec
        self.listeners: list[tuple[str, socket.socket]] = []
        for item in args.listen:
            name, _, addr = item.partition("=")
            host, _, port = addr.rpartition(":")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
            s.listen(4096)
            self.listeners.append((name, s))
        self.notify_path: str = args.notify
        if os.path.exists(self.notify_path):
            os.unlink(self.notify_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.notify.bind(self.notify_path)
        self.notify.setblocking(False)
        self.pid = 0
        self.restart_pending = False
        self.last_ping = 0.0
        self.armed = False
        self.quit = False

    # ------------------------------------------------------------ the child
    def start(self) -> None:
        env = dict(os.environ)
        env.update(NOTIFY_SOCKET=self.notify_path)
        if self.listeners:
            env["LISTEN_FDS"] = str(len(self.listeners))
            env["LISTEN_FDNAMES"] = ":".join(n for n, _ in self.listeners)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        fds = [s.fileno() for _, s in self.listeners]
        pid = os.fork()
        if pid == 0:  # the child: what systemd's exec_child does, in order
            try:
                # Move the listeners out of the way first, then onto 3.. (dup2 clears
                # FD_CLOEXEC on the copy).
                high = [os.dup(fd) for fd in fds]
                for i, fd in enumerate(high):
                    os.dup2(fd, SD_LISTEN_FDS_START + i)
                out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(out, 1)
                os.dup2(out, 2)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                env["LISTEN_PID"] = str(os.getpid())
                if self.watchdog_usec:
                    env["WATCHDOG_PID"] = str(os.getpid())
                os.execve(self.argv[0], self.argv, env)
            finally:
                os._exit(127)
        self.pid = pid
        self.last_ping = time.monotonic()
        self.armed = False  # systemd.service(5): "activated when the start-up is completed"
        emit("started", pid=pid)

    def signal(self, sig: int) -> None:
        if self.pid:
            os.kill(self.pid, sig)

    def reap(self) -> None:
        while self.pid:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return
            emit("exited", pid=pid, status=os.waitstatus_to_exitcode(status))
            self.pid = 0
            if self.restart_pending:
                self.restart_pending = False
                self.start()

    # ------------------------------------------------------------- inputs
    def on_notify(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.notify.recvmsg(65536, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            sender = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = struct.unpack("iII", payload[:12])[0]
            text = data.decode("utf-8", "replace")
            fields = dict(line.partition("=")[::2] for line in text.split("\n") if line)
            if sender == self.pid and ("WATCHDOG" in fields or "READY" in fields):
                self.last_ping = time.monotonic()
                self.armed = self.armed or "READY" in fields
            emit("notify", pid=sender, fields=fields)

    def on_command(self) -> None:
        line = sys.stdin.readline()
        cmd = line.strip()
        if not line or cmd == "quit":
            self.quit = True
            self.signal(signal.SIGTERM)
        elif cmd == "term":
            self.signal(signal.SIGTERM)
        elif cmd == "hup":
            self.signal(signal.SIGHUP)
        elif cmd == "restart":
            self.restart_pending = True
            self.signal(signal.SIGTERM)

    def run(self) -> int:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(self.notify, selectors.EVENT_READ, self.on_notify)
        sel.register(sys.stdin, selectors.EVENT_READ, self.on_command)
        sel.register(rfd, selectors.EVENT_READ, lambda: os.read(rfd, 4096))
        self.start()
        while self.pid or self.restart_pending:
            timeout = None
            if self.watchdog_usec and self.pid and self.armed:
                timeout = max(0.0, self.last_ping + self.watchdog_usec / 1e6 - time.monotonic())
            for key, _ in sel.select(timeout):
                key.data()
            self.reap()
            if (self.watchdog_usec and self.pid and self.armed
                    and time.monotonic() - self.last_ping > self.watchdog_usec / 1e6):
                emit("watchdog-timeout", pid=self.pid)
                self.signal(signal.SIGABRT)  # systemd's default WatchdogSignal=
                self.last_ping = time.monotonic()
            if self.quit and not self.pid:
                break
        os.unlink(self.notify_path)
        return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--notify", required=True)
    p.add_argument("--listen", action="append", default=[])
    p.add_argument("--watchdog-usec", type=int, default=0)
    p.add_argument("--log", default=os.devnull, help="the child's stdout and stderr")
    p.add_argument("argv", nargs="+")
    return Parent(p.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
