"""Archived keys: the old keys of a live LWW map moved into key segments, read back by
`load_map` without leaving the archive, restored byte for byte by the next read, write or
delete that names them, and never taking a write made while they were being archived."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from topgun_tiered import (
    Archive,
    ArchiveCorruptError,
    DirectoryStore,
    TieredBackend,
    TieredOptions,
)

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.storage import (
    AddORRecord,
    Change,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MapSnapshot,
    PutRecord,
    SQLiteBackend,
    StorageConfigError,
    open_storage,
)

pytestmark = pytest.mark.anyio

OLD = 1_700_000_000_000
NEW = OLD + 86_400_000
HORIZON = OLD + 1000


def ts(millis: int, counter: int = 0) -> Timestamp:
    return Timestamp(millis, counter, "n1")


CHANGES = [
    PutRecord("m", "a", LWWRecord({"name": "Ada", "ratio": 1.0, "n": [1, 1.0, True]}, ts(OLD))),
    PutRecord("m", "b", LWWRecord(b"\x00\xff raw", ts(OLD, 1))),
    PutRecord("m", "c", LWWRecord("short-lived", ts(OLD, 2), 60_000)),
    PutRecord("m", "d", LWWRecord("é" * 100, ts(OLD, 3))),
    PutRecord("m", "gone", LWWRecord(None, ts(OLD, 4))),  # tombstones stay in storage
    PutRecord("m", "fresh", LWWRecord({"n": 2}, ts(NEW))),  # too new
]
ARCHIVABLE = ["a", "b", "c", "d"]


class GatedStore(DirectoryStore):
    """A directory whose segment uploads wait for `go` (after setting `uploading`)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.uploading = anyio.Event()
        self.go = anyio.Event()

    async def put(self, name: str, data: bytes) -> None:
        if name.startswith("segments/"):
            self.uploading.set()
            await self.go.wait()
        await super().put(name, data)


def open_tiered(data_dir: Path, store: DirectoryStore | None = None) -> TieredBackend:
    return TieredBackend(
        SQLiteBackend(data_dir / "topgun.db", synchronous="normal"),
        TieredOptions(),
        Archive(store or DirectoryStore(data_dir / "archive")),
    )


async def filled(data_dir: Path, store: DirectoryStore | None = None) -> TieredBackend:
    backend = open_tiered(data_dir, store)
    await backend.initialize()
    await backend.store_batch(CHANGES)
    return backend


async def stored(backend: TieredBackend, name: str = "m") -> dict[str, LWWRecord]:
    """What the wrapped backend itself holds for map `name`."""
    snapshot = await backend.inner.load_map(name)
    assert isinstance(snapshot, LWWSnapshot)
    return dict(snapshot.records)


