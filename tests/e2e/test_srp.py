"""SRP, the State Relay Protocol, end to end: a real manager, real processes, real sockets.

- The agent (``examples/agent``) under chat load through 20 relays: no
  acknowledged message is lost, no request fails; 100 live keep-alive
  connections move to N+1 mid-conversation.
- Faults, each with the outcome it must have, driven by small apps
  (``tests/apps/srp_app.py`` on the SDK, ``tests/apps/srp_raw.py`` by hand).
  N+1's behaviour comes from the unit file, which a reload re-reads.
- The manager's SRP parser, fuzzed with hypothesis (no exception escapes, no
  fd leaks).

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import ROOT, Aeterna, free_port, write_units
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import SRP_MESSAGES

from aeterna.linux.fds import wait_closed
from aeterna.model import StateHandoff
from aeterna.relay.srp import SrpUnit
from aeterna.wire import srp as srp_wire

PY = sys.executable
APPS = ROOT / "tests" / "apps"
AGENT = ROOT / "examples" / "agent" / "agent.py"


def unit_text(command: list[str], env: dict[str, str] | None = None,
              handoff: dict[str, Any] | None = None, soak: str = "200ms",
              port: int | None = None, probes: list[dict[str, Any]] | None = None,
              restart: bool = False) -> str:
    """A YAML unit (written as JSON, which YAML reads) named ``u``."""
    svc: dict[str, Any] = {
        "name": "u", "type": "notify", "command": command,
        "env": ["PYTHONUNBUFFERED=1", *(f"{k}={v}" for k, v in (env or {}).items())],
        "timeouts": {"start": "30s", "stop": "5s"},
    }
    if port is not None:
        svc["sockets"] = [{"listen": f"127.0.0.1:{port}", "name": "http"}]
    if restart:
        svc.update(restart="on-failure", restart_sec="200ms")
    canary: dict[str, Any] = {"enabled": True, "soak_time": soak}
    if probes:
        canary["probes"] = probes
    orch = {"strategy": "hot-relay", "canary": canary,
            "state_handoff": {"enabled": True, "timeout": "5s", **(handoff or {})},
            "drain": {"timeout": "5s"}}
    return json.dumps({"version": "1.0", "service": svc, "orchestration": orch}, indent=1)


def app_unit(env: dict[str, str] | None = None, app: str = "srp_app.py", **kw: Any) -> str:
    return unit_text([PY, str(APPS / app)], env, **kw)


def agent_unit(port: int, env: dict[str, str] | None = None, **kw: Any) -> str:
    base = {"AGENT_CACHE_MIB": "16", "AGENT_CHECKPOINT_INTERVAL": "0.5"}
    return unit_text([PY, str(AGENT)], {**base, **(env or {})}, port=port, **kw)


def relay(m: Aeterna, timeout: float = 60.0) -> dict[str, Any]:
    """``aeterna reload u``; the relay's outcome."""
    reply = m.ctl("reload", "u", timeout=timeout)
    assert reply["ok"], reply
    outcome: dict[str, Any] = reply["result"]["relay"]
    return outcome


def edit(m: Aeterna, text: str) -> None:
    write_units(m.tmp / "units", {"u.yaml": text})


def main_pid(m: Aeterna) -> int | None:
    pid: int | None = m.status("u").get("main_pid")
    return pid


def ready_pid(m: Aeterna, gen: int, timeout: float = 20.0) -> int:
    """The pid of generation ``gen`` of ``u`` once it has started."""
    found = m.wait_line(rf"unit\.started unit=u pid=(\d+) generation={gen}\b|"
                        rf"relay\.started unit=u pid=(\d+) generation={gen}\b", timeout)
    return int(found.group(1) or found.group(2))


def counter_of(line: re.Match[str]) -> int:
    return int(line.group(1))


# --------------------------------------------------------------------- HTTP clients

