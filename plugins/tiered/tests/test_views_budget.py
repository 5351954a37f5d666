"""Live queries, live searches and hybrid queries over a map 5x the memory budget, through
the protocol: every response, update and event is the same as on a server without a
budget, and the bytes the budget counts (values and what the views keep) peak within the
budget plus a bounded margin."""

from __future__ import annotations

import base64
import gc
import json
import random
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import jwt
import msgspec
import pytest

from topgun.crdt import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import (
    Auth,
    AuthAck,
    AuthRequired,
    ClientOp,
    HybridQueryResp,
    HybridQuerySubscribe,
    HybridQuerySubscribePayload,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    PredicateNode,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    QueryUpdate,
    SearchOptions,
    SearchResp,
    SearchSub,
    SearchSubPayload,
    ServerBatchEvent,
    ServerEvent,
)
from topgun.server import InMemoryClient, Policy, ServerConfig
from topgun.server.config import MapOptions
from topgun.server.permissions import ALL_FIELDS
from topgun.server.views import SCAN_CHUNK
from topgun.storage import value_size

pytestmark = pytest.mark.anyio

KEYS = 1500
MAPS = {"docs": MapOptions(search_fields=("title",))}
VIEW = Policy(
    role="VIEW", map_name_pattern="docs", actions=("READ",), allowed_fields=("n", "title")
)


def configured(config: ServerConfig) -> ServerConfig:
    """`config` with search on `docs` and the VIEW role."""
    return msgspec.structs.replace(config, maps=MAPS, policies=(VIEW,))


def doc(i: int, *, group: int | None = None, title: str | None = None) -> dict[str, Any]:
    """~3.9 KB in memory: small fields the views read, a large body they never read."""
    words = f"{'alpha' if i % 5 == 0 else 'gamma'} {'beta' if i % 3 == 0 else 'delta'} {i}"
    return {
        "n": i,
        "group": i % 7 if group is None else group,
        "title": words if title is None else title,
        "body": f"doc {i} " + "lorem ipsum dolor " * 200,
    }


class Writer:
    """Writes through the protocol with deterministic timestamps."""

    def __init__(self, client: InMemoryClient, millis: int) -> None:
        self.client = client
        self.millis = millis

    async def write(self, changes: Sequence[tuple[int, dict[str, Any] | None]]) -> None:
        ops = []
        for i, value in changes:
            self.millis += 1
            record = LWWRecord(value, Timestamp(self.millis, 0, "writer"))
            ops.append(ClientOp(map_name="docs", key=f"k{i:05}", record=record))
        await self.client.send(OpBatch(payload=OpBatchPayload(ops=ops, write_concern="PERSISTED")))
        ack, _ = await self.client.receive_until(OpAck, timeout=30)
        assert ack.payload.achieved_level == "PERSISTED"


def plain(message: Any) -> Any:
    """A message as comparable builtins, without the server's clock readings (an event's
    top-level timestamp, the time a cursor was issued)."""
    if isinstance(message, ServerEvent | ServerBatchEvent):
        return (type(message).__name__, msgspec.to_builtins(message.payload))
    if isinstance(message, QueryResp) and message.payload.next_cursor is not None:
        cursor = json.loads(base64.urlsafe_b64decode(message.payload.next_cursor + "=="))
        del cursor["timestamp"]
        payload = msgspec.structs.replace(message.payload, next_cursor=json.dumps(cursor))
        message = msgspec.structs.replace(message, payload=payload)
    return (type(message).__name__, msgspec.to_builtins(message))


async def heard(watcher: InMemoryClient) -> list[Any]:
    """Everything the watcher received up to now."""
    await watcher.send(Ping(timestamp=0))
    _, before = await watcher.receive_until(Pong, timeout=30)
    watcher.raw_frames.clear()
    return [plain(m) for m in before]


def steps() -> list[list[tuple[int, dict[str, Any] | None]]]:
    """Changes that move rows in and out of every window, so that rows which are cold
    under the budget move up into limited windows."""
    top3 = [i for i in range(KEYS - 1, 0, -1) if i % 7 == 3]
    return [
        [(i, None) for i in top3[:6]],  # leave the top of q-where: cold rows move up
        [(i, doc(i, group=4)) for i in top3[6:10]] + [(KEYS - 2, doc(KEYS - 2, group=3))],
        [(KEYS + j, doc(KEYS + j, group=3)) for j in range(5)],  # new rows enter at the top
        [(0, doc(0, title="gamma delta")), (5, doc(5, title="alpha alpha alpha"))],  # re-rank
        [(7, doc(7, title="gamma beta", group=2)), (9, doc(9, group=2))],  # hybrid moves
        # Only the body changes (no view reads it): UPDATEs with the new value.
        [(30, {**doc(30), "body": "short"}), (3, {**doc(3), "body": "short"})],
        [(i, None) for i in range(0, 60, 5)],  # alpha docs leave: cold ones enter the search
        [(1, doc(1, group=3)), (2, None), (KEYS - 3, doc(KEYS - 3, title="alpha beta"))],
    ]


