"""``aeterna daemon-reexec`` under load: how long it takes, and what a client waits.

One manager runs N units (N = 1 and 100): an HTTP app on a socket the manager
holds (``LISTEN_FDS``; a tiny accept loop, ``bench/reexec.py --app``), and
N-1 ``sleep`` units. A bounded load (``tests/loadgen.py``, 2 threads, new
connection per request) runs against the app while the manager is re-executed
K times, each by the control request ``daemon-reexec`` (what ``aeterna
daemon-reexec`` sends) with this checkout's ``aeterna`` as the new binary.

- **re-exec**: from the request to its answer, which the *new* manager sends
  once its control socket serves (the check child's run included).
- **longest wait**: the longest a load request took that was sent during a
  re-exec window, beside the baseline of the same run: the longest during a
  steady window of the same length before the first re-exec.

Goal (issue 15): under 300 ms at 100 units, and no request waits longer than
the re-exec itself (the app, not the manager, answers requests: the manager
is out of the data path).

    .venv/bin/python bench/reexec.py [--reexecs 10] [--no-doc]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

sys.path.insert(0, str(c.REPO))
sys.path.insert(0, str(c.REPO / "tests"))

from loadgen import LoadGen  # noqa: E402

from aeterna.api.client import request  # noqa: E402

SECTION = "daemon-reexec"
PY = sys.executable


def app() -> None:
    """The HTTP unit: answer every request on the inherited listener (fd 3)."""
    s = socket.socket(fileno=3)
    while True:
        conn, _ = s.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def run(n: int, reexecs: int, tmp: Path) -> dict[str, float]:
    units = tmp / f"units-{n}"
    units.mkdir()
    port = c.free_port()
    (units / "web.yaml").write_text(
        f"service:\n  name: web\n  command: [{PY!r}, {__file__!r}, --app]\n"
        f"  sockets: [{{listen: '127.0.0.1:{port}'}}]\n")
    for i in range(n - 1):
        (units / f"s{i}.yaml").write_text(f"service:\n  name: s{i}\n  command: [sleep, '3600']\n")
    control = str(tmp / f"control-{n}.sock")
    new = tmp / "aeterna"
    new.write_text(f"#!/bin/sh\nPYTHONPATH={c.REPO} exec {PY} -m aeterna.cli \"$@\"\n")
    new.chmod(0o755)
    mgr = subprocess.Popen([PY, "-m", "aeterna.cli", "--control", control, "start", "-c",
                            str(units)], env={**os.environ, "PYTHONPATH": str(c.REPO)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        def all_up() -> bool:
            try:
                st = request(control, "status", None, timeout=10)["result"]["units"]
            except OSError:
                return False
            return len(st) == n and all(u["state"] == "active" for u in st)

        assert c.wait_until(all_up, 60), "units never came up"
        lg = LoadGen(port, threads=2, max_duration=120.0, max_requests=200_000,
                     timeout=10.0, pause=0.001).start()
        try:
            lg.wait_for(50, timeout=15)
            time.sleep(3.0)  # the steady window (baseline) lies in here
            took, windows = [], []
            for _ in range(reexecs):
                t0 = time.monotonic()
                reply = request(control, "daemon-reexec", None, timeout=60, exec=str(new))
                t1 = time.monotonic()
                assert reply["ok"], reply
                took.append(t1 - t0)
                windows.append((t0, t1))
                time.sleep(0.3)
            span = max(t1 - t0 for t0, t1 in windows)
            first = windows[0][0]
            steady = lg.summary(since=first - 0.2 - span, until=first - 0.2)
            during = [lg.summary(since=t0, until=t1) for t0, t1 in windows]
        finally:
            total = lg.stop()
    finally:
        c.stop(mgr, 30)
    return {"units": n, "reexec_ms": c.median(took) * 1000, "reexec_max_ms": max(took) * 1000,
            "wait_ms": max(s.latency_max for s in during) * 1000,
            "steady_wait_ms": steady.latency_max * 1000, "failed": total.failed,
            "requests": total.requests, "reexecs": reexecs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reexecs", type=int, default=10)
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--app", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.app:
        app()
        return 0
    load = c.start_bench()
    with tempfile.TemporaryDirectory(prefix="aeterna-bench-reexec-") as d:
        results = [run(n, args.reexecs, Path(d)) for n in (1, 100)]
    rows = [(r["units"], f"{r['reexec_ms']:.0f}", f"{r['reexec_max_ms']:.0f}",
             f"{r['wait_ms']:.1f}", f"{r['steady_wait_ms']:.1f}",
             f"{r['wait_ms'] / max(r['steady_wait_ms'], 0.001):.1f}x",
             f"{r['wait_ms'] / r['reexec_ms']:.2f}", f"{r['failed']} / {r['requests']}")
            for r in results]
    body = (f"`bench/reexec.py` ({args.reexecs} re-execs per row; {c.machine()}; load average "
            f"{load} at the start). Re-exec: control request to the new manager's answer "
            "(median, max), the new binary's `--check-state` child included. Longest wait: the "
            "slowest load request sent during a re-exec, beside the slowest of a steady window "
            "of the same length before it (the baseline), and as a fraction of the re-exec's "
            "median.\n\n"
            + c.md_table(["units", "re-exec median ms", "max ms", "longest wait ms",
                          "steady longest ms", "wait / steady", "wait / re-exec",
                          "failed / requests"], rows, [True] * 8)
            + "\n    .venv/bin/python bench/reexec.py --reexecs "
            f"{args.reexecs}\n")
    c.publish(SECTION, body, not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
