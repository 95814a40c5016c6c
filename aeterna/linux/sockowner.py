"""Which process accepted a TCP connection: /proc/net/tcp{,6} plus /proc/PID/fd.

During a soak both generations accept from the same queue, so a probe that
simply connects to the unit's address may be answered by N instead of the
canary. A probe therefore connects, finds the server-side socket of its
connection (the entry whose remote end is our local address), waits until a
process has accepted it (the entry gets an inode), and looks that inode up in
the fd tables of the canary's process tree. Linux only; pure parsing aside,
it only reads /proc.
"""

from __future__ import annotations

import os
import socket

from .proc import parent_of


def _hex_addr(family: int, host: str, port: int) -> str:
    """The kernel's /proc/net/tcp spelling of an address (32-bit words, host order)."""
    packed = socket.inet_pton(family, host)
    words = [packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
    return "".join(words) + f":{port:04X}"


def server_inode(client: socket.socket) -> int | None:
    """The inode of the accepted socket at the other end of ``client``.

    None while nobody has accepted the connection yet (the entry's inode is
    0 until accept() gives it a file), or when it cannot be found.
    """
    family = client.family
    local = client.getsockname()
    peer = client.getpeername()
    want_local = _hex_addr(family, peer[0], peer[1])
    want_remote = _hex_addr(family, local[0], local[1])
    table = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    try:
        with open(table, encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == want_local and fields[2] == want_remote:
                    inode = int(fields[9])
                    return inode or None
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return None


def holders(inode: int, pids: set[int]) -> set[int]:
    """Which of ``pids`` hold ``socket:[inode]`` in their fd table."""
    target = f"socket:[{inode}]"
    found = set()
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"{base}/{name}") == target:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def tree(pid: int) -> set[int]:
    """``pid`` and its descendants, from /proc/*/stat (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ppid = parent_of(int(entry))
        if ppid is not None:
            children.setdefault(ppid, []).append(int(entry))
    out = {pid}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out
