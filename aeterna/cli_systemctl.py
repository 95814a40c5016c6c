"""``systemctl`` and ``journalctl`` front ends, and the systemd-style ``aeterna`` verbs.

Invoked as ``systemctl`` or ``journalctl`` (a symlink to ``aeterna``), or as
``aeterna systemctl ...`` / ``aeterna journalctl ...``, Aeterna takes their
syntax (options before or after the command, ``--`` ends them) and their exit
codes, so what calls ``systemctl`` inside a container works unchanged:
Debian's ``service`` and ``deb-systemd-invoke``, configuration-management
tools that read ``systemctl show``.

Exit codes, as systemctl's (LSB for ``status`` and ``is-active``): 0 done /
active, 1 failed (or ``is-failed``: not failed), 3 not active, 4 no such
unit (``status``, ``is-active`` queries), 5 no such unit for a job (``start``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .api.client import default_path, request
from .loader.durations import parse_duration

OK, FAILED, NOT_ACTIVE, NO_SUCH_UNIT, NOT_LOADED = 0, 1, 3, 4, 5
SYSTEMD_VERSION = 252  # what `systemctl --version` claims (Debian 12's), for scripts

# Options that take a value (``--opt=V`` or ``--opt V``), by every spelling.
_VALUED = {"-p": "property", "--property": "property", "-s": "signal", "--signal": "signal",
           "--kill-whom": "whom", "--state": "state", "-t": "type", "--type": "type",
           "--control": "control", "-n": "lines", "--lines": "lines", "-u": "unit",
           "--unit": "unit", "-o": "output", "--output": "output", "-S": "since",
           "--since": "since", "-M": "machine", "--machine": "machine", "-H": "host",
           "--host": "host", "--root": "root", "--job-mode": "job_mode"}
_FLAGS = {"-q": "quiet", "--quiet": "quiet", "--no-block": "no_block", "--value": "value",
          "-a": "all", "--all": "all", "--json": "json", "-f": "follow", "--follow": "follow",
          "--now": "now", "--no-legend": "no_legend", "--no-pager": "", "-l": "", "--full": "",
          "--system": "", "--user": "user", "-e": "", "--pager-end": "", "-x": "",
          "--catalog": "", "--no-ask-password": "", "--no-reload": "", "--plain": "",
          "-b": "", "--boot": "", "--no-hostname": "no_hostname", "--version": "version",
          "-h": "help", "--help": "help", "--force": "", "--merge": ""}


class Usage(Exception):
    """A bad command line: the message, exit status 1 (systemctl's for usage errors)."""


@dataclass
class Args:
    words: list[str] = field(default_factory=list)  # the command and its units
    opts: dict[str, Any] = field(default_factory=dict)
    props: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)  # journalctl -u

    def flag(self, name: str) -> bool:
        return bool(self.opts.get(name))


def parse(argv: list[str]) -> Args:
    """systemctl's and journalctl's command lines: options anywhere, ``--`` ends them."""
    a = Args()
    it = iter(argv)
    for word in it:
        if word == "--":
            a.words.extend(it)
            break
        if not word.startswith("-") or word == "-":
            a.words.append(word)
            continue
        name, eq, value = word.partition("=")
        if name in _VALUED:
            if not eq:
                # -n5 / -pActiveState: short options glued to their value
                if len(name) == 2 or name.startswith("--"):
                    following = next(it, None)
                    if following is None:
                        raise Usage(f"option {name} needs a value")
                    value = following
            key = _VALUED[name]
            if key == "property":
                a.props += [p for p in value.split(",") if p]
            elif key == "unit":
                a.units.append(value)
            else:
                a.opts[key] = value
        elif len(name) > 2 and name[:2] in _VALUED and not name.startswith("--"):
            key = _VALUED[name[:2]]
            value = name[2:]
            if key == "property":
                a.props += [p for p in value.split(",") if p]
            elif key == "unit":
                a.units.append(value)
            else:
                a.opts[key] = value
        elif name in _FLAGS:
            if _FLAGS[name]:
                a.opts[_FLAGS[name]] = True
        elif name.startswith("-") and not name.startswith("--") and all(
                f"-{c}" in _FLAGS for c in name[1:]):
            for c in name[1:]:  # -qa
                if _FLAGS[f"-{c}"]:
                    a.opts[_FLAGS[f"-{c}"]] = True
        else:
            raise Usage(f"unrecognized option '{word}'")
    return a


