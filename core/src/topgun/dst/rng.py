"""Seeded randomness: one seed decides every choice of a simulation run.

Each component draws from its own stream (`fork(name)`), derived from the seed and the
name, so adding a draw in one component does not shift the choices of another.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["SeededRNG"]


class SeededRNG(random.Random):
    """`random.Random` seeded from (`seed`, `name`)."""

    def __init__(self, seed: int, name: str = "root") -> None:
        self.root_seed = seed
        self.name = name
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        super().__init__(int.from_bytes(digest[:8], "big"))

    def fork(self, name: str) -> SeededRNG:
        """An independent stream for component `name`."""
        return SeededRNG(self.root_seed, f"{self.name}/{name}")

    def chance(self, probability: float) -> bool:
        """True with `probability`."""
        return probability > 0 and self.random() < probability