async def transcript(
    writer: Writer, watcher: InMemoryClient, viewer: InMemoryClient
) -> tuple[list[Any], list[Any]]:
    """Subscribe the watcher (query, search, hybrid) and the viewer (queries, seeing only
    `n` and `title`), then apply `steps`: what each heard."""
    heard_all: list[Any] = []
    viewed: list[Any] = []
    for query_id, query in {
        "v-first": Query(sort={"n": "asc"}, limit=10),
        "v-probe": Query(where={"group": 3}),  # a field it may not see: matches nothing
    }.items():
        await viewer.send(
            QuerySub(payload=QuerySubPayload(query_id=query_id, map_name="docs", query=query))
        )
        viewed.append(plain((await viewer.receive_until(QueryResp, timeout=30))[0]))
    queries = {
        "q-where": Query(where={"group": 3}, sort={"n": "desc"}, limit=20),
        "q-range": Query(predicate=PredicateNode(op="gte", attribute="n", value=KEYS - 40)),
        "q-first": Query(sort={"n": "asc"}, limit=10),
        # Reads the title too: the view widens what it keeps of every row.
        "q-title": Query(
            predicate=PredicateNode(op="contains", attribute="title", value="alpha"),
            sort={"group": "desc"},
            limit=8,
        ),
    }
    for query_id, query in queries.items():
        await watcher.send(
            QuerySub(payload=QuerySubPayload(query_id=query_id, map_name="docs", query=query))
        )
        response, _ = await watcher.receive_until(QueryResp, timeout=30)
        heard_all.append(plain(response))
    await watcher.send(
        SearchSub(
            payload=SearchSubPayload(
                subscription_id="s-alpha",
                map_name="docs",
                query="alpha",
                options=SearchOptions(limit=15),
            )
        )
    )
    heard_all.append(plain((await watcher.receive_until(SearchResp, timeout=30))[0]))
    beta_in_two = PredicateNode(
        op="and",
        children=[
            PredicateNode(op="match", attribute="title", query="beta"),
            PredicateNode(op="eq", attribute="group", value=2),
        ],
    )
    await watcher.send(
        HybridQuerySubscribe(
            payload=HybridQuerySubscribePayload(
                subscription_id="h-beta",
                map_name="docs",
                predicate=beta_in_two,
                sort={"_score": "desc", "n": "asc"},
                limit=12,
            )
        )
    )
    heard_all.append(plain((await watcher.receive_until(HybridQueryResp, timeout=30))[0]))
    for step in steps():
        await writer.write(step)
        heard_all.append(await heard(watcher))
        viewed.append(await heard(viewer))
    return heard_all, viewed


async def login_as(running: Any, role: str) -> InMemoryClient:
    """A client authenticated with `role` only."""
    server = running.server
    connection = InMemoryClient.connect(server, running.tg)
    client: InMemoryClient = await running.stack.enter_async_context(connection)
    assert isinstance(await client.receive(), AuthRequired)
    secret = server.config.auth.jwt_secret.reveal()
    token = jwt.encode({"sub": role.lower(), "roles": [role]}, secret, algorithm="HS256")
    await client.send(Auth(token=token))
    assert isinstance(await client.receive(), AuthAck)
    return client


def kinds(heard_all: list[Any]) -> set[str]:
    found: set[str] = set()
    for item in heard_all:
        for name, _ in item if isinstance(item, list) else [item]:
            found.add(name)
    return found


