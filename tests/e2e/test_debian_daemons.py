"""Debian's daemons under Aeterna with their shipped, unchanged unit files.

Each runs in a mount and network namespace of the test's own: /run is an empty
tmpfs (as in a container, so RuntimeDirectory= has to make what the daemon
needs), the daemon's configuration directory is a copy the test may edit (the
machine's own is never touched), and the network is the namespace's loopback,
so nothing clashes with a daemon of the machine or of another test. The
``pid1`` variant adds a PID namespace: Aeterna is its PID 1. Installed by
``make daemons`` (a test skips when its package is missing).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import is_root

UNITS = Path("/lib/systemd/system")
PY = sys.executable

pytestmark = pytest.mark.skipif(not is_root() or shutil.which("unshare") is None
                                or shutil.which("nsenter") is None,
                                reason="needs root, unshare and nsenter (namespaces)")

# Inside the namespaces, before Aeterna: a private empty /run, private copies of
# configuration directories ($AETERNA_BINDS: "copy:target ..."), loopback up.
PRELUDE = textwrap.dedent("""\
    set -e
    mount -t tmpfs -o mode=0755 tmpfs /run
    for pair in $AETERNA_BINDS; do mount --bind "${pair%%:*}" "${pair#*:}"; done
    ip link set lo up
    eval "$AETERNA_BOOT"
    exec "$0" "$@"
