"""Which handler answers each message an authenticated client sends: THE dispatch table.

Every client message type has exactly one entry in `HANDLERS`. Types that later features
implement (topics, locks, counters, search, journal, processors, resolvers, partition map)
are answered `ERROR 501` until then; those features replace their entries here, not code
paths elsewhere. Also here: the handlers of the connection-level messages and of writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import anyio

from topgun.protocol import (
    CLIENT_MESSAGE_TYPES,
    Auth,
    ClientOpMessage,
    EntryProcess,
    EntryProcessBatch,
    HybridQuerySubscribe,
    HybridQueryUnsubscribe,
    JournalRead,
    JournalSubscribe,
    JournalUnsubscribe,
    ListResolvers,
    MerkleReqBucket,
    Message,
    OpAck,
    OpAckPayload,
    OpBatch,
    OpRejected,
    OpRejectedPayload,
    OpResult,
    ORMapDiffRequest,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    Ping,
    QuerySub,
    QueryUnsub,
    RegisterResolver,
    Search,
    SearchSub,
    SearchUnsub,
    SyncInit,
    UnregisterResolver,
    correlation_ids,
)
from topgun.server.counters import COUNTER_HANDLERS
from topgun.server.hybrid import hybrid_query_subscribe, hybrid_query_unsubscribe
from topgun.server.journal import journal_read, journal_subscribe, journal_unsubscribe
from topgun.server.locks import LOCK_HANDLERS
from topgun.server.processors import entry_process, entry_process_batch
from topgun.server.queries import query_sub, query_unsub
from topgun.server.resolvers import list_resolvers, register_resolver, unregister_resolver
from topgun.server.search import search, search_sub, search_unsub
from topgun.server.sync import (
    merkle_req_bucket,
    ormap_diff_request,
    ormap_merkle_req_bucket,
    ormap_push_diff,
    ormap_sync_init,
    sync_init,
)
from topgun.server.topics import TOPIC_HANDLERS
from topgun.server.writes import (
    DEFAULT_WRITE_CONCERN,
    WriteContext,
    WriteRequest,
    achieved_level,
    last_id,
)

if TYPE_CHECKING:
    from topgun.server.session import Session

Handler = Callable[["Session", Any], Awaitable[None]]
"""`handler(session, message)`: answers one decoded message of an authenticated session."""


def not_supported(type_name: str) -> Handler:
    """A handler answering `ERROR 501 "<TYPE> is not supported by this server yet"`."""

    async def answer(session: Session, message: Any) -> None:
        session.send_error(
            501,
            f"{type_name} is not supported by this server yet",
            {"type": type_name, **correlation_ids(message)},
        )

    return answer


async def ignore(session: Session, message: Any) -> None:
    """Nothing to do (a repeated `AUTH`: the principal of an open socket never changes)."""


async def ping(session: Session, message: Ping) -> None:
    """`PING` → `PONG`."""
    session.pong(message)


def _rejections(session: Session, request: WriteRequest, results: list[OpResult]) -> None:
    for state, result in zip(request.ops, results, strict=True):
        if not result.success:
            session.send(
                OpRejected(
                    payload=OpRejectedPayload(
                        op_id=result.op_id, reason=result.error or "", code=state.code
                    )
                )
            )


async def op_batch(session: Session, message: OpBatch) -> None:
    """`OP_BATCH`: apply every op; one `OP_ACK` (one result per op), `OP_REJECTED` per
    failed op, sent in `OP_BATCH` order even when some wait for their write concern."""
    server = session.server
    batch = message.payload
    principal = session.principal
    assert principal is not None
    context = WriteContext(principal, session)
    request = await server.writes.apply(
        batch.ops,
        context,
        origin=session,
        write_concern=batch.write_concern,
        timeout=batch.timeout,
    )
    default = batch.write_concern or DEFAULT_WRITE_CONCERN

    def send(results: list[OpResult]) -> None:
        session.send(
            OpAck(
                payload=OpAckPayload(
                    last_id=last_id(request),
                    achieved_level=achieved_level(results, default),
                    results=results,
                )
            )
        )
        _rejections(session, request, results)
        server.metrics.op_done("OP_BATCH", anyio.current_time() - request.received_at)

    await session.acknowledge(
        lambda: server.writes.settle(request, context), send, waits=request.waits
    )


async def client_op(session: Session, message: ClientOpMessage) -> None:
    """`CLIENT_OP`: one op through the same pipeline; `OP_ACK` on success, else only
    `OP_REJECTED`."""
    server = session.server
    principal = session.principal
    assert principal is not None
    context = WriteContext(principal, session)
    request = await server.writes.apply([message.payload], context, origin=session)

    def send(results: list[OpResult]) -> None:
        (result,) = results
        if result.success:
            session.send(
                OpAck(
                    payload=OpAckPayload(
                        last_id=last_id(request),
                        achieved_level=result.achieved_level,
                        results=results,
                    )
                )
            )
        else:
            _rejections(session, request, results)
        server.metrics.op_done("CLIENT_OP", anyio.current_time() - request.received_at)

    await session.acknowledge(
        lambda: server.writes.settle(request, context), send, waits=request.waits
    )


_IMPLEMENTED: Final[dict[type[Message], Handler]] = {
    Auth: ignore,
    Ping: ping,
    OpBatch: op_batch,
    ClientOpMessage: client_op,
    SyncInit: sync_init,
    MerkleReqBucket: merkle_req_bucket,
    ORMapSyncInit: ormap_sync_init,
    ORMapMerkleReqBucket: ormap_merkle_req_bucket,
    ORMapDiffRequest: ormap_diff_request,
    ORMapPushDiff: ormap_push_diff,
    QuerySub: query_sub,
    QueryUnsub: query_unsub,
    HybridQuerySubscribe: hybrid_query_subscribe,
    HybridQueryUnsubscribe: hybrid_query_unsubscribe,
    Search: search,
    SearchSub: search_sub,
    SearchUnsub: search_unsub,
    JournalSubscribe: journal_subscribe,
    JournalUnsubscribe: journal_unsubscribe,
    JournalRead: journal_read,
    EntryProcess: entry_process,
    EntryProcessBatch: entry_process_batch,
    RegisterResolver: register_resolver,
    UnregisterResolver: unregister_resolver,
    ListResolvers: list_resolvers,
    **TOPIC_HANDLERS,
    **LOCK_HANDLERS,
    **COUNTER_HANDLERS,
}

HANDLERS: Final[dict[type[Message], Handler]] = {
    cls: _IMPLEMENTED.get(cls) or not_supported(type_name)
    for type_name, cls in CLIENT_MESSAGE_TYPES.items()
}
"""Client message class -> its handler, for every client message type."""
