"""observability: Prometheus metrics, /healthz and /readyz over HTTP, per-unit log levels.

A real scraper's parser (prometheus_client) reads what the manager serves, and
the label values are checked against what the CLI and the log say of the same
events.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import AETERNA, ROOT, idle_activity
from prometheus_client.parser import text_string_to_metric_families

SLEEPER = """\
service:
  name: {name}
  command: [sleep, "60"]
  timeouts: {{stop: 5s}}
"""
OBS = "observability:\n  metrics_port: \"{addr}\"\n"
# Ready when systemd-notify says so (a unit of its own group: notify_access all).
RELAYABLE = """\
service:
  name: web
  command: [sh, -c, "{cmd}"]
  type: notify
  notify_access: all
  timeouts: {{start: 10s, stop: 5s}}
orchestration:
  strategy: hot-relay
  canary: {{soak_time: 0s}}
  drain: {{timeout: 5s}}
observability:
  metrics_port: "127.0.0.1:0"
"""
READY_CMD = "systemd-notify --ready; exec sleep 60"


def metrics_address(m: Any, start: int = 0) -> tuple[str, int]:
    match = m.wait_line(r"metrics\.listening address=(\S+):(\d+)", start=start)
    return match[1], int(match[2])


def get(addr: tuple[str, int], path: str, method: str = "GET") -> tuple[int, dict[str, str],
                                                                     str]:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted labels): value} as Prometheus' own parser reads the page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(page: dict[Any, float], name: str, **labels: str) -> float:
    return page[(name, tuple(sorted(labels.items())))]


def test_metrics_page_parses_and_matches_status(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(name="a") + OBS.format(addr="127.0.0.1:0"),
                 "b.yaml": SLEEPER.format(name="b")})
    m.wait_ready()
    addr = metrics_address(m)
    a = m.wait_status("a", lambda s: s["state"] == "active")
    m.wait_status("b", lambda s: s["state"] == "active")
    status, headers, body = get(addr, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    page = samples(body)
    # One endpoint serves the whole manager: b has no metrics_port of its own.
    for unit in ("a", "b"):
        assert value(page, "aeterna_unit_state", unit=unit, state="active") == 1
        assert value(page, "aeterna_unit_state", unit=unit, state="failed") == 0
    assert value(page, "aeterna_unit_main_pid", unit="a") == a["main_pid"]
    assert value(page, "aeterna_unit_generation", unit="a") == 1
    assert value(page, "aeterna_unit_restarts_total", unit="a") == 0
    assert value(page, "aeterna_unit_memory_rss_bytes", unit="a") > 0
    assert value(page, "aeterna_unit_cpu_seconds", unit="a") >= 0
    assert value(page, "aeterna_generations", unit="a", role="serving") == 1
    # Every rejection reason is there from the start (so rate() works), by its log name.
    assert value(page, "aeterna_notify_rejected_total", reason="unknown_sender") == 0
    assert value(page, "process_resident_memory_bytes") > 1 << 20
    assert value(page, "process_open_fds") > 3


def test_health_and_readiness(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(name="a") + OBS.format(addr="127.0.0.1:0"),
                 "b.yaml": "service:\n  name: b\n  command: [sh, -c, 'sleep 1; exit 3']\n",
                 "c.yaml": "service:\n  name: c\n  command: ['true']\n"})
    m.wait_ready()
    addr = metrics_address(m)
    assert get(addr, "/healthz")[0] == 200
    m.wait_status("b", lambda s: s["state"] == "active")
    m.wait_status("a", lambda s: s["state"] == "active")
    # c ran to success and is not restarted: done, not unready.
    m.wait_status("c", lambda s: s["state"] == "inactive" and s["result"] == "success")
    assert get(addr, "/readyz")[0] == 200
    m.wait_status("b", lambda s: s["state"] == "failed")
    status, _, body = get(addr, "/readyz")
    assert status == 503 and "b: failed" in body and "a:" not in body and "c:" not in body
    page = samples(get(addr, "/metrics")[2])
    assert value(page, "aeterna_unit_state", unit="b", state="failed") == 1
    assert value(page, "aeterna_unit_info", unit="b", type="simple", strategy="restart",
                 result="exit-code") == 1
    assert get(addr, "/healthz")[0] == 200  # the manager itself is fine


def test_http_edges(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(name="a") + OBS.format(addr="127.0.0.1:0")})
    m.wait_ready()
    addr = metrics_address(m)
    assert get(addr, "/nope")[0] == 404
    status, headers, _ = get(addr, "/metrics", "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = get(addr, "/metrics", "HEAD")
    assert status == 200 and int(headers["content-length"]) > 0 and body == ""
    # A client that connects and says nothing does not hold up the next one.
    with socket.create_connection(addr, timeout=5) as idle:
        assert get(addr, "/healthz")[0] == 200
        with socket.create_connection(addr, timeout=5) as bad:
            bad.sendall(b"\x00garbage\r\n\r\n")
            assert bad.recv(100).startswith(b"HTTP/1.1 400 ")
        idle.settimeout(10)
        assert idle.recv(100).startswith(b"HTTP/1.1 400 ")  # after its 5 s to speak


def test_idle_clients_cannot_use_up_the_managers_fds(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(name="a") + OBS.format(addr="127.0.0.1:0")})
    m.wait_ready()
    addr = metrics_address(m)
    m.wait_status("a", lambda s: s["state"] == "active")
    fds_before = len(os.listdir(f"/proc/{m.proc.pid}/fd"))
    idle = [socket.create_connection(addr, timeout=5) for _ in range(400)]
    try:
        # Over the cap the oldest waiting connections make room: the first ones go.
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""
        assert get(addr, "/healthz")[0] == 200  # a probe is served while they are held
        assert len(os.listdir(f"/proc/{m.proc.pid}/fd")) <= fds_before + 256 + 8
        assert m.status("a")["state"] == "active"  # the control socket still answers
    finally:
        for s in idle:
            s.close()
    # Once they are gone, a scraper is served again.
    deadline = time.monotonic() + 10
    while True:
        try:
            if get(addr, "/healthz")[0] == 200:
                break
        except (ConnectionError, http.client.HTTPException):
            pass
        assert time.monotonic() < deadline, "the endpoint never recovered"
        time.sleep(0.05)


def test_relay_outcomes_are_counted_by_their_cli_names(aeterna: Any, tmp_path: Path) -> None:
    m = aeterna({"web.yaml": RELAYABLE.format(cmd=READY_CMD)})
    m.wait_ready()
    addr = metrics_address(m)
    m.wait_status("web", lambda s: s["state"] == "active")
    ok = subprocess.run([*AETERNA, "--control", m.control, "reload", "web"],
                        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "units" / "web.yaml").write_text(RELAYABLE.format(cmd="exit 4"))
    bad = subprocess.run([*AETERNA, "--control", m.control, "reload", "web"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert bad.returncode == 1
    # "web: rolled back in phase starting: exited-at-start: status=4 [...]"
    reason = re.search(r"rolled back in phase [a-z-]+: ([a-z-]+):", bad.stdout)
    assert reason, bad.stdout + bad.stderr
    page = samples(get(addr, "/metrics")[2])
    assert value(page, "aeterna_relays_total", unit="web", outcome="promoted", reason="") == 1
    assert value(page, "aeterna_relays_total", unit="web", outcome="rolled-back",
                 reason=reason[1]) == 1
    assert value(page, "aeterna_unit_generation", unit="web") == 2
    assert value(page, "aeterna_relay_last_seconds", unit="web", phase="total") > 0


def test_reload_moves_the_endpoint_and_a_taken_port_fails_alone(aeterna: Any,
                                                                 tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        m = aeterna({"a.yaml": SLEEPER.format(name="a") + OBS.format(addr=f"127.0.0.1:{busy}")})
        m.wait_ready()
        m.wait_line(rf'metrics\.failed address=127\.0\.0\.1:{busy} .*EADDRINUSE')
        assert m.wait_status("a", lambda s: s["state"] == "active")
    mark = len(m.lines)
    (tmp_path / "units" / "a.yaml").write_text(
        SLEEPER.format(name="a") + OBS.format(addr="127.0.0.1:0"))
    m.signal(signal.SIGHUP)
    addr = metrics_address(m, start=mark)
    assert get(addr, "/healthz")[0] == 200
    mark = len(m.lines)
    (tmp_path / "units" / "a.yaml").write_text(SLEEPER.format(name="a"))
    m.signal(signal.SIGHUP)
    m.wait_line(r"metrics\.closed address=127\.0\.0\.1:0", start=mark)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr, timeout=5).close()
    assert m.status("a")["state"] == "active"


def test_ini_unit_and_unit_log_level(aeterna: Any, tmp_path: Path) -> None:
    units = tmp_path / "ini"
    units.mkdir()
    (units / "quiet.service").write_text(
        "[Service]\nExecStart=/bin/sleep 60\n\n"
        "[X-Aeterna]\nMetricsAddress=127.0.0.1:0\nLogLevel=warning\n")
    (units / "loud.service").write_text("[Service]\nExecStart=/bin/sleep 60\n")
    m = aeterna(units)
    m.wait_ready()
    addr = metrics_address(m)
    m.wait_line(r"unit\.state unit=loud old=waiting new=active")
    m.wait_status("quiet", lambda s: s["state"] == "active")
    page = samples(get(addr, "/metrics")[2])
    assert value(page, "aeterna_unit_state", unit="quiet", state="active") == 1
    # quiet's info lines are gone, loud's stay, and the manager's own too.
    assert m.count(r"unit=quiet ") == 0
    assert m.count(r"unit\.started unit=loud ") == 1
    assert m.count(r"manager\.started") == 1


def test_metrics_endpoint_keeps_an_idle_manager_idle(aeterna: Any) -> None:
    m = aeterna({"a.yaml": SLEEPER.format(name="a") + OBS.format(addr="127.0.0.1:0")})
    m.wait_ready()
    addr = metrics_address(m)
    m.wait_line(r"unit\.state unit=a old=waiting new=active")
    assert get(addr, "/metrics")[0] == 200  # served once: psutil and all are loaded
    switches, cpu = idle_activity(m.proc.pid, 2.0)
    assert switches == 0 and cpu == 0
