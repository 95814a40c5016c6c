"""systemd .service/.socket loading: syntax, drop-ins, templates, semantics, errors."""

from __future__ import annotations

import math
import os
import signal
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from aeterna.loader.errors import UnitError, UnitErrors
from aeterna.loader.ini import SpecifierContext, UnitName, expand_specifiers, parse_ini
from aeterna.loader.systemd_units import load_systemd_dir, load_systemd_file
from aeterna.loader.systemd_words import ExecCommand, expand_exec_env, parse_exec
from aeterna.model import (
    Dependency,
    KillMode,
    RestartPolicy,
    ServiceType,
    SocketType,
    Strategy,
    UnitSpec,
)

DATA = ROOT / "tests" / "data" / "systemd"
CTX = SpecifierContext(runtime_dir="/run/user/1000", user="alice", uid=1000,
                       home="/home/alice", hostname="box")


def load_dir(path: Path) -> tuple[dict[str, UnitSpec], list[str]]:
    units, warnings = load_systemd_dir(path, specifiers=CTX)
    return {u.name: u for u in units}, [str(w) for w in warnings]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def relative(message: str, root: Path) -> str:
    return message.replace(f"{root}/", "")


# ------------------------------------------------------------------ the gunicorn pair


class TestGunicornPair:
    def test_socket_becomes_the_services_listener(self) -> None:
        units, _ = load_dir(DATA / "gunicorn")
        assert list(units) == ["web"]
        svc = units["web"].service
        assert svc.type is ServiceType.NOTIFY
        assert svc.command == ("/srv/app/venv/bin/gunicorn", "--bind", "fd://3",
                               "app.wsgi:application")
        (sock,) = svc.sockets
        assert (sock.address, sock.type, sock.name) == ("127.0.0.1:8000", SocketType.STREAM,
                                                        "http")
        assert (sock.backlog, sock.nodelay, sock.user) == (2048, True, "www-data")
        assert sock.source.line == 7 and sock.source.file.endswith("web.socket")

    def test_service_settings(self) -> None:
        units, _ = load_dir(DATA / "gunicorn")
        svc = units["web"].service
        assert svc.env == (("PYTHONUNBUFFERED", "1"),
                           ("GUNICORN_CMD_ARGS", "--workers=4 --timeout 30"))
        assert (svc.user, svc.group, svc.working_directory) == ("www-data", "www-data",
                                                                "/srv/app")
        assert svc.exec_reload == (("/bin/kill", "-s", "HUP", "$MAINPID"),)
        assert svc.kill_mode is KillMode.MIXED
        assert svc.restart is RestartPolicy.ON_FAILURE
        assert svc.restart_sec == pytest.approx(120.2)  # "2min 200ms"
        assert (svc.timeouts.start, svc.timeouts.stop) == (90.0, 5.0)
        assert svc.depends_on == ()  # web.socket: bound first anyway; network.target: warned
        assert units["web"].description == "gunicorn daemon"

    def test_x_aeterna_section(self) -> None:
        units, _ = load_dir(DATA / "gunicorn")
        orch = units["web"].orchestration
        assert orch.strategy is Strategy.HOT_RELAY
        assert (orch.canary.enabled, orch.canary.soak_time) == (True, 30.0)
        assert not orch.state_handoff.enabled

    def test_warnings_name_file_line_and_directive(self) -> None:
        _, warnings = load_dir(DATA / "gunicorn")
        svc = DATA / "gunicorn" / "web.service"
        assert warnings == [
            f"{svc}:4: Unit.After: dependencies on .target units are not implemented; "
            "network.target ignored",
            f"{svc}:20: Service.PrivateTmp: not implemented by Aeterna; ignored (under "
            "systemd it would have given the unit private /tmp, devices, network, users or "
            "IPC)",
        ]

    def test_loading_either_file_gives_the_same_unit(self) -> None:
        units, _ = load_dir(DATA / "gunicorn")
        for name in ("web.service", "web.socket"):
            loaded, _ = load_systemd_file(DATA / "gunicorn" / name, specifiers=CTX)
            assert loaded == [units["web"]]

    def test_package_loader_reads_the_directory(self) -> None:
        from aeterna.loader import load_paths

        result = load_paths([str(DATA / "gunicorn")])
        assert [u.name for u in result.units] == ["web"]


