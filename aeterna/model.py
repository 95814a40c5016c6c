"""The frozen model of a unit: what the loaders produce and the manager reads.

Every object here is immutable. A reload builds a whole new set of units and
the manager compares them with the running ones; nothing edits a unit in place.
Durations are float seconds (``math.inf`` for "infinity").
"""

from __future__ import annotations

import enum
import math
import signal
from dataclasses import dataclass, field


class ServiceType(enum.Enum):
    """When a started process counts as "up" (systemd's ``Type=``)."""

    SIMPLE = "simple"
    EXEC = "exec"
    NOTIFY = "notify"
    NOTIFY_RELOAD = "notify-reload"
    ONESHOT = "oneshot"
    FORKING = "forking"  # up when the started process exits 0; its child is the main one


class RestartPolicy(enum.Enum):
    """systemd's ``Restart=`` values."""

    NO = "no"
    ON_SUCCESS = "on-success"
    ON_FAILURE = "on-failure"
    ON_ABNORMAL = "on-abnormal"
    ON_WATCHDOG = "on-watchdog"
    ON_ABORT = "on-abort"
    ALWAYS = "always"


class KillMode(enum.Enum):
    """Which processes the stop signal reaches (systemd's ``KillMode=``).

    ``control-group`` is approximated by the unit's process group: Aeterna
    does not create cgroups, so a child that calls setsid() escapes it.
    """

    CONTROL_GROUP = "control-group"
    MIXED = "mixed"
    PROCESS = "process"
    NONE = "none"


class NotifyAccess(enum.Enum):
    """Who may send sd_notify messages for a unit."""

    NONE = "none"
    MAIN = "main"
    EXEC = "exec"
    ALL = "all"


class StandardInput(enum.Enum):
    """What a unit's fd 0 is: /dev/null, or (systemd's ``StandardInput=socket``) its
    first listening socket, for runtimes that take a listener from stdin (Java's
    ``System.inheritedChannel()``, inetd-style servers)."""

    NULL = "null"
    SOCKET = "socket"


class Strategy(enum.Enum):
    """How a reload replaces a unit's process."""

    HOT_RELAY = "hot-relay"
    RESTART = "restart"


class SocketType(enum.Enum):
    """The kind of listener, named after systemd's Listen* directives."""

    STREAM = "stream"
    DATAGRAM = "datagram"
    SEQPACKET = "seqpacket"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value came from, for error messages: file and 1-based line."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True, slots=True)
class Dependency:
    """One edge of the dependency graph.

    ``require``: the dependent fails when this unit fails to start.
    ``order``: the dependent starts after this unit is up, and stops first.
    """

    name: str
    require: bool = True
    order: bool = True
    source: Source = field(default=Source("<builtin>"), compare=False)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Geometric growth of the restart delay: delay * factor**n, capped."""

    factor: float = 1.0
    max_delay: float = 0.0  # 0 = no cap beyond restart_sec growth


@dataclass(frozen=True, slots=True)
class StartLimit:
    """At most ``burst`` starts within ``interval`` seconds (0 = unlimited)."""

    burst: int = 5
    interval: float = 10.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    start: float = 90.0
    stop: float = 90.0


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One listening socket of a unit, bound by the manager for its life."""

    address: str
    type: SocketType = SocketType.STREAM
    name: str = ""
    backlog: int = 4096
    reuse_port: bool = False
    ipv6_only: bool | None = None
    nodelay: bool = False
    keepalive: bool = False
    receive_buffer: int = 0
    send_buffer: int = 0
    mode: int = 0o666
    user: str = ""
    group: str = ""
    remove_on_stop: bool = False
    source: Source = field(default=Source("<builtin>"), compare=False)


class DirectoryKind(enum.Enum):
    """systemd.exec(5)'s RuntimeDirectory= family: where each kind lives (as root)."""

    RUNTIME = "runtime"  # /run
    STATE = "state"  # /var/lib
    CACHE = "cache"  # /var/cache
    LOGS = "logs"  # /var/log
    CONFIGURATION = "configuration"  # /etc


@dataclass(frozen=True, slots=True)
class Directories:
    """One kind of the RuntimeDirectory= family: relative paths, their mode."""

    kind: DirectoryKind
    paths: tuple[str, ...]
    mode: int = 0o755


@dataclass(frozen=True, slots=True)
class Condition:
    """One Condition*=/Assert*= check (systemd.unit(5)).

    ``check`` is the directive without its prefix (``PathExists``), ``value``
    its argument without the ``!`` and ``|``; a failed condition skips the
    start, a failed assertion fails it. ``trigger``: any one of the ``|``
    conditions passing is enough.
    """

    check: str
    value: str
    negate: bool = False
    trigger: bool = False
    assertion: bool = False
    source: Source = field(default=Source("<builtin>"), compare=False)


