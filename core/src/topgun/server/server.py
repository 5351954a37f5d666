"""`Server`: the single-node topgun server, transport-free.

`async with Server(config) as server:` opens storage, loads every map, starts the storage
writer and the liveness sweep, calls the `on_startup` plugins, and turns `ready`. Each
client connection is one `await server.handle_connection(transport, frames)`, whatever
carries it (WebSocket, SSE, an in-memory pipe). Leaving the block shuts down gracefully:
every client gets `SHUTDOWN_PENDING`, pending acknowledgements go out, connections close with
1001, the `on_shutdown` plugins run, and storage commits everything it was given before it
closes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterable, Callable, Coroutine
from types import TracebackType
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from topgun.crdt import HLC
from topgun.hooks import (
    Rejected,
    TopgunPluginManager,
    call_hook_async,
    make_plugin_manager,
)
from topgun.protocol import Codec, Message, ShutdownPending
from topgun.query import IndexSpec
from topgun.server.auth import wall_clock_ms
from topgun.server.clockmark import ClockMark
from topgun.server.config import ServerConfig, validate_config
from topgun.server.counters import CounterRegistry
from topgun.server.dispatch import HANDLERS, Handler
from topgun.server.events import EventRouter, Recipient
from topgun.server.expiry import ExpirySchedule
from topgun.server.gc import TombstoneGC
from topgun.server.hybrid import HybridQueries
from topgun.server.ingest import IngestLog
from topgun.server.journal import Journal
from topgun.server.live import LiveQueryService
from topgun.server.locks import LockManager
from topgun.server.maps import MapRegistry
from topgun.server.metrics import ServerMetrics
from topgun.server.processors import EntryProcessors
from topgun.server.resolvers import ConflictResolvers
from topgun.server.search import SearchService, search_providers
from topgun.server.security import Security
from topgun.server.session import CLIENT_CLOSED, SHUTDOWN_RETRY_AFTER_MS, Session
from topgun.server.subscriptions import SubscriptionRegistry
from topgun.server.topics import TopicRegistry
from topgun.server.transport import Transport
from topgun.server.views import Outbox
from topgun.server.writes import WritePipeline
from topgun.storage import (
    BudgetedBackend,
    StorageBackend,
    StorageStatus,
    StorageWriter,
    open_configured_storage,
)

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS: Final = 10.0
"""How long a graceful shutdown waits for pending acknowledgements and closes."""

LIVENESS_CHECK_MS: Final = 1000
"""The liveness sweep runs at least this often (PROTOCOL.md §4.4: at least every 5 s)."""


@functools.lru_cache(maxsize=8)
def shared_codec(max_frame_bytes: int) -> Codec:
    """One codec per frame limit for the whole process: a codec builds its decoders on first
    use (tens of ms), and is thread-safe, so servers share them."""
    return Codec(max_frame_bytes=max_frame_bytes)


class Server:
    """One topgun server: its maps, sessions, storage, plugins and metrics."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        pm: TopgunPluginManager | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.config = validate_config(config)
        self.pm = pm if pm is not None else make_plugin_manager()
        self.clock: Callable[[], int] = clock if clock is not None else wall_clock_ms
        """Wall-clock epoch milliseconds: the HLC, token expiry and the timeouts read it."""
        self.node_id = config.node_id or f"node-{uuid.uuid4().hex[:12]}"
        self.make_id: Callable[[], str] = lambda: str(uuid.uuid4())
        """Ids of new connections (random; a simulation replaces it with a counter)."""
        self.hlc = HLC(
            self.node_id,
            self.clock,
            max_drift_ms=config.hlc.max_drift_ms,
            strict=config.hlc.strict,
        )
        self.security = Security.from_config(self.pm, config, clock=self.clock)
        self.codec = shared_codec(config.max_frame_bytes)
        self.metrics = ServerMetrics()
        self.maps = MapRegistry(self.hlc)
        self.clock_mark = ClockMark(self.hlc)
        self.subscriptions: SubscriptionRegistry[Recipient] = SubscriptionRegistry()
        self.router = EventRouter(
            self.subscriptions,
            hlc=self.hlc,
            field_filter=self.security.field_filter,
            encode=self.codec.encode,
        )
        self.outbox = Outbox(self.maps)
        """Frames that follow changes (updates and, under a memory budget, events), in order."""
        self.live = LiveQueryService(
            self.maps,
            encode=self.codec.encode,
            outbox=self.outbox,
            indexes={
                name: [IndexSpec.parse(spec) for spec in options.indexes]
                for name, options in config.maps.items()
            },
            adaptive_after=config.adaptive_index_after,
        )
        self.search = SearchService(
            self.maps,
            config.maps,
            search_providers(self.pm),
            encode=self.codec.encode,
            outbox=self.outbox,
        )
        self.hybrid = HybridQueries(
            self.maps, encode=self.codec.encode, fusion=self.search.fusion, outbox=self.outbox
        )
        self.router.watchers += [self.live.changed, self.search.changed, self.hybrid.changed]
        self.router.after_delivery += [self.live.flush, self.hybrid.flush]
        self.writes = WritePipeline(
            maps=self.maps, security=self.security, pm=self.pm, router=self.router
        )
        self.journal: Journal | None = None
        """The event journal (`None` when `journal.enabled` is off)."""
        if config.journal.enabled:
            self.journal = Journal(
                capacity=config.journal.capacity,
                node_id=self.node_id,
                hlc=self.hlc,
                field_filter=self.security.field_filter,
            )
            self.writes.observers.append(self.journal.observe)
        self.expiry = ExpirySchedule(
            maps=self.maps, writes=self.writes, node_id=self.node_id, clock=self.clock
        )
        self.writes.observers.append(self.expiry.observe)
        self.processors = EntryProcessors.collect(
            self.pm,
            maps=self.maps,
            writes=self.writes,
            security=self.security,
            timeout_ms=config.processors.timeout_ms,
            max_abandoned=config.processors.max_abandoned,
            max_per_second=config.processors.max_per_second,
            clock=self.clock,
        )
        self.resolvers = ConflictResolvers.collect(
            self.pm,
            maps=self.maps,
            writes=self.writes,
            security=self.security,
            node_id=self.node_id,
            configured=config.resolvers,
        )
        self.writes.resolve = self.resolvers.resolve
        self.writes.resolves = lambda name: name in self.resolvers.bindings
        self.writes.reads_previous = lambda name: (
            self.journal is not None or name in self.resolvers.bindings
        )
        self.gc = TombstoneGC(
            maps=self.maps,
            clock=self.clock,
            gc_age_ms=config.gc_age_ms,
            interval_ms=config.expiry.gc_interval_ms,
            clients=lambda: list(self.sessions),
        )
        self.writes.record_sent = self.gc.record_sent
        self.ingest = IngestLog(
            self.maps, self.hlc, flush_interval_ms=config.http.ingest_flush_interval_ms
        )
        """Ingest sequences: the cursors of `POST /sync` and `GET /events` (§9.2)."""
        self.writes.observers.append(self.ingest.observe)
        self.gc.prune_observers.append(self.ingest.pruned)
        self.handlers: dict[type[Message], Handler] = dict(HANDLERS)
        """Client message class -> handler (`topgun.server.dispatch.HANDLERS`)."""
        self.topics = TopicRegistry(clock=self.clock, encode=self.codec.encode)
        self.locks = LockManager(clock=self.clock)
        self.counters = CounterRegistry(node_id=self.node_id, encode=self.codec.encode)
        self.shutdown_grace_seconds = SHUTDOWN_GRACE_SECONDS
        self.ready = False
        """True once every map is loaded and connections are accepted."""
        self.sessions: dict[Session, None] = {}
        """Open sessions, in the order they connected (a dict: iteration order is
        deterministic, which simulation needs)."""
        self.backend: StorageBackend | None = None
        self.storage_writer: StorageWriter | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self._accepting = False
        self._shutting_down = False
        self.stopping = anyio.Event()
        """Set when shutdown begins: long-lived HTTP responses (SSE streams) end."""
        self._shutdown_done = anyio.Event()
        self._sessions_changed = anyio.Event()
        self._admitted: deque[int] = deque()

    def storage_status(self) -> StorageStatus:
        """The storage backend's status (`ReportsStatus`); available when it reports none."""
        report = getattr(self.backend, "status", None)
        return report() if callable(report) else StorageStatus()

    def __repr__(self) -> str:
        state = "ready" if self.ready else "not ready"
        return f"<Server {self.node_id} {state}, {len(self.sessions)} connection(s)>"

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Server:
        if self._stack is not None:
            raise RuntimeError("a Server can be started only once")
        stack = self._stack = contextlib.AsyncExitStack()
        try:
            backend = self.backend = open_configured_storage(self.pm, self.config)
            await backend.initialize()
            stack.push_async_callback(backend.close)
            if isinstance(backend, BudgetedBackend):
                self.maps.set_budget(backend.memory_budget)
                self.router.send = self.outbox.put
                self.outbox.backend = backend
                self.router.settlers.append(self.outbox.settle)
                hot = self.maps.hot
                assert hot is not None
                self.metrics.watch_tiering(
                    hot.budget.budget_bytes,
                    lambda: hot.used,
                    lambda: hot.loads,
                    lambda: hot.evictions,
                )
            loaded = await self.maps.load(backend)
            if self.journal is not None:
                await self.journal.load(backend)
            self.expiry.load()
            await self.ingest.load(backend)
            self.maps.on_restore += [self.expiry.load_map, self.ingest.load_map]
            await self.resolvers.load(backend)
            await self.clock_mark.load(backend)
            options = self.config.storage
            writer = await stack.enter_async_context(
                StorageWriter(backend, max_batch=options.max_batch, max_queued=options.max_queued)
            )
            self.storage_writer = self.maps.writer = writer
            # Before the writer closes, in this order: the ingest log, then the last reading.
            stack.push_async_callback(self.clock_mark.save, writer.submit)
            stack.push_async_callback(self.ingest.flush, writer.submit)
            await self.locks.load(backend, writer.submit)
            await self.counters.load(backend, writer.submit)
            self.metrics.watch_storage(
                lambda: writer.queue_depth,
                lambda: writer.last_flush_seconds or 0.0,
                self.storage_status,
            )
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            self._task_group.start_soon(self._sweep_liveness)
            self._task_group.start_soon(self.locks.run)
            self._task_group.start_soon(self.expiry.run)
            self._task_group.start_soon(self.gc.run)
            self._task_group.start_soon(self.ingest.run, writer.submit)
            self._task_group.start_soon(self.clock_mark.run, writer.submit)
            await call_hook_async(self.pm.hook.on_startup, server=self)
        except BaseException:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
            await stack.aclose()
            raise
        logger.info("server %s ready: %d map(s) loaded", self.node_id, loaded)
        self._accepting = True
        self.ready = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Shut down gracefully, then drain storage (see the module docstring)."""
        assert self._stack is not None
        assert self._task_group is not None
        try:
            with anyio.CancelScope(shield=exc_type is not None):
                await self.shutdown()
        finally:
            self._task_group.cancel_scope.cancel()
            try:
                # Shielded: the server's task group (still entered) is cancelled by now,
                # and plugins must be able to await while they flush.
                with anyio.CancelScope(shield=True):
                    await call_hook_async(self.pm.hook.on_shutdown, server=self)
            finally:
                await self._stack.aclose()

    def start_background(self, function: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `function()` beside the server until it returns or the server stops (it is
        cancelled then): for `on_startup` plugins with work of their own, such as a key
        rotation. It must handle its own errors; one it raises stops the server."""
        if self._task_group is None:
            raise RuntimeError("the server is not running: start background work in on_startup")
        self._task_group.start_soon(function)

    async def shutdown(self) -> None:
        """Stop accepting, send `SHUTDOWN_PENDING` to every client, let pending
        acknowledgements go out, and close every connection with 1001. Idempotent; returns
        once every connection is closed (forcibly after `shutdown_grace_seconds`)."""
        if self._shutting_down:
            await self._shutdown_done.wait()
            return
        self._shutting_down = True
        self.stopping.set()
        self._accepting = False
        self.ready = False
        try:
            for session in list(self.sessions):
                session.begin_shutdown()
            with anyio.move_on_after(self.shutdown_grace_seconds):
                await self._all_closed()
            for session in list(self.sessions):
                logger.warning("%r did not close in time; cancelling it", session)
                session.cancel()
            await self._all_closed()
        finally:
            self._shutdown_done.set()

    def start_soon(
        self, func: Callable[[], Coroutine[Any, Any, Any]], name: str | None = None
    ) -> None:
        """Run `func()` in the server's task group (from `on_startup` on): plugins' background
        work. It is cancelled when the server stops, before the `on_shutdown` plugins run."""
        if self._task_group is None:
            raise RuntimeError("the server is not running")
        self._task_group.start_soon(func, name=name)

    async def _all_closed(self) -> None:
        while self.sessions:
            self._sessions_changed = anyio.Event()
            await self._sessions_changed.wait()

    def check_liveness(self) -> int:
        """Close the sessions past their auth timeout (4001) or heartbeat (4002) by the
        server clock; returns how many. The sweep calls this every second."""
        now = self.clock()
        return sum(session.check_liveness(now) for session in list(self.sessions))

    async def _sweep_liveness(self) -> None:
        interval = min(
            LIVENESS_CHECK_MS,
            self.config.auth.auth_timeout_ms // 4 or 1,
            self.config.heartbeat_timeout_ms // 4 or 1,
        )
        while True:
            await anyio.sleep(interval / 1000)
            self.check_liveness()

    # -- connections ------------------------------------------------------------------------

    def _admit(self, now_ms: int) -> bool:
        """The connection rate limit and the cap on unauthenticated connections (§4.1)."""
        limits = self.config.connections
        admitted = self._admitted
        while admitted and admitted[0] <= now_ms - 1000:
            admitted.popleft()
        if len(admitted) >= limits.max_new_per_second:
            return False
        unauthenticated = sum(1 for s in self.sessions if s.principal is None)
        if unauthenticated >= limits.max_unauthenticated:
            return False
        admitted.append(now_ms)
        return True

    async def handle_connection(
        self, transport: Transport, frames: AsyncIterable[bytes | str]
    ) -> None:
        """Serve one client connection until `frames` ends or the session closed it.

        `frames` yields the client's frames: `bytes` for binary, `str` for text. Returns
        once the session is over and `on_disconnect` was called.
        """
        if not self._accepting:
            if self._shutting_down:
                frame = self.codec.encode(ShutdownPending(retry_after=SHUTDOWN_RETRY_AFTER_MS))
                await _close_quietly(transport, 1001, "Server shutting down", frame)
            else:
                await _close_quietly(transport, 1013, "Server not ready")
            return
        if not self._admit(self.clock()):
            self.metrics.closes.labels("1013").inc()
            await _close_quietly(transport, 1013, "Server overloaded")
            return
        session = Session(self, transport)
        self.sessions[session] = None
        self.metrics.connections.inc()
        self.metrics.connections_accepted.inc()
        try:
            try:
                await call_hook_async(self.pm.hook.on_connection, connection=session)
            except Rejected as rejected:
                session.closed_with = (4000, rejected.reason)
                await _close_quietly(transport, 4000, rejected.reason)
                return
            except Exception:
                logger.exception("an on_connection plugin failed")
                session.closed_with = (1011, "Internal error")
                await _close_quietly(transport, 1011, "Internal error")
                return
            try:
                await session.run(frames)
            except Exception:
                logger.exception("%r failed", session)
                session.closed_with = (1011, "Internal error")
                await _close_quietly(transport, 1011, "Internal error")
        finally:
            with anyio.CancelScope(shield=True):
                await self._disconnected(session)

    async def _disconnected(self, session: Session) -> None:
        self.sessions.pop(session, None)
        self.subscriptions.drop(session)
        self.topics.drop(session)
        self.counters.drop(session)
        await self.locks.disconnected(session)
        self.live.drop(session)
        self.search.drop(session)
        self.hybrid.drop(session)
        if self.journal is not None:
            self.journal.drop(session)
        self._sessions_changed.set()
        self.metrics.connections.dec()
        code, reason = session.closed_with or CLIENT_CLOSED
        self.metrics.closes.labels(str(code)).inc()
        try:
            await call_hook_async(
                self.pm.hook.on_disconnect, connection=session, code=code, reason=reason
            )
        except Exception:
            logger.exception("an on_disconnect plugin failed")


async def _close_quietly(
    transport: Transport, code: int, reason: str, last_frame: bytes | None = None
) -> None:
    """Send `last_frame` (if any) and close, ignoring a transport that already failed."""
    try:
        if last_frame is not None:
            await transport.send(last_frame)
        await transport.close(code, reason)
    except Exception as exc:
        logger.debug("closing a refused connection failed: %r", exc)
