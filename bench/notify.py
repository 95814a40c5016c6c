"""Notify throughput: sd_notify datagrams handled per second by Aeterna, beside a bare recvmsg loop.

One Aeterna manager runs one ``type: notify`` unit (``notify_access: all``,
``watchdog_sec`` set so that ``WATCHDOG=1`` re-arms a real timer). Its main
process is this script in ``--agent`` mode: it sends READY=1, then takes
orders from the harness over a unix stream socket. For each round it starts
1 or 8 sender processes (children of the agent, so in the unit's process
group), waits until each has connected to $NOTIFY_SOCKET, then releases them
all at once (t0). Each sender blasts its share of the round's datagrams,
alternately ``STATUS=<n>`` and ``WATCHDOG=1``, with blocking send(): the
kernel's receive queue (``net.unix.max_dgram_qlen``) is the back-pressure,
nothing is dropped. When every sender has reported its count, the agent sends
``STATUS=done-<tag>`` and then ``BARRIER=1`` with a pipe's write end, and waits
for POLLHUP on the read end, as sd_notify_barrier() does (t1). A notify socket
is one FIFO queue and the manager closes a barrier's fd when it reaches it, so
at t1 every datagram sent before it has been handled. Rate = sent / (t1 - t0).
Checks: the unit's status text is the final marker afterwards, and the manager
logged no ``notify.dropped``.

The baseline, in the same run and interleaved round by round: the same agent
and senders, started by this harness, with $NOTIFY_SOCKET pointing at a
minimal Python receiver (``--receiver``): a blocking recvmsg() loop on an
identical socket (SO_PASSCRED, 8 MiB SO_RCVBUF) that only counts datagrams and
closes the fds it gets, which acknowledges the barrier. That is what the kernel
plus CPython can do at best; it parses nothing. The receiver reports its count
at each barrier, which must equal what was sent.

Senders are a small C program when gcc is there (so that they cost the
receiver as little CPU as possible; both sides share the 2 cores), else Python.

The table goes to stdout and to the "Notify throughput" section of
docs/benchmarks.md (not with ``--quick`` or ``--no-doc``).

    .venv/bin/python bench/notify.py [--quick] [--repeat 5] [--count 200000]
"""

from __future__ import annotations

import argparse
import array
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

GOAL_PER_S = 20_000
SECTION = "Notify throughput"
SO_RCVBUF_WANTED = 8 * 1024 * 1024  # as Aeterna's NotifyReceiver and systemd
IDLE_EXIT = 900.0  # the agent exits when the harness is silent this long, s
LIFETIME = 3600  # the baseline receiver's alarm, s
RECV_BUF = 4097
ANC_BUF = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * 768)

SENDER_C = r"""
/* Blast sd_notify datagrams: argv[1] = how many, argv[2] = time limit in s.
 * Protocol on stdio: write "R\n" once connected, wait for EOF on stdin (go),
 * send, write "<sent>\n", then pause() until killed (a reaped sender could no
 * longer be mapped to its unit by pid). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    long count = atol(argv[1]);
    double limit = atof(argv[2]);
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 2;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("connect");
        return 1;
    }
    alarm((unsigned)limit + 300);  /* never outlive a harness that died */
    if (write(1, "R\n", 2) != 2) return 1;
    char b;
    while (read(0, &b, 1) > 0) {}
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long sent = 0;
    char msg[64];
    while (sent < count) {
        int len;
        if (sent % 2 == 0) len = snprintf(msg, sizeof msg, "STATUS=%ld", sent);
        else { memcpy(msg, "WATCHDOG=1", 10); len = 10; }
        if (send(fd, msg, (size_t)len, 0) < 0) {
            if (errno == EINTR) continue;
            perror("send");
            break;
        }
        sent++;
        if ((sent & 255) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 > limit) break;
        }
    }
    dprintf(1, "%ld\n", sent);
    for (;;) pause();
}
"""


