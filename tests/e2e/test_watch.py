"""Relay when files change (orchestration.watch), with a Kubernetes ConfigMap update
reproduced exactly: kubelet's atomic writer writes a new ``..<timestamp>`` directory,
points a ``..data_tmp`` symlink at it, renames it over ``..data`` and removes the old
directory; the files the app reads are symlinks through ``..data``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_port
from loadgen import LoadGen

HELLO = ROOT / "examples" / "hello" / "app.py"
PROMOTED = r"relay\.outcome unit=web outcome=promoted"
ROLLED_BACK = r"relay\.outcome unit=web outcome=rolled-back"


class ConfigMap:
    """A ConfigMap volume in ``directory``, updated the way the kubelet does it."""

    def __init__(self, directory: Path, data: dict[str, str]):
        self.dir = directory
        directory.mkdir(parents=True)
        self.n = 0
        self.update(data)
        for key in data:
            os.symlink(f"..data/{key}", directory / key)

    def update(self, data: dict[str, str]) -> None:
        self.n += 1
        ts = self.dir / f"..2026_12_02_17_00_{self.n:02d}.{os.getpid()}"
        ts.mkdir()
        for key, value in data.items():
            (ts / key).write_text(value)
        old = os.readlink(self.dir / "..data") if (self.dir / "..data").is_symlink() else None
        os.symlink(ts.name, self.dir / "..data_tmp")
        os.rename(self.dir / "..data_tmp", self.dir / "..data")
        if old is not None:
            shutil.rmtree(self.dir / old)


def _unit(port: int, config: Path, watch: str, metrics: int = 0) -> str:
    # The app refuses a config that does not say "ok": N+1 exits at start.
    check = f"grep -qx ok {config}/app.conf || {{ echo broken config; exit 1; }}"
    return textwrap.dedent(f"""\
        service:
          name: web
          type: notify
          command: ["sh", "-c", "{check}; exec python3 {HELLO}"]
          sockets: [{{listen: "127.0.0.1:{port}", name: http}}]
        orchestration:
          strategy: hot-relay
          canary: {{soak_time: 200ms}}
          drain: {{timeout: 5s}}
          watch: [{watch}]
          watch_debounce: 200ms
        """) + (f'observability: {{metrics_port: "127.0.0.1:{metrics}"}}\n' if metrics else "")


class Readiness:
    """Polls /readyz every 20 ms on a thread (bounded: 120 s) and counts the answers."""

    def __init__(self, port: int):
        self.port = port
        self.answers: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Readiness:
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/readyz")
                self.answers[conn.getresponse().status] += 1
            except OSError:
                self.answers[0] += 1
            finally:
                conn.close()
            self._stop.wait(0.02)

    def stop(self) -> Counter[int]:
        self._stop.set()
        self._thread.join(5)
        return self.answers


def _quiet(m: Any, pattern: str, n: int, window: float = 1.0) -> None:
    """Nothing more matching ``pattern`` for ``window`` s (five debounces): no extra relay."""
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        assert m.count(pattern) == n, m.output()[-3000:]
        time.sleep(0.05)


@pytest.mark.parametrize("watch", ["directory", "file"])
def test_configmap_swaps_relay_once_each_under_load(aeterna: Any, tmp_path: Path,
                                                    watch: str) -> None:
    port, metrics = free_port(), free_port()
    cm = ConfigMap(tmp_path / "config", {"app.conf": "ok\n"})
    target = cm.dir if watch == "directory" else cm.dir / "app.conf"
    m = aeterna({"web.yaml": _unit(port, cm.dir, str(target), metrics)})
    m.wait_line(r"unit\.state unit=web old=starting new=active", timeout=20)
    ready = Readiness(metrics).start()  # a pod stays ready through relays and rollbacks
    load = LoadGen(port, threads=3, keepalive=2, max_duration=120, max_requests=200_000,
                   timeout=5, pause=0.002).start()
    load.wait_for(50, timeout=20)
    for i in range(10):
        cm.update({"app.conf": "ok\n"})
        assert _wait_count(m, PROMOTED, i + 1), m.output()[-3000:]
    _quiet(m, r"relay\.phase unit=web phase=pre-flight", 10)
    assert m.count(r"watch\.changed unit=web action=relay") == 10

    # A broken configuration: N+1 exits at start, the relay rolls back, N serves on.
    pid = m.status("web")["main_pid"]
    cm.update({"app.conf": "broken\n"})
    assert _wait_count(m, ROLLED_BACK, 1), m.output()[-3000:]
    assert "reason=exited-at-start" in m.matching(ROLLED_BACK)[0]
    assert m.status("web")["main_pid"] == pid
    load.wait_for(50, timeout=20)
    summary = load.stop()
    answers = ready.stop()
    print(summary.describe(), f"/readyz: {answers}")
    assert summary.failed == 0, summary.describe()
    assert m.count(PROMOTED) == 10
    assert set(answers) == {200} and answers[200] > 100, answers


def _wait_count(m: Any, pattern: str, n: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m.count(pattern) >= n:
            return True
        time.sleep(0.02)
    return False


def test_a_changed_unit_file_in_a_watched_directory_reloads(aeterna: Any,
                                                            tmp_path: Path) -> None:
    port = free_port()
    cm = ConfigMap(tmp_path / "config", {"app.conf": "ok\n"})
    units = tmp_path / "units"
    units.mkdir()
    (units / "web.yaml").write_text(_unit(port, cm.dir, str(units)))
    m = aeterna(units)
    m.wait_line(r"unit\.state unit=web old=starting new=active", timeout=20)

    # Broken unit file: nothing is done, the running configuration is kept.
    (units / "web.yaml").write_text("service: [not, a, mapping]\n")
    m.wait_line(r"watch\.rejected units=web reason=\"?invalid unit files", timeout=10)
    assert m.count(r"relay\.phase") == 0

    # A real change (an environment variable): reloaded as `aeterna reload` does.
    text = _unit(port, cm.dir, str(units)).replace(
        "  type: notify\n", "  type: notify\n  env: [\"GREETING=v2\"]\n")
    (units / "web.yaml").write_text(text)
    m.wait_line(r"watch\.changed units=web action=reload", timeout=10)
    m.wait_line(r"reload\.diff unit=web change=changed", timeout=10)
    assert _wait_count(m, PROMOTED, 1), m.output()[-3000:]
    _quiet(m, r"relay\.phase unit=web phase=pre-flight", 1)
    pid = m.status("web")["main_pid"]
    assert "GREETING=v2" in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
