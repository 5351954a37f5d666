"""Ingest sequences (PROTOCOL.md §9.2): the delta cursor of `POST /sync` and `GET /events`.

Every change applied to a *sequenced* LWW map, by any write path, takes the map's next
integer and the server's `hlc.now()` (its *ingest* HLC) as the key's latest change. A poller
resumes from a sequence (or from an ingest HLC, as TS clients do), so a write uploaded late by
a client that was offline for a day, carrying day-old record timestamps, still reaches every
poller: its sequence is new even though its timestamp is old.

A map is sequenced from the first delta or stream asked of it (`sequence`), and from then on,
restarts included: at that moment each of its records takes a sequence, and the reservation
is committed before any of them is handed out. No cursor of a map can exist before that, so
the maps only WebSocket clients use pay nothing for sequencing.

The log is compacted (one entry per key) and kept in memory in ascending sequence order, so a
delta is a binary search plus the keys it returns.

Persistence costs nothing on the write path:

- Sequences are reserved in blocks (`RESERVE`). The map's header row (meta namespace
  `ingest`) stores the reserved bound, written in the same storage batch as the change that
  crossed half the block, so no sequence handed out can be handed out again after a restart.
- Per-key entries (key -> [sequence, ingest HLC, record HLC]) are written in the background,
  coalesced per key (`flush`), in *chunks*: each flush of up to `FLUSH_CHUNK` keys is one row
  (namespace `ingest-chunks:<map>`, keyed by a growing chunk number), and a chunk row is
  deleted, in the same batch, once none of its entries is a key's latest. Chunks left mostly
  stale are compacted by rewriting their live keys. After a crash, the keys whose stored
  record differs from their stored entry — exactly those changed since the last flush — get
  fresh sequences above the reserved bound on load, with a new ingest HLC. A poller therefore
  never misses a change; at worst it receives such a key once more (LWW merges are
  idempotent). Entries of the earlier one-row-per-key layout (`ingest:<map>`) are read and
  moved into chunks on load.
- GC pruning a tombstone raises the map's prune floor to the pruned entry's sequence: a resume
  point before it gets `reset` (the full state), since the tombstone it would need is gone.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import msgspec

from topgun.crdt import COLD, HLC, LWWRecord, Timestamp
from topgun.server.maps import MapRegistry, Recording
from topgun.server.periodic import every
from topgun.server.writes import Applied
from topgun.storage import Change, PruneRecord, PutMeta, StorageBackend, Submit

logger = logging.getLogger(__name__)

HEADER_NAMESPACE: Final = "ingest"
"""Meta-area namespace: map name -> msgpack `_Header` (reserved bound, prune floor)."""

RESERVE: Final = 100_000
"""Sequences reserved per header write."""

FLUSH_CHUNK: Final = 1000
"""Keys whose entries one flush transaction persists."""

FILL_CHUNK: Final = 10_000
"""Records a map being sequenced takes sequences for between two checkpoints."""

DEFAULT_LIMIT: Final = 10_000
"""A delta's default and maximum number of records (PROTOCOL.md §9.2)."""


def legacy_entries_namespace(map_name: str) -> str:
    """Meta-area namespace of `map_name`'s per-key entries in the one-row-per-key layout."""
    return f"ingest:{map_name}"


def chunks_namespace(map_name: str) -> str:
    """Meta-area namespace of `map_name`'s entry chunks."""
    return f"ingest-chunks:{map_name}"


def _chunk_key(number: int) -> str:
    return str(number).zfill(20)


class _Header(msgspec.Struct, array_like=True):
    reserved: int
    floor: int = 0
    floor_stamp: Timestamp | None = None


class _StoredEntry(msgspec.Struct, array_like=True):
    seq: int
    ingest: Timestamp
    record: Timestamp


class _ChunkEntry(msgspec.Struct, array_like=True):
    key: str
    seq: int
    ingest: Timestamp
    record: Timestamp


