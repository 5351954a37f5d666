"""The event journal (topgun/server/journal.py): JOURNAL_SUBSCRIBE / JOURNAL_READ.

PROTOCOL.md checklist items covered here: P-55.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from msgspec import UNSET

from topgun.crdt import HLC, LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    Error,
    EventPayload,
    JournalEvent,
    JournalEventMessage,
    JournalRead,
    JournalReadResponse,
    JournalSubscribe,
    JournalUnsubscribe,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
)
from topgun.server import InMemoryClient
from topgun.server.config import JournalConfig
from topgun.server.journal import JOURNAL_NAMESPACE, Journal
from topgun.server.maps import Recording
from topgun.server.permissions import FieldFilter
from topgun.server.writes import Applied
from topgun.storage import MemoryBackend, PutMeta

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


def put(key: str, value: Any, map_name: str = "m", millis: int = T) -> ClientOp:
    return ClientOp(map_name=map_name, key=key, record=LWWRecord(value, Timestamp(millis, 0, "c")))


async def write(client: InMemoryClient, *ops: ClientOp) -> None:
    await client.send(OpBatch(payload=OpBatchPayload(ops=list(ops))))
    await client.receive_until(OpAck)


async def read(client: InMemoryClient, from_sequence: str = "0", **fields: Any) -> Any:
    await client.send(JournalRead(request_id="r", from_sequence=from_sequence, **fields))
    response, _ = await client.receive_until(JournalReadResponse)
    return response


async def nothing_more(client: InMemoryClient) -> list[Any]:
    """What was queued for `client` before this PING's PONG."""
    await client.send(Ping(timestamp=0))
    _, before = await client.receive_until(Pong)
    return before


async def test_read_returns_increasing_decimal_sequences_and_change_types_p55(
    harness: Any,
) -> None:
    """P-55: PUT for a new key, UPDATE with previousValue, DELETE for a tombstone."""
    client = await harness.login()
    await write(client, put("a", 1), put("a", 2, millis=T + 1), put("a", None, millis=T + 2))
    response = await read(client)
    events = response.events
    assert [e.sequence for e in events] == ["0", "1", "2"]
    assert [e.type for e in events] == ["PUT", "UPDATE", "DELETE"]
    assert [e.value for e in events] == [1, 2, UNSET]
    assert [e.previous_value for e in events] == [UNSET, 1, 2]
    assert events[1].timestamp == Timestamp(T + 1, 0, "c")
    assert response.has_more is False


async def test_read_pages_with_limit_and_map_filter(harness: Any) -> None:
    client = await harness.login()
    await write(client, *(put(f"k{i}", i, map_name="a" if i % 2 else "b") for i in range(6)))
    page = await read(client, limit=2, map_name="a")
    assert [(e.key, e.sequence) for e in page.events] == [("k1", "1"), ("k3", "3")]
    assert page.has_more is True
    rest = await read(client, from_sequence="4", limit=2, map_name="a")
    assert [e.key for e in rest.events] == ["k5"]
    assert rest.has_more is False


async def test_unchanged_replays_are_not_journaled(harness: Any) -> None:
    client = await harness.login()
    await write(client, put("a", 1))
    await write(client, put("a", 1))  # the same record again: no change
    assert len((await read(client)).events) == 1


async def test_subscribe_replays_then_streams_and_unsubscribe_stops_p55(harness: Any) -> None:
    """P-55: no JOURNAL_EVENT of a subscription arrives after its JOURNAL_UNSUBSCRIBE."""
    reader = await harness.login()
    writer = await harness.login()
    await write(writer, put("a", 1), put("b", 2, map_name="other"))
    await reader.send(JournalSubscribe(request_id="s1", from_sequence="0", map_name="m"))
    replayed = await reader.receive()
    assert isinstance(replayed, JournalEventMessage)
    assert (replayed.subscription_id, replayed.event.key) == ("s1", "a")
    await write(writer, put("c", 3))
    streamed = await reader.receive()
    assert isinstance(streamed, JournalEventMessage)
    assert (streamed.event.key, streamed.event.sequence) == ("c", "2")
    await reader.send(JournalUnsubscribe(subscription_id="s1"))
    await nothing_more(reader)
    await write(writer, put("d", 4))
    assert await nothing_more(reader) == []


async def test_subscribe_without_from_sequence_is_live_only_and_filters_types(
    harness: Any,
) -> None:
    reader = await harness.login()
    await write(reader, put("a", 1))
    await reader.send(JournalSubscribe(request_id="s", types=["DELETE"]))
    ops = [put("a", 2, millis=T + 1), put("a", None, millis=T + 2)]
    await reader.send(OpBatch(payload=OpBatchPayload(ops=ops)))
    received = [m for m in await nothing_more(reader) if isinstance(m, JournalEventMessage)]
    assert [(m.event.type, m.event.sequence) for m in received] == [("DELETE", "2")]


async def test_events_of_unreadable_maps_are_skipped(harness: Any) -> None:
    admin = await harness.login()
    await write(admin, put("a", 1))
    user = await harness.login(roles=("USER",))  # no policies: USER may read nothing
    assert (await read(user)).events == []
    await user.send(JournalSubscribe(request_id="s", from_sequence="0"))
    await write(admin, put("b", 2))
    assert await nothing_more(user) == []


