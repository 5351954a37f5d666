"""The map registry (topgun/server/maps.py): kinds, recordings, persistence, loading."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from topgun.crdt import HLC, LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import ClientOp, OpAck, OpBatch, OpBatchPayload
from topgun.server import StorageConfig
from topgun.server.maps import PRUNE_HORIZON_NAMESPACE, MapKindMismatch, MapRegistry
from topgun.storage import AddORRecord, MemoryBackend, PutMeta, PutRecord, RemoveORTag

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


def test_changes_outside_a_recording_are_refused(clock: Any) -> None:
    maps = MapRegistry(HLC("s", clock))
    with pytest.raises(RuntimeError, match="recording"):
        maps.merge_lww("m", "k", LWWRecord(1, Timestamp(T, 0, "c")))
    assert maps.kind("m") is None


def test_a_recording_turns_changes_into_storage_changes_and_events(clock: Any) -> None:
    maps = MapRegistry(HLC("s", clock))
    ts = Timestamp(T, 0, "c")
    with maps.recording() as recording:
        assert maps.merge_lww("m", "k", LWWRecord(1, ts))
        assert not maps.merge_lww("m", "k", LWWRecord(2, ts))  # not newer: nothing
        assert maps.add_or("o", "k", ORMapRecord("v", ts, str(ts)))
        assert maps.tombstone_or("o", str(ts), "k")
        assert maps.tombstone_or("o", "5:0:c", "other")  # no key held it
    assert [e.event_type for e in recording.events] == ["PUT", "OR_ADD", "OR_REMOVE", "OR_REMOVE"]
    assert recording.changes[-2:] == [
        RemoveORTag("o", str(ts), "k"),
        RemoveORTag("o", "5:0:c", None),
    ]
    assert recording.keys == {("m", "k"), ("o", "k"), ("o", "other")}
    with maps.recording(), pytest.raises(MapKindMismatch):
        maps.add_or("m", "k", ORMapRecord("v", ts, str(ts)))
    assert maps.names() == ["m", "o"]


async def test_load_restores_maps_the_clock_and_prune_horizons(clock: Any) -> None:
    backend = MemoryBackend()
    await backend.initialize()
    future = Timestamp(clock.now + 10_000_000, 3, "c")
    horizon = Timestamp(T - 5, 0, "")
    await backend.store_batch(
        [
            PutRecord("m", "k", LWWRecord(1, future)),
            AddORRecord("o", "k", ORMapRecord("v", Timestamp(T, 1, "c"), f"{T}:1:c")),
            RemoveORTag("o", f"{T}:2:c", "gone"),
            PutMeta(PRUNE_HORIZON_NAMESPACE, "m", msgspec.msgpack.encode(horizon)),
        ]
    )
    maps = MapRegistry(HLC("s", clock, strict=True, max_drift_ms=0))
    assert await maps.load(backend) == 2
    assert maps.lww("m").get_record("k") == LWWRecord(1, future)
    assert maps.ormap("o").values("k") == ["v"]
    assert maps.ormap("o").tombstones_of("gone") == [f"{T}:2:c"]
    assert maps.prune_horizon("m") == horizon
    assert maps.hlc.now() > future  # later stamps sort after everything stored
    await backend.close()


async def test_ten_thousand_persisted_keys_survive_a_restart_with_their_timestamps(
    start: Any,
) -> None:
    """Restart durability: 10,000 keys written with PERSISTED on SQLite, server stopped and
    started again: every key is there, with the same timestamp and TTL."""
    sqlite = StorageConfig(backend="sqlite")
    written: dict[str, LWWRecord] = {}
    async with start(storage=sqlite) as h:
        client = await h.login()
        for chunk in range(10):
            ops = []
            for i in range(chunk * 1000, (chunk + 1) * 1000):
                record = LWWRecord(
                    {"i": i},
                    Timestamp(T + i, i % 7, f"n{i % 3}"),
                    60_000.0 if i % 10 == 0 else None,
                )
                written[f"k{i}"] = record
                ops.append(ClientOp(map_name="big", key=f"k{i}", record=record))
            await client.send(OpBatch(payload=OpBatchPayload(ops=ops, write_concern="PERSISTED")))
            ack = await client.receive(timeout=30)
            assert isinstance(ack, OpAck)
            assert ack.payload.achieved_level == "PERSISTED"
        root = h.server.maps.lww("big").merkle.root_hash
    async with start(storage=sqlite) as h:
        lww = h.server.maps.lww("big")
        assert lww is not None
        assert dict(lww.records()) == written
        assert lww.merkle.root_hash == root
