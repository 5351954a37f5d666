"""Secondary indexes over a map's live rows, and `IndexedMap`, the rows with their indexes.

| kind | answers | structure |
|---|---|---|
| `hash` | `eq` (and `or` of `eq`s: "in") | equality key → keys |
| `sorted` | `eq`, `gt gte lt lte`, sort order | list of (sort key, key), kept sorted |
| `inverted` | `contains*`, `like`, `match*` | trigram → keys, analyzed term → keys |
| `compound` | `and` of `eq`s over all its fields | tuple of equality keys → keys |

An index only ever narrows the rows a query looks at to a *superset* of its matches; every
candidate is then checked against the whole predicate (see `topgun.query.planner`). That is
what makes a planned query return exactly what a full scan returns.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from topgun.query.values import ABSENT, NOT_EQUATABLE, attribute, equality_key, sort_key
from topgun.search.tokenizer import analyze

__all__ = [
    "CompoundIndex",
    "HashIndex",
    "Index",
    "IndexKind",
    "IndexSpec",
    "IndexedMap",
    "InvertedIndex",
    "SortedIndex",
]

IndexKind = Literal["hash", "sorted", "inverted", "compound"]
_KINDS: Final = ("hash", "sorted", "inverted", "compound")


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """One index to keep on a map: its kind and field(s) (two or more for `compound`)."""

    kind: IndexKind
    fields: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown index kind {self.kind!r} (expected one of {_KINDS})")
        if not self.fields or not all(isinstance(f, str) and f for f in self.fields):
            raise ValueError("an index needs one or more non-empty field names")
        if self.kind == "compound":
            if len(self.fields) < 2 or len(set(self.fields)) != len(self.fields):
                raise ValueError("a compound index needs two or more distinct fields")
        elif len(self.fields) != 1:
            raise ValueError(f"a {self.kind} index has exactly one field")

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any]) -> IndexSpec:
        """From configuration: `"hash:status"`, `"compound:cat,score"`, or
        `{kind = "sorted", field = "score"}` / `{kind = "compound", fields = [...]}`."""
        if isinstance(spec, str):
            kind, sep, names = spec.partition(":")
            if not sep:
                raise ValueError(f"index {spec!r} must look like 'kind:field[,field...]'")
            fields = tuple(name.strip() for name in names.split(","))
        elif isinstance(spec, Mapping):
            kind = spec.get("kind", "")
            fields = (spec["field"],) if "field" in spec else tuple(spec.get("fields") or ())
        else:
            raise ValueError(f"an index is a string or a table, got {type(spec).__name__}")
        return cls(kind, fields)  # type: ignore[arg-type]  # checked in __post_init__

    def build(self) -> Index:
        if self.kind == "hash":
            return HashIndex(self.fields[0])
        if self.kind == "sorted":
            return SortedIndex(self.fields[0])
        if self.kind == "inverted":
            return InvertedIndex(self.fields[0])
        return CompoundIndex(self.fields)


class Index:
    """Keys of rows by some property of their values; updated row by row."""

    def add(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def remove(self, key: str, value: Any) -> None:
        """Forget `key`, whose indexed value was `value`."""
        raise NotImplementedError

    def add_many(self, items: Iterable[tuple[str, Any]]) -> None:
        """`add` every (key, value) of `items` (keys not held yet)."""
        for key, value in items:
            self.add(key, value)


def _discard(postings: dict[Any, set[str]], term: Any, key: str) -> None:
    keys = postings.get(term)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del postings[term]


class HashIndex(Index):
    """Equality lookups on one field (§7.1 equality: `1` and `1.0` together, `1` apart from
    `"1"` and `true`)."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._buckets: dict[Any, set[str]] = {}

    def add(self, key: str, value: Any) -> None:
        k = equality_key(attribute(value, self.field))
        if k is not ABSENT and k is not NOT_EQUATABLE:
            self._buckets.setdefault(k, set()).add(key)

    def remove(self, key: str, value: Any) -> None:
        _discard(self._buckets, equality_key(attribute(value, self.field)), key)

    def equal(self, operand: Any) -> set[str]:
        """Keys whose field may equal `operand` (exactly those, for scalars)."""
        k = equality_key(operand)
        if k is ABSENT or k is NOT_EQUATABLE:
            return set()
        return self._buckets.get(k, set())


