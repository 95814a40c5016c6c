"""systemd.exec(5) and systemd.unit(5) directives beyond the command lines.

Resource limits (``Limit*=``), ``UMask=``, ``Nice=``, ``OOMScoreAdjust=``,
``SupplementaryGroups=``, the ``RuntimeDirectory=`` family, ``Condition*=`` and
``Assert*=``, and exit-status lists (names as systemd's ``exit_status_from_string``
knows them). Pure: each handler turns one value into model values in the
draft, or raises ValueError("expected ..., found ...").
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Any

from ..model import Condition, DirectoryKind, Source
from .durations import parse_duration, parse_size
from .systemd_values import expect, is_signal

if TYPE_CHECKING:
    from .ini import Entry
    from .systemd_directives import Draft, Handler

INFINITY = -1  # the model's "RLIM_INFINITY"

# name -> (Linux's RLIMIT_* number, kind of value); numbers, since Python's resource
# module lacks some (RLIMIT_LOCKS)
LIMITS: dict[str, tuple[int, str]] = {
    "LimitCPU": (0, "seconds"),
    "LimitFSIZE": (1, "bytes"),
    "LimitDATA": (2, "bytes"),
    "LimitSTACK": (3, "bytes"),
    "LimitCORE": (4, "bytes"),
    "LimitRSS": (5, "bytes"),
    "LimitNOFILE": (7, "number"),
    "LimitAS": (9, "bytes"),
    "LimitNPROC": (6, "number"),
    "LimitMEMLOCK": (8, "bytes"),
    "LimitLOCKS": (10, "number"),
    "LimitSIGPENDING": (11, "number"),
    "LimitMSGQUEUE": (12, "bytes"),
    "LimitNICE": (13, "nice"),
    "LimitRTPRIO": (14, "number"),
    "LimitRTTIME": (15, "usec"),
}
_LIMIT_WHAT = {"seconds": "a time span like 30s", "bytes": "a size like 64M",
               "number": "a whole number", "nice": "a nice level from -20 to 19 (+N or -N) "
               "or a raw limit from 0 to 40", "usec": "a time span like 500ms"}

# systemd's exit-status names: LSB, BSD sysexits(3), and its own 2xx codes.
EXIT_STATUS_NAMES: dict[str, int] = {
    "SUCCESS": 0, "FAILURE": 1, "INVALIDARGUMENT": 2, "NOTIMPLEMENTED": 3,
    "NOPERMISSION": 4, "NOTINSTALLED": 5, "NOTCONFIGURED": 6, "NOTRUNNING": 7,
    "USAGE": 64, "DATAERR": 65, "NOINPUT": 66, "NOUSER": 67, "NOHOST": 68,
    "UNAVAILABLE": 69, "SOFTWARE": 70, "OSERR": 71, "OSFILE": 72, "CANTCREAT": 73,
    "IOERR": 74, "TEMPFAIL": 75, "PROTOCOL": 76, "NOPERM": 77, "CONFIG": 78,
    "CHDIR": 200, "NICE": 201, "FDS": 202, "EXEC": 203, "MEMORY": 204, "LIMITS": 205,
    "OOM_ADJUST": 206, "SIGNAL_MASK": 207, "STDIN": 208, "STDOUT": 209, "CHROOT": 210,
    "IOPRIO": 211, "TIMERSLACK": 212, "SECUREBITS": 213, "SETSCHEDULER": 214,
    "CPUAFFINITY": 215, "GROUP": 216, "USER": 217, "CAPABILITIES": 218, "CGROUP": 219,
    "SETSID": 220, "CONFIRM": 221, "STDERR": 222, "PAM": 224, "NETWORK": 225,
    "NAMESPACE": 226, "NO_NEW_PRIVILEGES": 227, "SECCOMP": 228, "SELINUX_CONTEXT": 229,
    "PERSONALITY": 230, "APPARMOR_PROFILE": 231, "ADDRESS_FAMILIES": 232,
    "RUNTIME_DIRECTORY": 233, "CHOWN": 235, "SMACK_PROCESS_LABEL": 236, "KEYRING": 237,
    "STATE_DIRECTORY": 238, "CACHE_DIRECTORY": 239, "LOGS_DIRECTORY": 240,
    "CONFIGURATION_DIRECTORY": 241, "NUMA_POLICY": 242, "CREDENTIALS": 243, "BPF": 245,
}

DIRECTORY_KEYS = {"RuntimeDirectory": DirectoryKind.RUNTIME,
                  "StateDirectory": DirectoryKind.STATE,
                  "CacheDirectory": DirectoryKind.CACHE,
                  "LogsDirectory": DirectoryKind.LOGS,
                  "ConfigurationDirectory": DirectoryKind.CONFIGURATION}

CONDITION_CHECKS = ("PathExists", "PathExistsGlob", "PathIsDirectory", "PathIsSymbolicLink",
                    "PathIsMountPoint", "PathIsReadWrite", "PathIsEncrypted",
                    "DirectoryNotEmpty", "FileNotEmpty", "FileIsExecutable", "Environment",
                    "User", "Group", "Virtualization", "Host", "KernelCommandLine",
                    "Security", "Capability", "ACPower", "NeedsUpdate", "FirstBoot",
                    "ControlGroupController", "Memory", "CPUs", "OSRelease",
                    "Architecture", "Firmware", "KernelVersion", "Credential",
                    "CPUFeature", "MemoryPressure", "CPUPressure", "IOPressure")
# The checks Aeterna evaluates; the others are warned about and taken as passed.
EVALUATED = frozenset({"PathExists", "PathExistsGlob", "PathIsDirectory",
                       "PathIsSymbolicLink", "PathIsReadWrite", "DirectoryNotEmpty",
                       "FileNotEmpty", "FileIsExecutable", "Environment", "User", "Group",
                       "Host", "PathIsMountPoint", "Virtualization", "Capability",
                       "Security", "KernelCommandLine", "NeedsUpdate", "FirstBoot"})


def _limit_side(text: str, kind: str) -> int:
    if text == "infinity":
        return INFINITY
    if kind == "number":
        if not re.fullmatch(r"[0-9]{1,19}", text):
            raise ValueError(text)
        return int(text)
    if kind == "bytes":
        return parse_size(text)
    if kind == "seconds":
        seconds = parse_duration(text)
        return INFINITY if math.isinf(seconds) else math.ceil(seconds)
    if kind == "usec":
        seconds = parse_duration(text if re.search(r"[a-z]", text) else text + "us")
        return INFINITY if math.isinf(seconds) else round(seconds * 1e6)
    # LimitNICE=: +N/-N is a nice level (20 - N as the raw limit), else the raw limit.
    if re.fullmatch(r"[+-][0-9]{1,2}", text) and -20 <= int(text) <= 19:
        return 20 - int(text)
    if re.fullmatch(r"[0-9]{1,2}", text) and int(text) <= 40:
        return int(text)
    raise ValueError(text)


def parse_limit(key: str, value: str) -> tuple[int, int, int]:
    """``Limit*=``: VALUE (soft and hard) or SOFT:HARD, each maybe ``infinity``."""
    number, kind = LIMITS[key]
    soft_text, colon, hard_text = value.partition(":")
    try:
        soft = _limit_side(soft_text.strip(), kind)
        hard = _limit_side(hard_text.strip(), kind) if colon else soft
    except (ValueError, OverflowError):
        raise expect(f"{_LIMIT_WHAT[kind]}, SOFT:HARD or infinity", value) from None
    if hard != INFINITY and (soft == INFINITY or soft > hard):
        raise expect("a soft limit no higher than the hard one", value)
    return number, soft, hard


def _limit(key: str) -> Handler:
    def handler(d: Draft, e: Entry, v: str) -> None:
        limits: dict[int, tuple[int, int, int]] = d.extra.get("limits", ({}, e))[0]
        number = LIMITS[key][0]
        if v == "":
            limits.pop(number, None)
        else:
            limits[number] = parse_limit(key, v)
        d.extra["limits"] = (limits, e)
    return handler


def _umask(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.service.pop("umask", None)
    elif re.fullmatch(r"[0-7]{1,4}", v):
        d.service["umask"] = (int(v, 8), e)
    else:
        raise expect("an octal mask like 0022", v)


def _nice(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.service.pop("nice", None)
    elif re.fullmatch(r"[+-]?[0-9]{1,2}", v) and -20 <= int(v) <= 19:
        d.service["nice"] = (int(v), e)
    else:
        raise expect("a nice level from -20 to 19", v)


def _oom_score_adjust(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.service.pop("oom_score_adjust", None)
    elif re.fullmatch(r"[+-]?[0-9]{1,4}", v) and -1000 <= int(v) <= 1000:
        d.service["oom_score_adjust"] = (int(v), e)
    else:
        raise expect("a number from -1000 to 1000", v)


def _supplementary_groups(d: Draft, e: Entry, v: str) -> None:
    groups: list[str] = [] if v == "" else list(d.extra.get("groups", ([], e))[0])
    for word in v.split():
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", word):
            raise expect("group names or numbers", word)
        groups.append(word)
    d.extra["groups"] = (groups, e)


def _directory(key: str) -> Handler:
    """``RuntimeDirectory=`` and its family: relative paths, several per line."""
    def handler(d: Draft, e: Entry, v: str) -> None:
        paths: list[str] = [] if v == "" else list(d.extra.get(key, ([], e))[0])
        for word in v.split():
            name = word.split(":", 1)[0]  # "foo:bar" adds a symlink bar; the dir is foo
            parts = name.split("/")
            if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise expect("relative paths like nginx or app/cache, without . or ..", word)
            if ":" in word:
                d.warn(e, f"Service.{key}", f"the symlink part of {word!r} is not "
                       "implemented; only the directory is made")
            paths.append(name)
        d.extra[key] = (paths, e)
    return handler


def _directory_mode(key: str) -> Handler:
    def handler(d: Draft, e: Entry, v: str) -> None:
        if v == "":
            d.extra.pop(key, None)
        elif re.fullmatch(r"0?[0-7]{1,4}", v):  # 02755: setgid, as journald's logs
            d.extra[key] = (int(v, 8), e)
        else:
            raise expect("an octal mode like 0755", v)
    return handler


def _preserve(d: Draft, e: Entry, v: str) -> None:
    if v == "":
        d.service.pop("runtime_directory_preserve", None)
        return
    value = {"1": "yes", "true": "yes", "on": "yes", "0": "no", "false": "no",
             "off": "no"}.get(v.lower(), v.lower())
    if value not in ("yes", "no", "restart"):
        raise expect("yes, no or restart", v)
    d.service["runtime_directory_preserve"] = (value, e)


def _condition(check: str, assertion: bool) -> Handler:
    def handler(d: Draft, e: Entry, v: str) -> None:
        if v == "":  # an empty assignment resets every condition (or assertion) before it
            d.conditions[:] = [c for c in d.conditions if c.assertion != assertion]
            return
        rest = v
        trigger = rest.startswith("|")
        rest = rest[1:].lstrip() if trigger else rest
        negate = rest.startswith("!")
        rest = rest[1:].lstrip() if negate else rest
        if check.startswith(("Path", "Directory", "File")) and not rest.startswith("/"):
            raise expect("an absolute path (maybe after | and !)", v)
        kind = "Assert" if assertion else "Condition"
        if check not in EVALUATED:
            d.warn(e, f"Unit.{kind}{check}", f"not evaluated by Aeterna; taken as "
                   f"{'passed' if not negate else 'passed (negated)'}")
        d.conditions.append(Condition(check, rest, negate, trigger, assertion,
                                      Source(e.file, e.line)))
    return handler


def exit_statuses(v: str, what: str, d: Draft, e: Entry,
                  signals_ok: bool = True) -> tuple[list[int], list[str]]:
    """Exit codes (0-255 or systemd's names such as DATAERR) and signal names."""
    codes: list[int] = []
    signals: list[str] = []
    for word in v.split():
        if re.fullmatch(r"[0-9]{1,3}", word) and int(word) <= 255:
            codes.append(int(word))
        elif word.upper() in EXIT_STATUS_NAMES:
            codes.append(EXIT_STATUS_NAMES[word.upper()])
        elif signals_ok and is_signal(word) and not word.isdigit():
            name = word.upper()
            signals.append(name if name.startswith("SIG") else "SIG" + name)
        else:
            raise expect(f"exit codes from 0 to 255, exit-status names like DATAERR or "
                         f"signal names ({what})", word)
    return codes, signals


def _exit_list(name: str) -> Handler:
    def handler(d: Draft, e: Entry, v: str) -> None:
        if v == "":
            d.extra.pop(name, None)
            return
        codes, signals = exit_statuses(v, name.replace("_", " "), d, e)
        old_codes, old_signals = d.extra.get(name, (([], []), e))[0]
        d.extra[name] = ((old_codes + codes, old_signals + signals), e)
    return handler


def _dynamic_user(d: Draft, e: Entry, v: str) -> None:
    from .durations import parse_bool

    try:
        on = parse_bool(v) if v else False
    except ValueError:
        raise expect("a boolean (yes or no)", v) from None
    if on:
        raise ValueError("DynamicUser=yes is not supported: Aeterna allocates no transient "
                         "users (systemd's nss-systemd module is not there to resolve them); "
                         "create a system user (adduser --system NAME) and set User=NAME "
                         "in a drop-in, with DynamicUser=no")


EXEC: dict[str, tuple[Handler, bool]] = {
    **{k: (_limit(k), False) for k in LIMITS},
    "UMask": (_umask, False),
    "Nice": (_nice, False),
    "OOMScoreAdjust": (_oom_score_adjust, False),
    "SupplementaryGroups": (_supplementary_groups, True),
    **{k: (_directory(k), True) for k in DIRECTORY_KEYS},
    **{f"{k}Mode": (_directory_mode(f"{k}Mode"), False) for k in DIRECTORY_KEYS},
    "RuntimeDirectoryPreserve": (_preserve, False),
    "RestartPreventExitStatus": (_exit_list("restart_prevent"), False),
    "RestartForceExitStatus": (_exit_list("restart_force"), False),
    "DynamicUser": (_dynamic_user, False),
}
CONDITIONS: dict[str, tuple[Handler, bool]] = {
    **{f"Condition{c}": (_condition(c, False), True) for c in CONDITION_CHECKS},
    **{f"Assert{c}": (_condition(c, True), True) for c in CONDITION_CHECKS},
}


def directories(d: Draft) -> tuple[Any, ...]:
    """The model's Directories for each kind given, as absolute paths under the
    manager's base directories (the ones %t, %S, %C, %L and %E name)."""
    from ..model import Directories

    base = {DirectoryKind.RUNTIME: d.ctx.runtime_dir, DirectoryKind.STATE: d.ctx.state_dir,
            DirectoryKind.CACHE: d.ctx.cache_dir, DirectoryKind.LOGS: d.ctx.logs_dir,
            DirectoryKind.CONFIGURATION: d.ctx.config_dir}
    out = []
    for key, kind in DIRECTORY_KEYS.items():
        if key in d.extra:
            paths = tuple(os.path.join(base[kind], p) for p in d.extra[key][0])
            mode = d.extra.get(f"{key}Mode", (0o755, None))[0]
            out.append(Directories(kind, paths, mode))
    return tuple(out)
