"""bench/relay.py's manager-overhead run: Aeterna's hot relay beside the thinnest C relay.

Both relay the same app, which takes its socket from LISTEN_FDS, sends READY=1 at
once and waits for the drain signal: a C program (gcc -O2, static; a Python one
when there is no compiler) that stamps CLOCK_MONOTONIC at ``main()``, just before
READY=1 and when ``sigwaitinfo`` returns the drain signal.

- **Aeterna**: a ``type: notify`` unit with ``strategy: hot-relay``, soak 0, relayed
  ``n`` times by the control request ``reload web``. The relay's ``total`` (in its
  outcome) runs from the relay's start to the drain signal sent to N.
- **Baseline**: ``minrelay`` (C, below), the least a supervisor can do for a relay:
  keep the listening socket, ``posix_spawn`` N+1 with it as fd 3 and a
  NOTIFY_SOCKET, block in ``recv`` until READY=1, ``kill`` N, reap it. Its stamps
  before ``posix_spawn`` and after ``recv`` give **the app's own start-to-ready**:
  what starting this app and hearing it is ready costs with no manager at all
  (most of it is the kernel's exec and the program's start-up before ``main()``).

The baseline runs ``n/2`` relays before Aeterna's and ``n/2`` after, with the
same pacing (N reaped, then 10 ms idle), so that drift of a shared machine falls
on both. The issue's overhead, "a relay's total time minus the app's own
start-to-ready", is Aeterna's ``total`` minus the baseline's start-to-ready
(medians); "READY=1 → drain signal" is stamped by the apps (N+1's READY=1 → N
has the signal), beside the same figure for the baseline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c

from aeterna.api.client import request

GOAL_OVERHEAD_MS = 1.0
PACE_S = 0.01  # idle between relays, after N is gone

# --------------------------------------------------------------------------- the app
NOTIFY_C = r"""
/* bench/relay_overhead.py's app: READY=1 at once, then wait for the drain signal.
   argv[1]: a file to append "ready PID T_MAIN T_READY" and "term PID T" to (ns). */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    long long t_main = ns();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    const char *fds = getenv("LISTEN_FDS"), *path = getenv("NOTIFY_SOCKET");
    if (argc < 2 || !fds || atoi(fds) < 1 || !path) return 2;
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return 3;
    long long t_ready = ns();
    if (sendto(s, "READY=1", 7, 0, (struct sockaddr *)&a, sizeof a) != 7) return 4;
    int out = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    dprintf(out, "ready %d %lld %lld\n", (int)getpid(), t_main, t_ready);
    siginfo_t info;
    while (sigwaitinfo(&set, &info) < 0) {}
    long long t_term = ns();
    dprintf(out, "term %d %lld\n", (int)getpid(), t_term);
    return 0;
}
"""

NOTIFY_PY = r"""
import os, signal, socket, sys, time
t_main = time.monotonic_ns()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
assert int(os.environ["LISTEN_FDS"]) >= 1
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
t_ready = time.monotonic_ns()
s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
with open(sys.argv[1], "a") as f:
    f.write(f"ready {os.getpid()} {t_main} {t_ready}\n")
signal.sigwaitinfo({signal.SIGTERM, signal.SIGINT})
t_term = time.monotonic_ns()
with open(sys.argv[1], "a") as f:
    f.write(f"term {os.getpid()} {t_term}\n")
