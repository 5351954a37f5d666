"""The query planner: which rows of an `IndexedMap` a query needs to look at, and in what order.

A plan narrows the rows to *candidates* with the map's indexes and then checks every
candidate against the whole predicate, so it is always correct:

- `and` starts from the smallest of its children's index lookups (a compound index answers
  several `eq` children at once), sized before any is built, and intersects it with the
  lookups that already exist as sets (hash buckets, postings); range children bounding the
  same sorted field are one lookup of the span between their bounds; every other child is applied
  by the final check, so no large range is materialized only to be intersected away.
- `or` unions its children's candidates, and needs every child to be indexed (else: scan).
- `not` and `neq` never narrow: their answer includes rows that indexes do not hold (absent
  attributes, maps), so they are always evaluated row by row, exactly.
- With nothing to narrow, a query whose single sort field has a sorted index walks that index
  in order and stops once its page is full; otherwise every row is scanned.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from topgun.query.indexes import HashIndex, IndexedMap, InvertedIndex, SortedIndex
from topgun.query.predicates import (
    And,
    Compare,
    Contains,
    Like,
    Match,
    MatchPhrase,
    MatchPrefix,
    Or,
    Predicate,
)
from topgun.query.sort import KEY_FIELD, OrderKey

if TYPE_CHECKING:
    from topgun.query.compiled import CompiledQuery

__all__ = ["Plan", "plan"]

Row = tuple[OrderKey, str, Any]


@dataclass(frozen=True, slots=True)
class Plan:
    """How a query reads an `IndexedMap`: `keys` to check (None: every row), or an `ordered`
    sorted index to walk; `steps` names the index lookups used (for `describe`)."""

    keys: set[str] | None
    ordered: SortedIndex | None
    descending: bool
    steps: tuple[str, ...]

    def describe(self) -> str:
        if self.keys is not None:
            return f"index lookup {', '.join(self.steps) or '(none)'}: {len(self.keys)} rows"
        if self.ordered is not None:
            return f"ordered scan of sorted({self.ordered.field})"
        return "full scan"

    def _walk(self, query: CompiledQuery, rows: IndexedMap) -> Any:
        if self.ordered is not None:
            return ((key, rows.get(key)) for key in self.ordered.scan(descending=self.descending))
        if self.keys is not None:
            return ((key, rows.get(key)) for key in self.keys)
        return rows.items()

    def rows(
        self, query: CompiledQuery, rows: IndexedMap, start_after: OrderKey | None
    ) -> list[Row]:
        """The rows `query` keeps after `start_after`, with order keys; an ordered walk stops
        after `limit + 1` of them, the most a page needs."""
        matches = query.predicate.matches
        order_key = query.sort.order_key
        need = query.limit + 1 if self.ordered is not None and query.limit is not None else None
        found: list[Row] = []
        for key, value in self._walk(query, rows):
            if not matches(value):
                continue
            position = order_key(key, value)
            if start_after is not None and position <= start_after:
                continue
            found.append((position, key, value))
            if need is not None and len(found) >= need:
                break
        return found

    def first_after(
        self, query: CompiledQuery, rows: IndexedMap, after: OrderKey, exclude: str | None
    ) -> Row | None:
        """The first row `query` keeps whose position is after `after`, other than `exclude`."""
        matches = query.predicate.matches
        order_key = query.sort.order_key
        best: Row | None = None
        for key, value in self._walk(query, rows):
            if key == exclude or not matches(value):
                continue
            position = order_key(key, value)
            if position <= after:
                continue
            if self.ordered is not None:
                return (position, key, value)
            if best is None or position < best[0]:
                best = (position, key, value)
        return best


def plan(query: CompiledQuery, rows: IndexedMap) -> Plan:
    """Choose how to run `query` over `rows` (see the module docstring)."""
    steps: list[str] = []
    lookup = _candidates(query.predicate, rows)
    keys = None if lookup is None else set(lookup.fetch(steps))
    ordered = None
    first = query.sort.first
    if keys is None and len(query.sort.fields) == 1 and first.field != KEY_FIELD:
        ordered = cast(SortedIndex | None, rows.index("sorted", first.field))
    return Plan(keys=keys, ordered=ordered, descending=first.descending, steps=tuple(steps))


@dataclass(frozen=True, slots=True)
class _Lookup:
    """Candidate keys not yet gathered: `size` bounds how many, `fetch` gathers them (noting
    the indexes used in `steps`), `ready` says fetching costs nothing (an existing set)."""

    size: int
    fetch: Callable[[list[str]], set[str]]
    ready: bool = False


def _existing(label: str, keys: set[str]) -> _Lookup:
    def fetch(steps: list[str]) -> set[str]:
        steps.append(label)
        return keys

    return _Lookup(len(keys), fetch, ready=True)


def _built(label: str, size: int, build: Callable[[], set[str]]) -> _Lookup:
    def fetch(steps: list[str]) -> set[str]:
        steps.append(label)
        return build()

    return _Lookup(size, fetch)


def _all_of(lookups: list[_Lookup]) -> _Lookup:
    smallest = min(lookups, key=lambda lookup: lookup.size)

    def fetch(steps: list[str]) -> set[str]:
        keys = smallest.fetch(steps)
        for other in lookups:
            if other is not smallest and other.ready and keys:
                keys = keys & other.fetch(steps)
        return keys

    return _Lookup(smallest.size, fetch)


def _any_of(lookups: list[_Lookup]) -> _Lookup:
    def fetch(steps: list[str]) -> set[str]:
        return set().union(*(lookup.fetch(steps) for lookup in lookups))

    return _Lookup(sum(lookup.size for lookup in lookups), fetch)


def _candidates(predicate: Predicate, rows: IndexedMap) -> _Lookup | None:
    """A superset of the keys `predicate` matches, from indexes; None when no index helps."""
    if isinstance(predicate, And):
        lookups = [
            found
            for found in (_candidates(child, rows) for child in predicate.children)
            if found is not None
        ]
        equal = {
            c.attribute: c.value
            for c in reversed(predicate.children)
            if isinstance(c, Compare) and c.op == "eq"
        }
        lookups += _ranges(predicate, rows)
        for compound in rows.compound_indexes():
            if all(f in equal for f in compound.fields):
                label = f"compound({','.join(compound.fields)})"
                lookups.append(
                    _existing(label, compound.equal(tuple(equal[f] for f in compound.fields)))
                )
        return _all_of(lookups) if lookups else None
    if isinstance(predicate, Or):
        parts = []
        for child in predicate.children:
            found = _candidates(child, rows)
            if found is None:
                return None
            parts.append(found)
        return _any_of(parts)
    if isinstance(predicate, Compare):
        return _compare(predicate, rows)
    if isinstance(predicate, Contains | Like | Match | MatchPhrase | MatchPrefix):
        index = cast(InvertedIndex | None, rows.index("inverted", predicate.attribute))
        if index is None:
            rows.missed("inverted", predicate.attribute)
            return None
        return _text(predicate, index)
    return None  # not, regex: evaluated row by row


def _ranges(predicate: And, rows: IndexedMap) -> list[_Lookup]:
    """One lookup per sorted field that two or more range children of `predicate` bound:
    the intersection of their spans (`a >= x and a < y` reads only the rows in between)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for child in predicate.children:
        if isinstance(child, Compare) and child.op in ("gt", "gte", "lt", "lte"):
            ranged = cast(SortedIndex | None, rows.index("sorted", child.attribute))
            if ranged is not None:
                spans.setdefault(child.attribute, []).append(
                    ranged.compare_span(child.op, child.value)
                )
    lookups = []
    for name, bounds in spans.items():
        if len(bounds) < 2:
            continue
        ranged = cast(SortedIndex, rows.index("sorted", name))
        lo = max(b[0] for b in bounds)
        hi = max(lo, min(b[1] for b in bounds))
        lookups.append(_built(f"sorted({name}) range", hi - lo, _between(ranged, lo, hi)))
    return lookups


