"""``StandardInput=socket`` (INI) and ``stdin: socket`` (YAML): loaded, and refused
with file, line and key where a unit has no socket to put on fd 0."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aeterna.loader.errors import UnitError
from aeterna.loader.systemd_units import load_systemd_dir
from aeterna.loader.yaml_units import load_yaml_unit
from aeterna.model import StandardInput

YAML = """\
service:
  name: web
  command: [java, Web]
  stdin: {stdin}
{sockets}"""
SOCKETS = "  sockets:\n    - listen: 127.0.0.1:8080\n"


def test_yaml_stdin_socket_and_its_default() -> None:
    spec = load_yaml_unit(YAML.format(stdin="socket", sockets=SOCKETS), "web.yaml")
    assert spec.service.stdin is StandardInput.SOCKET
    plain = load_yaml_unit("service: {name: w, command: [x]}\n", "w.yaml")
    assert plain.service.stdin is StandardInput.NULL


@pytest.mark.parametrize("stdin, sockets, expected", [
    ("socket", "", "null, or socket with at least one entry in service.sockets"),
    ("tty", SOCKETS, "one of null | socket"),
])
def test_yaml_stdin_errors_name_file_line_and_key(stdin: str, sockets: str,
                                                  expected: str) -> None:
    with pytest.raises(UnitError) as info:
        load_yaml_unit(YAML.format(stdin=stdin, sockets=sockets), "web.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("web.yaml", 4, "service.stdin")
    assert expected in str(err)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def test_ini_standard_input_socket(tmp_path: Path) -> None:
    units, warnings = load_systemd_dir(write(tmp_path, {
        "web.socket": "[Socket]\nListenStream=127.0.0.1:8080\n",
        "web.service": "[Service]\nExecStart=/usr/bin/java Web\nStandardInput=socket\n",
        "tty.service": "[Service]\nExecStart=/bin/true\nStandardInput=tty\n",
    }))
    by_name = {u.name: u for u in units}
    assert by_name["web"].service.stdin is StandardInput.SOCKET
    assert by_name["tty"].service.stdin is StandardInput.NULL
    assert any("StandardInput" in str(w) and "'tty'" in str(w) for w in warnings), warnings


def test_ini_standard_input_socket_without_a_socket_unit(tmp_path: Path) -> None:
    with pytest.raises(UnitError) as info:
        load_systemd_dir(write(tmp_path, {
            "web.service": "[Service]\nExecStart=/usr/bin/java Web\nStandardInput=socket\n"}))
    err = info.value
    assert err.file.endswith("web.service") and err.line == 3
    assert err.key == "Service.StandardInput" and "no socket unit" in str(err)
