"""Predicates of the query language (PROTOCOL.md §7.2, §7.3), compiled from their wire form.

`compile_predicate` turns a wire `PredicateNode` tree into a tree of `Predicate` objects,
checking every operator's required fields once (an invalid query is a `QueryError`, which the
server answers with `ERROR 400`), so that `matches(value)` only evaluates. `compile_where`
does the same for the legacy `where` map. Patterns (`like`, `regex`) are compiled once; no
part of a query is ever executed as code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal

from msgspec import UNSET

from topgun.protocol.queries import PredicateNode
from topgun.query.errors import QueryError
from topgun.query.values import attribute, ordered, values_equal
from topgun.search.tokenizer import analyze

__all__ = [
    "ALWAYS",
    "MAX_PATTERN_LENGTH",
    "And",
    "Compare",
    "CompareOp",
    "Contains",
    "Like",
    "Match",
    "MatchPhrase",
    "MatchPrefix",
    "Not",
    "Or",
    "Predicate",
    "Regex",
    "compile_predicate",
    "compile_where",
    "text_terms",
]

MAX_PATTERN_LENGTH: Final = 1000
"""Longest `like`/`regex` pattern accepted: bounds what one query can cost per row."""

CompareOp = Literal["eq", "neq", "gt", "gte", "lt", "lte"]


class Predicate:
    """A compiled predicate: `matches(value)` says whether a row's value satisfies it."""

    __slots__ = ()

    def matches(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class And(Predicate):
    """All children true; no children → true."""

    children: tuple[Predicate, ...]

    def matches(self, value: Any) -> bool:
        return all(child.matches(value) for child in self.children)


@dataclass(frozen=True, slots=True)
class Or(Predicate):
    """Some child true; no children → false."""

    children: tuple[Predicate, ...]

    def matches(self, value: Any) -> bool:
        return any(child.matches(value) for child in self.children)


@dataclass(frozen=True, slots=True)
class Not(Predicate):
    """The child false; no child → true."""

    child: Predicate | None

    def matches(self, value: Any) -> bool:
        return self.child is None or not self.child.matches(value)


def _gt(c: int | None) -> bool:
    return c is not None and c > 0


def _gte(c: int | None) -> bool:
    return c is not None and c >= 0


def _lt(c: int | None) -> bool:
    return c is not None and c < 0


def _lte(c: int | None) -> bool:
    return c is not None and c <= 0


_ORDER_TESTS: Final[dict[str, Callable[[int | None], bool]]] = {
    "gt": _gt,
    "gte": _gte,
    "lt": _lt,
    "lte": _lte,
}


@dataclass(frozen=True, slots=True)
class Compare(Predicate):
    """`eq`/`neq` by §7.1 equality; `gt gte lt lte` by §7.1 ordering."""

    op: CompareOp
    attribute: str
    value: Any

    def matches(self, value: Any) -> bool:
        actual = attribute(value, self.attribute)
        if self.op == "eq":
            return values_equal(actual, self.value)
        if self.op == "neq":
            return not values_equal(actual, self.value)
        return _ORDER_TESTS[self.op](ordered(actual, self.value))


@dataclass(frozen=True, slots=True)
class Like(Predicate):
    """SQL `LIKE` over the whole string: `%` any run (newlines included), `_` one character.
    Case-insensitive as `contains` is: pattern and string are both lowercased."""

    attribute: str
    pattern: str
    compiled: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, value: Any) -> bool:
        actual = attribute(value, self.attribute)
        return isinstance(actual, str) and self.compiled.fullmatch(actual.lower()) is not None


@dataclass(frozen=True, slots=True)
class Regex(Predicate):
    """Python `re` pattern searched anywhere in the string, case-sensitive."""

    attribute: str
    pattern: str
    compiled: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, value: Any) -> bool:
        actual = attribute(value, self.attribute)
        return isinstance(actual, str) and self.compiled.search(actual) is not None