""")


def _daemon(unit: str, program: str) -> None:
    if not (UNITS / unit).exists() or not os.path.exists(program):
        pytest.skip(f"{unit} or {program} is not installed (make daemons installs it)")


class Box:
    """One Aeterna in namespaces of its own, with the given unit files copied in."""

    def __init__(self, aeterna: Any, tmp: Path, units: list[str], private: list[str],
                 pid1: bool, links: dict[str, str] | None = None,
                 edit: Any = None, boot: str = "") -> None:
        udir = tmp / "units"
        udir.mkdir(parents=True)
        for name in units:
            shutil.copy(UNITS / name, udir / name)  # unchanged
        for name, target in (links or {}).items():
            os.symlink(target, udir / name)  # an instance, as `systemctl enable` links it
        self.copies: dict[str, Path] = {}
        pairs = []
        for target in private:
            copy = tmp / ("copy" + target.replace("/", "_"))
            # cp -a: owners and modes too (a data directory must stay its daemon's).
            subprocess.run(["cp", "-a", target, str(copy)], check=True, timeout=120)
            self.copies[target] = copy
            pairs.append(f"{copy}:{target}")
        if edit is not None:
            edit(self.copies)
        flags = ["--mount", "--net"] + (["--pid", "--fork", "--mount-proc"] if pid1 else [])
        prefix = ["unshare", *flags, "--", "/bin/sh", "-c", PRELUDE]
        # The control socket, and the notify socket beside it, in the box's own /run:
        # a daemon with User= must reach the notify socket, and pytest's directory is
        # root's alone (0700). The test reaches it through /proc/PID/root.
        env = {"AETERNA_BINDS": " ".join(pairs), "AETERNA_BOOT": boot}
        self.m = aeterna(udir, prefix=prefix, env=env,
                         control="/run/aeterna/control.sock")
        self.pid1 = pid1
        self.m.control = str(self.path("/run/aeterna/control.sock"))

    @property
    def manager_pid(self) -> int:
        """The manager's pid as we see it (unshare --fork: its one child)."""
        pid: int = self.m.proc.pid
        if not self.pid1:
            return pid
        deadline = time.monotonic() + 10
        while True:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
            assert time.monotonic() < deadline, "unshare never forked"
            time.sleep(0.01)

    def inside(self, argv: list[str], timeout: float = 20) -> str:
        """Run ``argv`` in the box's network and mount namespaces; its output."""
        pid = self.manager_pid
        out = subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", "--", *argv],
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
        return out.stdout

    def tcp(self, port: int, send: bytes = b"", read: str = "eof",
            timeout: float = 10.0) -> str:
        """Connect on the box's loopback, send, then read to EOF ("eof"), one chunk
        (a banner: "chunk") or nothing ("none"); what came back."""
        code = textwrap.dedent(f"""\
            import socket, sys
            s = socket.create_connection(("127.0.0.1", {port}), 5)
            s.settimeout(5)
            s.sendall({send!r})
            b = b""
            while {read!r} != "none":
                c = s.recv(4096)
                b += c
                if not c or {read!r} == "chunk" or len(b) > 65536:
                    break
            sys.stdout.write(b.decode("latin-1"))
            """)
        return self.inside([PY, "-c", code], timeout)

    def wait_tcp(self, port: int, send: bytes, want: str, read: str = "eof",
                 timeout: float = 20.0) -> str:
        """Bounded retries of :meth:`tcp` until the answer holds ``want``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.tcp(port, send, read)
                if want in got:
                    return got
            except (AssertionError, subprocess.TimeoutExpired):
                got = ""
            assert time.monotonic() < deadline, (f"never got {want!r} on {port}: {got!r}\n"
                                                 + self.m.output()[-3000:])
            time.sleep(0.1)

    def path(self, path: str) -> Path:
        """A path as the box sees it (its /run, its /proc: pids are its own)."""
        return Path(f"/proc/{self.manager_pid}/root{path}")

    def processes(self) -> list[int]:
        """Every process in the box but the manager (and, as PID 1, the prelude)."""
        me = self.manager_pid if not self.pid1 else 1
        pids = [int(p.name) for p in self.path("/proc").iterdir() if p.name.isdigit()]
        if not self.pid1:  # the host's /proc: only the manager's descendants are ours
            return [p for p in _descendants(me)]
        return [p for p in pids if p != me]

    def gone(self, pid: int) -> None:
        """The pid (the box's number) is no longer running (bounded wait)."""
        deadline = time.monotonic() + 15
        stat = self.path(f"/proc/{pid}/stat")
        while True:
            try:
                if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return
            except OSError:
                return
            assert time.monotonic() < deadline, f"{pid} still running"
            time.sleep(0.05)

    def finish(self) -> None:
        self.m.ctl("stop")
        self.m.wait_exit(60)


def _descendants(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def stop_leaves_nothing(box: Box, unit: str, pid: int) -> None:
    """``aeterna stop UNIT``: inactive, its main process gone, no process left."""
    reply = box.m.ctl("stop", unit, timeout=60)
    assert reply["ok"] and reply["result"]["state"] == "inactive", reply
    box.gone(pid)
    deadline = time.monotonic() + 10
    while box.processes():
        assert time.monotonic() < deadline, f"left behind: {box.processes()}"
        time.sleep(0.05)


@pytest.fixture(params=[False, True], ids=["host", "pid1"])
def pid1(request: Any) -> bool:
    if request.param:
        probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                               capture_output=True)
        if probe.returncode != 0:
            pytest.skip("cannot make a PID namespace here")
    return bool(request.param)


def test_nginx_forking(aeterna: Any, tmp_path: Path, pid1: bool) -> None:
    _daemon("nginx.service", "/usr/sbin/nginx")
    conf = "server { listen 127.0.0.1:80; location / { return 200 \"%s\\n\"; } }\n"

    def site(copies: dict[str, Path]) -> None:
        enabled = copies["/etc/nginx"] / "sites-enabled"
        for f in enabled.iterdir():
            f.unlink()
        (enabled / "t").write_text(conf % "v1")

    box = Box(aeterna, tmp_path, ["nginx.service"], ["/etc/nginx", "/var/lib/nginx"], pid1,
              edit=site)
    box.m.wait_ready(20)
    st = box.m.wait_status("nginx.service", lambda s: s["state"] == "active", 30)
    pid = st["main_pid"]
    assert int(box.path("/run/nginx.pid").read_text()) == pid  # PIDFile= read
    box.wait_tcp(80, b"GET / HTTP/1.0\r\n\r\n", "v1")
    (box.copies["/etc/nginx"] / "sites-enabled" / "t").write_text(conf % "v2")
    reply = box.m.ctl("reload", "nginx")
    assert reply["ok"] and reply["result"]["outcome"] == "success", reply
    box.wait_tcp(80, b"GET / HTTP/1.0\r\n\r\n", "v2")
    assert box.m.status("nginx")["main_pid"] == pid  # reloaded in place
    stop_leaves_nothing(box, "nginx", pid)
    box.finish()


def test_redis_limits_and_runtime_directory(aeterna: Any, tmp_path: Path, pid1: bool) -> None:
    _daemon("redis-server.service", "/usr/bin/redis-server")
    box = Box(aeterna, tmp_path, ["redis-server.service"], ["/etc/redis", "/var/lib/redis"],
              pid1)
    box.m.wait_ready(20)
    st = box.m.wait_status("redis.service", lambda s: s["state"] == "active", 30)  # an alias
    pid = st["main_pid"]
    box.wait_tcp(6379, b"PING\r\n", "+PONG", "chunk")
    limits = box.path(f"/proc/{pid}/limits").read_text().splitlines()
    nofile = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
    # LimitNOFILE=65535, or the highest the machine allows (systemd's setrlimit_closest).
    cap = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = 65535 if cap == resource.RLIM_INFINITY else min(65535, cap)
    assert nofile == [str(want), str(want)]
    run = box.path("/run/redis")
    assert run.stat().st_mode & 0o7777 == 0o2755  # RuntimeDirectoryMode=2755
    assert run.stat().st_uid == int(box.inside(["id", "-u", "redis"]))
    stop_leaves_nothing(box, "redis-server", pid)
    assert not box.path("/run/redis").exists()  # removed at stop
    box.finish()


@pytest.mark.parametrize("activation", [False, True], ids=["listens", "ssh.socket"])
def test_ssh_runtime_directory(aeterna: Any, tmp_path: Path, pid1: bool,
                               activation: bool) -> None:
    """ssh.service alone (sshd binds), or with ssh.socket (Aeterna binds :22 and
    hands it over as LISTEN_FDS, which Debian's sshd takes)."""
    _daemon("ssh.service", "/usr/sbin/sshd")
    if not list(Path("/etc/ssh").glob("ssh_host_*_key")):
        pytest.skip("no host keys (openssh-server's postinst made none)")

    def listen(copies: dict[str, Path]) -> None:
        if not activation:
            cfg = copies["/etc/ssh"] / "sshd_config"
            cfg.write_text("ListenAddress 127.0.0.1:22\n" + cfg.read_text())

    units = ["ssh.service", "ssh.socket"] if activation else ["ssh.service"]
    box = Box(aeterna, tmp_path, units, ["/etc/ssh"], pid1, edit=listen)
    box.m.wait_ready(20)
    st = box.m.wait_status("sshd", lambda s: s["state"] == "active", 30)  # Alias=sshd.service
    pid = st["main_pid"]
    assert box.path("/run/sshd").is_dir()  # "Missing privilege separation directory" no more
    box.wait_tcp(22, b"", "SSH-2.0-OpenSSH", "chunk")
    if activation:
        # sshd serves on the socket Aeterna bound (its fd 3 is the manager's listener;
        # sshd's setproctitle overwrites its environ, so LISTEN_FDS cannot be read).
        mine = {os.readlink(f) for f in box.path("/proc/1/fd" if pid1 else
                                                 f"/proc/{box.manager_pid}/fd").iterdir()}
        assert os.readlink(box.path(f"/proc/{pid}/fd/3")) in mine
    if activation:
        # No reload here: on SIGHUP sshd closes its listeners and re-executes, and the
        # new sshd finds no fd 3 and cannot bind :22 beside the manager's: it exits
        # 255, which RestartPreventExitStatus=255 does not restart. (Seen under
        # Aeterna with Debian 12's sshd 9.2; ssh.service alone reloads below.)
        stop_leaves_nothing(box, "ssh", pid)
        box.finish()
        return
    # ExecReload=sshd -t, then /bin/kill -HUP $MAINPID: sshd re-executes in place.
    reply = box.m.ctl("reload", "ssh")
    assert reply["ok"] and reply["result"]["outcome"] == "success", reply
    box.wait_tcp(22, b"", "SSH-2.0-OpenSSH", "chunk")
    assert box.m.status("ssh")["main_pid"] == pid
    stop_leaves_nothing(box, "ssh", pid)
    box.finish()


def test_php_fpm_reload_with_mainpid(aeterna: Any, tmp_path: Path, pid1: bool) -> None:
    _daemon("php8.2-fpm.service", "/usr/sbin/php-fpm8.2")

    def tcp_pool(copies: dict[str, Path]) -> None:
        pool = copies["/etc/php/8.2/fpm"] / "pool.d" / "www.conf"
        pool.write_text(pool.read_text().replace("listen = /run/php/php8.2-fpm.sock",
                                                 "listen = 127.0.0.1:9000"))

    # /run/php comes from tmpfiles.d, which a systemd boot applies before any service
    # (systemd-tmpfiles-setup.service); Aeterna does not, so the box's boot does.
    tmpfiles = "/usr/lib/tmpfiles.d/php8.2-fpm.conf"
    if shutil.which("systemd-tmpfiles") is None or not os.path.exists(tmpfiles):
        pytest.skip("no systemd-tmpfiles or php8.2-fpm's tmpfiles.d entry")
    box = Box(aeterna, tmp_path, ["php8.2-fpm.service"], ["/etc/php/8.2/fpm"], pid1,
              edit=tcp_pool, boot=f"systemd-tmpfiles --create {tmpfiles}")
    box.m.wait_ready(20)
    st = box.m.wait_status("php8.2-fpm", lambda s: s["state"] == "active", 30)  # notify
    pid = st["main_pid"]
    box.wait_tcp(9000, b"", "", "none")
    # ExecReload=/bin/kill -USR2 $MAINPID: a literal "$MAINPID" would make kill fail.
    reply = box.m.ctl("reload", "php8.2-fpm.service")
    assert reply["ok"] and reply["result"]["outcome"] == "success", reply
    box.m.wait_status("php8.2-fpm", lambda s: s["state"] == "active", 30)
    box.wait_tcp(9000, b"", "", "none")
    assert box.m.status("php8.2-fpm")["main_pid"] == pid  # php-fpm re-executes in place
    stop_leaves_nothing(box, "php8.2-fpm", pid)
    box.finish()


def test_postgresql_remain_after_exit_and_forking_instance(aeterna: Any, tmp_path: Path,
                                                           pid1: bool) -> None:
    _daemon("postgresql@.service", "/usr/bin/pg_ctlcluster")
    clusters = sorted(Path("/etc/postgresql").glob("*/main/postgresql.conf"))
    if not clusters:
        pytest.skip("no PostgreSQL cluster (the postgresql package makes NN/main)")
    version = clusters[0].parent.parent.name
    instance = f"postgresql@{version}-main.service"
    box = Box(aeterna, tmp_path, ["postgresql.service", "postgresql@.service"],
              [f"/etc/postgresql/{version}/main", f"/var/lib/postgresql/{version}/main"],
              pid1, links={instance: "postgresql@.service"})
    box.m.wait_ready(20)
    box.m.wait_status("postgresql", lambda s: s["state"] == "exited", 30)  # RemainAfterExit
    st = box.m.wait_status(instance, lambda s: s["state"] == "active", 90)
    pid = st["main_pid"]
    box.inside(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-t", "10"])
    # A new setting, and the instance's ExecReload= (pg_ctlcluster reload): same pid.
    conf = box.copies[f"/etc/postgresql/{version}/main"] / "postgresql.conf"
    conf.write_text(conf.read_text() + "\nwork_mem = '7777kB'\n")
    reply = box.m.ctl("reload", instance)
    assert reply["ok"] and reply["result"]["outcome"] == "success", reply
    assert box.m.status(instance)["main_pid"] == pid
    deadline = time.monotonic() + 20
    while "7777kB" not in box.inside(["runuser", "-u", "postgres", "--", "psql", "-Atc",
                                      "show work_mem"]):
        assert time.monotonic() < deadline, "the reload never took"
        time.sleep(0.2)
    # postgresql.service: "active (exited)" reloads too (ExecReload=/bin/true), stays exited.
    reply = box.m.ctl("reload", "postgresql")
    assert reply["ok"] and reply["result"]["state"] == "exited", reply
    stop_leaves_nothing(box, instance, pid)
    assert box.m.status("postgresql")["state"] == "exited"  # still "active (exited)"
    box.finish()
