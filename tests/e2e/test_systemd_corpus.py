"""Every unit file the machine's systemd ships loads without a traceback, and fails
only for what docs/compatibility.md lists as refused."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import ROOT

from aeterna.loader.errors import UnitError
from aeterna.loader.systemd_units import load_systemd_file

UNIT_DIR = Path("/lib/systemd/system")
DOC = (ROOT / "docs" / "compatibility.md").read_text()


def refused() -> list[str]:
    """The backquoted phrases of the doc's "Refused, with a reason" list."""
    section = DOC.split("## Refused, with a reason", 1)[1].split("\n## ", 1)[0]
    items = [line for line in section.splitlines() if line.startswith("- ")]
    phrases = [p for line in items for p in re.findall(r"`([^`]+)`", line.split(":")[0])]
    assert phrases, "the doc lists nothing as refused"
    return phrases


def unit_files() -> list[Path]:
    if not UNIT_DIR.is_dir():
        return []
    return sorted(p for p in UNIT_DIR.iterdir()
                  if p.suffix in (".service", ".socket") and not p.is_dir()
                  and "@." not in p.name)


@pytest.mark.skipif(not unit_files(), reason=f"no unit files in {UNIT_DIR} (no systemd "
                    "package on this machine)")
def test_every_shipped_unit_loads_or_is_refused_as_documented() -> None:
    phrases = refused()
    loaded = failed = 0
    unexpected: list[str] = []
    for path in unit_files():
        errors: list[UnitError] = []
        units, warnings = load_systemd_file(path, errors=errors)  # a traceback fails here
        for w in warnings:
            assert str(w).startswith(str(UNIT_DIR)), w  # located, never anonymous
        loaded += len(units)
        failed += bool(errors)
        for e in errors:
            text = str(e)
            assert text.startswith(str(UNIT_DIR)), text
            if not any(p in text for p in phrases):
                unexpected.append(text)
    print(f"{len(unit_files())} unit files: {loaded} units loaded, {failed} refused")
    assert not unexpected, "\n".join(unexpected)
    assert loaded > 0


def test_instances_of_shipped_templates_load() -> None:
    templates = [p for p in UNIT_DIR.glob("*@.service")] if UNIT_DIR.is_dir() else []
    if not templates:
        pytest.skip(f"no template units in {UNIT_DIR}")
    phrases = refused()
    for template in templates:
        instance = template.with_name(template.name.replace("@.", "@x1."))
        errors: list[UnitError] = []
        load_systemd_file(instance, errors=errors)
        bad = [str(e) for e in errors if not any(p in str(e) for p in phrases)]
        assert not bad, "\n".join(bad)
    assert os.path.isdir(UNIT_DIR)
