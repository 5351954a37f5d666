"""Delivering changes to subscribers as `SERVER_EVENT` / `SERVER_BATCH_EVENT` (PROTOCOL.md §6.2).

The changes of one request go to each recipient as one message: `SERVER_EVENT` for one
change, `SERVER_BATCH_EVENT` for more, with the server's `hlc.now()` as the top-level
`timestamp`. Recipients are the authenticated sessions holding a live query on the changed
map that matches the key before or after the change (a watcher says which:
`topgun.server.live`), other than the one that made the change, and only if they may READ;
every value is filtered by the recipient's field-level security, and an event whose value is
withheld is not sent to that recipient at all. Recipients that see the same events share
one encoded frame.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping, Sequence
from typing import Protocol

import anyio
import msgspec

from topgun.crdt import HLC
from topgun.hooks import Principal
from topgun.protocol import (
    EventPayload,
    ServerBatchEvent,
    ServerBatchEventPayload,
    ServerEvent,
)
from topgun.server.permissions import FieldFilter
from topgun.server.subscriptions import SubscriptionRegistry

Interest = Mapping[tuple[str, str], Collection["Recipient"]]
"""(map, key) -> the sessions a change of that key is for."""


class Recipient(Hashable, Protocol):
    """What event routing needs of a session."""

    @property
    def principal(self) -> Principal | None:
        """`None` until the session authenticated."""

    @property
    def is_open(self) -> bool:
        """False once the session is closing or closed."""

    def send_frame(self, frame: bytes, message_type: str) -> None:
        """Queue an encoded non-urgent message for the client."""


def filtered_event(event: EventPayload, fields: FieldFilter) -> EventPayload | None:
    """`event` as a recipient with `fields` may see it; `None` if it must not be sent."""
    if not fields.readable:
        return None
    if fields.fields is None:
        return event
    if event.record is not None:
        record = fields.record(event.record)
        return None if record is None else msgspec.structs.replace(event, record=record)
    if event.or_record is not None:
        or_record = fields.record(event.or_record)
        return None if or_record is None else msgspec.structs.replace(event, or_record=or_record)
    return event


class EventRouter:
    """Sends each request's changes to the sessions subscribed to the changed maps."""

    def __init__(
        self,
        subscriptions: SubscriptionRegistry[Recipient],
        *,
        hlc: HLC,
        field_filter: Callable[[Principal, str], FieldFilter],
        encode: Callable[[msgspec.Struct], bytes],
    ) -> None:
        self.subscriptions = subscriptions
        self.hlc = hlc
        self.field_filter = field_filter
        self.encode = encode
        self.watchers: list[Callable[[Sequence[EventPayload]], Interest | None]] = []
        """Told of every request's changes before they are routed (live queries, live
        searches, hybrid queries). Watchers returning an `Interest` narrow each change's
        recipients to the sessions they name, together, for that (map, key) (live queries
        matching the key)."""
        self.after_delivery: list[Callable[[], None]] = []
        """Called once the events are queued (live query updates follow their events)."""
        self.send: Callable[[Recipient, bytes, str], None] | None = None
        """Sends the event frames instead of `Recipient.send_frame` (under a memory budget:
        the server's `Outbox`, so that events stay in order behind updates that wait for a
        cold row)."""
        self.settlers: list[Callable[[], Awaitable[None]]] = []
        """Awaited by `settle`: send what waits for cold rows (under a memory budget)."""

    def deliver(self, events: Sequence[EventPayload], origin: Recipient | None) -> int:
        """Send `events` (the changes of one request, in order) to their recipients.

        `origin` is the session that made them (it gets none of them back). Returns how
        many sessions received a message.
        """
        if not events:
            return 0
        interest: dict[tuple[str, str], set[Recipient]] | None = None
        for watcher in self.watchers:
            narrowed = watcher(events)
            if narrowed is not None:
                interest = interest or {}
                for changed, sessions in narrowed.items():
                    interest.setdefault(changed, set()).update(sessions)
        try:
            return self._route(events, origin, interest)
        finally:
            for after in self.after_delivery:
                after()

    async def settle(self) -> None:
        """Finish the last deliveries: updates that wait for a row's value to be loaded
        (shielded: frames for other sessions wait behind them)."""
        with anyio.CancelScope(shield=True):
            for settler in self.settlers:
                await settler()

    def _route(
        self, events: Sequence[EventPayload], origin: Recipient | None, interest: Interest | None
    ) -> int:
        # Per map: the recipients and what they may see of it.
        audiences: dict[str, list[tuple[Recipient, FieldFilter]]] = {}
        for event in events:
            if event.map_name in audiences:
                continue
            audience = audiences[event.map_name] = []
            for session in self.subscriptions.sessions_on(event.map_name):
                principal = session.principal
                if session is origin or principal is None or not session.is_open:
                    continue
                fields = self.field_filter(principal, event.map_name)
                if fields.readable:
                    audience.append((session, fields))
        if not any(audiences.values()):
            return 0
        inbox: dict[Recipient, list[EventPayload]] = {}
        shown: dict[tuple[int, FieldFilter], EventPayload | None] = {}
        for index, event in enumerate(events):
            wanted = None if interest is None else interest.get((event.map_name, event.key), ())
            for session, fields in audiences[event.map_name]:
                if wanted is not None and session not in wanted:
                    continue
                key = (index, fields)
                if key not in shown:
                    shown[key] = filtered_event(event, fields)
                visible = shown[key]
                if visible is not None:
                    inbox.setdefault(session, []).append(visible)
        if not inbox:
            return 0
        timestamp = self.hlc.now()
        send = self.send
        frames: dict[tuple[int, ...], tuple[bytes, str]] = {}
        for session, received in inbox.items():
            identity = tuple(map(id, received))
            frame = frames.get(identity)
            if frame is None:
                message: ServerEvent | ServerBatchEvent
                if len(received) == 1:
                    message = ServerEvent(payload=received[0], timestamp=timestamp)
                    frame = (self.encode(message), "SERVER_EVENT")
                else:
                    message = ServerBatchEvent(
                        payload=ServerBatchEventPayload(events=received), timestamp=timestamp
                    )
                    frame = (self.encode(message), "SERVER_BATCH_EVENT")
                frames[identity] = frame
            if send is None:
                session.send_frame(*frame)
            else:
                send(session, *frame)
        return len(inbox)
