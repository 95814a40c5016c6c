"""Shared fixtures: run a real ``aeterna start`` and wait on what it says.

``Aeterna`` starts the manager as a subprocess on a unit directory in
``tmp_path``, reads its stdout and stderr on threads, and lets a test wait for a
log line (an event) with a bounded deadline instead of sleeping.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aeterna.api.client import request  # noqa: E402

AETERNA = [sys.executable, "-m", "aeterna.cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (bind 0, read, release)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_root() -> bool:
    return os.geteuid() == 0


def can_unshare_pid() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


# epoll_wait and epoll_pwait, by architecture (/proc/PID/syscall's first field).
_EPOLL_WAIT = {"x86_64": {"232", "281"}, "aarch64": {"22"}}


def _in_epoll_wait(pid: int) -> bool:
    import platform

    wanted = _EPOLL_WAIT.get(platform.machine())
    try:
        with open(f"/proc/{pid}/syscall") as f:
            nr = f.read().split()[0]
    except (OSError, IndexError):
        return True  # cannot tell here: measure anyway
    return wanted is None or nr in wanted


def idle_activity(pid: int, window: float) -> tuple[int, float]:
    """(context switches, CPU seconds) of ``pid`` over ``window`` s, measured from
    when it sleeps in epoll_wait: going to sleep is itself a context switch, and
    a log line can reach the test before the manager is back there."""
    import psutil

    proc = psutil.Process(pid)
    deadline = time.monotonic() + 5
    while not _in_epoll_wait(pid):
        assert time.monotonic() < deadline, "the manager never went to sleep in epoll_wait"
        time.sleep(0.01)
    c0, t0 = proc.num_ctx_switches(), proc.cpu_times()
    time.sleep(window)  # the measurement window itself, not a wait for an event
    c1, t1 = proc.num_ctx_switches(), proc.cpu_times()
    return ((c1.voluntary + c1.involuntary) - (c0.voluntary + c0.involuntary),
            (t1.user + t1.system) - (t0.user + t0.system))


class Aeterna:
    """A running manager under test."""

    def __init__(self, tmp: Path, config: Path | list[Path], prefix: list[str] | None = None,
                 env: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 control: str | None = None):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.control = control or str(tmp / "control.sock")
        configs = config if isinstance(config, list) else [config]
        cmd = [*(prefix or []), *AETERNA, "--control", self.control, "start"]
        for c in configs:
            cmd += ["-c", str(c)]
        cmd += extra_args or []
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT)
        full_env.update(env or {})
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=full_env, cwd=str(tmp))
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._pump, args=(s,), daemon=True)
                         for s in (self.proc.stdout, self.proc.stderr)]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    # ---------------------------------------------------------------- waiting
    def wait_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait for a line matching ``pattern`` (regex search); fail after ``timeout``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; "
                                         f"output:\n" + "\n".join(self.lines[-60:]))
                self.cond.wait(left)

    def index_of(self, pattern: str) -> int:
        """The index of the first output line matching ``pattern`` (it must exist)."""
        rx = re.compile(pattern)
        with self.cond:
            for i, line in enumerate(self.lines):
                if rx.search(line):
                    return i
        raise AssertionError(f"no line matching {pattern!r}:\n{self.output()}")

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        with self.cond:
            return sum(1 for line in self.lines if rx.search(line))

    def matching(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        with self.cond:
            return [line for line in self.lines if rx.search(line)]

    def wait_ready(self, timeout: float = 10.0) -> None:
        self.wait_line(r"aeterna: manager\.started", timeout)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.control):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("control socket never appeared:\n" + self.output())
            time.sleep(0.01)

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("aeterna did not exit; output:\n" + self.output()) from None
        for t in self._threads:
            t.join(5)
        return rc

    def ctl(self, verb: str, unit: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        return request(self.control, verb, unit, timeout=timeout)

    def status(self, unit: str) -> dict[str, Any]:
        reply = self.ctl("status", unit)
        assert reply["ok"], reply
        result: dict[str, Any] = reply["result"]["units"][0]
        return result

    def wait_status(self, unit: str, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Poll the status (bounded) until ``pred(status)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.status(unit)
            except (FileNotFoundError, ConnectionRefusedError):
                st = {}  # the manager has not opened its control socket yet
            if st and pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"status of {unit} never matched: {st}\n" + self.output())
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def write_units(directory: Path, units: dict[str, str]) -> Path:
    """Write ``{filename: yaml text}`` into ``directory`` (dedented)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip())
    return directory


@pytest.fixture
def aeterna(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``aeterna(units_dict_or_path, **kw)`` starts a manager, stopped at teardown."""
    started: list[Aeterna] = []

    def start(units: dict[str, str] | Path | list[Path], **kw: Any) -> Aeterna:
        # Each manager gets its own directory: units, control socket, cwd.
        home = tmp_path if not started else tmp_path / f"m{len(started)}"
        if isinstance(units, dict):
            config: Path | list[Path] = write_units(home / "units", units)
        else:
            config = units
        a = Aeterna(home, config, **kw)
        started.append(a)
        return a

    yield start
    for a in started:
        a.kill()