async def test_old_keys_archive_into_a_key_segment_and_round_trip_byte_for_byte(
    tmp_path: Path,
) -> None:
    backend = await filled(tmp_path)
    before = msgspec.msgpack.encode(await backend.load_map("m"))
    assert await backend.old_keys("m", HORIZON) == ARCHIVABLE
    moved = await backend.archive_keys("m", [*ARCHIVABLE, "gone", "fresh"], before_ms=HORIZON)
    assert moved is not None
    assert moved.keys == ARCHIVABLE
    assert moved.stamps == {
        key: c.record.timestamp for c in CHANGES if (key := c.key) in moved.stamps
    }
    assert sorted(moved.stamps) == ARCHIVABLE
    assert sorted(await stored(backend)) == ["fresh", "gone"]  # the map stays live
    assert await backend.archive_keys("m", ARCHIVABLE) is None  # archived already
    assert (tmp_path / "archive" / moved.info.segment).stat().st_size == moved.info.stored_bytes
    assert (moved.info.count, moved.info.first_key, moved.info.last_key) == (4, "a", "d")
    manifest = (tmp_path / "archive" / "manifest.json").read_text()
    assert '"b"' not in manifest  # keys are listed in the key index, not the manifest
    assert (tmp_path / "archive" / moved.info.index).is_file()
    # load_map reads archived keys from their segment, which stays archived.
    assert msgspec.msgpack.encode(await backend.load_map("m")) == before
    assert backend.archive.keys == {"m": dict.fromkeys(ARCHIVABLE, moved.info.segment)}
    assert await backend.list_maps() == [MapInfo("m", "lww")]
    assert await backend.archived_maps() == {}  # not archived whole
    (status,) = await backend.tier_status()
    assert (status.tier, status.records, status.archived_keys) == ("storage+archive", 2, 4)
    assert backend.archived_totals() == (4, moved.info.stored_bytes)
    await backend.close()

    again = open_tiered(tmp_path)  # the manifest outlives the process
    await again.initialize()
    assert again.archive.keys == {"m": dict.fromkeys(ARCHIVABLE, moved.info.segment)}
    found = await again.load_keys("m", ["b", "fresh"])  # a read restores the segment
    assert isinstance(found, LWWSnapshot)
    assert found.records == {"b": CHANGES[1].record, "fresh": CHANGES[5].record}
    assert again.archive.keys == {}
    assert again.archive.manifest.key_segments == {}
    assert not (tmp_path / "archive" / moved.info.segment).exists()
    assert sorted(await stored(again)) == sorted([*ARCHIVABLE, "gone", "fresh"])
    assert msgspec.msgpack.encode(await again.load_map("m")) == before
    assert (again.restores, again.restored_records) == (1, 4)
    await again.close()


async def test_a_write_racing_an_archive_of_its_key_is_never_lost(tmp_path: Path) -> None:
    """Writes and deletes that land while the segment is uploaded keep their keys in
    storage; the other keys are archived, and restoring them later takes nothing newer."""
    store = GatedStore(tmp_path / "archive")
    backend = await filled(tmp_path, store)
    newer = LWWRecord("Ada, written while archiving", ts(OLD, 9))
    result: list[object] = []

    async def archive() -> None:
        result.append(await backend.archive_keys("m", ARCHIVABLE, before_ms=HORIZON))

    async with anyio.create_task_group() as tg:
        tg.start_soon(archive)
        await store.uploading.wait()  # the records are read; the segment is on its way
        await backend.store_batch([PutRecord("m", "a", newer)])
        await backend.delete("m", ["b"])
        store.go.set()
    (moved,) = result
    assert moved is not None
    assert moved.keys == ["c", "d"]
    held = await stored(backend)
    assert held["a"] == newer
    assert "b" not in held
    assert sorted(held) == ["a", "fresh", "gone"]
    whole = await backend.load_map("m")
    assert isinstance(whole, LWWSnapshot)
    assert whole.records["a"] == newer
    assert "b" not in whole.records
    assert whole.records["c"] == CHANGES[2].record
    assert await backend.restore("m") == 2
    held = await stored(backend)
    assert held["a"] == newer
    assert "b" not in held
    assert held["d"] == CHANGES[3].record
    await backend.close()


class SlowSQLite(SQLiteBackend):
    """SQLite whose transactions wait for `go` once `gate` is set (after `entered`)."""

    gate = False
    entered = anyio.Event()
    go = anyio.Event()

    async def store_batch(self, changes: Sequence[Change]) -> None:
        if self.gate:
            self.entered.set()
            await self.go.wait()
        await super().store_batch(changes)


async def test_a_write_in_flight_when_archiving_starts_is_never_lost(tmp_path: Path) -> None:
    """With nothing archived writes take no lock; archiving waits for those in flight
    before it reads what it moves."""
    inner = SlowSQLite(tmp_path / "topgun.db", synchronous="normal")
    inner.entered, inner.go = anyio.Event(), anyio.Event()
    backend = TieredBackend(inner, TieredOptions(), Archive(DirectoryStore(tmp_path / "a")))
    await backend.initialize()
    await backend.store_batch(CHANGES)
    newer = LWWRecord("Ada, in flight", ts(OLD, 9))
    result: list[object] = []
    async with anyio.create_task_group() as tg:
        inner.gate = True
        tg.start_soon(backend.store_batch, [PutRecord("m", "a", newer)])
        await inner.entered.wait()  # the write is in flight, without the lock
        inner.gate = False

        async def archive() -> None:
            result.append(await backend.archive_keys("m", ARCHIVABLE, before_ms=HORIZON))

        tg.start_soon(archive)
        await anyio.wait_all_tasks_blocked()
        assert result == []  # archiving waits for the write
        inner.go.set()
    whole = await backend.load_map("m")
    assert isinstance(whole, LWWSnapshot)
    assert whole.records["a"] == newer
    await backend.restore("m")
    assert (await stored(backend))["a"] == newer
    await backend.close()


