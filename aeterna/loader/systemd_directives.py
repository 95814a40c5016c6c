"""What the directives of one systemd unit mean: sections in, a draft out.

:func:`read_draft` walks a unit's sections (unit file, then drop-ins) in order,
so later assignments override earlier ones and an empty assignment resets a
list or restores a default, as in systemd. A bad value of a known directive is
a UnitError ``FILE:LINE: Section.Key: expected ..., found ...``; a directive
Aeterna does not implement, or does not know, is a UnitWarning: systemd warns
and carries on, and so do we, but never silently. The ``finish_*`` functions
validate the unit as a whole. Wiring units together (sockets to services,
``Before=``) is ``systemd_units``'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..log import log_level
from ..model import (
    Condition,
    KillMode,
    NotifyAccess,
    RestartPolicy,
    SocketType,
    StandardInput,
    Strategy,
)
from ..wire.address import parse_metrics_address
from .errors import UnitError, UnitWarning
from .ini import Entry, SpecifierContext, UnitName, UnitSource, expand_specifiers
from .systemd_exec import CONDITIONS, EXEC, exit_statuses
from .systemd_known import IGNORED_SILENTLY, UNIMPLEMENTED, is_unimplemented, would_have
from .systemd_values import (
    BOOL,
    DURATION,
    SIGNAL,
    SIZE,
    absolute_path,
    check_address,
    enum_value,
    expect,
    fd_name,
    ipv6_only,
    octal_mode,
    timeout_span,
    whole_number,
)
from .systemd_words import ExecCommand, parse_environment, parse_exec

Handler = Callable[["Draft", Entry, str], None]
EXEC_KEYS = ("ExecCondition", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload",
             "ExecStop", "ExecStopPost")
_LISTEN = {"ListenStream": SocketType.STREAM, "ListenDatagram": SocketType.DATAGRAM,
           "ListenSequentialPacket": SocketType.SEQPACKET, "ListenFIFO": SocketType.FIFO}


@dataclass
class Draft:
    """Everything one unit's files said, in systemd's terms, before wiring."""

    source: UnitSource
    ctx: SpecifierContext
    errors: list[UnitError] = field(default_factory=list)
    warnings: list[UnitWarning] = field(default_factory=list)
    description: str = ""
    deps: dict[str, list[tuple[str, Entry]]] = field(default_factory=dict)
    # The dicts below map a keyword to (value, the Entry that set it).
    service: dict[str, Any] = field(default_factory=dict)  # Service(...) keywords
    extra: dict[str, Any] = field(default_factory=dict)  # values combined at the end
    execs: dict[str, list[tuple[ExecCommand, Entry]]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    env_files: list[tuple[str, bool]] = field(default_factory=list)
    sockets: list[tuple[str, Entry]] = field(default_factory=list)  # Sockets=
    listens: list[tuple[SocketType, str, Entry]] = field(default_factory=list)
    socket: dict[str, Any] = field(default_factory=dict)  # ListenSpec(...) keywords
    orchestration: dict[str, Any] = field(default_factory=dict)
    where: dict[str, Entry] = field(default_factory=dict)  # last entry per Section.Key
    conditions: list[Condition] = field(default_factory=list)
    aliases: list[tuple[str, Entry]] = field(default_factory=list)  # [Install] Alias=

    @property
    def name(self) -> UnitName:
        return self.source.name

    def expand(self, text: str) -> str:
        return expand_specifiers(text, self.name, self.ctx)

    def warn(self, entry: Entry, key: str, message: str) -> None:
        self.warnings.append(UnitWarning(entry.file, entry.line, key, message))

    def error(self, entry: Entry | None, key: str, message: str) -> None:
        file, line = (entry.file, entry.line) if entry else (self.source.path, 0)
        self.errors.append(UnitError(file, line, key, message))


def read_draft(source: UnitSource, ctx: SpecifierContext) -> Draft:
    """Apply every section of ``source`` in order; problems land in the draft."""
    d = Draft(source, ctx)
    kind = source.name.suffix
    tables = {"Unit": UNIT, "Install": INSTALL}
    tables.update({"Service": SERVICE, "X-Aeterna": AETERNA} if kind == "service"
                  else {"Socket": SOCKET})
    for section in source.sections:
        if section.name not in tables:
            if not section.name.startswith("X-"):
                d.warnings.append(UnitWarning(section.file, section.line, f"[{section.name}]",
                                              f"unknown section in a .{kind} unit; ignored"))
            elif section.name == "X-Aeterna":
                d.warnings.append(UnitWarning(section.file, section.line, "[X-Aeterna]",
                                              "read only in .service units; ignored"))
            continue
        table = tables[section.name]
        for e in section.entries:
            if table is not None:
                _apply(d, section.name, table, e)
    return d


def _apply(d: Draft, section: str, table: dict[str, tuple[Handler, bool]], e: Entry) -> None:
    key = f"{section}.{e.key}"
    if e.key not in table:
        if e.key.startswith("X-") or e.key in IGNORED_SILENTLY.get(section, ()):
            return
        if section == "X-Aeterna":
            d.warn(e, key, "unknown Aeterna setting; ignored")
        elif e.key in UNIMPLEMENTED.get(section, ()) or is_unimplemented(section, e.key):
            d.warn(e, key, f"not implemented by Aeterna; ignored{would_have(e.key)}")
        else:
            d.warn(e, key, "unknown directive; ignored")
        return
    handler, expand = table[e.key]
    d.where[key] = e
    try:
        handler(d, e, d.expand(e.value) if expand else e.value)
    except ValueError as exc:
        d.error(e, key, str(exc))


# ------------------------------------------------------------------ handlers


def _set(bucket: str, name: str, conv: Callable[[str], Any] = str) -> Handler:
    """A scalar: the last assignment wins, an empty one restores the default."""
    def handler(d: Draft, e: Entry, v: str) -> None:
        store: dict[str, Any] = getattr(d, bucket)
        if v == "":
            store.pop(name, None)
        else:
            store[name] = (conv(v), e)
    return handler


def _append(bucket: str, name: str, conv: Callable[[str], Any] = str,
            words: bool = False) -> Handler:
    """A list: each assignment adds one value (``words``: each of its space-separated
    words), an empty one empties the list."""
    def handler(d: Draft, e: Entry, v: str) -> None:
        store: dict[str, Any] = getattr(d, bucket)
        if v == "":
            store.pop(name, None)
            return
        values, _first = store.get(name, ([], e))
        store[name] = ([*values, *(conv(w) for w in (v.split() if words else [v]))], e)
    return handler


def _standard_input(d: Draft, e: Entry, v: str) -> None:
    """StandardInput=null|socket; systemd's other kinds (tty, data, file:...) are
    warned about and ignored, as every unimplemented directive is."""
    if v in ("", "null", "socket"):
        _set(S, "stdin", StandardInput)(d, e, v)
    else:
        d.warn(e, "Service.StandardInput", f"{v!r} is not implemented by Aeterna (null and "
               "socket are); ignored")


def _description(d: Draft, e: Entry, v: str) -> None:
    d.description = v


def _dependency(kind: str) -> Handler:
    def handler(d: Draft, e: Entry, v: str) -> None:
        if v == "":
            d.deps.pop(kind, None)
            return
        for word in v.split():
            try:
                name = UnitName.parse(word)
            except ValueError as exc:
                hint = "" if "." in word else " (a unit name needs its suffix)"
                raise ValueError(f"{exc}{hint}") from None
            if name.is_template:
                raise expect("a unit or a template instance such as foo@1.service", word)
            d.deps.setdefault(kind, []).append((word, e))
    return handler


def _exec(key: str) -> Handler:
    def handler(d: Draft, e: Entry, v: str) -> None:
        if v == "":
            d.execs.pop(key, None)
            return
        notes: list[str] = []
        commands = parse_exec(v, d.expand, notes)
        for note in notes:
            d.warn(e, f"Service.{key}", note)
        for cmd in commands:
            d.execs.setdefault(key, []).append((cmd, e))
    return handler


def _environment(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.env.clear()
        return
    notes: list[str] = []
    d.env.update(parse_environment(v, d.expand, notes))
    for note in notes:
        d.warn(e, "Service.Environment", note)


def _environment_file(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.env_files.clear()
        return
    optional = v.startswith("-")
    d.env_files.append((absolute_path(v[1:] if optional else v), optional))


def _working_directory(d: Draft, e: Entry, v: str) -> None:
    if v.startswith("-"):
        d.warn(e, "Service.WorkingDirectory", "the - prefix (ignore a missing directory) is "
               "not implemented; the directory must exist")
        v = v[1:]
    if v == "":
        d.service.pop("working_directory", None)
    elif v == "~" or v.startswith("/"):
        d.service["working_directory"] = (v, e)
    else:
        raise expect("an absolute path or ~", v)


def _timeout(which: tuple[str, ...]) -> Handler:
    def handler(d: Draft, e: Entry, v: str) -> None:
        for name in which:
            if v == "":
                d.extra.pop(name, None)
            else:
                d.extra[name] = (timeout_span(v), e)
    return handler


def _success_exit_status(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.extra.pop("success", None)
        return
    codes, signals = exit_statuses(v, "SuccessExitStatus", d, e)
    old_codes, old_signals = d.extra.get("success", (((), ()), e))[0]
    d.extra["success"] = ((tuple(old_codes) + tuple(codes),
                           tuple(old_signals) + tuple(signals)), e)


def _alias(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.aliases.clear()
        return
    for word in v.split():
        try:
            name = UnitName.parse(word)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if name.suffix != d.name.suffix:
            raise expect(f"a name ending in .{d.name.suffix}, as the unit's own", word)
        d.aliases.append((word, e))


def _pid_file(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.service.pop("pid_file", None)
        return
    if not v.startswith("/"):
        # systemd takes a relative PIDFile= as relative to /run.
        v = "/run/" + v
    d.service["pid_file"] = (v, e)


def _sockets(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.sockets.clear()
        return
    for word in v.split():
        name = UnitName.parse(word) if word.endswith(".socket") else None
        if name is None or name.is_template:
            raise expect("socket unit names like web.socket", word)
        d.sockets.append((word, e))


_TYPES = ("simple", "exec", "notify", "notify-reload", "oneshot", "forking", "dbus", "idle")


def _type(d: Draft, e: Entry, v: str) -> None:
    """Recorded as written: refusals (Type=dbus) wait for the last drop-in's word."""
    if v == "":
        d.extra.pop("type", None)
    elif v in _TYPES:
        d.extra["type"] = (v, e)
    else:
        raise expect("one of " + ", ".join(_TYPES[:-2]), v)


