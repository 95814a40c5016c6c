"""SRP without the Python SDK: the C counter of ``examples/c-srp`` under a real manager.

The program is built with ``make`` into a temporary directory, then run as a
``type: notify`` unit on a loopback socket with ``strategy: hot-relay``, a
canary soak and ``state_handoff: {required: true}``. A client sends one
increment per TCP connection and records every acknowledged answer
``counter=<n> gen=<g>``; the assertions are about that record: across relays
the counter never resets and never loses (or repeats) an acknowledged
increment, and rollbacks give back what docs/srp.md §6 says they give back.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_port

from aeterna.api.client import request

EXAMPLE = ROOT / "examples" / "c-srp"
UNIT = "counter"
ANSWER = re.compile(r"^counter=(\d+) gen=(\d+)$")

Ack = tuple[int, int]  # (counter, generation)


@pytest.fixture(scope="module")
def counter_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [tool for tool in ("make", "gcc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: cannot build examples/c-srp")
    build = tmp_path_factory.mktemp("c-srp-build")
    r = subprocess.run(["make", "-C", str(EXAMPLE), f"BUILD={build}", "CC=gcc", "CFLAGS=-O2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    warnings = [line for line in (r.stdout + r.stderr).splitlines() if "warning" in line]
    assert not warnings, "\n".join(warnings)
    return build / "counter"


def unit_yaml(binary: Path, port: int, env: dict[str, object] | None = None,
              soak: str = "0.5s", handoff_timeout: str = "5s", persist_dir: str = "") -> str:
    """The unit: notify, one loopback socket, hot relay with a soak, SRP required."""
    env = {"COUNTER_SRP_WAIT_MS": 20000, **(env or {})}
    env_lines = [f'    - "{k}={v}"' for k, v in env.items()]
    persist = f', persist_dir: "{persist_dir}"' if persist_dir else ""
    return "\n".join([
        'version: "1.0"',
        "service:",
        f"  name: {UNIT}",
        f'  command: ["{binary}"]',
        "  type: notify",
        "  timeouts: {start: 10s, stop: 5s}",
        "  env:",
        *env_lines,
        "  sockets:",
        f'    - listen: "127.0.0.1:{port}"',
        "      name: counter",
        "orchestration:",
        "  strategy: hot-relay",
        f"  canary: {{soak_time: {soak}}}",
        "  drain: {timeout: 10s}",
        "  state_handoff: {enabled: true, required: true, "
        f"timeout: {handoff_timeout}{persist}}}",
        "",
    ])


def write_unit(m: Any, text: str) -> None:
    """Edit the unit file in place; the next ``reload`` relays to it."""
    (m.tmp / "units" / f"{UNIT}.yaml").write_text(text)


def ask(port: int, line: str, timeout: float = 10.0) -> str | None:
    """One connection, one line; the whole answer, or None if it closed unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(line.encode() + b"\n")
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            return None
    return data.decode() or None


