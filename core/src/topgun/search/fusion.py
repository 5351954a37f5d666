"""Reciprocal rank fusion: one ranking from several (BM25, vector search, ...).

Each list contributes `weight / (k + rank)` to every key it ranks (rank 1 first); keys are
ordered by their summed score, descending, then by key. Only ranks matter, so lists whose
scores are on different scales (BM25, cosine similarity) fuse without normalisation.
`FusedIndex` puts several providers' indexes of one map behind one `SearchIndex`, so the
server's searches and live searches rank by the fusion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from topgun.search.bm25 import DEFAULT_MAX_RESULTS, SearchError, SearchHit, SearchResult
from topgun.search.providers import SearchIndex

__all__ = ["RRF_K", "FusedIndex", "reciprocal_rank_fusion"]

RRF_K: Final = 60
"""The usual RRF constant: damps the weight of the very first ranks."""


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]],
    *,
    weights: Sequence[float] | None = None,
    k: float = RRF_K,
) -> list[tuple[str, float]]:
    """Fuse `rankings` (each a list of keys, best first) into `(key, score)` pairs, best first.

    A key repeated within one list counts at its best rank. `weights` (default 1 each) scale
    each list's contribution.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError("weights must be finite and >= 0")
    if not (math.isfinite(k) and k >= 0):
        raise ValueError("k must be finite and >= 0")
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        seen: set[str] = set()
        for rank, key in enumerate(ranking, start=1):
            if key not in seen:
                seen.add(key)
                scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


class FusedIndex:
    """Several indexes of the same documents, searched as one: each ranks the query, and the
    ranked lists are fused by `reciprocal_rank_fusion` (weights in index order).

    A hit's `score` is its fused score (`sum of weight / (k + rank)` over the lists ranking
    it, so at most `sum(weights) / (k + 1)`); `min_score` applies to that score, and only
    positive ones count. `matched_terms` is the union of the lists' terms, in index order.
    `total_count` is the size of the fused candidate set before `limit`. Each list holds at
    most `max_results` hits.
    """

    def __init__(
        self,
        indexes: Sequence[SearchIndex],
        weights: Sequence[float] | None = None,
        *,
        k: float = RRF_K,
    ) -> None:
        if not indexes:
            raise ValueError("FusedIndex needs at least one index")
        self.indexes = list(indexes)
        self.weights = [1.0] * len(indexes) if weights is None else list(weights)
        reciprocal_rank_fusion([[] for _ in self.indexes], weights=self.weights, k=k)  # checks
        self.k = k

    def __len__(self) -> int:
        return max(len(index) for index in self.indexes)

    def set(self, key: str, value: Any) -> None:
        """`key` now holds `value`, in every index."""
        for index in self.indexes:
            index.set(key, value)

    def delete(self, key: str) -> None:
        """`key` has no live value any more, in any index."""
        for index in self.indexes:
            index.delete(key)

    def search(
        self,
        query: str,
        *,
        limit: int | None = None,
        min_score: float | None = None,
        boost: Mapping[str, float] | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
    ) -> SearchResult:
        """The fused ranking for `query` (fused score desc, key asc); `limit` None or 0 means
        up to `max_results`. `SearchError` on bad options (from this or any index)."""
        if limit is not None and limit < 0:
            raise SearchError("limit must be >= 0")
        if min_score is not None and not math.isfinite(min_score):
            raise SearchError("minScore must be a finite number")
        results = [
            index.search(query, boost=boost, max_results=max_results) for index in self.indexes
        ]
        terms: dict[str, dict[str, None]] = {}
        for result in results:
            for hit in result.hits:
                terms.setdefault(hit.key, {}).update(dict.fromkeys(hit.matched_terms))
        fused = reciprocal_rank_fusion(
            [[hit.key for hit in result.hits] for result in results],
            weights=self.weights,
            k=self.k,
        )
        threshold = min_score or 0.0
        kept = [(key, score) for key, score in fused if score > 0 and score >= threshold]
        cap = min(limit, max_results) if limit else max_results
        hits = [SearchHit(key, score, list(terms[key])) for key, score in kept[:cap]]
        return SearchResult(hits, len(kept))
