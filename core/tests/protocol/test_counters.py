"""CounterState: either spelling on input, both on output (§2.3)."""

from __future__ import annotations

import math

import pytest

from topgun.protocol import CounterState


def test_of_fills_both_spellings() -> None:
    state = CounterState.of({"a": 5}, {"b": 1.5})
    assert (state.p, state.n, state.positive, state.negative) == (
        {"a": 5},
        {"b": 1.5},
        {"a": 5},
        {"b": 1.5},
    )


def test_totals_merge_both_spellings_by_maximum() -> None:
    state = CounterState(p={"a": 5, "b": 1}, positive={"a": 3, "c": 2}, negative={"x": 1})
    assert state.totals() == ({"a": 5, "b": 1, "c": 2}, {"x": 1})


@pytest.mark.parametrize("amount", [-1.0, math.inf, math.nan])
def test_entries_must_be_finite_and_non_negative(amount: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        CounterState(negative={"a": amount})