class SlowReads(SQLiteBackend):
    """SQLite whose next `load_keys` waits for `go` (after setting `entered`)."""

    entered = anyio.Event()
    go = anyio.Event()
    gate = False

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        if self.gate:
            self.gate = False
            self.entered.set()
            await self.go.wait()
        return await super().load_keys(name, keys)


async def test_a_read_that_misses_keys_archived_meanwhile_asks_again(tmp_path: Path) -> None:
    """A cold load reading the backend while its keys leave for a segment finds them
    there: it sees the move and restores them."""
    inner = SlowReads(tmp_path / "topgun.db", synchronous="normal")
    inner.entered, inner.go = anyio.Event(), anyio.Event()
    backend = TieredBackend(inner, TieredOptions(), Archive(DirectoryStore(tmp_path / "a")))
    await backend.initialize()
    await backend.store_batch(CHANGES)
    found: list[MapSnapshot | None] = []

    async def read() -> None:
        found.append(await backend.load_keys("m", ["a"]))

    async with anyio.create_task_group() as tg:
        inner.gate = True
        tg.start_soon(read)
        await inner.entered.wait()  # the read is about to ask the backend
        moved = await backend.archive_keys("m", ARCHIVABLE)
        assert moved is not None
        assert moved.keys == ARCHIVABLE
        inner.go.set()
    (snapshot,) = found
    assert isinstance(snapshot, LWWSnapshot)
    assert snapshot.records == {"a": CHANGES[0].record}
    assert backend.restores == 1
    await backend.close()


async def test_writes_and_deletes_of_archived_keys_restore_their_segment_first(
    tmp_path: Path,
) -> None:
    backend = await filled(tmp_path)
    await backend.archive_keys("m", ARCHIVABLE)
    newer = LWWRecord("newer", ts(NEW, 1))
    await backend.store_batch([PutRecord("m", "a", newer)])
    assert backend.archive.keys == {}
    held = await stored(backend)
    assert held["a"] == newer
    assert held["b"] == CHANGES[1].record  # the rest of the segment came back too
    await backend.archive_keys("m", ["b", "c"])
    stale = LWWRecord("older than the archived record", ts(OLD - 1))
    await backend.store_batch([PutRecord("m", "b", stale)])
    assert (await stored(backend))["b"] == CHANGES[1].record  # the merge keeps the newer
    await backend.archive_keys("m", ["c", "d"])
    await backend.delete("m", ["c"])
    await backend.archive_keys("m", ["a", "d"])
    await backend.store_batch([DeleteKey("m", "a")])
    whole = await backend.load_map("m")
    assert isinstance(whole, LWWSnapshot)
    assert "c" not in whole.records
    assert "a" not in whole.records
    assert whole.records["d"] == CHANGES[3].record
    assert backend.archive.keys == {}
    await backend.close()


