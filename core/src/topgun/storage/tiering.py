"""Memory budgets: what a tiering storage wrapper tells the server about holding map data.

A backend (usually a wrapper, such as `topgun-tiered`'s) that has a `memory_budget`
attribute asks the server to keep the values of its maps (LWW values, OR-Map record values)
within that many bytes: past the high-water mark the least recently used values are evicted
(their records go *cold*: keys, tags, timestamps and TTLs stay in memory, the values stay
in storage) down to the low-water mark, and every read that needs a cold value loads it
back with `load_keys`. Sizes are estimated by `value_size`; a `PagedBackend` is loaded page
by page at start so that loading stays within the budget too. A backend with
`archived_maps` (`ArchivingBackend`) keeps whole maps out of the server's memory until a
request names them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from topgun.storage.contract import MapKind

DEFAULT_BUDGET_BYTES: Final = 1 << 30
"""1 GiB."""

_getsizeof = sys.getsizeof


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """How many bytes of map values the server keeps in memory."""

    budget_bytes: int = DEFAULT_BUDGET_BYTES
    high_water: float = 0.85
    """Evict once the estimated bytes pass this fraction of the budget..."""
    low_water: float = 0.70
    """...down to this fraction."""

    def __post_init__(self) -> None:
        if isinstance(self.budget_bytes, bool) or not isinstance(self.budget_bytes, int):
            raise TypeError(f"budget_bytes must be an int, got {type(self.budget_bytes).__name__}")
        if self.budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {self.budget_bytes}")
        if not 0 < self.low_water < self.high_water <= 1:
            raise ValueError(
                "the water marks must satisfy 0 < low_water < high_water <= 1, got "
                f"low_water={self.low_water}, high_water={self.high_water}"
            )

    @property
    def high_bytes(self) -> int:
        return int(self.budget_bytes * self.high_water)

    @property
    def low_bytes(self) -> int:
        return int(self.budget_bytes * self.low_water)


@runtime_checkable
class BudgetedBackend(Protocol):
    """A storage backend that asks the server to keep map values within a budget."""

    @property
    def memory_budget(self) -> MemoryBudget: ...


def value_size(value: Any) -> int:
    """The estimated bytes a record value occupies in memory (deep `sys.getsizeof` of the
    JSON-like shapes msgpack decodes to; shared objects are counted each time)."""
    kind = type(value)
    if kind is dict:
        total = _getsizeof(value)
        for key, item in value.items():
            total += _getsizeof(key) + value_size(item)
        return total
    if kind is list or kind is tuple:
        total = _getsizeof(value)
        for item in value:
            total += value_size(item)
        return total
    return _getsizeof(value)


@runtime_checkable
class ArchivingBackend(Protocol):
    """A storage backend that keeps some maps in an archive: they are listed by
    `list_maps` but not loaded at start; the server restores one (`load_map`, which brings
    it back from the archive) when a request first names it."""

    async def archived_maps(self) -> dict[str, MapKind]:
        """The archived maps, by name, with their kinds."""
        ...
