"""SRP's wire format (wire.srp), fuzzed: only SrpError escapes, and what parses writes back."""

from __future__ import annotations

from hypothesis import given, settings
from strategies import SRP_MESSAGES as message_st

from aeterna.wire import srp as srp_wire


@settings(max_examples=400, deadline=None)
@given(message_st)
def test_parse_never_raises_anything_but_srp_error(payload: bytes) -> None:
    try:
        msg = srp_wire.parse(payload)
    except srp_wire.SrpError as exc:
        assert exc.reason
        return
    assert msg.verb in srp_wire.VERBS and msg.value in ("0", "1")
    assert msg.verb not in msg.fields
    _ = msg.seq
    # What parses can be written back, and reads the same.
    again = srp_wire.parse(srp_wire.format_message(msg.verb, msg.value, **msg.fields))
    assert again == msg
