"""What live views (live queries, live searches, hybrid queries) need under a memory budget.

Without a budget a view keeps the rows it works on. Under one (`MapRegistry.hot`), that
would keep a copy of every row the eviction of values is meant to free, so views keep only
what re-evaluating rows needs and read values through the registry when they send them:

- `scan` reads a map chunk by chunk, each chunk held (loaded, pinned) only while it is
  used, so building a view or an index never holds more than a chunk of cold values;
- `project` cuts a value down to the attributes a view's predicates, sorts and indexes
  read (attribute lookups are top-level only, so the cut answers them exactly);
- `Outbox` sends messages in order, building the ones that carry a row's value when it is
  sent; a message whose row is cold waits (with every message after it) until `settle`
  loaded the row, so a client still gets its updates in the order they were computed;
- `Charge` counts the bytes a view keeps in the budget (`HotSet.charge`), so values are
  evicted to make room for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from topgun.query import ABSENT
from topgun.query.predicates import And, Not, Or, Predicate
from topgun.server.events import Recipient
from topgun.server.maps import MapRegistry
from topgun.storage import value_size

SCAN_CHUNK: Final = 500
"""Keys a `scan` holds at once."""


def live_keys(maps: MapRegistry, map_name: str) -> list[str]:
    """Every live key of `map_name`, sorted, without reading a value (cold ones included)."""
    lww = maps.lww(map_name)
    if lww is not None:
        now = maps.hlc.wall_ms()
        return sorted(
            key
            for key, record in lww.records()
            if record.value is not None and not record.expired(now)
        )
    ormap = maps.ormap(map_name)
    return [] if ormap is None else sorted(ormap.keys())


def current_value(maps: MapRegistry, map_name: str, key: str) -> Any:
    """The live row value of `key` in `map_name` (OR-Map: its live values), or `ABSENT`."""
    lww = maps.lww(map_name)
    if lww is not None:
        value = lww.get(key)
        return ABSENT if value is None else value
    ormap = maps.ormap(map_name)
    if ormap is None:
        return ABSENT
    values = ormap.values(key)
    return values if values else ABSENT


def is_cold(maps: MapRegistry, map_name: str, key: str) -> bool:
    """Whether the value of `key` must be loaded before it is read."""
    lww = maps.lww(map_name)
    return lww is not None and lww.is_cold(key)


async def scan(
    maps: MapRegistry, map_name: str, *, chunk: int = SCAN_CHUNK
) -> AsyncIterator[list[tuple[str, Any]]]:
    """The live rows of `map_name` (key order), a chunk at a time: each chunk's values are
    held while the consumer works on it and may be evicted once it asks for the next.

    Rows can change between chunks; a key gone by the time its chunk is read is left out
    (a view built this way also hears of every change meanwhile, so it ends up current)."""
    await maps.ensure_loaded(map_name)
    keys = live_keys(maps, map_name)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        async with maps.holding(map_name, part):
            rows = [(key, current_value(maps, map_name, key)) for key in part]
            yield [(key, value) for key, value in rows if value is not ABSENT]


def predicate_fields(predicate: Predicate) -> set[str]:
    """Every attribute `predicate` reads."""
    if isinstance(predicate, And | Or):
        found: set[str] = set()
        for child in predicate.children:
            found |= predicate_fields(child)
        return found
    if isinstance(predicate, Not):
        return set() if predicate.child is None else predicate_fields(predicate.child)
    name = getattr(predicate, "attribute", None)
    return {name} if isinstance(name, str) else set()


def project(value: Any, fields: frozenset[str]) -> Any:
    """`value` with only the top-level attributes in `fields`: what a predicate or sort on
    those attributes sees of it. `None` when that is nothing (a value that is not a map has
    no attributes): attribute lookups find nothing in it either."""
    if value is ABSENT or not isinstance(value, dict):
        return value if value is ABSENT else None
    kept = {name: value[name] for name in fields if name in value}
    return kept or None


class Charge:
    """The bytes one view keeps, counted in the memory budget."""

    __slots__ = ("_maps", "bytes")

    def __init__(self, maps: MapRegistry) -> None:
        self._maps = maps
        self.bytes = 0

    def change(self, old: Any, new: Any) -> None:
        """A kept row went from `old` to `new` (`ABSENT`: not kept)."""
        delta = _size(new) - _size(old)
        hot = self._maps.hot
        if delta and hot is not None:
            self.bytes += delta
            hot.charge(delta)

    def release(self) -> None:
        """The view is gone: give its bytes back."""
        hot = self._maps.hot
        if self.bytes and hot is not None:
            hot.charge(-self.bytes)
            self.bytes = 0


def _size(value: Any) -> int:
    return 0 if value is ABSENT or value is None else value_size(value)


Build = Callable[[Any], bytes | None]
"""Encodes a message around a row's current value (`ABSENT` if gone); None: send nothing."""


class Outbox:
    """Frames for sessions, sent in the order they were queued; a frame built around a
    row's value is built when sent, once that value is in memory."""

    __slots__ = ("_frame_type", "_maps", "_queue")

    def __init__(self, maps: MapRegistry, frame_type: str) -> None:
        self._maps = maps
        self._frame_type = frame_type
        self._queue: deque[tuple[Recipient, bytes | tuple[str, str, Build]]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, session: Recipient, frame: bytes) -> None:
        """Queue a finished frame."""
        self._queue.append((session, frame))

    def put_row(self, session: Recipient, map_name: str, key: str, build: Build) -> None:
        """Queue the frame `build` makes from the value of (map_name, key) when sent."""
        self._queue.append((session, (map_name, key, build)))

    def flush(self) -> None:
        """Send what is queued, up to the first frame whose row is cold (`settle` loads it)."""
        queue, maps = self._queue, self._maps
        while queue:
            session, item = queue[0]
            if isinstance(item, tuple):
                map_name, key, build = item
                if is_cold(maps, map_name, key):
                    return
                frame = build(current_value(maps, map_name, key)) if session.is_open else None
            else:
                frame = item
            queue.popleft()
            if frame is not None and session.is_open:
                session.send_frame(frame, self._frame_type)

    async def settle(self) -> None:
        """Load the rows the queued frames wait for, and send them all."""
        while self._queue:
            self.flush()
            waiting: dict[str, dict[str, None]] = {}
            for _, item in self._queue:
                if isinstance(item, tuple):
                    waiting.setdefault(item[0], {})[item[1]] = None
            if not waiting:
                return
            for map_name, keys in waiting.items():
                async with self._maps.holding(map_name, keys):
                    self.flush()
