"""PROTOCOL.md §11 P-1..P-18 over real sockets: handshake, auth, liveness, framing, encoding.

Each test names the checklist item it covers. Timeouts are configured short and waited for
with receive deadlines, never sleeps.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from topgun.crdt.records import LWWRecord, Timestamp
from topgun.protocol import (
    Auth,
    AuthAck,
    AuthFail,
    AuthRequired,
    ClientOp,
    Error,
    OpAck,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    Query,
    QueryResp,
    QuerySub,
    QuerySubPayload,
    ServerEvent,
    SyncInit,
    SyncRespRoot,
)
from topgun.server import AuthConfig, Policy, Secret
from topgun.server import CoalescingConfig as Coalescing

pytestmark = pytest.mark.anyio

GOLDEN = "core/tests/protocol/golden-frames"


def now_ms() -> int:
    return int(time.time() * 1000)


def put(key: str, value: Any, *, op_id: str | None = None, node: str = "client-a") -> ClientOp:
    stamp = Timestamp(now_ms(), 0, node)
    return ClientOp(
        map_name="todos", key=key, id=op_id, op_type="PUT", record=LWWRecord(value, stamp)
    )


def raw_messages(frame: bytes) -> list[dict[str, Any]]:
    """The plain maps a server frame carries: itself, or a BATCH's inner messages parsed
    by the §1.3 layout (u32le count, then u32le length + msgpack per message)."""
    raw = msgspec.msgpack.decode(frame)
    if raw["type"] != "BATCH":
        return [raw]
    data = raw["data"]
    (count,) = struct.unpack_from("<I", data, 0)
    assert count == raw["count"]
    inner, offset = [], 4
    for _ in range(count):
        (length,) = struct.unpack_from("<I", data, offset)
        inner.append(msgspec.msgpack.decode(data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    assert offset == len(data), "bytes after the last inner message"
    return inner


def golden(name: str) -> bytes:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return (root / GOLDEN / name).read_bytes()


async def test_p1_auth_required_is_the_first_frame(live_server: Any) -> None:
    """P-1."""
    client = await live_server.connect()
    frame = await client.recv_frame()
    assert msgspec.msgpack.decode(frame) == {"type": "AUTH_REQUIRED"}
    await client.aclose()


async def test_p2_valid_hs256_token_is_acknowledged(live_server: Any, wire: Any) -> None:
    """P-2 (success)."""
    client = await live_server.connect()
    await client.expect(AuthRequired)
    await client.send(Auth(token=wire.mint(roles=None)))
    await client.expect(AuthAck)
    await client.aclose()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not-a-jwt", "jwt malformed"),
        ("expired", "jwt expired"),
        ("other-secret", "invalid signature"),
    ],
)
async def test_p2_bad_tokens_get_auth_fail_then_4001(
    live_server: Any, wire: Any, token: str, reason: str
) -> None:
    """P-2 (failure): AUTH_FAIL with the reason, then close 4001."""
    tokens = {
        "not-a-jwt": "not-a-jwt",
        "expired": wire.mint(expires_in=-10),
        "other-secret": wire.mint(secret="another-secret-" + "y" * 32),
    }
    client = await live_server.connect()
    await client.expect(AuthRequired)
    await client.send(Auth(token=tokens[token]))
    fail = await client.expect(AuthFail)
    assert fail.error == reason
    assert fail.code == 401
    assert (await client.closed())[0] == 4001


async def test_p2_a_captured_ts_client_auth_frame_with_a_foreign_token(live_server: Any) -> None:
    """P-2 with real client bytes: golden frame 0002 (signed by another server's secret)."""
    client = await live_server.connect()
    await client.expect(AuthRequired)
    await client.send(golden("0002-c2s-AUTH.msgpack"))
    assert (await client.expect(AuthFail)).error == "invalid signature"
    assert (await client.closed())[0] == 4001


async def test_p3_rs256_key_accepts_rs256_and_refuses_hs256_and_none(
    start_server: Any,
) -> None:
    """P-3."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"sub": "alice", "exp": int(time.time()) + 60}
    good = jwt.encode(claims, private_pem, algorithm="RS256")
    confused = jwt.encode(claims, "x" * 64, algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")
    async with start_server(auth=AuthConfig(jwt_public_key=public_pem.decode())) as live:
        client = await live.connect()
        await client.expect(AuthRequired)
        await client.send(Auth(token=good))
        await client.expect(AuthAck)
        await client.aclose()
        for token in (confused, unsigned):
            client = await live.connect()
            await client.expect(AuthRequired)
            await client.send(Auth(token=token))
            assert (await client.expect(AuthFail)).error == "invalid algorithm"
            assert (await client.closed())[0] == 4001


async def test_p4_no_roles_means_user_and_user_id_defaults_to_sub(
    start_server: Any, wire: Any
) -> None:
    """P-4: a token without `roles` gets USER's policies; `{userId}` is the `sub`."""
    policies = (Policy("USER", "todos-{userId}", ("ALL",)),)
    async with start_server(policies=policies) as live:
        client = await live.client(wire.mint(sub="alice", roles=None))
        ops = [
            ClientOp(
                map_name=name,
                key="k",
                id=str(i),
                op_type="PUT",
                record=LWWRecord(1, Timestamp(now_ms(), i, "client-a")),
            )
            for i, name in enumerate(["todos-alice", "todos-bob"])
        ]
        await client.send(OpBatch(payload=OpBatchPayload(ops=ops)))
        ack = await skip_rejections(client)
        assert [(r.op_id, r.success, r.error) for r in ack.payload.results] == [
            ("0", True, None),
            ("1", False, "Access denied"),
        ]
        await client.aclose()


async def skip_rejections(client: Any) -> OpAck:
    """The next OP_ACK, skipping the OP_REJECTED that precede it (they are urgent)."""
    while True:
        message = await client.recv()
        if isinstance(message, OpAck):
            return message


@pytest.mark.parametrize(
    "message",
    [
        {"type": "OP_BATCH", "payload": {"ops": []}},
        {"type": "QUERY_SUB", "payload": {"queryId": "q", "mapName": "m", "query": {}}},
        {"type": "SYNC_INIT", "mapName": "m"},
        {"type": "NO_SUCH_TYPE"},
    ],
    ids=["OP_BATCH", "QUERY_SUB", "SYNC_INIT", "unknown"],
)
async def test_p5_anything_but_auth_or_ping_before_auth_closes_4001(
    live_server: Any, message: dict[str, Any]
) -> None:
    """P-5."""
    client = await live_server.connect()
    await client.expect(AuthRequired)
    await client.send(message)
    assert (await client.closed())[0] == 4001


async def test_p6_ping_gets_pong_before_and_after_auth_without_timestamp(
    live_server: Any, wire: Any
) -> None:
    """P-6 (and P-14: `serverTime` is an epoch-ms integer, so a float64 on the wire)."""
    client = await live_server.connect()
    await client.expect(AuthRequired)
    for step in ("before", "after"):
        await client.send(Ping(timestamp=1_795_657_335_435.0))
        frame = await client.recv_frame()
        raw = msgspec.msgpack.decode(frame)
        assert set(raw) == {"type", "serverTime", "pingTimestamp"}, step
        assert raw["pingTimestamp"] == 1_795_657_335_435.0
        assert abs(raw["serverTime"] - now_ms()) < 60_000
        assert b"\xaaserverTime\xcb" in frame  # J3: never a uint64
        if step == "before":
            await client.send(Auth(token=wire.mint()))
            await client.expect(AuthAck)
    await client.aclose()


async def test_p7_unauthenticated_socket_closes_4001_after_auth_timeout(
    start_server: Any,
) -> None:
    """P-7: a PING does not extend the timeout."""
    auth = AuthConfig(jwt_secret=Secret("s" * 32), auth_timeout_ms=600)
    async with start_server(auth=auth) as live:
        client = await live.connect()
        await client.expect(AuthRequired)
        await client.send(Ping(timestamp=1.0))
        await client.expect(Pong)
        assert await client.closed() == (4001, "Authentication timeout")


async def test_p8_silent_authenticated_socket_closes_4002(start_server: Any) -> None:
    """P-8."""
    async with start_server(heartbeat_timeout_ms=600) as live:
        client = await live.client()
        assert (await client.closed())[0] == 4002


@pytest.mark.parametrize("authenticated", [False, True])
async def test_p9_undecodable_binary_frame_closes_1002(
    live_server: Any, authenticated: bool
) -> None:
    """P-9: neither msgpack nor JSON."""
    client = await live_server.client() if authenticated else await live_server.connect()
    if not authenticated:
        await client.expect(AuthRequired)
    await client.send(b"\xc1\xff not json either")
    assert (await client.closed())[0] == 1002


async def test_p10_json_text_frames_are_accepted(live_server: Any, wire: Any) -> None:
    """P-10: AUTH, PING, CLIENT_OP, OP_BATCH, QUERY_SUB as JSON text frames."""
    client = await live_server.connect()
    await client.expect(AuthRequired)
    record = {
        "value": {"title": "a"},
        "timestamp": {"millis": now_ms(), "counter": 0, "nodeId": "c"},
    }
    op = {"id": "1", "mapName": "todos", "key": "t1", "opType": "PUT", "record": record}
    exchanges = [
        ({"type": "AUTH", "token": wire.mint()}, AuthAck),
        ({"type": "PING", "timestamp": 5}, Pong),
        ({"type": "CLIENT_OP", "payload": op}, OpAck),
        ({"type": "OP_BATCH", "payload": {"ops": [{**op, "id": "2"}]}}, OpAck),
        (
            {"type": "QUERY_SUB", "payload": {"queryId": "q1", "mapName": "todos", "query": {}}},
            QueryResp,
        ),
    ]
    for message, reply in exchanges:
        await client.send(json.dumps(message))
        await client.expect(reply)
    await client.aclose()


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"type": "NO_SUCH_TYPE"}, "Unsupported message type"),
        ({"type": "PONG", "serverTime": 1, "pingTimestamp": 1}, "Unsupported message type"),
        ({"type": "OP_BATCH", "payload": "not a map"}, "Invalid message format"),
        ({"type": "SYNC_INIT", "mapName": 42}, "Invalid message format"),
        ({"type": "PING"}, "Invalid message format"),
        ({"no": "type"}, "Invalid message format"),
    ],
)
async def test_p11_invalid_or_unknown_after_auth_gets_error_400_and_stays_open(
    live_server: Any, message: dict[str, Any], text: str
) -> None:
    """P-11."""
    client = await live_server.client()
    await client.send(message)
    error = await client.expect(Error)
    assert (error.payload.code, error.payload.message) == (400, text)
    await client.send(Ping(timestamp=3.0))
    await client.expect(Pong)
    await client.aclose()