# ----------------------------------------------------------------------- sender (Python fallback)
def sender_main(count: int, limit: float) -> int:
    """The Python sender: the same protocol as SENDER_C."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(os.environ["NOTIFY_SOCKET"])
    signal.alarm(int(limit) + 300)  # never outlive a harness that died
    os.write(1, b"R\n")
    while os.read(0, 1):
        pass
    t0 = time.monotonic()
    sent = 0
    send = sock.send
    while sent < count:
        send(b"STATUS=%d" % sent if sent % 2 == 0 else b"WATCHDOG=1")
        sent += 1
        if sent & 255 == 0 and time.monotonic() - t0 > limit:
            break
    os.write(1, b"%d\n" % sent)
    while True:
        signal.pause()


# --------------------------------------------------------------------------- agent
def agent_main() -> int:
    """The unit's main process (or the baseline's): READY=1, then rounds on request."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.connect(os.environ["NOTIFY_SOCKET"])
    sender = json.loads(os.environ["BENCH_SENDER"])
    notify.send(b"READY=1")
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctl.connect(os.environ["BENCH_CTL"])
    ctl.settimeout(IDLE_EXIT)  # a harness that went away: exit
    f = ctl.makefile("rwb", buffering=0)
    f.write(f"hello {os.environ['BENCH_ROLE']} {os.getpid()}\n".encode())
    for line in f:  # bounded: the harness sends a few dozen orders, then "quit"
        order = json.loads(line)
        if order["cmd"] != "run":
            break
        f.write(json.dumps(agent_round(notify, sender, order)).encode() + b"\n")
    return 0


