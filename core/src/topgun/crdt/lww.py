"""Last-writer-wins map (PROTOCOL.md §2.2): per key, the record with the newest timestamp wins.

A removal is a tombstone record (value None) that competes like any value, so a late
removal beats an earlier write and a later write resurrects the key. Tombstones stay
until GC prunes them (`prune`), which is what lets every replica agree on deletions.

A record can be *cold* (`evict`): its value is dropped from memory while its key,
timestamp and TTL stay, so merges, Merkle hashes and TTL expiry go on unchanged; the
value comes back with `thaw` (tiered storage loads it from the backend). Reading a cold
value raises `ColdValueError` instead of answering wrongly.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Iterable
from typing import Any

from topgun.crdt.hashing import fnv1a32
from topgun.crdt.hlc import HLC, MAX_SAFE_INTEGER, validate_timestamp
from topgun.crdt.merkle import MerkleTree
from topgun.crdt.records import LWWRecord, Timestamp


class _Cold:
    """The type of `COLD`: the value a cold record holds in place of its real one."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "COLD"


COLD: Any = _Cold()
"""The value of a cold record (see `LWWMap.evict`); never a real value."""


class ColdValueError(LookupError):
    """A cold record's value was read before `LWWMap.thaw` brought it back."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the value of key {key!r} is evicted from memory (cold): load it first")
        self.key = key


LWWListener = Callable[[str, LWWRecord], None]
"""Called with `(key, record)` after a record is stored: by `set`, `remove` or a merge."""


def check_ttl(ttl_ms: float | None) -> float | None:
    """Return `ttl_ms` if it is None or a positive finite number, else raise ValueError."""
    if ttl_ms is None:
        return None
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int | float):
        raise ValueError(f"ttl_ms must be a number, got {type(ttl_ms).__name__}")
    if not (math.isfinite(ttl_ms) and ttl_ms > 0):
        raise ValueError(f"ttl_ms must be positive and finite, got {ttl_ms!r}")
    return ttl_ms


def _check_record(key: object, record: object) -> None:
    if type(key) is not str:
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not isinstance(record, LWWRecord):
        raise TypeError(f"record for key {key!r} must be an LWWRecord, got {type(record).__name__}")
    validate_timestamp(record.timestamp)
    check_ttl(record.ttl_ms)


class LWWMap:
    """A last-writer-wins map of string keys, stamped by an HLC and summarized by a Merkle trie.

    Local writes (`set`, `remove`) take a fresh timestamp from `hlc`; remote records arrive
    through `merge` / `merge_many`, which apply a record only if its timestamp is strictly
    newer than the key's current one. TTL expiry is judged with `hlc`'s injected clock.
    """

    __slots__ = ("_cold", "_hlc", "_listeners", "_merkle", "_records")

    def __init__(self, hlc: HLC) -> None:
        self._hlc = hlc
        self._records: dict[str, LWWRecord] = {}
        self._cold: set[str] = set()
        self._listeners: list[LWWListener] = []
        self._merkle = MerkleTree(self._item_hash)

    def _item_hash(self, key: str, key_hash: int) -> int | None:
        record = self._records.get(key)
        if record is None:
            return None
        # fnv1a32(key + ":" + str(timestamp)), continued from the key's own hash.
        return fnv1a32(f":{record.timestamp}", key_hash)

    @property
    def hlc(self) -> HLC:
        """The clock that stamps local writes and absorbs remote timestamps."""
        return self._hlc

    @property
    def merkle(self) -> MerkleTree:
        """The map's Merkle trie (item hash = FNV-1a of `key:timestamp`, PROTOCOL.md §3.3)."""
        return self._merkle

    def set(self, key: str, value: Any, ttl_ms: float | None = None) -> LWWRecord:
        """Write `value` (not None: use `remove`) under `key`; returns the stored record."""
        if type(key) is not str:
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        if value is None:
            raise ValueError("value None marks a tombstone: use remove(key) to delete")
        record = LWWRecord(value, self._hlc.now(), check_ttl(ttl_ms))
        self._store(key, record)
        return record

    def remove(self, key: str) -> LWWRecord:
        """Delete `key` by storing a tombstone (even if the key is unknown here); returns it."""
        if type(key) is not str:
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        record = LWWRecord(None, self._hlc.now())
        self._store(key, record)
        return record

    def _store(self, key: str, record: LWWRecord) -> None:
        # The HLC has seen every stored timestamp, so a fresh reading always wins.
        self._records[key] = record
        if self._cold:
            self._cold.discard(key)
        self._merkle.touch(key)
        for listener in tuple(self._listeners):
            listener(key, record)

    def merge(self, key: str, record: LWWRecord, *, checked: bool = False) -> bool:
        """Apply a remote record if it is strictly newer than the key's; True if applied.

        The HLC absorbs the record's timestamp first, applied or not (PROTOCOL.md §2.1),
        so a strict-mode ClockDriftError leaves the map unchanged. `checked`: the caller
        validated the record's timestamp and TTL already (the server's write pipeline).
        """
        if type(key) is not str or not isinstance(record, LWWRecord):
            _check_record(key, record)  # raises the precise TypeError
        if record.ttl_ms is not None and not checked:
            check_ttl(record.ttl_ms)
        self._hlc.update(record.timestamp, checked=checked)  # validates before any change
        current = self._records.get(key)
        if current is not None and not record.timestamp > current.timestamp:
            return False
        self._store(key, record)
        return True

    def merge_many(self, items: Iterable[tuple[str, LWWRecord]]) -> int:
        """Merge many remote `(key, record)` pairs; returns how many were applied.

        Same rule as `merge`, in a tight loop for sync and bulk loads. Every pair is
        validated first and the HLC absorbs the newest timestamp once, so a bad record or a
        strict-mode drift rejects the whole batch before anything is applied.
        """
        batch = items if isinstance(items, list) else list(items)
        newest: Timestamp | None = None
        for key, record in batch:
            if type(key) is not str or type(record) is not LWWRecord:
                _check_record(key, record)  # raises the precise error
            ts = record.timestamp
            if not (
                type(ts) is Timestamp
                and type(ts.millis) is int
                and type(ts.counter) is int
                and 0 <= ts.millis <= MAX_SAFE_INTEGER
                and 0 <= ts.counter <= MAX_SAFE_INTEGER
                and type(ts.node_id) is str
                and ":" not in ts.node_id
            ):
                validate_timestamp(ts)  # raises the precise error
            if record.ttl_ms is not None:
                check_ttl(record.ttl_ms)
            if newest is None or ts > newest:
                newest = ts
        if newest is None:
            return 0
        self._hlc.update(newest)
        records = self._records
        current_of = records.get
        applied: list[str] = []
        stored: list[tuple[str, LWWRecord]] = []
        track = bool(self._listeners)
        for key, record in batch:
            current = current_of(key)
            if current is None or record.timestamp > current.timestamp:
                records[key] = record
                applied.append(key)
                if track:
                    stored.append((key, record))
        if self._cold:
            self._cold.difference_update(applied)
        self._merkle.touch_many(applied)
        for key, record in stored:
            for listener in tuple(self._listeners):
                listener(key, record)
        return len(applied)

    def get(self, key: str) -> Any:
        """The live value of `key`; None if absent, removed or TTL-expired.

        Raises `ColdValueError` if the key's record is cold."""
        record = self._records.get(key)
        if record is None or record.value is None:
            return None
        if record.ttl_ms is not None and record.expired(self._hlc.wall_ms()):
            return None
        if record.value is COLD:
            raise ColdValueError(key)
        return record.value

    def get_record(self, key: str) -> LWWRecord | None:
        """The stored record of `key`, tombstones and expired records included (a cold
        record holds `COLD` as its value)."""
        return self._records.get(key)

    def items(self) -> list[tuple[str, Any]]:
        """`(key, value)` of every live (not removed, not expired) key.

        Raises `ColdValueError` if one of them is cold."""
        now = self._hlc.wall_ms()
        if self._cold:
            for key, record in self._records.items():
                if record.value is COLD and not record.expired(now):
                    raise ColdValueError(key)
        return [
            (key, record.value)
            for key, record in self._records.items()
            if record.value is not None and not record.expired(now)
        ]

    def keys(self) -> list[str]:
        """Every live key."""
        return [key for key, _ in self.items()]

    def record_keys(self) -> list[str]:
        """Every key with a stored record, tombstones and expired records included."""
        return list(self._records)

    def records(self) -> list[tuple[str, LWWRecord]]:
        """`(key, record)` of every stored record, tombstones and expired records included
        (cold ones hold `COLD` as their value)."""
        return list(self._records.items())

    # -- cold records ---------------------------------------------------------------------

    def evict(self, key: str) -> bool:
        """Drop the value of `key` from memory, keeping its timestamp and TTL; True if it
        was a live value (tombstones and cold records stay as they are).

        Nothing observable changes: no listener is called and the Merkle hash stays.
        Whoever evicts must be able to `thaw` the same record later (from storage)."""
        record = self._records.get(key)
        if record is None or record.value is None or record.value is COLD:
            return False
        self._records[key] = LWWRecord(COLD, record.timestamp, record.ttl_ms)
        self._cold.add(key)
        return True

    def thaw(self, key: str, record: LWWRecord) -> bool:
        """Put the value of cold `key` back from `record`; True if it was put back.

        Only a record with the cold record's timestamp is taken: False (and no change) if
        the key is not cold. Raises ValueError for a record of another timestamp, which
        means storage does not hold what was evicted."""
        current = self._records.get(key)
        if current is None or current.value is not COLD:
            return False
        if record.timestamp != current.timestamp or record.value is None:
            raise ValueError(
                f"key {key!r}: storage holds {record.timestamp}"
                f"{' (a tombstone)' if record.value is None else ''}, "
                f"but the evicted record was {current.timestamp}"
            )
        self._records[key] = record
        self._cold.discard(key)
        return True

    def is_cold(self, key: str) -> bool:
        """Whether the value of `key` is evicted from memory."""
        return key in self._cold

    def cold_keys(self) -> builtins.set[str]:
        """Every key whose value is evicted from memory (a copy)."""
        return set(self._cold)

    def prune(self, older_than: Timestamp) -> list[str]:
        """Drop tombstones with timestamps before `older_than` (GC, PROTOCOL.md §6.11).

        Returns the pruned keys; they leave the Merkle trie too. Live values stay.
        """
        validate_timestamp(older_than)
        pruned = [
            key
            for key, record in self._records.items()
            if record.value is None and record.timestamp < older_than
        ]
        for key in pruned:
            del self._records[key]  # tombstones are never cold
        self._merkle.touch_many(pruned)
        return pruned

    def on_change(self, listener: LWWListener) -> Callable[[], None]:
        """Call `listener(key, record)` after every stored change; returns an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe
