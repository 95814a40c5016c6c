"""Enabled systemd units: a plain directory enables everything; links decide otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from aeterna.loader import load_paths
from aeterna.loader.systemd_install import disable, enable

SERVICE = "[Service]\nExecStart=/bin/true\n"


def _tree(tmp: Path, *names: str) -> Path:
    for n in names:
        (tmp / f"{n}.service").write_text(SERVICE + "[Install]\nWantedBy=default.target\n")
    return tmp


def _enabled(tmp: Path) -> dict[str, bool]:
    return {u.name: u.service.enabled for u in load_paths([str(tmp)]).units}


def test_a_plain_directory_enables_every_unit(tmp_path: Path) -> None:
    assert _enabled(_tree(tmp_path, "a", "b")) == {"a": True, "b": True}


def test_disabling_one_unit_of_a_plain_directory_keeps_the_others(tmp_path: Path) -> None:
    _tree(tmp_path, "a", "b", "c")
    assert disable(str(tmp_path / "b.service")) == []  # it had no link to remove
    assert _enabled(tmp_path) == {"a": True, "b": False, "c": True}
    made = enable(str(tmp_path / "b.service"))
    assert made == [str(tmp_path / "default.target.wants" / "b.service")]  # its WantedBy=
    assert os.readlink(made[0]) == "../b.service"
    assert _enabled(tmp_path) == {"a": True, "b": True, "c": True}
    removed = disable(str(tmp_path / "a.service"))
    assert removed == [str(tmp_path / "multi-user.target.wants" / "a.service")]
    assert _enabled(tmp_path) == {"a": False, "b": True, "c": True}
