"""Merkle sync (topgun/server/sync.py): LWW and OR-Map, resets, pushes and diffs.

PROTOCOL.md checklist items covered here: P-23, P-24, P-25, P-26.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from topgun.crdt import HLC, LWWMap, LWWRecord, ORMap, ORMapRecord, Timestamp, fnv1a32
from topgun.protocol import (
    ClientOp,
    Error,
    MerkleReqBucket,
    MerkleReqBucketPayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
    ORMapDiffRequest,
    ORMapDiffRequestPayload,
    ORMapDiffResponse,
    ORMapEntriesPayload,
    ORMapEntry,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    ORMapSyncRespBuckets,
    ORMapSyncRespLeaf,
    ORMapSyncRespRoot,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    ServerBatchEvent,
    SyncInit,
    SyncResetRequired,
    SyncRespBuckets,
    SyncRespLeaf,
    SyncRespRoot,
)
from topgun.server import InMemoryClient, Policy
from topgun.server.sync import reset_reason

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000
DAY = 24 * 3600 * 1000


def lww_ops(count: int, map_name: str = "m", millis: int = T) -> list[ClientOp]:
    return [
        ClientOp(
            map_name=map_name,
            key=f"k{i}",
            record=LWWRecord({"i": i} if i % 5 else None, Timestamp(millis, i, "c")),
        )
        for i in range(count)
    ]


async def write(client: InMemoryClient, ops: list[ClientOp]) -> None:
    await client.send(OpBatch(payload=OpBatchPayload(ops=ops)))
    ack = await client.receive()
    assert isinstance(ack, OpAck)
    assert all(r.success for r in ack.payload.results or [])


async def request_bucket(client: InMemoryClient, map_name: str, path: str) -> Any:
    await client.send(MerkleReqBucket(payload=MerkleReqBucketPayload(map_name=map_name, path=path)))
    return await client.receive()


async def test_sync_init_of_an_unknown_map_has_root_zero_and_creates_nothing_p23(
    harness: Any,
) -> None:
    """P-23: SYNC_INIT for an empty or unknown map yields SYNC_RESP_ROOT with rootHash 0."""
    client = await harness.login()
    await client.send(SyncInit(map_name="nothing", last_sync_timestamp=0))
    root = await client.receive()
    assert isinstance(root, SyncRespRoot)
    assert root.payload.root_hash == 0
    assert root.payload.timestamp.node_id == "server-1"
    assert harness.server.maps.kind("nothing") is None
    buckets = await request_bucket(client, "nothing", "")
    assert isinstance(buckets, SyncRespBuckets)
    assert buckets.payload.buckets == {}


async def test_a_non_empty_leaf_answers_with_every_record_tombstones_included_p24(
    harness: Any,
) -> None:
    """P-24: MERKLE_REQ_BUCKET on a non-empty depth-3 leaf → SYNC_RESP_LEAF with every
    record of it, tombstones included; any other path → SYNC_RESP_BUCKETS."""
    client = await harness.login()
    await write(client, lww_ops(40))
    lww = harness.server.maps.lww("m")
    path = next(
        p
        for p in _leaf_paths(lww)
        if any(lww.get_record(k).value is None for k in lww.merkle.keys_at(p))
    )
    leaf = await request_bucket(client, "m", path)
    assert isinstance(leaf, SyncRespLeaf)
    assert {r.key for r in leaf.payload.records} == set(lww.merkle.keys_at(path))
    assert any(r.record.value is None for r in leaf.payload.records)
    for inner in ("", path[:1], path[:2]):
        answer = await request_bucket(client, "m", inner)
        assert isinstance(answer, SyncRespBuckets)
        assert answer.payload.buckets == lww.merkle.buckets(inner)
    empty_leaf = next(p for p in (f"{i:03x}" for i in range(4096)) if not lww.merkle.keys_at(p))
    assert isinstance(await request_bucket(client, "m", empty_leaf), SyncRespBuckets)


def _leaf_paths(lww: LWWMap) -> list[str]:
    return sorted({p for p in (f"{i:03x}" for i in range(4096)) if lww.merkle.keys_at(p)})


async def test_a_client_walking_the_trie_converges_to_the_servers_state_p25(
    harness: Any, clock: Any
) -> None:
    """P-25: a client whose map differs converges by walking root → buckets → leaves."""
    writer = await harness.login()
    await write(writer, lww_ops(60))
    replica = LWWMap(HLC("replica", clock))
    replica.merge("k3", LWWRecord("stale", Timestamp(T - 1, 0, "old")))
    client = await harness.login()
    await client.send(SyncInit(map_name="m", last_sync_timestamp=0))
    root = await client.receive()
    assert root.payload.root_hash != replica.merkle.root_hash
    pending = [""]
    while pending:
        path = pending.pop()
        answer = await request_bucket(client, "m", path)
        if isinstance(answer, SyncRespLeaf):
            replica.merge_many([(r.key, r.record) for r in answer.payload.records])
            continue
        for digit, remote in answer.payload.buckets.items():
            if replica.merkle.node_hash(path + digit) != remote:
                pending.append(path + digit)
    assert replica.merkle.root_hash == harness.server.maps.lww("m").merkle.root_hash
    assert replica.get("k3") == {"i": 3}


async def test_sync_reset_required_for_old_last_sync_but_never_for_zero_p26(
    harness: Any, clock: Any
) -> None:
    """P-26: `lastSyncTimestamp` older than gcAgeMs (30 days) → SYNC_RESET_REQUIRED GC_AGE;
    0 never resets."""
    client = await harness.login()
    await client.send(SyncInit(map_name="m", last_sync_timestamp=clock.now - 31 * DAY))
    reset = await client.receive()
    assert isinstance(reset, SyncResetRequired)
    assert (reset.payload.map_name, reset.payload.reason) == ("m", "GC_AGE")
    await client.send(SyncInit(map_name="m", last_sync_timestamp=0))
    assert isinstance(await client.receive(), SyncRespRoot)
    await client.send(SyncInit(map_name="m", last_sync_timestamp=clock.now - 29 * DAY))
    assert isinstance(await client.receive(), SyncRespRoot)
    await client.send(
        ORMapSyncInit(
            map_name="o", root_hash=0, bucket_hashes={}, last_sync_timestamp=clock.now - 31 * DAY
        )
    )
    assert isinstance(await client.receive(), SyncResetRequired)


def test_reset_reason_follows_gc_age_then_the_prune_horizon() -> None:
    now = 100 * DAY
    assert reset_reason(0, now, 30 * DAY, None) is None
    assert reset_reason(None, now, 30 * DAY, None) is None
    assert reset_reason(now - 30 * DAY, now, 30 * DAY, None) is None
    assert reset_reason(now - 30 * DAY - 1, now, 30 * DAY, None) == "GC_AGE"
    assert reset_reason(now - DAY, now, 30 * DAY, now - DAY + 1) == "PRUNED"
    assert reset_reason(now - DAY, now, 30 * DAY, now - DAY) is None


async def test_a_pruned_map_requires_a_reset_from_before_its_prune_horizon(
    harness: Any, clock: Any
) -> None:
    """PRUNED: the horizon comes from the storage meta area (written by GC)."""
    harness.server.maps._prune_horizons["m"] = Timestamp(clock.now - DAY, 0, "")
    client = await harness.login()
    await client.send(SyncInit(map_name="m", last_sync_timestamp=clock.now - 2 * DAY))
    reset = await client.receive()
    assert isinstance(reset, SyncResetRequired)
    assert reset.payload.reason == "PRUNED"


def or_record(value: Any, counter: int, node: str = "c") -> ORMapRecord:
    ts = Timestamp(T, counter, node)
    return ORMapRecord(value, ts, str(ts))


async def test_sync_init_naming_an_or_map_is_answered_as_ormap_sync_init(harness: Any) -> None:
    """§6.7: TS clients send SYNC_INIT for OR-Maps after a reset."""
    client = await harness.login()
    await write(client, [ClientOp(map_name="o", key="k", or_record=or_record("v", 1))])
    await client.send(SyncInit(map_name="o", last_sync_timestamp=0))
    root = await client.receive()
    assert isinstance(root, ORMapSyncRespRoot)
    assert root.payload.root_hash == harness.server.maps.ormap("o").merkle.root_hash != 0


async def test_or_map_leaves_carry_records_and_the_keys_own_tombstones(harness: Any) -> None:
    client = await harness.login()
    live, dead_tag = or_record("v", 1), or_record("gone", 2)
    await write(
        client,
        [
            ClientOp(map_name="o", key="k", or_record=live),
            ClientOp(map_name="o", key="k", or_record=dead_tag),
            ClientOp(map_name="o", key="k", or_tag=dead_tag.tag),
            ClientOp(map_name="o", key="dead", or_record=or_record("x", 3)),
            ClientOp(map_name="o", key="dead", or_tag=or_record("x", 3).tag),
        ],
    )
    ormap = harness.server.maps.ormap("o")
    for key, records, tombstones in (
        ("k", [live], [dead_tag.tag]),
        ("dead", [], [or_record("x", 3).tag]),
    ):
        path = f"{_fnv_path(key)}"
        await client.send(
            ORMapMerkleReqBucket(payload=MerkleReqBucketPayload(map_name="o", path=path))
        )
        leaf = await client.receive()
        assert isinstance(leaf, ORMapSyncRespLeaf)
        entry = next(e for e in leaf.payload.entries if e.key == key)
        assert entry.records == records
        assert entry.tombstones == tombstones
    await client.send(ORMapMerkleReqBucket(payload=MerkleReqBucketPayload(map_name="o", path="")))
    buckets = await client.receive()
    assert isinstance(buckets, ORMapSyncRespBuckets)
    assert buckets.payload.buckets == ormap.merkle.buckets("")


def _fnv_path(key: str) -> str:
    return f"{fnv1a32(key):08x}"[:3]


async def test_push_diff_merges_through_the_pipeline_with_events_and_stale_replies(
    harness: Any,
) -> None:
    """§6.4: pushed records and tombstones are merged (events OR_ADD / OR_REMOVE to other
    subscribers); a pushed record whose tag was tombstoned here gets ORMAP_DIFF_RESPONSE."""
    pusher = await harness.login()
    watcher = await harness.login()
    await watcher.send(QuerySub(payload=QuerySubPayload(query_id="q", map_name="o", query=Query())))
    assert isinstance(await watcher.receive(), QueryResp)
    old, stale, fresh = or_record("old", 1), or_record("stale", 2), or_record("new", 3)
    await write(
        pusher,
        [
            ClientOp(map_name="o", key="k", or_record=old),
            ClientOp(map_name="o", key="s", or_record=stale),
            ClientOp(map_name="o", key="s", or_tag=stale.tag),
        ],
    )
    await watcher.receive()  # the events of that batch
    everything = [old.tag, stale.tag]  # TS clients push their whole tombstone set
    await pusher.send(
        ORMapPushDiff(
            payload=ORMapEntriesPayload(
                map_name="o",
                entries=[
                    ORMapEntry(key="k", records=[fresh], tombstones=everything),
                    ORMapEntry(key="s", records=[stale], tombstones=everything),
                ],
            )
        )
    )
    reply = await pusher.receive()
    assert isinstance(reply, ORMapDiffResponse)
    assert [(e.key, e.records, e.tombstones) for e in reply.payload.entries] == [
        ("s", [], [stale.tag])
    ]
    events, _ = await watcher.receive_until(ServerBatchEvent)  # past the QUERY_UPDATE of k
    assert [(e.event_type, e.key) for e in events.payload.events] == [
        ("OR_REMOVE", "k"),
        ("OR_ADD", "k"),
    ]
    assert harness.server.maps.ormap("o").values("k") == ["new"]


async def test_push_diff_needs_put_and_remove_only_for_live_records(start: Any) -> None:
    policies = (
        Policy(role="W", map_name_pattern="o", actions=("PUT", "READ")),
        Policy(role="R", map_name_pattern="o", actions=("READ",)),
    )
    async with start(policies=policies) as h:
        admin = await h.login()
        live = or_record("live", 1)
        await write(admin, [ClientOp(map_name="o", key="k", or_record=live)])
        reader = await h.login(roles=["R"])
        push = ORMapPushDiff(
            payload=ORMapEntriesPayload(
                map_name="o",
                entries=[
                    ORMapEntry(key="k", records=[or_record("x", 2)], tombstones=[live.tag, "5:0:c"])
                ],
            )
        )
        await reader.send(push)
        denied = await reader.receive()
        assert isinstance(denied, Error)
        assert denied.payload.code == 403
        assert h.server.maps.ormap("o").values("k") == ["live"]
        writer = await h.login(roles=["W"])
        await writer.send(push)
        await writer.send(
            ORMapDiffRequest(payload=ORMapDiffRequestPayload(map_name="o", keys=["k"]))
        )
        diff = await writer.receive()
        assert isinstance(diff, ORMapDiffResponse)
        ormap = h.server.maps.ormap("o")
        assert ormap.values("k") == ["live", "x"]  # the live tag's removal needed REMOVE
        assert ormap.is_tombstoned("5:0:c")  # an unknown tag's removal needed only PUT


async def test_diff_request_answers_one_entry_per_key(harness: Any) -> None:
    client = await harness.login()
    record = or_record("v", 1)
    await write(client, [ClientOp(map_name="o", key="k", or_record=record)])
    await client.send(
        ORMapDiffRequest(payload=ORMapDiffRequestPayload(map_name="o", keys=["k", "none"]))
    )
    reply = await client.receive()
    assert isinstance(reply, ORMapDiffResponse)
    assert [(e.key, e.records, e.tombstones) for e in reply.payload.entries] == [
        ("k", [record], []),
        ("none", [], []),
    ]


async def test_kind_mismatch_denial_and_bad_paths_are_errors(start: Any) -> None:
    policies = (Policy(role="USER", map_name_pattern="mine", actions=("READ",)),)
    async with start(policies=policies) as h:
        admin = await h.login()
        await write(admin, lww_ops(3, "lww"))
        await write(admin, [ClientOp(map_name="o", key="k", or_record=or_record("v", 1))])
        cases: list[tuple[Any, int, str]] = [
            (
                ORMapSyncInit(map_name="lww", root_hash=0, bucket_hashes={}),
                400,
                "Map type mismatch",
            ),
            (
                MerkleReqBucket(payload=MerkleReqBucketPayload(map_name="o", path="")),
                400,
                "Map type mismatch",
            ),
            (
                ORMapMerkleReqBucket(payload=MerkleReqBucketPayload(map_name="lww", path="")),
                400,
                "Map type mismatch",
            ),
            (
                {"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "lww", "path": "abcd"}},
                400,
                "Invalid message format",
            ),
            (
                {"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "lww", "path": "AB"}},
                400,
                "Invalid message format",
            ),
        ]
        for message, code, text in cases:
            await admin.send(message)
            error = await admin.receive()
            assert isinstance(error, Error), message
            assert (error.payload.code, error.payload.message) == (code, text)
        user = await h.login(roles=["USER"])
        await user.send(SyncInit(map_name="lww"))
        denied = await user.receive()
        assert isinstance(denied, Error)
        assert (denied.payload.code, denied.payload.message) == (403, "Access denied for lww")


async def test_leaves_are_field_filtered_but_hash_as_the_servers(start: Any) -> None:
    policies = (
        Policy(role="USER", map_name_pattern="m", actions=("READ",), allowed_fields=("name",)),
    )
    async with start(policies=policies) as h:
        admin = await h.login()
        record = LWWRecord({"name": "n", "secret": "s"}, Timestamp(T, 0, "c"))
        await write(admin, [ClientOp(map_name="m", key="k", record=record)])
        user = await h.login(roles=["USER"])
        leaf = await request_bucket(user, "m", _fnv_path("k"))
        assert isinstance(leaf, SyncRespLeaf)
        assert leaf.payload.records[0].record.value == {"name": "n"}
        assert leaf.payload.records[0].record.timestamp == record.timestamp


def test_or_map_restore_keeps_leaf_answers_after_a_restart(clock: Any) -> None:
    """What an ORMAP leaf sends after a restart equals what it sent before (see
    `ORMap.restore`)."""
    before = ORMap(HLC("s", clock))
    record = or_record("v", 1)
    before.apply("k", record)
    before.apply_tombstone(record.tag)
    after = ORMap(HLC("s", clock))
    after.restore({}, {record.tag: "k"})
    assert msgspec.to_builtins(after.tombstones_of("k")) == before.tombstones_of("k")
    assert after.merkle.keys_at(_fnv_path("k")) == ["k"]
