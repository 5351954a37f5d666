"""Live queries as this server answers them so far (PROTOCOL.md §5.6, §6.5).

`QUERY_SUB` needs READ on the map and a valid query (`topgun.query.parse_query`; an invalid
one gets `ERROR 400` with the query id). It registers the subscription, which is what makes
the session receive the map's events, and answers `QUERY_RESP` with the page
`topgun.query.run_query` computes (filter, sort, limit, cursor) over the map's live rows as
the subscriber's field-level security shows them, so a predicate or sort cannot probe fields
the subscriber may not see. An OR-Map row's value is the array of the key's live values.
From then on every change to the map brings the `QUERY_UPDATE`s of §6.5
(`topgun.server.live.LiveQueryService`), until `QUERY_UNSUB` or disconnect. Under a memory
budget the view is built a chunk of the map at a time and the page's values are loaded to
send them; the query's updates wait until its `QUERY_RESP` is out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun.protocol import QueryResp, QueryRespPayload, QueryResultRow, QuerySub, QueryUnsub
from topgun.query import QueryError, parse_query
from topgun.server.subscriptions import Subscription

if TYPE_CHECKING:
    from topgun.server.session import Session


async def query_sub(session: Session, message: QuerySub) -> None:
    """`QUERY_SUB`: authorize READ, validate, register, answer `QUERY_RESP`."""
    server = session.server
    request = message.payload
    principal = session.principal
    assert principal is not None
    details = {"type": "QUERY_SUB", "queryId": request.query_id, "mapName": request.map_name}
    if not server.security.is_allowed(principal, request.map_name, "READ"):
        session.send_error(403, f"Access denied for {request.map_name}", details)
        return
    try:
        query = parse_query(request.query)
    except QueryError as invalid:
        session.send_error(400, str(invalid), details)
        return
    fields = server.security.field_filter(principal, request.map_name)
    live, budgeted = server.live, server.maps.hot is not None
    if budgeted:
        # The view keeps what the query reads of each row; the page's values are loaded
        # to send them, and the query's updates wait until the page is out.
        await live.prepare(request.map_name, query, fields)
        page = live.subscribe(
            session,
            request.query_id,
            request.map_name,
            query,
            fields,
            now_ms=server.clock(),
            hold_updates=True,
        )
        try:
            rows = await live.values(request.map_name, fields, page.rows)
        except BaseException:
            live.unsubscribe(session, request.query_id)  # nothing answered: nothing held
            raise
    else:
        async with server.maps.holding(request.map_name):  # an archived map comes back
            page = live.subscribe(
                session, request.query_id, request.map_name, query, fields, now_ms=server.clock()
            )
        rows = page.rows
    server.subscriptions.add(
        session, Subscription(request.query_id, request.map_name, request.query)
    )
    session.send(
        QueryResp(
            payload=QueryRespPayload(
                query_id=request.query_id,
                results=[QueryResultRow(key=key, value=value) for key, value in rows],
                has_more=page.has_more,
                cursor_status=page.cursor_status,
                next_cursor=page.next_cursor,
            )
        )
    )
    if budgeted:
        live.release(session, request.query_id)


async def query_unsub(session: Session, message: QueryUnsub) -> None:
    """`QUERY_UNSUB`: end the subscription (an unknown id is ignored)."""
    session.server.subscriptions.remove(session, message.payload.query_id)
    session.server.live.unsubscribe(session, message.payload.query_id)