class CompoundIndex(Index):
    """Equality on several fields at once: one lookup for `a = x AND b = y`."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields
        self._buckets: dict[tuple[Any, ...], set[str]] = {}

    def _key(self, value: Any) -> tuple[Any, ...] | None:
        parts = tuple(equality_key(attribute(value, f)) for f in self.fields)
        if any(p is ABSENT or p is NOT_EQUATABLE for p in parts):
            return None
        return parts

    def add(self, key: str, value: Any) -> None:
        k = self._key(value)
        if k is not None:
            self._buckets.setdefault(k, set()).add(key)

    def remove(self, key: str, value: Any) -> None:
        k = self._key(value)
        if k is not None:
            _discard(self._buckets, k, key)

    def equal(self, operands: tuple[Any, ...]) -> set[str]:
        parts = tuple(equality_key(v) for v in operands)
        if any(p is ABSENT or p is NOT_EQUATABLE for p in parts):
            return set()
        return self._buckets.get(parts, set())


_NUMBERS_FROM: Final = (2, 1)
"""Sort keys of non-NaN numbers are (2, 1, x): this prefix sorts before all of them."""
_STRINGS_FROM: Final = (3,)
_OTHERS_FROM: Final = (4,)


class SortedIndex(Index):
    """Every row by (sort key of one field, key): ranges, equality and sorted scans."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._entries: list[tuple[tuple[Any, ...], str]] = []

    def _entry(self, key: str, value: Any) -> tuple[tuple[Any, ...], str]:
        return (sort_key(attribute(value, self.field)), key)

    def add(self, key: str, value: Any) -> None:
        bisect.insort(self._entries, self._entry(key, value))

    def add_many(self, items: Iterable[tuple[str, Any]]) -> None:
        """One sort instead of an insertion per row (building an index over a loaded map)."""
        self._entries.extend(self._entry(key, value) for key, value in items)
        self._entries.sort()

    def remove(self, key: str, value: Any) -> None:
        entry = self._entry(key, value)
        i = bisect.bisect_left(self._entries, entry)
        if i < len(self._entries) and self._entries[i] == entry:
            del self._entries[i]

    def _left(self, bound: tuple[Any, ...]) -> int:
        return bisect.bisect_left(self._entries, bound, key=lambda e: e[0])

    def _right(self, bound: tuple[Any, ...]) -> int:
        return bisect.bisect_right(self._entries, bound, key=lambda e: e[0])

    def keys_between(self, lo: int, hi: int) -> set[str]:
        """The keys of entries `lo` to `hi` (positions from `equal_span`/`compare_span`)."""
        return {key for _, key in self._entries[lo:hi]}

    def equal_span(self, operand: Any) -> tuple[int, int]:
        """Entries whose field sorts equal to `operand` (a superset of §7.1 equality)."""
        k = sort_key(operand)
        return self._left(k), self._right(k)

    def compare_span(self, op: str, operand: Any) -> tuple[int, int]:
        """Entries whose field is `op` (`gt gte lt lte`) `operand`, exactly as §7.1 orders."""
        first: tuple[int, ...]
        end: tuple[int, ...]
        if isinstance(operand, str):
            first, end = _STRINGS_FROM, _OTHERS_FROM
        elif isinstance(operand, int | float) and not isinstance(operand, bool):
            if operand != operand:
                return 0, 0
            first, end = _NUMBERS_FROM, _STRINGS_FROM
        else:
            return 0, 0
        k = sort_key(operand)
        if op == "gt":
            return self._right(k), self._left(end)
        if op == "gte":
            return self._left(k), self._left(end)
        if op == "lt":
            return self._left(first), self._left(k)
        return self._left(first), self._right(k)

    def equal(self, operand: Any) -> set[str]:
        """Keys whose field sorts equal to `operand`."""
        return self.keys_between(*self.equal_span(operand))

    def compare(self, op: str, operand: Any) -> set[str]:
        """Keys whose field is `op` `operand`."""
        return self.keys_between(*self.compare_span(op, operand))

    def scan(self, *, descending: bool) -> Iterator[str]:
        """Keys in sort order of this field, ties by key ascending (in both directions)."""
        entries = self._entries
        if not descending:
            for _, key in entries:
                yield key
            return
        hi = len(entries)
        while hi > 0:
            lo = self._left(entries[hi - 1][0])
            for _, key in entries[lo:hi]:
                yield key
            hi = lo


def _trigrams(text: str) -> set[str]:
    return {text[i : i + 3] for i in range(len(text) - 2)}


