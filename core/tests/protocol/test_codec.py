"""The codec: golden frames, the JS interop rules J1-J7, errors, limits, and fuzzing."""

from __future__ import annotations

import contextlib
import json
import math
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topgun.crdt.records import LWWRecord, Timestamp
from topgun.protocol import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    Auth,
    Batch,
    ClientOp,
    ClientOpMessage,
    Codec,
    ErrorCode,
    EventPayload,
    InvalidOp,
    JournalSubscribe,
    OpBatch,
    OpBatchPayload,
    Ping,
    Pong,
    PredicateNode,
    ProtocolError,
    Query,
    QuerySub,
    QuerySubPayload,
    ServerEvent,
    SyncRequest,
    TopicPub,
    TopicPubPayload,
    decode_client_frame,
    decode_json,
    decode_msgpack,
    decode_server_frame,
    decode_server_message,
    encode,
    encode_json,
)

GOLDEN = Path(__file__).parent / "golden-frames"
INDEX = json.loads((GOLDEN / "index.json").read_text())
GOLDEN_MESSAGES = [entry for entry in INDEX if entry["encoding"] == "msgpack"]
EXT0 = b"\xd4\x00\x00"
TAGS = {cls: tag for tag, cls in {**CLIENT_MESSAGE_TYPES, **SERVER_MESSAGE_TYPES}.items()}


def golden(entry: dict[str, Any] | str) -> bytes:
    """A captured frame, by index entry or file name."""
    return (GOLDEN / (entry if isinstance(entry, str) else entry["file"])).read_bytes()


def m16(*pairs: tuple[str, bytes]) -> bytes:
    """A map the way msgpackr writes it: map16 header, then fixstr keys and raw values."""
    out = b"\xde" + struct.pack(">H", len(pairs))
    for key, value in pairs:
        out += bytes([0xA0 | len(key)]) + key.encode() + value
    return out


