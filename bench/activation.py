"""Spawn-to-READY: from "start it" to a minimal notify program's READY=1, Aeterna beside systemd.

The program is a few lines of C (compiled here with gcc, statically when
libc.a is there): it sends ``READY=1`` to $NOTIFY_SOCKET and pause()s. Python's
or a shell's own start-up would otherwise be most of what is measured, and it
would be the same for both supervisors. Without gcc the program is
``sh -c 'systemd-notify --ready; exec sleep 3600'``, much slower (the report names the program).

The interval is the same for every supervisor: from the moment the harness
triggers the start (just before it connects to the supervisor's socket) to the
moment the harness sees that READY=1 has been received by whoever listens on
$NOTIFY_SOCKET. Measured side by side in one run, iterations interleaved:

- **Aeterna**: one manager with two ``type: notify`` units running the program,
  ``sock`` with one listening socket (so LISTEN_FDS=1, as below: the
  like-for-like row) and ``bare`` without. Before each iteration the unit is
  stopped (not timed). Trigger: the control request ``restart`` (connect,
  send). Aeterna itself listens on $NOTIFY_SOCKET; READY counts as received
  when the manager logs ``unit.state unit=U old=starting new=active``,
  timestamped by a harness thread reading its stderr (pipe). Also shown: the
  time to the ``unit.started`` line (the manager's spawn call returned) and to
  the ``restart`` reply.
- **systemd-socket-activate --accept** (the primary baseline: like Aeterna it is
  a running supervisor that forks and execs per start): listening on a unix
  socket; trigger: connect(). It accepts, forks, execs the program with
  LISTEN_FDS=1 and NOTIFY_SOCKET (``-E``); it does not read sd_notify, so the
  harness owns that socket and READY counts when its recvmsg() returns.
- **systemd-socket-activate** (default mode): started afresh for each iteration;
  once it logs ``Listening on``, connect() triggers it and it execs the program
  in place (no fork). Informational: the cheapest possible "start".

Both socket-activate modes log a few lines per start to stderr (to a file
here), as Aeterna logs its own; Aeterna's extra hop (log line through a pipe to
the harness) is of the same kind as the harness's own recvmsg() wake-up.

The table goes to stdout and to the "Spawn-to-READY" section of
docs/benchmarks.md (not with ``--quick`` or ``--no-doc``).

    .venv/bin/python bench/activation.py [--quick] [--iterations 500]
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

sys.path.insert(0, str(c.REPO))

from aeterna.api.client import request  # noqa: E402

GOAL_RATIO = 1.2
SECTION = "Spawn-to-READY"
SA = "systemd-socket-activate"

PROGRAM_C = r"""
/* A minimal sd_notify service: READY=1 to $NOTIFY_SOCKET, then wait to be killed. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof sa.sun_path) return 1;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 1;
    if (sendto(fd, "READY=1", 7, 0, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0) return 1;
    close(fd);
    alarm(3600);  /* never outlive a harness that died */
    for (;;) pause();
}
"""


def build_program(tmp: Path) -> tuple[list[str], str]:
    """The program's argv and a description."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        src, exe = tmp / "ready.c", tmp / "ready"
        src.write_text(PROGRAM_C)
        for flags, what in ((["-static"], "static"), ([], "dynamic")):
            r = subprocess.run([gcc, "-O2", *flags, "-o", str(exe), str(src)],
                               capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                return [str(exe)], f"a C program (gcc -O2, {what}ally linked)"
    sh = shutil.which("sh") or "/bin/sh"
    return ([sh, "-c", "systemd-notify --ready; exec sleep 3600"],
            "`sh -c 'systemd-notify --ready; exec sleep 3600'` (no gcc)")


def aeterna_bin() -> list[str]:
    exe = Path(sys.executable).parent / "aeterna"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "aeterna.cli"]


def gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` is gone (reaped by its parent, not ours)."""
    def dead() -> bool:
        text = c._read(f"/proc/{pid}/stat")
        return text is None or text[text.rfind(")") + 2:].startswith("Z")
    return c.wait_until(dead, timeout, 0.001)


# --------------------------------------------------------------------------- Aeterna
class AeternaManager:
    """One manager with the measured units ``sock`` and ``bare``, and its log, timestamped."""

    def __init__(self, tmp: Path, program: list[str], args: argparse.Namespace):
        self.args = args
        self.control = str(tmp / "aeterna.sock")
        units = tmp / "units"
        units.mkdir()
        cmd = ", ".join(f'"{a}"' for a in program)
        common = (f"  type: notify\n  command: [{cmd}]\n"
                  "  timeouts: {start: 10s, stop: 5s}\n  start_limit: {burst: 0}\n")
        # sock: one listening socket, so LISTEN_FDS=1 as systemd-socket-activate gives.
        (units / "sock.yaml").write_text(
            'version: "1.0"\nservice:\n  name: sock\n' + common
            + '  sockets:\n    - listen: "127.0.0.1:0"\n      name: http\n')
        # bare: no socket, so no LISTEN_* (and no LISTEN_PID to set in the child).
        (units / "bare.yaml").write_text('version: "1.0"\nservice:\n  name: bare\n' + common)
        # A manager exits once all its units are down: this one keeps it up across stops.
        (units / "keep.yaml").write_text(
            'version: "1.0"\nservice:\n  name: keep\n  command: ["sleep", "3600"]\n')
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*aeterna_bin(), "--control", self.control, "start", "-c", str(units)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        for unit in ("sock", "bare"):
            if self.wait_line(f"unit={unit} old=starting new=active", 0.0,
                              args.start_timeout) is None:
                raise RuntimeError(f"Aeterna: unit {unit} did not become active: "
                                   + "".join(ln for _, ln in self.lines)[-2000:])

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:  # until the manager exits
            t = time.monotonic()
            with self.cond:
                self.lines.append((t, raw.decode(errors="replace")))
                self.cond.notify_all()

    def wait_line(self, needle: str, since: float, timeout: float) -> float | None:
        """When a log line containing ``needle`` was read, at or after ``since``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, line in self.lines:
                    if t >= since and needle in line:
                        return t
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.cond.wait(left)

    def clear(self) -> None:
        with self.cond:
            self.lines.clear()

    def close(self) -> None:
        c.stop(self.proc, self.args.stop_timeout)


class Aeterna:
    """One measured unit of the shared manager."""

    def __init__(self, manager: AeternaManager, unit: str):
        self.m = manager
        self.unit = unit
        self.key = f"aeterna-{unit}"

    def once(self) -> dict[str, float]:
        m, u, timeout = self.m, self.unit, self.m.args.timeout
        reply = request(m.control, "stop", u, timeout=timeout)
        if not reply.get("ok") or reply["result"]["state"] != "inactive":
            raise RuntimeError(f"stop {u}: {reply}")
        m.clear()
        t0 = time.monotonic()
        reply = request(m.control, "restart", u, timeout=timeout)
        t_reply = time.monotonic()
        if not reply.get("ok") or reply["result"]["state"] != "active":
            raise RuntimeError(f"restart {u}: {reply}")
        t_active = m.wait_line(f"unit={u} old=starting new=active", t0, timeout)
        t_started = m.wait_line(f"unit.started unit={u} pid=", t0, timeout)
        if t_active is None or t_started is None:
            raise RuntimeError(f"restart {u}: no unit.started / new=active line in the log")
        return {"ready": t_active - t0, "reply": t_reply - t0, "started": t_started - t0}

    def close(self) -> None:
        pass  # the manager is closed once, by run()


# --------------------------------------------------------------------------- socket-activate
class NotifyListener:
    """The harness's own $NOTIFY_SOCKET for systemd-socket-activate's children."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)

    def ready(self, timeout: float) -> tuple[float, int]:
        """Wait for READY=1; (monotonic time, sender pid)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise RuntimeError("no READY=1 in time")
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            t = time.monotonic()
            pid = 0
            for level, kind, blob in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(blob[:4], sys.byteorder, signed=True)
            if b"READY=1" in data.split(b"\n"):
                return t, pid

    def close(self) -> None:
        self.sock.close()


def wait_listening(log: Path, timeout: float) -> bool:
    return c.wait_until(lambda: "Listening on" in log.read_text(errors="replace"), timeout, 0.002)


class SocketActivateAccept:
    key = "sa-accept"

    def __init__(self, tmp: Path, program: list[str], args: argparse.Namespace):
        self.args = args
        self.listen = str(tmp / "sa-accept.sock")
        self.notify = NotifyListener(str(tmp / "sa-accept-notify.sock"))
        self.log = tmp / "sa-accept.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [SA, "--accept", "-l", self.listen, "-E", f"NOTIFY_SOCKET={self.notify.path}",
                 *program], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        if not wait_listening(self.log, args.start_timeout):
            raise RuntimeError(f"{SA} --accept did not start: "
                               + self.log.read_text(errors="replace")[-1000:])

    def once(self) -> dict[str, float]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            t0 = time.monotonic()
            s.connect(self.listen)
            t1, pid = self.notify.ready(self.args.timeout)
        finally:
            s.close()
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            gone(pid, self.args.timeout)
        return {"ready": t1 - t0}

    def close(self) -> None:
        c.stop(self.proc, self.args.stop_timeout)
        self.notify.close()


class SocketActivateExec:
    key = "sa-exec"

    def __init__(self, tmp: Path, program: list[str], args: argparse.Namespace):
        self.args = args
        self.tmp = tmp
        self.program = program
        self.listen = str(tmp / "sa-exec.sock")
        self.notify = NotifyListener(str(tmp / "sa-exec-notify.sock"))
        self.log = tmp / "sa-exec.log"

    def once(self) -> dict[str, float]:
        if os.path.exists(self.listen):
            os.unlink(self.listen)
        with open(self.log, "wb") as log:
            proc = subprocess.Popen(
                [SA, "-l", self.listen, "-E", f"NOTIFY_SOCKET={self.notify.path}",
                 *self.program], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log, start_new_session=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not wait_listening(self.log, self.args.start_timeout):
                raise RuntimeError(f"{SA} did not start: "
                                   + self.log.read_text(errors="replace")[-1000:])
            t0 = time.monotonic()
            s.connect(self.listen)
            t1, _pid = self.notify.ready(self.args.timeout)
        finally:
            s.close()
            c.stop(proc, self.args.stop_timeout, signal.SIGKILL)
        return {"ready": t1 - t0}

    def close(self) -> None:
        self.notify.close()


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace, tmp: Path, notes: list[str]) -> tuple[
        dict[str, list[dict[str, float]]], dict[str, list[str]], str]:
    program, what = build_program(tmp)
    manager: list[AeternaManager] = []

    def aeterna(unit: str) -> Aeterna:
        if not manager:
            manager.append(AeternaManager(tmp, program, args))
        return Aeterna(manager[0], unit)

    factories: list[Callable[[], Any]] = [lambda: aeterna("sock"), lambda: aeterna("bare")]
    if shutil.which(SA):
        factories += [lambda: SocketActivateAccept(tmp, program, args),
                      lambda: SocketActivateExec(tmp, program, args)]
    else:
        notes.append(f"{SA} is not installed (apt-get install systemd): no baseline")
    samples: dict[str, list[dict[str, float]]] = {}
    errors: dict[str, list[str]] = {}
    runners: list[Any] = []
    deadline = time.monotonic() + args.max_time
    try:
        for make in factories:
            runners.append(make())
        total = args.warmup + args.iterations
        for i in range(total):
            if time.monotonic() > deadline:
                notes.append(f"--max-time {args.max_time:g} s reached after {i} iterations")
                break
            # Rotate the order so that no supervisor always follows the same one.
            order = runners[i % len(runners):] + runners[:i % len(runners)]
            for r in order:
                try:
                    s = r.once()
                except (RuntimeError, OSError) as exc:
                    errors.setdefault(r.key, []).append(str(exc))
                    if len(errors[r.key]) > 10:
                        raise RuntimeError(f"{r.key}: too many failures: {exc}") from exc
                    continue
                if i >= args.warmup:
                    samples.setdefault(r.key, []).append(s)
            if (i + 1) % 50 == 0 or i + 1 == total:
                meds = ", ".join(f"{k} {c.median(x['ready'] for x in v) * 1e3:.2f} ms"
                                 for k, v in samples.items())
                print(f"activation: {i + 1}/{total}: {meds}", flush=True)
    finally:
        for r in runners:
            r.close()
        for m in manager:
            m.close()
    return samples, errors, what


# --------------------------------------------------------------------------- report
LABELS = {"aeterna-sock": "**Aeterna**, unit with 1 socket (LISTEN_FDS=1)",
          "aeterna-bare": "Aeterna, unit without sockets",
          "sa-accept": f"{SA} --accept (fork+exec per connection)",
          "sa-exec": f"{SA} (exec in place on the first connection)"}


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def med(samples: dict[str, list[dict[str, float]]], key: str, field: str = "ready"
        ) -> float | None:
    ss = samples.get(key)
    return c.median(s[field] for s in ss) if ss else None


def report(samples: dict[str, list[dict[str, float]]], errors: dict[str, list[str]],
           args: argparse.Namespace, what: str, notes: list[str], took: float) -> str:
    ref_med = med(samples, "sa-accept")
    rows = []
    for key in LABELS:
        ss = samples.get(key)
        if not ss:
            continue
        ready = [s["ready"] * 1e3 for s in ss]
        m = c.median(ready)
        rows.append([LABELS[key], len(ss), f"{m:.2f}", f"{pct(ready, 0.1):.2f}",
                     f"{pct(ready, 0.9):.2f}",
                     f"{m / (ref_med * 1e3):.2f}×" if ref_med else "—"])
    table = c.md_table(["supervisor", "n", "median ms", "p10 ms", "p90 ms",
                        f"÷ {SA} --accept"], rows, [False] + [True] * 5)
    goals, split = [], []
    for key, what_unit in (("aeterna-sock", "with 1 socket"),
                           ("aeterna-bare", "without sockets")):
        a_med = med(samples, key)
        if a_med is None:
            continue
        split.append(
            f"- unit {what_unit}: to `unit.started` logged (the manager's spawn call "
            f"returned) {(med(samples, key, 'started') or 0) * 1e3:.2f} ms; to `new=active` "
            f"logged (READY=1 handled) {a_med * 1e3:.2f} ms; to the `restart` reply "
            f"received {(med(samples, key, 'reply') or 0) * 1e3:.2f} ms.")
        if ref_med:
            ratio = a_med / ref_med
            exec_med = med(samples, "sa-exec")
            goals.append(
                f"- Aeterna's spawn-to-READY within {GOAL_RATIO}× of {SA}'s, unit {what_unit}: "
                f"**{'met' if ratio <= GOAL_RATIO else 'NOT met'}** ({ratio:.2f}× of "
                "`--accept`, the fork+exec supervisor"
                + (f"; {a_med / exec_med:.2f}× of the exec-in-place mode" if exec_med else "")
                + ")." + (" This is the like-for-like comparison: both hand the program one "
                          "socket and LISTEN_* variables." if key == "aeterna-sock" else ""))
    fails = [f"- {k}: {len(v)} failed iterations, e.g. {v[0]}" for k, v in errors.items()]
    extra = [x for x in sys.argv[1:] if x != "--no-doc"]
    body = [
        "Written by `bench/activation.py`. Reproduce with `make bench` (all benchmarks) or "
        f"`.venv/bin/python bench/activation.py{(' ' + ' '.join(extra)) if extra else ''}`.",
        "",
        f"Run: {c.machine()}; {args.iterations} iterations per row (after "
        f"{args.warmup} warm-up), interleaved; took {took:.0f} s; load average "
        f"{args.load_before} before, {(c._read('/proc/loadavg') or '?').split()[0]} after. "
        f"{c.tool_version([SA, '--version'])}; Python {sys.version.split()[0]}.",
        "",
        f"The program is {what}: it sends `READY=1` to `$NOTIFY_SOCKET` and waits. The "
        "interval is the same for all: from the harness triggering the start (just before "
        "it connects to the supervisor's socket) to READY=1 seen as received by whoever "
        "listens on `$NOTIFY_SOCKET`. Aeterna (`type: notify` units, stopped untimed before "
        "each iteration) is triggered by the control request `restart` and listens "
        "itself: READY counts when it logs `new=active` (timestamped by a harness thread "
        f"reading its stderr). {SA} does not read sd_notify: it gets `-E NOTIFY_SOCKET=` "
        "pointing at a socket of the harness, is triggered by a connect() to its unix "
        "listening socket, and READY counts when the harness's recvmsg() returns. "
        "`--accept` forks and execs per connection, like Aeterna starting a unit, and "
        "passes the connection as fd 3 with LISTEN_FDS=1; the default mode (started afresh "
        "per iteration) execs itself in place, without forking.",
        "",
        table,
        "Aeterna's interval, split (medians):",
        *split,
        "",
        "Goals (from the issue):",
        *goals,
    ]
    if notes or fails:
        body += ["", "Notes:", *[f"- {n}" for n in notes], *fails]
    return "\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=500, help="per supervisor; medians")
    p.add_argument("--warmup", type=int, default=20, help="iterations left out first")
    p.add_argument("--timeout", type=float, default=10.0, help="per step, seconds")
    p.add_argument("--max-time", type=float, default=600.0, help="stop iterating after, s")
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--stop-timeout", type=float, default=10.0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20 iterations, docs not written")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup, args.no_doc = 20, 3, True
    args.load_before = c.start_bench()
    t0 = time.monotonic()
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-activation-"))
    try:
        samples, errors, what = run(args, tmp, notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = report(samples, errors, args, what, notes, time.monotonic() - t0)
    print(f"\n## {SECTION}\n")
    print(body)
    if not args.no_doc:
        c.update_doc_section(SECTION, body)
        print(f"activation: wrote the {SECTION} section of {c.DOC.relative_to(c.REPO)}")
    else:
        print("activation: docs/benchmarks.md not written (--quick or --no-doc)")
    return 1 if errors or "aeterna-sock" not in samples else 0


if __name__ == "__main__":
    sys.exit(main())