class InvertedIndex(Index):
    """Substrings (case-insensitive trigrams) and analyzed terms of one string field."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._strings: set[str] = set()
        self._tokened: set[str] = set()
        self._grams: dict[str, set[str]] = {}
        self._terms: dict[str, set[str]] = {}
        self._sorted_terms: list[str] | None = None

    def add(self, key: str, value: Any) -> None:
        text = attribute(value, self.field)
        if not isinstance(text, str):
            return
        self._strings.add(key)
        for gram in _trigrams(text.lower()):
            self._grams.setdefault(gram, set()).add(key)
        terms = set(analyze(text))
        if terms:
            self._tokened.add(key)
        for term in terms:
            postings = self._terms.get(term)
            if postings is None:
                self._terms[term] = {key}
                self._sorted_terms = None
            else:
                postings.add(key)

    def remove(self, key: str, value: Any) -> None:
        text = attribute(value, self.field)
        if not isinstance(text, str):
            return
        self._strings.discard(key)
        self._tokened.discard(key)
        for gram in _trigrams(text.lower()):
            _discard(self._grams, gram, key)
        for term in set(analyze(text)):
            _discard(self._terms, term, key)
            if term not in self._terms:
                self._sorted_terms = None

    @property
    def strings(self) -> set[str]:
        """Keys whose field is a string (the index's own set: do not modify)."""
        return self._strings

    def containing(self, needle: str) -> set[str]:
        """Keys whose string may contain `needle` (already lowercased): a superset."""
        grams = _trigrams(needle)
        if not grams:
            return set(self._strings)
        postings = sorted((self._grams.get(g, set()) for g in grams), key=len)
        return set(postings[0]).intersection(*postings[1:])

    def with_terms(self, terms: Iterable[str], *, every: bool) -> set[str]:
        """Keys whose analyzed text holds every / some of `terms`."""
        postings = [self._terms.get(t, set()) for t in terms]
        if not postings:
            return set()
        if every:
            postings.sort(key=len)
            return set(postings[0]).intersection(*postings[1:])
        return set().union(*postings)

    def with_prefix(self, prefix: str) -> set[str]:
        """Keys with an analyzed term starting with `prefix`."""
        if not prefix:
            return set(self._tokened)
        if self._sorted_terms is None:
            self._sorted_terms = sorted(self._terms)
        terms = self._sorted_terms
        found: set[str] = set()
        for i in range(bisect.bisect_left(terms, prefix), len(terms)):
            if not terms[i].startswith(prefix):
                break
            found |= self._terms[terms[i]]
        return found


class IndexedMap:
    """A map's live rows with the indexes declared on it, kept up to date on every change.

    The server holds one per map and calls `set`/`delete` for each applied change; queries
    run over it with `run_query(query, indexed_map, now_ms=...)`, planned by
    `topgun.query.planner`. With `adaptive_after=N`, a
    field filtered on N times without a suitable index gets one (hash for `eq`, sorted for
    ranges, inverted for text operators).
    """

    def __init__(self, specs: Iterable[IndexSpec] = (), *, adaptive_after: int | None = None):
        if adaptive_after is not None and adaptive_after < 1:
            raise ValueError("adaptive_after must be a positive count")
        self._rows: dict[str, Any] = {}
        self._indexes: dict[IndexSpec, Index] = {}
        self._adaptive_after = adaptive_after
        self._misses: Counter[IndexSpec] = Counter()
        for spec in specs:
            self.add_index(spec)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def get(self, key: str) -> Any:
        """The live value of `key`, or `ABSENT`."""
        return self._rows.get(key, ABSENT)

    def items(self) -> Iterable[tuple[str, Any]]:
        return self._rows.items()

    def keys(self) -> Iterable[str]:
        return self._rows.keys()

    @property
    def indexes(self) -> Mapping[IndexSpec, Index]:
        return self._indexes

    def add_index(self, spec: IndexSpec) -> Index:
        """Keep `spec`'s index from now on (built from the current rows); idempotent."""
        index = self._indexes.get(spec)
        if index is None:
            index = spec.build()
            index.add_many(self._rows.items())
            self._indexes[spec] = index
        return index

    def load(self, items: Iterable[tuple[str, Any]]) -> None:
        """`set` every (key, value) of `items`, building the indexes in bulk for the keys
        not held yet (loading a map: one sort per sorted index, not an insertion per row)."""
        added: list[tuple[str, Any]] = []
        for key, value in items:
            if key in self._rows:
                self.set(key, value)
            else:
                self._rows[key] = value
                added.append((key, value))
        for index in self._indexes.values():
            index.add_many(added)

    def set(self, key: str, value: Any) -> None:
        """`key` now holds the live value `value`."""
        old = self._rows.get(key, ABSENT)
        self._rows[key] = value
        for index in self._indexes.values():
            if old is not ABSENT:
                index.remove(key, old)
            index.add(key, value)

    def delete(self, key: str) -> None:
        """`key` has no live value any more (removed, tombstoned or expired)."""
        old = self._rows.pop(key, ABSENT)
        if old is not ABSENT:
            for index in self._indexes.values():
                index.remove(key, old)

    def index(self, kind: IndexKind, field: str) -> Index | None:
        """The index of this kind on this single field, if kept."""
        return self._indexes.get(IndexSpec(kind, (field,)))

    def compound_indexes(self) -> list[CompoundIndex]:
        return [i for i in self._indexes.values() if isinstance(i, CompoundIndex)]

    def missed(self, kind: IndexKind, field: str) -> None:
        """The planner wanted a `kind` index on `field`: count it, and build it once the
        adaptive threshold is reached."""
        if self._adaptive_after is None:
            return
        spec = IndexSpec(kind, (field,))
        self._misses[spec] += 1
        if self._misses[spec] >= self._adaptive_after:
            del self._misses[spec]
            self.add_index(spec)
