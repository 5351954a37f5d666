"""Live queries through the server: QUERY_RESP then QUERY_UPDATE deltas, top-N windows,
event routing by match, field-level security, configured and adaptive indexes (§6.2, §6.5)."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    QueryUnsub,
    QueryUnsubPayload,
    QueryUpdate,
    ServerEvent,
)
from topgun.query import IndexSpec, parse_query, run_query
from topgun.server import Policy
from topgun.server.config import MapOptions
from topgun.server.inmemory import InMemoryClient
from topgun.server.permissions import ALL_FIELDS

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


class Writer:
    """Writes with strictly increasing timestamps."""

    def __init__(self, client: InMemoryClient) -> None:
        self.client = client
        self.millis = T

    async def write(self, *changes: tuple[str, Any], map_name: str = "m") -> None:
        ops = []
        for key, value in changes:
            self.millis += 1
            record = LWWRecord(value, Timestamp(self.millis, 0, "w"))
            ops.append(ClientOp(map_name=map_name, key=key, record=record))
        await self.client.send(OpBatch(payload=OpBatchPayload(ops=ops)))
        await self.client.receive_until(OpAck)


async def sub(client: InMemoryClient, query_id: str, map_name: str = "m", **query: Any) -> Any:
    await client.send(
        QuerySub(
            payload=QuerySubPayload(query_id=query_id, map_name=map_name, query=Query(**query))
        )
    )
    response = await client.receive()
    assert isinstance(response, QueryResp)
    return response.payload


async def pending(client: InMemoryClient) -> list[Any]:
    """Everything queued for `client` before the PONG of a PING sent now."""
    await client.send(Ping(timestamp=0))
    _, before = await client.receive_until(Pong)
    return before


def updates(messages: list[Any]) -> list[tuple[str, str, str | None, Any]]:
    return [
        (m.payload.query_id, m.payload.key, m.payload.type, m.payload.value)
        for m in messages
        if isinstance(m, QueryUpdate)
    ]


async def test_resp_comes_first_then_enter_update_and_leave_p34_p35_p36(harness: Any) -> None:
    """P-34: QUERY_RESP precedes every QUERY_UPDATE; P-35: a key that starts matching is
    ENTER/ENTER; P-36: one that stops matching or is deleted is REMOVE/LEAVE, value nil."""
    writer = Writer(await harness.login())
    await writer.write(("a", {"status": "open"}))
    watcher = await harness.login()
    first = await sub(watcher, "q", where={"status": "open"})
    assert [(r.key, r.value) for r in first.results] == [("a", {"status": "open"})]
    await writer.write(("b", {"status": "open"}))
    messages = await pending(watcher)
    entered = [m for m in messages if isinstance(m, QueryUpdate)]
    assert [(u.payload.key, u.payload.type, u.payload.change_type) for u in entered] == [
        ("b", "ENTER", "ENTER")
    ]
    assert entered[0].payload.value == {"status": "open"}
    await writer.write(("b", {"status": "open", "n": 2}), ("a", {"status": "done"}))
    assert updates(await pending(watcher)) == [
        ("q", "b", "UPDATE", {"status": "open", "n": 2}),
        ("q", "a", "REMOVE", None),
    ]
    await writer.write(("b", None))
    (left,) = [m for m in await pending(watcher) if isinstance(m, QueryUpdate)]
    assert (left.payload.type, left.payload.change_type, left.payload.value) == (
        "REMOVE",
        "LEAVE",
        None,
    )


async def test_a_displaced_row_leaves_and_the_next_one_enters_p37(harness: Any) -> None:
    """P-37: with sort + limit, a row pushed out of the top-N is REMOVEd and the new one
    ENTERs; a row leaving a full window is replaced by the next best one."""
    writer = Writer(await harness.login())
    await writer.write(*[(k, {"score": s}) for k, s in [("a", 10), ("b", 20), ("c", 30)]])
    watcher = await harness.login()
    first = await sub(watcher, "top", sort={"score": "desc"}, limit=2)
    assert [r.key for r in first.results] == ["c", "b"]
    await writer.write(("d", {"score": 25}))
    assert updates(await pending(watcher)) == [
        ("top", "b", "REMOVE", None),
        ("top", "d", "ENTER", {"score": 25}),
    ]
    await writer.write(("c", None))
    assert updates(await pending(watcher)) == [
        ("top", "c", "REMOVE", None),
        ("top", "b", "ENTER", {"score": 20}),
    ]


async def test_unsub_and_disconnect_stop_the_updates_p38(harness: Any) -> None:
    """P-38: QUERY_UNSUB and disconnect end the subscription: no more QUERY_UPDATEs."""
    writer = Writer(await harness.login())
    watcher = await harness.login()
    await sub(watcher, "q")
    await sub(watcher, "q2")
    await watcher.send(QueryUnsub(payload=QueryUnsubPayload(query_id="q")))
    await writer.write(("k", 1))
    assert [u[0] for u in updates(await pending(watcher))] == ["q2"]
    other = await harness.login()
    await sub(other, "q")
    assert len(harness.server.live) == 2
    await other.disconnect()
    await anyio.wait_all_tasks_blocked()  # the server has ended that session
    await writer.write(("k", 2))
    assert [u[0] for u in updates(await pending(watcher))] == ["q2"]
    assert len(harness.server.live) == 1


async def test_events_go_only_to_sessions_whose_query_matches_the_key(harness: Any) -> None:
    """The SERVER_EVENT of a change reaches a session only if one of its live queries on
    the map matches the key before or after the change (a key leaving still reaches it)."""
    writer = Writer(await harness.login())
    reds = await harness.login()
    blues = await harness.login()
    await sub(reds, "r", where={"color": "red"})
    await sub(blues, "b", where={"color": "blue"})
    await writer.write(("k", {"color": "red"}))
    assert [type(m) for m in await pending(reds)] == [ServerEvent, QueryUpdate]
    assert await pending(blues) == []
    await writer.write(("k", {"color": "blue"}))  # leaves the reds, enters the blues
    assert [type(m) for m in await pending(reds)] == [ServerEvent, QueryUpdate]
    assert [type(m) for m in await pending(blues)] == [ServerEvent, QueryUpdate]
    await writer.write(("j", {"color": "green"}))
    assert await pending(reds) == []
    assert await pending(blues) == []


async def test_hidden_fields_are_neither_sent_nor_matchable(start: Any) -> None:
    """FLS: QUERY_UPDATE values keep only the allowed fields, and a filter on a hidden
    field sees no value there (it cannot probe it)."""
    policies = (
        Policy(role="ADMIN2", map_name_pattern="*", actions=("ALL",)),
        Policy(role="VIEW", map_name_pattern="m", actions=("READ",), allowed_fields=("name",)),
    )
    async with start(policies=policies) as h:
        writer = Writer(await h.login())
        viewer = await h.login(roles=["VIEW"])
        await sub(viewer, "all")
        await sub(viewer, "probe", where={"secret": "s"})
        await writer.write(("k", {"name": "n", "secret": "s"}))
        messages = await pending(viewer)
        assert updates(messages) == [("all", "k", "ENTER", {"name": "n"})]
        (event,) = [m for m in messages if isinstance(m, ServerEvent)]
        assert event.payload.record.value == {"name": "n"}


async def test_configured_and_adaptive_indexes_serve_the_queries(start: Any) -> None:
    """`[maps.<name>] indexes` are kept on the map's rows, in step with writes; with
    `adaptive_index_after`, a field filtered on that often without an index gets one."""
    options = {"m": MapOptions(indexes=("hash:status", "sorted:score"))}
    async with start(maps=options, adaptive_index_after=2) as h:
        writer = Writer(await h.login())
        await writer.write(("a", {"status": "open", "score": 1, "owner": "x"}))
        watcher = await h.login()
        await sub(watcher, "q1", where={"status": "open"})
        rows = h.server.live.rows("m", ALL_FIELDS)
        assert IndexSpec("hash", ("status",)) in rows.indexes
        assert IndexSpec("sorted", ("score",)) in rows.indexes
        await writer.write(("b", {"status": "open", "score": 2, "owner": "y"}))
        assert rows.get("b") == {"status": "open", "score": 2, "owner": "y"}
        assert [u[1] for u in updates(await pending(watcher))] == ["b"]
        await sub(watcher, "q2", where={"owner": "y"})
        await sub(watcher, "q3", where={"owner": "y"})
        assert IndexSpec("hash", ("owner",)) in rows.indexes
        result = await sub(watcher, "q4", where={"owner": "y"})
        assert [r.key for r in result.results] == ["b"]


QUERIES: list[dict[str, Any]] = [
    {},
    {"where": {"color": "red"}},
    {"predicate": {"op": "gte", "attribute": "n", "value": 5}, "sort": {"n": "asc"}},
    {"sort": {"n": "desc"}, "limit": 3},
    {"where": {"color": "blue"}, "sort": {"n": "asc"}, "limit": 2},
]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_client_view_always_equals_a_fresh_query(harness: Any, seed: int) -> None:
    """Random writes (puts, changes, deletes): the view a client builds from QUERY_RESP
    plus QUERY_UPDATEs (upsert on ENTER/UPDATE, drop on REMOVE) always holds exactly the
    rows a fresh query returns."""
    rng = random.Random(seed)
    writer = Writer(await harness.login())
    watcher = await harness.login()
    views: dict[str, dict[str, Any]] = {}
    for index, query in enumerate(QUERIES):
        first = await sub(watcher, f"q{index}", **query)
        views[f"q{index}"] = {row.key: row.value for row in first.results}
    for _ in range(40):
        changes = []
        for _ in range(rng.randint(1, 3)):
            key = f"k{rng.randint(0, 7)}"
            value = (
                None
                if rng.random() < 0.25
                else {"color": rng.choice(["red", "blue"]), "n": rng.randint(0, 9)}
            )
            changes.append((key, value))
        await writer.write(*changes)
        for query_id, key, kind, value in updates(await pending(watcher)):
            if kind == "REMOVE":
                del views[query_id][key]
            else:
                views[query_id][key] = value
        live = harness.server.maps.lww("m").items()
        for index, query in enumerate(QUERIES):
            fresh = run_query(parse_query(query), live, now_ms=harness.clock())
            assert views[f"q{index}"] == dict(fresh.rows), (seed, query)
