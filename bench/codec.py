"""Codec throughput: OP_BATCH of 10 ops and SERVER_EVENT, msgpack and JSON, with full validation.

    python3 dev.py run python bench/codec.py [--messages N] [--repeat R]

Every decode is the complete public call (`decode_client_frame`, `decode_server_message`,
`decode_json`): parsing, validation into typed messages, J1/J2 handling. "TS frame" is the
bytes a TypeScript client (msgpackr) sends: map16 headers, float64 HLC millis, ext 0 for
`undefined` fields and the extra oplog fields (`timestamp`, `synced`) the decoder skips. "topgun
frame" is what `encode` produces. Data is deterministic; each figure is the best of R runs of N
calls on one core. Targets: OP_BATCH(10) decode >= 50,000/s, SERVER_EVENT encode >= 100,000/s.
"""

from __future__ import annotations

import argparse
import platform
import struct
import time
from collections.abc import Callable
from typing import Any

import msgspec

from topgun.crdt.records import LWWRecord, Timestamp
from topgun.protocol import (
    ClientOp,
    EventPayload,
    OpBatch,
    OpBatchPayload,
    ServerEvent,
    decode_client_frame,
    decode_json,
    decode_server_message,
    encode,
    encode_json,
)

T0 = 1_795_657_140_786
UNDEFINED = object()
"""Stands for JS `undefined`, which msgpackr writes as ext 0."""


def msgpackr(value: Any) -> bytes:
    """Encode as msgpackr 1.11 does by default (PROTOCOL.md golden-frames README, quirks 1-3):
    map16 for every map, smallest ints inside [-2^31, 2^32), float64 otherwise, ext 0 for
    undefined."""
    if value is UNDEFINED:
        return b"\xd4\x00\x00"
    if isinstance(value, dict):
        out = b"\xde" + struct.pack(">H", len(value))
        return out + b"".join(msgpackr(k) + msgpackr(v) for k, v in value.items())
    if isinstance(value, list):
        return msgspec.msgpack.encode([]) if not value else _array(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**31) <= value < 2**32:
        return b"\xcb" + struct.pack(">d", value)
    return msgspec.msgpack.encode(value)


def _array(items: list[Any]) -> bytes:
    header = (
        bytes([0x90 | len(items)]) if len(items) < 16 else b"\xdc" + struct.pack(">H", len(items))
    )
    return header + b"".join(msgpackr(item) for item in items)


def hlc(i: int, node: str) -> dict[str, Any]:
    return {"millis": T0 + i, "counter": i % 3, "nodeId": node}


def ts_op_batch(ops: int) -> bytes:
    """An OP_BATCH as the TS client sends it (cf. golden frame 0023)."""
    entries = []
    for i in range(ops):
        stamp = hlc(i, "A-rdzvbgn-f92de4be")
        entries.append(
            {
                "mapName": "todos-rdzvbgn",
                "opType": "PUT",
                "key": f"todo-{i}",
                "record": {
                    "value": {"title": f"task {i}", "done": i % 2 == 0, "n": i},
                    "timestamp": stamp,
                },
                "orRecord": UNDEFINED,
                "orTag": UNDEFINED,
                "timestamp": stamp,
                "synced": False,
                "id": str(1_000_000_000 + i),
            }
        )
    return msgpackr({"type": "OP_BATCH", "payload": {"ops": entries}})


def op_batch(ops: int) -> OpBatch:
    return OpBatch(
        payload=OpBatchPayload(
            ops=[
                ClientOp(
                    map_name="todos-rdzvbgn",
                    key=f"todo-{i}",
                    id=str(1_000_000_000 + i),
                    op_type="PUT",
                    record=LWWRecord(
                        {"title": f"task {i}", "done": i % 2 == 0, "n": i},
                        Timestamp(T0 + i, i % 3, "A-rdzvbgn-f92de4be"),
                    ),
                )
                for i in range(ops)
            ]
        )
    )


def server_event() -> ServerEvent:
    return ServerEvent(
        payload=EventPayload(
            map_name="todos-rdzvbgn",
            event_type="PUT",
            key="todo-2",
            record=LWWRecord(
                {"title": "keep me", "done": False, "n": 2}, Timestamp(T0, 0, "A-rjgvgis-28cb12ac")
            ),
        ),
        timestamp=Timestamp(T0 + 2, 0, "oracle-node-1"),
    )


def rate(call: Callable[[], object], n: int, repeat: int) -> float:
    """Calls per second, best of `repeat` runs of `n` calls."""
    call()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, repeat = args.messages, args.repeat

    batch, event = op_batch(10), server_event()
    ts_frame, batch_frame, batch_json = ts_op_batch(10), encode(batch), encode_json(batch)
    batch_text = batch_json.decode()
    event_frame, event_json = encode(event), encode_json(event)
    # The figures mean something only if every path decodes to the same messages.
    assert decode_client_frame(ts_frame) == batch
    assert decode_client_frame(batch_frame) == batch
    assert decode_client_frame(batch_text) == batch
    assert decode_server_message(event_frame) == event
    assert decode_json(event_json, ServerEvent) == event

    cases: list[tuple[str, str, Callable[[], object], int | None]] = [
        ("decode", "OP_BATCH(10), TS frame", lambda: decode_client_frame(ts_frame), 50_000),
        ("decode", "OP_BATCH(10), topgun frame", lambda: decode_client_frame(batch_frame), 50_000),
        ("decode", "OP_BATCH(10), JSON text", lambda: decode_client_frame(batch_text), None),
        ("encode", "OP_BATCH(10), msgpack", lambda: encode(batch), None),
        ("encode", "OP_BATCH(10), JSON", lambda: encode_json(batch), None),
        ("decode", "SERVER_EVENT, msgpack", lambda: decode_server_message(event_frame), None),
        ("decode", "SERVER_EVENT, JSON", lambda: decode_json(event_json, ServerEvent), None),
        ("encode", "SERVER_EVENT, msgpack", lambda: encode(event), 100_000),
        ("encode", "SERVER_EVENT, JSON", lambda: encode_json(event), None),
    ]
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"topgun codec, {python}, {platform.machine()}, best of {repeat} x {n:,} calls")
    print(
        f"frame sizes: OP_BATCH(10) TS {len(ts_frame)} B, topgun {len(batch_frame)} B, "
        f"JSON {len(batch_json)} B; SERVER_EVENT {len(event_frame)} B, JSON {len(event_json)} B"
    )
    print(f"{'':6} {'message':28} {'messages/s':>12}  target")
    for action, what, call, target in cases:
        per_second = rate(call, n, repeat)
        verdict = ""
        if target is not None:
            verdict = f">= {target:,}  {'met' if per_second >= target else 'MISSED'}"
        print(f"{action:6} {what:28} {per_second:>12,.0f}  {verdict}")


if __name__ == "__main__":
    main()
