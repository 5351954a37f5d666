"""The HLC high-water mark (`topgun.server.clockmark`): server readings keep increasing
across a restart, even when the wall clock went back meanwhile."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.protocol import ClientOp, OpAck, OpBatch, OpBatchPayload
from topgun.server import StorageConfig
from topgun.server import clockmark as clockmark_module
from topgun.server.clockmark import HLC_NAMESPACE, ClockMark
from topgun.storage import MemoryBackend, PutMeta

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000
HOUR = 3_600_000


async def test_readings_keep_increasing_across_a_restart_when_the_clock_went_back(
    start: Any, clock: Any
) -> None:
    """The last records hold older timestamps than the server's last readings (events, sync
    roots): restored from the records alone, the clock would issue readings that sort before
    ones clients already hold."""
    sqlite = StorageConfig(backend="sqlite")
    clock.now = T
    async with start(storage=sqlite) as h:
        client = await h.login()
        record = LWWRecord("v", Timestamp(T - HOUR, 0, "client-1"))
        await client.send(OpBatch(payload=OpBatchPayload(ops=[ClientOp("m", "k", record=record)])))
        assert isinstance(await client.receive(), OpAck)
        for _ in range(5):
            h.server.hlc.now()
        before = h.server.hlc.last
    clock.now = T - 2 * HOUR  # the host's clock was stepped back while the server was down
    async with start(storage=sqlite) as h:
        after = h.server.hlc.now()
    assert (after.millis, after.counter) > (before.millis, before.counter)


async def test_the_mark_is_saved_while_the_server_runs_and_only_when_it_moved(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clockmark_module, "SAVE_INTERVAL_S", 0.02)
    async with start() as h:
        backend = h.server.backend
        writer = h.server.storage_writer
        assert backend is not None
        assert writer is not None
        reading = h.server.hlc.now()
        with anyio.fail_after(10):
            while (await backend.load_meta(HLC_NAMESPACE)).get("last") != str(reading).encode():
                await anyio.sleep(0.02)
        assert not await h.server.clock_mark.save(writer.submit)  # unchanged: nothing written


async def test_a_clock_never_read_saves_nothing() -> None:
    submitted: list[object] = []

    async def submit(changes: Any) -> Any:
        submitted.append(changes)

    hlc = HLC("node-new", lambda: T)
    mark = ClockMark(hlc)
    assert not await mark.save(submit)
    hlc.now()
    assert await mark.save(submit)
    assert not await mark.save(submit)
    assert submitted == [[PutMeta(HLC_NAMESPACE, "last", f"{T}:0:node-new".encode())]]


async def test_a_stored_mark_advances_the_clock_on_load() -> None:
    backend = MemoryBackend()
    await backend.initialize()
    await backend.store_batch([PutMeta(HLC_NAMESPACE, "last", b"1800000000000:41:node-old")])
    hlc = HLC("node-new", lambda: T - HOUR)
    mark = ClockMark(hlc)
    assert await mark.load(backend) == Timestamp(T, 41, "node-old")
    assert hlc.now() == Timestamp(T, 42, "node-new")


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"not a timestamp", b"-5:0:node"])
async def test_an_unreadable_mark_is_ignored_with_a_warning(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    backend = MemoryBackend()
    await backend.initialize()
    await backend.store_batch([PutMeta(HLC_NAMESPACE, "last", raw)])
    hlc = HLC("node-new", lambda: T)
    with caplog.at_level(logging.WARNING, logger="topgun.server.clockmark"):
        assert await ClockMark(hlc).load(backend) is None
    assert "ignoring the stored HLC high-water mark" in caplog.text
    assert hlc.now() == Timestamp(T, 0, "node-new")
