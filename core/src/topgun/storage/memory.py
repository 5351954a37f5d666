"""The memory backend: the storage contract kept in process memory (built-in `memory`).

Nothing survives the process. It is what tests and throw-away servers use, and the
reference the SQLite backend is checked against: values go through the same codec
pipeline and every rule of the contract holds, so code written against it behaves the
same on a durable backend. A `MemoryStore` plays the part of the disk: a new backend
over the same store sees what earlier ones committed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.hooks import Register, hookimpl
from topgun.storage.codecs import Area, CodecContext, CodecPipeline
from topgun.storage.contract import (
    CREATING_CHANGES,
    AddORRecord,
    BackendConfig,
    BackendFactory,
    Change,
    DeleteKey,
    LWWSnapshot,
    MapInfo,
    MapKind,
    MapPage,
    MapSnapshot,
    ORSnapshot,
    PruneORTag,
    PruneRecord,
    PutMeta,
    PutRecord,
    RemoveORTag,
    StorageBackend,
    StoredValue,
    check_batch,
    check_page_request,
    encoded_value,
    kind_mismatch,
    kind_of,
)
from topgun.storage.errors import StorageClosedError, StorageConfigError

_Row = tuple[bytes | None, Timestamp, float | None]
"""A stored LWW record: encoded value (`None` for a tombstone), timestamp, TTL."""
_ORRow = tuple[bytes, Timestamp, float | None]
"""A stored OR record: encoded value, timestamp, TTL."""


@dataclass
class MemoryStore:
    """The committed state of memory backends: maps, records, tombstones, meta."""

    kinds: dict[str, MapKind] = field(default_factory=dict)
    lww: dict[str, dict[str, _Row]] = field(default_factory=dict)
    """map -> key -> row."""
    or_records: dict[str, dict[str, dict[str, _ORRow]]] = field(default_factory=dict)
    """map -> key -> tag -> row."""
    or_tag_keys: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    """map -> tag -> keys holding a record with that tag."""
    or_tombstones: dict[str, dict[str, str | None]] = field(default_factory=dict)
    """map -> tombstoned tag -> the key that held it."""
    meta: dict[str, dict[str, bytes]] = field(default_factory=dict)
    codec_names: tuple[str, ...] | None = None
    """The codecs the stored values were encoded with (set by the first backend)."""


class _Options(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The memory backend takes no options."""


