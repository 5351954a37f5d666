"""The partition map clients use to route (PROTOCOL.md §5.15)."""

from __future__ import annotations

from typing import Literal

from topgun.protocol.message import Message, Wire

__all__ = [
    "NodeEndpoints",
    "NodeStatus",
    "PartitionChange",
    "PartitionMap",
    "PartitionMapDelta",
    "PartitionMapDeltaPayload",
    "PartitionMapPayload",
    "PartitionMapRequest",
    "PartitionMapRequestPayload",
    "PartitionNode",
    "PartitionOwner",
]

NodeStatus = Literal["ACTIVE", "JOINING", "LEAVING", "SUSPECTED", "FAILED"]


class PartitionMapRequestPayload(Wire):
    current_version: int | None = None


class PartitionMapRequest(Message, tag="PARTITION_MAP_REQUEST"):
    """C→S: answered with `PARTITION_MAP` unless `currentVersion` is already current."""

    payload: PartitionMapRequestPayload | None = None


class NodeEndpoints(Wire):
    """Client-facing URLs."""

    websocket: str
    http: str | None = None


class PartitionNode(Wire):
    node_id: str
    endpoints: NodeEndpoints
    status: NodeStatus


class PartitionOwner(Wire):
    partition_id: int
    owner_node_id: str
    backup_node_ids: list[str]


class PartitionMapPayload(Wire):
    version: int
    partition_count: int
    nodes: list[PartitionNode]
    partitions: list[PartitionOwner]
    generated_at: int


class PartitionMap(Message, tag="PARTITION_MAP"):
    payload: PartitionMapPayload


class PartitionChange(Wire):
    partition_id: int
    previous_owner: str
    new_owner: str
    reason: Literal["REBALANCE", "FAILOVER", "JOIN", "LEAVE"]


class PartitionMapDeltaPayload(Wire):
    """`timestamp` is server ms (not an HLC)."""

    version: int
    previous_version: int
    changes: list[PartitionChange]
    timestamp: int


class PartitionMapDelta(Message, tag="PARTITION_MAP_DELTA"):
    payload: PartitionMapDeltaPayload
