"""PROTOCOL.md §11 P-23..P-33 over real sockets: Merkle sync, writes, write concerns, events."""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec
import pytest

from topgun.crdt.hashing import fnv1a32, merkle_path
from topgun.crdt.hlc import HLC
from topgun.crdt.lww import LWWMap
from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import (
    ClientOp,
    ClientOpMessage,
    MerkleReqBucket,
    MerkleReqBucketPayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
    OpRejected,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    ServerBatchEvent,
    ServerEvent,
    SyncInit,
    SyncResetRequired,
    SyncRespBuckets,
    SyncRespLeaf,
    SyncRespRoot,
)
from topgun.server import Policy, StorageConfig

pytestmark = pytest.mark.anyio

NOW = int(time.time() * 1000)


def stamp(counter: int = 0, node: str = "client-a", millis: int = NOW) -> Timestamp:
    return Timestamp(millis, counter, node)


def lww(
    key: str, value: Any, ts: Timestamp, *, op_id: str | None = None, map_name: str = "todos"
) -> ClientOp:
    return ClientOp(map_name=map_name, key=key, id=op_id, record=LWWRecord(value, ts))


def batch(*ops: ClientOp, **options: Any) -> OpBatch:
    return OpBatch(payload=OpBatchPayload(ops=list(ops), **options))


async def subscribe(client: Any, map_name: str = "todos", query_id: str = "q") -> QueryResp:
    await client.send(QuerySub(payload=QuerySubPayload(query_id, map_name, Query())))
    return await client.expect(QueryResp)


async def rows(client: Any, map_name: str = "todos") -> dict[str, Any]:
    response = await subscribe(client, map_name, query_id=f"read-{time.monotonic_ns()}")
    return {row.key: row.value for row in response.payload.results}


async def ack_after_rejections(client: Any) -> tuple[OpAck, list[OpRejected]]:
    """The OP_ACK, then the OP_REJECTED of each failed op (urgent, so they follow it)."""
    ack = await client.expect(OpAck)
    failed = sum(1 for result in ack.payload.results if not result.success)
    return ack, [await client.expect(OpRejected) for _ in range(failed)]


async def test_p23_sync_init_of_an_unknown_map_has_root_0(live_server: Any) -> None:
    """P-23."""
    client = await live_server.client()
    await client.send(SyncInit(map_name="nothing-here"))
    root = await client.expect(SyncRespRoot)
    assert (root.payload.map_name, root.payload.root_hash) == ("nothing-here", 0)
    await client.aclose()


async def test_p24_p25_walking_the_trie_converges_tombstones_included(live_server: Any) -> None:
    """P-24: a non-empty leaf answers SYNC_RESP_LEAF with every record, tombstones too;
    other paths answer SYNC_RESP_BUCKETS. P-25: a client walking root → buckets → leaves
    ends with the server's records and root."""
    writer = await live_server.client()
    ops = [lww(f"key-{i}", {"n": i}, stamp(i), op_id=str(i)) for i in range(40)]
    ops.append(lww("key-0", None, stamp(100), op_id="tomb"))  # a tombstone
    await writer.send(batch(*ops))
    assert all(r.success for r in (await writer.expect(OpAck)).payload.results)

    reader = await live_server.client()
    await reader.send(SyncInit(map_name="todos", last_sync_timestamp=0))
    server_root = (await reader.expect(SyncRespRoot)).payload.root_hash
    local = LWWMap(HLC("reader", clock=lambda: NOW))
    pending = [""]
    while pending:
        path = pending.pop()
        await reader.send(MerkleReqBucket(payload=MerkleReqBucketPayload("todos", path)))
        reply = await reader.recv()
        if isinstance(reply, SyncRespLeaf):
            assert len(path) == 3
            for item in reply.payload.records:
                assert merkle_path(fnv1a32(item.key)) == path
                local.merge(item.key, item.record)
        else:
            assert isinstance(reply, SyncRespBuckets)
            assert len(path) < 3
            assert reply.payload.buckets
            pending.extend(
                path + digit
                for digit, hash_ in reply.payload.buckets.items()
                if hash_ != local.merkle.node_hash(path + digit)
            )
    assert local.merkle.root_hash == server_root != 0
    assert local.get_record("key-0") == LWWRecord(None, stamp(100))
    assert len(local.records()) == 40
    await reader.send(MerkleReqBucket(payload=MerkleReqBucketPayload("todos", "fff")))
    empty = await reader.recv()
    assert isinstance(empty, SyncRespBuckets | SyncRespLeaf)
    if isinstance(empty, SyncRespBuckets):
        assert empty.payload.buckets == {}
    for client in (writer, reader):
        await client.aclose()


