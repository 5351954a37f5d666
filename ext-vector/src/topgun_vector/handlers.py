"""Handlers of `VECTOR_SEARCH`, `VECTOR_SEARCH_SUB` and `VECTOR_SEARCH_UNSUB` (see
`topgun.protocol.vector`). They replace the core's `ERROR 501` answers when the plugin starts.

Errors are answered the way `SEARCH` answers them (PROTOCOL.md §5.7): a `VECTOR_SEARCH_RESP`
with no results, `totalCount` 0 and an `error` ("Access denied for map: <m>", "Vector search
not enabled for map: <m>", a bad field, vector, filter or weight); a failed subscription
subscribes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun.protocol import (
    VectorQuery,
    VectorSearch,
    VectorSearchResp,
    VectorSearchRespPayload,
    VectorSearchSub,
    VectorSearchUnsub,
)
from topgun.server.permissions import FieldFilter
from topgun_vector.service import VectorSearchError, VectorService

if TYPE_CHECKING:
    from topgun.server.session import Session

__all__ = ["vector_search", "vector_search_sub", "vector_search_unsub"]


def _failed(request_id: str, error: str) -> VectorSearchResp:
    return VectorSearchResp(
        payload=VectorSearchRespPayload(
            request_id=request_id, results=[], total_count=0, error=error
        )
    )


def _service(session: Session) -> VectorService:
    service = getattr(session.server, "vector", None)
    assert isinstance(service, VectorService)
    return service


def _reader(session: Session, request: VectorQuery) -> FieldFilter:
    principal = session.principal
    assert principal is not None
    security = session.server.security
    if not security.is_allowed(principal, request.map_name, "READ"):
        raise VectorSearchError(f"Access denied for map: {request.map_name}")
    return security.field_filter(principal, request.map_name)


async def vector_search(session: Session, message: VectorSearch) -> None:
    """`VECTOR_SEARCH` → `VECTOR_SEARCH_RESP`."""
    request = message.payload
    service = _service(session)
    try:
        fields = _reader(session, request)
        plan = await service.plan(request)
    except VectorSearchError as bad:
        session.send(_failed(request.request_id, str(bad)))
        return
    _, total, rows = await service.results(plan, fields)
    session.send(
        VectorSearchResp(
            payload=VectorSearchRespPayload(
                request_id=request.request_id, results=rows, total_count=total
            )
        )
    )


async def vector_search_sub(session: Session, message: VectorSearchSub) -> None:
    """`VECTOR_SEARCH_SUB`: a live vector search; first results as `VECTOR_SEARCH_RESP`
    whose `requestId` is the subscription id, then `VECTOR_SEARCH_UPDATE`s."""
    request = message.payload
    service = _service(session)
    try:
        fields = _reader(session, request)
        plan = await service.plan(request)
    except VectorSearchError as bad:
        session.send(_failed(request.subscription_id, str(bad)))
        return
    rows, total = await service.subscribe(session, request.subscription_id, plan, fields)
    session.send(
        VectorSearchResp(
            payload=VectorSearchRespPayload(
                request_id=request.subscription_id, results=rows, total_count=total
            )
        )
    )


async def vector_search_unsub(session: Session, message: VectorSearchUnsub) -> None:
    """`VECTOR_SEARCH_UNSUB`: stop it (an unknown id is ignored)."""
    _service(session).unsubscribe(session, message.payload.subscription_id)
