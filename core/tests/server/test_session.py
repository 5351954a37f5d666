"""Sessions (topgun/server/session.py): handshake, liveness, framing, outbound order and
pressure, driven through in-memory connections to a real `Server`.

PROTOCOL.md checklist items covered here: P-1, P-2, P-5, P-6, P-7, P-8, P-9, P-11, P-12,
P-13, P-15 (PONG), P-16, P-17, P-18.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from topgun.crdt import LWWRecord, Timestamp
from topgun.hooks import Rejected, hookimpl, make_plugin_manager
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
    TopicPub,
    TopicPubPayload,
    TopicSub,
    TopicSubPayload,
    unpack_batch,
)
from topgun.server import CoalescingConfig, ConnectionClosed, ConnectionLimits, InMemoryClient

pytestmark = pytest.mark.anyio

T = 1_800_000_000_000


async def test_auth_required_is_the_first_frame_p1(harness: Any) -> None:
    """P-1: AUTH_REQUIRED is the first frame after accept."""
    client = await harness.connect()
    first = await client.receive_frame()
    assert msgspec.msgpack.decode(first) == {"type": "AUTH_REQUIRED"}


async def test_valid_hs256_token_is_acknowledged_p2(harness: Any) -> None:
    """P-2: a valid HS256 token yields AUTH_ACK (urgent, its own frame)."""
    client = await harness.connect()
    assert isinstance(await client.receive(), AuthRequired)
    await client.send(Auth(token=harness.token()))
    assert isinstance(await client.receive(), AuthAck)
    session = next(iter(harness.server.sessions))
    assert session.principal is not None
    assert session.principal.user_id == "alice"


@pytest.mark.parametrize(
    "bad_token",
    [
        pytest.param(lambda t: t.hs256(secret="wrong-secret-" + "x" * 40), id="wrong signature"),
        pytest.param(lambda t: t.hs256(exp=t.now_s - 10), id="expired"),
        pytest.param(lambda t: "not-a-jwt", id="garbage"),
        pytest.param(lambda t: t.rs256(), id="wrong algorithm"),
    ],
)
async def test_a_bad_token_gets_auth_fail_then_4001_p2(harness: Any, bad_token: Any) -> None:
    """P-2: an invalid, expired or wrongly signed token: AUTH_FAIL, then close 4001."""
    client = await harness.connect()
    await client.receive()
    await client.send(Auth(token=bad_token(harness.tokens)))
    fail = await client.receive()
    assert isinstance(fail, AuthFail)
    assert fail.code == 401
    assert fail.error
    assert (await client.closed())[0] == 4001
    assert harness.server.metrics.auth_failures._value.get() == 1


async def test_an_auth_without_a_string_token_fails_and_closes(harness: Any) -> None:
    client = await harness.connect()
    await client.receive()
    await client.send({"type": "AUTH", "token": 42})
    assert isinstance(await client.receive(), AuthFail)
    assert (await client.closed())[0] == 4001


async def test_anything_but_auth_or_ping_before_auth_closes_4001_p5(harness: Any) -> None:
    """P-5: any other decodable message before authentication closes with 4001."""
    for message in (
        QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=Query())),
        {"type": "NO_SUCH_TYPE"},
        {"no": "type"},
    ):
        client = await harness.connect()
        await client.receive()
        await client.send(message)
        assert (await client.closed())[0] == 4001


async def test_ping_gets_pong_before_and_after_auth_without_timestamp_p6_p15(
    harness: Any,
) -> None:
    """P-6, P-15: PONG{serverTime, pingTimestamp}, with no top-level `timestamp` (J7)."""
    client = await harness.connect()
    await client.receive()
    await client.send(Ping(timestamp=1234.5))
    assert msgspec.msgpack.decode(await client.receive_frame()) == {
        "type": "PONG",
        "serverTime": harness.clock.now,
        "pingTimestamp": 1234.5,
    }
    await client.send(Auth(token=harness.token()))
    await client.receive()
    await client.send(Ping(timestamp=99))
    pong = msgspec.msgpack.decode(await client.receive_frame())
    assert pong["type"] == "PONG"
    assert "timestamp" not in pong


async def test_ping_without_timestamp_gets_error_400_and_stays_open(harness: Any) -> None:
    client = await harness.connect()
    await client.receive()
    await client.send({"type": "PING"})
    error = await client.receive()
    assert isinstance(error, Error)
    assert error.payload.code == 400
    await client.send(Ping(timestamp=1))
    assert isinstance(await client.receive(), Pong)


async def test_unauthenticated_connection_closes_after_auth_timeout_p7(
    harness: Any, clock: Any
) -> None:
    """P-7: not authenticated `authTimeoutMs` (10 s) after accept → 4001; PING does not
    extend it."""
    client = await harness.connect()
    await client.receive()
    clock.advance(9_999)
    await client.send(Ping(timestamp=1))
    assert isinstance(await client.receive(), Pong)
    assert harness.server.check_liveness() == 0
    clock.advance(1)
    assert harness.server.check_liveness() == 1
    assert await client.closed() == (4001, "Authentication timeout")


async def test_silent_authenticated_connection_closes_4002_and_any_frame_counts_p8(
    harness: Any, clock: Any
) -> None:
    """P-8: an authenticated socket silent for `heartbeatTimeoutMs` (20 s) → 4002. Any
    inbound frame resets the count (D25), even one that is not a valid message."""
    client = await harness.login()
    clock.advance(15_000)
    await client.send({"type": "NO_SUCH_TYPE"})  # not a valid message, but a frame
    await client.send(Ping(timestamp=1))  # processed after the one above
    assert isinstance(await client.receive(), Error)
    assert isinstance(await client.receive(), Pong)
    clock.advance(19_999)
    assert harness.server.check_liveness() == 0
    clock.advance(1)
    assert harness.server.check_liveness() == 1
    assert await client.closed() == (4002, "Heartbeat timeout")


async def test_undecodable_binary_frame_closes_1002_p9(harness: Any) -> None:
    """P-9: a binary frame that is neither msgpack nor JSON closes with 1002."""
    client = await harness.login()
    await client.send_raw(b"\xc1\xff\x00garbage")
    assert await client.closed() == (1002, "Protocol Error")


async def test_frame_over_the_limit_closes_1009(start: Any) -> None:
    async with start(max_frame_bytes=1024) as h:
        client = await h.login()
        await client.send_raw(
            msgspec.msgpack.encode({"type": "PING", "timestamp": 1, "x": "y" * 2000})
        )
        assert (await client.closed())[0] == 1009


async def test_invalid_or_unknown_message_after_auth_gets_error_400_and_stays_open_p11(
    harness: Any,
) -> None:
    """P-11: schema-invalid or unknown-type messages get ERROR 400; the socket stays open."""
    client = await harness.login()
    for bad in (
        {"type": "NO_SUCH_TYPE"},
        {"type": "PONG", "serverTime": 1},  # server-to-client only
        {"type": "QUERY_SUB", "payload": {"queryId": 5}},
        "[1, 2, 3]",  # a JSON text frame that is not a map
    ):
        if isinstance(bad, str):
            await client.send_raw(bad)
        else:
            await client.send(bad)
        error = await client.receive()
        assert isinstance(error, Error)
        assert error.payload.code == 400
    await client.send(Ping(timestamp=1))
    assert isinstance(await client.receive(), Pong)


async def test_json_text_frames_are_accepted(harness: Any) -> None:
    client = await harness.connect()
    await client.receive()
    await client.send_raw(msgspec.json.encode({"type": "AUTH", "token": harness.token()}).decode())
    assert isinstance(await client.receive(), AuthAck)


async def test_ext0_fields_are_absent_and_float_millis_are_integers_p12_p13(
    harness: Any,
) -> None:
    """P-12: msgpack ext 0 is an absent field; P-13: float64 `millis` is coerced to int
    before hashing and comparison (the stored record equals one sent with int millis)."""
    client = await harness.login()
    undefined = msgspec.msgpack.Ext(0, b"\x00")
    op = {
        "mapName": "m",
        "key": "k",
        "opType": "PUT",
        "record": {"value": 1, "timestamp": {"millis": float(T), "counter": 0, "nodeId": "c"}},
        "orRecord": undefined,
        "orTag": undefined,
        "id": "1",
    }
    await client.send({"type": "OP_BATCH", "payload": {"ops": [op]}})
    ack = await client.receive()
    assert isinstance(ack, OpAck)
    assert ack.payload.results is not None
    assert ack.payload.results[0].success
    stored = harness.server.maps.lww("m").get_record("k")
    assert stored.timestamp == Timestamp(T, 0, "c")
    assert type(stored.timestamp.millis) is int


async def test_repeated_auth_is_ignored(harness: Any) -> None:
    client = await harness.login(roles=["USER"])
    await client.send(Auth(token="garbage"))
    await client.send(Ping(timestamp=1))
    assert isinstance(await client.receive(), Pong)  # no AUTH_FAIL, still open
    session = next(iter(harness.server.sessions))
    assert list(session.principal.roles) == ["USER"]


async def _two_topic_messages_queued_for(h: Any, alice: InMemoryClient) -> None:
    """Queue two pushed (non-urgent, unasked) messages for `alice`: topic messages."""
    await alice.send(TopicSub(payload=TopicSubPayload(topic="t")))
    bob = await h.login()
    for n in (1, 2):
        await bob.send(TopicPub(payload=TopicPubPayload(topic="t", data=n)))
    await bob.send(Ping(timestamp=1))
    await bob.receive_until(Pong)  # bob's publications were handled: both are queued


async def test_queued_messages_leave_as_one_batch_before_an_urgent_one_p16_p18(start: Any) -> None:
    """P-16, P-18: with a long coalescing delay, two queued messages leave as one BATCH
    (u32le count, then u32le length + msgpack each) when an urgent PONG flushes the queue,
    and the PONG follows it."""
    async with start(coalescing=CoalescingConfig(max_delay_ms=60_000)) as h:
        client = await h.login()
        await _two_topic_messages_queued_for(h, client)
        await client.send(Ping(timestamp=1))
        batch_frame = await client.receive_frame()
        batch = msgspec.msgpack.decode(batch_frame)
        assert batch["type"] == "BATCH"
        assert batch["count"] == 2
        data = batch["data"]
        assert int.from_bytes(data[:4], "little") == 2
        first_len = int.from_bytes(data[4:8], "little")
        first = msgspec.msgpack.decode(data[8 : 8 + first_len])
        assert first["type"] == "TOPIC_MESSAGE"
        assert first["payload"]["data"] == 1
        inner = h.server.codec.decode_server_frame(batch_frame)
        assert [m.payload.data for m in inner] == [1, 2]
        assert isinstance(await client.receive(), Pong)
        assert not any(
            msgspec.msgpack.decode(f).get("type") == "BATCH"
            for frame in client.raw_frames
            if msgspec.msgpack.decode(frame)["type"] == "BATCH"
            for f in unpack_batch(h.server.codec.decode_server_message(frame))
        )


async def test_a_reply_leaves_without_the_delay_with_what_was_queued_before_it(
    start: Any,
) -> None:
    """Replies (here QUERY_RESP) are not held for the coalescing delay: pushed messages
    queued before one leave with it, in order, in one BATCH."""
    async with start(coalescing=CoalescingConfig(max_delay_ms=60_000)) as h:
        client = await h.login()
        await _two_topic_messages_queued_for(h, client)
        await client.send(
            QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=Query()))
        )
        inner = h.server.codec.decode_server_frame(await client.receive_frame())
        assert [type(m).__name__ for m in inner] == ["TopicMessage", "TopicMessage", "QueryResp"]


async def test_a_single_message_is_sent_unwrapped_p17(start: Any) -> None:
    """P-17: a flush of one message sends it as it is, never inside a BATCH."""
    async with start(coalescing=CoalescingConfig(max_delay_ms=0)) as h:
        client = await h.login()
        await client.send(
            QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=Query()))
        )
        frame = await client.receive_frame()
        assert msgspec.msgpack.decode(frame)["type"] == "QUERY_RESP"


async def test_a_full_queue_flushes_without_waiting_for_the_delay(start: Any) -> None:
    async with start(coalescing=CoalescingConfig(max_delay_ms=60_000, max_batch_size=2)) as h:
        client = await h.login()
        await _two_topic_messages_queued_for(h, client)
        batch = msgspec.msgpack.decode(await client.receive_frame())
        assert (batch["type"], batch["count"]) == ("BATCH", 2)


async def test_a_client_that_does_not_read_is_closed_4003(
    start: Any, stalled_transport: type[Any]
) -> None:
    """A slow consumer is closed with 4003 once its unsent output passes
    `max_outbound_bytes`, and the server keeps serving others."""
    async with start(max_outbound_bytes=4096, coalescing=CoalescingConfig(max_delay_ms=0)) as h:
        transport = stalled_transport(accept=3)  # AUTH_REQUIRED, AUTH_ACK, then one more
        send, frames = anyio.create_memory_object_stream[bytes | str](1000)

        async def serve() -> None:
            with frames:
                await h.server.handle_connection(transport, frames)

        async with send:
            h.task_group.start_soon(serve)
            await send.send(h.server.codec.encode(Auth(token=h.token())))
            for _ in range(300):  # ~40 bytes of PONG each
                try:
                    await send.send(h.server.codec.encode(Ping(timestamp=1)))
                except anyio.BrokenResourceError:  # closed: it stopped reading
                    break
            with anyio.fail_after(5):
                await transport.close_event.wait()
        assert transport.closed == (4003, "Slow consumer")
        other = await h.login()
        await other.send(Ping(timestamp=1))
        assert isinstance(await other.receive(), Pong)


async def test_connection_rate_limit_closes_1013(start: Any) -> None:
    async with start(connections=ConnectionLimits(max_new_per_second=2)) as h:
        for _ in range(2):
            assert isinstance(await (await h.connect()).receive(), AuthRequired)
        refused = await h.connect()
        with pytest.raises(ConnectionClosed) as closed:
            await refused.receive()
        assert (closed.value.code, closed.value.reason) == (1013, "Server overloaded")
        h.clock.advance(1000)
        assert isinstance(await (await h.connect()).receive(), AuthRequired)


async def test_unauthenticated_connection_cap_closes_1013(start: Any) -> None:
    async with start(connections=ConnectionLimits(max_unauthenticated=1)) as h:
        await h.login()  # authenticated: does not count
        waiting = await h.connect()
        assert isinstance(await waiting.receive(), AuthRequired)
        assert (await (await h.connect()).closed())[0] == 1013


class _Interceptor:
    def __init__(self) -> None:
        self.disconnects: list[tuple[int, str]] = []
        self.auth_failures: list[tuple[object, str]] = []

    @hookimpl
    def on_connection(self, connection: Any) -> None:
        if connection.remote_address == "refuse-me":
            raise Rejected("not from there")

    @hookimpl
    async def on_authenticated(self, connection: Any, principal: Any) -> None:
        if principal.user_id == "mallory":
            raise Rejected("banned")

    @hookimpl
    async def on_auth_failed(self, connection: Any, reason: str) -> None:
        self.auth_failures.append((connection.principal, reason))

    @hookimpl
    def on_disconnect(self, connection: Any, code: int, reason: str) -> None:
        self.disconnects.append((code, reason))


async def test_connection_and_auth_interceptors(start: Any) -> None:
    """on_connection refuses with 4000; on_authenticated refuses with AUTH_FAIL + 4001;
    on_auth_failed hears every refused authentication; on_disconnect hears every close
    with its code."""
    plugin = _Interceptor()
    pm = make_plugin_manager(entry_points=(), environ={})
    pm.register(plugin)
    async with start(pm=pm) as h:
        refused = InMemoryClient()
        refused.transport._remote_address = "refuse-me"
        h.task_group.start_soon(refused.serve, h.server)
        assert await refused.closed() == (4000, "not from there")
        await refused.disconnect()
        banned = await h.connect()
        await banned.receive()
        await banned.send(Auth(token=h.token(sub="mallory")))
        fail = await banned.receive()
        assert isinstance(fail, AuthFail)
        assert fail.error == "banned"
        assert (await banned.closed())[0] == 4001
        forged = await h.connect()
        await forged.receive()
        await forged.send(Auth(token="not-a-jwt"))
        assert isinstance(await forged.receive(), AuthFail)
        client = await h.login()
        await client.disconnect()
        with anyio.fail_after(5):
            while len(plugin.disconnects) < 4:
                await anyio.wait_all_tasks_blocked()
    assert sorted(plugin.disconnects) == [
        (1005, "closed by the client"),
        (4000, "not from there"),
        (4001, "Authentication failed"),
        (4001, "Authentication failed"),
    ]
    assert plugin.auth_failures[0] == (None, "banned")
    assert len(plugin.auth_failures) == 2
    assert plugin.auth_failures[1][0] is None


async def test_messages_are_handled_in_arrival_order(harness: Any) -> None:
    """A write is visible to every later message of the same connection (§1.1)."""
    client = await harness.login()
    record = LWWRecord("v", Timestamp(T, 0, "c"))
    await client.send(
        OpBatch(payload=OpBatchPayload(ops=[ClientOp(map_name="m", key="k", record=record)]))
    )
    await client.send(QuerySub(payload=QuerySubPayload(query_id="q", map_name="m", query=Query())))
    assert isinstance(await client.receive(), OpAck)
    response = await client.receive()
    assert isinstance(response, QueryResp)
    assert [(row.key, row.value) for row in response.payload.results] == [("k", "v")]


@pytest.mark.parametrize(
    ("message", "type_name"),
    [
        ({"type": "PARTITION_MAP_REQUEST"}, "PARTITION_MAP_REQUEST"),
    ],
)
async def test_later_features_answer_501_from_the_dispatch_table(
    harness: Any, message: dict[str, Any], type_name: str
) -> None:
    client = await harness.login()
    await client.send(message)
    error = await client.receive()
    assert isinstance(error, Error)
    assert error.payload.code == 501
    assert error.payload.message == f"{type_name} is not supported by this server yet"
