"""The archive tier: zstd-compressed segments in an object store, listed in a manifest.

A segment holds either a whole archived map (`archive_map`, listed under `maps`) or some
keys of an LWW map that stays live in storage for its other keys (a *key segment*, listed
under `key_segments` with its key range and count; the sorted list of its keys is a small
*key index* object beside it, read when the archive opens, so the manifest stays small
however many keys are archived). A segment is the msgpack of a map snapshot
(`LWWSnapshot` or `ORSnapshot`), with every record as an array of value, timestamp parts
and TTL (an integer TTL stays an integer), so restoring gives back the same records,
values and timestamps byte for byte. The manifest (`manifest.json`) names each segment
with its SHA-256, sizes and newest timestamp; it is the only object that changes, and it
is replaced whole. A segment is written (and read back and checked) before the manifest
names it, and deleted only after the manifest stopped naming it. The compressed segment
passes through the storage's value codecs, so an encrypted store keeps an encrypted
archive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final, Literal

import anyio
import msgspec
import zstandard

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.storage import (
    CodecContext,
    CodecPipeline,
    LWWSnapshot,
    MapKind,
    MapSnapshot,
    ORSnapshot,
    StorageCorruptError,
    StorageError,
)
from topgun_tiered.stores import ObjectStore

MANIFEST: Final = "manifest.json"
INDEX_READS: Final = 16
"""Key indexes read at the same time when the archive opens."""
FORMAT: Final = 2
"""1: whole maps only; 2: key segments too (a format-1 manifest reads as one without)."""


class ArchiveCorruptError(StorageCorruptError):
    """A segment or the manifest does not read back as written."""


class SegmentInfo(msgspec.Struct, frozen=True):
    """One archived map, as the manifest lists it."""

    kind: Literal["lww", "ormap"]
    segment: str
    """The object holding it."""
    sha256: str
    """Of the compressed segment."""
    records: int
    raw_bytes: int
    """The uncompressed segment's size."""
    stored_bytes: int
    """The compressed segment's size."""
    newest_millis: int
    """The newest timestamp of any record or tombstone (0 for an empty map)."""
    archived_at_ms: int


class KeySegmentInfo(msgspec.Struct, frozen=True):
    """Some archived keys of an LWW map, as the manifest lists them."""

    map: str
    segment: str
    """The object holding their records."""
    sha256: str
    """Of the compressed segment."""
    index: str
    """The key index: the object listing the keys it holds (only these are read back)."""
    index_sha256: str
    count: int
    """How many keys it holds..."""
    first_key: str
    last_key: str
    """...from this one to this one (sorted; other keys of the map lie between)."""
    raw_bytes: int
    stored_bytes: int
    newest_millis: int
    archived_at_ms: int


class Manifest(msgspec.Struct):
    format: int = FORMAT
    maps: dict[str, SegmentInfo] = msgspec.field(default_factory=dict)
    key_segments: dict[str, KeySegmentInfo] = msgspec.field(default_factory=dict)
    """By segment object name."""


class _Record(msgspec.Struct, array_like=True):
    """One LWW or OR record in a segment (the OR tag is its timestamp's string form)."""

    value: Any
    millis: int
    counter: int
    node_id: str
    ttl_ms: int | float | None = None


class _Segment(msgspec.Struct, array_like=True):
    name: str
    kind: Literal["lww", "ormap"]
    records: dict[str, list[_Record]]
    """Key -> its records (one for an LWW map)."""
    tombstones: dict[str, str | None] = msgspec.field(default_factory=dict)


def _pack(record: LWWRecord | ORMapRecord) -> _Record:
    ts = record.timestamp
    return _Record(record.value, ts.millis, ts.counter, ts.node_id, record.ttl_ms)


def encode_segment(snapshot: MapSnapshot) -> bytes:
    """The uncompressed segment of `snapshot`."""
    if isinstance(snapshot, LWWSnapshot):
        records = {key: [_pack(record)] for key, record in snapshot.records.items()}
        return msgspec.msgpack.encode(_Segment(snapshot.name, "lww", records))
    or_records = {key: [_pack(r) for r in records] for key, records in snapshot.records.items()}
    segment = _Segment(snapshot.name, "ormap", or_records, dict(snapshot.tombstones))
    return msgspec.msgpack.encode(segment)


