"""A BM25 full-text index over some fields of a map's values (PROTOCOL.md §5.7).

Documents are added, replaced and removed one key at a time as the map changes. A document is
the analyzed text of its configured fields that hold strings; one with no terms is not
indexed. Scoring is Okapi BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N − df + 0.5)/(df + 0.5)))
over the document's terms from all fields together — what the reference server computes, so
scores agree with it (golden frame 0075 scores 0.6333549317576497). With `boost`, each field is
scored on its own statistics and the field scores are summed, multiplied by their boosts
(fields not named get 1). Results: score > 0 and ≥ `min_score`, by score descending then key
ascending; `total_count` counts them before `limit`; `matched_terms` are the index terms of
the query that the document holds (stemmed: "Merkle" → "merkl").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from topgun.search.tokenizer import analyze

__all__ = [
    "DEFAULT_B",
    "DEFAULT_K1",
    "DEFAULT_MAX_RESULTS",
    "BM25Index",
    "SearchError",
    "SearchHit",
    "SearchResult",
]

DEFAULT_K1: Final = 1.2
DEFAULT_B: Final = 0.75
DEFAULT_MAX_RESULTS: Final = 1000
"""`maxSearchResults`: the most results a search without `limit` returns."""


class SearchError(ValueError):
    """Search options that cannot be used (a negative limit, a non-finite boost or score)."""


@dataclass(frozen=True, slots=True)
class SearchHit:
    key: str
    score: float
    matched_terms: list[str]


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The hits in rank order (at most `limit`) and how many matched before `limit`."""

    hits: list[SearchHit]
    total_count: int


class _Postings:
    """Term frequencies of one field, or of all fields together, with BM25's statistics."""

    __slots__ = ("lengths", "terms", "total_length")

    def __init__(self) -> None:
        self.terms: dict[str, dict[str, int]] = {}
        self.lengths: dict[str, int] = {}
        self.total_length = 0

    def add(self, key: str, counts: Counter[str], length: int) -> None:
        for term, tf in counts.items():
            self.terms.setdefault(term, {})[key] = tf
        self.lengths[key] = length
        self.total_length += length

    def remove(self, key: str, counts: Counter[str]) -> None:
        for term in counts:
            docs = self.terms[term]
            del docs[key]
            if not docs:
                del self.terms[term]
        self.total_length -= self.lengths.pop(key)

    def score(
        self, terms: Iterable[str], k1: float, b: float, weight: float, into: dict[str, float]
    ) -> None:
        """Add `weight` × the BM25 score of each document holding some of `terms` to `into`."""
        n = len(self.lengths)
        if n == 0:
            return
        average = self.total_length / n
        lengths = self.lengths
        for term in terms:
            docs = self.terms.get(term)
            if not docs:
                continue
            df = len(docs)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            for key, tf in docs.items():
                norm = k1 * (1 - b + b * lengths[key] / average)
                into[key] = into.get(key, 0.0) + weight * (idf * (tf * (k1 + 1) / (tf + norm)))


class BM25Index:
    """The full-text index of one map, over `fields` of its (map) values."""

    def __init__(
        self, fields: Sequence[str], *, k1: float = DEFAULT_K1, b: float = DEFAULT_B
    ) -> None:
        if not fields or not all(isinstance(f, str) and f for f in fields):
            raise ValueError("a full-text index needs one or more field names")
        if len(set(fields)) != len(fields):
            raise ValueError(f"full-text fields repeat: {list(fields)}")
        if not (math.isfinite(k1) and k1 >= 0 and math.isfinite(b) and 0 <= b <= 1):
            raise ValueError("BM25 needs k1 >= 0 and 0 <= b <= 1")
        self.fields = tuple(fields)
        self.k1 = k1
        self.b = b
        self._all = _Postings()
        self._by_field = {f: _Postings() for f in self.fields}
        self._docs: dict[str, dict[str, Counter[str]]] = {}

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, key: object) -> bool:
        return key in self._docs

    def terms_of(self, key: str) -> set[str]:
        """The index terms document `key` holds (none when it is not indexed)."""
        doc = self._docs.get(key)
        return set().union(*doc.values()) if doc else set()

    def set(self, key: str, value: Any) -> None:
        """Index `key`'s live `value` (replacing what it held); values that are not maps, or
        have no terms in the configured fields, leave the key unindexed."""
        self.delete(key)
        if not isinstance(value, Mapping):
            return
        doc: dict[str, Counter[str]] = {}
        for name in self.fields:
            text = value.get(name)
            if isinstance(text, str):
                counts = Counter(analyze(text))
                if counts:
                    doc[name] = counts
        if not doc:
            return
        self._docs[key] = doc
        combined: Counter[str] = Counter()
        for name, counts in doc.items():
            combined.update(counts)
            self._by_field[name].add(key, counts, counts.total())
        self._all.add(key, combined, combined.total())

    def delete(self, key: str) -> None:
        """Forget `key` (removed, tombstoned or expired); unknown keys are ignored."""
        doc = self._docs.pop(key, None)
        if doc is None:
            return
        combined: Counter[str] = Counter()
        for name, counts in doc.items():
            combined.update(counts)
            self._by_field[name].remove(key, counts)
        self._all.remove(key, combined)

    def query_terms(self, query: str) -> list[str]:
        """The distinct index terms of a query, in query order."""
        return list(dict.fromkeys(analyze(query)))

    def scores(
        self, terms: Sequence[str], boost: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """The BM25 score of every document holding some of `terms` (zero scores included)."""
        _check_boost(boost)
        scores: dict[str, float] = {}
        if boost:
            for name, postings in self._by_field.items():
                postings.score(terms, self.k1, self.b, float(boost.get(name, 1.0)), scores)
        else:
            self._all.score(terms, self.k1, self.b, 1.0, scores)
        return scores

    def matched_terms(self, key: str, terms: Sequence[str]) -> list[str]:
        """Those of `terms` that document `key` holds, in the order given."""
        held = self.terms_of(key)
        return [t for t in terms if t in held]

    def search(
        self,
        query: str,
        *,
        limit: int | None = None,
        min_score: float | None = None,
        boost: Mapping[str, float] | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
    ) -> SearchResult:
        """Rank the documents for `query`. `limit` None or 0 means up to `max_results`. An
        empty query, or one of stop words only, finds nothing."""
        if limit is not None and limit < 0:
            raise SearchError("limit must be >= 0")
        if min_score is not None and not math.isfinite(min_score):
            raise SearchError("minScore must be a finite number")
        threshold = min_score or 0.0
        terms = self.query_terms(query)
        scores = self.scores(terms, boost)
        ranked = sorted(
            ((-score, key) for key, score in scores.items() if score > 0 and score >= threshold),
        )
        cap = min(limit, max_results) if limit else max_results
        hits = [
            SearchHit(key, -negative, self.matched_terms(key, terms))
            for negative, key in ranked[:cap]
        ]
        return SearchResult(hits, len(ranked))


def _check_boost(boost: Mapping[str, float] | None) -> None:
    if boost:
        for name, weight in boost.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise SearchError(f"boost for {name!r} must be a number")
            if not math.isfinite(weight):
                raise SearchError(f"boost for {name!r} must be finite")