async def test_views_over_a_map_five_times_the_budget_answer_as_without_one(
    tmp_path: Path, kit: Any
) -> None:
    rows = [doc(i) for i in range(KEYS)]
    budget = sum(value_size(row) for row in rows) // 5
    fill = [(i, rows[i]) for i in range(KEYS)]

    async with kit.running(configured(kit.plain_config(tmp_path / "p"))) as p:
        writer = Writer(await p.login(), kit.T)
        for start in range(0, KEYS, 50):
            await writer.write(fill[start : start + 50])
        reference, viewed = await transcript(writer, await p.login(), await login_as(p, "VIEW"))
    assert {"QueryUpdate", "SearchUpdate", "HybridQueryDelta", "ServerBatchEvent"} <= kinds(
        reference
    )
    titled = reference[3][1]["payload"]["results"]  # q-title
    assert titled
    assert all("alpha" in row["value"]["title"] for row in titled)
    body_only = {
        (kind, m["payload"]["key"], m["payload"]["type"])
        for kind, m in reference[11]
        if kind in ("QueryUpdate", "HybridQueryDelta")
    }
    assert ("QueryUpdate", "k00003", "UPDATE") in body_only
    assert ("HybridQueryDelta", "k00030", "UPDATE") in body_only
    first_seen = viewed[0][1]["payload"]["results"]
    assert [row["value"] for row in first_seen[:2]] == [
        {"n": 0, "title": "alpha beta 0"},
        {"n": 1, "title": "gamma delta 1"},
    ]
    assert viewed[1][1]["payload"]["results"] == []

    config = configured(kit.tiered_config(tmp_path / "t", budget=budget))
    async with kit.running(config) as t:
        hot = t.server.maps.hot
        assert hot is not None
        writer = Writer(await t.login(), kit.T)
        for start in range(0, KEYS, 50):
            await writer.write(fill[start : start + 50])
        lww = t.server.maps.lww("docs")
        assert lww is not None
        assert len(lww.cold_keys()) > KEYS * 3 // 4

        hot.peak = hot.used  # from here on: the views
        loads = hot.loads
        watcher, viewer = await t.login(), await login_as(t, "VIEW")
        assert await transcript(writer, watcher, viewer) == (reference, viewed)

        assert hot.loads > loads  # cold rows were read to send them
        largest = max(value_size(row) for row in rows)
        margin = hot.peak - budget
        print(
            f"\nbudget {budget:,} B; peak counted {hot.peak:,} B "
            f"({hot.peak / budget:.2f}x, margin {margin:,} B = "
            f"{margin / largest:.1f} largest values); views keep {hot.views:,} B; "
            f"map {sum(value_size(r) for r in rows):,} B"
        )
        # Values and views together: within the budget plus one chunk of values being
        # loaded or written (a scan chunk, a write batch of 50).
        assert 0 < hot.views < budget
        assert hot.peak <= budget + SCAN_CHUNK * largest


async def test_windows_stay_exact_under_concurrent_writers(tmp_path: Path, kit: Any) -> None:
    """Writers racing each other (their requests interleave while cold rows load): a
    watcher's windows, kept from its responses and updates, end up as a fresh query
    answers them."""
    keys = 600
    rows = [doc(i) for i in range(keys)]
    budget = sum(value_size(row) for row in rows) // 5
    config = configured(kit.tiered_config(tmp_path, budget=budget))
    queries = {
        "top": Query(where={"group": 3}, sort={"n": "desc"}, limit=15),
        "first": Query(sort={"n": "asc"}, limit=10),
    }
    async with kit.running(config) as t:
        filler = Writer(await t.login(), kit.T)
        # Both ends of the map first: the rows that move into the windows are cold.
        order = [*range(keys - 100, keys), *range(100), *range(100, keys - 100)]
        for start in range(0, keys, 50):
            await filler.write([(i, rows[i]) for i in order[start : start + 50]])
        watcher = await t.login()
        windows: dict[str, dict[str, Any]] = {}
        for query_id, query in queries.items():
            payload = QuerySubPayload(query_id=query_id, map_name="docs", query=query)
            await watcher.send(QuerySub(payload=payload))
            response, _ = await watcher.receive_until(QueryResp, timeout=30)
            windows[query_id] = {row.key: row.value for row in response.payload.results}

        async def churn(n: int) -> None:
            writer = Writer(await t.login(), kit.T + 1000 * (n + 1))
            rng = random.Random(n)
            for _ in range(8):
                batch: list[tuple[int, dict[str, Any] | None]] = []
                for _ in range(6):
                    i = rng.choice([*range(30), *range(keys - 60, keys + 20)])
                    batch.append(
                        (i, None if rng.random() < 0.4 else doc(i, group=rng.choice([3, 4])))
                    )
                await writer.write(batch)

        hot = t.server.maps.hot
        assert hot is not None
        loads = hot.loads
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(churn, n)
        assert hot.loads > loads  # rows moving into the windows were cold
        heard_updates = [m for m in await watcher_messages(watcher) if isinstance(m, QueryUpdate)]
        assert len(heard_updates) > 10
        for message in heard_updates:
            if isinstance(message, QueryUpdate):
                change = message.payload
                if change.type == "REMOVE":
                    windows[change.query_id].pop(change.key, None)
                else:
                    windows[change.query_id][change.key] = change.value
        fresh = await t.login()
        for query_id, query in queries.items():
            payload = QuerySubPayload(query_id=query_id, map_name="docs", query=query)
            await fresh.send(QuerySub(payload=payload))
            response, _ = await fresh.receive_until(QueryResp, timeout=30)
            assert windows[query_id] == {row.key: row.value for row in response.payload.results}


