"""A running manager under random sequences of valid and invalid input, checked after each.

Hypothesis drives one manager with three units through control requests
(well-formed and not), notify datagrams from a stranger and from a unit's own
process (through ``tests/apps/forwarder.py``, with and without fds), and SRP
records on a unit's channel. After every step: the manager answers ``ping``,
its fd count stays within a bound of where it started, and every unit is in a
state the state table knows. The manager itself must never be told to stop.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from conftest import ROOT, Aeterna
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from strategies import NOTIFY_PAYLOADS, SRP_MESSAGES

from aeterna.unit.states import State

PY = sys.executable
APPS = ROOT / "tests" / "apps"
STATES = {s.value for s in State}
UNITS = ("fwd", "sleeper", "web")

CONTROL_LINES = st.one_of(
    st.builds(lambda verb, unit, nb: json.dumps({"v": 1, "verb": verb, "unit": unit,
                                                  "no_block": nb}).encode() + b"\n",
              st.sampled_from(["ping", "status", "start", "restart", "reload", "stop",
                               "nope", ""]),
              st.sampled_from([*UNITS, "missing", "..", ""]),
              st.booleans()),
    st.builds(lambda v: json.dumps(v).encode() + b"\n",
              st.dictionaries(st.sampled_from(["v", "verb", "unit", "no_block", "x"]),
                              st.none() | st.booleans() | st.integers() | st.text(max_size=8)
                              | st.lists(st.integers(), max_size=3), max_size=5)),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"") + b"\n"),
    st.integers(1, 6000).map(lambda n: b"[" * n + b"]" * n + b"\n"),
)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def units(tmp: Path, port: int) -> dict[str, str]:
    fwd = {"service": {"name": "fwd", "type": "notify", "notify_access": "all",
                       "restart": "always", "restart_sec": "50ms",
                       "start_limit": {"burst": 100000, "interval": "1s"},
                       "watchdog_sec": "0",
                       "command": [PY, str(APPS / "forwarder.py"), str(tmp / "fwd.sock")]},
           "orchestration": {"state_handoff": {"enabled": True, "timeout": "1s"}}}
    sleeper = {"service": {"name": "sleeper", "restart": "always", "restart_sec": "50ms",
                           "command": [PY, "-c", "import time; time.sleep(3600)"]}}
    web = {"service": {"name": "web", "type": "notify", "restart": "always",
                       "restart_sec": "50ms",
                       "sockets": [{"listen": f"127.0.0.1:{port}", "name": "http"}],
                       "command": [PY, str(APPS / "notifier.py"), "send:READY=1",
                                   "forever"]},
           "orchestration": {"strategy": "hot-relay", "canary": {"soak_time": "0s"},
                             "drain": {"timeout": "2s"}}}
    return {f"{n}.yaml": json.dumps(u) for n, u in (("fwd", fwd), ("sleeper", sleeper),
                                                    ("web", web))}


def test_random_input_never_breaks_the_manager(aeterna: Any, tmp_path: Path) -> None:
    from conftest import free_port

    m: Aeterna = aeterna(units(tmp_path, free_port()))
    m.wait_ready()
    for name in UNITS:
        m.wait_status(name, lambda s: s["state"] == "active", timeout=20)
    pid = m.proc.pid
    notify_path = str(Path(m.control).parent / f"notify-{pid}.sock")
    baseline = fd_count(pid)
    r_end, w_end = os.pipe()

    class Machine(RuleBasedStateMachine):
        """Each rule is one input; the invariants are what must hold after it."""

        def _forward(self, record: bytes, fds: list[int]) -> None:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
                    c.settimeout(5)
                    c.connect(str(tmp_path / "fwd.sock"))
                    if fds:
                        socket.send_fds(c, [record], fds)
                    else:
                        c.send(record)
                    c.recv(8)
            except OSError:
                pass  # the forwarder is restarting (a random WATCHDOG=trigger, say)

        @rule(line=CONTROL_LINES)
        def control(self, line: bytes) -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.settimeout(30)
                c.connect(m.control)
                if b'"verb": "stop"' in line and b'"unit": null' in line:
                    return  # stopping the whole manager is not an attack
                c.sendall(line)
                reply = c.makefile("rb").readline()
            assert reply, f"no answer to {line[:80]!r}"
            assert "ok" in json.loads(reply)

        @rule(payload=NOTIFY_PAYLOADS, with_fds=st.integers(0, 3))
        def stranger_datagram(self, payload: bytes, with_fds: int) -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.connect(notify_path)
                try:
                    if with_fds:
                        socket.send_fds(s, [payload], [r_end, w_end][: with_fds % 2 + 1]
                                        * with_fds)
                    else:
                        s.send(payload)
                except OSError:
                    pass  # too large for a datagram

        @rule(payload=NOTIFY_PAYLOADS, with_fds=st.integers(0, 2))
        def unit_datagram(self, payload: bytes, with_fds: int) -> None:
            self._forward(b"N" + payload, [r_end, w_end][:with_fds])

        @rule(record=SRP_MESSAGES | st.just(b""), with_fds=st.integers(0, 2))
        def srp_record(self, record: bytes, with_fds: int) -> None:
            self._forward(b"S" + record, [r_end, w_end][:with_fds])

        @invariant()
        def still_serving(self) -> None:
            reply = m.ctl("ping", timeout=10)
            assert reply["ok"], reply
            assert fd_count(pid) <= baseline + 64, (baseline, fd_count(pid))
            status = m.ctl("status", timeout=10)["result"]["units"]
            for u in status:
                assert u["state"] in STATES, u

    try:
        run_state_machine_as_test(Machine, settings=settings(
            max_examples=30, stateful_step_count=30, deadline=None,
            suppress_health_check=list(HealthCheck)))
    finally:
        os.close(r_end)
        os.close(w_end)
    out = m.output()
    assert "Traceback" not in out
    seen = {k: out.count(k) for k in ("notify.dropped", "srp.dropped", "unit.started",
                                      "relay.outcome", "control.", "fdstore.add")}
    print(seen)  # what the random run got to
    # Quiet again: the manager is where it started, give or take the restarts' pipes.
    deadline = time.monotonic() + 10
    while fd_count(pid) > baseline + 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fd_count(pid) <= baseline + 8
