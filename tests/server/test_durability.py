"""No acknowledged write is lost across `topgun serve` restarts (SQLite, real processes).

- Graceful: SIGTERM after writes acknowledged at the default level (MEMORY) and at
  PERSISTED; the shutdown flushes storage, so after a restart every one is there with its
  timestamp.
- Crash: SIGKILL right after PERSISTED acknowledgements (P-29): every one is there.

Presence is checked by the Merkle root (every key with its exact timestamp) and the rows.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import anyio
import pytest

from topgun.crdt.hlc import HLC
from topgun.crdt.lww import LWWMap
from topgun.crdt.records import LWWRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    SyncInit,
    SyncRespRoot,
    WriteConcern,
)

pytestmark = pytest.mark.anyio

SECRET = "durability-secret-" + "d" * 32
KEYS_PER_BATCH = 100


async def write_batches(
    client: Any, expected: LWWMap, first: int, count: int, concern: WriteConcern | None
) -> None:
    """Write keys `first`..`first + count` in batches; each must be acknowledged."""
    base = int(time.time() * 1000)
    for start in range(first, first + count, KEYS_PER_BATCH):
        ops = []
        for i in range(start, min(start + KEYS_PER_BATCH, first + count)):
            record = LWWRecord({"n": i}, Timestamp(base, i, "writer"))
            ops.append(ClientOp(map_name="durable", key=f"k{i}", id=str(i), record=record))
            expected.merge(f"k{i}", record)
        await client.send(OpBatch(payload=OpBatchPayload(ops=ops, write_concern=concern)))
        ack = await client.expect(OpAck, timeout=30)
        assert all(result.success for result in ack.payload.results)


async def stored_state(port: int, wire: Any) -> tuple[int, int]:
    """The `durable` map's root hash and row count on a running server."""
    client = await wire.connect_raw(f"ws://127.0.0.1:{port}/")
    await client.authenticate(wire.mint(secret=SECRET))
    await client.send(SyncInit(map_name="durable"))
    root = (await client.expect(SyncRespRoot)).payload.root_hash
    await client.send(QuerySub(payload=QuerySubPayload("all", "durable", Query())))
    rows = len((await client.expect(QueryResp, timeout=30)).payload.results)
    await client.aclose()
    return root, rows


async def start(serve_process: Any) -> Any:
    process = serve_process(
        "--port", "0", "--data-dir", "data", env={"TOPGUN_AUTH_JWT_SECRET": SECRET}
    )
    await anyio.to_thread.run_sync(process.banner)
    return process


async def test_graceful_shutdown_loses_no_acknowledged_write(serve_process: Any, wire: Any) -> None:
    expected = LWWMap(HLC("check", clock=lambda: 0))
    first = await start(serve_process)
    client = await wire.connect_raw(f"ws://127.0.0.1:{first.port}/")
    await client.authenticate(wire.mint(secret=SECRET))
    await write_batches(client, expected, 0, 2000, None)
    await write_batches(client, expected, 2000, 500, "PERSISTED")
    first.signal(signal.SIGTERM)
    assert (await client.closed())[0] == 1001
    status, stderr = await anyio.to_thread.run_sync(first.finish)
    assert status == 0, stderr

    second = await start(serve_process)
    assert await stored_state(second.port, wire) == (expected.merkle.root_hash, 2500)


async def test_a_killed_server_keeps_every_persisted_acknowledgement(
    serve_process: Any, wire: Any
) -> None:
    """P-29 across a crash: PERSISTED is acknowledged only once the write is committed."""
    expected = LWWMap(HLC("check", clock=lambda: 0))
    first = await start(serve_process)
    client = await wire.connect_raw(f"ws://127.0.0.1:{first.port}/")
    await client.authenticate(wire.mint(secret=SECRET))
    await write_batches(client, expected, 0, 1000, "PERSISTED")
    first.signal(signal.SIGKILL)
    status, _ = await anyio.to_thread.run_sync(first.finish)
    assert status == -signal.SIGKILL

    second = await start(serve_process)
    assert await stored_state(second.port, wire) == (expected.merkle.root_hash, 1000)
