"""The event journal (PROTOCOL.md §5.14, §6.12). All fields are top-level.

Sequences are decimal strings of a server-wide counter (they may exceed 2^53).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from topgun.crdt.records import Timestamp
from topgun.protocol.message import Message, Wire

__all__ = [
    "DecimalSequence",
    "JournalEvent",
    "JournalEventMessage",
    "JournalEventType",
    "JournalRead",
    "JournalReadResponse",
    "JournalSubscribe",
    "JournalUnsubscribe",
]

JournalEventType = Literal["PUT", "UPDATE", "DELETE"]
DecimalSequence = Annotated[str, Meta(pattern=r"^[0-9]+$")]
"""A journal sequence number in decimal; anything else in a request is a 400."""


class JournalEvent(Wire):
    """One journaled change; `value`/`previousValue` are absent (`UNSET`) when there is none."""

    sequence: str
    type: JournalEventType
    map_name: str
    key: str
    timestamp: Timestamp
    node_id: str
    value: Any | UnsetType = UNSET
    previous_value: Any | UnsetType = UNSET
    metadata: dict[str, Any] | None = None


class JournalSubscribe(Message, tag="JOURNAL_SUBSCRIBE"):
    """C→S: replay from `fromSequence` (inclusive; absent = live only), then stream.
    `requestId` is the subscription id."""

    request_id: str
    from_sequence: DecimalSequence | None = None
    map_name: str | None = None
    types: list[JournalEventType] | None = None


class JournalUnsubscribe(Message, tag="JOURNAL_UNSUBSCRIBE"):
    subscription_id: str


class JournalEventMessage(Message, tag="JOURNAL_EVENT"):
    """S→C: one event; `subscriptionId` is a topgun extension that TS clients ignore."""

    event: JournalEvent
    subscription_id: str | None = None


class JournalRead(Message, tag="JOURNAL_READ"):
    """C→S: read a page (`limit` default 100; the server caps it at 1000)."""

    request_id: str
    from_sequence: DecimalSequence
    limit: Annotated[int, Meta(ge=0)] | None = None
    map_name: str | None = None


class JournalReadResponse(Message, tag="JOURNAL_READ_RESPONSE"):
    request_id: str
    events: list[JournalEvent]
    has_more: bool