class MemoryBackend:
    """The storage contract in memory, over a `MemoryStore` (a new one by default)."""

    def __init__(self, *, codecs: CodecPipeline | None = None, store: MemoryStore | None = None):
        self.codecs = codecs if codecs is not None else CodecPipeline()
        self.store = store if store is not None else MemoryStore()
        self._open = False
        self._closed = False

    def _check_open(self) -> MemoryStore:
        if not self._open:
            state = "closed" if self._closed else "not initialized"
            raise StorageClosedError(f"the memory storage backend is {state}")
        return self.store

    async def initialize(self) -> None:
        if self._open:
            return
        if self._closed:
            raise StorageClosedError("the memory storage backend is closed; make a new one")
        names = self.codecs.names
        if self.store.codec_names is None:
            self.store.codec_names = names
        elif self.store.codec_names != names:
            raise StorageConfigError(
                f"the memory store was written with codecs {list(self.store.codec_names)}, "
                f"but the configuration lists {list(names)}"
            )
        self._open = True

    async def close(self) -> None:
        self._open = False
        self._closed = True

    async def list_maps(self) -> list[MapInfo]:
        store = self._check_open()
        return [MapInfo(name, kind) for name, kind in sorted(store.kinds.items())]

    async def load_map(self, name: str) -> MapSnapshot | None:
        return self._load(name, None)

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        return self._load(name, set(keys))

    def _load(self, name: str, keys: set[str] | None) -> MapSnapshot | None:
        store = self._check_open()
        kind = store.kinds.get(name)
        if kind is None:
            return None
        codecs = self.codecs
        if kind == "lww":
            stored = store.lww[name]
            # Asked keys are looked up, not found by a scan: tiering loads a few at a time.
            wanted = sorted(stored) if keys is None else sorted(keys.intersection(stored))
            records: dict[str, LWWRecord] = {}
            for key in wanted:
                blob, timestamp, ttl = stored[key]
                value = None if blob is None else codecs.unpack(blob, _ctx("lww", name, key))
                records[key] = LWWRecord(value, timestamp, ttl)
            return LWWSnapshot(name, records)
        or_records: dict[str, list[ORMapRecord]] = {}
        by_key = store.or_records[name]
        for key in sorted(by_key) if keys is None else sorted(keys.intersection(by_key)):
            tags = by_key[key]
            if tags:
                context = _ctx("ormap", name, key)
                or_records[key] = [
                    ORMapRecord(codecs.unpack(blob, context), timestamp, tag, ttl)
                    for tag, (blob, timestamp, ttl) in sorted(tags.items())
                ]
        tombstones = {
            tag: key
            for tag, key in sorted(store.or_tombstones[name].items())
            if keys is None or key in keys
        }
        return ORSnapshot(name, or_records, tombstones)

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        check_page_request(after, limit)
        store = self._check_open()
        kind = store.kinds.get(name)
        if kind is None:
            return None
        stored = store.lww[name] if kind == "lww" else store.or_records[name]
        candidates = (k for k, v in stored.items() if v and (after is None or k > after))
        keys = heapq.nsmallest(limit + 1, candidates)
        snapshot = self._load(name, set(keys[:limit]))
        if isinstance(snapshot, ORSnapshot):
            tombstones = dict(sorted(store.or_tombstones[name].items())) if after is None else {}
            snapshot = ORSnapshot(name, snapshot.records, tombstones)
        assert snapshot is not None
        return MapPage(snapshot, keys[limit - 1] if len(keys) > limit else None)

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        store = self._check_open()
        return {
            key: self.codecs.decode(blob, _ctx("meta", namespace, key))
            for key, blob in sorted(store.meta.get(namespace, {}).items())
        }

    async def store_batch(self, changes: Sequence[Change]) -> None:
        store = self._check_open()
        check_batch(changes)
        # Everything that can fail happens before the first mutation: all or nothing.
        created: dict[str, MapKind] = {}
        for change in changes:
            kind = kind_of(change)
            if isinstance(change, PutMeta):
                continue
            known = store.kinds.get(change.map_name) or created.get(change.map_name)
            if known is None and kind is not None and isinstance(change, CREATING_CHANGES):
                created[change.map_name] = kind
            elif known is not None and kind is not None and known != kind:
                raise kind_mismatch(change.map_name, known, change)
        values = [encoded_value(change, self.codecs) for change in changes]
        for name, kind in created.items():
            store.kinds[name] = kind
            if kind == "lww":
                store.lww[name] = {}
            else:
                store.or_records[name] = {}
                store.or_tag_keys[name] = {}
                store.or_tombstones[name] = {}
        for change, value in zip(changes, values, strict=True):
            _apply(store, change, value)

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        await self.store_batch([DeleteKey(name, key) for key in keys])

    # --- re-encoding in place (`RecodableBackend`) ---------------------------------------

    def _values(self) -> list[StoredValue]:
        """Every stored value, in scan order."""
        store = self._check_open()
        found = [
            StoredValue(_ctx("lww", name, key), None, blob)
            for name in sorted(store.lww)
            for key, (blob, _, _) in sorted(store.lww[name].items())
            if blob is not None
        ]
        found += [
            StoredValue(_ctx("ormap", name, key), tag, blob)
            for name in sorted(store.or_records)
            for key, tags in sorted(store.or_records[name].items())
            for tag, (blob, _, _) in sorted(tags.items())
        ]
        found += [
            StoredValue(_ctx("meta", namespace, key), None, blob)
            for namespace in sorted(store.meta)
            for key, blob in sorted(store.meta[namespace].items())
        ]
        return found

    async def count_values(self) -> int:
        return len(self._values())

    async def scan_values(self, after: StoredValue | None, limit: int) -> list[StoredValue]:
        values = self._values()
        if after is not None:
            start = after.position()
            values = [value for value in values if value.position() > start]
        return values[:limit]

    async def replace_values(self, replacements: Sequence[tuple[StoredValue, bytes]]) -> int:
        store = self._check_open()
        replaced = 0
        for old, new in replacements:
            context = old.context
            if context.area == "meta":
                rows = store.meta.get(context.name, {})
                if rows.get(context.key) == old.data:
                    rows[context.key] = new
                    replaced += 1
            elif context.area == "lww":
                lww = store.lww.get(context.name, {})
                row = lww.get(context.key)
                if row is not None and row[0] == old.data:
                    lww[context.key] = (new, row[1], row[2])
                    replaced += 1
            else:
                tags = store.or_records.get(context.name, {}).get(context.key, {})
                or_row = tags.get(old.tag or "")
                if or_row is not None and or_row[0] == old.data:
                    tags[old.tag or ""] = (new, or_row[1], or_row[2])
                    replaced += 1
        return replaced


def _ctx(area: Area, name: str, key: str) -> CodecContext:
    return CodecContext(area, name, key)


def _apply(store: MemoryStore, change: Change, value: bytes | None) -> None:
    """Apply one checked change whose map kind matches (or that is a no-op)."""
    if isinstance(change, PutMeta):
        namespace = store.meta.setdefault(change.namespace, {})
        if value is None:
            namespace.pop(change.key, None)
        else:
            namespace[change.key] = value
        return
    name = change.map_name
    if name not in store.kinds:  # a prune or delete of a map never stored
        return
    if isinstance(change, PutRecord):
        rows = store.lww[name]
        current = rows.get(change.key)
        timestamp = change.record.timestamp
        if current is None or timestamp > current[1]:
            rows[change.key] = (value, timestamp, change.record.ttl_ms)
    elif isinstance(change, PruneRecord):
        current = store.lww[name].get(change.key)
        if current is not None and current[0] is None and current[1] < change.older_than:
            del store.lww[name][change.key]
    elif isinstance(change, AddORRecord):
        record = change.record
        if record.tag in store.or_tombstones[name]:
            return
        tags = store.or_records[name].setdefault(change.key, {})
        if record.tag not in tags:
            assert value is not None  # encoded_value packs every OR record
            tags[record.tag] = (value, record.timestamp, record.ttl_ms)
            store.or_tag_keys[name].setdefault(record.tag, set()).add(change.key)
    elif isinstance(change, RemoveORTag):
        holders = sorted(store.or_tag_keys[name].pop(change.tag, ()))
        for key in holders:
            del store.or_records[name][key][change.tag]
        tombstones = store.or_tombstones[name]
        held_by = change.key if change.key is not None else next(iter(holders), None)
        if tombstones.get(change.tag) is None:
            tombstones[change.tag] = held_by
    elif isinstance(change, PruneORTag):
        store.or_tombstones[name].pop(change.tag, None)
    elif isinstance(change, DeleteKey):
        if store.kinds[name] == "lww":
            store.lww[name].pop(change.key, None)
            return
        for tag in store.or_records[name].pop(change.key, {}):
            keys = store.or_tag_keys[name][tag]
            keys.discard(change.key)
            if not keys:
                del store.or_tag_keys[name][tag]
        tombstones = store.or_tombstones[name]
        for tag in [tag for tag, key in tombstones.items() if key == change.key]:
            del tombstones[tag]


def open_memory(config: BackendConfig) -> StorageBackend:
    """The `memory` backend factory: a fresh, empty store (options: none)."""
    config.options_as(_Options, "memory")
    return MemoryBackend(codecs=config.codecs)


@hookimpl
def register_storage(register: Register[BackendFactory]) -> None:
    """Register the built-in `memory` backend."""
    register("memory", open_memory)