# ------------------------------------------------------------------ drop-ins and templates


def test_dropins_override_and_reset_lists() -> None:
    units, warnings = load_dir(DATA / "dropins")
    app = units["app"].service
    assert app.command == ("/usr/bin/app", "--new")  # ExecStart= reset, then replaced
    assert app.env == (("C", "3"),)  # Environment= reset drops A, B and KEEP
    assert app.success_exit_status == (3, 4)  # a list key accumulates across files
    assert units["my-app"].service.env == (("COMMON", "1"),)  # my-.service.d/
    assert warnings == []


def test_template_instances_from_dependencies() -> None:
    units, _ = load_dir(DATA / "template")
    assert sorted(units) == ["consumer", "foo@bar", "foo@srv-www"]
    bar = units["foo@bar"]
    assert bar.service.command == ("/usr/bin/worker", "--queue", "bar", "--unit",
                                   "foo@bar.service", "--prefix", "foo")
    assert bar.service.env == (("QUEUE", "bar"), ("ALL", "1"), ("ONLY_BAR", "1"))
    assert bar.description == "Worker for bar"
    www = units["foo@srv-www"]
    assert www.description == "Worker for srv/www"  # %I unescapes '-' to '/'
    assert www.service.working_directory == "/srv/srv/www"
    assert dict(www.service.env) == {"QUEUE": "srv-www", "ALL": "1"}
    assert units["consumer"].service.depends_on == (
        Dependency("foo@bar", require=False, order=True),
        Dependency("foo@srv-www", require=False, order=False),
    )


def test_instance_file_without_its_own_file() -> None:
    loaded, _ = load_systemd_file(DATA / "template" / "foo@q1.service", specifiers=CTX)
    assert [u.name for u in loaded] == ["foo@q1"]
    assert loaded[0].service.env == (("QUEUE", "q1"), ("ALL", "1"))
    assert loaded[0].source.file.endswith("foo@.service")


def test_template_itself_is_not_a_unit(tmp_path: Path) -> None:
    write(tmp_path, {"t@.service": "[Service]\nExecStart=/bin/t %i\n"})
    assert load_systemd_dir(tmp_path, specifiers=CTX) == ([], [])
    with pytest.raises(UnitError, match="is a template; name an instance"):
        load_systemd_file(tmp_path / "t@.service", specifiers=CTX)


def test_masked_unit_is_skipped_with_a_warning(tmp_path: Path) -> None:
    write(tmp_path, {"a.service": "[Service]\nExecStart=/bin/a\n"})
    os.symlink(os.devnull, tmp_path / "b.service")
    units, warnings = load_dir(tmp_path)
    assert list(units) == ["a"]
    assert warnings == [f"{tmp_path}/b.service: masked (empty or a link to /dev/null); "
                        "not loaded"]


# ------------------------------------------------------------------ syntax


def test_continuations_comments_and_specifiers() -> None:
    units, warnings = load_dir(DATA / "syntax")
    svc = units["spec"].service
    assert units["spec"].description == "Specifiers of spec.service"
    assert svc.type is ServiceType.ONESHOT
    assert svc.command == ("/bin/echo", "spec.service", "spec", "spec", "", "/run/user/1000",
                           "alice", "/home/alice", "100%")
    # Further ExecStart= commands of a oneshot run before ExecStartPost=.
    assert svc.exec_start_post == (("/bin/echo", "second"), ("/bin/echo", "third", ";", "literal"),
                                   ("/bin/echo", "post"))
    assert svc.env == (("PATHLIKE", "C:\\dir\\"), ("TAB", "a\tb"),
                       ("DIR", "/run/user/1000/spec"))
    assert svc.timeouts.start == math.inf  # oneshot default
    assert warnings == []


