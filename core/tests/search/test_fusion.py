"""Reciprocal rank fusion (k = 60, weights per list) and `FusedIndex`."""

from __future__ import annotations

import pytest

from topgun.search import BM25Index, SearchError
from topgun.search.fusion import RRF_K, FusedIndex, reciprocal_rank_fusion


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


def title_and_body(weights: list[float] | None = None) -> FusedIndex:
    """BM25 over the title and BM25 over the body, fused. For "merkle sync" the title ranks
    b, a, c and the body a, c, b (checked below)."""
    fused = FusedIndex([BM25Index(["title"]), BM25Index(["body"])], weights)
    fused.set("a", {"title": "merkle", "body": "sync"})
    fused.set("b", {"title": "sync", "body": "merkle"})
    fused.set("c", {"title": "merkle tree", "body": "merkle merkle"})
    fused.set("d", {"title": "other", "body": "words"})
    return fused


def test_fused_index_ranks_by_rrf_of_every_index() -> None:
    fused = title_and_body()
    title, body = (index.search("merkle sync").hits for index in fused.indexes)
    assert ([h.key for h in title], [h.key for h in body]) == (["b", "a", "c"], ["a", "c", "b"])
    result = fused.search("merkle sync")
    assert [(h.key, h.score) for h in result.hits] == [
        ("a", pytest.approx(1 / 62 + 1 / 61)),
        ("b", pytest.approx(1 / 61 + 1 / 63)),
        ("c", pytest.approx(1 / 63 + 1 / 62)),
    ]
    assert [h.matched_terms for h in result.hits] == [
        ["merkl", "sync"],
        ["sync", "merkl"],
        ["merkl"],
    ]
    assert result.total_count == 3
    assert len(fused) == 4


def test_fused_index_weights_limit_min_score_and_changes() -> None:
    fused = title_and_body([3.0, 1.0])
    assert [h.key for h in fused.search("merkle sync").hits] == ["b", "a", "c"]
    top = fused.search("merkle sync", limit=1)
    assert ([h.key for h in top.hits], top.total_count) == (["b"], 3)
    high = fused.search("merkle sync", min_score=3 / 62 + 1 / 61)
    assert ([h.key for h in high.hits], high.total_count) == (["b", "a"], 2)
    fused.delete("b")
    assert [h.key for h in fused.search("merkle sync").hits] == ["a", "c"]
    fused.set("c", {"title": "nothing", "body": "here"})
    assert [h.key for h in fused.search("merkle sync").hits] == ["a"]


def test_fused_index_rejects_bad_options() -> None:
    fused = title_and_body()
    with pytest.raises(SearchError, match="limit"):
        fused.search("merkle", limit=-1)
    with pytest.raises(SearchError, match="minScore"):
        fused.search("merkle", min_score=float("nan"))
    with pytest.raises(SearchError, match="boost"):
        fused.search("merkle", boost={"title": float("inf")})
    with pytest.raises(ValueError, match="weights"):
        FusedIndex([BM25Index(["title"])], [-1.0])
    with pytest.raises(ValueError, match="at least one"):
        FusedIndex([])
