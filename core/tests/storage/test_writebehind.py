"""The write-behind wrapper: the storage contract over memory and SQLite, and what it adds
(read-your-writes, coalescing, retry, backpressure, durability marks, drain)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import make_plugin_manager
from topgun.storage import (
    AddORRecord,
    Change,
    CodecPipeline,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MemoryBackend,
    MemoryStore,
    PutMeta,
    PutRecord,
    RemoveORTag,
    SQLiteBackend,
    StorageConfigError,
    StorageFullError,
    StorageWriter,
    WriteBehind,
    WriteBehindConfig,
    open_storage,
)
from topgun.storage.conformance import BackendConformance, OpenBackend

pytestmark = pytest.mark.anyio

FAST = WriteBehindConfig(flush_interval_ms=5, retry_min_ms=1, retry_max_ms=20)


class TestWriteBehindOverMemory(BackendConformance):
    @pytest.fixture
    def open_backend(self) -> OpenBackend:
        store = MemoryStore()

        def open_backend(codecs: CodecPipeline | None = None) -> WriteBehind:
            return WriteBehind(MemoryBackend(codecs=codecs, store=store), FAST)

        return open_backend


class TestWriteBehindOverSQLite(BackendConformance):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> OpenBackend:
        def open_backend(codecs: CodecPipeline | None = None) -> WriteBehind:
            return WriteBehind(SQLiteBackend(tmp_path / "topgun.db", codecs=codecs), FAST)

        return open_backend


class Flaky(MemoryBackend):
    """A memory backend whose `store_batch` raises while `failing`, recording batches."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.batches: list[list[Change]] = []
        self.attempts = 0
        self.attempted = anyio.Event()

    async def store_batch(self, changes: Sequence[Change]) -> None:
        self.attempts += 1
        self.attempted.set()
        if self.failing:
            raise ConnectionError("backend down")
        await super().store_batch(changes)
        self.batches.append(list(changes))


def put(key: str, millis: int, value: object = "v", name: str = "m") -> PutRecord:
    return PutRecord(name, key, LWWRecord(value, Timestamp(millis, 0, "n")))


async def until(condition: object, deadline: float = 10.0) -> None:
    """Poll `condition()` until true (a deadline, never a fixed sleep)."""
    with anyio.fail_after(deadline):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.005)


async def test_reads_see_staged_writes_before_they_are_flushed() -> None:
    inner = Flaky()
    wrapper = WriteBehind(inner, WriteBehindConfig(flush_interval_ms=60_000))
    await wrapper.initialize()
    record = ORMapRecord("x", Timestamp(1, 0, "n"), str(Timestamp(1, 0, "n")))
    await wrapper.store_batch(
        [
            put("a", 1),
            put("b", 1),
            PutMeta("ns", "k", b"v"),
            AddORRecord("o", "k", record),
        ]
    )
    await wrapper.store_batch([DeleteKey("m", "b"), RemoveORTag("o", record.tag)])
    assert inner.batches == []
    assert await wrapper.list_maps() == [MapInfo("m", "lww"), MapInfo("o", "ormap")]
    snapshot = await wrapper.load_map("m")
    assert isinstance(snapshot, LWWSnapshot)
    assert snapshot.records == {"a": LWWRecord("v", Timestamp(1, 0, "n"))}
    assert await wrapper.load_keys("m", ["b"]) == LWWSnapshot("m", {})
    assert await wrapper.load_meta("ns") == {"k": b"v"}
    o = await wrapper.load_map("o")
    assert o is not None
    assert o.records == {}
    await wrapper.close()  # drains
    assert len(inner.batches) == 1
    reopened = MemoryBackend(store=inner.store)
    await reopened.initialize()
    assert await reopened.load_map("m") == snapshot
    assert await reopened.load_meta("ns") == {"k": b"v"}


async def test_repeated_writes_to_a_key_are_coalesced() -> None:
    inner = Flaky()
    wrapper = WriteBehind(inner, WriteBehindConfig(flush_interval_ms=60_000))
    await wrapper.initialize()
    for millis in range(1, 101):
        await wrapper.store_batch([put("hot", millis, millis), PutMeta("seq", "m", b"%d" % millis)])
    await wrapper.store_batch([put("hot", 50, "older")])  # older than staged: dropped
    await wrapper.store_batch([DeleteKey("m", "hot"), put("hot", 10, "after delete")])
    assert wrapper.staged == 4
    await wrapper.close()
    assert inner.batches == [
        [
            put("hot", 100, 100),
            PutMeta("seq", "m", b"100"),
            DeleteKey("m", "hot"),
            put("hot", 10, "after delete"),
        ]
    ]


