"""Live queries, the query language's wire shape and hybrid queries (PROTOCOL.md §5.6, §5.8, §7).

`PredicateNode` is recursive; decoding bounds its nesting like any other value (see
`topgun.protocol.codec`). Which fields an operator needs is checked where queries are compiled.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from topgun.protocol.message import Message, Wire
from topgun.protocol.search import ChangeType, ScoredRow

__all__ = [
    "CursorStatus",
    "HybridQueryDelta",
    "HybridQueryDeltaPayload",
    "HybridQueryResp",
    "HybridQueryRespPayload",
    "HybridQuerySubscribe",
    "HybridQuerySubscribePayload",
    "HybridQueryUnsubscribe",
    "HybridQueryUnsubscribePayload",
    "MatchOptions",
    "PredicateNode",
    "PredicateOp",
    "Query",
    "QueryChange",
    "QueryResp",
    "QueryRespPayload",
    "QueryResultRow",
    "QuerySub",
    "QuerySubPayload",
    "QueryUnsub",
    "QueryUnsubPayload",
    "QueryUpdate",
    "QueryUpdatePayload",
    "SortDirection",
]

PredicateOp = Literal[
    "and",
    "or",
    "not",
    "eq",
    "neq",
    "gt",
    "gte",
    "lt",
    "lte",
    "like",
    "regex",
    "contains",
    "containsAll",
    "containsAny",
    "match",
    "matchPhrase",
    "matchPrefix",
]
"""The operators of §7.2; any other `op` makes the query invalid (400)."""

SortDirection = Literal["asc", "desc"]
CursorStatus = Literal["none", "valid", "expired", "invalid"]
QueryChange = Literal["ENTER", "UPDATE", "REMOVE"]
"""`QUERY_UPDATE.type`; its `changeType` twin uses `LEAVE` for `REMOVE`."""


class MatchOptions(Wire):
    operator: Literal["and", "or"] | None = None
    min_score: float | None = None
    boost: dict[str, float] | None = None
    fuzziness: Any = None


class PredicateNode(Wire):
    """One node of a predicate tree. `value` distinguishes absent (`UNSET`) from nil (`None`)."""

    op: PredicateOp
    attribute: str | None = None
    value: Any | UnsetType = UNSET
    children: list[PredicateNode] | None = None
    query: str | None = None
    match_options: MatchOptions | None = None
    slop: int | None = None
    prefix: str | None = None
    max_expansions: int | None = None


class Query(Wire):
    """`predicate` wins over the legacy `where`; `sort` is ordered (`{field: "asc"|"desc"}`);
    `limit` 0 or absent means no limit."""

    where: dict[str, Any] | None = None
    predicate: PredicateNode | None = None
    sort: dict[str, SortDirection] | None = None
    limit: Annotated[int, Meta(ge=0)] | None = None
    cursor: str | None = None


class QuerySubPayload(Wire):
    query_id: str
    map_name: str
    query: Query


class QuerySub(Message, tag="QUERY_SUB"):
    """C→S: register (or replace) a live query; answered by `QUERY_RESP`."""

    payload: QuerySubPayload


class QueryUnsubPayload(Wire):
    query_id: str


class QueryUnsub(Message, tag="QUERY_UNSUB"):
    payload: QueryUnsubPayload


class QueryResultRow(Wire):
    key: str
    value: Any


class QueryRespPayload(Wire):
    query_id: str
    results: list[QueryResultRow]
    has_more: bool
    cursor_status: CursorStatus
    next_cursor: str | None = None


class QueryResp(Message, tag="QUERY_RESP"):
    """S→C: a snapshot page of a live query."""

    payload: QueryRespPayload


class QueryUpdatePayload(Wire):
    """`value` is present, nil on REMOVE. topgun sends both `type` and `changeType`;
    `changeType` is optional here because the reference server omits it (§10 D7)."""

    query_id: str
    key: str
    value: Any
    type: QueryChange
    change_type: ChangeType | None = None


class QueryUpdate(Message, tag="QUERY_UPDATE"):
    payload: QueryUpdatePayload


class HybridQuerySubscribePayload(Wire):
    subscription_id: str
    map_name: str
    predicate: PredicateNode | None = None
    where: dict[str, Any] | None = None
    sort: dict[str, SortDirection] | None = None
    limit: Annotated[int, Meta(ge=0)] | None = None
    cursor: str | None = None


class HybridQuerySubscribe(Message, tag="HYBRID_QUERY_SUBSCRIBE"):
    """C→S: a live query whose predicate may contain `match*` leaves."""

    payload: HybridQuerySubscribePayload


class HybridQueryUnsubscribePayload(Wire):
    subscription_id: str


class HybridQueryUnsubscribe(Message, tag="HYBRID_QUERY_UNSUBSCRIBE"):
    payload: HybridQueryUnsubscribePayload


class HybridQueryRespPayload(Wire):
    subscription_id: str
    results: list[ScoredRow]
    next_cursor: str | None = None
    has_more: bool | None = None
    cursor_status: CursorStatus | None = None


class HybridQueryResp(Message, tag="HYBRID_QUERY_RESP"):
    payload: HybridQueryRespPayload


class HybridQueryDeltaPayload(Wire):
    subscription_id: str
    key: str
    value: Any
    type: ChangeType
    change_type: ChangeType | None = None
    score: float | None = None
    matched_terms: list[str] | None = None


class HybridQueryDelta(Message, tag="HYBRID_QUERY_DELTA"):
    payload: HybridQueryDeltaPayload
