"""Index structures and IndexedMap: specs, lookups, updates."""

from __future__ import annotations

import math
from typing import Any

import pytest

from topgun.query.indexes import (
    CompoundIndex,
    HashIndex,
    IndexedMap,
    IndexSpec,
    InvertedIndex,
    SortedIndex,
)
from topgun.query.values import ABSENT


def filled(index: Any, rows: dict[str, Any]) -> Any:
    for key, value in rows.items():
        index.add(key, value)
    return index


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("hash:status", IndexSpec("hash", ("status",))),
        ("sorted: score", IndexSpec("sorted", ("score",))),
        ("compound:cat,score", IndexSpec("compound", ("cat", "score"))),
        ({"kind": "inverted", "field": "body"}, IndexSpec("inverted", ("body",))),
        ({"kind": "compound", "fields": ["a", "b"]}, IndexSpec("compound", ("a", "b"))),
    ],
)
def test_spec_parsing(text: Any, spec: IndexSpec) -> None:
    assert IndexSpec.parse(text) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("status", "kind:field"),
        ("btree:x", "unknown index kind"),
        ("hash:", "non-empty"),
        ("hash:a,b", "exactly one field"),
        ("compound:a", "two or more"),
        ("compound:a,a", "two or more distinct"),
        ({"kind": "hash"}, "one or more"),
        (42, "string or a table"),
    ],
)
def test_bad_specs_name_the_problem(text: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IndexSpec.parse(text)


def test_hash_index_follows_equality() -> None:
    index = filled(
        HashIndex("a"),
        {
            "int": {"a": 1},
            "float": {"a": 1.0},
            "str": {"a": "1"},
            "bool": {"a": True},
            "nil": {"a": None},
            "map": {"a": {}},
            "none": {},
            "scalar": 5,
        },
    )
    assert index.equal(1) == {"int", "float"}
    assert index.equal("1") == {"str"}
    assert index.equal(True) == {"bool"}
    assert index.equal(None) == {"nil"}
    assert index.equal({}) == set()
    assert index.equal(math.nan) == set()
    index.remove("int", {"a": 1})
    assert index.equal(1.0) == {"float"}


def test_compound_index_needs_every_field_equatable() -> None:
    index = filled(
        CompoundIndex(("a", "b")),
        {
            "x": {"a": 1, "b": "y"},
            "y": {"a": 1},
            "z": {"a": 1, "b": [1]},
            "w": {"a": 1.0, "b": "y"},
        },
    )
    assert index.equal((1, "y")) == {"x", "w"}
    assert index.equal((1, ABSENT)) == set()
    index.remove("x", {"a": 1, "b": "y"})
    assert index.equal((1, "y")) == {"w"}


def test_sorted_index_ranges_stay_within_a_kind() -> None:
    rows = {
        "n1": {"a": 1},
        "n2": {"a": 2.5},
        "n3": {"a": 3},
        "nan": {"a": math.nan},
        "s1": {"a": "a"},
        "s2": {"a": "b"},
        "t": {"a": True},
        "nil": {"a": None},
        "none": {},
        "map": {"a": {"k": 1}},
    }
    index = filled(SortedIndex("a"), rows)
    assert index.compare("gt", 1) == {"n2", "n3"}
    assert index.compare("gte", 2.5) == {"n2", "n3"}
    assert index.compare("lt", 3) == {"n1", "n2"}
    assert index.compare("lte", 1.0) == {"n1"}
    assert index.compare("gt", "a") == {"s2"}
    assert index.compare("lt", "b") == {"s1"}
    assert index.compare("gt", True) == set()
    assert index.compare("lt", None) == set()
    assert index.compare("gt", math.nan) == set()
    assert index.equal(None) == {"nil", "none"}  # a superset: the planner re-checks
    assert index.equal(3.0) == {"n3"}


def test_sorted_index_scans_in_both_directions() -> None:
    index = filled(SortedIndex("a"), {"b": {"a": 1}, "a": {"a": 1}, "c": {"a": 0}, "d": {}})
    assert list(index.scan(descending=False)) == ["d", "c", "a", "b"]
    assert list(index.scan(descending=True)) == ["a", "b", "c", "d"]
    index.remove("a", {"a": 1})
    index.remove("a", {"a": 1})  # already gone: nothing happens
    assert list(index.scan(descending=True)) == ["b", "c", "d"]


def test_inverted_index_substrings_terms_and_prefixes() -> None:
    index = filled(
        InvertedIndex("t"),
        {"a": {"t": "Merkle trees"}, "b": {"t": "TREE house"}, "c": {"t": "of"}, "d": {"t": 7}},
    )
    assert index.containing("tree") == {"a", "b"}
    assert index.containing("ee ") == {"b"}
    assert index.containing("xy") == {"a", "b", "c"}  # too short for a trigram: every string
    assert index.with_terms(["tree"], every=True) == {"a", "b"}
    assert index.with_terms(["tree", "merkl"], every=True) == {"a"}
    assert index.with_terms(["hous", "merkl"], every=False) == {"a", "b"}
    assert index.with_terms([], every=True) == set()
    assert index.with_prefix("tr") == {"a", "b"}
    assert index.with_prefix("") == {"a", "b"}  # "of" is a stop word: no terms
    index.remove("a", {"t": "Merkle trees"})
    assert index.with_prefix("me") == set()
    assert index.containing("tree") == {"b"}


def test_indexed_map_keeps_indexes_current() -> None:
    table = IndexedMap([IndexSpec("hash", ("a",))])
    table.set("k", {"a": 1})
    late = table.add_index(IndexSpec("sorted", ("a",)))
    assert table.add_index(IndexSpec("sorted", ("a",))) is late
    assert isinstance(late, SortedIndex)
    assert late.compare("gte", 1) == {"k"}
    table.set("k", {"a": 2})
    hashed = table.index("hash", "a")
    assert isinstance(hashed, HashIndex)
    assert hashed.equal(1) == set()
    assert hashed.equal(2) == {"k"}
    assert table.get("k") == {"a": 2}
    assert "k" in table
    table.delete("k")
    table.delete("k")
    assert table.get("k") is ABSENT
    assert len(table) == 0
    assert late.compare("gte", 1) == set()


def test_bulk_load_builds_the_same_indexes_as_row_by_row_sets() -> None:
    """`IndexedMap.load` (one sort per sorted index) ends where `set` per row ends, also when
    some keys are already held."""
    specs = [IndexSpec("hash", ("a",)), IndexSpec("sorted", ("a",)), IndexSpec("inverted", ("t",))]
    rows = [(f"k{i:02}", {"a": (i * 7) % 10, "t": f"word {i}"}) for i in range(40)]
    one_by_one, bulk = IndexedMap(specs), IndexedMap(specs)
    for key, value in rows:
        one_by_one.set(key, value)
    bulk.set("k05", {"a": 99, "t": "stale"})
    bulk.load(rows)
    assert dict(bulk.items()) == dict(one_by_one.items())
    for kind, field in [("hash", "a"), ("sorted", "a"), ("inverted", "t")]:
        assert vars(bulk.index(kind, field)) == vars(one_by_one.index(kind, field))


def test_adaptive_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        IndexedMap(adaptive_after=0)
