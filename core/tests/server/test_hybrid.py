"""Hybrid queries through the server: predicate filter plus BM25 relevance of `match*`
leaves, `_score` / `_key` sorts, deltas with both type fields, routing, errors (§5.8)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import hookimpl, make_plugin_manager
from topgun.protocol import (
    ClientOp,
    Error,
    HybridQueryDelta,
    HybridQueryResp,
    HybridQuerySubscribe,
    HybridQuerySubscribePayload,
    HybridQueryUnsubscribe,
    HybridQueryUnsubscribePayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    ServerEvent,
)
from topgun.search import BM25Index, SearchHit, SearchResult
from topgun.server import Policy
from topgun.server.config import MapOptions
from topgun.server.inmemory import InMemoryClient

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000
MATCH_MERKLE = {"op": "match", "attribute": "title", "query": "merkle"}


class Writer:
    def __init__(self, client: InMemoryClient) -> None:
        self.client = client
        self.millis = T

    async def write(self, *changes: tuple[str, Any]) -> None:
        ops = []
        for key, value in changes:
            self.millis += 1
            record = LWWRecord(value, Timestamp(self.millis, 0, "w"))
            ops.append(ClientOp(map_name="docs", key=key, record=record))
        await self.client.send(OpBatch(payload=OpBatchPayload(ops=ops)))
        await self.client.receive_until(OpAck)


async def hybrid(client: InMemoryClient, sub_id: str, **fields: Any) -> Any:
    payload = HybridQuerySubscribePayload(subscription_id=sub_id, map_name="docs", **fields)
    await client.send(HybridQuerySubscribe(payload=payload))
    return await client.receive()


async def deltas(client: InMemoryClient) -> list[Any]:
    await client.send(Ping(timestamp=0))
    _, before = await client.receive_until(Pong)
    return [m.payload for m in before if isinstance(m, HybridQueryDelta)]


async def test_scores_are_bm25_of_the_satisfied_match_leaves(harness: Any) -> None:
    """Rows pass the whole predicate; the score is the BM25 score of the title for the
    match leaf (the same number a BM25 index over the titles gives); default order is
    `_score desc, _key asc`."""
    writer = Writer(await harness.login())
    titles = {"a": "merkle trees", "b": "merkle merkle proofs", "c": "vector clocks"}
    await writer.write(*[(k, {"title": t, "open": k != "b"}) for k, t in titles.items()])
    watcher = await harness.login()
    predicate = {
        "op": "or",
        "children": [MATCH_MERKLE, {"op": "eq", "attribute": "open", "value": True}],
    }
    resp = await hybrid(watcher, "h", predicate=predicate)
    assert isinstance(resp, HybridQueryResp)
    reference = BM25Index(["title"])
    for key, title in titles.items():
        reference.set(key, {"title": title})
    expected = reference.scores(["merkl"])
    rows = [(r.key, r.score, r.matched_terms) for r in resp.payload.results]
    assert [key for key, _, _ in rows] == ["b", "a", "c"]
    assert rows[0][1] == pytest.approx(expected["b"])
    assert rows[1][1] == pytest.approx(expected["a"])
    assert rows[2][1:] == (0.0, [])
    assert rows[0][2] == ["merkl"]
    assert resp.payload.cursor_status == "none"


async def test_deltas_enter_update_leave_with_both_type_fields(harness: Any) -> None:
    """After each change the window is compared: ENTER, UPDATE (value or score moved) and
    LEAVE (value nil), each with `type` and `changeType`; UNSUBSCRIBE stops them."""
    writer = Writer(await harness.login())
    watcher = await harness.login()
    resp = await hybrid(watcher, "h", predicate=MATCH_MERKLE, sort={"_key": "asc"}, limit=2)
    assert resp.payload.results == []
    await writer.write(("a", {"title": "merkle"}))
    (entered,) = await deltas(watcher)
    assert (entered.key, entered.type, entered.change_type) == ("a", "ENTER", "ENTER")
    assert entered.matched_terms == ["merkl"]
    await writer.write(("b", {"title": "merkle trees"}))
    changes = await deltas(watcher)
    assert [(d.key, d.type) for d in changes] == [("a", "UPDATE"), ("b", "ENTER")]  # idf moved
    await writer.write(("a", {"title": "clocks"}))
    changes = await deltas(watcher)
    left, moved = changes  # a leaves; b's score moves with the corpus statistics
    assert (left.key, left.type, left.change_type, left.value) == ("a", "LEAVE", "LEAVE", None)
    assert (moved.key, moved.type, moved.change_type) == ("b", "UPDATE", "UPDATE")
    await watcher.send(HybridQueryUnsubscribe(payload=HybridQueryUnsubscribePayload("h")))
    await writer.write(("c", {"title": "merkle"}))
    assert await deltas(watcher) == []
    assert len(harness.server.hybrid) == 0


async def test_events_reach_hybrid_subscribers_of_matching_keys(harness: Any) -> None:
    """A hybrid subscription is a live subscription for event routing (§6.2)."""
    writer = Writer(await harness.login())
    watcher = await harness.login()
    await hybrid(watcher, "h", predicate=MATCH_MERKLE)
    await writer.write(("a", {"title": "merkle"}), ("z", {"title": "unrelated"}))
    await watcher.send(Ping(timestamp=0))
    _, before = await watcher.receive_until(Pong)
    (event,) = [m for m in before if isinstance(m, ServerEvent)]
    assert event.payload.key == "a"


async def test_bad_queries_denied_maps_and_cursors(start: Any) -> None:
    """An invalid query is ERROR 400 and no READ is ERROR 403, both with the
    subscriptionId; a cursor is reported invalid (not supported) with the first page."""
    policies = (Policy(role="OTHER", map_name_pattern="elsewhere", actions=("READ",)),)
    async with start(policies=policies) as h:
        admin = await h.login()
        bad = await hybrid(admin, "h1", predicate={"op": "nope"})
        assert isinstance(bad, Error)
        assert (bad.payload.code, bad.payload.details["subscriptionId"]) == (400, "h1")
        cursor = await hybrid(admin, "h2", predicate=MATCH_MERKLE, cursor="abc")
        assert cursor.payload.cursor_status == "invalid"
        other = await h.login(roles=["OTHER"])
        denied = await hybrid(other, "h3", predicate=MATCH_MERKLE)
        assert isinstance(denied, Error)
        assert denied.payload.code == 403


async def write_and_compare(
    writer: Any,
    watcher: Any,
    view: dict[str, Any],
    change: tuple[str, Any],
    fresh_id: str,
    query: dict[str, Any],
) -> None:
    """Write `change`, apply the deltas to `view`, and check it equals a fresh subscription
    (keys, values, scores within 1e-4)."""
    await writer.write(change)
    for delta in await deltas(watcher):
        if delta.type == "LEAVE":
            del view[delta.key]
        else:
            view[delta.key] = (delta.value, delta.score)
    fresh = await hybrid(watcher, fresh_id, **query)
    expected = {r.key: (r.value, r.score) for r in fresh.payload.results}
    assert view.keys() == expected.keys()
    for k, (v, score) in view.items():
        assert v == expected[k][0]
        assert score == pytest.approx(expected[k][1], abs=1e-4)
    await watcher.send(HybridQueryUnsubscribe(payload=HybridQueryUnsubscribePayload(fresh_id)))


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_client_view_equals_a_fresh_subscription(harness: Any, seed: int) -> None:
    """Random writes: the rows a client holds from HYBRID_QUERY_RESP plus deltas equal the
    results of a new subscription (keys, values and scores)."""
    rng = random.Random(seed)
    words = ["merkle", "tree", "clock", "vector", "sync"]
    writer = Writer(await harness.login())
    watcher = await harness.login()
    query = {"predicate": MATCH_MERKLE, "sort": {"_score": "desc"}, "limit": 3}
    view = {
        r.key: (r.value, r.score) for r in (await hybrid(watcher, "h", **query)).payload.results
    }
    for step in range(25):
        key = f"k{rng.randint(0, 5)}"
        value = None if rng.random() < 0.2 else {"title": " ".join(rng.choices(words, k=3))}
        await write_and_compare(writer, watcher, view, (key, value), f"fresh{step}", query)


class LongestIndex:
    """A second provider: texts holding a word of the query (plain lowercase words), the
    longest first (the opposite of BM25's length normalisation)."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = list(fields)
        self.docs: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self.docs)

    def set(self, key: str, value: Any) -> None:
        texts = [value.get(f) for f in self.fields]
        self.docs[key] = [w for t in texts if isinstance(t, str) for w in t.lower().split()]

    def delete(self, key: str) -> None:
        self.docs.pop(key, None)

    def search(
        self,
        query: str,
        *,
        limit: int | None = None,
        min_score: float | None = None,
        boost: Mapping[str, float] | None = None,
        max_results: int = 1000,
    ) -> SearchResult:
        wanted = query.lower().split()
        ranked = sorted(
            (-len(words), key, [w for w in wanted if w in words])
            for key, words in self.docs.items()
            if set(words) & set(wanted)
        )
        hits = [SearchHit(key, -negative, terms) for negative, key, terms in ranked]
        return SearchResult(hits[: limit or max_results], len(hits))


