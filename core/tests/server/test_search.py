"""Full-text search through the server: SEARCH, SEARCH_SUB / SEARCH_UPDATE / SEARCH_UNSUB,
configured fields and boosts, providers, FLS (§5.7, §6.8)."""

from __future__ import annotations

from typing import Any

import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import PluginError, hookimpl, make_plugin_manager
from topgun.protocol import (
    ClientOp,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    Search,
    SearchOptions,
    SearchPayload,
    SearchResp,
    SearchSub,
    SearchSubPayload,
    SearchUnsub,
    SearchUnsubPayload,
    SearchUpdate,
)
from topgun.search import BM25Index
from topgun.server import Policy
from topgun.server.config import MapOptions
from topgun.server.inmemory import InMemoryClient
from topgun.server.search import SearchService, search_providers

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000
ARTICLES = {"articles": MapOptions(search_fields=("title", "body"), search_boosts={"title": 2})}


async def write(client: InMemoryClient, *changes: tuple[str, Any], millis: int = T) -> None:
    ops = [
        ClientOp(map_name="articles", key=key, record=LWWRecord(value, Timestamp(millis, i, "w")))
        for i, (key, value) in enumerate(changes)
    ]
    await client.send(OpBatch(payload=OpBatchPayload(ops=ops)))
    await client.receive_until(OpAck)


async def search(
    client: InMemoryClient, query: str, map_name: str = "articles", **options: Any
) -> Any:
    payload = SearchPayload("r1", map_name, query, SearchOptions(**options) if options else None)
    await client.send(Search(payload=payload))
    response = await client.receive()
    assert isinstance(response, SearchResp)
    return response.payload


async def pending_updates(client: InMemoryClient) -> list[Any]:
    await client.send(Ping(timestamp=0))
    _, before = await client.receive_until(Pong)
    return [m.payload for m in before if isinstance(m, SearchUpdate)]


async def test_search_ranks_with_the_configured_boosts(start: Any) -> None:
    """A hand-checked corpus: the title match outranks body matches (title boost 2), the
    document with the term twice outranks the one with it once, `totalCount` counts matches
    before `limit`, and `matchedTerms` are stemmed index terms."""
    async with start(maps=ARTICLES) as h:
        client = await h.login()
        await write(
            client,
            ("d1", {"title": "Merkle trees", "body": "hashing data"}),
            ("d2", {"title": "Sync", "body": "a merkle walk over merkle buckets"}),
            ("d3", {"title": "Sync", "body": "one merkle mention and more words"}),
            ("d4", {"title": "Unrelated", "body": "nothing here"}),
        )
        found = await search(client, "Merkle")
        assert [r.key for r in found.results] == ["d1", "d2", "d3"]
        assert found.total_count == 3
        assert found.results[0].matched_terms == ["merkl"]
        assert found.results[0].score > found.results[1].score > found.results[2].score
        top = await search(client, "merkle", limit=1)
        assert ([r.key for r in top.results], top.total_count) == (["d1"], 3)
        reference = BM25Index(["title", "body"])
        for key, value in h.server.maps.lww("articles").items():
            reference.set(key, value)
        expected = reference.search("merkle", boost={"title": 2.0})
        assert [(r.key, r.score) for r in found.results] == [
            (hit.key, hit.score) for hit in expected.hits
        ]


async def test_search_on_a_map_without_search_answers_an_error_p44(start: Any) -> None:
    """P-44: SEARCH on a map without full-text search → SEARCH_RESP, results [], error; a
    principal without READ gets "Access denied for map"."""
    policies = (Policy(role="OTHER", map_name_pattern="elsewhere", actions=("READ",)),)
    async with start(maps=ARTICLES, policies=policies) as h:
        admin = await h.login()
        off = await search(admin, "x", map_name="plain")
        assert (off.results, off.total_count, off.error) == (
            [],
            0,
            "Full-text search not enabled for map: plain",
        )
        stranger = await h.login(roles=["OTHER"])
        denied = await search(stranger, "x")
        assert (denied.results, denied.error) == ([], "Access denied for map: articles")
        bad = await search(admin, "x", min_score=float("inf"))
        assert bad.results == []
        assert bad.error is not None


