"""Bad input over real sockets: each gets its documented reply or close code, a client
connected at the same time keeps being served, and nothing stored changes."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

from topgun.crdt.records import LWWRecord, Timestamp
from topgun.protocol import (
    Auth,
    AuthFail,
    AuthRequired,
    ClientOp,
    Error,
    OpAck,
    OpBatch,
    OpBatchPayload,
    OpRejected,
    Ping,
    Pong,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    SyncInit,
    SyncRespRoot,
)
from topgun.server import Policy

pytestmark = pytest.mark.anyio

MAX_FRAME = 64 * 1024


def now_ms() -> int:
    return int(time.time() * 1000)


def put(key: str, value: Any, op_id: str) -> dict[str, Any]:
    """An op as a plain map, so tests can break any field of it."""
    stamp = {"millis": now_ms(), "counter": 0, "nodeId": "client-a"}
    return {
        "id": op_id,
        "mapName": "todos",
        "key": key,
        "opType": "PUT",
        "record": {"value": value, "timestamp": stamp},
    }


def op_batch(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"type": "OP_BATCH", "payload": {"ops": list(ops)}}


async def closes_with(client: Any, code: int) -> None:
    assert (await client.closed())[0] == code


async def undecodable(live: Any, wire: Any) -> None:
    client = await live.client()
    await client.send(b"\xc1\x00\x01garbage")
    await closes_with(client, 1002)


async def invalid_json_text(live: Any, wire: Any) -> None:
    client = await live.client()
    await client.send('{"type": "OP_BATCH", "payload": ')
    await closes_with(client, 1002)


async def lying_length(live: Any, wire: Any) -> None:
    client = await live.client()
    await client.send(b"\xdd\xff\xff\xff\xff")  # array32 claiming 4 G elements, none present
    await closes_with(client, 1002)


async def unknown_type(live: Any, wire: Any) -> None:
    client = await live.client()
    await client.send({"type": "DROP_ALL_TABLES", "payload": {}})
    error = await client.expect(Error)
    assert (error.payload.code, error.payload.message) == (400, "Unsupported message type")
    await still_open(client)


async def wrong_envelope_types(live: Any, wire: Any) -> None:
    client = await live.client()
    await client.send({"type": "OP_BATCH", "payload": {"ops": "not a list"}})
    error = await client.expect(Error)
    assert (error.payload.code, error.payload.message) == (400, "Invalid message format")
    await still_open(client)


async def wrong_op_field_types(live: Any, wire: Any) -> None:
    client = await live.client()
    bad = put("t1", "changed", "1")
    bad["record"]["timestamp"]["millis"] = "yesterday"
    await client.send(op_batch(bad, {**put("t2", "changed", "2"), "key": 7}))
    ack = await client.expect(OpAck)
    assert [(r.op_id, r.success) for r in ack.payload.results] == [("1", False), ("2", False)]
    assert all(r.error.startswith("Invalid op") for r in ack.payload.results)
    assert [(await client.expect(OpRejected)).payload.code for _ in range(2)] == [400, 400]
    await still_open(client)


async def too_deep(live: Any, wire: Any) -> None:
    client = await live.client()
    value: Any = "bottom"
    for _ in range(200):
        value = [value]
    await client.send(op_batch(put("t1", value, "1")))
    reply = await client.recv()
    if isinstance(reply, Error):
        assert reply.payload.code == 400
    else:
        assert isinstance(reply, OpAck)
        assert [r.success for r in reply.payload.results] == [False]
        assert (await client.expect(OpRejected)).payload.code == 400
    await still_open(client)


async def oversized(live: Any, wire: Any) -> None:
    client = await live.client()
    await client.send(msgspec.msgpack.encode(op_batch(put("t1", "x" * (2 * MAX_FRAME), "1"))))
    await closes_with(client, 1009)


async def op_before_auth(live: Any, wire: Any) -> None:
    client = await live.connect()
    await client.expect(AuthRequired)
    await client.send(op_batch(put("t1", "changed", "1")))
    await closes_with(client, 4001)


async def expired_token(live: Any, wire: Any) -> None:
    client = await live.connect()
    await client.expect(AuthRequired)
    await client.send(Auth(token=wire.mint(expires_in=-60)))
    assert (await client.expect(AuthFail)).error == "jwt expired"
    await closes_with(client, 4001)


async def forged_token(live: Any, wire: Any) -> None:
    client = await live.connect()
    await client.expect(AuthRequired)
    await client.send(Auth(token=wire.mint(roles=["ADMIN"], secret="forger-" + "f" * 40)))
    assert (await client.expect(AuthFail)).error == "invalid signature"
    await closes_with(client, 4001)


async def write_without_permission(live: Any, wire: Any) -> None:
    client = await live.client(wire.mint(sub="mallory", roles=["USER"]))
    await client.send(json.dumps(op_batch(put("t1", "changed", "1"), put("t9", "new", "2"))))
    ack = await client.expect(OpAck)
    assert [(r.success, r.error) for r in ack.payload.results] == [(False, "Access denied")] * 2
    assert [(await client.expect(OpRejected)).payload.code for _ in range(2)] == [403, 403]
    await still_open(client)


async def still_open(client: Any) -> None:
    await client.send(Ping(timestamp=9.0))
    assert (await client.expect(Pong)).ping_timestamp == 9.0


BAD_INPUTS: dict[str, Callable[[Any, Any], Awaitable[None]]] = {
    "undecodable frame": undecodable,
    "invalid JSON text frame": invalid_json_text,
    "msgpack length beyond the frame": lying_length,
    "unknown type": unknown_type,
    "wrong envelope field types": wrong_envelope_types,
    "wrong op field types": wrong_op_field_types,
    "value nested too deep": too_deep,
    "oversized frame": oversized,
    "op before auth": op_before_auth,
    "expired token": expired_token,
    "forged token": forged_token,
    "write without permission": write_without_permission,
}


async def snapshot(client: Any) -> tuple[int, dict[str, Any]]:
    """The root hash and rows of `todos`, as an ADMIN sees them."""
    await client.send(SyncInit(map_name="todos"))
    root = (await client.expect(SyncRespRoot)).payload.root_hash
    await client.send(
        QuerySub(payload=QuerySubPayload(f"s{time.monotonic_ns()}", "todos", Query()))
    )
    rows = {row.key: row.value for row in (await client.expect(QueryResp)).payload.results}
    return root, rows


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_gets_its_reply_and_harms_nobody(
    start_server: Any, wire: Any, case: str
) -> None:
    policies = (Policy("USER", "todos", ("READ",)),)
    async with start_server(policies=policies, max_frame_bytes=MAX_FRAME) as live:
        bystander = await live.client()
        await bystander.send(op_batch(put("t1", "original", "1")))
        await bystander.expect(OpAck)
        before = await snapshot(bystander)
        assert before[1] == {"t1": "original"}

        await BAD_INPUTS[case](live, wire)

        await still_open(bystander)
        assert await snapshot(bystander) == before
        stamp = Timestamp(now_ms() + 1, 0, "client-b")
        write = ClientOp(map_name="todos", key="t2", id="2", record=LWWRecord("later", stamp))
        await bystander.send(OpBatch(payload=OpBatchPayload(ops=[write])))
        assert (await bystander.expect_past_updates(OpAck)).payload.results[0].success
        await bystander.aclose()
