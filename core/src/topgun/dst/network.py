"""A simulated network between simulated clients and the real server.

Each client connection is two one-way pipes. A frame sent into a pipe arrives after a
latency drawn from the seeded RNG; faults chosen by the same RNG may lose it, deliver it
twice, or let it overtake earlier frames. A partitioned client's frames wait until the
partition heals (by then heartbeats may have closed the connection, as they would over
TCP). The network can drop a connection at any moment: both ends see it close and frames
in flight are gone. Only the server's `Transport` and the client's `Connection` interfaces
are used, so the code on both ends is the production code.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from topgun.client.connection import ConnectionClosed
from topgun.dst.rng import SeededRNG

__all__ = ["LinkFaults", "SimConnection", "SimConnector", "VirtualNetwork"]


@dataclass(frozen=True)
class LinkFaults:
    """What may happen to a frame on its way; probabilities per frame."""

    min_latency_ms: float = 1.0
    max_latency_ms: float = 20.0
    loss: float = 0.0
    """A lost frame closes its connection (a stream transport loses a frame only with it)."""
    duplicate: float = 0.0
    reorder: float = 0.0
    """A reordered frame ignores the pipe's FIFO order (it may overtake earlier ones)."""


_CLOSE = object()
_TICK = 1e-6
"""Seconds between two frames of one pipe due at the same time (keeps them in order)."""


