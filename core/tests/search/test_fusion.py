"""Reciprocal rank fusion (k = 60, weights per list)."""

from __future__ import annotations

import pytest

from topgun.search.fusion import RRF_K, reciprocal_rank_fusion


def test_scores_and_order() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]])
    assert [k for k, _ in fused] == ["a", "c", "b"]
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62)
    assert RRF_K == 60


def test_weights_scale_each_list() -> None:
    fused = reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0, 2.0])
    assert fused == [("b", pytest.approx(2 / 61)), ("a", pytest.approx(1 / 61))]
    assert reciprocal_rank_fusion([["a"], ["b"]], weights=[0, 1])[0][0] == "b"


def test_ties_break_by_key_and_repeats_count_once() -> None:
    assert [k for k, _ in reciprocal_rank_fusion([["b"], ["a"]])] == ["a", "b"]
    assert dict(reciprocal_rank_fusion([["a", "a"]]))["a"] == pytest.approx(1 / 61)
    assert reciprocal_rank_fusion([]) == []


def test_custom_k() -> None:
    assert dict(reciprocal_rank_fusion([["a"]], k=0))["a"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": [1.0]}, "2 rankings"),
        ({"weights": [1.0, float("nan")]}, "finite"),
        ({"weights": [1.0, -1.0]}, ">= 0"),
        ({"k": -1}, "k must"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reciprocal_rank_fusion([["a"], ["b"]], **kwargs)  # type: ignore[arg-type]
