"""The sync engine: local maps, the oplog, acknowledgements, Merkle sync and subscriptions.

The engine owns the client's state and speaks the protocol over whatever `Connection` its
`Connector` opens; it never sees sockets. One task keeps a connection up (connect,
authenticate, serve, back off, again); per connection a receiver dispatches server messages,
a sender sends frames in the order they were produced, and a heartbeat pings. A persister
task flushes the store whenever something was queued for it.

After every authentication the engine (PROTOCOL.md §4.1 step 7): sends every unacknowledged
oplog entry (`OP_BATCH`es), starts a Merkle pull sync of every open map (§6.3/§6.4), and
re-sends the subscription of every live query, search, topic, counter and journal stream.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Literal, Protocol

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from topgun.client.backoff import Backoff
from topgun.client.clock import Clock, clock_deadline
from topgun.client.connection import Connection, ConnectionClosed, ConnectionState, Connector
from topgun.client.errors import (
    AuthError,
    ClientClosedError,
    NotConnectedError,
    RequestError,
    WriteRejectedError,
    WriteTimeoutError,
)
from topgun.client.replies import Reply
from topgun.client.store import Store, StoredState
from topgun.client.writes import WriteHandle
from topgun.crdt import HLC, LWWMap, LWWRecord, ORMap, ORMapRecord, Timestamp, fnv1a32
from topgun.protocol import (
    WRITE_CONCERN_LEVELS,
    Auth,
    AuthAck,
    AuthFail,
    AuthRequired,
    Batch,
    ClientOp,
    Error,
    EventPayload,
    GcPrune,
    MergeRejected,
    MerkleReqBucket,
    MerkleReqBucketPayload,
    Message,
    OpAck,
    OpBatch,
    OpBatchPayload,
    OpRejected,
    ORMapDiffResponse,
    ORMapEntriesPayload,
    ORMapEntry,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    ORMapSyncRespBuckets,
    ORMapSyncRespLeaf,
    ORMapSyncRespRoot,
    Ping,
    Pong,
    Query,
    QuerySub,
    QuerySubPayload,
    ServerBatchEvent,
    ServerEvent,
    ShutdownPending,
    SyncInit,
    SyncResetRequired,
    SyncRespBuckets,
    SyncRespLeaf,
    SyncRespRoot,
    WriteConcern,
    decode_server_frame,
    encode,
)

__all__ = ["ConflictEvent", "Engine", "MapKind", "Subscription", "TokenSource"]

logger = logging.getLogger("topgun.client")

MapKind = Literal["lww", "or"]
TokenSource = Callable[[], "str | Awaitable[str]"]

MAX_OPS_PER_BATCH = 1000
"""Ops per `OP_BATCH` frame when flushing a backlog."""
WATCH_PREFIX = "__map__:"
"""`queryId` prefix of the subscription that makes the server send a map's events (§6.2)."""
_OPS = object()
"""Marker in the outgoing queue: send the queued ops here, in order with other frames."""


class Subscription(Protocol):
    """A live request the engine re-sends after every authentication and routes replies to."""

    def subscribe_message(self) -> Message | None:
        """The message (re)establishing it on a fresh connection; None to send nothing."""

    def handle(self, message: Message) -> None:
        """A server message correlated with this subscription."""

    def disconnected(self) -> None:
        """The connection dropped (the server forgot the subscription)."""

    def fail(self, error: Exception) -> None:
        """The server answered with an error, or the client closed."""


class ConflictEvent:
    """A write a conflict resolver rejected on the server (`MERGE_REJECTED`)."""

    __slots__ = ("attempted_value", "key", "map_name", "reason", "timestamp")

    def __init__(
        self, map_name: str, key: str, attempted_value: Any, reason: str, timestamp: Timestamp
    ) -> None:
        self.map_name = map_name
        self.key = key
        self.attempted_value = attempted_value
        self.reason = reason
        self.timestamp = timestamp

    def __repr__(self) -> str:
        return f"ConflictEvent({self.map_name!r}, {self.key!r}, reason={self.reason!r})"


class MapState:
    """One map held by the client: its CRDT and its sync progress on this connection."""

    def __init__(self, name: str, kind: MapKind, crdt: LWWMap | ORMap, last_sync: int) -> None:
        self.name = name
        self.kind = kind
        self.crdt = crdt
        self.last_sync = last_sync
        """Server ms of the last completed sync (0: never), sent in `SYNC_INIT`."""
        self.open = False
        """Opened by the application: synced and watched."""
        self.outstanding = 0
        self.root_millis = 0
        self.synced = anyio.Event()
        self.sync_error: RequestError | None = None
        """Why the server refused to sync this map on the current connection (e.g. 403)."""
        self.listeners: list[Callable[[str, Any], None]] = []


