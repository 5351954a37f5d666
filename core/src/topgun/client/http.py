"""HTTP sync and server-sent events as client connections (PROTOCOL.md §9).

Where WebSockets are blocked, `HttpConnector` gives the sync engine a `Connection` that
speaks the same protocol frames but carries them over plain HTTP: writes, one-shot queries
and delta pulls over `POST /sync`, pushes over `GET /events` (server-sent events) or by
polling. The engine does not know the difference.

The connection answers the engine's Merkle sync from a *mirror*: per synced map, the server's
records as the deltas delivered them (one copy of the map in memory). A poll or an event
updates the mirror and hands the change to the engine as a `SERVER_EVENT`; `SYNC_INIT` and
bucket requests are answered from the mirror's Merkle trie, exactly as the server would
answer them. Live queries are re-run after changes and their differences delivered as
`QUERY_UPDATE`s.

What needs a stateful server connection — topics, locks, counters, journal streams, live
search, entry processors, OR-Maps — is answered `ERROR 501` naming it: use a WebSocket (the
`AutoConnector` upgrades to one as soon as it is reachable).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from topgun.client.connection import Connection, ConnectionClosed
from topgun.client.websocket import WebSocketConnector
from topgun.crdt import HLC, LWWMap, LWWRecord, Timestamp
from topgun.hooks import Register, hookimpl
from topgun.protocol import (
    CORRELATION_FIELDS,
    Auth,
    AuthAck,
    AuthFail,
    ClientOpMessage,
    Codec,
    Error,
    ErrorPayload,
    EventPayload,
    HttpQuery,
    HttpSearch,
    LeafRecord,
    MerkleReqBucket,
    Message,
    OpAck,
    OpAckPayload,
    OpBatch,
    OpRejected,
    OpRejectedPayload,
    Ping,
    Pong,
    QueryResp,
    QueryRespPayload,
    QueryResultRow,
    QuerySub,
    QueryUnsub,
    QueryUpdate,
    QueryUpdatePayload,
    Search,
    SearchResp,
    SearchRespPayload,
    ServerBatchEvent,
    ServerBatchEventPayload,
    ServerEvent,
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
    correlation_ids,
)

__all__ = ["AutoConnector", "HttpConnection", "HttpConnector", "register_connection_providers"]

logger = logging.getLogger("topgun.client")

MSGPACK: Final = "application/x-msgpack"
LEAF_DEPTH: Final = 3
"""Depth of the Merkle trie's leaves (PROTOCOL.md §3.3)."""

_codec: Final = Codec()

Events = Literal["sse", "poll"]


def http_base(url: str) -> str:
    """`ws://h:p/x` → `http://h:p` (and `wss` → `https`); http(s) URLs stay as they are."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server url must be http(s):// or ws(s)://host[:port], got {url!r}")
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def ws_url(url: str) -> str:
    """`http://h:p` → `ws://h:p/` (and `https` → `wss`)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path or "/", "", ""))


class _Unauthorized(Exception):
    """The server answered 401."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class _Mirror:
    """The server's records of one map, as the deltas delivered them."""

    lww: LWWMap
    cursor: int = 0
    """The ingest sequence the next pull resumes from."""


@dataclass
class _Query:
    map_name: str
    query: Any
    rows: dict[str, Any] | None = None
    """The last results (None before the first answer)."""


