"""Reciprocal rank fusion: one ranking from several (BM25, vector search, ...).

Each list contributes `weight / (k + rank)` to every key it ranks (rank 1 first); keys are
ordered by their summed score, descending, then by key. Only ranks matter, so lists whose
scores are on different scales (BM25, cosine similarity) fuse without normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

__all__ = ["RRF_K", "reciprocal_rank_fusion"]

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
