"""Scale: Aeterna beside supervisord at 100, 1,000 and 5,000 supervised ``sleep 3600``.

Each supervisor is started on N services (Aeterna: N YAML units with
``restart: on-failure``; supervisord from Debian, /usr/bin/supervisord on
Debian's python3: N ``[program:x]`` sections with the default autorestart) and
measured, one supervisor at a time, rounds interleaved (Aeterna first in one
round, supervisord first in the next):

1. **all started**: seconds from launching the supervisor until every sleep
   exists. The supervisor's own spawn log lines are counted as they stream in
   (Aeterna: ``aeterna: unit.started unit=NAME ...`` on stderr; supervisord,
   nodaemon, echoes its log to stdout: ``spawned: 'NAME' with pid N``), each
   timestamped when the bench reads it; /proc is scanned once at the end to
   confirm that the N sleeps exist (a scan in a tight loop would take CPU from
   what is measured on a small machine).
2. **status round trip**, after a settle time: (a) the API from the bench
   process until the whole reply has arrived (Aeterna: one JSON line
   ``{"v": 1, "verb": "status", "unit": null}`` on the control socket;
   supervisord: XML-RPC ``supervisor.getAllProcessInfo`` on its
   unix_http_server socket; decoding the reply is not timed), and (b) the CLI's
   wall clock (``aeterna --control PATH status``, ``supervisorctl -c CONF
   status``), output discarded. Repeated, interleaved; median and max.
3. **/metrics** (Aeterna only): GET on the ``observability.metrics_port``
   address of one unit file, until the whole answer has arrived; it must be a
   200 naming ``aeterna_unit_state``.
4. **loop stall** (Aeterna only): one more unit, ``probe`` (``type: notify``,
   ``restart: "no"``, bench/scale_probe.py), blocks on a FIFO until cued, then
   sends READY=1 and records ``time.monotonic()`` of the send. Per sample a
   thread sends ``start probe`` (answered once the unit is active); once the
   unit is ``starting`` and the probe waits for its cue, the bench sends a full
   ``status`` request (or a /metrics GET) and cues the probe half-way through
   it (``--cue-fraction`` of the big request's median duration, measured just
   before in 2. and 3.; 0 cues it at the moment the request is sent, and then
   the manager tends to handle the datagram before it has even read the
   request). Stall = arrival of the ``start`` reply − the READY=1 send: how
   late the manager handles a READY=1 while it serves the big request. Baseline
   samples have no concurrent request. Then ``stop probe``; kinds interleaved.
5. **SIGTERM → all gone**: SIGTERM to the supervisor; seconds until it has
   exited and no process of its tree is left (the bench is a child subreaper,
   so orphans come back to it: "no child left" is ``waitpid`` saying ECHILD).
   Bounded; a timeout is a failure, and what is left is counted and killed.
6. **RSS** (VmRSS) and **fds** (entries of /proc/PID/fd) of the supervisor
   process alone, after all started and a status was served.

Every wait is bounded; a failed measurement is reported as such and the run
goes on; each run ends by killing whatever is left of its tree. The bench
raises its own RLIMIT_NOFILE soft limit to the hard limit (the supervisors
inherit it). The table goes to stdout and to the "Scale" section of
docs/benchmarks.md (not with ``--quick``, a short smoke run, nor ``--no-doc``).

    .venv/bin/python bench/scale.py [--sizes 100,1000,5000] [--rounds R] [--quick] [--no-doc]
                                    [--aeterna PATH] [--only aeterna,supervisord]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

SECTION = "Scale"
BENCH = Path(__file__).resolve().parent
PROBE_APP = BENCH / "scale_probe.py"
AETERNA_DEFAULT = str(Path(sys.executable).parent / "aeterna")
AETERNA = AETERNA_DEFAULT  # --aeterna
SUPERVISORD = "/usr/bin/supervisord"
SUPERVISORCTL = "/usr/bin/supervisorctl"
SLEEP_CMDLINE = b"sleep\x003600\x00"
# Lines of a Python traceback worth quoting: its header and its last line.
ERROR_RE = re.compile(rb"(Exception in callback |Traceback|[A-Za-z_.]*(Error|Exception)\b:?)")

# Goals (from the issue).
GOAL_N = 1000
GOAL_STARTED_S = 1.5
GOAL_STATUS_MS = 100.0
GOAL_SCRAPE_MS = 100.0
GOAL_STALL_MS = 20.0
GOAL_STOP_S = 2.0
GOAL_RSS_KIB = 32 * 1024
GOAL_BIG_N = 5000
GOAL_BIG_STATUS_MS = 500.0


class Timeout(Exception):
    """A bounded wait ran out."""


# --------------------------------------------------------------------------- results
@dataclass
class Series:
    """Samples of one measurement (seconds), and what went wrong with the others."""

    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Result:
    """One supervisor on ``n`` sleeps, one round."""

    key: str
    n: int
    rnd: int
    m: dict[str, Series] = field(default_factory=dict)
    rss_kib: int | None = None
    fds: int | None = None
    notes: list[str] = field(default_factory=list)

    def s(self, name: str) -> Series:
        return self.m.setdefault(name, Series())

    def fail(self, name: str, why: str) -> None:
        self.s(name).failures.append(why)


def merged(results: list[Result], name: str) -> Series:
    out = Series()
    for r in results:
        if name in r.m:
            out.samples += r.m[name].samples
            out.failures += r.m[name].failures
    return out


# --------------------------------------------------------------------------- log reading
class LogWatch:
    """Reads a supervisor's log pipe to its end; timestamps the spawn of the n-th name."""

    def __init__(self, stream: IO[bytes], pattern: re.Pattern[bytes], n: int):
        self.stream, self.pattern, self.n = stream, pattern, n
        self.names: set[bytes] = set()
        self.done_at: float | None = None
        self.event = threading.Event()
        self.tail: deque[bytes] = deque(maxlen=40)
        self.errors: list[tuple[float, str]] = []  # (when read, line): tracebacks' last lines
        self.lines = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for line in iter(self.stream.readline, b""):
            self.lines += 1
            self.tail.append(line)
            if len(self.errors) < 20 and ERROR_RE.match(line):
                self.errors.append((time.monotonic(), line.decode(errors="replace").strip()))
            if self.done_at is None:
                m = self.pattern.search(line)
                if m:
                    self.names.add(m.group(1))
                    if len(self.names) >= self.n:
                        self.done_at = time.monotonic()
                        self.event.set()
        self.event.set()  # EOF: the supervisor is gone

    def errors_since(self, t: float) -> str:
        seen = list(dict.fromkeys(text for at, text in self.errors if at >= t))
        return " / ".join(seen[:3])

    def last(self, k: int = 3) -> str:
        return " | ".join(ln.decode(errors="replace").rstrip() for ln in list(self.tail)[-k:])


