"""The `BATCH` frame's `data` layout (PROTOCOL.md §1.3).

`data` = u32le N, then N × (u32le length, one complete msgpack message), nothing after the last.
Unpacking checks every length against the bytes left before slicing, so a lying header costs
nothing but the error.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from topgun.protocol.auth import Batch
from topgun.protocol.errors import ErrorCode, ProtocolError

__all__ = ["pack_batch", "unpack_batch"]

_U32: Final = struct.Struct("<I")


def pack_batch(frames: Sequence[bytes]) -> Batch:
    """The `BATCH` message carrying already-encoded `frames` (two or more, by §1.3)."""
    parts = [_U32.pack(len(frames))]
    for frame in frames:
        parts.append(_U32.pack(len(frame)))
        parts.append(frame)
    return Batch(count=len(frames), data=b"".join(parts))


def _bad(detail: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, detail, path="$.data", message_type="BATCH")


def unpack_batch(batch: Batch) -> list[bytes]:
    """The inner frames of a `BATCH`, in order; `ProtocolError` if the layout is broken."""
    data = batch.data
    if len(data) < 4:
        raise _bad("BATCH data shorter than its count")
    (count,) = _U32.unpack_from(data, 0)
    if count != batch.count:
        raise _bad(f"BATCH count {batch.count} but data holds {count} messages")
    # Each message takes a length word and at least one byte.
    if count * 5 > len(data) - 4:
        raise _bad(f"BATCH claims {count} messages in {len(data)} bytes")
    frames: list[bytes] = []
    offset = 4
    for index in range(count):
        if offset + 4 > len(data):
            raise _bad(f"BATCH truncated before message {index}")
        (length,) = _U32.unpack_from(data, offset)
        offset += 4
        if length == 0 or offset + length > len(data):
            raise _bad(f"BATCH message {index} claims {length} bytes")
        frames.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise _bad(f"BATCH has {len(data) - offset} bytes after its last message")
    return frames
