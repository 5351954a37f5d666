"""Row order: field by field with the §7.1 comparator, then key ascending."""

from __future__ import annotations

import pytest

from topgun.query.sort import DEFAULT_SORT, KEY_FIELD, Descending, SortSpec
from topgun.query.values import ABSENT


def ordered_keys(spec: SortSpec, rows: dict[str, object]) -> list[str]:
    return sorted(rows, key=lambda k: spec.order_key(k, rows[k]))


def test_absent_sort_is_key_ascending() -> None:
    assert SortSpec.from_wire(None) == DEFAULT_SORT
    assert SortSpec.from_wire({}) == DEFAULT_SORT
    assert DEFAULT_SORT.first.field == KEY_FIELD
    assert ordered_keys(DEFAULT_SORT, {"b": 1, "a": 2, "c": 0}) == ["a", "b", "c"]


def test_descending_breaks_ties_by_key_ascending() -> None:
    spec = SortSpec.from_wire({"s": "desc"})
    rows = {"d": {"s": 1}, "c": {"s": 2}, "b": {"s": 1}, "a": {}}
    assert ordered_keys(spec, rows) == ["c", "b", "d", "a"]


def test_several_fields_in_wire_order() -> None:
    spec = SortSpec.from_wire({"cat": "asc", "score": "desc"})
    rows = {
        "k1": {"cat": "x", "score": 1},
        "k2": {"cat": "a", "score": 1},
        "k3": {"cat": "x", "score": 5},
        "k4": {"cat": "a", "score": 9},
    }
    assert ordered_keys(spec, rows) == ["k4", "k2", "k3", "k1"]


def test_mixed_kinds_follow_the_comparator() -> None:
    spec = SortSpec.from_wire({"v": "asc"})
    rows = {"s": {"v": "x"}, "n": {"v": 3}, "b": {"v": True}, "z": {"v": None}, "m": {"v": {}}}
    assert ordered_keys(spec, rows) == ["z", "b", "n", "s", "m"]
    spec = SortSpec.from_wire({"v": "desc"})
    assert ordered_keys(spec, rows) == ["m", "s", "n", "b", "z"]


def test_key_field_sorts_by_record_key() -> None:
    spec = SortSpec.from_wire({"_key": "desc"})
    assert ordered_keys(spec, {"a": 1, "c": 1, "b": 1}) == ["c", "b", "a"]
    assert spec.first.value("k", {"_key": "other"}) == "k"
    assert SortSpec.from_wire({"x": "asc"}).first.value("k", {}) is ABSENT


def test_descending_wrapper_reverses_every_comparison() -> None:
    low, high = Descending((1,)), Descending((2,))
    assert high < low
    assert low > high
    assert high <= low
    assert low >= high
    assert low == Descending((1,))
    assert hash(low) == hash(Descending((1,)))
    assert low != (1,)


def test_bad_direction_is_rejected() -> None:
    with pytest.raises(ValueError, match="asc"):
        SortSpec.from_wire({"x": "up"})
