"""Unit templates: ``web@.yaml`` rendered in jinja2's sandbox for an instance, and
every failure one located line (``FILE:LINE: template ...``), never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aeterna.loader import load_paths
from aeterna.loader.errors import UnitError, UnitErrors
from aeterna.loader.instances import load_text
from aeterna.loader.templates import HostFacts, render_unit

HOST = HostFacts(hostname="box", cpus=3, memory=4 << 30)

TEMPLATE = """\
# web@.yaml: one file, many ports
service:
  command: ["app", "--port", "{{ instance }}", "--workers", "{{ host.cpus * 2 }}",
            "--home", "{{ env.HOME }}", "%i", "%N", "%p"]
  env: ["MEM_MIB={{ host.memory_mib }}", "HOST={{ host.hostname }}"]
  sockets:
    - listen: "127.0.0.1:%i"
"""


def test_render_knows_instance_env_and_host() -> None:
    text = render_unit(TEMPLATE, "u/web@.yaml", "8080", env={"HOME": "/h"}, host=HOST)
    assert '"8080", "--workers", "6"' in text and '"/h"' in text
    assert "MEM_MIB=4096" in text and "HOST=box" in text
    assert text.count("\n") == TEMPLATE.count("\n")  # lines kept: YAML errors stay located


def test_instance_gets_its_name_and_specifiers() -> None:
    unit = load_text(render_unit(TEMPLATE, "u/web@.yaml", "8080", env={"HOME": "/h"},
                                 host=HOST), "u/web@8080.yaml")
    assert unit.name == "web@8080"
    assert unit.service.command[-3:] == ("8080", "web@8080", "web")
    assert unit.service.sockets[0].address == "127.0.0.1:8080"


def test_host_facts_of_this_machine() -> None:
    h = HostFacts.from_process()
    assert h.cpus == len(os.sched_getaffinity(0)) and h.memory > 0 and h.hostname


@pytest.mark.parametrize(("text", "line", "words"), [
    ("service:\n  name: x\n  command: ['{{ nope }}']\n", 3,
     "template error: undefined name 'nope'"),
    ("service:\n  command: ['{{ env.NO_SUCH_VARIABLE_X }}']\n", 2,
     "undefined name 'NO_SUCH_VARIABLE_X': not in the mapping"),
    ("service:\n\n  command: ['{% if %}']\n", 3, "template syntax error: Expected an expression"),
    ("service:\n  command: ['{{ x }']\n", 2, "template syntax error: unexpected '}'"),
    ("a: 1\nb: {{ ''.__class__.__mro__ }}\n", 2,
     "access to attribute '__class__' of 'str' object is unsafe (the sandbox refuses it)"),
    ("a: {{ cycler.__init__.__globals__.os }}\n", 1, "is unsafe (the sandbox refuses it)"),
    ("a: {{ ().__class__.__base__.__subclasses__() }}\n", 1, "is unsafe"),
    ("a: {{ 'x' * 10 ** 10 }}\n", 1, "longer than 1024 KiB is refused"),
    ("a: 1\n\n\nb: {{ 1 // 0 }}\n", 4, "ZeroDivisionError"),
    ("{% for i in range(1000000) %}{% endfor %}", 1, "MAX_RANGE"),
])
def test_template_errors_are_one_located_line(text: str, line: int, words: str) -> None:
    with pytest.raises(UnitError) as exc:
        render_unit(text, "units/web@.yaml", "8080", env={}, host=HOST)
    err = exc.value
    assert (err.file, err.line) == ("units/web@.yaml", line), str(err)
    assert words in str(err) and str(err).startswith(f"units/web@.yaml:{line}: template ")


def test_runaway_output_is_refused() -> None:
    text = "{% for i in range(100000) %}{% for j in range(100) %}xxxxxx{% endfor %}{% endfor %}"
    with pytest.raises(UnitError, match="renders to more than 1024 KiB"):
        render_unit(text, "t@.yaml", "1", env={}, host=HOST)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("{}%#-+*/.()[]'\"|~ \nabcx_0123=:!")),
               max_size=80))
def test_render_fuzz_never_raises_but_unit_errors(text: str) -> None:
    try:
        out = render_unit(text, "f@.yaml", "1", env={"A": "b"}, host=HOST)
    except UnitError as err:
        assert str(err).startswith("f@.yaml")
        return
    try:
        load_text(out, "f@1.yaml")
    except UnitError:
        pass


# ---------------------------------------------------------------- loading
def _dir(tmp_path: Path) -> Path:
    d = tmp_path / "units"
    d.mkdir()
    (d / "web@.yaml").write_text("service:\n  command: [app, '{{ instance }}']\n")
    (d / "plain.yaml").write_text("service:\n  name: plain\n  command: [x]\n")
    return d


def test_directory_skips_templates_and_loads_symlinked_instances(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    assert {u.name for u in load_paths([str(d)]).units} == {"plain"}
    os.symlink("web@.yaml", d / "web@8080.yaml")
    units = load_paths([str(d)]).by_name()
    assert set(units) == {"plain", "web@8080"}
    assert units["web@8080"].service.command == ("app", "8080")


def test_instances_by_name_and_by_missing_file(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    units = load_paths([str(d)], ["web@1", "web@2"]).by_name()
    assert units["web@2"].service.command == ("app", "2")
    assert units["web@1"].source.file == str(d / "web@.yaml")
    assert load_paths([str(d / "web@9.yaml")]).units[0].name == "web@9"
    with pytest.raises(UnitErrors, match="expected a template db@.yaml"):
        load_paths([str(d)], ["db@1"])
    with pytest.raises(UnitErrors, match="expected an instance of letters"):
        load_paths([str(d)], ["web@a/b"])


def test_a_template_alone_is_never_a_unit(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    with pytest.raises(UnitErrors) as exc:
        load_paths([str(d / "web@.yaml")])
    assert "a template is not started by itself" in str(exc.value)
    assert "--instance NAME" in str(exc.value)


def test_a_template_may_not_name_another_unit(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    (d / "web@.yaml").write_text("service:\n  name: other\n  command: [x]\n")
    with pytest.raises(UnitErrors, match=r"web@\.yaml:2: service\.name: expected the "
                       r"instance's name 'web@3'"):
        load_paths([str(d)], ["web@3"])
    (d / "web@.yaml").write_text("service:\n  name: web@{{ instance }}\n  command: [x]\n")
    assert load_paths([str(d)], ["web@3"]).units[1].name == "web@3"


def test_a_broken_instance_names_the_file_and_line(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    (d / "web@.yaml").write_text("service:\n  command: [x]\n  restart: '{{ nope }}'\n")
    os.symlink("web@.yaml", d / "web@1.yaml")
    with pytest.raises(UnitErrors) as exc:
        load_paths([str(d)])
    assert str(exc.value) == (f"{d}/web@1.yaml:3: template error: undefined name 'nope' "
                              "(a template knows instance, env and host)")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_instance_name_is_a_unit_or_one_error(instance: str) -> None:
    text = "service:\n  command: [app, '%i', '{{ instance }}']\n"
    try:
        unit = load_text(text, f"u/web@{instance}.yaml")
    except UnitError as err:
        assert str(err).startswith("u/web@")
        return
    assert unit.name == f"web@{instance}"
    assert unit.service.command[1] == instance
