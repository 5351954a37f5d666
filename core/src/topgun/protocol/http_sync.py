"""Bodies of `POST /sync`, error bodies and server-sent event data (PROTOCOL.md §9).

These are not tagged messages: a body is a plain map, msgpack or JSON by `Content-Type`.
`operations` are validated per op exactly like `OP_BATCH` ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol.events import EventType
from topgun.protocol.message import Wire
from topgun.protocol.queries import Query, QueryResultRow
from topgun.protocol.search import ScoredRow, SearchOptions
from topgun.protocol.writes import ClientOp, InvalidOp, OpResult, TimeoutMs, WriteConcern

__all__ = [
    "DeltaRecord",
    "HttpError",
    "HttpQuery",
    "HttpQueryResult",
    "HttpSearch",
    "HttpSearchResult",
    "MapDelta",
    "SseChange",
    "SseResync",
    "SyncAck",
    "SyncErrorItem",
    "SyncMapRequest",
    "SyncRequest",
    "SyncResponse",
]


class SyncMapRequest(Wire):
    """Resume from `sinceSeq`, else from `lastSyncTimestamp` read on the server's ingest clock."""

    map_name: str
    since_seq: int | None = None
    last_sync_timestamp: Timestamp | None = None
    limit: int | None = None


class HttpQuery(Wire):
    """`query` wins over `filter` (a legacy `where` object); `offset` is ignored."""

    query_id: str
    map_name: str
    filter: dict[str, Any] | None = None
    query: Query | None = None
    limit: int | None = None
    offset: int | None = None


class HttpSearch(Wire):
    search_id: str
    map_name: str
    query: str
    options: SearchOptions | None = None


class SyncRequest(Wire):
    """The `POST /sync` request body; `operations` are processed as one `OP_BATCH`."""

    client_id: str
    client_hlc: Timestamp
    operations: Sequence[ClientOp | InvalidOp] | None = None
    write_concern: WriteConcern | None = None
    timeout: TimeoutMs | None = None
    sync_maps: list[SyncMapRequest] | None = None
    queries: list[HttpQuery] | None = None
    searches: list[HttpSearch] | None = None


class SyncAck(Wire):
    """topgun always sends `achievedLevel` and `results`; the reference sends only `lastId`."""

    last_id: str
    achieved_level: WriteConcern | None = None
    results: list[OpResult] | None = None


class DeltaRecord(Wire):
    key: str
    record: LWWRecord
    event_type: Literal["PUT", "REMOVE"]
    seq: int | None = None


class MapDelta(Wire):
    """topgun always sends `seq`, `hasMore` and `reset` (the reference omits them)."""

    map_name: str
    records: list[DeltaRecord]
    server_sync_timestamp: Timestamp
    seq: int | None = None
    has_more: bool | None = None
    reset: bool | None = None


class HttpQueryResult(Wire):
    query_id: str
    results: list[QueryResultRow]
    has_more: bool
    next_cursor: str | None = None


class HttpSearchResult(Wire):
    search_id: str
    results: list[ScoredRow]
    total_count: int


class SyncErrorItem(Wire):
    code: int
    message: str
    context: str | None = None


class SyncResponse(Wire):
    """The 200 body of `POST /sync`; item failures go to `errors`."""

    server_hlc: Timestamp
    ack: SyncAck | None = None
    deltas: list[MapDelta] | None = None
    query_results: list[HttpQueryResult] | None = None
    search_results: list[HttpSearchResult] | None = None
    errors: list[SyncErrorItem] | None = None


class HttpError(Wire):
    """Every HTTP error body (always JSON), e.g. `{"error": "Missing Authorization header"}`."""

    error: str
    details: Any = None


class SseChange(Wire):
    """`data` of an SSE `change` event; its `id:` line is `seq`."""

    map_name: str
    key: str
    event_type: EventType
    seq: int
    record: LWWRecord | None = None
    or_record: ORMapRecord | None = None
    or_tag: str | None = None


class SseResync(Wire):
    """`data` of an SSE `resync` event, sent just before the stream closes."""

    map_name: str
    seq: int
    reason: Literal["PRUNED", "OVERFLOW", "RESET"]
