"""Hypothesis strategies shared by the pure and the end-to-end tests."""

from __future__ import annotations

from hypothesis import strategies as st

from aeterna.wire.notify import NOTIFY_BUFFER_MAX

KEYS = [
    b"READY", b"RELOADING", b"STOPPING", b"STATUS", b"ERRNO", b"EXIT_STATUS", b"MAINPID",
    b"WATCHDOG", b"WATCHDOG_USEC", b"EXTEND_TIMEOUT_USEC", b"MONOTONIC_USEC", b"FDSTORE",
    b"FDSTOREREMOVE", b"FDNAME", b"FDPOLL", b"BARRIER", b"NOTIFYACCESS", b"X_APP", b"",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from([b"1", b"0", b"trigger", b"all", b"-0", b"0x", b"ENOENT", b"\\", b" 1"]),
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.binary(max_size=24),
)
LINES = st.one_of(
    st.builds(lambda k, v: k + b"=" + v, st.sampled_from(KEYS), VALUES), st.binary(max_size=32)
)
NOTIFY_PAYLOADS = st.one_of(
    st.binary(max_size=NOTIFY_BUFFER_MAX + 64),
    st.builds(
        lambda lines, sep, tail: sep.join(lines) + tail,
        st.lists(LINES, max_size=12),
        st.sampled_from([b"\n", b"\r\n", b"\r", b"\\\n"]),
        st.sampled_from([b"", b"\n", b"\0", b"\\"]),
    ),
)

SRP_KEYS = ["HELLO", "STATE", "LOADED", "CHECKPOINT", "RESUME", "SEQ", "FORMAT", "SIZE",
            "CHECKSUM", "FDNAMES", "FDKINDS", "WANT_STATE", "VERSION", "REASON", "ERROR"]
_srp_line = st.tuples(st.sampled_from(SRP_KEYS) | st.text(min_size=0, max_size=8),
                    st.sampled_from(["", "=", "=="]),
                    st.sampled_from(["0", "1", "snapshot", "json", "12"])
                    | st.text(max_size=12))
SRP_MESSAGES = (st.binary(max_size=300)
              | st.lists(_srp_line, max_size=8).map(
                  lambda ls: "\n".join(k + e + v for k, e, v in ls).encode("utf-8", "replace"))
              | st.binary(min_size=16380, max_size=16390))