def decode_segment(raw: bytes) -> MapSnapshot:
    """The snapshot an uncompressed segment holds (msgspec.DecodeError if malformed)."""
    segment = msgspec.msgpack.decode(raw, type=_Segment)
    if segment.kind == "lww":
        lww: dict[str, LWWRecord] = {}
        for key, (r,) in segment.records.items():
            lww[key] = LWWRecord(r.value, Timestamp(r.millis, r.counter, r.node_id), r.ttl_ms)
        return LWWSnapshot(segment.name, lww)
    ormap: dict[str, list[ORMapRecord]] = {}
    for key, records in segment.records.items():
        ormap[key] = []
        for r in records:
            stamp = Timestamp(r.millis, r.counter, r.node_id)
            ormap[key].append(ORMapRecord(r.value, stamp, str(stamp), r.ttl_ms))
    return ORSnapshot(segment.name, ormap, segment.tombstones)


ARCHIVE_NAMESPACE: Final = "tiered.archive"
"""The codec context's namespace of segments (area `meta`, key: the map's name)."""


def _context(name: str) -> CodecContext:
    return CodecContext("meta", ARCHIVE_NAMESPACE, name)


def newest_millis(snapshot: MapSnapshot) -> int:
    """The millis of the newest record (or tombstone tag) of `snapshot`; 0 if empty."""
    newest = 0
    if isinstance(snapshot, LWWSnapshot):
        for record in snapshot.records.values():
            newest = max(newest, record.timestamp.millis)
        return newest
    for records in snapshot.records.values():
        for or_record in records:
            newest = max(newest, or_record.timestamp.millis)
    for tag in snapshot.tombstones:
        try:
            newest = max(newest, Timestamp.parse(tag).millis)
        except ValueError:
            continue
    return newest


def record_count(snapshot: MapSnapshot) -> int:
    if isinstance(snapshot, LWWSnapshot):
        return len(snapshot.records)
    return sum(map(len, snapshot.records.values())) + len(snapshot.tombstones)


