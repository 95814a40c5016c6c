"""A unit's log ring stays bounded under a unit that prints 100k lines a second."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
from conftest import AETERNA, ROOT

from aeterna.api.client import request
from aeterna.manager.journal import MAX_BYTES, MAX_LINES

# 1000 lines of 60 bytes every 10 ms for 5 s: 100k lines/s, 500k lines in all.
FLOOD = textwrap.dedent("""\
    import sys, time
    line = b"x" * 50
    out = sys.stdout.buffer
    t0 = time.monotonic()
    n = 0
    for batch in range(500):
        out.write(b"".join(b"%09d " % (n + i) + line + b"\\n" for i in range(1000)))
        out.flush()
        n += 1000
        time.sleep(max(0.0, t0 + (batch + 1) * 0.01 - time.monotonic()))
    print("done", n, flush=True)
    time.sleep(3600)
""")


def test_ring_memory_is_bounded_under_100k_lines_a_second(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (tmp_path / "flood.py").write_text(FLOOD)
    (units / "flood.yaml").write_text(
        f"service:\n  name: flood\n  command: [{sys.executable}, {tmp_path / 'flood.py'}]\n")
    control = str(tmp_path / "control.sock")
    # The manager's own copy of the output goes to /dev/null: what is measured is
    # the ring, not a test harness reading half a million lines.
    proc = subprocess.Popen([*AETERNA, "--control", control, "start", "-c", str(units)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(control):
            assert time.monotonic() < deadline and proc.poll() is None, "no control socket"
            time.sleep(0.02)
        manager = psutil.Process(proc.pid)

        def ring() -> dict[str, int]:
            reply = request(control, "logs", "flood", lines=0, timeout=10)
            assert reply["ok"], reply
            stats: dict[str, int] = reply["result"]["ring"]
            return stats

        while ring()["last_seq"] < 100_000:  # a second's worth: the ring is long full
            assert time.monotonic() < deadline, ring()
            time.sleep(0.05)
        rss_full = manager.memory_info().rss
        while ring()["last_seq"] < 500_001:  # every line, and "done"
            assert time.monotonic() < deadline + 10, ring()
            time.sleep(0.05)
        stats = ring()
        rss_end = manager.memory_info().rss
        print(f"ring {stats}, manager rss {rss_full >> 20} MiB -> {rss_end >> 20} MiB")
        assert stats["lines"] <= MAX_LINES and stats["bytes"] <= MAX_BYTES, stats
        assert stats["dropped"] == stats["last_seq"] - stats["lines"]
        # 400k more lines went through a full ring: its memory did not grow with them.
        assert rss_end - rss_full < 8 * 1024 * 1024, (rss_full, rss_end)
        last = request(control, "logs", "flood", lines=2, timeout=10)["result"]["entries"]
        assert [e["text"] for e in last] == ["000499999 " + "x" * 50, "done 500000"]
    finally:
        proc.terminate()
        proc.wait(20)
