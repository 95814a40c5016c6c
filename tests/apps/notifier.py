"""A scriptable sd_notify client: each argument is one step, run in order.

Steps (``\\n`` in a payload is a newline):

``send:PAYLOAD``        send PAYLOAD from this process to $NOTIFY_SOCKET
``child:PAYLOAD``       fork a child that sends PAYLOAD and waits on a barrier (so the
                        manager has handled it while the child still exists: a dead,
                        reaped sender can no longer be told apart from an outsider),
                        then wait for the child to exit
``print:TEXT``          print TEXT (all output goes to stderr)
``env``                 print ``ENV {json}`` of the activation variables
``sleep:SECONDS``
``waitfile:PATH``       wait (at most 20 s) until PATH exists
``pings:INTERVAL:N``    send WATCHDOG=1 N times, INTERVAL seconds apart
``exit:CODE``
``forever``             sleep until a signal ends the process
``reload:MODE``         on SIGHUP: ``good`` answers RELOADING=1 with MONOTONIC_USEC, then
                        READY=1; ``nostamp`` sends RELOADING=1 without MONOTONIC_USEC,
                        then READY=1; ``ignore`` does nothing
``store-memfd:NAME:DATA``  store a memfd holding DATA under NAME (FDSTORE=1)
``store-twice:NAME:DATA``  the same, but the one memfd twice in one datagram
``store-pipe:NAME[:nopoll]``  store a pipe's read end under NAME, then close our ends
                        (its writer is gone: a polled entry must be dropped)
``show-fds``            print ``FD i name kind data`` for every LISTEN_FDS fd
``fuzz:N:SEED``         send N random datagrams that an authorised main process could
                        send without changing the unit's state (fd-store traffic with
                        pipes, memfds and sockets attached, bad barriers, junk), then
                        remove every fd-store name it used
"""

import json
import os
import resource
import select
import signal
import socket
import stat
import sys
import time


def say(text: str) -> None:
    # stderr, like the manager's own log: one stream keeps their relative order.
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def notify(payload: str, fds: list[int] | None = None) -> None:
    addr = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        data = payload.replace("\\n", "\n").encode()
        if fds:
            socket.send_fds(s, [data], fds)
        else:
            s.send(data)


def barrier(timeout: float = 5.0) -> bool:
    """sd_notify_barrier(): the manager closes the fd once it has read everything before."""
    r, w = os.pipe()
    try:
        notify("BARRIER=1", [w])
        os.close(w)
        w = -1
        p = select.poll()
        p.register(r, 0)
        return bool(p.poll(timeout * 1000))
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


FUZZ_NAMES = ["a", "b", "c", "stored", "bad:name", ""]
FUZZ_LINES = [b"FDSTORE=1", b"FDSTOREREMOVE=1", b"FDPOLL=0", b"STATUS=fuzz", b"X_JUNK=1",
              b"BARRIER=1", b"MAINPIDFD=1", b"ERRNO=EIO", b"WATCHDOG=1", b"STOPPING=0",
              b"READY=0", b"FDSTORE=0", b"\xff\xfe", b"=", b"FDNAME"]