async def test_p12_p13_a_captured_ts_op_batch_with_ext0_and_float_millis(
    live_server: Any,
) -> None:
    """P-12, P-13: golden frame 0008 (msgpackr output: ext-0 `undefined`, float64 millis)
    is applied; the stored timestamps are integers, so the Merkle root is the one of the
    same records with integer millis."""
    from topgun.crdt.hlc import HLC
    from topgun.crdt.lww import LWWMap
    from topgun.protocol import decode_client_frame

    frame = golden("0008-c2s-OP_BATCH.msgpack")
    assert b"\xd4\x00\x00" in frame
    assert b"\xcb" in frame
    batch = decode_client_frame(frame)
    assert isinstance(batch, OpBatch)
    client = await live_server.client()
    await client.send(frame)
    ack = await client.expect(OpAck)
    assert all(result.success for result in ack.payload.results)
    expected: dict[str, LWWMap] = {}
    for op in batch.payload.ops:
        assert isinstance(op, ClientOp)
        assert op.record is not None
        stamp = op.record.timestamp
        assert type(stamp.millis) is int
        lww = expected.setdefault(op.map_name, LWWMap(HLC("check", clock=lambda: 0)))
        lww.merge(op.key, op.record)
    for name, lww in expected.items():
        await client.send(SyncInit(map_name=name))
        root = await client.expect(SyncRespRoot)
        assert root.payload.root_hash == lww.merkle.root_hash != 0
    await client.aclose()


