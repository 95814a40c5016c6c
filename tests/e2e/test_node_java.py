"""Node.js and Java services relayed unchanged, under load.

``examples/node-web`` is a plain ``http`` server that listens on the inherited
fd (``server.listen({fd: 3})``); ``examples/java-web`` takes its listener from
fd 0 with ``System.inheritedChannel()`` (``stdin: socket``, systemd's
``StandardInput=socket``) and serves it with the JDK's own HTTP server. Neither
runtime can send an sd_notify datagram from its core library, so both say
READY=1 through ``systemd-notify`` (``notify_access: all``). Each goes through
10 hot relays while clients send requests without pause: not one may fail.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT, free_port
from polyglot import BUILD, need, relays_under_load, unit_yaml

EXAMPLES = ROOT / "examples"


def start(aeterna: Any, name: str, text: str) -> Any:
    m = aeterna({f"{name}.yaml": text})
    m.wait_ready(15)
    m.wait_status(name, lambda st: st["state"] == "active", timeout=40)
    return m


def check_ten_relays(m: Any, name: str, port: int) -> None:
    summary, results = relays_under_load(m, name, port, 10, threads=4, keepalive=0)
    print(f"{name}, 10 relays: {summary.describe()}")
    assert summary.requests > 0 and summary.failed == 0, summary.describe()
    assert [r["relay"]["generation"] for r in results] == list(range(2, 12))
    assert len(summary.gens) >= 10, summary.describe()  # every generation served
    st = m.status(name)
    assert st["generation"] == 11 and st["main_pid"] == results[-1]["relay"]["new_pid"]


def test_node_web_through_10_relays_under_load(aeterna: Any) -> None:
    node = need("node", "Debian's nodejs")
    need("systemd-notify", "Debian's systemd: Node's core cannot send a notify datagram")
    port = free_port()
    m = start(aeterna, "node-web", unit_yaml(
        "node-web", [node, str(EXAMPLES / "node-web" / "server.js")], port,
        notify_access="all"))
    m.wait_line(r"node-web gen=1: serving", timeout=10)
    check_ten_relays(m, "node-web", port)


JAVA_FLAGS = ["--add-opens", "jdk.httpserver/sun.net.httpserver=ALL-UNNAMED",
              "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx64m"]


@pytest.fixture(scope="module")
def java_web() -> list[str]:
    java = need("java", "Debian's default-jdk-headless")
    javac = need("javac", "Debian's default-jdk-headless")
    need("systemd-notify", "Debian's systemd: Java cannot send a notify datagram")
    source = EXAMPLES / "java-web" / "Web.java"
    out = BUILD / "java-web"
    if not (out / "Web.class").exists() or (out / "Web.class").stat().st_mtime < \
            source.stat().st_mtime:
        out.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([javac, "-Xlint:all", "-Werror", "-d", str(out), str(source)],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
    return [java, *JAVA_FLAGS, "-cp", str(out), "Web"]


def test_java_gets_the_listener_from_inherited_channel_on_fd_0(aeterna: Any,
                                                                java_web: list[str]) -> None:
    """``stdin: socket``: fd 0 is the unit's listener (and fd 3 still is, in LISTEN_FDS)."""
    port = free_port()
    probe = ("import os, socket, stat, sys\n"
             "s = socket.socket(fileno=os.dup(0))\n"
             "print('fd0', stat.S_ISSOCK(os.fstat(0).st_mode), s.getsockname()[1],"
             " os.environ.get('LISTEN_FDS'), flush=True)\n"
             "import time; time.sleep(60)\n")
    m = start(aeterna, "probe", unit_yaml("probe", [sys.executable, "-c", probe], port,
                                          notify=False, stdin_socket=True))
    m.wait_line(rf"fd0 True {port} 1$", timeout=10)
    m.kill()
    m2 = start(aeterna, "java-web", unit_yaml("java-web", java_web, port, stdin_socket=True,
                                              notify_access="all"))
    m2.wait_line(r"java-web gen=1: serving", timeout=20)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"hello from java" in data, data


def test_java_web_through_10_relays_under_load(aeterna: Any, java_web: list[str]) -> None:
    port = free_port()
    m = start(aeterna, "java-web", unit_yaml("java-web", java_web, port, stdin_socket=True,
                                             notify_access="all"))
    m.wait_line(r"java-web gen=1: serving", timeout=20)
    check_ten_relays(m, "java-web", port)