async def test_a_damaged_key_segment_is_an_error_and_the_keys_stay_archived(
    tmp_path: Path,
) -> None:
    backend = await filled(tmp_path)
    moved = await backend.archive_keys("m", ARCHIVABLE)
    assert moved is not None
    await backend.close()
    index = tmp_path / "archive" / moved.info.index
    listed = index.read_bytes()
    index.write_bytes(listed[:-2] + b"zz")
    with pytest.raises(ArchiveCorruptError, match=r"key index .* is damaged"):
        await open_tiered(tmp_path).initialize()
    index.write_bytes(listed)
    backend = open_tiered(tmp_path)
    await backend.initialize()
    segment = tmp_path / "archive" / moved.info.segment
    good = segment.read_bytes()
    segment.write_bytes(good[:-3] + b"xyz")
    with pytest.raises(ArchiveCorruptError, match="is damaged"):
        await backend.load_keys("m", ["a"])
    with pytest.raises(ArchiveCorruptError, match="is damaged"):
        await backend.load_map("m")
    assert sorted(backend.archive.keys["m"]) == ARCHIVABLE
    segment.unlink()
    with pytest.raises(ArchiveCorruptError, match="is missing"):
        await backend.store_batch([PutRecord("m", "a", LWWRecord("x", ts(NEW)))])
    assert "a" not in await stored(backend)  # the write was not applied either
    segment.write_bytes(good)
    found = await backend.load_keys("m", ["a"])
    assert isinstance(found, LWWSnapshot)
    assert found.records["a"] == CHANGES[0].record
    await backend.close()


async def test_archiving_a_map_whole_takes_its_key_segments_in(tmp_path: Path) -> None:
    backend = await filled(tmp_path)
    before = msgspec.msgpack.encode(await backend.load_map("m"))
    keys = await backend.archive_keys("m", ARCHIVABLE)
    assert keys is not None
    info = await backend.archive_map("m")
    assert info.records == len(CHANGES)
    assert backend.archive.manifest.key_segments == {}
    assert not (tmp_path / "archive" / keys.info.segment).exists()
    assert await backend.archived_maps() == {"m": "lww"}
    assert await backend.restore("m") == len(CHANGES)
    assert msgspec.msgpack.encode(await backend.load_map("m")) == before
    await backend.close()


async def test_only_lww_maps_have_keys_archived(tmp_path: Path) -> None:
    backend = await filled(tmp_path)
    tag = str(ts(OLD))
    await backend.store_batch([AddORRecord("tags", "t", ORMapRecord("red", ts(OLD), tag))])
    with pytest.raises(StorageConfigError, match="is an OR-Map"):
        await backend.archive_keys("tags", ["t"])
    await backend.archive_map("tags")
    with pytest.raises(StorageConfigError, match="archived whole"):
        await backend.archive_keys("tags", ["t"])
    assert await backend.archive_keys("m", ["nope"]) is None
    await backend.close()


async def test_archived_keys_round_trip_over_write_behind(tmp_path: Path, kit: Any) -> None:
    """Over a write-behind backend (writes acknowledged before they are durable) archived
    keys leave, come back, and survive a reopen exactly."""

    def open_backend() -> TieredBackend:
        backend = open_storage(
            kit.plugin_manager(),
            data_dir=tmp_path,
            backend="sqlite",
            wrappers=["write-behind", "tiered"],
            wrapper_options={"tiered": {}},
        )
        assert isinstance(backend, TieredBackend)
        return backend

    backend = open_backend()
    await backend.initialize()
    await backend.store_batch(CHANGES)
    moved = await backend.archive_keys("m", ARCHIVABLE, before_ms=HORIZON)
    assert moved is not None
    assert moved.keys == ARCHIVABLE
    newer = LWWRecord("newer", ts(NEW, 5))
    await backend.store_batch([PutRecord("m", "fresh", newer)])  # not archived: no restore
    await backend.close()

    again = open_backend()
    await again.initialize()
    assert sorted(again.archive.keys["m"]) == ARCHIVABLE
    held = await again.inner.load_map("m")
    assert held is not None
    assert sorted(held.records) == ["fresh", "gone"]
    found = await again.load_keys("m", ["c"])
    assert isinstance(found, LWWSnapshot)
    assert found.records["c"] == CHANGES[2].record
    await again.store_batch([PutRecord("m", "fresh", CHANGES[5].record)])  # older: kept
    whole = await again.load_map("m")
    assert isinstance(whole, LWWSnapshot)
    assert whole.records["fresh"] == newer
    assert {k: whole.records[k] for k in ARCHIVABLE} == {
        c.key: c.record for c in CHANGES if c.key in ARCHIVABLE
    }
    await again.close()
