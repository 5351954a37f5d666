"""Topic publish/subscribe (PROTOCOL.md §5.9, §6.10).

A connection subscribes with `TOPIC_SUB` (READ on `topic:<name>`, at most
`MAX_TOPICS_PER_CONNECTION` topics) and leaves with `TOPIC_UNSUB` or by disconnecting.
`TOPIC_PUB` (PUT on `topic:<name>`) reaches every other subscriber as `TOPIC_MESSAGE` with
the publisher's `clientId` and the server time: at most once, no history. A message is
encoded once and queued on each subscriber's outbound queue, which never blocks (a
subscriber that does not read is closed with 4003 by its own session), so a slow
subscriber never holds up the publisher or the other subscribers. Each session's queue is
FIFO, which gives per-publisher order. Topic names are checked by the protocol schema
(`topgun.protocol.TopicName`): an invalid one is an `ERROR 400` before any handler runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, Final, Protocol

from topgun.protocol import (
    Message,
    TopicMessage,
    TopicMessagePayload,
    TopicPub,
    TopicSub,
    TopicUnsub,
)

if TYPE_CHECKING:
    from topgun.server.session import Session

MAX_TOPICS_PER_CONNECTION: Final = 100
"""A connection's `TOPIC_SUB` beyond this many topics is an `ERROR 400` (§5.9)."""


class Subscriber(Hashable, Protocol):
    """What a topic subscriber must offer: its client id and a non-blocking frame queue."""

    @property
    def client_id(self) -> str: ...

    def send_frame(self, frame: bytes, message_type: str) -> None: ...


class TopicLimitError(Exception):
    """A connection tried to subscribe to more than `MAX_TOPICS_PER_CONNECTION` topics."""


class TopicRegistry:
    """Topic subscribers by topic and topics by subscriber, kept consistent."""

    def __init__(
        self,
        *,
        clock: Callable[[], int],
        encode: Callable[[TopicMessage], bytes],
        max_per_connection: int = MAX_TOPICS_PER_CONNECTION,
    ) -> None:
        self._clock = clock
        self._encode = encode
        self.max_per_connection = max_per_connection
        self._by_topic: dict[str, dict[Subscriber, None]] = {}
        self._by_subscriber: dict[Subscriber, set[str]] = {}

    def subscribe(self, subscriber: Subscriber, topic: str) -> None:
        """Subscribe (again: no change); `TopicLimitError` past the per-connection cap."""
        topics = self._by_subscriber.setdefault(subscriber, set())
        if topic in topics:
            return
        if len(topics) >= self.max_per_connection:
            raise TopicLimitError(
                f"a connection may subscribe to at most {self.max_per_connection} topics"
            )
        topics.add(topic)
        self._by_topic.setdefault(topic, {})[subscriber] = None

    def unsubscribe(self, subscriber: Subscriber, topic: str) -> None:
        """End one subscription; not subscribed → nothing happens."""
        topics = self._by_subscriber.get(subscriber)
        if topics is None or topic not in topics:
            return
        topics.discard(topic)
        if not topics:
            del self._by_subscriber[subscriber]
        members = self._by_topic[topic]
        del members[subscriber]
        if not members:
            del self._by_topic[topic]

    def drop(self, subscriber: Subscriber) -> None:
        """End every subscription of a subscriber (it disconnected)."""
        for topic in list(self._by_subscriber.get(subscriber, ())):
            self.unsubscribe(subscriber, topic)

    def topics_of(self, subscriber: Subscriber) -> frozenset[str]:
        """The topics `subscriber` is subscribed to."""
        return frozenset(self._by_subscriber.get(subscriber, ()))

    def subscriber_count(self, topic: str) -> int:
        """How many connections are subscribed to `topic`."""
        return len(self._by_topic.get(topic, ()))

    def publish(self, topic: str, data: Any, publisher: Subscriber | None) -> int:
        """Queue `TOPIC_MESSAGE` for every subscriber but `publisher`; returns how many.

        The frame is encoded once; queuing never waits on a subscriber.
        """
        recipients = [s for s in self._by_topic.get(topic, ()) if s is not publisher]
        if not recipients:
            return 0
        frame = self._encode(
            TopicMessage(
                payload=TopicMessagePayload(
                    topic=topic,
                    data=data,
                    timestamp=self._clock(),
                    publisher_id=publisher.client_id if publisher is not None else None,
                )
            )
        )
        for subscriber in recipients:
            subscriber.send_frame(frame, "TOPIC_MESSAGE")
        return len(recipients)


def _details(type_name: str, topic: str) -> dict[str, str]:
    return {"type": type_name, "topic": topic}


async def topic_sub(session: Session, message: TopicSub) -> None:
    """`TOPIC_SUB`: READ on `topic:<name>` (else 403), then subscribe (over the cap: 400)."""
    topic = message.payload.topic
    principal = session.principal
    assert principal is not None
    server = session.server
    if not server.security.is_allowed(principal, f"topic:{topic}", "READ"):
        session.send_error(403, f"Access denied for topic {topic}", _details("TOPIC_SUB", topic))
        return
    try:
        server.topics.subscribe(session, topic)
    except TopicLimitError as exc:
        session.send_error(400, str(exc), _details("TOPIC_SUB", topic))


async def topic_unsub(session: Session, message: TopicUnsub) -> None:
    """`TOPIC_UNSUB`: end the subscription (not subscribed: ignored)."""
    session.server.topics.unsubscribe(session, message.payload.topic)


async def topic_pub(session: Session, message: TopicPub) -> None:
    """`TOPIC_PUB`: PUT on `topic:<name>` (else 403), then fan out to the other subscribers."""
    topic = message.payload.topic
    principal = session.principal
    assert principal is not None
    server = session.server
    if not server.security.is_allowed(principal, f"topic:{topic}", "PUT"):
        session.send_error(403, f"Access denied for topic {topic}", _details("TOPIC_PUB", topic))
        return
    server.topics.publish(topic, message.payload.data, session)


TOPIC_HANDLERS: Final[dict[type[Message], Callable[[Session, Any], Awaitable[None]]]] = {
    TopicSub: topic_sub,
    TopicUnsub: topic_unsub,
    TopicPub: topic_pub,
}
"""This module's entries of the dispatch table (`topgun.server.dispatch.HANDLERS`)."""