"""

# --------------------------------------------------------------------------- the baseline
MINRELAY_C = r"""
/* bench/relay_overhead.py's baseline: the least a supervisor can do for a relay.
   usage: minrelay COUNT PACE_US NOTIFY_PATH OUT APP [ARGS...]
   Keeps one listening socket; starts APP with it as fd 3 (LISTEN_FDS=1) and
   NOTIFY_SOCKET; then COUNT times: spawn N+1, wait for its READY=1, SIGTERM N,
   reap N, idle PACE_US. Appends "relay OLD NEW T_SPAWN T_READY T_TERM" (ns) to OUT. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static int listen_fd, notify_fd;
static char **child_env;

static long long ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static pid_t spawn(char **argv) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, listen_fd, 3);
    pid_t pid;
    int e = posix_spawn(&pid, argv[0], &fa, NULL, argv, child_env);
    posix_spawn_file_actions_destroy(&fa);
    if (e) { errno = e; perror("posix_spawn"); exit(1); }
    return pid;
}

static void wait_ready(void) {
    char buf[4097];
    for (;;) {
        ssize_t n = recv(notify_fd, buf, sizeof buf - 1, 0);
        if (n < 0) { if (errno == EINTR) continue; perror("recv"); exit(1); }
        buf[n] = 0;
        if (strstr(buf, "READY=1")) return;
    }
}

int main(int argc, char **argv) {
    if (argc < 6) return 2;
    int count = atoi(argv[1]);
    long pace = atol(argv[2]);
    FILE *out = fopen(argv[4], "a");
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (!out || s < 0 || bind(s, (struct sockaddr *)&in, sizeof in) || listen(s, 128)) {
        perror("setup"); return 1;
    }
    listen_fd = fcntl(s, F_DUPFD_CLOEXEC, 10); /* never fd 3 itself: dup2 onto it */
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    strncpy(un.sun_path, argv[3], sizeof un.sun_path - 1);
    unlink(argv[3]);
    if (bind(notify_fd, (struct sockaddr *)&un, sizeof un)) { perror("bind"); return 1; }
    int n = 0;
    while (environ[n]) n++;
    child_env = calloc(n + 3, sizeof *child_env);
    memcpy(child_env, environ, n * sizeof *child_env);
    child_env[n] = "LISTEN_FDS=1";
    child_env[n + 1] = malloc(strlen(argv[3]) + 16);
    sprintf(child_env[n + 1], "NOTIFY_SOCKET=%s", argv[3]);
    pid_t old = spawn(argv + 5);
    wait_ready();
    for (int i = 0; i < count; i++) {
        long long t0 = ns();
        pid_t new = spawn(argv + 5);
        wait_ready();
        long long t1 = ns();
        kill(old, SIGTERM);
        long long t2 = ns();
        waitpid(old, NULL, 0);
        fprintf(out, "relay %d %d %lld %lld %lld\n", (int)old, (int)new, t0, t1, t2);
        old = new;
        usleep(pace);
    }
    kill(old, SIGTERM);
    waitpid(old, NULL, 0);
    fclose(out);
    return 0;
}
"""


def _gcc() -> str | None:
    return shutil.which("gcc") or shutil.which("cc")


def build_app(d: Path) -> tuple[list[str], str]:
    """The app's argv prefix and a description of it."""
    gcc = _gcc()
    if gcc:
        src = d / "ready_now.c"
        src.write_text(NOTIFY_C)
        exe = d / "ready_now"
        for flags, what in ((["-static"], "static"), ([], "dynamic")):
            r = subprocess.run([gcc, "-O2", *flags, "-o", str(exe), str(src)],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return [str(exe)], f"a C program (gcc -O2, {what}ally linked)"
    script = d / "ready_now.py"
    script.write_text(NOTIFY_PY)
    return [sys.executable, "-S", str(script)], "a Python program (no C compiler here)"


def build_minrelay(d: Path) -> str | None:
    gcc = _gcc()
    if gcc is None:
        return None
    src = d / "minrelay.c"
    src.write_text(MINRELAY_C)
    exe = d / "minrelay"
    r = subprocess.run([gcc, "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
    return str(exe) if r.returncode == 0 else None


def read_stamps(path: Path) -> tuple[dict[int, tuple[int, int]], dict[int, int]]:
    """The app's stamps: pid -> (main, ready) and pid -> term, in ns."""
    ready: dict[int, tuple[int, int]] = {}
    term: dict[int, int] = {}
    if not path.exists():
        return ready, term
    for line in path.read_text().splitlines():
        f = line.split()
        if f[0] == "ready":
            ready[int(f[1])] = (int(f[2]), int(f[3]))
        elif f[0] == "term":
            term[int(f[1])] = int(f[2])
    return ready, term


# --------------------------------------------------------------------------- runs
def run_baseline(minrelay: str, app: list[str], n: int, d: Path,
                 tag: str) -> list[dict[str, float]]:
    """``n`` relays by minrelay; per relay, in ms: total, start-to-ready, READY=1 → N has
    the signal, and the app's main() → READY=1."""
    times, out = d / f"base-{tag}-times.txt", d / f"base-{tag}.txt"
    subprocess.run([minrelay, str(n), str(int(PACE_S * 1e6)), str(d / f"notify-{tag}"),
                    str(out), *app, str(times)], check=True, timeout=60 + n * 0.1,
                   stdin=subprocess.DEVNULL)
    ready, term = read_stamps(times)
    rows = []
    for line in out.read_text().splitlines():
        _, old, new, t0, t1, t2 = line.split()
        if int(new) not in ready or int(old) not in term:
            continue
        t_main, t_ready = ready[int(new)]
        rows.append({"total": (int(t2) - int(t0)) / 1e6, "s2r": (int(t1) - int(t0)) / 1e6,
                     "ready_to_drain": (term[int(old)] - t_ready) / 1e6,
                     "main_to_ready": (t_ready - t_main) / 1e6})
    return rows


def aeterna_unit(port: int, command: list[str], strategy: str, soak: str, drain: str) -> str:
    """The ``web`` unit every Aeterna run of bench/relay.py relays."""
    return (
        "service:\n"
        "  name: web\n"
        f"  command: {json.dumps(command)}\n"
        "  type: notify\n"
        f'  sockets: [{{listen: "127.0.0.1:{port}", name: http}}]\n'
        "  timeouts: {start: 30s, stop: 15s}\n"
        "  start_limit: {burst: 0}\n"
        "orchestration:\n"
        f"  strategy: {strategy}\n"
        f"  canary: {{soak_time: {soak}}}\n"
        f"  drain: {{timeout: {drain}}}\n")


def run_aeterna(aeterna: str, app: list[str], n: int, d: Path) -> tuple[list[dict[str, float]],
                                                                           dict[str, list[float]],
                                                                           float]:
    """``n`` hot relays; per relay rows (as run_baseline's, plus the request's round
    trip), the relay phases' durations, and the manager's RSS (MiB)."""
    times = d / "aeterna-times.txt"
    units = d / "units"
    units.mkdir()
    (units / "web.yaml").write_text(aeterna_unit(c.free_port(), [*app, str(times)],
                                                 "hot-relay", "0s", "5s"))
    control = str(d / "control.sock")
    log = open(d / "aeterna.log", "wb")
    proc = subprocess.Popen([aeterna, "--control", control, "start", "-c", str(units)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    ops: list[tuple[float, float, dict[str, Any]]] = []
    try:
        if not c.wait_until(lambda: times.exists() and "ready" in times.read_text(), 20):
            raise RuntimeError(f"the overhead app never got ready; see {d}/aeterna.log")
        for _ in range(n):
            t0 = time.monotonic()
            reply = request(control, "reload", "web", timeout=30)
            t1 = time.monotonic()
            relay = (reply.get("result") or {}).get("relay") or {}
            if relay.get("outcome") != "promoted":
                raise RuntimeError(f"relay failed: {reply}")
            ops.append((t0, t1, relay))
            # The next relay would wait (max_draining: 1) for N to be reaped; let it
            # be, so that each relay runs alone, paced as the baseline's.
            marker = f"term {relay['old_pid']} "
            c.wait_until(lambda: marker in times.read_text(), 5, interval=0.002)  # noqa: B023
            time.sleep(PACE_S)
        rss = (c.rss_kib(proc.pid) or 0) / 1024
    finally:
        c.stop(proc, 10)
        log.close()
    ready, term = read_stamps(times)
    rows: list[dict[str, float]] = []
    phases: dict[str, list[float]] = {}
    for t0, t1, relay in ops:
        for k, v in relay.get("durations", {}).items():
            phases.setdefault(k, []).append(v * 1e3)
        new, old = relay["new_pid"], relay["old_pid"]
        if new not in ready or old not in term:
            continue
        t_main, t_ready = ready[new]
        total = relay["total"] * 1e3
        rows.append({"total": total, "ready_to_drain": (term[old] - t_ready) / 1e6,
                     "main_to_ready": (t_ready - t_main) / 1e6,
                     # The relay ends right after N's drain signal: it started about
                     # (N has the signal − total) before; from there to main() is the spawn.
                     "start_to_main": t_main / 1e6 - (term[old] / 1e6 - total),
                     "reply": (t1 - t0) * 1e3})
    return rows, phases, rss


def run_overhead(n: int, tmp: Path, quiet_wait: float, aeterna: str) -> dict[str, Any]:
    d = tmp / "overhead"
    d.mkdir()
    app, app_desc = build_app(d)
    minrelay = build_minrelay(d)
    print(f"-- manager overhead: {n} relays, soak 0, {app_desc}; baseline: "
          f"{'minrelay (C)' if minrelay else 'none (no C compiler)'}", flush=True)
    busy = c.wait_quiet(quiet_wait)
    base: list[dict[str, float]] = []
    if minrelay:
        base += run_baseline(minrelay, app, n // 2, d, "before")
    rows, phases, rss = run_aeterna(aeterna, app, n, d)
    if minrelay:
        base += run_baseline(minrelay, app, n - n // 2, d, "after")

    def col(rs: list[dict[str, float]], key: str) -> dict[str, float]:
        return c.summary([r[key] for r in rs])

    res: dict[str, Any] = {
        "app": app_desc, "relays": len(rows), "base_relays": len(base), "busy_before": busy,
        "manager_rss_mib": rss, "phases": {k: c.summary(v) for k, v in phases.items()}}
    for key in ("total", "ready_to_drain", "main_to_ready", "start_to_main", "reply"):
        res[key] = col(rows, key)
    for key in ("total", "s2r", "ready_to_drain", "main_to_ready"):
        res["base_" + key] = col(base, key) if base else None
    # The two measures of the manager's own cost (medians):
    res["overhead"] = (res["total"]["median"] - res["base_s2r"]["median"]) if base else None
    res["raw_overhead"] = c.median(r["total"] - r["main_to_ready"] for r in rows)
    res["reply_overhead"] = (res["reply"]["median"] - res["base_s2r"]["median"]) if base else None
    ov = res["overhead"]
    print(f"   READY=1 -> N has the drain signal: median {res['ready_to_drain']['median']:.3f} "
          "ms" + (f" (baseline {res['base_ready_to_drain']['median']:.3f})" if base else "") +
          f"; relay total {res['total']['median']:.3f} ms" +
          (f", baseline start-to-ready {res['base_s2r']['median']:.3f} ms, overhead "
           f"{ov:.3f} ms" if ov is not None else "") +
          f"; total - app main()->READY {res['raw_overhead']:.3f} ms", flush=True)
    print("   phases (median ms): " + ", ".join(f"{k} {v['median']:.3f}"
                                              for k, v in res["phases"].items()), flush=True)
    return res


# --------------------------------------------------------------------------- report
def report_blocks(ov: dict[str, Any]) -> list[str]:
    blocks = [
        f"**Manager overhead**: {ov['relays']} hot relays with no load (others used "
        f"{ov['busy_before']:.0%} of the CPUs just before), soak 0, `drain.timeout` 5 s, beside "
        f"{ov['base_relays']} relays of the same app by `minrelay`, a C program that does the "
        "least a supervisor can: `posix_spawn` N+1 with the listening socket as fd 3 and a "
        "NOTIFY_SOCKET, `recv` until READY=1, `kill` N, reap it (half its relays before "
        "Aeterna's, half after; both idle 10 ms after N is gone). Its `posix_spawn` → "
        "READY=1 received is **the app's own start-to-ready**: what starting this app costs "
        f"with no manager. The app is {ov['app']} that takes its socket from LISTEN_FDS, "
        "sends READY=1 at once and stamps CLOCK_MONOTONIC at `main()`, before READY=1, and "
        "when `sigwaitinfo` returns the drain signal. Aeterna's `total` runs from the "
        "relay's start to the drain signal sent (its outcome); READY=1 → drain signal is "
        "stamped by the apps, so it includes the datagram's and the signal's delivery and "
        "both processes' wake-ups, for both supervisors."]
    base = ov["base_total"] is not None
    rows = []

    def row(what: str, v: dict[str, float] | None, b: dict[str, float] | None) -> None:
        cells = [f"{v['median']:.3f}", f"{v['p90']:.3f}"] if v else ["–", "–"]
        cells += [f"{b['median']:.3f}", f"{b['p90']:.3f}"] if b else ["–", "–"]
        ratio = f"{v['median'] / b['median']:.2f}" if v and b and b["median"] > 0 else "–"
        rows.append([what, *cells, ratio])

    row("relay total: start → drain signal sent", ov["total"], ov["base_total"])
    row("the app's start-to-ready (spawn → READY=1 received)", None, ov["base_s2r"])
    row("new generation's READY=1 sent → old one has the drain signal", ov["ready_to_drain"],
        ov["base_ready_to_drain"])
    row("relay start → the new app's `main()` (the spawn, about)", ov["start_to_main"], None)
    row("the app's `main()` → READY=1", ov["main_to_ready"], ov["base_main_to_ready"])
    row("`reload web` request → reply (request, unit files re-read, relay)", ov["reply"], None)
    blocks.append(c.md_table(["ms", "Aeterna median", "p90", "minrelay median", "p90",
                              "ratio"], rows, [False, True, True, True, True, True]).rstrip())
    lines = []
    if base:
        lines.append(f"- **relay total − the app's start-to-ready: {ov['overhead']:.3f} ms** "
                     f"(medians, {ov['total']['median']:.3f} − {ov['base_s2r']['median']:.3f}): "
                     "the manager's own cost of a relay. The request's round trip adds "
                     f"the control socket and the re-read of the unit files: "
                     f"{ov['reply_overhead']:.3f} ms over the app's start-to-ready.")
    lines.append(f"- relay total − the app's `main()` → READY=1: {ov['raw_overhead']:.3f} ms "
                 "(median). This one also charges the manager with the kernel's exec of the "
                 "app and the program's start-up before `main()`"
                 + (f", which the baseline pays too: {ov['base_s2r']['median']:.3f} ms from "
                    "its `posix_spawn` to READY=1" if base else "") + ".")
    lines.append("- phases of Aeterna's relays (median ms): " + ", ".join(
        f"{k} {v['median']:.3f}" for k, v in ov["phases"].items()) + ".")
    blocks.append("\n".join(lines))
    return blocks


def goal_row(ov: dict[str, Any]) -> list[str]:
    a = ov["ready_to_drain"]["median"]
    b = ov["overhead"] if ov["overhead"] is not None else ov["raw_overhead"]
    what = ("relay total − app start-to-ready" if ov["overhead"] is not None else
            "relay total − app main()→READY (no baseline: no C compiler)")
    return [f"manager overhead < {GOAL_OVERHEAD_MS:g} ms (median)",
            f"READY=1 → drain signal {a:.3f} ms; {what} {b:.3f} ms",
            "yes" if max(a, b) < GOAL_OVERHEAD_MS else "no"]