def test_parse_ini_entries_and_lines() -> None:
    text = ("# c\n[Unit]\n Description = a b \n\n[Service]\nExecStart=/bin/x \\\n"
            "  ; comment\n  -y\nEmpty=\nTrail=a \\\\\n[Service]\nK=v\n")
    sections = parse_ini(text, "f")
    assert [(s.name, s.line) for s in sections] == [("Unit", 2), ("Service", 5), ("Service", 11)]
    assert [(e.key, e.value, e.line) for e in sections[1].entries] == [
        ("ExecStart", "/bin/x    -y", 6), ("Empty", "", 9), ("Trail", "a \\\\", 10)]
    assert parse_ini("\ufeff[A]\r\nk=v\r\n", "f")[0].entries[0].value == "v"


def test_backslash_then_blank_is_not_a_continuation() -> None:
    (section,) = parse_ini("[S]\nA=x \\ \nB=y\n", "f")
    assert [(e.key, e.value) for e in section.entries] == [("A", "x \\"), ("B", "y")]


def test_specifiers() -> None:
    name = UnitName.parse("a-b@x\\x2dy-z.service")
    assert expand_specifiers("%n|%N|%p|%P|%i|%I|%j|%f|%%", name, CTX) == (
        "a-b@x\\x2dy-z.service|a-b@x\\x2dy-z|a-b|a/b|x\\x2dy-z|x-y/z|b|/x-y/z|%")
    plain = UnitName.parse("web.service")
    assert expand_specifiers("%p %i %U %H %T", plain, CTX) == "web  1000 box /tmp"


def test_exec_prefixes() -> None:
    notes: list[str] = []
    (cmd,) = parse_exec("-@/usr/bin/python3 py -m http.server", lambda s: s, notes)
    assert cmd == ExecCommand(("/usr/bin/python3", "-m", "http.server"), True, "py")
    assert ExecCommand.decode(cmd.encode()) == cmd
    assert cmd.encode() == ("-@/usr/bin/python3", "py", "-m", "http.server")
    (literal,) = parse_exec(":/bin/echo $HOME", lambda s: s, notes)
    assert expand_exec_env(literal.argv, {"HOME": "/root"}) == ("/bin/echo", "$HOME")
    (escaped,) = parse_exec("/bin/grep '\\d+' \"a b\"\\x41", lambda s: s, notes)
    assert escaped.argv == ("/bin/grep", "\\d+", "a bA")
    assert notes == ["unknown escape sequence kept verbatim in '\\\\d+'"]


def test_exec_prefixes_in_units(tmp_path: Path) -> None:
    write(tmp_path, {"a.service": "[Service]\nExecStartPre=-/bin/mkdir -p /x\n"
                                  "ExecStart=-@/bin/app app-main --flag\nExecStop=+/bin/stop\n"})
    units, warnings = load_dir(tmp_path)
    svc = units["a"].service
    assert (svc.command, svc.ignore_failure, svc.argv0) == (("/bin/app", "--flag"), True,
                                                            "app-main")
    assert svc.exec_start_pre == (("-/bin/mkdir", "-p", "/x"),)
    assert svc.exec_stop == (("+/bin/stop",),)  # runs with the manager's user
    assert warnings == []


def test_expand_exec_env() -> None:
    env = {"OPTS": "-a  -b", "ONE": "x y", "EMPTY": ""}
    argv = ("/bin/p", "$OPTS", "${ONE}", "pre${ONE}post", "$UNSET", "$$", "${EMPTY:-dflt}",
            "${ONE:+alt}", "mid$ONE")
    assert expand_exec_env(argv, env) == ("/bin/p", "-a", "-b", "x y", "prex ypost", "$",
                                          "dflt", "alt", "mid$ONE")


# ------------------------------------------------------------------ semantics


