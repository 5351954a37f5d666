"""`client.vector_search` against a real server with `topgun-vector` (a deterministic
embedder: the real model's ranking is tested in tests/server/test_vector.py)."""

from __future__ import annotations

import struct
from typing import Any

import anyio
import pytest
import topgun_vector.plugin
from topgun_vector import VectorConfig, VectorMapConfig

from topgun.client import RequestError, TopGunClient
from topgun.server.config import MapOptions

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the server runs in-process, on asyncio


def le_f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def vector_pm() -> Any:
    from topgun.hooks import make_plugin_manager

    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(topgun_vector.plugin, "vector")
    return pm


CONFIG = {
    "vector": VectorConfig(
        embedder="hash",
        model="4",
        maps={
            "docs": VectorMapConfig(vector_fields=("v",)),
            "notes": VectorMapConfig(text_fields=("body",)),
        },
    )
}


async def until_found(client: TopGunClient, *args: Any, **options: Any) -> Any:
    """Search until the index caught up with the writes (embedding is asynchronous)."""
    with anyio.fail_after(30):
        while True:
            found = await client.vector_search(*args, **options)
            if found.rows:
                return found
            await anyio.sleep(0.02)


async def test_vector_queries_rank_by_cosine_and_filter_first(start_server: Any, kit: Any) -> None:
    async with (
        start_server(pm=vector_pm(), sections=CONFIG) as live,
        TopGunClient(live.url, token=kit.mint()) as client,
    ):
        docs = client.map("docs")
        docs.set("x", {"v": le_f32(1, 0, 0, 0), "lang": "en"})
        docs.set("xy", {"v": le_f32(1, 1, 0, 0), "lang": "en"})
        docs.set("z", {"v": le_f32(0, 0, 3, 0), "lang": "fr"})
        await client.settled()
        with anyio.fail_after(30):  # embedding and indexing are asynchronous
            found = await client.vector_search("docs", [2.0, 0.1, 0.0, 0.0], k=2)
            while len(found.rows) < 2:
                await anyio.sleep(0.02)
                found = await client.vector_search("docs", [2.0, 0.1, 0.0, 0.0], k=2)
        assert [row.key for row in found.rows] == ["x", "xy"]
        assert found.rows[0].similarity == pytest.approx(0.998753, abs=1e-4)
        as_bytes = await client.vector_search("docs", le_f32(2, 0.1, 0, 0), k=2)
        assert [row.key for row in as_bytes.rows] == ["x", "xy"]
        french = await client.vector_search("docs", [1.0, 0.0, 0.0, 0.0], k=3, where={"lang": "fr"})
        assert [row.key for row in french.rows] == ["z"]


async def test_text_queries_are_embedded_by_the_server(start_server: Any, kit: Any) -> None:
    async with (
        start_server(pm=vector_pm(), sections=CONFIG, maps={"notes": MapOptions()}) as live,
        TopGunClient(live.url, token=kit.mint()) as client,
    ):
        client.map("notes").set("n1", {"body": "offline first data grid"})
        client.map("notes").set("n2", {"body": "something else entirely"})
        await client.settled()
        found = await until_found(client, "notes", "offline first data grid", k=1)
        assert found.rows[0].key == "n1"
        assert found.rows[0].similarity == pytest.approx(1.0, abs=1e-5)


async def test_a_map_without_a_vector_index_is_a_clear_error(start_server: Any, kit: Any) -> None:
    async with (
        start_server(pm=vector_pm(), sections=CONFIG) as live,
        TopGunClient(live.url, token=kit.mint()) as client,
    ):
        with anyio.fail_after(30), pytest.raises(RequestError):
            await client.vector_search("unindexed", "anything")
