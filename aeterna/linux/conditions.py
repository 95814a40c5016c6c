"""Condition*=/Assert*= checks against this machine (systemd.unit(5)).

All plain conditions must hold; of the ``|`` (triggering) ones, at least one.
Checks Aeterna does not evaluate were warned about at load time and pass.
The user and group checks are about the manager's own identity, as in systemd.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import socket
from collections.abc import Iterable, Mapping

from ..model import Condition


def _check(c: Condition, env: Mapping[str, str]) -> bool:
    v = c.value
    if c.check == "PathExists":
        return os.path.lexists(v) and os.path.exists(v)
    if c.check == "PathExistsGlob":
        return bool(glob.glob(v))
    if c.check == "PathIsDirectory":
        return os.path.isdir(v)
    if c.check == "PathIsSymbolicLink":
        return os.path.islink(v)
    if c.check == "PathIsMountPoint":
        return os.path.ismount(v)
    if c.check == "PathIsReadWrite":
        return os.path.exists(v) and not _read_only(v)
    if c.check == "DirectoryNotEmpty":
        return os.path.isdir(v) and bool(os.listdir(v))
    if c.check == "FileNotEmpty":
        return os.path.isfile(v) and os.path.getsize(v) > 0
    if c.check == "FileIsExecutable":
        return os.path.isfile(v) and os.access(v, os.X_OK)
    if c.check == "Environment":
        name, eq, value = v.partition("=")
        return name in env and (not eq or env[name] == value)
    if c.check == "User":
        return _is_user(v)
    if c.check == "Group":
        return _in_group(v)
    if c.check == "Host":
        return v in (socket.gethostname(), _machine_id())
    return True  # not evaluated (warned about when the unit was loaded)


def _read_only(path: str) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _machine_id() -> str:
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _is_user(v: str) -> bool:
    uid = os.getuid()
    if v == "@system":
        return uid < 1000
    if v.isdigit():
        return int(v) == uid
    try:
        return pwd.getpwnam(v).pw_uid == uid
    except KeyError:
        return False


def _in_group(v: str) -> bool:
    mine = {os.getgid(), *os.getgroups()}
    if v.isdigit():
        return int(v) in mine
    try:
        return grp.getgrnam(v).gr_gid in mine
    except KeyError:
        return False


def first_failed(conditions: Iterable[Condition], env: Mapping[str, str]) -> Condition | None:
    """The first condition (or assertion) that does not hold, assertions first."""
    conds = sorted(conditions, key=lambda c: not c.assertion)
    for assertion in (True, False):
        group = [c for c in conds if c.assertion == assertion]
        triggers = [c for c in group if c.trigger]
        for c in group:
            if not c.trigger and _check(c, env) == c.negate:
                return c
        if triggers and all(_check(c, env) == c.negate for c in triggers):
            return triggers[0]
    return None
