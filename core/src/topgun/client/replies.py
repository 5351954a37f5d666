"""A reply awaited by one task and delivered by another (an anyio-friendly future)."""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio

__all__ = ["Reply"]

T = TypeVar("T")


class Reply(Generic[T]):
    """Set once with a value or an error; any number of tasks may `wait()` for it."""

    __slots__ = ("_error", "_event", "_value", "done")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self.done = False

    def set(self, value: T) -> None:
        if not self.done:
            self._value, self.done = value, True
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self._error, self.done = error, True
            self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
