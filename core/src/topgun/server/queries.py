"""Live queries as this server answers them so far (PROTOCOL.md §5.6, §6.5).

`QUERY_SUB` needs READ on the map and a valid query (`topgun.query.parse_query`; an invalid
one gets `ERROR 400` with the query id). It registers the subscription, which is what makes
the session receive the map's events, and answers `QUERY_RESP` with the page
`topgun.query.run_query` computes (filter, sort, limit, cursor) over the map's live rows. The
rows are filtered by the subscriber's field-level security *before* the query runs, so a
predicate or sort cannot probe fields the subscriber may not see. An OR-Map row's value is
the array of the key's live values. `QUERY_UPDATE` deltas and predicate-filtered events
arrive with the live-query wiring (`topgun.query.LiveQueries`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun.protocol import QueryResp, QueryRespPayload, QueryResultRow, QuerySub, QueryUnsub
from topgun.query import QueryError, parse_query, run_query
from topgun.server.maps import MapRegistry
from topgun.server.permissions import WITHHELD, FieldFilter
from topgun.server.subscriptions import Subscription

if TYPE_CHECKING:
    from topgun.server.session import Session


def live_rows(maps: MapRegistry, map_name: str, fields: FieldFilter) -> list[QueryResultRow]:
    """Every live row of `map_name` as `fields` lets its reader see it, by key."""
    rows: list[QueryResultRow] = []
    lww = maps.lww(map_name)
    if lww is not None:
        items = sorted(lww.items())
    else:
        ormap = maps.ormap(map_name)
        items = [] if ormap is None else [(k, ormap.values(k)) for k in sorted(ormap.keys())]
    for key, value in items:
        shown = fields.apply(value)
        if shown is not WITHHELD:
            rows.append(QueryResultRow(key=key, value=shown))
    return rows


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
    rows = [(row.key, row.value) for row in live_rows(server.maps, request.map_name, fields)]
    page = run_query(query, rows, now_ms=server.clock())
    server.subscriptions.add(
        session, Subscription(request.query_id, request.map_name, request.query)
    )
    session.send(
        QueryResp(
            payload=QueryRespPayload(
                query_id=request.query_id,
                results=[QueryResultRow(key=key, value=value) for key, value in page.rows],
                has_more=page.has_more,
                cursor_status=page.cursor_status,
                next_cursor=page.next_cursor,
            )
        )
    )


async def query_unsub(session: Session, message: QueryUnsub) -> None:
    """`QUERY_UNSUB`: end the subscription (an unknown id is ignored)."""
    session.server.subscriptions.remove(session, message.payload.query_id)
