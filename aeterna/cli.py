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
from .loader.errors import UnitErrors
from .log import Log
from .results import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aeterna", description="Zero-downtime process manager.")
    p.add_argument("--version", action="version", version=f"aeterna {__version__}")
    p.add_argument("--control", metavar="PATH", default=None,
                   help="control socket (default: $AETERNA_CONTROL, /run/aeterna/control.sock "
                        "for root, else under $XDG_RUNTIME_DIR)")
    # daemon-reexec (issue 15): what the old manager runs the new binary with.
    p.add_argument("--check-state", type=int, metavar="FD", help=argparse.SUPPRESS)
    p.add_argument("--resume-state", type=int, metavar="FD", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    s = sub.add_parser("start", help="run the manager in the foreground (-c PATH), or "
                       "start a unit of a running one (UNIT)")
    s.add_argument("unit", nargs="?", help="a unit of the running manager to start")
    s.add_argument("-c", "--config", action="append", metavar="PATH",
                   help="a unit file or a directory of them (repeatable)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    st = sub.add_parser("status", help="show units")
    st.add_argument("unit", nargs="?")
    st.add_argument("--json", action="store_true")
    sp = sub.add_parser("stop", help="stop a unit, or everything (the manager exits)")
    sp.add_argument("unit", nargs="?")
    rs = sub.add_parser("restart", help="stop and start a unit")
    rs.add_argument("unit")
    rl = sub.add_parser("reload", help="re-read the unit files")
    rl.add_argument("unit", nargs="?")
    rl.add_argument("--no-block", action="store_true")
    rx = sub.add_parser("daemon-reexec", help="replace the running manager's code with the "
                        "aeterna on PATH (or --exec PATH), keeping every unit running")
    rx.add_argument("--exec", dest="exec_path", metavar="PATH",
                    help="the aeterna to run instead of the one found on PATH")
    v = sub.add_parser("validate", help="check unit files without running anything")
    v.add_argument("paths", nargs="+", metavar="PATH")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check_state is not None or args.resume_state is not None:
        return _reexec_side(args)
    if args.verb is None:
        _parser().print_help()
        return EXIT_USAGE
    if args.verb == "validate":
        return _validate(args.paths)
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


def _validate(paths: list[str]) -> int:
    try:
        result = load_paths(paths)
    except UnitErrors as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return EXIT_USAGE
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for u in result.units:
        print(f"{u.source.file}: {u.name}: ok")
    return EXIT_OK


def _start(args: argparse.Namespace) -> int:
    from .manager.manager import Manager

    log = Log(level=args.log_level)
    try:
        loaded = load_paths(args.config)
    except UnitErrors as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return EXIT_USAGE
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
    try:
        loaded = load_paths(list(state.paths))
    except UnitErrors as exc:  # --check-state saw them load a moment ago
        for err in exc.errors:
            print(err, file=sys.stderr)
        return EXIT_USAGE
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
    print(json.dumps(result))
    if args.verb in ("start", "stop", "restart") and unit:
        return EXIT_FAILED if result.get("state") == "failed" else EXIT_OK
    return EXIT_OK


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