async def test_flushes_by_batch_size_without_waiting_for_the_interval() -> None:
    inner = Flaky()
    wrapper = WriteBehind(inner, WriteBehindConfig(flush_interval_ms=60_000, flush_batch=10))
    await wrapper.initialize()
    await wrapper.store_batch([put(f"k{i}", 1) for i in range(25)])
    await until(lambda: sum(map(len, inner.batches)) >= 20)
    assert [len(batch) for batch in inner.batches[:2]] == [10, 10]
    await wrapper.close()
    assert sum(map(len, inner.batches)) == 25


async def test_a_failing_backend_is_retried_and_nothing_is_lost() -> None:
    inner = Flaky()
    inner.failing = True
    wrapper = WriteBehind(inner, FAST)
    await wrapper.initialize()
    await wrapper.store_batch([put("a", 1)])
    mark = wrapper.durability_mark()
    await until(lambda: inner.attempts >= 3)
    status = wrapper.status()
    assert not status.available
    assert status.problem is not None
    assert "backend down" in status.problem
    assert status.staged == 1
    assert status.retries >= 2
    with anyio.move_on_after(0.05):
        await wrapper.wait_durable(mark)
        pytest.fail("durable while the backend refuses every flush")
    inner.failing = False
    with anyio.fail_after(10):
        await wrapper.wait_durable(mark)
    assert wrapper.status().available
    assert wrapper.status().staged == 0
    await wrapper.close()
    assert inner.batches == [[put("a", 1)]]


async def test_the_writer_acknowledges_only_flushed_changes() -> None:
    inner = Flaky()
    inner.failing = True
    wrapper = WriteBehind(inner, FAST)
    await wrapper.initialize()
    async with StorageWriter(wrapper) as writer:
        commit = await writer.submit([put("a", 1)])
        await until(lambda: inner.attempts >= 2)
        assert not commit.done  # staged, and the backend down: not PERSISTED
        inner.failing = False
        with anyio.fail_after(10):
            await commit.wait()
        assert inner.batches == [[put("a", 1)]]
    await wrapper.close()


async def test_a_full_staging_area_makes_writes_wait() -> None:
    inner = Flaky()
    inner.failing = True
    wrapper = WriteBehind(inner, WriteBehindConfig(max_staged=10, retry_min_ms=1, retry_max_ms=5))
    await wrapper.initialize()
    await wrapper.store_batch([put(f"k{i}", 1) for i in range(10)])
    stored = anyio.Event()

    async def late_write() -> None:
        await wrapper.store_batch([put("late", 1)])
        stored.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(late_write)
        await until(lambda: inner.attempts >= 2)
        assert not stored.is_set()
        inner.failing = False
        with anyio.fail_after(10):
            await stored.wait()
    await wrapper.close()
    assert sum(map(len, inner.batches)) == 11


async def test_a_full_staging_area_can_refuse_with_a_clear_error() -> None:
    inner = Flaky()
    inner.failing = True
    config = WriteBehindConfig(max_staged=5, retry_min_ms=1, retry_max_ms=5)
    wrapper = WriteBehind(inner, config, when_full="refuse")
    await wrapper.initialize()
    await wrapper.store_batch([put(f"k{i}", 1) for i in range(5)])
    with pytest.raises(StorageFullError, match=r"holds 5 change.*at most 5: 1 more refused"):
        await wrapper.store_batch([put("refused", 1)])
    inner.failing = False
    await wrapper.close()
    snapshot = await _reopened(inner.store)
    assert sorted(snapshot) == [f"k{i}" for i in range(5)]


async def _reopened(store: MemoryStore) -> dict[str, LWWRecord]:
    backend = MemoryBackend(store=store)
    await backend.initialize()
    snapshot = await backend.load_map("m")
    assert isinstance(snapshot, LWWSnapshot)
    return snapshot.records


async def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="retry_min_ms"):
        WriteBehindConfig(retry_min_ms=10, retry_max_ms=1)
    with pytest.raises(ValueError, match="when_full"):
        WriteBehind(MemoryBackend(), when_full="drop")  # type: ignore[arg-type]
    pm = make_plugin_manager(entry_points=(), environ={})
    with pytest.raises(StorageConfigError, match="write_behind"):
        open_storage(
            pm,
            data_dir=".",
            backend="memory",
            wrappers=["write-behind"],
            sections={"write_behind": object()},
        )
    backend = open_storage(
        pm,
        data_dir=".",
        backend="memory",
        wrappers=["write-behind"],
        sections={"write_behind": WriteBehindConfig(max_staged=7)},
    )
    assert isinstance(backend, WriteBehind)
    assert backend.config.max_staged == 7