class LongestPlugin:
    @hookimpl
    def register_search_providers(self, register: Any) -> None:
        register("longest", LongestIndex)


def fused(start: Any) -> Any:
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(LongestPlugin(), "longest")
    options = MapOptions(search_providers=("bm25", "longest"))
    return start(pm=pm, maps={"docs": options})


async def test_several_providers_fuse_the_text_relevance(start: Any) -> None:
    """With providers bm25 and longest, BM25 ranks the merkle titles b, a, c and longest
    ranks c, b, a: the scores are b = 1/61 + 1/62, c = 1/63 + 1/61, a = 1/62 + 1/63; a row
    passing the predicate without text relevance scores 0; terms are the union."""
    async with fused(start) as h:
        writer = Writer(await h.login())
        titles = {
            "a": "merkle trees",
            "b": "merkle merkle proofs",
            "c": "a merkle tree walk over buckets",
            "d": "vector clocks",
        }
        await writer.write(*[(k, {"title": t, "open": k == "d"}) for k, t in titles.items()])
        reference = BM25Index(["title"])
        for key, title in titles.items():
            reference.set(key, {"title": title})
        bm25 = reference.scores(["merkl"])
        assert sorted(bm25, key=lambda k: -bm25[k]) == ["b", "a", "c"]
        watcher = await h.login()
        predicate = {
            "op": "or",
            "children": [MATCH_MERKLE, {"op": "eq", "attribute": "open", "value": True}],
        }
        resp = await hybrid(watcher, "h", predicate=predicate)
        assert [(r.key, r.score) for r in resp.payload.results] == [
            ("b", pytest.approx(1 / 61 + 1 / 62)),
            ("c", pytest.approx(1 / 63 + 1 / 61)),
            ("a", pytest.approx(1 / 62 + 1 / 63)),
            ("d", 0.0),
        ]
        assert [r.matched_terms for r in resp.payload.results] == [["merkl", "merkle"]] * 3 + [[]]


async def test_the_fused_client_view_equals_a_fresh_subscription(start: Any) -> None:
    """Random writes on a fused map: the client's rows from HYBRID_QUERY_RESP plus deltas
    equal a new subscription's (keys, values, scores within 1e-4)."""
    rng = random.Random(7)
    words = ["merkle", "tree", "clock", "vector", "sync"]
    async with fused(start) as h:
        writer = Writer(await h.login())
        watcher = await h.login()
        query = {"predicate": MATCH_MERKLE, "limit": 3}
        first = await hybrid(watcher, "h", **query)
        view = {r.key: (r.value, r.score) for r in first.payload.results}
        for step in range(15):
            key = f"k{rng.randint(0, 5)}"
            size = rng.randint(1, 5)
            value = None if rng.random() < 0.2 else {"title": " ".join(rng.choices(words, k=size))}
            await write_and_compare(writer, watcher, view, (key, value), f"fresh{step}", query)