def post_chat(conn: http.client.HTTPConnection, session: str, message: str
              ) -> tuple[int, dict[str, Any]]:
    conn.request("POST", "/chat", json.dumps({"session": session, "message": message}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def get_json(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def user_messages(port: int, session: str) -> list[str]:
    status, body = get_json(port, f"/context/{session}")
    assert status == 200, body
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


class RawHttp:
    """One keep-alive connection, byte for byte: it can never reconnect behind our back."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.local = self.sock.getsockname()
        self.buf = b""

    def chat(self, session: str, message: str, close: bool = False
             ) -> tuple[int, dict[str, Any], dict[str, str]]:
        body = json.dumps({"session": session, "message": message}).encode()
        head = (f"POST /chat HTTP/1.1\r\nHost: agent\r\nContent-Length: {len(body)}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "the agent closed the connection"
            self.buf += chunk
        head_raw, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head_raw.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "the agent closed the connection mid-response"
            rest += chunk
        self.buf = rest[length:]
        return int(lines[0].split()[1]), json.loads(rest[:length]), headers

    def close(self) -> None:
        self.sock.close()


class Chatter(threading.Thread):
    """A client that chats in one session until told to stop; records every ack."""

    def __init__(self, port: int, session: str, keep_alive: bool, stop: threading.Event,
                 limit: int = 20000):
        super().__init__(daemon=True)
        self.port, self.session, self.keep_alive, self.stop = port, session, keep_alive, stop
        self.limit = limit
        self.acked: list[str] = []
        self.generations: set[int] = set()
        self.failures: list[str] = []

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        n = 0
        while not self.stop.is_set() and n < self.limit:
            n += 1
            msg = f"{self.session}-m{n}"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                status, body = post_chat(conn, self.session, msg)
                if status != 200 or body.get("session") != self.session:
                    self.failures.append(f"{msg}: HTTP {status} {body}")
                else:
                    self.acked.append(msg)
                    self.generations.add(int(body["generation"]))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(f"{msg}: {exc!r}")
                conn = None
                time.sleep(0.05)
                continue
            if not self.keep_alive:
                conn.close()
                conn = None
            time.sleep(0.003)
        if conn is not None:
            conn.close()


def run_chatters(port: int, n_keepalive: int, n_fresh: int
                 ) -> tuple[list[Chatter], threading.Event]:
    stop = threading.Event()
    chatters = [Chatter(port, f"ka{i}", True, stop) for i in range(n_keepalive)]
    chatters += [Chatter(port, f"fresh{i}", False, stop) for i in range(n_fresh)]
    for c in chatters:
        c.start()
    return chatters, stop


def stop_chatters(chatters: list[Chatter], stop: threading.Event) -> None:
    stop.set()
    for c in chatters:
        c.join(40)
        assert not c.is_alive(), f"{c.session} did not stop"


def check_no_loss(port: int, chatters: list[Chatter]) -> None:
    failures = [f for c in chatters for f in c.failures]
    assert failures == [], failures[:10]
    for c in chatters:
        assert c.acked, f"{c.session} acknowledged nothing"
        assert user_messages(port, c.session) == c.acked, c.session


# ===================================================================== the agent

@pytest.mark.timeout(240)
def test_agent_under_load_through_20_relays_loses_no_acknowledged_message(aeterna: Any
                                                                           ) -> None:
    port = free_port()
    m = aeterna({"u.yaml": agent_unit(port, {"AGENT_THINK_MS": "2"}, soak="300ms")})
    m.wait_line(r"agent gen=1 .*serving", 30)
    status, cache0 = get_json(port, "/cache")
    assert status == 200 and cache0["origin"] == "built"
    chatters, stop = run_chatters(port, n_keepalive=3, n_fresh=3)
    try:
        time.sleep(0.3)
        for i in range(20):
            out = relay(m)
            assert out["outcome"] == "promoted" and out["handoff"] == "ok", (i, out)
            time.sleep(0.1)
    finally:
        stop_chatters(chatters, stop)
    check_no_loss(port, chatters)
    seen = set().union(*(c.generations for c in chatters))
    assert len(seen) >= 15, sorted(seen)  # the messages really were sent during the relays
    assert 21 in seen
    assert sum(len(c.acked) for c in chatters) >= 300
    # The 16 MiB cache went through 20 generations without a copy and without a rebuild.
    status, cache = get_json(port, "/cache")
    assert cache["generation"] == 21 and cache["origin"] == "adopted"
    assert cache["sha256"] == cache0["sha256"] and cache["inode"] == cache0["inode"]
    assert m.count(r"agent gen=\d+ .*cache built") == 1
    assert m.count(r"srp\.handoff unit=u generation=\d+ outcome=ok") == 20


@pytest.mark.timeout(120)
def test_100_live_connections_move_to_the_next_generation(aeterna: Any) -> None:
    port = free_port()
    m = aeterna({"u.yaml": agent_unit(port, {"AGENT_CHECKPOINT_INTERVAL": "0"})})
    m.wait_line(r"agent gen=1 .*serving", 30)
    clients = [RawHttp(port) for _ in range(100)]
    try:
        for i, c in enumerate(clients):
            for k in range(2):
                status, body, headers = c.chat(f"conv{i}", f"before-{k}")
                assert status == 200 and headers["x-generation"] == "1"
        # Keep talking while the relay happens: some requests land in N's last
        # moments, some wait in the handed-over sockets for N+1.
        results: dict[int, list[tuple[str, int]]] = {i: [] for i in range(100)}
        errors: list[str] = []

        def talk(idx: list[int]) -> None:
            for k in range(3):
                for i in idx:
                    try:
                        status, body, _ = clients[i].chat(f"conv{i}", f"during-{k}")
                        assert status == 200, body
                        results[i].append((f"during-{k}", body["generation"]))
                    except (OSError, AssertionError) as exc:
                        errors.append(f"conv{i}: {exc!r}")
                time.sleep(0.05)

        threads = [threading.Thread(target=talk, args=(list(range(j, 100, 10)),), daemon=True)
                   for j in range(10)]
        for t in threads:
            t.start()
        out = relay(m)
        for t in threads:
            t.join(60)
        assert out["outcome"] == "promoted" and out["handoff"] == "ok", out
        assert errors == [], errors[:5]
        line = m.wait_line(r"agent gen=2 .*serving .*adopted_conns=(\d+)", 10)
        assert int(line.group(1)) == 100
        for i, c in enumerate(clients):
            status, body, headers = c.chat(f"conv{i}", "after")
            assert status == 200 and headers["x-generation"] == "2"
            assert c.sock.getsockname() == c.local  # the same TCP connection
            assert body["messages"] == 2 * 6
            expected = ["before-0", "before-1", "during-0", "during-1", "during-2", "after"]
            assert user_messages(port, f"conv{i}") == expected
        status, info = get_json(port, "/")
        assert info["generation"] == 2 and info["connections"] >= 100
    finally:
        for c in clients:
            c.close()


@pytest.mark.timeout(120)
def test_agent_failing_its_soak_gives_back_the_messages_it_took(aeterna: Any) -> None:
    """N+1 loads, serves chat during its soak, turns unhealthy: everything goes back to N."""
    port = free_port()
    probe = [{"http": f"http://127.0.0.1:{port}/healthz", "interval": "200ms",
              "timeout": "2s"}]
    m = aeterna({"u.yaml": agent_unit(port, soak="4s", probes=probe)})
    m.wait_line(r"agent gen=1 .*serving", 30)
    edit(m, agent_unit(port, {"AGENT_UNHEALTHY_AFTER": "1.0"}, soak="4s", probes=probe))
    chatters, stop = run_chatters(port, n_keepalive=2, n_fresh=2)
    try:
        time.sleep(0.2)
        out = relay(m)
        time.sleep(0.3)
    finally:
        stop_chatters(chatters, stop)
    assert out["outcome"] == "rolled-back" and out["reason"] == "probe-failed", out
    assert out["handoff"] == "ok"
    m.wait_line(r"agent gen=2 .*quiesced reason=rollback", 5)
    m.wait_line(r"agent gen=1 .*resumed", 5)
    check_no_loss(port, chatters)
    assert {1, 2} <= set().union(*(c.generations for c in chatters))  # N+1 did take work
    status, info = get_json(port, "/")
    assert info["generation"] == 1


@pytest.mark.timeout(120)
def test_agent_whose_state_is_rejected_with_required_keeps_serving(aeterna: Any) -> None:
    """N's answer (16 MiB cache) exceeds max_size: rolled back, N resumes with its own
    conversations and its own keep-alive connections; no request fails."""
    port = free_port()
    m = aeterna({"u.yaml": agent_unit(port, handoff={"max_size": "1MiB", "required": True})})
    m.wait_line(r"agent gen=1 .*serving", 30)
    chatters, stop = run_chatters(port, n_keepalive=2, n_fresh=2)
    try:
        time.sleep(0.3)
        out = relay(m)
        time.sleep(0.3)
    finally:
        stop_chatters(chatters, stop)
    assert out["outcome"] == "rolled-back" and out["handoff"] == "rejected", out
    m.wait_line(r"srp\.resume unit=u generation=1 outcome=keep-own-state", 5)
    m.wait_line(r"agent gen=1 .*resumed .*adopted_conns=[1-9]", 5)
    check_no_loss(port, chatters)
    assert set().union(*(c.generations for c in chatters)) == {1}


@pytest.mark.timeout(120)
def test_agent_memory_survives_a_manager_restart_with_persist_dir(aeterna: Any,
                                                                   tmp_path: Path) -> None:
    port = free_port()
    persist = tmp_path / "persist"
    text = agent_unit(port, {"AGENT_CACHE_MIB": "4"}, handoff={"persist_dir": str(persist)})
    m = aeterna({"u.yaml": text})
    m.wait_line(r"agent gen=1 .*serving", 30)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for k in range(5):
        assert post_chat(conn, "diary", f"day {k}")[0] == 200
    conn.close()
    _, cache0 = get_json(port, "/cache")
    m.signal(signal.SIGTERM)
    assert m.wait_exit(30) == 0
    assert (persist / "u.srp").exists()
    m2 = aeterna(m.tmp / "units")
    m2.wait_line(r"srp\.restored-from-disk unit=u", 15)
    m2.wait_line(r"agent gen=1 .*serving sessions=1 messages=10 cache=adopted", 30)
    assert user_messages(port, "diary") == [f"day {k}" for k in range(5)]
    _, cache = get_json(port, "/cache")
    assert cache["sha256"] == cache0["sha256"] and cache["origin"] == "adopted"


@pytest.mark.timeout(60)
def test_a_handed_over_connection_closed_by_n1_is_really_closed(aeterna: Any) -> None:
    port = free_port()
    m = aeterna({"u.yaml": agent_unit(port, {"AGENT_CHECKPOINT_INTERVAL": "0"})})
    m.wait_line(r"agent gen=1 .*serving", 30)
    c = RawHttp(port)
    try:
        assert c.chat("s", "hello")[0] == 200
        assert relay(m)["handoff"] == "ok"
        status, _, headers = c.chat("s", "bye", close=True)
        assert status == 200 and headers["x-generation"] == "2"
        c.sock.settimeout(3)
        try:
            eof = c.sock.recv(100) == b""
        except TimeoutError:
            eof = False
        assert eof, "N+1 closed the connection but the client never saw EOF"
    finally:
        c.close()


NONBLOCK_APP = """
import os, socket, time
listener = socket.socket(fileno=3)
if not os.environ.get("LEAVE_IT"):
    listener.setblocking(False)  # an event loop's listener (asyncio, libuv, nginx...)
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
print("nonblock-app ready", flush=True)
while True:
    time.sleep(1)
"""


def fd_flags(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError("no flags in fdinfo")


def test_starting_n1_leaves_the_blocking_mode_of_ns_listener_alone(aeterna: Any) -> None:
    """O_NONBLOCK lives on the listener's open file description, shared by N, N+1 and
    the manager: starting N+1 must not make N's event-loop listener blocking."""
    from aeterna.api.client import request

    port = free_port()
    m = aeterna({"u.yaml": unit_text([PY, "-c", NONBLOCK_APP], port=port, soak="3s",
                                     handoff={"enabled": False})})
    m.wait_line(r"nonblock-app ready", 20)
    n_pid = main_pid(m)
    assert n_pid is not None and fd_flags(n_pid, 3) & os.O_NONBLOCK
    # N+1 does not touch the flag itself: what it sees is what the manager left.
    edit(m, unit_text([PY, "-c", NONBLOCK_APP], {"LEAVE_IT": "1"}, port=port, soak="3s",
                      handoff={"enabled": False}))
    request(m.control, "reload", "u", timeout=20, no_block=True)
    m.wait_line(r"relay\.phase unit=u generation=2 phase=soaking", 20)
    assert fd_flags(n_pid, 3) & os.O_NONBLOCK, "N's listener was made blocking under its feet"


# ===================================================================== faults

def start_app(aeterna: Any, text: str, gen: int = 1) -> Aeterna:
    m: Aeterna = aeterna({"u.yaml": text})
    m.wait_line(rf"gen={gen} ready", 20)
    return m


@pytest.mark.parametrize("required", [True, False])
def test_n_never_answers_the_checkpoint(aeterna: Any, required: bool) -> None:
    handoff = {"timeout": "1s", "required": required}
    m = start_app(aeterna, app_unit({"SRP_CHECKPOINT": "ignore"}, handoff=handoff))
    n_pid = main_pid(m)
    edit(m, app_unit(handoff=handoff))
    t0 = time.monotonic()
    out = relay(m)
    assert out["handoff"] == "checkpoint-timeout"
    assert time.monotonic() - t0 < 10
    if required:
        assert out["outcome"] == "rolled-back" and out["reason"] == "handoff-failed", out
        assert main_pid(m) == n_pid  # N keeps serving with its state: it never gave it away
        assert m.count(r"srp_app gen=1 quiesced") == 0
    else:
        assert out["outcome"] == "promoted", out
        m.wait_line(r"srp_app gen=2 cold reason=checkpoint-timeout", 5)


REQUIRED_N1 = {
    "no-hello": {},
    "ready-first-never-loaded": {"SRP_RAW_HELLO": "1", "SRP_RAW_LOADED": "never"},
    "loaded-0": {"SRP_RAW_HELLO": "1", "SRP_RAW_LOADED": "0"},
}


@pytest.mark.parametrize("mode", sorted(REQUIRED_N1))
def test_required_state_is_never_skipped_even_without_a_soak(aeterna: Any, mode: str) -> None:
    """``required: true`` means no promotion without LOADED=1, with soak 0 too: N+1
    says READY=1 first, then never asks, never answers, or answers LOADED=0."""
    handoff = {"timeout": "1s", "required": True}
    m = start_app(aeterna, app_unit(handoff=handoff, soak="0s"))
    n_pid = main_pid(m)
    edit(m, app_unit(REQUIRED_N1[mode], app="srp_raw.py", handoff=handoff, soak="0s"))
    out = relay(m)
    assert out["outcome"] == "rolled-back" and out["reason"] == "handoff-failed", out
    assert main_pid(m) == n_pid
    if mode == "no-hello":
        assert "not-asked" in out["detail"], out
        assert m.count(r"srp_app gen=1 quiesced") == 0  # N was never asked for its state
    else:
        quiesced = counter_of(m.wait_line(r"srp_app gen=1 quiesced reason=relay "
                                          r"counter=(\d+)", 5))
        resumed = counter_of(m.wait_line(r"srp_app gen=1 resumed counter=(\d+) gens=\[1\]", 10))
        assert resumed >= quiesced  # N took its own state back, nothing lost
    m.wait_status("u", lambda s: s.get("main_pid") == n_pid and s["state"] == "active")


def test_required_state_waits_for_loaded_after_an_early_ready(aeterna: Any) -> None:
    """READY=1 before LOADED=1 with soak 0: promoted, but only after LOADED=1."""
    handoff = {"timeout": "5s", "required": True}
    m = start_app(aeterna, app_unit(handoff=handoff, soak="0s"))
    edit(m, app_unit({"SRP_RAW_HELLO": "1", "SRP_RAW_LOADED": "1",
                      "SRP_RAW_HELLO_AFTER": "0.3"}, app="srp_raw.py", handoff=handoff,
                     soak="0s"))
    out = relay(m)
    assert out["outcome"] == "promoted" and out["handoff"] == "ok", out
    # The manager's own lines, in the order it acted: ready (soak 0 ends at once),
    # then the handoff, and only then the promotion (the reply may beat the log pipe).
    m.wait_line(r"relay\.phase unit=u generation=2 phase=done", 10)
    soaking = m.index_of(r"relay\.phase unit=u generation=2 phase=soaking")
    loaded = m.index_of(r"srp\.handoff unit=u generation=2 outcome=ok")
    promoting = m.index_of(r"relay\.phase unit=u generation=2 phase=promoting")
    assert soaking < loaded < promoting


def test_a_hello_flood_costs_one_checkpoint(aeterna: Any) -> None:
    """5,000 HELLO WANT_STATE=1 from N+1: N is asked to checkpoint once."""
    handoff = {"timeout": "5s"}
    m = start_app(aeterna, app_unit(handoff=handoff))
    edit(m, app_unit({"SRP_RAW_HELLO": "5000", "SRP_RAW_LOADED": "1"}, app="srp_raw.py",
                     handoff=handoff))
    out = relay(m)
    assert out["outcome"] == "promoted" and out["handoff"] == "ok", out
    m.wait_line(r"srp_raw gen=2 got state", 10)
    m.wait_line(r"relay\.phase unit=u generation=2 phase=done", 10)
    assert m.count(r"srp_app gen=1 quiesced") == 1
    assert m.count(r"srp_raw gen=2 got state") == 1
    assert m.ctl("ping")["ok"]


@pytest.mark.parametrize("mode,why", [
    ("unsealed", r"lacks seals SHRINK\|GROW\|WRITE\|SEAL"),
    ("no-size-seals", r"lacks seals SHRINK\|GROW"),
    ("max-size", r"exceeds max_size 16384"),
])
def test_a_state_that_fails_the_checks_is_rejected(aeterna: Any, mode: str, why: str) -> None:
    handoff = {"max_size": "16KiB"}
    if mode == "max-size":
        first = app_unit({"SRP_PAD_BYTES": "40000"}, handoff=handoff)
    else:
        first = app_unit({"SRP_RAW_MODE": mode}, app="srp_raw.py", handoff=handoff)
    m = start_app(aeterna, first)
    edit(m, app_unit(handoff=handoff))
    out = relay(m)
    assert out["outcome"] == "promoted" and out["handoff"] == "rejected", out
    m.wait_line(rf"srp\.rejected unit=u generation=1 how=relay reason=.*{why}", 5)
    m.wait_line(r"srp_app gen=2 cold reason=rejected", 5)


def test_a_rejected_state_with_required_resumes_n(aeterna: Any) -> None:
    """N answered (so it stopped taking work) but its state was rejected: the rollback
    must still tell it to take work again, keeping its own state (RESUME without fds)."""
    handoff = {"max_size": "16KiB", "required": True}
    m = start_app(aeterna, app_unit({"SRP_PAD_BYTES": "40000"}, handoff=handoff))
    edit(m, app_unit(handoff=handoff))
    out = relay(m)
    assert out["outcome"] == "rolled-back" and out["handoff"] == "rejected", out
    quiesced = counter_of(m.wait_line(r"srp_app gen=1 quiesced reason=relay counter=(\d+)", 5))
    resumed = counter_of(m.wait_line(r"srp_app gen=1 resumed counter=(\d+) gens=\[1\]", 5))
    assert resumed == quiesced
    m.wait_line(r"srp\.resume unit=u generation=1 outcome=keep-own-state", 5)


@pytest.mark.parametrize("required", [False, True])
def test_a_bad_checksum_is_refused_by_n1(aeterna: Any, required: bool) -> None:
    handoff = {"required": required}
    m = start_app(aeterna, app_unit({"SRP_RAW_MODE": "bad-checksum"}, app="srp_raw.py",
                                    handoff=handoff))
    n_pid = main_pid(m)
    edit(m, app_unit(handoff=handoff))  # N+1 runs the SDK, which checks CHECKSUM=
    out = relay(m)
    assert out["handoff"] == "load-failed", out
    m.wait_line(r"srp\.load-failed unit=u generation=2 error=checksum", 5)
    if required:
        assert out["outcome"] == "rolled-back" and out["reason"] == "handoff-failed"
        m.wait_line(r"srp_raw gen=1 resumed", 5)  # N gets its own state back
        assert main_pid(m) == n_pid
    else:
        assert out["outcome"] == "promoted"
        m.wait_line(r"srp_app gen=2 cold reason=checksum", 5)


def test_n1_crashing_while_loading_rolls_back_and_n_keeps_its_state(aeterna: Any) -> None:
    m = start_app(aeterna, app_unit())
    n_pid = main_pid(m)
    edit(m, app_unit({"SRP_LOAD": "crash"}))
    out = relay(m)
    assert out["outcome"] == "rolled-back" and out["reason"] == "exited-at-start", out
    gave = counter_of(m.wait_line(r"srp_app gen=1 quiesced reason=relay counter=(\d+)", 5))
    m.wait_line(r"srp_app gen=2 crashing while loading", 5)
    back = counter_of(m.wait_line(r"srp_app gen=1 resumed counter=(\d+) gens=\[1\]", 10))
    assert back == gave and main_pid(m) == n_pid
    # N still has it, and goes on: the next relay carries it (and what N counted since).
    time.sleep(0.3)
    edit(m, app_unit())
    out = relay(m)
    assert out["outcome"] == "promoted" and out["handoff"] == "ok", out
    now = counter_of(m.wait_line(r"srp_app gen=3 loaded counter=(\d+) gens=\[1\]", 5))
    assert now > back


def test_n1_failing_its_soak_gives_the_state_back_with_its_changes(aeterna: Any) -> None:
    m = start_app(aeterna, app_unit(soak="5s"))
    edit(m, app_unit({"SRP_SOAK_FAIL_AFTER": "0.6"}, soak="5s"))
    out = relay(m)
    assert out["outcome"] == "rolled-back" and out["reason"] == "watchdog", \
        (out, m.output()[-3000:])
    assert out["handoff"] == "ok"
    took = counter_of(m.wait_line(r"srp_app gen=2 loaded counter=(\d+) gens=\[1\]", 5))
    left = counter_of(m.wait_line(r"srp_app gen=2 quiesced reason=rollback counter=(\d+)", 5))
    back = counter_of(m.wait_line(r"srp_app gen=1 resumed counter=(\d+) gens=\[1,2\]", 5))
    assert left > took + 5, m.output()[-3000:]  # N+1 counted during its soak ...
    assert back == left, m.output()[-3000:]  # ... and N got all of it back


def test_a_crash_without_relay_restarts_from_the_last_checkpoint(aeterna: Any,
                                                                  tmp_path: Path) -> None:
    flag = tmp_path / "crash-once"
    flag.touch()
    m = aeterna({"u.yaml": app_unit({"SRP_SAVE_EVERY": "0.1", "SRP_CRASH_FLAG": str(flag)},
                                    restart=True)})
    m.wait_line(r"srp_app gen=1 crashing", 20)
    saved = [int(x) for x in re.findall(r"srp_app gen=1 saved counter=(\d+)", m.output())]
    assert len(saved) == 3
    m.wait_line(r"srp\.restore unit=u generation=2 outcome=loaded", 10)
    loaded = counter_of(m.wait_line(r"srp_app gen=2 loaded counter=(\d+) gens=\[1\]", 10))
    assert loaded == saved[-1]


def test_the_last_checkpoint_survives_a_manager_restart_with_persist_dir(
        aeterna: Any, tmp_path: Path) -> None:
    persist = tmp_path / "persist"
    m = aeterna({"u.yaml": app_unit({"SRP_SAVE_EVERY": "0.1"},
                                    handoff={"persist_dir": str(persist)})})
    m.wait_line(r"srp_app gen=1 saved counter=\d+", 20)
    m.wait_line(r"srp_app gen=1 saved counter=\d+", 20,
                start=len(m.lines))  # at least two
    m.signal(signal.SIGTERM)
    assert m.wait_exit(30) == 0
    saved = [int(x) for x in re.findall(r"srp_app gen=1 saved counter=(\d+)", m.output())]
    assert (persist / "u.srp").exists()
    m2 = aeterna(m.tmp / "units")
    m2.wait_line(r"srp\.restored-from-disk unit=u", 15)
    loaded = counter_of(m2.wait_line(r"srp_app gen=1 loaded counter=(\d+) gens=\[1\]", 15))
    assert loaded == saved[-1]


# ========================================================= the manager's channel, fuzzed

class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _fake_srp(loop: asyncio.AbstractEventLoop) -> SrpUnit:
    handoff = StateHandoff(enabled=True, timeout=0.01, max_size=1 << 20)
    host = SimpleNamespace(log=_Log(), add_reader=loop.add_reader,
                           remove_reader=loop.remove_reader, relay_of=lambda name: None,
                           background=asyncio.ensure_future)
    runtime = SimpleNamespace(name="fuzz", generation=1, main_pid=None,
                              spec=SimpleNamespace(orchestration=SimpleNamespace(
                                  state_handoff=handoff)))
    return SrpUnit(host, runtime)  # type: ignore[arg-type]


def _make_fd(kind: str) -> int:
    import fcntl

    if kind in ("snapshot", "arena", "unsealed"):
        fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, b"state")
        if kind != "unsealed":
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, srp_wire.SEALS_SNAPSHOT if kind == "snapshot"
                        else srp_wire.SEALS_ARENA)
        return fd
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    a, b = socket.socketpair()
    b.close()
    return a.detach()


fd_kinds_st = st.lists(st.sampled_from(["snapshot", "arena", "unsealed", "pipe", "conn"]),
                       max_size=4)


def _state_record(kinds: list[str], with_seq: bool, with_hello: bool) -> tuple[list[str], bytes]:
    """A STATE=1 that names its fds plausibly (so the seal/size checks really run)."""
    declared = ["conn" if k in ("pipe", "conn") else "snapshot" if k == "unsealed" else k
                for k in kinds]
    size = 5 * sum(k not in ("conn", "pipe") for k in kinds)
    lines = ["STATE=1", *(["SEQ=7"] if with_seq else []), "FORMAT=json", f"SIZE={size}",
             f"FDKINDS={':'.join(declared)}", *(["HELLO=1", "WANT_STATE=1"] if with_hello
                                                 else [])]
    return kinds, "\n".join(lines).encode()


state_st = st.builds(_state_record, fd_kinds_st, st.booleans(), st.booleans())
channel_st = st.one_of(
    st.tuples(fd_kinds_st, SRP_MESSAGES),
    state_st,
    st.tuples(fd_kinds_st, st.sampled_from([b"HELLO=1\nWANT_STATE=1\n", b"LOADED=1\nSEQ=1",
                                            b"STATE=0\nSEQ=3", b"RESUME=1"])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(channel_st, min_size=1, max_size=4))
def test_the_manager_channel_leaks_no_fd_whatever_it_receives(
        records: list[tuple[list[str], bytes]]) -> None:
    """Records with fds into the manager's real SrpUnit: every fd is closed or kept."""
    before = len(os.listdir("/proc/self/fd"))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        srp = _fake_srp(loop)
        peer = socket.socket(fileno=srp.open_channel(1))
        chan = srp.channels[1]
        for kinds, payload in records:
            fds = [_make_fd(k) for k in kinds]
            try:
                if fds:
                    socket.send_fds(peer, [payload or b"x"], fds)
                else:
                    peer.send(payload or b"x")
            except OSError:
                pass  # too large for one record: nothing was sent
            finally:
                for fd in fds:
                    os.close(fd)
            srp._readable(chan)

        async def settle() -> None:
            for _ in range(50):
                if all(t.done() for t in asyncio.all_tasks(loop)
                       if t is not asyncio.current_task()):
                    return
                await asyncio.sleep(0.005)

        loop.run_until_complete(settle())
        srp.close()
        peer.close()
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert wait_closed(5.0)
    assert len(os.listdir("/proc/self/fd")) == before

