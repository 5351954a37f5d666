"""`TieredBackend`: the storage wrapper behind `[storage] wrappers = ["tiered"]`.

It forwards the storage contract to the backend it wraps and adds two tiers around it:

- **memory**: its `memory_budget` makes the server keep map values (LWW and OR-Map) within
  a RAM budget (`topgun.storage.BudgetedBackend`); the values it evicts stay in the wrapped
  backend and come back through `load_keys`, and at start maps load page by page
  (`load_page`) so that loading never holds much more than the budget.
- **archive**: maps moved out by `archive_map` live as compressed segments in an object
  store (a directory or S3). They stay listed by `list_maps` and `archived_maps`, so the
  server does not load them at start; any read or write of one first restores it into the
  wrapped backend (`restore`) and removes it from the archive.
- **archived keys**: `archive_keys` moves some keys of a live LWW map into a key segment
  (beside writes: a key written meanwhile stays in the backend). `load_map` still returns
  them (read from their segments, which stay archived); `load_keys`, a write or a delete of
  an archived key restores its segment into the wrapped backend first.

One lock orders writes (`store_batch`, `delete`) with restores and with the two short
steps of `archive_keys` that decide what it takes and drop it from the backend; the
segment upload between them runs beside writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import msgspec

from topgun.crdt import Timestamp
from topgun.storage import (
    AddORRecord,
    BackendConfig,
    Change,
    DeferredDurability,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MapKind,
    MapPage,
    MapSnapshot,
    MemoryBudget,
    PagedBackend,
    PruneRecord,
    PutMeta,
    PutRecord,
    RecodableBackend,
    RemoveORTag,
    ReportsStatus,
    StorageBackend,
    StorageClosedError,
    StorageConfigError,
    StorageStatus,
    StoredValue,
    check_page_request,
    recodable_under,
)
from topgun_tiered.archive import (
    Archive,
    KeySegmentInfo,
    SegmentInfo,
    newest_millis,
    record_count,
)
from topgun_tiered.options import TieredOptions
from topgun_tiered.stores import DirectoryStore, ObjectStore, S3Store

RESTORE_BATCH = 5000
"""Changes per `store_batch` when a map comes back from the archive."""

Progress = Callable[[int], None]
"""Told how many more records were done."""


@dataclass(frozen=True, slots=True)
class MapStatus:
    """One map as `status` reports it."""

    name: str
    kind: MapKind
    tier: str
    """`"storage"` (in the wrapped backend), `"archive"` (archived whole) or
    `"storage+archive"` (some keys in key segments)."""
    records: int
    """In the wrapped backend (archived whole: in its segment)."""
    bytes: int
    """Storage: the msgpack size of its records; archive: the compressed segment's size."""
    newest_millis: int
    archived_keys: int = 0
    """Keys in key segments."""
    archived_bytes: int = 0
    """The compressed size of its key segments."""


@dataclass(frozen=True, slots=True)
class ArchivedKeys:
    """What one `archive_keys` moved: its key segment, and its keys with their timestamps."""

    info: KeySegmentInfo
    keys: list[str]
    stamps: dict[str, Timestamp]


def store_for(options: TieredOptions, data_dir: Path) -> ObjectStore:
    """The object store `options.archive` names."""
    if options.archive.startswith("s3://"):
        return S3Store.from_url(
            options.archive, endpoint_url=options.s3_endpoint_url, region=options.s3_region
        )
    return DirectoryStore(data_dir / options.archive)


def restore_changes(snapshot: MapSnapshot) -> list[Change]:
    """The storage changes that put `snapshot` back (tombstones before records)."""
    name = snapshot.name
    if isinstance(snapshot, LWWSnapshot):
        return [PutRecord(name, key, record) for key, record in snapshot.records.items()]
    changes: list[Change] = [
        RemoveORTag(name, tag, key) for tag, key in snapshot.tombstones.items()
    ]
    for key, records in snapshot.records.items():
        changes.extend(AddORRecord(name, key, record) for record in records)
    return changes


