"""Merkle sync of LWW maps and OR-Maps (PROTOCOL.md §5.4, §5.5, §6.3, §6.4, §6.7).

Every request needs READ on the map (pushes need PUT). `SYNC_INIT` and `ORMAP_SYNC_INIT`
first check whether the client must reset the map (`SYNC_RESET_REQUIRED`: its last sync is
older than `gc_age_ms`, or older than the map's prune horizon), then answer the root hash; an
unknown map has root 0 and is not created. A `SYNC_INIT` naming an OR-Map is answered as an
`ORMAP_SYNC_INIT` (§6.7). Bucket requests answer a non-empty leaf with its records (LWW:
tombstones included; OR-Map: per key its records and the tombstones of its tags) and any
other node with its children's hashes. Values are filtered by field-level security, which
leaves hashes intact (LWW hashes do not cover values; OR-Map readers that cannot see whole
values cannot rebuild hashes either way). `ORMAP_PUSH_DIFF` goes through the write pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from topgun.crdt import ORMap
from topgun.protocol import (
    ClientOp,
    LeafRecord,
    MerkleReqBucket,
    ORMapDiffRequest,
    ORMapDiffResponse,
    ORMapEntriesPayload,
    ORMapEntry,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    ORMapSyncRespBuckets,
    ORMapSyncRespLeaf,
    ORMapSyncRespLeafPayload,
    ORMapSyncRespRoot,
    SyncInit,
    SyncResetRequired,
    SyncResetRequiredPayload,
    SyncRespBuckets,
    SyncRespBucketsPayload,
    SyncRespLeaf,
    SyncRespLeafPayload,
    SyncRespRoot,
    SyncRespRootPayload,
)
from topgun.server.permissions import FieldFilter
from topgun.server.writes import WriteContext

if TYPE_CHECKING:
    from topgun.server.session import Session

LEAF_DEPTH = 3
"""Paths of this length name leaves (PROTOCOL.md §3.3)."""


def _allowed(session: Session, message_type: str, map_name: str, action: str) -> bool:
    """Whether the session may `action` the map; if not, it gets `ERROR 403`."""
    principal = session.principal
    assert principal is not None
    if session.server.security.is_allowed(principal, map_name, action):
        return True
    session.send_error(
        403, f"Access denied for {map_name}", {"type": message_type, "mapName": map_name}
    )
    return False


def _mismatch(session: Session, message_type: str, map_name: str) -> None:
    session.send_error(400, "Map type mismatch", {"type": message_type, "mapName": map_name})


def _fields(session: Session, map_name: str) -> FieldFilter:
    principal = session.principal
    assert principal is not None
    return session.server.security.field_filter(principal, map_name)


def reset_reason(
    last_sync_ms: int | None, now_ms: int, gc_age_ms: int, horizon_ms: int | None
) -> Literal["GC_AGE", "PRUNED"] | None:
    """Why a client that last synced at `last_sync_ms` must reset the map (§6.7), if it must.

    `0` or absent never resets.
    """
    if not last_sync_ms or last_sync_ms <= 0:
        return None
    if now_ms - last_sync_ms > gc_age_ms:
        return "GC_AGE"
    if horizon_ms is not None and last_sync_ms < horizon_ms:
        return "PRUNED"
    return None


def _reset_required(session: Session, map_name: str, last_sync_ms: int | None) -> bool:
    server = session.server
    horizon = server.maps.prune_horizon(map_name)
    reason = reset_reason(
        last_sync_ms,
        server.clock(),
        server.config.gc_age_ms,
        None if horizon is None else horizon.millis,
    )
    if reason is None:
        return False
    session.send(
        SyncResetRequired(payload=SyncResetRequiredPayload(map_name=map_name, reason=reason))
    )
    return True


def _root(session: Session, map_name: str, root_hash: int) -> SyncRespRootPayload:
    return SyncRespRootPayload(
        map_name=map_name, root_hash=root_hash, timestamp=session.server.hlc.now()
    )


def _send_or_root(session: Session, map_name: str) -> None:
    ormap = session.server.maps.ormap(map_name)
    root = 0 if ormap is None else ormap.merkle.root_hash
    session.send(ORMapSyncRespRoot(payload=_root(session, map_name, root)))


async def sync_init(session: Session, message: SyncInit) -> None:
    """`SYNC_INIT`: reset check, then the root (as `ORMAP_SYNC_RESP_ROOT` for an OR-Map)."""
    name = message.map_name
    if not _allowed(session, "SYNC_INIT", name, "READ"):
        return
    await session.server.maps.ensure_loaded(name)  # an archived map comes back first
    if _reset_required(session, name, message.last_sync_timestamp):
        return
    maps = session.server.maps
    if maps.kind(name) == "ormap":
        _send_or_root(session, name)
        return
    lww = maps.lww(name)
    root = 0 if lww is None else lww.merkle.root_hash
    session.send(SyncRespRoot(payload=_root(session, name, root)))


async def merkle_req_bucket(session: Session, message: MerkleReqBucket) -> None:
    """`MERKLE_REQ_BUCKET`: a non-empty leaf's records, else the node's children."""
    name, path = message.payload.map_name, message.payload.path
    if not _allowed(session, "MERKLE_REQ_BUCKET", name, "READ"):
        return
    await session.server.maps.ensure_loaded(name)  # an archived map comes back first
    maps = session.server.maps
    if maps.kind(name) == "ormap":
        _mismatch(session, "MERKLE_REQ_BUCKET", name)
        return
    lww = maps.lww(name)
    keys = lww.merkle.keys_at(path) if lww is not None and len(path) == LEAF_DEPTH else []
    if lww is None or not keys:
        buckets = {} if lww is None else lww.merkle.buckets(path)
        session.send(
            SyncRespBuckets(
                payload=SyncRespBucketsPayload(map_name=name, path=path, buckets=buckets)
            )
        )
        return
    fields = _fields(session, name)
    records: list[LeafRecord] = []
    async with maps.holding(name, keys):  # a leaf's cold values are loaded first
        for key in keys:
            stored = lww.get_record(key)
            if stored is None:
                continue  # pruned while its value was being loaded
            record = fields.record(stored)
            if record is not None:
                records.append(LeafRecord(key=key, record=record))
    session.send(
        SyncRespLeaf(payload=SyncRespLeafPayload(map_name=name, path=path, records=records))
    )


def or_entry(ormap: ORMap | None, key: str, fields: FieldFilter) -> ORMapEntry:
    """One key of an OR-Map as sync sends it: its records (values filtered by `fields`,
    withheld ones left out) and the tombstones of its tags."""
    if ormap is None:
        return ORMapEntry(key=key, records=[], tombstones=[])
    records = [shown for r in ormap.records(key) if (shown := fields.record(r)) is not None]
    return ORMapEntry(key=key, records=records, tombstones=ormap.tombstones_of(key))


async def ormap_sync_init(session: Session, message: ORMapSyncInit) -> None:
    """`ORMAP_SYNC_INIT`: reset check, then the OR-Map's root (the client's hashes are
    informational)."""
    name = message.map_name
    if not _allowed(session, "ORMAP_SYNC_INIT", name, "READ"):
        return
    await session.server.maps.ensure_loaded(name)  # an archived map comes back first
    if session.server.maps.kind(name) == "lww":
        _mismatch(session, "ORMAP_SYNC_INIT", name)
        return
    if _reset_required(session, name, message.last_sync_timestamp):
        return
    _send_or_root(session, name)


async def ormap_merkle_req_bucket(session: Session, message: ORMapMerkleReqBucket) -> None:
    """`ORMAP_MERKLE_REQ_BUCKET`: a leaf with live or dead keys as entries, else children
    (zero-hash children included)."""
    name, path = message.payload.map_name, message.payload.path
    if not _allowed(session, "ORMAP_MERKLE_REQ_BUCKET", name, "READ"):
        return
    await session.server.maps.ensure_loaded(name)  # an archived map comes back first
    maps = session.server.maps
    if maps.kind(name) == "lww":
        _mismatch(session, "ORMAP_MERKLE_REQ_BUCKET", name)
        return
    ormap = maps.ormap(name)
    keys = ormap.merkle.keys_at(path) if ormap is not None and len(path) == LEAF_DEPTH else []
    if ormap is None or not keys:
        buckets = {} if ormap is None else ormap.merkle.buckets(path)
        session.send(
            ORMapSyncRespBuckets(
                payload=SyncRespBucketsPayload(map_name=name, path=path, buckets=buckets)
            )
        )
        return
    fields = _fields(session, name)
    async with maps.holding(name, keys):  # a leaf's cold values are loaded first
        entries = [or_entry(ormap, key, fields) for key in keys]
    session.send(
        ORMapSyncRespLeaf(
            payload=ORMapSyncRespLeafPayload(map_name=name, path=path, entries=entries)
        )
    )


async def _diff_response(session: Session, name: str, keys: list[str]) -> None:
    maps = session.server.maps
    fields = _fields(session, name)
    wanted = list(dict.fromkeys(keys))
    async with maps.holding(name, wanted):  # cold values are loaded first
        ormap = maps.ormap(name)
        entries = [or_entry(ormap, key, fields) for key in wanted]
    session.send(ORMapDiffResponse(payload=ORMapEntriesPayload(map_name=name, entries=entries)))


async def ormap_diff_request(session: Session, message: ORMapDiffRequest) -> None:
    """`ORMAP_DIFF_REQUEST`: one entry per requested key (`records: []` if none)."""
    name = message.payload.map_name
    if not _allowed(session, "ORMAP_DIFF_REQUEST", name, "READ"):
        return
    await session.server.maps.ensure_loaded(name)  # an archived map comes back first
    if session.server.maps.kind(name) == "lww":
        _mismatch(session, "ORMAP_DIFF_REQUEST", name)
        return
    await _diff_response(session, name, message.payload.keys)


async def ormap_push_diff(session: Session, message: ORMapPushDiff) -> None:
    """`ORMAP_PUSH_DIFF`: merge the client's entries through the write pipeline (§6.4).

    Needs PUT; removing a live record needs REMOVE too (without it, that tombstone is
    ignored). Tombstones go first, then records, as `ORMap.merge_entry` orders them; what is
    already known here is skipped. Pushed records whose tags were tombstoned here before
    get the keys' current entries back (`ORMAP_DIFF_RESPONSE`) so the client drops them.
    """
    server = session.server
    name = message.payload.map_name
    if not _allowed(session, "ORMAP_PUSH_DIFF", name, "PUT"):
        return
    await session.server.maps.ensure_loaded(name)  # an archived map comes back first
    maps = server.maps
    if maps.kind(name) == "lww":
        _mismatch(session, "ORMAP_PUSH_DIFF", name)
        return
    ormap = maps.ormap(name)
    removals: dict[str, ClientOp] = {}
    additions: list[ClientOp] = []
    stale: list[str] = []
    for entry in message.payload.entries:
        for tag in entry.tombstones:
            if tag not in removals and not maps.is_tombstoned(name, tag):
                removals[tag] = ClientOp(
                    map_name=name, key=entry.key, op_type="OR_REMOVE", or_tag=tag
                )
        for record in entry.records:
            if maps.is_tombstoned(name, record.tag):
                stale.append(entry.key)
            elif ormap is None or entry.key not in ormap.keys_holding(record.tag):
                additions.append(
                    ClientOp(map_name=name, key=entry.key, op_type="OR_ADD", or_record=record)
                )
    principal = session.principal
    assert principal is not None
    context = WriteContext(principal, session)
    request = await server.writes.apply(
        [*removals.values(), *additions], context, origin=session, removal_needs_live_tag=True
    )
    await server.writes.settle(request, context)
    if stale:
        await _diff_response(session, name, stale)
