"""sd_notify's pure half (wire.notify): the parser, validation, authorisation, fuzzed."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import NOTIFY_PAYLOADS

from aeterna.model import NotifyAccess
from aeterna.wire.notify import (
    NOTIFY_BUFFER_MAX,
    NotifyError,
    NotifyMessage,
    Rejection,
    _split_lines,  # private: checked against a port of systemd's loop
    authorise,
    parse,
    validate,
)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- parser ---------------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, bytes, dict[str, Any]]] = [
    ("empty", b"", {"ready": False, "raw_keys": ()}),
    ("ready", b"READY=1", {"ready": True}),
    ("ready-newline", b"READY=1\n", {"ready": True}),
    ("ready-crlf", b"READY=1\r\n", {"ready": True}),  # systemd splits on \r too
    ("blank-lines", b"\n\n\nREADY=1\n\n", {"ready": True}),
    ("trailing-nul", b"READY=1\0", {"ready": True}),
    ("trailing-space", b"READY=1 ", {"ready": False, "raw_keys": ("READY",)}),
    ("spaces-around-eq", b"READY = 1", {"ready": False, "raw_keys": ("READY ",)}),
    ("leading-space", b" READY=1", {"ready": False}),
    ("ready-true", b"READY=true", {"ready": False}),
    ("flag-any-line", b"READY=0\nREADY=1", {"ready": True}),
    (
        "reloading",
        b"RELOADING=1\nMONOTONIC_USEC=123456",
        {"reloading": True, "monotonic_usec": 123456},
    ),
    ("stopping", b"STOPPING=1", {"stopping": True}),
    ("fdstore-fdname", b"FDSTORE=1\nFDNAME=db", {"fdstore": True, "fdname": "db", "fdpoll": True}),
    ("fdpoll-0", b"FDSTORE=1\nFDPOLL=0", {"fdstore": True, "fdpoll": False, "fdname": None}),
    ("fdpoll-1", b"FDPOLL=1", {"fdpoll": True}),
    ("fdstoreremove", b"FDSTOREREMOVE=1\nFDNAME=db", {"fdstoreremove": True, "fdname": "db"}),
    ("fdname-colon", b"FDSTORE=1\nFDNAME=a:b", {"fdstore": True, "fdname": None}),
    ("fdname-empty", b"FDNAME=", {"fdname": ""}),
    ("fdname-too-long", b"FDNAME=" + b"n" * 256, {"fdname": None}),
    ("fdname-255", b"FDNAME=" + b"n" * 255, {"fdname": "n" * 255}),
    ("barrier", b"BARRIER=1", {"barrier": True}),
    ("barrier-newline", b"BARRIER=1\n", {"barrier": True}),
    ("watchdog-ping", b"WATCHDOG=1", {"watchdog_ping": True, "watchdog_trigger": False}),
    ("watchdog-trigger", b"WATCHDOG=trigger", {"watchdog_trigger": True, "watchdog_ping": False}),
    ("watchdog-first-wins", b"WATCHDOG=x\nWATCHDOG=1", {"watchdog_ping": False}),
    ("watchdog-space", b"WATCHDOG=1 ", {"watchdog_ping": False}),
    ("mainpidfd", b"MAINPIDFD=1", {"mainpidfd": True}),
    ("restart-reset", b"RESTART_RESET=1", {"restart_reset": True}),
    ("status", b"STATUS=Serving 3 clients", {"status": "Serving 3 clients"}),
    ("status-first-wins", b"STATUS=a\nSTATUS=b", {"status": "a"}),
    ("status-empty-clears", b"STATUS=", {"status": ""}),
    ("status-absent", b"READY=1", {"status": None}),
    ("status-utf8", "STATUS=héllo ✓ 日本".encode(), {"status": "héllo ✓ 日本"}),
    ("status-bad-utf8", b"STATUS=a\xffb", {"status": "a\ufffdb"}),
    ("status-equals", b"STATUS=a=b", {"status": "a=b"}),
    ("status-4096", b"STATUS=" + b"x" * (NOTIFY_BUFFER_MAX - 7), {"status": "x" * 4089}),
    ("backslash-escape", b"STATUS=a\\b", {"status": "ab"}),
    ("backslash-double", b"STATUS=C:\\\\tmp", {"status": "C:\\tmp"}),
    ("backslash-joins-lines", b"STATUS=a\\\nb", {"status": "a\nb"}),
    ("backslash-in-key", b"READY\\=1", {"ready": True}),
    ("mainpid", b"MAINPID=4711", {"mainpid": 4711}),
    ("mainpid-zero", b"MAINPID=0", {"mainpid": None}),
    ("mainpid-negative", b"MAINPID=-5", {"mainpid": None}),
    ("mainpid-too-big", b"MAINPID=2147483648", {"mainpid": None}),
    ("mainpid-max", b"MAINPID=2147483647", {"mainpid": 2147483647}),
    ("mainpid-junk-keeps-rest", b"MAINPID=abc\nREADY=1", {"mainpid": None, "ready": True}),
    ("mainpid-leading-ws", b"MAINPID= 42", {"mainpid": 42}),
    ("mainpid-trailing-ws", b"MAINPID=42 ", {"mainpid": None}),
    ("mainpid-first-wins", b"MAINPID=7\nMAINPID=8", {"mainpid": 7}),
    ("watchdog-usec", b"WATCHDOG_USEC=20000000", {"watchdog_usec": 20_000_000}),
    ("watchdog-usec-hex", b"WATCHDOG_USEC=0x10", {"watchdog_usec": 16}),
    ("watchdog-usec-octal", b"WATCHDOG_USEC=010", {"watchdog_usec": 8}),
    ("watchdog-usec-bad-octal", b"WATCHDOG_USEC=08", {"watchdog_usec": None}),
    ("watchdog-usec-binary", b"WATCHDOG_USEC=0b101", {"watchdog_usec": 5}),
    ("watchdog-usec-u64-max", b"WATCHDOG_USEC=18446744073709551615", {"watchdog_usec": 2**64 - 1}),
    ("watchdog-usec-overflow", b"WATCHDOG_USEC=18446744073709551616", {"watchdog_usec": None}),
    ("watchdog-usec-minus-zero", b"WATCHDOG_USEC=-0", {"watchdog_usec": 0}),
    ("watchdog-usec-negative", b"WATCHDOG_USEC=-1", {"watchdog_usec": None}),
    ("watchdog-usec-empty", b"WATCHDOG_USEC=", {"watchdog_usec": None}),
    ("watchdog-usec-underscore", b"WATCHDOG_USEC=1_000", {"watchdog_usec": None}),
    ("extend-timeout", b"EXTEND_TIMEOUT_USEC=5000000", {"extend_timeout_usec": 5_000_000}),
    ("extend-timeout-junk", b"EXTEND_TIMEOUT_USEC=5s", {"extend_timeout_usec": None}),
    ("notifyaccess-all", b"NOTIFYACCESS=all", {"notifyaccess": NotifyAccess.ALL}),
    ("notifyaccess-none", b"NOTIFYACCESS=none", {"notifyaccess": NotifyAccess.NONE}),
    ("notifyaccess-case", b"NOTIFYACCESS=ALL", {"notifyaccess": None}),
    ("notifyaccess-bogus", b"NOTIFYACCESS=everyone", {"notifyaccess": None}),
    ("errno-number", b"ERRNO=2", {"errno": 2}),
    ("errno-name", b"ERRNO=ENOENT", {"errno": 2}),
    ("errno-zero", b"ERRNO=0", {"errno": 0}),
    ("errno-too-big", b"ERRNO=4096", {"errno": None}),
    ("errno-negative", b"ERRNO=-1", {"errno": None}),
    ("exit-status", b"EXIT_STATUS=3", {"exit_status": 3}),
    ("exit-status-too-big", b"EXIT_STATUS=256", {"exit_status": None}),
    ("no-equals-ignored", b"garbage\nREADY=1", {"ready": True, "raw_keys": ("READY",)}),
    (
        "extra-first-wins",
        b"X_FOO=bar\nX_FOO=baz\nBUSERROR=org.x.Err\nREADY=1",
        {
            "extra": {"X_FOO": "bar", "BUSERROR": "org.x.Err"},
            "raw_keys": ("X_FOO", "BUSERROR", "READY"),
        },
    ),
    ("known-keys-not-extra", b"READY=0\nSTATUS=x", {"extra": {}}),
]


@pytest.mark.parametrize(
    ("payload", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse(payload: bytes, expected: dict[str, Any]) -> None:
    message = parse(payload)
    for name, value in expected.items():
        got = getattr(message, name)
        assert (dict(got) if name == "extra" else got) == value, name


REJECT_CASES: list[tuple[str, bytes, Rejection]] = [
    ("nul-middle", b"READY=1\0STATUS=x", Rejection.NUL),
    ("nul-first", b"\0READY=1", Rejection.NUL),
    ("two-nuls", b"\0\0", Rejection.NUL),
    ("too-large-4097", b"STATUS=" + b"x" * (NOTIFY_BUFFER_MAX - 6), Rejection.TOO_LARGE),
    ("trailing-backslash", b"STATUS=x\\", Rejection.BAD_ESCAPE),
    ("barrier-with-lines", b"BARRIER=1\nREADY=1", Rejection.BAD_BARRIER),
    ("barrier-twice", b"BARRIER=1\nBARRIER=1", Rejection.BAD_BARRIER),
]


@pytest.mark.parametrize(
    ("payload", "reason"), [c[1:] for c in REJECT_CASES], ids=[c[0] for c in REJECT_CASES]
)
def test_parse_rejects(payload: bytes, reason: Rejection) -> None:
    with pytest.raises(NotifyError) as info:
        parse(payload)
    assert info.value.reason is reason


def test_single_nul_is_an_empty_message() -> None:
    assert parse(b"\0") == NotifyMessage()


def test_message_is_frozen_and_hashable() -> None:
    message = parse(b"READY=1\nX_A=b")
    with pytest.raises(AttributeError):
        message.ready = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        message.extra["X_A"] = "c"  # type: ignore[index]
    assert hash(message) == hash(parse(b"READY=1\nX_A=b"))


def test_validate_order_and_credentials() -> None:
    assert validate(b"READY=1", 0, 42, 0).ready
    for pid in (None, 0, -1):
        with pytest.raises(NotifyError) as info:
            validate(b"READY=1", 0, pid, 0)
        assert info.value.reason is Rejection.NO_CREDENTIALS
    with pytest.raises(NotifyError) as info:
        validate(b"x", socket.MSG_TRUNC, 42, 0)
    assert info.value.reason is Rejection.TRUNCATED
    with pytest.raises(NotifyError) as info:  # CTRUNC wins, as in recvmsg_safe()
        validate(b"x", socket.MSG_TRUNC | socket.MSG_CTRUNC, None, 0)
    assert info.value.reason is Rejection.CTRUNC


@pytest.mark.parametrize("n_fds", [0, 2, 3])
def test_barrier_needs_exactly_one_fd(n_fds: int) -> None:
    assert validate(b"BARRIER=1", 0, 42, 1).barrier
    with pytest.raises(NotifyError) as info:
        validate(b"BARRIER=1", 0, 42, n_fds)
    assert info.value.reason is Rejection.BAD_BARRIER


# --- authorisation -------------------------------------------------------------------------

MAIN, CONTROL, OTHER, STRANGER = 100, 200, 300, 400
AUTH_CASES = [
    (NotifyAccess.NONE, MAIN, False),
    (NotifyAccess.MAIN, MAIN, True),
    (NotifyAccess.MAIN, CONTROL, False),
    (NotifyAccess.MAIN, OTHER, False),
    (NotifyAccess.EXEC, MAIN, True),
    (NotifyAccess.EXEC, CONTROL, True),
    (NotifyAccess.EXEC, OTHER, False),
    (NotifyAccess.ALL, MAIN, True),
    (NotifyAccess.ALL, CONTROL, True),
    (NotifyAccess.ALL, OTHER, True),
    (NotifyAccess.ALL, STRANGER, False),
]


@pytest.mark.parametrize(("access", "sender", "allowed"), AUTH_CASES)
def test_authorise(access: NotifyAccess, sender: int, allowed: bool) -> None:
    assert authorise(access, sender, MAIN, {CONTROL}, {MAIN, CONTROL, OTHER}) is allowed


def test_authorise_unknown_main_pid_and_bad_sender() -> None:
    assert not authorise(NotifyAccess.MAIN, MAIN, None, set(), {MAIN})
    assert authorise(NotifyAccess.EXEC, CONTROL, None, {CONTROL}, set())
    assert not authorise(NotifyAccess.ALL, 0, 0, {0}, {0})


# --- fuzzing -------------------------------------------------------------------------------

PAYLOADS = NOTIFY_PAYLOADS


@settings(max_examples=1500, deadline=None)
@given(PAYLOADS)
def test_parse_only_raises_notify_error(payload: bytes) -> None:
    try:
        message = parse(payload)
    except NotifyError as exc:
        assert isinstance(exc.reason, Rejection)
        return
    assert message == parse(payload)
    assert len(set(message.raw_keys)) == len(message.raw_keys)
    assert message.mainpid is None or 0 < message.mainpid < 2**31
    assert message.errno is None or 0 <= message.errno <= 4095


def reference_split(text: bytes) -> list[bytes] | None:
    """A line-by-line port of extract_first_word(NEWLINE, flags=0); None for -EINVAL."""
    lines: list[bytes] = []
    word = bytearray()
    in_word = False
    i = 0
    while i < len(text):
        c = text[i : i + 1]
        if c == b"\\":
            if i + 1 == len(text):
                return None
            word += text[i + 1 : i + 2]
            in_word, i = True, i + 2
            continue
        if c in (b"\n", b"\r"):
            if in_word:
                lines.append(bytes(word))
            word, in_word = bytearray(), False
        else:
            word += c
            in_word = True
        i += 1
    return [*lines, bytes(word)] if in_word else lines


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from([b"\\", b"\n", b"\r", b"A", b"=", b"1", b"\xff"]), max_size=40))
def test_line_splitting_matches_systemd_algorithm(pieces: list[bytes]) -> None:
    text = b"".join(pieces)
    expected = reference_split(text)
    if expected is None:
        with pytest.raises(NotifyError):
            _split_lines(text)
    else:
        assert _split_lines(text) == expected
