"""`POST /sync` over a real socket (PROTOCOL.md §9.1, §9.2; P-56, P-57, P-58)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from topgun.crdt.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    ServerBatchEvent,
    SyncResponse,
)
from topgun.server import Policy, StorageConfig
from topgun.server.config import HttpConfig, MapOptions

pytestmark = pytest.mark.anyio

DEADLINE = 10.0
BAD_QUERY = {"where": {"n": {"$bogus": 1}}}

NOW = int(time.time() * 1000)
MSGPACK = "application/x-msgpack"


def stamp(counter: int = 0, millis: int = NOW, node: str = "client-h") -> dict[str, Any]:
    return {"millis": millis, "counter": counter, "nodeId": node}


def put(key: str, value: Any, ts: dict[str, Any], map_name: str = "todos", **extra: Any) -> Any:
    return {"mapName": map_name, "key": key, "record": {"value": value, "timestamp": ts}, **extra}


class Http:
    """`POST /sync` against one live server with one token."""

    def __init__(self, client: httpx.AsyncClient, base: str, token: str) -> None:
        self.client = client
        self.base = base
        self.token = token

    async def raw(self, body: bytes, content_type: str, token: str | None = None) -> httpx.Response:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.post(self.base + "/sync", content=body, headers=headers)

    async def sync(self, body: dict[str, Any], *, as_json: bool = False) -> dict[str, Any]:
        """Send `body` (msgpack unless `as_json`); the 200 answer as plain data."""
        body = {"clientId": "http-test", "clientHlc": stamp(), **body}
        if as_json:
            response = await self.raw(json.dumps(body).encode(), "application/json", self.token)
        else:
            response = await self.raw(msgspec.msgpack.encode(body), MSGPACK, self.token)
        assert response.status_code == 200, response.text
        if as_json:
            assert response.headers["content-type"] == "application/json"
            return response.json()  # type: ignore[no-any-return]
        assert response.headers["content-type"] == MSGPACK
        decoded: dict[str, Any] = msgspec.msgpack.decode(response.content)
        return decoded


@contextlib.asynccontextmanager
async def open_http(live: Any, token: str) -> AsyncIterator[Http]:
    """`POST /sync` to `live` with `token`."""
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        yield Http(client, live.http_url, token)


@pytest.fixture
async def http(live_server: Any, wire: Any) -> AsyncIterator[Http]:
    async with open_http(live_server, wire.mint()) as http:
        yield http


def delta_of(answer: dict[str, Any], map_name: str = "todos") -> dict[str, Any]:
    (delta,) = [d for d in answer["deltas"] if d["mapName"] == map_name]
    return delta


async def test_p56_missing_token_is_401_json(http: Http) -> None:
    """P-56: no bearer token → 401 with the spec's JSON error body."""
    response = await http.raw(b"{}", "application/json")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "Missing Authorization header"}


@pytest.mark.parametrize("token", ["not-a-jwt", "Basic abc"])
async def test_bad_token_is_401_json(http: Http, token: str, wire: Any) -> None:
    if token.startswith("Basic"):
        response = await http.client.post(
            http.base + "/sync", content=b"{}", headers={"Authorization": token}
        )
    else:
        response = await http.raw(b"{}", "application/json", token)
    assert response.status_code == 401
    assert response.json()["error"].startswith("Authentication failed")


async def test_expired_token_is_401(http: Http, wire: Any) -> None:
    response = await http.raw(b"{}", "application/json", wire.mint(expires_in=-60))
    assert response.status_code == 401
    assert "expired" in response.json()["error"].lower()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xc1\xc1", MSGPACK),
        (json.dumps({"clientId": "c"}).encode(), "application/json"),  # clientHlc missing
        (json.dumps({"clientId": 1, "clientHlc": stamp()}).encode(), "application/json"),
        (msgspec.msgpack.encode({"clientId": "c", "clientHlc": "yesterday"}), MSGPACK),
        (
            json.dumps({"clientId": "c", "clientHlc": stamp(), "syncMaps": "todos"}).encode(),
            "application/json",
        ),
    ],
)
async def test_p56_invalid_body_is_400_json_and_changes_nothing(
    http: Http, live_server: Any, body: bytes, content_type: str
) -> None:
    """P-56: an invalid body → 400 `{error: "Invalid request body", details}`."""
    response = await http.raw(body, content_type, http.token)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["error"] == "Invalid request body"
    assert answer["details"]
    assert live_server.server.maps.names() == []


