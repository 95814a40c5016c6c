"""orchestration.watch / WatchPaths=: the loaders, the inotify event parser, the watch rules."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aeterna.linux import inotify
from aeterna.loader import load_paths
from aeterna.loader.errors import UnitError
from aeterna.loader.yaml_units import load_yaml_unit
from aeterna.manager.watching import concerns, rules_for

BASE = "service:\n  name: web\n  command: [sleep, '1']\norchestration:\n"


def test_yaml_watch_and_debounce() -> None:
    u = load_yaml_unit(BASE + "  watch: [/etc/app, /srv/code/app.py]\n"
                       "  watch_debounce: 250ms\n", "u.yaml")
    assert u.orchestration.watch == ("/etc/app", "/srv/code/app.py")
    assert u.orchestration.watch_debounce == 0.25
    assert load_yaml_unit(BASE + "  strategy: hot-relay\n", "u.yaml").orchestration.watch == ()


@pytest.mark.parametrize(("value", "message"), [
    ("[etc/app]", 'u.yaml:5: orchestration.watch[0]: expected an absolute path like '
                  '"/etc/app/config", found \'etc/app\''),
    ("/etc/app", "u.yaml:5: orchestration.watch: expected a list"),
    ("['']", "u.yaml:5: orchestration.watch[0]: expected a non-empty string"),
])
def test_yaml_watch_errors_name_file_line_and_key(value: str, message: str) -> None:
    with pytest.raises(UnitError) as exc:
        load_yaml_unit(BASE + f"  watch: {value}\n", "u.yaml")
    assert str(exc.value).startswith(message), str(exc.value)


def test_ini_watch_paths(tmp_path: Path) -> None:
    (tmp_path / "web.service").write_text(
        "[Service]\nExecStart=/bin/sleep 1\n[X-Aeterna]\nWatchPaths=/etc/a /etc/b\n"
        "WatchPaths=/etc/c\nWatchDebounceSec=2s\n")
    (u,) = load_paths([str(tmp_path / "web.service")]).units
    assert u.orchestration.watch == ("/etc/a", "/etc/b", "/etc/c")
    assert u.orchestration.watch_debounce == 2.0


def test_ini_watch_paths_relative_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "web.service").write_text(
        "[Service]\nExecStart=/bin/sleep 1\n[X-Aeterna]\nWatchPaths=conf\n")
    with pytest.raises(Exception) as exc:
        load_paths([str(tmp_path / "web.service")])
    assert "web.service:4: X-Aeterna.WatchPaths: expected an absolute path, found 'conf'" \
        in str(exc.value)


def _event(wd: int, mask: int, cookie: int, name: bytes) -> bytes:
    padded = name + b"\0" * (-(len(name) + 1) % 16 + 1) if name else b""
    return struct.pack("iIII", wd, mask, cookie, len(padded)) + padded


@given(st.lists(st.tuples(st.integers(-1, 2**31 - 1), st.integers(0, 2**32 - 1),
                          st.integers(0, 2**32 - 1),
                          st.binary(max_size=40).filter(lambda b: b"\0" not in b))))
def test_parse_reads_back_what_the_kernel_writes(events: list[tuple[int, int, int, bytes]]) \
        -> None:
    buf = b"".join(_event(*e) for e in events)
    assert inotify.parse(buf) == [inotify.Event(w, m, c, os.fsdecode(n))
                                  for w, m, c, n in events]


@given(st.binary(max_size=200))
def test_parse_never_raises_on_garbage(buf: bytes) -> None:
    assert isinstance(inotify.parse(buf), list)


def test_rules_directory_and_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    u = load_yaml_unit(BASE + f"  watch: [{tmp_path}/conf, {tmp_path}/app.py, "
                       f"{tmp_path}/conf/]\n", "u.yaml")
    rules = rules_for([u])
    assert rules == {str(tmp_path / "conf"): [("web", None), ("web", None)],
                     str(tmp_path): [("web", "app.py")]}


def test_a_file_is_concerned_by_its_name_and_by_kubernetes_atomic_writer_names() -> None:
    assert concerns("app.conf", "app.conf")
    assert concerns("app.conf", "..data")
    assert concerns("app.conf", "..2026_12_02_17_00_01.123")
    assert not concerns("app.conf", "other.conf")
    assert not concerns("app.conf", ".app.conf.swp")
    assert concerns(None, "anything")


def test_inotify_sees_a_rename_over_a_symlink(tmp_path: Path) -> None:
    ino = inotify.Inotify()
    try:
        ino.add(str(tmp_path))
        os.symlink("a", tmp_path / "..data_tmp")
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        seen = [(e.name, e.mask & (inotify.IN_CREATE | inotify.IN_MOVED_FROM
                                   | inotify.IN_MOVED_TO)) for e in ino.read()]
        assert seen == [("..data_tmp", inotify.IN_CREATE), ("..data_tmp", inotify.IN_MOVED_FROM),
                        ("..data", inotify.IN_MOVED_TO)]
        (tmp_path / "file").write_text("")
        with pytest.raises(NotADirectoryError):  # IN_ONLYDIR: files are watched by directory
            ino.add(str(tmp_path / "file"))
    finally:
        ino.close()
