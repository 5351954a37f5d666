"""Every operator of PROTOCOL.md §7.2 and the legacy `where` of §7.3 (P-39), and their errors."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from topgun.protocol.queries import PredicateNode
from topgun.query.errors import QueryError
from topgun.query.predicates import (
    MAX_PATTERN_LENGTH,
    And,
    Compare,
    Not,
    compile_predicate,
    compile_where,
)


def pred(node: dict[str, Any]) -> Any:
    return compile_predicate(msgspec.convert(node, PredicateNode))


def leaf(op: str, value: Any, attribute: str = "a") -> Any:
    return pred({"op": op, "attribute": attribute, "value": value})


@pytest.mark.parametrize(
    ("op", "operand", "row", "expected"),
    [
        ("eq", 1, {"a": 1.0}, True),
        ("eq", 1, {"a": "1"}, False),
        ("eq", "1", {"a": 1}, False),
        ("eq", True, {"a": 1}, False),
        ("eq", None, {"a": None}, True),
        ("eq", None, {}, False),
        ("eq", {"x": 1}, {"a": {"x": 1}}, False),
        ("eq", [1], {"a": [1]}, False),
        ("neq", 1, {"a": 2}, True),
        ("neq", 1, {"a": 1}, False),
        ("neq", 1, {}, True),
        ("neq", None, {}, True),
        ("neq", [1], {"a": [1]}, True),
        ("gt", 1, {"a": 2}, True),
        ("gt", 2, {"a": 2}, False),
        ("gte", 2, {"a": 2.0}, True),
        ("lt", "b", {"a": "a"}, True),
        ("lte", "a", {"a": "a"}, True),
        ("gt", 1, {"a": "2"}, False),
        ("lt", 1, {"a": None}, False),
        ("lt", 1, {}, False),
        ("gt", False, {"a": True}, False),
        ("lte", None, {"a": None}, False),
    ],
)
def test_comparisons(op: str, operand: Any, row: Any, expected: bool) -> None:
    assert leaf(op, operand).matches(row) is expected


def test_a_non_map_row_has_every_attribute_absent() -> None:
    assert leaf("neq", 1).matches("scalar")
    assert not leaf("eq", 1).matches([1])


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("a%", "abc", True),
        ("A%C", "abc", True),  # case-insensitive
        ("%b%", "abc", True),
        ("a_c", "abc", True),
        ("a_c", "ac", False),
        ("a_c", "abbc", False),
        ("%", "", True),
        ("a%", "a\nline", True),  # % spans newlines
        ("a.c", "abc", False),  # every other character is literal
        ("a*", "aaa", False),
        ("a?", "ab", False),
        ("[ab]", "a", False),
        ("[ab]", "[AB]", True),
        ("abc", "xabcx", False),  # the whole string
    ],
)
def test_like(pattern: str, text: str, expected: bool) -> None:
    assert leaf("like", pattern).matches({"a": text}) is expected


def test_like_needs_a_string_attribute() -> None:
    assert not leaf("like", "%").matches({"a": 1})
    assert not leaf("like", "%").matches({})


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("b", "abc", True),  # unanchored
        ("^b", "abc", False),
        ("B", "abc", False),  # case-sensitive
        (r"\d+", "a1", True),
        ("(?i)B", "abc", True),
    ],
)
def test_regex(pattern: str, text: str, expected: bool) -> None:
    assert leaf("regex", pattern).matches({"a": text}) is expected
    assert not leaf("regex", pattern).matches({"a": 1})


def test_contains_family_is_case_insensitive_on_strings() -> None:
    assert leaf("contains", "WOR").matches({"a": "Hello world"})
    assert not leaf("contains", "x").matches({"a": "Hello world"})
    assert not leaf("contains", "1").matches({"a": 1})
    assert not leaf("contains", "a").matches({"a": ["a"]})
    assert leaf("containsAll", ["HE", "wo"]).matches({"a": "Hello world"})
    assert not leaf("containsAll", ["he", "xx"]).matches({"a": "Hello world"})
    assert leaf("containsAll", []).matches({"a": "anything"})
    assert leaf("containsAny", ["xx", "LD"]).matches({"a": "Hello world"})
    assert not leaf("containsAny", []).matches({"a": "anything"})


def test_match_uses_the_search_analyzer() -> None:
    row = {"t": "Merkle trees for syncing replicas"}
    assert pred({"op": "match", "attribute": "t", "query": "merkle sync"}).matches(row)
    assert pred({"op": "match", "attribute": "t", "query": "tree banana"}).matches(row)
    both = {"op": "match", "attribute": "t", "query": "tree banana"}
    assert not pred({**both, "matchOptions": {"operator": "and"}}).matches(row)
    assert pred({**both, "query": "trees replica", "matchOptions": {"operator": "and"}}).matches(
        row
    )
    assert not pred({"op": "match", "attribute": "t", "query": "the for"}).matches(row)
    assert not pred({"op": "match", "attribute": "t", "query": "merkle"}).matches({"t": 1})


def test_match_phrase_respects_order_and_slop() -> None:
    row = {"t": "quick brown fox jumps over lazy dogs"}
    phrase = {"op": "matchPhrase", "attribute": "t"}
    assert pred({**phrase, "query": "brown fox"}).matches(row)
    assert not pred({**phrase, "query": "fox brown"}).matches(row)
    assert not pred({**phrase, "query": "quick fox"}).matches(row)
    assert pred({**phrase, "query": "quick fox", "slop": 1}).matches(row)
    # "over" is a stop word: positions count analyzed tokens
    assert pred({**phrase, "query": "jumps lazy"}).matches(row)
    assert not pred({**phrase, "query": ""}).matches(row)


def test_match_phrase_considers_every_occurrence() -> None:
    row = {"t": "alpha beta gamma beta zeta delta"}
    node = {"op": "matchPhrase", "attribute": "t", "query": "alpha beta delta", "slop": 1}
    assert not pred(node).matches(row)
    row = {"t": "alpha gamma beta beta zeta delta"}
    assert pred({**node, "query": "alpha beta zeta"}).matches(row)


def test_match_prefix_on_analyzed_tokens() -> None:
    node = {"op": "matchPrefix", "attribute": "t"}
    assert pred({**node, "prefix": "MERK"}).matches({"t": "Merkle trees"})
    assert not pred({**node, "prefix": "rees"}).matches({"t": "Merkle trees"})
    assert not pred({**node, "prefix": "th"}).matches({"t": "the"})  # stop word, no token


def test_logic_nodes() -> None:
    yes = {"op": "eq", "attribute": "a", "value": 1}
    no = {"op": "eq", "attribute": "a", "value": 2}
    row = {"a": 1}
    assert pred({"op": "and", "children": []}).matches(row)
    assert not pred({"op": "or", "children": []}).matches(row)
    assert pred({"op": "not", "children": []}).matches(row)
    assert pred({"op": "and", "children": [yes, {"op": "not", "children": [no]}]}).matches(row)
    assert not pred({"op": "and", "children": [yes, no]}).matches(row)
    assert pred({"op": "or", "children": [no, yes]}).matches(row)
    assert not pred({"op": "not", "children": [yes]}).matches(row)
    nested = {
        "op": "or",
        "children": [{"op": "and", "children": [yes, {"op": "not", "children": [yes]}]}],
    }
    assert not pred(nested).matches(row)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"op": "and"}, "needs children"),
        ({"op": "not"}, "needs children"),
        ({"op": "eq", "value": 1}, "needs an attribute"),
        ({"op": "eq", "attribute": "a"}, "needs a value"),
        ({"op": "gt", "attribute": "a"}, "needs a value"),
        ({"op": "like", "attribute": "a", "value": 1}, "string value"),
        ({"op": "regex", "attribute": "a", "value": "("}, "invalid regex"),
        ({"op": "regex", "attribute": "a", "value": "a" * (MAX_PATTERN_LENGTH + 1)}, "longer"),
        ({"op": "contains", "attribute": "a"}, "needs a value"),
        ({"op": "containsAll", "attribute": "a", "value": "x"}, "list of strings"),
        ({"op": "containsAny", "attribute": "a", "value": [1]}, "list of strings"),
        ({"op": "match", "attribute": "a"}, "needs a query"),
        ({"op": "matchPhrase", "attribute": "a", "query": "x", "slop": -1}, "slop"),
        ({"op": "matchPrefix", "attribute": "a"}, "needs a prefix"),
        ({"op": "and", "children": [{"op": "eq"}]}, r"predicate\.children\[0\]"),
    ],
)
def test_invalid_nodes_are_rejected_with_a_message(node: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        pred(node)


def test_an_unknown_operator_cannot_be_built() -> None:
    with pytest.raises(QueryError, match="unknown predicate operator"):
        compile_predicate(PredicateNode(op="between", attribute="a", value=1))  # type: ignore[arg-type]


def test_where_literals_and_operators() -> None:
    where = compile_where({"cat": "odd", "score": {"$gte": 2, "$lt": 5}, "x": {"$ne": None}})
    assert isinstance(where, And)
    assert where.matches({"cat": "odd", "score": 2, "x": 1})
    assert where.matches({"cat": "odd", "score": 4.5})  # absent ≠ nil
    assert not where.matches({"cat": "odd", "score": 5, "x": 1})
    assert not where.matches({"cat": "odd", "score": 3, "x": None})
    assert not where.matches({"cat": "even", "score": 3})


def test_where_with_one_entry_is_that_condition() -> None:
    assert compile_where({"a": 1}) == Compare("eq", "a", 1)


def test_where_map_and_array_literals_never_match() -> None:
    assert not compile_where({"a": {"x": 1}}).matches({"a": {"x": 1}})
    assert not compile_where({"a": [1]}).matches({"a": [1]})
    assert not compile_where({"a": {}}).matches({"a": {}})


def test_where_falsy_literals_match() -> None:
    assert compile_where({"a": 0}).matches({"a": 0})
    assert compile_where({"a": False}).matches({"a": False})
    assert compile_where({"a": ""}).matches({"a": ""})
    assert compile_where({"a": None}).matches({"a": None})


@pytest.mark.parametrize("condition", [{"$in": [1]}, {"$gt": 1, "plain": 2}, {"$regex": "x"}])
def test_where_unknown_operator_is_rejected(condition: dict[str, Any]) -> None:
    with pytest.raises(QueryError, match="unknown where operator"):
        compile_where({"a": condition})


def test_not_without_child_is_true() -> None:
    assert Not(None).matches({})