async def test_oversized_body_is_413_json(start_server: Any, wire: Any) -> None:
    async with (
        start_server(http=HttpConfig(max_body_bytes=1024)) as live,
        open_http(live, wire.mint()) as http,
    ):
        big = {
            "clientId": "c",
            "clientHlc": stamp(),
            "operations": [put("k", "x" * 4096, stamp())],
        }
        response = await http.raw(json.dumps(big).encode(), "application/json", http.token)
        assert response.status_code == 413
        assert response.json()["error"] == "Request body too large"
        assert live.server.maps.names() == []


async def test_p57_operations_are_acked_per_op_and_reach_websocket_subscribers(
    http: Http, live_server: Any
) -> None:
    """P-57: each op gets a result; a WebSocket subscriber of the map gets the events."""
    subscriber = await live_server.client()
    await subscriber.send(QuerySub(payload=QuerySubPayload("q", "todos", Query())))
    await subscriber.expect(QueryResp)
    answer = await http.sync(
        {
            "operations": [
                put("a", {"title": "one"}, stamp(1), id="1"),
                put("b", {"title": "two"}, stamp(2), id="2"),
                {"mapName": "todos", "key": "bad", "id": "3", "record": {"value": 1}},
            ],
            "writeConcern": "PERSISTED",
        }
    )
    ack = answer["ack"]
    assert ack["lastId"] == "3"
    assert [r["success"] for r in ack["results"]] == [True, True, False]
    assert [r["opId"] for r in ack["results"]] == ["1", "2", "3"]
    assert ack["achievedLevel"] == "FIRE_AND_FORGET"  # the lowest level: the failed op
    assert answer["serverHlc"]["nodeId"] == "test-server"
    event = await subscriber.expect_past_updates(ServerBatchEvent)
    assert [(e.event_type, e.key) for e in event.payload.events] == [("PUT", "a"), ("PUT", "b")]
    await subscriber.aclose()


async def test_persisted_ops_are_acked_persisted(http: Http) -> None:
    answer = await http.sync(
        {"operations": [put("a", 1, stamp(1), id="1")], "writeConcern": "PERSISTED"}
    )
    assert answer["ack"]["achievedLevel"] == "PERSISTED"
    assert answer["ack"]["results"][0]["achievedLevel"] == "PERSISTED"


async def test_operations_without_write_permission_are_rejected_per_op(
    start_server: Any, wire: Any
) -> None:
    policies = (Policy(role="USER", map_name_pattern="todos", actions=("READ",)),)
    async with (
        start_server(policies=policies) as live,
        open_http(live, wire.mint(roles=["USER"])) as http,
    ):
        answer = await http.sync({"operations": [put("a", 1, stamp(1), id="1")]})
        (result,) = answer["ack"]["results"]
        assert (result["success"], result["error"]) == (False, "Access denied")
        assert live.server.maps.lww("todos") is None or not live.server.maps.lww("todos").items()


async def test_delta_pages_by_sequence_with_has_more(http: Http) -> None:
    ops = [put(f"k{i:02}", i, stamp(i), id=str(i)) for i in range(25)]
    await http.sync({"operations": ops})
    seen: dict[str, int] = {}
    since = 0
    pages = 0
    while True:
        answer = await http.sync(
            {"syncMaps": [{"mapName": "todos", "sinceSeq": since, "limit": 10}]}
        )
        delta = delta_of(answer)
        pages += 1
        assert delta["reset"] is False
        seqs = [r["seq"] for r in delta["records"]]
        assert seqs == sorted(seqs)
        assert all(s > since for s in seqs)
        for record in delta["records"]:
            assert record["eventType"] == "PUT"
            seen[record["key"]] = record["record"]["value"]
        since = delta["seq"]
        if not delta["hasMore"]:
            break
    assert pages == 3
    assert seen == {f"k{i:02}": i for i in range(25)}
    assert since == 25
    again = delta_of(await http.sync({"syncMaps": [{"mapName": "todos", "sinceSeq": since}]}))
    assert (again["records"], again["seq"], again["hasMore"]) == ([], 25, False)