class Client:
    """The control socket, one request at a time; ``None`` when no manager answers."""

    def __init__(self, path: str | None):
        self.path = path or default_path()

    def __call__(self, verb: str, unit: str | None = None, timeout: float | None = None,
                 **extra: Any) -> dict[str, Any]:
        try:
            return request(self.path, verb, unit, timeout=timeout, **extra)
        except (FileNotFoundError, ConnectionRefusedError):
            raise Unreachable(f"no manager is listening on {self.path}")
        except PermissionError:
            raise Unreachable(f"{self.path}: permission denied")
        except (OSError, ValueError) as exc:
            raise Unreachable(f"{self.path}: {exc}")


class Unreachable(Exception):
    pass


def _full(name: str) -> str:
    return name if "." in name else f"{name}.service"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- systemctl
def systemctl(argv: list[str]) -> int:
    try:
        a = parse(argv)
    except Usage as exc:
        _err(f"systemctl: {exc}")
        return FAILED
    if a.flag("version"):
        print(f"systemd {SYSTEMD_VERSION} (aeterna {__version__})\n+aeterna")
        return OK
    if a.flag("help") or not a.words:
        print("systemctl [OPTIONS...] COMMAND [UNIT...]  (Aeterna's front end)\n"
              "commands: " + " ".join(sorted(COMMANDS)))
        return OK if a.flag("help") else FAILED
    if a.flag("user"):
        _err("systemctl: --user: Aeterna runs one system manager (no user instances)")
        return FAILED
    command, units = a.words[0], a.words[1:]
    handler = COMMANDS.get(command)
    if handler is None:
        _err(f"Unknown command verb '{command}'.")
        return FAILED
    client = Client(a.opts.get("control"))
    try:
        return handler(client, a, units)
    except Unreachable as exc:
        _err(f"systemctl: {exc} (is Aeterna running?)")
        return FAILED
    except BrokenPipeError:
        return OK


def _show(client: Client, names: list[str] | None) -> list[dict[str, str]]:
    reply = client("show", None, names=names or [])
    if not reply.get("ok"):
        raise Unreachable(reply.get("error", "show failed"))
    units: list[dict[str, str]] = reply["result"]["units"]
    return units


def _job(verb: str) -> Callable[[Client, Args, list[str]], int]:
    """start, stop, restart, reload and their try- variants: one job per unit, in order;
    each blocks until the unit settles unless --no-block."""
    def run(client: Client, a: Args, units: list[str]) -> int:
        if not units:
            _err("Too few arguments.")
            return FAILED
        status = OK
        for name in units:
            props = _show(client, [name])[0]
            if props["LoadState"] == "not-found":
                _err(f"Failed to {verb} {_full(name)}: Unit {_full(name)} not found.")
                status = NOT_LOADED
                continue
            action = verb
            if verb in ("try-restart", "condrestart"):
                if props["ActiveState"] not in ("active", "reloading", "activating"):
                    continue
                action = "restart"
            elif verb in ("reload-or-restart", "force-reload", "try-reload-or-restart"):
                if verb == "try-reload-or-restart" and props["ActiveState"] != "active":
                    continue
                action = "reload" if props.get("CanReload") == "yes" else "restart"
            extra = {"no_block": True} if a.flag("no_block") else {}
            reply = client(action, name, **extra)
            if not reply.get("ok"):
                _err(f"Failed to {verb} {_full(name)}: {reply.get('error', 'failed')}")
                status = FAILED
                continue
            result = reply["result"]
            state = result.get("state")
            if state == "failed" or result.get("ok") is False:
                _err(f"Job for {_full(name)} failed because the service did not take the "
                     f"steps required by its unit configuration ({result.get('result')}).\n"
                     f"See \"systemctl status {_full(name)}\" and \"journalctl -u "
                     f"{_full(name)}\" for details.")
                status = FAILED
        return status
    return run


