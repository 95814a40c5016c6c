"""Small helpers shared by the bench/ scripts.

Reading one process's footprint from /proc, finding and killing a process tree,
and writing a script's section of docs/benchmarks.md. Linux only; no third-party
imports.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import fcntl
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
DOC_HEADER = (
    "# Benchmarks\n\n"
    "Each section below is written by one script in `bench/` (named in the section);\n"
    "do not edit a section by hand, run its script again. `make bench` runs them all.\n"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36


# --------------------------------------------------------------------------- /proc readings
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # gone, or not ours
        return None


def _kib_field(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def rss_kib(pid: int) -> int | None:
    """Resident set size (VmRSS) in KiB."""
    return _kib_field(_read(f"/proc/{pid}/status"), "VmRSS")


def pss_kib(pid: int) -> int | None:
    """Proportional set size (shared pages divided among their users) in KiB."""
    return _kib_field(_read(f"/proc/{pid}/smaps_rollup"), "Pss")


def ctx_switches(pid: int) -> tuple[int, int] | None:
    """(voluntary, involuntary) context switches, all threads of the process."""
    text = _read(f"/proc/{pid}/status")
    vol = _kib_field(text, "voluntary_ctxt_switches")
    invol = _kib_field(text, "nonvoluntary_ctxt_switches")
    return None if vol is None or invol is None else (vol, invol)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)``: index 0 is state, 1 is ppid."""
    text = _read(f"/proc/{pid}/stat")
    return None if text is None else text[text.rfind(")") + 2:].split()


def cpu_ticks(pid: int) -> int | None:
    """utime + stime in clock ticks (1/CLK_TCK s) of the process itself, children excluded."""
    f = _stat_fields(pid)
    return None if f is None else int(f[11]) + int(f[12])


def cpu_ns(pid: int) -> int | None:
    """CPU time in ns from /proc/PID/schedstat (finer than ticks); None if unavailable."""
    text = _read(f"/proc/{pid}/schedstat")
    return int(text.split()[0]) if text else None


def proc_table() -> dict[int, tuple[int, str]]:
    """Every visible process: pid -> (ppid, comm)."""
    out: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        text = _read(f"/proc/{name}/stat")
        if text is None:
            continue
        comm = text[text.find("(") + 1:text.rfind(")")]
        out[int(name)] = (int(text[text.rfind(")") + 2:].split()[1]), comm)
    return out


def descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    """Pids below ``root`` in the process tree (not ``root`` itself)."""
    table = proc_table() if table is None else table
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def count_descendants(root: int, comm: str) -> int:
    table = proc_table()
    return sum(1 for p in descendants(root, table) if table[p][1] == comm)


# --------------------------------------------------------------------------- process control
def set_subreaper() -> bool:
    """Make orphaned descendants re-parent to us, so that cleanup can still find them."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds have passed; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def session_members(sid: int) -> set[int]:
    """Pids whose session id is ``sid`` (a process started with start_new_session=True
    has sid == its pid, and so do its descendants unless they call setsid)."""
    out: set[int] = set()
    for pid in proc_table():
        f = _stat_fields(pid)
        if f is not None and int(f[3]) == sid and pid != sid:
            out.add(pid)
    return out


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL each pid and its process group (never ours); reap those that are our children."""
    pids = set(pids)
    me, my_group = os.getpid(), os.getpgrp()
    for pid in pids:
        try:
            pgid = os.getpgid(pid)
            if pgid != my_group:
                os.killpg(pgid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    table = proc_table()
    for pid in pids:
        if table.get(pid, (0, ""))[0] == me:  # re-parented to us (we are a subreaper)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def stop(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    """Ask ``proc`` to stop with ``sig``, wait up to ``timeout`` s, then SIGKILL what is left.

    ``proc`` must have been started with ``start_new_session=True``. Whatever
    is left of its tree (known before the signal), its session and its process
    groups is killed, so nothing survives even when ``proc`` misbehaves.
    """
    tree = set(descendants(proc.pid))
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tree |= set(descendants(proc.pid))
            proc.kill()
            proc.wait(timeout)
    for _ in range(5):  # the killed may have forked meanwhile: sweep until nothing is left
        left = {p for p in tree | session_members(proc.pid) if os.path.exists(f"/proc/{p}")}
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not left:
            break
        kill_pids(left)
        tree = set()


# --------------------------------------------------------------------------- machine
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy (not idle, not iowait) over ``interval`` seconds."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v[:8]) - idle, sum(v[:8])
    b0, t0 = sample()
    time.sleep(interval)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 0.2) -> float:
    """Wait (at most ``max_wait`` s) until others leave the CPUs mostly idle; return the
    last busy fraction seen. The machine may be shared: its load is reported, not
    controlled."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = cpu_busy()
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        print(f"   waiting for a quieter machine (CPUs {busy:.0%} busy)", flush=True)


# --------------------------------------------------------------------------- reporting
def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def summary(values: Iterable[float]) -> dict[str, float]:
    """n, median, p90 and max of ``values``."""
    v = sorted(values)
    return {"n": len(v), "median": pct(v, 50), "p90": pct(v, 90),
            "max": v[-1] if v else float("nan")}


def tool_version(argv: Sequence[str]) -> str:
    """First line of ``argv``'s output (stdout or stderr), or '?'."""
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (r.stdout.strip() or r.stderr.strip())
    return text.splitlines()[0] if text else "?"


def machine() -> str:
    """One line: cores, kernel, CPU model, date."""
    model = ""
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{today}; {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
            f"{model or platform.machine()}, Linux {platform.release()}")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
             right: Sequence[bool] | None = None) -> str:
    """A GitHub markdown table; ``right[i]`` right-aligns column i."""
    right = right or [False] * len(headers)
    rule = ["---:" if r else "---" for r in right]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def update_doc_section(heading: str, body: str, path: Path = DOC) -> None:
    """Replace the ``## heading`` section of ``path`` (or append it); keep the rest.

    The file is created with a short header when missing; written atomically.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)  # two scripts may finish at once
        _update_section(path, heading, body)
    finally:
        os.close(dir_fd)


def _update_section(path: Path, heading: str, body: str) -> None:
    title = f"## {heading}"
    text = path.read_text() if path.exists() else DOC_HEADER
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == title), None)
    section = f"{title}\n\n{body.rstrip()}\n"
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        rest = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + rest if rest else "")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def start_bench() -> str:
    """What every benchmark does first: become a subreaper (so the processes it
    starts cannot escape it), turn SIGTERM into a normal exit (so the finally
    blocks that stop them run), and return the 1-minute load average."""
    set_subreaper()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return (_read("/proc/loadavg") or "?").split()[0]


def publish(section: str, body: str, write: bool) -> None:
    """Print a benchmark's section and, unless told not to, write it to the doc."""
    print()
    print(body)
    if write:
        update_doc_section(section, body)
        print(f"\nwrote the '{section}' section of {DOC}")
