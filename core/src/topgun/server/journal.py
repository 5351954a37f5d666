"""The event journal (PROTOCOL.md §5.14, §6.12): every change, numbered and retained.

The write pipeline tells the journal about every op that changed a map (a change observer,
`topgun.server.writes.ChangeObserver`), so every write path is journaled: client ops, OR-Map
pushes, entry processors, TTL expiry. Each change becomes a `JournalEvent` with the next
value of a server-wide sequence counter: `DELETE` when the new record is a tombstone (or an
OR tag was tombstoned), `PUT` when the key had no live value, else `UPDATE`. The newest
`capacity` events are kept in a ring, mirrored in the storage meta area (namespace `journal`,
in the same storage batch as the changes themselves) as *groups*: the events of one run of
ops (usually a whole request) are one row, keyed by their first sequence and carrying the
oldest sequence the journal retained when it was written (its horizon). A group row is
deleted once the newer rows hold `capacity` events, so journaling costs one storage change
per request, not one per event. Loading keeps the newest `capacity` stored events at or
above the newest horizon, so sequences keep increasing across restarts and a capacity raised
between restarts does not bring back events that were already dropped. Rows of the earlier
layout (one event per ring slot) are rewritten as a group on load.

Readers see only events of maps they may READ, with values filtered by their field-level
security; `JOURNAL_SUBSCRIBE` replays from a sequence and then streams, `JOURNAL_READ` pages.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import msgspec
from msgspec import UNSET

from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.hooks import Principal
from topgun.protocol import (
    JournalEvent,
    JournalEventMessage,
    JournalEventType,
    JournalRead,
    JournalReadResponse,
    JournalSubscribe,
    JournalUnsubscribe,
)
from topgun.server.maps import Recording
from topgun.server.permissions import WITHHELD, FieldFilter
from topgun.server.writes import Applied
from topgun.storage import Change, PutMeta, StorageBackend

if TYPE_CHECKING:
    from topgun.server.session import Session

logger = logging.getLogger(__name__)

JOURNAL_NAMESPACE: Final = "journal"
"""Meta-area namespace: zero-padded first sequence -> the msgpack-encoded `_Group`."""

DEFAULT_READ_LIMIT: Final = 100
MAX_READ_LIMIT: Final = 1000


class _Group(msgspec.Struct, array_like=True):
    """One journal row: consecutive events, and the oldest sequence retained when written."""

    horizon: int
    events: list[JournalEvent]


_encode: Final = msgspec.msgpack.Encoder().encode
_group_decoder: Final = msgspec.msgpack.Decoder(_Group)
_event_decoder: Final = msgspec.msgpack.Decoder(JournalEvent)


def _decode_row(raw: bytes) -> _Group | JournalEvent:
    """A row of either layout: a `_Group`, or one event in a ring slot (before groups)."""
    try:
        return _group_decoder.decode(raw)
    except msgspec.ValidationError:
        return _event_decoder.decode(raw)


def _group_key(sequence: int) -> str:
    return str(sequence).zfill(20)


class JournalReader(Protocol):
    """What the journal needs of a session that subscribed."""

    @property
    def principal(self) -> Principal | None:
        """`None` until the session authenticated."""

    @property
    def is_open(self) -> bool:
        """False once the session is closing or closed."""

    def send(self, message: msgspec.Struct, *, urgent: bool | None = None) -> None:
        """Queue a message for the client."""


class _Subscription(msgspec.Struct):
    map_name: str | None
    types: frozenset[JournalEventType] | None

    def matches(self, event: JournalEvent) -> bool:
        return (self.map_name is None or event.map_name == self.map_name) and (
            self.types is None or event.type in self.types
        )


class Journal:
    """The server's journal: a bounded ring of numbered events plus its subscriptions."""

    def __init__(
        self,
        *,
        capacity: int,
        node_id: str,
        hlc: HLC,
        field_filter: Callable[[Principal, str], FieldFilter],
    ) -> None:
        if capacity < 1:
            raise ValueError(f"journal capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.node_id = node_id
        self.hlc = hlc
        self.field_filter = field_filter
        self.events: deque[JournalEvent] = deque(maxlen=capacity)
        self.next_sequence = 0
        self._groups: deque[tuple[str, int]] = deque()
        """(row key, event count) of the stored groups, oldest first."""
        self._stored = 0
        """How many events the stored groups hold."""
        self._subscriptions: dict[JournalReader, dict[str, _Subscription]] = {}

    # -- recording ----------------------------------------------------------------------

    async def load(self, backend: StorageBackend) -> int:
        """Restore the newest `capacity` stored events; returns how many.

        Rows of the earlier one-event-per-slot layout are rewritten as one group, and groups
        the newer ones make redundant are deleted."""
        groups: list[tuple[str, _Group]] = []
        legacy: list[str] = []
        found: dict[int, JournalEvent] = {}
        horizon = 0
        for key, raw in (await backend.load_meta(JOURNAL_NAMESPACE)).items():
            row = _decode_row(raw)
            if isinstance(row, _Group):
                groups.append((key, row))
                horizon = max(horizon, row.horizon)
                events = row.events
            else:
                legacy.append(key)
                events = [row]
            for event in events:
                found[int(event.sequence)] = event
        kept = [found[seq] for seq in sorted(found) if seq >= horizon][-self.capacity :]
        self.events.extend(kept)
        if found:
            self.next_sequence = max(found) + 1
        repairs: list[Change] = [PutMeta(JOURNAL_NAMESPACE, key, None) for key in legacy]
        for key, group in sorted(groups, key=lambda item: item[0]):  # by first sequence
            self._groups.append((key, len(group.events)))
            self._stored += len(group.events)
        if legacy and kept:
            first = int(kept[0].sequence)
            rewritten = _Group(first, list(kept))
            repairs.append(PutMeta(JOURNAL_NAMESPACE, _group_key(first), _encode(rewritten)))
            self._groups.append((_group_key(first), len(rewritten.events)))
            self._stored += len(rewritten.events)
        self._trim(repairs)
        if repairs:
            await backend.store_batch(repairs)
        return len(kept)

    def _trim(self, changes: list[Change]) -> None:
        """Delete the oldest groups while the newer ones hold `capacity` events."""
        groups = self._groups
        while groups and self._stored - groups[0][1] >= self.capacity:
            key, count = groups.popleft()
            self._stored -= count
            changes.append(PutMeta(JOURNAL_NAMESPACE, key, None))

    def observe(self, applied: Sequence[Applied], recording: Recording) -> None:
        """The change observer: journal `applied` and persist it with `recording` (one
        group row), then stream it."""
        events: list[JournalEvent] = []
        for one in applied:
            if len(one.events) == 1 and one.events[0].record is not None:
                events.append(self._lww_event(one, one.events[0].record))  # the common case
            else:
                events += self._events_of(one)
        if not events:
            return
        self.events.extend(events)  # drops the oldest beyond `capacity`
        first = int(events[0].sequence)
        key = _group_key(first)
        horizon = self.next_sequence - self.capacity
        changes = recording.changes
        changes.append(PutMeta(JOURNAL_NAMESPACE, key, _encode(_Group(horizon, events))))
        self._groups.append((key, len(events)))
        self._stored += len(events)
        self._trim(changes)
        if self._subscriptions:
            for event in events:
                self._stream(event)

    def _events_of(self, applied: Applied) -> list[JournalEvent]:
        """The numbered event of each change of `applied`."""
        found: list[JournalEvent] = []
        for payload in applied.events:
            if payload.record is not None:
                found.append(self._lww_event(applied, payload.record))
            elif payload.or_record is not None:
                found.append(
                    self._event(
                        "PUT",
                        applied,
                        payload.or_record.timestamp,
                        value=payload.or_record.value,
                        metadata={"tag": payload.or_record.tag},
                    )
                )
            elif payload.or_tag is not None:
                found.append(
                    self._event("DELETE", applied, self.hlc.now(), metadata={"tag": payload.or_tag})
                )
        return found

    def _lww_event(self, applied: Applied, record: LWWRecord) -> JournalEvent:
        previous = applied.previous
        before: object = UNSET
        if (
            previous is not None
            and previous.value is not None
            and (previous.ttl_ms is None or not previous.expired(self.hlc.wall_ms()))
        ):
            before = previous.value
        if record.value is None:
            return self._event("DELETE", applied, record.timestamp, previous=before)
        kind: JournalEventType = "PUT" if before is UNSET else "UPDATE"
        return self._event(kind, applied, record.timestamp, value=record.value, previous=before)

    def _event(
        self,
        kind: JournalEventType,
        applied: Applied,
        timestamp: Timestamp,
        *,
        value: object = UNSET,
        previous: object = UNSET,
        metadata: dict[str, object] | None = None,
    ) -> JournalEvent:
        sequence = self.next_sequence
        self.next_sequence += 1
        return JournalEvent(
            sequence=str(sequence),
            type=kind,
            map_name=applied.map_name,
            key=applied.key,
            timestamp=timestamp,
            node_id=self.node_id,
            value=value,
            previous_value=previous,
            metadata=metadata,
        )

    # -- reading ------------------------------------------------------------------------

    def _visible(self, event: JournalEvent, principal: Principal) -> JournalEvent | None:
        """`event` as `principal` may see it; `None` without READ or when FLS withholds it."""
        fields = self.field_filter(principal, event.map_name)
        if not fields.readable:
            return None
        if fields.fields is None:
            return event
        changes: dict[str, object] = {}
        for name in ("value", "previous_value"):
            raw = getattr(event, name)
            if raw is UNSET or raw is None:
                continue
            shown = fields.apply(raw)
            if shown is WITHHELD:
                return None
            changes[name] = shown
        return msgspec.structs.replace(event, **changes)

    def _from(self, from_sequence: int) -> list[JournalEvent]:
        if not self.events:
            return []
        first = int(self.events[0].sequence)
        start = max(from_sequence - first, 0)
        return [self.events[i] for i in range(start, len(self.events))]

    def read(
        self,
        principal: Principal,
        from_sequence: int,
        limit: int | None = None,
        map_name: str | None = None,
    ) -> tuple[list[JournalEvent], bool]:
        """A page: up to `limit` (default 100, capped at 1000) events with sequence ≥
        `from_sequence` that `principal` may see, and whether more follow."""
        wanted = min(DEFAULT_READ_LIMIT if limit is None else limit, MAX_READ_LIMIT)
        page: list[JournalEvent] = []
        for event in self._from(from_sequence):
            if map_name is not None and event.map_name != map_name:
                continue
            shown = self._visible(event, principal)
            if shown is None:
                continue
            if len(page) == wanted:
                return page, True
            page.append(shown)
        return page, False

    def subscribe(
        self,
        reader: JournalReader,
        subscription_id: str,
        *,
        from_sequence: int | None,
        map_name: str | None,
        types: Sequence[JournalEventType] | None,
    ) -> int:
        """Replay the matching retained events from `from_sequence` (none if `None`), then
        stream new ones to `reader`; returns how many were replayed."""
        subscription = _Subscription(map_name, None if types is None else frozenset(types))
        self._subscriptions.setdefault(reader, {})[subscription_id] = subscription
        if from_sequence is None:
            return 0
        principal = reader.principal
        assert principal is not None
        replayed = 0
        for event in self._from(from_sequence):
            if subscription.matches(event):
                shown = self._visible(event, principal)
                if shown is not None:
                    reader.send(JournalEventMessage(event=shown, subscription_id=subscription_id))
                    replayed += 1
        return replayed

    def unsubscribe(self, reader: JournalReader, subscription_id: str) -> bool:
        """Stop a subscription at once; False if there was none."""
        found = self._subscriptions.get(reader, {}).pop(subscription_id, None)
        if reader in self._subscriptions and not self._subscriptions[reader]:
            del self._subscriptions[reader]
        return found is not None

    def drop(self, reader: JournalReader) -> None:
        """Forget every subscription of a session that is gone."""
        self._subscriptions.pop(reader, None)

    def _stream(self, event: JournalEvent) -> None:
        for reader, subscriptions in list(self._subscriptions.items()):
            principal = reader.principal
            if not reader.is_open or principal is None:
                self._subscriptions.pop(reader, None)
                continue
            shown: JournalEvent | None = None
            for subscription_id, subscription in subscriptions.items():
                if not subscription.matches(event):
                    continue
                if shown is None:
                    shown = self._visible(event, principal)
                    if shown is None:
                        break
                reader.send(JournalEventMessage(event=shown, subscription_id=subscription_id))


# -- handlers (dispatch table entries) ------------------------------------------------------


def _journal_of(session: Session, request_id: str) -> Journal | None:
    journal = session.server.journal
    if journal is None:
        session.send_error(503, "The event journal is disabled", {"requestId": request_id})
    return journal


async def journal_subscribe(session: Session, message: JournalSubscribe) -> None:
    """`JOURNAL_SUBSCRIBE`: replay from `fromSequence`, then stream (ERROR 503 if off)."""
    journal = _journal_of(session, message.request_id)
    if journal is None:
        return
    journal.subscribe(
        session,
        message.request_id,
        from_sequence=None if message.from_sequence is None else int(message.from_sequence),
        map_name=message.map_name,
        types=message.types,
    )


async def journal_unsubscribe(session: Session, message: JournalUnsubscribe) -> None:
    """`JOURNAL_UNSUBSCRIBE`: no further event of that subscription is sent."""
    journal = session.server.journal
    if journal is not None:
        journal.unsubscribe(session, message.subscription_id)


async def journal_read(session: Session, message: JournalRead) -> None:
    """`JOURNAL_READ` → `JOURNAL_READ_RESPONSE` (one page)."""
    journal = _journal_of(session, message.request_id)
    if journal is None:
        return
    principal = session.principal
    assert principal is not None
    events, has_more = journal.read(
        principal, int(message.from_sequence), message.limit, message.map_name
    )
    session.send(
        JournalReadResponse(request_id=message.request_id, events=events, has_more=has_more)
    )
