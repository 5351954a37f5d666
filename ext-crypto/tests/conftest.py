"""Fixtures for the crypto tests: key rings, the installed plugins, server configurations,
and a running server that is written every kind of persisted state."""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import anyio
import jwt
import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import ENTRY_POINT_GROUP, TopgunPluginManager, make_plugin_manager
from topgun.protocol import (
    Auth,
    AuthAck,
    AuthRequired,
    ClientOp,
    CounterState,
    CounterStatePayload,
    CounterSync,
    LockGranted,
    LockRequest,
    LockRequestPayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
)
from topgun.server import InMemoryClient, Server, ServerConfig
from topgun.server.config import config_sections, load_config

SECRET = "crypto-test-secret-" + "0123456789abcdef" * 3
KEYS = {name: bytes([i + 1]) * 32 for i, name in enumerate(["k1", "k2", "k3"])}
MARKER = "PLAINTEXT-MARKER"
"""Every value the server is written holds this, so the stored file can be searched (map
names, keys, lock and counter names are not encrypted: they do not hold it)."""
LOCK, COUNTER = "nightly-job", "likes"


def ring(*names: str) -> str:
    """A key ring text (`TOPGUN_CRYPTO_KEYS`) of the test keys `names`, in order."""
    return ",".join(f"{n}:{base64.b64encode(KEYS[n]).decode()}" for n in names)


def installed_plugins(*names: str, environ: dict[str, str] | None = None) -> TopgunPluginManager:
    """A plugin manager with the installed entry points `names` (real ones, found through
    the `topgun` group), and no others."""
    found = [
        ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name in names
    ]
    assert sorted(ep.name for ep in found) == sorted(names)
    return make_plugin_manager(entry_points=found, environ=environ or {})


@pytest.fixture
def plugins() -> TopgunPluginManager:
    return installed_plugins("crypto", "compress")


@pytest.fixture
def configure(tmp_path: Path, plugins: TopgunPluginManager) -> Callable[..., ServerConfig]:
    """`configure(codecs, keys=ring(...), toml=extra)`: a SQLite server configuration loaded
    as `topgun serve` loads it (TOML, then `TOPGUN_*` variables, with plugin sections)."""

    def make(
        codecs: Sequence[str] = ("compress", "crypto"),
        keys: str | None = None,
        toml: str = "",
        pm: TopgunPluginManager | None = None,
        data_dir: Path | None = None,
    ) -> ServerConfig:
        text = (
            f'data_dir = "{data_dir or tmp_path / "data"}"\nnode_id = "server-1"\n'
            f'[auth]\njwt_secret = "{SECRET}"\n'
            f'[storage]\nbackend = "sqlite"\ncodecs = {list(codecs)!r}\n{toml}'
        )
        environ = {"TOPGUN_CRYPTO_KEYS": keys} if keys is not None else {}
        return load_config(
            text.replace("'", '"'), environ=environ, sections=config_sections(pm or plugins)
        )

    return make


def token(roles: Sequence[str] = ("ADMIN",)) -> str:
    claims = {"sub": "tester", "roles": list(roles), "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def client_of(server: Server) -> AsyncIterator[InMemoryClient]:
    """An authenticated in-memory client of `server`."""
    async with (
        anyio.create_task_group() as task_group,
        InMemoryClient.connect(server, task_group) as client,
    ):
        assert isinstance(await client.receive(), AuthRequired)
        await client.send(Auth(token=token()))
        assert isinstance(await client.receive(), AuthAck)
        yield client


def stamp(millis: int) -> Timestamp:
    return Timestamp(millis, 0, "client-1")


async def write_every_kind(server: Server, millis: int = 1_700_000_000_000) -> None:
    """LWW values, OR-Map records, journal entries (the journal is on), a lock's fencing
    token and a counter: every kind of state the server persists, each holding MARKER."""
    async with client_of(server) as client:
        or_stamp = stamp(millis + 1)
        ops = [
            ClientOp(
                map_name="todos",
                key=f"t{i}",
                record=LWWRecord({"title": f"{MARKER} todo {i}", "done": False}, stamp(millis)),
            )
            for i in range(20)
        ] + [
            ClientOp(
                map_name="tags",
                key="colour",
                op_type="OR_ADD",
                or_record=ORMapRecord(f"{MARKER} red", or_stamp, str(or_stamp)),
            )
        ]
        await client.send(OpBatch(payload=OpBatchPayload(ops=ops, write_concern="PERSISTED")))
        ack, _ = await client.receive_until(OpAck)
        assert ack.payload.results is not None
        assert all(result.success for result in ack.payload.results)
        await client.send(LockRequest(payload=LockRequestPayload(request_id="l", name=LOCK)))
        await client.receive_until(LockGranted)
        state = CounterState(p={"client-1": 5.0}, n={"client-1": 2.0})
        await client.send(CounterSync(payload=CounterStatePayload(name=COUNTER, state=state)))
    assert server.storage_writer is not None
    with anyio.fail_after(10):  # the lock token and counter are stored through the writer
        while server.storage_writer.queue_depth:
            await anyio.sleep(0.01)


def stored_bytes(data_dir: Path) -> bytes:
    """Everything on disk in the data directory (the database and its WAL)."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Kit:
    """The helpers above, for test modules (which cannot import this conftest)."""

    MARKER = MARKER
    LOCK = LOCK
    COUNTER = COUNTER
    KEYS = KEYS
    ring = staticmethod(ring)
    installed_plugins = staticmethod(installed_plugins)
    client_of = staticmethod(client_of)
    write_every_kind = staticmethod(write_every_kind)
    stored_bytes = staticmethod(stored_bytes)
    token = staticmethod(token)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
