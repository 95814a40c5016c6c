"""Finding the main process of a ``Type=forking`` daemon once its parent has exited.

systemd reads ``PIDFile=``, or with ``GuessMainPID=yes`` takes the one process
left in the unit's cgroup. Aeterna makes no cgroups; as PID 1 or a child
subreaper, though, the daemon's orphaned process is re-parented to the manager,
so the guess is "the one child of ours that nobody else owns".
"""

from __future__ import annotations

import os


def read_pid_file(path: str) -> int | None:
    """The pid in ``path`` if it names a live process; None if not (yet) there."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) <= 1:
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def children_of(parent: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``parent``, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and fields[0] != b"Z" and int(fields[1]) == parent:
            out.append(int(entry))
    return out


def group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
