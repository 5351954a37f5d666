"""Conflict-free replicated data types: pure, no I/O, no wall clock (time is injected)."""

from topgun.crdt.hashing import (
    PARTITION_COUNT,
    fnv1a32,
    js_number,
    lww_item_hash,
    or_entry_hash,
    or_record_string,
    partition_of,
    stable_json,
)
from topgun.crdt.hlc import (
    HLC,
    ClockDriftError,
    check_node_id,
    is_server_node_id,
    validate_timestamp,
)
from topgun.crdt.lww import COLD, ColdValueError, LWWListener, LWWMap, check_ttl
from topgun.crdt.merkle import MerkleTree
from topgun.crdt.ormap import InvalidTagError, ORMap, ORMapListener, ORMergeResult
from topgun.crdt.pncounter import PNCounter
from topgun.crdt.records import ZERO, LWWRecord, ORMapRecord, Timestamp

__all__ = [
    "COLD",
    "HLC",
    "PARTITION_COUNT",
    "ZERO",
    "ClockDriftError",
    "ColdValueError",
    "InvalidTagError",
    "LWWListener",
    "LWWMap",
    "LWWRecord",
    "MerkleTree",
    "ORMap",
    "ORMapListener",
    "ORMapRecord",
    "ORMergeResult",
    "PNCounter",
    "Timestamp",
    "check_node_id",
    "check_ttl",
    "fnv1a32",
    "is_server_node_id",
    "js_number",
    "lww_item_hash",
    "or_entry_hash",
    "or_record_string",
    "partition_of",
    "stable_json",
    "validate_timestamp",
]
