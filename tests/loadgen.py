"""A small, bounded HTTP load generator for tests and benchmarks (loopback only).

``LoadGen`` runs N client threads (``http.client``) against one loopback
address. Each thread is either

* **keep-alive**: one ``HTTPConnection`` reused from request to request, or
* **close**: a new connection (``Connection: close``) for every request.

Every run is bounded twice: by ``max_duration`` seconds and by ``max_requests``
in total, and every socket operation has a timeout, so ``stop()`` always
returns in bounded time.

Each request gets one outcome:

``ok``       a 200 response was read completely
``status``   a complete response with another status
``refused``  connect() was refused (nobody listening, or a full accept queue)
``reset``    the connection was reset or closed after the request was sent and
             before a complete response came back
``timeout``  a socket operation timed out
``other``    anything else (a malformed response, ...)

Keep-alive honesty: a server may close a connection between two requests
(gunicorn's sync workers send ``Connection: close`` on every response, and any
server closes idle connections). A keep-alive client therefore reconnects
*before* sending when it knows the connection is gone: the previous response
said ``Connection: close``, or the socket already reads as closed (EOF/RST seen
by a zero-timeout poll). That reconnect is counted in ``reconnects``, not as a
failure, because the request was never sent. Once a request has been handed to
the socket, anything but a complete response is a failure; nothing is retried.

The body of a response is searched for ``pid=N``, ``ppid=N`` and ``gen=N`` (what
``tests/apps/relay_app.py`` answers), so a summary tells which processes and
generations served the traffic.

Command line (for benchmarks)::

    python tests/loadgen.py --port 8080 --threads 4 --keepalive 2 --duration 10
"""

from __future__ import annotations

import argparse
import errno
import http.client
import ipaddress
import json
import re
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("ok", "status", "refused", "reset", "timeout", "other")
FAILURES = ("status", "refused", "reset", "timeout", "other")

_PID = re.compile(rb"\bpid=(\d+)")
_PPID = re.compile(rb"\bppid=(\d+)")
_GEN = re.compile(rb"\bgen=(\d+)")


@dataclass(frozen=True)
class Record:
    """One request: when, how it ended, and who answered."""

    thread: int
    keepalive: bool
    reused: bool  # sent on a keep-alive connection that had already served a request
    start: float  # time.monotonic() when the request began (connect or send)
    latency: float  # seconds until the outcome was known
    outcome: str  # one of OUTCOMES
    status: int | None = None
    pid: int | None = None  # the worker that answered (from the body)
    ppid: int | None = None  # its parent (the gunicorn arbiter: the unit's main pid)
    gen: int | None = None  # AETERNA_GENERATION of the answering process
    phase: str = ""  # for failures: connect | send | response
    detail: str = ""  # for failures: the exception or status line

    @property
    def failed(self) -> bool:
        return self.outcome != "ok"


@dataclass
class Summary:
    """What a run (or a window of it) amounted to."""

    requests: int
    counts: dict[str, int]
    failures: list[Record]
    reconnects: int
    duration: float
    pids: set[int] = field(default_factory=set)
    ppids: set[int] = field(default_factory=set)
    gens: Counter[int] = field(default_factory=Counter)
    latency_p50: float = 0.0
    latency_p99: float = 0.0
    latency_max: float = 0.0
    origin: float = 0.0  # monotonic time the run started (failures show times from it)

    @property
    def failed(self) -> int:
        return sum(self.counts.get(k, 0) for k in FAILURES)

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    def describe(self, limit: int = 10) -> str:
        """One paragraph for assertion messages."""
        head = (f"{self.requests} requests in {self.duration:.2f}s: "
                + ", ".join(f"{k}={self.counts.get(k, 0)}" for k in OUTCOMES)
                + f"; reconnects={self.reconnects}; gens={dict(sorted(self.gens.items()))}; "
                f"latency p50={self.latency_p50 * 1000:.1f}ms p99={self.latency_p99 * 1000:.1f}ms"
                f" max={self.latency_max * 1000:.1f}ms")
        lines = [head]
        for r in self.failures[:limit]:
            lines.append(f"  t{r.thread}{' ka' if r.keepalive else ''}"
                         f"{' reused' if r.reused else ''} "
                         f"+{r.start - self.origin:.3f}s "
                         f"{r.outcome} in {r.phase} after {r.latency * 1000:.1f}ms: {r.detail}")
        if len(self.failures) > limit:
            lines.append(f"  ... {len(self.failures) - limit} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "counts": self.counts, "failed": self.failed,
                "reconnects": self.reconnects, "duration": round(self.duration, 3),
                "rps": round(self.requests / self.duration, 1) if self.duration else 0.0,
                "generations": {str(k): v for k, v in sorted(self.gens.items())},
                "serving_pids": len(self.ppids), "worker_pids": len(self.pids),
                "latency_ms": {"p50": round(self.latency_p50 * 1000, 2),
                               "p99": round(self.latency_p99 * 1000, 2),
                               "max": round(self.latency_max * 1000, 2)},
                "failures": [f"{r.outcome}/{r.phase}: {r.detail}" for r in self.failures[:20]]}


