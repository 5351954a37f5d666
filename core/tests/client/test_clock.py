"""Injected time: backoff delays, and deadlines on the client's clock."""

from __future__ import annotations

import random

import anyio
import pytest

from topgun.client import Backoff
from topgun.client.clock import clock_deadline

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class ManualClock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._moved = anyio.Event()

    def wall_ms(self) -> int:
        return int(self.now * 1000)

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        while self.now < until:
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()
        self._moved = anyio.Event()


def test_backoff_grows_is_bounded_and_is_reproducible_from_the_seed() -> None:
    backoff = Backoff(initial=0.1, factor=2, max_delay=1.0, jitter=0.5)
    delays = [backoff.delay(n, random.Random(3)) for n in range(8)]
    for n, delay in enumerate(delays):
        base = min(1.0, 0.1 * 2**n)
        assert base * 0.5 <= delay <= base
    assert delays == [backoff.delay(n, random.Random(3)) for n in range(8)]
    assert Backoff(jitter=0).delay(2, random.Random()) == 1.0
    with pytest.raises(ValueError, match="factor"):
        Backoff(factor=0.5)
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=5, max_delay=1)


async def test_deadline_follows_the_injected_clock() -> None:
    clock = ManualClock()
    outcome: list[str] = []

    async def waiter() -> None:
        try:
            async with clock_deadline(clock, 5):
                await anyio.sleep_forever()
        except TimeoutError:
            outcome.append("timeout")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.9)
        await anyio.wait_all_tasks_blocked()
        assert outcome == []
        clock.advance(0.2)
    assert outcome == ["timeout"]


async def test_deadline_passes_errors_through_unwrapped() -> None:
    clock = ManualClock()
    with pytest.raises(KeyError):
        async with clock_deadline(clock, 5):
            raise KeyError("body")
    async with clock_deadline(clock, 5):
        pass  # no timeout, no error