def _listen(kind: SocketType) -> Handler:
    def handler(d: Draft, e: Entry, v: str) -> None:
        if v == "":
            d.listens.clear()  # as in systemd: an empty Listen*= resets all of them
            return
        check_address(v, kind)
        d.listens.append((kind, v, e))
    return handler


def _socket_service(d: Draft, e: Entry, v: str) -> None:
    name = UnitName.parse(v) if v.endswith(".service") else None
    if name is None or name.is_template:
        raise expect("a service unit name like web.service", v)
    d.extra["service"] = (v, e)


def _refused_listen(d: Draft, e: Entry, v: str) -> None:
    raise ValueError(f"{e.key}= is not supported; only ListenStream, ListenDatagram, "
                     "ListenSequentialPacket and ListenFIFO are (an ignored listener "
                     "would shift every fd after it)")


S = "service"
UNIT: dict[str, tuple[Handler, bool]] = {
    "Description": (_description, True),
    "Requires": (_dependency("Requires"), True),
    "Wants": (_dependency("Wants"), True),
    "After": (_dependency("After"), True),
    "Before": (_dependency("Before"), True),
    "StartLimitIntervalSec": (_set("extra", "limit_interval", DURATION), False),
    "StartLimitInterval": (_set("extra", "limit_interval", DURATION), False),
    "StartLimitBurst": (_set("extra", "limit_burst", whole_number(0, 2**31)), False),
    **CONDITIONS,
}
INSTALL: dict[str, tuple[Handler, bool]] = {
    "Alias": (_alias, True),
    # Enablement: which targets pull the unit in. Aeterna runs every unit it is given.
    **{k: (lambda d, e, v: None, False)
       for k in ("WantedBy", "RequiredBy", "UpheldBy", "Also", "DefaultInstance")},
}
SERVICE: dict[str, tuple[Handler, bool]] = {
    **{k: (_exec(k), False) for k in EXEC_KEYS},
    "Type": (_type, False),
    "Environment": (_environment, False),
    "EnvironmentFile": (_environment_file, True),
    "WorkingDirectory": (_working_directory, True),
    "User": (_set(S, "user"), True),
    "Group": (_set(S, "group"), True),
    "Restart": (_set(S, "restart", enum_value(RestartPolicy)), False),
    "RestartSec": (_set(S, "restart_sec", DURATION), False),
    "RestartSteps": (_set("extra", "steps", whole_number(0, 3000)), False),
    "RestartMaxDelaySec": (_set("extra", "max_delay", DURATION), False),
    "TimeoutStartSec": (_timeout(("timeout_start",)), False),
    "TimeoutStopSec": (_timeout(("timeout_stop",)), False),
    "TimeoutSec": (_timeout(("timeout_start", "timeout_stop")), False),
    "KillMode": (_set(S, "kill_mode", enum_value(KillMode)), False),
    "KillSignal": (_set(S, "stop_signal", SIGNAL), False),
    "WatchdogSignal": (_set(S, "watchdog_signal", SIGNAL), False),
    "ReloadSignal": (_set(S, "reload_signal", SIGNAL), False),
    "WatchdogSec": (_set(S, "watchdog_sec", DURATION), False),
    "NotifyAccess": (_set(S, "notify_access", enum_value(NotifyAccess)), False),
    "FileDescriptorStoreMax": (_set(S, "fd_store_max", whole_number(0, 2**16)), False),
    "StandardInput": (_standard_input, False),
    **EXEC,
    "PIDFile": (_pid_file, True),
    "GuessMainPID": (_set(S, "guess_main_pid", BOOL), False),
    "RemainAfterExit": (_set(S, "remain_after_exit", BOOL), False),
    "RuntimeMaxSec": (_set(S, "runtime_max_sec", timeout_span), False),
    "Sockets": (_sockets, True),
    "SuccessExitStatus": (_success_exit_status, False),
    "StartLimitInterval": UNIT["StartLimitInterval"],
    "StartLimitBurst": UNIT["StartLimitBurst"],
}
SOCKET: dict[str, tuple[Handler, bool]] = {
    **{k: (_listen(t), True) for k, t in _LISTEN.items()},
    **{k: (_refused_listen, False) for k in
       ("ListenSpecial", "ListenNetlink", "ListenMessageQueue", "ListenUSBFunction")},
    "FileDescriptorName": (_set("socket", "name", fd_name), True),
    "Backlog": (_set("socket", "backlog", whole_number(0, 2**32 - 1)), False),
    "ReusePort": (_set("socket", "reuse_port", BOOL), False),
    "BindIPv6Only": (_set("socket", "ipv6_only", ipv6_only), False),
    "SocketMode": (_set("socket", "mode", octal_mode), False),
    "SocketUser": (_set("socket", "user"), True),
    "SocketGroup": (_set("socket", "group"), True),
    "NoDelay": (_set("socket", "nodelay", BOOL), False),
    "KeepAlive": (_set("socket", "keepalive", BOOL), False),
    "RemoveOnStop": (_set("socket", "remove_on_stop", BOOL), False),
    "ReceiveBuffer": (_set("socket", "receive_buffer", SIZE), False),
    "SendBuffer": (_set("socket", "send_buffer", SIZE), False),
    "Service": (_socket_service, True),
    "Accept": (_set("extra", "accept", BOOL), False),
}
OR = "orchestration"
AETERNA: dict[str, tuple[Handler, bool]] = {
    "Strategy": (_set(OR, "strategy", enum_value(Strategy)), False),
    "Canary": (_set(OR, "canary", BOOL), False),
    "CanarySoakSec": (_set(OR, "soak_time", DURATION), False),
    "StateHandoff": (_set(OR, "handoff", BOOL), False),
    "StateHandoffSocket": (_set(OR, "socket_path"), True),
    "StateHandoffTimeoutSec": (_set(OR, "timeout", DURATION), False),
    "StateHandoffRequired": (_set(OR, "required", BOOL), False),
    "StateHandoffMaxSize": (_set(OR, "max_size", SIZE), False),
    "StateHandoffPersistDir": (_set(OR, "persist_dir", absolute_path), True),
    # Hot relay (docs: the orchestration block of a YAML unit, one key per setting).
    "PreFlight": (_exec("PreFlight"), True),
    "PreFlightTimeoutSec": (_set(OR, "preflight_timeout", DURATION), False),
    "StartupTimeoutSec": (_set(OR, "startup_timeout", DURATION), False),
    "CanaryProbeHTTP": (_append(OR, "probe_http", str), True),
    "CanaryProbeTCP": (_append(OR, "probe_tcp", str), True),
    "CanaryProbeExec": (_exec("CanaryProbeExec"), True),
    "CanaryProbeIntervalSec": (_set(OR, "probe_interval", DURATION), False),
    "CanaryMaxRSS": (_set(OR, "max_rss", SIZE), False),
    "CanaryMaxCPUPercent": (_set(OR, "max_cpu", whole_number(1, 100000)), False),
    "DrainTimeoutSec": (_set(OR, "drain_timeout", DURATION), False),
    "DrainSignal": (_set(OR, "drain_signal", SIGNAL), False),
    "MaxDraining": (_set(OR, "max_draining", whole_number(1, 1000)), False),
    "OnSuccess": (_exec("OnSuccess"), True),
    "OnFailure": (_exec("OnFailure"), True),
    # Relay when files change (orchestration.watch of a YAML unit).
    "WatchPaths": (_append(OR, "watch", absolute_path, words=True), True),
    "WatchDebounceSec": (_set(OR, "watch_debounce", DURATION), False),
    # Observability (the YAML unit's observability block).
    "MetricsAddress": (_set(OR, "metrics_port", parse_metrics_address), False),
    "LogLevel": (_set(OR, "log_level", log_level), False),
}

