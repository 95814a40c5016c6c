"""ExecStartPre=, ExecStartPost=, ExecStop= and ExecReload=, as systemd runs them."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path
from typing import Any


def _service(tmp: Path, name: str, body: str) -> Path:
    d = tmp / "sd"
    d.mkdir(exist_ok=True)
    (d / f"{name}.service").write_text(textwrap.dedent(body).lstrip())
    return d


def test_pre_and_post_run_in_order_around_the_main_process(aeterna: Any, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    d = _service(tmp_path, "app", f"""
        [Service]
        ExecStartPre=/bin/sh -c 'echo pre1 >> {log}'
        ExecStartPre=-/bin/false
        ExecStartPre=/bin/sh -c 'echo pre2 >> {log}'
        ExecStart=/bin/sh -c 'echo main >> {log}; exec sleep 60'
        ExecStartPost=/bin/sh -c 'echo post MAINPID=$MAINPID >> {log}'
        ExecStop=/bin/sh -c 'echo stop MAINPID=$MAINPID >> {log}'
        TimeoutStopSec=5
        """)
    m = aeterna([d])
    m.wait_line(r"unit\.state unit=app old=start-post new=active")
    main_pid = m.status("app")["main_pid"]
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 128 + signal.SIGTERM
    lines = log.read_text().splitlines()
    # For Type=simple the unit is "started" at once, so ExecStartPost= races with
    # the main process's first line (as under systemd): only "main" floats.
    assert [x for x in lines if x != "main"] == [
        "pre1", "pre2", f"post MAINPID={main_pid}", f"stop MAINPID={main_pid}"]
    assert lines.index("main") > lines.index("pre2")


def test_failing_start_pre_keeps_the_main_process_from_starting(aeterna: Any,
                                                                tmp_path: Path) -> None:
    d = _service(tmp_path, "app", """
        [Service]
        ExecStartPre=/bin/sh -c 'exit 3'
        ExecStart=/bin/sleep 60
        """)
    m = aeterna([d])
    m.wait_line(r"unit.command-failed unit=app state=start-pre")
    assert m.wait_exit() == 1
    assert m.count(r"unit\.started unit=app") == 0


def test_oneshot_runs_every_exec_start_in_order(aeterna: Any, tmp_path: Path) -> None:
    log = tmp_path / "o.log"
    d = _service(tmp_path, "job", f"""
        [Service]
        Type=oneshot
        ExecStart=/bin/sh -c 'echo one >> {log}'
        ExecStart=/bin/sh -c 'echo two >> {log}'
        ExecStart=/bin/sh -c 'echo three >> {log}'
        """)
    m = aeterna([d])
    assert m.wait_exit() == 0
    assert log.read_text().splitlines() == ["one", "two", "three"]


def test_exec_reload_runs_on_reload_of_an_unchanged_unit(aeterna: Any, tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    d = _service(tmp_path, "app", f"""
        [Service]
        ExecStart=/bin/sleep 60
        ExecReload=/bin/sh -c 'echo reloaded $MAINPID >> {log}'
        """)
    m = aeterna([d])
    m.wait_line(r"unit\.state unit=app old=waiting new=active")
    reply = m.ctl("reload", "app")
    assert reply["ok"] and reply["result"]["outcome"] == "success", reply
    assert log.read_text().split() == ["reloaded", str(m.status("app")["main_pid"])]


def test_yaml_exec_start_pre(aeterna: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pre"
    m = aeterna({"a.yaml": f"""
        service:
          name: a
          command: [sh, -c, 'test -e {marker} && echo saw-pre']
          exec_start_pre: [[touch, "{marker}"], ["-false"]]
        """})
    m.wait_line(r"a\[\d+\]: saw-pre")
    assert m.wait_exit() == 0