_encode: Final = msgspec.msgpack.Encoder().encode
_header_decoder: Final = msgspec.msgpack.Decoder(_Header)
_entry_decoder: Final = msgspec.msgpack.Decoder(_StoredEntry)
_chunk_decoder: Final = msgspec.msgpack.Decoder(list[_ChunkEntry])


@dataclass(slots=True)
class _Stored:
    """What storage holds of a map's entries, in both layouts."""

    legacy: list[str]
    """Keys with a row of the one-row-per-key layout."""
    chunks: dict[int, list[_ChunkEntry]]
    """Chunk number -> its entries, stale ones included."""
    latest: dict[str, tuple[_StoredEntry, int | None]]
    """key -> its newest entry and the chunk holding it (`None`: a one-row-per-key row)."""


async def _read_stored(backend: StorageBackend, map_name: str) -> _Stored:
    legacy = await backend.load_meta(legacy_entries_namespace(map_name))
    latest: dict[str, tuple[_StoredEntry, int | None]] = {
        key: (_entry_decoder.decode(raw), None) for key, raw in legacy.items()
    }
    chunks: dict[int, list[_ChunkEntry]] = {}
    for row_key, raw in sorted((await backend.load_meta(chunks_namespace(map_name))).items()):
        number = int(row_key)
        entries = chunks[number] = _chunk_decoder.decode(raw)
        for e in entries:
            held = latest.get(e.key)
            if held is None or e.seq >= held[0].seq:
                latest[e.key] = (_StoredEntry(e.seq, e.ingest, e.record), number)
    return _Stored(list(legacy), chunks, latest)


async def stored_entries(
    backend: StorageBackend, map_name: str
) -> dict[str, tuple[int, Timestamp, Timestamp]]:
    """key -> (sequence, ingest HLC, record HLC) as storage holds them (both layouts; the
    newest entry of a key wins)."""
    stored = await _read_stored(backend, map_name)
    return {key: (e.seq, e.ingest, e.record) for key, (e, _) in stored.latest.items()}


@dataclass(slots=True)
class _Chunks:
    """Where a map's stored entries are: which chunk holds each key's latest entry."""

    chunk_of: dict[str, int] = field(default_factory=dict)
    live: dict[int, int] = field(default_factory=dict)
    """chunk -> how many of its entries are their key's latest."""
    members: dict[int, list[str]] = field(default_factory=dict)
    """chunk -> the keys its row holds entries of, stale ones included."""
    stored: int = 0
    """Entries the chunk rows hold in all."""
    next: int = 0
    """The number of the next chunk."""

    def compactable(self, budget: int) -> list[str]:
        """Once the rows hold over twice the live entries (plus a chunk): up to about
        `budget` live keys of the chunks most stale, whose rewriting frees those chunks."""
        if self.stored <= 2 * len(self.chunk_of) + FLUSH_CHUNK:
            return []
        keys: list[str] = []
        for number in sorted(self.live, key=self.live.__getitem__):
            if len(keys) >= budget or 2 * self.live[number] >= len(self.members[number]):
                break
            keys += [key for key in self.members[number] if self.chunk_of.get(key) == number]
        return keys


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


ChangeListener = Callable[[SequencedChange], None]
"""`listener(change)`: called for every change of its map as it is sequenced."""


LOG_BLOCK: Final = 1024
"""Entries per block of a map's in-memory log."""


class _Block:
    """A run of log entries, ascending; `live` of them are their key's latest."""

    __slots__ = ("entries", "live")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.live = 0


_Entry = tuple[int, Timestamp, str, _Block]
"""(sequence, ingest HLC, key, the block holding it)."""


