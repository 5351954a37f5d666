"""The server's maps: one LWW map or OR-Map per name, sharing the server's clock.

A map's kind is fixed by the first write that creates it (or by what storage holds). Every
change goes through this registry while a `Recording` is open, which turns it into the
storage change that persists it and the event payload that announces it, so no write path
can change a map without persisting and announcing the change. `persist` hands a
recording's changes to the storage writer and remembers, per key, the commit that holds the
key's latest state: an op that changed nothing (a replay) asking for `PERSISTED` waits for
that commit rather than reporting a state that is not on disk yet.

Under a storage `MemoryBudget` (a tiering wrapper asks for one) the registry keeps map
values within the budget: it accounts every stored value in a `HotSet` (per LWW key its
value, per OR-Map key its records' values), evicts the least recently used committed ones
past the high-water mark (their records go cold: tags, timestamps, tombstones and Merkle
hashes stay), and `holding` loads cold values back before a request reads them. At start a
`PagedBackend` is loaded page by page with evictions in between, so that a dataset larger
than the budget starts without ever being held whole.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final

import anyio
import msgspec

from topgun.crdt import (
    HLC,
    LWWListener,
    LWWMap,
    LWWRecord,
    ORMap,
    ORMapListener,
    ORMapRecord,
    Timestamp,
)
from topgun.protocol import EventPayload
from topgun.server.hotset import HotSet
from topgun.storage import (
    AddORRecord,
    ArchivingBackend,
    Change,
    Commit,
    LWWSnapshot,
    MapKind,
    MapSnapshot,
    MemoryBudget,
    ORSnapshot,
    PagedBackend,
    PruneORTag,
    PruneRecord,
    PutMeta,
    PutRecord,
    RemoveORTag,
    StorageBackend,
    StorageError,
    StorageWriter,
    value_size,
)

logger = logging.getLogger(__name__)

PRUNE_HORIZON_NAMESPACE: Final = "prune_horizon"
"""Meta-area namespace: map name -> the `olderThan` of the latest GC that pruned it."""

_PENDING_SWEEP_AT: Final = 4096
"""Forget committed entries of the per-key commit table once it holds this many."""

_LOAD_CHUNK: Final = 500
"""Cold keys asked of storage per `load_keys` call."""

_FIRST_PAGE: Final = 1
"""Keys of the first page a map is loaded with under a budget; later pages are sized from
the bytes per key of the page before, growing at most 4x a page."""

_PAGE_SHARE: Final = 16
"""A later page aims at this fraction (1/n) of the budget..."""

_MAX_PAGE: Final = 5000
"""...and holds at most this many keys."""

_EVICT_SKIPS: Final = 1024
"""Values an eviction pass steps over (pinned, or not committed yet) before it stops: under
a burst of writes the next pass goes on, so a pass stays short."""


class MapKindMismatch(Exception):
    """A write of one map kind named a map of the other kind ("Map type mismatch")."""

    def __init__(self, name: str, kind: MapKind) -> None:
        super().__init__("Map type mismatch")
        self.name = name
        self.kind = kind


class Recording(msgspec.Struct):
    """What the changes made while it was open amount to: events and storage changes."""

    events: list[EventPayload] = msgspec.field(default_factory=list)
    changes: list[Change] = msgspec.field(default_factory=list)
    keys: set[tuple[str, str]] = msgspec.field(default_factory=set)
    """(map, key) of every key whose stored state changed."""


class _RecordingBlock:
    """`MapRegistry.recording()`: a plain context manager (one is opened per op, so the
    registry reuses one: recordings never nest)."""

    __slots__ = ("_into", "_registry")

    def __init__(self, registry: MapRegistry, into: Recording | None) -> None:
        self._registry = registry
        self._into = into

    def __enter__(self) -> Recording:
        if self._registry._recording is not None:
            raise RuntimeError("a map recording is already open")
        recording = self._into if self._into is not None else Recording()
        self._registry._recording = recording
        return recording

    def __exit__(self, *exc_info: object) -> None:
        self._registry._recording = None


class _Holding:
    """`MapRegistry.holding()`: pins values, loads the cold ones, unpins on exit."""

    __slots__ = ("_keys", "_name", "_pins", "_registry")

    def __init__(self, registry: MapRegistry, name: str, keys: Iterable[str] | None) -> None:
        self._registry = registry
        self._name = name
        self._keys = keys if keys is None else list(keys)
        self._pins: list[tuple[str, str]] | str | None = None

    async def __aenter__(self) -> None:
        registry = self._registry
        if self._name in registry._archived:
            await registry.ensure_loaded(self._name)
        hot = registry.hot
        if hot is None:
            return
        self._pins = hot.pin(self._name, self._keys)
        try:
            await registry._thaw(self._name, self._keys)
        except BaseException:
            self.release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Let the values go (what leaving the `async with` block does)."""
        hot = self._registry.hot
        if hot is not None and self._pins is not None:
            hot.unpin(self._pins)
            self._pins = None
            self._registry.enforce_budget()


