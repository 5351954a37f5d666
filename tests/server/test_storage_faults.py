"""Fault injection: storage failing under a running server.

PostgreSQL unreachable for 5 s in the middle of a stream of PERSISTED
writes, for a server on PostgreSQL and one on write-behind over PostgreSQL.

Both reach PostgreSQL through a TCP proxy that, during the outage, cuts every open
connection and closes each new one at once. While it lasts: no PERSISTED write is
acknowledged, `/ready` answers 503 naming the storage problem and `/metrics` shows
`topgun_storage_available 0`. Afterwards both servers recover by themselves (acks
resume, `/ready` is 200), and every acknowledged write is in the database. Then the same
for write-behind over a backend that raises (no PostgreSQL needed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import SocketStream

import topgun_postgres.plugin
from topgun.crdt.records import LWWRecord, Timestamp
from topgun.hooks import hookimpl
from topgun.protocol import ClientOp, OpAck, OpBatch, OpBatchPayload
from topgun.server import StorageConfig
from topgun.storage import LWWSnapshot, MemoryBackend, WriteBehind, WriteBehindConfig
from topgun_postgres import PostgresBackend, PostgresConfig

from .conftest import plugin_manager

pytestmark = pytest.mark.anyio

OUTAGE_SECONDS = 5.0
MAP = "faulty"


class Proxy:
    """A TCP proxy to `target` that can refuse service (`down`)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.down = False
        self.port = 0
        self.refused = 0
        self._open: set[SocketStream] = set()

    async def serve(self, *, task_status: Any) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        if self.down:
            self.refused += 1
            await client.aclose()
            return
        try:
            upstream = await anyio.connect_tcp(*self.target)
        except OSError:
            await client.aclose()
            return
        self._open |= {client, upstream}
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(self._pipe, upstream, client, tg.cancel_scope)
        finally:
            self._open -= {client, upstream}
            await client.aclose()
            await upstream.aclose()

    @staticmethod
    async def _pipe(source: SocketStream, sink: SocketStream, scope: anyio.CancelScope) -> None:
        try:
            async for data in source:
                await sink.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    async def cut(self) -> None:
        """Start refusing, and drop every open connection."""
        self.down = True
        for stream in list(self._open):
            await stream.aclose()


class Writer:
    """Streams PERSISTED batches to one server, recording what was acknowledged."""

    def __init__(self, live: Any, name: str) -> None:
        self.live = live
        self.name = name
        self.acknowledged: dict[str, LWWRecord] = {}
        self.acks = 0
        self.stop = False

    async def run(self) -> None:
        client = await self.live.client()
        n = 0
        while not self.stop:
            ops, records = [], {}
            for _ in range(10):
                n += 1
                record = LWWRecord({"n": n}, Timestamp(int(time.time() * 1000), n, "w"))
                records[f"k{n}"] = record
                ops.append(ClientOp(map_name=MAP, key=f"k{n}", id=str(n), record=record))
            await client.send(
                OpBatch(payload=OpBatchPayload(ops=ops, write_concern="PERSISTED", timeout=60_000))
            )
            ack = await client.expect(OpAck, timeout=60)
            assert all(result.success for result in ack.payload.results), ack
            self.acknowledged.update(records)
            self.acks += 1
        await client.aclose()


async def until(condition: Callable[[], Any], what: str, deadline: float = 30.0) -> None:
    """Poll `condition()` (sync or async) until true, failing after `deadline` seconds."""
    with anyio.fail_after(deadline):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover - fail_after raises first


async def storage_state(live: Any) -> tuple[int, dict[str, Any], bytes]:
    status, _, body = await live.get("/ready")
    _, _, metrics = await live.get("/metrics")
    return status, json.loads(body), metrics


