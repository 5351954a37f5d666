"""One client connection from accept to close (PROTOCOL.md §1.1, §1.3, §4).

A `Session` talks to its client through a `Transport` and a stream of inbound frames; it
knows nothing of WebSockets, SSE or Quart. It owns:

- **The handshake**: `AUTH_REQUIRED` first; only `AUTH` and `PING` until authenticated (any
  other message closes with 4001); `AUTH` → `AUTH_ACK`, or `AUTH_FAIL` and close 4001; a
  later `AUTH` is ignored. The server's liveness sweep closes it with 4001 when it is not
  authenticated in time and with 4002 when an authenticated client goes silent.
- **Inbound order**: frames are handled one at a time, in arrival order. A write that waits
  for its write concern does so in a task of the session, so later messages go on; the
  acknowledgements still leave in request order.
- **Outbound order and pressure**: messages are queued without blocking the producer and
  sent by one writer task, which coalesces non-urgent ones into `BATCH` frames (flushed
  after `max_delay_ms`, or when full, or before an urgent message), so every message leaves
  in the order it was produced. A client that does not read is closed with 4003 once its
  unsent output passes `max_outbound_bytes`, instead of growing memory.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import msgspec
from anyio.abc import TaskGroup

from topgun.hooks import Principal, Rejected, call_hook_async
from topgun.protocol import (
    URGENT_MESSAGE_TYPES,
    Auth,
    AuthAck,
    AuthFail,
    AuthRequired,
    Coalescer,
    CounterUpdate,
    Error,
    ErrorPayload,
    GcPrune,
    HybridQueryDelta,
    JournalEventMessage,
    OpRejected,
    OpRejectedPayload,
    PartitionMapDelta,
    Ping,
    Pong,
    ProtocolError,
    QueryUpdate,
    SearchUpdate,
    ServerBatchEvent,
    ServerEvent,
    ShutdownPending,
    TopicMessage,
    VectorSearchUpdate,
    message_type,
)
from topgun.server.auth import AuthError
from topgun.server.transport import Transport

if TYPE_CHECKING:
    from topgun.server.server import Server

logger = logging.getLogger(__name__)

T = TypeVar("T")

SHUTDOWN_RETRY_AFTER_MS: Final = 5000
"""`SHUTDOWN_PENDING.retryAfter` (PROTOCOL.md §4.4)."""

CLIENT_CLOSED: Final = (1005, "closed by the client")
"""What `on_disconnect` is told when the client went away: no close code reached the session."""

_CLOSE_REASONS: Final = {1002: "Protocol Error", 1009: "Frame too large"}

PUSHED_MESSAGE_TYPES: Final[frozenset[type[msgspec.Struct]]] = frozenset(
    {
        ServerEvent,
        ServerBatchEvent,
        QueryUpdate,
        SearchUpdate,
        HybridQueryDelta,
        VectorSearchUpdate,
        TopicMessage,
        CounterUpdate,
        JournalEventMessage,
        PartitionMapDelta,
        GcPrune,
    }
)
"""Messages the server pushes unasked: they wait up to the coalescing delay (§1.3) to share a
`BATCH` with the ones that follow. A reply to a request (`OP_ACK`, `QUERY_RESP`, sync
responses, ...) is flushed as soon as the session's write task runs, together with whatever
is queued before it: the client is waiting for it, and the delay would only add latency."""


def _type_name(message: msgspec.Struct) -> str:
    return message_type(type(message))  # type: ignore[arg-type]


class Session:
    """One client connection (satisfies `topgun.hooks.Connection`)."""

    def __init__(self, server: Server, transport: Transport) -> None:
        self.server = server
        self.transport = transport
        self.client_id = server.make_id()
        """Assigned at accept (PROTOCOL.md §1.1)."""
        self.principal: Principal | None = None
        self.accepted_ms = server.clock()
        self.last_frame_ms = self.accepted_ms
        """When the last inbound frame of any kind arrived (the heartbeat counts them all)."""
        self.closed_with: tuple[int, str] | None = None
        """The close code and reason the session closed its transport with."""
        self._queue: deque[tuple[bytes, bool]] = deque()
        self._queued_bytes = 0
        self._wakeup = anyio.Event()
        self._close: tuple[int, str] | None = None
        self._discard = False
        self._reply_queued = False
        """A reply is queued: flush without waiting for the coalescing delay."""
        self._gone = False
        self._stopping = False
        self._receive_scope: anyio.CancelScope | None = None
        self._send_scope: anyio.CancelScope | None = None
        self._ack_tail: anyio.Event | None = None
        self._task_group: TaskGroup | None = None

    def __repr__(self) -> str:
        who = "unauthenticated" if self.principal is None else f"user {self.principal.user_id!r}"
        return f"<Session {self.client_id} {who}>"

    @property
    def remote_address(self) -> str | None:
        """The peer's address, when the transport knows it."""
        return self.transport.remote_address

    @property
    def is_open(self) -> bool:
        """False once the session is closing or the client went away."""
        return self._close is None and not self._gone

    @property
    def queued_bytes(self) -> int:
        """Bytes queued for the client and not yet taken by the writer."""
        return self._queued_bytes

    # -- running ----------------------------------------------------------------------------

    async def run(self, frames: AsyncIterable[bytes | str]) -> None:
        """Serve the client until `frames` ends or the session closed its transport."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            task_group.start_soon(self._write_loop)
            self.send(AuthRequired())
            await self._read_loop(frames)
            if self._stopping and self.is_open:
                if self._ack_tail is not None:
                    with anyio.move_on_after(self.server.shutdown_grace_seconds):
                        await self._ack_tail.wait()
                self.close(1001, "Server shutting down")
            elif self.is_open:  # the frames ended: the client went away
                self._gone = True
                task_group.cancel_scope.cancel()

    async def _read_loop(self, frames: AsyncIterable[bytes | str]) -> None:
        iterator = aiter(frames)
        while not self._stopping and self._close is None:
            with anyio.CancelScope() as scope:
                self._receive_scope = scope
                try:
                    frame = await anext(iterator)
                except StopAsyncIteration:
                    return
                except Exception as exc:  # the transport failed: the client is gone
                    logger.debug("session %s: receiving failed: %r", self.client_id, exc)
                    return
                finally:
                    self._receive_scope = None
            if scope.cancelled_caught:
                return
            await self._on_frame(frame)

    def begin_shutdown(self) -> None:
        """Announce `SHUTDOWN_PENDING`, stop reading, and close 1001 once pending
        acknowledgements went out (graceful shutdown, PROTOCOL.md §4.4)."""
        if self._stopping:
            return
        self._stopping = True
        self.send(ShutdownPending(retry_after=SHUTDOWN_RETRY_AFTER_MS))
        if self._receive_scope is not None:
            self._receive_scope.cancel()

    def cancel(self) -> None:
        """Stop the session at once: nothing more is sent (a shutdown's last resort)."""
        self._gone = True
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    def check_liveness(self, now_ms: int) -> bool:
        """Close the session if it missed the auth timeout or the heartbeat; True if so."""
        if self._close is not None:
            return False
        if self.principal is None:
            if now_ms - self.accepted_ms >= self.server.config.auth.auth_timeout_ms:
                self.close(4001, "Authentication timeout")
                return True
        elif now_ms - self.last_frame_ms >= self.server.config.heartbeat_timeout_ms:
            self.close(4002, "Heartbeat timeout")
            return True
        return False

    # -- inbound ----------------------------------------------------------------------------

    async def _on_frame(self, frame: bytes | str) -> None:
        self.last_frame_ms = self.server.clock()
        try:
            message = self.server.codec.decode_client_frame(frame)
        except ProtocolError as error:
            self.server.metrics.message_in("INVALID")
            await self._on_bad_frame(error)
            return
        self.server.metrics.message_in(_type_name(message))
        if self.principal is None:
            if isinstance(message, Auth):
                await self._authenticate(message.token)
            elif isinstance(message, Ping):
                self.pong(message)
            else:
                self.close(4001, "Unauthorized")
            return
        handler = self.server.handlers[type(message)]
        try:
            await handler(self, message)
        except Exception:
            logger.exception("handling %s failed", _type_name(message))
            self.send_error(
                500,
                "Internal server error",
                {"type": _type_name(message), "reason": "the server failed to handle it"},
            )

    async def _on_bad_frame(self, error: ProtocolError) -> None:
        if error.close_code is not None:
            self.close(error.close_code, _CLOSE_REASONS.get(error.close_code, error.detail))
            return
        if self.principal is None:
            if error.message_type == "AUTH":
                await self._refuse(f"invalid AUTH message: {error.detail}")
            elif error.message_type == "PING":
                self._send_protocol_error(error)
            else:
                self.close(4001, "Unauthorized")
            return
        if error.message_type == "CLIENT_OP":
            where = f" at {error.path}" if error.path else ""
            self.send(
                OpRejected(
                    payload=OpRejectedPayload(
                        op_id=error.correlation.get("opId", "#0"),
                        reason=f"Invalid op: {error.detail}{where}",
                        code=400,
                    )
                )
            )
            return
        self._send_protocol_error(error)

    def _send_protocol_error(self, error: ProtocolError) -> None:
        reply = error.error_reply()
        if reply is not None:
            self.send(reply)

    async def _authenticate(self, token: str) -> None:
        server = self.server
        try:
            principal = await server.security.authenticate(token, self)
            self.principal = principal
            await call_hook_async(
                server.pm.hook.on_authenticated, connection=self, principal=principal
            )
        except (AuthError, Rejected) as refused:
            await self._refuse(refused.reason)
            return
        except Exception:
            logger.exception("authentication failed in a plugin")
            await self._refuse("authentication failed")
            return
        self.send(AuthAck())

    async def _refuse(self, reason: str) -> None:
        self.principal = None
        self.server.metrics.auth_failures.inc()
        try:
            await call_hook_async(
                self.server.pm.hook.on_auth_failed, connection=self, reason=reason
            )
        except Exception:
            logger.exception("an on_auth_failed plugin failed (the refusal stands)")
        self.send(AuthFail(error=reason, code=401))
        self.close(4001, "Authentication failed")

    def pong(self, ping: Ping) -> None:
        """Answer a `PING` (no top-level `timestamp`: rule J7)."""
        self.send(Pong(server_time=self.server.clock(), ping_timestamp=ping.timestamp))

    # -- acknowledgements -------------------------------------------------------------------

    async def acknowledge(
        self, settle: Callable[[], Awaitable[T]], send: Callable[[T], None], *, waits: bool
    ) -> None:
        """Run `settle` and pass its value to `send`, keeping acknowledgements in order.

        When `settle` will wait (`waits`: a write concern not reached yet), it runs in a task
        of the session, so the next message is handled meanwhile; `send` still runs only
        after every earlier acknowledgement was sent.
        """
        previous = self._ack_tail
        if not waits and (previous is None or previous.is_set()):
            send(await settle())
            return
        done = self._ack_tail = anyio.Event()

        async def in_order() -> None:
            try:
                value = await settle()
                if previous is not None:
                    await previous.wait()
                send(value)
            finally:
                done.set()

        assert self._task_group is not None
        self._task_group.start_soon(in_order)

    # -- outbound ---------------------------------------------------------------------------

    def send(self, message: msgspec.Struct, *, urgent: bool | None = None) -> None:
        """Queue a message for the client; urgent by default for §1.3's urgent types."""
        if self._close is not None or self._gone:
            return
        if urgent is None:
            urgent = type(message) in URGENT_MESSAGE_TYPES
        if type(message) not in PUSHED_MESSAGE_TYPES:
            self._reply_queued = True
        self._enqueue(self.server.codec.encode(message), _type_name(message), urgent)

    def send_frame(self, frame: bytes, message_type: str) -> None:
        """Queue an already encoded non-urgent message (one event fanned out to many)."""
        if self._close is not None or self._gone:
            return
        self._enqueue(frame, message_type, False)

    def send_error(self, code: int, message: str, details: Any = None) -> None:
        """Send `ERROR{code, message, details}` (PROTOCOL.md §5)."""
        self.send(Error(payload=ErrorPayload(code=code, message=message, details=details)))

    def _enqueue(self, frame: bytes, message_type: str, urgent: bool) -> None:
        self._queue.append((frame, urgent))
        self._queued_bytes += len(frame)
        self.server.metrics.message_out(message_type)
        if self._queued_bytes > self.server.config.max_outbound_bytes:
            self.abort(4003, "Slow consumer")
            return
        self._wakeup.set()

    def close(self, code: int, reason: str) -> None:
        """Close after what is queued has been sent (the first close asked for wins)."""
        if self._close is None and not self._gone:
            self._close = (code, reason)
            self._wakeup.set()

    def abort(self, code: int, reason: str) -> None:
        """Drop what is queued and close now."""
        if self._close is None and not self._gone:
            self._discard = True
            self._queue.clear()
            self._queued_bytes = 0
            self.close(code, reason)
            if self._send_scope is not None:
                self._send_scope.cancel()

    async def _wait(self) -> None:
        await self._wakeup.wait()
        self._wakeup = anyio.Event()

    def _take(self, coalescer: Coalescer) -> list[bytes]:
        ready: list[bytes] = []
        queue = self._queue
        while queue:
            frame, urgent = queue.popleft()
            self._queued_bytes -= len(frame)
            ready += coalescer.send_frame(frame, urgent=urgent)
        return ready

    async def _write_loop(self) -> None:
        """The one task that writes to the transport, in production order."""
        options = self.server.config.coalescing
        coalescer = Coalescer(
            encode=self.server.codec.encode,
            max_batch_size=options.max_batch_size,
            max_batch_bytes=options.max_batch_bytes,
        )
        delay = options.max_delay_ms / 1000
        try:
            while True:
                while not self._queue and not coalescer.pending and self._close is None:
                    await self._wait()
                ready = self._take(coalescer)
                if (
                    not ready
                    and coalescer.pending
                    and self._close is None
                    and not self._reply_queued
                ):
                    with anyio.move_on_after(delay):  # let a partial batch fill up
                        while not ready and self._close is None and not self._reply_queued:
                            await self._wait()
                            ready = self._take(coalescer)
                if self._discard:
                    coalescer.discard()
                    ready = []
                elif not ready or self._close is not None or self._reply_queued:
                    ready += coalescer.flush()
                self._reply_queued = False
                with anyio.CancelScope() as self._send_scope:  # `abort` cancels it
                    for frame in ready:
                        await self.transport.send(frame)
                self._send_scope = None
                if self._discard:
                    coalescer.discard()
                if self._close is not None and not self._queue and not coalescer.pending:
                    break
            self.closed_with = self._close
            await self.transport.close(*self._close)
        except Exception as exc:  # the transport failed: the client is gone
            logger.debug("session %s: transport failed: %r", self.client_id, exc)
            self._gone = True
        finally:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
