"""Tombstone GC (topgun/server/gc.py): prune only tombstones older than the safe horizon,
from memory and storage, and tell every authenticated connection.

PROTOCOL.md checklist items covered here: P-43.
"""

from __future__ import annotations

from typing import Any

import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import (
    AuthRequired,
    ClientOp,
    GcPrune,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
)
from topgun.server import InMemoryClient

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000
DAY = 24 * 3600 * 1000
AGE = 30 * DAY  # the default gc_age_ms


async def write(client: InMemoryClient, *ops: ClientOp) -> None:
    await client.send(OpBatch(payload=OpBatchPayload(ops=list(ops))))
    await client.receive_until(OpAck)


def lww(key: str, value: Any, millis: int) -> ClientOp:
    return ClientOp(map_name="m", key=key, record=LWWRecord(value, Timestamp(millis, 0, "c")))


async def test_gc_prunes_only_tombstones_older_than_safe_and_tells_every_client_p43(
    gated_start: Any, gated: Any
) -> None:
    """P-43: an old tombstone goes (memory, storage, prune horizon); a younger tombstone and
    an old live value stay; GC_PRUNE{olderThan: safe} reaches every authenticated client
    and no unauthenticated one."""
    async with gated_start() as h:
        client = await h.login()
        other = await h.login()
        stranger = await h.connect()
        assert isinstance(await stranger.receive(), AuthRequired)
        await write(
            client,
            lww("old-dead", None, T - AGE - 10),
            lww("young-dead", None, T - AGE + 10),
            lww("old-live", 1, T - AGE - 10),
            lww("fresh", 1, T),  # the writer's newest record: its last activity is now
        )
        run = await h.server.gc.collect()
        safe = Timestamp(T - AGE, 0, "")
        assert (run.older_than, run.pruned, run.notified) == (safe, 1, 2)
        for receiver in (client, other):
            prune, _ = await receiver.receive_until(GcPrune)
            assert prune.payload.older_than == safe
        await stranger.send(Ping(timestamp=0))
        assert not isinstance(await stranger.receive(), GcPrune)
        records = h.server.maps.lww("m")
        assert records.get_record("old-dead") is None
        assert records.get_record("young-dead") is not None
        assert records.get("old-live") == 1
        assert h.server.maps.prune_horizon("m") == safe
    async with gated_start() as h:  # storage forgot it too
        records = h.server.maps.lww("m")
        assert sorted(k for k, _ in records.records()) == ["fresh", "old-live", "young-dead"]
        assert h.server.maps.prune_horizon("m") == safe


async def test_safe_horizon_waits_for_the_least_recently_active_client(harness: Any) -> None:
    idle = await harness.login()
    harness.clock.advance(10_000)
    busy = await harness.login()
    await busy.send(Ping(timestamp=0))
    await busy.receive_until(Pong)
    run = await harness.server.gc.collect()
    assert run.older_than == Timestamp(T - AGE, 0, "")  # the idle client's last frame
    await idle.send(Ping(timestamp=0))  # active again: the horizon moves on
    await idle.receive_until(Pong)
    run = await harness.server.gc.collect()
    assert run.older_than == Timestamp(T + 10_000 - AGE, 0, "")


async def test_gc_prunes_old_or_tombstone_tags(harness: Any) -> None:
    client = await harness.login()
    old = Timestamp(T - AGE - 10, 0, "c")
    young = Timestamp(T - AGE + 10, 0, "c")
    ops = [
        ClientOp(map_name="o", key="k", op_type="OR_ADD", or_record=ORMapRecord(1, s, str(s)))
        for s in (old, young)
    ] + [ClientOp(map_name="o", key="k", op_type="OR_REMOVE", or_tag=str(s)) for s in (old, young)]
    await write(client, *ops, lww("fresh", 1, T))  # the writer's last activity: now
    run = await harness.server.gc.collect()
    assert run.pruned == 1
    assert not harness.server.maps.is_tombstoned("o", str(old))
    assert harness.server.maps.is_tombstoned("o", str(young))


async def test_a_client_that_sent_older_records_holds_the_horizon_back(harness: Any) -> None:
    """Last activity is the newest record timestamp a client sent, when it sent any."""
    client = await harness.login()
    await write(client, lww("k", 1, T - 10 * DAY), lww("j", 1, T - 12 * DAY))
    run = await harness.server.gc.collect()
    assert run.older_than == Timestamp(T - 10 * DAY - AGE, 0, "")