async def test_a_5_second_postgres_outage_loses_nothing_and_recovers(
    pg_scratch: Any, start_server: Any
) -> None:
    direct = [pg_scratch("faults"), pg_scratch("faults_wb")]
    proxy = Proxy(("127.0.0.1", 5432))
    pm = plugin_manager()
    pm.register(topgun_postgres.plugin, name="postgres")
    async with anyio.create_task_group() as tg, AsyncExitStack() as stack:
        await tg.start(proxy.serve)
        servers = []
        for config, wrappers in zip(direct, [(), ("write-behind",)], strict=True):
            proxied = msgspec.structs.replace(
                config, dsn=f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
            )
            servers.append(
                await stack.enter_async_context(
                    start_server(
                        pm=pm,
                        storage=StorageConfig(backend="postgres", wrappers=wrappers),
                        sections={"postgres": proxied},
                    )
                )
            )
        writers = [Writer(live, name) for live, name in zip(servers, ["pg", "wb"], strict=True)]
        async with anyio.create_task_group() as writing:
            for writer in writers:
                writing.start_soon(writer.run)
            await until(lambda: all(w.acks >= 3 for w in writers), "first acks")

            await proxy.cut()
            cut_at = time.monotonic()
            for live in servers:

                async def unavailable(live: Any = live) -> bool:
                    status, body, metrics = await storage_state(live)
                    return (
                        status == 503
                        and "PostgreSQL" in body.get("storage", "")
                        and b"topgun_storage_available 0.0" in metrics
                    )

                await until(unavailable, "the outage shows in /ready and /metrics")
            acks_seen = [w.acks for w in writers]
            await anyio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
            assert [w.acks for w in writers] == acks_seen, "a PERSISTED ack during the outage"
            assert proxy.refused > 0
            proxy.down = False

            for live in servers:

                async def available(live: Any = live) -> bool:
                    status, _, metrics = await storage_state(live)
                    return status == 200 and b"topgun_storage_available 1.0" in metrics

                await until(available, "recovered in /ready and /metrics")
            await until(
                lambda: all(w.acks >= seen + 3 for w, seen in zip(writers, acks_seen, strict=True)),
                "acks after the outage",
            )
            for writer in writers:
                writer.stop = True
        await stack.aclose()  # graceful shutdown: write-behind drains
        tg.cancel_scope.cancel()

    for config, writer in zip(direct, writers, strict=True):
        backend = PostgresBackend(config)
        await backend.initialize()
        snapshot = await backend.load_map(MAP)
        await backend.close()
        assert isinstance(snapshot, LWWSnapshot)
        lost = [k for k, r in writer.acknowledged.items() if snapshot.records.get(k) != r]
        assert not lost, f"{writer.name}: {len(lost)} acknowledged write(s) lost"


def test_postgres_config_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="schema 'Bad-Name'"):
        PostgresConfig(schema="Bad-Name")
    with pytest.raises(ValueError, match="min_connections"):
        PostgresConfig(min_connections=5, max_connections=2)


class FailingMemory(MemoryBackend):
    """The memory backend, raising from `store_batch` while `failing` is set."""

    failing = False

    async def store_batch(self, changes: Any) -> None:
        if FailingMemory.failing:
            raise ConnectionError("backend down (injected)")
        await super().store_batch(changes)


class FailingStoragePlugin:
    @hookimpl
    def register_storage(self, register: Any) -> None:
        register("failing-memory", lambda config: FailingMemory(codecs=config.codecs))


async def test_write_behind_over_a_raising_backend_waits_reports_and_recovers(
    start_server: Any,
) -> None:
    """The wrapper's backend raises for a while: PERSISTED acks wait (MEMORY ones do not),
    `/ready` and `/metrics` show it, and the staged writes land once it works again."""
    pm = plugin_manager()
    pm.register(FailingStoragePlugin(), name="failing-storage")
    fast = WriteBehindConfig(flush_interval_ms=5, retry_min_ms=5, retry_max_ms=50)
    async with start_server(
        pm=pm,
        storage=StorageConfig(backend="failing-memory", wrappers=("write-behind",)),
        sections={"write_behind": fast},
    ) as live:
        client = await live.client()
        FailingMemory.failing = True
        try:

            def batch(first: int, concern: str) -> OpBatch:
                ops = [
                    ClientOp(
                        map_name=MAP,
                        key=f"k{i}",
                        id=str(i),
                        record=LWWRecord(i, Timestamp(int(time.time() * 1000), i, "w")),
                    )
                    for i in range(first, first + 5)
                ]
                return OpBatch(
                    payload=OpBatchPayload(ops=ops, write_concern=concern, timeout=60_000)
                )

            await client.send(batch(0, "MEMORY"))
            assert (await client.expect(OpAck)).payload.achieved_level == "MEMORY"
            await client.send(batch(5, "PERSISTED"))

            async def reported() -> bool:
                status, body, metrics = await storage_state(live)
                return (
                    status == 503
                    and "backend down (injected)" in body.get("storage", "")
                    and b"topgun_storage_available 0.0" in metrics
                    and b"topgun_storage_staged 0.0" not in metrics
                )

            await until(reported, "the failing backend shows in /ready and /metrics")
            with anyio.move_on_after(0.2):
                await client.expect(OpAck, timeout=1)
                pytest.fail("PERSISTED acknowledged while the backend raises")
        finally:
            FailingMemory.failing = False
        ack = await client.expect(OpAck, timeout=30)
        assert ack.payload.achieved_level == "PERSISTED"
        status, _, metrics = await storage_state(live)
        assert status == 200
        assert b"topgun_storage_staged 0.0" in metrics
        backend = live.server.backend
        assert isinstance(backend, WriteBehind)
        snapshot = await backend.backend.load_map(MAP)
        assert isinstance(snapshot, LWWSnapshot)
        assert sorted(snapshot.records) == sorted(f"k{i}" for i in range(10))
        await client.aclose()