def is_active(client: Client, a: Args, units: list[str]) -> int:
    """0 if any named unit is active (or reloading); else 3, 4 if none is known."""
    if not units:
        _err("Too few arguments.")
        return FAILED
    found = _show(client, units)
    for p in found:
        if not a.flag("quiet"):
            print(p["ActiveState"])
    if any(p["ActiveState"] in ("active", "reloading") for p in found):
        return OK
    return NOT_ACTIVE


def is_failed(client: Client, a: Args, units: list[str]) -> int:
    """0 if any named unit is failed; else 1."""
    found = _show(client, units or None)
    for p in found:
        if not a.flag("quiet"):
            print(p["ActiveState"])
    return OK if any(p["ActiveState"] == "failed" for p in found) else FAILED


def is_enabled(client: Client, a: Args, units: list[str]) -> int:
    if not units:
        _err("Too few arguments.")
        return FAILED
    status = FAILED
    for p, name in zip(_show(client, units), units, strict=True):
        if p["LoadState"] == "not-found":
            _err(f"Failed to get unit file state for {_full(name)}: No such file or directory")
            continue
        if not a.flag("quiet"):
            print(p["UnitFileState"])
        if p["UnitFileState"] in ("enabled", "enabled-runtime", "static", "alias"):
            status = OK
    return status


def is_system_running(client: Client, a: Args, units: list[str]) -> int:
    reply = client("ping")
    if not a.flag("quiet"):
        print("running" if reply.get("ok") else "offline")
    return OK if reply.get("ok") else FAILED


