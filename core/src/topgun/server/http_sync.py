"""`POST /sync` (PROTOCOL.md §9.1, §9.2): the whole protocol in one request, for clients
that cannot hold a WebSocket open (corporate proxies, serverless platforms).

A request carries the client's queued ops (processed exactly as one `OP_BATCH`: the same
permission checks, interceptors, resolvers, write concern, events to WebSocket subscribers),
for each map a resume point (answered with the changes since, by ingest sequence:
`topgun.server.ingest`), one-shot queries and searches. The body is JSON when the
`Content-Type` says so, msgpack otherwise, and the answer uses the request's encoding. Item
failures (a map the principal may not read, an OR-Map delta, an invalid query) go to
`errors` in a 200 answer; a missing or bad token, an oversized or malformed body get a 4xx
with a JSON error body, never a 500.

The built-in plugin `topgun.server.http_sync` registers the route; disabling it
(`TOPGUN_DISABLE_PLUGINS`) turns HTTP sync off.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import msgspec

from topgun.crdt import ClockDriftError
from topgun.hooks import Principal, Rejected, call_hook_async, hookimpl
from topgun.protocol import (
    DeltaRecord,
    HttpError,
    HttpQuery,
    HttpQueryResult,
    HttpSearch,
    HttpSearchResult,
    MapDelta,
    ProtocolError,
    Query,
    QueryResultRow,
    SearchOptions,
    SyncAck,
    SyncErrorItem,
    SyncMapRequest,
    SyncRequest,
    SyncResponse,
)
from topgun.query import QueryError, parse_query, run_query
from topgun.search import SearchError
from topgun.server.auth import AuthError
from topgun.server.live import current_value, live_items
from topgun.server.permissions import WITHHELD, FieldFilter
from topgun.server.search import scored_rows
from topgun.server.views import matching_rows, shown_rows
from topgun.server.writes import (
    DEFAULT_WRITE_CONCERN,
    WriteContext,
    achieved_level,
    last_id,
)

if TYPE_CHECKING:
    from quart import Quart, Response

    from topgun.server.server import Server

logger = logging.getLogger(__name__)

_json_encoder: Final = msgspec.json.Encoder()

JSON: Final = "application/json"
MSGPACK: Final = "application/x-msgpack"


class HttpFailure(Exception):
    """A request refused as a whole: `status` and the JSON error body."""

    def __init__(self, status: int, error: str, details: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.body = HttpError(error=error, details=details)


async def authenticate_bearer(server: Server, authorization: str | None) -> Principal:
    """The principal of an `Authorization: Bearer <jwt>` header, or `HttpFailure(401)`."""
    if not authorization:
        raise await _refused(server, "Missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise await _refused(server, "Authentication failed: expected 'Bearer <token>'")
    return await authenticate_token(server, token.strip())


async def authenticate_token(server: Server, token: str) -> Principal:
    """The principal `token` authenticates (as `AUTH` does), or `HttpFailure(401)`."""
    try:
        return await server.security.authenticate(token, None)
    except (AuthError, Rejected) as refused:
        server.metrics.auth_failures.inc()
        raise await _refused(server, f"Authentication failed: {refused.reason}") from None


async def _refused(server: Server, reason: str) -> HttpFailure:
    """The 401 for `reason`, once the `on_auth_failed` plugins heard of it."""
    try:
        await call_hook_async(server.pm.hook.on_auth_failed, connection=None, reason=reason)
    except Exception:
        logger.exception("an on_auth_failed plugin failed (the refusal stands)")
    return HttpFailure(401, reason)


def decode_body(server: Server, data: bytes, content_type: str) -> SyncRequest:
    """The request body as a `SyncRequest`, or `HttpFailure(400)` naming what is wrong."""
    try:
        if JSON in content_type:
            return server.codec.decode_json(data, SyncRequest)
        return server.codec.decode_msgpack(data, SyncRequest)
    except ProtocolError as error:
        raise HttpFailure(400, "Invalid request body", error.detail) from None


class SyncHandler:
    """Answers one authenticated `POST /sync` request."""

    def __init__(self, server: Server, principal: Principal) -> None:
        self.server = server
        self.principal = principal
        self.errors: list[SyncErrorItem] = []

    def _fail(self, code: int, message: str, context: str | None = None) -> None:
        self.errors.append(SyncErrorItem(code=code, message=message, context=context))

    async def answer(self, request: SyncRequest) -> SyncResponse:
        """Processing order: clock, operations, deltas, queries, searches (§9.1)."""
        try:
            self.server.hlc.update(request.client_hlc)
        except ClockDriftError as drift:
            self._fail(400, f"Clock drift: {drift}", "clientHlc")
        response = SyncResponse(server_hlc=self.server.hlc.now())
        if request.operations:
            response.ack = await self._operations(request)
        if request.sync_maps is not None:
            response.deltas = [
                delta
                for item in request.sync_maps
                if (delta := await self._delta(item)) is not None
            ]
        if request.queries is not None:
            response.query_results = [
                answer
                for item in request.queries
                if (answer := await self._query(item)) is not None
            ]
        if request.searches is not None:
            response.search_results = [
                result
                for item in request.searches
                if (result := await self._search(item)) is not None
            ]
        if self.errors:
            response.errors = self.errors
        return response

    async def _operations(self, request: SyncRequest) -> SyncAck:
        assert request.operations is not None
        context = WriteContext(self.principal, None)
        writes = self.server.writes
        applied = await writes.apply(
            request.operations,
            context,
            origin=None,
            write_concern=request.write_concern,
            timeout=request.timeout,
        )
        results = await writes.settle(applied, context)
        default = request.write_concern or DEFAULT_WRITE_CONCERN
        return SyncAck(
            last_id=last_id(applied),
            achieved_level=achieved_level(results, default),
            results=results,
        )

    def _readable(self, map_name: str) -> FieldFilter | None:
        if not self.server.security.is_allowed(self.principal, map_name, "READ"):
            self._fail(403, f"Access denied for map: {map_name}", map_name)
            return None
        return self.server.security.field_filter(self.principal, map_name)

    async def _delta(self, item: SyncMapRequest) -> MapDelta | None:
        fields = self._readable(item.map_name)
        if fields is None:
            return None
        if self.server.maps.kind(item.map_name) == "ormap":
            self._fail(400, "HTTP sync only supports LWW maps", item.map_name)
            return None
        delta = await self.server.ingest.loaded_delta(
            item.map_name,
            since_seq=item.since_seq,
            since_stamp=item.last_sync_timestamp,
            limit=item.limit,
        )
        records: list[DeltaRecord] = []
        for change in delta.records:
            record = fields.record(change.record)
            if record is None:
                continue
            event: Literal["PUT", "REMOVE"] = "REMOVE" if record.value is None else "PUT"
            records.append(
                DeltaRecord(key=change.key, record=record, event_type=event, seq=change.seq)
            )
        return MapDelta(
            map_name=item.map_name,
            records=records,
            server_sync_timestamp=delta.sync_timestamp,
            seq=delta.seq,
            has_more=delta.has_more,
            reset=delta.reset,
        )

    async def _query(self, item: HttpQuery) -> HttpQueryResult | None:
        fields = self._readable(item.map_name)
        if fields is None:
            return None
        query = item.query if item.query is not None else Query(where=item.filter, limit=item.limit)
        try:
            compiled = parse_query(query)
        except QueryError as invalid:
            self._fail(400, str(invalid), item.query_id)
            return None
        maps = self.server.maps
        if maps.hot is None:
            rows = []
            async with maps.holding(item.map_name):  # an archived map comes back
                for key, value in live_items(maps, item.map_name):
                    shown = fields.apply(value)
                    if shown is not WITHHELD:
                        rows.append((key, shown))
            page = run_query(compiled, rows, now_ms=self.server.clock())
            results = page.rows
        else:  # under a memory budget: what the query reads, then the page's values
            matching = await matching_rows(maps, item.map_name, compiled, fields)
            page = run_query(compiled, matching, now_ms=self.server.clock())
            keys = [key for key, _ in page.rows]
            results = await shown_rows(maps, item.map_name, fields, keys)
        return HttpQueryResult(
            query_id=item.query_id,
            results=[QueryResultRow(key=key, value=value) for key, value in results],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    async def _search(self, item: HttpSearch) -> HttpSearchResult | None:
        fields = self._readable(item.map_name)
        if fields is None:
            return None
        await self.server.search.ready(item.map_name)
        index = self.server.search.index(item.map_name)
        if index is None:
            self._fail(
                400, f"Full-text search not enabled for map: {item.map_name}", item.search_id
            )
            return None
        options = item.options or SearchOptions()
        try:
            result = index.search(
                item.query,
                limit=options.limit,
                min_score=options.min_score,
                boost=self.server.search.boost(item.map_name, options.boost),
            )
        except SearchError as bad:
            self._fail(400, str(bad), item.search_id)
            return None
        maps = self.server.maps
        async with maps.holding(item.map_name, [hit.key for hit in result.hits]):
            rows = scored_rows(result, fields, lambda key: current_value(maps, item.map_name, key))
        return HttpSearchResult(
            search_id=item.search_id, results=rows, total_count=result.total_count
        )


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, or `HttpFailure(413)` once it exceeds `limit` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise HttpFailure(413, "Request body too large", {"limit": limit})
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > limit:
            raise HttpFailure(413, "Request body too large", {"limit": limit})
    return bytes(data)


def error_response(failure: HttpFailure) -> Response:
    """The JSON error response of `failure`."""
    from quart import Response

    body = failure.body
    return Response(_json_encoder.encode(body), status=failure.status, content_type=JSON)


@hookimpl
def register_routes(app: Any, server: Any) -> None:
    """`POST /sync`."""
    from quart import Response, request

    quart_app = cast("Quart", app)

    @quart_app.post("/sync")
    async def sync() -> Response:
        """HTTP sync (PROTOCOL.md §9.1)."""
        try:
            principal = await authenticate_bearer(server, request.headers.get("Authorization"))
            data = await read_body(request, server.config.http.max_body_bytes)
            content_type = request.headers.get("Content-Type", "")
            body = decode_body(server, data, content_type)
            response = await SyncHandler(server, principal).answer(body)
        except HttpFailure as failure:
            return error_response(failure)
        except Exception:
            logger.exception("POST /sync failed")
            return error_response(HttpFailure(500, "Internal server error"))
        if JSON in content_type:
            return Response(server.codec.encode_json(response), content_type=JSON)
        return Response(server.codec.encode(response), content_type=MSGPACK)
