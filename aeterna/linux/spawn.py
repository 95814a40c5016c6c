"""Start a process with exactly the fds, environment, identity and cwd it is meant to have.

We fork and exec ourselves instead of using ``subprocess``: the child must know
its own pid to set ``LISTEN_PID``/``WATCHDOG_PID`` (systemd's gotcha: the pid is
unknown before fork), its handed-down fds must land at 3, 4, ... without
clobbering one another, and ``subprocess`` would reap behind the back of our one
reaper. An exec failure is told apart from a crash by a close-on-exec pipe: EOF
means the exec happened, bytes mean it did not, and carry the errno.
"""

from __future__ import annotations

import errno as errno_mod
import fcntl
import os
import signal
import sys
from dataclasses import dataclass, field

from ..results import errno_name

try:  # optional C extension (setup.py): vfork with LISTEN_PID, see _fastspawn.c
    from . import _fastspawn
except ImportError:  # pragma: no cover - built without a C compiler
    _fastspawn = None  # type: ignore[assignment]

_FS, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()

# Signals whose disposition Python changes (SIGPIPE, SIGXFSZ are ignored by the
# interpreter; the rest get handlers from asyncio). exec() resets handled signals
# but keeps ignored ones ignored, so every one is put back to SIG_DFL in the child.
_CATCHABLE = [s for s in signal.valid_signals()
              if s not in (signal.SIGKILL, signal.SIGSTOP)]


@dataclass(frozen=True)
class SpawnRequest:
    """Everything needed to start one process."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str = ""
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None
    # fds placed at 3, 4, ... in this order, inheritable; the child owns copies.
    pass_fds: tuple[int, ...] = ()
    # Of pass_fds, the ones whose O_NONBLOCK is cleared (listening sockets).
    blocking_fds: frozenset[int] = field(default_factory=frozenset)
    # An extra fd put at a fixed number above the LISTEN_FDS range (SRP channel).
    extra_fd: tuple[int, int] | None = None  # (source fd, target number)
    stdin: int | None = None  # fd to dup onto 0 (None: /dev/null)
    stdout: int | None = None  # fd to dup onto 1 (None: inherit ours)
    stderr: int | None = None  # fd to dup onto 2
    # Environment names whose value the child sets to its own pid before exec.
    pid_env: tuple[str, ...] = ()
    argv0: str = ""
    # The child's soft RLIMIT_NOFILE (None: the manager's own, inherited).
    nofile: int | None = None
    # Limit*=: (resource, soft, hard), -1 = infinity, set exactly after ``nofile``.
    limits: tuple[tuple[int, int, int], ...] = ()
    umask: int | None = None
    nice: int | None = None
    oom_score_adj: int | None = None

    @property
    def tunes(self) -> bool:
        """Anything beyond fds, cwd and the default fd limit to apply before exec."""
        return bool(self.limits) or self.umask is not None or self.nice is not None \
            or self.oom_score_adj is not None


class SpawnError(Exception):
    """The process could not be started. ``stage`` says which step failed."""

    def __init__(self, stage: str, err: int, path: str):
        self.stage = stage
        self.errno = err
        self.path = path
        name = errno_name(err)
        super().__init__(f"{stage} {path}: {name} ({os.strerror(err)})")

    @property
    def exit_status(self) -> int:
        """The shell's convention: 127 for a missing program, 126 otherwise."""
        return 127 if self.errno == errno_mod.ENOENT and self.stage == "exec" else 126


def resolve(argv0: str, env: dict[str, str], cwd: str, check: bool = True) -> str:
    """Find the program like execvp does, with the child's PATH; raise SpawnError.

    ``check=False`` skips the checks of a path with a slash (and of ``cwd``) for a
    spawner whose child reports the chdir's and the exec's own errno anyway.
    """
    if check and cwd and not os.path.isdir(cwd):
        raise SpawnError("chdir", errno_mod.ENOENT, cwd)
    if "/" in argv0:
        path = argv0 if argv0[0] == "/" or not cwd else os.path.join(cwd, argv0)
        if not check:
            return path
        if not os.path.exists(path):
            raise SpawnError("exec", errno_mod.ENOENT, argv0)
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise SpawnError("exec", errno_mod.EACCES, path)
        return path
    # execvp's search, without importing shutil (and with it bz2, lzma...).
    denied = False
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", argv0)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = True
    raise SpawnError("exec", errno_mod.EACCES if denied else errno_mod.ENOENT, argv0)


# The exec shim of the fast path: the process that execs the daemon must carry
# its own pid in LISTEN_PID (and WATCHDOG_PID), which nobody knows before it
# exists. sh (dash on Debian) sets them and execs the program in place, so the
# pid stays the same. "$1" is the directory to change to ("" = stay).
_SHIM = '[ -z "$1" ] || cd -- "$1" || exit 200; shift; {exports}exec "$0" "$@"'
SHELL = "/bin/sh"


