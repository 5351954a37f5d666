"""`TopGunClient`: the async (anyio) client an application holds.

    async with TopGunClient("ws://localhost:8080", token=token) as client:
        todos = client.map("todos")
        todos.set("t1", {"title": "write docs"})

Entering opens the local store, loads the maps and the oplog, and starts keeping a
connection up in the background; the client works offline from the first moment.
"""

from __future__ import annotations

import random
import ssl
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import msgspec

from topgun.client.backoff import Backoff
from topgun.client.clock import Clock, SystemClock
from topgun.client.connection import ConnectionState, Connector
from topgun.client.counters import Counter
from topgun.client.engine import ConflictEvent, Engine, TokenSource
from topgun.client.errors import ProcessorError, RequestError
from topgun.client.journal import Journal
from topgun.client.live import LiveQuery, LiveSearch, Row
from topgun.client.locks import Lock
from topgun.client.maps import LWWMapHandle, ORMapHandle
from topgun.client.store import MemoryStore, Store
from topgun.client.topics import Topic
from topgun.client.websocket import WebSocketConnector
from topgun.hooks import TopgunPluginManager, collect_registrations
from topgun.protocol import (
    EntryProcess,
    EntryProcessResponse,
    PredicateNode,
    ProcessorSpec,
    RegisterResolver,
    RegisterResolverResponse,
    ResolverSpec,
    Search,
    SearchOptions,
    SearchPayload,
    SearchResp,
    SortDirection,
    VectorSearch,
    VectorSearchPayload,
    VectorSearchResp,
    VectorWeights,
)
from topgun.query import parse_query

__all__ = ["ProcessResult", "SearchResult", "TopGunClient"]


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """What an entry processor returned: its `result`, and `new_value` when it wrote one."""

    result: Any
    new_value: Any


@dataclass(frozen=True, slots=True)
class VectorRow:
    """One vector search hit: its fused `score`, the BM25 `matched_terms` (tri-hybrid) and
    the cosine `similarity` to the query (None when it matched on text only)."""

    key: str
    value: Any
    score: float
    matched_terms: tuple[str, ...]
    similarity: float | None


@dataclass(frozen=True, slots=True)
class VectorSearchResult:
    """A vector search: the nearest rows, best first, and how many matched the filter."""

    rows: list[VectorRow]
    total_count: int


@dataclass(frozen=True, slots=True)
class SearchResult:
    """A one-shot search: ranked rows and the number of matches before `limit`."""

    rows: list[Row]
    total_count: int


Transport = Literal["websocket", "auto", "sse", "poll"]
"""How a client built from a URL reaches the server (docs/transports.md)."""


def _connector(
    url: str,
    transport: Transport | None,
    ssl_context: ssl.SSLContext | None,
    pm: TopgunPluginManager | None,
) -> Connector:
    if transport is None:
        return connector_for(url, ssl_context=ssl_context, pm=pm)
    from topgun.client.http import AutoConnector, HttpConnector, ws_url

    if transport == "websocket":
        return WebSocketConnector(ws_url(url), ssl_context=ssl_context)

    if transport == "auto":
        return AutoConnector(url, ssl_context=ssl_context)
    if transport in ("sse", "poll"):
        verify: Any = ssl_context if ssl_context is not None else True
        return HttpConnector(url, events=transport, verify=verify)
    raise ValueError(f"transport must be websocket, auto, sse or poll, got {transport!r}")


