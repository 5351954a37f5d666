"""Fault injection: PostgreSQL unreachable for 5 s in the middle of a stream of PERSISTED
writes, for a server on PostgreSQL and one on write-behind over PostgreSQL.

Both reach PostgreSQL through a TCP proxy that, during the outage, cuts every open
connection and closes each new one at once. While it lasts: no PERSISTED write is
acknowledged, `/ready` answers 503 naming the storage problem and `/metrics` shows
`topgun_storage_available 0`. Afterwards both servers recover by themselves (acks
resume, `/ready` is 200), and every acknowledged write is in the database.
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
from topgun.protocol import ClientOp, OpAck, OpBatch, OpBatchPayload
from topgun.server import StorageConfig
from topgun.storage import LWWSnapshot
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
