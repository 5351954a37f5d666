"""Fan-out of items to any number of async iterators.

Each iterator is a plain object with its own unbounded queue: publishing never blocks the
task that received the item from the server, and an iterator the consumer abandons holds
no resource (it is simply garbage-collected, on asyncio and trio alike).
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Generic, TypeVar

import anyio

__all__ = ["Feed", "FeedIterator"]

T = TypeVar("T")


class FeedIterator(Generic[T]):
    """One consumer's iterator: every item published after it was opened, in order; it
    stops when the feed is closed (after the items already queued)."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._wake = anyio.Event()
        self._ended = False

    def __aiter__(self) -> FeedIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            await self._wake.wait()
            self._wake = anyio.Event()
        return self._items.popleft()

    def _put(self, item: T) -> None:
        self._items.append(item)
        self._wake.set()

    def _end(self) -> None:
        self._ended = True
        self._wake.set()

    async def aclose(self) -> None:
        """Stop this iterator (other consumers are unaffected)."""
        self._items.clear()
        self._end()
        await anyio.lowlevel.checkpoint()


class Feed(Generic[T]):
    """Items published to a feed reach every open iterator."""

    def __init__(self) -> None:
        self._iterators: weakref.WeakSet[FeedIterator[T]] = weakref.WeakSet()

    def open(self) -> FeedIterator[T]:
        iterator: FeedIterator[T] = FeedIterator()
        self._iterators.add(iterator)
        return iterator

    @property
    def active(self) -> bool:
        """True while some iterator is open."""
        return any(not it._ended for it in self._iterators)

    def publish(self, item: T) -> None:
        for iterator in list(self._iterators):
            if not iterator._ended:
                iterator._put(item)

    def close(self) -> None:
        """End every iterator."""
        for iterator in list(self._iterators):
            iterator._end()
        self._iterators.clear()
