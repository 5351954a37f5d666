"""Ingest sequences (PROTOCOL.md §9.2): the delta cursor of `POST /sync` and `GET /events`.

Every change applied to an LWW map, by any write path, takes the map's next integer and the
server's `hlc.now()` (its *ingest* HLC) as the key's latest change. A poller resumes from a
sequence (or from an ingest HLC, as TS clients do), so a write uploaded late by a client that
was offline for a day, carrying day-old record timestamps, still reaches every poller: its
sequence is new even though its timestamp is old.

The log is compacted (one entry per key) and kept in memory in ascending sequence order, so a
delta is a binary search plus the keys it returns.

Persistence costs nothing on the write path:

- Sequences are reserved in blocks (`RESERVE`). The map's header row (meta namespace
  `ingest`) stores the reserved bound, written in the same storage batch as the change that
  crossed half the block, so no sequence handed out can be handed out again after a restart.
- Per-key entries (namespace `ingest:<map>`, key -> [sequence, ingest HLC, record HLC]) are
  written in the background, coalesced per key (`flush`). After a crash, the keys whose stored
  record differs from their stored entry — exactly those changed since the last flush — get
  fresh sequences above the reserved bound on load, with a new ingest HLC. A poller therefore
  never misses a change; at worst it receives such a key once more (LWW merges are
  idempotent).
- GC pruning a tombstone raises the map's prune floor to the pruned entry's sequence: a resume
  point before it gets `reset` (the full state), since the tombstone it would need is gone.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import operator
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import anyio
import msgspec

from topgun.crdt import COLD, HLC, LWWRecord, Timestamp
from topgun.server.maps import MapRegistry, Recording
from topgun.server.writes import Applied
from topgun.storage import Change, Commit, PruneRecord, PutMeta, StorageBackend

logger = logging.getLogger(__name__)

HEADER_NAMESPACE: Final = "ingest"
"""Meta-area namespace: map name -> msgpack `_Header` (reserved bound, prune floor)."""

RESERVE: Final = 100_000
"""Sequences reserved per header write."""

FLUSH_CHUNK: Final = 1000
"""Keys whose entries one flush transaction persists."""

DEFAULT_LIMIT: Final = 10_000
"""A delta's default and maximum number of records (PROTOCOL.md §9.2)."""


def entries_namespace(map_name: str) -> str:
    """Meta-area namespace of `map_name`'s per-key entries."""
    return f"ingest:{map_name}"


class _Header(msgspec.Struct, array_like=True):
    reserved: int
    floor: int = 0
    floor_stamp: Timestamp | None = None


class _StoredEntry(msgspec.Struct, array_like=True):
    seq: int
    ingest: Timestamp
    record: Timestamp


_encode: Final = msgspec.msgpack.Encoder().encode
_header_decoder: Final = msgspec.msgpack.Decoder(_Header)
_entry_decoder: Final = msgspec.msgpack.Decoder(_StoredEntry)


@dataclass(frozen=True, slots=True)
class SequencedChange:
    """One change as a cursor reader sees it: the key's sequence, ingest HLC and record."""

    key: str
    seq: int
    ingest: Timestamp
    record: LWWRecord


@dataclass(slots=True)
class Delta:
    """A page of changes after a resume point (`records` in ascending sequence)."""

    records: list[SequencedChange]
    seq: int
    """The sequence of the last included change, or the map's current sequence."""
    has_more: bool
    reset: bool
    sync_timestamp: Timestamp
    """Where the next poll resumes on the ingest clock (`serverSyncTimestamp`)."""


Submit = Callable[[Sequence[Change]], Awaitable[Commit]]
"""`StorageWriter.submit`."""

ChangeListener = Callable[[SequencedChange], None]
"""`listener(change)`: called for every change of its map as it is sequenced."""


