"""Periodic background work: the loop behind the server's flushes and sweeps."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio


async def every(
    seconds: float, work: Callable[[], Awaitable[object]], logger: logging.Logger, failed: str
) -> None:
    """Await `work()` every `seconds`, forever (a server background task).

    A failure is logged to `logger` with the message `failed` and the traceback, and the next
    interval tries again: one bad run must not stop the work for good."""
    while True:
        await anyio.sleep(seconds)
        try:
            await work()
        except Exception:
            logger.exception(failed)
