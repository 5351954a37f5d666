"""Which message types travel in which direction, and which are urgent (PROTOCOL.md §1.2, §1.3, §5).

`ClientMessage` and `ServerMessage` are the tagged unions the codec decodes into. A type that is
only valid server→client (e.g. `PONG`) is not a `ClientMessage`: a server receiving it answers
"Unsupported message type".
"""

from __future__ import annotations

from typing import Final, TypeAlias

from topgun.protocol.auth import (
    Auth,
    AuthAck,
    AuthFail,
    AuthRequired,
    Batch,
    Error,
    Ping,
    Pong,
    ShutdownPending,
)
from topgun.protocol.counters import CounterRequest, CounterResponse, CounterSync, CounterUpdate
from topgun.protocol.events import ServerBatchEvent, ServerEvent
from topgun.protocol.journal import (
    JournalEventMessage,
    JournalRead,
    JournalReadResponse,
    JournalSubscribe,
    JournalUnsubscribe,
)
from topgun.protocol.locks import LockGranted, LockRelease, LockReleased, LockRequest
from topgun.protocol.message import Message
from topgun.protocol.partitions import PartitionMap, PartitionMapDelta, PartitionMapRequest
from topgun.protocol.processors import (
    EntryProcess,
    EntryProcessBatch,
    EntryProcessBatchResponse,
    EntryProcessResponse,
    ListResolvers,
    ListResolversResponse,
    RegisterResolver,
    RegisterResolverResponse,
    UnregisterResolver,
    UnregisterResolverResponse,
)
from topgun.protocol.queries import (
    HybridQueryDelta,
    HybridQueryResp,
    HybridQuerySubscribe,
    HybridQueryUnsubscribe,
    QueryResp,
    QuerySub,
    QueryUnsub,
    QueryUpdate,
)
from topgun.protocol.search import Search, SearchResp, SearchSub, SearchUnsub, SearchUpdate
from topgun.protocol.sync import (
    GcPrune,
    MerkleReqBucket,
    ORMapDiffRequest,
    ORMapDiffResponse,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    ORMapSyncRespBuckets,
    ORMapSyncRespLeaf,
    ORMapSyncRespRoot,
    SyncInit,
    SyncResetRequired,
    SyncRespBuckets,
    SyncRespLeaf,
    SyncRespRoot,
)
from topgun.protocol.topics import TopicMessage, TopicPub, TopicSub, TopicUnsub
from topgun.protocol.vector import (
    VectorSearch,
    VectorSearchResp,
    VectorSearchSub,
    VectorSearchUnsub,
    VectorSearchUpdate,
)
from topgun.protocol.writes import (
    ClientOpMessage,
    MergeRejected,
    OpAck,
    OpBatch,
    OpRejected,
)

__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "SERVER_MESSAGE_TYPES",
    "URGENT_MESSAGE_TYPES",
    "ClientMessage",
    "ServerMessage",
    "message_type",
]

ClientMessage: TypeAlias = (
    Auth
    | Ping
    | OpBatch
    | ClientOpMessage
    | SyncInit
    | MerkleReqBucket
    | ORMapSyncInit
    | ORMapMerkleReqBucket
    | ORMapDiffRequest
    | ORMapPushDiff
    | QuerySub
    | QueryUnsub
    | Search
    | SearchSub
    | SearchUnsub
    | HybridQuerySubscribe
    | HybridQueryUnsubscribe
    | TopicSub
    | TopicUnsub
    | TopicPub
    | LockRequest
    | LockRelease
    | CounterRequest
    | CounterSync
    | EntryProcess
    | EntryProcessBatch
    | RegisterResolver
    | UnregisterResolver
    | ListResolvers
    | JournalSubscribe
    | JournalUnsubscribe
    | JournalRead
    | PartitionMapRequest
    | VectorSearch
    | VectorSearchSub
    | VectorSearchUnsub
)
"""Every client→server message."""

ServerMessage: TypeAlias = (
    AuthRequired
    | AuthAck
    | AuthFail
    | Pong
    | ShutdownPending
    | Batch
    | Error
    | OpAck
    | OpRejected
    | MergeRejected
    | ServerEvent
    | ServerBatchEvent
    | SyncRespRoot
    | SyncRespBuckets
    | SyncRespLeaf
    | SyncResetRequired
    | ORMapSyncRespRoot
    | ORMapSyncRespBuckets
    | ORMapSyncRespLeaf
    | ORMapDiffResponse
    | QueryResp
    | QueryUpdate
    | SearchResp
    | SearchUpdate
    | HybridQueryResp
    | HybridQueryDelta
    | TopicMessage
    | LockGranted
    | LockReleased
    | CounterResponse
    | CounterUpdate
    | EntryProcessResponse
    | EntryProcessBatchResponse
    | RegisterResolverResponse
    | UnregisterResolverResponse
    | ListResolversResponse
    | JournalEventMessage
    | JournalReadResponse
    | PartitionMap
    | PartitionMapDelta
    | GcPrune
    | VectorSearchResp
    | VectorSearchUpdate
)
"""Every server→client message."""


def message_type(cls: type[Message]) -> str:
    """The wire `type` of a message class (its msgspec tag)."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} is not a tagged wire message")
    return tag


CLIENT_MESSAGE_TYPES: Final[dict[str, type[Message]]] = {
    message_type(cls): cls for cls in ClientMessage.__args__
}
"""`type` → class for client→server messages."""

SERVER_MESSAGE_TYPES: Final[dict[str, type[Message]]] = {
    message_type(cls): cls for cls in ServerMessage.__args__
}
"""`type` → class for server→client messages."""

URGENT_MESSAGE_TYPES: Final[frozenset[type[Message]]] = frozenset(
    {AuthRequired, AuthAck, AuthFail, Pong, Error, OpRejected, MergeRejected, ShutdownPending}
)
"""Messages that bypass the coalescing delay (§1.3)."""