class HttpConnector:
    """Opens HTTP connections to one server: pushes by server-sent events (`events="sse"`,
    falling back to polling where `GET /events` is not served) or by polling every
    `poll_interval` seconds (`events="poll"`)."""

    def __init__(
        self,
        url: str,
        *,
        events: Events = "sse",
        poll_interval: float = 1.0,
        timeout: float = 30.0,
        verify: Any = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if events not in ("sse", "poll"):
            raise ValueError(f"events must be 'sse' or 'poll', got {events!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.base = http_base(url)
        self.events: Events = events
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.verify = verify
        self.transport = transport
        self.mirrors: dict[str, _Mirror] = {}
        """Kept across connections, so a reconnect resumes each map from its cursor."""
        # The mirror only stores what the server sent: any drift is the server's business.
        self._hlc = HLC("http-mirror", lambda: time.time_ns() // 1_000_000, max_drift_ms=2**52)

    def __repr__(self) -> str:
        return f"HttpConnector({self.base!r}, events={self.events!r})"

    def mirror(self, map_name: str) -> _Mirror:
        found = self.mirrors.get(map_name)
        if found is None:
            found = self.mirrors[map_name] = _Mirror(LWWMap(self._hlc))
        return found

    async def connect(self) -> HttpConnection:
        return HttpConnection(self, await self.open_client())

    async def open_client(self) -> httpx.AsyncClient:
        """An HTTP client for the server, once `/health` answered; `OSError` if it did not."""
        client = httpx.AsyncClient(
            base_url=self.base, timeout=self.timeout, verify=self.verify, transport=self.transport
        )
        try:
            response = await client.get("/health")
        except httpx.HTTPError as exc:
            await client.aclose()
            raise OSError(f"{self.base} is unreachable: {exc}") from None
        if response.status_code != 200:
            await client.aclose()
            raise OSError(f"{self.base}/health answered {response.status_code}")
        return client


class HttpConnection(Connection):
    """Protocol frames in and out, HTTP underneath (see the module docstring)."""

    def __init__(self, connector: HttpConnector, client: httpx.AsyncClient) -> None:
        self.connector = connector
        self.client = client
        send, receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._to_engine: MemoryObjectSendStream[bytes] = send
        self._from_server: MemoryObjectReceiveStream[bytes] = receive
        self._closed: ConnectionClosed | None = None
        self._token: str | None = None
        self._server_hlc = Timestamp(0, 0, "")
        self._maps: dict[str, None] = {}
        """The maps the engine syncs on this connection, in order."""
        self._queries: dict[str, _Query] = {}
        self._changed = anyio.Event()
        self._streams_wanted = anyio.Event()
        self.mode: Events = connector.events

    # -- Connection -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._closed is None

    async def send(self, frame: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            message = _codec.decode_client_frame(frame)
        except Exception as exc:
            raise self._close(None, f"undecodable client frame: {exc}") from None
        try:
            await self._handle(message)
        except httpx.HTTPError as exc:
            raise self._close(1006, f"HTTP request failed: {exc}") from None
        except _Unauthorized as refused:  # the token expired: reconnect, authenticate again
            raise self._close(4001, refused.error) from None

    async def receive(self) -> bytes:
        try:
            return await self._from_server.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self._closed or ConnectionClosed(1006, "closed") from None

    async def aclose(self) -> None:
        self._close(1000, "closed locally")
        self._from_server.close()
        with anyio.CancelScope(shield=True):
            await self.client.aclose()

    def _close(self, code: int | None, reason: str) -> ConnectionClosed:
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
            self._to_engine.close()
        return self._closed

    async def run(self) -> None:
        """Background work while the connection is served: pushes (SSE or polling) and
        live-query refreshes. The engine runs it beside its sender and receiver."""
        try:
            async with anyio.create_task_group() as tg:
                if self.mode == "sse":
                    tg.start_soon(self._stream_maps, tg)
                else:
                    tg.start_soon(self._poll_loop)
                tg.start_soon(self._query_loop)
        except httpx.HTTPError as exc:
            raise self._close(1006, f"HTTP request failed: {exc}") from None
        except _Unauthorized as refused:
            raise self._close(4001, refused.error) from None

    # -- to the engine --------------------------------------------------------------------

    def _emit(self, message: Message) -> None:
        if self._closed is None:
            self._to_engine.send_nowait(_codec.encode(message))

    # -- HTTP -----------------------------------------------------------------------------

    async def _post(self, request: SyncRequest) -> SyncResponse:
        assert self._token is not None
        response = await self.client.post(
            "/sync",
            content=_codec.encode(request),
            headers={"Content-Type": MSGPACK, "Authorization": f"Bearer {self._token}"},
        )
        if response.status_code == 401:
            raise _Unauthorized(_error_text(response))
        if response.status_code != 200:
            raise self._close(
                1011, f"POST /sync answered {response.status_code}: {_error_text(response)}"
            )
        answer = _codec.decode_msgpack(response.content, SyncResponse)
        self._server_hlc = answer.server_hlc
        return answer

    def _request(self, **fields: Any) -> SyncRequest:
        return SyncRequest(client_id="http", client_hlc=self._server_hlc, **fields)

    # -- messages from the engine ----------------------------------------------------------

    async def _handle(self, message: Any) -> None:
        if isinstance(message, Auth):
            self._token = message.token
            try:
                await self._post(self._request())
            except _Unauthorized as refused:
                self._token = None
                self._emit(AuthFail(error=refused.error, code=401))  # the engine stops here
                return
            self._emit(AuthAck())
        elif isinstance(message, Ping):
            self._emit(
                Pong(server_time=time.time_ns() // 1_000_000, ping_timestamp=message.timestamp)
            )
        elif self._token is None:
            raise self._close(4001, "Unauthorized: AUTH first")
        elif isinstance(message, OpBatch):
            payload = message.payload
            await self._write(list(payload.ops), payload.write_concern, payload.timeout)
        elif isinstance(message, ClientOpMessage):
            await self._write([message.payload], None, None)
        elif isinstance(message, SyncInit):
            await self._sync_init(message.map_name)
        elif isinstance(message, MerkleReqBucket):
            self._bucket(message.payload.map_name, message.payload.path)
        elif isinstance(message, QuerySub):
            sub = message.payload
            self._queries[sub.query_id] = _Query(sub.map_name, sub.query)
            await self._follow(sub.map_name)  # its changes trigger refreshes
            await self._refresh_queries([sub.query_id])
        elif isinstance(message, QueryUnsub):
            self._queries.pop(message.payload.query_id, None)
        elif isinstance(message, Search):
            await self._search(message)
        else:
            name = getattr(message, "type", type(message).__name__)
            self._emit(
                Error(
                    payload=ErrorPayload(
                        code=501,
                        message=f"{name} needs a WebSocket connection; HTTP sync does not carry it",
                        # `name`/`topic` too: the engine routes a lock's, counter's or
                        # topic's error by them.
                        details=correlation_ids(message, (*CORRELATION_FIELDS, "name", "topic")),
                    )
                )
            )

    async def _write(self, ops: list[Any], concern: Any, timeout: Any) -> None:
        answer = await self._post(
            self._request(operations=ops, write_concern=concern, timeout=timeout)
        )
        ack = answer.ack
        if ack is None:
            return
        results = ack.results or []
        self._emit(
            OpAck(
                payload=OpAckPayload(
                    last_id=ack.last_id, achieved_level=ack.achieved_level, results=results
                )
            )
        )
        for result in results:
            if not result.success:
                self._emit(
                    OpRejected(
                        payload=OpRejectedPayload(
                            op_id=result.op_id,
                            reason=result.error or "",
                            code=_rejection_code(result.error),
                        )
                    )
                )
        self._changed.set()

    async def _follow(self, map_name: str) -> None:
        """Receive `map_name`'s changes from now on (pull it up to date first)."""
        if map_name not in self._maps:
            self._maps[map_name] = None
            await self._pull([map_name], announce=False)
            self._streams_wanted.set()

    async def _sync_init(self, map_name: str) -> None:
        await self._follow(map_name)
        await self._pull([map_name], announce=False)
        mirror = self.connector.mirror(map_name)
        self._emit(
            SyncRespRoot(
                payload=SyncRespRootPayload(
                    map_name=map_name,
                    root_hash=mirror.lww.merkle.root_hash,
                    timestamp=self._server_hlc,
                )
            )
        )

    def _bucket(self, map_name: str, path: str) -> None:
        lww = self.connector.mirror(map_name).lww
        keys = lww.merkle.keys_at(path) if len(path) == LEAF_DEPTH else []
        if not keys:
            self._emit(
                SyncRespBuckets(
                    payload=SyncRespBucketsPayload(
                        map_name=map_name, path=path, buckets=lww.merkle.buckets(path)
                    )
                )
            )
            return
        records = []
        for key in keys:
            record = lww.get_record(key)
            if record is not None:
                records.append(LeafRecord(key=key, record=record))
        self._emit(
            SyncRespLeaf(payload=SyncRespLeafPayload(map_name=map_name, path=path, records=records))
        )

    async def _pull(self, names: list[str], *, announce: bool) -> None:
        """Pull every change of `names` since their cursors into the mirrors; with
        `announce`, hand the changes to the engine as events."""
        pending = list(names)
        while pending:
            requests = [
                SyncMapRequest(map_name=name, since_seq=self.connector.mirror(name).cursor)
                for name in pending
            ]
            answer = await self._post(self._request(sync_maps=requests))
            more: list[str] = []
            for delta in answer.deltas or []:
                mirror = self.connector.mirror(delta.map_name)
                if delta.reset:
                    mirror.lww = LWWMap(self.connector._hlc)
                    if announce:
                        reason: Literal["GC_AGE", "PRUNED"] = "PRUNED"
                        self._emit(
                            SyncResetRequired(
                                payload=SyncResetRequiredPayload(
                                    map_name=delta.map_name, reason=reason
                                )
                            )
                        )
                events = []
                for item in delta.records:
                    mirror.lww.merge(item.key, item.record)
                    events.append(
                        EventPayload(
                            map_name=delta.map_name,
                            event_type="REMOVE" if item.record.value is None else "PUT",
                            key=item.key,
                            record=item.record,
                        )
                    )
                if delta.reset and delta.seq is not None:
                    mirror.cursor = delta.seq
                elif delta.seq is not None:
                    mirror.cursor = max(mirror.cursor, delta.seq)
                if announce and events and not delta.reset:
                    self._announce(events)
                if delta.has_more:
                    more.append(delta.map_name)
            for error in answer.errors or []:
                logger.warning("HTTP sync of %s refused: %s", error.context, error.message)
            pending = more

    def _announce(self, events: list[EventPayload]) -> None:
        if len(events) == 1:
            self._emit(ServerEvent(payload=events[0], timestamp=self._server_hlc))
        else:
            self._emit(
                ServerBatchEvent(
                    payload=ServerBatchEventPayload(events=events), timestamp=self._server_hlc
                )
            )
        self._changed.set()

    # -- pushes ---------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await anyio.sleep(self.connector.poll_interval)
            if self._maps:
                await self._pull(list(self._maps), announce=True)

    async def _stream_maps(self, tg: Any) -> None:
        streaming: set[str] = set()
        while True:
            for name in list(self._maps):
                if name not in streaming:
                    streaming.add(name)
                    tg.start_soon(self._stream, name)
            self._streams_wanted = anyio.Event()
            await self._streams_wanted.wait()

    async def _stream(self, map_name: str) -> None:
        """Follow `GET /events` for one map, resuming from the mirror's cursor; falls back
        to polling when the server does not serve SSE."""
        while True:
            mirror = self.connector.mirror(map_name)
            headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
            params = {"map": map_name, "since": str(mirror.cursor)}
            async with self.client.stream(
                "GET",
                "/events",
                params=params,
                headers=headers,
                timeout=httpx.Timeout(self.connector.timeout, read=None),
            ) as response:
                if response.status_code == 404:
                    logger.info("the server does not serve /events: polling instead")
                    self.mode = "poll"
                    await self._poll_loop()
                    return
                if response.status_code != 200:
                    raise self._close(1011, f"GET /events answered {response.status_code}")
                async for event in _sse_events(response.aiter_lines()):
                    kind, data = event
                    if kind == "change":
                        change = msgspec.json.decode(data)
                        record = msgspec.convert(change["record"], LWWRecord)
                        mirror.lww.merge(change["key"], record)
                        mirror.cursor = max(mirror.cursor, int(change["seq"]))
                        self._announce(
                            [
                                EventPayload(
                                    map_name=map_name,
                                    event_type="REMOVE" if record.value is None else "PUT",
                                    key=change["key"],
                                    record=record,
                                )
                            ]
                        )
                    elif kind == "resync":
                        break
            await self._pull([map_name], announce=True)  # a resync: catch up, then reopen

    # -- queries --------------------------------------------------------------------------

    async def _query_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            if self._queries:
                await self._refresh_queries(list(self._queries))
            await anyio.sleep(self.connector.poll_interval / 4)  # at most a few refreshes/s

    async def _refresh_queries(self, ids: list[str]) -> None:
        wanted = [(qid, self._queries[qid]) for qid in ids if qid in self._queries]
        if not wanted:
            return
        answer = await self._post(
            self._request(
                queries=[
                    HttpQuery(query_id=qid, map_name=q.map_name, query=q.query) for qid, q in wanted
                ]
            )
        )
        for result in answer.query_results or []:
            tracked = self._queries.get(result.query_id)
            if tracked is None:
                continue
            rows = {row.key: row.value for row in result.results}
            if tracked.rows is None:
                self._emit(
                    QueryResp(
                        payload=QueryRespPayload(
                            query_id=result.query_id,
                            results=[QueryResultRow(key=k, value=v) for k, v in rows.items()],
                            has_more=result.has_more,
                            cursor_status="none",
                            next_cursor=result.next_cursor,
                        )
                    )
                )
            else:
                for update in _row_changes(result.query_id, tracked.rows, rows):
                    self._emit(update)
            tracked.rows = rows
        for error in answer.errors or []:
            self._emit(
                Error(
                    payload=ErrorPayload(
                        code=error.code, message=error.message, details={"queryId": error.context}
                    )
                )
            )

    async def _search(self, message: Search) -> None:
        payload = message.payload
        answer = await self._post(
            self._request(
                searches=[
                    HttpSearch(
                        search_id=payload.request_id,
                        map_name=payload.map_name,
                        query=payload.query,
                        options=payload.options,
                    )
                ]
            )
        )
        results = answer.search_results or []
        error = next((e.message for e in answer.errors or []), None)
        found = results[0] if results else None
        self._emit(
            SearchResp(
                payload=SearchRespPayload(
                    request_id=payload.request_id,
                    results=found.results if found else [],
                    total_count=found.total_count if found else 0,
                    error=error if found is None else None,
                )
            )
        )


def _row_changes(query_id: str, old: dict[str, Any], new: dict[str, Any]) -> list[QueryUpdate]:
    updates: list[QueryUpdate] = []
    for key in old.keys() - new.keys():
        updates.append(
            QueryUpdate(
                payload=QueryUpdatePayload(
                    query_id=query_id, key=key, value=None, type="REMOVE", change_type="LEAVE"
                )
            )
        )
    for key, value in new.items():
        if key not in old:
            updates.append(
                QueryUpdate(
                    payload=QueryUpdatePayload(
                        query_id=query_id, key=key, value=value, type="ENTER", change_type="ENTER"
                    )
                )
            )
        elif old[key] != value:
            updates.append(
                QueryUpdate(
                    payload=QueryUpdatePayload(
                        query_id=query_id, key=key, value=value, type="UPDATE", change_type="UPDATE"
                    )
                )
            )
    return updates


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of each event of a server-sent event stream; comments skipped."""
    kind, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)


def _rejection_code(error: str | None) -> int:
    """The `OP_REJECTED` code of a failed op, from its error (HTTP acks carry no code)."""
    text = error or ""
    if text.startswith("Access denied") or text.startswith("Dropped"):
        return 403
    if text.startswith(("Timeout", "Storage", "Internal")):
        return 500
    return 400


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text or f"HTTP {response.status_code}"


@dataclass
class AutoConnector:
    """WebSocket when it gets through, else server-sent events (then polling); while on
    HTTP, tries the WebSocket again every `upgrade_interval` seconds and, once it is
    reachable, closes the HTTP connection so that the next connect upgrades."""

    url: str
    upgrade_interval: float = 30.0
    poll_interval: float = 1.0
    ssl_context: Any = None
    websocket: WebSocketConnector = field(init=False)
    http: HttpConnector = field(init=False)
    last: str = field(init=False, default="")
    """Which transport the last connection used: "websocket", "sse" or "poll"."""

    def __post_init__(self) -> None:
        self.websocket = WebSocketConnector(ws_url(self.url), ssl_context=self.ssl_context)
        self.http = HttpConnector(
            http_base(self.url),
            events="sse",
            poll_interval=self.poll_interval,
            verify=self.ssl_context if self.ssl_context is not None else True,
        )

    async def connect(self) -> Connection:
        try:
            connection: Connection = await self.websocket.connect()
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            logger.info("WebSocket unavailable (%s): falling back to HTTP", exc)
        else:
            self.last = "websocket"
            return connection
        client = await self.http.open_client()
        self.last = "sse"
        return _Upgrading(self.http, client, self)


class _Upgrading(HttpConnection):
    """An HTTP connection that ends itself once the WebSocket is reachable again."""

    def __init__(self, connector: HttpConnector, client: httpx.AsyncClient, auto: AutoConnector):
        super().__init__(connector, client)
        self.auto = auto

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._probe, tg.cancel_scope)
            await super().run()

    async def _probe(self, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(self.auto.upgrade_interval)
            try:
                probe = await self.auto.websocket.connect()
            except (OSError, ConnectionClosed, TimeoutError):
                continue
            await probe.aclose()
            logger.info("WebSocket reachable again: upgrading")
            self._close(1000, "upgrading to WebSocket")
            scope.cancel()
            return


@hookimpl
def register_connection_providers(register: Register[object]) -> None:
    """The built-in providers of `http://` and `https://` URLs: `AutoConnector` (a WebSocket
    when it gets through, else server-sent events, else polling)."""
    register("http", AutoConnector)
    register("https", AutoConnector)