def summarize(records: list[Record], reconnects: int = 0, duration: float = 0.0,
              origin: float = 0.0) -> Summary:
    counts = Counter(r.outcome for r in records)
    lat = sorted(r.latency for r in records)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0

    return Summary(
        requests=len(records), counts={k: counts.get(k, 0) for k in OUTCOMES},
        failures=[r for r in records if r.failed], reconnects=reconnects, duration=duration,
        pids={r.pid for r in records if r.pid is not None},
        ppids={r.ppid for r in records if r.ppid is not None},
        gens=Counter(r.gen for r in records if r.gen is not None),
        latency_p50=pct(0.5), latency_p99=pct(0.99), latency_max=lat[-1] if lat else 0.0,
        origin=origin)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError
                  | http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    return "other"


def _closed_by_peer(sock: socket.socket) -> bool:
    """True if an idle keep-alive connection is already unusable.

    An idle HTTP/1.1 connection has nothing to read; if it is readable the peer
    closed it (EOF or RST) or sent bytes that cannot answer a request of ours.
    Either way it must be dropped *before* a request is sent on it.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False  # a spurious wakeup: nothing there after all
    except OSError:
        return True  # reset while idle
    return True  # EOF (b"") or unsolicited bytes


class LoadGen:
    """N client threads hammering ``http://host:port/path``; bounded; loopback only."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", path: str = "/",
                 threads: int = 4, keepalive: int | None = None, max_duration: float = 30.0,
                 max_requests: int = 1_000_000, timeout: float = 10.0, pause: float = 0.0,
                 method: str = "GET"):
        """``keepalive``: how many of the threads reuse a connection (default: half).
        ``method``: ``POST`` (with an empty body) for a service that counts them.
        ``pause``: seconds each thread sleeps between two requests (0: flat out).
        ``timeout``: for connect and for every read or write of a request."""
        if not _is_loopback(host):
            raise ValueError(f"loadgen targets loopback only, not {host!r}")
        if threads < 1 or max_duration <= 0 or max_requests < 1:
            raise ValueError("threads, max_duration and max_requests must be positive")
        self.host, self.port, self.path = host, port, path
        self.threads = threads
        self.keepalive = threads // 2 if keepalive is None else keepalive
        self.max_duration = max_duration
        self.max_requests = max_requests
        self.timeout = timeout
        self.pause = pause
        self.method = method
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._reconnects = 0
        self._issued = 0
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.t0 = 0.0
        self.t_end: float | None = None

    # ------------------------------------------------------------- control
    def start(self) -> LoadGen:
        self.t0 = time.monotonic()
        self._deadline = self.t0 + self.max_duration
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i, i < self.keepalive),
                                 name=f"loadgen-{i}", daemon=True)
            self._workers.append(t)
            t.start()
        return self

    def stop(self) -> Summary:
        """Stop issuing requests, let in-flight ones end (bounded), summarize."""
        self._stop.set()
        limit = time.monotonic() + self.timeout * 3 + 5
        for t in self._workers:
            t.join(max(0.0, limit - time.monotonic()))
        alive = [t.name for t in self._workers if t.is_alive()]
        if alive:
            raise RuntimeError(f"loadgen threads did not finish: {alive}")
        if self.t_end is None:
            self.t_end = time.monotonic()
        return self.summary()

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout * 3 + 5)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._workers)

    # ------------------------------------------------------------- reading
    def records(self, since: float = 0.0, until: float | None = None) -> list[Record]:
        """Records of requests that *began* in [since, until) (monotonic times)."""
        with self._lock:
            recs = list(self._records)
        return [r for r in recs if r.start >= since and (until is None or r.start < until)]

    def count(self) -> int:
        with self._lock:
            return len(self._records)

    def summary(self, since: float = 0.0, until: float | None = None) -> Summary:
        end = until if until is not None else (self.t_end or time.monotonic())
        with self._lock:
            reconnects = self._reconnects
        begin = max(since, self.t0)
        return summarize(self.records(since, until), reconnects, max(0.0, end - begin),
                         self.t0)

    def wait_for(self, n: int, timeout: float = 10.0, pred: Any = None) -> None:
        """Wait (bounded) until ``n`` more records (matching ``pred``) exist."""
        start = time.monotonic()
        deadline = start + timeout
        have = len([r for r in self.records() if pred is None or pred(r)])
        while True:
            now = len([r for r in self.records() if pred is None or pred(r)])
            if now - have >= n:
                return
            if time.monotonic() > deadline or not self.running:
                raise AssertionError(f"loadgen: {now - have}/{n} requests within {timeout}s; "
                                     + self.summary().describe())
            time.sleep(0.01)

    # ------------------------------------------------------------- clients
    def _take(self) -> bool:
        """Claim one request of the budget; False when the run is over."""
        if self._stop.is_set() or time.monotonic() >= self._deadline:
            return False
        with self._lock:
            if self._issued >= self.max_requests:
                return False
            self._issued += 1
            return True

    def _record(self, rec: Record) -> None:
        with self._lock:
            self._records.append(rec)

    def _run(self, idx: int, keepalive: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while self._take():
                if keepalive:
                    if conn is not None and (conn.sock is None or _closed_by_peer(conn.sock)):
                        # The server closed it (Connection: close, or idle close)
                        # before we sent anything: reconnect, not a failure.
                        conn.close()
                        conn = None
                        with self._lock:
                            self._reconnects += 1
                    reused = conn is not None
                    if conn is None:
                        conn = http.client.HTTPConnection(self.host, self.port,
                                                          timeout=self.timeout)
                    ok = self._one(idx, True, reused, conn)
                    if not ok:
                        conn.close()
                        conn = None
                else:
                    c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                    try:
                        self._one(idx, False, False, c)
                    finally:
                        c.close()
                if self.pause:
                    time.sleep(self.pause)
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                if not any(t.is_alive() for t in self._workers
                           if t is not threading.current_thread()):
                    self.t_end = time.monotonic()

    def _one(self, idx: int, keepalive: bool, reused: bool,
             conn: http.client.HTTPConnection) -> bool:
        """One request on ``conn``; record it; True if the connection is still usable."""
        start = time.monotonic()
        phase = "connect"
        try:
            if conn.sock is None:
                conn.connect()
            phase = "send"
            headers = {} if keepalive else {"Connection": "close"}
            conn.request(self.method, self.path, headers=headers)
            phase = "response"
            resp = conn.getresponse()
            body = resp.read()
        except Exception as exc:  # every failure is recorded, none is retried
            self._record(Record(idx, keepalive, reused, start, time.monotonic() - start,
                                _classify(exc), phase=phase,
                                detail=f"{type(exc).__name__}: {exc}"))
            return False
        latency = time.monotonic() - start

        def num(rx: re.Pattern[bytes]) -> int | None:
            m = rx.search(body)
            return int(m.group(1)) if m else None

        outcome = "ok" if resp.status == 200 else "status"
        self._record(Record(idx, keepalive, reused, start, latency, outcome,
                            status=resp.status,
                            pid=num(_PID), ppid=num(_PPID), gen=num(_GEN),
                            phase="response" if outcome != "ok" else "",
                            detail="" if outcome == "ok" else f"HTTP {resp.status}"))
        return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--keepalive", type=int, default=None,
                   help="how many threads reuse their connection (default: half)")
    p.add_argument("--duration", type=float, default=10.0, help="max seconds")
    p.add_argument("--requests", type=int, default=1_000_000, help="max requests in total")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--pause", type=float, default=0.0)
    args = p.parse_args(argv)
    gen = LoadGen(args.port, host=args.host, path=args.path, threads=args.threads,
                  keepalive=args.keepalive, max_duration=args.duration,
                  max_requests=args.requests, timeout=args.timeout, pause=args.pause).start()
    while gen.running:
        time.sleep(0.05)
    s = gen.stop()
    print(json.dumps(s.as_dict(), indent=2))
    return 0 if s.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
