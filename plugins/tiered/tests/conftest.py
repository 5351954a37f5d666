"""Fixtures for the tiered storage tests: servers whose storage is wrapped in `tiered`,
driven through in-memory connections (or served on a socket for the real client), and the
data they are filled with."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import jwt
import pytest
import topgun_tiered.plugin

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import TopgunPluginManager, make_plugin_manager
from topgun.protocol import (
    Auth,
    AuthAck,
    AuthRequired,
    ClientOp,
    MerkleReqBucket,
    MerkleReqBucketPayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
    SyncRespLeaf,
)
from topgun.server import AuthConfig, InMemoryClient, Secret, Server, ServerConfig, StorageConfig
from topgun.server.app import create_app
from topgun.server.serve import bound_address, host, listen_socket

SECRET = "tiered-test-secret-" + "0123456789abcdef" * 3
T = int(time.time() * 1000) - 60_000
"""Timestamps a minute old: within the server clock's drift limit."""


def plugin_manager() -> TopgunPluginManager:
    """Built-ins plus this plugin (stray installed plugins stay out)."""
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(topgun_tiered.plugin, name="tiered")
    return pm


def tiered_config(data_dir: Path, backend: str = "sqlite", **options: Any) -> ServerConfig:
    """SQLite (or `backend`) wrapped in `tiered` with `options`."""
    return ServerConfig(
        data_dir=data_dir,
        node_id="server-1",
        storage=StorageConfig(
            backend=backend,
            options={"synchronous": "normal"} if backend == "sqlite" else {},
            wrappers=("tiered",),
            wrapper_options={"tiered": options},
        ),
        auth=AuthConfig(jwt_secret=Secret(SECRET)),
    )


def plain_config(data_dir: Path) -> ServerConfig:
    """Memory storage, no tiers: the reference the tiered server must agree with."""
    return ServerConfig(
        data_dir=data_dir,
        node_id="server-1",
        storage=StorageConfig(backend="memory"),
        auth=AuthConfig(jwt_secret=Secret(SECRET)),
    )


class Running:
    """A started server and logged-in in-memory clients."""

    def __init__(self, server: Server, tg: anyio.abc.TaskGroup, stack: Any) -> None:
        self.server = server
        self.tg = tg
        self.stack = stack

    async def login(self) -> InMemoryClient:
        client = await self.stack.enter_async_context(InMemoryClient.connect(self.server, self.tg))
        assert isinstance(await client.receive(), AuthRequired)
        await client.send(Auth(token=token()))
        assert isinstance(await client.receive(), AuthAck)
        return client


@contextlib.asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[Running]:
    async with (
        anyio.create_task_group() as tg,
        Server(config, pm=plugin_manager()) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        yield Running(server, tg, stack)


def token() -> str:
    """An ADMIN token the test servers accept."""
    return jwt.encode({"sub": "t", "roles": ["ADMIN"]}, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def serving(config: ServerConfig) -> AsyncIterator[tuple[Running, str]]:
    """`running(config)`, also served on a free port: yields it and its `ws://` URL."""
    listener = listen_socket("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{bound_address(listener)[1]}"
    async with running(config) as live:
        stop = anyio.Event()

        async def shutdown_trigger() -> None:
            await stop.wait()

        live.tg.start_soon(
            lambda: host(
                create_app(live.server), listener, config, shutdown_trigger=shutdown_trigger
            )
        )
        try:
            yield live, url
        finally:
            stop.set()


def row(i: int) -> dict[str, Any]:
    """The value of key i: ~600 bytes in memory, with fields to query on."""
    return {"n": i, "group": i % 7, "text": f"row {i} " + "lorem ipsum " * 30}


async def write_rows(
    client: InMemoryClient, name: str, keys: Sequence[int], *, millis: int = T
) -> None:
    """Write `row(i)` under `k{i:05}` for each i, in PERSISTED batches of 200."""
    for start in range(0, len(keys), 200):
        ops = [
            ClientOp(
                map_name=name,
                key=f"k{i:05}",
                record=LWWRecord(row(i), Timestamp(millis, i, "writer")),
            )
            for i in keys[start : start + 200]
        ]
        await client.send(OpBatch(payload=OpBatchPayload(ops=ops, write_concern="PERSISTED")))
        ack, _ = await client.receive_until(OpAck, timeout=30)
        assert ack.payload.achieved_level == "PERSISTED"


async def serve_leaves(
    client: InMemoryClient, name: str, paths: list[str], expected: Callable[[str], LWWRecord]
) -> int:
    """Ask for the leaves at `paths` (MERKLE_REQ_BUCKET) and check each record against
    `expected(key)` as it arrives (keeping none); returns how many keys were served."""
    served = 0
    for start in range(0, len(paths), 100):
        chunk = paths[start : start + 100]
        for path in chunk:
            await client.send(
                MerkleReqBucket(payload=MerkleReqBucketPayload(map_name=name, path=path))
            )
        for _ in chunk:
            leaf = await client.receive(timeout=30)
            assert isinstance(leaf, SyncRespLeaf), leaf
            for entry in leaf.payload.records:
                assert entry.record == expected(entry.key), entry.key
                served += 1
        client.raw_frames.clear()  # the test client keeps every frame otherwise
    return served


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import conftest)."""
    return SimpleNamespace(
        T=T,
        plain_config=plain_config,
        plugin_manager=plugin_manager,
        row=row,
        running=running,
        serve_leaves=serve_leaves,
        serving=serving,
        tiered_config=tiered_config,
        token=token,
        write_rows=write_rows,
    )
