"""Issue 13: what a distribution's unit files need to run unchanged (pure parts).

Expansion and word splitting against systemd.service(5)'s own examples, the
directives Debian's units use, partial loads, aliases, and names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeHost, spec
from hypothesis import given, settings
from hypothesis import strategies as st

from aeterna.api.systemd_verbs import resolve_name
from aeterna.loader import load_paths
from aeterna.loader.errors import UnitError, UnitErrors
from aeterna.loader.ini import SpecifierContext
from aeterna.loader.systemd_exec import parse_limit
from aeterna.loader.systemd_units import load_systemd_dir
from aeterna.loader.systemd_words import expand_exec_env, parse_exec
from aeterna.model import DirectoryKind, RestartPolicy, ServiceType
from aeterna.results import ExitInfo, Result
from aeterna.unit.policy import classify_exit, exit_matches
from aeterna.unit.runtime import UnitRuntime
from aeterna.unit.states import Event, State

CTX = SpecifierContext(runtime_dir="/run", user="root", uid=0, home="/root", hostname="box")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def argv(line: str, env: dict[str, str]) -> tuple[str, ...]:
    (cmd,) = parse_exec(line, lambda w: w, [])
    return expand_exec_env(cmd.argv, env)


# ------------------------------------------------------------------ systemd.service(5)


def test_man_page_example_one() -> None:
    """Environment="ONE=one" 'TWO=two two' / ExecStart=echo $ONE $TWO ${TWO}."""
    env = {"ONE": "one", "TWO": "two two"}
    assert argv("echo $ONE $TWO ${TWO}", env) == ("echo", "one", "two", "two", "two two")


def test_man_page_example_two() -> None:
    """ONE='one', TWO="'two two' too", THREE= : ${...} keeps each value as one word,
    $... splits it, quotes grouping and removed, and an empty one gives no word."""
    env = {"ONE": "'one'", "TWO": "'two two' too", "THREE": ""}
    assert argv("/bin/echo ${ONE} ${TWO} ${THREE}", env) == (
        "/bin/echo", "'one'", "'two two' too", "")
    assert argv("/bin/echo $ONE $TWO $THREE", env) == ("/bin/echo", "one", "two two", "too")


def test_man_page_semicolon_and_escapes() -> None:
    (one, two) = parse_exec('echo one ; echo "two two"', lambda w: w, [])
    assert (one.argv, two.argv) == (("echo", "one"), ("echo", "two two"))
    (cmd,) = parse_exec("echo / >/dev/null & \\; ls", lambda w: w, [])
    assert cmd.argv == ("echo", "/", ">/dev/null", "&", ";", "ls")


def test_mainpid_and_unset_and_literal() -> None:
    env = {"MAINPID": "4242"}
    assert argv("/bin/kill -USR2 $MAINPID", env) == ("/bin/kill", "-USR2", "4242")
    assert argv("/bin/kill -HUP $MAINPID", {}) == ("/bin/kill", "-HUP")  # no main pid
    # $VAR inside a longer word is not a reference for systemd; $$ is a dollar.
    assert argv("/bin/x --pid=$MAINPID cost=$$5 ${MAINPID}x", env) == (
        "/bin/x", "--pid=$MAINPID", "cost=$5", "4242x")


@given(st.text(alphabet="ab \t", max_size=20))
def test_split_without_quotes_is_whitespace_split(value: str) -> None:
    assert expand_exec_env(("$V",), {"V": value}) == tuple(value.split())
    assert expand_exec_env(("${V}",), {"V": value}) == (value,)



# ------------------------------------------------------------------ directives


def test_debian_style_service(tmp_path: Path) -> None:
    write(tmp_path, {"web.service": """[Unit]
