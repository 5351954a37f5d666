"""PROTOCOL.md §11 P-42, P-43, P-52..P-55 over real sockets: TTL expiry, tombstone GC, entry
processors, conflict resolvers, the event journal."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    EntryProcess,
    EntryProcessResponse,
    GcPrune,
    JournalEventMessage,
    JournalRead,
    JournalReadResponse,
    JournalSubscribe,
    JournalUnsubscribe,
    MergeRejected,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    ProcessorSpec,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    RegisterResolver,
    RegisterResolverResponse,
    ResolverSpec,
    ServerEvent,
)

pytestmark = pytest.mark.anyio


def put(key: str, value: Any, millis: int, ttl_ms: float | None = None) -> ClientOp:
    record = LWWRecord(value, Timestamp(millis, 0, "client-1"), ttl_ms)
    return ClientOp(map_name="m", key=key, id=f"{key}-{millis}", record=record)


async def write(client: Any, *ops: ClientOp) -> OpAck:
    await client.send(OpBatch(payload=OpBatchPayload(ops=list(ops))))
    while True:
        message = await client.recv()
        if isinstance(message, OpAck):
            return message


async def until(client: Any, kind: type[Any]) -> Any:
    while True:
        message = await client.recv()
        if isinstance(message, kind):
            return message


async def test_p42_an_expired_record_is_removed_with_an_event_within_a_second(
    live_server: Any,
) -> None:
    """P-42, on the wall clock: a 300 ms TTL; SERVER_EVENT REMOVE well within 1.5 s."""
    writer, watcher = await live_server.client(), await live_server.client()
    await watcher.send(QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=Query())))
    await until(watcher, QueryResp)
    now = live_server.server.clock()
    await write(writer, put("k", "v", now, ttl_ms=300))
    with anyio.fail_after(1.8):  # 0.3 s to expire, then at most 1 s (P-42), plus slack
        while True:
            event = await until(watcher, ServerEvent)
            if event.payload.event_type == "REMOVE":
                break
    assert event.payload.key == "k"
    assert event.payload.record.timestamp == Timestamp(now + 300, 0, live_server.server.node_id)


async def test_p43_gc_prunes_old_tombstones_and_tells_every_authenticated_client(
    live_server: Any,
) -> None:
    clients = [await live_server.client() for _ in range(2)]
    now = live_server.server.clock()
    age = live_server.config.gc_age_ms
    await write(
        clients[0],
        put("old", None, now - age - 1000),
        put("new", None, now - 1000),
        put("fresh", 1, now),  # the writer's newest record: its last activity
    )
    run = await live_server.server.gc.collect()
    assert run.pruned == 1
    for client in clients:
        prune = await until(client, GcPrune)
        assert prune.payload.older_than == run.older_than
        assert prune.payload.older_than.millis <= now - age
    records = live_server.server.maps.lww("m")
    assert records.get_record("old") is None
    assert records.get_record("new") is not None


async def test_p52_an_unknown_processor_fails_and_its_code_is_not_run(live_server: Any) -> None:
    client = await live_server.client()
    spec = ProcessorSpec(name="custom", code="while(true){}", args=None)
    await client.send(EntryProcess(request_id="r", map_name="m", key="k", processor=spec))
    response = await until(client, EntryProcessResponse)
    assert (response.success, response.error) == (False, "Unknown processor: custom")


async def test_p53_increments_start_at_one_and_serialize(live_server: Any) -> None:
    clients = [await live_server.client() for _ in range(10)]
    spec = ProcessorSpec(name="builtin:increment", code="")
    for client in clients:
        for i in range(10):
            await client.send(
                EntryProcess(request_id=str(i), map_name="m", key="n", processor=spec)
            )
    values = [(await until(c, EntryProcessResponse)).new_value for c in clients for _ in range(10)]
    assert sorted(values) == list(range(1, 101))


async def test_p54_unknown_resolvers_fail_and_first_write_wins_rejects(live_server: Any) -> None:
    client = await live_server.client()
    for name, success in (("nope", False), ("builtin:first_write_wins", True)):
        spec = ResolverSpec(name=name, code="")
        await client.send(RegisterResolver(request_id=name, map_name="m", resolver=spec))
        response = await until(client, RegisterResolverResponse)
        assert response.success is success
    now = live_server.server.clock()
    await write(client, put("k", 1, now))
    await client.send(OpBatch(payload=OpBatchPayload(ops=[put("k", 2, now + 1)])))
    rejected = await until(client, MergeRejected)
    assert (rejected.key, rejected.attempted_value) == ("k", 2)


async def test_p55_journal_sequences_increase_and_unsubscribe_stops_events(
    live_server: Any,
) -> None:
    client = await live_server.client()
    await client.send(JournalSubscribe(request_id="s"))
    now = live_server.server.clock()
    await write(client, put("a", 1, now), put("b", 2, now))
    await client.send(JournalRead(request_id="r", from_sequence="0"))
    page = await until(client, JournalReadResponse)
    sequences = [event.sequence for event in page.events]
    assert all(s.isdecimal() for s in sequences)
    assert [int(s) for s in sequences] == sorted(int(s) for s in sequences)
    assert len(sequences) == 2
    await client.send(JournalUnsubscribe(subscription_id="s"))
    await client.send(Ping(timestamp=1))
    await until(client, Pong)
    await write(client, put("c", 3, now))
    await client.send(Ping(timestamp=2))
    while not isinstance(message := await client.recv(), Pong):
        assert not isinstance(message, JournalEventMessage)