def spawn(req: SpawnRequest, exact_exec: bool = False) -> int:
    """Start ``req``; return the child's pid or raise SpawnError.

    The fast path is ``posix_spawn`` (vfork-style: the manager's memory is not
    copied, which for a 20 MiB Python process is most of the cost of a start).
    It is taken unless the child needs a user or group switch or another
    argv[0], or ``exact_exec`` asks for the moment of the exec itself
    (``Type=exec``): those fork and run a little Python before exec.
    """
    switches_user = req.uid is not None or req.gid is not None or req.groups is not None
    if _fastspawn is not None and not switches_user:
        return _vfork_spawn(req, resolve(req.argv[0], req.env, req.cwd, check=False))
    program = resolve(req.argv[0], req.env, req.cwd)
    if (not exact_exec and not switches_user and not req.argv0 and not req.tunes
            and os.path.exists(SHELL)):
        return _posix_spawn(req, program)
    return _fork_exec(req, program)


def _floor(req: SpawnRequest) -> int:
    """The lowest fd number above every target of ``req``'s fd layout."""
    return max(3 + len(req.pass_fds), req.extra_fd[1] + 1 if req.extra_fd else 0)


_DEVNULL: list[int] = []


def _devnull() -> int:
    """One close-on-exec /dev/null for every child's stdin, opened once."""
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _DEVNULL[0]


def _high_copies(req: SpawnRequest, temps: list[int]) -> list[tuple[int, int]]:
    """(source, target) pairs for stdio, pass_fds and extra_fd, every source a
    close-on-exec copy above the highest target (appended to ``temps``), so that
    applying the dup2s in order never overwrites a source still to be moved."""
    floor = _floor(req)

    def high(fd: int) -> int:
        temps.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor))
        return temps[-1]

    pairs = [(high(_devnull() if req.stdin is None else req.stdin), 0)]
    if req.stdout is not None:
        pairs.append((high(req.stdout), 1))
    if req.stderr is not None:
        pairs.append((high(req.stderr), 2))
    for i, fd in enumerate(req.pass_fds):
        if fd in req.blocking_fds:
            # O_NONBLOCK is on the shared open file description: clearing it
            # here is what the child would see anyway (systemd's NonBlocking=no).
            os.set_blocking(fd, True)
        pairs.append((high(fd), 3 + i))
    if req.extra_fd is not None:
        pairs.append((high(req.extra_fd[0]), req.extra_fd[1]))
    return pairs


_STAGES = ("chdir", "exec", "setrlimit", "nice", "oom_score_adj")


def _vfork_spawn(req: SpawnRequest, program: str) -> int:
    """The C extension's vfork: no copy of the manager, LISTEN_PID set by the child."""
    assert _fastspawn is not None
    # str.encode as os.fsencode does it, without its two Python calls per string.
    argv = [a.encode(_FS, _FS_ERRORS) for a in ((req.argv0 or program), *req.argv[1:])]
    env = [f"{k}={v}".encode(_FS, _FS_ERRORS) for k, v in req.env.items()
           if k not in req.pid_env]
    temps: list[int] = []
    try:
        pairs = _high_copies(req, temps)
        try:
            return int(_fastspawn.spawn(
                os.fsencode(program), argv, env, [os.fsencode(n) for n in req.pid_env], pairs,
                os.fsencode(req.cwd) if req.cwd else None,
                -1 if req.nofile is None else req.nofile, list(req.limits),
                -1 if req.umask is None else req.umask, 100 if req.nice is None else req.nice,
                -10000 if req.oom_score_adj is None else req.oom_score_adj))
        except OSError as exc:
            stage = exc.strerror if exc.strerror in _STAGES else "exec"
            raise SpawnError(stage, exc.errno or errno_mod.EIO,
                             req.cwd if stage == "chdir" else program) from None
    finally:
        for fd in temps:
            os.close(fd)


def _posix_spawn(req: SpawnRequest, program: str) -> int:
    """vfork-speed start; fds laid out by spawn file actions (all ours are CLOEXEC)."""
    argv = [program, *req.argv[1:]]
    env = {k: v for k, v in req.env.items() if k not in req.pid_env}
    if req.pid_env or req.cwd or req.nofile is not None:
        exports = "".join(f"export {name}=$$; " for name in req.pid_env)
        if req.nofile is not None:
            exports += f"ulimit -Sn {int(req.nofile)}; "
        argv = [SHELL, "-c", _SHIM.format(exports=exports), program, req.cwd, *req.argv[1:]]
    temps: list[int] = []
    try:
        actions = [(os.POSIX_SPAWN_DUP2, src, dst) for src, dst in _high_copies(req, temps)]
        try:
            return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True,
                                  setsigmask=(), setsigdef=_CATCHABLE)
        except OSError as exc:
            raise SpawnError("exec", exc.errno or errno_mod.EIO, argv[0]) from None
    finally:
        for fd in temps:
            os.close(fd)


