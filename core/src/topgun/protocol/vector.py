"""Vector (semantic) search and live vector search: a topgun extension of the protocol.

PROTOCOL.md §1.2 lets a server add message types: peers ignore unknown fields, and a server
without the feature answers an unknown `type` with `ERROR 400 "Unsupported message type"`.
TopGun TypeScript clients never send these types, so nothing they rely on changes. The shapes
follow `SEARCH` (§5.7, §6.8): a live vector search's first results are a `VECTOR_SEARCH_RESP`
whose `requestId` is the subscription id, then `VECTOR_SEARCH_UPDATE`s with both `type` and
`changeType`. The server side is the `topgun-vector` distribution (docs/extensions/vector.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from msgspec import Meta

from topgun.protocol.message import Message, Wire
from topgun.protocol.queries import PredicateNode
from topgun.protocol.search import ChangeType

__all__ = [
    "MAX_VECTOR_K",
    "VectorHit",
    "VectorQuery",
    "VectorSearch",
    "VectorSearchPayload",
    "VectorSearchResp",
    "VectorSearchRespPayload",
    "VectorSearchSub",
    "VectorSearchSubPayload",
    "VectorSearchUnsub",
    "VectorSearchUnsubPayload",
    "VectorSearchUpdate",
    "VectorSearchUpdatePayload",
    "VectorWeights",
]

MAX_VECTOR_K: Final = 1000
"""The largest `k` a vector search may ask for."""


class VectorWeights(Wire):
    """The RRF weight of each ranked list of a tri-hybrid search (absent: the map's
    configured weight). `text` is the full-text (BM25) list, `vector` the semantic one."""

    vector: Annotated[float, Meta(ge=0)] | None = None
    text: Annotated[float, Meta(ge=0)] | None = None


class VectorQuery(Wire):
    """What a vector search asks: exactly one of `query`, a text (embedded by the server,
    and also the full-text query of a hybrid search), and `vector`, little-endian float32
    bytes. `field` picks one of the map's vector indexes (absent: its first). `predicate`
    (or the legacy `where`) is an exact filter (§7): only rows satisfying it are ranked.
    Only results with a score of at least `minScore` are kept."""

    map_name: str
    query: str | None = None
    vector: bytes | None = None
    field: str | None = None
    k: Annotated[int, Meta(ge=1, le=MAX_VECTOR_K)] = 10
    predicate: PredicateNode | None = None
    where: dict[str, Any] | None = None
    weights: VectorWeights | None = None
    min_score: float | None = None


class VectorSearchPayload(VectorQuery, kw_only=True):
    request_id: str


class VectorSearch(Message, tag="VECTOR_SEARCH"):
    """C→S: a one-shot k-nearest-neighbour (or tri-hybrid) search."""

    payload: VectorSearchPayload


class VectorHit(Wire):
    """One result. `score` ranks the results: the cosine similarity for a pure vector search,
    the fused RRF score for a hybrid one; `similarity` is the cosine similarity (absent when
    only the full-text list ranked the row) and `matchedTerms` the full-text index terms."""

    key: str
    value: Any
    score: float
    matched_terms: list[str]
    similarity: float | None = None


class VectorSearchRespPayload(Wire):
    """Results by score descending, then key; `totalCount` counts candidates before `k`."""

    request_id: str
    results: list[VectorHit]
    total_count: int
    error: str | None = None


class VectorSearchResp(Message, tag="VECTOR_SEARCH_RESP"):
    payload: VectorSearchRespPayload


class VectorSearchSubPayload(VectorQuery, kw_only=True):
    subscription_id: str


class VectorSearchSub(Message, tag="VECTOR_SEARCH_SUB"):
    """C→S: a live vector search; first results as `VECTOR_SEARCH_RESP` keyed by its id."""

    payload: VectorSearchSubPayload


class VectorSearchUpdatePayload(Wire):
    """One window change; `value` is nil on LEAVE. `type` and `changeType` are equal."""

    subscription_id: str
    key: str
    value: Any
    score: float
    type: ChangeType
    change_type: ChangeType
    similarity: float | None = None


class VectorSearchUpdate(Message, tag="VECTOR_SEARCH_UPDATE"):
    payload: VectorSearchUpdatePayload


class VectorSearchUnsubPayload(Wire):
    subscription_id: str


class VectorSearchUnsub(Message, tag="VECTOR_SEARCH_UNSUB"):
    """C→S: stop a live vector search (an unknown id is ignored)."""

    payload: VectorSearchUnsubPayload
