"""The virtual-time loop, clocks and seeded randomness."""

from __future__ import annotations

import time

import anyio
import pytest

from topgun.dst.clock import EPOCH_MS, VirtualClock
from topgun.dst.loop import SimulationDeadlock, run_virtual
from topgun.dst.rng import SeededRNG


def test_an_hour_of_virtual_sleep_takes_no_real_time() -> None:
    async def main() -> float:
        clock = VirtualClock()
        await clock.sleep(3600)
        with anyio.move_on_after(60):
            await anyio.sleep(120)
        return clock.monotonic()

    started = time.process_time()
    assert run_virtual(main) == pytest.approx(3660)
    assert time.process_time() - started < 5  # CPU time, whatever the machine's load


def test_timers_fire_in_virtual_order() -> None:
    async def main() -> list[str]:
        order: list[str] = []

        async def after(seconds: float, name: str) -> None:
            await anyio.sleep(seconds)
            order.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(after, 2.0, "b")
            tg.start_soon(after, 1.0, "a")
            tg.start_soon(after, 3.0, "c")
        return order

    assert run_virtual(main) == ["a", "b", "c"]


def test_waiting_with_nothing_scheduled_is_a_deadlock() -> None:
    async def main() -> None:
        await anyio.Event().wait()

    with pytest.raises(SimulationDeadlock, match="no timer is due"):
        run_virtual(main)


def test_clocks_read_virtual_time_with_their_skew() -> None:
    async def main() -> tuple[int, int]:
        await anyio.sleep(1.5)
        return VirtualClock().wall_ms(), VirtualClock(skew_ms=-200).wall_ms()

    assert run_virtual(main) == (EPOCH_MS + 1500, EPOCH_MS + 1300)


def test_seeded_streams_repeat_and_are_independent() -> None:
    first, again = SeededRNG(7), SeededRNG(7)
    assert [first.random() for _ in range(5)] == [again.random() for _ in range(5)]
    assert SeededRNG(7).fork("net").random() != SeededRNG(7).fork("clients").random()
    assert SeededRNG(7).fork("net").random() == SeededRNG(7).fork("net").random()
    assert SeededRNG(8).random() != SeededRNG(7).random()
    assert not SeededRNG(1).chance(0.0)
