"""The ``aeterna`` command as a user runs it: ``validate`` prints located errors, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BASE = "service:\n  name: a\n  command: [x]\n"


def test_validate_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "u.yaml").write_text(BASE + "  stop_signal: SIGFOO\n")
    r = subprocess.run([sys.executable, "-m", "aeterna.cli", "validate", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 2
    assert r.stderr == (f"{tmp_path}/u.yaml:4: service.stop_signal: expected a signal name "
                        "like \"SIGTERM\", found 'SIGFOO'\n")
    assert "Traceback" not in r.stderr


def test_validate_cli_on_missing_path(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "aeterna.cli", "validate", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 2
    assert r.stderr == f"{tmp_path}/x: no such file or directory\n"