def inc(port: int, tag: str, timeout: float = 15.0) -> Ack:
    """An increment, retried until acknowledged (an unanswered one was not counted)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = ask(port, f"inc {tag}", timeout=max(0.1, deadline - time.monotonic()))
        except (ConnectionError, TimeoutError):
            answer = None
        if answer is not None:
            m = ANSWER.match(answer.strip())
            assert m, answer
            return int(m.group(1)), int(m.group(2))
        if time.monotonic() > deadline:
            raise AssertionError(f"increment {tag!r} never acknowledged within {timeout}s")
        time.sleep(0.01)


def get(port: int) -> Ack:
    answer = ask(port, "get")
    assert answer is not None
    m = ANSWER.match(answer.strip())
    assert m, answer
    return int(m.group(1)), int(m.group(2))


def reload_with_traffic(m: Any, port: int, tag: str,
                        inc_timeout: float = 15.0) -> tuple[dict[str, Any], list[Ack]]:
    """Relay (control ``reload``) while a client keeps incrementing; the outcome and acks."""
    reply: dict[str, Any] = {}

    def relay() -> None:
        reply.update(request(m.control, "reload", UNIT, timeout=60))

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    acks: list[Ack] = []
    deadline = time.monotonic() + 60
    while t.is_alive() and time.monotonic() < deadline:
        try:
            acks.append(inc(port, f"{tag}-{len(acks)}", timeout=inc_timeout))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; manager output:\n{m.output()}") from None
    t.join(5)
    assert not t.is_alive(), "the reload never answered"
    assert "result" in reply, reply
    result: dict[str, Any] = reply["result"]
    return result, acks


def start(aeterna: Any, binary: Path, port: int, env: dict[str, object] | None = None,
          **unit: str) -> Any:
    """A manager running the unit, its first generation serving."""
    m = aeterna({f"{UNIT}.yaml": unit_yaml(binary, port, env, **unit)})
    m.wait_ready()
    m.wait_line(r"gen=1: serving: counter=0", timeout=10)
    return m


def assert_consecutive(acks: list[Ack], first: int = 1) -> None:
    values = [n for n, _ in acks]
    assert values == list(range(first, first + len(values))), values


# ---------------------------------------------------------------- relays


@pytest.mark.parametrize("kind", ["snapshot", "arena"])
def test_counter_continues_across_relays(aeterna: Any, counter_bin: Path, kind: str) -> None:
    port = free_port()
    m = start(aeterna, counter_bin, port, {"COUNTER_KIND": kind})
    acks = [inc(port, f"warm-{i}") for i in range(20)]
    assert acks[-1] == (20, 1)
    for relay_no in range(3):
        outcome, during = reload_with_traffic(m, port, f"relay{relay_no}")
        assert outcome["outcome"] == "promoted", outcome
        assert outcome["relay"]["handoff"] == "ok", outcome
        assert outcome["relay"]["generation"] == relay_no + 2
        acks += during
        acks.append(inc(port, f"after{relay_no}"))
        assert acks[-1][1] == relay_no + 2, acks[-1]
    # Never reset, never lost or repeated an acknowledged increment...
    assert_consecutive(acks)
    # ...and N took no new work once it had checkpointed: generations only go up.
    gens = [g for _, g in acks]
    assert gens == sorted(gens), gens
    assert get(port) == (len(acks), 4)
    # The request log travelled with the counter, generation by generation.
    log = ask(port, "log")
    assert log is not None
    entries = [ln for ln in log.splitlines() if ln.startswith("n=")]
    assert [int(ln.split()[0][2:]) for ln in entries] == list(range(len(acks) - 15,
                                                                     len(acks) + 1))
    assert m.count(rf"checkpoint seq=\d+ sent: .* kind={kind}") == 3
    assert m.count(r"srp\.handoff .*outcome=ok") == 3


def test_restart_continues_from_the_checkpoint_left_at_stop(aeterna: Any,
                                                            counter_bin: Path) -> None:
    """SIGTERM: the app leaves an unsolicited STATE=1; the next start gets it (§6)."""
    port = free_port()
    m = start(aeterna, counter_bin, port)
    for i in range(7):
        inc(port, f"r{i}")
    reply = m.ctl("restart", UNIT, timeout=30)
    assert reply["ok"], reply
    m.wait_line(r"srp\.checkpoint .*how=push", timeout=10)
    m.wait_line(r"gen=2: serving: counter=7", timeout=10)
    assert inc(port, "after") == (8, 2)


# ------------------------------------------------------------- rollbacks


def test_rollback_gives_n_the_state_n1_checkpointed(aeterna: Any, counter_bin: Path) -> None:
    """N+1 loads, serves, then fails its soak alive (WATCHDOG=trigger): the manager
    checkpoints it (REASON=rollback) and N resumes with that state, so what N+1
    acknowledged during the soak is not lost (§6, rollback without amnesia)."""
    port = free_port()
    m = start(aeterna, counter_bin, port)
    acks = [inc(port, f"warm-{i}") for i in range(10)]
    write_unit(m, unit_yaml(counter_bin, port, {"COUNTER_FAIL_AFTER": 3,
                                              "COUNTER_FAIL_MODE": "trigger"}, soak="20s"))
    outcome, during = reload_with_traffic(m, port, "soak")
    assert outcome["outcome"] == "rolled-back", outcome
    assert outcome["relay"]["reason"] == "watchdog", outcome
    assert outcome["relay"]["handoff"] == "ok", outcome
    acks += during
    acks.append(inc(port, "after"))
    assert acks[-1][1] == 1, "N serves again after the rollback"
    served_by_canary = [n for n, g in acks if g == 2]
    assert len(served_by_canary) >= 3, acks
    assert_consecutive(acks)  # N+1's increments came back to N: nothing lost
    m.wait_line(r"srp\.rollback-checkpoint .*outcome=ok", timeout=5)
    m.wait_line(r"gen=1: RESUME seq=\d+: state loaded", timeout=5)
    # And the unit still relays normally afterwards.
    write_unit(m, unit_yaml(counter_bin, port))
    outcome, during = reload_with_traffic(m, port, "again")
    assert outcome["outcome"] == "promoted" and outcome["relay"]["handoff"] == "ok", outcome
    acks += during
    acks.append(inc(port, "last"))
    assert_consecutive(acks)
    assert acks[-1][1] == 3


@pytest.mark.parametrize("kind", ["snapshot", "arena"])
def test_rollback_after_the_canary_crashed(aeterna: Any, counter_bin: Path, kind: str) -> None:
    """N+1 loads, acknowledges 3 increments and exits 1 during the soak: it cannot
    checkpoint, so N gets back the checkpoint it gave (§6).

    With a ``snapshot`` that is N's state at the checkpoint: what N+1 acknowledged
    is lost, as the protocol says. With an ``arena`` the checkpoint the manager
    kept *is* the memfd N+1 went on writing to, so N resumes with N+1's
    increments in it."""
    port = free_port()
    m = start(aeterna, counter_bin, port, {"COUNTER_KIND": kind})
    acks = [inc(port, f"warm-{i}") for i in range(10)]
    write_unit(m, unit_yaml(counter_bin, port, {"COUNTER_KIND": kind, "COUNTER_FAIL_AFTER": 3,
                                              "COUNTER_FAIL_MODE": "exit"}, soak="20s"))
    outcome, during = reload_with_traffic(m, port, "soak")
    assert outcome["outcome"] == "rolled-back", outcome
    # Exiting right after READY=1 may beat the manager's reading of it.
    assert outcome["relay"]["reason"] in ("crashed-during-soak", "exited-at-start"), outcome
    assert outcome["relay"]["handoff"] == "ok", outcome
    acks += during
    acks.append(inc(port, "after"))
    assert acks[-1][1] == 1
    canary = [i for i, (_, g) in enumerate(acks) if g == 2]
    assert len(canary) == 3 and canary == list(range(canary[0], canary[0] + 3)), acks
    before, by_canary, after = acks[:canary[0]], acks[canary[0]:canary[-1] + 1], \
        acks[canary[-1] + 1:]
    assert_consecutive(before + by_canary)  # the handoff itself lost nothing
    checkpointed = before[-1][0]
    if kind == "snapshot":
        assert_consecutive(after, first=checkpointed + 1)  # N+1's 3 acks are lost
    else:
        assert_consecutive(after, first=checkpointed + 4)  # they live on in the arena
    m.wait_line(r"gen=1: RESUME seq=\d+: state loaded", timeout=5)


def test_state_refused_by_n1_rolls_back_with_nothing_lost(aeterna: Any,
                                                          counter_bin: Path) -> None:
    """N+1 only accepts SCHEMA=2 and answers LOADED=0 ERROR=schema: with
    ``required: true`` the handoff fails (load-failed), the relay rolls back and
    N resumes with its own checkpoint.

    N+1 runs with COUNTER_REQUIRE_STATE=1 (it takes no work without its state):
    an app that "runs cold" after LOADED=0, as §3 puts it, serves from the shared
    accept queue until the manager stops it, and what it acknowledges then is
    lost: the app cannot tell that the unit has ``required: true``."""
    port = free_port()
    m = start(aeterna, counter_bin, port)
    acks = [inc(port, f"warm-{i}") for i in range(10)]
    write_unit(m, unit_yaml(counter_bin, port, {"COUNTER_SCHEMA": 2,
                                              "COUNTER_REQUIRE_STATE": 1}, soak="20s"))
    outcome, during = reload_with_traffic(m, port, "refused")
    assert outcome["outcome"] == "rolled-back", outcome
    assert outcome["relay"]["reason"] == "handoff-failed", outcome
    assert outcome["relay"]["handoff"] == "load-failed", outcome
    acks += during
    acks.append(inc(port, "after"))
    assert acks[-1][1] == 1
    assert_consecutive(acks)
    m.wait_line(r"srp\.load-failed .*error=schema", timeout=5)
    m.wait_line(r"gen=1: RESUME seq=\d+: state loaded", timeout=5)


@pytest.mark.parametrize("kind", ["snapshot", "arena"])
def test_manager_restart_continues_from_persist_dir(aeterna: Any, counter_bin: Path,
                                                    tmp_path: Path, kind: str) -> None:
    """``persist_dir``: the checkpoint left at stop is written to disk, and a new
    manager hands it (as a sealed memfd of its own) to the first generation."""
    port = free_port()
    persist = tmp_path / "persist"
    m = start(aeterna, counter_bin, port, {"COUNTER_KIND": kind}, persist_dir=str(persist))
    for i in range(5):
        inc(port, f"p{i}")
    m.kill()
    assert (persist / f"{UNIT}.srp").exists(), m.output()
    m2 = aeterna({f"{UNIT}.yaml": unit_yaml(counter_bin, port, {"COUNTER_KIND": kind},
                                            persist_dir=str(persist))})
    m2.wait_ready()
    m2.wait_line(r"srp\.restored-from-disk", timeout=10)
    m2.wait_line(r"gen=1: state loaded: counter=5", timeout=10)
    assert inc(port, "after") == (6, 1)


# ------------------------------------------------- manager issues (reported)


class NeverResumed(AssertionError):
    pass


class Frozen(AssertionError):
    pass


def test_rejected_checkpoint_still_lets_n_take_work_again(aeterna: Any,
                                                           counter_bin: Path) -> None:
    """N answers CHECKPOINT with a snapshot lacking F_SEAL_WRITE: the manager rejects
    it (§4) and the relay rolls back (``required: true``). N took no new work once
    it had answered (§3) and gets nothing back, so nobody serves the unit."""
    port = free_port()
    m = start(aeterna, counter_bin, port, {"COUNTER_WEAK_SEALS": 1})
    acks = [inc(port, f"warm-{i}") for i in range(5)]
    reply = request(m.control, "reload", UNIT, timeout=60)
    outcome = reply["result"]
    assert outcome["outcome"] == "rolled-back" and outcome["relay"]["handoff"] == "rejected"
    m.wait_line(r"srp\.rejected", timeout=5)
    try:
        acks.append(inc(port, "after", timeout=3))
    except AssertionError as exc:
        raise NeverResumed(str(exc)) from None
    assert_consecutive(acks)


def test_spawning_n1_leaves_the_listener_flags_of_n_alone(aeterna: Any,
                                                         counter_bin: Path) -> None:
    """N sets O_NONBLOCK on its listener once and accepts until EAGAIN, as event
    loops do (COUNTER_NAIVE_ACCEPT=1). Spawning N+1 clears O_NONBLOCK on the open
    file description N shares, so N blocks in accept() holding a request, never
    reads the CHECKPOINT and the handoff times out. (The example normally calls
    accept() once per poll() readiness, which cannot block while only one
    generation accepts: that is why the other tests pass.)"""
    port = free_port()
    m = start(aeterna, counter_bin, port, {"COUNTER_NAIVE_ACCEPT": 1}, handoff_timeout="1s")
    for i in range(5):
        inc(port, f"warm-{i}")
    write_unit(m, unit_yaml(counter_bin, port, {"COUNTER_NAIVE_ACCEPT": 1,
                                              "COUNTER_START_DELAY_MS": 300}))
    try:
        outcome, _ = reload_with_traffic(m, port, "frozen", inc_timeout=3.0)
    except AssertionError as exc:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # a new connection ends N's blocked accept(), for a quick teardown
        raise Frozen(str(exc)[:200]) from None
    assert outcome["outcome"] == "promoted" and outcome["relay"]["handoff"] == "ok", outcome
