"""Full-text search and live search (PROTOCOL.md §5.7, §6.8).

A live search's initial results come as `SEARCH_RESP` whose `requestId` is the subscription id.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta

from topgun.protocol.message import Message, Wire

__all__ = [
    "ChangeType",
    "ScoredRow",
    "Search",
    "SearchOptions",
    "SearchPayload",
    "SearchResp",
    "SearchRespPayload",
    "SearchSub",
    "SearchSubPayload",
    "SearchUnsub",
    "SearchUnsubPayload",
    "SearchUpdate",
    "SearchUpdatePayload",
]

ChangeType = Literal["ENTER", "UPDATE", "LEAVE"]
"""A row entering, changing inside or leaving a live result window."""


class SearchOptions(Wire):
    """`limit` absent = all matches (up to the server maximum); `boost` multiplies field scores."""

    limit: Annotated[int, Meta(ge=0)] | None = None
    min_score: float | None = None
    boost: dict[str, float] | None = None


class SearchPayload(Wire):
    request_id: str
    map_name: str
    query: str
    options: SearchOptions | None = None


class Search(Message, tag="SEARCH"):
    """C→S: a one-shot ranked search."""

    payload: SearchPayload


class ScoredRow(Wire):
    """A search hit; `matchedTerms` are index terms (stemmed)."""

    key: str
    value: Any
    score: float
    matched_terms: list[str]


class SearchRespPayload(Wire):
    """`totalCount` counts matches before `limit`."""

    request_id: str
    results: list[ScoredRow]
    total_count: int
    error: str | None = None
    next_cursor: str | None = None


class SearchResp(Message, tag="SEARCH_RESP"):
    payload: SearchRespPayload


class SearchSubPayload(Wire):
    subscription_id: str
    map_name: str
    query: str
    options: SearchOptions | None = None


class SearchSub(Message, tag="SEARCH_SUB"):
    """C→S: a live search."""

    payload: SearchSubPayload


class SearchUpdatePayload(Wire):
    """`value` is nil on LEAVE. topgun sends both `type` and `changeType` (same value);
    `changeType` is optional here because the reference server omits it."""

    subscription_id: str
    key: str
    value: Any
    score: float
    matched_terms: list[str]
    type: ChangeType
    change_type: ChangeType | None = None


class SearchUpdate(Message, tag="SEARCH_UPDATE"):
    payload: SearchUpdatePayload


class SearchUnsubPayload(Wire):
    subscription_id: str


class SearchUnsub(Message, tag="SEARCH_UNSUB"):
    payload: SearchUnsubPayload