def _matches(name: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatchcase

    return not patterns or any(fnmatchcase(name, p) or fnmatchcase(_full(name), p)
                               or fnmatchcase(name, _full(p)) for p in patterns)


def list_units(client: Client, a: Args, units: list[str]) -> int:
    """UNIT LOAD ACTIVE SUB DESCRIPTION; active ones (and failed) unless --all."""
    if a.opts.get("type") not in (None, "service"):
        rows: list[dict[str, str]] = []  # Aeterna's sockets belong to their service unit
    else:
        rows = [p for p in _show(client, None) if _matches(p["Id"], units)]
    states = set(str(a.opts.get("state") or "").split(",")) - {""}
    if states:
        rows = [p for p in rows if p["ActiveState"] in states or p["SubState"] in states
                or p["LoadState"] in states]
    elif not a.flag("all"):
        rows = [p for p in rows if p["ActiveState"] != "inactive"]
    if a.flag("json"):
        print(json.dumps([{"unit": p["Id"], "load": p["LoadState"], "active": p["ActiveState"],
                           "sub": p["SubState"], "description": p["Description"]}
                          for p in rows]))
        return OK
    table = [(p["Id"], p["LoadState"], p["ActiveState"], p["SubState"], p["Description"])
             for p in rows]
    _print_table(("UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION"), table, a)
    if not a.flag("no_legend"):
        print(f"\n{len(table)} loaded units listed.")
    return OK


def list_unit_files(client: Client, a: Args, units: list[str]) -> int:
    if a.opts.get("type") not in (None, "service"):
        rows: list[dict[str, str]] = []
    else:
        rows = [p for p in _show(client, None) if _matches(p["Id"], units)]
    table = [(p["Id"], p["UnitFileState"], p.get("UnitFilePreset", "enabled")) for p in rows]
    _print_table(("UNIT FILE", "STATE", "PRESET"), table, a)
    if not a.flag("no_legend"):
        print(f"\n{len(table)} unit files listed.")
    return OK


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], a: Args) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = [] if a.flag("no_legend") else [header]
    for r in [*lines, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def show(client: Client, a: Args, units: list[str]) -> int:
    """``KEY=VALUE`` lines (``--value``: values only), a blank line between units."""
    if not units:
        props = {"Version": f"{SYSTEMD_VERSION} (aeterna {__version__})",
                 "SystemState": "running", "Virtualization": "", "Features": "+aeterna"}
        blocks = [props]
    else:
        blocks = _show(client, units)
    wanted = a.props
    out: list[str] = []
    for i, block in enumerate(blocks):
        if i:
            out.append("")
        for key in wanted or list(block):
            if key not in block and wanted:
                value = ""
            else:
                value = block.get(key, "")
            if not wanted and value == "" and not a.flag("all"):
                continue
            out.append(value if a.flag("value") else f"{key}={value}")
    if out:
        print("\n".join(out))
    return OK


def status(client: Client, a: Args, units: list[str]) -> int:
    """A short ``systemctl status``: state, main pid, and the last lines of its log.
    Exit 0 if the (first) unit is active, 3 if not, 4 if unknown."""
    if not units:
        reply = client("status")
        print(f"State: running\n  Units: {len(reply.get('result', {}).get('units', []))}")
        return OK
    code = OK
    for i, (p, name) in enumerate(zip(_show(client, units), units, strict=True)):
        if i:
            print()
        if p["LoadState"] == "not-found":
            _err(f"Unit {_full(name)} could not be found.")
            code = code or NO_SUCH_UNIT
            continue
        dot = {"active": "●", "failed": "×"}.get(p["ActiveState"], "○")
        since = f" since {p['ActiveEnterTimestamp']}" if p["ActiveState"] == "active" else ""
        print(f"{dot} {p['Id']} - {p['Description']}\n"
              f"     Loaded: loaded ({p['FragmentPath']}; {p['UnitFileState']})\n"
              f"     Active: {p['ActiveState']} ({p['SubState']}){since}")
        if p["MainPID"] != "0":
            print(f"   Main PID: {p['MainPID']}")
        if p.get("StatusText"):
            print(f"     Status: \"{p['StatusText']}\"")
        lines = int(a.opts.get("lines") or 10)
        if lines > 0:
            reply = client("logs", name, lines=lines)
            entries = reply.get("result", {}).get("entries", []) if reply.get("ok") else []
            if entries:
                print()
                for e in entries:
                    print(_short(p["Id"].rsplit(".", 1)[0], e))
        if p["ActiveState"] not in ("active", "reloading") and code == OK:
            code = NOT_ACTIVE
    return code


def cat(client: Client, a: Args, units: list[str]) -> int:
    if not units:
        _err("Too few arguments.")
        return FAILED
    code = OK
    for i, name in enumerate(units):
        reply = client("cat", name)
        if not reply.get("ok"):
            _err(f"No files found for {_full(name)}.")
            code = FAILED
            continue
        if i:
            print()
        text = reply["result"]["text"]
        print(f"# {reply['result']['path']}\n{text}", end="" if text.endswith("\n") else "\n")
    return code


def kill(client: Client, a: Args, units: list[str]) -> int:
    code = OK
    for name in units:
        reply = client("kill", name, signal=str(a.opts.get("signal") or "SIGTERM"),
                       whom=str(a.opts.get("whom") or "all"))
        if not reply.get("ok"):
            _err(f"Failed to kill unit {_full(name)}: {reply.get('error')}")
            code = FAILED
    return code


def reset_failed(client: Client, a: Args, units: list[str]) -> int:
    code = OK
    for name in units or [None]:  # type: ignore[list-item]
        reply = client("reset-failed", name)
        if not reply.get("ok"):
            _err(f"Failed to reset failed state of unit {_full(name)}: {reply.get('error')}")
            code = FAILED
    return code


def daemon_reload(client: Client, a: Args, units: list[str]) -> int:
    reply = client("daemon-reload")
    if not reply.get("ok"):
        _err(f"Failed to reload daemon: {reply.get('error')}")
        return FAILED
    return OK


def _install(verb: str) -> Callable[[Client, Args, list[str]], int]:
    """``enable``/``disable [--now] UNIT...``: systemctl's messages on stderr."""
    def run(client: Client, a: Args, units: list[str]) -> int:
        if not units:
            _err("Too few arguments.")
            return FAILED
        code = OK
        for name in units:
            reply = client(verb, name)
            if not reply.get("ok"):
                _err(f"Failed to {verb} unit: {reply.get('error')}")
                code = FAILED
                continue
            result = reply["result"]
            if not a.flag("quiet"):
                for link in result["links"]:
                    _err(f"Created symlink {link} \u2192 {result['target']}." if verb == "enable"
                         else f"Removed \"{link}\".")
            if a.flag("now"):
                job = client("start" if verb == "enable" else "stop", name)
                if not job.get("ok") or job["result"].get("state") == "failed":
                    code = FAILED
        return code
    return run


def not_here(what: str) -> Callable[[Client, Args, list[str]], int]:
    def run(client: Client, a: Args, units: list[str]) -> int:
        _err(f"systemctl {what}: not supported by Aeterna's front end yet")
        return FAILED
    return run


COMMANDS: dict[str, Callable[[Client, Args, list[str]], int]] = {
    **{v: _job(v) for v in ("start", "stop", "restart", "reload", "try-restart",
                            "condrestart", "reload-or-restart", "try-reload-or-restart",
                            "force-reload")},
    "is-active": is_active, "is-failed": is_failed, "is-enabled": is_enabled,
    "is-system-running": is_system_running, "list-units": list_units,
    "list-unit-files": list_unit_files, "show": show, "status": status, "cat": cat,
    "kill": kill, "reset-failed": reset_failed, "daemon-reload": daemon_reload,
    "enable": _install("enable"), "disable": _install("disable"), "mask": not_here("mask"),
    "unmask": not_here("unmask"),
}


# --------------------------------------------------------------------------- logs
def _clock(t: float) -> str:
    return time.strftime("%b %d %H:%M:%S", time.localtime(t))


def _short(unit: str, e: dict[str, Any]) -> str:
    return f"{_clock(e['time'])} {unit}[{e['pid']}]: {e['text']}"


def _aeterna_line(unit: str, e: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e["time"]))
    frac = f"{e['time'] % 1:.3f}"[1:]
    return f"{stamp}{frac} {unit}[{e['pid']}] g{e['generation']} {e['stream']}: {e['text']}"


