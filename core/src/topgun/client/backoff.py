"""Reconnect delays: exponential backoff with jitter, bounded (full jitter by default)."""

from __future__ import annotations

import math
import random

import msgspec

__all__ = ["Backoff"]


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Delay before reconnect attempt n (0-based): `min(max_delay, initial * factor**n)`,
    of which a `jitter` fraction is random (`jitter=1` is "full jitter": uniform in
    `[0, d]`; `jitter=0` is a fixed schedule). Randomness comes from the RNG passed in."""

    initial: float = 0.25
    """Seconds before the first retry (before jitter)."""
    factor: float = 2.0
    max_delay: float = 30.0
    """Upper bound of any delay, in seconds."""
    jitter: float = 0.5
    """Fraction of each delay that is random, in [0, 1]."""

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"Backoff.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"Backoff.{name} must be finite and >= 0, got {value!r}")
        if self.factor < 1:
            raise ValueError(f"Backoff.factor must be >= 1, got {self.factor!r}")
        if self.jitter > 1:
            raise ValueError(f"Backoff.jitter must be in [0, 1], got {self.jitter!r}")
        if self.initial > self.max_delay:
            raise ValueError("Backoff.initial must not exceed Backoff.max_delay")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        base = min(self.max_delay, self.initial * self.factor ** min(attempt, 64))
        return base * (1 - self.jitter) + base * self.jitter * rng.random()
