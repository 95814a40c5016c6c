"""systemd ``.service`` and ``.socket`` units in, frozen Aeterna units out.

A ``.socket`` + ``.service`` pair that runs under systemd runs here unchanged:
the socket unit's listeners become the service's ``Service.sockets`` (bound by
the manager, passed as ``LISTEN_FDS``), and ``[X-Aeterna]`` adds Aeterna's own
settings in a section systemd ignores.

How the systemd model maps onto Aeterna's (see also ``systemd_directives``):

* A unit's Aeterna name is its file name without ``.service``: ``web.service``
  is ``web``, ``foo@bar.service`` is ``foo@bar``.
* A socket unit feeds the service named by its ``Service=``, by default the
  one with the same name; a service's ``Sockets=`` adds more. Listeners keep
  config order: the same-name socket's first, then ``Sockets=`` order, then
  other sockets naming the service, by name. One socket unit feeding two
  services is refused: the model gives each service its own listeners.
* ``Requires=`` sets ``require``, ``After=`` sets ``order``, ``Wants=`` alone
  gives an edge with neither (the model has no separate "pull in" flag).
  ``Before=B`` in A is turned into "B is ordered after A" on B, when B is
  loaded from the same directory; otherwise it is ignored with a warning.
  Edges to ``.socket`` units are dropped silently (every listener is bound
  before any service starts); edges to targets and other unit types are
  dropped with a warning. Missing ``.service`` dependencies are left to the
  caller's graph check, since they may be YAML units.
* Templates: ``foo@.service`` is loaded only as instances: a file or symlink
  ``foo@bar.service`` in the directory, or a dependency or ``Service=``
  naming ``foo@bar.service``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..model import (
    Backoff,
    Canary,
    Dependency,
    Drain,
    Hook,
    ListenSpec,
    Observability,
    Orchestration,
    Probe,
    ProbeKind,
    RestartPolicy,
    Service,
    ServiceType,
    Source,
    StandardInput,
    StartLimit,
    StateHandoff,
    Strategy,
    Timeouts,
    UnitSpec,
)
from .durations import parse_signal
from .errors import UnitError, UnitErrors, UnitWarning
from .ini import Entry, SpecifierContext, UnitName, read_unit_with_dropins
from .systemd_directives import Draft, read_draft
from .systemd_exec import directories
from .systemd_values import REFUSED
from .systemd_words import ExecCommand

__all__ = ["load_systemd_dir", "load_systemd_file"]


def load_systemd_dir(directory: str | os.PathLike[str], *,
                     specifiers: SpecifierContext | None = None,
                     errors: list[UnitError] | None = None,
                     ) -> tuple[list[UnitSpec], list[UnitWarning]]:
    """Load every ``.service`` and ``.socket`` unit in ``directory`` (not recursively).

    Returns the units, sorted by name, and the warnings. Raises UnitError, or
    UnitErrors when there are several, after reading every file, so that a
    user sees all the problems at once; with ``errors`` given, they go there
    instead and a unit that cannot load (or whose socket cannot) is left out,
    the others returned. ``specifiers`` defaults to this process's
    (``SpecifierContext.from_process``). An alias symlink (``sshd.service`` ->
    ``ssh.service``) names the unit it points to, and is not a unit of its own.
    """
    loader = _Loader(os.fspath(directory), specifiers or SpecifierContext.from_process())
    loader.collect = errors
    try:
        names = sorted(os.listdir(loader.directory))
    except OSError as exc:
        raise UnitError(loader.directory, 0, "", f"cannot read directory: {exc.strerror}") \
            from None
    for base in names:
        loader.consider(base)
    return loader.finish(wire_before=True)


def load_systemd_file(path: str | os.PathLike[str], *,
                      specifiers: SpecifierContext | None = None,
                      errors: list[UnitError] | None = None,
                      ) -> tuple[list[UnitSpec], list[UnitWarning]]:
    """Load the service of one ``.service`` or ``.socket`` file, with its sockets.

    For ``web.service``: ``web.socket`` next to it if present, plus its
    ``Sockets=``. For ``web.socket``: the service it feeds, loaded the same
    way. An instance ``foo@bar.service`` without a file of its own comes from
    ``foo@.service``. Other socket units of the directory are not read, and
    ``Before=`` is ignored with a warning (there is no set to apply it to).
    Returns a one-unit list and the warnings, like :func:`load_systemd_dir`.
    """
    path = os.fspath(path)
    directory, base = os.path.split(path)
    loader = _Loader(directory or ".", specifiers or SpecifierContext.from_process())
    loader.collect = errors
    base = loader.alias_target(base) or base
    try:
        name = UnitName.parse(base)
    except ValueError as exc:
        raise UnitError(path, 0, "", str(exc)) from None
    if name.suffix not in ("service", "socket"):
        raise UnitError(path, 0, "", "expected a .service or .socket unit file")
    loader.only = base
    draft = loader.load(base, None)
    if draft is not None and name.suffix == "socket":
        target = loader.target_of(draft)[0]
        loader.only = target
        draft = loader.load(target, None) if loader.exists(UnitName.parse(target)) else None
    if draft is not None:
        loader.load_sockets_of(draft)
    return loader.finish(wire_before=False)


@dataclass
class _Edge:
    """A dependency being assembled from Requires=, Wants=, After= and others' Before=."""

    require: bool
    order: bool
    source: Source

    @staticmethod
    def add(edges: dict[str, _Edge], ref: str, kind: str, e: Entry) -> None:
        edge = edges.setdefault(ref, _Edge(False, False, Source(e.file, e.line)))
        if kind == "Requires":
            edge.require, edge.source = True, Source(e.file, e.line)
        elif kind == "After":
            edge.order = True


