"""Write the manual pages aeterna(1) and aeterna.unit(5) from the sources themselves.

aeterna(1) is read off the CLI's argparse parser (every verb, argument and
option, with its help); aeterna.unit(5) off the loaders: the YAML keys are
found by asking the YAML loader, which names the keys it allows and the value
it expects in its error messages, and the ``[X-Aeterna]`` keys are the
systemd loader's own table. So neither page can drift from the code: a key or
an option added there is in the next build's page (tests/pure/test_manpages.py
checks that nothing is missing).

    PYTHONPATH=. python3 packaging/manpages.py OUTDIR
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import re
import sys
import tempfile
from typing import Any

from aeterna import __version__
from aeterna.cli import _parser
from aeterna.loader import load_paths
from aeterna.loader.errors import UnitError, UnitErrors
from aeterna.loader.systemd_directives import AETERNA
from aeterna.loader.yaml_units import load_yaml_unit

PROBE = "zz_probe"
_BASE: dict[str, Any] = {"service": {"name": "probe", "command": ["/bin/true"]}}


# ---------------------------------------------------------------- roff helpers

def esc(text: str) -> str:
    """Text for a roff line: backslashes, hyphens kept literal, no leading dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _date() -> str:
    # SOURCE_DATE_EPOCH makes the page reproducible (Debian's builds set it).
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
            else datetime.datetime.now(datetime.UTC))
    return when.strftime("%Y-%m-%d")


def _head(name: str, section: int, title: str) -> list[str]:
    return [f'.TH {name.upper()} {section} "{_date()}" "aeterna {__version__}" "{title}"']


# ---------------------------------------------------------------- aeterna(1)

def _action_spec(a: argparse.Action) -> str:
    """How an option or argument is written: ``-c, --config PATH``."""
    if not a.option_strings:
        name = a.metavar or a.dest
        name = name if isinstance(name, str) else name[0]
        return f"[{name.upper()}]" if a.nargs == "?" else (
            f"{name.upper()}..." if a.nargs in ("+", "*") else name.upper())
    flags = ", ".join(a.option_strings)
    if a.nargs == 0:
        return flags
    if a.choices:
        return f"{flags} {{{','.join(str(c) for c in a.choices)}}}"
    meta = a.metavar or a.dest.upper()
    return f"{flags} {meta}"


def _visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and a.help != argparse.SUPPRESS]


