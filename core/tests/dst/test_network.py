"""The simulated network: ordered delivery, partitions, drops and frame faults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from topgun.client.connection import ConnectionClosed
from topgun.dst.loop import run_virtual
from topgun.dst.network import LinkFaults, SimConnectionPair, VirtualNetwork
from topgun.dst.rng import SeededRNG

OPEN: list[VirtualNetwork] = []


@pytest.fixture(autouse=True)
def close_networks() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def network(**faults: Any) -> tuple[VirtualNetwork, list[str], list[SimConnectionPair]]:
    trace: list[str] = []
    net = VirtualNetwork(SeededRNG(1), LinkFaults(**faults), trace.append)
    OPEN.append(net)
    pairs: list[SimConnectionPair] = []
    net.serve = pairs.append
    return net, trace, pairs


async def server_frames(pair: SimConnectionPair, count: int) -> list[bytes | str]:
    received: list[bytes | str] = []
    async for frame in pair.server_end.frames():
        received.append(frame)
        if len(received) == count:
            break
    return received


def test_frames_arrive_in_order_after_their_latency() -> None:
    async def main() -> tuple[list[bytes | str], float]:
        net, _, pairs = network(min_latency_ms=10, max_latency_ms=50)
        client = await net.connect("c1")
        started = anyio.current_time()
        for i in range(100):
            await client.send(b"%d" % i)
        frames = await server_frames(pairs[0], 100)
        return frames, anyio.current_time() - started

    frames, elapsed = run_virtual(main)
    assert frames == [b"%d" % i for i in range(100)]
    assert 0.010 <= elapsed <= 0.051


def test_a_partition_holds_frames_until_it_heals() -> None:
    async def main() -> list[bytes]:
        net, _, pairs = network()
        client = await net.connect("c1")
        net.partition("c1")
        await pairs[0].server_end.send(b"held")
        with anyio.move_on_after(5):
            await client.receive()
            raise AssertionError("a partitioned client received a frame")
        net.heal("c1")
        return [await client.receive()]

    assert run_virtual(main) == [b"held"]


def test_connecting_while_partitioned_or_server_down_fails() -> None:
    async def main() -> None:
        net, _, _ = network()
        net.partition("c1")
        with pytest.raises(OSError, match="unreachable"):
            await net.connect("c1")
        net.heal("c1")
        net.server_down()
        with pytest.raises(OSError, match="unreachable"):
            await net.connect("c1")

    run_virtual(main)


def test_a_drop_ends_both_sides_and_loses_frames_in_flight() -> None:
    async def main() -> tuple[list[bytes | str], bool]:
        net, trace, pairs = network(min_latency_ms=10, max_latency_ms=10)
        client = await net.connect("c1")
        await client.send(b"lost")
        net.drop_all("c1")
        with pytest.raises(ConnectionClosed):
            await client.receive()
        with pytest.raises(ConnectionClosed):
            await client.send(b"after")
        received = [frame async for frame in pairs[0].server_end.frames()]
        return received, any("dropped" in line for line in trace)

    assert run_virtual(main) == ([], True)


def test_a_server_close_arrives_after_the_frames_before_it() -> None:
    async def main() -> tuple[list[bytes], int | None]:
        net, _, pairs = network()
        client = await net.connect("c1")
        end = pairs[0].server_end
        await end.send(b"a")
        await end.send(b"b")
        await end.close(1001, "bye")
        got = [await client.receive(), await client.receive()]
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        return got, closed.value.code

    assert run_virtual(main) == ([b"a", b"b"], 1001)


def test_duplicates_and_reordering_happen_when_enabled() -> None:
    async def main() -> list[bytes | str]:
        net, _, pairs = network(duplicate=0.3, reorder=0.3, max_latency_ms=50)
        client = await net.connect("c1")
        for i in range(200):
            await client.send(b"%d" % i)
        frames: list[bytes | str] = []
        with anyio.move_on_after(5):
            async for frame in pairs[0].server_end.frames():
                frames.append(frame)
        return frames

    frames = run_virtual(main)
    assert len(frames) > 200  # some arrived twice
    assert frames != sorted(frames, key=lambda f: int(f))  # some overtook others
    assert set(frames) == {b"%d" % i for i in range(200)}  # none lost


def test_loss_takes_the_connection_down() -> None:
    async def main() -> bool:
        net, _, pairs = network(loss=1.0)
        client = await net.connect("c1")
        await client.send(b"x")
        with pytest.raises(ConnectionClosed):
            await client.receive()
        return pairs[0].dropped

    assert run_virtual(main)