@dataclass
class _Loader:
    """The units of one directory being read, and everything found wrong so far."""

    directory: str
    ctx: SpecifierContext
    drafts: dict[str, Draft] = field(default_factory=dict)  # by full unit name
    failed: set[str] = field(default_factory=set)
    errors: list[UnitError] = field(default_factory=list)
    warnings: list[UnitWarning] = field(default_factory=list)
    only: str | None = None  # file mode: the one service to return; no instances followed
    collect: list[UnitError] | None = None  # partial load: errors go here, bad units out
    aliases: dict[str, list[str]] = field(default_factory=dict)  # unit -> alias symlinks

    def alias_target(self, base: str) -> str | None:
        """For a symlink to another unit file of this directory (a distribution's
        alias, e.g. ``syslog.service`` -> ``rsyslog.service``): that file's name."""
        path = self.path(base)
        if not os.path.islink(path):
            return None
        target = os.readlink(path)
        if target == os.devnull:
            return None  # masked
        resolved = os.path.realpath(path)
        name = os.path.basename(target)
        if (os.path.dirname(resolved) != os.path.realpath(self.directory) or name == base
                or os.path.splitext(name)[1] != os.path.splitext(base)[1]
                or "@." in name):  # foo@bar.service -> foo@.service: an instance
            return None
        return name

    def path(self, base: str) -> str:
        return os.path.join(self.directory, base)

    def exists(self, name: UnitName) -> bool:
        """A file of this name, or for an instance its template, is in the directory."""
        return os.path.lexists(self.path(name.full)) or (
            name.instance is not None and os.path.lexists(self.path(name.template)))

    def consider(self, base: str) -> None:
        """One directory entry of a directory load: load it, skip it, or warn."""
        try:
            name = UnitName.parse(base)
        except ValueError:
            return  # not a unit file (README, drop-in directories...)
        if os.path.isdir(self.path(base)):
            return
        target = self.alias_target(base)
        if target is not None and not name.is_template:
            self.aliases.setdefault(target, []).append(name.stem)
            return
        if name.suffix not in ("service", "socket"):
            self.warnings.append(UnitWarning(self.path(base), 0, "", f".{name.suffix} units "
                                             "are not supported; ignored"))
        elif name.is_template and name.suffix == "socket":
            self.warnings.append(UnitWarning(self.path(base), 0, "", "template socket units "
                                             "serve Accept=yes, which is not supported; ignored"))
        elif not name.is_template:
            self.load(base, None)

    def load(self, base: str, wanted_by: Entry | None) -> Draft | None:
        """Read and interpret one unit (once); None if it cannot be loaded."""
        if base in self.drafts or base in self.failed:
            return self.drafts.get(base)
        try:
            source = read_unit_with_dropins(self.path(base))
        except UnitError as exc:
            self.failed.add(base)
            if wanted_by is None:
                self.errors.append(exc)
            else:
                self.errors.append(UnitError(wanted_by.file, wanted_by.line, "",
                                             f"cannot load {base}: {exc}"))
            return None
        if source.masked:
            self.failed.add(base)
            self.warnings.append(UnitWarning(source.path, 0, "", "masked (empty or a link "
                                             "to /dev/null); not loaded"))
            return None
        draft = read_draft(source, self.ctx)
        self.drafts[base] = draft
        if source.name.suffix == "service" and self.only is None:
            self.load_instances(draft)
        return draft

    def load_instances(self, draft: Draft) -> None:
        """Instances of local templates that ``draft`` depends on are units too."""
        for refs in draft.deps.values():
            for ref, entry in refs:
                name = UnitName.parse(ref)
                if name.suffix == "service" and name.instance and self.exists(name):
                    self.load(ref, entry)

    def target_of(self, socket: Draft) -> tuple[str, Entry | None]:
        """The service a socket unit feeds: ``Service=``, or the same name."""
        if "service" in socket.extra:
            value, entry = socket.extra["service"]
            return str(value), entry
        return f"{socket.name.stem}.service", None

    def load_sockets_of(self, service: Draft) -> None:
        """The same-name socket, if there is one and feeds it, and those in ``Sockets=``."""
        own = UnitName.parse(f"{service.name.stem}.socket")
        if os.path.lexists(self.path(own.full)):
            sock = self.load(own.full, None)
            if sock is not None and self.target_of(sock)[0] != service.name.full:
                del self.drafts[own.full]  # it feeds another service, not ours
        for ref, entry in service.sockets:
            if os.path.lexists(self.path(ref)):
                self.load(ref, entry)

    # -------------------------------------------------------------- wiring

    def attach_sockets(self) -> dict[str, list[Draft]]:
        """Socket drafts per service name, in listener order; errors for strays."""
        owner: dict[str, str] = {}
        for base, d in sorted(self.drafts.items()):
            if d.name.suffix != "socket":
                continue
            target, entry = self.target_of(d)
            tname = UnitName.parse(target)
            if target not in self.drafts and tname.instance and self.exists(tname):
                self.load(target, entry)
            if target not in self.drafts:
                d.error(entry, "Socket.Service" if entry else "", f"expected a service "
                        f"{target} for this socket in {self.directory}, found none")
            owner[base] = target
        for base, d in list(self.drafts.items()):
            for ref, entry in d.sockets if d.name.suffix == "service" else []:
                if ref not in self.drafts:
                    d.error(entry, "Service.Sockets", f"expected a socket unit in "
                            f"{self.directory}, found no {ref}")
                elif owner.get(ref, base) != base and owner[ref] in self.drafts:
                    d.error(entry, "Service.Sockets", f"{ref} already feeds {owner[ref]}; a "
                            "socket unit can feed only one service in Aeterna")
                else:
                    owner[ref] = base
        feeds: dict[str, list[Draft]] = {}
        for base, d in self.drafts.items():
            if d.name.suffix == "service":
                rank = {ref: i for i, (ref, _e) in enumerate(d.sockets)}
                mine = [s for s, t in owner.items() if t == base]
                mine.sort(key=lambda s: (s != f"{d.name.stem}.socket", rank.get(s, len(rank)), s))
                feeds[base] = [self.drafts[s] for s in mine]
        return feeds

    def dependencies(self, wire_before: bool) -> dict[str, dict[str, _Edge]]:
        """Per service file name: its edges by the full name of the unit depended on."""
        edges: dict[str, dict[str, _Edge]] = {}
        for base, d in self.drafts.items():
            if d.name.suffix != "service":
                self._socket_dependencies(d)
                continue
            mine = edges.setdefault(base, {})
            for kind in ("Requires", "Wants", "After", "Before"):
                for ref, e in d.deps.get(kind, []):
                    name = UnitName.parse(ref)
                    key = f"Unit.{kind}"
                    if name.suffix == "socket":
                        continue
                    if name.suffix != "service":
                        d.warn(e, key, f"dependencies on .{name.suffix} units are not "
                               f"implemented; {ref} ignored")
                    elif ref == base:
                        d.warn(e, key, f"a unit cannot depend on itself; {ref} ignored")
                    elif kind != "Before":
                        _Edge.add(mine, ref, kind, e)
                    elif wire_before and ref in self.drafts:
                        _Edge.add(edges.setdefault(ref, {}), base, "After", e)
                    else:
                        d.warn(e, key, f"{ref} is not a systemd unit loaded with this one; "
                               "the ordering is ignored (write After= in that unit)")
        return edges

    @staticmethod
    def _socket_dependencies(d: Draft) -> None:
        """Listeners are bound when the manager starts, before any service: ordering
        before services holds anyway, anything else cannot be honoured."""
        for kind, refs in d.deps.items():
            for ref, e in refs:
                suffix = UnitName.parse(ref).suffix
                if suffix != "socket" and not (kind == "Before" and suffix == "service"):
                    d.warn(e, f"Unit.{kind}", "dependencies of socket units are not "
                           f"implemented (listeners are bound before any service starts); "
                           f"{ref} ignored")

    def finish(self, wire_before: bool) -> tuple[list[UnitSpec], list[UnitWarning]]:
        """Wire the drafts together, build the units, raise if anything was wrong."""
        feeds = self.attach_sockets()
        edges = self.dependencies(wire_before)
        listeners = {base: finish_socket(d) for base, d in self.drafts.items()
                     if d.name.suffix == "socket"}
        units: list[UnitSpec] = []
        bad = {base for base, d in self.drafts.items() if d.errors}
        bad |= {target for s, d in self.drafts.items() if s in bad and d.name.suffix == "socket"
                for target in [self.target_of(d)[0]]}
        for base, d in self.drafts.items():
            kw = finish_service(d) if d.name.suffix == "service" else None
            if kw is None or (self.only is not None and base != self.only) or base in bad:
                continue
            kw["aliases"] = tuple(dict.fromkeys((*kw["aliases"], *self.aliases.get(base, []))))
            listens = [spec for s in feeds.get(base, []) for spec in listeners[s.name.full]]
            if kw.get("stdin") is StandardInput.SOCKET and not listens:
                d.error(d.service["stdin"][1], "Service.StandardInput",
                        "expected null, or socket for a service with a socket unit; "
                        "found socket and no socket unit feeds this service")
            deps = tuple(Dependency(UnitName.parse(ref).stem, e.require, e.order, e.source)
                         for ref, e in edges.get(base, {}).items())
            service = Service(name=d.name.stem, sockets=tuple(listens), depends_on=deps,
                              expand_env=True, **kw)
            units.append(UnitSpec(service=service, orchestration=finish_orchestration(d),
                              observability=finish_observability(d),
                              source=Source(d.source.path), description=d.description))
        for d in self.drafts.values():
            self.errors.extend(d.errors)
            self.warnings.extend(d.warnings)
        self.errors.sort(key=lambda e: (e.file, e.line))
        self.warnings.sort(key=lambda w: (w.file, w.line))
        if self.collect is not None:
            self.collect.extend(self.errors)
            return sorted(units, key=lambda u: u.name), self.warnings
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise UnitErrors(self.errors)
        return sorted(units, key=lambda u: u.name), self.warnings