# --------------------------------------------------------------------------- clients
def recv_all(sock: socket.socket, deadline: float, until_newline: bool) -> bytes:
    """Read until EOF (or a newline at the end), by ``deadline`` (monotonic)."""
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError as exc:
            raise Timeout from exc
        if not chunk:
            return bytes(buf)
        buf += chunk
        if until_newline and buf.endswith(b"\n"):
            return bytes(buf)


def control_send(path: str, verb: str, unit: str | None, timeout: float) -> socket.socket:
    """Connect to Aeterna's control socket and send one request; the caller reads."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"v": 1, "verb": verb, "unit": unit}).encode() + b"\n")
    except BaseException:
        s.close()
        raise
    return s


def control_finish(s: socket.socket, deadline: float) -> tuple[bytes, float]:
    """(raw reply line, monotonic time it had arrived); closes the socket."""
    try:
        data = recv_all(s, deadline, until_newline=True)
        return data, time.monotonic()
    finally:
        s.close()


def control(path: str, verb: str, unit: str | None = None, timeout: float = 10.0
            ) -> dict[str, Any]:
    """One request, its decoded reply (raises Timeout, OSError, ValueError)."""
    data, _ = control_finish(control_send(path, verb, unit, timeout), time.monotonic() + timeout)
    if not data:
        raise ConnectionError("the manager closed the connection without answering")
    reply: dict[str, Any] = json.loads(data)
    return reply


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over a unix socket; notes when the whole response body had arrived."""

    def __init__(self, path: str, timeout: float):
        super().__init__()
        self._path, self._timeout = path, timeout
        self.received_at = 0.0

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        self._connection = (host, _UnixHTTPConnection(self._path, self._timeout))
        return self._connection[1]

    def parse_response(self, response: http.client.HTTPResponse) -> Any:
        body = response.read()
        self.received_at = time.monotonic()  # decoding is not part of the round trip
        parser, unmarshaller = self.getparser()
        parser.feed(body)
        parser.close()
        return unmarshaller.close()


def xmlrpc_call(path: str, method: str, timeout: float) -> tuple[Any, float]:
    """(result, seconds until the reply had arrived), on a fresh connection."""
    t = UnixTransport(path, timeout)
    proxy = xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=t)
    t0 = time.monotonic()
    try:
        result = getattr(proxy, method)()
    except TimeoutError as exc:
        raise Timeout from exc
    finally:
        t.close()
    return result, t.received_at - t0


def scrape_send(port: int, timeout: float) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return s


def scrape_finish(s: socket.socket, deadline: float) -> tuple[str, float]:
    """Checks the answer (raises ValueError); returns (body, monotonic time of its end)."""
    try:
        data = recv_all(s, deadline, until_newline=False)
        at = time.monotonic()
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in status + " ":
        raise ValueError(f"answer {status!r}")
    text = body.decode(errors="replace")
    if "aeterna_unit_state" not in text:
        raise ValueError("no aeterna_unit_state in the answer")
    return text, at


def cli(argv: list[str], timeout: float) -> tuple[float, int]:
    """Wall clock of a CLI run, output discarded; (seconds, exit code)."""
    t0 = time.monotonic()
    try:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=timeout).returncode
    except subprocess.TimeoutExpired as exc:
        raise Timeout from exc
    return time.monotonic() - t0, rc


