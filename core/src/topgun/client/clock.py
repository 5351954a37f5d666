"""The client's time source, injected so that simulation can run it on virtual time.

The HLC's wall time, reconnect backoff, heartbeats and request deadlines all read this
clock; nothing in the client calls `time.time()` or sleeps on its own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock", "clock_deadline"]


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


@asynccontextmanager
async def clock_deadline(clock: Clock, seconds: float) -> AsyncIterator[None]:
    """Cancel the block after `seconds` of `clock`'s time and raise TimeoutError (what
    `anyio.fail_after` does on the real clock)."""
    expired = False
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            nonlocal expired
            await clock.sleep(seconds)
            expired = True
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        try:
            yield
        except BaseException as exc:  # re-raised below as is, not in an exception group
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if expired:
        raise TimeoutError(f"no answer within {seconds} s")
    if error is not None:
        raise error
