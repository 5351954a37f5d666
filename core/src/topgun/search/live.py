"""Live searches: the window changes of `SEARCH_SUB` subscriptions (PROTOCOL.md §6.8).

A live search's window is its ranked result: documents with a positive score of at least
`minScore`, by score descending then key, cut at `limit`. Any change to a map's documents
moves BM25's statistics (document count, average length, document frequencies), so every
score on that map may move: after a change (or a batch of changes, which the server may
gather for up to 16 ms), each subscription on the map is searched again and compared with its
window: `LEAVE` for documents that left it, `ENTER` for those that entered, `UPDATE` for
documents in both that changed or whose score moved by more than 1e-4. The cost of a change
is one search per subscription on that map.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar

from topgun.search.bm25 import DEFAULT_MAX_RESULTS, SearchHit, SearchResult
from topgun.search.providers import SearchIndex

__all__ = ["SCORE_EPSILON", "LiveSearches", "SearchChange"]

SCORE_EPSILON: Final = 1e-4
"""A score that moves by more than this is reported as an `UPDATE`."""

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class SearchChange:
    """One `SEARCH_UPDATE`. `value` is None on `LEAVE`, whose score and terms are the last
    ones the client was sent."""

    type: Literal["ENTER", "UPDATE", "LEAVE"]
    key: str
    value: Any
    score: float
    matched_terms: list[str]


@dataclass(slots=True)
class _Search(Generic[K]):
    id: K
    map_name: str
    query: str
    limit: int | None
    min_score: float | None
    boost: Mapping[str, float] | None
    max_results: int
    window: dict[str, SearchHit] = field(default_factory=dict)

    def run(self, index: SearchIndex) -> SearchResult:
        return index.search(
            self.query,
            limit=self.limit,
            min_score=self.min_score,
            boost=self.boost,
            max_results=self.max_results,
        )


class LiveSearches(Generic[K]):
    """Every live search, by subscription id `K` (typically a (session, subscriptionId) pair)."""

    def __init__(self) -> None:
        self._searches: dict[K, _Search[K]] = {}

    def __len__(self) -> int:
        return len(self._searches)

    def __contains__(self, sub_id: object) -> bool:
        return sub_id in self._searches

    def subscribe(
        self,
        sub_id: K,
        map_name: str,
        index: SearchIndex,
        query: str,
        *,
        limit: int | None = None,
        min_score: float | None = None,
        boost: Mapping[str, float] | None = None,
        max_results: int = DEFAULT_MAX_RESULTS,
    ) -> SearchResult:
        """Search once and hold the result as the window (replacing a subscription with the
        same id). Returns the initial result, sent as `SEARCH_RESP` keyed by `sub_id`'s
        subscription id. Bad options raise `SearchError` and subscribe nothing."""
        search = _Search(sub_id, map_name, query, limit, min_score, boost, max_results)
        result = search.run(index)
        self._searches.pop(sub_id, None)
        search.window = {hit.key: hit for hit in result.hits}
        self._searches[sub_id] = search
        return result

    def unsubscribe(self, sub_id: K) -> None:
        """Stop `sub_id`; unknown ids are ignored (`SEARCH_UNSUB`)."""
        self._searches.pop(sub_id, None)

    def apply(
        self,
        map_name: str,
        changed: Collection[str],
        index: SearchIndex,
        value_of: Callable[[str], Any],
    ) -> Iterator[tuple[K, list[SearchChange]]]:
        """The window changes of every live search on `map_name` after the documents
        `changed` changed; `index` already reflects them and `value_of(key)` gives a
        document's current value. Each list holds LEAVEs, then ENTERs, then UPDATEs, each in
        rank order; subscriptions come in the order they subscribed."""
        for search in [s for s in self._searches.values() if s.map_name == map_name]:
            hits = {hit.key: hit for hit in search.run(index).hits}
            changes = [
                SearchChange("LEAVE", key, None, old.score, old.matched_terms)
                for key, old in search.window.items()
                if key not in hits
            ]
            updates = []
            for key, hit in hits.items():
                old = search.window.get(key)
                if old is None:
                    changes.append(
                        SearchChange("ENTER", key, value_of(key), hit.score, hit.matched_terms)
                    )
                elif (
                    key in changed
                    or abs(hit.score - old.score) > SCORE_EPSILON
                    or hit.matched_terms != old.matched_terms
                ):
                    updates.append(
                        SearchChange("UPDATE", key, value_of(key), hit.score, hit.matched_terms)
                    )
            search.window = hits
            changes += updates
            if changes:
                yield search.id, changes