async def test_p26_sync_older_than_gc_age_requires_a_reset_and_0_never_does(
    start_server: Any,
) -> None:
    """P-26."""
    async with start_server(gc_age_ms=60_000) as live:
        client = await live.client()
        await client.send(SyncInit(map_name="todos", last_sync_timestamp=NOW - 3_600_000))
        reset = await client.expect(SyncResetRequired)
        assert (reset.payload.map_name, reset.payload.reason) == ("todos", "GC_AGE")
        await client.send(SyncInit(map_name="todos", last_sync_timestamp=0))
        await client.expect(SyncRespRoot)
        await client.aclose()


async def test_p27_one_ack_per_batch_one_result_per_op_in_order(live_server: Any) -> None:
    """P-27: including an op without id (`#index`) and an invalid op in the middle."""
    client = await live_server.client()
    ops = [
        lww("a", 1, stamp(0), op_id="7"),
        lww("b", 2, stamp(1)),
        ClientOp(map_name="todos", key="c", id="8", op_type="OR_ADD"),  # no orRecord: invalid
        lww("d", 4, stamp(3), op_id="9"),
    ]
    await client.send(batch(*ops))
    ack, rejected = await ack_after_rejections(client)
    assert ack.payload.last_id == "9"
    results = ack.payload.results
    assert [r.op_id for r in results] == ["7", "#1", "8", "9"]
    assert [r.success for r in results] == [True, True, False, True]
    assert results[2].error is not None
    assert results[2].error.startswith("Invalid op")
    assert [(r.payload.op_id, r.payload.code) for r in rejected] == [("8", 400)]
    await client.aclose()


async def test_p28_a_write_without_permission_is_denied_and_not_applied(
    start_server: Any, wire: Any
) -> None:
    """P-28."""
    policies = (Policy("USER", "todos", ("READ",)),)
    async with start_server(policies=policies) as live:
        user = await live.client(wire.mint(sub="bob", roles=["USER"]))
        await user.send(batch(lww("x", 1, stamp(), op_id="1")))
        ack, rejected = await ack_after_rejections(user)
        assert [(r.success, r.error) for r in ack.payload.results] == [(False, "Access denied")]
        assert [(r.payload.op_id, r.payload.code) for r in rejected] == [("1", 403)]
        admin = await live.client()
        assert await rows(admin) == {}
        for client in (user, admin):
            await client.aclose()


class SlowStorage:
    """A storage wrapper whose writes, once `held`, wait until `release` is set: PERSISTED
    cannot be reached before it."""

    def __init__(self) -> None:
        self.held = False
        self.release = anyio.Event()
        self.stored_while_held = 0

    @hookimpl
    def register_storage_wrappers(self, register: Any) -> None:
        outer = self

        class Slow:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

            async def store_batch(self, changes: Any) -> None:
                if outer.held:
                    await outer.release.wait()
                    outer.stored_while_held += 1
                await self.inner.store_batch(changes)

        register("slow", lambda backend, config: Slow(backend))


async def test_p29_persisted_waits_for_storage_and_a_timeout_reports_the_level_reached(
    start_server: Any,
) -> None:
    """P-29: with storage held back, a PERSISTED op times out as success false with the
    highest level reached; a MEMORY op of the same batch succeeds; once storage
    proceeds, a PERSISTED op succeeds."""
    slow = SlowStorage()
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(slow, name="slow")
    storage = StorageConfig(backend="memory", wrappers=("slow",))
    async with start_server(pm=pm, storage=storage) as live:
        client = await live.client()
        slow.held = True
        try:
            await client.send(
                batch(
                    lww("p", 1, stamp(0), op_id="1"),
                    ClientOp(
                        map_name="todos",
                        key="m",
                        id="2",
                        record=LWWRecord(2, stamp(1)),
                        write_concern="MEMORY",
                    ),
                    write_concern="PERSISTED",
                    timeout=200,
                )
            )
            ack, rejected = await ack_after_rejections(client)
        finally:
            slow.release.set()  # else the server's shutdown would wait for storage forever
        first, second = ack.payload.results
        assert (first.success, first.achieved_level) == (False, "REPLICATED")
        assert first.error == "Timeout: achieved REPLICATED, requested PERSISTED"
        assert second.success is True
        levels = ["FIRE_AND_FORGET", "MEMORY", "APPLIED", "REPLICATED", "PERSISTED"]
        lowest = min((first.achieved_level, second.achieved_level), key=levels.index)
        assert ack.payload.achieved_level == lowest
        assert slow.stored_while_held == 0
        assert [r.payload.op_id for r in rejected] == ["1"]

        await client.send(batch(lww("q", 3, stamp(2), op_id="3"), write_concern="PERSISTED"))
        ack, _ = await ack_after_rejections(client)
        assert [(r.success, r.achieved_level) for r in ack.payload.results] == [(True, "PERSISTED")]
        assert slow.stored_while_held >= 1
        await client.aclose()


