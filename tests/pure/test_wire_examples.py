"""The shared wire examples (sdk/testdata/srp-wire.json) against the manager's and
the Python SDK's parsers; ``sdk/go``'s tests run the same file against the Go SDK
(tests/e2e/test_go_sdk.py), so the three cannot disagree on what is valid."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest

from aeterna.wire import notify as notify_wire
from aeterna.wire import srp as srp_wire
from aeterna_sdk import notify as sdk_notify
from aeterna_sdk import wire as sdk_wire
from aeterna_sdk.client import AeternaClient

EXAMPLES = json.loads((Path(__file__).resolve().parents[2] / "sdk" / "testdata"
                       / "srp-wire.json").read_text(encoding="utf-8"))


def payload(rec: dict[str, Any]) -> bytes:
    data = bytes.fromhex(rec["hex"]) if "hex" in rec else rec["text"].encode("utf-8")
    return data + b"x" * (rec.get("pad_to", 0) - len(data))


RECORDS = EXAMPLES["records"]


@pytest.mark.parametrize("rec", RECORDS, ids=[r["name"] for r in RECORDS])
def test_the_manager_parses_every_example_as_written(rec: dict[str, Any]) -> None:
    data = payload(rec)
    if "error" in rec:
        with pytest.raises(srp_wire.SrpError) as info:
            srp_wire.parse(data)
        assert info.value.reason == rec["error"]
        return
    msg = srp_wire.parse(data)
    assert (msg.verb, msg.value, msg.fields, msg.seq) == (rec["verb"], rec["value"],
                                                          rec["fields"], rec["seq"])


@pytest.mark.parametrize("rec", RECORDS, ids=[r["name"] for r in RECORDS])
def test_the_python_sdk_parses_every_example_as_written(rec: dict[str, Any]) -> None:
    msg = sdk_wire.parse(payload(rec))
    if "error" in rec:
        assert msg is None
        return
    assert msg is not None
    assert (msg.verb, msg.value, msg.fields, msg.seq) == (rec["verb"], rec["value"],
                                                          rec["fields"], rec["seq"])


@pytest.mark.parametrize("ex", EXAMPLES["formats"])
def test_the_python_sdk_writes_or_refuses_as_the_examples_say(ex: dict[str, Any]) -> None:
    fields = dict(ex["fields"])
    if ex.get("refused"):
        with pytest.raises(ValueError):
            sdk_wire.format_message(ex["verb"], ex["value"], **fields)
        return
    data = sdk_wire.format_message(ex["verb"], ex["value"], **fields)
    assert data == ex["text"].encode()
    assert srp_wire.parse(data).fields == fields


@pytest.mark.parametrize("ex", EXAMPLES["notify"], ids=[e["text"] for e in EXAMPLES["notify"]])
def test_notify_calls_send_what_the_manager_reads(ex: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(5)
            client = AeternaClient({"NOTIFY_SOCKET": path})
            method = getattr(client, ex["call"])
            assert method(ex["arg"]) if ex["arg"] else method()
            data = sock.recv(sdk_notify.MAX_DATAGRAM)
    assert data == ex["text"].encode()
    msg = notify_wire.parse(data)
    for key, want in ex["expect"].items():
        assert getattr(msg, key) == want, key
