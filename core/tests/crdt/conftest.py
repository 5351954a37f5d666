"""Shared fixtures for the CRDT tests: a wall clock the test moves by hand."""

from __future__ import annotations

import pytest

T0 = 1_700_000_000_000
"""A fixed epoch-milliseconds reading the tests start from."""


class ManualClock:
    """An injectable `clock() -> int` whose reading only changes when a test says so."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