class Engine:
    """The client's state and protocol logic (see the module docstring)."""

    def __init__(
        self,
        connector: Connector,
        store: Store,
        *,
        token: str | None,
        token_provider: TokenSource | None,
        clock: Clock,
        rng: random.Random,
        backoff: Backoff,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        auth_timeout: float,
    ) -> None:
        if (token is None) == (token_provider is None):
            raise ValueError("give exactly one of token= and token_provider=")
        self.connector = connector
        self.store = store
        self.clock = clock
        self.rng = rng
        self.backoff = backoff
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.auth_timeout = auth_timeout
        self._token = token
        self._token_provider = token_provider
        self.node_id = ""
        self.hlc: HLC | None = None
        self.maps: dict[str, MapState] = {}
        self.oplog: dict[int, ClientOp] = {}
        self._handles: dict[int, WriteHandle] = {}
        self._next_op_id = 1
        self._outbox: list[int] = []
        self._ops_marked = False
        self.subscriptions: dict[str, Subscription] = {}
        self.conflict_listeners: list[Callable[[ConflictEvent], None]] = []
        self.state_listeners: list[Callable[[ConnectionState], None]] = []
        self.state = ConnectionState.OFFLINE
        self._state_changed = anyio.Event()
        self._progress = anyio.Event()
        self.auth_error: AuthError | None = None
        self._reconnect = anyio.Event()
        self._outgoing: MemoryObjectSendStream[object] | None = None
        self._persist_wake = anyio.Event()
        self._persist_error: BaseException | None = None
        self._last_received = 0.0
        self._retry_after_ms = 0
        self._closed = False
        self.bytes_received = 0
        self.bytes_sent = 0

    # -- start-up ------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the store: node id, maps, oplog; fold stored timestamps into the clock."""
        state = await self.store.open()
        node_id = state.meta.get("node_id")
        if not isinstance(node_id, str):
            node_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            self.store.set_meta("node_id", node_id)
        self.node_id = node_id
        self.hlc = HLC(node_id, self.clock.wall_ms)
        newest = self._restore_maps(state)
        self.oplog = dict(sorted(state.oplog.items()))
        for op_id, op in self.oplog.items():
            self._handles[op_id] = WriteHandle(op_id, op.write_concern)
        next_id = state.meta.get("next_op_id", 1)
        self._next_op_id = max(
            next_id if isinstance(next_id, int) else 1, max(self.oplog, default=0) + 1
        )
        for op in self.oplog.values():
            ts = _op_timestamp(op)
            if ts is not None and (newest is None or ts > newest):
                newest = ts
        if newest is not None:
            self.hlc.update(newest)
        await self.store.flush()

    def _restore_maps(self, state: StoredState) -> Timestamp | None:
        assert self.hlc is not None
        newest: Timestamp | None = None
        top: Timestamp | None
        kinds = {name[5:]: value for name, value in state.meta.items() if name.startswith("kind:")}
        for name in (*state.lww, *state.or_records, *state.or_tombstones, *kinds):
            if name in self.maps:
                continue
            kind: MapKind = (
                "or" if name in state.or_records or name in state.or_tombstones else "lww"
            )
            kind = kinds.get(name, kind)
            last_sync = state.meta.get(f"sync:{name}", 0)
            ms = self._new_map(name, kind, last_sync if isinstance(last_sync, int) else 0)
            if isinstance(ms.crdt, LWWMap):
                records = list(state.lww.get(name, {}).items())
                if records:
                    ms.crdt.merge_many(records)
                    top = max(r.timestamp for _, r in records)
                    newest = top if newest is None or top > newest else newest
            else:
                top = ms.crdt.restore(
                    {k: list(t.values()) for k, t in state.or_records.get(name, {}).items()},
                    state.or_tombstones.get(name, {}),
                )
                if top is not None and (newest is None or top > newest):
                    newest = top
            self._watch_crdt(ms)
        return newest

    def _new_map(self, name: str, kind: MapKind, last_sync: int) -> MapState:
        assert self.hlc is not None
        crdt: LWWMap | ORMap = LWWMap(self.hlc) if kind == "lww" else ORMap(self.hlc)
        ms = MapState(name, kind, crdt, last_sync)
        self.maps[name] = ms
        return ms

    def _watch_crdt(self, ms: MapState) -> None:
        """Persist every change of the map's CRDT and tell the application's listeners."""
        store = self.store
        if isinstance(ms.crdt, LWWMap):

            def lww_changed(key: str, record: LWWRecord) -> None:
                store.put_lww(ms.name, [(key, record)])
                self._persist()
                for listener in tuple(ms.listeners):
                    listener(key, record.value)

            ms.crdt.on_change(lww_changed)
        else:
            ormap = ms.crdt

            def or_changed(key: str, tag: str, record: ORMapRecord | None) -> None:
                if record is not None:
                    store.put_or_record(ms.name, key, record)
                else:
                    store.put_or_tombstones(ms.name, [(tag, key)])
                self._persist()
                for listener in tuple(ms.listeners):
                    listener(key, ormap.values(key))

            ms.crdt.on_change(or_changed)

    def open_map(self, name: str, kind: MapKind) -> MapState:
        """The map `name`, created if new; raises TypeError if it exists as the other kind."""
        if type(name) is not str or not name:
            raise ValueError(f"map name must be a non-empty str, got {name!r}")
        ms = self.maps.get(name)
        if ms is None:
            ms = self._new_map(name, kind, 0)
            self._watch_crdt(ms)
            self.store.set_meta(f"kind:{name}", kind)
            self._persist()
        elif ms.kind != kind:
            other = "an OR-Map" if ms.kind == "or" else "an LWW map"
            raise TypeError(f"map {name!r} is {other} here; open it with the matching method")
        if not ms.open:
            ms.open = True
            if self._outgoing is not None:
                # Subscribe first: the server handles a connection's messages in order,
                # so every change is either in the Merkle sync or arrives as an event.
                self._send(self._watch_message(ms))
                self._start_sync(ms)
        return ms

    # -- local writes --------------------------------------------------------------------

    def _new_op(self, op: ClientOp, write_concern: WriteConcern | None) -> WriteHandle:
        op_id = self._next_op_id
        self._next_op_id += 1
        op.id = str(op_id)
        op.write_concern = write_concern
        self.oplog[op_id] = op
        handle = WriteHandle(op_id, write_concern)
        self._handles[op_id] = handle
        self.store.append_ops([(op_id, op)])
        self.store.set_meta("next_op_id", self._next_op_id)
        self._persist()
        if self._outgoing is not None:
            self._queue_ops([op_id])
        return handle

    def lww_set(
        self,
        ms: MapState,
        key: str,
        value: Any,
        ttl_ms: float | None,
        write_concern: WriteConcern | None,
    ) -> WriteHandle:
        assert isinstance(ms.crdt, LWWMap)
        _check_write_concern(write_concern)
        record = ms.crdt.set(key, value, ttl_ms)
        return self._new_op(
            ClientOp(map_name=ms.name, key=key, op_type="PUT", record=record), write_concern
        )

    def lww_remove(self, ms: MapState, key: str, write_concern: WriteConcern | None) -> WriteHandle:
        assert isinstance(ms.crdt, LWWMap)
        _check_write_concern(write_concern)
        record = ms.crdt.remove(key)
        return self._new_op(
            ClientOp(map_name=ms.name, key=key, op_type="REMOVE", record=record), write_concern
        )

    def or_add(
        self,
        ms: MapState,
        key: str,
        value: Any,
        ttl_ms: float | None,
        write_concern: WriteConcern | None,
    ) -> WriteHandle:
        assert isinstance(ms.crdt, ORMap)
        _check_write_concern(write_concern)
        if value is None:
            raise ValueError("an OR-Map value must not be None")
        record = ms.crdt.add(key, value, ttl_ms)
        return self._new_op(
            ClientOp(map_name=ms.name, key=key, op_type="OR_ADD", or_record=record), write_concern
        )

    def or_remove(
        self, ms: MapState, key: str, value: Any, write_concern: WriteConcern | None
    ) -> list[WriteHandle]:
        assert isinstance(ms.crdt, ORMap)
        _check_write_concern(write_concern)
        tags = ms.crdt.remove(key, value)
        return [
            self._new_op(
                ClientOp(map_name=ms.name, key=key, op_type="OR_REMOVE", or_tag=tag),
                write_concern,
            )
            for tag in tags
        ]

    # -- persistence ---------------------------------------------------------------------

    def _persist(self) -> None:
        self._persist_wake.set()

    async def run_persister(self) -> None:
        """Flush the store whenever something was queued for it (runs until cancelled)."""
        while True:
            await self._persist_wake.wait()
            self._persist_wake = anyio.Event()
            try:
                await self.store.flush()
            except Exception as exc:  # reported to flush() callers; the client goes on
                logger.exception("local store flush failed")
                self._persist_error = exc

    async def flush_local(self) -> None:
        """Return once every local write so far is durable in the store."""
        await self.store.flush()
        if self._persist_error is not None:
            error, self._persist_error = self._persist_error, None
            raise error

    # -- connection life cycle -----------------------------------------------------------

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        self.state = state
        self._state_changed.set()
        self._state_changed = anyio.Event()
        self._progressed()
        for listener in tuple(self.state_listeners):
            try:
                listener(state)
            except Exception:
                logger.exception("connection state listener failed")

    async def wait_state(self, *states: ConnectionState) -> ConnectionState:
        """Wait until the state is one of `states`; raise AuthError/ClientClosedError if the
        client reaches `AUTH_FAILED`/`CLOSED` instead."""
        while self.state not in states:
            if self.state is ConnectionState.AUTH_FAILED and self.auth_error is not None:
                raise self.auth_error
            if self.state is ConnectionState.CLOSED:
                raise ClientClosedError("the client is closed")
            await self._state_changed.wait()
        return self.state

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    def is_settled(self) -> bool:
        """Connected, every write acknowledged and every open map synced."""
        return (
            self.state is ConnectionState.CONNECTED
            and not self.oplog
            and all(ms.synced.is_set() for ms in self.maps.values() if ms.open)
        )

    async def wait_progress(self) -> None:
        """Wait for the next change of state (a sync finished, a write acknowledged, ...)."""
        await self._progress.wait()

    async def wait_settled(self) -> None:
        """Wait until `is_settled()` (across reconnects); raises the RequestError of a map
        whose sync the server refused."""
        while not self.is_settled():
            if self.state in (ConnectionState.AUTH_FAILED, ConnectionState.CLOSED):
                await self.wait_state(ConnectionState.CONNECTED)  # raises the reason
            await self._progress.wait()
        for ms in self.maps.values():
            if ms.open and ms.sync_error is not None:
                raise RequestError(f"sync of map {ms.name!r} refused: {ms.sync_error}")

    def request_reconnect(self) -> None:
        """Retry now: after an auth failure, or to skip the current backoff delay."""
        self.auth_error = None
        self._reconnect.set()

    async def run_connection(self) -> None:
        """Keep a connection up until cancelled: connect, serve, back off, repeat."""
        attempt = 0
        while True:
            self._set_state(ConnectionState.CONNECTING)
            authenticated = False
            try:
                conn = await self.connector.connect()
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                logger.debug("connect failed: %s", exc)
            else:
                try:
                    authenticated = await self._serve(conn)
                except AuthError as exc:
                    logger.warning("authentication failed: %s", exc)
                    self.auth_error = exc
                    self._set_state(ConnectionState.AUTH_FAILED)
                    self._reconnect = anyio.Event()
                    await self._reconnect.wait()
                    attempt = 0
                    continue
                except (ConnectionClosed, OSError, TimeoutError) as exc:
                    # Lost during the handshake (or the auth timeout passed): retry.
                    logger.debug("connection lost before it was served: %s", exc)
                finally:
                    with anyio.CancelScope(shield=True):
                        await conn.aclose()
                    self._disconnected()
            if authenticated:
                attempt = 0
            self._set_state(ConnectionState.OFFLINE)
            delay = max(self.backoff.delay(attempt, self.rng), self._retry_after_ms / 1000)
            self._retry_after_ms = 0
            attempt += 1
            self._reconnect = anyio.Event()
            await self._backoff_wait(delay)

    async def _backoff_wait(self, delay: float) -> None:
        """Sleep `delay` s of the injected clock, or until `request_reconnect()`."""
        async with anyio.create_task_group() as tg:

            async def woken() -> None:
                await self._reconnect.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(woken)
            await self.clock.sleep(delay)
            tg.cancel_scope.cancel()

    async def _token_value(self) -> str:
        if self._token is not None:
            return self._token
        assert self._token_provider is not None
        token = self._token_provider()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise AuthError(f"token_provider must return a non-empty str, got {token!r}")
        return token

    async def _serve(self, conn: Connection) -> bool:
        """Authenticate on `conn` and serve it until it closes; True if it authenticated."""
        self._set_state(ConnectionState.AUTHENTICATING)
        await self._send_now(conn, Auth(token=await self._token_value()))
        async with clock_deadline(self.clock, self.auth_timeout):
            while True:
                messages = await self._receive(conn)
                ack = next((m for m in messages if isinstance(m, AuthAck | AuthFail)), None)
                if isinstance(ack, AuthFail):
                    raise AuthError(f"authentication failed: {ack.error}")
                if isinstance(ack, AuthAck):
                    rest = messages[messages.index(ack) + 1 :]
                    break
                for message in messages:
                    if not isinstance(message, AuthRequired | Pong):
                        logger.debug("before AUTH_ACK, ignored %r", message)
        send, receive = anyio.create_memory_object_stream[object](math.inf)
        self._outgoing = send
        self._authenticated()
        self._set_state(ConnectionState.CONNECTED)
        try:
            for message in rest:
                self._dispatch(message)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sender, conn, receive, tg.cancel_scope)
                tg.start_soon(self._receiver, conn, tg.cancel_scope)
                tg.start_soon(self._heartbeat, conn, tg.cancel_scope)
                background = getattr(conn, "run", None)
                if background is not None:  # e.g. an HTTP connection's polling
                    tg.start_soon(self._connection_work, background, tg.cancel_scope)
        finally:
            self._outgoing = None
            send.close()
            receive.close()
        return True

    async def _connection_work(
        self, work: Callable[[], Awaitable[None]], scope: anyio.CancelScope
    ) -> None:
        """A connection's own background work; when it ends, so does the connection."""
        try:
            await work()
        except ConnectionClosed as exc:
            logger.debug("connection ended: %s", exc)
        finally:
            scope.cancel()

    async def _send_now(self, conn: Connection, message: Message) -> None:
        frame = encode(message)
        self.bytes_sent += len(frame)
        await conn.send(frame)

    async def _receive(self, conn: Connection) -> list[Any]:
        frame = await conn.receive()
        self._last_received = self.clock.monotonic()
        self.bytes_received += len(frame)
        try:
            return list(decode_server_frame(frame))
        except Exception as exc:  # a frame we cannot read: log it, keep the connection
            logger.warning("undecodable server frame (%d bytes): %s", len(frame), exc)
            return []

    async def _sender(
        self,
        conn: Connection,
        receive: MemoryObjectReceiveStream[object],
        scope: anyio.CancelScope,
    ) -> None:
        try:
            async for item in receive:
                if item is _OPS:
                    self._ops_marked = False
                    while self._outbox:
                        ids, self._outbox = (
                            self._outbox[:MAX_OPS_PER_BATCH],
                            self._outbox[MAX_OPS_PER_BATCH:],
                        )
                        ops = [self.oplog[i] for i in ids if i in self.oplog]
                        if ops:
                            await self._send_now(conn, OpBatch(payload=OpBatchPayload(ops=ops)))
                else:
                    assert isinstance(item, Message)
                    await self._send_now(conn, item)
        except ConnectionClosed:
            pass
        scope.cancel()

    async def _receiver(self, conn: Connection, scope: anyio.CancelScope) -> None:
        try:
            while True:
                for message in await self._receive(conn):
                    self._dispatch(message)
        except ConnectionClosed as exc:
            logger.debug("connection closed: %s", exc)
        scope.cancel()

    async def _heartbeat(self, conn: Connection, scope: anyio.CancelScope) -> None:
        while True:
            await self.clock.sleep(self.heartbeat_interval)
            if self.clock.monotonic() - self._last_received > self.heartbeat_timeout:
                logger.info(
                    "no frame from the server for %.1f s: reconnecting", self.heartbeat_timeout
                )
                scope.cancel()
                return
            self._send(Ping(timestamp=self.clock.wall_ms()))

    def _send(self, message: Message) -> None:
        """Queue `message` for the current connection (dropped when there is none)."""
        if self._outgoing is not None:
            self._outgoing.send_nowait(message)

    def _queue_ops(self, op_ids: Iterable[int]) -> None:
        self._outbox.extend(op_ids)
        if not self._ops_marked and self._outgoing is not None:
            self._ops_marked = True
            self._outgoing.send_nowait(_OPS)

    def _authenticated(self) -> None:
        """A fresh connection: resend the oplog, sync open maps, resubscribe."""
        self._outbox = []
        self._ops_marked = False
        self._queue_ops(list(self.oplog))
        for ms in self.maps.values():
            if ms.open:
                # Subscribe first: the server handles a connection's messages in order,
                # so every change is either in the Merkle sync or arrives as an event.
                self._send(self._watch_message(ms))
                self._start_sync(ms)
        for sub in list(self.subscriptions.values()):
            message = sub.subscribe_message()
            if message is not None:
                self._send(message)

    def _disconnected(self) -> None:
        self._outgoing = None
        for ms in self.maps.values():
            ms.outstanding = 0
        for sub in list(self.subscriptions.values()):
            sub.disconnected()

    def close(self) -> None:
        """The client is closing: fail every waiter."""
        self._closed = True
        error = ClientClosedError("the client was closed")
        for sub in list(self.subscriptions.values()):
            sub.fail(error)
        self.subscriptions.clear()
        for handle in self._handles.values():
            handle._reply.fail(error)
        self._handles.clear()
        self._set_state(ConnectionState.CLOSED)

    # -- requests and subscriptions --------------------------------------------------------

    def new_id(self) -> str:
        """A fresh correlation id (from the injected RNG)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def subscribe(self, key: str, sub: Subscription) -> None:
        """Register `sub` under correlation id `key` and send its message if connected."""
        self.subscriptions[key] = sub
        if self._outgoing is not None:
            message = sub.subscribe_message()
            if message is not None:
                self._send(message)

    def unsubscribe(self, key: str, message: Message | None) -> None:
        """Forget the subscription `key`, telling the server with `message` if connected."""
        if self.subscriptions.pop(key, None) is not None and message is not None:
            self._send(message)

    def send(self, message: Message) -> bool:
        """Send a message now if connected; False if there is no connection."""
        if self._outgoing is None:
            return False
        self._send(message)
        return True

    async def request(self, key: str, message: Message) -> Message:
        """Send a one-shot request and wait for the reply correlated by `key`.

        Waits for a connection first. If the connection drops before the reply, raises
        NotConnectedError (the request may have run: it is not repeated).
        """
        await self.wait_state(ConnectionState.CONNECTED)
        reply: Reply[Message] = Reply()
        self.subscriptions[key] = _OneShot(reply)
        self._send(message)
        try:
            return await reply.wait()
        finally:
            self.subscriptions.pop(key, None)

    # -- inbound ---------------------------------------------------------------------------

    def _dispatch(self, message: Any) -> None:
        handler = self._handlers.get(type(message))
        if handler is not None:
            handler(self, message)
            return
        key = _correlation_of(message)
        sub = self.subscriptions.get(key) if key is not None else None
        if sub is not None:
            sub.handle(message)
        elif key is not None and key.startswith(WATCH_PREFIX):
            pass  # deltas of a map watch: the events carry the changes
        else:
            logger.debug("unrouted server message %r", message)

    def _on_op_ack(self, message: OpAck) -> None:
        payload = message.payload
        done: list[int] = []
        if payload.results is not None:
            for result in payload.results:
                op_id = _int_id(result.op_id)
                if op_id is None or op_id not in self.oplog:
                    continue
                op = self.oplog.pop(op_id)
                done.append(op_id)
                handle = self._handles.pop(op_id, None)
                if handle is None:
                    continue
                requested = op.write_concern or "MEMORY"
                if result.success:
                    handle._reply.set(result.achieved_level)
                elif (result.error or "").startswith("Timeout"):
                    handle._reply.fail(
                        WriteTimeoutError(result.op_id, result.achieved_level, requested)
                    )
                else:
                    handle._reply.fail(WriteRejectedError(result.op_id, result.error or "rejected"))
        else:  # the reference server acknowledges up to `lastId` only
            last = _int_id(payload.last_id)
            if last is not None:
                for op_id in [i for i in self.oplog if i <= last]:
                    del self.oplog[op_id]
                    done.append(op_id)
                    handle = self._handles.pop(op_id, None)
                    if handle is not None:
                        handle._reply.set(payload.achieved_level or "MEMORY")
        if done:
            self.store.remove_ops(done)
            self._persist()
            self._progressed()

    def _on_op_rejected(self, message: OpRejected) -> None:
        logger.info("op %s rejected: %s", message.payload.op_id, message.payload.reason)

    def _on_merge_rejected(self, message: MergeRejected) -> None:
        event = ConflictEvent(
            message.map_name,
            message.key,
            message.attempted_value,
            message.reason,
            message.timestamp,
        )
        for listener in tuple(self.conflict_listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("conflict listener failed")

    def _apply_event(self, event: EventPayload) -> None:
        ms = self.maps.get(event.map_name)
        if ms is None:
            return
        try:
            if isinstance(ms.crdt, LWWMap):
                if event.record is not None:
                    ms.crdt.merge(event.key, event.record)
            elif event.event_type == "OR_ADD" and event.or_record is not None:
                ms.crdt.apply(event.key, event.or_record)
            elif (
                event.event_type == "OR_REMOVE"
                and event.or_tag is not None
                and ms.crdt.apply_tombstone(event.or_tag)
            ):
                self.store.put_or_tombstones(ms.name, [(event.or_tag, None)])
                self._persist()
        except (TypeError, ValueError) as exc:
            logger.warning("ignored an invalid event for %s/%s: %s", event.map_name, event.key, exc)

    def _on_server_event(self, message: ServerEvent) -> None:
        self._fold_clock(message.timestamp)
        self._apply_event(message.payload)

    def _on_server_batch_event(self, message: ServerBatchEvent) -> None:
        self._fold_clock(message.timestamp)
        for event in message.payload.events:
            self._apply_event(event)

    def _fold_clock(self, ts: Timestamp) -> None:
        assert self.hlc is not None
        try:
            self.hlc.update(ts)
        except ValueError:
            logger.warning("ignored an invalid server timestamp %r", ts)

    def _on_error(self, message: Error) -> None:
        payload = message.payload
        details = payload.details if isinstance(payload.details, dict) else {}
        ms = self.maps.get(details.get("mapName", "")) if "mapName" in details else None
        if ms is not None and details.get("type") in _SYNC_TYPES:
            # The server refused this map's sync (no READ permission, type mismatch): it
            # will not finish on this connection; say so instead of waiting forever.
            ms.sync_error = RequestError(payload.message, payload.code)
            ms.outstanding = 0
            ms.synced.set()
            self._progressed()
            logger.warning("sync of %s refused: %s", ms.name, payload.message)
            return
        for field in ("queryId", "requestId", "subscriptionId", "topic", "name"):
            key = details.get(field)
            if isinstance(key, str):
                if field in ("topic", "name"):
                    key = f"{'topic' if field == 'topic' else 'counter'}:{key}"
                sub = self.subscriptions.get(key)
                if sub is not None:
                    sub.fail(RequestError(payload.message, payload.code))
                    return
        logger.warning("server error %d: %s %r", payload.code, payload.message, payload.details)

    def _on_shutdown_pending(self, message: ShutdownPending) -> None:
        self._retry_after_ms = message.retry_after

    def _on_gc_prune(self, message: GcPrune) -> None:
        older_than = message.payload.older_than
        for ms in self.maps.values():
            if isinstance(ms.crdt, LWWMap):
                keys = ms.crdt.prune(older_than)
                if keys:
                    self.store.delete_lww(ms.name, keys)
            else:
                tags = ms.crdt.prune(older_than)
                if tags:
                    self.store.delete_or_tombstones(ms.name, tags)
        self._persist()

    # -- Merkle sync (§6.3, §6.4, §6.7) ------------------------------------------------------

    def _watch_message(self, ms: MapState) -> QuerySub:
        """A live query matching every key with a one-row window: it makes the server send
        this map's change events (§6.2) at the cost of at most one row per snapshot."""
        return QuerySub(
            payload=QuerySubPayload(
                query_id=WATCH_PREFIX + ms.name, map_name=ms.name, query=Query(limit=1)
            )
        )

    def _start_sync(self, ms: MapState, last_sync: int | None = None) -> None:
        ms.synced = anyio.Event()
        ms.sync_error = None
        ms.outstanding = 1
        since = ms.last_sync if last_sync is None else last_sync
        if isinstance(ms.crdt, LWWMap):
            self._send(SyncInit(map_name=ms.name, last_sync_timestamp=since))
        else:
            merkle = ms.crdt.merkle
            self._send(
                ORMapSyncInit(
                    map_name=ms.name,
                    root_hash=merkle.root_hash,
                    bucket_hashes=merkle.buckets(""),
                    last_sync_timestamp=since,
                )
            )

    def _sync_step_done(self, ms: MapState) -> None:
        ms.outstanding -= 1
        if ms.outstanding <= 0:
            ms.outstanding = 0
            if ms.root_millis:
                ms.last_sync = ms.root_millis
                self.store.set_meta(f"sync:{ms.name}", ms.last_sync)
                self._persist()
            ms.synced.set()
            self._progressed()

    def _on_sync_root(self, message: SyncRespRoot | ORMapSyncRespRoot) -> None:
        payload = message.payload
        ms = self.maps.get(payload.map_name)
        if ms is None or ms.outstanding == 0:
            return
        self._fold_clock(payload.timestamp)
        ms.root_millis = payload.timestamp.millis
        if payload.root_hash != ms.crdt.merkle.root_hash:
            self._request_bucket(ms, "")
        self._sync_step_done(ms)

    def _request_bucket(self, ms: MapState, path: str) -> None:
        ms.outstanding += 1
        body = MerkleReqBucketPayload(map_name=ms.name, path=path)
        if ms.kind == "lww":
            self._send(MerkleReqBucket(payload=body))
        else:
            self._send(ORMapMerkleReqBucket(payload=body))

    def _on_sync_buckets(self, message: SyncRespBuckets | ORMapSyncRespBuckets) -> None:
        payload = message.payload
        ms = self.maps.get(payload.map_name)
        if ms is None or ms.outstanding == 0:
            return
        merkle = ms.crdt.merkle
        local = merkle.buckets(payload.path)
        for digit, remote_hash in sorted(payload.buckets.items()):
            if local.get(digit, 0) != remote_hash:
                self._request_bucket(ms, payload.path + digit)
        if isinstance(ms.crdt, ORMap):
            # Leaves only this client has: push their keys (§6.4 step 3).
            only_here = [
                payload.path + d for d, h in local.items() if d not in payload.buckets and h != 0
            ]
            if only_here:
                keys = [
                    k
                    for k in ms.crdt.all_keys()
                    if f"{fnv1a32(k):08x}".startswith(tuple(only_here))
                ]
                self._push_or_keys(ms, keys)
        self._sync_step_done(ms)

    def _on_sync_leaf(self, message: SyncRespLeaf) -> None:
        payload = message.payload
        ms = self.maps.get(payload.map_name)
        if ms is None or ms.outstanding == 0 or not isinstance(ms.crdt, LWWMap):
            return
        try:
            ms.crdt.merge_many([(r.key, r.record) for r in payload.records])
        except (TypeError, ValueError) as exc:
            logger.warning("ignored an invalid sync leaf of %s: %s", ms.name, exc)
        self._sync_step_done(ms)

    def _merge_or_entries(self, ms: MapState, entries: list[ORMapEntry]) -> None:
        assert isinstance(ms.crdt, ORMap)
        for entry in entries:
            try:
                result = ms.crdt.merge_entry(entry.key, entry.records, entry.tombstones)
            except (TypeError, ValueError) as exc:
                logger.warning("ignored an invalid OR-Map entry %s/%s: %s", ms.name, entry.key, exc)
                continue
            if result.tombstoned:
                # Tags this map never held are persisted too, so they stay refused.
                self.store.put_or_tombstones(ms.name, [(t, None) for t in result.tombstoned])
                self._persist()

    def _on_or_leaf(self, message: ORMapSyncRespLeaf) -> None:
        payload = message.payload
        ms = self.maps.get(payload.map_name)
        if ms is None or ms.outstanding == 0 or not isinstance(ms.crdt, ORMap):
            return
        self._merge_or_entries(ms, payload.entries)
        leaf_keys = {e.key for e in payload.entries} | set(ms.crdt.merkle.keys_at(payload.path))
        self._push_or_keys(ms, sorted(leaf_keys))
        self._sync_step_done(ms)

    def _push_or_keys(self, ms: MapState, keys: list[str]) -> None:
        assert isinstance(ms.crdt, ORMap)
        entries = [
            ORMapEntry(key=k, records=ms.crdt.records(k), tombstones=ms.crdt.tombstones_of(k))
            for k in keys
        ]
        entries = [e for e in entries if e.records or e.tombstones]
        if entries:
            self._send(
                ORMapPushDiff(payload=ORMapEntriesPayload(map_name=ms.name, entries=entries))
            )

    def _on_or_diff(self, message: ORMapDiffResponse) -> None:
        ms = self.maps.get(message.payload.map_name)
        if ms is not None and isinstance(ms.crdt, ORMap):
            self._merge_or_entries(ms, message.payload.entries)

    def _on_sync_reset(self, message: SyncResetRequired) -> None:
        name = message.payload.map_name
        ms = self.maps.get(name)
        if ms is None:
            return
        logger.info("sync reset of %s (%s): re-syncing from scratch", name, message.payload.reason)
        listeners = ms.listeners
        self.store.clear_map(name)
        fresh = self._new_map(name, ms.kind, 0)
        fresh.open, fresh.listeners = ms.open, listeners
        self._watch_crdt(fresh)
        # Writes the server has not acknowledged stay visible: replay them locally.
        for op in self.oplog.values():
            if op.map_name == name:
                _replay(fresh, op)
        self.store.set_meta(f"sync:{name}", 0)
        self._persist()
        self._start_sync(fresh, 0)

    _handlers: ClassVar[dict[type, Callable[[Engine, Any], None]]] = {
        OpAck: _on_op_ack,
        OpRejected: _on_op_rejected,
        MergeRejected: _on_merge_rejected,
        ServerEvent: _on_server_event,
        ServerBatchEvent: _on_server_batch_event,
        Error: _on_error,
        ShutdownPending: _on_shutdown_pending,
        GcPrune: _on_gc_prune,
        SyncRespRoot: _on_sync_root,
        ORMapSyncRespRoot: _on_sync_root,
        SyncRespBuckets: _on_sync_buckets,
        ORMapSyncRespBuckets: _on_sync_buckets,
        SyncRespLeaf: _on_sync_leaf,
        ORMapSyncRespLeaf: _on_or_leaf,
        ORMapDiffResponse: _on_or_diff,
        SyncResetRequired: _on_sync_reset,
        Pong: lambda engine, message: None,
        AuthRequired: lambda engine, message: None,
        AuthAck: lambda engine, message: None,
        Batch: lambda engine, message: None,
    }