@dataclass(frozen=True, slots=True)
class Contains(Predicate):
    """A string attribute containing one / all / any of `needles`, case-insensitive.

    `needles` are already lowercased; `contains` is `mode="all"` with one needle.
    """

    attribute: str
    needles: tuple[str, ...]
    mode: Literal["all", "any"]

    def matches(self, value: Any) -> bool:
        actual = attribute(value, self.attribute)
        if not isinstance(actual, str):
            return False
        text = actual.lower()
        if self.mode == "all":
            return all(n in text for n in self.needles)
        return any(n in text for n in self.needles)


@lru_cache(maxsize=4096)
def _terms(text: str) -> tuple[str, ...]:
    return tuple(analyze(text))


def text_terms(value: Any, name: str) -> tuple[str, ...]:
    """The analyzed terms of attribute `name` (none when it is not a string)."""
    actual = attribute(value, name)
    return _terms(actual) if isinstance(actual, str) else ()


@dataclass(frozen=True, slots=True)
class Match(Predicate):
    """Some (`operator: "or"`) or all (`"and"`) analyzed query terms occur in the attribute's
    analyzed text. A query with no terms (empty, or only stop words) matches nothing."""

    attribute: str
    terms: tuple[str, ...]
    require_all: bool
    query: str = field(default="", compare=False)
    """The query text as sent (what search providers other than BM25 rank)."""

    def matches(self, value: Any) -> bool:
        if not self.terms:
            return False
        present = set(text_terms(value, self.attribute))
        if self.require_all:
            return all(t in present for t in self.terms)
        return any(t in present for t in self.terms)


@dataclass(frozen=True, slots=True)
class MatchPhrase(Predicate):
    """The analyzed query terms occur in order, with at most `slop` other tokens between
    neighbours (positions count analyzed tokens, stop words excluded)."""

    attribute: str
    terms: tuple[str, ...]
    slop: int
    query: str = field(default="", compare=False)
    """The query text as sent (what search providers other than BM25 rank)."""

    def matches(self, value: Any) -> bool:
        if not self.terms:
            return False
        tokens = text_terms(value, self.attribute)
        positions: dict[str, list[int]] = {}
        for i, token in enumerate(tokens):
            positions.setdefault(token, []).append(i)
        reach = positions.get(self.terms[0], [])
        for term in self.terms[1:]:
            if not reach:
                return False
            candidates = positions.get(term, [])
            reach = [q for q in candidates if any(p < q <= p + 1 + self.slop for p in reach)]
        return bool(reach)


@dataclass(frozen=True, slots=True)
class MatchPrefix(Predicate):
    """Some analyzed token of the attribute starts with `prefix` (lowercased)."""

    attribute: str
    prefix: str

    def matches(self, value: Any) -> bool:
        return any(t.startswith(self.prefix) for t in text_terms(value, self.attribute))


def _like_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern.lower():
        if ch == "%":
            parts.append(".*")
        elif ch == "_":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _where(path: str) -> str:
    return f" (at {path})" if path else ""


def _require_attribute(node: PredicateNode, path: str) -> str:
    if node.attribute is None:
        raise QueryError(f"predicate {node.op!r} needs an attribute{_where(path)}")
    return node.attribute


def _require_value(node: PredicateNode, path: str) -> Any:
    if node.value is UNSET:
        raise QueryError(f"predicate {node.op!r} needs a value{_where(path)}")
    return node.value


def _require_string(node: PredicateNode, path: str) -> str:
    value = _require_value(node, path)
    if not isinstance(value, str):
        raise QueryError(f"predicate {node.op!r} needs a string value{_where(path)}")
    if node.op in ("like", "regex") and len(value) > MAX_PATTERN_LENGTH:
        raise QueryError(
            f"{node.op} pattern longer than {MAX_PATTERN_LENGTH} characters{_where(path)}"
        )
    return value