def _fork_exec(req: SpawnRequest, program: str) -> int:
    """Fork, set up in Python, exec; the error pipe reports the exact exec outcome."""
    argv = list(req.argv)
    if req.argv0:
        argv[0] = req.argv0
    env_items = [(k, v) for k, v in req.env.items() if k not in req.pid_env]
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    # The error pipe too goes above the fd layout's targets, like every source.
    temps = [wfd]
    try:
        errfd = fcntl.fcntl(wfd, fcntl.F_DUPFD_CLOEXEC, _floor(req))
        temps.append(errfd)
        pairs = _high_copies(req, temps)
        # Block signals across fork: a signal that reached the child before it
        # reset its handlers would run the manager's handler, which writes to the
        # *shared* asyncio wakeup fd and so would look to the manager as if sent to it.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CATCHABLE)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child: exec or _exit, never returns
                _child(req, program, argv, env_items, pairs, errfd)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    except BaseException:
        os.close(rfd)
        raise
    finally:
        for fd in temps:
            os.close(fd)
    try:
        data = b""
        while True:
            chunk = os.read(rfd, 512)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(rfd)
    if data:
        # The child wrote "stage:errno" and is exiting; reap it here (a specific
        # pid, so the main reaper cannot lose a status to this).
        os.waitpid(pid, 0)
        stage, _, err = data.decode("ascii", "replace").partition(":")
        path = program if stage == "exec" else (req.cwd if stage == "chdir" else "")
        raise SpawnError(stage, int(err) if err.isdigit() else errno_mod.EIO, path)
    return pid


def _tune(req: SpawnRequest) -> None:  # pragma: no cover - runs in the child
    """Nice, OOM score, limits and umask, before the identity switch (which may lose
    the privilege to raise them), in systemd's order."""
    import resource

    global _stage
    if req.nice is not None:
        _stage = "nice"
        os.setpriority(os.PRIO_PROCESS, 0, req.nice)
    if req.oom_score_adj is not None:
        _stage = "oom_score_adj"
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(req.oom_score_adj))
        except PermissionError:
            pass  # as systemd: refused for want of privilege means a container; go on
    _stage = "setrlimit"
    if req.nofile is not None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(req.nofile, hard), hard))
    inf = resource.RLIM_INFINITY
    for number, soft, hard in req.limits:
        want = (inf if soft < 0 else soft, inf if hard < 0 else hard)
        try:
            resource.setrlimit(number, want)
        except ValueError:  # EPERM, as Python says it: systemd's setrlimit_closest()
            cap = resource.getrlimit(number)[1]
            top = want[1] if cap == inf or (want[1] != inf and want[1] <= cap) else cap
            resource.setrlimit(number, (want[0] if want[0] != inf and want[0] <= top
                                        else top, top))
    if req.umask is not None:
        os.umask(req.umask)


_stage = ""  # the child's current step, for its error report


def _child(req: SpawnRequest, program: str, argv: list[str], env_items: list[tuple[str, str]],
           pairs: list[tuple[int, int]], errfd: int) -> None:  # pragma: no cover
    """Runs between fork and exec. Only os-level calls; never returns."""
    stage = "setup"
    try:
        signal.set_wakeup_fd(-1)
        for sig in _CATCHABLE:
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        # A session of its own, as systemd does: the child's process group is
        # then closed to everyone else (setpgid() across sessions is EPERM), so no
        # other process can join it to speak for the unit or catch its signals.
        stage = "setsid"
        os.setsid()
        # Every source is already above every target (_high_copies), so the dup2s
        # never overwrite one another; dup2 with src != dst clears FD_CLOEXEC.
        stage = "fds"
        for src, dst in pairs:
            os.dup2(src, dst)
        # Close everything else; only the error pipe survives, and it is CLOEXEC.
        keep = sorted({errfd} | ({req.extra_fd[1]} if req.extra_fd else set()))
        low = 3 + len(req.pass_fds)
        for fd in keep:
            if fd >= low:
                os.closerange(low, fd)
                low = fd + 1
        os.closerange(low, 1 << 20)
        stage = "tune"
        _tune(req)
        stage = "setgroups"
        if req.groups is not None:
            os.setgroups(list(req.groups))
        stage = "setgid"
        if req.gid is not None:
            os.setgid(req.gid)
        stage = "setuid"
        if req.uid is not None:
            os.setuid(req.uid)
        stage = "chdir"
        if req.cwd:
            os.chdir(req.cwd)
        stage = "exec"
        me = str(os.getpid())
        env = dict(env_items)
        for name in req.pid_env:
            env[name] = me
        os.execve(program, argv, env)
    except OSError as exc:
        if stage == "tune":
            stage = _stage
        try:
            os.write(errfd, f"{stage}:{exc.errno or errno_mod.EIO}".encode())
        finally:
            os._exit(127)
    except BaseException:
        try:
            os.write(errfd, f"{stage}:{errno_mod.EIO}".encode())
        finally:
            os._exit(127)