def test_socket_options_and_order(tmp_path: Path) -> None:
    write(tmp_path, {
        "web.service": "[Service]\nExecStart=/bin/web\nSockets=admin.socket\n",
        "web.socket": "[Socket]\nListenStream=8080\nListenDatagram=[::1]:53\nBindIPv6Only=both\n"
                      "ReceiveBuffer=1M\nSocketMode=0600\nReusePort=yes\n",
        "admin.socket": "[Socket]\nListenStream=/run/web/admin.sock\nService=web.service\n"
                        "RemoveOnStop=yes\nBindIPv6Only=ipv6-only\n",
        "admin.service": "[Service]\nExecStart=/bin/admin\n",
    })
    units, _ = load_dir(tmp_path)
    socks = units["web"].service.sockets
    assert [(s.address, s.type, s.name) for s in socks] == [
        ("8080", SocketType.STREAM, "web.socket"), ("[::1]:53", SocketType.DATAGRAM, "web.socket"),
        ("/run/web/admin.sock", SocketType.STREAM, "admin.socket")]
    assert [(s.ipv6_only, s.receive_buffer, s.mode, s.reuse_port) for s in socks[:1]] == [
        (False, 1 << 20, 0o600, True)]
    assert (socks[2].ipv6_only, socks[2].remove_on_stop) == (True, True)
    assert units["admin"].service.sockets == ()
    # One file: admin.socket feeds web, so admin.service alone has no listener.
    loaded, _ = load_systemd_file(tmp_path / "admin.service", specifiers=CTX)
    assert [(u.name, u.service.sockets) for u in loaded] == [("admin", ())]
    loaded, _ = load_systemd_file(tmp_path / "admin.socket", specifiers=CTX)
    assert loaded == [units["web"]]


def test_dependencies_and_before(tmp_path: Path) -> None:
    write(tmp_path, {
        "db.service": "[Unit]\nBefore=app.service\n[Service]\nExecStart=/bin/db\n",
        "app.service": "[Unit]\nRequires=cache.service\nWants=log.service\n"
                       "After=log.service\n[Service]\nExecStart=/bin/app\n",
        "cache.service": "[Unit]\nBefore=yaml-unit.service\n[Service]\nExecStart=/bin/c\n",
    })
    units, warnings = load_dir(tmp_path)
    deps = {d.name: (d.require, d.order) for d in units["app"].service.depends_on}
    assert deps == {"cache": (True, False), "log": (False, True), "db": (False, True)}
    assert warnings == [f"{tmp_path}/cache.service:2: Unit.Before: yaml-unit.service is not a "
                        "systemd unit loaded with this one; the ordering is ignored (write "
                        "After= in that unit)"]


def test_service_values(tmp_path: Path) -> None:
    write(tmp_path, {"a.service": """[Unit]
StartLimitIntervalSec=30
StartLimitBurst=3
[Service]
Type=notify-reload
ExecStart=/bin/a
TimeoutSec=0
TimeoutStartSec=1min
KillSignal=SIGINT
ReloadSignal=USR2
WatchdogSec=20s
NotifyAccess=all
FileDescriptorStoreMax=8
LimitNOFILE=4096:524288
EnvironmentFile=-/etc/default/a
EnvironmentFile=/etc/a.env
RestartSec=1
RestartSteps=3
RestartMaxDelaySec=8
Restart=always
"""})
    svc = load_dir(tmp_path)[0]["a"].service
    assert svc.type is ServiceType.NOTIFY_RELOAD
    assert (svc.timeouts.start, svc.timeouts.stop) == (60.0, math.inf)  # 0 = no limit
    assert (svc.stop_signal, svc.reload_signal) == (signal.SIGINT, signal.SIGUSR2)
    assert (svc.watchdog_sec, svc.fd_store_max, svc.limits) == (20.0, 8, ((7, 4096, 524288),))
    assert svc.env_files == (("/etc/default/a", True), ("/etc/a.env", False))
    assert (svc.start_limit.burst, svc.start_limit.interval) == (3, 30.0)
    assert svc.backoff.factor == pytest.approx(2.0) and svc.backoff.max_delay == 8.0


def test_state_handoff_section(tmp_path: Path) -> None:
    write(tmp_path, {"a.service": "[Service]\nExecStart=/bin/a\n[X-Aeterna]\n"
                                  "StateHandoffSocket=%t/a.srp\nStateHandoffTimeoutSec=5\n"
                                  "StateHandoffMaxSize=64M\nStateHandoffRequired=yes\n"
                                  "StateHandoffPersistDir=/var/lib/a\nCanary=no\n"
                                  "CanarySoakSec=10\n"})
    orch = load_dir(tmp_path)[0]["a"].orchestration
    h = orch.state_handoff
    assert (h.enabled, h.socket_path, h.timeout, h.max_size, h.required, h.persist_dir) == (
        True, "/run/user/1000/a.srp", 5.0, 64 << 20, True, "/var/lib/a")
    assert (orch.canary.enabled, orch.canary.soak_time) == (False, 10.0)