def fuzz(count: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    addr = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.connect(addr)
        for _ in range(count):
            lines = [rng.choice(FUZZ_LINES) for _ in range(rng.randrange(0, 5))]
            if rng.random() < 0.6:
                lines.append(b"FDSTORE=1")
            if rng.random() < 0.7:
                lines.append(b"FDNAME=" + rng.choice(FUZZ_NAMES).encode())
            rng.shuffle(lines)
            payload = b"\n".join(lines)
            if rng.random() < 0.05:
                payload += b"\0junk"  # NUL inside: dropped whole
            if rng.random() < 0.05:
                payload = b"STATUS=" + b"z" * 5000  # too large
            opened: list[int] = []
            kind = rng.random()
            if kind < 0.3:
                r, w = os.pipe()
                opened = [r, w]
            elif kind < 0.5:
                opened = [os.memfd_create("fuzz")]
            elif kind < 0.6:
                a, b = socket.socketpair()
                opened = [a.detach(), b.detach()]
            fds = opened * rng.randrange(1, 3) if opened else []
            if fds:
                socket.send_fds(s, [payload], fds)
            else:
                s.send(payload)
            for fd in opened:
                os.close(fd)
        for name in FUZZ_NAMES:
            s.send(b"FDSTOREREMOVE=1\nFDNAME=" + name.encode())


def on_hup(mode: str):
    def handler(_sig, _frame):
        if mode == "ignore":
            return
        if mode == "good":
            now = time.monotonic_ns() // 1000
            notify(f"RELOADING=1\nMONOTONIC_USEC={now}")
        else:
            notify("RELOADING=1")
        say("reloaded")
        notify("READY=1")

    return handler


def show_fds() -> None:
    n = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":") if n else []
    say(f"LISTEN_FDS={n} LISTEN_FDNAMES={':'.join(names)}")
    for i in range(n):
        fd = 3 + i
        mode = os.fstat(fd).st_mode
        if stat.S_ISSOCK(mode):
            kind, data = "socket", ""
        elif stat.S_ISFIFO(mode):
            os.set_blocking(fd, False)
            try:
                kind, data = "fifo", os.read(fd, 100).decode() or "<eof>"
            except BlockingIOError:
                kind, data = "fifo", "<empty>"
        else:
            kind, data = "file", os.pread(fd, 100, 0).decode()
        say(f"FD {fd} {names[i]} {kind} {data}")


def main(steps: list[str]) -> int:
    for step in steps:
        verb, _, arg = step.partition(":")
        if verb == "send":
            notify(arg)
        elif verb == "child":
            pid = os.fork()
            if pid == 0:
                try:
                    notify(arg)
                    say(f"child {os.getpid()} barrier={barrier()}")
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            say(f"child {pid} sent")
        elif verb == "print":
            say(arg)
        elif verb == "env":
            env = {k: v for k, v in os.environ.items()
                   if k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_", "FDSTORE", "AETERNA_"))}
            env["getpid"] = str(os.getpid())
            say("ENV " + json.dumps(env, sort_keys=True))
        elif verb == "sleep":
            time.sleep(float(arg))
        elif verb == "waitfile":
            deadline = time.monotonic() + 20
            while not os.path.exists(arg):
                if time.monotonic() > deadline:
                    say(f"waitfile {arg}: timed out")
                    return 3
                time.sleep(0.01)
        elif verb == "pings":
            interval, _, count = arg.partition(":")
            for _ in range(int(count)):
                notify("WATCHDOG=1")
                time.sleep(float(interval))
        elif verb == "exit":
            return int(arg)
        elif verb == "forever":
            while True:
                time.sleep(3600)
        elif verb == "reload":
            signal.signal(signal.SIGHUP, on_hup(arg))
        elif verb in ("store-memfd", "store-twice"):
            name, _, data = arg.partition(":")
            fd = os.memfd_create(name)
            os.write(fd, data.encode())
            notify(f"FDSTORE=1\nFDNAME={name}", [fd, fd] if verb == "store-twice" else [fd])
            os.close(fd)
        elif verb == "store-pipe":
            name, _, flag = arg.partition(":")
            r, w = os.pipe()
            os.write(w, b"x")
            extra = "\nFDPOLL=0" if flag == "nopoll" else ""
            notify(f"FDSTORE=1\nFDNAME={name}{extra}", [r])
            os.close(r)
            os.close(w)
        elif verb == "show-fds":
            show_fds()
        elif verb == "fuzz":
            count, _, seed = arg.partition(":")
            fuzz(int(count), int(seed or 0))
        else:
            say(f"unknown step {step!r}")
            return 2
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a watchdog SIGABRT dumps no core
    sys.exit(main(sys.argv[1:]))