# ------------------------------------------------------------------ one unit, as a whole


def _value(store: dict[str, Any], name: str, default: Any = None) -> Any:
    return store[name][0] if name in store else default


def finish_service(d: Draft) -> dict[str, Any] | None:
    """Service(...) keywords other than name, sockets and depends_on; None on error.

    Several ``ExecStart=`` lines are allowed only for Type=oneshot; the model
    has one main command, so the others run, in order, before the
    ``ExecStartPost=`` commands, which is when systemd runs them too.
    """
    kw = {k: v for k, (v, _e) in d.service.items()}
    starts = d.execs.get("ExecStart", [])
    where = d.where.get("Service.Type")
    written = _value(d.extra, "type", "simple" if starts else "oneshot")
    if written == "dbus":
        d.error(where, "Service.Type", REFUSED["Type=dbus"])
        return None
    if written == "idle":
        d.warn(d.extra["type"][1], "Service.Type", "Type=idle is run as Type=simple (no "
               "delay until other jobs finish)")
        written = "simple"
    type_ = kw["type"] = ServiceType(written)
    if type_ is not ServiceType.ONESHOT and len(starts) > 1:
        d.error(starts[1][1], "Service.ExecStart", f"expected one command for Type="
                f"{type_.value}, found {len(starts)}; only Type=oneshot runs several")
    if d.errors:
        return None  # a command with an error is not a missing command
    if not starts and type_ is not ServiceType.ONESHOT:
        d.error(where, "Service.ExecStart", f"missing, expected a command for Type="
                f"{type_.value}")
    elif not starts and not d.execs.get("ExecStop"):
        d.error(where, "Service.ExecStart", "missing, expected a command to run (a oneshot "
                "service may have only ExecStop=)")
    restart = kw.get("restart")
    if type_ is ServiceType.ONESHOT and restart in (RestartPolicy.ALWAYS,
                                                    RestartPolicy.ON_SUCCESS):
        d.error(d.where.get("Service.Restart"), "Service.Restart",
                f"expected no, on-failure, on-abnormal, on-watchdog or on-abort for "
                f"Type=oneshot, found {restart.value!r}")
    if d.errors:
        return None
    if type_ is ServiceType.FORKING and d.orchestration.get("strategy", (None,))[0] \
            is Strategy.HOT_RELAY:
        entry = d.orchestration["strategy"][1]
        d.error(entry, "X-Aeterna.Strategy", "expected restart for Type=forking, found "
                "'hot-relay': the daemon binds and forks on its own, so N+1 cannot share "
                "N's accept queue in a controlled way")
        return None
    main = starts[0][0] if starts else ExecCommand(())
    kw.update(command=main.argv, ignore_failure=main.ignore_failure, argv0=main.argv0,
              privileged=main.privileged in ("+", "!"))
    kw["env"] = tuple(d.env.items())
    kw["env_files"] = tuple(d.env_files)
    post = [c for c, _e in starts[1:]] + [c for c, _e in d.execs.get("ExecStartPost", [])]
    kw["exec_start_post"] = tuple(c.encode() for c in post)
    for key, name in (("ExecStartPre", "exec_start_pre"), ("ExecReload", "exec_reload"),
                      ("ExecStop", "exec_stop"), ("ExecStopPost", "exec_stop_post"),
                      ("ExecCondition", "exec_condition")):
        kw[name] = tuple(c.encode() for c, _e in d.execs.get(key, []))
    start_default = math.inf if type_ is ServiceType.ONESHOT else Timeouts().start
    kw["timeouts"] = Timeouts(_value(d.extra, "timeout_start", start_default),
                              _value(d.extra, "timeout_stop", Timeouts().stop))
    codes, sigs = _value(d.extra, "success", ((), ()))
    kw["success_exit_status"] = tuple(codes)
    kw["success_exit_signals"] = tuple(int(parse_signal(n)) for n in sigs)
    for name in ("restart_prevent", "restart_force"):
        codes, sigs = _value(d.extra, name, ((), ()))
        kw[name] = (*codes, *sigs)
    limits = _value(d.extra, "limits", {})
    kw["limits"] = tuple(limits[k] for k in sorted(limits))
    kw["supplementary_groups"] = tuple(_value(d.extra, "groups", ()))
    kw["directories"] = directories(d)
    kw["conditions"] = tuple(d.conditions)
    kw["aliases"] = tuple(UnitName.parse(a).stem for a, _e in d.aliases)
    kw["start_limit"] = StartLimit(_value(d.extra, "limit_burst", StartLimit().burst),
                                   _value(d.extra, "limit_interval", StartLimit().interval))
    kw["backoff"] = _backoff(kw.get("restart_sec", 0.1), _value(d.extra, "steps", 0),
                             _value(d.extra, "max_delay", 0.0))
    return kw


