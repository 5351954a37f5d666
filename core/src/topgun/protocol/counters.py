"""PN counters (PROTOCOL.md §2.3, §5.11, §6.10).

The wire state is `{p, n}`, but every Feb 2026 TS client sends and reads `{positive, negative}`;
so input may carry either pair (or both) and topgun sends both pairs with the same content.
"""

from __future__ import annotations

import math

from topgun.protocol.message import Message, Wire

__all__ = [
    "CounterRequest",
    "CounterRequestPayload",
    "CounterResponse",
    "CounterState",
    "CounterStatePayload",
    "CounterSync",
    "CounterUpdate",
]


def _merge(a: dict[str, float] | None, b: dict[str, float] | None) -> dict[str, float]:
    out = dict(a or {})
    for node, amount in (b or {}).items():
        out[node] = max(out.get(node, amount), amount)
    return out


class CounterState(Wire):
    """Grow-only per-node totals; entries must be finite and non-negative (fractions allowed)."""

    p: dict[str, float] | None = None
    n: dict[str, float] | None = None
    positive: dict[str, float] | None = None
    negative: dict[str, float] | None = None

    def __post_init__(self) -> None:
        for pair in (self.p, self.n, self.positive, self.negative):
            for node, amount in (pair or {}).items():
                if not (math.isfinite(amount) and amount >= 0):
                    raise ValueError(f"counter entry {node!r} must be finite and >= 0")

    @classmethod
    def of(cls, p: dict[str, float], n: dict[str, float]) -> CounterState:
        """The state topgun sends: both spellings with identical content (§2.3)."""
        return cls(p=p, n=n, positive=dict(p), negative=dict(n))

    def totals(self) -> tuple[dict[str, float], dict[str, float]]:
        """`(p, n)` merged over both spellings (per-node maximum, as the CRDT merge does)."""
        return _merge(self.p, self.positive), _merge(self.n, self.negative)


class CounterRequestPayload(Wire):
    name: str


class CounterRequest(Message, tag="COUNTER_REQUEST"):
    """C→S: subscribe to a counter; answered by `COUNTER_RESPONSE`."""

    payload: CounterRequestPayload


class CounterStatePayload(Wire):
    name: str
    state: CounterState


class CounterResponse(Message, tag="COUNTER_RESPONSE"):
    payload: CounterStatePayload


class CounterSync(Message, tag="COUNTER_SYNC"):
    """C→S: merge the client's state; the sender and other subscribers get `COUNTER_UPDATE`."""

    payload: CounterStatePayload


class CounterUpdate(Message, tag="COUNTER_UPDATE"):
    payload: CounterStatePayload
