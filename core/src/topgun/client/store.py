"""Local stores: where a client keeps its maps, its oplog and its sync metadata.

Every write lands in memory first (the CRDT maps are the client's working state) and is
handed to the store at once through the store's synchronous methods, which only queue it;
`flush()` returns once everything queued before it is durable. That keeps a local write at
microseconds while a store like SQLite commits in batches, off the event loop.

A store holds, per client: LWW records and OR-Map records and tombstones of every map, the
oplog (writes not yet acknowledged by the server) and a small meta area (node id, next op
id, per-map sync timestamps). Values pass through a `CodecPipeline` where the store
serializes them, so encryption or compression of stored values plugs in there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import anyio

from topgun.crdt import LWWRecord, ORMapRecord
from topgun.protocol import ClientOp

__all__ = ["MemoryStore", "Store", "StoredState"]


@dataclass
class StoredState:
    """Everything a store holds, as `open()` returns it."""

    meta: dict[str, Any] = field(default_factory=dict)
    lww: dict[str, dict[str, LWWRecord]] = field(default_factory=dict)
    """map name -> key -> record (tombstones included)."""
    or_records: dict[str, dict[str, dict[str, ORMapRecord]]] = field(default_factory=dict)
    """map name -> key -> tag -> record."""
    or_tombstones: dict[str, dict[str, str | None]] = field(default_factory=dict)
    """map name -> tombstoned tag -> key that held it (None if unknown)."""
    oplog: dict[int, ClientOp] = field(default_factory=dict)
    """op id -> op, in id order: the writes the server has not acknowledged."""


@runtime_checkable
class Store(Protocol):
    """The local store of one client. Mutating methods queue and return at once; `flush`
    makes everything queued so far durable. One client uses a store at a time."""

    async def open(self) -> StoredState:
        """Load and return the stored state (an empty state for a new store)."""

    def put_lww(self, map_name: str, items: list[tuple[str, LWWRecord]]) -> None:
        """Store these records (replacing the keys' previous ones)."""

    def delete_lww(self, map_name: str, keys: list[str]) -> None:
        """Forget these keys (pruned tombstones)."""

    def put_or_record(self, map_name: str, key: str, record: ORMapRecord) -> None:
        """Store one OR-Map record under its tag."""

    def put_or_tombstones(self, map_name: str, tags: list[tuple[str, str | None]]) -> None:
        """Tombstone these `(tag, key)` pairs; each tag's record is dropped."""

    def delete_or_tombstones(self, map_name: str, tags: list[str]) -> None:
        """Forget these tombstones (pruned by GC)."""

    def clear_map(self, map_name: str) -> None:
        """Drop every record and tombstone of the map (a sync reset); its oplog entries stay."""

    def append_ops(self, ops: list[tuple[int, ClientOp]]) -> None:
        """Add writes to the oplog."""

    def remove_ops(self, op_ids: list[int]) -> None:
        """Remove acknowledged writes from the oplog."""

    def set_meta(self, name: str, value: Any) -> None:
        """Set a meta value (msgpack-serializable)."""

    async def flush(self) -> None:
        """Return once everything queued before the call is durable."""

    async def aclose(self) -> None:
        """Flush and release the store's resources."""


class MemoryStore:
    """A store in this process's memory: fast, and gone with the process.

    The same `MemoryStore` object handed to a new client (in the same process) carries the
    state over, as a file-backed store would across restarts.
    """

    def __init__(self) -> None:
        self._state = StoredState()

    async def open(self) -> StoredState:
        await anyio.lowlevel.checkpoint()
        s = self._state
        return StoredState(
            meta=dict(s.meta),
            lww={m: dict(r) for m, r in s.lww.items()},
            or_records={m: {k: dict(t) for k, t in r.items()} for m, r in s.or_records.items()},
            or_tombstones={m: dict(t) for m, t in s.or_tombstones.items()},
            oplog=dict(sorted(s.oplog.items())),
        )

    def put_lww(self, map_name: str, items: list[tuple[str, LWWRecord]]) -> None:
        self._state.lww.setdefault(map_name, {}).update(items)

    def delete_lww(self, map_name: str, keys: list[str]) -> None:
        records = self._state.lww.get(map_name, {})
        for key in keys:
            records.pop(key, None)

    def put_or_record(self, map_name: str, key: str, record: ORMapRecord) -> None:
        self._state.or_records.setdefault(map_name, {}).setdefault(key, {})[record.tag] = record

    def put_or_tombstones(self, map_name: str, tags: list[tuple[str, str | None]]) -> None:
        tombstones = self._state.or_tombstones.setdefault(map_name, {})
        records = self._state.or_records.get(map_name, {})
        for tag, key in tags:
            if key is not None or tag not in tombstones:
                tombstones[tag] = key
            for held in records.values():
                held.pop(tag, None)

    def delete_or_tombstones(self, map_name: str, tags: list[str]) -> None:
        tombstones = self._state.or_tombstones.get(map_name, {})
        for tag in tags:
            tombstones.pop(tag, None)

    def clear_map(self, map_name: str) -> None:
        for area in (self._state.lww, self._state.or_records, self._state.or_tombstones):
            area.pop(map_name, None)

    def append_ops(self, ops: list[tuple[int, ClientOp]]) -> None:
        self._state.oplog.update(ops)

    def remove_ops(self, op_ids: list[int]) -> None:
        for op_id in op_ids:
            self._state.oplog.pop(op_id, None)

    def set_meta(self, name: str, value: Any) -> None:
        self._state.meta[name] = value

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
