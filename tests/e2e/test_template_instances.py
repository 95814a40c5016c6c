"""Unit templates with real managers: ``web@8080`` and ``web@8081`` from one file
serve on their own ports at once; ``start``, ``stop`` and ``enable`` by instance
name; ``validate --instance`` shows the rendered unit; a broken template is one
located line from the CLI, never a traceback; the wheel carries the scaffolds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import AETERNA, ROOT, free_port

HELLO = ROOT / "examples" / "hello" / "app.py"

TEMPLATE = f"""\
# One file, one web app per port: the instance is the port.
description: "hello on {{{{ instance }}}}"
service:
  type: notify
  command: ["{sys.executable}", "{HELLO}"]
  env: ["INSTANCE=%i", "WORKERS={{{{ host.cpus * 2 }}}}"]
  sockets:
    - listen: "127.0.0.1:%i"
      name: http
  timeouts: {{stop: 5s}}
"""


def cli(*args: str, cwd: Path | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*AETERNA, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def get(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as r:
        body: str = r.read().decode()
        return body


def units_dir(tmp_path: Path) -> Path:
    d = tmp_path / "units"
    d.mkdir(parents=True)
    (d / "web@.yaml").write_text(TEMPLATE)
    return d


def test_instances_serve_on_their_own_ports(aeterna: Any, tmp_path: Path) -> None:
    a, b, c = free_port(), free_port(), free_port()
    d = units_dir(tmp_path)
    os.symlink("web@.yaml", d / f"web@{a}.yaml")
    m = aeterna(d)
    m.wait_ready(15)
    m.wait_status(f"web@{a}", lambda st: st["state"] == "active", timeout=20)
    assert m.count(r"unit\.\S+ unit=web@ ") == 0  # the template itself never runs

    # start by name: loaded from the template, started, serving beside the first.
    r = cli("--control", m.control, "start", f"web@{b}")
    assert r.returncode == 0, r.stderr
    m.wait_status(f"web@{b}", lambda st: st["state"] == "active", timeout=20)
    pa, pb = m.status(f"web@{a}")["main_pid"], m.status(f"web@{b}")["main_pid"]
    assert pa != pb
    assert get(a).startswith(f"hello from pid {pa}")
    assert get(b).startswith(f"hello from pid {pb}")

    # enable by name: the symlink is made beside the template, and the instance runs.
    r = cli("--control", m.control, "enable", f"web@{c}")
    assert r.returncode == 0, r.stderr
    assert f"Created symlink {d}/web@{c}.yaml \u2192 {d}/web@.yaml." in r.stderr
    assert os.readlink(d / f"web@{c}.yaml") == "web@.yaml"
    m.wait_status(f"web@{c}", lambda st: st["state"] == "active", timeout=20)
    assert get(c).startswith("hello from pid ")
    r = cli("--control", m.control, "enable", f"web@{c}")  # again: nothing more to do
    assert r.returncode == 0 and "created" not in r.stderr

    # A reload keeps all three: the started one by its name, the others by their files.
    r = cli("--control", m.control, "reload")
    assert r.returncode == 0, r.stderr
    assert "removed" not in r.stdout

    # stop by name: that instance only.
    r = cli("--control", m.control, "stop", f"web@{b}")
    assert r.returncode == 0, r.stderr
    assert m.status(f"web@{b}")["state"] == "inactive"
    assert get(a).startswith(f"hello from pid {pa}")
    r = cli("--control", m.control, "start", f"web@{b}")
    assert r.returncode == 0, r.stderr
    assert get(b).startswith("hello from pid ")

    # A name with no template, or not an instance name, is refused with a reason.
    r = cli("--control", m.control, "start", "db@1")
    assert r.returncode == 1 and "expected a template db@.yaml" in r.stderr
    r = cli("--control", m.control, "enable", "web@a/b")
    assert r.returncode == 1 and "expected an instance of letters" in r.stderr

    # The next manager on this directory has the enabled instances, from their files.
    m.kill()
    m2 = aeterna(d)
    m2.wait_ready(15)
    for port in (a, c):
        m2.wait_status(f"web@{port}", lambda st: st["state"] == "active", timeout=20)


def test_validate_instance_shows_the_rendered_unit(tmp_path: Path) -> None:
    d = units_dir(tmp_path)
    r = cli("validate", str(d / "web@.yaml"), "--instance", "8080")
    assert r.returncode == 0, r.stderr
    assert f"# {d}/web@.yaml rendered for web@8080" in r.stdout
    assert 'description: "hello on 8080"' in r.stdout
    assert f"WORKERS={len(os.sched_getaffinity(0)) * 2}" in r.stdout
    assert f"{d}/web@.yaml: web@8080: ok" in r.stdout
    assert "  listen: 127.0.0.1:8080 (http)" in r.stdout  # %i expanded
    assert "  env: INSTANCE=8080" in r.stdout
    r = cli("validate", str(d / "web@.yaml"))
    assert r.returncode == 2 and "a template is not started by itself" in r.stderr


@pytest.mark.parametrize(("body", "line", "words"), [
    ("service:\n  command: [x]\n  user: '{{ no_such_name }}'\n", 3,
     "template error: undefined name 'no_such_name'"),
    ("service:\n  command: [x]\n\n  user: '{% for %}'\n", 4, "template syntax error: "),
    ("service:\n  command: ['{{ \"\".__class__.__mro__[1].__subclasses__() }}']\n", 2,
     "access to attribute '__class__' of 'str' object is unsafe (the sandbox refuses it)"),
])
def test_template_errors_from_the_cli(tmp_path: Path, body: str, line: int, words: str) -> None:
    d = tmp_path / "units"
    d.mkdir()
    (d / "bad@.yaml").write_text(body)
    os.symlink("bad@.yaml", d / "bad@1.yaml")
    for args in (["validate", str(d)], ["validate", str(d / "bad@.yaml"), "--instance", "1"],
                 ["start", "-c", str(d)]):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
        err = r.stderr.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"{d}/bad@") and f".yaml:{line}: template " in err[0], err
        assert words in err[0], err


def test_an_installed_aeterna_init_finds_its_templates(tmp_path: Path) -> None:
    """The build puts templates/ in the package: ``init`` works away from a checkout."""
    build = tmp_path / "lib"
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (build / "aeterna" / "templates" / "web" / "profile.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(build)}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "aeterna.cli", "init", "kubernetes", "out"],
                       cwd=elsewhere, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "valid: out/units/web.yaml: web" in r.stdout, (r.stdout, time.monotonic() - t0)
    assert sorted(p.name for p in (elsewhere / "out").iterdir()) == [
        "configmaps.yaml", "deployment.yaml", "service.yaml", "units"]


def test_reload_with_a_broken_or_removed_template(aeterna: Any, tmp_path: Path) -> None:
    a = free_port()
    d = units_dir(tmp_path)
    # A manager runs until its units have stopped: one that is not the template's.
    (d / "other.yaml").write_text("service:\n  name: other\n  command: [sleep, '60']\n")
    m = aeterna(d)
    m.wait_ready(15)
    r = cli("--control", m.control, "start", f"web@{a}")
    assert r.returncode == 0, r.stderr
    pid = m.status(f"web@{a}")["main_pid"]

    # A broken template: the reload is refused, says where, and nothing changes.
    (d / "web@.yaml").write_text(TEMPLATE.replace("%i\"\n", "{{ oops }}\"\n", 1))
    r = cli("--control", m.control, "reload")
    assert r.returncode == 1
    assert f"{d}/web@.yaml:8: template error: undefined name 'oops'" in r.stderr, r.stderr
    assert "the running configuration is kept" in r.stderr
    assert "Traceback" not in r.stderr
    assert m.status(f"web@{a}")["main_pid"] == pid and get(a).startswith(f"hello from pid {pid}")

    # The template removed: its instance is no longer defined, and runs until stopped.
    (d / "web@.yaml").unlink()
    r = cli("--control", m.control, "reload")
    assert r.returncode == 0, r.stderr
    assert f"removed: web@{a} (runs until stopped)" in r.stdout
    assert get(a).startswith(f"hello from pid {pid}")
