"""Virtual clocks: the server's and each client's time, read off the virtual loop.

Every clock is the loop's virtual time plus a fixed offset, so clients can run with skewed
clocks (HLC must cope) while time itself only moves when the simulation is idle.
"""

from __future__ import annotations

from typing import Final

import anyio

__all__ = ["EPOCH_MS", "VirtualClock"]

EPOCH_MS: Final = 1_767_225_600_000
"""Wall time at virtual time 0 (2026-01-01T00:00:00Z): runs do not depend on today's date."""


class VirtualClock:
    """Wall and monotonic time on the virtual loop, with a skew; satisfies the client's
    `topgun.client.Clock` and gives the server's `clock()` through `wall_ms`."""

    def __init__(self, skew_ms: int = 0) -> None:
        self.skew_ms = skew_ms

    def monotonic(self) -> float:
        """Virtual seconds since the simulation started."""
        return anyio.current_time()

    def wall_ms(self) -> int:
        """Epoch milliseconds: `EPOCH_MS` plus virtual time plus the skew."""
        return EPOCH_MS + int(anyio.current_time() * 1000) + self.skew_ms

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of virtual time."""
        await anyio.sleep(seconds)
