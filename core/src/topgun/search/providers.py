"""Search providers: what indexes a map's documents for `SEARCH` / `SEARCH_SUB`, and the
built-in `bm25` one (PROTOCOL.md §5.7).

A provider is registered through the `register_search_providers` hook as
`register(name, factory)`: `factory(fields)` returns a `SearchIndex` over those fields of a
map's values. The server keeps one index per map whose configuration enables search, feeds it
every change (`set` / `delete`) and asks it to `search`. This module is a built-in plugin
(`topgun.hooks.DEFAULT_PLUGINS`) registering `BM25Index` as `bm25`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from topgun.hooks import Register, hookimpl
from topgun.search.bm25 import BM25Index, SearchResult

__all__ = ["SearchIndex", "SearchProvider", "register_search_providers"]


class SearchIndex(Protocol):
    """The full-text index of one map, as the server and `LiveSearches` use it."""

    def __len__(self) -> int: ...

    def set(self, key: str, value: Any) -> None:
        """`key` now holds the live value `value`."""

    def delete(self, key: str) -> None:
        """`key` has no live value any more."""

    def search(
        self,
        query: str,
        *,
        limit: int | None = None,
        min_score: float | None = None,
        boost: Mapping[str, float] | None = None,
        max_results: int = ...,
    ) -> SearchResult:
        """Documents ranked for `query` (score desc, key asc); `SearchError` on bad options."""


SearchProvider = Callable[[Sequence[str]], SearchIndex]
"""`provider(fields)` -> a new, empty index over those fields."""


@hookimpl
def register_search_providers(register: Register[SearchProvider]) -> None:
    """The built-in provider: BM25 (k1 = 1.2, b = 0.75) over the analyzer of §5.7."""
    register("bm25", BM25Index)