def _require_query(node: PredicateNode, path: str) -> str:
    if node.query is None:
        raise QueryError(f"predicate {node.op!r} needs a query{_where(path)}")
    return node.query


def _unique(terms: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(terms))


def compile_predicate(node: PredicateNode, path: str = "predicate") -> Predicate:
    """Compile a wire predicate tree, checking each operator's fields (§7.2).

    Raises `QueryError` naming the offending node's path (`predicate.children[1]`).
    """
    op = node.op
    if op in ("and", "or", "not"):
        if node.children is None:
            raise QueryError(f"predicate {op!r} needs children{_where(path)}")
        children = tuple(
            compile_predicate(child, f"{path}.children[{i}]")
            for i, child in enumerate(node.children)
        )
        if op == "and":
            return And(children)
        if op == "or":
            return Or(children)
        return Not(children[0] if children else None)
    name = _require_attribute(node, path)
    if op in ("eq", "neq", "gt", "gte", "lt", "lte"):
        return Compare(op, name, _require_value(node, path))
    if op == "like":
        pattern = _require_string(node, path)
        return Like(name, pattern, _like_regex(pattern))
    if op == "regex":
        pattern = _require_string(node, path)
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise QueryError(f"invalid regex {pattern!r}: {error}{_where(path)}") from None
        return Regex(name, pattern, compiled)
    if op == "contains":
        return Contains(name, (_require_string(node, path).lower(),), "all")
    if op in ("containsAll", "containsAny"):
        needles = _require_value(node, path)
        if not isinstance(needles, list) or not all(isinstance(n, str) for n in needles):
            raise QueryError(f"predicate {op!r} needs a list of strings{_where(path)}")
        return Contains(
            name, tuple(n.lower() for n in needles), "all" if op == "containsAll" else "any"
        )
    if op == "match":
        options = node.match_options
        operator = options.operator if options is not None else None
        text = _require_query(node, path)
        return Match(name, _unique(analyze(text)), require_all=operator == "and", query=text)
    if op == "matchPhrase":
        slop = node.slop if node.slop is not None else 0
        if slop < 0:
            raise QueryError(f"matchPhrase slop must be >= 0{_where(path)}")
        text = _require_query(node, path)
        return MatchPhrase(name, tuple(analyze(text)), slop, query=text)
    if op == "matchPrefix":
        if node.prefix is None:
            raise QueryError(f"predicate 'matchPrefix' needs a prefix{_where(path)}")
        return MatchPrefix(name, node.prefix.lower())
    raise QueryError(f"unknown predicate operator {op!r}{_where(path)}")


_WHERE_OPERATORS: Final[dict[str, CompareOp]] = {
    "$gt": "gt",
    "$gte": "gte",
    "$lt": "lt",
    "$lte": "lte",
    "$ne": "neq",
}


def compile_where(where: Mapping[str, Any]) -> Predicate:
    """Compile a legacy `where` map (§7.3): every entry AND-ed.

    A value is an operator map when it is a non-empty map whose keys all start with `$`
    (each a known operator, AND-ed); any other value, maps and arrays included, is a literal
    compared by equality (so a map or array literal never matches). In an operator map every
    key must be a known operator: `{"$gt": 1, "x": 2}` and `{"$in": [1]}` are rejected.
    """
    conditions: list[Predicate] = []
    for name, condition in where.items():
        if isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition):
            for op, operand in condition.items():
                if op not in _WHERE_OPERATORS:
                    raise QueryError(f"unknown where operator {op!r} (at where.{name})")
                conditions.append(Compare(_WHERE_OPERATORS[op], name, operand))
        else:
            conditions.append(Compare("eq", name, condition))
    if len(conditions) == 1:
        return conditions[0]
    return And(tuple(conditions))


ALWAYS: Final[Predicate] = And(())
"""The predicate of an empty query: every live row matches."""
