"""Observed-remove map (PROTOCOL.md §2.2, §3.4): each key holds a set of tagged records.

Every add creates a record with a fresh tag (the HLC string of its timestamp); a remove
tombstones the tags it has *observed*. A tombstoned tag can never come back, while a
concurrent add of a new tag survives the remove (add wins). Tombstones stay until GC
prunes them.

A key's records can be *cold* (`evict`): their values are dropped from memory while tags,
timestamps, TTLs, tombstones and the key's Merkle hash stay, so sync trees, tombstone
checks and TTL expiry go on unchanged; `thaw` puts the values back (tiered storage loads
them from the backend). Reading a cold key's values, or changing its records, raises
`ColdValueError` before anything changes: thaw it first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from topgun.crdt.hashing import or_entry_hash, or_record_string, sorted_utf16
from topgun.crdt.hlc import HLC, validate_timestamp
from topgun.crdt.lww import COLD, ColdValueError, check_ttl
from topgun.crdt.merkle import MerkleTree
from topgun.crdt.records import ORMapRecord, Timestamp

ORMapListener = Callable[[str, str, ORMapRecord | None], None]
"""Called with `(key, tag, record)` after a record is added, or `(key, tag, None)` after a
live record of `key` is tombstoned."""


class InvalidTagError(ValueError):
    """An OR-Map record whose tag is not the HLC string form of its timestamp (§2.2)."""


@dataclass(frozen=True, slots=True)
class ORMergeResult:
    """What `ORMap.merge_entry` changed: the events and the stale-record reply it implies."""

    added: list[ORMapRecord] = field(default_factory=list)
    """Records newly added (one `OR_ADD` event each)."""
    tombstoned: list[str] = field(default_factory=list)
    """Tags newly tombstoned (one `OR_REMOVE` event each when they removed a live record)."""
    stale: list[ORMapRecord] = field(default_factory=list)
    """Offered records whose tags were tombstoned here before this merge: the sender holds
    stale state and should be sent this key's records and tombstones (PROTOCOL.md §6.4)."""


class _Entry:
    """One key's live records, their cached hash strings, and the tombstoned tags it held.

    A cold entry's records hold `COLD` as their values, it has no strings, and `cold_hash`
    keeps the entry hash they made."""

    __slots__ = ("cold_hash", "records", "strings", "tombstones")

    def __init__(self) -> None:
        self.records: dict[str, ORMapRecord] = {}
        self.strings: dict[str, str] = {}
        self.tombstones: set[str] = set()
        self.cold_hash: int | None = None


