"""Which map values are in memory, how many bytes they take, and which were used least
recently: the accounting behind a storage `MemoryBudget` (see `topgun.storage.tiering`).

`MapRegistry` notes every stored value here (an LWW key's value; an OR-Map key's record
values with their hash strings, as one entry), touches the values that reads use, pins the
ones a request is working with, and evicts from the least recently used end once the
estimated bytes pass the high-water mark.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from topgun.storage import MemoryBudget, value_size

Entry = tuple[str, str]
"""(map name, key)."""


class HotSet:
    """The hot values of every map, least recently used first."""

    __slots__ = (
        "_pinned_keys",
        "_pinned_maps",
        "blocked",
        "budget",
        "evictions",
        "loads",
        "lru",
        "peak",
        "unpins",
        "used",
        "views",
    )

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.used = 0
        """Estimated bytes of every hot value, and of what live views keep (`views`)."""
        self.views = 0
        """Estimated bytes live views keep (`charge`): counted in `used`, never evicted,
        so values are evicted to make room for them."""
        self.peak = 0
        """The most `used` has been (a measure of how far past the budget values went)."""
        self.lru: OrderedDict[Entry, int] = OrderedDict()
        """Hot entry -> its estimated bytes, least recently used first."""
        self.evictions = 0
        self.loads = 0
        self.unpins = 0
        """How many `unpin`s so far (each may make values evictable again)."""
        self.blocked: tuple[int, int] | None = None
        """(ended transactions, unpins) when an eviction pass last found nothing more it
        could evict; no pass runs again until one of them moved."""
        self._pinned_keys: dict[Entry, int] = {}
        self._pinned_maps: dict[str, int] = {}

    @property
    def over(self) -> bool:
        """Whether the hot values passed the high-water mark."""
        return self.used > self.budget.high_bytes

    def note(self, name: str, key: str, value: Any) -> None:
        """Value `value` (None for a tombstone) is now stored under (name, key), hot."""
        self.note_bytes(name, key, 0 if value is None else value_size(value))

    def note_bytes(self, name: str, key: str, size: int) -> None:
        """The values of (name, key) now take `size` estimated bytes, hot (0: none)."""
        entry = (name, key)
        lru = self.lru
        old = lru.pop(entry, 0)
        if size:
            lru[entry] = size
        used = self.used = self.used + size - old
        if used > self.peak:
            self.peak = used

    def charge(self, delta: int) -> None:
        """Live views now keep `delta` more bytes (fewer, if negative)."""
        self.views += delta
        used = self.used = self.used + delta
        if used > self.peak:
            self.peak = used

    def touch(self, name: str, key: str) -> None:
        """A read used the value of (name, key): it becomes the most recently used."""
        entry = (name, key)
        if entry in self.lru:
            self.lru.move_to_end(entry)

    def drop(self, entry: Entry) -> int:
        """Forget a hot entry that was evicted; returns its bytes."""
        size = self.lru.pop(entry)
        self.used -= size
        self.evictions += 1
        return size

    def pin(self, name: str, keys: Iterable[str] | None) -> list[Entry] | str:
        """Keep these values (every value of map `name` when `keys` is None) from eviction
        until `unpin` is called with the result."""
        if keys is None:
            self._pinned_maps[name] = self._pinned_maps.get(name, 0) + 1
            return name
        entries = [(name, key) for key in keys]
        pinned = self._pinned_keys
        for entry in entries:
            pinned[entry] = pinned.get(entry, 0) + 1
        return entries

    def unpin(self, pins: list[Entry] | str) -> None:
        """Undo one `pin`."""
        self.unpins += 1
        if isinstance(pins, str):
            counts: dict[Any, int] = self._pinned_maps
            entries: Iterable[Any] = (pins,)
        else:
            counts, entries = self._pinned_keys, pins
        for entry in entries:
            left = counts[entry] - 1
            if left:
                counts[entry] = left
            else:
                del counts[entry]

    def pinned(self, entry: Entry) -> bool:
        """Whether `entry` may not be evicted now."""
        return entry in self._pinned_keys or entry[0] in self._pinned_maps
