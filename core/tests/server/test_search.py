"""Full-text search through the server: SEARCH, SEARCH_SUB / SEARCH_UPDATE / SEARCH_UNSUB,
configured fields and boosts, providers, FLS (§5.7, §6.8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
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
from topgun.search import BM25Index, SearchHit, SearchResult
from topgun.server import Policy, Server, ServerConfig, StorageConfig
from topgun.server.config import MapOptions
from topgun.server.inmemory import InMemoryClient
from topgun.server.search import SearchService, search_providers

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000
ARTICLES = {"articles": MapOptions(search_fields=("title", "body"), search_boosts={"title": 2})}


async def write(
    client: InMemoryClient, *changes: tuple[str, Any], millis: int = T, map_name: str = "articles"
) -> None:
    ops = [
        ClientOp(map_name=map_name, key=key, record=LWWRecord(value, Timestamp(millis, i, "w")))
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


class VotesIndex:
    """A second provider: the documents holding a word of the query (plain lowercase words of
    the fields) ranked by their `votes`, most first, then by key."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = list(fields)
        self.docs: dict[str, tuple[set[str], float]] = {}

    def __len__(self) -> int:
        return len(self.docs)

    def set(self, key: str, value: Any) -> None:
        texts = [value.get(f) for f in self.fields]
        words = {w for text in texts if isinstance(text, str) for w in text.lower().split()}
        self.docs[key] = (words, value.get("votes", 0))

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
        wanted = set(query.lower().split())
        ranked = sorted(
            (-votes, key, sorted(words & wanted))
            for key, (words, votes) in self.docs.items()
            if words & wanted
        )
        hits = [SearchHit(key, -negative, terms) for negative, key, terms in ranked]
        return SearchResult(hits[: limit or max_results], len(hits))


class VotesPlugin:
    """Registers `VotesIndex` as `votes` through the real hook."""

    @hookimpl
    def register_search_providers(self, register: Any) -> None:
        register("votes", VotesIndex)


CORPUS = (
    ("d1", {"title": "Merkle trees", "body": "merkle roots and merkle proofs", "votes": 1}),
    ("d2", {"title": "Merkle", "body": "a long body about other things entirely here", "votes": 5}),
    ("d3", {"title": "Sync", "body": "merkle sync notes", "votes": 9}),
    ("d4", {"title": "Unrelated", "body": "nothing", "votes": 100}),
)
FUSED = {
    name: MapOptions(
        search_fields=("title", "body"), search_providers=("bm25", "votes"), search_weights=weights
    )
    for name, weights in (("articles", {}), ("weighted", {"votes": 0.25}))
}


def votes_pm() -> Any:
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(VotesPlugin(), "votes")
    return pm


async def test_several_providers_fuse_by_rrf_with_weights(start: Any) -> None:
    """BM25 ranks "merkle" d1, d3, d2 and votes rank d3, d2, d1, so with equal weights the
    fused order is d3 (1/62 + 1/61), d1 (1/61 + 1/63), d2 (1/63 + 1/62); with votes weighted
    0.25 it becomes d1, d3, d2. totalCount counts the fused set before limit; matchedTerms
    are the union of the providers' terms."""
    async with start(pm=votes_pm(), maps=FUSED) as h:
        client = await h.login()
        for map_name in FUSED:
            await write(client, *CORPUS, map_name=map_name)
        bm25 = BM25Index(["title", "body"])
        for key, value in CORPUS:
            bm25.set(key, value)
        assert [hit.key for hit in bm25.search("merkle").hits] == ["d1", "d3", "d2"]
        found = await search(client, "merkle")
        assert [(r.key, r.score) for r in found.results] == [
            ("d3", pytest.approx(1 / 62 + 1 / 61)),
            ("d1", pytest.approx(1 / 61 + 1 / 63)),
            ("d2", pytest.approx(1 / 63 + 1 / 62)),
        ]
        assert found.total_count == 3
        assert [r.matched_terms for r in found.results] == [["merkl", "merkle"]] * 3
        weighted = await search(client, "merkle", map_name="weighted", limit=2)
        assert [(r.key, r.score) for r in weighted.results] == [
            ("d1", pytest.approx(1 / 61 + 0.25 / 63)),
            ("d3", pytest.approx(1 / 62 + 0.25 / 61)),
        ]
        assert weighted.total_count == 3


async def test_live_searches_follow_the_fused_ranking(start: Any) -> None:
    """A live search on a fused map keeps the fused top document: a new document first in
    both lists enters and the old top leaves."""
    async with start(pm=votes_pm(), maps=FUSED) as h:
        writer = await h.login()
        watcher = await h.login()
        await write(writer, *CORPUS)
        options = SearchOptions(limit=1)
        await watcher.send(SearchSub(payload=SearchSubPayload("s", "articles", "merkle", options)))
        first = await watcher.receive()
        assert [r.key for r in first.payload.results] == ["d3"]
        await write(writer, ("d5", {"title": "merkle merkle", "votes": 50}), millis=T + 1)
        changes = await pending_updates(watcher)
        assert [(c.type, c.key) for c in changes] == [("LEAVE", "d3"), ("ENTER", "d5")]
        assert changes[1].score == pytest.approx(2 / 61)


def test_every_named_provider_must_be_registered(tmp_path: Path) -> None:
    """An unknown name among several providers stops the server at start, naming it."""
    missing = {"articles": MapOptions(search_fields=("title",), search_providers=("bm25", "nope"))}
    config = ServerConfig(data_dir=tmp_path, storage=StorageConfig(backend="memory"), maps=missing)
    with pytest.raises(PluginError, match="'nope', which no plugin registers"):
        Server(config, pm=votes_pm())
