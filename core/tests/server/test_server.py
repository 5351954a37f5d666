"""`Server` (topgun/server/server.py): start, readiness, lifecycle hooks, graceful shutdown.

PROTOCOL.md checklist item covered here: P-60 (SHUTDOWN_PENDING before 1001).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import generate_latest

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import (
    AuthRequired,
    ClientOp,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    ShutdownPending,
)
from topgun.server import InMemoryClient, Server, ServerConfig, StorageConfig

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


class _Lifecycle:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    @hookimpl
    def on_startup(self, server: Any) -> None:
        self.calls.append(("startup", server.ready))

    @hookimpl
    async def on_shutdown(self, server: Any) -> None:
        await anyio.to_thread.run_sync(lambda: None)  # a plugin may await while it flushes
        self.calls.append(("shutdown", bool(server.sessions)))


async def test_ready_only_between_start_and_shutdown_with_lifecycle_hooks(
    tmp_path: Path, clock: Any
) -> None:
    """on_startup runs before connections are accepted; on_shutdown after they closed."""
    plugin = _Lifecycle()
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(plugin)
    config = ServerConfig(data_dir=tmp_path, storage=StorageConfig(backend="memory"))
    server = Server(config, pm=pm, clock=clock)
    assert not server.ready
    async with server:
        assert server.ready
    assert not server.ready
    assert plugin.calls == [("startup", False), ("shutdown", False)]
    with pytest.raises(RuntimeError, match="only once"):
        await server.__aenter__()


async def test_connections_before_ready_or_after_shutdown_are_refused(
    tmp_path: Path, clock: Any
) -> None:
    config = ServerConfig(data_dir=tmp_path, storage=StorageConfig(backend="memory"))
    server = Server(config, clock=clock, pm=make_plugin_manager(entry_points=(), environ={}))
    early = InMemoryClient()
    await early.serve(server)
    assert await early.closed() == (1013, "Server not ready")
    async with server:
        pass
    late = InMemoryClient()
    await late.serve(server)
    assert isinstance(await late.receive(), ShutdownPending)
    assert await late.closed() == (1001, "Server shutting down")
    for client in (early, late):
        await client.disconnect()


async def test_shutdown_pending_precedes_close_1001_p60(start: Any) -> None:
    """P-60: SHUTDOWN_PENDING{retryAfter} goes to every connection before close 1001."""
    async with start() as h:
        authed = await h.login()
        waiting = await h.connect()
        assert isinstance(await waiting.receive(), AuthRequired)
        await h.server.shutdown()
        await h.server.shutdown()  # idempotent
        for client in (authed, waiting):
            pending = await client.receive()
            assert isinstance(pending, ShutdownPending)
            assert pending.retry_after == 5000
            assert await client.closed() == (1001, "Server shutting down")
        assert not h.server.sessions


async def test_graceful_shutdown_loses_no_acknowledged_write(
    gated_start: Any, gated: Any, start: Any
) -> None:
    """Writes acknowledged before a shutdown (MEMORY and PERSISTED) are all on disk after
    it, and a PERSISTED write still waiting for its commit is acknowledged before 1001."""
    async with gated_start() as h:
        client = await h.login()
        ops = [
            ClientOp(map_name="m", key=f"k{i}", record=LWWRecord(i, Timestamp(T, i, "c")))
            for i in range(100)
        ]
        await client.send(OpBatch(payload=OpBatchPayload(ops=ops[:50])))
        assert isinstance(await client.receive(), OpAck)
        gated.hold()
        await client.send(OpBatch(payload=OpBatchPayload(ops=ops[50:], write_concern="PERSISTED")))
        await client.send(Ping(timestamp=0))
        assert isinstance(await client.receive(), Pong)

        async def stop() -> None:
            await h.server.shutdown()

        h.task_group.start_soon(stop)
        assert isinstance(await client.receive(), ShutdownPending)
        gated.release()
        ack = await client.receive()
        assert isinstance(ack, OpAck)
        assert ack.payload.achieved_level == "PERSISTED"
        assert (await client.closed())[0] == 1001
    stored = gated.store.lww["m"]
    assert sorted(stored) == sorted(op.key for op in ops)


async def test_metrics_count_connections_messages_and_storage(start: Any) -> None:
    async with start() as h:
        client = await h.login()
        await client.send(
            OpBatch(
                payload=OpBatchPayload(
                    ops=[
                        ClientOp(map_name="m", key="k", record=LWWRecord(1, Timestamp(T, 0, "c")))
                    ],
                    write_concern="PERSISTED",
                )
            )
        )
        assert isinstance(await client.receive(), OpAck)
        text = generate_latest(h.server.metrics.registry).decode()
    assert "topgun_connections 1.0" in text
    assert 'topgun_messages_in_total{type="OP_BATCH"} 1.0' in text
    assert 'topgun_messages_out_total{type="OP_ACK"} 1.0' in text
    assert 'topgun_op_latency_seconds_count{kind="OP_BATCH"} 1.0' in text
    assert "topgun_storage_queue_depth 0.0" in text
    assert "topgun_storage_last_flush_seconds" in text


async def test_a_session_stuck_past_the_grace_period_is_cancelled(start: Any) -> None:
    async with start() as h:
        h.server.shutdown_grace_seconds = 0.01
        client = await h.login()
        session = next(iter(h.server.sessions))
        never = anyio.Event()  # an acknowledgement that never settles
        await session.acknowledge(never.wait, lambda _: None, waits=True)
        with anyio.fail_after(5):
            await h.server.shutdown()
        assert not h.server.sessions
        assert isinstance(await client.receive(), ShutdownPending)


async def test_a_failing_session_closes_1011_and_the_server_keeps_serving(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start() as h:
        client = await h.login()
        session = next(iter(h.server.sessions))

        async def explode(frame: Any) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(session, "_on_frame", explode)
        await client.send(Ping(timestamp=0))
        assert await client.closed() == (1011, "Internal error")
        other = await h.login()
        await other.send(Ping(timestamp=0))
        assert isinstance(await other.receive(), Pong)


async def test_the_storage_writer_takes_its_limits_from_the_configuration(start: Any) -> None:
    async with start(storage=StorageConfig(backend="memory", max_batch=3, max_queued=7)) as h:
        writer = h.server.storage_writer
        assert (writer.max_batch, writer.max_queued) == (3, 7)
        client = await h.login()
        ops = [
            ClientOp(map_name="m", key=f"k{i}", record=LWWRecord(i, Timestamp(T, i, "c")))
            for i in range(20)
        ]
        await client.send(OpBatch(payload=OpBatchPayload(ops=ops, write_concern="PERSISTED")))
        ack = await client.receive()
        assert isinstance(ack, OpAck)
        assert ack.payload.achieved_level == "PERSISTED"