async def test_p58_late_write_with_old_timestamp_reaches_the_next_poll(http: Http) -> None:
    """P-58: an offline client's write, stamped a day ago but uploaded after another
    client's poll, is in that client's next delta — by `sinceSeq` and by
    `lastSyncTimestamp` (the TS client's cursor)."""
    await http.sync({"operations": [put("fresh", 1, stamp(0))]})
    first = delta_of(
        await http.sync({"syncMaps": [{"mapName": "todos", "lastSyncTimestamp": stamp(0, 0, "")}]})
    )
    assert [r["key"] for r in first["records"]] == ["fresh"]
    cursor_seq, cursor_ts = first["seq"], first["serverSyncTimestamp"]

    day_ago = NOW - 24 * 3600 * 1000
    await http.sync({"operations": [put("late", "offline", stamp(0, day_ago, "offline-client"))]})

    by_seq = delta_of(await http.sync({"syncMaps": [{"mapName": "todos", "sinceSeq": cursor_seq}]}))
    by_ts = delta_of(
        await http.sync({"syncMaps": [{"mapName": "todos", "lastSyncTimestamp": cursor_ts}]})
    )
    for delta in (by_seq, by_ts):
        assert [(r["key"], r["record"]["value"]) for r in delta["records"]] == [("late", "offline")]
        assert delta["records"][0]["record"]["timestamp"]["millis"] == day_ago


async def test_tombstones_are_delivered_as_remove(http: Http) -> None:
    await http.sync({"operations": [put("a", 1, stamp(1))]})
    seq = delta_of(await http.sync({"syncMaps": [{"mapName": "todos"}]}))["seq"]
    await http.sync({"operations": [put("a", None, stamp(2))]})
    delta = delta_of(await http.sync({"syncMaps": [{"mapName": "todos", "sinceSeq": seq}]}))
    ((record),) = delta["records"]
    assert (record["key"], record["eventType"], record["record"]["value"]) == ("a", "REMOVE", None)


async def test_since_beyond_the_current_sequence_resets_with_the_full_state(http: Http) -> None:
    await http.sync({"operations": [put("a", 1, stamp(1)), put("b", 2, stamp(2))]})
    delta = delta_of(await http.sync({"syncMaps": [{"mapName": "todos", "sinceSeq": 999}]}))
    assert delta["reset"] is True
    assert sorted(r["key"] for r in delta["records"]) == ["a", "b"]
    assert delta["seq"] == 2


async def test_item_failures_go_to_errors_in_a_200(start_server: Any, wire: Any) -> None:
    policies = (Policy(role="USER", map_name_pattern="todos", actions=("READ", "PUT")),)
    async with start_server(policies=policies) as live:
        admin = await live.client()
        tag = Timestamp(NOW, 0, "c")
        await admin.send(
            OpBatch(
                payload=OpBatchPayload(
                    ops=[
                        ClientOp(
                            map_name="tags", key="t", or_record=ORMapRecord("x", tag, str(tag))
                        ),
                        ClientOp(map_name="secret", key="s", record=LWWRecord(1, tag)),
                    ]
                )
            )
        )
        await admin.expect_past_updates(OpAck)
        async with open_http(live, wire.mint(roles=["USER"])) as http:
            answer = await http.sync(
                {
                    "syncMaps": [{"mapName": "todos"}, {"mapName": "secret"}],
                    "queries": [{"queryId": "q", "mapName": "todos", "query": BAD_QUERY}],
                    "searches": [{"searchId": "s", "mapName": "todos", "query": "x"}],
                }
            )
        assert [d["mapName"] for d in answer["deltas"]] == ["todos"]
        errors = {(e["code"], e.get("context")) for e in answer["errors"]}
        assert (403, "secret") in errors
        assert (400, "q") in errors
        assert (400, "s") in errors
        assert answer["queryResults"] == []
        async with open_http(live, wire.mint()) as admin_http:
            answer = await admin_http.sync({"syncMaps": [{"mapName": "tags"}]})
        assert answer["deltas"] == []
        assert answer["errors"] == [
            {"code": 400, "message": "HTTP sync only supports LWW maps", "context": "tags"}
        ]
        await admin.aclose()


