"""`GET /events` over a real socket (PROTOCOL.md §9.3; P-59)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import ClientOp, OpAck, OpBatch, OpBatchPayload
from topgun.server import Policy
from topgun.server.config import HttpConfig

pytestmark = pytest.mark.anyio

DEADLINE = 10.0
NOW = int(time.time() * 1000)


@dataclass
class SseEvent:
    """One event of the stream; a comment (`: ping`) has `comment` set."""

    id: str | None = None
    event: str | None = None
    data: str = ""
    comment: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseReader:
    """Reads events from a streaming response, each with a deadline."""

    response: httpx.Response
    lines: AsyncIterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self.lines = self.response.aiter_lines()

    async def next(self, *, comments: bool = False) -> SseEvent:
        """The next event (comments skipped unless `comments`)."""
        with anyio.fail_after(DEADLINE):
            while True:
                event = SseEvent()
                seen = False
                async for line in self.lines:
                    if line == "":
                        if seen:
                            break
                        continue
                    seen = True
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "":
                        event.comment = value
                    elif name == "data":
                        event.data = value if not event.data else event.data + "\n" + value
                    elif name in ("id", "event"):
                        setattr(event, name, value)
                else:
                    raise EOFError("the stream ended")
                if event.comment is None or comments:
                    return event

    async def changes(self, count: int) -> list[SseEvent]:
        return [await self.next() for _ in range(count)]

    async def ended(self) -> bool:
        """True once the server closed the stream (after any remaining comments)."""
        with anyio.fail_after(DEADLINE):
            async for line in self.lines:
                if line and not line.startswith(":"):
                    raise AssertionError(f"unexpected line after the end: {line!r}")
        return True


@contextlib.asynccontextmanager
async def stream(
    live: Any, token: str, query: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SseReader]:
    async with (
        httpx.AsyncClient(timeout=DEADLINE) as client,
        client.stream(
            "GET",
            f"{live.http_url}/events?{query}",
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        reader = SseReader(response)
        first = await reader.next(comments=True)
        assert first.comment == "connected"
        yield reader


async def write(live: Any, *items: tuple[str, Any], map_name: str = "todos") -> None:
    """Write `items` (key, value) through a WebSocket client, one batch, acked."""
    global _counter
    client = await live.client()
    ops = []
    for key, value in items:
        _counter += 1
        ts = Timestamp(NOW, _counter, "writer")
        ops.append(ClientOp(map_name=map_name, key=key, record=LWWRecord(value, ts)))
    await client.send(OpBatch(payload=OpBatchPayload(ops=ops)))
    await client.expect(OpAck)
    await client.aclose()


_counter = 0


async def test_p59_ids_are_ingest_sequences_and_resume_loses_and_repeats_nothing(
    live_server: Any, wire: Any
) -> None:
    """P-59: `id:` is the change's ingest sequence; a client that lost its stream resumes
    with `Last-Event-ID` and gets exactly the changes it missed, then live ones."""
    token = wire.mint()
    await write(live_server, ("before", 0))
    async with stream(live_server, token, "map=todos") as events:
        await write(live_server, ("a", 1), ("b", 2))
        first = await events.changes(2)
    assert [e.event for e in first] == ["change", "change"]
    assert [(e.json["key"], e.json["record"]["value"]) for e in first] == [("a", 1), ("b", 2)]
    assert [int(e.id or 0) for e in first] == [e.json["seq"] for e in first] == [2, 3]
    last_id = first[-1].id
    assert last_id is not None

    # While disconnected: b changes again, c is new, a is deleted.
    await write(live_server, ("b", 20), ("c", 3))
    await write(live_server, ("a", None))
    async with stream(live_server, token, "map=todos", {"Last-Event-ID": last_id}) as events:
        missed = await events.changes(3)
        await write(live_server, ("d", 4))
        (live,) = await events.changes(1)
    assert [(e.json["key"], e.json["eventType"]) for e in missed] == [
        ("b", "PUT"),
        ("c", "PUT"),
        ("a", "REMOVE"),
    ]
    assert [int(e.id or 0) for e in missed] == [4, 5, 6]
    assert (live.json["key"], int(live.id or 0)) == ("d", 7)


async def test_since_parameter_replays_from_a_sequence(live_server: Any, wire: Any) -> None:
    await write(live_server, ("a", 1), ("b", 2), ("c", 3))
    async with stream(live_server, wire.mint(), "map=todos&since=1") as events:
        replayed = await events.changes(2)
    assert [e.json["key"] for e in replayed] == ["b", "c"]


async def test_without_a_resume_point_only_future_changes_arrive(
    live_server: Any, wire: Any
) -> None:
    await write(live_server, ("old", 1))
    async with stream(live_server, wire.mint(), "map=todos") as events:
        await write(live_server, ("new", 2))
        (event,) = await events.changes(1)
    assert event.json["key"] == "new"


async def test_idle_streams_get_heartbeat_comments(start_server: Any, wire: Any) -> None:
    async with (
        start_server(http=HttpConfig(sse_heartbeat_ms=50)) as live,
        stream(live, wire.mint(), "map=todos") as events,
    ):
        assert (await events.next(comments=True)).comment == "ping"
        assert (await events.next(comments=True)).comment == "ping"


async def test_a_reader_that_falls_behind_gets_resync_overflow_and_resumes(
    start_server: Any, wire: Any
) -> None:
    """A burst beyond the stream's buffer: `resync` (OVERFLOW), the stream closes, and a
    resume from the last id delivers everything with nothing lost."""
    async with start_server(http=HttpConfig(sse_buffer_events=3)) as live:
        token = wire.mint()
        async with stream(live, token, "map=todos") as events:
            await write(live, *[(f"k{i}", i) for i in range(10)])  # one batch: one burst
            resync = await events.next()
            assert resync.event == "resync"
            assert resync.json == {"mapName": "todos", "seq": 10, "reason": "OVERFLOW"}
            assert await events.ended()
        async with stream(live, token, "map=todos&since=0") as events:
            replayed = await events.changes(10)
        assert [e.json["key"] for e in replayed] == [f"k{i}" for i in range(10)]


async def test_resume_beyond_the_current_sequence_gets_resync_reset(
    live_server: Any, wire: Any
) -> None:
    await write(live_server, ("a", 1))
    async with stream(live_server, wire.mint(), "map=todos", {"Last-Event-ID": "99"}) as events:
        resync = await events.next()
        assert (resync.event, resync.json["reason"], resync.json["seq"]) == ("resync", "RESET", 1)
        assert await events.ended()


async def test_values_are_filtered_by_field_level_security(start_server: Any, wire: Any) -> None:
    policies = (
        Policy(role="USER", map_name_pattern="people", actions=("READ",), allowed_fields=("name",)),
    )
    async with (
        start_server(policies=policies) as live,
        stream(live, wire.mint(roles=["USER"]), "map=people") as events,
    ):
        await write(live, ("p1", {"name": "Ann", "salary": 9}), map_name="people")
        (event,) = await events.changes(1)
    assert event.json["record"]["value"] == {"name": "Ann"}


async def test_access_token_parameter_authenticates_browser_event_sources(
    live_server: Any, wire: Any
) -> None:
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        url = f"{live_server.http_url}/events?map=todos&access_token={wire.mint()}"
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            reader = SseReader(response)
            assert (await reader.next(comments=True)).comment == "connected"


@pytest.mark.parametrize(
    ("query", "headers", "status", "error"),
    [
        ("map=todos", {}, 401, "Missing Authorization header"),
        ("map=todos", {"Authorization": "Bearer forged"}, 401, "Authentication failed"),
        ("", "token", 400, "Query parameter 'map' is required"),
        ("map=todos&since=soon", "token", 400, "since must be a non-negative integer"),
        ("map=todos", "bad-last-id", 400, "Last-Event-ID must be a non-negative integer"),
        ("map=secret", "user", 403, "Access denied for map: secret"),
        ("map=tags", "token", 400, "Server-sent events only support LWW maps"),
    ],
)
async def test_refused_streams_get_a_json_error(
    start_server: Any, wire: Any, query: str, headers: Any, status: int, error: str
) -> None:
    policies = (Policy(role="USER", map_name_pattern="todos", actions=("READ",)),)
    async with start_server(policies=policies) as live:
        admin = await live.client()
        ts = Timestamp(NOW, 0, "c")
        await admin.send(
            OpBatch(
                payload=OpBatchPayload(
                    ops=[
                        ClientOp(map_name="tags", key="t", or_record=ORMapRecord("x", ts, str(ts)))
                    ]
                )
            )
        )
        await admin.expect(OpAck)
        await admin.aclose()
        if headers == "token":
            headers = {"Authorization": f"Bearer {wire.mint()}"}
        elif headers == "user":
            headers = {"Authorization": f"Bearer {wire.mint(roles=['USER'])}"}
        elif headers == "bad-last-id":
            headers = {"Authorization": f"Bearer {wire.mint()}", "Last-Event-ID": "x"}
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            response = await client.get(f"{live.http_url}/events?{query}", headers=headers)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"].startswith(error)


async def test_shutdown_ends_open_streams(start_server: Any, wire: Any) -> None:
    async with start_server() as live, stream(live, wire.mint(), "map=todos") as events:
        await live.server.shutdown()
        assert await events.ended()
