"""Compiled queries and running them: the entry point the server uses for `QUERY_SUB`.

    query = parse_query(wire_query)               # QueryError → ERROR 400
    result = run_query(query, live_rows, now_ms=clock())
    QUERY_RESP{results: result.rows, hasMore: result.has_more,
               nextCursor: result.next_cursor, cursorStatus: result.cursor_status}

A query runs in the order of PROTOCOL.md §6.5: filter → sort → skip rows at or before a valid
cursor's position → take `limit`. `rows` are the map's live rows: tombstones and expired
records are the caller's to leave out. Given an `IndexedMap` instead of plain rows, the query
is planned over its indexes, with exactly the result a full scan gives.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from topgun.protocol.queries import CursorStatus, Query
from topgun.query.cursors import check_cursor, encode_cursor, query_hash
from topgun.query.errors import QueryError
from topgun.query.indexes import IndexedMap
from topgun.query.planner import plan
from topgun.query.predicates import ALWAYS, Predicate, compile_predicate, compile_where
from topgun.query.sort import OrderKey, SortSpec

__all__ = [
    "DEFAULT_MAX_QUERY_LIMIT",
    "MAX_QUERY_DEPTH",
    "CompiledQuery",
    "QueryResult",
    "parse_query",
    "run_query",
]

DEFAULT_MAX_QUERY_LIMIT: Final = 10_000
"""`maxQueryLimit` of §7.4: larger limits are clamped to it."""
MAX_QUERY_DEPTH: Final = 64
"""Deepest nesting accepted in a query given as plain data (the codec bounds wire frames)."""


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    """A validated query, ready to run any number of times.

    `limit` is None for "no limit" (absent or 0 on the wire) and clamped to the maximum.
    `predicate_hash`/`sort_hash` identify the filter and sort a cursor was made for.
    """

    predicate: Predicate
    sort: SortSpec
    limit: int | None
    cursor: str | None
    predicate_hash: int
    sort_hash: int
    wire: Query

    def matches(self, value: Any) -> bool:
        """Whether a live row with this value passes the filter (ignoring cursor and limit)."""
        return self.predicate.matches(value)

    def order_key(self, key: str, value: Any) -> OrderKey:
        return self.sort.order_key(key, value)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One page: `rows` in order, `has_more` iff rows matched after it, `next_cursor` (set iff
    `has_more`) to fetch the next page, and what the incoming cursor was. `start_after` is the
    valid cursor's position (rows at or before it were skipped), for live windows."""

    rows: list[tuple[str, Any]]
    has_more: bool
    next_cursor: str | None
    cursor_status: CursorStatus
    start_after: OrderKey | None = None


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_query(
    wire: Query | Mapping[str, Any], *, max_limit: int = DEFAULT_MAX_QUERY_LIMIT
) -> CompiledQuery:
    """Validate and compile a wire query: the decoded `Query` struct, or the same map as plain
    data (camelCase keys, as on the wire). Raises `QueryError` with a message fit for the
    `ERROR 400` reply."""
    if not isinstance(wire, Query):
        if not isinstance(wire, Mapping):
            raise QueryError(f"a query must be a map, got {type(wire).__name__}")
        if _depth_exceeds(wire, MAX_QUERY_DEPTH):
            raise QueryError(f"query nests deeper than {MAX_QUERY_DEPTH} levels")
        try:
            wire = msgspec.convert(wire, Query)
        except msgspec.ValidationError as error:
            raise QueryError(f"invalid query: {error}") from None
    if wire.predicate is not None:
        predicate = compile_predicate(wire.predicate)
        filter_source: Any = msgspec.to_builtins(wire.predicate)
    elif wire.where:
        predicate = compile_where(wire.where)
        filter_source = wire.where
    else:
        predicate = ALWAYS
        filter_source = wire.where  # `{}` and nil hash differently, as in the reference
    try:
        predicate_hash = query_hash(filter_source)
        sort_hash = query_hash(wire.sort or {})
    except TypeError as error:
        raise QueryError(f"invalid query value: {error}") from None
    limit = wire.limit or None
    if limit is not None:
        limit = min(limit, max_limit)
    return CompiledQuery(
        predicate=predicate,
        sort=SortSpec.from_wire(wire.sort),
        limit=limit,
        cursor=wire.cursor,
        predicate_hash=predicate_hash,
        sort_hash=sort_hash,
        wire=wire,
    )


def _page(
    query: CompiledQuery,
    matching: Iterable[tuple[OrderKey, str, Any]],
    status: CursorStatus,
    start_after: OrderKey | None,
    now_ms: int,
) -> QueryResult:
    """Order `matching` rows (already filtered and after the cursor) and cut the page."""
    if query.limit is None:
        ordered = sorted(matching, key=lambda item: item[0])
        has_more = False
    else:
        ordered = heapq.nsmallest(query.limit + 1, matching, key=lambda item: item[0])
        has_more = len(ordered) > query.limit
        del ordered[query.limit :]
    next_cursor = None
    if has_more:
        _, key, value = ordered[-1]
        next_cursor = encode_cursor(
            sort=query.sort,
            sort_values=query.sort.field_values(key, value),
            key=key,
            predicate_hash=query.predicate_hash,
            sort_hash=query.sort_hash,
            now_ms=now_ms,
        )
    return QueryResult(
        rows=[(key, value) for _, key, value in ordered],
        has_more=has_more,
        next_cursor=next_cursor,
        cursor_status=status,
        start_after=start_after,
    )


def run_query(
    query: CompiledQuery,
    rows: Iterable[tuple[str, Any]] | IndexedMap,
    *,
    now_ms: int,
) -> QueryResult:
    """Run `query` over a map's live rows (`(key, value)` pairs, or an `IndexedMap` to plan
    over its indexes) at time `now_ms` (cursor age only; nothing here reads a clock)."""
    check = check_cursor(
        query.cursor,
        sort=query.sort,
        predicate_hash=query.predicate_hash,
        sort_hash=query.sort_hash,
        now_ms=now_ms,
    )
    matching: Iterable[tuple[OrderKey, str, Any]]
    if isinstance(rows, IndexedMap):
        matching = plan(query, rows).rows(query, rows, check.position)
    else:
        matching = _scan(query, rows, check.position)
    return _page(query, matching, check.status, check.position, now_ms)


def _scan(
    query: CompiledQuery, rows: Iterable[tuple[str, Any]], start_after: OrderKey | None
) -> Iterable[tuple[OrderKey, str, Any]]:
    """Every row that passes the filter and lies after `start_after`, with its order key."""
    matches = query.predicate.matches
    order_key = query.sort.order_key
    for key, value in rows:
        if matches(value):
            position = order_key(key, value)
            if start_after is None or position > start_after:
                yield position, key, value