def agent_round(notify: socket.socket, sender: list[str], order: dict[str, Any]) -> dict[str, Any]:
    n, count, limit, tag = order["senders"], order["count"], order["limit"], order["tag"]
    shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
    procs = [subprocess.Popen([*sender, str(k), str(limit)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE) for k in shares]
    out: dict[str, Any] = {"sent": 0, "elapsed": None, "error": None}
    try:
        for p in procs:  # each connected to $NOTIFY_SOCKET and waiting
            assert p.stdout is not None
            if p.stdout.readline() != b"R\n":
                out["error"] = f"sender {p.pid} did not start"
                return out
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()  # EOF: go
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            out["sent"] += int(line or b"0")
        notify.send(f"STATUS=done-{tag}".encode())
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            notify.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", [w]))])
            os.close(w)
            w = -1
            poller = select.poll()
            poller.register(r, select.POLLHUP)
            if poller.poll((limit + 30) * 1000):
                out["elapsed"] = time.monotonic() - t0
            else:
                out["error"] = "barrier not acknowledged in time"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        return out
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


# --------------------------------------------------------------------------- baseline receiver
def receiver_main(path: str) -> int:
    """A blocking recvmsg() loop that counts datagrams and closes the fds it gets."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SO_RCVBUF_WANTED)
    sock.bind(path)
    signal.alarm(LIFETIME)  # SIGALRM ends it, should the harness not (the socket stays blocking)
    os.write(1, b"listening\n")
    recvmsg, scm_rights = sock.recvmsg, socket.SCM_RIGHTS
    n = 0
    while True:  # bounded by the alarm and by the senders' bounded counts
        _data, anc, _flags, _ = recvmsg(RECV_BUF, ANC_BUF)
        n += 1
        for _level, kind, data in anc:
            if kind == scm_rights:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % 4])
                os.write(1, b"%d\n" % n)  # before the close: the harness reads it after POLLHUP
                for fd in fds:
                    os.close(fd)


# --------------------------------------------------------------------------- harness
def aeterna_bin() -> list[str]:
    exe = Path(sys.executable).parent / "aeterna"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "aeterna.cli"]


def build_sender(tmp: Path) -> tuple[list[str], str]:
    """The sender's argv prefix and a description."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        src, exe = tmp / "sender.c", tmp / "sender"
        src.write_text(SENDER_C)
        r = subprocess.run([gcc, "-O2", "-o", str(exe), str(src)], capture_output=True,
                           text=True, timeout=120)
        if r.returncode == 0:
            return [str(exe)], "C (gcc -O2)"
        print(f"notify: gcc failed, using the Python sender: {r.stderr.strip()}", flush=True)
    return [sys.executable, str(Path(__file__).resolve()), "--sender"], "Python"


class Harness:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.agents: dict[str, Any] = {}  # role -> file of its control connection
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(str(tmp / "bench.sock"))
        self.ctl.listen(4)
        self.ctl.settimeout(args.start_timeout)
        self.sender, self.sender_kind = build_sender(tmp)
        self.manager: subprocess.Popen[bytes] | None = None
        self.receiver: subprocess.Popen[bytes] | None = None
        self.agent_pids: dict[str, int] = {}
        self.base_count = 1  # datagrams the baseline receiver has counted: READY=1 so far

    def env(self, role: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(BENCH_CTL=str(self.tmp / "bench.sock"), BENCH_ROLE=role,
                   BENCH_SENDER=json.dumps(self.sender))
        return env

    def accept_agent(self) -> None:
        conn, _ = self.ctl.accept()
        conn.settimeout(self.args.limit + 60)
        f = conn.makefile("rwb", buffering=0)
        hello = f.readline().decode().split()
        if len(hello) != 3 or hello[0] != "hello":
            raise RuntimeError(f"bad hello from an agent: {hello!r}")
        self.agents[hello[1]] = f
        self.agent_pids[hello[1]] = int(hello[2])

    def start(self) -> None:
        me = [sys.executable, str(Path(__file__).resolve())]
        # Baseline: receiver, then an agent pointed at it.
        base_sock = str(self.tmp / "baseline-notify.sock")
        self.receiver = subprocess.Popen([*me, "--receiver", base_sock], stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(self.receiver)
        assert self.receiver.stdout is not None
        if self.receiver.stdout.readline() != b"listening\n":
            raise RuntimeError("the baseline receiver did not start")
        env = self.env("baseline")
        env["NOTIFY_SOCKET"] = base_sock
        self.procs.append(subprocess.Popen([*me, "--agent"], env=env, stdin=subprocess.DEVNULL,
                                           start_new_session=True))
        self.accept_agent()  # its READY=1 went to the receiver, which counts it
        # Aeterna: one notify unit running the agent.
        units = self.tmp / "units"
        units.mkdir()
        cmd = json.dumps([*me, "--agent"])
        envs = json.dumps([f"BENCH_CTL={self.tmp / 'bench.sock'}", "BENCH_ROLE=aeterna",
                           f"BENCH_SENDER={json.dumps(self.sender)}"])
        (units / "blaster.yaml").write_text(
            'version: "1.0"\nservice:\n  name: blaster\n  type: notify\n'
            f"  command: {cmd}\n  env: {envs}\n  notify_access: all\n"
            "  watchdog_sec: 300s\n  timeouts: {start: 30s, stop: 10s}\n")
        self.log_path = self.tmp / "manager.log"
        with open(self.log_path, "wb") as log:
            self.manager = subprocess.Popen(
                [*aeterna_bin(), "--control", str(self.tmp / "aeterna.sock"), "start",
                 "-c", str(units)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        self.procs.append(self.manager)
        self.accept_agent()
        if not c.wait_until(lambda: "new=active" in self.log_path.read_text(errors="replace"),
                            self.args.start_timeout):
            raise RuntimeError("the Aeterna unit did not become active:\n"
                               + self.log_path.read_text(errors="replace")[-2000:])

    def status_text(self) -> str | None:
        sys.path.insert(0, str(c.REPO))
        from aeterna.api.client import request

        reply = request(str(self.tmp / "aeterna.sock"), "status", "blaster", timeout=10)
        return str(reply["result"]["units"][0]["status_text"]) if reply.get("ok") else None

    def dropped(self) -> int:
        return self.log_path.read_text(errors="replace").count("notify.dropped")

    def round(self, role: str, senders: int, tag: str) -> dict[str, Any]:
        """One round; returns sent, elapsed, rate, cpu_us (receiver CPU per datagram), error."""
        f = self.agents[role]
        recv_pid = (self.manager if role == "aeterna" else self.receiver)
        assert recv_pid is not None
        cpu0 = c.cpu_ns(recv_pid.pid)
        dropped0 = self.dropped() if role == "aeterna" else 0
        f.write(json.dumps({"cmd": "run", "senders": senders, "count": self.args.count,
                            "limit": self.args.limit, "tag": tag}).encode() + b"\n")
        line = f.readline()
        cpu1 = c.cpu_ns(recv_pid.pid)
        if not line:
            return {"error": f"the {role} agent went away"}
        res: dict[str, Any] = json.loads(line)
        if res.get("error") is None and res.get("elapsed"):
            res["rate"] = res["sent"] / res["elapsed"]
            if cpu0 is not None and cpu1 is not None and res["sent"]:
                res["cpu_us"] = (cpu1 - cpu0) / 1e3 / (res["sent"] + 2)
        expected = res.get("sent", 0) + 2  # + the marker and the barrier
        if role == "baseline":
            assert self.receiver is not None and self.receiver.stdout is not None
            if res.get("elapsed") is not None:  # the barrier was acknowledged: a count is there
                got = int(self.receiver.stdout.readline() or b"-1")
                counted, self.base_count = got - self.base_count, got
                if res.get("error") is None and counted != expected:
                    res["error"] = f"baseline receiver counted {counted}, expected {expected}"
        else:
            st = self.status_text()
            drops = self.dropped() - dropped0
            if res.get("error") is None and st != f"done-{tag}":
                res["error"] = f"status text is {st!r}, expected 'done-{tag}'"
            elif res.get("error") is None and drops:
                res["error"] = f"the manager dropped {drops} datagrams"
        if res.get("error"):
            res.pop("rate", None)
        return res

    def close(self) -> None:
        for f in self.agents.values():
            try:
                f.write(b'{"cmd": "quit"}\n')
            except OSError:
                pass
        for p in reversed(self.procs):
            c.stop(p, self.args.stop_timeout)
        self.ctl.close()


def run(args: argparse.Namespace) -> tuple[dict[tuple[str, int], list[dict[str, Any]]], str]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    h = Harness(args, tmp)
    deadline = time.monotonic() + args.max_time
    try:
        h.start()
        for rep in range(args.repeat):
            for n in args.senders:
                roles = ["aeterna", "baseline"] if rep % 2 == 0 else ["baseline", "aeterna"]
                for role in roles:
                    if time.monotonic() > deadline:
                        print("notify: --max-time reached, stopping early", flush=True)
                        return results, h.sender_kind
                    try:
                        res = h.round(role, n, f"{role}-{n}-{rep}")
                    except (OSError, ValueError) as exc:  # a timeout, a dead agent
                        results.setdefault((role, n), []).append({"error": repr(exc)})
                        print(f"notify: {role} senders={n}: {exc!r}; giving up", flush=True)
                        return results, h.sender_kind
                    results.setdefault((role, n), []).append(res)
                    if res.get("error"):
                        print(f"notify: round {rep + 1} {role} senders={n}: FAILED: "
                              f"{res['error']}", flush=True)
                    else:
                        print(f"notify: round {rep + 1} {role:8} senders={n}: {res['sent']} in "
                              f"{res['elapsed']:.3f} s = {res['rate']:,.0f}/s, "
                              f"{res.get('cpu_us', float('nan')):.1f} µs CPU each", flush=True)
        return results, h.sender_kind
    finally:
        h.close()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- report
def report(results: dict[tuple[str, int], list[dict[str, Any]]], args: argparse.Namespace,
           sender_kind: str, took: float) -> tuple[str, list[str]]:
    def med(role: str, n: int, key: str) -> float | None:
        vals = [r[key] for r in results.get((role, n), []) if key in r and not r.get("error")]
        return c.median(vals) if vals else None

    rows, goals, failures = [], [], []
    for n in args.senders:
        a, b = med("aeterna", n, "rate"), med("baseline", n, "rate")
        ratios = [ra["rate"] / rb["rate"] for ra, rb in
                  zip(results.get(("aeterna", n), []), results.get(("baseline", n), []),
                      strict=False)
                  if "rate" in ra and "rate" in rb]
        ok_a = len([r for r in results.get(("aeterna", n), []) if "rate" in r])
        rows.append([n, f"{a:,.0f}" if a else "—", f"{b:,.0f}" if b else "—",
                     f"{a / b:.2f}×" if a and b else "—",
                     f"{c.median(ratios):.2f}×" if ratios else "—",
                     _fmt(med("aeterna", n, "cpu_us")), _fmt(med("baseline", n, "cpu_us")),
                     f"{ok_a}/{len(results.get(('aeterna', n), []))}"])
        if a is not None:
            goals.append(f"- ≥ {GOAL_PER_S:,} datagrams/s with {n} sender{'s' if n > 1 else ''}: "
                         f"**{'met' if a >= GOAL_PER_S else 'NOT met'}** ({a:,.0f}/s).")
        for role in ("aeterna", "baseline"):
            for r in results.get((role, n), []):
                if r.get("error"):
                    failures.append(f"- {role}, {n} senders: {r['error']}")
    table = c.md_table(
        ["senders", "Aeterna datagrams/s", "baseline datagrams/s", "Aeterna ÷ baseline",
         "median of per-round ratios", "Aeterna CPU µs/datagram", "baseline CPU µs/datagram",
         "Aeterna rounds ok"], rows, [True] * 8)
    qlen = (c._read("/proc/sys/net/unix/max_dgram_qlen") or "?").strip()
    rmem = (c._read("/proc/sys/net/core/rmem_max") or "?").strip()
    extra = [a for a in sys.argv[1:] if a != "--no-doc"]
    body = [
        "Written by `bench/notify.py`. Reproduce with `make bench` (all benchmarks) or "
        f"`.venv/bin/python bench/notify.py{(' ' + ' '.join(extra)) if extra else ''}`.",
        "",
        f"Run: {c.machine()}; {args.repeat} rounds per row, Aeterna and baseline "
        f"interleaved, medians; took {took:.0f} s; load average {args.load_before} before, "
        f"{(c._read('/proc/loadavg') or '?').split()[0]} after. "
        f"Python {sys.version.split()[0]}; "
        f"net.unix.max_dgram_qlen={qlen}, net.core.rmem_max={rmem}.",
        "",
        f"Each round sends {args.count:,} datagrams in total, alternately `STATUS=<n>` and "
        "`WATCHDOG=1`, split evenly over the senders (processes of the unit's group, "
        f"`notify_access: all`; senders written in {sender_kind}), with blocking "
        "`send()`. The clock runs from releasing the senders to the POLLHUP of a final "
        "`BARRIER=1` (sd_notify_barrier), which the receiver acknowledges only after it "
        "has handled everything queued before it; Aeterna's unit must then show the final "
        "`STATUS=` sent before the barrier, and its log no `notify.dropped`; the baseline's "
        "count must equal what was sent. The baseline is a blocking Python `recvmsg()` loop "
        "on an identical socket (SO_PASSCRED, 8 MiB SO_RCVBUF) that only counts and closes "
        "fds: the kernel-plus-CPython floor, with no parsing. CPU µs/datagram is the "
        "receiving process's CPU time (schedstat) over the round divided by the datagrams.",
        "",
        table,
        "Goals (from the issue):",
        *goals,
    ]
    if failures:
        body += ["", "Failed rounds (left out of the medians):", *failures]
    return "\n".join(body) + "\n", failures


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--agent"]:
        return agent_main()
    if argv[:1] == ["--receiver"]:
        return receiver_main(argv[1])
    if argv[:1] == ["--sender"]:
        return sender_main(int(argv[1]), float(argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="rounds per configuration; medians")
    p.add_argument("--count", type=int, default=200_000, help="datagrams per round")
    p.add_argument("--senders", default="1,8", help="concurrent senders, comma-separated")
    p.add_argument("--limit", type=float, default=30.0, help="senders stop after this, s")
    p.add_argument("--max-time", type=float, default=900.0, help="stop starting rounds after, s")
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--stop-timeout", type=float, default=15.0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round of 20,000 datagrams, docs not written")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.count, args.no_doc = 1, 20_000, True
    args.senders = [int(x) for x in args.senders.split(",") if x.strip()]
    args.load_before = c.start_bench()
    t0 = time.monotonic()
    results, sender_kind = run(args)
    body, failures = report(results, args, sender_kind, time.monotonic() - t0)
    print(f"\n## {SECTION}\n")
    print(body)
    if not args.no_doc:
        c.update_doc_section(SECTION, body)
        print(f"notify: wrote the {SECTION} section of {c.DOC.relative_to(c.REPO)}")
    else:
        print("notify: docs/benchmarks.md not written (--quick or --no-doc)")
    return 1 if failures or not results else 0


if __name__ == "__main__":
    sys.exit(main())