def test_approximations_warn(tmp_path: Path) -> None:
    write(tmp_path, {
        "a.service": "[Service]\nType=idle\nExecStart=/bin/a\nWorkingDirectory=-/srv/a\n"
                     "SuccessExitStatus=2 SIGUSR1\n",
        "a.socket": "[Unit]\nBefore=a.service\nAfter=network-online.target\n"
                    "[Socket]\nListenFIFO=/run/a.fifo\nAccept=yes\n",
        "a.socket.d/no-accept.conf": "[Socket]\nAccept=no\n",  # the last value wins
    })
    units, warnings = load_dir(tmp_path)
    svc = units["a"].service
    assert (svc.type, svc.working_directory, svc.success_exit_status) == (
        ServiceType.SIMPLE, "/srv/a", (2,))
    assert svc.sockets[0].type is SocketType.FIFO
    assert [relative(w, tmp_path) for w in warnings] == [
        "a.service:2: Service.Type: Type=idle is run as Type=simple (no delay until other "
        "jobs finish)",
        "a.service:4: Service.WorkingDirectory: the - prefix (ignore a missing directory) is "
        "not implemented; the directory must exist",
        "a.socket:3: Unit.After: dependencies of socket units are not implemented (listeners "
        "are bound before any service starts); network-online.target ignored",
    ]


def test_single_socket_file_needs_its_service(tmp_path: Path) -> None:
    write(tmp_path, {"a.socket": "[Socket]\nListenStream=80\n"})
    with pytest.raises(UnitError) as info:
        load_systemd_file(tmp_path / "a.socket", specifiers=CTX)
    assert relative(str(info.value), tmp_path) == (
        f"a.socket: expected a service a.service for this socket in {tmp_path}, found none")
    with pytest.raises(UnitError, match="no such unit file, nor its template b@.service"):
        load_systemd_file(tmp_path / "b@x.service", specifiers=CTX)


def test_warnings_for_unimplemented_and_unknown() -> None:
    _, warnings = load_dir(DATA / "warnings")
    f = DATA / "warnings" / "warn.service"
    assert warnings == [
        f"{f}:8: Service.PrivateTmp: not implemented by Aeterna; ignored (under systemd it "
        "would have given the unit private /tmp, devices, network, users or IPC)",
        f"{f}:9: Service.ProtectSystem: not implemented by Aeterna; ignored (under systemd it "
        "would have made parts of the file system, kernel or clock read-only or hidden)",
        f"{f}:10: Service.ExecStrat: unknown directive; ignored",
        f"{f}:12: Service.StandardOutput: not implemented by Aeterna; ignored (under systemd "
        "it would have connected the unit's stdio elsewhere (here: the manager's output, "
        "prefixed))",
        f"{f}:16: X-Aeterna.StateHandofTimeoutSec: unknown Aeterna setting; ignored",
        f"{f}:24: [Timer]: unknown section in a .service unit; ignored",
    ]


# ------------------------------------------------------------------ errors

