"""TTL expiry (topgun/server/expiry.py): expired records become tombstones through the
write pipeline, with events, journal entries and live-query updates.

PROTOCOL.md checklist items covered here: P-42.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import (
    ClientOp,
    JournalRead,
    JournalReadResponse,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    QueryUpdate,
    ServerEvent,
)
from topgun.server import InMemoryClient

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


async def write(client: InMemoryClient, *ops: ClientOp) -> None:
    await client.send(OpBatch(payload=OpBatchPayload(ops=list(ops))))
    await client.receive_until(OpAck)


def put(key: str, value: Any, ttl_ms: float | None = None, millis: int = T) -> ClientOp:
    return ClientOp(
        map_name="m", key=key, record=LWWRecord(value, Timestamp(millis, 0, "c"), ttl_ms)
    )


async def subscribe(client: InMemoryClient, map_name: str = "m") -> None:
    await client.send(
        QuerySub(payload=QuerySubPayload(query_id="q", map_name=map_name, query=Query()))
    )
    await client.receive_until(QueryResp)


async def journal_types(client: InMemoryClient) -> list[tuple[str, str]]:
    await client.send(JournalRead(request_id="r", from_sequence="0"))
    response, _ = await client.receive_until(JournalReadResponse)
    return [(e.type, e.key) for e in response.events]


async def test_an_expired_record_becomes_a_tombstone_with_events_within_a_second_p42(
    harness: Any,
) -> None:
    """P-42: the subscriber gets SERVER_EVENT REMOVE within 1.5 s of the clock passing the
    expiry; the tombstone is stamped {ceil(millis + ttlMs), 0, serverNodeId} and journaled
    as DELETE."""
    writer = await harness.login()
    watcher = await harness.login()
    await subscribe(watcher)
    await write(writer, put("k", "v", ttl_ms=1000.5))
    harness.clock.advance(1002)
    with anyio.fail_after(1.5):
        while True:
            removal = await watcher.receive(timeout=1.5)
            if isinstance(removal, ServerEvent) and removal.payload.event_type == "REMOVE":
                break
    assert removal.payload.key == "k"
    tombstone = LWWRecord(None, Timestamp(T + 1001, 0, "server-1"))
    assert removal.payload.record == tombstone
    lww = harness.server.maps.lww("m")
    assert lww.get_record("k") == tombstone
    assert await journal_types(writer) == [("PUT", "k"), ("DELETE", "k")]


async def test_expiry_notifies_a_live_query_within_1_5_seconds(harness: Any) -> None:
    """The live query whose result held the key gets QUERY_UPDATE REMOVE for it."""
    writer = await harness.login()
    watcher = await harness.login()
    await write(writer, put("k", "v", ttl_ms=1000))
    await subscribe(watcher)
    harness.clock.advance(1001)
    with anyio.fail_after(1.5):
        update, _ = await watcher.receive_until(QueryUpdate, timeout=1.5)
    assert (update.payload.query_id, update.payload.key) == ("q", "k")
    assert update.payload.type == "REMOVE"


async def test_a_record_replaced_before_its_expiry_is_not_expired(harness: Any) -> None:
    client = await harness.login()
    await write(client, put("k", "old", ttl_ms=100), put("k", "new", millis=T + 1))
    harness.clock.advance(500)
    assert await harness.server.expiry.expire_due() == 0
    assert harness.server.maps.lww("m").get("k") == "new"


async def test_an_unexpired_record_stays(harness: Any) -> None:
    client = await harness.login()
    await write(client, put("k", "v", ttl_ms=10_000))
    harness.clock.advance(5_000)
    assert await harness.server.expiry.expire_due() == 0
    assert harness.server.maps.lww("m").get("k") == "v"
    assert len(harness.server.expiry) == 1


async def test_an_expired_or_record_has_its_tag_tombstoned(harness: Any) -> None:
    client = await harness.login()
    stamp = Timestamp(T, 0, "c")
    record = ORMapRecord("x", stamp, str(stamp), ttl_ms=50)
    await write(client, ClientOp(map_name="o", key="k", op_type="OR_ADD", or_record=record))
    harness.clock.advance(100)
    await harness.server.expiry.expire_due()
    assert harness.server.maps.is_tombstoned("o", str(stamp))
    assert harness.server.maps.ormap("o").values("k") == []


async def test_records_loaded_from_storage_are_scheduled(gated_start: Any) -> None:
    async with gated_start() as h:
        client = await h.login()
        await write(client, put("k", "v", ttl_ms=1000))
    async with gated_start() as h:
        assert len(h.server.expiry) == 1
        h.clock.advance(2000)
        assert await h.server.expiry.expire_due() == 1
        assert h.server.maps.lww("m").get_record("k").value is None


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, tuple[str, ...]]] = []

    @hookimpl
    def before_op(self, op: ClientOp, context: Any) -> None:
        self.seen.append((op.key, context.principal.user_id, tuple(context.principal.roles)))


async def test_expiry_writes_pass_through_the_interceptors(start: Any) -> None:
    recorder = Recorder()
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(recorder)
    async with start(pm=pm) as h:
        client = await h.login(sub="alice")
        await write(client, put("k", "v", ttl_ms=10))
        h.clock.advance(20)
        await h.server.expiry.expire_due()
    assert recorder.seen == [("k", "alice", ("ADMIN",)), ("k", "server-1", ("server",))]