# --------------------------------------------------------------------------- supervisors
class Supervisor:
    key = ""
    label = ""
    spawn_re: re.Pattern[bytes]

    def __init__(self, tmp: Path, n: int, args: argparse.Namespace):
        self.tmp, self.n, self.args = tmp, n, args

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ping(self) -> None:
        raise NotImplementedError

    def api_status(self, timeout: float) -> float:
        raise NotImplementedError

    def cli_argv(self) -> list[str]:
        raise NotImplementedError

    def setup(self, res: Result) -> None:
        """After all started: whatever must happen before the status measurements."""

    def close(self) -> None:
        """Free what the supervisor's configuration holds (not processes)."""


class Aeterna(Supervisor):
    key = "aeterna"
    label = "**Aeterna**"
    spawn_re = re.compile(rb"aeterna: unit\.started unit=(s\d+) ")

    def __init__(self, tmp: Path, n: int, args: argparse.Namespace):
        super().__init__(tmp, n, args)
        self.control = str(tmp / "control.sock")
        self.port = c.free_port()
        self.fifo = tmp / "probe.fifo"
        self.stamp = tmp / "probe.stamp"
        os.mkfifo(self.fifo)
        # Held open read-write for the whole run: the probe's open() never waits,
        # its read() waits for the cue, and a cue is never lost.
        self.fifo_fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)

    def argv(self) -> list[str]:
        units = self.tmp / "units"
        units.mkdir()
        for i in range(1, self.n + 1):
            name = f"s{i:04d}"
            (units / f"{name}.yaml").write_text(
                f'version: "1.0"\nservice:\n  name: {name}\n  command: ["sleep", "3600"]\n'
                "  restart: on-failure\n")
        env = [f"SCALE_PROBE_FIFO={self.fifo}", f"SCALE_PROBE_STAMP={self.stamp}"]
        (units / "probe.yaml").write_text(
            'version: "1.0"\nservice:\n  name: probe\n'
            f"  command: {json.dumps([sys.executable, '-I', '-S', str(PROBE_APP)])}\n"
            '  type: notify\n  restart: "no"\n'
            f"  env: {json.dumps(env)}\n"
            "  timeouts: {start: 600s, stop: 10s}\n"
            "  start_limit: {burst: 100000, interval: 1s}\n"  # it is started over and over
            f'observability:\n  metrics_port: "127.0.0.1:{self.port}"\n')
        return [AETERNA, "--control", self.control, "start", "-c", str(units)]

    def ping(self) -> None:
        reply = control(self.control, "ping", timeout=5.0)
        if not reply.get("ok"):
            raise RuntimeError(f"ping: {reply}")

    def api_status(self, timeout: float) -> float:
        t0 = time.monotonic()
        data, at = control_finish(control_send(self.control, "status", None, timeout),
                                  t0 + timeout)
        reply = json.loads(data) if data else {}
        if not reply.get("ok"):
            raise RuntimeError(f"status: {str(reply)[:200]}")
        units = reply["result"]["units"]
        if len(units) != self.n + 1:
            raise RuntimeError(f"status: {len(units)} units, expected {self.n + 1}")
        return at - t0

    def cli_argv(self) -> list[str]:
        return [AETERNA, "--control", self.control, "status"]

    def scrape(self, timeout: float) -> float:
        t0 = time.monotonic()
        _, at = scrape_finish(scrape_send(self.port, timeout), t0 + timeout)
        return at - t0

    def probe_state(self) -> str:
        try:
            reply = control(self.control, "status", "probe", timeout=10.0)
        except Timeout as exc:
            raise Timeout("`status probe` not answered in 10 s") from exc
        return str(reply["result"]["units"][0]["state"]) if reply.get("ok") else "?"

    def wait_probe(self, states: tuple[str, ...], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (st := self.probe_state()) not in states:
            if time.monotonic() > deadline:
                raise Timeout(f"probe {st}, not {'/'.join(states)} after {timeout:g} s")
            time.sleep(0.002)

    def drain(self) -> None:
        try:
            while os.read(self.fifo_fd, 64):
                pass
        except BlockingIOError:
            pass
        for p in (self.stamp, Path(f"{self.stamp}.waiting")):
            p.unlink(missing_ok=True)

    def setup(self, res: Result) -> None:
        # The probe started with the others and waits for its cue: cue it, see it
        # active, then stop it; each stall sample starts it again.
        try:
            os.write(self.fifo_fd, b"x")
            self.wait_probe(("active",), 30.0)
            reply = control(self.control, "stop", "probe", timeout=30.0)
            if not reply.get("ok"):
                raise RuntimeError(f"stop probe: {reply}")
        except (Timeout, OSError, ValueError, RuntimeError, KeyError) as exc:
            res.notes.append(f"probe set-up: {exc or type(exc).__name__}")
            raise
        finally:
            self.drain()

    def stall_sample(self, kind: str, timeout: float, offset: float = 0.0) -> float:
        """One sample (seconds): see the module docstring, 4. The cue goes ``offset``
        seconds after the big request was sent."""
        self.drain()
        box: dict[str, Any] = {}

        def start() -> None:
            try:
                data, at = control_finish(control_send(self.control, "start", "probe", timeout),
                                          time.monotonic() + timeout)
                box["at"], box["reply"] = at, data
            except Exception as exc:  # reported by the caller
                box["error"] = exc

        th = threading.Thread(target=start, daemon=True)
        th.start()
        try:
            try:
                self.wait_probe(("starting",), 10.0)
            except Timeout as exc:
                if "reply" in box or "error" in box:  # what the start request said
                    raise Timeout(f"{exc}; start: {str(box.get('reply', box.get('error')))[:160]}")
                raise
            waiting = Path(f"{self.stamp}.waiting")
            if not c.wait_until(waiting.exists, 10.0, 0.001):
                raise Timeout("the probe did not reach its FIFO read in 10 s")
            big: socket.socket | None = None
            if kind == "status":
                big = control_send(self.control, "status", None, timeout)
            elif kind == "scrape":
                big = scrape_send(self.port, timeout)
            if big is not None and offset > 0:
                time.sleep(offset)
            os.write(self.fifo_fd, b"x")
            if big is not None:
                deadline = time.monotonic() + timeout
                if kind == "status":
                    control_finish(big, deadline)
                else:
                    scrape_finish(big, deadline)
            th.join(timeout)
            if th.is_alive():
                raise Timeout(f"no start reply in {timeout:g} s")
            if "error" in box:
                raise box["error"]
            reply = json.loads(box["reply"])
            if not reply.get("ok") or reply["result"]["state"] != "active":
                raise RuntimeError(f"start probe: {str(reply)[:200]}")
            # The probe writes the stamp just after its send: the reply may come first.
            if not c.wait_until(self.stamp.exists, 10.0, 0.001):
                raise Timeout("the probe wrote no timestamp in 10 s")
            sent = float(self.stamp.read_text())
            return float(box["at"]) - sent
        finally:
            th.join(timeout)
            try:
                control(self.control, "stop", "probe", timeout=timeout)
            except (Timeout, OSError, ValueError):
                pass  # the next sample's start says what is wrong

    def close(self) -> None:
        os.close(self.fifo_fd)


class Supervisord(Supervisor):
    key = "supervisord"
    label = "supervisord (Debian)"
    spawn_re = re.compile(rb"spawned: '(s\d+)' with pid")

    def __init__(self, tmp: Path, n: int, args: argparse.Namespace):
        super().__init__(tmp, n, args)
        self.sock = str(tmp / "supervisor.sock")
        self.conf = tmp / "supervisord.conf"

    def argv(self) -> list[str]:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        minfds = 3 * self.n + 256  # stdin and stdout pipes and a log file per program
        if hard != resource.RLIM_INFINITY:
            minfds = min(minfds, hard)
        conf = [
            "[supervisord]", "nodaemon=true", f"logfile={self.tmp}/supervisord.log",
            f"pidfile={self.tmp}/supervisord.pid", f"childlogdir={self.tmp}/logs",
            "loglevel=info", f"minfds={minfds}", f"minprocs={self.n + 256}", "",
            "[unix_http_server]", f"file={self.sock}", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "", "[supervisorctl]", f"serverurl=unix://{self.sock}", "",
        ]
        for i in range(1, self.n + 1):
            conf += [f"[program:s{i:04d}]", "command=sleep 3600", "redirect_stderr=true", ""]
        (self.tmp / "logs").mkdir()
        self.conf.write_text("\n".join(conf))
        return [SUPERVISORD, "-n", "-c", str(self.conf)]

    def ping(self) -> None:
        state, _ = xmlrpc_call(self.sock, "supervisor.getState", 5.0)
        if state.get("statename") != "RUNNING":
            raise RuntimeError(f"supervisord state {state}")

    def api_status(self, timeout: float) -> float:
        info, took = xmlrpc_call(self.sock, "supervisor.getAllProcessInfo", timeout)
        if len(info) != self.n:
            raise RuntimeError(f"getAllProcessInfo: {len(info)} processes, expected {self.n}")
        return float(took)

    def cli_argv(self) -> list[str]:
        return [SUPERVISORCTL, "-c", str(self.conf), "status"]


SUPERVISORS: dict[str, type[Supervisor]] = {"aeterna": Aeterna, "supervisord": Supervisord}


# --------------------------------------------------------------------------- process tree
def reap_children() -> bool:
    """Reap every exited child of ours; True when none is left at all (ECHILD)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False


def leftover_sleeps() -> int:
    """``sleep 3600`` processes anywhere below the bench (orphans come back to us)."""
    table = c.proc_table()
    n = 0
    for pid in c.descendants(os.getpid(), table):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == SLEEP_CMDLINE:
                    n += 1
        except OSError:
            pass
    return n


def kill_everything(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill the supervisor's whole tree and everything else below the bench; reap."""
    if proc is not None and proc.returncode is None:
        c.stop(proc, 2.0, signal.SIGKILL)
    for _ in range(10):
        left = c.descendants(os.getpid())
        if not left:
            break
        c.kill_pids(left)
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while not reap_children() and time.monotonic() < deadline:
        if not c.descendants(os.getpid()):
            break
        time.sleep(0.02)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """SIGTERM; seconds until ``proc`` has exited and no child of the bench is left."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    gone: float | None = None
    while True:
        now = time.monotonic()
        while True:  # reap what has exited, the supervisor included
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                none_left = True
                break
            if pid == 0:
                none_left = False
                break
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(st)
                gone = now
        if gone is not None and none_left:
            return now - t0
        if now - t0 > timeout:
            raise Timeout
        time.sleep(0.005)


# --------------------------------------------------------------------------- one run
def series(res: Result, name: str, fn: Any, timeout: float) -> None:
    """Append one sample of ``fn()`` (seconds) to ``name``, or why there is none."""
    s = res.s(name)
    try:
        s.samples.append(float(fn()))
    except Timeout as exc:
        s.failures.append(f"timeout: {exc}" if str(exc) else f"timeout after {timeout:g} s")
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        s.failures.append(f"{type(exc).__name__}: {str(exc)[:160]}")


def run_one(cls: type[Supervisor], n: int, rnd: int, args: argparse.Namespace) -> Result:
    res = Result(cls.key, n, rnd)
    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{cls.key}-{n}-"))
    sup = cls(tmp, n, args)
    proc: subprocess.Popen[bytes] | None = None
    try:
        argv = sup.argv()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        assert proc.stdout is not None
        watch = LogWatch(proc.stdout, sup.spawn_re, n)
        watch.event.wait(args.start_timeout)
        if watch.done_at is None:
            why = ("exited" if proc.poll() is not None
                   else f"timeout after {args.start_timeout:g} s")
            res.fail("started", f"{why} ({len(watch.names)}/{n} spawned): {watch.last()}")
            if proc.poll() is not None:
                return res
        else:
            have = 0
            for _ in range(10):  # the last exec()s may still be under way
                have = c.count_descendants(proc.pid, "sleep")
                if have >= n:
                    break
                time.sleep(0.2)
            if have != n:
                res.fail("started", f"{have}/{n} sleeps in /proc after {n} spawn lines")
            else:
                res.s("started").samples.append(watch.done_at - t0)
        # The control endpoint answers, then a settle time (supervisord's startsecs is 1 s).
        try:
            if not c.wait_until(lambda: _pings(sup), 30.0, 0.1):
                res.notes.append("the control endpoint did not answer in 30 s")
        except Exception as exc:  # reported, the run goes on
            res.notes.append(f"ping: {exc}")
        time.sleep(args.settle)
        probe_ok = True
        if isinstance(sup, Aeterna):
            try:
                sup.setup(res)
            except Exception:  # noted by setup
                probe_ok = False

        # Status (API, CLI) and /metrics, interleaved; each series within a time budget.
        spent: dict[str, float] = {}
        kinds = ["status_api", "status_cli"] + (["scrape"] if isinstance(sup, Aeterna) else [])
        for _ in range(args.repeat):
            for kind in kinds:
                if spent.get(kind, 0.0) > args.budget or _given_up(res, kind):
                    continue
                t = time.monotonic()
                if kind == "status_api":
                    series(res, kind, lambda: sup.api_status(args.timeout), args.timeout)
                elif kind == "status_cli":
                    series(res, kind, lambda: _cli_ok(sup, args.timeout), args.timeout)
                elif isinstance(sup, Aeterna):
                    series(res, kind, lambda: sup.scrape(args.timeout), args.timeout)
                spent[kind] = spent.get(kind, 0.0) + time.monotonic() - t
        if proc.poll() is None:
            res.rss_kib = c.rss_kib(proc.pid)
            try:
                res.fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            except OSError:
                pass

        if isinstance(sup, Aeterna) and probe_ok:
            spent = {}
            # The cue goes part of the way into the big request (its median duration,
            # measured above), so that the READY=1 lands while the manager serves it:
            # cued at the moment the request is sent, the datagram tends to be handled
            # before the request has even been read.
            offsets = {"baseline": 0.0}
            for kind, measured in (("status", "status_api"), ("scrape", "scrape")):
                m = med(res.s(measured))
                offsets[kind] = args.cue_fraction * m if m is not None else 0.0
            res.notes.append("stall cue offsets: " + ", ".join(
                f"{k} {v * 1e3:.1f} ms" for k, v in offsets.items() if k != "baseline"))
            for _ in range(args.stall_samples):
                for kind in ("baseline", "status", "scrape"):
                    name = f"stall_{kind}"
                    if spent.get(name, 0.0) > args.budget or _given_up(res, name):
                        continue
                    t = time.monotonic()
                    series(res, name, lambda k=kind: sup.stall_sample(
                        k, args.timeout, offsets[k]), args.timeout)
                    spent[name] = spent.get(name, 0.0) + time.monotonic() - t
                    if proc.poll() is not None:
                        break
        elif isinstance(sup, Aeterna):
            for kind in ("baseline", "status", "scrape"):
                res.fail(f"stall_{kind}", "not measured (the probe unit could not be set up)")

        if proc.poll() is not None:
            res.fail("stop", f"the supervisor had exited ({proc.returncode}): {watch.last()}")
            return res
        sent = time.monotonic()
        try:
            res.s("stop").samples.append(terminate(proc, args.stop_timeout))
            if proc.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
                res.notes.append(f"exit status {proc.returncode} after SIGTERM")
        except Timeout:
            alive = proc.poll() is None if proc.returncode is None else False
            left = leftover_sleeps()
            res.fail("stop", f"timeout after {args.stop_timeout:g} s (manager "
                     f"{'still running' if alive else 'exited'}, {left} sleeps left)")
        errors = watch.errors_since(sent)
        if errors:
            res.notes.append(f"logged after SIGTERM: {errors[:400]}")
        return res
    except Exception as exc:  # one broken run must not stop the others
        res.notes.append(f"run aborted: {type(exc).__name__}: {exc}")
        return res
    finally:
        kill_everything(proc)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        sup.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _pings(sup: Supervisor) -> bool:
    try:
        sup.ping()
        return True
    except (OSError, ValueError, RuntimeError, Timeout, xmlrpc.client.Error):
        return False


def _cli_ok(sup: Supervisor, timeout: float) -> float:
    took, rc = cli(sup.cli_argv(), timeout)
    if rc != 0:
        raise RuntimeError(f"exit status {rc}")
    return took


def _given_up(res: Result, name: str) -> bool:
    """After a timeout a series stops: the supervisor is still busy with that request."""
    return any(f.startswith("timeout") for f in res.s(name).failures)


# --------------------------------------------------------------------------- report
def cell(text: str, limit: int = 160) -> str:
    """Text that fits in a markdown table cell."""
    text = " ".join(text.replace("|", "¦").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def fmt_series(s: Series, scale: float, digits: int, with_max: bool = True) -> str:
    if not s.samples:
        return cell(s.failures[0]) if s.failures else "—"
    v = [x * scale for x in s.samples]
    text = f"{c.median(v):.{digits}f}"
    if with_max and len(v) > 1:
        text += f" / {max(v):.{digits}f}"
    if s.failures:
        text += " " + cell(f"({len(s.failures)} failed: {s.failures[0]})")
    return text


def brief(name: str, s: Series) -> str:
    """``name figure unit`` for the progress lines."""
    seconds = name in ("started", "stop")
    text = fmt_series(s, 1 if seconds else 1e3, 2 if seconds else 1)
    return f"{name} {text}{(' s' if seconds else ' ms') if s.samples else ''}"


def med(s: Series) -> float | None:
    return c.median(s.samples) if s.samples else None


def worst(s: Series) -> float | None:
    return max(s.samples) if s.samples else None


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def scalar(results: list[Result], attr: str) -> float | None:
    vals = [float(getattr(r, attr)) for r in results if getattr(r, attr) is not None]
    return c.median(vals) if vals else None


def report(results: list[Result], args: argparse.Namespace, vers: list[str], took: float,
           load: str) -> str:
    headers = ["units", "supervisor", "all started s", "status API ms", "status CLI ms",
               "/metrics ms", "stall ms: baseline", "during status", "during /metrics",
               "SIGTERM → all gone s", "RSS MiB", "fds", "runs"]
    rows: list[list[object]] = []
    ratio_rows: list[list[object]] = []
    for n in args.sizes:
        by: dict[str, list[Result]] = {}
        for key in args.only:
            by[key] = [r for r in results if r.n == n and r.key == key]
        for key, rs in by.items():
            if not rs:
                continue
            aet = key == "aeterna"
            rss = scalar(rs, "rss_kib")
            fds = scalar(rs, "fds")
            na = "n/a"
            rows.append([
                n, SUPERVISORS[key].label,
                fmt_series(merged(rs, "started"), 1, 2),
                fmt_series(merged(rs, "status_api"), 1e3, 1),
                fmt_series(merged(rs, "status_cli"), 1e3, 0),
                fmt_series(merged(rs, "scrape"), 1e3, 1) if aet else na,
                fmt_series(merged(rs, "stall_baseline"), 1e3, 1) if aet else na,
                fmt_series(merged(rs, "stall_status"), 1e3, 1) if aet else na,
                fmt_series(merged(rs, "stall_scrape"), 1e3, 1) if aet else na,
                fmt_series(merged(rs, "stop"), 1, 2),
                "—" if rss is None else f"{rss / 1024:.1f}",
                "—" if fds is None else f"{fds:.0f}",
                len(rs),
            ])
        a, s = by.get("aeterna", []), by.get("supervisord", [])
        if a and s:
            def r(name: str, a: list[Result] = a, s: list[Result] = s) -> str:
                return ratio(med(merged(a, name)), med(merged(s, name)))
            ratio_rows.append([n, r("started"), r("status_api"), r("status_cli"), r("stop"),
                               ratio(scalar(a, "rss_kib"), scalar(s, "rss_kib")),
                               ratio(scalar(a, "fds"), scalar(s, "fds"))])
    table = c.md_table(headers, rows, [True, False] + [True] * 11)
    ratios = c.md_table(["units", "all started", "status API", "status CLI",
                         "SIGTERM → all gone", "RSS", "fds"], ratio_rows,
                        [True] * 7) if ratio_rows else ""

    goals = goal_lines(results)
    notes = [f"- {SUPERVISORS[r.key].label}, {r.n} units, round {r.rnd + 1}: {note}"
             for r in results for note in r.notes]
    extra = [a for a in sys.argv[1:] if a != "--no-doc"]
    cmd = ".venv/bin/python bench/scale.py" + ("".join(" " + a for a in extra))
    body = [
        f"Written by `bench/scale.py`. Reproduce with `make bench` (all benchmarks) or `{cmd}`.",
        "",
        f"Run: {c.machine()}; load average {load} at the start; took {took:.0f} s.",
        "Versions: " + "; ".join(vers) + ".",
        "",
        "N `sleep 3600` services per supervisor (Aeterna: N units with `restart: on-failure` "
        "plus the `probe` unit; supervisord: N `[program:x]` with the default autorestart, "
        "`redirect_stderr=true` so that one pipe and one log file per program fit the fd "
        "limit at 5,000), one supervisor at a time, rounds interleaved. Figures are "
        "medians, \"median / max\" where repeated (over every round). `all started`: launch "
        "to the last spawn log line (counted as they stream in, then a /proc check); "
        "status API: request to whole reply (Aeterna's control socket, JSON; supervisord's "
        "XML-RPC `getAllProcessInfo`; decoding not timed); status CLI: `aeterna status` and "
        "`supervisorctl status` wall clock; `/metrics`: one GET to the end of the answer; "
        "stall: how late a READY=1 is handled (READY=1 sent → `start probe` answered), alone "
        f"(baseline) and sent while a full status or a /metrics GET is served (cued "
        f"{args.cue_fraction:g} × that request's median duration after it was sent); "
        "SIGTERM → all gone: until the supervisor has exited and nothing of its tree is "
        f"left (bounded at {args.stop_timeout:g} s). RSS (VmRSS) and fds of the supervisor "
        f"process alone, after a status. Each status/metrics series stops after a timeout "
        f"({args.timeout:g} s) or {args.budget:g} s spent.",
        "",
        table,
    ]
    if ratios:
        body += ["Aeterna ÷ supervisord (medians; below 1 is better for Aeterna):", "", ratios]
    body += ["Goals (from the issue):", *goals]
    if notes:
        body += ["", "Notes:", *notes]
    return "\n".join(body) + "\n"


def goal_lines(results: list[Result]) -> list[str]:
    aet = [r for r in results if r.key == "aeterna"]
    out: list[str] = []

    def line(text: str, ok: bool | None, figure: str) -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "NOT met")
        out.append(f"- {text}: **{verdict}** ({figure}).")

    def check(name: str, rs: list[Result], limit: float, scale: float, unit: str,
              use_max: bool = False) -> tuple[bool | None, str]:
        s = merged(rs, name)
        v = worst(s) if use_max else med(s)
        if v is None:  # a measurement that failed is a goal not met
            return (False, s.failures[0]) if s.failures else (None, "no sample")
        ok = v * scale <= limit and not s.failures
        d = 1 if unit == "ms" else 2
        fig = f"{'max' if use_max else 'median'} {v * scale:.{d}f} {unit}"
        if not use_max and len(s.samples) > 1:
            fig += f", max {max(s.samples) * scale:.{d}f}"
        if s.failures:
            fig += f"; {len(s.failures)} failed: {s.failures[0]}"
        return ok, fig

    k = [r for r in aet if r.n == GOAL_N]
    if k:
        line(f"{GOAL_N:,} units, all started ≤ {GOAL_STARTED_S:g} s",
             *check("started", k, GOAL_STARTED_S, 1, "s"))
        line(f"{GOAL_N:,} units, status ≤ {GOAL_STATUS_MS:g} ms (API round trip)",
             *check("status_api", k, GOAL_STATUS_MS, 1e3, "ms"))
        line(f"{GOAL_N:,} units, a /metrics scrape ≤ {GOAL_SCRAPE_MS:g} ms",
             *check("scrape", k, GOAL_SCRAPE_MS, 1e3, "ms"))
        stalls = [check(f"stall_{x}", k, GOAL_STALL_MS, 1e3, "ms", use_max=True)
                  for x in ("baseline", "status", "scrape")]
        oks = [ok for ok, _ in stalls]
        verdict = None if None in oks else all(oks)
        line(f"{GOAL_N:,} units, no stall over {GOAL_STALL_MS:g} ms", verdict,
             "; ".join(f"{x}: {fig}" for x, (_, fig) in
                       zip(("baseline", "during status", "during /metrics"), stalls,
                           strict=True)))
        line(f"{GOAL_N:,} units, SIGTERM → everything stopped and the manager gone "
             f"≤ {GOAL_STOP_S:g} s", *check("stop", k, GOAL_STOP_S, 1, "s"))
        rss = [r.rss_kib for r in k if r.rss_kib is not None]
        if rss:
            line(f"{GOAL_N:,} units, RSS ≤ {GOAL_RSS_KIB // 1024} MiB",
                 c.median(rss) <= GOAL_RSS_KIB,
                 f"median {c.median(rss) / 1024:.1f} MiB, max {max(rss) / 1024:.1f}")
        else:
            line(f"{GOAL_N:,} units, RSS ≤ {GOAL_RSS_KIB // 1024} MiB", None, "no reading")
    else:
        out.append(f"- {GOAL_N:,} units: not run (see `--sizes`).")
    big = [r for r in aet if r.n == GOAL_BIG_N]
    if big:
        failed = [f"{name}: {f}" for r in big for name, s in r.m.items() for f in s.failures]
        failed += [n for r in big for n in r.notes if n.startswith(("run aborted", "probe"))]
        ok_status, fig = check("status_api", big, GOAL_BIG_STATUS_MS, 1e3, "ms")
        works = not failed
        line(f"{GOAL_BIG_N:,} units, everything works (no error, nothing left behind), "
             f"status ≤ {GOAL_BIG_STATUS_MS:g} ms",
             None if ok_status is None and works else (works and bool(ok_status)),
             f"status {fig}" + (f"; {len(failed)} failure(s), first: {failed[0]}"
                                if failed else "; no failure"))
    else:
        out.append(f"- {GOAL_BIG_N:,} units: not run (see `--sizes`).")
    return out


def versions() -> list[str]:
    aet = c.tool_version([AETERNA, "--version"]).split()
    sd = c.tool_version([SUPERVISORD, "--version"])
    py = c.tool_version(["/usr/bin/python3", "--version"])
    exe = os.path.relpath(AETERNA, c.REPO) if AETERNA.startswith(str(c.REPO)) else AETERNA
    return [f"Aeterna {aet[-1] if aet else '?'} (Python {sys.version.split()[0]}, `{exe}`)",
            f"supervisord {sd} (Debian, {py})"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--sizes", default="100,1000,5000", help="numbers of sleeps, comma-separated")
    p.add_argument("--rounds", type=int, default=0,
                   help="rounds per size (default: 3 up to 100 units, 2 up to 1,000, then 1)")
    p.add_argument("--repeat", type=int, default=7, help="status and /metrics samples per run")
    p.add_argument("--stall-samples", type=int, default=10, help="stall samples of each kind")
    p.add_argument("--cue-fraction", type=float, default=0.5,
                   help="stall samples: cue the probe this fraction of the big request's "
                        "median duration after sending it (0: at the same moment)")
    p.add_argument("--budget", type=float, default=30.0,
                   help="seconds one series may take in a run before it stops repeating")
    p.add_argument("--timeout", type=float, default=60.0, help="bound on any one request")
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--stop-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=2.0, help="wait after all started, seconds")
    p.add_argument("--only", default="aeterna,supervisord", help="aeterna, supervisord")
    p.add_argument("--aeterna", default=AETERNA_DEFAULT,
                   help="the aeterna executable (default: this venv's console script)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, fewer samples, docs not written")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    global AETERNA
    AETERNA = args.aeterna
    args.sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    args.only = [k for k in ("aeterna", "supervisord")
                 if k in {x.strip() for x in args.only.split(",")}]
    if args.quick:
        args.rounds, args.repeat, args.stall_samples, args.no_doc = 1, 3, 3, True
        args.budget = min(args.budget, 10.0)
    if "supervisord" in args.only and not os.path.exists(SUPERVISORD):
        print(f"scale: {SUPERVISORD} is not installed (apt-get install supervisor); skipped")
        args.only.remove("supervisord")

    load = c.start_bench()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < 2 * max(args.sizes) + 512:
        print(f"scale: WARNING: RLIMIT_NOFILE hard limit {hard} may be too low for "
              f"{max(args.sizes)} units", flush=True)
    t0 = time.monotonic()
    vers = versions()
    results: list[Result] = []
    plan = [(n, rnd) for n in args.sizes
            for rnd in range(args.rounds or (3 if n <= 100 else 2 if n <= 1000 else 1))]
    total = len(plan) * len(args.only)
    i = 0
    for n, rnd in plan:
        order = args.only if rnd % 2 == 0 else args.only[::-1]
        for key in order:
            i += 1
            c.wait_quiet(15.0, 0.3)
            print(f"scale: [{i}/{total}] {key} n={n} round {rnd + 1}", flush=True)
            res = run_one(SUPERVISORS[key], n, rnd, args)
            results.append(res)
            print("    " + "; ".join(brief(name, s) for name, s in res.m.items())
                  + (f"; rss {res.rss_kib / 1024:.1f} MiB" if res.rss_kib else "")
                  + (f"; fds {res.fds}" if res.fds else ""), flush=True)
            for note in res.notes:
                print(f"    note: {note}", flush=True)
            left = leftover_sleeps()
            if left:  # kill_everything() failed: a failure of the run, and a last try
                res.fail("cleanup", f"{left} sleeps left after the run's cleanup")
                print(f"    WARNING: {left} sleeps left after cleanup", flush=True)
                kill_everything(None)
    body = report(results, args, vers, time.monotonic() - t0, load)
    c.publish(SECTION, body, write=not args.no_doc)
    if args.no_doc:
        print("scale: docs/benchmarks.md not written (--quick or --no-doc)")
    # Exit 1 when a measurement of Aeterna failed; the peer's failures (supervisord
    # at 5,000 programs) are figures of the comparison, reported in the table.
    failed = any(s.failures for r in results if r.key == "aeterna" for s in r.m.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
