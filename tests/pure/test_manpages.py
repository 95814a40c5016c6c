"""The manual pages cannot drift: every verb, option and key of the code is in them.

``packaging/manpages.py`` builds aeterna(1) from the CLI's parser and
aeterna.unit(5) by asking the loaders. These tests check that against
sources it does not use: the parser's own ``--help`` text for each verb, the
YAML loader's key tuples read out of its source text, and the ``[X-Aeterna]``
table; and that the pages are valid roff (``man`` renders them without a
warning).
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))

import manpages  # noqa: E402

from aeterna.cli import _parser  # noqa: E402
from aeterna.loader.systemd_directives import AETERNA  # noqa: E402


def _plain(roff: str) -> str:
    """The page's text with roff's escapes undone, enough to search it."""
    return roff.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")


def test_aeterna_1_has_every_verb_and_option() -> None:
    page = _plain(manpages.aeterna_1())
    p = _parser()
    for a in p._actions:
        if a.help == argparse.SUPPRESS:
            continue  # internal (daemon-reexec's --check-state FD): not the user's
        for flag in a.option_strings:
            if flag not in ("-h", "--help"):
                assert flag in page, flag
    verbs = manpages.verbs(p)
    assert set(verbs) >= {"start", "status", "stop", "restart", "reload", "validate"}
    for name, sub in verbs.items():
        assert re.search(rf"^\.SS {name}\b", page, re.M), name
        helptext = sub.format_help()
        for a in sub._actions:
            if a.option_strings == ["-h", "--help"]:
                continue
            # Every argument and option has a help text, and the page carries it.
            assert a.help, f"aeterna {name}: {a.option_strings or a.dest} has no help"
            assert a.help.split("(")[0].strip() in page, (name, a.help)
            for flag in a.option_strings:
                assert flag in helptext and flag in page


def _yaml_key_tuples() -> set[str]:
    """Every string in the key tuples the YAML loaders pass to ``mapping``, read
    from their source (not by importing them)."""
    keys: set[str] = set()
    for f in ("yaml_units.py", "yaml_orchestration.py"):
        tree = ast.parse((ROOT / "aeterna" / "loader" / f).read_text())
        tuples = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "mapping" and len(node.args) == 3):
                arg = node.args[2]
                if isinstance(arg, ast.Name):
                    arg = tuples[arg.id]
                assert isinstance(arg, ast.Tuple), ast.dump(arg)
                keys |= {e.value for e in arg.elts if isinstance(e, ast.Constant)}
    return keys


def test_aeterna_unit_5_has_every_yaml_and_x_aeterna_key() -> None:
    page = _plain(manpages.aeterna_unit_5())
    documented = {line[3:].strip() for line in page.splitlines() if line.startswith(".B ")}
    leaves = {d.rsplit(".", 1)[-1].replace("[]", "") for d in documented}
    missing = _yaml_key_tuples() - leaves
    assert not missing, f"YAML keys missing from aeterna.unit(5): {sorted(missing)}"
    for key in AETERNA:
        assert f"{key}=" in documented, key
    # A few paths in full, with what the loader expects of them.
    found = dict(manpages.yaml_keys())
    assert found["service.sockets"] == "a list of mappings"
    assert found["service.sockets[].listen"]
    assert found["orchestration.canary.soak_time"].startswith("a duration")
    assert found["service.restart"].startswith("one of no | on-success")


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) is not installed")
def test_the_pages_render_without_warnings(tmp_path: Path) -> None:
    assert manpages.main(["manpages.py", str(tmp_path)]) == 0
    for name in ("aeterna.1", "aeterna.unit.5"):
        r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(tmp_path / name)],
                           capture_output=True, text=True, timeout=60,
                           env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        assert r.returncode == 0 and r.stderr == "", (name, r.stderr)
        assert "aeterna" in r.stdout
