"""`GET /events` (PROTOCOL.md §9.3): a map's changes pushed as server-sent events.

One stream follows one LWW map. Each change is an event whose `id` is its ingest sequence
(`topgun.server.ingest`), so a client that lost the stream reconnects with `Last-Event-ID`
and receives exactly what it missed: the latest state of every key changed since, in
sequence order, then live changes, with no gap and no duplicate. Values are filtered by the
reader's field-level security. An idle stream gets a `: ping` comment every
`http.sse_heartbeat_ms`.

A stream never slows writers: changes wait in a bounded buffer (`http.sse_buffer_events`);
a reader that falls that far behind gets `event: resync` (reason `OVERFLOW`) and the stream
closes, and the client resumes from its last id. A resume point before the map's prune
floor (`PRUNED`) or beyond its current sequence (`RESET`) gets `resync` at once: the client
pulls `POST /sync`, which returns the full state, and reopens with the new sequence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import anyio

from topgun.hooks import Principal, hookimpl
from topgun.protocol import SseChange, SseResync
from topgun.server.http_sync import (
    HttpFailure,
    authenticate_bearer,
    authenticate_token,
    error_response,
)
from topgun.server.ingest import SequencedChange
from topgun.server.permissions import FieldFilter

if TYPE_CHECKING:
    from quart import Quart

    from topgun.server.server import Server

EVENT_STREAM: Final = "text/event-stream"
REPLAY_PAGE: Final = 1000
"""Changes replayed per step (the stream yields to the event loop between steps)."""

ResyncReason = Literal["PRUNED", "OVERFLOW", "RESET"]


class EventStream:
    """One `GET /events` stream: replay from a resume point, then live changes."""

    def __init__(
        self,
        server: Server,
        map_name: str,
        fields: FieldFilter,
        since: int | None,
    ) -> None:
        self.server = server
        self.map_name = map_name
        self.fields = fields
        self.since = since
        self.buffer: deque[SequencedChange] = deque()
        self.overflowed = False
        self.last_seq = 0
        self._wakeup = anyio.Event()

    def _heard(self, change: SequencedChange) -> None:
        if self.overflowed:
            return
        if len(self.buffer) >= self.server.config.http.sse_buffer_events:
            self.overflowed = True
            self.buffer.clear()
        else:
            self.buffer.append(change)
        self._wakeup.set()

    def _event(self, change: SequencedChange) -> bytes | None:
        record = self.fields.record(change.record)
        if record is None:
            return None
        data = SseChange(
            map_name=self.map_name,
            key=change.key,
            event_type="REMOVE" if record.value is None else "PUT",
            seq=change.seq,
            record=record,
        )
        return b"id: %d\nevent: change\ndata: %s\n\n" % (
            change.seq,
            self.server.codec.encode_json(data),
        )

    def _resync(self, reason: ResyncReason) -> bytes:
        seq = self.server.ingest.log(self.map_name).seq
        data = SseResync(map_name=self.map_name, seq=seq, reason=reason)
        return b"event: resync\ndata: %s\n\n" % self.server.codec.encode_json(data)

    async def events(self) -> AsyncIterator[bytes]:
        """The stream's bytes, until the server stops, the buffer overflows or the client
        leaves (the ASGI server then cancels this generator)."""
        ingest = self.server.ingest
        await ingest.sequence(self.map_name)
        stop_listening = ingest.listen(self.map_name, self._heard)
        try:
            yield b": connected\n\n"
            if self.since is None:
                self.last_seq = ingest.log(self.map_name).seq
            else:
                reason = self._resume_problem(self.since)
                if reason is not None:
                    yield self._resync(reason)
                    return
                self.last_seq = self.since
                async for chunk in self._replay():
                    yield chunk
            async for chunk in self._live():
                yield chunk
        finally:
            stop_listening()

    def _resume_problem(self, since: int) -> ResyncReason | None:
        log = self.server.ingest.log(self.map_name)
        if since > log.seq:
            return "RESET"
        if 0 < since < log.floor:
            return "PRUNED"
        return None

    async def _replay(self) -> AsyncIterator[bytes]:
        while True:
            delta = await self.server.ingest.loaded_delta(
                self.map_name, since_seq=self.last_seq, limit=REPLAY_PAGE
            )
            chunk = bytearray()
            for change in delta.records:
                event = self._event(change)
                if event is not None:
                    chunk += event
                self.last_seq = change.seq
            if chunk:
                yield bytes(chunk)
            if not delta.has_more:
                return

    async def _live(self) -> AsyncIterator[bytes]:
        heartbeat = self.server.config.http.sse_heartbeat_ms / 1000
        stopping = self.server.stopping
        while not stopping.is_set():
            if self.overflowed:
                yield self._resync("OVERFLOW")
                return
            chunk = bytearray()
            while self.buffer:
                change = self.buffer.popleft()
                if change.seq <= self.last_seq:
                    continue  # already sent by the replay
                self.last_seq = change.seq
                event = self._event(change)
                if event is not None:
                    chunk += event
            if chunk:
                yield bytes(chunk)
                continue
            self._wakeup = anyio.Event()
            with anyio.move_on_after(heartbeat) as idle:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_wait_then_cancel, stopping, tg.cancel_scope)
                    await self._wakeup.wait()
                    tg.cancel_scope.cancel()
            if idle.cancelled_caught:
                yield b": ping\n\n"


async def _wait_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _resume_point(last_event_id: str | None, since: str | None) -> int | None:
    raw = last_event_id if last_event_id is not None else since
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        name = "Last-Event-ID" if last_event_id is not None else "since"
        raise HttpFailure(400, f"{name} must be a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise HttpFailure(400, f"resume point must be a non-negative integer, got {value}")
    return value


async def open_stream(
    server: Server,
    *,
    authorization: str | None,
    access_token: str | None,
    map_name: str | None,
    last_event_id: str | None,
    since: str | None,
) -> EventStream:
    """Authenticate and authorize a `GET /events` request; `HttpFailure` if refused."""
    principal: Principal
    if authorization is None and access_token:
        principal = await authenticate_token(server, access_token)
    else:
        principal = await authenticate_bearer(server, authorization)
    if not map_name:
        raise HttpFailure(400, "Query parameter 'map' is required")
    if not server.security.is_allowed(principal, map_name, "READ"):
        raise HttpFailure(403, f"Access denied for map: {map_name}")
    if server.maps.kind(map_name) == "ormap":
        raise HttpFailure(400, "Server-sent events only support LWW maps")
    await server.maps.ensure_loaded(map_name)  # an archived map comes back first
    resume = _resume_point(last_event_id, since)
    fields = server.security.field_filter(principal, map_name)
    return EventStream(server, map_name, fields, resume)


@hookimpl
def register_routes(app: Any, server: Any) -> None:
    """`GET /events`."""
    from quart import Response, request

    quart_app = cast("Quart", app)

    @quart_app.get("/events")
    async def events() -> Response:
        """Server-sent events of one map (PROTOCOL.md §9.3)."""
        try:
            stream = await open_stream(
                server,
                authorization=request.headers.get("Authorization"),
                access_token=request.args.get("access_token"),
                map_name=request.args.get("map"),
                last_event_id=request.headers.get("Last-Event-ID"),
                since=request.args.get("since"),
            )
        except HttpFailure as failure:
            return error_response(failure)
        response = Response(
            stream.events(),
            content_type=EVENT_STREAM,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        response.timeout = None  # a stream lasts as long as the client listens
        return response