async def test_deltas_are_filtered_by_field_level_security(start_server: Any, wire: Any) -> None:
    policies = (
        Policy(role="USER", map_name_pattern="people", actions=("READ",), allowed_fields=("name",)),
    )
    async with start_server(policies=policies) as live:
        async with open_http(live, wire.mint()) as admin:
            await admin.sync(
                {"operations": [put("p1", {"name": "Ann", "salary": 9}, stamp(1), "people")]}
            )
        async with open_http(live, wire.mint(roles=["USER"])) as user:
            delta = delta_of(await user.sync({"syncMaps": [{"mapName": "people"}]}), "people")
        assert [r["record"]["value"] for r in delta["records"]] == [{"name": "Ann"}]


async def test_one_shot_queries_and_searches(start_server: Any, wire: Any) -> None:
    maps = {"notes": MapOptions(search_fields=("body",))}
    async with start_server(maps=maps) as live, open_http(live, wire.mint()) as http:
        await http.sync(
            {
                "operations": [
                    put("n1", {"body": "red apples", "n": 1}, stamp(1), "notes"),
                    put("n2", {"body": "green pears", "n": 2}, stamp(2), "notes"),
                    put("n3", {"body": "red cherries", "n": 3}, stamp(3), "notes"),
                ]
            }
        )
        answer = await http.sync(
            {
                "queries": [
                    {
                        "queryId": "big",
                        "mapName": "notes",
                        "query": {"where": {"n": {"$gte": 2}}, "sort": {"n": "desc"}},
                    },
                    {"queryId": "legacy", "mapName": "notes", "filter": {"n": 1}},
                ],
                "searches": [{"searchId": "s", "mapName": "notes", "query": "red"}],
            },
            as_json=True,
        )
        big, legacy = answer["queryResults"]
        assert [r["key"] for r in big["results"]] == ["n3", "n2"]
        assert [r["key"] for r in legacy["results"]] == ["n1"]
        (search,) = answer["searchResults"]
        assert sorted(r["key"] for r in search["results"]) == ["n1", "n3"]
        assert search["totalCount"] == 2
        assert "errors" not in answer


async def test_response_decodes_as_the_protocol_body(http: Http, live_server: Any) -> None:
    """The msgpack answer is a valid `SyncResponse` (what TS clients decode)."""
    await http.sync({"operations": [put("a", 1, stamp(1), id="1")]})
    body = {"clientId": "c", "clientHlc": stamp(), "syncMaps": [{"mapName": "todos"}]}
    response = await http.raw(msgspec.msgpack.encode(body), MSGPACK, http.token)
    decoded = live_server.server.codec.decode_msgpack(response.content, SyncResponse)
    assert decoded.deltas is not None
    assert decoded.deltas[0].records[0].key == "a"


async def test_sequences_continue_after_restart(
    tmp_path: Any, start_server: Any, wire: Any
) -> None:
    """Cursors survive a restart on SQLite: a poller's `sinceSeq` from before the restart
    gets exactly the changes made after it, and sequences are never reused."""
    storage = StorageConfig(backend="sqlite")
    async with start_server(storage=storage) as live, open_http(live, wire.mint()) as http:
        await http.sync({"operations": [put(f"k{i}", i, stamp(i)) for i in range(5)]})
        cursor = delta_of(await http.sync({"syncMaps": [{"mapName": "todos"}]}))["seq"]
    async with start_server(storage=storage) as live, open_http(live, wire.mint()) as http:
        unchanged = delta_of(
            await http.sync({"syncMaps": [{"mapName": "todos", "sinceSeq": cursor}]})
        )
        assert unchanged["records"] == []
        assert unchanged["reset"] is False
        await http.sync({"operations": [put("new", 1, stamp(9))]})
        delta = delta_of(await http.sync({"syncMaps": [{"mapName": "todos", "sinceSeq": cursor}]}))
    assert [r["key"] for r in delta["records"]] == ["new"]
    assert delta["records"][0]["seq"] > cursor


async def test_websocket_writes_are_sequenced_too(http: Http, live_server: Any) -> None:
    writer = await live_server.client()
    await writer.send(
        OpBatch(
            payload=OpBatchPayload(
                ops=[
                    ClientOp(
                        map_name="todos", key="ws", record=LWWRecord(1, Timestamp(NOW, 0, "w"))
                    )
                ]
            )
        )
    )
    await writer.expect(OpAck)
    delta = delta_of(await http.sync({"syncMaps": [{"mapName": "todos"}]}))
    assert [r["key"] for r in delta["records"]] == ["ws"]
    await writer.aclose()