def same_value(a: Any, b: Any) -> bool:
    """Value equality as JSON sees it: structural, `True` ≠ `1`, `1` = `1.0`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bytes | bytearray) and isinstance(b, bytes | bytearray):
        return bytes(a) == bytes(b)
    return type(a) is type(b) and bool(a == b)


def _check_or_record(key: object, record: object) -> ORMapRecord:
    if type(key) is not str:
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not isinstance(record, ORMapRecord):
        raise TypeError(
            f"record for key {key!r} must be an ORMapRecord, got {type(record).__name__}"
        )
    validate_timestamp(record.timestamp)
    check_ttl(record.ttl_ms)
    if record.tag != str(record.timestamp):
        raise InvalidTagError(
            f"record tag {record.tag!r} of key {key!r} must equal its timestamp {record.timestamp}"
        )
    return record


def _parse_tag(tag: object) -> Timestamp:
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a str, got {type(tag).__name__}")
    try:
        timestamp = validate_timestamp(Timestamp.parse(tag))
    except ValueError as exc:
        raise InvalidTagError(f"tag {tag!r} is not an HLC string: {exc}") from None
    if str(timestamp) != tag:  # e.g. leading zeros or non-ASCII digits
        raise InvalidTagError(f"tag {tag!r} is not an HLC string in canonical form")
    return timestamp


class ORMap:
    """An observed-remove map of string keys to sets of tagged records.

    `add`/`remove` are local operations stamped by `hlc`; `apply`, `apply_tombstone` and
    `merge_entry` take remote state. The Merkle trie hashes each key's non-tombstoned
    records (PROTOCOL.md §3.4) and keeps "dead" keys (only tombstones) with hash 0.
    """

    __slots__ = ("_cold", "_entries", "_hlc", "_listeners", "_merkle", "_tag_keys", "_tombstones")

    def __init__(self, hlc: HLC) -> None:
        self._hlc = hlc
        self._entries: dict[str, _Entry] = {}
        self._cold: set[str] = set()
        self._tag_keys: dict[str, set[str]] = {}  # tag -> keys holding it, live or tombstoned
        self._tombstones: dict[str, Timestamp] = {}
        self._listeners: list[ORMapListener] = []
        self._merkle = MerkleTree(self._item_hash)

    def _item_hash(self, key: str, key_hash: int) -> int | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.cold_hash is not None:
            return entry.cold_hash
        return or_entry_hash(key, entry.strings)

    @property
    def hlc(self) -> HLC:
        """The clock that stamps local adds and absorbs remote timestamps."""
        return self._hlc

    @property
    def merkle(self) -> MerkleTree:
        """The map's Merkle trie (entry hashes of PROTOCOL.md §3.4; dead keys hash to 0)."""
        return self._merkle

    def add(self, key: str, value: Any, ttl_ms: float | None = None) -> ORMapRecord:
        """Add `value` under `key` with a fresh tag; returns the new record."""
        if type(key) is not str:
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        check_ttl(ttl_ms)
        timestamp = self._hlc.now()
        record = ORMapRecord(value, timestamp, str(timestamp), ttl_ms)
        self._insert(key, record, or_record_string(record))
        return record

    def remove(self, key: str, value: Any) -> list[str]:
        """Tombstone every observed tag of `key` whose value equals `value`; returns the tags."""
        entry = self._entries.get(key)
        if entry is None:
            return []
        self._check_warm([key])
        tags = sorted_utf16(t for t, r in entry.records.items() if same_value(r.value, value))
        for tag in tags:
            self._tombstone(tag, _parse_tag(tag))
        return tags

    def apply(self, key: str, record: ORMapRecord) -> bool:
        """Add a remote record unless its tag is tombstoned or already here; True if added.

        Raises InvalidTagError if the tag is not its timestamp's string form. The HLC absorbs
        the record's timestamp first, added or not.
        """
        _check_or_record(key, record)
        text = or_record_string(record)  # also rejects values that cannot be hashed
        self._hlc.update(record.timestamp)
        return self._add_checked(key, record, text)

    def _add_checked(self, key: str, record: ORMapRecord, text: str) -> bool:
        if record.tag in self._tombstones:
            return False
        entry = self._entries.get(key)
        if entry is not None and record.tag in entry.records:
            return False
        if self._cold:
            self._check_warm([key])
        self._insert(key, record, text)
        return True

    def _insert(self, key: str, record: ORMapRecord, text: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.records[record.tag] = record
        entry.strings[record.tag] = text
        self._tag_keys.setdefault(record.tag, set()).add(key)
        self._merkle.touch(key)
        for listener in tuple(self._listeners):
            listener(key, record.tag, record)

    def apply_tombstone(self, tag: str) -> bool:
        """Tombstone `tag`, removing it from whichever key holds it; True if newly tombstoned.

        A tag not seen yet is tombstoned too, so its record is refused if it arrives later.
        """
        timestamp = _parse_tag(tag)
        if tag in self._tombstones:
            return False
        if self._cold:
            self._check_warm(self.keys_holding(tag))
        self._tombstone(tag, timestamp)
        return True

    def _tombstone(self, tag: str, timestamp: Timestamp) -> None:
        self._tombstones[tag] = timestamp
        for key in sorted(self._tag_keys.get(tag, ())):
            entry = self._entries[key]
            if entry.records.pop(tag, None) is None:
                continue
            del entry.strings[tag]
            entry.tombstones.add(tag)
            self._merkle.touch(key)
            for listener in tuple(self._listeners):
                listener(key, tag, None)

    def merge_entry(
        self, key: str, records: Iterable[ORMapRecord], tombstones: Iterable[str]
    ) -> ORMergeResult:
        """Merge one key's remote state (an `ORMapEntry` of PROTOCOL.md §2.2) for sync.

        Tombstones are applied first (they may name tags of any key), then the records.
        Everything is validated before anything changes.
        """
        offered = [_check_or_record(key, r) for r in records]
        texts = [or_record_string(r) for r in offered]
        tags = list(tombstones)
        times = [_parse_tag(t) for t in tags]
        if self._cold:
            touched = {key} if offered else set()
            for tag in tags:
                if tag not in self._tombstones:
                    touched.update(self.keys_holding(tag))
            self._check_warm(touched)
        if offered:
            self._hlc.update(max(r.timestamp for r in offered))
        result = ORMergeResult()
        for tag, timestamp in zip(tags, times, strict=True):
            if tag not in self._tombstones:
                self._tombstone(tag, timestamp)
                result.tombstoned.append(tag)
        newly = set(result.tombstoned)
        for record, text in zip(offered, texts, strict=True):
            if record.tag in self._tombstones:
                if record.tag not in newly:
                    result.stale.append(record)
            elif self._add_checked(key, record, text):
                result.added.append(record)
        return result

    def restore(
        self,
        records: Mapping[str, Iterable[ORMapRecord]],
        tombstones: Mapping[str, str | None],
    ) -> Timestamp | None:
        """Load state this map's owner stored earlier (a storage snapshot) into the map.

        `records` maps keys to their records; `tombstones` maps each tombstoned tag to the
        key that held it (`None` when unknown), which is how a restarted map still lists a
        key's tombstones in sync leaves and keeps dead keys in its trie. A record whose tag
        is tombstoned is left out. Listeners are not called and the clock is not moved:
        nothing changed, the map only learned what it had. Returns the newest timestamp
        seen (records and tombstones), for the owner to fold into its clock, or `None`.
        It may come in parts (a map loaded page by page), each key's records in one part.
        Everything is validated before anything changes (a cold key is a `ColdValueError`).
        """
        offered = [
            (key, record, or_record_string(_check_or_record(key, record)))
            for key, key_records in records.items()
            for record in key_records
        ]
        tags = [(tag, _parse_tag(tag), key) for tag, key in tombstones.items()]
        for _, _, key in tags:
            if key is not None and type(key) is not str:
                raise TypeError(f"tombstone key must be a str or None, got {type(key).__name__}")
        if self._cold:
            self._check_warm([*records, *(key for _, _, key in tags if key is not None)])
        newest: Timestamp | None = None
        for tag, timestamp, key in tags:
            newest = timestamp if newest is None or timestamp > newest else newest
            if tag not in self._tombstones:
                self._tombstones[tag] = timestamp
            if key is not None:
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry()
                if entry.records.pop(tag, None) is not None:
                    del entry.strings[tag]
                entry.tombstones.add(tag)
                self._tag_keys.setdefault(tag, set()).add(key)
                self._merkle.touch(key)
        for key, record, text in offered:
            newest = record.timestamp if newest is None or record.timestamp > newest else newest
            if record.tag in self._tombstones:
                continue
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.records[record.tag] = record
            entry.strings[record.tag] = text
            self._tag_keys.setdefault(record.tag, set()).add(key)
            self._merkle.touch(key)
        return newest

    def records(self, key: str) -> list[ORMapRecord]:
        """`key`'s non-tombstoned records (expired ones included), in UTF-16 tag order (a
        cold key's records hold `COLD` as their values)."""
        entry = self._entries.get(key)
        if entry is None:
            return []
        return [entry.records[tag] for tag in sorted_utf16(entry.records)]

    def values(self, key: str) -> list[Any]:
        """`key`'s live values: not tombstoned, not TTL-expired, in UTF-16 tag order.

        Raises `ColdValueError` if the key is cold."""
        if key in self._cold:
            raise ColdValueError(key)
        now = self._hlc.wall_ms()
        return [r.value for r in self.records(key) if not r.expired(now)]

    def keys(self) -> list[str]:
        """Every key with at least one live value."""
        now = self._hlc.wall_ms()
        return [
            key
            for key, entry in self._entries.items()
            if any(not r.expired(now) for r in entry.records.values())
        ]

    def all_keys(self) -> list[str]:
        """Every key the map holds state for: live keys and dead keys (only tombstones)."""
        return list(self._entries)

    def keys_holding(self, tag: str) -> list[str]:
        """The keys holding a non-tombstoned record tagged `tag` (sorted; normally 0 or 1)."""
        return sorted(k for k in self._tag_keys.get(tag, ()) if tag in self._entries[k].records)

    def tombstones_of(self, key: str) -> list[str]:
        """Tombstoned tags that belonged to `key` (what a sync leaf sends with it), sorted."""
        entry = self._entries.get(key)
        return [] if entry is None else sorted_utf16(entry.tombstones)

    @property
    def tombstones(self) -> frozenset[str]:
        """Every tombstoned tag."""
        return frozenset(self._tombstones)

    def is_tombstoned(self, tag: str) -> bool:
        """True if `tag` is tombstoned here."""
        return tag in self._tombstones

    def prune(self, older_than: Timestamp) -> list[str]:
        """Forget tombstones with timestamps before `older_than` (GC, PROTOCOL.md §6.11).

        Returns the pruned tags. A key left with neither records nor tombstones leaves the
        Merkle trie.
        """
        validate_timestamp(older_than)
        pruned = sorted_utf16(t for t, ts in self._tombstones.items() if ts < older_than)
        for tag in pruned:
            del self._tombstones[tag]
            for key in self._tag_keys.pop(tag, ()):
                entry = self._entries[key]
                entry.tombstones.discard(tag)
                if not entry.records and not entry.tombstones:
                    del self._entries[key]
                    self._merkle.touch(key)
        return pruned

    # -- cold keys --------------------------------------------------------------------------

    def evict(self, key: str) -> bool:
        """Drop the values of `key`'s records from memory, keeping tags, timestamps, TTLs and
        the key's Merkle hash; True if it held records and was not cold yet.

        Nothing observable changes: no listener is called. Whoever evicts must be able to
        `thaw` the same records later (from storage)."""
        entry = self._entries.get(key)
        if entry is None or not entry.records or entry.cold_hash is not None:
            return False
        entry.cold_hash = or_entry_hash(key, entry.strings)
        entry.records = {
            tag: ORMapRecord(COLD, r.timestamp, tag, r.ttl_ms) for tag, r in entry.records.items()
        }
        entry.strings = {}
        self._cold.add(key)
        return True

    def thaw(self, key: str, records: Iterable[ORMapRecord]) -> bool:
        """Put the values of cold `key` back from `records` (what storage holds for the key);
        True if they were put back, False (and no change) if the key is not cold.

        Raises ValueError, changing nothing, unless `records` hold every cold tag with its
        timestamp and the values hash as the evicted ones did: storage does not hold what
        was evicted. Records of other tags are ignored."""
        entry = self._entries.get(key)
        if entry is None or entry.cold_hash is None:
            return False
        offered = {r.tag: r for r in records}
        restored: dict[str, ORMapRecord] = {}
        for tag, cold in entry.records.items():
            found = offered.get(tag)
            if found is None or found.timestamp != cold.timestamp:
                raise ValueError(
                    f"key {key!r}: storage does not hold record {tag!r}, whose value was evicted"
                )
            restored[tag] = found
        strings = {tag: or_record_string(r) for tag, r in restored.items()}
        if or_entry_hash(key, strings) != entry.cold_hash:
            raise ValueError(f"key {key!r}: the stored values differ from the evicted ones")
        entry.records, entry.strings, entry.cold_hash = restored, strings, None
        self._cold.discard(key)
        return True

    def is_cold(self, key: str) -> bool:
        """Whether the values of `key` are evicted from memory."""
        return key in self._cold

    def cold_keys(self) -> set[str]:
        """Every key whose values are evicted from memory (a copy)."""
        return set(self._cold)

    def hash_strings(self, key: str) -> list[str]:
        """The cached hash input strings of `key`'s records (none when cold): memory that
        its values take a second time, for accounting."""
        entry = self._entries.get(key)
        return [] if entry is None else list(entry.strings.values())

    def _check_warm(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key in self._cold:
                raise ColdValueError(key)

    def on_change(self, listener: ORMapListener) -> Callable[[], None]:
        """Call `listener(key, tag, record | None)` after every change; returns an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe
