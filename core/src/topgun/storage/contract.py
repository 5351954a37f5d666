"""The storage contract: what a backend does, and the changes and snapshots it handles.

A backend keeps maps of two kinds. An LWW map holds one `LWWRecord` per key. An OR-Map
holds `ORMapRecord`s per (key, tag) plus the tags it has tombstoned (a tombstoned tag is
never stored again). A small meta area holds bytes by (namespace, key) for the server's
other durable state: lock fencing tokens, counters, the journal, ingest sequences.

Every write is a batch of `Change`s applied in one transaction, all or nothing, in order.
Changes are idempotent and monotone: a record older than (or as old as) the stored one is
not stored, a tombstoned tag is not re-added, and a prune only removes what it names. So
replaying a batch, or applying batches that a wrapper reordered or coalesced, leaves the
same state, which is what write-behind and multi-node backends need.

Backends are async; one that does blocking I/O runs it off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import msgspec

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp, check_ttl, validate_timestamp
from topgun.crdt.hlc import MAX_SAFE_INTEGER
from topgun.storage.codecs import CodecContext, CodecPipeline
from topgun.storage.errors import InvalidChangeError, MapKindError, StorageConfigError, StorageError

MapKind = Literal["lww", "ormap"]
"""The two kinds of map: last-writer-wins, and observed-remove."""

T = TypeVar("T")


class MapInfo(msgspec.Struct, frozen=True):
    """A stored map: its name and kind."""

    name: str
    kind: MapKind


# --- changes ---------------------------------------------------------------------------


class PutRecord(msgspec.Struct, frozen=True, tag="put_record"):
    """Store `record` as the record of `key` in LWW map `map_name`, unless the stored
    record's timestamp is equal or newer. Tombstones (`value is None`) are records too."""

    map_name: str
    key: str
    record: LWWRecord


class PruneRecord(msgspec.Struct, frozen=True, tag="prune_record"):
    """GC: forget the record of `key` in LWW map `map_name` if it is a tombstone with a
    timestamp before `older_than` (a newer write is kept)."""

    map_name: str
    key: str
    older_than: Timestamp


class AddORRecord(msgspec.Struct, frozen=True, tag="add_or_record"):
    """Store `record` under (`key`, `record.tag`) in OR-Map `map_name`, unless that tag is
    tombstoned there or already stored."""

    map_name: str
    key: str
    record: ORMapRecord


class RemoveORTag(msgspec.Struct, frozen=True, tag="remove_or_tag"):
    """Tombstone `tag` in OR-Map `map_name`: forget the record(s) holding it and remember
    the tag so it is never stored again. `key` is the key that held it, when the caller
    knows; otherwise the key of the stored record it removes (or none)."""

    map_name: str
    tag: str
    key: str | None = None


class PruneORTag(msgspec.Struct, frozen=True, tag="prune_or_tag"):
    """GC: forget the tombstone of `tag` in OR-Map `map_name`."""

    map_name: str
    tag: str


class DeleteKey(msgspec.Struct, frozen=True, tag="delete_key"):
    """Forget everything stored for `key` in map `map_name`, of either kind: its LWW
    record, or its OR records and the tombstones recorded for it."""

    map_name: str
    key: str


class PutMeta(msgspec.Struct, frozen=True, tag="put_meta"):
    """Store `value` under (`namespace`, `key`) in the meta area; `None` deletes it."""

    namespace: str
    key: str
    value: bytes | None


Change = PutRecord | PruneRecord | AddORRecord | RemoveORTag | PruneORTag | DeleteKey | PutMeta
"""One change of a batch (a tagged union, so changes can be serialized as they are)."""

LWW_CHANGES = (PutRecord, PruneRecord)
"""Change types that apply to LWW maps only."""
OR_CHANGES = (AddORRecord, RemoveORTag, PruneORTag)
"""Change types that apply to OR-Maps only."""
CREATING_CHANGES = (PutRecord, AddORRecord, RemoveORTag)
"""Change types that create their map when it is not stored yet (the others are no-ops)."""


