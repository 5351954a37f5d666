"""The message catalogue: one sample of every message type, each of which must round-trip."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    URGENT_MESSAGE_TYPES,
    Auth,
    AuthAck,
    AuthFail,
    AuthRequired,
    ClientOp,
    ClientOpMessage,
    CounterRequest,
    CounterRequestPayload,
    CounterResponse,
    CounterState,
    CounterStatePayload,
    CounterSync,
    CounterUpdate,
    DeltaRecord,
    EntryProcess,
    EntryProcessBatch,
    EntryProcessBatchResponse,
    EntryProcessResponse,
    EntryResult,
    Error,
    ErrorPayload,
    EventPayload,
    GcPrune,
    GcPrunePayload,
    HttpError,
    HttpQuery,
    HttpQueryResult,
    HttpSearch,
    HttpSearchResult,
    HybridQueryDelta,
    HybridQueryDeltaPayload,
    HybridQueryResp,
    HybridQueryRespPayload,
    HybridQuerySubscribe,
    HybridQuerySubscribePayload,
    HybridQueryUnsubscribe,
    HybridQueryUnsubscribePayload,
    JournalEvent,
    JournalEventMessage,
    JournalRead,
    JournalReadResponse,
    JournalSubscribe,
    JournalUnsubscribe,
    LeafRecord,
    ListResolvers,
    ListResolversResponse,
    LockGranted,
    LockGrantedPayload,
    LockRelease,
    LockReleased,
    LockReleasedPayload,
    LockReleasePayload,
    LockRequest,
    LockRequestPayload,
    MapDelta,
    MatchOptions,
    MergeRejected,
    MerkleReqBucket,
    MerkleReqBucketPayload,
    Message,
    NodeEndpoints,
    OpAck,
    OpAckPayload,
    OpBatch,
    OpBatchPayload,
    OpRejected,
    OpRejectedPayload,
    OpResult,
    ORMapDiffRequest,
    ORMapDiffRequestPayload,
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
    PartitionChange,
    PartitionMap,
    PartitionMapDelta,
    PartitionMapDeltaPayload,
    PartitionMapPayload,
    PartitionMapRequest,
    PartitionMapRequestPayload,
    PartitionNode,
    PartitionOwner,
    Ping,
    Pong,
    PredicateNode,
    ProcessorSpec,
    Query,
    QueryResp,
    QueryRespPayload,
    QueryResultRow,
    QuerySub,
    QuerySubPayload,
    QueryUnsub,
    QueryUnsubPayload,
    QueryUpdate,
    QueryUpdatePayload,
    RegisterResolver,
    RegisterResolverResponse,
    ResolverBinding,
    ResolverSpec,
    ScoredRow,
    Search,
    SearchOptions,
    SearchPayload,
    SearchResp,
    SearchRespPayload,
    SearchSub,
    SearchSubPayload,
    SearchUnsub,
    SearchUnsubPayload,
    SearchUpdate,
    SearchUpdatePayload,
    ServerBatchEvent,
    ServerBatchEventPayload,
    ServerEvent,
    ShutdownPending,
    SseChange,
    SseResync,
    SyncAck,
    SyncErrorItem,
    SyncInit,
    SyncMapRequest,
    SyncRequest,
    SyncResetRequired,
    SyncResetRequiredPayload,
    SyncRespBuckets,
    SyncRespBucketsPayload,
    SyncRespLeaf,
    SyncRespLeafPayload,
    SyncResponse,
    SyncRespRoot,
    SyncRespRootPayload,
    TopicMessage,
    TopicMessagePayload,
    TopicPub,
    TopicPubPayload,
    TopicSub,
    TopicSubPayload,
    TopicUnsub,
    UnregisterResolver,
    UnregisterResolverResponse,
    VectorHit,
    VectorSearch,
    VectorSearchPayload,
    VectorSearchResp,
    VectorSearchRespPayload,
    VectorSearchSub,
    VectorSearchSubPayload,
    VectorSearchUnsub,
    VectorSearchUnsubPayload,
    VectorSearchUpdate,
    VectorSearchUpdatePayload,
    VectorWeights,
    decode_client_frame,
    decode_json,
    decode_msgpack,
    decode_server_message,
    encode,
    encode_json,
    message_type,
    pack_batch,
)

HLC = Timestamp(1795657330662, 7, "A-node")
SERVER_HLC = Timestamp(1795657330700, 0, "server-1")
RECORD = LWWRecord({"title": "hello", "n": 2, "big": 2**40, "nested": [1, {"x": None}]}, HLC, 60000)
TOMBSTONE = LWWRecord(None, HLC)
OR_RECORD = ORMapRecord("blue", HLC, str(HLC))
OP = ClientOp(map_name="todos", key="t1", id="1000000001", op_type="PUT", record=RECORD)
PREDICATE = PredicateNode(
    op="and",
    children=[
        PredicateNode(op="eq", attribute="cat", value=None),
        PredicateNode(op="gte", attribute="score", value=4.5),
        PredicateNode(
            op="match",
            attribute="body",
            query="merkle",
            match_options=MatchOptions(operator="and", boost={"title": 2.0}),
        ),
    ],
)
QUERY = Query(
    where={"cat": "odd"}, predicate=PREDICATE, sort={"score": "desc", "_key": "asc"}, limit=3
)
JOURNAL_EVENT = JournalEvent(
    sequence="18446744073709551617",
    type="UPDATE",
    map_name="todos",
    key="t1",
    timestamp=HLC,
    node_id="server-1",
    value={"v": 2},
    previous_value=None,
    metadata={"tag": "x"},
)
ENTRY = ORMapEntry(key="post1", records=[OR_RECORD], tombstones=["1795657330600:0:A-node"])

CLIENT_SAMPLES: list[Message] = [
    Auth(token="eyJhbGciOiJIUzI1NiJ9.e30.sig", protocol_version=1),
    Ping(timestamp=1795657335435),
    OpBatch(
        payload=OpBatchPayload(
            ops=[
                OP,
                ClientOp(map_name="todos", key="t2", op_type="REMOVE", record=TOMBSTONE),
                ClientOp(map_name="tags", key="p", op_type="OR_ADD", or_record=OR_RECORD),
                ClientOp(map_name="tags", key="p", op_type="OR_REMOVE", or_tag=str(HLC)),
            ],
            write_concern="PERSISTED",
            timeout=60_000,
        )
    ),
    ClientOpMessage(payload=ClientOp(map_name="m", key="k", record=RECORD, timeout=100)),
    SyncInit(map_name="todos", last_sync_timestamp=1795657330662),
    MerkleReqBucket(payload=MerkleReqBucketPayload(map_name="todos", path="0a9")),
    ORMapSyncInit(
        map_name="tags",
        root_hash=4294967295,
        bucket_hashes={"8": 2283357465},
        last_sync_timestamp=0,
    ),
    ORMapMerkleReqBucket(payload=MerkleReqBucketPayload(map_name="tags", path="")),
    ORMapDiffRequest(payload=ORMapDiffRequestPayload(map_name="tags", keys=["post1", "post2"])),
    ORMapPushDiff(payload=ORMapEntriesPayload(map_name="tags", entries=[ENTRY])),
    QuerySub(payload=QuerySubPayload(query_id="q1", map_name="items", query=QUERY)),
    QueryUnsub(payload=QueryUnsubPayload(query_id="q1")),
    Search(
        payload=SearchPayload(
            request_id="r1",
            map_name="articles",
            query="merkle trees",
            options=SearchOptions(limit=5, min_score=0.5, boost={"title": 2.0}),
        )
    ),
    SearchSub(payload=SearchSubPayload(subscription_id="s1", map_name="articles", query="x")),
    SearchUnsub(payload=SearchUnsubPayload(subscription_id="s1")),
    HybridQuerySubscribe(
        payload=HybridQuerySubscribePayload(
            subscription_id="h1",
            map_name="articles",
            predicate=PREDICATE,
            where={"cat": "a"},
            sort={"_score": "desc"},
            limit=10,
            cursor="abc",
        )
    ),
    HybridQueryUnsubscribe(payload=HybridQueryUnsubscribePayload(subscription_id="h1")),
    TopicSub(payload=TopicSubPayload(topic="chat:room/1")),
    TopicUnsub(payload=TopicSubPayload(topic="chat:room/1")),
    TopicPub(payload=TopicPubPayload(topic="chat:room/1", data={"text": "hi", "n": [1, 2.5]})),
    LockRequest(payload=LockRequestPayload(request_id="l1", name="lock-a", ttl=10_000)),
    LockRelease(payload=LockReleasePayload(name="lock-a", fencing_token=1795657330662)),
    CounterRequest(payload=CounterRequestPayload(name="likes")),
    CounterSync(
        payload=CounterStatePayload(
            name="likes", state=CounterState(positive={"n1": 5}, negative={"n1": 0.5})
        )
    ),
    EntryProcess(
        request_id="e1",
        map_name="m",
        key="cnt",
        processor=ProcessorSpec(name="builtin:increment", code="ignored", args=2),
    ),
    EntryProcessBatch(
        request_id="e2",
        map_name="m",
        keys=["a", "b", "a"],
        processor=ProcessorSpec(name="builtin:set_property", args={"path": "a.b", "value": 1}),
    ),
    RegisterResolver(
        request_id="r1",
        map_name="m",
        resolver=ResolverSpec(name="builtin:first_write_wins", code="", priority=100),
    ),
    UnregisterResolver(request_id="r2", map_name="m", resolver_name="builtin:first_write_wins"),
    ListResolvers(request_id="r3", map_name="m"),
    JournalSubscribe(request_id="j1", from_sequence="42", map_name="m", types=["PUT", "DELETE"]),
    JournalUnsubscribe(subscription_id="j1"),
    JournalRead(request_id="j2", from_sequence="0", limit=100, map_name="m"),
    PartitionMapRequest(payload=PartitionMapRequestPayload(current_version=3)),
    VectorSearch(
        payload=VectorSearchPayload(
            request_id="v1",
            map_name="docs",
            query="merkle trees",
            k=5,
            predicate=PredicateNode(op="eq", attribute="lang", value="en"),
            weights=VectorWeights(vector=1.0, text=0.5),
        )
    ),
    VectorSearch(
        payload=VectorSearchPayload(
            request_id="v2", map_name="docs", vector=b"\x00\x00\x80?" * 3, field="embedding"
        )
    ),
    VectorSearchSub(
        payload=VectorSearchSubPayload(subscription_id="vs1", map_name="docs", query="sync")
    ),
    VectorSearchUnsub(payload=VectorSearchUnsubPayload(subscription_id="vs1")),
]

SERVER_SAMPLES: list[Message] = [
    AuthRequired(),
    AuthAck(protocol_version=1),
    AuthFail(error="invalid signature", code=401),
    Pong(server_time=1795657335436, ping_timestamp=1795657335435.0),
    ShutdownPending(retry_after=5000),
    pack_batch([encode(AuthAck()), encode(AuthRequired())]),
    Error(payload=ErrorPayload(code=400, message="Invalid message format", details={"a": [1]})),
    OpAck(
        payload=OpAckPayload(
            last_id="1000000001",
            achieved_level="MEMORY",
            results=[
                OpResult(op_id="1000000001", success=True, achieved_level="APPLIED"),
                OpResult(
                    op_id="#1", success=False, achieved_level="FIRE_AND_FORGET", error="Invalid op"
                ),
            ],
        )
    ),
    OpRejected(payload=OpRejectedPayload(op_id="#1", reason="Access denied", code=403)),
    MergeRejected(
        map_name="m", key="k", attempted_value={"v": 1}, reason="Entry is immutable", timestamp=HLC
    ),
    ServerEvent(
        payload=EventPayload(map_name="todos", event_type="PUT", key="t1", record=RECORD),
        timestamp=SERVER_HLC,
    ),
    ServerBatchEvent(
        payload=ServerBatchEventPayload(
            events=[
                EventPayload(map_name="todos", event_type="REMOVE", key="t2", record=TOMBSTONE),
                EventPayload(map_name="tags", event_type="OR_ADD", key="p", or_record=OR_RECORD),
                EventPayload(map_name="tags", event_type="OR_REMOVE", key="p", or_tag=str(HLC)),
            ]
        ),
        timestamp=SERVER_HLC,
    ),
    SyncRespRoot(
        payload=SyncRespRootPayload(map_name="todos", root_hash=3171143397, timestamp=SERVER_HLC)
    ),
    SyncRespBuckets(
        payload=SyncRespBucketsPayload(map_name="todos", path="6", buckets={"d": 1592194921})
    ),
    SyncRespLeaf(
        payload=SyncRespLeafPayload(
            map_name="todos",
            path="6d1",
            records=[
                LeafRecord(key="user:1", record=RECORD),
                LeafRecord(key="x", record=TOMBSTONE),
            ],
        )
    ),
    SyncResetRequired(payload=SyncResetRequiredPayload(map_name="todos", reason="GC_AGE")),
    ORMapSyncRespRoot(
        payload=SyncRespRootPayload(map_name="tags", root_hash=0, timestamp=SERVER_HLC)
    ),
    ORMapSyncRespBuckets(payload=SyncRespBucketsPayload(map_name="tags", path="", buckets={})),
    ORMapSyncRespLeaf(
        payload=ORMapSyncRespLeafPayload(map_name="tags", path="ade", entries=[ENTRY])
    ),
    ORMapDiffResponse(payload=ORMapEntriesPayload(map_name="tags", entries=[ENTRY])),
    QueryResp(
        payload=QueryRespPayload(
            query_id="q1",
            results=[
                QueryResultRow(key="a", value={"score": 1}),
                QueryResultRow(key="b", value=[]),
            ],
            has_more=True,
            cursor_status="valid",
            next_cursor="eyJub2RlVmFsdWVzIjp7fX0",
        )
    ),
    QueryUpdate(
        payload=QueryUpdatePayload(
            query_id="q1", key="a", value=None, type="REMOVE", change_type="LEAVE"
        )
    ),
    SearchResp(
        payload=SearchRespPayload(
            request_id="r1",
            results=[ScoredRow(key="d1", value={"t": "x"}, score=1.25, matched_terms=["merkl"])],
            total_count=12,
            error="Full-text search not enabled for map: m",
            next_cursor="c",
        )
    ),
    SearchUpdate(
        payload=SearchUpdatePayload(
            subscription_id="s1",
            key="d1",
            value={"t": "x"},
            score=0.5,
            matched_terms=["x"],
            type="ENTER",
            change_type="ENTER",
        )
    ),
    HybridQueryResp(
        payload=HybridQueryRespPayload(
            subscription_id="h1",
            results=[ScoredRow(key="d1", value=1, score=0.0, matched_terms=[])],
            has_more=False,
            cursor_status="none",
        )
    ),
    HybridQueryDelta(
        payload=HybridQueryDeltaPayload(
            subscription_id="h1",
            key="d1",
            value=None,
            type="LEAVE",
            change_type="LEAVE",
            score=0.0,
            matched_terms=[],
        )
    ),
    TopicMessage(
        payload=TopicMessagePayload(
            topic="chat", data={"text": "hi"}, timestamp=1795657148768, publisher_id="c-1"
        )
    ),
    LockGranted(
        payload=LockGrantedPayload(request_id="l1", name="lock-a", fencing_token=1795657330662)
    ),
    LockReleased(payload=LockReleasedPayload(request_id="", name="lock-a", success=False)),
    CounterResponse(
        payload=CounterStatePayload(name="likes", state=CounterState.of({"n1": 5}, {"n2": 1}))
    ),
    CounterUpdate(payload=CounterStatePayload(name="likes", state=CounterState.of({}, {}))),
    EntryProcessResponse(
        request_id="e1", success=True, result=2, new_value=2, timestamp=SERVER_HLC
    ),
    EntryProcessBatchResponse(
        request_id="e2",
        results={
            "a": EntryResult(success=True, result=None),
            "b": EntryResult(success=False, error="Unknown processor: x"),
        },
    ),
    RegisterResolverResponse(request_id="r1", success=True),
    UnregisterResolverResponse(request_id="r2", success=False, error="Access denied for map m"),
    ListResolversResponse(
        request_id="r3",
        resolvers=[ResolverBinding(map_name="m", name="builtin:lww", priority=0, key_pattern="*")],
    ),
    JournalEventMessage(event=JOURNAL_EVENT, subscription_id="j1"),
    JournalReadResponse(request_id="j2", events=[JOURNAL_EVENT], has_more=False),
    PartitionMap(
        payload=PartitionMapPayload(
            version=1,
            partition_count=271,
            nodes=[
                PartitionNode(
                    node_id="server-1",
                    endpoints=NodeEndpoints(websocket="wss://h/", http="https://h/"),
                    status="ACTIVE",
                )
            ],
            partitions=[
                PartitionOwner(partition_id=i, owner_node_id="server-1", backup_node_ids=[])
                for i in range(271)
            ],
            generated_at=1795657330662,
        )
    ),
    PartitionMapDelta(
        payload=PartitionMapDeltaPayload(
            version=2,
            previous_version=1,
            changes=[
                PartitionChange(partition_id=5, previous_owner="a", new_owner="b", reason="JOIN")
            ],
            timestamp=1795657330662,
        )
    ),
    GcPrune(payload=GcPrunePayload(older_than=Timestamp(1793065330662, 0, ""))),
    VectorSearchResp(
        payload=VectorSearchRespPayload(
            request_id="v1",
            results=[VectorHit("a1", {"body": "merkle"}, 0.03, ["merkl"], 0.91)],
            total_count=1,
        )
    ),
    VectorSearchResp(
        payload=VectorSearchRespPayload(
            request_id="v2", results=[], total_count=0, error="Unknown vector field: 'x'"
        )
    ),
    VectorSearchUpdate(
        payload=VectorSearchUpdatePayload(
            subscription_id="vs1",
            key="a1",
            value=None,
            score=0.5,
            type="LEAVE",
            change_type="LEAVE",
            similarity=0.5,
        )
    ),
]

BODY_SAMPLES: list[msgspec.Struct] = [
    SyncRequest(
        client_id="http-client",
        client_hlc=HLC,
        operations=[OP],
        write_concern="APPLIED",
        timeout=5000,
        sync_maps=[
            SyncMapRequest(map_name="m", last_sync_timestamp=Timestamp(0, 0, "")),
            SyncMapRequest(map_name="n", since_seq=42, limit=100),
        ],
        queries=[HttpQuery(query_id="q-1", map_name="m", filter={"v": 1}, query=QUERY, limit=5)],
        searches=[HttpSearch(search_id="s", map_name="articles", query="x")],
    ),
    SyncResponse(
        server_hlc=SERVER_HLC,
        ack=SyncAck(
            last_id="1",
            achieved_level="MEMORY",
            results=[OpResult(op_id="1", success=True, achieved_level="MEMORY")],
        ),
        deltas=[
            MapDelta(
                map_name="m",
                records=[DeltaRecord(key="k", record=RECORD, event_type="PUT", seq=3)],
                server_sync_timestamp=SERVER_HLC,
                seq=3,
                has_more=False,
                reset=False,
            )
        ],
        query_results=[
            HttpQueryResult(
                query_id="q-1", results=[QueryResultRow(key="k", value=1)], has_more=False
            )
        ],
        search_results=[HttpSearchResult(search_id="s", results=[], total_count=0)],
        errors=[SyncErrorItem(code=403, message="Access denied", context="m")],
    ),
    HttpError(error="Invalid request body", details={"issues": []}),
    SseChange(map_name="m", key="k", event_type="PUT", seq=42, record=RECORD),
    SseResync(map_name="m", seq=42, reason="PRUNED"),
]


def _name(message: Any) -> str:
    return type(message).__name__


def test_every_message_type_has_a_sample() -> None:
    assert {type(m) for m in CLIENT_SAMPLES} == set(CLIENT_MESSAGE_TYPES.values())
    assert {type(m) for m in SERVER_SAMPLES} == set(SERVER_MESSAGE_TYPES.values())


@pytest.mark.parametrize("message", CLIENT_SAMPLES, ids=_name)
def test_client_message_round_trips(message: Message) -> None:
    assert decode_client_frame(encode(message)) == message
    assert decode_client_frame(encode_json(message).decode()) == message


@pytest.mark.parametrize("message", SERVER_SAMPLES, ids=_name)
def test_server_message_round_trips(message: Message) -> None:
    assert decode_server_message(encode(message)) == message


@pytest.mark.parametrize("body", BODY_SAMPLES, ids=_name)
def test_http_body_round_trips(body: msgspec.Struct) -> None:
    assert decode_msgpack(encode(body), type(body)) == body
    assert decode_json(encode_json(body), type(body)) == body


def test_directions_are_disjoint_and_tags_are_the_wire_types() -> None:
    assert not set(CLIENT_MESSAGE_TYPES) & set(SERVER_MESSAGE_TYPES)
    for message in CLIENT_SAMPLES + SERVER_SAMPLES:
        tag = msgspec.msgpack.decode(encode(message))["type"]
        assert message_type(type(message)) == tag
        assert {**CLIENT_MESSAGE_TYPES, **SERVER_MESSAGE_TYPES}[tag] is type(message)


def test_urgent_types_are_the_list_of_section_1_3() -> None:
    assert {message_type(cls) for cls in URGENT_MESSAGE_TYPES} == {
        "AUTH_REQUIRED",
        "AUTH_ACK",
        "AUTH_FAIL",
        "PONG",
        "ERROR",
        "OP_REJECTED",
        "MERGE_REJECTED",
        "SHUTDOWN_PENDING",
    }


def test_every_top_level_timestamp_sent_to_clients_is_an_hlc() -> None:
    """Rule J7: TS clients feed any top-level `timestamp` to their HLC."""
    checked = 0
    for cls in SERVER_MESSAGE_TYPES.values():
        for field in msgspec.structs.fields(cls):
            if field.encode_name == "timestamp":
                assert field.type in (Timestamp, Timestamp | None), cls
                checked += 1
    assert checked == 4  # SERVER_EVENT, SERVER_BATCH_EVENT, MERGE_REJECTED, ENTRY_PROCESS_RESPONSE
