"""The map handles an application reads and writes: `client.map(name)`, `client.ormap(name)`.

Reads and writes are local and synchronous (no network wait); a write returns a
`WriteHandle` to await when the application wants the server's acknowledgement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from topgun.client.engine import Engine, MapState
from topgun.client.writes import WriteHandle
from topgun.crdt import LWWMap, LWWRecord, ORMap
from topgun.protocol import WriteConcern

__all__ = ["LWWMapHandle", "ORMapHandle"]

ChangeListener = Callable[[str, Any], None]
"""`(key, value)` after a key changed locally or from the server (`None`: removed). For an
OR-Map, `value` is the key's list of live values."""


class _MapHandle:
    __slots__ = ("_engine", "_state")

    def __init__(self, engine: Engine, state: MapState) -> None:
        self._engine = engine
        self._state = state

    @property
    def name(self) -> str:
        return self._state.name

    def _map(self) -> MapState:
        # A sync reset replaces the map's state: always look it up.
        return self._engine.maps[self._state.name]

    async def synced(self) -> None:
        """Wait until the Merkle sync of the current connection finished for this map.

        A reconnect during the wait starts a new sync (with a new event): wait for that one,
        not for the abandoned one, which never finishes."""
        while not self._map().synced.is_set():
            await self._engine.wait_progress()

    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Call `listener(key, value)` after every change; returns an unsubscribe."""
        listeners = self._map().listeners
        listeners.append(listener)

        def unsubscribe() -> None:
            current = self._map().listeners
            if listener in current:
                current.remove(listener)

        return unsubscribe


class LWWMapHandle(_MapHandle):
    """A last-writer-wins map: one value per key, the newest write wins everywhere."""

    __slots__ = ()

    def _lww(self) -> LWWMap:
        crdt = self._map().crdt
        assert isinstance(crdt, LWWMap)
        return crdt

    def get(self, key: str) -> Any:
        """The live value of `key` (None if absent, removed or expired)."""
        return self._lww().get(key)

    def get_record(self, key: str) -> LWWRecord | None:
        """The stored record (tombstones included), with its timestamp."""
        return self._lww().get_record(key)

    def set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        write_concern: WriteConcern | None = None,
    ) -> WriteHandle:
        """Write `value` (not None) under `key`; `ttl` in ms. Visible locally at once."""
        return self._engine.lww_set(self._map(), key, value, ttl, write_concern)

    def remove(self, key: str, write_concern: WriteConcern | None = None) -> WriteHandle:
        """Delete `key` (a tombstone that wins over older writes everywhere)."""
        return self._engine.lww_remove(self._map(), key, write_concern)

    def items(self) -> list[tuple[str, Any]]:
        """Every live `(key, value)`."""
        return self._lww().items()

    def keys(self) -> list[str]:
        return self._lww().keys()

    def __len__(self) -> int:
        return len(self._lww().items())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._lww().get(key) is not None

    def __repr__(self) -> str:
        return f"<LWWMapHandle {self.name!r}>"


class ORMapHandle(_MapHandle):
    """An observed-remove map: each key holds a set of values; concurrent adds all survive."""

    __slots__ = ()

    def _or(self) -> ORMap:
        crdt = self._map().crdt
        assert isinstance(crdt, ORMap)
        return crdt

    def add(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        write_concern: WriteConcern | None = None,
    ) -> WriteHandle:
        """Add `value` under `key` (a new tagged record)."""
        return self._engine.or_add(self._map(), key, value, ttl, write_concern)

    def remove(
        self, key: str, value: Any, write_concern: WriteConcern | None = None
    ) -> list[WriteHandle]:
        """Remove every record of `key` whose value equals `value` (one write per tag)."""
        return self._engine.or_remove(self._map(), key, value, write_concern)

    def values(self, key: str) -> list[Any]:
        """The live values of `key` (in tag order)."""
        return self._or().values(key)

    def keys(self) -> list[str]:
        return self._or().keys()

    def items(self) -> list[tuple[str, list[Any]]]:
        crdt = self._or()
        return [(key, crdt.values(key)) for key in list(crdt.keys())]

    def __repr__(self) -> str:
        return f"<ORMapHandle {self.name!r}>"
