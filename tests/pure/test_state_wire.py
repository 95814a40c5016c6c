"""The re-exec state format (wire.state), fuzzed: what encodes decodes to the same record,
and any bytes either decode or raise StateError naming where they went wrong."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aeterna.wire import state as sw

fds = st.integers(3, 4096)
pids = st.one_of(st.none(), st.integers(1, (1 << 22) - 1))
times = st.floats(0, 1e9, allow_nan=False)
names = st.text(max_size=20)
named = st.builds(sw.Named, name=names, fd=fds)
srp = st.builds(
    sw.Srp, seq=st.integers(0, 1 << 40),
    channels=st.lists(st.builds(sw.Channel, generation=st.integers(0, 99), fd=fds,
                                asked=st.booleans()), max_size=3).map(tuple),
    latest=st.one_of(st.none(), st.builds(
        sw.Checkpoint, generation=st.integers(0, 99),
        fields=st.lists(st.tuples(names, names), max_size=3).map(tuple),
        fds=st.lists(fds, max_size=3).map(tuple))))
units = st.builds(
    sw.Unit, name=names, state=st.sampled_from(["active", "starting", "auto-restart"]),
    result=names, want=names, main_pid=pids, pgid=pids, generation=st.integers(0, 1 << 31),
    last_generation=st.integers(0, 1 << 31), restarts=st.integers(0, 1 << 31),
    restart_attempt=st.integers(0, 99), started_at=st.one_of(st.none(), times),
    deadline=st.one_of(st.none(), times), timer_event=names,
    exit_code=st.one_of(st.none(), st.integers(0, 255)),
    exit_signal=st.one_of(st.none(), st.integers(1, 64)), status_text=names,
    listeners=st.lists(named, max_size=3).map(tuple),
    fdstore=st.lists(named, max_size=3).map(tuple), srp=st.one_of(st.none(), srp))
states = st.builds(
    sw.ManagerState, aeterna_version=names, pid=st.integers(1, 1 << 22),
    paths=st.lists(names, max_size=3).map(tuple), control_path=names, runtime_dir=names,
    log_level=names, notify_path=names, notify_fd=fds, control_fd=fds, taken_at=times,
    started_wall=times, reexecs=st.integers(0, 1 << 31),
    last_reexec_wall=st.one_of(st.none(), times), reply_fd=st.one_of(st.none(), fds),
    units=st.lists(units, max_size=4).map(tuple),
    pipes=st.lists(st.builds(sw.Pipe, fd=fds, prefix=names,
                             stream=st.sampled_from(["out", "err"]),
                             partial=st.binary(max_size=40)), max_size=4).map(tuple),
    counters=st.lists(st.tuples(names, st.integers(0, 1 << 62)), max_size=4).map(tuple))


@settings(max_examples=150, deadline=None)
@given(states)
def test_what_encodes_decodes_the_same(state: sw.ManagerState) -> None:
    assert sw.decode(sw.encode(state)) == state


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=200),
                     st.just(data).map(lambda d: d[: len(d) // 2]),
                     st.integers(0, len(data) - 1).flatmap(
                         lambda i: st.binary(min_size=1, max_size=4).map(
                             lambda b: data[:i] + b + data[i + len(b):])))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_bytes_decode_or_raise_state_error(data: st.DataObject) -> None:
    base = data.draw(states)
    payload = data.draw(_mutations(sw.encode(base)))
    try:
        sw.decode(payload)
    except sw.StateError as exc:
        assert str(exc)


@settings(max_examples=150, deadline=None)
@given(states, st.sampled_from(["notify_fd", "units", "pid", "paths", "reply_fd"]),
       st.one_of(st.none(), st.text(max_size=3), st.integers(-5, 2), st.booleans(),
                 st.lists(st.integers(), max_size=2), st.floats()))
def test_a_wrong_value_is_named(state: sw.ManagerState, key: str, value: object) -> None:
    header, _, body = sw.encode(state).partition(b"\n")
    obj = json.loads(body)
    obj[key] = value
    try:
        sw.decode(header + b"\n" + json.dumps(obj).encode())
    except sw.StateError as exc:
        assert f"state.{key}" in str(exc) or "state.units[" in str(exc)


def test_another_version_is_refused_with_the_versions() -> None:
    state = sw.ManagerState("x", 1, (), "", "", "info", "", 3, 4, 0.0, 0.0)
    payload = sw.encode(state).replace(b"AETERNA-STATE 1", b"AETERNA-STATE 2", 1)
    with pytest.raises(sw.StateError, match="version '2'.*reads version 1"):
        sw.decode(payload)
    with pytest.raises(sw.StateError, match="not an Aeterna state"):
        sw.decode(b"{}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=30),
    st.tuples(st.integers(0, 1 << 22), st.integers(0, 1 << 40),
              names.filter(lambda s: not set(s) & set("\t\n\r\x0b\x0c\x1c\x1d\x1e\x85"))
              ).map(lambda t: "+\t" + "\t".join(map(str, t))),
    st.integers(0, 1 << 22).map(lambda p: f"-\t{p}")), max_size=6),
    st.booleans())
def test_the_crash_journal_parses_or_says_which_line(lines: list[str], header: bool) -> None:
    from aeterna.manager.recovery import parse_record

    text = "\n".join((["aeterna-units\t2", "manager\t10\t20"] if header else []) + lines)
    try:
        dead, procs = parse_record(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert dead == (10, 20) or not header
    assert all(isinstance(pid, int) and isinstance(t, int) for _, pid, t in procs)


def test_the_journal_replays_starts_and_exits() -> None:
    from aeterna.manager.recovery import parse_record

    text = "aeterna-units\t2\nmanager\t5\t6\n+\t7\t70\tweb\n+\t8\t80\tw\n-\t7\n+\t9\t90\tweb\n"
    assert parse_record(text) == ((5, 6), [("w", 8, 80), ("web", 9, 90)])