SVC = "[Service]\nExecStart=/bin/a\n"
ERRORS: list[tuple[str, dict[str, str], str]] = [
    ("outside a section", {"a.service": "ExecStart=/bin/a\n[Service]\n"},
     "a.service:1: ExecStart: assignment outside of any section; expected a [Section] header "
     "such as [Unit] or [Service] before it"),
    ("no equals sign", {"a.service": "[Service]\n# fine\nExecStart /bin/a\n"},
     "a.service:3: expected Key=Value, a [Section] header or a comment, found "
     "'ExecStart /bin/a'"),
    ("broken header", {"a.service": "[Unit]\nDescription=x\n[Service\n"},
     "a.service:3: expected a section header like [Service], found '[Service'"),
    ("bad enum", {"a.service": SVC + "Restart=sometimes\n"},
     "a.service:3: Service.Restart: expected one of no, on-success, on-failure, on-abnormal, "
     "on-watchdog, on-abort, always, found 'sometimes'"),
    ("bad time span", {"a.service": SVC + "RestartSec=5 parsecs\n"},
     "a.service:3: Service.RestartSec: expected a time span like 90s, 2min 200ms or infinity, "
     "found '5 parsecs'"),
    ("dbus", {"a.service": "[Service]\nType=dbus\nExecStart=/usr/sbin/nginx\n"},
     "a.service:2: Service.Type: Type=dbus is not supported: Aeterna has no D-Bus; use "
     "Type=notify"),
    ("forking relayed", {"a.service": "[Service]\nType=forking\nExecStart=/usr/sbin/nginx\n"
                                      "[X-Aeterna]\nStrategy=hot-relay\n"},
     "a.service:5: X-Aeterna.Strategy: expected restart for Type=forking, found 'hot-relay': "
     "the daemon binds and forks on its own, so N+1 cannot share N's accept queue in a "
     "controlled way"),
    ("dynamic user", {"a.service": SVC + "DynamicUser=yes\n"},
     "a.service:3: Service.DynamicUser: DynamicUser=yes is not supported: Aeterna allocates "
     "no transient users (systemd's nss-systemd module is not there to resolve them); create "
     "a system user (adduser --system NAME) and set User=NAME in a drop-in, with "
     "DynamicUser=no"),
    ("exit status name", {"a.service": SVC + "SuccessExitStatus=DATAERR NOPE\n"},
     "a.service:3: Service.SuccessExitStatus: expected exit codes from 0 to 255, exit-status "
     "names like DATAERR or signal names (SuccessExitStatus), found 'NOPE'"),
    ("limit order", {"a.service": SVC + "LimitNOFILE=9000:100\n"},
     "a.service:3: Service.LimitNOFILE: expected a soft limit no higher than the hard one, "
     "found '9000:100'"),
    ("runtime dir", {"a.service": SVC + "RuntimeDirectory=../etc\n"},
     "a.service:3: Service.RuntimeDirectory: expected relative paths like nginx or app/cache, "
     "without . or .., found '../etc'"),
    ("condition path", {"a.service": "[Unit]\nConditionPathExists=relative\n" + SVC},
     "a.service:2: Unit.ConditionPathExists: expected an absolute path (maybe after | and !), "
     "found 'relative'"),
    ("accept", {"a.service": SVC, "a.socket": "[Socket]\nListenStream=80\nAccept=yes\n"},
     "a.socket:3: Socket.Accept: Accept=yes is not supported (per-connection service instances "
     "are not implemented); use Accept=no and accept() in the service"),
    ("socket without service", {"a.service": SVC, "b.socket": "[Socket]\nListenStream=80\n"},
     "b.socket: expected a service b.service for this socket in DIR, found none"),
    ("Service= naming nothing", {"a.socket": "[Socket]\nListenStream=80\nService=z.service\n"},
     "a.socket:3: Socket.Service: expected a service z.service for this socket in DIR, "
     "found none"),
    ("no ExecStart", {"a.service": "[Service]\nType=notify\n"},
     "a.service:2: Service.ExecStart: missing, expected a command for Type=notify"),
    ("unknown specifier", {"a.service": "[Service]\nExecStart=/bin/a %z\n"},
     "a.service:2: Service.ExecStart: unknown specifier %z (write %% for a literal percent "
     "sign)"),
    ("unbalanced quotes", {"a.service": "[Service]\nExecStart=/bin/a 'b\n"},
     "a.service:2: Service.ExecStart: expected balanced quotes, found \"/bin/a 'b\""),
    ("relative program", {"a.service": "[Service]\nExecStart=bin/a\n"},
     "a.service:2: Service.ExecStart: expected an absolute path or a plain program name, "
     "found 'bin/a'"),
    ("two ExecStart", {"a.service": SVC + "ExecStart=/bin/b\n"},
     "a.service:3: Service.ExecStart: expected one command for Type=simple, found 2; only "
     "Type=oneshot runs several"),
    ("bad assignment", {"a.service": SVC + "Environment=A=1 B\n"},
     "a.service:3: Service.Environment: expected NAME=VALUE assignments, found 'B'"),
    ("bad signal", {"a.service": SVC + "KillSignal=SIGFOO\n"},
     "a.service:3: Service.KillSignal: expected a signal name like SIGTERM, found 'SIGFOO'"),
    ("bad boolean", {"a.service": SVC, "a.socket": "[Socket]\nListenStream=80\nNoDelay=maybe\n"},
     "a.socket:3: Socket.NoDelay: expected a boolean (yes or no), found 'maybe'"),
    ("oneshot always", {"a.service": SVC + "Type=oneshot\nRestart=always\n"},
     "a.service:4: Service.Restart: expected no, on-failure, on-abnormal, on-watchdog or "
     "on-abort for Type=oneshot, found 'always'"),
    ("bad mode", {"a.service": SVC, "a.socket": "[Socket]\nListenStream=80\nSocketMode=999\n"},
     "a.socket:3: Socket.SocketMode: expected an octal file mode like 0660, found '999'"),
    ("ListenSpecial", {"a.service": SVC, "a.socket": "[Socket]\nListenSpecial=/dev/log\n"},
     "a.socket:2: Socket.ListenSpecial: ListenSpecial= is not supported; only ListenStream, "
     "ListenDatagram, ListenSequentialPacket and ListenFIFO are (an ignored listener would "
     "shift every fd after it)"),
    ("no listener", {"a.service": SVC, "a.socket": "[Socket]\nBacklog=5\n"},
     "a.socket: Socket.ListenStream: missing, expected at least one Listen*= address"),
    ("missing Sockets=", {"a.service": SVC + "Sockets=b.socket\n"},
     "a.service:3: Service.Sockets: expected a socket unit in DIR, found no b.socket"),
    ("shared socket", {"a.service": SVC, "b.service": SVC + "Sockets=a.socket\n",
                       "a.socket": "[Socket]\nListenStream=80\n"},
     "b.service:3: Service.Sockets: a.socket already feeds a.service; a socket unit can feed "
     "only one service in Aeterna"),
    ("relative env file", {"a.service": SVC + "EnvironmentFile=-env\n"},
     "a.service:3: Service.EnvironmentFile: expected an absolute path, found 'env'"),
    ("fd name", {"a.service": SVC, "a.socket": "[Socket]\nListenStream=80\n"
                 "FileDescriptorName=a:b\n"},
     "a.socket:3: Socket.FileDescriptorName: expected a name of at most 255 printable ASCII "
     "characters without ':', found 'a:b'"),
    ("dependency without suffix", {"a.service": "[Unit]\nRequires=db\n" + SVC},
     "a.service:2: Unit.Requires: expected a unit name like web.service, found 'db' (a unit "
     "name needs its suffix)"),
    ("exit status", {"a.service": SVC + "SuccessExitStatus=1 300\n"},
     "a.service:3: Service.SuccessExitStatus: expected exit codes from 0 to 255, exit-status "
     "names like DATAERR or signal names (SuccessExitStatus), found '300'"),
    ("fd limit", {"a.service": SVC + "LimitNOFILE=lots\n"},
     "a.service:3: Service.LimitNOFILE: expected a whole number, SOFT:HARD or infinity, "
     "found 'lots'"),
    ("lone percent", {"a.service": "[Unit]\nDescription=100%\n" + SVC},
     "a.service:2: Unit.Description: expected a specifier after '%' (write %% for a literal "
     "percent sign), found '100%'"),
]


