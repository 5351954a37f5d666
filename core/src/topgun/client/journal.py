"""Reading the server's event journal (PROTOCOL.md §5.14, §6.12): pages and live streams."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from topgun.client.engine import Engine
from topgun.client.errors import RequestError
from topgun.client.feeds import Feed, FeedIterator
from topgun.protocol import (
    JournalEvent,
    JournalEventMessage,
    JournalEventType,
    JournalRead,
    JournalReadResponse,
    JournalSubscribe,
    JournalUnsubscribe,
    Message,
)

__all__ = ["Journal", "JournalPage", "JournalStream"]


@dataclass(frozen=True, slots=True)
class JournalPage:
    """Events in increasing sequence; `has_more` if more match after them."""

    events: list[JournalEvent]
    has_more: bool

    @property
    def next_sequence(self) -> str | None:
        """The `from_sequence` of the next page (None when the page is empty)."""
        return str(int(self.events[-1].sequence) + 1) if self.events else None


class JournalStream:
    """Journal events as they happen (after replaying from `from_sequence` if given):
    `async for event in stream`. Resumes after a reconnect from the last event seen."""

    def __init__(
        self,
        engine: Engine,
        from_sequence: str | None,
        map_name: str | None,
        types: Sequence[JournalEventType] | None,
    ) -> None:
        self._engine = engine
        self.id = engine.new_id()
        self.next_sequence = from_sequence
        self.map_name = map_name
        self.types = list(types) if types is not None else None
        self._feed: Feed[JournalEvent] = Feed()
        self._iterator = self._feed.open()
        self.error: Exception | None = None
        engine.subscribe(self.id, self)

    def __aiter__(self) -> FeedIterator[JournalEvent]:
        return self._iterator

    async def close(self) -> None:
        self._engine.unsubscribe(self.id, JournalUnsubscribe(subscription_id=self.id))
        self._feed.close()
        await anyio.lowlevel.checkpoint()

    def subscribe_message(self) -> Message:
        return JournalSubscribe(
            request_id=self.id,
            from_sequence=self.next_sequence,
            map_name=self.map_name,
            types=self.types,
        )

    def handle(self, message: Message) -> None:
        if isinstance(message, JournalEventMessage):
            event = message.event
            if self.next_sequence is not None and int(event.sequence) < int(self.next_sequence):
                return  # replayed again after a reconnect
            self.next_sequence = str(int(event.sequence) + 1)
            self._feed.publish(event)

    def disconnected(self) -> None:
        pass

    def fail(self, error: Exception) -> None:
        self.error = error
        self._feed.close()


class Journal:
    """`client.journal`: `await read(...)` pages, `subscribe(...)` streams."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def read(
        self, from_sequence: str | int = 0, *, limit: int = 100, map_name: str | None = None
    ) -> JournalPage:
        """Up to `limit` (≤ 1000) events with sequence ≥ `from_sequence`."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit must be an int in 1..1000, got {limit!r}")
        start = str(from_sequence)
        if not start.isascii() or not start.isdecimal():
            raise ValueError(f"from_sequence must be a decimal sequence, got {from_sequence!r}")
        request_id = self._engine.new_id()
        reply = await self._engine.request(
            request_id,
            JournalRead(request_id=request_id, from_sequence=start, limit=limit, map_name=map_name),
        )
        if not isinstance(reply, JournalReadResponse):
            raise RequestError(f"unexpected reply {type(reply).__name__}")
        return JournalPage(reply.events, reply.has_more)

    async def read_all(
        self, from_sequence: str | int = 0, *, map_name: str | None = None
    ) -> list[JournalEvent]:
        """Every retained event from `from_sequence` on, page by page."""
        events: list[JournalEvent] = []
        start: str | None = str(from_sequence)
        while start is not None:
            page = await self.read(start, limit=1000, map_name=map_name)
            events.extend(page.events)
            start = page.next_sequence if page.has_more else None
        return events

    def subscribe(
        self,
        from_sequence: str | int | None = None,
        *,
        map_name: str | None = None,
        types: Sequence[JournalEventType] | None = None,
    ) -> JournalStream:
        """A live stream of events (replayed from `from_sequence` when given)."""
        start = None if from_sequence is None else str(from_sequence)
        return JournalStream(self._engine, start, map_name, types)
