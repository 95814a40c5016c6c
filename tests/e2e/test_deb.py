"""The Debian packages: built by ``make deb``'s script, clean under lintian, and
installed, used and purged in a fresh Debian 12 root.

The build is cached in build/deb (rebuilt only when the sources changed); the
root is the cached tarball of ``packaging/rootfs.sh`` (mmdebstrap
--variant=apt from the mirror apt here uses), unpacked into a temporary
directory and entered with ``unshare --pid --fork --mount-proc chroot``, so
that Aeterna runs there as PID 1. piuparts is ``make deb-check``'s (minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, can_unshare_pid, is_root

DEB_DIR = ROOT / "build" / "deb"
ROOTFS = ROOT / "build" / "rootfs" / "bookworm.tar"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def debs() -> list[Path]:
    r = subprocess.run([str(ROOT / "packaging" / "deb" / "build.sh"), str(DEB_DIR)],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    main = sorted(DEB_DIR.glob("aeterna_*.deb"))
    sdk = sorted(DEB_DIR.glob("python3-aeterna-sdk_*_all.deb"))
    assert len(main) == 1 and len(sdk) == 1, os.listdir(DEB_DIR)
    return [main[0], sdk[0]]


def _info(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True,
                          text=True, timeout=30, check=True).stdout.strip()


def _contents(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return [line.split()[-1].lstrip(".") for line in out.splitlines()]


def test_the_packages_are_what_the_issue_asks(debs: list[Path]) -> None:
    main, sdk = debs
    assert _info(main, "Architecture") not in ("all", "")
    depends = _info(main, "Depends")
    for d in ("python3 (>= 3.11~)", "python3-yaml", "python3-jinja2", "python3-psutil"):
        assert d in depends, depends
    files = _contents(main)
    for f in ("/usr/bin/aeterna", "/lib/systemd/system/aeterna.service",
              "/etc/aeterna/units/example.yaml.disabled", "/var/lib/aeterna/",
              "/usr/share/man/man1/aeterna.1.gz", "/usr/share/man/man5/aeterna.unit.5.gz",
              "/usr/share/doc/aeterna/copyright", "/usr/share/doc/aeterna/changelog.Debian.gz"):
        assert f in files, f
    assert any(f.endswith(".so") for f in files)  # the C extension ...
    assert not any(f.endswith((".c", ".pyi")) for f in files)  # ... without its source
    assert not any("aeterna_sdk" in f for f in files)
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(main)], capture_output=True,
                               timeout=30, check=True).stdout
    assert b"example.yaml.disabled" in conffiles
    sdk_files = _contents(sdk)
    assert _info(sdk, "Architecture") == "all"
    assert any(f.endswith("/aeterna_sdk/client.py") for f in sdk_files)
    assert not any("/aeterna/" in f or f.endswith("/bin/aeterna") for f in sdk_files)
    unit = (ROOT / "packaging" / "deb" / "debian" / "aeterna.service").read_text()
    for line in ("Type=notify", "KillMode=mixed", "Restart=on-failure",
                 "ExecReload=/usr/bin/aeterna --control /run/aeterna/control.sock reload"):
        assert line in unit.splitlines(), line


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed")
def test_lintian_has_no_warning(debs: list[Path]) -> None:
    r = subprocess.run(["lintian", "--fail-on", "warning", *map(str, debs)],
                       capture_output=True, text=True, timeout=300,
                       env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert not [line for line in r.stdout.splitlines() if line[:2] in ("E:", "W:")]


def _in_root(root: Path, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with /bin/sh in the root, as PID 1 of a new pid namespace."""
    return subprocess.run(["unshare", "--mount", "--pid", "--fork",
                           f"--mount-proc={root / 'proc'}", "chroot", str(root),
                           "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8",
                               "DEBIAN_FRONTEND": "noninteractive"})


