"""docs/architecture.md shows the state machines as the code has them."""

from __future__ import annotations

from conftest import ROOT

from aeterna.relay import handoff, outcome
from aeterna.unit import table

DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_the_unit_table_in_the_doc_is_the_code_s() -> None:
    assert table.markdown() in DOC


def test_the_relay_and_handoff_phases_in_the_doc_are_the_code_s() -> None:
    assert outcome.markdown() in DOC
    assert handoff.markdown() in DOC


def test_every_relay_reason_is_named_in_the_doc() -> None:
    for reason in outcome.Reason:
        assert f"`{reason.value}`" in DOC, reason
    for result in handoff.HandoffResult:
        assert f"`{result.value}`" in DOC, result