@dataclass(slots=True)
class MapLog:
    """One map's compacted change log, in blocks of `LOG_BLOCK` entries.

    A key's new change supersedes its previous entry: a block is dropped once none of its
    entries is its key's latest, and rewritten without the superseded ones once they are
    more than half of it, so the log holds about twice its keys at most and tidying it
    never walks more than one block."""

    seq: int = 0
    """The last sequence handed out."""
    reserved: int = 0
    """Sequences up to this bound are durably reserved."""
    floor: int = 0
    """The highest sequence of a pruned tombstone: resuming before it needs a reset."""
    floor_stamp: Timestamp | None = None
    latest: dict[str, _Entry] = field(default_factory=dict)
    """key -> its latest change, the entry in the log."""
    _blocks: list[_Block] = field(default_factory=list)

    def add(self, key: str, seq: int, ingest: Timestamp) -> None:
        """Record `seq` (greater than every earlier one) as `key`'s latest change."""
        blocks = self._blocks
        if not blocks or len(blocks[-1].entries) >= LOG_BLOCK:
            if blocks:
                self._tidy(blocks[-1])  # it stops being the tail
            blocks.append(_Block())
        tail = blocks[-1]
        entry = (seq, ingest, key, tail)
        tail.entries.append(entry)
        tail.live += 1
        latest = self.latest
        previous = latest.get(key)
        latest[key] = entry
        if previous is not None:
            block = previous[3]
            block.live -= 1
            if 2 * block.live < len(block.entries):
                self._tidy(block)

    def fill(self, keys: Sequence[str], stamps: Sequence[Timestamp]) -> None:
        """`add` each of `keys` (distinct, none of them in the log yet) with the next
        sequences and `stamps` as their ingest HLCs, a whole block at a time."""
        blocks = self._blocks
        latest = self.latest
        seq = self.seq
        for start in range(0, len(keys), LOG_BLOCK):
            block = _Block()
            block.entries = [
                (seq + i, stamp, key, block)
                for i, key, stamp in zip(
                    range(start + 1, start + LOG_BLOCK + 1),
                    keys[start : start + LOG_BLOCK],
                    stamps[start : start + LOG_BLOCK],
                    strict=False,
                )
            ]
            block.live = len(block.entries)
            latest.update(zip(keys[start : start + LOG_BLOCK], block.entries, strict=True))
            blocks.append(block)
            if len(blocks) > 1:
                self._tidy(blocks[-2])  # it stopped being the tail
        self.seq = seq + len(keys)

    def forget(self, key: str) -> tuple[int, Timestamp] | None:
        """Drop `key`'s entry (its tombstone was pruned); returns (sequence, ingest HLC)."""
        entry = self.latest.pop(key, None)
        if entry is None:
            return None
        block = entry[3]
        block.live -= 1
        if 2 * block.live < len(block.entries):
            self._tidy(block)
        return entry[0], entry[1]

    def _tidy(self, block: _Block) -> None:
        if block is self._blocks[-1] and len(block.entries) < LOG_BLOCK:
            return  # the tail still fills up; tidied when the next block starts
        if block.live == 0:
            self._blocks.remove(block)
        elif 2 * block.live < len(block.entries):
            latest = self.latest
            block.entries = [e for e in block.entries if latest.get(e[2]) is e]

    def entries(self) -> int:
        """How many entries the log holds, superseded ones included."""
        return sum(len(block.entries) for block in self._blocks)

    def changes_after(
        self, *, seq: int | None = None, stamp: Timestamp | None = None
    ) -> Iterator[tuple[str, int, Timestamp]]:
        """(key, sequence, ingest HLC) of the live changes after sequence `seq`, else after
        ingest HLC `stamp`, else all of them, in ascending order."""
        blocks = self._blocks
        first, start = 0, 0
        if seq is not None or stamp is not None:
            field_of = _SEQUENCE if seq is not None else _INGEST
            since: Any = seq if seq is not None else stamp
            first = bisect.bisect_right(blocks, since, key=lambda b: field_of(b.entries[-1]))
            if first < len(blocks):
                start = bisect.bisect_right(blocks[first].entries, since, key=field_of)
        latest = self.latest
        for block in itertools.islice(blocks, first, None):
            for entry in itertools.islice(block.entries, start, None):
                if latest.get(entry[2]) is entry:
                    yield entry[2], entry[0], entry[1]
            start = 0


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
        self._chunks: dict[str, _Chunks] = {}
        self._flushing = anyio.Lock()
        self._sequencing = anyio.Lock()
        self._unready: set[str] = set()
        """Maps being sequenced: `sequence` has not returned their log yet."""
        self._unreserved: set[str] = set()
        """Sequenced maps whose first reserved bound is not committed yet."""
        self._to_fill: dict[str, list[str]] = {}
        """Map -> the keys it held when it started being sequenced, until they are."""
        self._backend: StorageBackend | None = None

    def log(self, map_name: str) -> MapLog:
        """`map_name`'s log; raises `KeyError` unless the map is sequenced (`sequence`)."""
        return self.logs[map_name]

    async def sequence(self, map_name: str) -> MapLog:
        """`map_name`'s log, sequencing the map first if it is not yet.

        The reserved bound, which covers every record the map holds, is committed first:
        entries are stored only for maps whose bound is (`flush` waits for it), so storage
        never holds entries of a map it does not know as sequenced, and no sequence handed
        out can be handed out again after a crash. Then each record (tombstones included)
        takes a sequence and a fresh ingest HLC, a chunk at a time: the server goes on
        between chunks, its changes to the map sequenced as they come. A failed commit is
        retried by the next call."""
        log = self.logs.get(map_name)
        if log is not None and map_name not in self._unready:
            return log
        async with self._sequencing:
            await self.maps.ensure_loaded(map_name)
            with anyio.CancelScope(shield=True):  # never leave a map half sequenced
                log = self.logs.get(map_name)
                if log is None:
                    lww = self.maps.lww(map_name)
                    held = lww.record_keys() if lww is not None else []
                    self._to_fill[map_name] = held
                    # `observe` sequences the map's changes from now on.
                    log = self.logs[map_name] = MapLog(reserved=len(held) + RESERVE)
                    self._unready.add(map_name)
                    self._unreserved.add(map_name)
                if map_name in self._unreserved:
                    header = _encode(self._header(log))
                    await self._write([PutMeta(HEADER_NAMESPACE, map_name, header)])
                    self._unreserved.discard(map_name)
                if map_name in self._to_fill:
                    keys = self._to_fill.pop(map_name)
                    await self._fill(map_name, log, keys)
                    logger.info("map %r sequenced for HTTP sync (%d records)", map_name, len(keys))
                self._unready.discard(map_name)
        return self.logs[map_name]

    async def _fill(self, map_name: str, log: MapLog, keys: list[str]) -> None:
        """Sequence `keys`, `FILL_CHUNK` at a time (keys changed meanwhile were sequenced by
        `observe` already)."""
        for start in range(0, len(keys), FILL_CHUNK):
            if start:
                await anyio.lowlevel.checkpoint()
            latest = log.latest
            chunk = [key for key in keys[start : start + FILL_CHUNK] if key not in latest]
            log.fill(chunk, self.hlc.now_many(len(chunk)))
            self._dirty.setdefault(map_name, set()).update(chunk)

    async def _write(self, changes: list[Change]) -> None:
        """Commit `changes` through the storage writer (straight to the backend before
        the server has one: tests of the log alone)."""
        writer = self.maps.writer
        if writer is not None:
            await writer.write(changes)
        elif self._backend is not None:
            await self._backend.store_batch(changes)
        else:
            raise RuntimeError("storage is not open")

    # -- recording --------------------------------------------------------------------------

    def observe(self, applied: Sequence[Applied], recording: Recording) -> None:
        """The change observer: sequence each LWW change of `applied` to a sequenced map
        (one clock reading for them all)."""
        logs = self.logs
        if not logs:
            return
        items = [
            (one.map_name, one.key, payload.record)
            for one in applied
            if one.map_name in logs
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
                log = logs[name]
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
            changes = log.changes_after() if reset else log.changes_after(seq=since_seq)
        elif since_stamp is not None and since_stamp.millis > 0:
            reset = log.floor_stamp is not None and since_stamp < log.floor_stamp
            changes = log.changes_after() if reset else log.changes_after(stamp=since_stamp)
        else:
            changes = log.changes_after()
        records: list[SequencedChange] = []
        has_more = False
        for key, seq, ingest in changes:
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
        """`delta`, with an archived map restored and the map sequenced first, and the
        values of cold records loaded (under a memory budget)."""
        await self.maps.ensure_loaded(map_name)
        await self.sequence(map_name)
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
        """Restore the log of every sequenced map (those with a stored header); keys
        changed since the last flush get fresh sequences. Returns how many keys were
        re-sequenced."""
        self._backend = backend
        headers = {
            name: _header_decoder.decode(raw)
            for name, raw in (await backend.load_meta(HEADER_NAMESPACE)).items()
        }
        repairs: list[Change] = []
        fresh_total = 0
        for name, header in headers.items():
            fresh_total += await self._load_log(backend, name, header, repairs)
        if repairs:
            await backend.store_batch(repairs)
        return fresh_total

    async def load_map(self, name: str) -> None:
        """Restore the log of map `name`, back from the archive (`MapRegistry.on_restore`),
        if it is sequenced."""
        backend = self._backend
        if backend is None:
            return
        raw = (await backend.load_meta(HEADER_NAMESPACE)).get(name)
        if raw is None:
            return
        repairs: list[Change] = []
        await self._load_log(backend, name, _header_decoder.decode(raw), repairs)
        if repairs:
            await backend.store_batch(repairs)

    async def _load_log(
        self, backend: StorageBackend, name: str, header: _Header, repairs: list[Change]
    ) -> int:
        log = self.logs[name] = MapLog(
            seq=header.reserved,
            reserved=header.reserved,
            floor=header.floor,
            floor_stamp=header.floor_stamp,
        )
        lww = self.maps.lww(name)
        if lww is None:
            # Not loaded (archived, restored later through `load_map`) or no record yet:
            # its next change crosses the reserved bound and writes a new one.
            return 0
        on_disk = await _read_stored(backend, name)
        stored = on_disk.latest
        chunks = self._chunks[name] = _Chunks()
        for number, entries in on_disk.chunks.items():
            chunks.members[number] = [e.key for e in entries]
            chunks.live[number] = 0
            chunks.stored += len(entries)
            chunks.next = max(chunks.next, number + 1)
        kept: list[tuple[int, str, Timestamp]] = []
        fresh: list[tuple[Timestamp, str]] = []
        moved: list[str] = []  # kept entries of the one-row-per-key layout
        for key, record in lww.records():
            found = stored.get(key)
            if found is not None and found[0].record == record.timestamp:
                entry, holder = found
                kept.append((entry.seq, key, entry.ingest))
                if holder is None:
                    moved.append(key)
                else:
                    chunks.chunk_of[key] = holder
                    chunks.live[holder] += 1
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
        repairs += [PutMeta(legacy_entries_namespace(name), key, None) for key in on_disk.legacy]
        for number in [number for number, live in chunks.live.items() if live == 0]:
            repairs.append(PutMeta(chunks_namespace(name), _chunk_key(number), None))
            del chunks.live[number]
            chunks.stored -= len(chunks.members.pop(number))
        rewrite = moved + [key for _, key in fresh]
        for start in range(0, len(rewrite), FLUSH_CHUNK):
            changes, stored_them = self._chunk(name, rewrite[start : start + FLUSH_CHUNK])
            repairs += changes
            stored_them()  # they are stored with the repairs, or the start fails
        return len(fresh)

    def _chunk(self, name: str, keys: Sequence[str]) -> tuple[list[Change], Callable[[], None]]:
        """The storage changes that store the current entries of `keys` (none for a key
        with no record or entry) as a new chunk of map `name`, deleting the chunks left
        with no latest entry; and what to note once they are committed."""
        chunks = self._chunks.setdefault(name, _Chunks())
        log = self.log(name)
        lww = self.maps.lww(name)
        number = chunks.next
        chunks.next += 1  # never reused, even if the changes fail
        # Entries as tuples: they encode exactly as the array-like `_ChunkEntry` decodes.
        entries: list[tuple[str, int, Timestamp, Timestamp]] = []
        leaving: dict[int, int] = {}  # chunk -> how many of `keys` leave it
        latest = log.latest.get
        holder = chunks.chunk_of.get
        record_of = lww.get_record if lww is not None else None
        for key in keys:
            entry = latest(key)
            if entry is not None and record_of is not None:
                record = record_of(key)
                if record is not None:
                    entries.append((key, entry[0], entry[1], record.timestamp))
            old = holder(key)
            if old is not None:
                leaving[old] = leaving.get(old, 0) + 1
        emptied = [old for old, count in leaving.items() if chunks.live[old] == count]
        namespace = chunks_namespace(name)
        changes: list[Change] = [PutMeta(namespace, _chunk_key(old), None) for old in emptied]
        if entries:
            changes.append(PutMeta(namespace, _chunk_key(number), _encode(entries)))

        def committed() -> None:
            chunk_of, live = chunks.chunk_of, chunks.live
            for key in keys:
                old = chunk_of.pop(key, None)
                if old is not None:
                    live[old] -= 1
            for old in emptied:
                del live[old]
                chunks.stored -= len(chunks.members.pop(old))
            if entries:
                members = [entry[0] for entry in entries]
                chunk_of.update(dict.fromkeys(members, number))
                live[number] = len(entries)
                chunks.members[number] = members
                chunks.stored += len(entries)

        return changes, committed

    def _take(self, limit: int) -> tuple[str, list[str]] | None:
        """Up to `limit` due keys of one map whose reserved bound is committed (they are no
        longer due), or None."""
        for name in list(self._dirty):
            if name in self._unreserved:
                continue
            keys = self._dirty[name]
            if len(keys) > limit:
                return name, [keys.pop() for _ in range(limit)]
            del self._dirty[name]
            if keys:
                return name, list(keys)
        return None

    async def flush(self, submit: Submit) -> int:
        """Persist the changed entries through `submit` (the storage writer's), a chunk of
        up to `FLUSH_CHUNK` keys per submission, each awaited before the next is built: a
        backlog of many keys never holds up the event loop or the writer's other
        transactions for long. Returns how many keys were persisted; on failure the chunk
        stays due for the next flush. Then the live keys of the chunks most stale, up to a
        chunk's worth, are due for rewriting (see `_Chunks.compactable`)."""
        done = 0
        async with self._flushing:
            while (taken := self._take(FLUSH_CHUNK)) is not None:
                name, keys = taken
                changes, committed = self._chunk(name, keys)
                try:
                    if changes:
                        await (await submit(changes)).wait()
                except BaseException:
                    self._dirty.setdefault(name, set()).update(keys)
                    raise
                committed()
                done += len(keys)
            for name, chunks in self._chunks.items():
                # Due at the next flush: at most about a chunk's worth of rewriting each time.
                due = chunks.compactable(FLUSH_CHUNK)
                if due:
                    self._dirty.setdefault(name, set()).update(due)
        return done

    async def run(self, submit: Submit) -> None:
        """Flush every `flush_interval_ms`, forever (a server background task)."""
        await every(
            self.flush_interval_ms / 1000,
            lambda: self.flush(submit),
            logger,
            "persisting ingest sequences failed; retrying next interval",
        )
