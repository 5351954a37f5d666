"""The coalescing writer: triggers, urgent messages, order (§1.3, P-16 to P-18)."""

from __future__ import annotations

import pytest

from topgun.protocol import (
    Batch,
    Coalescer,
    Error,
    ErrorPayload,
    OpAck,
    OpAckPayload,
    Pong,
    decode_server_frame,
    decode_server_message,
    encode,
    pack_batch,
)


def ack(n: int) -> OpAck:
    return OpAck(payload=OpAckPayload(last_id=str(n)))


def ids(frames: list[bytes]) -> list[str]:
    return [
        m.payload.last_id if isinstance(m, OpAck) else type(m).__name__
        for frame in frames
        for m in decode_server_frame(frame)
    ]


def test_one_queued_message_is_sent_bare() -> None:
    coalescer = Coalescer()
    assert coalescer.send(ack(1)) == []
    assert coalescer.pending == 1
    assert coalescer.flush() == [encode(ack(1))]
    assert coalescer.pending == 0
    assert coalescer.flush() == []


def test_two_or_more_become_one_batch() -> None:
    coalescer = Coalescer()
    for n in range(3):
        coalescer.send(ack(n))
    (frame,) = coalescer.flush()
    batch = decode_server_message(frame)
    assert isinstance(batch, Batch)
    assert batch.count == 3
    assert ids([frame]) == ["0", "1", "2"]


def test_urgent_messages_flush_the_queue_first_and_go_alone() -> None:
    coalescer = Coalescer()
    coalescer.send(ack(1))
    coalescer.send(ack(2))
    frames = coalescer.send(Pong(server_time=5, ping_timestamp=4.0))
    assert len(frames) == 2
    assert isinstance(decode_server_message(frames[0]), Batch)
    assert decode_server_message(frames[1]) == Pong(server_time=5, ping_timestamp=4.0)
    assert ids(frames) == ["1", "2", "Pong"]
    assert coalescer.pending == 0


def test_urgency_follows_the_spec_list_unless_overridden() -> None:
    coalescer = Coalescer()
    error = Error(payload=ErrorPayload(code=400, message="x"))
    assert coalescer.send(error) == [encode(error)]  # urgent by type
    assert coalescer.send(error, urgent=False) == []  # queued on request
    assert coalescer.send(ack(1), urgent=True) == [encode(error), encode(ack(1))]


def test_size_and_byte_limits_trigger_a_flush() -> None:
    coalescer = Coalescer(max_batch_size=3)
    assert coalescer.send(ack(1)) == []
    assert coalescer.send(ack(2)) == []
    (frame,) = coalescer.send(ack(3))
    assert ids([frame]) == ["1", "2", "3"]
    by_bytes = Coalescer(max_batch_bytes=len(encode(ack(1))) * 2)
    assert by_bytes.send(ack(1)) == []
    assert ids(by_bytes.send(ack(2))) == ["1", "2"]


def test_pre_encoded_frames_and_discard() -> None:
    coalescer = Coalescer()
    coalescer.send_frame(encode(ack(1)))
    coalescer.discard()
    assert coalescer.pending == 0
    assert coalescer.flush() == []


def test_a_batch_is_never_queued_inside_a_batch() -> None:
    with pytest.raises(ValueError, match="BATCH"):
        Coalescer().send(pack_batch([encode(ack(1)), encode(ack(2))]))


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        Coalescer(max_batch_size=0)
