"""Conformance over real sockets: live queries, cursors and search (P-35..P-37, P-40, P-41,
P-44, P-45), with the raw client of conftest.py and msgpack frames as a TS client sends them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from topgun.crdt.records import LWWRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    HybridQueryDelta,
    HybridQueryResp,
    HybridQuerySubscribe,
    HybridQuerySubscribePayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    QueryUpdate,
    Search,
    SearchPayload,
    SearchResp,
    SearchSub,
    SearchSubPayload,
    SearchUpdate,
    ServerEvent,
)
from topgun.server.config import MapOptions

pytestmark = pytest.mark.anyio

NOW = int(time.time() * 1000)


def put(key: str, value: Any, counter: int, map_name: str = "todos") -> OpBatch:
    record = LWWRecord(value, Timestamp(NOW, counter, "client-a"))
    op = ClientOp(map_name=map_name, key=key, record=record, id=str(counter))
    return OpBatch(payload=OpBatchPayload(ops=[op]))


async def query(client: Any, query_id: str, **fields: Any) -> Any:
    await client.send(QuerySub(payload=QuerySubPayload(query_id, "todos", Query(**fields))))
    return (await client.expect(QueryResp)).payload


async def test_p35_p36_p37_live_query_deltas_over_a_socket(live_server: Any) -> None:
    """ENTER/ENTER for a key that starts matching, REMOVE/LEAVE (value nil) for one that
    stops, and REMOVE + ENTER when a top-N window is displaced — on the wire."""
    writer = await live_server.client()
    watcher = await live_server.client()
    await query(watcher, "open", where={"done": False})
    await query(watcher, "top1", sort={"rank": "asc"}, limit=1)
    await writer.send(put("a", {"done": False, "rank": 2}, 1))
    await writer.expect(OpAck)
    seen = []
    while len(seen) < 2:
        message = await watcher.recv()
        if isinstance(message, QueryUpdate):
            seen.append(message.payload)
    assert sorted((u.query_id, u.key, u.type, u.change_type) for u in seen) == [
        ("open", "a", "ENTER", "ENTER"),
        ("top1", "a", "ENTER", "ENTER"),
    ]
    await writer.send(put("b", {"done": True, "rank": 1}, 2))
    await writer.expect(OpAck)
    updates = []
    while len(updates) < 2:
        message = await watcher.recv()
        if isinstance(message, QueryUpdate):
            updates.append(message.payload)
    assert [(u.query_id, u.key, u.type, u.change_type) for u in updates] == [
        ("top1", "a", "REMOVE", "LEAVE"),
        ("top1", "b", "ENTER", "ENTER"),
    ]
    await writer.send(put("a", {"done": True, "rank": 2}, 3))
    await writer.expect(OpAck)
    left = None
    while left is None:
        message = await watcher.recv()
        if isinstance(message, QueryUpdate):
            left = message.payload
    assert (left.query_id, left.key, left.type, left.change_type, left.value) == (
        "open",
        "a",
        "REMOVE",
        "LEAVE",
        None,
    )
    for client in (writer, watcher):
        await client.aclose()


async def test_p40_p41_cursors_page_through_and_are_validated(live_server: Any) -> None:
    """Following `nextCursor` visits every row once; a cursor used with another predicate is
    `invalid` and answers the first page."""
    client = await live_server.client()
    for i in range(5):
        await client.send(put(f"k{i}", {"n": i}, i))
        await client.expect(OpAck)
    seen: list[str] = []
    page = await query(client, "p", sort={"n": "asc"}, limit=2)
    while True:
        seen += [row.key for row in page.results]
        if not page.has_more:
            break
        page = await query(client, "p", sort={"n": "asc"}, limit=2, cursor=page.next_cursor)
        assert page.cursor_status == "valid"
    assert seen == ["k0", "k1", "k2", "k3", "k4"]
    first = await query(client, "p2", sort={"n": "asc"}, limit=2)
    other = await query(
        client, "p3", where={"n": 3}, sort={"n": "asc"}, limit=2, cursor=first.next_cursor
    )
    assert other.cursor_status == "invalid"
    assert [row.key for row in other.results] == ["k3"]
    await client.aclose()


async def test_p44_p45_search_over_a_socket(start_server: Any) -> None:
    """P-44: SEARCH on a map without search → SEARCH_RESP with [] and an error; P-45:
    SEARCH_SUB → SEARCH_RESP keyed by subscriptionId, then SEARCH_UPDATE with both fields."""
    maps = {"articles": MapOptions(search_fields=("title",))}
    async with start_server(maps=maps) as live:
        client = await live.client()
        await client.send(Search(payload=SearchPayload("r", "todos", "x")))
        off = (await client.expect(SearchResp)).payload
        assert (off.request_id, off.results, off.error) == (
            "r",
            [],
            "Full-text search not enabled for map: todos",
        )
        await client.send(SearchSub(payload=SearchSubPayload("s", "articles", "hello")))
        first = (await client.expect(SearchResp)).payload
        assert (first.request_id, first.results, first.total_count) == ("s", [], 0)
        await client.send(put("d1", {"title": "hello world"}, 1, map_name="articles"))
        update = (await client.expect_past_updates(SearchUpdate)).payload
        assert (update.subscription_id, update.key, update.type, update.change_type) == (
            "s",
            "d1",
            "ENTER",
            "ENTER",
        )
        assert update.matched_terms == ["hello"]
        await client.aclose()


async def test_hybrid_query_resp_then_deltas_with_both_fields(live_server: Any) -> None:
    """§5.8 on the wire: HYBRID_QUERY_RESP, then (after the change's SERVER_EVENT, which a
    hybrid subscription receives like a QUERY_SUB) HYBRID_QUERY_DELTA with `type` and
    `changeType`, a score and the matched index terms."""
    writer = await live_server.client()
    watcher = await live_server.client()
    match = {"op": "match", "attribute": "title", "query": "Merkle"}
    await watcher.send(
        HybridQuerySubscribe(payload=HybridQuerySubscribePayload("h", "todos", predicate=match))
    )
    assert (await watcher.expect(HybridQueryResp)).payload.results == []
    await writer.send(put("a", {"title": "Merkle trees"}, 1))
    await writer.expect(OpAck)
    assert (await watcher.expect(ServerEvent)).payload.key == "a"  # the event, then the delta
    delta = (await watcher.expect(HybridQueryDelta)).payload
    assert (delta.subscription_id, delta.key, delta.type, delta.change_type) == (
        "h",
        "a",
        "ENTER",
        "ENTER",
    )
    assert delta.matched_terms == ["merkl"]
    assert delta.score is not None
    assert delta.score > 0
    for client in (writer, watcher):
        await client.aclose()
