"""LWW values under a storage memory budget (topgun/server/maps.py, hotset.py): eviction of
the least recently used committed values, pins, loads of cold values, archived maps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import anyio
import pytest

from topgun.crdt import HLC, LWWRecord, Timestamp
from topgun.server.maps import MapRegistry
from topgun.storage import (
    Change,
    DeleteKey,
    MapKind,
    MapSnapshot,
    MemoryBackend,
    MemoryBudget,
    PutRecord,
    StorageError,
    StorageWriter,
    value_size,
)

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000
VALUE = "x" * 1000
BUDGET = MemoryBudget(budget_bytes=20 * value_size(VALUE), high_water=0.85, low_water=0.70)


class GatedBackend(MemoryBackend):
    """Memory storage whose transactions wait while `gate` is set and not yet released."""

    gate: anyio.Event | None = None

    async def store_batch(self, changes: Sequence[Change]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await super().store_batch(changes)


async def write(maps: MapRegistry, keys: Iterable[str], millis: int = T) -> Any:
    with maps.recording() as recording:
        for key in keys:
            maps.merge_lww("m", key, LWWRecord(f"{key}:{VALUE}", Timestamp(millis, 0, "c")))
    return await maps.persist(recording)


async def test_values_past_the_high_water_mark_are_evicted_down_to_the_low_one(
    clock: Any,
) -> None:
    backend = MemoryBackend()
    await backend.initialize()
    maps = MapRegistry(HLC("s", clock))
    maps.set_budget(BUDGET)
    await maps.load(backend)
    assert maps.hot is not None
    async with StorageWriter(backend) as writer:
        maps.writer = writer
        for i in range(100):  # 5x the budget, one committed key at a time
            commit = await write(maps, [f"k{i:03}"])
            await commit.wait()
            assert maps.hot.used <= BUDGET.budget_bytes
    lww = maps.lww("m")
    assert lww is not None
    cold = lww.cold_keys()
    assert len(cold) >= 80
    assert "k000" in cold
    assert "k099" not in cold
    assert maps.hot.used <= BUDGET.high_bytes
    root = lww.merkle.root_hash
    async with maps.holding("m", ["k000", "k001"]):
        assert lww.get("k000") == f"k000:{VALUE}"
        assert lww.get("k001") == f"k001:{VALUE}"
    async with maps.holding("m"):  # the whole map, pinned while the block runs
        assert len(lww.items()) == 100
        assert maps.hot.used > BUDGET.budget_bytes
    assert maps.hot.used <= BUDGET.high_bytes
    assert lww.merkle.root_hash == root
    assert maps.hot.loads >= len(cold)  # every cold value was loaded (some twice)
    await backend.close()


async def test_values_not_yet_committed_or_pinned_are_never_evicted(clock: Any) -> None:
    backend = GatedBackend()
    await backend.initialize()
    maps = MapRegistry(HLC("s", clock))
    maps.set_budget(BUDGET)
    await maps.load(backend)
    async with StorageWriter(backend) as writer:
        maps.writer = writer
        await (await write(maps, [f"a{i}" for i in range(10)])).wait()
        maps.pin_map("m")
        backend.gate = anyio.Event()
        pending = await write(maps, [f"b{i}" for i in range(30)])
        lww = maps.lww("m")
        assert lww is not None
        assert lww.cold_keys() == set()  # a* pinned, b* not in storage yet
        maps.unpin_map("m")
        assert lww.cold_keys() == {f"a{i}" for i in range(10)}
        assert not any(lww.is_cold(f"b{i}") for i in range(30))
        backend.gate.set()
        await pending.wait()
        maps.enforce_budget()
        assert any(lww.is_cold(f"b{i}") for i in range(30))
    await backend.close()


async def test_a_value_storage_lost_is_a_storage_error(clock: Any) -> None:
    backend = MemoryBackend()
    await backend.initialize()
    maps = MapRegistry(HLC("s", clock))
    maps.set_budget(BUDGET)
    await maps.load(backend)
    async with StorageWriter(backend) as writer:
        maps.writer = writer
        await (await write(maps, [f"k{i:03}" for i in range(40)])).wait()
        maps.enforce_budget()
    await backend.store_batch([DeleteKey("m", "k000")])
    with pytest.raises(StorageError, match="does not hold key 'k000'"):
        async with maps.holding("m", ["k000"]):
            pass
    with pytest.raises(RuntimeError, match="before maps are loaded"):
        maps.set_budget(BUDGET)
    await backend.close()


class ArchivingMemory(MemoryBackend):
    """Memory storage that reports map `old` as archived until it is loaded once."""

    def __init__(self) -> None:
        super().__init__()
        self.archived: dict[str, MapKind] = {"old": "lww"}
        self.restores = 0

    async def archived_maps(self) -> dict[str, MapKind]:
        return dict(self.archived)

    async def load_map(self, name: str) -> MapSnapshot | None:
        if name in self.archived:
            del self.archived[name]
            self.restores += 1
        return await super().load_map(name)


async def test_an_archived_map_is_loaded_once_when_first_held(clock: Any) -> None:
    backend = ArchivingMemory()
    await backend.initialize()
    await backend.store_batch([PutRecord("old", "k", LWWRecord("v", Timestamp(T, 0, "c")))])
    maps = MapRegistry(HLC("s", clock))
    restored: list[str] = []
    maps.on_restore.append(restored.append)
    await maps.load(backend)
    assert maps.kind("old") == "lww"
    assert maps.lww("old") is None
    assert maps.tiered
    with maps.recording(), pytest.raises(RuntimeError, match="archived"):
        maps.merge_lww("old", "k2", LWWRecord("w", Timestamp(T, 1, "c")))
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(maps.ensure_loaded, "old")
    lww = maps.lww("old")
    assert lww is not None
    assert lww.get("k") == "v"
    assert backend.restores == 1
    assert restored == ["old"]
    assert not maps.tiered
    await backend.close()


async def test_evict_stored_takes_only_committed_unpinned_values_of_that_timestamp(
    clock: Any,
) -> None:
    """`evict_stored` (values whose storage moved, e.g. to an archive) leaves alone a
    value written since, one pinned by a request and one whose commit is pending."""
    backend = GatedBackend()
    await backend.initialize()
    maps = MapRegistry(HLC("s", clock))
    maps.set_budget(MemoryBudget(budget_bytes=1 << 30))
    await maps.load(backend)
    hot = maps.hot
    assert hot is not None
    async with StorageWriter(backend) as writer:
        maps.writer = writer
        await (await write(maps, ["a", "b", "c", "d"])).wait()
        stamp = Timestamp(T, 0, "c")
        await (await write(maps, ["b"], millis=T + 1)).wait()  # written since
        backend.gate = anyio.Event()
        pending = await write(maps, ["d"], millis=T + 2)
        stamps = dict.fromkeys(["a", "b", "c", "d", "unknown"], stamp)
        stamps["d"] = Timestamp(T + 2, 0, "c")
        async with maps.holding("m", ["c"]):
            assert maps.evict_stored("m", stamps) == 1
        lww = maps.lww("m")
        assert lww is not None
        assert lww.cold_keys() == {"a"}
        assert ("m", "a") not in hot.lru
        assert maps.evict_stored("nope", stamps) == 0
        backend.gate.set()
        await pending.wait()
        assert maps.evict_stored("m", stamps) == 2  # c unpinned, d committed
        assert lww.cold_keys() == {"a", "c", "d"}
