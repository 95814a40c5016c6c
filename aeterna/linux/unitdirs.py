"""The RuntimeDirectory= family on disk: made before a unit starts, removed at stop.

As systemd does (systemd.exec(5)): each directory and its missing parents are
made, the directory itself gets the unit's User=/Group= and its ``*Mode=``
(also when it already existed: a container's /run starts empty, a host's may
hold one from an earlier run); parents are root's, 0755. Only runtime
directories are removed when the unit stops, unless RuntimeDirectoryPreserve=.
"""

from __future__ import annotations

import os
import shutil

from ..model import DirectoryKind, Service


def prepare(svc: Service, uid: int | None, gid: int | None) -> None:
    """Make every directory of ``svc``; raise OSError naming the one that failed."""
    for dirs in svc.directories:
        for path in dirs.paths:
            try:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                try:
                    os.mkdir(path, dirs.mode)
                except FileExistsError:
                    if not os.path.isdir(path) or os.path.islink(path):
                        raise
                os.chmod(path, dirs.mode)  # mkdir's mode is cut by the umask
                if uid is not None or gid is not None:
                    os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
            except OSError as exc:
                raise OSError(exc.errno, f"{dirs.kind.value} directory {path}: "
                              f"{exc.strerror}") from None


def remove_runtime(svc: Service) -> list[str]:
    """Remove the unit's runtime directories (trees); the paths removed."""
    gone: list[str] = []
    for dirs in svc.directories:
        if dirs.kind is not DirectoryKind.RUNTIME:
            continue
        for path in dirs.paths:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
                gone.append(path)
    return gone