class TopGunClient:
    """An offline-first client of one topgun server (an async context manager).

    - `url`: the server's address; its scheme picks the connection provider registered
      through the `register_connection_providers` hook (built in: `ws`, `wss`; `pm=`
      chooses the plugin manager). Or give `connector=` instead (any `Connector`);
    - `transport=`: `None` (default: the URL's scheme decides — `ws`/`wss` a WebSocket,
      `http`/`https` `"auto"`), `"websocket"`, `"auto"` (WebSocket, else server-sent events,
      else polling; upgrades back), `"sse"` or `"poll"` (docs/transports.md);
    - `token=` a JWT, or `token_provider=` a callable (sync or async) asked for a token on
      every (re)connect, which is how a token is refreshed;
    - `store=`: `MemoryStore()` (default) or `SQLiteStore(path)` to survive restarts;
    - `backoff`, `heartbeat_interval`/`heartbeat_timeout` (s), `auth_timeout` (s);
    - `clock` and `rng` are injected (simulation runs the client on virtual time).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        token_provider: TokenSource | None = None,
        store: Store | None = None,
        connector: Connector | None = None,
        pm: TopgunPluginManager | None = None,
        transport: Transport | None = None,
        ssl_context: ssl.SSLContext | None = None,
        backoff: Backoff | None = None,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        auth_timeout: float = 15.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if (url is None) == (connector is None):
            raise ValueError("give exactly one of url= and connector=")
        if connector is None:
            assert url is not None
            connector = _connector(url, transport, ssl_context, pm)
        for name, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("heartbeat_timeout", heartbeat_timeout),
            ("auth_timeout", auth_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty str")
        if token_provider is not None and not callable(token_provider):
            raise TypeError("token_provider must be callable")
        self._engine = Engine(
            connector,
            store if store is not None else MemoryStore(),
            token=token,
            token_provider=token_provider,
            clock=clock or SystemClock(),
            rng=rng or random.Random(),
            backoff=backoff or Backoff(),
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            auth_timeout=auth_timeout,
        )
        self._tg: anyio.abc.TaskGroup | None = None
        self._lwws: dict[str, LWWMapHandle] = {}
        self._ors: dict[str, ORMapHandle] = {}
        self._topics: dict[str, Topic] = {}
        self._counters: dict[str, Counter] = {}
        self.journal = Journal(self._engine)
        """The server's event journal: `await client.journal.read(...)`, `.subscribe(...)`."""

    # -- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> TopGunClient:
        if self._tg is not None:
            raise RuntimeError("the client is already running")
        await self._engine.load()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._engine.run_persister)
        tg.start_soon(self._engine.run_connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return None

    async def aclose(self) -> None:
        """Stop syncing, make every local write durable, close the store."""
        tg, self._tg = self._tg, None
        if tg is None:
            return
        tg.cancel_scope.cancel()
        try:
            await tg.__aexit__(None, None, None)
        finally:
            self._engine.close()
            with anyio.CancelScope(shield=True):
                await self._engine.store.aclose()

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection state now."""
        return self._engine.state

    @property
    def node_id(self) -> str:
        """This client's HLC node id (kept by the store across restarts)."""
        return self._engine.node_id

    def on_state_change(self, listener: Callable[[ConnectionState], None]) -> Callable[[], None]:
        """Call `listener(state)` on every connection state change; returns an unsubscribe."""
        self._engine.state_listeners.append(listener)
        return lambda: _discard(self._engine.state_listeners, listener)

    async def connected(self) -> None:
        """Wait until connected and authenticated; raises AuthError if the token is refused."""
        await self._engine.wait_state(ConnectionState.CONNECTED)

    def reconnect(self) -> None:
        """Reconnect now: after an AuthError (with a refreshed token), or to skip a backoff."""
        self._engine.request_reconnect()

    async def flush(self) -> None:
        """Return once every local write so far is durable in the local store."""
        await self._engine.flush_local()

    @property
    def pending_writes(self) -> int:
        """Writes not yet acknowledged by the server (the oplog's length)."""
        return len(self._engine.oplog)

    async def settled(self) -> None:
        """Wait until the server acknowledged every write made so far and every open map
        finished its sync on the current connection (connecting first if need be). Raises
        RequestError if the server refused to sync an open map (e.g. no READ permission)."""
        await self._engine.wait_settled()

    @property
    def traffic(self) -> tuple[int, int]:
        """Bytes `(sent, received)` over every connection so far."""
        return self._engine.bytes_sent, self._engine.bytes_received

    # -- data ----------------------------------------------------------------------------

    def map(self, name: str) -> LWWMapHandle:
        """The LWW map `name`: opened (synced and watched) on first use."""
        handle = self._lwws.get(name)
        if handle is None:
            handle = self._lwws[name] = LWWMapHandle(
                self._engine, self._engine.open_map(name, "lww")
            )
        return handle

    def ormap(self, name: str) -> ORMapHandle:
        """The OR-Map `name`: opened (synced and watched) on first use."""
        handle = self._ors.get(name)
        if handle is None:
            handle = self._ors[name] = ORMapHandle(self._engine, self._engine.open_map(name, "or"))
        return handle

    def query(
        self,
        map_name: str,
        where: Mapping[str, Any] | None = None,
        *,
        predicate: PredicateNode | Mapping[str, Any] | None = None,
        sort: Mapping[str, SortDirection] | None = None,
        limit: int | None = None,
    ) -> LiveQuery:
        """A live query on `map_name` (PROTOCOL.md §7): `where` (`{field: value | {"$gt": …}}`)
        or `predicate` (`{"op": "and", "children": [...]}`), `sort` (`{field: "asc"|"desc"}`),
        `limit`. Validated here (QueryError for a bad query); `await result.ready()` for the
        first snapshot, then `async for change in result`."""
        wire: dict[str, Any] = {}
        if where is not None:
            wire["where"] = dict(where)
        if predicate is not None:
            wire["predicate"] = (
                predicate if isinstance(predicate, Mapping) else msgspec.to_builtins(predicate)
            )
        if sort is not None:
            wire["sort"] = dict(sort)
        if limit is not None:
            wire["limit"] = limit
        compiled = parse_query(wire)
        live = LiveQuery(self._engine, self._engine.new_id(), map_name, compiled)
        self._engine.subscribe(live.id, live)
        return live

    async def search(
        self,
        map_name: str,
        text: str,
        *,
        limit: int | None = None,
        min_score: float | None = None,
        boost: Mapping[str, float] | None = None,
    ) -> SearchResult:
        """A one-shot full-text search (BM25) of a map the server indexes."""
        request_id = self._engine.new_id()
        reply = await self._engine.request(
            request_id,
            Search(
                payload=SearchPayload(
                    request_id=request_id,
                    map_name=map_name,
                    query=text,
                    options=_search_options(limit, min_score, boost),
                )
            ),
        )
        if not isinstance(reply, SearchResp):
            raise RequestError(f"unexpected reply {type(reply).__name__}")
        if reply.payload.error is not None:
            raise RequestError(reply.payload.error)
        rows = [Row(r.key, r.value, r.score, tuple(r.matched_terms)) for r in reply.payload.results]
        return SearchResult(rows, reply.payload.total_count)

    async def vector_search(
        self,
        map_name: str,
        query: str | Sequence[float] | bytes,
        k: int = 10,
        *,
        field: str | None = None,
        where: Mapping[str, Any] | None = None,
        predicate: PredicateNode | Mapping[str, Any] | None = None,
        weights: Mapping[str, float] | None = None,
        min_score: float | None = None,
    ) -> VectorSearchResult:
        """Semantic search of a map the server indexes with `topgun[vector]`: the `k` rows
        nearest to `query` — a text (embedded by the server) or a vector (floats, or
        little-endian float32 bytes). `where`/`predicate` filter exactly first; a map that
        also has full-text search ranks by both (tri-hybrid, RRF), `weights`
        (`{"vector": …, "text": …}`) weighing the lists. See docs/extensions/vector.md."""
        text: str | None = None
        vector: bytes | None = None
        if isinstance(query, str):
            text = query
        elif isinstance(query, bytes | bytearray | memoryview):
            vector = bytes(query)
        else:
            values = [float(x) for x in query]
            vector = struct.pack(f"<{len(values)}f", *values)
        node: PredicateNode | None = None
        if predicate is not None:
            node = (
                predicate
                if isinstance(predicate, PredicateNode)
                else msgspec.convert(predicate, PredicateNode)
            )
        request_id = self._engine.new_id()
        reply = await self._engine.request(
            request_id,
            VectorSearch(
                payload=VectorSearchPayload(
                    request_id=request_id,
                    map_name=map_name,
                    query=text,
                    vector=vector,
                    field=field,
                    k=k,
                    predicate=node,
                    where=dict(where) if where is not None else None,
                    weights=VectorWeights(**weights) if weights is not None else None,
                    min_score=min_score,
                )
            ),
        )
        if not isinstance(reply, VectorSearchResp):
            raise RequestError(f"unexpected reply {type(reply).__name__}")
        if reply.payload.error is not None:
            raise RequestError(reply.payload.error)
        rows = [
            VectorRow(r.key, r.value, r.score, tuple(r.matched_terms), r.similarity)
            for r in reply.payload.results
        ]
        return VectorSearchResult(rows, reply.payload.total_count)

    def live_search(
        self,
        map_name: str,
        text: str,
        *,
        limit: int | None = None,
        min_score: float | None = None,
        boost: Mapping[str, float] | None = None,
    ) -> LiveSearch:
        """A live full-text search: ranked rows, then ENTER/UPDATE/REMOVE as documents
        start or stop matching or change."""
        if not isinstance(text, str):
            raise TypeError(f"search text must be a str, got {type(text).__name__}")
        live = LiveSearch(
            self._engine,
            self._engine.new_id(),
            map_name,
            text,
            _search_options(limit, min_score, boost),
        )
        self._engine.subscribe(live.id, live)
        return live

    def topic(self, name: str) -> Topic:
        """The topic `name` (publish / subscribe)."""
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = Topic(self._engine, name)
        return topic

    def lock(self, name: str, *, ttl_ms: int = 10_000) -> Lock:
        """A handle on the distributed lock `name` (`async with`; `.fencing_token`)."""
        return Lock(self._engine, name, ttl_ms)

    def counter(self, name: str) -> Counter:
        """The PN counter `name`."""
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Counter(self._engine, name)
        return counter

    async def process(
        self, map_name: str, key: str, processor: str, args: Any = None
    ) -> ProcessResult:
        """Run the server-side entry processor `processor` (e.g. `"builtin:increment"`)
        atomically on one key. Raises ProcessorError if it failed, NotConnectedError if the
        connection dropped before the answer (it may have run; it is not repeated)."""
        request_id = self._engine.new_id()
        reply = await self._engine.request(
            request_id,
            EntryProcess(
                request_id=request_id,
                map_name=map_name,
                key=key,
                processor=ProcessorSpec(name=processor, args=args),
            ),
        )
        if not isinstance(reply, EntryProcessResponse):
            raise RequestError(f"unexpected reply {type(reply).__name__}")
        if not reply.success:
            raise ProcessorError(reply.error or "processor failed")
        return ProcessResult(_present(reply.result), _present(reply.new_value))

    async def register_resolver(
        self,
        map_name: str,
        resolver: str,
        *,
        priority: int | None = None,
        key_pattern: str | None = None,
    ) -> None:
        """Bind the server-side conflict resolver `resolver` (e.g.
        `"builtin:first_write_wins"`) to a map; rejected writes then reach `on_conflict`
        listeners. Raises RequestError if the server refused."""
        request_id = self._engine.new_id()
        reply = await self._engine.request(
            request_id,
            RegisterResolver(
                request_id=request_id,
                map_name=map_name,
                resolver=ResolverSpec(name=resolver, priority=priority, key_pattern=key_pattern),
            ),
        )
        if not isinstance(reply, RegisterResolverResponse) or not reply.success:
            error = getattr(reply, "error", None) or type(reply).__name__
            raise RequestError(f"register_resolver({resolver!r}) failed: {error}")

    def on_conflict(self, listener: Callable[[ConflictEvent], None]) -> Callable[[], None]:
        """Call `listener(event)` for every write a server-side conflict resolver rejected
        (`MERGE_REJECTED`); returns an unsubscribe."""
        self._engine.conflict_listeners.append(listener)
        return lambda: _discard(self._engine.conflict_listeners, listener)


def connector_for(
    url: str, *, ssl_context: ssl.SSLContext | None = None, pm: TopgunPluginManager | None = None
) -> Connector:
    """The connector for `url`, from the provider registered for its scheme.

    Without `pm`, `ws://`/`wss://` and `http://`/`https://` use the built-in providers
    directly (WebSocket; Auto: WebSocket, else HTTP) — no plugin manager is built, so a
    client does not import the server's plugins; any other scheme asks the plugins
    installed (`make_plugin_manager()`).
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if pm is None and scheme in ("ws", "wss"):
        return WebSocketConnector(url, ssl_context=ssl_context)
    if pm is None and scheme in ("http", "https"):
        from topgun.client.http import AutoConnector

        return AutoConnector(url, ssl_context=ssl_context)
    if pm is None:
        from topgun.hooks import make_plugin_manager

        pm = make_plugin_manager()
    providers = collect_registrations(pm.hook.register_connection_providers)
    provider = providers.get(scheme)
    if provider is None:
        known = ", ".join(sorted(providers)) or "none"
        raise ValueError(f"no connection provider for {scheme!r} URLs ({url!r}); known: {known}")
    connector = (
        provider.obj(url, ssl_context=ssl_context) if ssl_context is not None else provider.obj(url)
    )
    if not isinstance(connector, Connector):
        raise TypeError(
            f"connection provider {scheme!r} of plugin {provider.plugin} returned "
            f"{type(connector).__name__}, which is not a topgun.client.Connector"
        )
    return connector


def _present(value: Any) -> Any:
    return None if value is msgspec.UNSET else value


def _search_options(
    limit: int | None, min_score: float | None, boost: Mapping[str, float] | None
) -> SearchOptions | None:
    if limit is None and min_score is None and boost is None:
        return None
    return SearchOptions(limit=limit, min_score=min_score, boost=dict(boost) if boost else None)


def _discard(items: list[Any], item: Any) -> None:
    if item in items:
        items.remove(item)
