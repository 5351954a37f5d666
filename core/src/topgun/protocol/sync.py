"""Merkle-tree sync of LWW maps and OR-Maps, resets and tombstone GC (PROTOCOL.md §5.4, §5.5,
§5.16, §6.3, §6.4, §6.7).

`SYNC_INIT` and `ORMAP_SYNC_INIT` carry their fields at the top level; every other message here
uses `payload`. Hashes are unsigned 32-bit integers; paths are 0–3 lowercase hex digits.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol.message import Message, Wire

__all__ = [
    "GcPrune",
    "GcPrunePayload",
    "LeafRecord",
    "MerklePath",
    "MerkleReqBucket",
    "MerkleReqBucketPayload",
    "ORMapDiffRequest",
    "ORMapDiffRequestPayload",
    "ORMapDiffResponse",
    "ORMapEntriesPayload",
    "ORMapEntry",
    "ORMapMerkleReqBucket",
    "ORMapPushDiff",
    "ORMapSyncInit",
    "ORMapSyncRespBuckets",
    "ORMapSyncRespLeaf",
    "ORMapSyncRespLeafPayload",
    "ORMapSyncRespRoot",
    "SyncInit",
    "SyncResetRequired",
    "SyncResetRequiredPayload",
    "SyncRespBuckets",
    "SyncRespBucketsPayload",
    "SyncRespLeaf",
    "SyncRespLeafPayload",
    "SyncRespRoot",
    "SyncRespRootPayload",
]

MerklePath = Annotated[str, Meta(pattern=r"^[0-9a-f]{0,3}$")]
"""A trie node: `""` is the root, `"abc"` a leaf (§3.3). Anything else in a request is a 400."""


class SyncInit(Message, tag="SYNC_INIT"):
    """C→S: start LWW sync; `lastSyncTimestamp` is ms on the server's clock (0 = never)."""

    map_name: str
    last_sync_timestamp: int | None = None


class SyncRespRootPayload(Wire):
    """`rootHash` is 0 for an empty or unknown map; `timestamp` is the server's `hlc.now()`."""

    map_name: str
    root_hash: int
    timestamp: Timestamp


class SyncRespRoot(Message, tag="SYNC_RESP_ROOT"):
    payload: SyncRespRootPayload


class MerkleReqBucketPayload(Wire):
    map_name: str
    path: MerklePath


class MerkleReqBucket(Message, tag="MERKLE_REQ_BUCKET"):
    """C→S: ask for the node at `path` (answered by BUCKETS, or LEAF for a non-empty leaf)."""

    payload: MerkleReqBucketPayload


class SyncRespBucketsPayload(Wire):
    """`buckets` maps each existing child's hex digit to its hash (`{}` if none)."""

    map_name: str
    path: str
    buckets: dict[str, int]


class SyncRespBuckets(Message, tag="SYNC_RESP_BUCKETS"):
    payload: SyncRespBucketsPayload


class LeafRecord(Wire):
    key: str
    record: LWWRecord


class SyncRespLeafPayload(Wire):
    """Every record of the leaf, tombstones included."""

    map_name: str
    path: str
    records: list[LeafRecord]


class SyncRespLeaf(Message, tag="SYNC_RESP_LEAF"):
    payload: SyncRespLeafPayload


class SyncResetRequiredPayload(Wire):
    map_name: str
    reason: Literal["GC_AGE", "PRUNED"]


class SyncResetRequired(Message, tag="SYNC_RESET_REQUIRED"):
    """S→C: the client must drop the map and sync again from 0."""

    payload: SyncResetRequiredPayload


class ORMapEntry(Wire):
    """One key of an OR-Map: its live records and the tags tombstoned on it."""

    key: str
    records: list[ORMapRecord]
    tombstones: list[str]


class ORMapSyncInit(Message, tag="ORMAP_SYNC_INIT"):
    """C→S: start OR-Map sync; the client's hashes are informational."""

    map_name: str
    root_hash: int
    bucket_hashes: dict[str, int]
    last_sync_timestamp: int | None = None


class ORMapSyncRespRoot(Message, tag="ORMAP_SYNC_RESP_ROOT"):
    payload: SyncRespRootPayload


class ORMapMerkleReqBucket(Message, tag="ORMAP_MERKLE_REQ_BUCKET"):
    payload: MerkleReqBucketPayload


class ORMapSyncRespBuckets(Message, tag="ORMAP_SYNC_RESP_BUCKETS"):
    """Zero-hash children are included."""

    payload: SyncRespBucketsPayload


class ORMapSyncRespLeafPayload(Wire):
    map_name: str
    path: str
    entries: list[ORMapEntry]


class ORMapSyncRespLeaf(Message, tag="ORMAP_SYNC_RESP_LEAF"):
    payload: ORMapSyncRespLeafPayload


class ORMapDiffRequestPayload(Wire):
    map_name: str
    keys: list[str]


class ORMapDiffRequest(Message, tag="ORMAP_DIFF_REQUEST"):
    """C→S: ask for the entries of `keys` (not sent by Feb 2026 TS clients)."""

    payload: ORMapDiffRequestPayload


class ORMapEntriesPayload(Wire):
    map_name: str
    entries: list[ORMapEntry]


class ORMapDiffResponse(Message, tag="ORMAP_DIFF_RESPONSE"):
    """S→C: one entry per requested or affected key (`records: []` if none)."""

    payload: ORMapEntriesPayload


class ORMapPushDiff(Message, tag="ORMAP_PUSH_DIFF"):
    """C→S: the client's state of some keys, merged through the write pipeline."""

    payload: ORMapEntriesPayload


class GcPrunePayload(Wire):
    older_than: Timestamp


class GcPrune(Message, tag="GC_PRUNE"):
    """S→C: drop tombstones (LWW and OR tags) older than `olderThan`."""

    payload: GcPrunePayload