class _OneShot:
    """A request waiting for exactly one correlated reply."""

    def __init__(self, reply: Reply[Message]) -> None:
        self.reply = reply

    def subscribe_message(self) -> Message | None:
        return None

    def handle(self, message: Message) -> None:
        self.reply.set(message)

    def disconnected(self) -> None:
        self.reply.fail(NotConnectedError("the connection dropped before the reply arrived"))

    def fail(self, error: Exception) -> None:
        self.reply.fail(error)


def _replay(ms: MapState, op: ClientOp) -> None:
    if isinstance(ms.crdt, LWWMap):
        if op.record is not None:
            ms.crdt.merge(op.key, op.record)
    elif op.or_record is not None:
        ms.crdt.apply(op.key, op.or_record)
    elif op.or_tag is not None:
        ms.crdt.apply_tombstone(op.or_tag)


def _op_timestamp(op: ClientOp) -> Timestamp | None:
    if op.record is not None:
        return op.record.timestamp
    if op.or_record is not None:
        return op.or_record.timestamp
    return None


def _int_id(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdecimal() else None


def _check_write_concern(write_concern: object) -> None:
    if write_concern is not None and write_concern not in WRITE_CONCERN_LEVELS:
        raise ValueError(
            f"write_concern must be one of {', '.join(WRITE_CONCERN_LEVELS)}, got {write_concern!r}"
        )


_CORRELATION_FIELDS = ("query_id", "subscription_id", "request_id")
_SYNC_TYPES = frozenset(
    {"SYNC_INIT", "ORMAP_SYNC_INIT", "MERKLE_REQ_BUCKET", "ORMAP_MERKLE_REQ_BUCKET"}
)


def _correlation_of(message: Any) -> str | None:
    """The correlation id of a reply: in its payload or at the top level."""
    for holder in (getattr(message, "payload", None), message):
        if holder is None:
            continue
        for field in _CORRELATION_FIELDS:
            value = getattr(holder, field, None)
            if isinstance(value, str):
                return value
        topic = getattr(holder, "topic", None)
        if isinstance(topic, str):
            return f"topic:{topic}"
        name = getattr(holder, "name", None)
        if isinstance(name, str) and type(message).__name__.startswith("Counter"):
            return f"counter:{name}"
    return None