def pack(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def f64(value: float) -> bytes:
    return b"\xcb" + struct.pack(">d", value)


def code_of(frame: bytes | str, decode: Any = decode_client_frame) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    return info.value.code


def subset(ours: Any, theirs: Any) -> bool:
    """Whether every key and value we produce appears, equal, in the captured rendering."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and all(
            key in theirs and subset(value, theirs[key]) for key, value in ours.items()
        )
    if isinstance(ours, list):
        return (
            isinstance(theirs, list)
            and len(ours) == len(theirs)
            and all(subset(a, b) for a, b in zip(ours, theirs, strict=True))
        )
    return bool(ours == theirs)


# -- golden frames -------------------------------------------------------------------------


@pytest.mark.parametrize("entry", GOLDEN_MESSAGES, ids=lambda e: e["file"])
def test_golden_frame_decodes_and_round_trips(entry: dict[str, Any]) -> None:
    frame = golden(entry)
    if entry["direction"] == "c2s":
        messages: list[Any] = [decode_client_frame(frame)]
        renderings = [entry["decoded"]]
    else:
        messages = decode_server_frame(frame)
        renderings = [inner["decoded"] for inner in entry.get("inner", [entry])]
    assert [TAGS[type(m)] for m in messages] == [r["type"] for r in renderings]
    for message, rendering in zip(messages, renderings, strict=True):
        again = encode(message)
        redecoded = (
            decode_client_frame(again)
            if entry["direction"] == "c2s"
            else decode_server_message(again)
        )
        assert redecoded == message
        # Nothing invented or altered: what we decoded is in the capture (ext 0 keys dropped).
        assert subset(msgspec.to_builtins(message), rendering)


def test_golden_close_frame_is_code_and_reason() -> None:
    payload = (GOLDEN / "0081-s2c-CLOSE.bin").read_bytes()
    code, reason = struct.unpack(">H", payload[:2])[0], payload[2:].decode()
    assert (code, reason) == (4001, "Unauthorized")


def test_golden_op_batch_reads_ts_client_shapes() -> None:
    """0023: float64 millis (J2), ext 0 `orRecord`/`orTag` (J1), extra `timestamp`/`synced`."""
    message = decode_client_frame(golden("0023-c2s-OP_BATCH.msgpack"))
    assert isinstance(message, OpBatch)
    first = message.payload.ops[0]
    assert first == ClientOp(
        map_name="lww-rdzvbgn",
        key="key0",
        id="1000000000",
        op_type="PUT",
        record=LWWRecord({"from": "A", "k": 0}, Timestamp(1795657140786, 0, "A-rdzvbgn-f92de4be")),
    )
    assert type(first.record.timestamp.millis) is int  # type: ignore[union-attr]


def test_golden_reference_shapes_are_read_by_the_client_decoder() -> None:
    """PONG with a numeric timestamp, eventType UPDATED, OP_ACK with only lastId (§10)."""
    pong = decode_server_message(golden("0084-s2c-PONG.msgpack"))
    assert pong == Pong(server_time=1795657169180)
    (event,) = decode_server_frame(golden("0006-s2c-SERVER_BATCH_EVENT.msgpack"))
    assert event.payload.events[0].event_type == "UPDATED"  # type: ignore[union-attr]
    assert event.timestamp == Timestamp(1795657136021, 0, "oracle-node-1")  # type: ignore[union-attr]
    (ack,) = decode_server_frame(golden("0005-s2c-OP_ACK.msgpack"))
    assert ack.payload.last_id == "1000000000"  # type: ignore[union-attr]
    assert ack.payload.results is None  # type: ignore[union-attr]


# -- byte-level goldens, computed by hand from PROTOCOL.md ----------------------------------


def test_pong_bytes_use_float64_for_integers_beyond_u32() -> None:
    expected = bytes.fromhex(
        "83"  # fixmap, 3 entries
        "a4 74797065 a4 504f4e47"  # "type": "PONG"
        "aa 73657276657254696d65 cb 427a21584828c000"  # "serverTime": float64 1795657335436
        "ad 70696e6754696d657374616d70 cb 427a21584828b000"  # "pingTimestamp": 1795657335435.0
    )
    assert encode(Pong(server_time=1795657335436, ping_timestamp=1795657335435)) == expected


def test_batch_frame_bytes() -> None:
    from topgun.protocol import Coalescer, OpAck, OpAckPayload

    inner = "82 a4 74797065 a6 4f505f41434b a7 7061796c6f6164 81 a6 6c6173744964 a1 {}"
    one, two = (bytes.fromhex(inner.format(d)) for d in ("31", "32"))  # OP_ACK lastId "1", "2"
    assert len(one) == 0x1F
    expected = (
        bytes.fromhex(
            "83 a4 74797065 a5 4241544348"  # fixmap 3; "type": "BATCH"
            "a5 636f756e74 02"  # "count": 2
            "a4 64617461 c4 4a"  # "data": bin8 of 74 bytes
            "02000000"  # u32le N = 2
            "1f000000"  # u32le L1 = 31
        )
        + one
        + bytes.fromhex("1f000000")
        + two
    )
    coalescer = Coalescer()
    assert coalescer.send(OpAck(payload=OpAckPayload(last_id="1"))) == []
    assert coalescer.send(OpAck(payload=OpAckPayload(last_id="2"))) == []
    assert coalescer.flush() == [expected]
    assert [m.payload.last_id for m in decode_server_frame(expected)] == ["1", "2"]  # type: ignore[union-attr]


def test_ext0_fields_and_float64_millis_decode_by_hand() -> None:
    frame = bytes.fromhex(
        "de0002 a4 74797065 a8 4f505f4241544348"  # map16 2; "type": "OP_BATCH"
        "a7 7061796c6f6164 de0001 a3 6f7073 91"  # "payload": {"ops": [
        "de0005 a7 6d61704e616d65 a1 6d a3 6b6579 a1 6b"  # {"mapName": "m", "key": "k",
        "a6 7265636f7264 de0002"  # "record": {
        # "value": {"a": 1, "u": undefined, "l": [undefined, 2]},
        "a5 76616c7565 de0003 a1 61 01 a1 75 d40000 a1 6c 92 d40000 02"
        "a9 74696d657374616d70 de0003"  # "timestamp": {
        "a6 6d696c6c6973 cb 4278bcfe56800000"  # "millis": float64 1.7e12,
        "a7 636f756e746572 00 a6 6e6f64654964 a1 6e"  # "counter": 0, "nodeId": "n"}},
        # "orRecord": undefined, "orTag": undefined}]}}
        "a8 6f725265636f7264 d40000 a5 6f72546167 d40000"
    )
    op = decode_client_frame(frame).payload.ops[0]  # type: ignore[union-attr]
    assert op == ClientOp(
        map_name="m",
        key="k",
        record=LWWRecord({"a": 1, "l": [None, 2]}, Timestamp(1700000000000, 0, "n")),
    )
    assert type(op.record.timestamp.millis) is int  # type: ignore[union-attr]


# -- J1: ext 0 is absent --------------------------------------------------------------------


def test_ext0_in_optional_and_required_fields() -> None:
    ping = m16(("type", pack("PING")), ("timestamp", f64(1.5e12)))
    assert decode_client_frame(ping) == Ping(timestamp=1.5e12)
    missing = m16(("type", pack("PING")), ("timestamp", EXT0))
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(missing)
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert "timestamp" in str(info.value)
    journal = m16(
        ("type", pack("JOURNAL_SUBSCRIBE")),
        ("requestId", pack("j1")),
        ("fromSequence", EXT0),
        ("mapName", pack("m")),
        ("types", EXT0),
    )
    assert decode_client_frame(journal) == JournalSubscribe(request_id="j1", map_name="m")


def test_ext0_in_any_values_drops_map_keys_and_nils_array_items() -> None:
    data = m16(("a", EXT0), ("b", b"\x93" + EXT0 + b"\x01" + m16(("c", EXT0))))
    frame = m16(("type", pack("TOPIC_PUB")), ("payload", m16(("topic", pack("t")), ("data", data))))
    message = decode_client_frame(frame)
    assert message == TopicPub(payload=TopicPubPayload(topic="t", data={"b": [None, 1, {}]}))


def test_ext0_predicate_value_is_absent_not_nil() -> None:
    node = m16(("op", pack("eq")), ("attribute", pack("a")), ("value", EXT0))
    frame = m16(
        ("type", pack("QUERY_SUB")),
        (
            "payload",
            m16(
                ("queryId", pack("q")), ("mapName", pack("m")), ("query", m16(("predicate", node)))
            ),
        ),
    )
    predicate = decode_client_frame(frame).payload.query.predicate  # type: ignore[union-attr]
    assert predicate == PredicateNode(op="eq", attribute="a")
    assert predicate.value is msgspec.UNSET  # type: ignore[union-attr]


# -- J2/J3: integers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (f64(1795657330662.0), 1795657330662),
        (f64(0.0), 0),
        (pack(42), 42),
        (f64(1.5), None),  # non-integral
        (f64(math.nan), None),  # non-finite
        (f64(math.inf), None),
        (pack("12"), None),  # lax mode would make this 12
        (pack(True), None),  # bool is not an integer (J3)
        (pack("null"), None),  # lax mode would make this None
        (pack(2**53 - 1), 2**53 - 1),  # the largest JS safe integer
        (pack(2**53), None),  # beyond it: protocol integers are < 2^53 (J3)
        (f64(2.0**53), None),
    ],
)
def test_integer_fields(value: bytes, accepted: int | None) -> None:
    frame = m16(("type", pack("SYNC_INIT")), ("mapName", pack("m")), ("lastSyncTimestamp", value))
    if accepted is None:
        assert code_of(frame) is ErrorCode.INVALID_FIELD
    else:
        message = decode_client_frame(frame)
        assert message.last_sync_timestamp == accepted  # type: ignore[union-attr]
        assert type(message.last_sync_timestamp) is int  # type: ignore[union-attr]


def test_bool_fields_refuse_integers_and_strings() -> None:
    for value in (pack(1), pack("true")):
        frame = m16(
            ("type", pack("LOCK_RELEASED")),
            ("payload", m16(("requestId", pack("")), ("name", pack("l")), ("success", value))),
        )
        assert code_of(frame, decode_server_message) is ErrorCode.INVALID_FIELD


def test_values_keep_their_numbers() -> None:
    """Only integer *fields* are coerced: a float in a value stays a float."""
    message = TopicPub(payload=TopicPubPayload(topic="t", data=[2.0, 2**40, -(2**40), 7]))
    decoded = decode_client_frame(encode(message))
    assert decoded.payload.data == [2.0, 2**40, -(2**40), 7]  # type: ignore[union-attr]
    assert [type(v) for v in decoded.payload.data] == [float, float, float, int]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("number", "marker"),
    [
        (2**32 - 1, 0xCE),
        (2**32, 0xCB),
        (-(2**31), 0xD2),
        (-(2**31) - 1, 0xCB),
        (2**53 + 1, 0xCB),
        (2**70, 0xCB),
        (127, 0x7F),
    ],
)
def test_encoded_integers_outside_the_js_range_are_float64(number: int, marker: int) -> None:
    data = encode(TopicPub(payload=TopicPubPayload(topic="t", data={"n": number})))
    value = data[data.index(b"\xa1n") + 2 :]
    assert value[0] == marker
    assert not ({0xCF, 0xD3} & {value[0]})
    assert decode_client_frame(data).payload.data["n"] == float(number)  # type: ignore[union-attr]


def test_encoding_refuses_integers_beyond_a_js_number() -> None:
    with pytest.raises(ValueError, match="too large"):
        encode(TopicPub(payload=TopicPubPayload(topic="t", data=10**400)))


def test_hlc_millis_are_float64_on_the_wire() -> None:
    event = ServerEvent(
        payload=EventPayload(
            map_name="m", event_type="PUT", key="k", record=LWWRecord(1, Timestamp(2**41, 1, "a"))
        ),
        timestamp=Timestamp(1795657330662, 0, "s"),
    )
    data = encode(event)
    assert data.count(b"\xa6millis\xcb") == 2
    assert b"\xcf" not in data


# -- J5, J6: strings with lone surrogates, timestamp exts --------------------------------------


def test_lone_surrogates_survive_decoding_and_encoding() -> None:
    key = "a\ud800b"
    raw = key.encode("utf-8", "surrogatepass")
    frame = m16(
        ("type", pack("CLIENT_OP")),
        ("payload", m16(("mapName", pack("m")), ("key", bytes([0xA0 | len(raw)]) + raw))),
    )
    message = decode_client_frame(frame)
    assert message == ClientOpMessage(payload=ClientOp(map_name="m", key=key))
    assert raw in encode(message)
    assert decode_client_frame(encode(message)) == message
    assert json.loads(encode_json(message))["payload"]["key"] == key


def test_timestamp_ext_becomes_epoch_milliseconds() -> None:
    ts64 = b"\xd7\xff" + struct.pack(">Q", (5_000_000 << 34) | 1_700_000_000)
    frame = m16(("type", pack("PING")), ("timestamp", ts64))
    assert decode_client_frame(frame) == Ping(timestamp=1_700_000_000_005)
    seconds = struct.pack(">I", 1_700_000_000)
    for header in (b"\xd6\xff", b"\xc7\x04\xff", b"\xc8\x00\x04\xff", b"\xc9\x00\x00\x00\x04\xff"):
        data = m16(("when", header + seconds))
        frame = m16(
            ("type", pack("TOPIC_PUB")), ("payload", m16(("topic", pack("t")), ("data", data)))
        )
        assert decode_client_frame(frame).payload.data == {"when": 1_700_000_000_000}  # type: ignore[union-attr]


def test_other_ext_types_are_refused_with_their_path() -> None:
    data = m16(("x", b"\xd4\x05\x01"))
    pub = m16(("type", pack("TOPIC_PUB")), ("payload", m16(("topic", pack("t")), ("data", data))))
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(pub)
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert info.value.path == "$.payload.data.x"


# -- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"AUTH","token":"t"}',
        '{"type":"PING","timestamp":1795657335435}',
        '{"type":"CLIENT_OP","payload":{"mapName":"m","key":"k","record":{"value":1,'
        '"timestamp":{"millis":1.7e12,"counter":0,"nodeId":"n"}}}}',
        '{"type":"OP_BATCH","payload":{"ops":[]}}',
        '{"type":"QUERY_SUB","payload":{"queryId":"q","mapName":"m","query":{"where":{"a":1}}}}',
    ],
)
def test_json_text_frames_are_accepted(text: str) -> None:
    message = decode_client_frame(text)
    assert decode_client_frame(text.encode()) == message  # binary frame holding JSON (§1.2)
    assert msgspec.json.decode(encode_json(message)) == msgspec.json.decode(
        text.replace("1.7e12", "1700000000000")
    )


def test_json_lone_surrogate_escape_and_nan() -> None:
    message = decode_client_frame('{"type":"AUTH","token":"\\ud800"}')
    assert message == Auth(token="\ud800")
    assert code_of('{"type":"PING","timestamp":NaN}') is ErrorCode.UNDECODABLE
    assert encode_json(TopicPub(payload=TopicPubPayload(topic="t", data=math.nan))).endswith(
        b'"data":null}}'
    )


def test_json_bytes_are_base64() -> None:
    batch = Batch(count=1, data=b"\x00\xff")
    assert json.loads(encode_json(batch))["data"] == "AP8="
    assert decode_json(encode_json(batch), Batch) == batch


# -- errors ------------------------------------------------------------------------------------


def test_undecodable_frames_close_with_1002() -> None:
    for frame in (b"\xc1", b"\x92\x01", b"{not json", b"", b"\xde\x00\x02\xa1a"):
        with pytest.raises(ProtocolError) as info:
            decode_client_frame(frame)
        assert info.value.code is ErrorCode.UNDECODABLE
        assert info.value.close_code == 1002
        assert info.value.error_reply() is None


def test_not_a_map_with_a_string_type_is_error_400() -> None:
    for frame in ("[1,2]", "5", '{"type": 5}', '{"no": "type"}', pack({"type": None})):
        with pytest.raises(ProtocolError) as info:
            decode_client_frame(frame)
        assert info.value.code is ErrorCode.INVALID_MESSAGE
        reply = info.value.error_reply()
        assert reply is not None
        assert (reply.payload.code, reply.payload.message) == (400, "Invalid message format")


@pytest.mark.parametrize("message_type", ["NOPE", "PONG", "SYNC_RESP_ROOT", "CLUSTER_SUB_REGISTER"])
def test_unknown_and_server_only_types_are_unsupported(message_type: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(pack({"type": message_type, "serverTime": 1}))
    assert info.value.code is ErrorCode.UNSUPPORTED_TYPE
    reply = info.value.error_reply()
    assert reply is not None
    assert reply.payload.message == "Unsupported message type"
    assert reply.payload.details["type"] == message_type


def test_invalid_fields_carry_path_type_and_correlation() -> None:
    frame = pack(
        {"type": "QUERY_SUB", "payload": {"queryId": "q-7", "mapName": 3, "query": {}}, "extra": 1}
    )
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(frame)
    error = info.value
    assert (error.code, error.path, error.message_type) == (
        ErrorCode.INVALID_FIELD,
        "$.payload.mapName",
        "QUERY_SUB",
    )
    assert error.correlation == {"queryId": "q-7"}
    assert error.details()["queryId"] == "q-7"
    assert "Expected `str`, got `int`" in error.detail


def test_auth_without_token_names_its_type() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(pack({"type": "AUTH"}))
    assert info.value.message_type == "AUTH"


def test_constraints_are_checked() -> None:
    bad = [
        {"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "m", "path": "0g"}},
        {"type": "TOPIC_SUB", "payload": {"topic": "has space"}},
        {"type": "TOPIC_SUB", "payload": {"topic": "x" * 257}},
        {"type": "JOURNAL_READ", "requestId": "r", "fromSequence": "12a"},
        {"type": "OP_BATCH", "payload": {"ops": [], "timeout": 60_001}},
        {"type": "OP_BATCH", "payload": {"ops": [], "writeConcern": "SOMEDAY"}},
        {
            "type": "QUERY_SUB",
            "payload": {"queryId": "q", "mapName": "m", "query": {"predicate": {"op": "xor"}}},
        },
        {"type": "COUNTER_SYNC", "payload": {"name": "c", "state": {"p": {"a": -1}}}},
        {
            "type": "ENTRY_PROCESS",
            "requestId": "r",
            "mapName": "m",
            "key": "k",
            "processor": {"name": ""},
        },
    ]
    for frame in bad:
        assert code_of(pack(frame)) is ErrorCode.INVALID_FIELD, frame


def test_unknown_fields_are_ignored() -> None:
    frame = pack({"type": "PING", "timestamp": 1, "future": {"deep": [1, 2, {"x": None}]}})
    assert decode_client_frame(frame) == Ping(timestamp=1)


# -- per-op validation (§5.2) -------------------------------------------------------------------


def test_an_invalid_op_fails_alone() -> None:
    good = {
        "mapName": "m",
        "key": "a",
        "id": "1",
        "record": {"value": 1, "timestamp": {"millis": 1, "counter": 0, "nodeId": "n"}},
    }
    nan = {
        **good,
        "id": "2",
        "record": {"value": 1, "timestamp": {"millis": math.nan, "counter": 0, "nodeId": "n"}},
    }
    frame = pack(
        {
            "type": "OP_BATCH",
            "payload": {"ops": [good, nan, {"key": 5}, [1]], "writeConcern": "APPLIED"},
        }
    )
    message = decode_client_frame(frame)
    assert isinstance(message, OpBatch)
    ops = message.payload.ops
    assert isinstance(ops[0], ClientOp)
    assert ops[0].id == "1"
    assert [type(op) for op in ops[1:]] == [InvalidOp, InvalidOp, InvalidOp]
    assert [op.op_id for op in ops[1:]] == ["2", "#2", "#3"]  # type: ignore[union-attr]
    assert ops[1].reason.startswith("Invalid op: ")  # type: ignore[union-attr]
    assert "$.record.timestamp.millis" in ops[1].reason  # type: ignore[union-attr]
    assert message.payload.write_concern == "APPLIED"
    # Re-encoding writes the invalid ops back as they came (compared as bytes: NaN != NaN).
    assert encode(decode_client_frame(encode(message))) == encode(message)


def test_an_invalid_ts_op_drops_its_undefined_fields() -> None:
    """An op with ext 0 fields that fails validation keeps no ext in `raw` (found by fuzzing)."""
    op = m16(
        ("mapName", pack(None)),
        ("key", pack("k")),
        ("orRecord", EXT0),
        ("orTag", EXT0),
        ("value", m16(("a", EXT0), ("b", b"\x91" + EXT0))),
    )
    frame = m16(("type", pack("OP_BATCH")), ("payload", m16(("ops", b"\x91" + op))))
    (invalid,) = decode_client_frame(frame).payload.ops  # type: ignore[union-attr]
    assert isinstance(invalid, InvalidOp)
    assert invalid.raw == {"mapName": None, "key": "k", "value": {"b": [None]}}
    assert "mapName" in invalid.reason
    again = decode_client_frame(encode(decode_client_frame(frame)))
    assert again.payload.ops == [invalid]  # type: ignore[union-attr]


def test_a_bad_envelope_fails_the_batch() -> None:
    assert (
        code_of(pack({"type": "OP_BATCH", "payload": {"ops": {"a": 1}}})) is ErrorCode.INVALID_FIELD
    )
    assert code_of(pack({"type": "OP_BATCH", "payload": []})) is ErrorCode.INVALID_FIELD


def test_a_bad_client_op_names_its_op_id() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(pack({"type": "CLIENT_OP", "payload": {"id": "77", "key": "k"}}))
    assert info.value.correlation == {"opId": "77"}


def test_http_sync_request_reads_the_ts_provider_body() -> None:
    """PROTOCOL.md §12 #18, with ext 0 fields and float64 millis as TS clients send them."""
    hlc = m16(("millis", f64(1795657339228.0)), ("counter", pack(2)), ("nodeId", pack("http-node")))
    op = m16(
        ("id", pack("1000000001")),
        ("mapName", pack("m")),
        ("key", pack("h1")),
        ("opType", pack("PUT")),
        ("record", m16(("value", pack("hv")), ("timestamp", hlc))),
        ("orRecord", EXT0),
        ("orTag", EXT0),
        ("timestamp", hlc),
        ("synced", pack(False)),
    )
    body = m16(
        ("clientId", pack("http-client")),
        ("clientHlc", hlc),
        ("operations", b"\x92" + op + m16(("mapName", pack("m")))),
        (
            "syncMaps",
            b"\x91"
            + m16(
                ("mapName", pack("m")),
                (
                    "lastSyncTimestamp",
                    m16(("millis", pack(0)), ("counter", pack(0)), ("nodeId", pack(""))),
                ),
            ),
        ),
        (
            "queries",
            b"\x91"
            + m16(
                ("queryId", pack("q-1")), ("mapName", pack("m")), ("filter", EXT0), ("limit", EXT0)
            ),
        ),
    )
    request = decode_msgpack(body, SyncRequest)
    assert request.client_hlc == Timestamp(1795657339228, 2, "http-node")
    assert request.operations is not None
    assert isinstance(request.operations[0], ClientOp)
    assert isinstance(request.operations[1], InvalidOp)
    assert request.operations[1].op_id == "#1"
    assert request.queries is not None
    assert request.queries[0].filter is None


# -- limits ------------------------------------------------------------------------------------


def test_frames_over_the_maximum_close_with_1009() -> None:
    codec = Codec(max_frame_bytes=64)
    small = encode(Ping(timestamp=1))
    assert codec.decode_client_frame(small) == Ping(timestamp=1)
    big = pack({"type": "PING", "timestamp": 1, "pad": "x" * 64})
    with pytest.raises(ProtocolError) as info:
        codec.decode_client_frame(big)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert info.value.close_code == 1009
    with pytest.raises(ProtocolError):
        codec.decode_client_frame(big.decode("latin-1"))


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("json_frame", [False, True])
def test_values_deeper_than_max_depth_are_refused(json_frame: bool) -> None:
    codec = Codec(max_depth=8)

    def frame(depth: int) -> bytes | str:
        message = TopicPub(payload=TopicPubPayload(topic="t", data=nested(depth)))
        return encode_json(message).decode() if json_frame else encode(message)

    assert codec.decode_client_frame(frame(8)).payload.data == nested(8)  # type: ignore[union-attr]
    with pytest.raises(ProtocolError) as info:
        codec.decode_client_frame(frame(9))
    assert info.value.code is ErrorCode.TOO_DEEP
    assert info.value.error_reply() is not None


def test_predicates_deeper_than_max_depth_are_refused() -> None:
    codec = Codec(max_depth=4)

    def query(levels: int) -> bytes:
        node = PredicateNode(op="eq", attribute="a", value=1)
        for _ in range(levels - 1):
            node = PredicateNode(op="not", children=[node])
        return encode(
            QuerySub(
                payload=QuerySubPayload(query_id="q", map_name="m", query=Query(predicate=node))
            )
        )

    assert isinstance(codec.decode_client_frame(query(4)), QuerySub)
    with pytest.raises(ProtocolError) as info:
        codec.decode_client_frame(query(5))
    assert info.value.code is ErrorCode.TOO_DEEP


def test_absurd_nesting_and_lengths_are_refused_without_allocating() -> None:
    tracemalloc.start()
    try:
        for frame in (
            b"\x91" * 200_000 + b"\xc0",  # 200 000 nested arrays
            b"\x81\xa4type" + b"\x81\xa1a" * 100_000 + b"\xc0",  # 100 000 nested maps
            b"\xdd\xff\xff\xff\xff\x01",  # array32 claiming 4 294 967 295 items
            b"\xdf\xff\xff\xff\xff",  # map32 likewise
            b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
            "[" * 100_000,
        ):
            with pytest.raises(ProtocolError):
                decode_client_frame(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


def test_codec_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        Codec(max_depth=0)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        Codec(max_frame_bytes=0)


# -- fuzzing -----------------------------------------------------------------------------------

CLIENT_CLASSES = tuple(CLIENT_MESSAGE_TYPES.values())
SERVER_CLASSES = tuple(SERVER_MESSAGE_TYPES.values())
GOLDEN_FRAMES = [golden(entry) for entry in GOLDEN_MESSAGES]
TYPES = sorted({*CLIENT_MESSAGE_TYPES, *SERVER_MESSAGE_TYPES, "BOGUS"})


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(GOLDEN_FRAMES)))
    for _ in range(draw(st.integers(1, 6))):
        if not frame:
            break
        at = draw(st.integers(0, len(frame) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "flip":
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            frame[at] = draw(st.sampled_from([0x00, 0xC0, 0xC1, 0xCB, 0xD4, 0xDE, 0xDF, 0xFF]))
        elif action == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=9))
        elif action == "delete":
            del frame[at : at + draw(st.integers(1, 9))]
        else:
            del frame[at:]
    return bytes(frame)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(
        [
            msgspec.msgpack.Ext(0, b"\x00"),
            msgspec.msgpack.Ext(-1, b"\x00" * 4),
            msgspec.msgpack.Ext(3, b""),
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "payload",
        "mapName",
        "key",
        "ops",
        "record",
        "timestamp",
        "millis",
        "value",
        "query",
        "requestId",
        "token",
        "count",
        "data",
        "events",
        "state",
        "predicate",
        "children",
        "op",
    ]
)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    message = draw(st.dictionaries(FIELDS, VALUES, max_size=5))
    message["type"] = draw(st.sampled_from(TYPES))
    if draw(st.booleans()):
        message["payload"] = draw(st.dictionaries(FIELDS, VALUES, max_size=5))
    return msgspec.msgpack.encode(message)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