class MapRegistry:
    """Every map of one server, by name, with the server's clock `hlc`."""

    def __init__(self, hlc: HLC) -> None:
        self.hlc = hlc
        self.writer: StorageWriter | None = None
        """Set by the server once storage is open; changes are persisted through it."""
        self._lww: dict[str, LWWMap] = {}
        self._or: dict[str, ORMap] = {}
        self._prune_horizons: dict[str, Timestamp] = {}
        self._recording: Recording | None = None
        self._block = _RecordingBlock(self, None)
        self._pending: dict[tuple[str, str], Commit] = {}
        self._sweep_at = _PENDING_SWEEP_AT
        self._backend: StorageBackend | None = None
        self.hot: HotSet | None = None
        """The accounting of hot values under a memory budget; `None` without one."""
        self._unsubmitted: set[tuple[str, str]] = set()
        """Under a budget, (map, key) changed in memory but not yet handed to storage: not
        evictable, since storage could not give their values back."""
        self._archived: dict[str, MapKind] = {}
        self._restoring: dict[str, anyio.Event] = {}
        self.on_restore: list[Callable[[str], Awaitable[None] | None]] = []
        """Called (and awaited, if async) with a map's name once an archived map is back in
        memory, before any request uses it."""
        self.tiered = False
        """Whether requests must `hold` what they read (a memory budget or archived maps)."""

    def _update_tiered(self) -> None:
        self.tiered = self.hot is not None or bool(self._archived)

    def set_budget(self, budget: MemoryBudget) -> None:
        """Keep map values within `budget` from now on (call before `load`)."""
        if self._lww or self._or:
            raise RuntimeError("set the memory budget before maps are loaded or written")
        self.hot = HotSet(budget)
        self._update_tiered()

    # -- lookup ---------------------------------------------------------------------------

    def kind(self, name: str) -> MapKind | None:
        """The kind of map `name`, or `None` if there is no such map."""
        if name in self._lww:
            return "lww"
        if name in self._or:
            return "ormap"
        return self._archived.get(name)

    def lww(self, name: str) -> LWWMap | None:
        """The LWW map `name`, if it exists and is one."""
        return self._lww.get(name)

    def ormap(self, name: str) -> ORMap | None:
        """The OR-Map `name`, if it exists and is one."""
        return self._or.get(name)

    def _crdt(self, name: str) -> LWWMap | ORMap | None:
        found = self._lww.get(name)
        return found if found is not None else self._or.get(name)

    def names(self) -> list[str]:
        """Every map's name, sorted."""
        return sorted([*self._lww, *self._or])

    def prune_horizon(self, name: str) -> Timestamp | None:
        """The `olderThan` of the latest GC that pruned a tombstone of map `name`."""
        return self._prune_horizons.get(name)

    def check_kind(self, name: str, kind: MapKind) -> None:
        """Raise `MapKindMismatch` if map `name` exists with the other kind."""
        found = self.kind(name)
        if found is not None and found != kind:
            raise MapKindMismatch(name, found)

    def _lww_for_write(self, name: str) -> LWWMap:
        found = self._lww.get(name)
        if found is None:
            self.check_kind(name, "lww")
            if name in self._archived:
                raise RuntimeError(f"map {name!r} is archived: ensure_loaded() it first")
            found = self._lww[name] = LWWMap(self.hlc)
            found.on_change(self._lww_listener(name))
        return found

    def _or_for_write(self, name: str) -> ORMap:
        found = self._or.get(name)
        if found is None:
            self.check_kind(name, "ormap")
            if name in self._archived:
                raise RuntimeError(f"map {name!r} is archived: ensure_loaded() it first")
            found = self._or[name] = ORMap(self.hlc)
            found.on_change(self._or_listener(name, found))
        return found

    # -- changes --------------------------------------------------------------------------

    def recording(self, into: Recording | None = None) -> _RecordingBlock:
        """Collect the events and storage changes of every change made inside the block, in
        a new `Recording` or appended to `into` (a request's ops share one).

        The block must not await: changes of other requests would land in this recording.
        """
        block = self._block  # blocks never nest, so one serves every op
        block._into = into
        return block

    def _active(self) -> Recording:
        if self._recording is None:
            raise RuntimeError("maps change only inside MapRegistry.recording()")
        return self._recording

    def _lww_listener(self, name: str) -> LWWListener:
        def changed(key: str, record: LWWRecord) -> None:
            recording = self._recording
            if recording is None:
                raise RuntimeError("maps change only inside MapRegistry.recording()")
            if self.hot is not None:
                self.hot.note(name, key, record.value)
                self._unsubmitted.add((name, key))
            recording.changes.append(PutRecord(name, key, record))
            recording.events.append(
                EventPayload(
                    map_name=name,
                    event_type="PUT" if record.value is not None else "REMOVE",
                    key=key,
                    record=record,
                )
            )
            recording.keys.add((name, key))

        return changed

    def _or_listener(self, name: str, ormap: ORMap) -> ORMapListener:
        def changed(key: str, tag: str, record: ORMapRecord | None) -> None:
            recording = self._active()
            if self.hot is not None:
                self.hot.note_bytes(name, key, or_key_bytes(ormap, key))
                self._unsubmitted.add((name, key))
            if record is not None:
                recording.changes.append(AddORRecord(name, key, record))
                recording.events.append(
                    EventPayload(map_name=name, event_type="OR_ADD", key=key, or_record=record)
                )
            else:
                recording.changes.append(RemoveORTag(name, tag, key))
                recording.events.append(
                    EventPayload(map_name=name, event_type="OR_REMOVE", key=key, or_tag=tag)
                )
            recording.keys.add((name, key))

        return changed

    def merge_lww(self, name: str, key: str, record: LWWRecord, *, checked: bool = False) -> bool:
        """LWW-merge `record` into map `name` (created if new); True if it was applied.

        Raises `MapKindMismatch`, `ClockDriftError` (strict clock) or `ValueError` for a
        malformed record (its timestamp and TTL are not checked again if `checked`), before
        anything changes.
        """
        self._active()
        return self._lww_for_write(name).merge(key, record, checked=checked)

    def add_or(self, name: str, key: str, record: ORMapRecord) -> bool:
        """Add `record` to OR-Map `name` (created if new) unless its tag is tombstoned or
        already there; True if added."""
        self._active()
        return self._or_for_write(name).apply(key, record)

    def tombstone_or(self, name: str, tag: str, key: str) -> bool:
        """Tombstone `tag` in OR-Map `name` (created if new); True if newly tombstoned.

        `key` is the key the writer names: it announces the removal of a tag that no key
        held here (the tag is still stored as tombstoned, without a key).
        """
        recording = self._active()
        ormap = self._or_for_write(name)
        before = len(recording.changes)
        if not ormap.apply_tombstone(tag):
            return False
        if len(recording.changes) == before:  # no key held it: nothing was announced
            recording.changes.append(RemoveORTag(name, tag, None))
            recording.events.append(
                EventPayload(map_name=name, event_type="OR_REMOVE", key=key, or_tag=tag)
            )
            recording.keys.add((name, key))
        return True

    def prune_tombstones(self, older_than: Timestamp) -> list[Change]:
        """GC (PROTOCOL.md §6.11): drop LWW tombstones and OR tombstone tags older than
        `older_than` from every map and record it as the prune horizon of each map that lost
        one; returns the storage changes that do the same on disk."""
        changes: list[Change] = []
        horizon = msgspec.msgpack.encode(older_than)
        for name, lww in self._lww.items():
            keys = lww.prune(older_than)
            changes.extend(PruneRecord(name, key, older_than) for key in keys)
            if keys:
                self._prune_horizons[name] = older_than
                changes.append(PutMeta(PRUNE_HORIZON_NAMESPACE, name, horizon))
        for name, ormap in self._or.items():
            tags = ormap.prune(older_than)
            changes.extend(PruneORTag(name, tag) for tag in tags)
            if tags:
                self._prune_horizons[name] = older_than
                changes.append(PutMeta(PRUNE_HORIZON_NAMESPACE, name, horizon))
        return changes

    def or_write_keys(self, name: str, key: str, tag: str | None) -> list[str]:
        """The keys of OR-Map `name` whose records a write of `key` changes: `key`, and for
        a removal of `tag` the keys holding it (what must be hot before the write)."""
        ormap = self._or.get(name)
        if ormap is None or tag is None:
            return [key]
        return [key, *(k for k in ormap.keys_holding(tag) if k != key)]

    def is_tombstoned(self, name: str, tag: str) -> bool:
        """Whether `tag` is tombstoned in OR-Map `name`."""
        ormap = self._or.get(name)
        return ormap is not None and ormap.is_tombstoned(tag)

    def holds_live_tag(self, name: str, tag: str) -> bool:
        """Whether some key of OR-Map `name` holds a record tagged `tag`."""
        ormap = self._or.get(name)
        return ormap is not None and bool(ormap.keys_holding(tag))

    # -- storage --------------------------------------------------------------------------

    async def load(self, backend: StorageBackend) -> int:
        """Load every stored map and the prune horizons; returns how many maps were loaded.

        The clock absorbs the newest stored timestamp of each map, so everything the server
        stamps from now on sorts after what it stored before.
        """
        self._backend = backend
        infos = await backend.list_maps()
        if isinstance(backend, ArchivingBackend):
            self._archived = await backend.archived_maps()
            self._update_tiered()
        strict, self.hlc.strict = self.hlc.strict, False  # what was stored is never drift
        try:
            await self._load_maps(
                backend, [info.name for info in infos if info.name not in self._archived]
            )
        finally:
            self.hlc.strict = strict
        for name, raw in (await backend.load_meta(PRUNE_HORIZON_NAMESPACE)).items():
            self._prune_horizons[name] = msgspec.msgpack.decode(raw, type=Timestamp)
        return len(infos)

    async def _load_maps(self, backend: StorageBackend, names: list[str]) -> None:
        for name in names:
            if self.hot is not None and isinstance(backend, PagedBackend):
                await self._load_paged(backend, name, self.hot)
                continue
            snapshot = await backend.load_map(name)
            if snapshot is not None:
                self._install(name, snapshot)

    async def _load_paged(self, backend: PagedBackend, name: str, hot: HotSet) -> None:
        """Load map `name` page by page, evicting down to the low-water mark after each, so
        that loading holds at most about the high-water mark plus one page of values."""
        after: str | None = None
        limit = _FIRST_PAGE
        while True:
            page = await backend.load_page(name, after, limit)
            if page is None:
                break
            snapshot, before = page.snapshot, hot.used
            if isinstance(snapshot, LWWSnapshot):
                lww = self._lww.get(name)
                if lww is None:
                    lww = self._lww[name] = LWWMap(self.hlc)
                lww.merge_many(list(snapshot.records.items()))
                for key, record in snapshot.records.items():
                    hot.note(name, key, record.value)
            else:
                ormap = self._or.get(name)
                if ormap is None:
                    ormap = self._or[name] = ORMap(self.hlc)
                newest = ormap.restore(snapshot.records, snapshot.tombstones)
                if newest is not None:
                    self.hlc.update(newest)
                for key in snapshot.records:
                    hot.note_bytes(name, key, or_key_bytes(ormap, key))
            per_key = max(1, (hot.used - before) // max(1, len(snapshot.records)))
            self.enforce_budget()
            if page.next_after is None:
                break
            after = page.next_after
            fits = hot.budget.budget_bytes // _PAGE_SHARE // per_key
            limit = max(1, min(_MAX_PAGE, 4 * limit, fits))
        if name in self._lww:
            self._lww[name].on_change(self._lww_listener(name))
        elif name in self._or:
            self._or[name].on_change(self._or_listener(name, self._or[name]))

    def _install(self, name: str, snapshot: MapSnapshot) -> None:
        """Make map `name` hold `snapshot` (loaded state is neither persisted again nor
        announced: listeners come afterwards)."""
        if isinstance(snapshot, LWWSnapshot):
            lww = LWWMap(self.hlc)
            lww.merge_many(list(snapshot.records.items()))
            lww.on_change(self._lww_listener(name))
            self._lww[name] = lww
            if self.hot is not None:
                for key, record in snapshot.records.items():
                    self.hot.note(name, key, record.value)
                self.enforce_budget()
        else:
            ormap = ORMap(self.hlc)
            newest = ormap.restore(snapshot.records, snapshot.tombstones)
            if newest is not None:
                self.hlc.update(newest)
            ormap.on_change(self._or_listener(name, ormap))
            self._or[name] = ormap
            if self.hot is not None:
                for key in snapshot.records:
                    self.hot.note_bytes(name, key, or_key_bytes(ormap, key))
                self.enforce_budget()

    async def ensure_loaded(self, name: str) -> None:
        """Bring map `name` back from the archive if it is archived (once, however many
        requests ask at the same time); then call `on_restore`."""
        if name not in self._archived:
            return
        restoring = self._restoring.get(name)
        if restoring is not None:
            await restoring.wait()
            if name in self._archived:
                raise StorageError(f"map {name!r} could not be restored from the archive")
            return
        if self._backend is None:
            raise RuntimeError("storage is not open")
        done = self._restoring[name] = anyio.Event()
        try:
            snapshot = await self._backend.load_map(name)
            strict, self.hlc.strict = self.hlc.strict, False
            try:
                del self._archived[name]
                self._update_tiered()
                if snapshot is not None:
                    self._install(name, snapshot)
            finally:
                self.hlc.strict = strict
            logger.info("map %r restored from the archive", name)
            for callback in self.on_restore:
                result = callback(name)
                if result is not None:
                    await result
        finally:
            del self._restoring[name]
            done.set()

    async def persist(self, recording: Recording) -> Commit | None:
        """Submit the recording's storage changes; the `Commit` to await for PERSISTED.

        `None` when it changed nothing. Raises what `StorageWriter.submit` raises.
        """
        if not recording.changes:
            return None
        if self.writer is None:
            raise RuntimeError("storage is not open")
        commit = await self.writer.submit(recording.changes)
        pending = self._pending
        if len(pending) >= self._sweep_at:
            for done in [k for k, c in pending.items() if c.done and c.error is None]:
                del pending[done]
            # Under load most entries are still in flight; sweeping again only once the
            # survivors have doubled keeps the sweep amortized O(1) per write.
            self._sweep_at = max(_PENDING_SWEEP_AT, 2 * len(pending))
        pending.update(dict.fromkeys(recording.keys, commit))
        if self.hot is not None:
            self._unsubmitted.difference_update(recording.keys)
            if self.hot.over:
                self.enforce_budget()
        return commit

    def pending_commit(self, name: str, key: str) -> Commit | None:
        """The commit holding the latest state of (`name`, `key`), unless it committed."""
        commit = self._pending.get((name, key))
        if commit is None or (commit.done and commit.error is None):
            return None
        return commit

    # -- memory budget ----------------------------------------------------------------------

    def holding(self, name: str, keys: Iterable[str] | None = None) -> _Holding:
        """`async with maps.holding(name, keys):` the values of `keys` of map `name` (every
        key when `None`) are in memory, and stay there, for the block.

        Cold values are loaded from storage first; raises `StorageError` if storage does
        not hold what was evicted. Does nothing without a memory budget."""
        return _Holding(self, name, keys)

    async def hold(self, name: str, keys: Iterable[str] | None = None) -> _Holding:
        """`holding(name, keys)` entered: call `release()` on the result when done (for
        paths that cannot nest a block)."""
        held = _Holding(self, name, keys)
        await held.__aenter__()
        return held

    async def _thaw(self, name: str, keys: list[str] | None) -> None:
        """Load the cold values among `keys` of map `name` (every key when `None`)."""
        hot, backend = self.hot, self._backend
        crdt = self._crdt(name)
        if hot is None or crdt is None:
            return
        if keys is None:
            cold = sorted(crdt.cold_keys())
        else:
            cold = [key for key in keys if crdt.is_cold(key)]
            for key in keys:
                hot.touch(name, key)
        if not cold:
            return
        if backend is None:
            raise RuntimeError("storage is not open")
        for start in range(0, len(cold), _LOAD_CHUNK):
            chunk = cold[start : start + _LOAD_CHUNK]
            snapshot = await backend.load_keys(name, chunk)
            for key in chunk:
                if not crdt.is_cold(key):
                    continue  # written (or loaded by another request) meanwhile
                if isinstance(crdt, LWWMap):
                    records = snapshot.records if isinstance(snapshot, LWWSnapshot) else {}
                    record = records.get(key)
                    if record is None:
                        raise StorageError(
                            f"map {name!r}: storage does not hold key {key!r}, whose value was "
                            "evicted from memory"
                        )
                    _thawed(name, crdt.thaw, key, record)
                    hot.note(name, key, record.value)
                else:
                    found = snapshot.records if isinstance(snapshot, ORSnapshot) else {}
                    _thawed(name, crdt.thaw, key, found.get(key, []))
                    hot.note_bytes(name, key, or_key_bytes(crdt, key))
                hot.loads += 1

    def evict_stored(self, name: str, stamps: Mapping[str, Timestamp]) -> int:
        """Evict now the values of LWW map `name` whose storage moved elsewhere (an
        archive): each key in `stamps` whose record in memory still has that timestamp and
        is neither pinned nor awaiting its commit; returns how many were evicted."""
        hot, lww = self.hot, self._lww.get(name)
        if hot is None or lww is None:
            return 0
        evicted = 0
        for key, stamp in stamps.items():
            record, entry = lww.get_record(key), (name, key)
            if (
                record is None
                or record.timestamp != stamp
                or hot.pinned(entry)
                or self.pending_commit(name, key) is not None
            ):
                continue
            if entry in hot.lru:
                hot.drop(entry)
            if lww.evict(key):
                evicted += 1
        return evicted

    def enforce_budget(self) -> int:
        """Past the high-water mark, evict the least recently used values that are
        committed and not pinned, down to the low-water mark; returns how many."""
        hot = self.hot
        if hot is None or not hot.over:
            return 0
        state = (-1 if self.writer is None else self.writer.finished, hot.unpins)
        if hot.blocked == state:
            return 0  # nothing committed or unpinned since a pass found nothing to evict
        lru, low, pending = hot.lru, hot.budget.low_bytes, self._pending
        evicted = skipped = 0
        limit = min(len(lru), _EVICT_SKIPS)
        while hot.used > low and lru and skipped < limit:
            entry = next(iter(lru))
            commit = pending.get(entry)
            if (
                hot.pinned(entry)
                or (commit is not None and not (commit.done and commit.error is None))
                or entry in self._unsubmitted
            ):
                lru.move_to_end(entry)  # in use, or not in storage yet: later
                skipped += 1
                continue
            hot.drop(entry)
            crdt = self._crdt(entry[0])
            if crdt is not None and crdt.evict(entry[1]):
                evicted += 1
        hot.blocked = state if hot.used > low and skipped >= limit else None
        return evicted


def or_key_bytes(ormap: ORMap, key: str) -> int:
    """The estimated bytes the values of `key`'s records take in memory, with the hash
    strings cached for them (0 when cold)."""
    if ormap.is_cold(key):
        return 0
    strings = sum(sys.getsizeof(text) for text in ormap.hash_strings(key))
    return strings + sum(value_size(record.value) for record in ormap.records(key))


def _thawed(name: str, thaw: Callable[[str, Any], bool], key: str, stored: Any) -> None:
    """`thaw(key, stored)`, its `ValueError` (storage holds something else) as a
    `StorageError` naming the map."""
    try:
        thaw(key, stored)
    except ValueError as exc:
        raise StorageError(f"map {name!r}: {exc}") from None