@pytest.mark.parametrize("files,expected", [(f, e) for _, f, e in ERRORS],
                         ids=[name for name, _, _ in ERRORS])
def test_errors(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    write(tmp_path, files)
    with pytest.raises(UnitError) as info:
        load_systemd_dir(tmp_path, specifiers=CTX)
    assert relative(str(info.value), tmp_path).replace(str(tmp_path), "DIR") == expected


def test_bad_address_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, {"a.service": SVC, "a.socket": "[Socket]\nListenStream=localhost:80\n"})
    with pytest.raises(UnitError) as info:
        load_systemd_dir(tmp_path, specifiers=CTX)
    assert (info.value.line, info.value.key) == (2, "Socket.ListenStream")
    assert "localhost:80" in info.value.message


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, {"a.service": SVC + "Restart=sometimes\nKillMode=all\n",
                     "b.service": "[Service\n"})
    with pytest.raises(UnitErrors) as info:
        load_systemd_dir(tmp_path, specifiers=CTX)
    assert [(relative(e.file, tmp_path), e.line, e.key) for e in info.value.errors] == [
        ("a.service", 3, "Service.Restart"), ("a.service", 4, "Service.KillMode"),
        ("b.service", 1, "")]


def test_error_in_a_dropin_names_the_dropin(tmp_path: Path) -> None:
    write(tmp_path, {"a.service": SVC, "a.service.d/x.conf": "[Service]\n\nWatchdogSec=soon\n"})
    with pytest.raises(UnitError) as info:
        load_systemd_dir(tmp_path, specifiers=CTX)
    assert relative(str(info.value), tmp_path) == (
        "a.service.d/x.conf:3: Service.WatchdogSec: expected a time span like 90s, 2min 200ms "
        "or infinity, found 'soon'")


