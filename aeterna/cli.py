# ruff: noqa: E402  (ssl must be blocked before asyncio is imported)
"""The ``aeterna`` command: ``start`` runs the manager; the other verbs are clients.

Exit statuses: 0 done, 1 the action failed, 2 bad unit files or usage, 3 no
manager answering. ``start`` exits with the status of its units (see
``Manager.exit_status``).
"""

from __future__ import annotations

import sys

# Aeterna never speaks TLS, but asyncio imports ssl (4 MiB of libssl and
# libcrypto) if it can: keep the manager small by making it unavailable.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import argparse
import asyncio
import os
from typing import Any

from . import __version__
from .api.client import default_path, request
from .loader import load_paths
from .log import Log
from .results import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE

CONTROL_HELP = ("control socket (default: $AETERNA_CONTROL, /run/aeterna/control.sock for "
                "root, else under $XDG_RUNTIME_DIR)")
# The verbs whose syntax and exit codes are systemctl's (aeterna.cli_systemctl).
SYSTEMCTL_VERBS = frozenset({"is-active", "is-failed", "is-enabled", "list-units",
                             "list-unit-files", "show", "cat", "kill", "reset-failed",
                             "daemon-reload", "enable", "disable"})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aeterna", description="Zero-downtime process manager.")
    p.add_argument("--version", action="version", version=f"aeterna {__version__}")
    p.add_argument("--control", metavar="PATH", default=None, help=CONTROL_HELP)
    # Global options work after the verb too (`aeterna start -c units/ --control X`):
    # each verb takes them again, without a default that would hide the global one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control", metavar="PATH", default=argparse.SUPPRESS,
                        help=CONTROL_HELP)
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--json", action="store_true", help="print the outcome as JSON")
    job.add_argument("--no-block", action="store_true",
                     help="do not wait for the unit to settle")
    # daemon-reexec (issue 15): what the old manager runs the new binary with.
    p.add_argument("--check-state", type=int, metavar="FD", help=argparse.SUPPRESS)
    p.add_argument("--resume-state", type=int, metavar="FD", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, help: str, *parents: argparse.ArgumentParser
             ) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common, *parents])

    s = verb("start", "run the manager in the foreground (-c PATH), or start a unit of a "
             "running one (UNIT)", job)
    s.add_argument("unit", nargs="?", help="a unit of the running manager to start")
    s.add_argument("-c", "--config", action="append", metavar="PATH",
                   help="a unit file or a directory of them (repeatable)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="the least severe log lines written (a unit's log_level overrides it)")
    st = verb("status", "show units")
    st.add_argument("unit", nargs="?", help="one unit (default: every unit)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    sp = verb("stop", "stop a unit, or everything (the manager exits)", job)
    sp.add_argument("unit", nargs="?", help="the unit to stop (default: every unit)")
    rs = verb("restart", "stop and start a unit; waits until it is up again", job)
    rs.add_argument("unit", help="the unit to restart")
    rl = verb("reload", "re-read the unit files")
    rl.add_argument("unit", nargs="?",
                    help="relay or restart this unit only (default: apply every change)")
    rl.add_argument("--no-block", action="store_true",
                    help="return once the reload is started, not when its relays end")
    lg = verb("logs", "a unit's output lines, from its log ring")
    lg.add_argument("unit", help="the unit whose lines to show")
    lg.add_argument("-f", "--follow", action="store_true",
                    help="print new lines as they come, across restarts and relays")
    lg.add_argument("-n", "--lines", type=int, default=None, metavar="N",
                    help="the last N lines (default: all; 10 with -f)")
    lg.add_argument("--since", metavar="TIME",
                    help="lines from TIME on: '2026-12-02 17:30', '-10m', '@EPOCH'")
    lg.add_argument("--output", "-o", choices=("short", "json", "cat"), default="short",
                    help="short (time, unit, pid, generation), json (one object a line) "
                         "or cat (the text only)")
    rx = verb("daemon-reexec", "replace the running manager's code with the aeterna on "
              "PATH (or --exec PATH), keeping every unit running")
    rx.add_argument("--exec", dest="exec_path", metavar="PATH",
                    help="the aeterna to run instead of the one found on PATH")
    v = verb("validate", "check unit files without running anything")
    v.add_argument("paths", nargs="+", metavar="PATH",
                   help="a unit file or a directory of them")
    v.add_argument("--instance", metavar="NAME",
                   help="render the templates (web@.yaml) among PATH for this instance, "
                        "and show the rendered unit")
    from .scaffold import add_parser as _init_parser

    _init_parser(sub)
    for name in sorted(SYSTEMCTL_VERBS):
        verb(name, f"as systemctl {name} (also: aeterna systemctl ...)").add_argument(
            "args", nargs=argparse.REMAINDER, help=f"systemctl {name}'s arguments")
    for name in ("systemctl", "journalctl"):
        verb(name, f"the {name} front end").add_argument(
            "args", nargs=argparse.REMAINDER, help=f"{name}'s verb and arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        if os.path.basename(sys.argv[0]) in ("systemctl", "journalctl"):
            from . import cli_systemctl  # not imported by the manager: it carries json

            front = cli_systemctl.front_end(sys.argv[0])
            assert front is not None
            return front(sys.argv[1:])  # invoked through a `systemctl` or `journalctl` link
        argv = sys.argv[1:]
    systemd = _systemd_verb(argv)
    if systemd is not None:
        return systemd
    args = _parser().parse_args(argv)
    if args.check_state is not None or args.resume_state is not None:
        return _reexec_side(args)
    if args.verb == "logs":
        return _logs(args)
    if args.verb is None:
        _parser().print_help()
        return EXIT_USAGE
    if args.verb == "validate":
        return _validate(args.paths, args.instance)
    if args.verb == "init":
        from .scaffold import run as _init

        return _init(args)
    if args.verb == "start" and args.unit is None:
        if not args.config:
            print("aeterna: start needs -c PATH (a unit file or a directory of them) to run "
                  "the manager, or UNIT to start a unit of a running one", file=sys.stderr)
            return EXIT_USAGE
        return _start(args)
    if args.verb == "start" and args.config:
        print("aeterna: start takes -c PATH (run the manager) or UNIT (start one), not both",
              file=sys.stderr)
        return EXIT_USAGE
    return _client(args)


def _systemd_verb(argv: list[str]) -> int | None:
    """``aeterna systemctl|journalctl ARGS`` and the systemctl verbs (``aeterna is-active
    UNIT``): handed over whole, with systemctl's parsing and exit codes."""
    words = []
    skip = False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word == "--control":
            skip = True
        elif not word.startswith("-"):
            words.append((i, word))
            break
    if not words:
        return None
    i, verb = words[0]
    if verb not in SYSTEMCTL_VERBS and verb not in ("systemctl", "journalctl"):
        return None
    from . import cli_systemctl

    rest = argv[:i] + argv[i + 1:]
    if verb == "systemctl":
        return cli_systemctl.systemctl(rest)
    if verb == "journalctl":
        return cli_systemctl.journalctl(rest)
    return cli_systemctl.systemctl(argv)


def _logs(args: argparse.Namespace) -> int:
    from . import cli_systemctl as sc

    try:
        since = sc.parse_since(args.since) if args.since else None
        fmt = {"short": "aeterna"}.get(args.output, args.output)
        return sc.logs(sc.Client(args.control), args.unit, args.lines, args.follow, since, fmt)
    except sc.Usage as exc:
        print(f"aeterna: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except sc.Unreachable as exc:
        print(f"aeterna: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (KeyboardInterrupt, BrokenPipeError):
        return EXIT_OK


def _validate(paths: list[str], instance: str | None = None) -> int:
    """Every error and every warning; exit 2 if any unit cannot load."""
    instances: list[str] = []
    if instance is not None:
        from .scaffold import show_rendered

        rc, instances = show_rendered(paths, instance)
        if rc:
            return rc
    result = load_paths(paths, instances, partial=True)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for err in result.errors:
        print(err, file=sys.stderr)
    for u in result.units:
        print(f"{u.source.file}: {u.name}: ok")
        if u.name in instances:
            from .scaffold import describe

            print(describe(u))
    return EXIT_USAGE if result.errors else EXIT_OK


def _start(args: argparse.Namespace) -> int:
    from .manager.manager import Manager

    log = Log(level=args.log_level)
    # As systemd boots: a unit that cannot load is reported and left out; the rest run.
    loaded = load_paths(args.config, partial=True)
    if loaded.errors and not loaded.units:
        for err in loaded.errors:
            print(err, file=sys.stderr)
        return EXIT_USAGE
    for err in loaded.errors:
        log.error("unit.not-loaded", error=str(err))
    for w in loaded.warnings:
        log.warning("unit.warning", warning=str(w))
    from .api.surfaces import Surfaces

    control = args.control or default_path()
    manager = Manager(list(args.config), loaded, log, runtime_dir=os.path.dirname(control))
    manager.reexec.identity.control_path = control  # daemon-reexec carries these over
    manager.reexec.identity.log_level = args.log_level
    manager.surfaces = Surfaces(manager, control)
    try:
        return asyncio.run(manager.run())
    except OSError as exc:
        print(f"aeterna: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _reexec_side(args: argparse.Namespace) -> int:
    """The new binary of a daemon-reexec: check the state (in a child of the old
    manager), or resume from it (in the old manager's process, after exec)."""
    from .manager import reexec

    if args.check_state is not None:
        why = reexec.check_state(args.check_state)
        if why is not None:
            print(f"aeterna {__version__}: cannot resume from this state: {why}",
                  file=sys.stderr)
            return EXIT_FAILED
        print(f"aeterna {__version__}: state ok")
        return EXIT_OK
    from .manager.manager import Manager

    state = reexec.read_resume(args.resume_state)
    log = Log(level=state.log_level)
    # As at start: a unit that cannot load is left out (--check-state saw them load).
    loaded = load_paths(list(state.paths), partial=True)
    for err in loaded.errors:
        log.error("unit.not-loaded", error=str(err))
    from .api.surfaces import Surfaces

    manager = Manager(list(state.paths), loaded, log, runtime_dir=state.runtime_dir)
    manager.reexec.identity.control_path = state.control_path
    manager.reexec.identity.log_level = state.log_level
    manager.resume = state
    manager.surfaces = Surfaces(manager, state.control_path, adopt_fd=state.control_fd)
    return asyncio.run(manager.run())


def _client(args: argparse.Namespace) -> int:
    path = args.control or default_path()
    unit = getattr(args, "unit", None)
    extra: dict[str, Any] = {"no_block": True} if getattr(args, "no_block", False) else {}
    if args.verb == "daemon-reexec" and args.exec_path:
        extra["exec"] = os.path.abspath(args.exec_path)
    try:
        reply = request(path, args.verb, unit, **extra)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"aeterna: no manager is listening on {path}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except PermissionError:
        print(f"aeterna: {path}: permission denied", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, ValueError) as exc:
        print(f"aeterna: {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"aeterna: {reply.get('error', 'failed')}", file=sys.stderr)
        return EXIT_FAILED
    import json

    result = reply["result"]
    if args.verb == "status":
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            from .api.status import render

            print(render(result, manager=unit is None))
        return EXIT_OK
    if args.verb == "reload":
        return _print_reload(result)
    if args.verb == "daemon-reexec":
        print(f"aeterna: re-executed pid {result['pid']}: {result['previous_version']} -> "
              f"{result['version']} in {result['took']:.3f}s ({result['units']} units kept)")
        return EXIT_OK
    if getattr(args, "json", False):
        print(json.dumps(result))
    else:
        print(_describe_job(args.verb, result))
    if args.verb in ("start", "stop", "restart") and unit:
        return EXIT_FAILED if result.get("state") == "failed" else EXIT_OK
    return EXIT_OK


def _describe_job(verb: str, r: dict[str, Any]) -> str:
    """``start``/``stop``/``restart`` in words, as ``reload`` prints its outcome."""
    if "unit" not in r:
        return "stopping everything; the manager exits when all units are down"
    pid = f" (pid {r['main_pid']})" if r.get("main_pid") else ""
    if r.get("state") == "failed":
        return f"{r['unit']}: failed ({r.get('result')})"
    return f"{r['unit']}: {r.get('state')}{pid}"


def _print_reload(result: dict[str, Any]) -> int:
    if "outcome" in result:  # one unit
        relay = result.get("relay")
        if relay:
            print(_describe_relay(relay))
        else:
            print(f"{result['unit']}: {result['outcome']}")
        return EXIT_OK if result["ok"] else EXIT_FAILED
    if not result.get("ok", True) and "errors" in result:
        for e in result.get("errors", []):
            print(e, file=sys.stderr)
        print("aeterna: reload rejected; the running configuration is kept", file=sys.stderr)
        return EXIT_FAILED
    what = {"added": "added: {} (started)", "removed": "removed: {} (runs until stopped)",
            "changed": "changed: {}"}
    for key, text in what.items():
        for n in result.get(key, []):
            print(text.format(n))
    for relay in result.get("outcomes", []):
        print(_describe_relay(relay))
    return EXIT_OK if result.get("ok", True) else EXIT_FAILED


def _describe_relay(r: dict[str, Any]) -> str:
    phases = ", ".join(f"{k} {v:.3f}s" for k, v in r.get("durations", {}).items())
    if r["outcome"] == "promoted":
        return (f"{r['unit']}: promoted generation {r['generation']} "
                f"(pid {r['old_pid']} -> {r['new_pid']}) in {r['total']:.3f}s [{phases}]")
    what = "rolled back" if r["outcome"] == "rolled-back" else r["outcome"]
    detail = f": {r['detail']}" if r.get("detail") else ""
    return (f"{r['unit']}: {what} in phase {r['phase'] or '-'}: {r['reason']}{detail} "
            f"[{phases}]")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
