"""Entry processors, the journal and TTL expiry through a running server (in-memory connections).

    python3 dev.py run python bench/services.py [--ops N] [--keys K] [--repeat R]

- processor round trips: one client runs `builtin:increment` N times on one key, each
  waiting for its `ENTRY_PROCESS_RESPONSE` (worker thread, pipeline write, journal).
- concurrent increments: 10 clients send N increments in all on one key without waiting
  (serialized per key), then on N distinct keys (checked: the final values).
- journal cost: N `PUT`s in batches of 100 through `OP_BATCH`, journal on vs off.
- TTL expiry: K records with a 1 s TTL on a clock the bench moves; after moving it past
  their expiry, the time one `expire_due()` takes to write every tombstone through the
  pipeline (checked: K tombstones).

Each figure is the best of R runs on memory storage with no coalescing delay (so round
trips measure the path, not the 2 ms default batching window), client and server in one process on
one core, so the client's own decoding is part of every figure. No targets: these size the
features.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import jwt

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import make_plugin_manager
from topgun.protocol import (
    Auth,
    AuthAck,
    AuthRequired,
    ClientOp,
    EntryProcess,
    EntryProcessResponse,
    OpAck,
    OpBatch,
    OpBatchPayload,
    ProcessorSpec,
)
from topgun.server import (
    AuthConfig,
    CoalescingConfig,
    ConnectionLimits,
    InMemoryClient,
    Secret,
    Server,
    ServerConfig,
    StorageConfig,
)
from topgun.server.config import JournalConfig, ProcessorConfig

SECRET = "bench-secret-" + "0" * 32
INCREMENT = ProcessorSpec(name="builtin:increment")

Scenario = Callable[[Server, anyio.abc.TaskGroup], Awaitable[float]]


async def login(server: Server, tg: anyio.abc.TaskGroup) -> InMemoryClient:
    client = InMemoryClient()
    tg.start_soon(client.serve, server)
    assert isinstance(await client.receive(), AuthRequired)
    await client.send(Auth(token=jwt.encode({"sub": "bench", "roles": ["ADMIN"]}, SECRET)))
    assert isinstance(await client.receive(), AuthAck)
    return client


class Clock:
    """The server's wall clock; `offset_ms` moves it ahead."""

    offset_ms = 0

    def __call__(self) -> int:
        return int(time.time() * 1000) + self.offset_ms


async def with_server(scenario: Scenario, journal: bool) -> float:
    with tempfile.TemporaryDirectory() as data_dir:
        config = ServerConfig(
            data_dir=Path(data_dir),
            storage=StorageConfig(backend="memory"),
            auth=AuthConfig(jwt_secret=Secret(SECRET)),
            connections=ConnectionLimits(max_new_per_second=10_000),
            journal=JournalConfig(enabled=journal),
            processors=ProcessorConfig(max_per_second=1_000_000),
            coalescing=CoalescingConfig(max_delay_ms=0),
        )
        pm = make_plugin_manager(entry_points=(), environ={})
        server = Server(config, pm=pm, clock=Clock())
        async with anyio.create_task_group() as tg, server:
            figure = await scenario(server, tg)
            for session in list(server.sessions):
                session.close(1000, "bench done")
        return figure


def round_trips(ops: int) -> Scenario:
    async def run(server: Server, tg: anyio.abc.TaskGroup) -> float:
        client = await login(server, tg)
        start = time.perf_counter()
        for i in range(ops):
            await client.send(
                EntryProcess(request_id="r", map_name="m", key="k", processor=INCREMENT)
            )
            response = await client.receive()
            assert isinstance(response, EntryProcessResponse)
            assert response.new_value == i + 1
        return ops / (time.perf_counter() - start)

    return run


def concurrent(ops: int, distinct: bool) -> Scenario:
    async def run(server: Server, tg: anyio.abc.TaskGroup) -> float:
        clients = [await login(server, tg) for _ in range(10)]
        share = ops // len(clients)

        async def drive(index: int, client: InMemoryClient) -> None:
            for i in range(share):
                key = f"k{index}-{i}" if distinct else "k"
                await client.send(
                    EntryProcess(request_id=str(i), map_name="m", key=key, processor=INCREMENT)
                )
            for _ in range(share):
                response = await client.receive()
                assert isinstance(response, EntryProcessResponse)
                assert response.success

        start = time.perf_counter()
        async with anyio.create_task_group() as drivers:
            for index, client in enumerate(clients):
                drivers.start_soon(drive, index, client)
        elapsed = time.perf_counter() - start
        lww = server.maps.lww("m")
        assert lww is not None
        if not distinct:
            assert lww.get("k") == share * len(clients)
        return share * len(clients) / elapsed

    return run


def puts(ops: int) -> Scenario:
    async def run(server: Server, tg: anyio.abc.TaskGroup) -> float:
        client = await login(server, tg)
        now = server.clock()
        start = time.perf_counter()
        for first in range(0, ops, 100):
            batch: list[Any] = [
                ClientOp(map_name="m", key=f"k{i}", record=LWWRecord(i, Timestamp(now, i, "c")))
                for i in range(first, min(first + 100, ops))
            ]
            await client.send(OpBatch(payload=OpBatchPayload(ops=batch)))
            assert isinstance(await client.receive(), OpAck)
        return ops / (time.perf_counter() - start)

    return run


def expiry(keys: int) -> Scenario:
    async def run(server: Server, tg: anyio.abc.TaskGroup) -> float:
        client = await login(server, tg)
        now = server.clock()
        for first in range(0, keys, 500):
            batch: list[Any] = [
                ClientOp(
                    map_name="m",
                    key=f"k{i}",
                    record=LWWRecord(i, Timestamp(now, i, "c"), ttl_ms=1000),
                )
                for i in range(first, min(first + 500, keys))
            ]
            await client.send(OpBatch(payload=OpBatchPayload(ops=batch)))
            assert isinstance(await client.receive(), OpAck)
        clock = server.clock
        assert isinstance(clock, Clock)
        clock.offset_ms = 2000
        start = time.perf_counter()
        expired = await server.expiry.expire_due()
        elapsed = time.perf_counter() - start
        assert expired == keys
        lww = server.maps.lww("m")
        assert lww is not None
        assert all(record.value is None for _, record in lww.records())
        return elapsed

    return run


def best(repeat: int, scenario: Scenario, journal: bool = True, low: bool = False) -> float:
    runs = [anyio.run(with_server, scenario, journal) for _ in range(repeat)]
    return min(runs) if low else max(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, best of {args.repeat}")
    print(f"processor round trips:           {best(args.repeat, round_trips(args.ops)):9,.0f} /s")
    one_key = best(args.repeat, concurrent(args.ops, distinct=False))
    print(f"10 clients, one key:             {one_key:9,.0f} increments/s")
    many = best(args.repeat, concurrent(args.ops, distinct=True))
    print(f"10 clients, distinct keys:       {many:9,.0f} increments/s")
    with_journal = best(args.repeat, puts(args.ops * 10))
    without = best(args.repeat, puts(args.ops * 10), journal=False)
    print(f"OP_BATCH puts, journal on:       {with_journal:9,.0f} ops/s")
    print(f"OP_BATCH puts, journal off:      {without:9,.0f} ops/s")
    drain = best(args.repeat, expiry(args.keys), low=True)
    print(f"expire {args.keys:,} records:          {drain * 1000:9,.0f} ms")


if __name__ == "__main__":
    main()