@dataclass
class _Pipe:
    """One direction of a connection: frames in, delayed delivery out."""

    network: VirtualNetwork
    client: str
    direction: str
    inbox: MemoryObjectSendStream[object]
    last_arrival: float = 0.0
    closed: bool = False
    held: list[object] = field(default_factory=list)

    def send(self, item: object) -> None:
        if self.closed:
            return
        if self.network.is_partitioned(self.client):
            self.held.append(item)
            return
        self._transmit(item)

    def _transmit(self, item: object) -> None:
        net = self.network
        faults = net.faults
        loop = asyncio.get_running_loop()
        rng = net.rng
        latency = rng.uniform(faults.min_latency_ms, faults.max_latency_ms) / 1000
        if item is not _CLOSE and rng.chance(faults.loss):
            net.trace(f"{self.client} {self.direction} lost a frame; connection dropped")
            loop.call_at(loop.time() + latency, self.connection.drop)
            return
        arrival = loop.time() + latency
        if item is _CLOSE or not rng.chance(faults.reorder):
            # Strictly after the previous frame: asyncio's timer heap does not keep the
            # order of timers due at the same instant.
            arrival = max(arrival, self.last_arrival + _TICK)
            self.last_arrival = arrival
        loop.call_at(arrival, self._deliver, item)
        if item is not _CLOSE and rng.chance(faults.duplicate):
            again = max(arrival + latency, self.last_arrival + _TICK)
            self.last_arrival = again
            loop.call_at(again, self._deliver, item)

    def _deliver(self, item: object) -> None:
        if self.closed:
            return
        if item is _CLOSE:
            self.closed = True
            self.inbox.close()
            return
        try:
            self.inbox.send_nowait(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.closed = True

    def heal(self) -> None:
        held, self.held = self.held, []
        for item in held:
            self._transmit(item)

    def cut(self) -> None:
        """Stop now: what is in flight is gone, the reader sees the end."""
        self.closed = True
        self.held.clear()
        self.inbox.close()

    connection: SimConnectionPair = field(init=False)


class SimConnectionPair:
    """Both ends of one simulated connection."""

    def __init__(self, network: VirtualNetwork, client: str, number: int) -> None:
        self.network = network
        self.client = client
        self.number = number
        up_send, up_receive = anyio.create_memory_object_stream[object](math.inf)
        down_send, down_receive = anyio.create_memory_object_stream[object](math.inf)
        self.up = _Pipe(network, client, "->server", up_send)
        self.down = _Pipe(network, client, "->client", down_send)
        self.up.connection = self.down.connection = self
        self.server_end = SimServerEnd(self, up_receive)
        self.client_end = SimConnection(self, down_receive)
        self._streams = (up_send, up_receive, down_send, down_receive)
        self.dropped = False

    def release(self) -> None:
        """Close every stream end (idempotent)."""
        for stream in self._streams:
            stream.close()

    def drop(self) -> None:
        """The network fails: both ends see the connection end at once."""
        if self.dropped:
            return
        self.dropped = True
        self.network.trace(f"{self.client} connection #{self.number} dropped")
        self.up.cut()
        self.down.cut()
        self.release()
        self.network.connections.pop(self, None)


class SimServerEnd:
    """The server's end: a `topgun.server.transport.Transport` plus its inbound frames."""

    def __init__(self, pair: SimConnectionPair, inbound: MemoryObjectReceiveStream[object]):
        self.pair = pair
        self._inbound = inbound
        self.close_code: int | None = None

    @property
    def is_open(self) -> bool:
        return self.close_code is None and not self.pair.dropped

    @property
    def remote_address(self) -> str | None:
        return f"sim:{self.pair.client}"

    async def send(self, frame: bytes) -> None:
        self.pair.down.send(frame)

    async def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.pair.down.send(_CLOSE)
            self.pair.network.trace(f"server closed {self.pair.client} with {code} {reason}")

    async def frames(self) -> AsyncIterator[bytes | str]:
        try:
            async for item in self._inbound:
                assert isinstance(item, bytes | str)
                yield item
        except anyio.ClosedResourceError:
            return
        finally:
            self._inbound.close()


class SimConnection:
    """The client's end: a `topgun.client.Connection`."""

    def __init__(self, pair: SimConnectionPair, inbound: MemoryObjectReceiveStream[object]):
        self.pair = pair
        self._inbound = inbound
        self._closed = False

    @property
    def is_open(self) -> bool:
        return not self._closed and not self.pair.dropped and not self.pair.down.closed

    async def send(self, frame: bytes) -> None:
        if not self.is_open:
            raise ConnectionClosed(None, "connection closed")
        self.pair.up.send(frame)

    async def receive(self) -> bytes:
        try:
            item = await self._inbound.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._inbound.close()
            code = self.pair.server_end.close_code
            raise ConnectionClosed(code, "closed") from None
        assert isinstance(item, bytes)
        return item

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.pair.up.send(_CLOSE)
            self._inbound.close()


class SimConnector:
    """The client's `Connector`: a connection through the network to the current server."""

    def __init__(self, network: VirtualNetwork, client: str) -> None:
        self.network = network
        self.client = client

    async def connect(self) -> SimConnection:
        return await self.network.connect(self.client)


ServeConnection = Callable[[SimConnectionPair], None]


class VirtualNetwork:
    """Every simulated connection, the partitions, and the faults, driven by `rng`."""

    def __init__(self, rng: SeededRNG, faults: LinkFaults, trace: Callable[[str], None]) -> None:
        self.rng = rng
        self.faults = faults
        self.trace = trace
        self.connections: dict[SimConnectionPair, None] = {}
        self.partitioned: set[str] = set()
        self.serve: ServeConnection | None = None
        """Starts the server's session for a new connection; `None` while it is down."""
        self._numbers = 0

    def is_partitioned(self, client: str) -> bool:
        return client in self.partitioned

    async def connect(self, client: str) -> SimConnection:
        """Open a connection from `client`; `OSError` when the server is down or
        unreachable (after a connect latency)."""
        await anyio.sleep(
            self.rng.uniform(self.faults.min_latency_ms, self.faults.max_latency_ms) / 1000
        )
        if self.serve is None or self.is_partitioned(client):
            raise OSError(f"simulated connect failure for {client}: server unreachable")
        self._numbers += 1
        pair = SimConnectionPair(self, client, self._numbers)
        self.connections[pair] = None
        self.trace(f"{client} connected (#{pair.number})")
        self.serve(pair)
        return pair.client_end

    def partition(self, client: str) -> None:
        self.partitioned.add(client)
        self.trace(f"{client} partitioned")

    def heal(self, client: str) -> None:
        if client in self.partitioned:
            self.partitioned.discard(client)
            self.trace(f"{client} healed")
            for pair in list(self.connections):
                if pair.client == client:
                    pair.up.heal()
                    pair.down.heal()

    def drop_all(self, client: str | None = None) -> None:
        """Drop every connection (of `client`)."""
        for pair in list(self.connections):
            if client is None or pair.client == client:
                pair.drop()

    def close(self) -> None:
        """The end of the simulation: every connection is dropped and released."""
        self.serve = None
        for pair in list(self.connections):
            pair.drop()

    def server_down(self) -> None:
        """The server is gone: refuse new connections, drop the open ones."""
        self.serve = None
        self.drop_all()