def _backoff(restart_sec: float, steps: int, max_delay: float) -> Backoff:
    """systemd's RestartSteps/RestartMaxDelaySec as geometric growth: the delay goes
    from RestartSec to RestartMaxDelaySec in ``steps`` equal ratios, then stays."""
    if steps <= 0 or not max_delay > restart_sec > 0 or math.isinf(max_delay):
        return Backoff()
    return Backoff(factor=(max_delay / restart_sec) ** (1.0 / steps), max_delay=max_delay)


def finish_socket(d: Draft) -> list[ListenSpec]:
    """The socket unit's listeners, options applied to each, in config order."""
    if _value(d.extra, "accept", False):
        d.error(d.extra["accept"][1], "Socket.Accept", REFUSED["Accept=yes"])
    if not d.listens and not d.errors:
        d.error(None, "Socket.ListenStream", "missing, expected at least one Listen*= address")
    kw = {k: v for k, (v, _e) in d.socket.items()}
    kw.setdefault("name", d.name.full)  # systemd's default fd name: the unit's file name
    return [ListenSpec(address=addr, type=kind, source=Source(e.file, e.line), **kw)
            for kind, addr, e in d.listens]


def finish_observability(d: Draft) -> Observability:
    """``[X-Aeterna]`` MetricsAddress= and LogLevel=."""
    o = d.orchestration
    return Observability(metrics_port=o["metrics_port"][0] if "metrics_port" in o else "",
                         log_level=o["log_level"][0] if "log_level" in o else "")