@pytest.mark.skipif(not is_root(), reason="needs root (chroot, unshare, apt-get)")
@pytest.mark.skipif(not can_unshare_pid(), reason="cannot make a pid namespace here")
def test_install_run_and_purge_in_a_fresh_debian_root(debs: list[Path], tmp_path: Path) -> None:
    r = subprocess.run([str(ROOT / "packaging" / "rootfs.sh"), str(ROOTFS)],
                       capture_output=True, text=True, timeout=960, cwd=ROOT)
    if r.returncode == 3:
        pytest.skip(f"no Debian 12 root: {r.stdout.strip()}")
    assert r.returncode == 0, r.stdout + r.stderr
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(ROOTFS), "-C", str(root)], check=True, timeout=120)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    for deb in debs:
        shutil.copy(deb, root / "tmp" / deb.name)
    before = set(_in_root(root, "find / -xdev -name '*aeterna*' -not -path '/tmp/*'")
                 .stdout.split())
    assert before == set()

    names = " ".join(f"/tmp/{d.name}" for d in debs)
    r = _in_root(root, f"apt-get update -q && apt-get install -y -q {names}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    r = _in_root(root, "aeterna --version && aeterna validate /etc/aeterna/units")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("aeterna ")
    assert "no unit files" in r.stderr  # only the disabled example: a warning

    # A unit run by Aeterna as PID 1: it reports who PID 1 is, then exits 7; Aeterna
    # exits with its status, as tini.
    (root / "tmp" / "units").mkdir()
    (root / "tmp" / "units" / "hello.yaml").write_text(
        "service:\n  name: hello\n  command: [/bin/sh, -c, "
        "'echo pid1=$(tr \"\\\\0\" \" \" < /proc/1/cmdline); exit 7']\n")
    r = _in_root(root, "exec aeterna --control /run/aeterna/control.sock start -c /tmp/units",
                 timeout=60)
    assert r.returncode == 7, r.stdout + r.stderr
    assert "pid1=/usr/bin/python3 /usr/bin/aeterna" in r.stdout + r.stderr
    assert "manager.started pid=1 " in r.stderr

    r = _in_root(root, "python3 -c 'from aeterna_sdk import AeternaClient; "
                       "from aeterna import AeternaClient as A; assert A is AeternaClient; "
                       "print(AeternaClient.__module__)'")
    assert r.returncode == 0 and r.stdout.strip() == "aeterna_sdk.client", r.stderr

    # SRP's persist_dir would leave state here: the purge must take it too.
    (root / "var" / "lib" / "aeterna" / "checkpoint").write_text("state")
    r = _in_root(root, "apt-get purge -y -q aeterna python3-aeterna-sdk && "
                       "apt-get autoremove --purge -y -q")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    left = _in_root(root, "find / -xdev -name '*aeterna*' -not -path '/tmp/*'").stdout.split()
    assert left == [], left
    assert not (root / "etc" / "aeterna").exists()
    assert not (root / "var" / "lib" / "aeterna").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing")
def test_systemd_analyze_verifies_the_service_and_socket(tmp_path: Path) -> None:
    """systemd's own checker on aeterna.service and the example aeterna.socket, with the
    ExecStart= programs and the Documentation= man pages it points at present."""
    sys.path.insert(0, str(ROOT / "packaging"))
    import manpages

    for section in ("1", "5"):
        (tmp_path / "man" / f"man{section}").mkdir(parents=True)
    assert manpages.main(["manpages.py", str(tmp_path / "out")]) == 0
    shutil.copy(tmp_path / "out" / "aeterna.1", tmp_path / "man" / "man1")
    shutil.copy(tmp_path / "out" / "aeterna.unit.5", tmp_path / "man" / "man5")
    aeterna = shutil.which("aeterna", path=str(Path(sys.executable).parent))
    assert aeterna is not None
    service = (ROOT / "packaging" / "deb" / "debian" / "aeterna.service").read_text()
    (tmp_path / "aeterna.service").write_text(service.replace("/usr/bin/aeterna", aeterna))
    shutil.copy(ROOT / "packaging" / "deb" / "aeterna.socket", tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", "./aeterna.service", "./aeterna.socket"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={"PATH": SYSTEM_PATH, "MANPATH": str(tmp_path / "man")})
    assert r.returncode == 0 and r.stderr == "", r.stderr