def _between(index: SortedIndex, lo: int, hi: int) -> Callable[[], set[str]]:
    return lambda: index.keys_between(lo, hi)


def _compare(predicate: Compare, rows: IndexedMap) -> _Lookup | None:
    name = predicate.attribute
    if predicate.op == "neq":
        return None
    if predicate.op == "eq":
        hashed = cast(HashIndex | None, rows.index("hash", name))
        if hashed is not None:
            return _existing(f"hash({name})", hashed.equal(predicate.value))
    ranged = cast(SortedIndex | None, rows.index("sorted", name))
    if ranged is not None:
        if predicate.op == "eq":
            lo, hi = ranged.equal_span(predicate.value)
        else:
            lo, hi = ranged.compare_span(predicate.op, predicate.value)
        return _built(f"sorted({name})", hi - lo, lambda: ranged.keys_between(lo, hi))
    if predicate.op == "eq":
        if not any(name in c.fields for c in rows.compound_indexes()):
            rows.missed("hash", name)
    else:
        rows.missed("sorted", name)
    return None


_WILDCARDS = re.compile("[%_]")


def _text(
    predicate: Contains | Like | Match | MatchPhrase | MatchPrefix, index: InvertedIndex
) -> _Lookup:
    label = f"inverted({predicate.attribute})"
    needles: list[str] | None = None
    if isinstance(predicate, Contains):
        if predicate.mode == "any":
            keys = set().union(*(index.containing(n) for n in predicate.needles))
            return _built(label, len(keys), lambda: keys)
        needles = list(predicate.needles)
    elif isinstance(predicate, Like):
        needles = [run for run in _WILDCARDS.split(predicate.pattern.lower()) if len(run) >= 3]
    if needles is not None:
        needles = [n for n in needles if len(n) >= 3]
        if not needles:  # nothing long enough to look up: every string is a candidate
            return _built(label, len(index.strings), lambda: set(index.strings))
        keys = _intersect([index.containing(n) for n in needles])
    elif isinstance(predicate, Match):
        keys = index.with_terms(predicate.terms, every=predicate.require_all)
    elif isinstance(predicate, MatchPhrase):
        keys = index.with_terms(predicate.terms, every=True)
    elif isinstance(predicate, MatchPrefix):
        keys = index.with_prefix(predicate.prefix)
    return _built(label, len(keys), lambda: keys)


def _intersect(sets: list[set[str]]) -> set[str]:
    sets.sort(key=len)
    return sets[0].intersection(*sets[1:])
