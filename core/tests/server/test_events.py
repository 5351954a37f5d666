"""Event routing (topgun/server/events.py): who receives SERVER_EVENT / SERVER_BATCH_EVENT.

PROTOCOL.md checklist items covered here: P-15 (event timestamps), P-33.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import (
    Batch,
    ClientOp,
    Error,
    EventPayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    QueryUnsub,
    QueryUnsubPayload,
    ServerBatchEvent,
    ServerEvent,
    unpack_batch,
)
from topgun.server import ALL_FIELDS, NO_ACCESS, FieldFilter, InMemoryClient, Policy
from topgun.server.events import filtered_event

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


def put(key: str, value: Any, map_name: str = "m", millis: int = T) -> ClientOp:
    return ClientOp(map_name=map_name, key=key, record=LWWRecord(value, Timestamp(millis, 0, "c")))


async def subscribe(client: InMemoryClient, map_name: str, query_id: str = "q") -> None:
    await client.send(
        QuerySub(payload=QuerySubPayload(query_id=query_id, map_name=map_name, query=Query()))
    )
    assert isinstance(await client.receive(), QueryResp)


async def nothing_more(client: InMemoryClient) -> None:
    """Nothing was queued for `client` before this PING's PONG."""
    await client.send(Ping(timestamp=0))
    assert isinstance(await client.receive(), Pong)


async def test_changes_reach_subscribers_only_and_never_the_originator_p33(harness: Any) -> None:
    """P-33: events go to other connections holding a QUERY_SUB on the map, with eventType
    PUT / REMOVE / OR_ADD / OR_REMOVE; not to the writer, not to non-subscribers."""
    writer = await harness.login()
    watcher = await harness.login()
    bystander = await harness.login()
    await subscribe(writer, "m")
    await subscribe(watcher, "m")
    await subscribe(watcher, "o", "q2")
    await subscribe(bystander, "elsewhere")
    await writer.send(OpBatch(payload=OpBatchPayload(ops=[put("k", 1)])))
    await writer.receive_until(OpAck)  # after the QUERY_UPDATEs of its own live query
    event, _ = await watcher.receive_until(ServerEvent)
    assert isinstance(event, ServerEvent)
    assert (event.payload.event_type, event.payload.key) == ("PUT", "k")
    assert event.payload.record == LWWRecord(1, Timestamp(T, 0, "c"))
    await writer.send(OpBatch(payload=OpBatchPayload(ops=[put("k", None, millis=T + 1)])))
    removed, _ = await watcher.receive_until(ServerEvent)
    assert removed.payload.event_type == "REMOVE"
    ts = Timestamp(T, 5, "c")
    or_record = ORMapRecord("v", ts, str(ts))
    await writer.send(
        OpBatch(
            payload=OpBatchPayload(
                ops=[
                    ClientOp(map_name="o", key="t", or_record=or_record),
                    ClientOp(map_name="o", key="t", or_tag=str(ts)),
                ]
            )
        )
    )
    await writer.receive_until(OpAck)  # after the QUERY_UPDATEs of its own live query
    await writer.receive_until(OpAck)  # after the QUERY_UPDATEs of its own live query
    both, _ = await watcher.receive_until(ServerBatchEvent)
    assert isinstance(both, ServerBatchEvent)
    assert [(e.event_type, e.key) for e in both.payload.events] == [
        ("OR_ADD", "t"),
        ("OR_REMOVE", "t"),
    ]
    assert both.payload.events[0].or_record == or_record
    assert both.payload.events[1].or_tag == str(ts)
    await nothing_more(writer)
    await nothing_more(bystander)


async def test_one_request_yields_one_batch_event_with_an_hlc_timestamp_p15(harness: Any) -> None:
    """§6.2: the changes of one request arrive as one SERVER_BATCH_EVENT whose top-level
    `timestamp` is an HLC map from the server clock (P-15)."""
    writer = await harness.login()
    watcher = await harness.login()
    await subscribe(watcher, "m")
    await subscribe(watcher, "n", "q2")
    await writer.send(
        OpBatch(payload=OpBatchPayload(ops=[put("a", 1), put("b", 2), put("c", 3, "n")]))
    )
    frame = msgspec.msgpack.decode(await watcher.receive_frame())
    if frame["type"] == "BATCH":  # the event and the live query updates that follow it
        batch = Batch(count=frame["count"], data=frame["data"])
        frame = msgspec.msgpack.decode(unpack_batch(batch)[0])
    assert frame["type"] == "SERVER_BATCH_EVENT"
    assert [(e["mapName"], e["key"]) for e in frame["payload"]["events"]] == [
        ("m", "a"),
        ("m", "b"),
        ("n", "c"),
    ]
    assert frame["timestamp"]["nodeId"] == "server-1"
    assert frame["timestamp"]["millis"] >= T


async def test_events_never_reach_a_session_without_read_and_are_field_filtered(
    start: Any,
) -> None:
    """No READ: no event. READ with allowed fields: the value keeps only those fields."""
    policies = (
        Policy(role="SEER", map_name_pattern="m", actions=("READ",), allowed_fields=("name",)),
        Policy(role="BLIND", map_name_pattern="other", actions=("READ",)),
    )
    async with start(policies=policies) as h:
        writer = await h.login()
        seer = await h.login(roles=["SEER"])
        blind = await h.login(roles=["BLIND"])
        await subscribe(seer, "m")
        await blind.send(
            QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=Query()))
        )
        denied = await blind.receive()
        assert isinstance(denied, Error)
        assert denied.payload.code == 403  # and no subscription
        await writer.send(
            OpBatch(payload=OpBatchPayload(ops=[put("k", {"name": "n", "secret": "s"})]))
        )
        event = await seer.receive()
        assert isinstance(event, ServerEvent)
        assert event.payload.record.value == {"name": "n"}
        await nothing_more(blind)


async def test_unsubscribed_sessions_get_no_more_events(harness: Any) -> None:
    writer = await harness.login()
    watcher = await harness.login()
    await subscribe(watcher, "m")
    await watcher.send(QueryUnsub(payload=QueryUnsubPayload(query_id="q")))
    await writer.send(OpBatch(payload=OpBatchPayload(ops=[put("k", 1)])))
    assert isinstance(await writer.receive(), OpAck)
    await nothing_more(watcher)


def test_filtered_event_applies_fls_to_record_values() -> None:
    event = EventPayload(
        map_name="m",
        event_type="PUT",
        key="k",
        record=LWWRecord({"a": 1, "b": 2}, Timestamp(T, 0, "c")),
    )
    assert filtered_event(event, ALL_FIELDS) is event
    assert filtered_event(event, NO_ACCESS) is None
    narrowed = filtered_event(event, FieldFilter(readable=True, fields=frozenset({"a"})))
    assert narrowed is not None
    assert narrowed.record.value == {"a": 1}
    removal = EventPayload(map_name="m", event_type="OR_REMOVE", key="k", or_tag="1:0:c")
    assert filtered_event(removal, FieldFilter(readable=True, fields=frozenset())) is removal