async def test_or_map_changes_are_put_and_delete_with_their_tag(harness: Any) -> None:
    client = await harness.login()
    stamp = Timestamp(T, 0, "c")
    added = ORMapRecord("x", stamp, str(stamp))
    await write(
        client,
        ClientOp(map_name="o", key="k", op_type="OR_ADD", or_record=added),
        ClientOp(map_name="o", key="k", op_type="OR_REMOVE", or_tag=str(stamp)),
    )
    events = (await read(client)).events
    assert [(e.type, e.metadata) for e in events] == [
        ("PUT", {"tag": str(stamp)}),
        ("DELETE", {"tag": str(stamp)}),
    ]


async def test_retention_keeps_the_newest_events_and_old_sequences_start_at_the_oldest(
    start: Any,
) -> None:
    async with start(journal=JournalConfig(capacity=3)) as h:
        client = await h.login()
        await write(client, *(put(f"k{i}", i) for i in range(5)))
        assert [e.sequence for e in (await read(client)).events] == ["2", "3", "4"]


async def test_journal_survives_a_restart(gated_start: Any) -> None:
    async with gated_start(journal=JournalConfig(capacity=3)) as h:
        client = await h.login()
        await write(client, *(put(f"k{i}", i) for i in range(4)))
    async with gated_start(journal=JournalConfig(capacity=3)) as h:
        client = await h.login()
        await write(client, put("later", 9))
        events = (await read(client)).events
        assert [(e.sequence, e.key) for e in events] == [("2", "k2"), ("3", "k3"), ("4", "later")]


async def test_a_capacity_change_between_restarts_keeps_the_newest_events(
    gated_start: Any,
) -> None:
    written = 0

    async def run(capacity: int, writes: int) -> list[str]:
        nonlocal written
        async with gated_start(journal=JournalConfig(capacity=capacity)) as h:
            client = await h.login()
            if writes:
                await write(client, *(put(f"k{written + i}", i) for i in range(writes)))
                written += writes
            return [e.sequence for e in (await read(client)).events]

    assert await run(3, 5) == ["2", "3", "4"]
    assert await run(5, 0) == ["2", "3", "4"]
    assert await run(5, 3) == ["3", "4", "5", "6", "7"]
    assert await run(5, 0) == ["3", "4", "5", "6", "7"]
    assert await run(2, 1) == ["7", "8"]
    assert await run(4, 3) == ["8", "9", "10", "11"]
    assert await run(4, 0) == ["8", "9", "10", "11"]
    assert await run(4, 1) == ["9", "10", "11", "12"]


async def test_disabled_journal_answers_503(start: Any) -> None:
    async with start(journal=JournalConfig(enabled=False)) as h:
        client = await h.login()
        await client.send(JournalRead(request_id="r", from_sequence="0"))
        error = await client.receive()
        assert isinstance(error, Error)
        assert error.payload.code == 503
        assert error.payload.details == {"requestId": "r"}


def _journal(capacity: int) -> Journal:
    return Journal(
        capacity=capacity,
        node_id="s",
        hlc=HLC("s", lambda: T),
        field_filter=lambda principal, map_name: FieldFilter(True, None),
    )


def _applied(journal: Journal, recording: Recording, *keys: str) -> None:
    record = LWWRecord(1, Timestamp(T, 0, "c"))
    journal.observe(
        [Applied("m", key, None, [EventPayload("m", "PUT", key, record)]) for key in keys],
        recording,
    )


async def test_a_request_is_one_stored_row_and_rows_past_the_capacity_are_deleted() -> None:
    backend = MemoryBackend()
    await backend.initialize()
    journal = _journal(capacity=4)
    await journal.load(backend)
    for keys in (["a", "b", "c"], ["d", "e"], ["f"], ["g", "h", "i"]):
        recording = Recording()
        _applied(journal, recording, *keys)
        assert sum(1 for c in recording.changes if c.value is not None) == 1  # type: ignore[union-attr]
        await backend.store_batch(recording.changes)
    rows = await backend.load_meta(JOURNAL_NAMESPACE)
    # Groups: [0-2] [3-4] [5] [6-8]; the newest two hold 4 events, so the older are gone.
    assert sorted(rows) == [str(5).zfill(20), str(6).zfill(20)]
    restarted = _journal(capacity=4)
    assert await restarted.load(backend) == 4
    assert [e.key for e in restarted.events] == ["f", "g", "h", "i"]
    assert restarted.next_sequence == 9


async def test_rows_of_the_one_event_per_slot_layout_are_rewritten_as_a_group() -> None:
    backend = MemoryBackend()
    await backend.initialize()
    encode = msgspec.msgpack.encode
    legacy = [
        JournalEvent(
            sequence=str(seq), type="PUT", map_name="m", key=f"k{seq}",
            timestamp=Timestamp(T, seq, "c"), node_id="s", value=seq,
        )
        for seq in range(7)
    ]  # fmt: skip
    # Capacity 5 ring slots: events 5 and 6 overwrote 0 and 1.
    await backend.store_batch(
        [PutMeta(JOURNAL_NAMESPACE, str(seq % 5).zfill(20), encode(e)) for seq, e in
         ((int(e.sequence), e) for e in legacy[2:])]
    )  # fmt: skip
    journal = _journal(capacity=5)
    assert await journal.load(backend) == 5
    assert [e.sequence for e in journal.events] == ["2", "3", "4", "5", "6"]
    rows = await backend.load_meta(JOURNAL_NAMESPACE)
    assert list(rows) == [str(2).zfill(20)]
    again = _journal(capacity=5)
    assert await again.load(backend) == 5
    assert [e.key for e in again.events] == ["k2", "k3", "k4", "k5", "k6"]
    assert again.next_sequence == 7
