"""Footprint: memory and idle CPU of Aeterna beside tini, dumb-init and supervisord.

Each supervisor is started on 1 and then 100 ``sleep 3600`` processes. Once all
the sleeps exist and a settle time has passed, the supervisor process alone (not
its children) is measured over an idle window:

- RSS (VmRSS of /proc/PID/status) and PSS (/proc/PID/smaps_rollup) at the end
  of the window;
- CPU ticks (utime + stime of /proc/PID/stat, 1/CLK_TCK s each), CPU time in ms
  (/proc/PID/schedstat) and voluntary context switches, over the window.

Every measurement is repeated (``--repeat``, rounds interleaved so that drift
hits every supervisor alike) and the medians are reported, with ratios against
Aeterna. What runs:

- Aeterna: N YAML units (``restart: on-failure``), each a ``sleep``; with 100
  processes also one unit running the same shell as tini's, for the same shape.
- tini (``-s``, subreaper) and dumb-init supervise one child: ``sleep``, or for
  100 processes ``sh -c 'for i in $(seq 100); do sleep 3600 & done; wait'``:
  they wait on one shell, they do not supervise 100 services.
- supervisord from Debian (/usr/bin/supervisord on Debian's python3) and from
  PyPI (installed in build/bench-venv on the interpreter that runs Aeterna):
  N ``[program:x]`` sections, nodaemon, a unix_http_server in the temp dir.

The table goes to stdout and to the "Footprint" section of docs/benchmarks.md
(not with ``--quick``, a short smoke run, nor ``--no-doc``).

    .venv/bin/python bench/footprint.py [--quick] [--repeat 3] [--idle 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

RSS_GOAL_KIB = 20 * 1024
SHELL_LOOP = "for i in $(seq {n}); do sleep 3600 & done; wait"
PYPI_VENV = c.REPO / "build" / "bench-venv"


@dataclass
class Config:
    """One thing to measure: a supervisor on ``n`` sleeps in a given shape."""

    key: str                       # "aeterna", "tini", ...
    label: str                     # the table's supervisor column
    n: int                         # sleeps that must exist
    what: str                      # what it supervises, for the table
    argv: Callable[[Path], list[str]]  # given a fresh temp dir (config written there)
    settle_extra: float = 0.0      # the supervisor's own "started" delay (startsecs)
    samples: list[dict[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- supervisors
AETERNA_VENV = c.REPO / "build" / "bench-aeterna-venv"
_AETERNA_EXE: list[str] = []


def aeterna_bin() -> list[str]:
    """Aeterna as a user installs it: a regular (not editable) install of this tree.

    The development venv's editable install adds import hooks (pathlib,
    urllib, ipaddress...) to every interpreter start, about 0.5 MiB that no
    deployed manager carries; measuring that would not be fair to Aeterna.
    """
    if _AETERNA_EXE:
        return _AETERNA_EXE
    exe = AETERNA_VENV / "bin" / "aeterna"
    try:
        if not (AETERNA_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(AETERNA_VENV)], check=True,
                           timeout=300, capture_output=True)
        subprocess.run([str(AETERNA_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "--force-reinstall", "--no-deps",
                        str(c.REPO)], check=True, timeout=300, capture_output=True)
        subprocess.run([str(AETERNA_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "pyyaml", "jinja2", "psutil"],
                       check=True, timeout=300, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"footprint: regular install failed ({exc}); using the dev venv", flush=True)
        exe = Path(sys.executable).parent / "aeterna"
    _AETERNA_EXE.append(str(exe))
    return _AETERNA_EXE


def aeterna_argv(n: int, shell: bool) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        units = tmp / "units"
        units.mkdir()
        if shell:
            cmds = {"s1": ["sh", "-c", SHELL_LOOP.format(n=n)]}
        else:
            cmds = {f"s{i:03d}": ["sleep", "3600"] for i in range(1, n + 1)}
        for name, cmd in cmds.items():
            argv = ", ".join(f'"{a}"' for a in cmd)
            (units / f"{name}.yaml").write_text(
                f'version: "1.0"\nservice:\n  name: {name}\n  command: [{argv}]\n'
                "  restart: on-failure\n")
        return [*aeterna_bin(), "--control", str(tmp / "control.sock"), "start", "-c", str(units)]
    return build


def child_argv(n: int) -> list[str]:
    return ["sleep", "3600"] if n == 1 else ["sh", "-c", SHELL_LOOP.format(n=n)]


def wrapper_argv(prefix: list[str], n: int) -> Callable[[Path], list[str]]:
    return lambda tmp: [*prefix, *child_argv(n)]


def supervisord_argv(exe: str, n: int) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        conf = [
            "[supervisord]", "nodaemon=true", f"logfile={tmp}/supervisord.log",
            f"pidfile={tmp}/supervisord.pid", f"childlogdir={tmp}", "loglevel=info", "",
            "[unix_http_server]", f"file={tmp}/supervisor.sock", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "", "[supervisorctl]", f"serverurl=unix://{tmp}/supervisor.sock", "",
        ]
        for i in range(1, n + 1):
            conf += [f"[program:s{i:03d}]", "command=sleep 3600", ""]
        (tmp / "supervisord.conf").write_text("\n".join(conf))
        return [exe, "-n", "-c", str(tmp / "supervisord.conf")]
    return build


def pypi_supervisord(timeout: float) -> tuple[str | None, str]:
    """supervisord from PyPI in build/bench-venv (created once); (path, why-not)."""
    exe = PYPI_VENV / "bin" / "supervisord"
    if exe.exists():
        return str(exe), ""
    print(f"footprint: installing supervisor from PyPI into {PYPI_VENV} (once)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PYPI_VENV)], check=True,
                       timeout=timeout, capture_output=True)
        subprocess.run([str(PYPI_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "supervisor"], check=True,
                       timeout=timeout, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(PYPI_VENV, ignore_errors=True)
        return None, f"could not install supervisor from PyPI: {exc}"
    return (str(exe), "") if exe.exists() else (None, "no supervisord in the PyPI package")


def configs(args: argparse.Namespace, notes: list[str]) -> list[Config]:
    out: list[Config] = []
    debian_sd = "/usr/bin/supervisord"
    pypi_sd, why = (None, "skipped (--no-pypi)") if args.no_pypi else pypi_supervisord(300)
    if why:
        notes.append(f"supervisord (PyPI): {why}")
    for tool in ("tini", "dumb-init"):
        if shutil.which(tool) is None:
            notes.append(f"{tool}: not installed, skipped (apt-get install {tool})")
    if not os.path.exists(debian_sd):
        notes.append("supervisord (Debian): not installed, skipped (apt-get install supervisor)")
    for n in args.counts:
        shell_what = (f"1 child: `sh` running {n} `sleep &` + `wait`" if n > 1
                      else "1 child: `sleep`")
        out.append(Config("aeterna", "**Aeterna**", n,
                          f"{n} unit{'s' if n > 1 else ''} (`restart: on-failure`)",
                          aeterna_argv(n, shell=False)))
        if n > 1:
            out.append(Config("aeterna-sh", "Aeterna, same shape as tini", n,
                              f"1 unit: `sh` running {n} `sleep &` + `wait`",
                              aeterna_argv(n, shell=True)))
        if shutil.which("tini"):
            out.append(Config("tini", "tini -s", n, shell_what,
                              wrapper_argv(["tini", "-s", "--"], n)))
        if shutil.which("dumb-init"):
            out.append(Config("dumb-init", "dumb-init", n, shell_what,
                              wrapper_argv(["dumb-init"], n)))
        sd_what = f"{n} `[program:x]` (default autorestart)"
        if os.path.exists(debian_sd):
            out.append(Config("supervisord-deb", "supervisord (Debian)", n, sd_what,
                              supervisord_argv(debian_sd, n), settle_extra=1.0))
        if pypi_sd:
            out.append(Config("supervisord-pypi", "supervisord (PyPI)", n, sd_what,
                              supervisord_argv(pypi_sd, n), settle_extra=1.0))
    return [cf for cf in out if not args.only or cf.key in args.only]


def versions(pypi_present: bool) -> list[str]:
    def py_of(script: str) -> str:
        try:
            first = Path(script).read_text(errors="replace").splitlines()[0]
        except (OSError, IndexError):
            return "?"
        interp = first[2:].strip().split()[0] if first.startswith("#!") else sys.executable
        return c.tool_version([interp, "-c",
                               "import platform;print(platform.python_version())"])

    out = [f"Aeterna {c.tool_version([*aeterna_bin(), '--version']).split()[-1]} "
           f"(Python {py_of(aeterna_bin()[0])})",
           c.tool_version(["tini", "--version"]),
           c.tool_version(["dumb-init", "--version"])]
    if os.path.exists("/usr/bin/supervisord"):
        out.append(f"supervisord {c.tool_version(['/usr/bin/supervisord', '--version'])} "
                   f"Debian (Python {py_of('/usr/bin/supervisord')})")
    if pypi_present:
        exe = str(PYPI_VENV / "bin" / "supervisord")
        out.append(f"supervisord {c.tool_version([exe, '--version'])} PyPI "
                   f"(Python {py_of(exe)})")
    return out


# --------------------------------------------------------------------------- one measurement
def measure(cf: Config, args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"footprint-{cf.key}-{cf.n}-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        argv = cf.argv(tmp)
        with open(tmp / "out.log", "wb") as log:
            proc = subprocess.Popen(argv, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        pid = proc.pid
        t0 = time.monotonic()
        started = c.wait_until(lambda: c.count_descendants(pid, "sleep") >= cf.n
                               or proc.poll() is not None, args.start_timeout, 0.1)
        if not started or proc.poll() is not None:
            have = c.count_descendants(pid, "sleep") if proc.poll() is None else 0
            tail = (tmp / "out.log").read_text(errors="replace")[-400:]
            cf.failures.append(f"not started in {args.start_timeout:.0f} s "
                               f"({have}/{cf.n} sleeps, exit={proc.poll()}): {tail!r}")
            return
        start_s = time.monotonic() - t0
        time.sleep(args.settle + cf.settle_extra)
        before = (c.cpu_ticks(pid), c.cpu_ns(pid), c.ctx_switches(pid))
        time.sleep(args.idle)
        after = (c.cpu_ticks(pid), c.cpu_ns(pid), c.ctx_switches(pid))
        rss, pss = c.rss_kib(pid), c.pss_kib(pid)
        still = c.count_descendants(pid, "sleep")
        if None in (before[0], after[0], rss) or proc.poll() is not None:
            cf.failures.append("the supervisor exited during the idle window")
            return
        if still != cf.n:
            cf.failures.append(f"{still}/{cf.n} sleeps left after the idle window")
            return
        sample = {"rss": float(rss or 0), "pss": float(pss or 0), "start_s": start_s,
                  "ticks": float(after[0] - before[0])}  # type: ignore[operator]
        if before[1] is not None and after[1] is not None:
            sample["cpu_ms"] = (after[1] - before[1]) / 1e6
        if before[2] and after[2]:
            sample["vcsw"] = float(after[2][0] - before[2][0])
            sample["ivcsw"] = float(after[2][1] - before[2][1])
        cf.samples.append(sample)
    finally:
        if proc is not None:
            c.stop(proc, args.stop_timeout)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- report
def med(cf: Config, key: str) -> float | None:
    vals = [s[key] for s in cf.samples if key in s]
    return c.median(vals) if vals else None


def fmt(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def ratio(v: float | None, ref: float | None) -> str:
    if v is None or ref is None:
        return "—"
    if ref == 0:
        return "—" if v == 0 else "∞"
    return f"{v / ref:.2f}×"


def report(cfgs: list[Config], args: argparse.Namespace, notes: list[str],
           vers: list[str], took: float) -> tuple[str, str]:
    window = f"{args.idle:g} s"
    headers = ["procs", "supervisor", "what it supervises", "RSS MiB", "PSS MiB",
               "RSS ÷ Aeterna", "PSS ÷ Aeterna", f"CPU ticks / {window}",
               f"CPU ms / {window}", f"vol. ctx sw / {window}", "ready s"]
    rows = []
    for cf in cfgs:
        ref = next((r for r in cfgs if r.key == "aeterna" and r.n == cf.n), None)
        rss, pss = med(cf, "rss"), med(cf, "pss")
        ok = f" ({len(cf.samples)}/{args.repeat} runs)" if len(cf.samples) < args.repeat else ""
        rows.append([cf.n, cf.label + ok, cf.what,
                     fmt(rss and rss / 1024), fmt(pss and pss / 1024),
                     ratio(rss, med(ref, "rss") if ref else None),
                     ratio(pss, med(ref, "pss") if ref else None),
                     fmt(med(cf, "ticks"), 0), fmt(med(cf, "cpu_ms"), 2),
                     fmt(med(cf, "vcsw"), 0), fmt(med(cf, "start_s"), 1)])
    table = c.md_table(headers, rows, [True, False, False] + [True] * 8)

    goals = []
    one = next((cf for cf in cfgs if cf.key == "aeterna" and cf.n == 1), None)
    if one is not None and med(one, "rss") is not None:
        rss1 = med(one, "rss") or 0
        met = "met" if rss1 <= RSS_GOAL_KIB else "NOT met"
        goals.append(f"- RSS ≤ 20 MiB with 1 unit: **{met}** ({rss1 / 1024:.1f} MiB).")
    for cf in cfgs:
        if cf.key == "aeterna" and med(cf, "ticks") is not None:
            worst = max(s["ticks"] for s in cf.samples)
            goals.append(f"- 0 CPU ticks idle, {cf.n} unit{'s' if cf.n > 1 else ''}: "
                         f"**{'met' if worst == 0 else 'NOT met'}** (median "
                         f"{fmt(med(cf, 'ticks'), 0)}, worst {worst:.0f} over {window}, "
                         f"{fmt(med(cf, 'cpu_ms'), 2)} ms CPU).")

    failures = [f"- {cf.label}, {cf.n}: {f}" for cf in cfgs for f in cf.failures]
    cmd = ".venv/bin/python bench/footprint.py"
    extra = [a for a in sys.argv[1:] if a not in ("--no-doc",)]
    body = [
        "Written by `bench/footprint.py`. Reproduce with `make bench` (all benchmarks) or "
        f"`{cmd}{(' ' + ' '.join(extra)) if extra else ''}`.",
        "",
        f"Run: {c.machine()}; {args.repeat} rounds, medians; took {took:.0f} s.",
        "Versions: " + "; ".join(vers) + ".",
        "",
        "The supervisor process alone is measured, not its children. After all the "
        f"`sleep`s exist, {args.settle:g} s settle (plus 1 s, supervisord's `startsecs`, "
        f"for supervisord), then an idle window of {window}: RSS (VmRSS) and PSS "
        "(smaps_rollup) at its end; CPU ticks (utime+stime, "
        f"1/{c.CLK_TCK} s), CPU ms (schedstat) and voluntary context switches over it. "
        "`ready s` is the time until all the sleeps existed (polled every 0.1 s).",
        "",
        table,
        "tini and dumb-init supervise one child: with 100 processes that child is a shell "
        "that starts 100 `sleep`s and waits; they neither restart nor track the 100. "
        "Aeterna's and supervisord's 100 rows are 100 supervised services with restart "
        "policies, logs and a control socket; the \"same shape as tini\" row gives "
        "Aeterna tini's job. Aeterna is a regular `pip install .` in `build/bench-aeterna-venv` "
        "(not the editable dev install, whose import hooks cost every interpreter ~0.5 MiB). "
        "supervisord (PyPI) runs in `build/bench-venv` on the interpreter "
        "that runs Aeterna, supervisord (Debian) on Debian's `/usr/bin/python3`. PSS shares "
        "each mapped page among the processes that map it, so it comes out lower for a "
        "process whose interpreter other processes also run (the bench itself runs "
        "Aeterna's); RSS is the goal's measure.",
        "",
        "Goals (from the issue):",
        *goals,
    ]
    if notes or failures:
        body += ["", "Notes:", *[f"- {n}" for n in notes], *failures]
    return "\n".join(body) + "\n", table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    p.add_argument("--settle", type=float, default=1.0, help="wait after start, seconds")
    p.add_argument("--counts", default="1,100", help="numbers of sleeps, comma-separated")
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--stop-timeout", type=float, default=15.0)
    p.add_argument("--only", default="", help="comma-separated keys: aeterna, aeterna-sh, "
                   "tini, dumb-init, supervisord-deb, supervisord-pypi")
    p.add_argument("--no-pypi", action="store_true", help="skip supervisord from PyPI")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 2 s idle window, docs not written")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.idle, args.settle, args.no_doc = 1, 2.0, 0.5, True
    args.counts = [int(x) for x in args.counts.split(",") if x.strip()]
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}

    # Orphans of a supervisor come back to us, so that nothing is left behind.
    c.start_bench()
    t0 = time.monotonic()
    notes: list[str] = []
    cfgs = configs(args, notes)
    vers = versions(any(cf.key == "supervisord-pypi" for cf in cfgs))
    total = len(cfgs) * args.repeat
    i = 0
    for rnd in range(args.repeat):
        for cf in cfgs:
            i += 1
            print(f"footprint: [{i}/{total}] round {rnd + 1}: {cf.key} n={cf.n}", flush=True)
            measure(cf, args)
            if cf.samples and len(cf.samples) == rnd + 1:
                s = cf.samples[-1]
                print(f"    rss={s['rss'] / 1024:.1f} MiB pss={s['pss'] / 1024:.1f} MiB "
                      f"ticks={s['ticks']:.0f} cpu={s.get('cpu_ms', -1):.2f} ms "
                      f"vcsw={s.get('vcsw', -1):.0f} ready={s['start_s']:.1f} s", flush=True)
            elif cf.failures:
                print(f"    FAILED: {cf.failures[-1]}", flush=True)
    body, _ = report(cfgs, args, notes, vers, time.monotonic() - t0)
    print()
    print("## Footprint\n")
    print(body)
    if not args.no_doc:
        c.update_doc_section("Footprint", body)
        print(f"footprint: wrote the Footprint section of {c.DOC.relative_to(c.REPO)}")
    else:
        print("footprint: docs/benchmarks.md not written (--quick or --no-doc)")
    return 1 if any(cf.failures for cf in cfgs) else 0


if __name__ == "__main__":
    sys.exit(main())