class TieredBackend:
    """A `StorageBackend` around `inner`, with a memory budget and an archive."""

    def __init__(
        self,
        inner: StorageBackend,
        options: TieredOptions,
        archive: Archive,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        options.check()
        self.inner = inner
        self.options = options
        self.archive = archive
        self._budget = options.memory_budget()
        self._clock = clock
        self._state: Literal["not initialized", "open", "closed"] = "not initialized"
        self._lock = anyio.Lock()
        self._archiving: dict[str, set[str]] = {}
        """Map -> the keys an `archive_keys` is moving now."""
        self._raced: dict[str, set[str]] = {}
        """Map -> the keys among those that were written or deleted meanwhile."""
        self._unlocked = 0
        """`store_batch` calls running without the lock (nothing was archived)."""
        self._drained: anyio.Event | None = None
        self._moves = 0
        """Counts key segments listed or restored (a `load_keys` that raced one re-reads)."""
        self.restores = 0
        """Maps and key segments restored since this backend was made."""
        self.restored_records = 0
        """Records (and OR tombstones) those restores brought back."""

    @property
    def memory_budget(self) -> MemoryBudget:
        return self._budget

    def now_ms(self) -> int:
        """The wrapper's clock (what ages are measured against), in milliseconds."""
        return int(self._clock() * 1000)

    def _check_open(self) -> None:
        if self._state != "open":
            raise StorageClosedError(f"the tiered storage is {self._state}")

    # -- the contract -------------------------------------------------------------------

    async def initialize(self) -> None:
        if self._state == "open":
            return
        if self._state == "closed":
            raise StorageClosedError("the tiered storage is closed; make a new one")
        await self.inner.initialize()
        try:
            await self.archive.open()
        except BaseException:
            await self.inner.close()
            raise
        self._state = "open"

    async def list_maps(self) -> list[MapInfo]:
        self._check_open()
        found = {info.name: info for info in await self.inner.list_maps()}
        for name in self.archive.keys:
            found.setdefault(name, MapInfo(name, "lww"))
        for name, kind in self.archive.kinds().items():
            found[name] = MapInfo(name, kind)
        return [found[name] for name in sorted(found)]

    async def archived_maps(self) -> dict[str, MapKind]:
        self._check_open()
        return self.archive.kinds()

    async def load_map(self, name: str) -> MapSnapshot | None:
        """The whole map: an archived map is restored first; archived keys are read from
        their segments (which stay archived)."""
        self._check_open()
        async with self._lock:
            await self._restore_map(name)
            return await self._load_whole(name)

    async def _load_whole(self, name: str) -> MapSnapshot | None:
        snapshot = await self.inner.load_map(name)
        segments = self.archive.segments_of(name)
        if not segments:
            return snapshot
        records = dict(snapshot.records) if isinstance(snapshot, LWWSnapshot) else {}
        for segment in segments:
            for key, record in (await self.archive.read_keys(segment)).records.items():
                current = records.get(key)
                if current is None or record.timestamp > current.timestamp:
                    records[key] = record  # both hold it after a crash mid-archive
        return LWWSnapshot(name, dict(sorted(records.items())))

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        """Those keys, from the wrapped backend; the archived ones (and an archived map)
        are restored into it first."""
        self._check_open()
        wanted = list(keys)
        moves = self._moves  # before the index is looked at: see `archive_keys`
        if name in self.archive.manifest.maps or self.archive.segments_of(name, wanted):
            async with self._lock:
                await self._restore_map(name)
                await self._restore_segments(self.archive.segments_of(name, wanted))
        snapshot = await self.inner.load_keys(name, wanted)
        if moves == self._moves or not isinstance(snapshot, LWWSnapshot):
            return snapshot
        missing = [key for key in wanted if key not in snapshot.records]
        if not missing:
            return snapshot
        async with self._lock:  # a key may have left for a segment while it was read
            await self._restore_segments(self.archive.segments_of(name, missing))
            again = await self.inner.load_keys(name, missing)
        if isinstance(again, LWWSnapshot):
            return LWWSnapshot(name, {**snapshot.records, **again.records})
        return snapshot

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        """The wrapped backend's page (its whole map as one page if it cannot page). A map
        with archived keys is one page too, its archived keys read from their segments, as
        `load_map` returns it: a segment holds keys of any range, so pages by key would read
        every segment again for each page."""
        check_page_request(after, limit)
        self._check_open()
        if name in self.archive.manifest.maps:
            async with self._lock:
                await self._restore_map(name)
        if self.archive.segments_of(name):
            async with self._lock:
                whole = await self._load_whole(name)
            if whole is None:
                return None
            assert isinstance(whole, LWWSnapshot)  # only LWW maps have archived keys
            rest = {k: r for k, r in whole.records.items() if after is None or k > after}
            return MapPage(LWWSnapshot(name, rest), None)
        if isinstance(self.inner, PagedBackend):
            return await self.inner.load_page(name, after, limit)
        whole = await self.inner.load_map(name)
        return None if whole is None else MapPage(whole, None)

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        self._check_open()
        return await self.inner.load_meta(namespace)

    async def store_batch(self, changes: Sequence[Change]) -> None:
        """Forward `changes`; an archived map or key they touch is restored first, and a
        key an `archive_keys` is moving stays in the backend."""
        self._check_open()
        archive = self.archive
        if not (self._lock.locked() or archive.manifest.maps or archive.keys or self._archiving):
            # Nothing archived, nothing being moved: no lock (whoever starts moving
            # takes the lock, then waits for these to finish).
            self._unlocked += 1
            try:
                await self.inner.store_batch(changes)
            finally:
                self._unlocked -= 1
                if not self._unlocked and self._drained is not None:
                    self._drained.set()
            return
        async with self._lock:
            if archive.manifest.maps or archive.keys or self._archiving:
                for change in changes:
                    if isinstance(change, PutMeta):
                        continue
                    name = change.map_name
                    await self._restore_map(name)
                    if isinstance(change, PutRecord | PruneRecord | DeleteKey):
                        await self._restore_segments(archive.segments_of(name, [change.key]))
                        self._race(name, [change.key])
            await self.inner.store_batch(changes)

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        self._check_open()
        doomed = list(keys)
        async with self._lock:
            await self._restore_map(name)
            await self._restore_segments(self.archive.segments_of(name, doomed))
            self._race(name, doomed)
            await self.inner.delete(name, doomed)

    async def _drain(self) -> None:
        """Wait until no `store_batch` runs without the lock (call it once new ones take
        it: holding the lock, or with a move registered in `_archiving`)."""
        while self._unlocked:
            if self._drained is None or self._drained.is_set():
                self._drained = anyio.Event()
            await self._drained.wait()

    def _race(self, name: str, keys: Iterable[str]) -> None:
        moving = self._archiving.get(name)
        if moving is not None:
            self._raced[name].update(key for key in keys if key in moving)

    async def close(self) -> None:
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        try:
            await self.inner.close()
        finally:
            await self.archive.close()

    # -- what the wrapped backend reports (the wrapper adds nothing) --------------------

    def status(self) -> StorageStatus:
        """The wrapped backend's status (always available if it reports none)."""
        inner = self.inner
        return inner.status() if isinstance(inner, ReportsStatus) else StorageStatus()

    def durability_mark(self) -> int:
        """The wrapped backend's mark (a write-behind inside): commits wait for it."""
        inner = self.inner
        return inner.durability_mark() if isinstance(inner, DeferredDurability) else 0

    async def wait_durable(self, mark: int) -> None:
        inner = self.inner
        if isinstance(inner, DeferredDurability):
            await inner.wait_durable(mark)

    # -- restoring (under the lock) -------------------------------------------------------

    async def _put_back(self, snapshot: MapSnapshot, progress: Progress | None) -> int:
        """Write `snapshot`'s records into the wrapped backend (merges: a newer stored
        record stays), durably; returns how many."""
        changes = restore_changes(snapshot)
        for start in range(0, len(changes), RESTORE_BATCH):
            batch = changes[start : start + RESTORE_BATCH]
            await self.inner.store_batch(batch)
            if progress is not None:
                progress(len(batch))
        await self.wait_durable(self.durability_mark())  # before the segment goes
        return len(changes)

    async def _restore_map(self, name: str, progress: Progress | None = None) -> int:
        if name not in self.archive.manifest.maps:
            return 0
        count = await self._put_back(await self.archive.read(name), progress)
        await self.archive.remove(name)
        self.restores += 1
        self.restored_records += count
        return count

    async def _restore_segments(
        self, segments: Sequence[str], progress: Progress | None = None
    ) -> int:
        count = 0
        for segment in segments:
            count += await self._put_back(await self.archive.read_keys(segment), progress)
        if segments:
            await self.archive.remove_keys(segments)
            self._moves += 1
            self.restores += len(segments)
            self.restored_records += count
        return count

    # -- tiers --------------------------------------------------------------------------

    async def restore(self, name: str, progress: Progress | None = None) -> int:
        """Bring map `name` back into the wrapped backend and out of the archive, whole or
        its archived keys; returns how many records (and tombstones) came back (0 if
        nothing of it is archived)."""
        self._check_open()
        async with self._lock:
            count = await self._restore_map(name, progress)
            return count + await self._restore_segments(self.archive.segments_of(name), progress)

    async def archive_map(self, name: str, progress: Progress | None = None) -> SegmentInfo:
        """Move map `name` (with its archived keys) from the wrapped backend into the
        archive whole (the server must not hold it: run this while no server uses the
        storage). `StorageConfigError` if it is not stored or is archived already."""
        self._check_open()
        async with self._lock:
            if name in self.archive.manifest.maps:
                raise StorageConfigError(f"map {name!r} is archived already")
            await self._drain()
            snapshot = await self._load_whole(name)
            if snapshot is None:
                raise StorageConfigError(f"map {name!r} is not stored")
            info = await self.archive.add(name, snapshot, self.now_ms())
            keys = set(snapshot.records)
            if not isinstance(snapshot, LWWSnapshot):
                keys.update(key for key in snapshot.tombstones.values() if key is not None)
            await self.inner.delete(name, sorted(keys))
            self._moves += 1
            if progress is not None:
                progress(record_count(snapshot))
            return info

    async def archive_keys(
        self, name: str, keys: Iterable[str], *, before_ms: int | None = None
    ) -> ArchivedKeys | None:
        """Move the stored values of `keys` of LWW map `name` into one new key segment;
        the map stays in the wrapped backend for its other keys. Takes live values only
        (not tombstones), not archived yet, and with `before_ms` only those written before
        it. Safe beside writes: a key written or deleted while the segment is uploaded
        stays in the backend. `None` if no key qualified; `StorageConfigError` for an
        archived map or an OR-Map."""
        self._check_open()
        wanted = sorted(set(keys))
        async with self._lock:
            if name in self.archive.manifest.maps:
                raise StorageConfigError(f"map {name!r} is archived whole already")
            if name in self._archiving:
                raise StorageConfigError(f"keys of map {name!r} are being archived already")
            held = self.archive.keys.get(name, {})
            wanted = [key for key in wanted if key not in held]
            if not wanted:
                return None
            self._archiving[name], self._raced[name] = set(wanted), set()
        try:
            await self._drain()
            snapshot = await self.inner.load_keys(name, wanted)
            if snapshot is not None and not isinstance(snapshot, LWWSnapshot):
                raise StorageConfigError(
                    f"map {name!r} is an OR-Map: only LWW maps have keys archived "
                    "(archive OR-Maps whole)"
                )
            records = {
                key: record
                for key, record in (snapshot.records if snapshot is not None else {}).items()
                if record.value is not None
                and (before_ms is None or record.timestamp.millis < before_ms)
            }
            if not records:
                return None
            written = await self.archive.write_keys(LWWSnapshot(name, records), self.now_ms())
            async with self._lock:
                raced = self._raced[name]
                kept = [key for key in sorted(records) if key not in raced]
                info = await self.archive.list_keys(written, kept)
                if info is None:
                    return None
                # Listed, and counted before they leave: a `load_keys` that misses them
                # either saw them listed or sees the count move, and asks again.
                self._moves += 1
                await self.inner.delete(name, kept)
            return ArchivedKeys(info, kept, {key: records[key].timestamp for key in kept})
        finally:
            self._archiving.pop(name, None)
            self._raced.pop(name, None)

    async def old_keys(self, name: str, before_ms: int) -> list[str]:
        """The keys of LWW map `name` in the wrapped backend whose live value was written
        before `before_ms` (tombstones and OR-Maps have none)."""
        self._check_open()
        snapshot = await self.inner.load_map(name)
        if not isinstance(snapshot, LWWSnapshot):
            return []
        return sorted(
            key
            for key, record in snapshot.records.items()
            if record.value is not None and record.timestamp.millis < before_ms
        )

    async def idle_maps(self, older_than_ms: int | None = None) -> list[str]:
        """The maps not archived whole whose newest record (archived keys included) is
        older than `older_than_ms` (default: the `archive_after` option), oldest first."""
        self._check_open()
        age = self.options.archive_after_ms() if older_than_ms is None else older_than_ms
        horizon = self.now_ms() - age
        idle: list[tuple[int, str]] = []
        for info in await self.list_maps():
            if info.name in self.archive.manifest.maps:
                continue
            snapshot = await self.inner.load_map(info.name)
            segments = [
                self.archive.manifest.key_segments[s] for s in self.archive.segments_of(info.name)
            ]
            if (snapshot is None or record_count(snapshot) == 0) and not segments:
                continue
            newest = max(
                [0 if snapshot is None else newest_millis(snapshot)]
                + [segment.newest_millis for segment in segments]
            )
            if newest < horizon:
                idle.append((newest, info.name))
        return [name for _, name in sorted(idle)]

    # -- re-encoding in place (RecodableBackend, forwarded) -----------------------------

    def _recodable(self) -> RecodableBackend:
        self._check_open()
        return recodable_under(self.inner, "tiered storage")

    async def count_values(self) -> int:
        """The wrapped backend's count (archived maps live in segments, not counted)."""
        return await self._recodable().count_values()

    async def scan_values(self, after: StoredValue | None, limit: int) -> list[StoredValue]:
        """The wrapped backend's scan: the values it stores. Values held in memory are
        decoded, so re-encoding them on disk changes nothing there; archived segments keep
        the key they were written with (see docs/storage.md)."""
        return await self._recodable().scan_values(after, limit)

    async def replace_values(self, replacements: Sequence[tuple[StoredValue, bytes]]) -> int:
        """The wrapped backend's compare and swap."""
        return await self._recodable().replace_values(replacements)

    def archived_totals(self) -> tuple[int, int]:
        """(records, compressed bytes) in the archive: whole maps and key segments."""
        manifest = self.archive.manifest
        records = sum(info.records for info in manifest.maps.values())
        records += sum(info.count for info in manifest.key_segments.values())
        stored = sum(info.stored_bytes for info in manifest.maps.values())
        stored += sum(info.stored_bytes for info in manifest.key_segments.values())
        return records, stored

    async def tier_status(self) -> list[MapStatus]:
        """Every map with its tier, records and bytes."""
        self._check_open()
        found: dict[str, MapStatus] = {}
        for info in await self.list_maps():
            if info.name in self.archive.manifest.maps:
                continue
            snapshot = await self.inner.load_map(info.name)
            segments = [
                self.archive.manifest.key_segments[segment]
                for segment in self.archive.segments_of(info.name)
            ]
            stored = 0 if snapshot is None else record_count(snapshot)
            if not stored and not segments:
                continue
            newest = max(
                [0 if snapshot is None else newest_millis(snapshot)]
                + [segment.newest_millis for segment in segments]
            )
            found[info.name] = MapStatus(
                info.name,
                info.kind,
                "storage+archive" if segments else "storage",
                stored,
                0 if snapshot is None else len(msgspec.msgpack.encode(snapshot)),
                newest,
                archived_keys=sum(segment.count for segment in segments),
                archived_bytes=sum(segment.stored_bytes for segment in segments),
            )
        for name, segment in self.archive.manifest.maps.items():
            found[name] = MapStatus(
                name,
                segment.kind,
                "archive",
                segment.records,
                segment.stored_bytes,
                segment.newest_millis,
            )
        return [found[name] for name in sorted(found)]


def wrap(backend: StorageBackend, config: BackendConfig) -> TieredBackend:
    """The `register_storage_wrappers` factory: options from
    `[storage.wrapper_options.tiered]`."""
    options = config.options_as(TieredOptions, "tiered")
    options.check()
    store = store_for(options, config.data_dir)
    archive = Archive(store, level=options.compression_level, codecs=config.codecs)
    return TieredBackend(backend, options, archive)
