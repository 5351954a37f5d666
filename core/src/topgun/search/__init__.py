"""Full-text search: the analyzer, a BM25 index, live searches and rank fusion (PROTOCOL.md
§5.7, §5.8, §6.8).

Pure: no I/O, no clock. The server keeps one index per map with full-text search enabled and
updates it on every applied change.
"""

from topgun.search.bm25 import (
    DEFAULT_MAX_RESULTS,
    BM25Index,
    SearchError,
    SearchHit,
    SearchResult,
)
from topgun.search.fusion import RRF_K, FusedIndex, reciprocal_rank_fusion
from topgun.search.live import SCORE_EPSILON, LiveSearches, SearchChange
from topgun.search.providers import SearchIndex, SearchProvider
from topgun.search.tokenizer import (
    ENGLISH_STOP_WORDS,
    MAX_TOKEN_LENGTH,
    MIN_TOKEN_LENGTH,
    analyze,
    stem,
)

__all__ = [
    "DEFAULT_MAX_RESULTS",
    "ENGLISH_STOP_WORDS",
    "MAX_TOKEN_LENGTH",
    "MIN_TOKEN_LENGTH",
    "RRF_K",
    "SCORE_EPSILON",
    "BM25Index",
    "FusedIndex",
    "LiveSearches",
    "SearchChange",
    "SearchError",
    "SearchHit",
    "SearchIndex",
    "SearchProvider",
    "SearchResult",
    "analyze",
    "reciprocal_rank_fusion",
    "stem",
]
