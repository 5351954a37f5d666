"""Live queries as this server answers them (PROTOCOL.md §5.6, §6.5).

`QUERY_SUB` needs READ on the map; it registers the subscription (which is what makes the
session receive the map's events) and answers `QUERY_RESP` with the map's live rows, each
value filtered by the subscriber's field-level security. An OR-Map row's value is the array of
the key's live values. Predicates, sort, limit, cursors and `QUERY_UPDATE` deltas arrive with
the query engine (`topgun.query`); until then every live row is returned, by key, with
`hasMore: false` and `cursorStatus: "none"`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun.protocol import QueryResp, QueryRespPayload, QueryResultRow, QuerySub, QueryUnsub
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
    """`QUERY_SUB`: authorize READ, register, answer `QUERY_RESP`."""
    server = session.server
    request = message.payload
    principal = session.principal
    assert principal is not None
    if not server.security.is_allowed(principal, request.map_name, "READ"):
        session.send_error(
            403,
            f"Access denied for {request.map_name}",
            {"type": "QUERY_SUB", "queryId": request.query_id, "mapName": request.map_name},
        )
        return
    fields = server.security.field_filter(principal, request.map_name)
    rows = live_rows(server.maps, request.map_name, fields)
    server.subscriptions.add(
        session, Subscription(request.query_id, request.map_name, request.query)
    )
    session.send(
        QueryResp(
            payload=QueryRespPayload(
                query_id=request.query_id, results=rows, has_more=False, cursor_status="none"
            )
        )
    )


async def query_unsub(session: Session, message: QueryUnsub) -> None:
    """`QUERY_UNSUB`: end the subscription (an unknown id is ignored)."""
    session.server.subscriptions.remove(session, message.payload.query_id)
