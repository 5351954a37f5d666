"""What live views (live queries, live searches, hybrid queries) need under a memory budget.

Without a budget a view keeps the rows it works on. Under one (`MapRegistry.hot`), that
would keep a copy of every row the eviction of values is meant to free, so views keep only
what re-evaluating rows needs and read values through the registry when they send them:

- `scan` reads a map chunk by chunk, each chunk held (loaded, pinned) only while it is
  used, so building a view or an index never holds more than a chunk of cold values
  (`matching_rows` runs a one-shot query that way, `shown_rows` loads a page's values);
- `project` cuts a value down to the attributes a view's predicates, sorts and indexes
  read (attribute lookups are top-level only, so the cut answers them exactly);
- `Outbox` sends messages in order, building the ones that carry a row's value when it is
  sent; a message whose row is cold waits (with every message after it) until `settle`
  loaded the row, so a client still gets its updates in the order they were computed;
- `Charge` counts the bytes a view keeps in the budget (`HotSet.charge`), so values are
  evicted to make room for them.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Final

from topgun.crdt import LWWRecord
from topgun.query import ABSENT, CompiledQuery
from topgun.query.predicates import And, Not, Or, Predicate
from topgun.query.sort import KEY_FIELD
from topgun.server.events import Recipient
from topgun.server.maps import MapRegistry
from topgun.server.permissions import WITHHELD, FieldFilter
from topgun.storage import LWWSnapshot, StorageBackend, StorageError, value_size

logger = logging.getLogger(__name__)

SCAN_CHUNK: Final = 128
"""Keys a `scan` (and a page being loaded) holds at once: what a view adds to the budget
while it is built is at most this many values."""


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
    if lww is not None:
        return lww.is_cold(key)
    ormap = maps.ormap(map_name)
    return ormap is not None and ormap.is_cold(key)


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


async def matching_rows(
    maps: MapRegistry, map_name: str, query: CompiledQuery, fields: FieldFilter
) -> list[tuple[str, Any]]:
    """The rows of `map_name` that `query` matches as `fields` shows them, cut to what the
    query reads (`run_query` over them answers as over the whole rows), a chunk at a time."""
    keep = query_fields(query)
    matches = query.predicate.matches
    rows: list[tuple[str, Any]] = []
    async for chunk in scan(maps, map_name):
        for key, value in chunk:
            shown = fields.apply(value)
            if shown is not WITHHELD and matches(shown):
                rows.append((key, project(shown, keep)))
    return rows


async def shown_rows(
    maps: MapRegistry, map_name: str, fields: FieldFilter, keys: Sequence[str]
) -> list[tuple[str, Any]]:
    """The current values of `keys` as `fields` shows them, loaded a chunk at a time (a
    key gone meanwhile, or withheld, is left out)."""
    shown: list[tuple[str, Any]] = []
    for start in range(0, len(keys), SCAN_CHUNK):
        part = keys[start : start + SCAN_CHUNK]
        async with maps.holding(map_name, part):
            for key in part:
                value = current_value(maps, map_name, key)
                visible = WITHHELD if value is ABSENT else fields.apply(value)
                if visible is not WITHHELD:
                    shown.append((key, visible))
    return shown


def query_fields(query: CompiledQuery) -> set[str]:
    """Every attribute `query` reads: its predicate's and its sort's."""
    names = predicate_fields(query.predicate)
    names.update(f.field for f in query.sort.fields if f.field != KEY_FIELD)
    return names


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


def project(value: Any, fields: Iterable[str]) -> Any:
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


def _size(row: Any) -> int:
    """The estimated bytes of a kept row: its map and the values in it (the attribute
    names are the query's own strings, shared by every row)."""
    if row is ABSENT or row is None:
        return 0
    if isinstance(row, dict):
        return sys.getsizeof(row) + sum(value_size(value) for value in row.values())
    return value_size(row)


Build = Callable[[Any], bytes | None]
"""Encodes a message around a row's current value (`ABSENT` if gone); None: send nothing."""


_Row = tuple[str, str, Build, Any]
"""A frame waiting for a row: (map, key, build, the row's timestamp when it was computed)."""


class Outbox:
    """Frames for sessions, sent in the order they are put. A frame built around a row's
    value is built once the row is in memory: while it waits for `settle` to load it, so
    does every frame put after it (events included, under a budget), so each session gets
    its messages in the order the server computed them. With nothing waiting, a frame is
    sent at once.

    A row changed between the computation and the send is sent as it was computed: `settle`
    reads that version from storage, which still holds it while the request that changed
    the row is not persisted yet (`WritePipeline` settles before persisting)."""

    __slots__ = ("_maps", "_queue", "_stale", "backend")

    def __init__(self, maps: MapRegistry) -> None:
        self._maps = maps
        self._queue: deque[tuple[Recipient, str, bytes | _Row]] = deque()
        self._stale: dict[tuple[str, str, Any], Any] = {}
        self.backend: StorageBackend | None = None
        """Where `settle` reads rows changed since their frame was computed."""

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, session: Recipient, frame: bytes, frame_type: str) -> None:
        """Send a finished frame (after the frames waiting, if any)."""
        if self._queue:
            self._queue.append((session, frame_type, frame))
        elif session.is_open:
            session.send_frame(frame, frame_type)

    def put_row(
        self,
        session: Recipient,
        frame_type: str,
        map_name: str,
        key: str,
        build: Build,
        *,
        stored: bool = False,
    ) -> None:
        """Send the frame `build` makes from the current value of (map_name, key), once it
        is in memory; with `stored`, from the version storage holds (the row as it was
        before the changes being delivered, which are not persisted yet; an OR-Map row is
        read as it is now)."""
        maps = self._maps
        if stored and maps.lww(map_name) is not None:
            self._queue.append((session, frame_type, (map_name, key, build, _STORED)))
            return
        if not self._queue and not is_cold(maps, map_name, key):
            if session.is_open:
                frame = build(current_value(maps, map_name, key))
                if frame is not None:
                    session.send_frame(frame, frame_type)
            return
        lww = maps.lww(map_name)
        record = None if lww is None else lww.get_record(key)
        stamp = None if record is None else record.timestamp
        self._queue.append((session, frame_type, (map_name, key, build, stamp)))

    def _value(self, row: _Row) -> Any:
        """The value a waiting frame is built with; `_WAIT` while it must be loaded."""
        map_name, key, _, stamp = row
        lww = self._maps.lww(map_name)
        if lww is None:  # an OR-Map key: as it is now
            if is_cold(self._maps, map_name, key):
                return _WAIT
            return current_value(self._maps, map_name, key)
        record = lww.get_record(key)
        if stamp is not _STORED and record is not None and record.timestamp == stamp:
            return _WAIT if lww.is_cold(key) else current_value(self._maps, map_name, key)
        return self._stale.pop((map_name, key, stamp), _WAIT)

    def flush(self) -> None:
        """Send what waits, up to the first frame whose row must be loaded (`settle`)."""
        queue = self._queue
        while queue:
            session, frame_type, item = queue[0]
            frame: bytes | None
            if isinstance(item, tuple):
                value = self._value(item)
                if value is _WAIT:
                    return
                frame = item[2](value) if session.is_open else None
            else:
                frame = item
            queue.popleft()
            if frame is not None and session.is_open:
                session.send_frame(frame, frame_type)

    async def settle(self) -> None:
        """Load the rows the waiting frames need, and send them all."""
        while self._queue:
            self.flush()
            cold: dict[str, dict[str, None]] = {}
            stale: dict[str, dict[str, Any]] = {}
            for _, _, item in self._queue:
                if isinstance(item, tuple):
                    map_name, key, _, stamp = item
                    lww = self._maps.lww(map_name)
                    record = None if lww is None else lww.get_record(key)
                    if lww is None or (
                        stamp is not _STORED and record is not None and record.timestamp == stamp
                    ):
                        cold.setdefault(map_name, {})[key] = None
                    else:
                        stale.setdefault(map_name, {})[key] = stamp
            try:
                for map_name, stamps in stale.items():
                    await self._read_stale(map_name, stamps)
                for map_name, keys in cold.items():
                    async with self._maps.holding(map_name, keys):
                        self.flush()
            except StorageError as exc:  # never wedge the queue behind a lost row
                logger.error("an update waiting for a row was dropped: %s", exc)
                self._queue.popleft()

    async def _read_stale(self, map_name: str, stamps: dict[str, Any]) -> None:
        """Read from storage the versions that waiting frames were computed with; a
        version storage no longer holds reads as gone (the frame is not sent)."""
        records: dict[str, LWWRecord] = {}
        if self.backend is not None:
            snapshot = await self.backend.load_keys(map_name, list(stamps))
            if isinstance(snapshot, LWWSnapshot):
                records = snapshot.records
        for key, stamp in stamps.items():
            record = records.get(key)
            value = ABSENT
            if record is not None and (stamp is _STORED or record.timestamp == stamp):
                value = ABSENT if record.value is None else record.value
            self._stale[(map_name, key, stamp)] = value


_WAIT: Final[Any] = object()
_STORED: Final[Any] = object()
