"""`TieredBackend`: the storage wrapper behind `[storage] wrappers = ["tiered"]`.

It forwards the storage contract to the backend it wraps and adds two tiers around it:

- **memory**: its `memory_budget` makes the server keep map values (LWW and OR-Map) within
  a RAM budget (`topgun.storage.BudgetedBackend`); the values it evicts stay in the wrapped
  backend and come back through `load_keys`, and at start maps load page by page
  (`load_page`, forwarded) so that loading never holds much more than the budget.
- **archive**: maps moved out by `archive` live as compressed segments in an object store
  (a directory or S3). They stay listed by `list_maps` and `archived_maps`, so the server
  does not load them at start; any read or write of one first restores it into the
  wrapped backend (`restore`) and removes it from the archive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import msgspec

from topgun.storage import (
    AddORRecord,
    BackendConfig,
    Change,
    DeferredDurability,
    LWWSnapshot,
    MapInfo,
    MapKind,
    MapPage,
    MapSnapshot,
    MemoryBudget,
    PagedBackend,
    PutMeta,
    PutRecord,
    RecodableBackend,
    RemoveORTag,
    ReportsStatus,
    StorageBackend,
    StorageClosedError,
    StorageConfigError,
    StorageError,
    StorageStatus,
    StoredValue,
    check_page_request,
)
from topgun_tiered.archive import Archive, SegmentInfo, newest_millis, record_count
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
    """`"storage"` (in the wrapped backend) or `"archive"`."""
    records: int
    bytes: int
    """Storage: the msgpack size of its records; archive: the compressed segment's size."""
    newest_millis: int


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

    @property
    def memory_budget(self) -> MemoryBudget:
        return self._budget

    def _now_ms(self) -> int:
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
        for name, kind in self.archive.kinds().items():
            found[name] = MapInfo(name, kind)
        return [found[name] for name in sorted(found)]

    async def archived_maps(self) -> dict[str, MapKind]:
        self._check_open()
        return self.archive.kinds()

    async def load_map(self, name: str) -> MapSnapshot | None:
        await self._restored(name)
        return await self.inner.load_map(name)

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        await self._restored(name)
        return await self.inner.load_keys(name, keys)

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        """The wrapped backend's page (its whole map as one page if it cannot page)."""
        check_page_request(after, limit)
        await self._restored(name)
        if isinstance(self.inner, PagedBackend):
            return await self.inner.load_page(name, after, limit)
        whole = await self.inner.load_map(name)
        return None if whole is None else MapPage(whole, None)

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        self._check_open()
        return await self.inner.load_meta(namespace)

    async def store_batch(self, changes: Sequence[Change]) -> None:
        self._check_open()
        if self.archive.manifest.maps:
            for name in {c.map_name for c in changes if not isinstance(c, PutMeta)}:
                await self._restored(name)
        await self.inner.store_batch(changes)

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        await self._restored(name)
        await self.inner.delete(name, keys)

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

    # -- tiers --------------------------------------------------------------------------

    async def _restored(self, name: str) -> None:
        self._check_open()
        if name in self.archive.manifest.maps:
            await self.restore(name)

    async def restore(self, name: str, progress: Progress | None = None) -> int:
        """Bring archived map `name` back into the wrapped backend and out of the archive;
        returns how many records (and tombstones) came back; 0 if it is not archived."""
        self._check_open()
        async with self._lock:
            if name not in self.archive.manifest.maps:
                return 0
            snapshot = await self.archive.read(name)
            changes = restore_changes(snapshot)
            for start in range(0, len(changes), RESTORE_BATCH):
                batch = changes[start : start + RESTORE_BATCH]
                await self.inner.store_batch(batch)
                if progress is not None:
                    progress(len(batch))
            await self.wait_durable(self.durability_mark())  # before the segment goes
            await self.archive.remove(name)
            return len(changes)

    async def archive_map(self, name: str, progress: Progress | None = None) -> SegmentInfo:
        """Move map `name` from the wrapped backend into the archive (the server must not
        hold it: run this while no server uses the storage). `StorageConfigError` if it
        is not stored or is archived already."""
        self._check_open()
        async with self._lock:
            if name in self.archive.manifest.maps:
                raise StorageConfigError(f"map {name!r} is archived already")
            snapshot = await self.inner.load_map(name)
            if snapshot is None:
                raise StorageConfigError(f"map {name!r} is not stored")
            info = await self.archive.add(name, snapshot, self._now_ms())
            keys = set(snapshot.records)
            if not isinstance(snapshot, LWWSnapshot):
                keys.update(key for key in snapshot.tombstones.values() if key is not None)
            await self.inner.delete(name, sorted(keys))
            if progress is not None:
                progress(record_count(snapshot))
            return info

    async def idle_maps(self, older_than_ms: int | None = None) -> list[str]:
        """The stored (not archived) maps whose newest record is older than
        `older_than_ms` (default: the `archive_after` option), oldest first."""
        self._check_open()
        age = self.options.archive_after_ms() if older_than_ms is None else older_than_ms
        horizon = self._now_ms() - age
        idle: list[tuple[int, str]] = []
        for info in await self.inner.list_maps():
            if info.name in self.archive.manifest.maps:
                continue
            snapshot = await self.inner.load_map(info.name)
            if snapshot is None or record_count(snapshot) == 0:
                continue
            newest = newest_millis(snapshot)
            if newest < horizon:
                idle.append((newest, info.name))
        return [name for _, name in sorted(idle)]

    # -- re-encoding in place (RecodableBackend, forwarded) -----------------------------

    def _recodable(self) -> RecodableBackend:
        self._check_open()
        if not isinstance(self.inner, RecodableBackend):
            raise StorageError(
                f"{self.inner!r} under tiered storage cannot re-encode stored values "
                "(it is not a RecodableBackend)"
            )
        return self.inner

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

    async def tier_status(self) -> list[MapStatus]:
        """Every map with its tier, records and bytes."""
        self._check_open()
        found: dict[str, MapStatus] = {}
        for info in await self.inner.list_maps():
            snapshot = await self.inner.load_map(info.name)
            if snapshot is None or record_count(snapshot) == 0:
                continue
            found[info.name] = MapStatus(
                info.name,
                info.kind,
                "storage",
                record_count(snapshot),
                len(msgspec.msgpack.encode(snapshot)),
                newest_millis(snapshot),
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