def verbs(p: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """The CLI's verbs and their parsers, in the parser's order."""
    p = p or _parser()
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def verb_help(p: argparse.ArgumentParser | None = None) -> dict[str, str]:
    p = p or _parser()
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return {c.dest: c.help or "" for c in a._choices_actions}
    return {}


def _describe(a: argparse.Action) -> str:
    text = a.help or ""
    if a.option_strings and a.nargs != 0 and a.default not in (None, argparse.SUPPRESS):
        text += f" (default: {a.default})"
    if isinstance(a, argparse._AppendAction):
        text += " (repeatable)" if "repeatable" not in text else ""
    return text


def aeterna_1() -> str:
    p = _parser()
    out = _head("aeterna", 1, "Aeterna")
    out += [".SH NAME", "aeterna \\- " + esc("a process manager for zero-downtime, "
                                               "zero-amnesia upgrades"),
            ".SH SYNOPSIS",
            ".B aeterna", "[\\fIOPTIONS\\fR] \\fIVERB\\fR [\\fIARGUMENTS\\fR]",
            ".SH DESCRIPTION",
            esc("Aeterna runs services described by unit files (its own YAML format, "
                "see aeterna.unit(5), and systemd .service and .socket files). "
                "\"aeterna start -c PATH\" runs the manager in the foreground: as a "
                "container's PID 1, as a host service (aeterna.service), or by hand. "
                "The other verbs talk to a running manager over its control socket."),
            ".PP",
            esc("Under systemd (Type=notify), Aeterna sends READY=1 once its units are "
                "started, RELOADING=1 and READY=1 around a reload, STATUS= with a summary, "
                "WATCHDOG=1 while its loop runs (when WATCHDOG_USEC is set) and STOPPING=1. "
                "Listening sockets passed by systemd (LISTEN_FDS, LISTEN_FDNAMES) go to the "
                "unit whose socket has the same name, so they outlive a restart of Aeterna."),
            ".SH OPTIONS"]
    for a in _visible(p):
        out += [".TP", f".B {esc(_action_spec(a))}", esc(_describe(a))]
    out.append(".SH VERBS")
    helps = verb_help(p)
    for name, sub in verbs(p).items():
        args = " ".join(_action_spec(a) for a in _visible(sub) if not a.option_strings)
        out += [".SS " + esc(f"{name} {args}".strip()), esc(helps.get(name, ""))]
        for a in _visible(sub):
            out += [".TP", f".B {esc(_action_spec(a))}", esc(_describe(a))]
    out += [".SH EXIT STATUS",
            ".TP", ".B 0", "done",
            ".TP", ".B 1", "the action failed",
            ".TP", ".B 2", "bad unit files or usage",
            ".TP", ".B 3", "no manager answering on the control socket",
            ".PP", esc("\"aeterna start -c\" exits with the status of its units: that of "
                       "the unit when there is one (as tini), else non-zero if any failed."),
            ".SH ENVIRONMENT",
            ".TP", ".B AETERNA_CONTROL", esc("the control socket, unless --control is given"),
            ".TP", ".B NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS, LISTEN_FDNAMES",
            esc("set by systemd when it runs Aeterna; read, and not passed on to the units"),
            ".SH SIGNALS",
            ".TP", ".B SIGTERM, SIGINT, SIGQUIT", esc("stop every unit in order, then exit"),
            ".TP", ".B SIGHUP", esc("reload the unit files (as \"aeterna reload\")"),
            ".TP", ".B SIGUSR1, SIGUSR2, SIGWINCH", esc("forwarded to the units' main processes"),
            ".SH FILES",
            ".TP", ".I /etc/aeterna/units/", esc("the unit files aeterna.service runs"),
            ".TP", ".I /run/aeterna/control.sock", esc("the control socket (root)"),
            ".TP", ".I /var/lib/aeterna/", esc("state kept across restarts (SRP persist_dir)"),
            ".SH SEE ALSO", "aeterna.unit(5), systemd.service(5), systemd.socket(5), sd_notify(3)"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------- the YAML keys

def _load(doc: dict[str, Any]) -> UnitError | None:
    import yaml

    try:
        load_yaml_unit(yaml.safe_dump(doc), "probe.yaml")
    except UnitError as exc:
        return exc
    return None


def _at(doc: dict[str, Any], path: list[Any]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _dotted(path: list[Any]) -> str:
    # A list's items show as NAME[].KEY.
    return "".join("[]" if isinstance(p, int) else ("." if i else "") + p
                   for i, p in enumerate(path))


def _expected(err: UnitError | None) -> str:
    if err is None:
        return "a mapping of names to values"
    m = re.match(r"(?:expected )?(.*?)(?:, (?:found|got) .*)?$", err.message)
    return m.group(1) if m else err.message


def yaml_keys() -> list[tuple[str, str]]:
    """Every key of the YAML format, as (dotted path, what its value is)."""
    found: list[tuple[str, str]] = []
    _walk(copy.deepcopy(_BASE), [], found)
    return found


def _keys_at(doc: dict[str, Any], path: list[Any]) -> list[str]:
    probe = copy.deepcopy(doc)
    _at(probe, path)[PROBE] = 1
    err = _load(probe)
    if err is None or "unknown key" not in err.message:
        return []
    return [k.strip() for k in err.message.split("expected one of:", 1)[1].split(",")]


def _probe(doc: dict[str, Any], path: list[Any], key: str, value: Any) -> UnitError | None:
    probe = copy.deepcopy(doc)
    _at(probe, path)[key] = value
    return _load(probe)


def _walk(doc: dict[str, Any], path: list[Any], found: list[tuple[str, str]]) -> None:
    for key in _keys_at(doc, path):
        here = [*path, key]
        name = _dotted(here)
        current = _at(doc, path).get(key)
        err = _probe(doc, path, key, {**(current if isinstance(current, dict) else {}),
                                      PROBE: 1})
        if err is not None and err.key == f"{name}.{PROBE}" and "unknown key" in err.message:
            found.append((name, "a mapping"))
            sub = copy.deepcopy(doc)
            _at(sub, path)[key] = current if isinstance(current, dict) else {}
            _walk(sub, here, found)
            continue
        if err is not None and err.key == name and "expected a list" in err.message:
            item = _probe(doc, path, key, [{PROBE: 1}])
            if item is not None and item.key.endswith(f"].{PROBE}"):
                found.append((name, "a list of mappings"))
                sub = copy.deepcopy(doc)
                _at(sub, path)[key] = [{}]
                _walk(sub, [*here, 0], found)
                continue
            item = _probe(doc, path, key, [{"a": 1}])
            what = _expected(item) if item is not None and item.key.startswith(name) else ""
            found.append((name, f"a list ({what})" if what and what != "a list" else "a list"))
            continue
        bad = _probe(doc, path, key, "\x01bad")
        if bad is not None and bad.key == name:
            found.append((name, _expected(bad)))
        elif err is not None and err.key == name:
            found.append((name, _expected(err)))
        else:
            found.append((name, "a string"))


def aeterna_keys() -> list[tuple[str, str]]:
    """The ``[X-Aeterna]`` keys, as (key, what its value is)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="aeterna-man-") as d:
        for key in AETERNA:
            path = os.path.join(d, "probe.service")
            with open(path, "w") as f:
                f.write(f"[Service]\nExecStart=/bin/true\n[X-Aeterna]\n{key}=\x01bad\n")
            try:
                load_paths([path])
                what = "a string"
            except UnitErrors as exc:
                what = _expected(exc.errors[0])
            # What the handler is says the rest: a command line, a repeatable setting.
            kind = AETERNA[key][0].__qualname__.split(".")[0]
            if kind == "_exec":
                what = "a command line, as ExecStart= (repeatable)"
            elif kind == "_append":
                what += " (repeatable; empty resets the list)"
            out.append((key, what))
    return out


def aeterna_unit_5() -> str:
    out = _head("aeterna.unit", 5, "Aeterna")
    out += [".SH NAME", "aeterna.unit \\- " + esc("Aeterna's unit files (YAML, and "
                                                    "[X-Aeterna] in systemd units)"),
            ".SH SYNOPSIS", ".IR NAME .yaml ", ".IR NAME .service ", ".IR NAME .socket",
            ".SH DESCRIPTION",
            esc("Aeterna reads the unit files in the directories and files given to "
                "\"aeterna start -c\" (/etc/aeterna/units for aeterna.service): its own "
                "YAML format (*.yaml, *.yml) and systemd's .service and .socket files with "
                "their drop-ins. An error names the file, the line and the key, and what "
                "was expected; a directive Aeterna does not implement is a warning. "
                "\"aeterna validate PATH\" checks files without running anything."),
            ".SH YAML UNITS",
            esc("One unit per file. Durations are seconds or systemd time spans "
                "(\"1min 30s\"); the keys are:")]
    for name, what in yaml_keys():
        out += [".TP", f".B {esc(name)}", esc(what)]
    out += [".SH SYSTEMD UNITS AND [X-AETERNA]",
            esc("A .service file may carry a [X-Aeterna] section, which systemd ignores, "
                "with Aeterna's own settings (the YAML unit's orchestration and "
                "observability blocks):")]
    for key, what in aeterna_keys():
        out += [".TP", f".B {esc(key)}=", esc(what)]
    out += [".SH EXAMPLE", esc("See /etc/aeterna/units/example.yaml.disabled."),
            ".SH SEE ALSO", "aeterna(1), systemd.service(5), systemd.socket(5)"]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    outdir = argv[1] if len(argv) > 1 else "build/man"
    os.makedirs(outdir, exist_ok=True)
    for name, text in (("aeterna.1", aeterna_1()), ("aeterna.unit.5", aeterna_unit_5())):
        with open(os.path.join(outdir, name), "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