async def test_p30_a_replayed_batch_succeeds_and_makes_no_event(live_server: Any) -> None:
    """P-30: the watcher's next event after the replay is the later, new write."""
    watcher = await live_server.client()
    await subscribe(watcher)
    writer = await live_server.client()
    first = batch(lww("a", 1, stamp(0), op_id="1"), lww("b", 2, stamp(1), op_id="2"))
    await writer.send(first)
    await writer.expect(OpAck)
    assert isinstance(await watcher.recv(), ServerBatchEvent)  # then QUERY_UPDATEs a, b
    await writer.send(first)
    replay = await writer.expect(OpAck)
    assert [r.success for r in replay.payload.results] == [True, True]
    await writer.send(batch(lww("c", 3, stamp(2), op_id="3")))
    await writer.expect(OpAck)
    event = await watcher.expect_past_updates(ServerEvent)
    assert event.payload.key == "c"
    for client in (watcher, writer):
        await client.aclose()


async def test_p31_lww_applies_only_strictly_newer_timestamps(live_server: Any) -> None:
    """P-31: ties broken by counter, then node id; an equal timestamp is not applied."""
    client = await live_server.client()
    writes = [
        ("first", stamp(5, "node-b")),
        ("older counter", stamp(4, "node-z")),
        ("older node", stamp(5, "node-a")),
        ("equal", stamp(5, "node-b")),
        ("newer node", stamp(5, "node-c")),
        ("older millis", stamp(9, "node-z", millis=NOW - 1)),
    ]
    for i, (value, ts) in enumerate(writes):
        await client.send(ClientOpMessage(payload=lww("k", value, ts, op_id=str(i))))
        await client.expect(OpAck)
    assert await rows(client) == {"k": "newer node"}
    await client.aclose()


async def test_p32_or_add_of_a_tombstoned_tag_is_ignored_and_a_wrong_tag_rejected(
    live_server: Any,
) -> None:
    """P-32."""
    client = await live_server.client()
    ts = stamp(0)
    add = ClientOp(map_name="tags", key="k", id="1", or_record=ORMapRecord("v", ts, str(ts)))
    remove = ClientOp(map_name="tags", key="k", id="2", or_tag=str(ts))
    await client.send(batch(add, remove, msgspec.structs.replace(add, id="3")))
    ack, _ = await ack_after_rejections(client)
    assert [r.success for r in ack.payload.results] == [True, True, True]
    assert await rows(client, "tags") == {}

    ts2 = stamp(1)
    wrong = ClientOp(
        map_name="tags", key="k", id="4", or_record=ORMapRecord("w", ts2, str(stamp(2)))
    )
    await client.send(batch(wrong))
    ack, rejected = await ack_after_rejections(client)
    assert ack.payload.results[0].success is False
    assert [r.payload.code for r in rejected] == [400]
    assert await rows(client, "tags") == {}
    await client.aclose()


async def test_p33_events_reach_other_subscribers_only_with_their_types(
    start_server: Any, wire: Any
) -> None:
    """P-33: the writer and an unsubscribed client get nothing, a subscriber gets one
    SERVER_BATCH_EVENT per request (PUT and REMOVE) or one SERVER_EVENT, and OR-Map changes
    arrive as OR_ADD / OR_REMOVE."""
    async with start_server() as live:
        subscriber = await live.client()
        await subscribe(subscriber, "todos", "q1")
        await subscribe(subscriber, "tags", "q2")
        bystander = await live.client()
        writer = await live.client()
        await subscribe(writer, "todos", "mine")

        await writer.send(
            batch(lww("a", 1, stamp(0), op_id="1"), lww("b", None, stamp(1), op_id="2"))
        )
        await writer.expect_past_updates(OpAck)  # its own live query's QUERY_UPDATE first
        events = await subscriber.expect_past_updates(ServerBatchEvent)
        assert [(e.event_type, e.key) for e in events.payload.events] == [
            ("PUT", "a"),
            ("REMOVE", "b"),
        ]

        ts = stamp(2)
        await writer.send(
            batch(
                ClientOp(map_name="tags", key="t", id="3", or_record=ORMapRecord("x", ts, str(ts)))
            )
        )
        await writer.expect(OpAck)
        added = await subscriber.expect_past_updates(ServerEvent)
        assert (added.payload.event_type, added.payload.or_record.value) == ("OR_ADD", "x")
        await writer.send(batch(ClientOp(map_name="tags", key="t", id="4", or_tag=str(ts))))
        await writer.expect(OpAck)
        removed = await subscriber.expect_past_updates(ServerEvent)
        assert (removed.payload.event_type, removed.payload.or_tag) == ("OR_REMOVE", str(ts))

        # Neither the writer nor the bystander received anything: their next message is
        # the answer to a request made now.
        for client in (writer, bystander):
            await client.send(SyncInit(map_name="none"))
            await client.expect(SyncRespRoot)
        for client in (subscriber, bystander, writer):
            await client.aclose()
