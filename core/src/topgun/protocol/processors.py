"""Entry processors and conflict resolvers, addressed by name (PROTOCOL.md §5.12, §5.13, §8).

All fields are top-level. `code` is accepted for compatibility with TS clients and never used:
processors and resolvers are server-side Python callables.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import UNSET, Meta, UnsetType

from topgun.crdt.records import Timestamp
from topgun.protocol.message import Message, Wire

__all__ = [
    "EntryProcess",
    "EntryProcessBatch",
    "EntryProcessBatchResponse",
    "EntryProcessResponse",
    "EntryResult",
    "ListResolvers",
    "ListResolversResponse",
    "ProcessorName",
    "ProcessorSpec",
    "RegisterResolver",
    "RegisterResolverResponse",
    "ResolverBinding",
    "ResolverSpec",
    "UnregisterResolver",
    "UnregisterResolverResponse",
]

ProcessorName = Annotated[str, Meta(min_length=1, max_length=100)]


class ProcessorSpec(Wire):
    name: ProcessorName
    code: str | None = None
    args: Any = None


class EntryProcess(Message, tag="ENTRY_PROCESS"):
    """C→S: run a named processor atomically on one key."""

    request_id: str
    map_name: str
    key: str
    processor: ProcessorSpec


class EntryProcessResponse(Message, tag="ENTRY_PROCESS_RESPONSE"):
    """`newValue` and `timestamp` (HLC of the write) are present only when a value was written;
    `result`/`newValue` distinguish absent (`UNSET`) from nil."""

    request_id: str
    success: bool
    result: Any | UnsetType = UNSET
    new_value: Any | UnsetType = UNSET
    error: str | None = None
    timestamp: Timestamp | None = None


class EntryProcessBatch(Message, tag="ENTRY_PROCESS_BATCH"):
    request_id: str
    map_name: str
    keys: list[str]
    processor: ProcessorSpec


class EntryResult(Wire):
    success: bool
    result: Any | UnsetType = UNSET
    new_value: Any | UnsetType = UNSET
    error: str | None = None


class EntryProcessBatchResponse(Message, tag="ENTRY_PROCESS_BATCH_RESPONSE"):
    request_id: str
    results: dict[str, EntryResult]


class ResolverSpec(Wire):
    """TS clients always send `code` (`""` when they have none); it is ignored."""

    name: ProcessorName
    code: str | None = None
    priority: Annotated[int, Meta(ge=0, le=100)] | None = None
    key_pattern: str | None = None


class RegisterResolver(Message, tag="REGISTER_RESOLVER"):
    """C→S: bind a server-registered resolver to a map."""

    request_id: str
    map_name: str
    resolver: ResolverSpec


class RegisterResolverResponse(Message, tag="REGISTER_RESOLVER_RESPONSE"):
    request_id: str
    success: bool
    error: str | None = None


class UnregisterResolver(Message, tag="UNREGISTER_RESOLVER"):
    request_id: str
    map_name: str
    resolver_name: str


class UnregisterResolverResponse(Message, tag="UNREGISTER_RESOLVER_RESPONSE"):
    request_id: str
    success: bool
    error: str | None = None


class ListResolvers(Message, tag="LIST_RESOLVERS"):
    request_id: str
    map_name: str | None = None


class ResolverBinding(Wire):
    map_name: str
    name: str
    priority: int | None = None
    key_pattern: str | None = None


class ListResolversResponse(Message, tag="LIST_RESOLVERS_RESPONSE"):
    request_id: str
    resolvers: list[ResolverBinding]