@dataclass(frozen=True, slots=True)
class Service:
    """How to run the unit's main process."""

    name: str
    command: tuple[str, ...]
    type: ServiceType = ServiceType.SIMPLE
    env: tuple[tuple[str, str], ...] = ()
    env_files: tuple[tuple[str, bool], ...] = ()  # (path, optional)
    working_directory: str = ""
    user: str = ""
    group: str = ""
    restart: RestartPolicy = RestartPolicy.NO
    restart_sec: float = 0.1
    backoff: Backoff = Backoff()
    start_limit: StartLimit = StartLimit()
    timeouts: Timeouts = Timeouts()
    stop_signal: signal.Signals = signal.SIGTERM
    kill_mode: KillMode = KillMode.CONTROL_GROUP
    depends_on: tuple[Dependency, ...] = ()
    notify_access: NotifyAccess | None = None  # None = systemd's default rules
    watchdog_sec: float = 0.0
    watchdog_signal: signal.Signals = signal.SIGABRT
    reload_signal: signal.Signals = signal.SIGHUP
    fd_store_max: int = 0
    # LimitNOFILE=: the processes' soft fd limit (0: the soft limit the manager was
    # started with, which it raised for itself).
    limit_nofile: int = 0
    stdin: StandardInput = StandardInput.NULL  # StandardInput= / YAML stdin
    success_exit_status: tuple[int, ...] = ()
    success_exit_signals: tuple[int, ...] = ()
    restart_prevent: tuple[int | str, ...] = ()  # exit codes, or signal names "SIGHUP"
    restart_force: tuple[int | str, ...] = ()
    # Limit*=: (resource number, soft, hard); -1 is infinity. Applied in the child.
    limits: tuple[tuple[int, int, int], ...] = ()
    umask: int | None = None
    nice: int | None = None
    oom_score_adjust: int | None = None
    supplementary_groups: tuple[str, ...] = ()
    directories: tuple[Directories, ...] = ()
    runtime_directory_preserve: str = "no"  # no, yes, restart
    conditions: tuple[Condition, ...] = ()
    pid_file: str = ""  # Type=forking: where the daemon writes its main pid
    guess_main_pid: bool = True
    remain_after_exit: bool = False
    runtime_max_sec: float = math.inf
    exec_condition: tuple[tuple[str, ...], ...] = ()
    exec_stop_post: tuple[tuple[str, ...], ...] = ()
    privileged: bool = False  # ExecStart's "+" or "!": not run as User=/Group=
    aliases: tuple[str, ...] = ()  # other names of the unit (Alias=, alias symlinks)
    exec_start_pre: tuple[tuple[str, ...], ...] = ()
    exec_start_post: tuple[tuple[str, ...], ...] = ()
    exec_reload: tuple[tuple[str, ...], ...] = ()
    exec_stop: tuple[tuple[str, ...], ...] = ()
    ignore_failure: bool = False  # ExecStart's "-" prefix
    argv0: str = ""  # ExecStart's "@" prefix
    expand_env: bool = False  # systemd units: $VAR/${VAR} in commands expand at exec time
    sockets: tuple[ListenSpec, ...] = ()
    # Not started at boot: the first connection or datagram on its sockets starts it
    # (systemd's socket units without an enabled service).
    on_demand: bool = False
    # Started at boot (systemctl's "enabled"); a disabled unit waits for a start, or,
    # with sockets, for its first connection.
    enabled: bool = True

    def effective_notify_access(self) -> NotifyAccess:
        """systemd's default: none, forced to main by notify types, a
        watchdog or an fd store."""
        if self.notify_access is not None:
            return self.notify_access
        if (
            self.type in (ServiceType.NOTIFY, ServiceType.NOTIFY_RELOAD)
            or self.watchdog_sec > 0
            or self.fd_store_max > 0
        ):
            return NotifyAccess.MAIN
        return NotifyAccess.NONE


class ProbeKind(enum.Enum):
    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"


@dataclass(frozen=True, slots=True)
class Probe:
    """A health check run against the canary during the soak."""

    kind: ProbeKind
    target: str = ""  # URL for http, host:port for tcp
    command: tuple[str, ...] = ()  # for exec
    expect_status: int = 200
    interval: float = 1.0
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class Hook:
    """A command run around a relay (pre-flight check or post-process)."""

    command: tuple[str, ...]
    name: str = ""
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Canary:
    enabled: bool = False
    soak_time: float = 0.0
    probes: tuple[Probe, ...] = ()
    max_rss: int = 0  # bytes over the canary's process tree; 0 = no limit
    max_cpu_percent: float = 0.0  # 0 = no limit


@dataclass(frozen=True, slots=True)
class Drain:
    timeout: float = 30.0
    signal: signal.Signals = signal.SIGTERM


@dataclass(frozen=True, slots=True)
class StateHandoff:
    enabled: bool = False
    socket_path: str = ""
    timeout: float = 30.0
    required: bool = False
    max_size: int = 1 << 30  # 1 GiB; 0 = no limit
    persist_dir: str = ""


@dataclass(frozen=True, slots=True)
class Orchestration:
    strategy: Strategy = Strategy.RESTART
    # Given in the unit: a reload without ExecReload= restarts only when
    # ``strategy: restart`` was asked for (else it is "not applicable").
    strategy_given: bool = False
    canary: Canary = Canary()
    state_handoff: StateHandoff = StateHandoff()
    pre_flight: tuple[Hook, ...] = ()
    startup_timeout: float = 0.0  # 0 = the service's start timeout
    drain: Drain = Drain()
    max_draining: int = 1
    on_success: tuple[tuple[str, ...], ...] = ()
    on_failure: tuple[tuple[str, ...], ...] = ()
    # Absolute paths whose change relays the unit (reloads, when unit files changed),
    # once the changes have been quiet for watch_debounce seconds.
    watch: tuple[str, ...] = ()
    watch_debounce: float = 1.0


@dataclass(frozen=True, slots=True)
class Observability:
    """Where the manager serves metrics, and how much it logs about this unit."""

    metrics_port: str = ""  # a listen address (see sockets.parse_metrics_address); "" = none
    log_level: str = ""  # "" = the manager's own --log-level


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """A service, its sockets and its orchestration settings."""

    service: Service
    orchestration: Orchestration = Orchestration()
    observability: Observability = Observability()
    source: Source = field(default=Source("<builtin>"), compare=False)
    description: str = ""

    @property
    def name(self) -> str:
        return self.service.name


INFINITY = math.inf
