"""Real-time change events (PROTOCOL.md §5.3, §6.2)."""

from __future__ import annotations

from typing import Literal

from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol.message import Message, Wire

__all__ = [
    "EventPayload",
    "EventType",
    "ServerBatchEvent",
    "ServerBatchEventPayload",
    "ServerEvent",
]

EventType = Literal["PUT", "REMOVE", "OR_ADD", "OR_REMOVE", "UPDATED"]
"""topgun sends the first four; `"UPDATED"` is the reference's LWW value, accepted on input."""


class EventPayload(Wire):
    """One applied change: `record` for LWW events, `orRecord`/`orTag` for OR-Map events."""

    map_name: str
    event_type: EventType
    key: str
    record: LWWRecord | None = None
    or_record: ORMapRecord | None = None
    or_tag: str | None = None


class ServerEvent(Message, tag="SERVER_EVENT"):
    """S→C: one change; `timestamp` is the server's `hlc.now()` (an HLC map, rule J7)."""

    payload: EventPayload
    timestamp: Timestamp


class ServerBatchEventPayload(Wire):
    events: list[EventPayload]


class ServerBatchEvent(Message, tag="SERVER_BATCH_EVENT"):
    """S→C: the changes of one write request for one recipient."""

    payload: ServerBatchEventPayload
    timestamp: Timestamp
