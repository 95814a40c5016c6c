"""The unit state machine's table, and the pure restart policy."""

from __future__ import annotations

import signal

import pytest

from aeterna.model import Backoff, RestartPolicy, ServiceType, StartLimit
from aeterna.results import ExitInfo, Result
from aeterna.unit.policy import StartLimiter, classify_exit, restart_delay, should_restart
from aeterna.unit.states import Event, State
from aeterna.unit.table import TRANSITIONS


def test_every_cell_of_the_table_is_filled_with_a_real_handler() -> None:
    assert set(TRANSITIONS) == {(s, e) for s in State for e in Event}
    for (state, event), handler in TRANSITIONS.items():
        assert callable(handler), (state, event)


@pytest.mark.parametrize("info,type_,expected", [
    (ExitInfo(code=0), ServiceType.SIMPLE, Result.SUCCESS),
    (ExitInfo(code=3), ServiceType.SIMPLE, Result.EXIT_CODE),
    (ExitInfo(signal=signal.SIGTERM), ServiceType.SIMPLE, Result.SUCCESS),
    (ExitInfo(signal=signal.SIGTERM), ServiceType.ONESHOT, Result.SIGNAL),
    (ExitInfo(signal=signal.SIGKILL), ServiceType.SIMPLE, Result.SIGNAL),
    (ExitInfo(signal=signal.SIGSEGV, core=True), ServiceType.SIMPLE, Result.CORE_DUMP),
])
def test_classify_exit(info: ExitInfo, type_: ServiceType, expected: Result) -> None:
    assert classify_exit(info, type_) is expected


def test_success_exit_status_counts_as_clean() -> None:
    assert classify_exit(ExitInfo(code=42), ServiceType.SIMPLE, (42,)) is Result.SUCCESS


# systemd.service(5)'s table: which results each Restart= value restarts on.
SYSTEMD_TABLE = {
    Result.SUCCESS: {"always", "on-success"},
    Result.EXIT_CODE: {"always", "on-failure"},
    Result.SIGNAL: {"always", "on-failure", "on-abnormal", "on-abort"},
    Result.TIMEOUT: {"always", "on-failure", "on-abnormal"},
    Result.WATCHDOG: {"always", "on-failure", "on-abnormal", "on-watchdog"},
}


@pytest.mark.parametrize("result", list(SYSTEMD_TABLE))
@pytest.mark.parametrize("policy", list(RestartPolicy))
def test_should_restart_matches_systemd(policy: RestartPolicy, result: Result) -> None:
    assert should_restart(policy, result) == (policy.value in SYSTEMD_TABLE[result])


def test_restart_delay_grows_and_caps() -> None:
    b = Backoff(factor=2, max_delay=1.0)
    assert [restart_delay(0.1, b, n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert restart_delay(0.5, Backoff(), 10) == 0.5


def test_start_limiter_window() -> None:
    lim = StartLimiter(StartLimit(burst=3, interval=10))
    assert [lim.allow(t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert lim.allow(10.5)  # the first start left the window
    assert StartLimiter(StartLimit(burst=0, interval=10)).allow(0)
