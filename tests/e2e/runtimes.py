"""Real container runtimes for the image tests: a docker daemon of our own, podman with runc.

Nothing here talks to a registry. The base image is the Debian 12 root that
``packaging/rootfs.sh`` builds from apt's own mirror (cached in build/rootfs),
imported as a local image; the image is built from it by ``make image``, as a
user would. What is heavy is cached under build/ so that a second run is quick:
the docker daemon's data root (build/docker) and podman's storage
(build/podman) keep the imported base and the built layers.

Every call is bounded; every helper that cannot work here raises ``Unavailable``
with the reason, which the fixtures turn into a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
ROOTFS = BUILD / "rootfs" / "bookworm.tar"


class Unavailable(Exception):
    """This runtime cannot start here; the message says why."""


def rootfs() -> Path:
    """The cached Debian 12 root tarball, built on first use (Unavailable if it cannot be)."""
    if ROOTFS.is_file() and ROOTFS.stat().st_size > 0:
        return ROOTFS
    try:
        r = subprocess.run([str(ROOT / "packaging" / "rootfs.sh"), str(ROOTFS)],
                           capture_output=True, text=True, timeout=960)
    except subprocess.TimeoutExpired:
        raise Unavailable("packaging/rootfs.sh took more than 16 minutes")
    if r.returncode != 0:
        raise Unavailable(f"no Debian root to build on: {(r.stdout + r.stderr).strip()[-300:]}")
    return ROOTFS


@dataclass
class Engine:
    """One container CLI (docker or podman) with the environment that points it at its store."""

    name: str
    env: dict[str, str]
    run_flags: list[str] = field(default_factory=list)  # what `run` needs on this machine
    image: str = ""

    def __call__(self, *args: str, timeout: float = 60.0,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            r = subprocess.run([self.name, *args], env=self.env, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{self.name} {' '.join(args)}: no answer in {timeout}s: "
                                 f"{exc.stderr!r}")
        if check and r.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} exited {r.returncode}: "
                                 f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
        return r

    def logs(self, container: str) -> str:
        r = self("logs", container, check=False)
        # Drop podman's complaints that it has no systemd to keep health-check timers.
        err = "\n".join(line for line in r.stderr.splitlines() if "systemd" not in line)
        return r.stdout + err

    def import_base(self) -> str:
        """Import build/rootfs/bookworm.tar once per tarball (its size and mtime name it):
        importing again would make a new image id and throw the layer cache away."""
        tar = rootfs()
        st = tar.stat()
        ref = f"aeterna-base:bookworm-{st.st_size}-{int(st.st_mtime)}"
        if self("image", "inspect", ref, check=False).returncode != 0:
            self("import", str(tar), ref, timeout=300)
        return ref

    def build(self, tag: str) -> str:
        """``make image`` from the local base, as a user runs it; returns the image name."""
        t0 = time.monotonic()
        base = self.import_base()
        t1 = time.monotonic()
        if self.name == "podman":
            base = f"localhost/{base}"
        try:
            r = subprocess.run(["make", "--no-print-directory", "image", f"ENGINE={self.name}",
                                f"BASE={base}", f"IMAGE={tag}"], cwd=ROOT, env=self.env,
                               capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise AssertionError("make image took more than 10 minutes")
        assert r.returncode == 0, f"make image failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        # The previous build's image is now untagged: keep the cache in build/ from growing.
        self("image", "prune", "-f", timeout=120, check=False)
        print(f"{self.name}: base imported in {t1 - t0:.1f}s, "
              f"make image in {time.monotonic() - t1:.1f}s")
        self.image = tag
        return tag


def wait_for(pred: Callable[[], bool], timeout: float, what: str,
             error: type[Exception] = AssertionError) -> None:
    """Poll ``pred`` every 0.1 s until it holds; raise ``error`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise error(f"{what} within {timeout:.0f}s")


class DockerDaemon:
    """``dockerd`` on a socket of our own, with no bridge and no iptables rules.

    Its data root is build/docker (cached across runs); its exec root, pid file and
    socket live in ``tmp`` (a unix socket path has a 108-byte limit: keep it short).
    """

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock = tmp / "docker.sock"
        self.log = tmp / "dockerd.log"

    def start(self) -> Engine:
        if os.geteuid() != 0:
            raise Unavailable("dockerd needs root")
        for tool in ("dockerd", "docker", "containerd", "runc"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} is not installed (Debian: docker.io, runc)")
        data = BUILD / "docker"
        data.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false",
                 "-H", f"unix://{self.sock}", "--data-root", str(data),
                 "--exec-root", str(self.tmp / "exec"), "--pidfile", str(self.tmp / "pid")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_BUILDKIT": "0"}
        engine = Engine("docker", env)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise Unavailable(f"dockerd exited {self.proc.returncode}: {self._tail()}")
            return engine("version", timeout=10, check=False).returncode == 0

        try:
            wait_for(answers, 60, "dockerd did not answer", Unavailable)
        except Unavailable:
            self.stop()
            raise
        return engine

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-800:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it is still there after 30 s (it stops containerd too)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # dockerd leaves its network namespace bind-mounted in the exec root.
        netns = self.tmp / "exec" / "netns"
        for entry in netns.glob("*") if netns.is_dir() else ():
            subprocess.run(["umount", "-l", str(entry)], capture_output=True, timeout=10)


def podman(tmp: Path) -> Engine:
    """podman with runc and cgroupfs (no systemd here), its storage cached in build/podman.

    The default RLIMIT_NOFILE raise is refused on these machines and crun fails, so
    the configuration names runc and every run passes explicit ulimits, no higher
    than our own hard limits.
    """
    if os.geteuid() != 0:
        raise Unavailable("podman here runs rootful (rootless needs subuids): needs root")
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (Debian: podman, runc)")
    store = BUILD / "podman"
    store.mkdir(parents=True, exist_ok=True)
    (tmp / "run").mkdir(exist_ok=True)
    (tmp / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{store}"\nrunroot = "{tmp / "run"}"\n')
    (tmp / "containers.conf").write_text(
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(tmp / "storage.conf"),
           "CONTAINERS_CONF": str(tmp / "containers.conf")}
    import resource

    nofile = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    engine = Engine("podman", env, run_flags=[
        "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}",
        # No systemd to run health-check timers: `podman healthcheck run` checks by hand.
        "--health-interval=disable"])
    r = engine("info", timeout=60, check=False)
    if r.returncode != 0:
        raise Unavailable(f"podman info failed: {r.stderr.strip()[-300:]}")
    return engine


def relay_pids(logs: str) -> list[int]:
    """The new pid of every promoted relay, in order, from the manager's log lines."""
    return [int(m.group(1)) for m in
            re.finditer(r"relay\.outcome unit=web outcome=promoted .*?new_pid=(\d+)", logs)]
