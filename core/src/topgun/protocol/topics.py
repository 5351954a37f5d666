"""Topic publish/subscribe (PROTOCOL.md §5.9, §6.10)."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from topgun.protocol.message import Message, Wire

__all__ = [
    "TopicMessage",
    "TopicMessagePayload",
    "TopicName",
    "TopicPub",
    "TopicPubPayload",
    "TopicSub",
    "TopicSubPayload",
    "TopicUnsub",
]

TopicName = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_\-.:/]+$")]
"""A valid topic name; an invalid one in `TOPIC_SUB`/`TOPIC_PUB` is a 400."""


class TopicSubPayload(Wire):
    topic: TopicName


class TopicSub(Message, tag="TOPIC_SUB"):
    payload: TopicSubPayload


class TopicUnsub(Message, tag="TOPIC_UNSUB"):
    """C→S: unsubscribe (a topic this connection is not subscribed to is ignored)."""

    payload: TopicSubPayload


class TopicPubPayload(Wire):
    topic: TopicName
    data: Any


class TopicPub(Message, tag="TOPIC_PUB"):
    """C→S: publish `data` to every other subscriber (at most once, no history)."""

    payload: TopicPubPayload


class TopicMessagePayload(Wire):
    """`timestamp` is server ms (an integer, not an HLC); `publisherId` the publisher's clientId."""

    topic: str
    data: Any
    timestamp: int
    publisher_id: str | None = None


class TopicMessage(Message, tag="TOPIC_MESSAGE"):
    payload: TopicMessagePayload
