"""Print what a socket-activated process was given, as one JSON line: ``PROBE {...}``.

The fd list is taken first, before any import opens anything. Used to compare
Aeterna's child environment with systemd-socket-activate's, and to catch fds
leaked from the manager into its children.
"""

import os


def _open_fds() -> list[int]:
    # listdir opens (and closes) a directory fd of its own: it shows in the
    # listing, so keep only the fds still open once it has returned.
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.get_inheritable(int(name))
        except OSError:
            continue
        fds.append(int(name))
    return sorted(fds)


OPEN_FDS = _open_fds()

import fcntl  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402


def _target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"?{exc.errno}"


def _describe(fd: int) -> dict:
    info: dict = {
        "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        "nonblock": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
    }
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode):
        info["kind"] = "fifo" if stat.S_ISFIFO(st.st_mode) else "other"
        return info
    s = socket.socket(fileno=os.dup(fd))
    try:
        local = s.getsockname()
        if isinstance(local, bytes):
            local = "@" + local[1:].decode(errors="replace")
        info.update(
            kind="socket",
            family=s.family.name,
            type=s.type.name,
            listening=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
            local=list(local) if isinstance(local, tuple) else local,
        )
    finally:
        s.close()
    return info


def main() -> None:
    env = os.environ
    n = int(env.get("LISTEN_FDS", "0") or 0)
    pid = env.get("LISTEN_PID")
    report = {
        "pid": os.getpid(),
        "env": {k: env[k] for k in sorted(env) if k.startswith(("LISTEN_", "NOTIFY_",
                                                                "WATCHDOG_", "FDSTORE"))},
        "listen_pid_is_me": pid is not None and pid == str(os.getpid()),
        "fds": {str(fd): _describe(fd) for fd in range(3, 3 + n)},
        "open_fds": OPEN_FDS,
        "targets": {str(fd): _target(fd) for fd in OPEN_FDS},
    }
    print("PROBE " + json.dumps(report, sort_keys=True), flush=True)
    if len(sys.argv) > 1 and sys.argv[1] == "--wait":
        # Stay up (for tests that look at the process from outside).
        import time

        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 30)


if __name__ == "__main__":
    main()
