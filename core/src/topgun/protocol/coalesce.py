"""The per-connection outbound queue that coalesces messages into `BATCH` frames (PROTOCOL.md
§1.3). Sans-I/O: it takes messages and hands back the frames to send; it never reads a clock.

The session owns the timer: when `pending` becomes non-zero it arms a `max_delay_ms` timer
(`DEFAULT_MAX_DELAY_MS`) and calls `flush()` when it fires. Urgent messages first flush the
queue and then go out alone, so every message leaves in the order it was produced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from topgun.protocol.auth import Batch
from topgun.protocol.batch import pack_batch
from topgun.protocol.catalogue import URGENT_MESSAGE_TYPES
from topgun.protocol.codec import encode as default_encode

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_DELAY_MS",
    "Coalescer",
]

DEFAULT_MAX_DELAY_MS: Final = 2
DEFAULT_MAX_BATCH_SIZE: Final = 500
DEFAULT_MAX_BATCH_BYTES: Final = 256 * 1024


class Coalescer:
    """Queues non-urgent frames of one connection; `send`/`flush` return the frames to write."""

    def __init__(
        self,
        *,
        encode: Callable[[msgspec.Struct], bytes] = default_encode,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        if max_batch_size < 1 or max_batch_bytes < 1:
            raise ValueError("max_batch_size and max_batch_bytes must be positive")
        self._encode = encode
        self.max_batch_size = max_batch_size
        self.max_batch_bytes = max_batch_bytes
        self._queue: list[bytes] = []
        self._queued_bytes = 0

    @property
    def pending(self) -> int:
        """How many messages wait for the next flush."""
        return len(self._queue)

    def send(self, message: msgspec.Struct, *, urgent: bool | None = None) -> list[bytes]:
        """Queue a message, or send it now if urgent (by default: its type is in §1.3's list)."""
        if isinstance(message, Batch):
            raise ValueError("a BATCH is never queued: BATCH frames are not nested (§1.3)")
        if urgent is None:
            urgent = type(message) in URGENT_MESSAGE_TYPES
        return self.send_frame(self._encode(message), urgent=urgent)

    def send_frame(self, frame: bytes, *, urgent: bool = False) -> list[bytes]:
        """Like `send`, for a message that is already encoded (e.g. one event fanned out)."""
        if urgent:
            return [*self.flush(), frame]
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if len(self._queue) >= self.max_batch_size or self._queued_bytes >= self.max_batch_bytes:
            return self.flush()
        return []

    def flush(self) -> list[bytes]:
        """Empty the queue: nothing, one message as it is, or one `BATCH` of all of them."""
        queue = self._queue
        if not queue:
            return []
        self._queue = []
        self._queued_bytes = 0
        if len(queue) == 1:
            return queue
        return [self._encode(pack_batch(queue))]

    def discard(self) -> None:
        """Drop what is queued (the socket closed)."""
        self._queue = []
        self._queued_bytes = 0