def finish_orchestration(d: Draft) -> Orchestration:
    """``[X-Aeterna]``: a canary or a handoff is on when switched on, or when any of
    its settings is given and it is not switched off (as a YAML block would be)."""
    o = {k: v for k, (v, _e) in d.orchestration.items()}
    interval = o.get("probe_interval", 1.0)
    probes = (*(Probe(ProbeKind.HTTP, target=u, interval=interval)
                for u in o.get("probe_http", [])),
              *(Probe(ProbeKind.TCP, target=a, interval=interval)
                for a in o.get("probe_tcp", [])),
              *(Probe(ProbeKind.EXEC, command=c.argv, interval=interval)
                for c, _e in d.execs.get("CanaryProbeExec", [])))
    canary_keys = ("soak_time", "probe_http", "probe_tcp", "max_rss", "max_cpu")
    canary = Canary(o.get("canary", any(k in o for k in canary_keys) or bool(probes)),
                    o.get("soak_time", 0.0), probes, o.get("max_rss", 0),
                    float(o.get("max_cpu", 0)))
    handoff_keys = ("socket_path", "timeout", "required", "max_size", "persist_dir")
    handoff = StateHandoff(
        enabled=o.get("handoff", any(k in o for k in handoff_keys)),
        socket_path=o.get("socket_path", ""), timeout=o.get("timeout", StateHandoff().timeout),
        required=o.get("required", False), max_size=o.get("max_size", 0),
        persist_dir=o.get("persist_dir", ""))
    hook_timeout = o.get("preflight_timeout", 30.0)
    drain = Drain(o.get("drain_timeout", Drain().timeout), o.get("drain_signal", Drain().signal))
    return Orchestration(
        o.get("strategy", Strategy.RESTART), "strategy" in o, canary, handoff,
        pre_flight=tuple(Hook(c.argv, timeout=hook_timeout)
                         for c, _e in d.execs.get("PreFlight", [])),
        startup_timeout=o.get("startup_timeout", 0.0), drain=drain,
        max_draining=o.get("max_draining", 1),
        on_success=tuple(c.argv for c, _e in d.execs.get("OnSuccess", [])),
        on_failure=tuple(c.argv for c, _e in d.execs.get("OnFailure", [])),
        watch=tuple(o.get("watch", ())),
        watch_debounce=o.get("watch_debounce", Orchestration().watch_debounce))
