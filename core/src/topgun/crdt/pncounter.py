"""Positive-negative counter (PROTOCOL.md §2.3): a counter any replica can change offline.

Each node only grows its own entries in `p` (increments) and `n` (decrements); merging
takes the per-node maximum, so merges commute and repeat harmlessly, and the value is
Σp − Σn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from topgun.crdt.hlc import check_node_id


def _check_amount(amount: object, what: str) -> float:
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise ValueError(f"{what} must be a number, got {type(amount).__name__}")
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {amount!r}")
    return amount


def _check_side(side: Mapping[str, float] | None, name: str) -> dict[str, float]:
    if side is None:
        return {}
    if not isinstance(side, Mapping):
        raise ValueError(f"counter state {name!r} must be a map of node id to number")
    checked: dict[str, float] = {}
    for node_id, amount in side.items():
        if not isinstance(node_id, str):
            raise ValueError(f"counter state {name!r} has a non-string node id {node_id!r}")
        checked[node_id] = _check_amount(amount, f"counter state {name}[{node_id!r}]")
    return checked


def _total(amounts: list[float]) -> float:
    # Integers sum exactly; floats go through fsum, which is correctly rounded and so
    # independent of order: replicas with equal state report equal values.
    if all(type(a) is int for a in amounts):
        return sum(amounts)
    return math.fsum(amounts)


class PNCounter:
    """A grow-only pair of per-node totals, `p` (increments) and `n` (decrements).

    A node absent from a side counts as 0; zero entries are never stored, so equal
    counters have equal `state`.
    """

    __slots__ = ("_n", "_p", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = check_node_id(node_id)
        self._p: dict[str, float] = {}
        self._n: dict[str, float] = {}

    def increment(self, by: float = 1) -> float:
        """Add `by` (finite, >= 0; fractions allowed) to this node's `p`; returns the value."""
        if _check_amount(by, "increment"):
            self._p[self.node_id] = self._p.get(self.node_id, 0) + by
        return self.value

    def decrement(self, by: float = 1) -> float:
        """Add `by` (finite, >= 0; fractions allowed) to this node's `n`; returns the value."""
        if _check_amount(by, "decrement"):
            self._n[self.node_id] = self._n.get(self.node_id, 0) + by
        return self.value

    @property
    def value(self) -> float:
        """Σp − Σn."""
        return _total([*self._p.values(), *(-x for x in self._n.values())])

    @property
    def state(self) -> dict[str, dict[str, float]]:
        """A copy of the state as `{"p": {node: total}, "n": {node: total}}`."""
        return {"p": dict(self._p), "n": dict(self._n)}

    def merge(
        self, p: Mapping[str, float] | None = None, n: Mapping[str, float] | None = None
    ) -> bool:
        """Merge remote state by per-node maximum; True if anything grew.

        Every entry is validated first (finite, >= 0, string node ids): on ValueError
        nothing is merged.
        """
        remote_p, remote_n = _check_side(p, "p"), _check_side(n, "n")
        changed = False
        for mine, theirs in ((self._p, remote_p), (self._n, remote_n)):
            for node_id, amount in theirs.items():
                if amount > mine.get(node_id, 0):
                    mine[node_id] = amount
                    changed = True
        return changed
