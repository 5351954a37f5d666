"""Map values under a storage memory budget (topgun/server/maps.py, hotset.py): eviction of
the least recently used committed values (LWW values, OR-Map keys), pins, loads of cold
values, archived maps, start-up page by page."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import anyio
import pytest

from topgun.crdt import HLC, LWWRecord, ORMapRecord, Timestamp
from topgun.server.maps import MapRegistry
from topgun.storage import (
    AddORRecord,
    Change,
    DeleteKey,
    MapKind,
    MapPage,
    MapSnapshot,
    MemoryBackend,
    MemoryBudget,
    PutRecord,
    RemoveORTag,
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
        held = await maps.hold("m")  # the whole map, as a request reading every row
        backend.gate = anyio.Event()
        pending = await write(maps, [f"b{i}" for i in range(30)])
        lww = maps.lww("m")
        assert lww is not None
        assert lww.cold_keys() == set()  # a* pinned, b* not in storage yet
        held.release()
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


def or_value(key: str) -> dict[str, Any]:
    return {"key": key, "text": VALUE}


async def add_or(maps: MapRegistry, keys: Iterable[str], millis: int = T) -> Any:
    with maps.recording() as recording:
        for i, key in enumerate(keys):
            stamp = Timestamp(millis, i, "c")
            maps.add_or("o", key, ORMapRecord(or_value(key), stamp, str(stamp)))
    return await maps.persist(recording)


async def test_or_map_keys_are_evicted_and_loaded_back_with_their_hashes(clock: Any) -> None:
    backend = MemoryBackend()
    await backend.initialize()
    maps = MapRegistry(HLC("s", clock))
    maps.set_budget(BUDGET)
    await maps.load(backend)
    assert maps.hot is not None
    async with StorageWriter(backend) as writer:
        maps.writer = writer
        for i in range(50):  # two records per key, 5x the budget in all
            await (await add_or(maps, [f"k{i:03}"], T + 2 * i)).wait()
            await (await add_or(maps, [f"k{i:03}"], T + 2 * i + 1)).wait()
            assert maps.hot.used <= BUDGET.budget_bytes
        ormap = maps.ormap("o")
        assert ormap is not None
        cold = ormap.cold_keys()
        assert len(cold) >= 40
        assert "k000" in cold
        root = ormap.merkle.root_hash
        async with maps.holding("o", ["k000"]):
            assert ormap.values("k000") == [or_value("k000")] * 2
        # A removal of a cold key's tag: the write path loads the key first.
        tag = ormap.records("k001")[0].tag
        assert maps.or_write_keys("o", "other", tag) == ["other", "k001"]
        async with maps.holding("o", maps.or_write_keys("o", "k001", tag)):
            with maps.recording() as recording:
                assert maps.tombstone_or("o", tag, "k001")
            await (await maps.persist(recording) or anyio.Event()).wait()
        assert ormap.merkle.root_hash != root
        async with maps.holding("o"):
            assert ormap.values("k001") == [or_value("k001")]
            assert len(ormap.keys()) == 50
    # What storage holds agrees with memory, tombstone included.
    reloaded = MapRegistry(HLC("s", clock))
    await reloaded.load(backend)
    again = reloaded.ormap("o")
    assert again is not None
    assert again.merkle.root_hash == ormap.merkle.root_hash
    assert again.is_tombstoned(tag)
    await backend.close()


async def test_changes_not_yet_handed_to_storage_are_never_evicted(clock: Any) -> None:
    backend = MemoryBackend()
    await backend.initialize()
    maps = MapRegistry(HLC("s", clock))
    maps.set_budget(BUDGET)
    await maps.load(backend)
    with maps.recording():  # 1.5x the budget, not persisted yet
        for i in range(30):
            maps.merge_lww("m", f"k{i}", LWWRecord(VALUE, Timestamp(T, i, "c")))
    assert maps.enforce_budget() == 0
    lww = maps.lww("m")
    assert lww is not None
    assert lww.cold_keys() == set()
    await backend.close()


class CountingMemory(MemoryBackend):
    """Memory storage that counts whole-map loads and pages."""

    def __init__(self) -> None:
        super().__init__()
        self.pages = self.whole = 0

    async def load_map(self, name: str) -> MapSnapshot | None:
        self.whole += 1
        return await super().load_map(name)

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        self.pages += 1
        return await super().load_page(name, after, limit)


async def test_a_start_under_a_budget_loads_page_by_page_within_the_budget(clock: Any) -> None:
    backend = CountingMemory()
    await backend.initialize()
    stamps = [Timestamp(T, i, "c") for i in range(100)]
    await backend.store_batch(
        [PutRecord("m", f"k{i:03}", LWWRecord(f"{i}:{VALUE}", stamps[i])) for i in range(100)]
        + [
            AddORRecord("o", f"k{i:03}", ORMapRecord(or_value(f"k{i:03}"), s, str(s)))
            for i, s in enumerate(stamps)
        ]
        + [RemoveORTag("o", str(stamps[5])), RemoveORTag("o", str(Timestamp(T, 999, "c")))]
    )
    plain = MapRegistry(HLC("s", clock))
    await plain.load(backend)
    assert (backend.whole, backend.pages) == (2, 0)  # no budget: whole maps, as before
    maps = MapRegistry(HLC("s", clock))
    maps.set_budget(BUDGET)
    await maps.load(backend)
    assert backend.whole == 2
    assert backend.pages >= 10
    hot = maps.hot
    assert hot is not None
    assert hot.peak <= BUDGET.budget_bytes  # never much past the high-water mark
    lww, ormap = maps.lww("m"), maps.ormap("o")
    plain_lww, plain_or = plain.lww("m"), plain.ormap("o")
    assert lww is not None
    assert ormap is not None
    assert plain_lww is not None
    assert plain_or is not None
    for crdt, model in ((lww, plain_lww), (ormap, plain_or)):
        assert len(crdt.cold_keys()) >= 70
        assert crdt.merkle.root_hash == model.merkle.root_hash
    async with maps.holding("m"):
        assert lww.items() == plain_lww.items()
    async with maps.holding("o"):
        assert {k: ormap.values(k) for k in ormap.all_keys()} == {
            k: plain_or.values(k) for k in plain_or.all_keys()
        }
        assert ormap.tombstones == plain_or.tombstones
    assert hot.peak > BUDGET.budget_bytes  # holding a whole map took it past
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
