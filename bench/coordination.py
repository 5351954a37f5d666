"""Topics, locks and PN counters through a running server (in-memory connections).

    python3 dev.py run python bench/coordination.py [--subscribers S] [--messages M]
        [--cycles C] [--syncs N] [--repeat R]

- topic fan-out: one publisher, S subscribers, M `TOPIC_PUB`s; deliveries/s counts every
  `TOPIC_MESSAGE` received by every subscriber (checked: each gets all M, in order).
- lock cycles: one client `LOCK_REQUEST` → `LOCK_GRANTED` → `LOCK_RELEASE` → `LOCK_RELEASED`
  C times, with the fencing token committed before each grant, on SQLite and on memory
  storage (checked: tokens 1..C). `LOCK_GRANTED`/`LOCK_RELEASED` are not urgent (§1.3), so
  with the default 2 ms coalescing delay each round trip waits for it; the 0 ms figures
  show the cost of the lock path itself.
- counter syncs: 10 subscribed clients; one sends N `COUNTER_SYNC`s each growing its entry;
  syncs/s until every subscriber has seen the last update (checked: final value N).

Each figure is the best of R runs, client and server in one process on one core, so the
client's own decoding is part of every figure. No targets: these size the features.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import jwt

from topgun.hooks import make_plugin_manager
from topgun.protocol import (
    Auth,
    AuthAck,
    AuthRequired,
    CounterRequest,
    CounterRequestPayload,
    CounterResponse,
    CounterState,
    CounterStatePayload,
    CounterSync,
    CounterUpdate,
    LockGranted,
    LockRelease,
    LockReleased,
    LockReleasePayload,
    LockRequest,
    LockRequestPayload,
    Ping,
    Pong,
    TopicMessage,
    TopicPub,
    TopicPubPayload,
    TopicSub,
    TopicSubPayload,
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

SECRET = "bench-secret-" + "0" * 32


async def login(client: InMemoryClient) -> None:
    assert isinstance(await client.receive(), AuthRequired)
    await client.send(Auth(token=jwt.encode({"sub": "bench", "roles": ["ADMIN"]}, SECRET)))
    assert isinstance(await client.receive(), AuthAck)


Scenario = Callable[[Server, anyio.abc.TaskGroup], Awaitable[float]]


async def with_server(backend: str, delay_ms: int, scenario: Scenario) -> float:
    with tempfile.TemporaryDirectory() as data_dir:
        config = ServerConfig(
            data_dir=Path(data_dir),
            storage=StorageConfig(backend=backend),
            auth=AuthConfig(jwt_secret=Secret(SECRET)),
            connections=ConnectionLimits(max_new_per_second=10_000),
            coalescing=CoalescingConfig(max_delay_ms=delay_ms),
        )
        pm = make_plugin_manager(entry_points=(), environ={})
        async with anyio.create_task_group() as tg, Server(config, pm=pm) as server:
            return await scenario(server, tg)


def topic_fanout(subscribers: int, messages: int) -> Scenario:
    async def run(server: Server, tg: anyio.abc.TaskGroup) -> float:
        publisher = InMemoryClient()
        tg.start_soon(publisher.serve, server)
        await login(publisher)
        clients = []
        for _ in range(subscribers):
            client = InMemoryClient()
            tg.start_soon(client.serve, server)
            await login(client)
            await client.send(TopicSub(payload=TopicSubPayload(topic="bench")))
            await client.send(Ping(timestamp=0))
            assert isinstance(await client.receive(), Pong)
            clients.append(client)

        async def drain(client: InMemoryClient) -> None:
            for i in range(messages):
                message = await client.receive()
                assert isinstance(message, TopicMessage)
                assert message.payload.data == i

        start = time.perf_counter()
        async with anyio.create_task_group() as readers:
            for client in clients:
                readers.start_soon(drain, client)
            for i in range(messages):
                await publisher.send(TopicPub(payload=TopicPubPayload(topic="bench", data=i)))
        elapsed = time.perf_counter() - start
        for client in (publisher, *clients):
            await client.disconnect()
        return subscribers * messages / elapsed

    return run


def lock_cycles(cycles: int) -> Scenario:
    async def run(server: Server, tg: anyio.abc.TaskGroup) -> float:
        client = InMemoryClient()
        tg.start_soon(client.serve, server)
        await login(client)
        start = time.perf_counter()
        for i in range(1, cycles + 1):
            await client.send(LockRequest(payload=LockRequestPayload(request_id="r", name="l")))
            granted = await client.receive()
            assert isinstance(granted, LockGranted)
            assert granted.payload.fencing_token == i
            await client.send(LockRelease(payload=LockReleasePayload(name="l", fencing_token=i)))
            assert isinstance(await client.receive(), LockReleased)
        elapsed = time.perf_counter() - start
        await client.disconnect()
        return cycles / elapsed

    return run


def counter_syncs(syncs: int) -> Scenario:
    async def run(server: Server, tg: anyio.abc.TaskGroup) -> float:
        clients = []
        for _ in range(10):
            client = InMemoryClient()
            tg.start_soon(client.serve, server)
            await login(client)
            await client.send(CounterRequest(payload=CounterRequestPayload(name="c")))
            assert isinstance(await client.receive(), CounterResponse)
            clients.append(client)

        async def drain(client: InMemoryClient) -> None:
            while True:
                update = await client.receive()
                assert isinstance(update, CounterUpdate)
                if update.payload.state.p == {"w": syncs}:
                    return

        start = time.perf_counter()
        async with anyio.create_task_group() as readers:
            for client in clients:
                readers.start_soon(drain, client)
            for i in range(1, syncs + 1):
                state = CounterState(p={"w": i}, n={})
                await clients[0].send(
                    CounterSync(payload=CounterStatePayload(name="c", state=state))
                )
        elapsed = time.perf_counter() - start
        assert server.counters.value("c") == syncs
        for client in clients:
            await client.disconnect()
        return syncs / elapsed

    return run


def best(repeat: int, backend: str, scenario: Scenario, delay_ms: int = 2) -> float:
    return max(anyio.run(with_server, backend, delay_ms, scenario) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--syncs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, best of {args.repeat}")
    fanout = best(args.repeat, "memory", topic_fanout(args.subscribers, args.messages))
    print(
        f"topic fan-out, {args.subscribers} subscribers x {args.messages} messages: "
        f"{fanout:,.0f} deliveries/s"
    )
    for backend in ("sqlite", "memory"):
        for delay_ms in (2, 0):
            rate = best(args.repeat, backend, lock_cycles(args.cycles), delay_ms)
            print(
                f"lock request/grant/release cycles, {backend} storage, coalescing delay "
                f"{delay_ms} ms: {rate:,.0f} cycles/s"
            )
    syncs = best(args.repeat, "memory", counter_syncs(args.syncs))
    print(f"counter syncs, 10 subscribers: {syncs:,.0f} syncs/s")


if __name__ == "__main__":
    main()
