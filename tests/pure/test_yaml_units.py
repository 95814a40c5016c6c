"""YAML unit files: the seed is accepted, and every broken file gets one exact line."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aeterna.loader import load_paths, start_order
from aeterna.loader.errors import UnitError, UnitErrors
from aeterna.loader.yaml_units import load_yaml_unit
from aeterna.model import KillMode, RestartPolicy, ServiceType, Strategy

BASE = "service:\n  name: a\n  command: [x]\n"

# (id, file text, exact error line). The file is always called u.yaml.
BROKEN = [
    ("unknown-top-key", BASE + "servise: {}\n",
     "u.yaml:4: servise: unknown key (did you mean 'service'?), expected one of: version, "
     "service, orchestration, observability, description"),
    ("command-empty", "service:\n  name: a\n  command: []\n",
     "u.yaml:3: service.command: expected a non-empty command, found an empty list"),
    ("command-mapping", "service:\n  name: a\n  command: {a: 1}\n",
     "u.yaml:3: service.command: expected a list, found a mapping"),
    ("command-item-null", 'service:\n  name: a\n  command: ["x", ~]\n',
     "u.yaml:3: service.command[1]: expected a string, found nothing"),
    ("missing-name", "service:\n  command: [x]\n",
     "u.yaml:2: service.name: expected the unit's name, found nothing (missing key)"),
    ("missing-command", "service:\n  name: a\n",
     "u.yaml:2: service.command: expected a non-empty list of strings, found nothing "
     "(missing key)"),
    ("bad-type", BASE + "  type: dbus\n",
     "u.yaml:4: service.type: expected one of simple | exec | notify | notify-reload | oneshot"
     " | forking, found 'dbus'"),
    ("bad-restart", BASE + "  restart: sometimes\n",
     "u.yaml:4: service.restart: expected one of no | on-success | on-failure | on-abnormal | "
     "on-watchdog | on-abort | always, found 'sometimes'"),
    ("bad-duration", BASE + "  restart_sec: 5 parsecs\n",
     'u.yaml:4: service.restart_sec: expected a duration like "30s", "1m30s" or "250ms", '
     "found '5 parsecs'"),
    ("bad-nested-duration", BASE + "  timeouts:\n    stop: soon\n",
     'u.yaml:5: service.timeouts.stop: expected a duration like "30s", "1m30s" or "250ms", '
     "found 'soon'"),
    ("unknown-signal", BASE + "  stop_signal: SIGFOO\n",
     'u.yaml:4: service.stop_signal: expected a signal name like "SIGTERM", found \'SIGFOO\''),
    ("bad-kill-mode", BASE + "  kill_mode: all\n",
     "u.yaml:4: service.kill_mode: expected one of control-group | mixed | process | none, "
     "found 'all'"),
    ("env-not-assignment", BASE + '  env:\n    - "FOO"\n',
     "u.yaml:5: service.env[0]: expected \"NAME=value\", found 'FOO'"),
    ("zero-fd-limit", BASE + "  limit_nofile: 0\n",
     "u.yaml:4: service.limit_nofile: expected a whole number >= 1, found '0'"),
    ("negative-burst", BASE + "  start_limit: {burst: -1}\n",
     "u.yaml:4: service.start_limit.burst: expected a whole number >= 0, found '-1'"),
    ("self-dependency", BASE + "  depends_on: [a]\n",
     "u.yaml:4: service.depends_on[0]: expected another unit's name (a unit cannot depend on "
     "itself), found 'a'"),
    ("yaml-syntax", "service:\n  name: a\n  command: [x\n",
     "u.yaml:4: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ("bad-version", 'version: "2.0"\n' + BASE,
     "u.yaml:1: version: expected \"1.0\", found '2.0'"),
    ("bad-soak", BASE + "orchestration:\n  canary:\n    soak_time: 30 fortnights\n",
     'u.yaml:6: orchestration.canary.soak_time: expected a duration like "30s", "1m30s" or '
     "\"250ms\", found '30 fortnights'"),
    ("bad-strategy", BASE + "orchestration:\n  strategy: blue-green\n",
     "u.yaml:5: orchestration.strategy: expected one of hot-relay | restart, found 'blue-green'"),
    ("socket-without-listen", BASE + "  sockets:\n    - name: http\n",
     'u.yaml:5: service.sockets[0].listen: expected an address like "127.0.0.1:8080" or '
     '"/run/app.sock", found nothing (missing key)'),
    ("bad-log-level", BASE + "observability:\n  log_level: loud\n",
     "u.yaml:5: observability.log_level: expected one of debug | info | warning | error, "
     "found 'loud'"),
    ("bad-metrics-address", BASE + "observability:\n  metrics_port: localhost:9090\n",
     "u.yaml:5: observability.metrics_port: expected PORT, :PORT, IPV4:PORT or [IPV6]:PORT, "
     "found 'localhost:9090'"),
    ("metrics-on-a-unix-socket", BASE + "observability:\n  metrics_port: /run/m.sock\n",
     "u.yaml:5: observability.metrics_port: expected PORT, :PORT, IPV4:PORT or [IPV6]:PORT, "
     "found '/run/m.sock'"),
    ("empty-file", "",
     "u.yaml:1: expected a mapping with a 'service' key, found an empty file"),
    ("top-level-list", "- a\n- b\n",
     "u.yaml:1: (top level): expected a mapping, found a list"),
    ("duplicate-key", "service:\n  name: a\n  name: b\n  command: [x]\n",
     "u.yaml:3: service.name: expected each key once, found it again (duplicate key)"),
    ("bad-name", 'service:\n  name: "a b"\n  command: [x]\n',
     "u.yaml:2: service.name: expected a unit name: letters, digits and _.@:-, starting "
     "with a letter, digit or _, at most 255 characters, found 'a b'"),
    ("bad-bool", BASE + "orchestration:\n  canary:\n    enabled: maybe\n",
     "u.yaml:6: orchestration.canary.enabled: expected true or false, found 'maybe'"),
    ("bad-mode", BASE + '  sockets:\n    - listen: /tmp/x.sock\n      mode: "0999"\n',
     'u.yaml:6: service.sockets[0].mode: expected an octal mode like "0660", found \'0999\''),
]


@pytest.mark.parametrize("text,message", [(t, m) for _, t, m in BROKEN],
                         ids=[i for i, _, _ in BROKEN])
def test_broken_unit_gives_one_exact_line(text: str, message: str) -> None:
    with pytest.raises(UnitError) as info:
        load_yaml_unit(text, "u.yaml")
    assert str(info.value) == message


def test_seed_example_is_accepted_as_is() -> None:
    result = load_paths([str(ROOT / "units" / "examples" / "seed.yaml")])
    (unit,) = result.units
    assert unit.name == "agent-core"
    assert unit.service.command == ("python", "agent.py")
    assert unit.service.env == (("PYTHONUNBUFFERED", "1"),)
    assert unit.orchestration.strategy is Strategy.HOT_RELAY
    assert unit.orchestration.canary.enabled and unit.orchestration.canary.soak_time == 30.0
    assert unit.orchestration.state_handoff.socket_path == "/tmp/aeterna_srp.sock"
    # Go's ":PORT" (every interface) is stored as the listen address it means.
    assert unit.observability.metrics_port == "9090"
    assert unit.observability.log_level == "info"


def test_full_service_settings() -> None:
    unit = load_yaml_unit(textwrap.dedent("""
        service:
          name: web
          command: "gunicorn -b 'fd://3' app:app"
          type: notify
          env: {A: "1", B: two}
          env_file: ["-/etc/default/web", /etc/web.env]
          working_directory: /srv
          user: nobody
          group: nogroup
          restart: on-failure
          restart_sec: 250ms
          backoff: {factor: 2, max_delay: 1m30s}
          start_limit: {burst: 3, interval: 20s}
          timeouts: {start: 1m, stop: 5s}
          stop_signal: INT
          kill_mode: mixed
          depends_on: [db, {name: cache, require: false}]
          limit_nofile: 4096
        """), "web.yaml")
    s = unit.service
    assert s.command == ("gunicorn", "-b", "fd://3", "app:app")
    assert s.type is ServiceType.NOTIFY
    assert s.env == (("A", "1"), ("B", "two"))
    assert s.env_files == (("/etc/default/web", True), ("/etc/web.env", False))
    assert s.restart is RestartPolicy.ON_FAILURE and s.restart_sec == 0.25
    assert s.backoff.factor == 2 and s.backoff.max_delay == 90
    assert (s.start_limit.burst, s.start_limit.interval) == (3, 20)
    assert (s.timeouts.start, s.timeouts.stop) == (60, 5)
    assert s.stop_signal is signal.SIGINT and s.kill_mode is KillMode.MIXED
    assert [(d.name, d.require) for d in s.depends_on] == [("db", True), ("cache", False)]
    assert s.limit_nofile == 4096


def test_restart_no_is_not_a_yaml_boolean() -> None:
    unit = load_yaml_unit(BASE + "  restart: no\n", "u.yaml")
    assert unit.service.restart is RestartPolicy.NO


def _write(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp / name).write_text(text)
    return tmp


def test_dependency_cycle_names_the_closing_edge(tmp_path: Path) -> None:
    _write(tmp_path, {
        "a.yaml": "service:\n  name: a\n  command: [x]\n  depends_on: [b]\n",
        "b.yaml": "service:\n  name: b\n  command: [x]\n  depends_on: [c]\n",
        "c.yaml": "service:\n  name: c\n  command: [x]\n  depends_on:\n    - a\n",
    })
    with pytest.raises(UnitErrors) as info:
        load_paths([str(tmp_path)])
    (err,) = info.value.errors
    assert str(err) == (f"{tmp_path}/c.yaml:5: service.depends_on: expected no dependency "
                        "cycle, found a -> b -> c -> a")


def test_unknown_dependency_and_duplicate_name(tmp_path: Path) -> None:
    _write(tmp_path, {
        "a.yaml": "service:\n  name: a\n  command: [x]\n  depends_on: [nope]\n",
        "b.yaml": "service:\n  name: a\n  command: [x]\n",
    })
    with pytest.raises(UnitErrors) as info:
        load_paths([str(tmp_path)])
    lines = [str(e) for e in info.value.errors]
    assert lines == [
        f"{tmp_path}/b.yaml:1: service.name: duplicate unit name 'a', also defined in "
        f"{tmp_path}/a.yaml:1",
        f"{tmp_path}/a.yaml:4: service.depends_on: expected the name of a loaded unit, "
        "found 'nope'",
    ]
    (tmp_path / "b.yaml").unlink()
    with pytest.raises(UnitErrors) as info:
        load_paths([str(tmp_path)])
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path}/a.yaml:4: service.depends_on: expected the name of a loaded unit, "
        "found 'nope'"]


def test_errors_from_several_files_are_all_reported(tmp_path: Path) -> None:
    _write(tmp_path, {"a.yaml": BASE + "  type: bogus\n", "b.yaml": "service: 3\n"})
    with pytest.raises(UnitErrors) as info:
        load_paths([str(tmp_path)])
    assert len(info.value.errors) == 2


def test_start_order_respects_dependencies(tmp_path: Path) -> None:
    _write(tmp_path, {
        "web.yaml": "service:\n  name: web\n  command: [x]\n  depends_on: [db, cache]\n",
        "db.yaml": "service:\n  name: db\n  command: [x]\n",
        "cache.yaml": "service:\n  name: cache\n  command: [x]\n  depends_on: [db]\n",
    })
    order = start_order(load_paths([str(tmp_path)]).by_name())
    assert order.index("db") < order.index("cache") < order.index("web")


def test_bundled_units_validate() -> None:
    result = load_paths([str(ROOT / "units")])
    assert {u.name for u in result.units} >= {"hello", "prepare", "ticker"}


_yaml_text = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(
                                   ["service", "name", "command", "type", "env", "restart",
                                    "timeouts", "stop", "sockets", "listen", "depends_on",
                                    "orchestration", "canary", "x"]), children, max_size=5)),
    max_leaves=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(st.text(max_size=200), _yaml_text.map(repr)))
def test_fuzz_arbitrary_text_raises_only_unit_error(text: str) -> None:
    try:
        load_yaml_unit(text, "f.yaml")
    except UnitError as exc:
        assert str(exc).startswith("f.yaml")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_yaml_text)
def test_fuzz_structured_yaml_raises_only_unit_error(doc: object) -> None:
    import yaml

    text = yaml.safe_dump({"service": doc}) if not isinstance(doc, dict) else yaml.safe_dump(doc)
    try:
        load_yaml_unit(text, "f.yaml")
    except UnitError as exc:
        assert "\n" not in str(exc)


def test_issue_orchestration_block_is_accepted() -> None:
    unit = load_yaml_unit(BASE + textwrap.dedent("""\
        orchestration:
          strategy: hot-relay            # or: restart
          pre_flight:
            - {name: config-check, command: ["myapp", "--check"], timeout: 10s}
          startup: {timeout: 60s}
          canary:
            enabled: true
            soak_time: 30s
            probes:
              - {http: "http://127.0.0.1:8080/healthz", expect_status: 200, interval: 1s}
              - {tcp: "127.0.0.1:8080"}
              - {exec: ["myapp", "--ping"], timeout: 2s}
            max_rss: 512MiB
            max_cpu_percent: 90
          drain: {timeout: 30s, signal: SIGTERM}
          max_draining: 1
          post_process:
            on_success: [["notify-deploy", "ok"]]
            on_failure: [["notify-deploy", "rollback"]]
        """), "u.yaml")
    o = unit.orchestration
    assert o.strategy is Strategy.HOT_RELAY
    assert o.pre_flight[0].name == "config-check" and o.pre_flight[0].timeout == 10
    assert o.startup_timeout == 60
    assert [p.kind.value for p in o.canary.probes] == ["http", "tcp", "exec"]
    assert o.canary.probes[2].timeout == 2 and o.canary.max_rss == 512 * 1024**2
    assert o.drain.timeout == 30 and o.max_draining == 1
    assert o.on_failure == (("notify-deploy", "rollback"),)


def test_probe_needs_exactly_one_kind() -> None:
    with pytest.raises(UnitError) as info:
        load_yaml_unit(BASE + "orchestration:\n  canary:\n    probes:\n      - {interval: 1s}\n",
                       "u.yaml")
    assert str(info.value) == ("u.yaml:7: orchestration.canary.probes[0]: expected exactly one "
                               "of http, tcp or exec, found none")