async def watcher_messages(watcher: InMemoryClient) -> list[Any]:
    await watcher.send(Ping(timestamp=0))
    _, before = await watcher.receive_until(Pong, timeout=30)
    return before


async def test_an_or_map_query_over_cold_keys_answers_as_without_a_budget(
    tmp_path: Path, kit: Any
) -> None:
    """OR-Map rows (arrays of live values) go cold too: a limited live query over them
    hears the same updates, with the rows that move up loaded first."""
    keys = 300
    body = "lorem ipsum dolor " * 100

    def record(i: int) -> ORMapRecord:
        stamp = Timestamp(kit.T + i, 0, "writer")
        return ORMapRecord({"n": i, "body": body}, stamp, str(stamp))

    adds = [ClientOp(map_name="tags", key=f"t{i:04}", or_record=record(i)) for i in range(keys)]
    removals = [
        ClientOp(map_name="tags", key=f"t{i:04}", op_type="OR_REMOVE", or_tag=str(record(i).tag))
        for i in range(3)
    ]
    budget = sum(value_size([{"n": i, "body": body}]) for i in range(keys)) // 5

    async def run(config: ServerConfig) -> list[Any]:
        async with kit.running(config) as running:
            writer = await running.login()
            for start in range(0, keys, 50):
                batch = OpBatchPayload(ops=adds[start : start + 50], write_concern="PERSISTED")
                await writer.send(OpBatch(payload=batch))
                await writer.receive_until(OpAck, timeout=30)
            ormap = running.server.maps.ormap("tags")
            assert ormap is not None
            if running.server.maps.hot is not None:
                assert len(ormap.cold_keys()) > keys // 2
            watcher = await running.login()
            query = Query(sort={"_key": "asc"}, limit=5)
            payload = QuerySubPayload(query_id="q", map_name="tags", query=query)
            await watcher.send(QuerySub(payload=payload))
            heard_all = [plain((await watcher.receive_until(QueryResp, timeout=30))[0])]
            hot = running.server.maps.hot
            loads = 0 if hot is None else hot.loads
            for removal in removals:
                await writer.send(OpBatch(payload=OpBatchPayload(ops=[removal])))
                await writer.receive_until(OpAck, timeout=30)
                heard_all.append(await heard(watcher))
            if hot is not None:
                assert hot.loads >= loads + 3  # the rows that moved up were cold
            return heard_all

    reference = await run(kit.plain_config(tmp_path / "p"))
    entered = [
        m["payload"]["key"]
        for step in reference[1:]
        for kind, m in step
        if kind == "QueryUpdate" and m["payload"]["type"] == "ENTER"
    ]
    assert entered == ["t0005", "t0006", "t0007"]
    assert await run(kit.tiered_config(tmp_path / "t", budget=budget)) == reference


async def test_a_view_holds_what_its_query_reads_not_the_rows(tmp_path: Path, kit: Any) -> None:
    """Measured with tracemalloc: what the view code keeps after a live query subscribed
    over a map 5x the budget is about what the budget counts for it, far less than the
    rows (which it would hold whole without projections)."""
    rows = [doc(i) for i in range(KEYS)]
    map_bytes = sum(value_size(row) for row in rows)
    config = configured(kit.tiered_config(tmp_path, budget=map_bytes // 5))
    async with kit.running(config) as t:
        writer = Writer(await t.login(), kit.T)
        for start in range(0, KEYS, 50):
            await writer.write([(i, rows[i]) for i in range(start, start + 50)])
        hot = t.server.maps.hot
        assert hot is not None
        watcher = await t.login()
        query = Query(where={"group": 3}, sort={"n": "desc"})
        payload = QuerySubPayload(query_id="q", map_name="docs", query=query)
        gc.collect()
        tracemalloc.start()
        try:
            await watcher.send(QuerySub(payload=payload))
            response, _ = await watcher.receive_until(QueryResp, timeout=30)
            assert len(response.payload.results) == len(range(3, KEYS, 7))
            del response
            watcher.raw_frames.clear()
            gc.collect()
            snapshot = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        view_code = ("topgun/server/views.py", "topgun/server/live.py", "topgun/query/")
        view = sum(
            stat.size
            for stat in snapshot.statistics("filename")
            if any(part in stat.traceback[0].filename for part in view_code)
        )
        print(
            f"\nview over {KEYS:,} rows: {view:,} B allocated by the view code "
            f"({view / KEYS:.0f} B a row), {hot.views:,} B counted; the rows: {map_bytes:,} B"
        )
        assert 0 < hot.views < view * 2
        assert view < 2 * hot.views
        assert view < map_bytes // 8
        kept = t.server.live.rows("docs", ALL_FIELDS)
        assert len(kept) == KEYS
        assert all(set(row) == {"group", "n"} for _, row in kept.items())
