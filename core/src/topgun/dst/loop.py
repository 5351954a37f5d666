"""An asyncio event loop on virtual time: idle waits cost no real time.

`VirtualTimeLoop.time()` is a virtual clock that stands still while code runs and jumps
straight to the next timer when every task is waiting. So a simulated hour of heartbeats,
backoffs and timeouts runs in the CPU time its callbacks take, and a run is a deterministic
function of its inputs: asyncio runs ready callbacks in FIFO order, and no real I/O or
thread is involved (simulations use in-memory storage and transports).

A wait with no timer at all means every task waits for something that can never happen:
the loop raises `SimulationDeadlock` instead of hanging.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

__all__ = ["SimulationDeadlock", "VirtualTimeLoop", "run_virtual"]


class SimulationDeadlock(RuntimeError):
    """Every task waits and no timer is due: nothing can ever happen again."""


class _VirtualSelector(selectors.BaseSelector):
    """A real selector (for the loop's self-pipe) that, instead of sleeping until the next
    timer, advances the loop's virtual clock to it."""

    def __init__(self, loop_clock: list[float]) -> None:
        self._real = selectors.DefaultSelector()
        self._now = loop_clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise SimulationDeadlock(
                f"at virtual time {self._now[0]:.3f} s every task waits and no timer is due"
            )
        self._now[0] += timeout
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose `time()` is virtual (seconds from 0)."""

    def __init__(self) -> None:
        self._virtual_now = [0.0]
        super().__init__(_VirtualSelector(self._virtual_now))

    def time(self) -> float:
        return self._virtual_now[0]


def run_virtual(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run `func(*args)` with anyio on a fresh `VirtualTimeLoop`; its result."""
    return anyio.run(
        func, *args, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop}
    )
