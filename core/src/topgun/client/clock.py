"""The client's time source, injected so that simulation can run it on virtual time.

The HLC's wall time, reconnect backoff, heartbeats and request deadlines all read this
clock; nothing in the client calls `time.time()` or sleeps on its own.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Wall time for timestamps, monotonic time and sleeping for delays."""

    def wall_ms(self) -> int:
        """Epoch milliseconds (the HLC's wall clock)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals)."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""


class SystemClock:
    """The real clock: `time.time()`, `time.monotonic()` and `anyio.sleep`."""

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
