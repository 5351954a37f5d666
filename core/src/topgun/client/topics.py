"""Topics: publish/subscribe messages between clients (at most once, no history, §5.9)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from topgun.client.engine import Engine
from topgun.client.errors import RequestError
from topgun.client.feeds import Feed, FeedIterator
from topgun.protocol import (
    Message,
    TopicMessage,
    TopicPub,
    TopicPubPayload,
    TopicSub,
    TopicSubPayload,
    TopicUnsub,
)

__all__ = ["Topic", "TopicEvent"]

logger = logging.getLogger("topgun.client")

MAX_QUEUED_PUBLISHES = 1000
"""Publishes kept while offline (the oldest are dropped beyond this)."""


@dataclass(frozen=True, slots=True)
class TopicEvent:
    """One message received on a topic."""

    topic: str
    data: Any
    publisher_id: str | None
    timestamp: int
    """Server ms when it was published."""


class Topic:
    """A named topic: `publish(data)`, and `async for event in topic` / `on_message(cb)` to
    receive what other connections publish (never this client's own messages)."""

    def __init__(self, engine: Engine, name: str) -> None:
        if not isinstance(name, str) or not 1 <= len(name) <= 256:
            raise ValueError(f"topic name must be a str of 1..256 characters, got {name!r}")
        self._engine = engine
        self.name = name
        self._key = f"topic:{name}"
        self._listeners: list[Callable[[TopicEvent], None]] = []
        self._feed: Feed[TopicEvent] = Feed()
        self._queued: deque[Any] = deque(maxlen=MAX_QUEUED_PUBLISHES)
        self.error: Exception | None = None

    def publish(self, data: Any) -> None:
        """Send `data` to the topic's other subscribers; queued while offline."""
        message = TopicPub(payload=TopicPubPayload(topic=self.name, data=data))
        if not self._engine.send(message):
            self._queued.append(data)
            self._subscribe()  # so the queue is flushed on the next connection

    def on_message(self, listener: Callable[[TopicEvent], None]) -> Callable[[], None]:
        """Call `listener(event)` for every message; returns an unsubscribe."""
        self._listeners.append(listener)
        self._subscribe()
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def __aiter__(self) -> FeedIterator[TopicEvent]:
        """Every message from now on (ends when the topic handle is closed)."""
        iterator = self._feed.open()
        self._subscribe()
        return iterator

    async def close(self) -> None:
        """Stop receiving (publishing still works)."""
        self._listeners.clear()
        self._feed.close()
        self._engine.unsubscribe(self._key, TopicUnsub(payload=TopicSubPayload(topic=self.name)))
        await anyio.lowlevel.checkpoint()

    def _subscribe(self) -> None:
        if self._key not in self._engine.subscriptions:
            self._engine.subscribe(self._key, self)

    # -- engine side -----------------------------------------------------------------------

    def subscribe_message(self) -> Message | None:
        while self._queued:
            data = self._queued.popleft()
            self._engine.send(TopicPub(payload=TopicPubPayload(topic=self.name, data=data)))
        if self._listeners or self._feed.active:
            return TopicSub(payload=TopicSubPayload(topic=self.name))
        return None

    def handle(self, message: Message) -> None:
        if not isinstance(message, TopicMessage):
            return
        p = message.payload
        event = TopicEvent(p.topic, p.data, p.publisher_id, p.timestamp)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("topic listener failed")
        self._feed.publish(event)

    def disconnected(self) -> None:
        pass

    def fail(self, error: Exception) -> None:
        self.error = error
        if isinstance(error, RequestError):
            logger.warning("topic %s: %s", self.name, error)
        self._feed.close()
