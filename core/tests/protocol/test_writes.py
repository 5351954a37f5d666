"""Write messages: InvalidOp and the write-concern order."""

from __future__ import annotations

from topgun.protocol import WRITE_CONCERN_LEVELS, InvalidOp


def test_invalid_op_equality_and_repr() -> None:
    op = InvalidOp(2, "#2", "Invalid op: x", {"key": 5})
    assert op == InvalidOp(2, "#2", "Invalid op: x", {"key": 5})
    assert op != InvalidOp(2, "#2", "Invalid op: y", {"key": 5})
    assert op != "InvalidOp"
    assert repr(op) == "InvalidOp(index=2, op_id='#2', reason='Invalid op: x')"


def test_write_concern_levels_are_ordered_lowest_first() -> None:
    assert WRITE_CONCERN_LEVELS.index("MEMORY") < WRITE_CONCERN_LEVELS.index("PERSISTED")
    assert WRITE_CONCERN_LEVELS[0] == "FIRE_AND_FORGET"