async def test_p15_top_level_timestamps_are_hlc_maps(live_server: Any) -> None:
    """P-15: SERVER_EVENT's top-level `timestamp` is `{millis, counter, nodeId}`."""
    watcher = await live_server.client()
    await watcher.send(QuerySub(payload=QuerySubPayload("q", "todos", Query())))
    await watcher.expect(QueryResp)
    writer = await live_server.client()
    await writer.send(OpBatch(payload=OpBatchPayload(ops=[put("k", 1, op_id="1")])))
    await writer.expect(OpAck)
    event = await watcher.expect(ServerEvent)
    raw = [m for m in raw_messages(watcher.frames[-1]) if m["type"] == "SERVER_EVENT"]
    stamp = raw[-1]["timestamp"]
    assert set(stamp) == {"millis", "counter", "nodeId"}
    assert stamp["nodeId"] == event.timestamp.node_id == "test-server"
    for client in (watcher, writer):
        await client.aclose()


async def test_p16_p17_p18_batch_layout_unwrapped_single_and_order_with_urgent(
    start_server: Any,
) -> None:
    """P-16: two queued messages leave as one BATCH (u32le count, then u32le length +
    msgpack each); P-17: a single one leaves unwrapped, BATCH is never nested; P-18: an
    urgent PONG queued after them arrives after them. The coalescing delay is long here so
    that queueing is certain, not a race."""
    async with start_server(coalescing=Coalescing(max_delay_ms=300)) as live:
        client = await live.client()
        await client.send(QuerySub(payload=QuerySubPayload("q1", "a", Query())))
        await client.send(QuerySub(payload=QuerySubPayload("q2", "b", Query())))
        await client.send(Ping(timestamp=7.0))
        batch_frame = await client.recv_frame()
        assert msgspec.msgpack.decode(batch_frame)["type"] == "BATCH"
        inner = raw_messages(batch_frame)
        assert [(m["type"], m["payload"]["queryId"]) for m in inner] == [
            ("QUERY_RESP", "q1"),
            ("QUERY_RESP", "q2"),
        ]
        pong = msgspec.msgpack.decode(await client.recv_frame())
        assert pong["type"] == "PONG"

        await client.send(QuerySub(payload=QuerySubPayload("q3", "c", Query())))
        single = msgspec.msgpack.decode(await client.recv_frame())
        assert (single["type"], single["payload"]["queryId"]) == ("QUERY_RESP", "q3")
        await client.aclose()