@dataclass(slots=True)
class MapLog:
    """One map's compacted change log."""

    seq: int = 0
    """The last sequence handed out."""
    reserved: int = 0
    """Sequences up to this bound are durably reserved."""
    floor: int = 0
    """The highest sequence of a pruned tombstone: resuming before it needs a reset."""
    floor_stamp: Timestamp | None = None
    latest: dict[str, tuple[int, Timestamp, str]] = field(default_factory=dict)
    """key -> its latest change: (sequence, ingest HLC, key), the entry in the log."""
    _entries: list[tuple[int, Timestamp, str]] = field(default_factory=list)
    """Ascending by sequence (and ingest HLC); superseded entries go at compaction."""

    def add(self, key: str, seq: int, ingest: Timestamp) -> None:
        """Record `seq` (greater than every earlier one) as `key`'s latest change."""
        entry = (seq, ingest, key)
        latest = self.latest
        latest[key] = entry
        entries = self._entries
        entries.append(entry)
        if len(entries) > 64 and len(entries) > 2 * len(latest):
            self._entries = [e for e in entries if latest.get(e[2]) is e]

    def forget(self, key: str) -> tuple[int, Timestamp] | None:
        """Drop `key`'s entry (its tombstone was pruned); returns (sequence, ingest HLC)."""
        entry = self.latest.pop(key, None)
        return None if entry is None else (entry[0], entry[1])

    def start_after_seq(self, since: int) -> int:
        """Index of the first change with a sequence greater than `since`."""
        return bisect.bisect_right(self._entries, since, key=_SEQUENCE)

    def start_after_stamp(self, since: Timestamp) -> int:
        """Index of the first change ingested after `since`."""
        return bisect.bisect_right(self._entries, since, key=_INGEST)

    def seq_before(self, index: int) -> int:
        """The sequence just before position `index` (0 at the start)."""
        return self._entries[index - 1][0] if index > 0 else 0

    def changes_from(self, index: int) -> Iterable[tuple[str, int, Timestamp]]:
        """(key, sequence, ingest HLC) of the live changes from position `index` on."""
        latest = self.latest
        for entry in itertools.islice(self._entries, index, None):
            seq, stamp, key = entry
            if latest.get(key) is entry:
                yield key, seq, stamp


_SEQUENCE: Final = operator.itemgetter(0)
_INGEST: Final = operator.itemgetter(1)


