"""The BATCH data layout: u32le count, then u32le length + message per message (§1.3)."""

from __future__ import annotations

import struct

import pytest

from topgun.protocol import Batch, ErrorCode, ProtocolError, pack_batch, unpack_batch


def test_pack_then_unpack_gives_the_frames_back_in_order() -> None:
    frames = [b"\x80", b"\x81\xa1a\x01", b"\x90" * 3]
    batch = pack_batch(frames)
    assert batch.count == 3
    assert batch.data == (
        b"\x03\x00\x00\x00"
        + b"\x01\x00\x00\x00\x80"
        + b"\x04\x00\x00\x00\x81\xa1a\x01"
        + b"\x03\x00\x00\x00\x90\x90\x90"
    )
    assert unpack_batch(batch) == frames


@pytest.mark.parametrize(
    ("count", "data", "problem"),
    [
        (1, b"\x01\x00\x00", "shorter than its count"),
        (2, b"\x01\x00\x00\x00\x01\x00\x00\x00\x80", "count 2 but data holds 1"),
        (1, b"\x01\x00\x00\x00\x05\x00\x00\x00\x80", "claims 5 bytes"),
        (1, b"\x01\x00\x00\x00\x00\x00\x00\x00\x80", "claims 0 bytes"),
        (1, b"\x01\x00\x00\x00\x01\x00\x00\x00\x80\x80", "1 bytes after its last"),
        (2, b"\x02\x00\x00\x00\x03\x00\x00\x00\x80\x80\x80\x01\x00\x00", "truncated before"),
        (0xFFFFFFFF, b"\xff\xff\xff\xff" + b"\x00" * 8, "claims 4294967295 messages"),
    ],
)
def test_broken_layouts_are_protocol_errors(count: int, data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem) as info:
        unpack_batch(Batch(count=count, data=data))
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert info.value.path == "$.data"


def test_lengths_are_little_endian() -> None:
    frame = b"\x80" * 300
    data = pack_batch([frame, frame]).data
    assert struct.unpack_from("<II", data) == (2, 300)