# ------------------------------------------------------------------ fuzzing

_LINES = st.sampled_from([
    "[Unit]", "[Service]", "[Socket]", "[X-Aeterna]", "[Install]", "[", "]", "=", "# c", "; c",
    "\\", "ExecStart=/bin/a $X '%n' \\", "ExecStart=", "Type=oneshot", "Type=notify",
    "Environment=A=1 \"B=2 3\"", "Environment=", "ListenStream=80", "Accept=yes",
    "Sockets=a.socket", "Requires=a.service", "Before=a.service", "Restart=always",
    "TimeoutSec=0", "X-Foo=1", "Strategy=hot-relay", "Description=%i%%", "ExecStart=-@",
])


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_fuzz_parse_ini_raises_only_unit_error(text: str) -> None:
    try:
        parse_ini(text, "fuzz.service")
    except UnitError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_LINES, st.text(max_size=30)), max_size=20),
       st.lists(st.one_of(_LINES, st.text(max_size=30)), max_size=8))
def test_fuzz_whole_loader_raises_only_unit_errors(service: list[str], socket: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp), {"a.service": "\n".join(service), "a.socket": "\n".join(socket)})
        try:
            load_systemd_dir(tmp, specifiers=CTX)
        except (UnitError, UnitErrors):
            pass


def test_x_aeterna_hot_relay_settings(tmp_path: Path) -> None:
    (tmp_path / "web.service").write_text(
        "[Service]\nType=notify\nExecStart=/usr/bin/true\n"
        "[X-Aeterna]\nStrategy=hot-relay\nPreFlight=/bin/true --check\n"
        "PreFlightTimeoutSec=10s\nStartupTimeoutSec=1min\nCanarySoakSec=30s\n"
        "CanaryProbeHTTP=http://127.0.0.1:8080/healthz\nCanaryProbeTCP=127.0.0.1:8080\n"
        "CanaryProbeExec=/usr/bin/myapp --ping\nCanaryMaxRSS=512M\nCanaryMaxCPUPercent=90\n"
        "DrainTimeoutSec=30s\nDrainSignal=SIGQUIT\nMaxDraining=2\n"
        "OnSuccess=/bin/echo ok\nOnFailure=/bin/echo rollback\n")
    (unit,), _warnings = load_systemd_dir(tmp_path)
    o = unit.orchestration
    assert o.strategy.value == "hot-relay"
    assert [(h.command, h.timeout) for h in o.pre_flight] == [(("/bin/true", "--check"), 10.0)]
    assert o.startup_timeout == 60.0
    assert o.canary.enabled and o.canary.soak_time == 30.0
    assert [(p.kind.value, p.target or p.command) for p in o.canary.probes] == [
        ("http", "http://127.0.0.1:8080/healthz"), ("tcp", "127.0.0.1:8080"),
        ("exec", ("/usr/bin/myapp", "--ping"))]
    assert o.canary.max_rss == 512 * 1024**2 and o.canary.max_cpu_percent == 90
    assert (o.drain.timeout, o.drain.signal.name, o.max_draining) == (30.0, "SIGQUIT", 2)
    assert o.on_success == (("/bin/echo", "ok"),) and o.on_failure == (("/bin/echo", "rollback"),)
