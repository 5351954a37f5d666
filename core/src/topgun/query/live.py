"""Live (standing) queries: the window transitions each change causes (PROTOCOL.md §6.5).

`LiveQueries` holds every subscription's *window* — the keys its `QUERY_RESP` returned — and,
for each change to one key, says which subscriptions' windows change and how:

    live = LiveQueries()
    first_page = live.subscribe(sub_id, "todos", query, indexed_map, now_ms=now)
    ...                                   # after the server applies a change to `key`:
    indexed_map.set(key, value)           # (or .delete(key))
    for sub_id, changes in live.apply("todos", key, indexed_map):
        ...                               # QUERY_UPDATE per change, in order

Work per change is proportional to the subscriptions the key could affect, found through a
standing-query index per map: subscriptions whose window holds the key, subscriptions whose
filter has an `eq` condition on a field the new value matches, and those without any `eq`
condition (which must always be checked). Queries are never re-run for a change; only when a
row leaves a full window with a limit is the map asked for the one row that moves up.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from topgun.query.compiled import CompiledQuery, QueryResult, run_query
from topgun.query.indexes import IndexedMap
from topgun.query.planner import plan
from topgun.query.predicates import And, Compare, Predicate
from topgun.query.sort import OrderKey
from topgun.query.values import ABSENT, NOT_EQUATABLE, attribute, equality_key

__all__ = ["LiveQueries", "WindowChange"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class WindowChange:
    """One `QUERY_UPDATE`: `ENTER`/`UPDATE` carry the row's value, `REMOVE` carries None
    (its `changeType` twin is `LEAVE`)."""

    type: Literal["ENTER", "UPDATE", "REMOVE"]
    key: str
    value: Any = None


@dataclass(slots=True)
class _Subscription(Generic[K]):
    id: K
    seq: int
    """Order of subscription: changes are reported in it, so runs are reproducible."""
    map_name: str
    query: CompiledQuery
    start_after: OrderKey | None
    anchor: tuple[str, Any] | None
    """The `eq` condition (field, equality key) it is indexed under, if any."""
    window: dict[str, OrderKey] = field(default_factory=dict)
    ordered: list[tuple[OrderKey, str]] = field(default_factory=list)
    """The window in order; kept only for queries with a limit."""

    def admits(self, key: str, value: Any) -> OrderKey | None:
        """The order key of (key, value) if the row belongs to the query past its cursor."""
        if value is ABSENT or not self.query.predicate.matches(value):
            return None
        position = self.query.sort.order_key(key, value)
        if self.start_after is not None and position <= self.start_after:
            return None
        return position

    def insert(self, key: str, position: OrderKey) -> None:
        self.window[key] = position
        if self.query.limit is not None:
            bisect.insort(self.ordered, (position, key))

    def discard(self, key: str) -> None:
        position = self.window.pop(key)
        if self.query.limit is not None:
            i = bisect.bisect_left(self.ordered, (position, key))
            del self.ordered[i]


def _anchor(predicate: Predicate) -> tuple[str, Any] | None:
    """An `eq` condition every match must satisfy: the predicate itself, or a child of a
    top-level `and`."""
    candidates = predicate.children if isinstance(predicate, And) else (predicate,)
    for child in candidates:
        if isinstance(child, Compare) and child.op == "eq":
            return child.attribute, equality_key(child.value)
    return None


@dataclass(slots=True)
class _MapSubscriptions(Generic[K]):
    """The standing-query index of one map."""

    by_key: dict[str, set[K]] = field(default_factory=dict)
    by_equal: dict[str, dict[Any, set[K]]] = field(default_factory=dict)
    unanchored: set[K] = field(default_factory=set)


class LiveQueries(Generic[K]):
    """Every live query of a server (or of one node), by subscription id `K` — typically a
    (session, queryId) pair, since `queryId`s are chosen by clients."""

    def __init__(self) -> None:
        self._subs: dict[K, _Subscription[K]] = {}
        self._maps: dict[str, _MapSubscriptions[K]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._subs)

    def __contains__(self, sub_id: object) -> bool:
        return sub_id in self._subs

    def subscribe(
        self, sub_id: K, map_name: str, query: CompiledQuery, rows: IndexedMap, *, now_ms: int
    ) -> QueryResult:
        """Run `query` (its first page, or the page after its cursor) and hold its window;
        replaces an existing subscription with the same id. Returns the `QUERY_RESP` page."""
        result = run_query(query, rows, now_ms=now_ms)
        self.watch(sub_id, map_name, query, result)
        return result

    def watch(self, sub_id: K, map_name: str, query: CompiledQuery, result: QueryResult) -> None:
        """Hold the window of a page already computed with `run_query(query, ...)`."""
        self.unsubscribe(sub_id)
        self._seq += 1
        sub = _Subscription(
            sub_id, self._seq, map_name, query, result.start_after, _anchor(query.predicate)
        )
        for key, value in result.rows:
            sub.insert(key, query.sort.order_key(key, value))
        self._subs[sub_id] = sub
        index = self._maps.setdefault(map_name, _MapSubscriptions())
        for key in sub.window:
            index.by_key.setdefault(key, set()).add(sub_id)
        if sub.anchor is None:
            index.unanchored.add(sub_id)
        else:
            name, value = sub.anchor
            index.by_equal.setdefault(name, {}).setdefault(value, set()).add(sub_id)

    def unsubscribe(self, sub_id: K) -> None:
        """Stop `sub_id` (unknown ids are ignored, as `QUERY_UNSUB` requires)."""
        sub = self._subs.pop(sub_id, None)
        if sub is None:
            return
        index = self._maps[sub.map_name]
        for key in sub.window:
            _drop(index.by_key, key, sub_id)
        if sub.anchor is None:
            index.unanchored.discard(sub_id)
        else:
            name, value = sub.anchor
            _drop(index.by_equal[name], value, sub_id)
            if not index.by_equal[name]:
                del index.by_equal[name]
        if not (index.by_key or index.by_equal or index.unanchored):
            del self._maps[sub.map_name]

    def window(self, sub_id: K) -> list[str]:
        """The keys `sub_id`'s client holds, in query order."""
        sub = self._subs[sub_id]
        return [key for _, key in sorted((p, k) for k, p in sub.window.items())]

    def candidates(self, map_name: str, key: str, value: Any) -> set[K]:
        """The subscriptions a change of `key` to `value` (`ABSENT`: gone) could affect."""
        index = self._maps.get(map_name)
        if index is None:
            return set()
        found = set(index.unanchored)
        found |= index.by_key.get(key, set())
        if value is not ABSENT:
            for name, buckets in index.by_equal.items():
                k = equality_key(attribute(value, name))
                if k is not ABSENT and k is not NOT_EQUATABLE:
                    found |= buckets.get(k, set())
        return found

    def apply(
        self, map_name: str, key: str, rows: IndexedMap
    ) -> Iterator[tuple[K, list[WindowChange]]]:
        """The window changes of every affected subscription after `key` changed in
        `map_name`; `rows` is that map *after* the change (`key` absent if it was removed,
        tombstoned or expired). Each list is in emission order: REMOVE, then ENTER, or a
        single UPDATE."""
        value = rows.get(key)
        affected = sorted((self._subs[s] for s in self.candidates(map_name, key, value)), key=_seq)
        for sub in affected:
            sub_id = sub.id
            changes = self._transition(sub, key, value, rows)
            if changes:
                index = self._maps[map_name]
                for change in changes:
                    if change.type == "ENTER":
                        index.by_key.setdefault(change.key, set()).add(sub_id)
                    elif change.type == "REMOVE":
                        _drop(index.by_key, change.key, sub_id)
                yield sub_id, changes

    def _transition(
        self, sub: _Subscription[K], key: str, value: Any, rows: IndexedMap
    ) -> list[WindowChange]:
        was_in = key in sub.window
        position = sub.admits(key, value)
        limit = sub.query.limit
        full = limit is not None and len(sub.window) >= limit
        if not full:
            if position is None:
                if not was_in:
                    return []
                sub.discard(key)
                return [WindowChange("REMOVE", key)]
            if was_in:
                sub.discard(key)
                sub.insert(key, position)
                return [WindowChange("UPDATE", key, value)]
            sub.insert(key, position)
            return [WindowChange("ENTER", key, value)]
        boundary, last_key = sub.ordered[-1]
        if not was_in:
            if position is None or position > boundary:
                return []
            sub.discard(last_key)
            sub.insert(key, position)
            return [WindowChange("REMOVE", last_key), WindowChange("ENTER", key, value)]
        sub.discard(key)
        if position is not None and position <= boundary:
            sub.insert(key, position)
            return [WindowChange("UPDATE", key, value)]
        # `key` left the window or moved past its end: the best row beyond it may take its place.
        nxt = plan(sub.query, rows).first_after(sub.query, rows, boundary, key)
        if nxt is not None and (position is None or nxt[0] < position):
            next_position, next_key, next_value = nxt
            sub.insert(next_key, next_position)
            return [WindowChange("REMOVE", key), WindowChange("ENTER", next_key, next_value)]
        if position is None:
            return [WindowChange("REMOVE", key)]
        sub.insert(key, position)
        return [WindowChange("UPDATE", key, value)]


def _seq(sub: _Subscription[Any]) -> int:
    return sub.seq


def _drop(buckets: dict[Any, set[K]], bucket: Any, sub_id: K) -> None:
    members = buckets.get(bucket)
    if members is not None:
        members.discard(sub_id)
        if not members:
            del buckets[bucket]