class Archive:
    """Segments and the manifest in one object store."""

    def __init__(
        self, store: ObjectStore, *, level: int = 3, codecs: CodecPipeline | None = None
    ) -> None:
        self.store = store
        self.level = level
        self.codecs = codecs or CodecPipeline()
        """The storage's value codecs: a compressed segment passes through them (so an
        encrypting codec encrypts the archive too), bound to the map's name."""
        self.manifest = Manifest()
        self.keys: dict[str, dict[str, str]] = {}
        """Map -> archived key -> the key segment holding it (from the key indexes)."""
        self._segment_keys: dict[str, list[str]] = {}
        """Key segment -> the keys it holds."""

    async def open(self) -> None:
        """Open the store and read the manifest (an empty one if there is none yet)."""
        await self.store.open()
        data = await self.store.get(MANIFEST)
        if data is None:
            self.manifest = Manifest()
            self.keys, self._segment_keys = {}, {}
            return
        try:
            manifest = msgspec.json.decode(data, type=Manifest)
        except msgspec.DecodeError as exc:
            raise ArchiveCorruptError(
                f"archive manifest {self.store.description}{MANIFEST} is damaged: {exc}"
            ) from None
        if manifest.format > FORMAT:
            raise ArchiveCorruptError(
                f"archive manifest {self.store.description}{MANIFEST} has format "
                f"{manifest.format}; this version reads up to {FORMAT}"
            )
        self.manifest = manifest
        self.keys, self._segment_keys = {}, {}
        for info, keys in await self._read_indexes(list(manifest.key_segments.values())):
            self._index(info, keys)

    async def _read_indexes(
        self, infos: list[KeySegmentInfo]
    ) -> list[tuple[KeySegmentInfo, list[str]]]:
        """Every key index of `infos`, read `INDEX_READS` at a time (one GET each on S3);
        the first failure is raised."""
        found: dict[str, list[str]] = {}
        failures: list[StorageError] = []
        limiter = anyio.CapacityLimiter(INDEX_READS)

        async def read(info: KeySegmentInfo) -> None:
            async with limiter:
                try:
                    found[info.segment] = await self._read_index(info)
                except StorageError as exc:
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for info in infos:
                tg.start_soon(read, info)
        if failures:
            raise failures[0]
        return [(info, found[info.segment]) for info in infos]

    def _index(self, info: KeySegmentInfo, keys: list[str]) -> None:
        self._segment_keys[info.segment] = keys
        held = self.keys.setdefault(info.map, {})
        for key in keys:
            held[key] = info.segment

    def _unindex(self, info: KeySegmentInfo) -> None:
        held = self.keys.get(info.map, {})
        for key in self._segment_keys.pop(info.segment, ()):
            if held.get(key) == info.segment:
                del held[key]
        if not held:
            self.keys.pop(info.map, None)

    async def _read_index(self, info: KeySegmentInfo) -> list[str]:
        where = f"{self.store.description}{info.index}"
        data = await self.store.get(info.index)
        if data is None:
            raise ArchiveCorruptError(f"key index {where} of map {info.map!r} is missing")
        if hashlib.sha256(data).hexdigest() != info.index_sha256:
            raise ArchiveCorruptError(f"key index {where} of map {info.map!r} is damaged")
        data = self.codecs.decode(data, _context(info.map))
        try:
            keys = msgspec.msgpack.decode(
                zstandard.ZstdDecompressor().decompress(data), type=list[str]
            )
        except (zstandard.ZstdError, msgspec.DecodeError) as exc:
            raise ArchiveCorruptError(f"key index {where} is damaged: {exc}") from None
        if len(keys) != info.count or (
            keys and (keys[0], keys[-1]) != (info.first_key, info.last_key)
        ):
            raise ArchiveCorruptError(f"key index {where} does not match the manifest")
        return keys

    async def close(self) -> None:
        await self.store.close()

    def kinds(self) -> dict[str, MapKind]:
        return {name: info.kind for name, info in self.manifest.maps.items()}

    def segments_of(self, name: str, keys: Iterable[str] | None = None) -> list[str]:
        """The key segments of map `name` holding any of `keys` (all of them when `None`)."""
        held = self.keys.get(name)
        if not held:
            return []
        if keys is None:
            return sorted(set(held.values()))
        return sorted({held[key] for key in keys if key in held})

    async def _save(self) -> None:
        self.manifest.format = FORMAT
        data = msgspec.json.format(msgspec.json.encode(self.manifest), indent=2)
        await self.store.put(MANIFEST, data)

    async def _write(self, name: str, raw: bytes, suffix: str) -> tuple[str, str, int]:
        """Compress, encode and store `raw` as a new object of map `name`, checked by
        reading it back; returns (object name, SHA-256, stored bytes)."""
        compressed = zstandard.ZstdCompressor(level=self.level).compress(raw)
        compressed = self.codecs.encode(compressed, _context(name))
        digest = hashlib.sha256(compressed).hexdigest()
        prefix = hashlib.sha256(name.encode()).hexdigest()[:16]
        segment = f"segments/{prefix}-{digest[:16]}{suffix}"
        await self.store.put(segment, compressed)
        if await self.store.get(segment) != compressed:
            raise ArchiveCorruptError(
                f"segment {self.store.description}{segment} of map {name!r} did not read back "
                "as written; the data stays where it was"
            )
        return segment, digest, len(compressed)

    async def _read(self, name: str, segment: str, sha256: str) -> MapSnapshot:
        """The snapshot segment `segment` of map `name` holds, checked against `sha256`."""
        where = f"{self.store.description}{segment}"
        compressed = await self.store.get(segment)
        if compressed is None:
            raise ArchiveCorruptError(f"segment {where} of archived map {name!r} is missing")
        if hashlib.sha256(compressed).hexdigest() != sha256:
            raise ArchiveCorruptError(f"segment {where} of archived map {name!r} is damaged")
        compressed = self.codecs.decode(compressed, _context(name))  # ValueCodecError names it
        try:
            snapshot = decode_segment(zstandard.ZstdDecompressor().decompress(compressed))
        except (zstandard.ZstdError, msgspec.DecodeError, ValueError) as exc:
            raise ArchiveCorruptError(
                f"segment {where} of map {name!r} is damaged: {exc}"
            ) from None
        if snapshot.name != name:
            raise ArchiveCorruptError(f"segment {where} holds map {snapshot.name!r}, not {name!r}")
        return snapshot

    # -- whole maps -----------------------------------------------------------------------

    async def add(self, name: str, snapshot: MapSnapshot, now_ms: int) -> SegmentInfo:
        """Write `snapshot` as a segment, check it reads back, and list it (the map's key
        segments, which the snapshot must include, stop being listed)."""
        raw = encode_segment(snapshot)
        segment, digest, stored = await self._write(name, raw, ".zst")
        info = SegmentInfo(
            kind=snapshot.kind,
            segment=segment,
            sha256=digest,
            records=record_count(snapshot),
            raw_bytes=len(raw),
            stored_bytes=stored,
            newest_millis=newest_millis(snapshot),
            archived_at_ms=now_ms,
        )
        replaced = self.manifest.maps.get(name)
        self.manifest.maps[name] = info
        superseded = [self.manifest.key_segments.pop(old) for old in self.segments_of(name)]
        for old_info in superseded:
            self._unindex(old_info)
        await self._save()
        if replaced is not None and replaced.segment != segment:
            await self.store.delete(replaced.segment)
        for old_info in superseded:
            await self.store.delete(old_info.segment)
            await self.store.delete(old_info.index)
        return info

    async def read(self, name: str) -> MapSnapshot:
        """The snapshot archived for map `name` (checked against the manifest)."""
        info = self.manifest.maps[name]
        snapshot = await self._read(name, info.segment, info.sha256)
        if snapshot.kind != info.kind:
            raise ArchiveCorruptError(
                f"segment {self.store.description}{info.segment} holds a {snapshot.kind} "
                f"map, not the {info.kind} map {name!r}"
            )
        return snapshot

    async def remove(self, name: str) -> None:
        """Stop listing map `name`, then delete its segment."""
        info = self.manifest.maps.pop(name)
        await self._save()
        await self.store.delete(info.segment)

    # -- key segments ---------------------------------------------------------------------

    async def write_keys(self, snapshot: LWWSnapshot, now_ms: int) -> KeySegmentInfo:
        """Write some records of an LWW map as a key segment and its key index, checked by
        reading them back; not listed yet (`list_keys` does that, for the keys that may
        leave storage)."""
        raw = encode_segment(snapshot)
        segment, digest, stored = await self._write(snapshot.name, raw, ".keys.zst")
        info = KeySegmentInfo(
            map=snapshot.name,
            segment=segment,
            sha256=digest,
            index="",
            index_sha256="",
            count=0,
            first_key="",
            last_key="",
            raw_bytes=len(raw),
            stored_bytes=stored,
            newest_millis=newest_millis(snapshot),
            archived_at_ms=now_ms,
        )
        return await self._write_index(info, sorted(snapshot.records))

    async def _write_index(self, info: KeySegmentInfo, keys: list[str]) -> KeySegmentInfo:
        """`info` with a new key index listing `keys` (sorted, not empty)."""
        raw = msgspec.msgpack.encode(keys)
        index, digest, _ = await self._write(info.map, raw, ".idx")
        return msgspec.structs.replace(
            info,
            index=index,
            index_sha256=digest,
            count=len(keys),
            first_key=keys[0],
            last_key=keys[-1],
        )

    def keys_of(self, segment: str) -> list[str]:
        """The keys listed key segment `segment` holds."""
        return list(self._segment_keys[segment])

    async def list_keys(self, info: KeySegmentInfo, keys: list[str]) -> KeySegmentInfo | None:
        """List key segment `info` in the manifest for `keys`, some of the keys it was
        written with (the key index is rewritten if fewer); none: it is deleted."""
        written = info.index
        if keys and len(keys) != info.count:
            info = await self._write_index(info, sorted(keys))
        if info.index != written or not keys:
            await self.store.delete(written)
        if not keys:
            await self.store.delete(info.segment)
            return None
        self.manifest.key_segments[info.segment] = info
        self._index(info, sorted(keys))
        await self._save()
        return info

    async def read_keys(self, segment: str) -> LWWSnapshot:
        """The records key segment `segment` holds for the keys its index lists."""
        info = self.manifest.key_segments[segment]
        snapshot = await self._read(info.map, segment, info.sha256)
        if not isinstance(snapshot, LWWSnapshot):
            raise ArchiveCorruptError(
                f"key segment {self.store.description}{segment} does not hold an LWW map"
            )
        keys = self._segment_keys[segment]
        missing = [key for key in keys if key not in snapshot.records]
        if missing:
            raise ArchiveCorruptError(
                f"key segment {self.store.description}{segment} of map {info.map!r} lacks "
                f"the keys {missing[:5]} its index lists"
            )
        return LWWSnapshot(info.map, {key: snapshot.records[key] for key in keys})

    async def remove_keys(self, segments: Iterable[str]) -> None:
        """Stop listing these key segments, then delete them and their key indexes."""
        gone = [self.manifest.key_segments.pop(segment) for segment in segments]
        if not gone:
            return
        for info in gone:
            self._unindex(info)
        await self._save()
        for info in gone:
            await self.store.delete(info.segment)
            await self.store.delete(info.index)