async def test_live_search_resp_then_enter_update_leave_p45(start: Any) -> None:
    """P-45: SEARCH_SUB answers SEARCH_RESP with requestId = subscriptionId, then
    SEARCH_UPDATE ENTER / UPDATE / LEAVE carrying both type and changeType; SEARCH_UNSUB
    stops them."""
    async with start(maps=ARTICLES) as h:
        writer = await h.login()
        watcher = await h.login()
        await watcher.send(SearchSub(payload=SearchSubPayload("s1", "articles", "hello")))
        first = await watcher.receive()
        assert isinstance(first, SearchResp)
        assert (first.payload.request_id, first.payload.results) == ("s1", [])
        await write(writer, ("d1", {"title": "hello world", "body": "x"}))
        (entered,) = await pending_updates(watcher)
        assert (entered.subscription_id, entered.key, entered.type, entered.change_type) == (
            "s1",
            "d1",
            "ENTER",
            "ENTER",
        )
        assert entered.value == {"title": "hello world", "body": "x"}
        assert entered.matched_terms == ["hello"]
        await write(writer, ("d1", {"title": "hello again", "body": "x"}), millis=T + 1)
        (updated,) = await pending_updates(watcher)
        assert (updated.type, updated.change_type, updated.value["title"]) == (
            "UPDATE",
            "UPDATE",
            "hello again",
        )
        await write(writer, ("d1", None), millis=T + 2)
        (left,) = await pending_updates(watcher)
        assert (left.key, left.type, left.change_type, left.value) == ("d1", "LEAVE", "LEAVE", None)
        await watcher.send(SearchUnsub(payload=SearchUnsubPayload("s1")))
        await write(writer, ("d2", {"title": "hello", "body": ""}), millis=T + 3)
        assert await pending_updates(watcher) == []


async def test_search_results_and_updates_hide_fields(start: Any) -> None:
    """FLS: search results and SEARCH_UPDATE values keep only the allowed fields."""
    policies = (
        Policy(
            role="VIEW", map_name_pattern="articles", actions=("READ",), allowed_fields=("title",)
        ),
    )
    async with start(maps=ARTICLES, policies=policies) as h:
        writer = await h.login()
        viewer = await h.login(roles=["VIEW"])
        await write(writer, ("d1", {"title": "alpha", "body": "secret alpha"}))
        found = await search(viewer, "alpha")
        assert [r.value for r in found.results] == [{"title": "alpha"}]
        await viewer.send(SearchSub(payload=SearchSubPayload("s", "articles", "beta")))
        assert isinstance(await viewer.receive(), SearchResp)
        await write(writer, ("d2", {"title": "beta", "body": "secret"}), millis=T + 1)
        (entered,) = await pending_updates(viewer)
        assert entered.value == {"title": "beta"}


class RenamedBM25:
    """A search provider plugin: BM25 registered under another name."""

    @hookimpl
    def register_search_providers(self, register: Any) -> None:
        register("mine", BM25Index)


async def test_providers_come_from_the_hook_and_must_exist(start: Any) -> None:
    """A map names its provider; a provider no plugin registers is a startup error."""
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(RenamedBM25(), "mine")
    options = {"articles": MapOptions(search_fields=("title",), search_provider="mine")}
    async with start(pm=pm, maps=options) as h:
        client = await h.login()
        await write(client, ("d1", {"title": "hello"}))
        assert [r.key for r in (await search(client, "hello")).results] == ["d1"]
    missing = {"articles": MapOptions(search_fields=("title",), search_provider="nope")}
    with pytest.raises(PluginError, match="'nope', which no plugin registers"):
        SearchService(h.server.maps, missing, search_providers(pm), encode=h.server.codec.encode)