def _journal_json(unit: str, e: dict[str, Any]) -> str:
    return json.dumps({"__REALTIME_TIMESTAMP": str(int(e["time"] * 1e6)),
                       "__CURSOR": f"s={unit};i={e['seq']}", "_SYSTEMD_UNIT": _full(unit),
                       "_PID": str(e["pid"]), "_TRANSPORT": "stdout",
                       "PRIORITY": "3" if e["stream"] == "stderr" else "6",
                       "SYSLOG_IDENTIFIER": unit, "MESSAGE": e["text"],
                       "AETERNA_GENERATION": str(e["generation"]),
                       "AETERNA_STREAM": e["stream"]})


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: seconds since the epoch (``@N`` or N), ``YYYY-MM-DD[ HH:MM[:SS]]``,
    ``-5m`` / ``5m ago``, ``today``, ``yesterday``, ``now``."""
    import datetime as dt

    now = time.time() if now is None else now
    t = text.strip()
    if t == "now":
        return now
    if t in ("today", "yesterday"):
        day = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        return day.timestamp() - (86400 if t == "yesterday" else 0)
    if t.startswith("@"):
        t = t[1:]
    try:
        return float(t)
    except ValueError:
        pass
    if t.startswith("-") or t.endswith(" ago"):
        return now - parse_duration(t.removeprefix("-").removesuffix(" ago").strip())
    try:
        return dt.datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise Usage(f"--since: expected a time like '2026-12-02 17:30:00', '-10m' or "
                    f"'@1764700000', found {text!r}")


def logs(client: Client, unit: str, lines: int | None, follow: bool, since: float | None,
         fmt: str) -> int:
    """Print a unit's ring (the last ``lines``), then with ``follow`` every new line as it
    comes, across restarts and relays (each line carries its generation). A gap the
    ring overwrote before we read it is reported, never hidden."""
    if fmt not in ("json", "journal-json", "short", "cat", "aeterna"):
        raise Usage(f"--output: expected short, cat, json or aeterna, found {fmt!r}")
    n = lines if lines is not None else (10 if follow else 1 << 30)
    extra: dict[str, Any] = {"since": since} if since is not None else {}
    reply = client("logs", unit, lines=n, **extra)
    if not reply.get("ok"):
        _err(f"aeterna: {reply.get('error')}")
        return FAILED
    unit = reply["result"]["unit"]  # as the manager names it (no .service suffix)
    render: Callable[[dict[str, Any]], str] = {
        "json": lambda e: json.dumps({"unit": unit, **e}),
        "journal-json": lambda e: _journal_json(unit, e),
        "short": lambda e: _short(unit, e), "cat": lambda e: e["text"],
        "aeterna": lambda e: _aeterna_line(unit, e)}[fmt]
    out = sys.stdout
    for e in reply["result"]["entries"]:
        out.write(render(e) + "\n")
    out.flush()
    cursor = reply["result"]["cursor"]
    while follow:
        try:
            reply = client("logs", unit, after=cursor, wait=10.0, timeout=30.0)
        except Unreachable as exc:
            _err(f"aeterna: {exc}")
            return FAILED
        if not reply.get("ok"):
            _err(f"aeterna: {reply.get('error')}")
            return FAILED
        result = reply["result"]
        if result["lost"]:
            _err(f"-- {result['lost']} lines of {unit} were dropped from its ring before "
                 "they could be read --")
        for e in result["entries"]:
            out.write(render(e) + "\n")
        out.flush()
        cursor = result["cursor"]
    return OK


def journalctl(argv: list[str]) -> int:
    """``journalctl -u UNIT [-f] [-n N] [-o short|cat|json] [--since T]``."""
    try:
        a = parse(argv)
        if a.flag("version"):
            print(f"systemd {SYSTEMD_VERSION} (aeterna {__version__})")
            return OK
        units = a.units or [w.removeprefix("_SYSTEMD_UNIT=") for w in a.words
                            if w.startswith("_SYSTEMD_UNIT=")]
        if len(units) != 1:
            raise Usage("Aeterna keeps a log per unit: name one with -u UNIT")
        since = parse_since(a.opts["since"]) if a.opts.get("since") else None
        fmt = str(a.opts.get("output") or "short")
        fmt = "journal-json" if fmt in ("json", "json-pretty") else fmt
        lines = a.opts.get("lines")
        n = None if lines in (None, "all", "+0") else int(str(lines))
        return logs(Client(a.opts.get("control")), units[0], n, a.flag("follow"), since, fmt)
    except Usage as exc:
        _err(f"journalctl: {exc}")
        return FAILED
    except ValueError as exc:
        _err(f"journalctl: {exc}")
        return FAILED
    except Unreachable as exc:
        _err(f"journalctl: {exc}")
        return FAILED
    except (KeyboardInterrupt, BrokenPipeError):
        return OK


def front_end(argv0: str) -> Callable[[list[str]], int] | None:
    """The front end a program name asks for (``systemctl``, ``journalctl``), if any."""
    return {"systemctl": systemctl, "journalctl": journalctl}.get(os.path.basename(argv0))
