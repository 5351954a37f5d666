"""Start-up under a memory budget: a store holding a map 5x the budget is loaded page by
page (`load_page`), never holding much more than the budget, every key is then served,
and `/ready` turns ready only once loading finished."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from topgun.crdt import LWWRecord, Timestamp, fnv1a32
from topgun.crdt.hashing import merkle_path
from topgun.hooks import Register, hookimpl
from topgun.protocol import SyncInit, SyncRespRoot
from topgun.server import Server, ServerConfig
from topgun.server.app import create_app
from topgun.storage import (
    BackendConfig,
    BackendWrapper,
    Change,
    MapInfo,
    MapPage,
    MapSnapshot,
    PagedBackend,
    value_size,
)

pytestmark = pytest.mark.anyio

KEYS = 2000


async def stored_map(tmp_path: Path, kit: Any) -> tuple[ServerConfig, int, int]:
    """A store holding map `big`, written by a server without a budget; returns the tiered
    configuration with a budget a fifth of the map, the budget, and the map's root hash."""
    budget = sum(value_size(kit.row(i)) for i in range(KEYS)) // 5
    async with kit.running(kit.tiered_config(tmp_path, budget=1 << 30)) as unbounded:
        client = await unbounded.login()
        await kit.write_rows(client, "big", range(KEYS))
        lww = unbounded.server.maps.lww("big")
        assert lww is not None
        assert lww.cold_keys() == set()
        root = lww.merkle.root_hash
    return kit.tiered_config(tmp_path, budget=budget), budget, root


async def test_a_map_five_times_the_budget_starts_within_the_budget(
    tmp_path: Path, kit: Any
) -> None:
    config, budget, root = await stored_map(tmp_path, kit)
    async with kit.running(config) as tiered:
        hot = tiered.server.maps.hot
        lww = tiered.server.maps.lww("big")
        assert hot is not None
        assert lww is not None
        # Loading 5x the budget went page by page: the most values ever held at once was
        # the high-water mark plus one page (a page aims at 1/16 of the budget).
        assert hot.peak <= budget, (hot.peak, budget)
        assert hot.used <= hot.budget.high_bytes
        assert len(lww.cold_keys()) > KEYS // 2
        client = await tiered.login()
        await client.send(SyncInit(map_name="big"))
        assert (await client.receive_until(SyncRespRoot))[0].payload.root_hash == root

        def expected(key: str) -> LWWRecord:
            i = int(key[1:])
            return LWWRecord(kit.row(i), Timestamp(kit.T, i, "writer"))

        paths = sorted({merkle_path(fnv1a32(f"k{i:05}")) for i in range(KEYS)})
        hot.peak = hot.used
        assert await kit.serve_leaves(client, "big", paths, expected) == KEYS
        assert hot.peak <= budget * 1.1, (hot.peak, budget)


class Gate:
    """Storage around `inner` whose first page waits until `released` is set."""

    def __init__(self, inner: PagedBackend) -> None:
        self.inner = inner
        self.reached = anyio.Event()
        self.released = anyio.Event()

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def list_maps(self) -> list[MapInfo]:
        return await self.inner.list_maps()

    async def load_map(self, name: str) -> MapSnapshot | None:
        return await self.inner.load_map(name)

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        return await self.inner.load_keys(name, keys)

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        self.reached.set()
        await self.released.wait()
        return await self.inner.load_page(name, after, limit)

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        return await self.inner.load_meta(namespace)

    async def store_batch(self, changes: Sequence[Change]) -> None:
        await self.inner.store_batch(changes)

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        await self.inner.delete(name, keys)

    async def close(self) -> None:
        await self.inner.close()


class GatePlugin:
    """Registers the `gate` storage wrapper, handing out the one `Gate` it made."""

    gate: Gate | None = None

    @hookimpl
    def register_storage_wrappers(self, register: Register[BackendWrapper]) -> None:
        def wrap(backend: Any, config: BackendConfig) -> Gate:
            assert isinstance(backend, PagedBackend)
            self.gate = Gate(backend)
            return self.gate

        register("gate", wrap)


async def test_ready_turns_ready_only_once_loading_finished(tmp_path: Path, kit: Any) -> None:
    config, _, _ = await stored_map(tmp_path, kit)
    storage = msgspec.structs.replace(config.storage, wrappers=("gate", "tiered"))
    plugin = GatePlugin()
    pm = kit.plugin_manager()
    pm.register(plugin, name="gate")
    server = Server(msgspec.structs.replace(config, storage=storage), pm=pm)
    http = create_app(server).test_client()
    started, stop = anyio.Event(), anyio.Event()

    async def run() -> None:
        async with server:
            started.set()
            await stop.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(30):
            while plugin.gate is None:  # the storage is opened inside `run`
                await anyio.sleep(0)
            await plugin.gate.reached.wait()
        loading = await http.get("/ready")
        assert loading.status_code == 503
        assert await loading.get_json() == {"ready": False}
        assert not server.ready
        plugin.gate.released.set()
        with anyio.fail_after(30):
            await started.wait()
        ready = await http.get("/ready")
        assert ready.status_code == 200
        lww = server.maps.lww("big")
        assert lww is not None
        assert len(lww.records()) == KEYS  # loading had finished
        stop.set()