class IngestLog:
    """The ingest sequences of every LWW map (see the module docstring)."""

    def __init__(self, maps: MapRegistry, hlc: HLC, *, flush_interval_ms: int = 1000) -> None:
        self.maps = maps
        self.hlc = hlc
        self.flush_interval_ms = flush_interval_ms
        self.logs: dict[str, MapLog] = {}
        self.listeners: dict[str, set[ChangeListener]] = {}
        """Map name -> who hears each of its changes (the SSE streams)."""
        self._dirty: dict[str, set[str]] = {}
        self._backend: StorageBackend | None = None

    def log(self, map_name: str) -> MapLog:
        """`map_name`'s log (empty for a map with no change yet)."""
        log = self.logs.get(map_name)
        if log is None:
            log = self.logs[map_name] = MapLog()
        return log

    # -- recording --------------------------------------------------------------------------

    def observe(self, applied: Sequence[Applied], recording: Recording) -> None:
        """The change observer: sequence each LWW change of `applied` (one clock reading
        for them all)."""
        items = [
            (one.map_name, one.key, payload.record)
            for one in applied
            for payload in one.events
            if payload.record is not None
        ]
        if not items:
            return
        changes = recording.changes
        stamps = self.hlc.now_many(len(items))
        current = None
        log = MapLog()
        dirty: set[str] = set()
        listeners: set[ChangeListener] | None = None
        for (name, key, record), ingest in zip(items, stamps, strict=True):
            if name != current:
                current = name
                log = self.log(name)
                dirty = self._dirty.setdefault(name, set())
                listeners = self.listeners.get(name)
            seq = log.seq = log.seq + 1
            if seq > log.reserved - RESERVE // 2:
                log.reserved = seq + RESERVE
                changes.append(PutMeta(HEADER_NAMESPACE, name, _encode(self._header(log))))
            log.add(key, seq, ingest)
            dirty.add(key)
            if listeners:
                change = SequencedChange(key, seq, ingest, record)
                for listener in list(listeners):
                    listener(change)

    @staticmethod
    def _header(log: MapLog) -> _Header:
        return _Header(log.reserved, log.floor, log.floor_stamp)

    def pruned(self, changes: Sequence[Change]) -> list[Change]:
        """GC pruned these records: forget their entries and raise the prune floors;
        returns the storage changes that record it."""
        touched: set[str] = set()
        for change in changes:
            if not isinstance(change, PruneRecord):
                continue
            log = self.logs.get(change.map_name)
            entry = log.forget(change.key) if log is not None else None
            if log is None or entry is None:
                continue
            if entry[0] > log.floor:
                log.floor, log.floor_stamp = entry
            touched.add(change.map_name)
            self._dirty.setdefault(change.map_name, set()).add(change.key)
        return [
            PutMeta(HEADER_NAMESPACE, name, _encode(self._header(self.logs[name])))
            for name in sorted(touched)
        ]

    def listen(self, map_name: str, listener: ChangeListener) -> Callable[[], None]:
        """Call `listener` with every change of `map_name` from now on; returns the
        function that stops it."""
        self.listeners.setdefault(map_name, set()).add(listener)

        def stop() -> None:
            listeners = self.listeners.get(map_name)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self.listeners[map_name]

        return stop

    # -- reading ----------------------------------------------------------------------------

    def delta(
        self,
        map_name: str,
        *,
        since_seq: int | None = None,
        since_stamp: Timestamp | None = None,
        limit: int | None = None,
    ) -> Delta:
        """The changes of `map_name` after the resume point (`since_seq`, else
        `since_stamp` on the ingest clock, else the beginning), at most `limit`."""
        wanted = DEFAULT_LIMIT if limit is None or limit <= 0 else min(limit, DEFAULT_LIMIT)
        log = self.log(map_name)
        lww = self.maps.lww(map_name)
        reset = False
        if since_seq is not None:
            reset = since_seq > log.seq or (since_seq > 0 and since_seq < log.floor)
            start = 0 if reset else log.start_after_seq(since_seq)
        elif since_stamp is not None and since_stamp.millis > 0:
            reset = log.floor_stamp is not None and since_stamp < log.floor_stamp
            start = 0 if reset else log.start_after_stamp(since_stamp)
        else:
            start = 0
        records: list[SequencedChange] = []
        has_more = False
        for key, seq, ingest in log.changes_from(start):
            record = lww.get_record(key) if lww is not None else None
            if record is None:
                continue
            if len(records) == wanted:
                has_more = True
                break
            records.append(SequencedChange(key, seq, ingest, record))
        if has_more:
            return Delta(records, records[-1].seq, True, reset, records[-1].ingest)
        seq = log.seq
        return Delta(records, seq, False, reset, self.hlc.now())

    async def loaded_delta(
        self,
        map_name: str,
        *,
        since_seq: int | None = None,
        since_stamp: Timestamp | None = None,
        limit: int | None = None,
    ) -> Delta:
        """`delta`, with an archived map restored first and the values of cold records
        loaded (under a memory budget)."""
        await self.maps.ensure_loaded(map_name)
        delta = self.delta(map_name, since_seq=since_seq, since_stamp=since_stamp, limit=limit)
        cold = [change.key for change in delta.records if change.record.value is COLD]
        if not cold:
            return delta
        async with self.maps.holding(map_name, cold):
            lww = self.maps.lww(map_name)
            assert lww is not None
            # Each cold record's value is back (or a newer record was written meanwhile).
            delta.records = [
                SequencedChange(c.key, c.seq, c.ingest, lww.get_record(c.key) or c.record)
                if c.record.value is COLD
                else c
                for c in delta.records
            ]
        return delta

    # -- storage ----------------------------------------------------------------------------

    async def load(self, backend: StorageBackend) -> int:
        """Restore every LWW map's log; keys changed since the last flush get fresh
        sequences. Returns how many keys were re-sequenced."""
        self._backend = backend
        headers = {
            name: _header_decoder.decode(raw)
            for name, raw in (await backend.load_meta(HEADER_NAMESPACE)).items()
        }
        repairs: list[Change] = []
        fresh_total = 0
        for name in self.maps.names():
            fresh_total += await self._load_log(backend, name, headers.get(name), repairs)
        if repairs:
            await backend.store_batch(repairs)
        return fresh_total

    async def load_map(self, name: str) -> None:
        """Restore the log of map `name`, back from the archive (`MapRegistry.on_restore`)."""
        backend = self._backend
        if backend is None:
            return
        raw = (await backend.load_meta(HEADER_NAMESPACE)).get(name)
        repairs: list[Change] = []
        header = None if raw is None else _header_decoder.decode(raw)
        await self._load_log(backend, name, header, repairs)
        if repairs:
            await backend.store_batch(repairs)

    async def _load_log(
        self, backend: StorageBackend, name: str, header: _Header | None, repairs: list[Change]
    ) -> int:
        lww = self.maps.lww(name)
        if lww is None:
            return 0
        header = header or _Header(0)
        log = self.logs[name] = MapLog(
            seq=header.reserved,
            reserved=header.reserved,
            floor=header.floor,
            floor_stamp=header.floor_stamp,
        )
        stored = {
            key: _entry_decoder.decode(raw)
            for key, raw in (await backend.load_meta(entries_namespace(name))).items()
        }
        kept: list[tuple[int, str, Timestamp]] = []
        fresh: list[tuple[Timestamp, str]] = []
        for key, record in lww.records():
            entry = stored.pop(key, None)
            if entry is not None and entry.record == record.timestamp:
                kept.append((entry.seq, key, entry.ingest))
            else:
                fresh.append((record.timestamp, key))
        for seq, key, ingest in sorted(kept):
            log.add(key, seq, ingest)
        if kept:
            # Cursors handed out before the restart are ingest stamps up to the newest kept
            # one: the clock must issue later ones, even if clients had pushed it ahead.
            self.hlc.update(max(ingest for _, _, ingest in kept))
        for _, key in sorted(fresh):
            log.seq += 1
            log.add(key, log.seq, self.hlc.now())
        log.reserved = log.seq + RESERVE
        repairs.append(PutMeta(HEADER_NAMESPACE, name, _encode(self._header(log))))
        repairs += [PutMeta(entries_namespace(name), key, None) for key in stored]
        repairs += self._entry_changes(name, log, (key for _, key in fresh))
        return len(fresh)

    def _entry_changes(self, name: str, log: MapLog, keys: Iterable[str]) -> list[Change]:
        lww = self.maps.lww(name)
        changes: list[Change] = []
        namespace = entries_namespace(name)
        for key in keys:
            entry = log.latest.get(key)
            record = lww.get_record(key) if lww is not None else None
            if entry is None or record is None:
                changes.append(PutMeta(namespace, key, None))
            else:
                stored = _StoredEntry(entry[0], entry[1], record.timestamp)
                changes.append(PutMeta(namespace, key, _encode(stored)))
        return changes

    def take_dirty(self, limit: int | None = None) -> list[Change]:
        """The storage changes that persist the entries changed since they were last taken:
        all of them, or those of at most `limit` keys (the rest stay due)."""
        return self._take(limit)[0]

    def _take(self, limit: int | None) -> tuple[list[Change], list[tuple[str, list[str]]]]:
        changes: list[Change] = []
        taken_keys: list[tuple[str, list[str]]] = []
        budget = limit
        for name in list(self._dirty):
            keys = self._dirty[name]
            if budget is not None and len(keys) > budget:
                taken = [keys.pop() for _ in range(budget)]
            else:
                taken = list(keys)
                del self._dirty[name]
            changes += self._entry_changes(name, self.log(name), taken)
            taken_keys.append((name, taken))
            if budget is not None:
                budget -= len(taken)
                if budget == 0:
                    break
        return changes, taken_keys

    async def flush(self, submit: Submit) -> int:
        """Persist the changed entries through `submit` (the storage writer's), in chunks of
        `FLUSH_CHUNK` keys, each awaited before the next is built: a backlog of many keys
        never holds up the event loop or the writer's other transactions for long. Returns
        how many were persisted; on failure the chunk stays due for the next flush."""
        done = 0
        while self._dirty:
            changes, taken = self._take(FLUSH_CHUNK)
            try:
                commit = await submit(changes)
                await commit.wait()
            except BaseException:
                for name, keys in taken:
                    self._dirty.setdefault(name, set()).update(keys)
                raise
            done += len(changes)
        return done

    async def run(self, submit: Submit) -> None:
        """Flush every `flush_interval_ms`, forever (a server background task)."""
        while True:
            await anyio.sleep(self.flush_interval_ms / 1000)
            try:
                await self.flush(submit)
            except Exception:
                logger.exception("persisting ingest sequences failed; retrying next interval")