def _fail(index: int, change: object, problem: str) -> InvalidChangeError:
    return InvalidChangeError(f"change #{index} ({type(change).__name__}): {problem}")


def _check_str(index: int, change: object, name: str, value: object) -> None:
    if type(value) is not str:
        raise _fail(index, change, f"{name} must be a str, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise _fail(index, change, f"{name} {value!r} is not valid Unicode text") from None


def _check_timestamp(index: int, change: object, name: str, ts: object) -> None:
    if not isinstance(ts, Timestamp):
        raise _fail(index, change, f"{name} must be a Timestamp, got {type(ts).__name__}")
    try:
        validate_timestamp(ts)
    except ValueError as exc:
        raise _fail(index, change, f"{name}: {exc}") from None
    _check_str(index, change, f"{name} node id", ts.node_id)


class CheckedBatch(list[Change]):
    """Changes that passed `check_batch` already (a storage writer's transaction): a
    backend's own `check_batch` at its door lets them through without a second pass."""

    __slots__ = ()


def check_batch(changes: object) -> None:
    """Raise `InvalidChangeError` naming the first malformed change of `changes`.

    msgspec Structs do not check types when built in Python, so storage checks them at
    its door: names, keys and tags are `str`, records are the record types with valid
    timestamps and TTLs, OR tags equal their timestamp's string form, meta values bytes.
    """
    if changes.__class__ is CheckedBatch:
        return
    if isinstance(changes, str | bytes) or not isinstance(changes, Sequence):
        raise InvalidChangeError(f"a batch is a sequence of changes, got {type(changes).__name__}")
    for index, change in enumerate(changes):
        if _plainly_valid(change):
            continue
        _check_change(index, change)


def _plainly_valid(change: object) -> bool:
    """True for the common shapes that pass every check (an LWW put without TTL, a meta
    row, ASCII names): the per-write fast path. False means "check in full", not invalid."""
    if isinstance(change, PutRecord):
        record = change.record
        if record.__class__ is not LWWRecord or record.ttl_ms is not None:
            return False
        ts = record.timestamp
        if ts.__class__ is not Timestamp:
            return False
        millis, counter, node_id = ts.millis, ts.counter, ts.node_id
        name, key = change.map_name, change.key
        return (
            type(millis) is int
            and 0 <= millis <= MAX_SAFE_INTEGER
            and type(counter) is int
            and 0 <= counter <= MAX_SAFE_INTEGER
            and type(node_id) is str
            and node_id.isascii()
            and ":" not in node_id
            and type(name) is str
            and name.isascii()
            and type(key) is str
            and key.isascii()
        )
    if isinstance(change, PutMeta):
        namespace, key, value = change.namespace, change.key, change.value
        return (
            type(namespace) is str
            and namespace.isascii()
            and type(key) is str
            and key.isascii()
            and (value is None or type(value) is bytes)
        )
    return False


def _check_change(index: int, change: object) -> None:
    """Every check of `check_batch` for one change."""
    if isinstance(change, PutMeta):
        _check_str(index, change, "namespace", change.namespace)
        _check_str(index, change, "key", change.key)
        if change.value is not None and type(change.value) is not bytes:
            raise _fail(index, change, f"value must be bytes or None, not {change.value!r}")
        return
    if not isinstance(change, LWW_CHANGES + OR_CHANGES + (DeleteKey,)):
        raise _fail(index, change, "not a storage change")
    _check_str(index, change, "map_name", change.map_name)
    if isinstance(change, PutRecord | AddORRecord):
        _check_str(index, change, "key", change.key)
        expected = LWWRecord if isinstance(change, PutRecord) else ORMapRecord
        record = change.record
        if not isinstance(record, expected):
            raise _fail(index, change, f"record must be an {expected.__name__}")
        _check_timestamp(index, change, "record timestamp", record.timestamp)
        try:
            check_ttl(record.ttl_ms)
        except ValueError as exc:
            raise _fail(index, change, f"record {exc}") from None
        if isinstance(record, ORMapRecord):
            _check_str(index, change, "record tag", record.tag)
            if record.tag != str(record.timestamp):
                raise _fail(
                    index, change, f"tag {record.tag!r} is not its timestamp {record.timestamp}"
                )
    elif isinstance(change, PruneRecord):
        _check_str(index, change, "key", change.key)
        _check_timestamp(index, change, "older_than", change.older_than)
    elif isinstance(change, RemoveORTag | PruneORTag):
        _check_str(index, change, "tag", change.tag)
        if isinstance(change, RemoveORTag) and change.key is not None:
            _check_str(index, change, "key", change.key)
    else:
        _check_str(index, change, "key", change.key)


_KIND_NAMES: dict[MapKind, str] = {"lww": "an LWW map", "ormap": "an OR-Map"}


def kind_mismatch(map_name: str, stored: MapKind, change: Change) -> MapKindError:
    """The error for `change` naming map `map_name`, which is stored as the other kind."""
    return MapKindError(
        f"map {map_name!r} is stored as {_KIND_NAMES[stored]}, "
        f"but {type(change).__name__} applies to the other kind"
    )


def kind_of(change: Change) -> MapKind | None:
    """The kind of map `change` applies to; `None` for either kind (or the meta area)."""
    if isinstance(change, LWW_CHANGES):
        return "lww"
    if isinstance(change, OR_CHANGES):
        return "ormap"
    return None


# --- snapshots -------------------------------------------------------------------------


class LWWSnapshot(msgspec.Struct, frozen=True):
    """The stored state of an LWW map (or of some of its keys)."""

    name: str
    records: dict[str, LWWRecord]
    """Key -> record, tombstones included."""

    kind: ClassVar[Literal["lww"]] = "lww"


class ORSnapshot(msgspec.Struct, frozen=True):
    """The stored state of an OR-Map (or of some of its keys)."""

    name: str
    records: dict[str, list[ORMapRecord]]
    """Key -> its records, in tag order."""
    tombstones: dict[str, str | None]
    """Tombstoned tag -> the key that held it (`None` when unknown)."""

    kind: ClassVar[Literal["ormap"]] = "ormap"


MapSnapshot = LWWSnapshot | ORSnapshot
"""What `load_map` and `load_keys` return."""


class MapPage(msgspec.Struct, frozen=True):
    """One page of a stored map, as `PagedBackend.load_page` returns it."""

    snapshot: MapSnapshot
    """The records of the page's keys. An OR-Map's first page also holds every tombstone of
    the map (they carry no values, and the server keeps them all in memory anyway); later
    pages hold none."""
    next_after: str | None
    """Where the next page starts (pass it as `after`); `None` when this page is the last."""


def check_page_request(after: object, limit: object) -> None:
    """Raise `TypeError`/`ValueError` unless `after` is a str or None and `limit` an int ≥ 1
    (the arguments of `PagedBackend.load_page`)."""
    if after is not None and type(after) is not str:
        raise TypeError(f"after must be a str or None, got {type(after).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


# --- backends --------------------------------------------------------------------------


@runtime_checkable
class StorageBackend(Protocol):
    """A storage backend. Methods other than `initialize` raise `StorageClosedError` before
    `initialize()` and after `close()`."""

    async def initialize(self) -> None:
        """Open (creating if needed) and migrate the storage; a second call does nothing."""
        ...

    async def list_maps(self) -> list[MapInfo]:
        """Every stored map, sorted by name."""
        ...

    async def load_map(self, name: str) -> MapSnapshot | None:
        """The whole stored state of map `name`; `None` if it is not stored."""
        ...

    async def load_keys(self, name: str, keys: Iterable[str]) -> MapSnapshot | None:
        """The stored state of `keys` of map `name` (absent keys are left out; for an
        OR-Map, the tombstones recorded for those keys); `None` if the map is not stored."""
        ...

    async def load_meta(self, namespace: str) -> dict[str, bytes]:
        """Every (key -> value) of the meta area's `namespace`."""
        ...

    async def store_batch(self, changes: Sequence[Change]) -> None:
        """Apply `changes` in order, in one transaction: when this returns, all of them are
        durable (as the backend documents); when it raises, none was applied.

        Raises `InvalidChangeError`, `MapKindError`, `ValueCodecError`, or another
        `StorageError` naming what failed.
        """
        ...

    async def delete(self, name: str, keys: Iterable[str]) -> None:
        """Forget everything stored for `keys` of map `name` (one transaction)."""
        ...

    async def close(self) -> None:
        """Finish and release the storage; a second call does nothing."""
        ...


@runtime_checkable
class PagedBackend(StorageBackend, Protocol):
    """A storage backend that can hand out a map page by page: what lets a server with a
    memory budget load a map larger than that budget without ever holding all of it.
    Optional: without it the server loads each map whole (`load_map`)."""

    async def load_page(self, name: str, after: str | None, limit: int) -> MapPage | None:
        """The stored state of the keys of map `name` that sort after `after` (in code
        point order; from the first key when `None`): at most `limit` keys with their
        records, plus, on an OR-Map's first page, every tombstone of the map. A wrapper
        around a backend that cannot page may answer the whole map as its only page.
        `None` if the map is not stored. Raises `TypeError`/`ValueError` for bad arguments
        (`check_page_request`)."""
        ...


class StoredValue(msgspec.Struct, frozen=True):
    """One persisted value as the backend holds it: the bytes the codecs made, and where.

    What `RecodableBackend.scan_values` returns and `replace_values` takes back."""

    context: CodecContext
    """The area, map (or meta namespace) and key the value belongs to."""
    tag: str | None
    """The record's tag in an OR-Map; `None` for LWW records and meta values."""
    data: bytes
    """The stored bytes (the output of the codec pipeline)."""

    def position(self) -> tuple[int, str, str, str]:
        """Where the value sorts in a scan: area (LWW, OR-Map, meta), name, key, tag."""
        return (_AREA_RANK[self.context.area], self.context.name, self.context.key, self.tag or "")


_AREA_RANK: dict[str, int] = {"lww": 0, "ormap": 1, "meta": 2}


@runtime_checkable
class RecodableBackend(StorageBackend, Protocol):
    """A storage backend whose stored value bytes can be read and re-encoded in place: what key
    rotation (re-encrypting every value with a new key) needs, since the changes of the
    contract never rewrite a record with the same timestamp.

    Tombstones (no value) are not scanned. `replace_values` swaps bytes only where the
    stored ones are still those scanned, in one transaction, so a write that landed in
    between is never overwritten with older bytes.
    """

    async def count_values(self) -> int:
        """How many values `scan_values` would return in all."""
        ...

    async def scan_values(self, after: StoredValue | None, limit: int) -> list[StoredValue]:
        """The next `limit` stored values after `after` (from the start when `None`), in
        `StoredValue.position` order: a scan resumes from the last value it returned."""
        ...

    async def replace_values(self, replacements: Sequence[tuple[StoredValue, bytes]]) -> int:
        """Store each pair's new bytes where its value is still stored with the scanned
        bytes (compare and swap, one transaction); return how many were replaced."""
        ...


def recodable_under(backend: StorageBackend, wrapper: str) -> RecodableBackend:
    """`backend` as the `RecodableBackend` that a `wrapper` around it forwards re-encoding
    to; `StorageError` if it is not one."""
    if not isinstance(backend, RecodableBackend):
        raise StorageError(
            f"{backend!r} under {wrapper} cannot re-encode stored values "
            "(it is not a RecodableBackend)"
        )
    return backend


class StorageStatus(msgspec.Struct, frozen=True):
    """How a backend is doing, for `/ready` and `/metrics` (see `ReportsStatus`)."""

    available: bool = True
    """False while the backend cannot commit (a lost connection being retried)."""
    problem: str | None = None
    """What is wrong while `available` is false (the last error)."""
    retries: int = 0
    """Failed attempts retried since the backend was opened."""
    staged: int = 0
    """Changes accepted but not yet durable (a write-behind wrapper's backlog)."""


@runtime_checkable
class ReportsStatus(Protocol):
    """A backend (or wrapper) that can tell whether it is able to commit. Optional: the
    server treats a backend without `status()` as always available."""

    def status(self) -> StorageStatus:
        """The current status; cheap, called on every `/ready` and metrics scrape."""
        ...


@runtime_checkable
class DeferredDurability(Protocol):
    """A backend (a write-behind wrapper) whose `store_batch` returns once the changes are
    staged, before they are durable. `StorageWriter` then finishes a `Commit` only once
    `wait_durable(mark)` returned for the mark taken right after its `store_batch`."""

    def durability_mark(self) -> int:
        """A mark covering every change staged so far."""
        ...

    async def wait_durable(self, mark: int) -> None:
        """Return once every change covered by `mark` is durable in the inner backend."""
        ...


@dataclass(frozen=True)
class BackendConfig:
    """What a backend factory (and a wrapper) is built from."""

    data_dir: Path
    """The server's data directory; file-based backends keep their files inside it."""
    codecs: CodecPipeline = field(default_factory=CodecPipeline)
    """The configured value codecs; backends pass every persisted value through them."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The backend's own options (the configuration's `[storage.options]`)."""
    sections: Mapping[str, Any] = field(default_factory=dict)
    """The server configuration's plugin sections (`register_config_sections`) by name,
    validated: where a plugin backend or wrapper finds its own table (`[postgres]`)."""

    def section_as(self, name: str, section_type: type[T]) -> T:
        """Section `name` as `section_type`; its defaults when the configuration has none."""
        found = self.sections.get(name)
        if found is None:
            return section_type()
        if not isinstance(found, section_type):
            raise StorageConfigError(
                f"configuration section [{name}] is a {type(found).__name__}, "
                f"expected {section_type.__name__}"
            )
        return found

    def options_as(self, options_type: type[T], backend: str) -> T:
        """`options` converted to `options_type` (a msgspec Struct); an unknown key or a bad
        value is a `StorageConfigError` naming it."""
        try:
            return msgspec.convert(dict(self.options), options_type)
        except msgspec.ValidationError as exc:
            raise StorageConfigError(f"storage backend {backend!r}: bad option: {exc}") from None


BackendFactory = Callable[[BackendConfig], StorageBackend]
"""What `register_storage` registers: builds an uninitialized backend."""

BackendWrapper = Callable[[StorageBackend, BackendConfig], StorageBackend]
"""What `register_storage_wrappers` registers: returns a backend adding a behaviour around
the one it is given (write-behind, hot/cold tiering)."""


def encoded_value(change: Change, codecs: CodecPipeline) -> bytes | None:
    """The bytes a backend stores for `change`'s value: the record value packed and encoded
    by `codecs`, a meta value encoded by them; `None` for a tombstone or a change without a
    value."""
    if isinstance(change, PutRecord):
        if change.record.value is None:
            return None
        return codecs.pack(change.record.value, CodecContext("lww", change.map_name, change.key))
    if isinstance(change, AddORRecord):
        return codecs.pack(change.record.value, CodecContext("ormap", change.map_name, change.key))
    if isinstance(change, PutMeta) and change.value is not None:
        return codecs.encode(change.value, CodecContext("meta", change.namespace, change.key))
    return None
