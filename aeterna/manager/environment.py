"""What a process is started with: environment, identity, fds (systemd's rules).

Pure but for the user/group look-ups and EnvironmentFile= reads; raises
OSError for a missing user, group or required environment file.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import TYPE_CHECKING, Any

from ..linux.spawn import SpawnRequest
from ..model import NotifyAccess, Service, StandardInput, UnitSpec

if TYPE_CHECKING:
    from ..unit.runtime import UnitRuntime


def build_request(runtime: UnitRuntime, spec: UnitSpec, generation: int,
                  base_env: dict[str, str], notify_path: str,
                  nofile: int | None = None) -> SpawnRequest:
    """Everything but the output pipes; raises OSError for a bad user or env file.

    The environment follows systemd's rules: LISTEN_* only when there are fds
    (sockets first, then the fd store), NOTIFY_SOCKET only when NotifyAccess
    is not none, WATCHDOG_USEC/WATCHDOG_PID only with a watchdog.
    """
    svc = spec.service
    env = dict(base_env)
    for path, optional in svc.env_files:
        env.update(read_env_file(path, optional))
    env.update(svc.env)
    env["AETERNA_UNIT"] = spec.name
    env["AETERNA_GENERATION"] = str(generation)
    pid_env: list[str] = []
    socket_fds = [lst.fd for lst in runtime.listeners]
    names = [lst.spec.name for lst in runtime.listeners]
    stored = runtime.fdstore.fds() if runtime.fdstore is not None else []
    if runtime.fdstore is not None:
        names += runtime.fdstore.names()
    fds = socket_fds + stored
    if fds:
        env["LISTEN_FDS"] = str(len(fds))
        env["LISTEN_FDNAMES"] = ":".join(names)
        pid_env.append("LISTEN_PID")
    # systemd gives NOTIFY_SOCKET to the main process iff NotifyAccess is not none.
    if svc.effective_notify_access() is not NotifyAccess.NONE:
        env["NOTIFY_SOCKET"] = notify_path
        if svc.fd_store_max > 0:
            env["FDSTORE"] = str(svc.fd_store_max)
    if svc.watchdog_sec > 0:
        env["WATCHDOG_USEC"] = str(int(svc.watchdog_sec * 1e6))
        pid_env.append("WATCHDOG_PID")
    uid = gid = None
    groups: tuple[int, ...] | None = None
    if svc.user:
        pw = _getpw(svc.user)
        uid, gid = pw.pw_uid, pw.pw_gid
        groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
        env.update(USER=pw.pw_name, LOGNAME=pw.pw_name, HOME=pw.pw_dir)
    if svc.group:
        gid = _getgr(svc.group)
        if groups is None:
            groups = (gid,)
    if svc.supplementary_groups:
        base = groups if groups is not None else (os.getgid(),)
        groups = tuple(dict.fromkeys((*base, *(_getgr(g) for g in svc.supplementary_groups))))
    for dirs in svc.directories:
        # systemd: RUNTIME_DIRECTORY=, STATE_DIRECTORY=... the absolute paths, ":"-joined.
        env[f"{dirs.kind.name}_DIRECTORY"] = ":".join(dirs.paths)
    argv = expand_command(svc.command, env, spec.name) if svc.expand_env else svc.command
    cwd = svc.working_directory
    if cwd == "~":
        cwd = env.get("HOME", "/")
    return SpawnRequest(argv=argv, env=env, cwd=cwd,
                        uid=uid, gid=gid, groups=groups, argv0=svc.argv0,
                        pass_fds=tuple(fds), blocking_fds=frozenset(socket_fds),
                        # StandardInput=socket: the first listener on fd 0 too (systemd).
                        stdin=socket_fds[0] if svc.stdin is StandardInput.SOCKET
                        and socket_fds else None,
                        pid_env=tuple(pid_env), nofile=svc.limit_nofile or nofile,
                        limits=svc.limits, umask=svc.umask, nice=svc.nice,
                        oom_score_adj=svc.oom_score_adjust)


def identity(svc: Service) -> tuple[int | None, int | None]:
    """User=/Group= as (uid, gid); None where not set. OSError for an unknown name."""
    uid = gid = None
    if svc.user:
        pw = _getpw(svc.user)
        uid, gid = pw.pw_uid, pw.pw_gid
    if svc.group:
        gid = _getgr(svc.group)
    return uid, gid


def expand_command(argv: tuple[str, ...], env: dict[str, str], unit: str) -> tuple[str, ...]:
    """systemd's exec-time expansion of one command; OSError if nothing is left."""
    from ..loader.systemd_words import expand_exec_env

    out = expand_exec_env(argv, env)
    if not out:
        raise OSError(f"{unit}: the command {' '.join(argv)!r} expanded to nothing")
    return out


def with_(req: SpawnRequest, **changes: Any) -> SpawnRequest:
    from dataclasses import replace

    return replace(req, **changes)


def _getpw(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise OSError(f"no such user: {name!r}") from None


def _getgr(name: str) -> int:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise OSError(f"no such group: {name!r}") from None


def read_env_file(path: str, optional: bool) -> dict[str, str]:
    """systemd's EnvironmentFile=: KEY=VALUE lines, # and ; comments, optional quotes."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        if optional:
            return {}
        raise
    env: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, eq, value = line.partition("=")
        if not eq:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env

