"""Live queries and live searches: a server-maintained result window plus its changes.

`client.query(...)` and `client.live_search(...)` return a `LiveResult` that holds the
current rows and delivers every change as a `Change` (`ENTER`, `UPDATE`, `REMOVE`), to
`async for change in result` and to callbacks. After a reconnect the subscription is sent
again and the fresh snapshot is compared with the rows held, so the consumer sees the
difference as changes and never a gap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import anyio

from topgun.client.engine import Engine
from topgun.client.errors import RequestError
from topgun.client.feeds import Feed, FeedIterator
from topgun.protocol import (
    Message,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    QueryUnsub,
    QueryUnsubPayload,
    QueryUpdate,
    SearchOptions,
    SearchResp,
    SearchSub,
    SearchSubPayload,
    SearchUnsub,
    SearchUnsubPayload,
    SearchUpdate,
)
from topgun.query import CompiledQuery

__all__ = ["Change", "LiveQuery", "LiveResult", "LiveSearch", "Row"]

logger = logging.getLogger("topgun.client")

ChangeKind = Literal["ENTER", "UPDATE", "REMOVE"]


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a live result; `score`/`matched_terms` are set for searches."""

    key: str
    value: Any
    score: float | None = None
    matched_terms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Change:
    """A row entered the result, changed in it, or left it (`value` None on REMOVE)."""

    type: ChangeKind
    key: str
    value: Any
    score: float | None = None


class LiveResult:
    """Rows of a live subscription and their changes (base of queries and searches)."""

    def __init__(self, engine: Engine, sub_id: str, map_name: str) -> None:
        self._engine = engine
        self.id = sub_id
        self.map_name = map_name
        self._rows: dict[str, Row] = {}
        self._listeners: list[Callable[[Change], None]] = []
        self._feed: Feed[Change] = Feed()
        self._ready = anyio.Event()
        self._error: Exception | None = None
        self.closed = False

    # -- application side ----------------------------------------------------------------

    def rows(self) -> list[Row]:
        """The current rows, in the result's order."""
        return list(self._rows.values())

    def items(self) -> list[tuple[str, Any]]:
        """The current `(key, value)` pairs, in the result's order."""
        return [(row.key, row.value) for row in self._rows.values()]

    def __len__(self) -> int:
        return len(self._rows)

    async def ready(self) -> LiveResult:
        """Wait for the first snapshot; raises RequestError if the server refused."""
        await self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def on_change(self, listener: Callable[[Change], None]) -> Callable[[], None]:
        """Call `listener(change)` for every change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def __aiter__(self) -> FeedIterator[Change]:
        """Every change from now on (ends when the result is closed)."""
        return self._feed.open()

    async def close(self) -> None:
        """End the subscription (idempotent)."""
        if not self.closed:
            self.closed = True
            self._engine.unsubscribe(self.id, self._unsubscribe_message())
            self._end()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> LiveResult:
        return await self.ready()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- engine side -------------------------------------------------------------------------

    def _unsubscribe_message(self) -> Message:
        raise NotImplementedError

    def _emit(self, change: Change) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("live result listener failed")
        self._feed.publish(change)

    def _end(self) -> None:
        self._feed.close()

    def _snapshot(self, rows: list[Row]) -> None:
        """A (re)subscription's snapshot: report the difference to the rows held."""
        old, new = self._rows, {row.key: row for row in rows}
        first = not self._ready.is_set()
        self._rows = new
        self._ready.set()
        if first:
            return
        for key in old.keys() - new.keys():
            self._emit(Change("REMOVE", key, None))
        for key, row in new.items():
            if key not in old:
                self._emit(Change("ENTER", key, row.value, row.score))
            elif old[key].value != row.value:
                self._emit(Change("UPDATE", key, row.value, row.score))

    def _delta(self, kind: str, row: Row) -> None:
        if kind in ("REMOVE", "LEAVE"):
            if self._rows.pop(row.key, None) is not None:
                self._emit(Change("REMOVE", row.key, None))
            return
        entered = row.key not in self._rows
        self._rows[row.key] = row
        self._reorder()
        self._emit(Change("ENTER" if entered else "UPDATE", row.key, row.value, row.score))

    def _reorder(self) -> None:
        """Put rows in the result's order after an insert."""

    def disconnected(self) -> None:
        """Kept: the rows stay readable offline; the next snapshot reconciles them."""

    def fail(self, error: Exception) -> None:
        self._error = error
        self._ready.set()
        self._engine.subscriptions.pop(self.id, None)
        self.closed = True
        self._end()


class LiveQuery(LiveResult):
    """A live query (`QUERY_SUB`): rows matching a filter, sorted, within a limit."""

    def __init__(self, engine: Engine, sub_id: str, map_name: str, query: CompiledQuery) -> None:
        super().__init__(engine, sub_id, map_name)
        self.query = query
        self.has_more = False
        self.next_cursor: str | None = None

    def subscribe_message(self) -> Message:
        return QuerySub(
            payload=QuerySubPayload(query_id=self.id, map_name=self.map_name, query=self.query.wire)
        )

    def _unsubscribe_message(self) -> Message:
        return QueryUnsub(payload=QueryUnsubPayload(query_id=self.id))

    def handle(self, message: Message) -> None:
        if isinstance(message, QueryResp):
            payload = message.payload
            self.has_more, self.next_cursor = payload.has_more, payload.next_cursor
            self._snapshot([Row(r.key, r.value) for r in payload.results])
        elif isinstance(message, QueryUpdate):
            p = message.payload
            self._delta(p.change_type or p.type, Row(p.key, p.value))

    def _reorder(self) -> None:
        order = self.query.order_key
        self._rows = dict(sorted(self._rows.items(), key=lambda kv: order(kv[0], kv[1].value)))


class LiveSearch(LiveResult):
    """A live full-text search (`SEARCH_SUB`): matching rows ranked by score."""

    def __init__(
        self, engine: Engine, sub_id: str, map_name: str, text: str, options: SearchOptions | None
    ) -> None:
        super().__init__(engine, sub_id, map_name)
        self.text = text
        self.options = options

    def subscribe_message(self) -> Message:
        return SearchSub(
            payload=SearchSubPayload(
                subscription_id=self.id,
                map_name=self.map_name,
                query=self.text,
                options=self.options,
            )
        )

    def _unsubscribe_message(self) -> Message:
        return SearchUnsub(payload=SearchUnsubPayload(subscription_id=self.id))

    def handle(self, message: Message) -> None:
        if isinstance(message, SearchResp):
            payload = message.payload
            if payload.error is not None:
                self.fail(RequestError(payload.error))
                return
            self._snapshot(
                [Row(r.key, r.value, r.score, tuple(r.matched_terms)) for r in payload.results]
            )
        elif isinstance(message, SearchUpdate):
            p = message.payload
            self._delta(
                p.change_type or p.type, Row(p.key, p.value, p.score, tuple(p.matched_terms))
            )

    def _reorder(self) -> None:
        self._rows = dict(sorted(self._rows.items(), key=lambda kv: (-(kv[1].score or 0.0), kv[0])))