@st.composite
def perturbed(draw: st.DrawFn) -> bytes:
    """A golden message with one value (at any depth) replaced by a random one."""
    tree = msgspec.msgpack.decode(
        draw(st.sampled_from(GOLDEN_FRAMES)), ext_hook=msgspec.msgpack.Ext
    )
    path = draw(st.sampled_from(_paths(tree)[1:]))
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = draw(VALUES)
    return msgspec.msgpack.encode(tree)


FRAMES = st.one_of(st.binary(max_size=300), mutated(), structured(), perturbed())


def check_frame(frame: bytes) -> None:
    """Decoding returns messages or raises ProtocolError; what decodes re-encodes stably."""
    for decode, classes in (
        (decode_client_frame, CLIENT_CLASSES),
        (decode_server_frame, SERVER_CLASSES),
    ):
        try:
            result = decode(frame)
        except ProtocolError:
            continue
        for message in result if isinstance(result, list) else [result]:
            assert isinstance(message, classes)
            data = encode(message)
            again = decode_server_message(data) if classes is SERVER_CLASSES else decode(data)
            assert encode(again) == data


def check_text(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode_client_frame(text), CLIENT_CLASSES)


FUZZ = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@settings(FUZZ, max_examples=300)
@given(FRAMES)
def test_fuzz_frames_decode_or_raise_protocol_error(frame: bytes) -> None:
    check_frame(frame)


@settings(FUZZ, max_examples=100)
@given(st.text(max_size=200))
def test_fuzz_text_frames(text: str) -> None:
    check_text(text)


@pytest.mark.slow
@settings(FUZZ, max_examples=100_000)
@given(FRAMES)
def test_fuzz_frames_at_full_size(frame: bytes) -> None:
    check_frame(frame)


def test_check_frame_accepts_every_golden_frame() -> None:
    """The fuzz property holds for the unmutated corpus (and sees messages, not only errors)."""
    decoded = 0
    for frame in GOLDEN_FRAMES:
        check_frame(frame)
        try:
            decode_server_frame(frame)
            decoded += 1
        except ProtocolError:
            decoded += isinstance(decode_client_frame(frame), CLIENT_CLASSES)
    assert decoded == len(GOLDEN_FRAMES)


def test_op_batch_payload_accepts_sequences() -> None:
    batch = OpBatch(payload=OpBatchPayload(ops=(ClientOp(map_name="m", key="k"),)))
    assert decode_client_frame(encode(batch)).payload.ops == [ClientOp(map_name="m", key="k")]  # type: ignore[union-attr]
