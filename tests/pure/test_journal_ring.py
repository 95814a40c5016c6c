"""The per-unit log ring: bounded by lines and bytes; cursors never skip or repeat a line."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aeterna.manager.journal import ENTRY_OVERHEAD, Ring

batches = st.lists(st.lists(st.binary(max_size=300), max_size=40), max_size=40)


@settings(max_examples=200, deadline=None)
@given(batches, st.integers(1, 50), st.integers(ENTRY_OVERHEAD, 20_000))
def test_bounds_and_a_follower_sees_every_line_or_is_told(
        seq_batches: list[list[bytes]], max_lines: int, max_bytes: int) -> None:
    ring = Ring(max_lines=max_lines, max_bytes=max_bytes)
    cursor, seen, told_lost = 0, [], 0
    written: list[bytes] = []
    for i, batch in enumerate(seq_batches):
        ring.append("stdout", 100 + i, 1 + i % 3, batch)
        written += batch
        assert len(ring.entries) <= max_lines
        assert ring.bytes <= max_bytes
        assert ring.bytes == sum(len(e.text) + ENTRY_OVERHEAD for e in ring.entries)
        if i % 2:  # a follower reading every other batch, a few lines at a time
            while True:
                entries, lost = ring.since(cursor, limit=7)
                told_lost += lost
                if not entries:
                    cursor += lost  # the server's cursor: past what was lost
                    break
                assert entries[0].seq == cursor + lost + 1
                seen += [e.text for e in entries]
                cursor = entries[-1].seq
    entries, lost = ring.since(cursor)
    told_lost += lost
    seen += [e.text for e in entries]
    assert ring.last_seq == len(written)
    assert len(seen) + told_lost == len(written)  # nothing skipped without being told
    kept = [e.text for e in ring.entries]
    assert written[len(written) - len(kept):] == kept


def test_tail() -> None:
    ring = Ring()
    ring.append("stderr", 7, 2, [b"a", b"b", b"c"])
    assert [e.text for e in ring.tail(2)] == [b"b", b"c"]
    assert ring.tail(0) == []
    assert ring.tail(10)[0].as_dict() == {"seq": 1, "time": ring.tail(10)[0].as_dict()["time"],
                                          "stream": "stderr", "pid": 7, "generation": 2,
                                          "text": "a"}


def test_all_rings_together_stay_under_the_total() -> None:
    from aeterna.manager.journal import MAX_BYTES, MIN_BYTES, TOTAL_BYTES, Journals

    total = 8 * 1024 * 1024
    j = Journals(total_bytes=total)
    line = b"y" * 1000
    for i in range(40):
        j.tap(f"u{i}", "stdout", 1, 1)([line] * 200)
    assert sum(r.bytes for r in j.rings.values()) > total  # the first ones had more room
    for i in range(40):
        j.tap(f"u{i}", "stdout", 1, 1)([line])  # each trims to its share
    assert sum(r.bytes for r in j.rings.values()) <= total  # 40 x 241 KB written
    assert {r.max_bytes for r in j.rings.values()} == {total // 40}
    assert TOTAL_BYTES // 16 == MAX_BYTES  # up to 16 chatty units keep 4 MiB each
    assert Journals().ring("only").max_bytes == MAX_BYTES
    many = Journals()
    for i in range(5000):
        many.ring(f"u{i}")
    assert many.ring("u0").max_bytes == MIN_BYTES
