"""QUERY_SUB / QUERY_UNSUB as this server answers them (topgun/server/queries.py)."""

from __future__ import annotations

from typing import Any

import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    Error,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
)
from topgun.server import Policy

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


def sub(query_id: str, map_name: str) -> QuerySub:
    return QuerySub(payload=QuerySubPayload(query_id=query_id, map_name=map_name, query=Query()))


async def test_query_resp_holds_the_live_rows_by_key(harness: Any, clock: Any) -> None:
    """Tombstones and expired records are left out; OR-Map rows are arrays of live values."""
    client = await harness.login()
    ts = Timestamp(T, 0, "c")
    await client.send(
        OpBatch(
            payload=OpBatchPayload(
                ops=[
                    ClientOp(map_name="m", key="b", record=LWWRecord(2, ts)),
                    ClientOp(map_name="m", key="a", record=LWWRecord(1, ts)),
                    ClientOp(map_name="m", key="gone", record=LWWRecord(None, ts)),
                    ClientOp(map_name="m", key="old", record=LWWRecord(3, ts, ttl_ms=1.0)),
                    ClientOp(map_name="o", key="t", or_record=ORMapRecord("x", ts, str(ts))),
                ]
            )
        )
    )
    assert isinstance(await client.receive(), OpAck)
    clock.advance(10)
    await client.send(sub("q1", "m"))
    await client.send(sub("q2", "o"))
    await client.send(sub("q3", "nothing"))
    rows = [await client.receive() for _ in range(3)]
    assert all(isinstance(r, QueryResp) for r in rows)
    assert [(r.key, r.value) for r in rows[0].payload.results] == [("a", 1), ("b", 2)]
    assert [(r.key, r.value) for r in rows[1].payload.results] == [("t", ["x"])]
    assert rows[2].payload.results == []
    assert (rows[0].payload.has_more, rows[0].payload.cursor_status) == (False, "none")
    assert harness.server.maps.kind("nothing") is None


async def test_query_sub_needs_read_and_answers_403_with_the_query_id(start: Any) -> None:
    policies = (
        Policy(role="USER", map_name_pattern="m", actions=("READ",), allowed_fields=("a",)),
    )
    async with start(policies=policies) as h:
        admin = await h.login()
        record = LWWRecord({"a": 1, "b": 2}, Timestamp(T, 0, "c"))
        await admin.send(
            OpBatch(payload=OpBatchPayload(ops=[ClientOp(map_name="m", key="k", record=record)]))
        )
        await admin.receive()
        user = await h.login(roles=["USER"])
        await user.send(sub("q", "secret"))
        denied = await user.receive()
        assert isinstance(denied, Error)
        assert denied.payload.code == 403
        assert denied.payload.message == "Access denied for secret"
        assert denied.payload.details["queryId"] == "q"
        session = next(s for s in h.server.sessions if list(s.principal.roles) == ["USER"])
        assert h.server.subscriptions.of(session) == {}
        await user.send(sub("q", "m"))
        response = await user.receive()
        assert [(r.key, r.value) for r in response.payload.results] == [("k", {"a": 1})]


async def test_a_second_query_sub_with_the_same_id_replaces_the_first(harness: Any) -> None:
    client = await harness.login()
    await client.send(sub("q", "m"))
    await client.send(sub("q", "n"))
    await client.receive()
    await client.receive()
    session = next(iter(harness.server.sessions))
    assert {q: s.map_name for q, s in harness.server.subscriptions.of(session).items()} == {
        "q": "n"
    }
    assert harness.server.subscriptions.sessions_on("m") == []


async def test_query_sub_filters_sorts_and_pages_with_the_query_engine(harness: Any) -> None:
    client = await harness.login()
    ops = [
        ClientOp(map_name="m", key=f"k{i}", record=LWWRecord({"n": i}, Timestamp(T, i, "c")))
        for i in range(6)
    ]
    await client.send(OpBatch(payload=OpBatchPayload(ops=ops)))
    await client.receive()
    query = Query(where={"n": {"$gte": 2}}, sort={"n": "desc"}, limit=2)
    await client.send(QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=query)))
    page = await client.receive()
    assert isinstance(page, QueryResp)
    assert [(r.key, r.value) for r in page.payload.results] == [("k5", {"n": 5}), ("k4", {"n": 4})]
    assert page.payload.has_more
    assert page.payload.next_cursor
    follow = Query(where=query.where, sort=query.sort, limit=2, cursor=page.payload.next_cursor)
    await client.send(QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=follow)))
    second = await client.receive()
    assert second.payload.cursor_status == "valid"
    assert [r.key for r in second.payload.results] == ["k3", "k2"]


async def test_an_invalid_query_gets_400_with_its_id_and_no_subscription(harness: Any) -> None:
    client = await harness.login()
    query = Query(where={"n": {"$nope": 1}})
    await client.send(QuerySub(payload=QuerySubPayload(query_id="bad", map_name="m", query=query)))
    error = await client.receive()
    assert isinstance(error, Error)
    assert error.payload.code == 400
    assert error.payload.details["queryId"] == "bad"
    assert harness.server.subscriptions.sessions_on("m") == []


async def test_predicates_cannot_probe_fields_hidden_by_fls(start: Any) -> None:
    policies = (
        Policy(role="USER", map_name_pattern="m", actions=("READ",), allowed_fields=("a",)),
    )
    async with start(policies=policies) as h:
        admin = await h.login()
        record = LWWRecord({"a": 1, "secret": 42}, Timestamp(T, 0, "c"))
        await admin.send(
            OpBatch(payload=OpBatchPayload(ops=[ClientOp(map_name="m", key="k", record=record)]))
        )
        await admin.receive()
        user = await h.login(roles=["USER"])
        probe = Query(where={"secret": 42})
        await user.send(QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=probe)))
        response = await user.receive()
        assert response.payload.results == []