ConditionPathExists=/etc/web.conf
AssertPathIsDirectory=!/nonexistent
[Service]
Type=forking
PIDFile=web.pid
ExecStartPre=/usr/sbin/web -t -q
ExecStart=/usr/sbin/web $OPTS
ExecReload=/bin/kill -HUP $MAINPID
ExecStopPost=+/bin/rm -f /run/web.lock
LimitNOFILE=65536
LimitCORE=infinity
LimitNICE=-5
UMask=0027
Nice=5
OOMScoreAdjust=-500
RuntimeDirectory=web web/sub
RuntimeDirectoryMode=0750
StateDirectory=web
SuccessExitStatus=DATAERR SIGUSR2
RestartPreventExitStatus=CONFIG
RestartForceExitStatus=SIGPIPE
RuntimeMaxSec=1h
RemainAfterExit=no
[Install]
Alias=www.service
"""})
    (unit,), warnings = load_systemd_dir(tmp_path, specifiers=CTX)
    svc = unit.service
    assert svc.type is ServiceType.FORKING and svc.pid_file == "/run/web.pid"
    assert svc.limits == ((4, -1, -1), (7, 65536, 65536), (13, 25, 25))
    assert (svc.umask, svc.nice, svc.oom_score_adjust) == (0o027, 5, -500)
    runtime, state = svc.directories
    assert (runtime.kind, runtime.paths, runtime.mode) == (
        DirectoryKind.RUNTIME, ("/run/web", "/run/web/sub"), 0o750)
    assert (state.kind, state.paths, state.mode) == (DirectoryKind.STATE, ("/var/lib/web",),
                                                     0o755)
    assert svc.success_exit_status == (65,) and svc.success_exit_signals == (12,)
    assert svc.restart_prevent == (78,) and svc.restart_force == ("SIGPIPE",)
    assert svc.runtime_max_sec == 3600.0
    assert svc.exec_stop_post == (("+/bin/rm", "-f", "/run/web.lock"),)
    assert svc.aliases == ("www",)
    assert [(c.check, c.negate, c.assertion) for c in svc.conditions] == [
        ("PathExists", False, False), ("PathIsDirectory", True, True)]
    assert warnings == []


def test_limit_values() -> None:
    assert parse_limit("LimitNOFILE", "1024:4096") == (7, 1024, 4096)
    assert parse_limit("LimitNOFILE", "infinity") == (7, -1, -1)
    assert parse_limit("LimitAS", "1G") == (9, 1024**3, 1024**3)
    assert parse_limit("LimitCPU", "2min") == (0, 120, 120)
    assert parse_limit("LimitRTTIME", "500ms") == (15, 500000, 500000)
    with pytest.raises(ValueError, match="expected"):
        parse_limit("LimitNOFILE", "infinity:10")


def test_exit_status_policy() -> None:
    assert classify_exit(ExitInfo(signal=12), ServiceType.SIMPLE, (), (12,)) is Result.SUCCESS
    assert exit_matches(ExitInfo(code=78), (78,))
    assert exit_matches(ExitInfo(signal=13), ("SIGPIPE",))
    assert not exit_matches(ExitInfo(code=1), ("SIGPIPE", 78))


def test_a_drop_in_type_overrides_a_refused_one(tmp_path: Path) -> None:
    """The Type= check waits for the drop-ins: Type=exec there wins over Type=dbus."""
    write(tmp_path, {"a.service": "[Service]\nType=dbus\nBusName=a.b\nExecStart=/bin/a\n",
                     "a.service.d/exec.conf": "[Service]\nType=exec\n"})
    (unit,), _ = load_systemd_dir(tmp_path, specifiers=CTX)
    assert unit.service.type is ServiceType.EXEC


# ------------------------------------------------------------------ loads as a whole


def test_a_broken_unit_is_left_out_and_the_others_load(tmp_path: Path) -> None:
    write(tmp_path, {"good.service": "[Service]\nExecStart=/bin/good\n",
                     "bad.service": "[Service]\nType=dbus\nExecStart=/bin/bad\n",
                     "needs-bad.service": "[Unit]\nRequires=bad.service\n"
                                          "[Service]\nExecStart=/bin/x\n",
                     "bad-sock.socket": "[Socket]\nListenStream=nope:nope\n",
                     "bad-sock.service": "[Service]\nExecStart=/bin/y\n"})
    with pytest.raises(UnitErrors):
        load_paths([str(tmp_path)])
    result = load_paths([str(tmp_path)], partial=True)
    assert [u.name for u in result.units] == ["good"]
    text = "\n".join(str(e) for e in result.errors)
    assert "bad.service:2: Service.Type: Type=dbus is not supported" in text
    assert "bad-sock.socket:2: Socket.ListenStream" in text
    assert "needs-bad.service:2: service.depends_on: expected the name of a loaded unit, " \
           "found 'bad'" in text


def test_alias_symlinks_are_names_not_units(tmp_path: Path) -> None:
    write(tmp_path, {"rsyslog.service": "[Service]\nExecStart=/usr/sbin/rsyslogd -n\n"
                                        "[Install]\nAlias=syslog.service\n"})
    os.symlink("rsyslog.service", tmp_path / "syslog.service")
    os.symlink(str(tmp_path / "rsyslog.service"), tmp_path / "logger.service")
    units, _ = load_systemd_dir(tmp_path, specifiers=CTX)
    assert [u.name for u in units] == ["rsyslog"]
    assert units[0].service.aliases == ("syslog", "logger")


def test_the_same_file_twice_is_one_unit(tmp_path: Path) -> None:
    write(tmp_path, {"ssh.service": "[Service]\nExecStart=/usr/sbin/sshd -D\n",
                     "ssh.socket": "[Socket]\nListenStream=127.0.0.1:2222\n"})
    result = load_paths([str(tmp_path / "ssh.service"), str(tmp_path / "ssh.socket")])
    assert [u.name for u in result.units] == ["ssh"]


def test_names_with_suffix_and_aliases() -> None:
    class U:
        def __init__(self, aliases: tuple[str, ...]) -> None:
            self.spec = type("S", (), {"service": type("V", (), {"aliases": aliases})()})()

    units = {"memcached": U(()), "rsyslog": U(("syslog",))}
    assert resolve_name(units, "memcached.service") == "memcached"  # type: ignore[arg-type]
    assert resolve_name(units, "syslog.service") == "rsyslog"  # type: ignore[arg-type]
    assert resolve_name(units, "syslog") == "rsyslog"  # type: ignore[arg-type]
    assert resolve_name(units, "nope.service") == "nope.service"  # type: ignore[arg-type]


# ------------------------------------------------------------------ the unit, with a fake host


def fake_unit(h: FakeHost, **service: Any) -> UnitRuntime:
    return UnitRuntime(spec(**service), h)


def test_forking_waits_for_the_pid_file_then_supervises_the_daemon() -> None:
    h = FakeHost()
    u = fake_unit(h, type=ServiceType.FORKING, pid_file="/run/d.pid")
    u.dispatch(Event.START)
    parent = u.main_pid
    assert u.state is State.STARTING and parent is not None
    h.forked_pid = -1  # the PID file is not there yet when the parent exits
    h.exit(u, parent, ExitInfo(code=0))
    assert u.state is State.STARTING and u.main_pid is None
    h.forked_pid = 4242
    assert h.fire_next()
    assert u.state is State.ACTIVE and u.main_pid == 4242


def test_forking_parent_failure_fails_the_start() -> None:
    h = FakeHost()
    u = fake_unit(h, type=ServiceType.FORKING)
    u.dispatch(Event.START)
    assert u.main_pid is not None
    h.exit(u, u.main_pid, ExitInfo(code=1))
    assert u.state is State.FAILED and u.result is Result.EXIT_CODE


def test_remain_after_exit_stays_up_and_restart_prevent_holds() -> None:
    h = FakeHost()
    u = fake_unit(h, remain_after_exit=True)
    u.dispatch(Event.START)
    assert u.main_pid is not None
    h.exit(u, u.main_pid, ExitInfo(code=0))
    assert u.state is State.EXITED
    h2 = FakeHost()
    v = fake_unit(h2, restart=RestartPolicy.ON_FAILURE, restart_prevent=(255,))
    v.dispatch(Event.START)
    assert v.main_pid is not None
    h2.exit(v, v.main_pid, ExitInfo(code=255))
    assert v.state is State.FAILED  # RestartPreventExitStatus=255: no restart
    w = fake_unit(FakeHost(), restart=RestartPolicy.NO, restart_force=("SIGPIPE",))
    w.dispatch(Event.START)
    assert w.main_pid is not None
    w.host.exit(w, w.main_pid, ExitInfo(signal=13))  # type: ignore[attr-defined]
    assert w.state is State.AUTO_RESTART  # RestartForceExitStatus=SIGPIPE


def test_exec_stop_post_runs_after_a_failed_start() -> None:
    h = FakeHost()
    u = fake_unit(h, exec_start_pre=(("/bin/false",),), exec_stop_post=(("/bin/cleanup",),))
    u.dispatch(Event.START)
    assert u.command_pid is not None
    h.exit(u, u.command_pid, ExitInfo(code=1))
    assert u.state is State.STOP_POST and h.commands[-1] == ("/bin/cleanup",)
    assert u.command_pid is not None
    h.exit(u, u.command_pid, ExitInfo(code=0))
    assert u.state is State.FAILED and u.result is Result.EXIT_CODE


def test_yaml_forking_cannot_be_hot_relayed() -> None:
    from aeterna.loader.errors import UnitError
    from aeterna.loader.yaml_units import load_yaml_unit

    text = ("service:\n  name: n\n  command: [/usr/sbin/nginx]\n  type: forking\n"
            "orchestration:\n  strategy: hot-relay\n")
    with pytest.raises(UnitError) as info:
        load_yaml_unit(text, "n.yaml")
    assert str(info.value).startswith("n.yaml:6: orchestration.strategy: expected restart for "
                                      "type: forking, found 'hot-relay'")
    ok = load_yaml_unit(text.replace("hot-relay", "restart"), "n.yaml")
    assert ok.service.type is ServiceType.FORKING


_FUZZ_KEYS = ("Service.LimitNOFILE", "Service.LimitCPU", "Service.LimitNICE",
              "Service.LimitRTTIME", "Service.UMask", "Service.Nice", "Service.OOMScoreAdjust",
              "Service.RuntimeDirectory", "Service.StateDirectoryMode",
              "Service.SuccessExitStatus", "Service.RestartPreventExitStatus",
              "Service.PIDFile", "Service.Type", "Service.DynamicUser",
              "Service.SupplementaryGroups", "Service.RuntimeMaxSec",
              "Service.RuntimeDirectoryPreserve", "Unit.ConditionPathExists",
              "Unit.AssertUser", "Install.Alias")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_FUZZ_KEYS),
       st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30))
def test_fuzz_new_directives_give_located_errors_only(key: str, value: str) -> None:
    """Whatever the value, a load gives units or located errors, never a traceback."""
    import tempfile

    section, name = key.split(".")
    value = value.rstrip("\\").strip()  # a trailing backslash would continue the line
    with tempfile.TemporaryDirectory() as tmp:
        text = f"[Service]\nExecStart=/bin/a\n[{section}]\n{name}={value}\n"
        (Path(tmp) / "a.service").write_text(text)
        errors: list[UnitError] = []
        units, _ = load_systemd_dir(tmp, specifiers=CTX, errors=errors)
        for e in errors:
            assert e.file.endswith("a.service") and e.line == 4, e
            assert f"{section}.{name}" in e.key or e.key.startswith(section), e
        assert len(units) + bool(errors) == 1


def test_runtime_max_survives_a_reload() -> None:
    h = FakeHost()
    u = fake_unit(h, runtime_max_sec=60.0, exec_reload=(("/bin/reload",),))
    u.dispatch(Event.START)
    assert u.state is State.ACTIVE
    u.dispatch(Event.RELOAD)
    assert u.state is State.RELOADING and u.command_pid is not None
    h.exit(u, u.command_pid, ExitInfo(code=0))
    assert u.state is State.ACTIVE
    assert h.fire_next()  # the RuntimeMaxSec= deadline, re-armed
    assert u.state is State.STOPPING and u.result is Result.TIMEOUT
