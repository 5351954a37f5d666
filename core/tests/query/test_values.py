"""The §7.1 value model: attribute lookup, equality, ordering, sort keys, canonical JSON."""

from __future__ import annotations

import math

import pytest

from topgun.query.values import (
    ABSENT,
    NOT_EQUATABLE,
    attribute,
    canonical_json,
    equality_key,
    js_json,
    ordered,
    sort_key,
    values_equal,
)


def test_attribute_is_a_top_level_key_of_a_map_only() -> None:
    assert attribute({"a": 1}, "a") == 1
    assert attribute({"a": None}, "a") is None
    assert attribute({"a": 1}, "b") is ABSENT
    assert attribute({"a": {"b": 1}}, "a.b") is ABSENT  # no dot paths
    assert attribute([1, 2], "0") is ABSENT
    assert attribute("text", "a") is ABSENT
    assert attribute(None, "a") is ABSENT


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (1, "1", False),
        (True, 1, False),
        (False, 0, False),
        (True, True, True),
        (None, None, True),
        (None, ABSENT, False),
        (ABSENT, ABSENT, True),
        ("a", "a", True),
        ("a", "A", False),
        ({"a": 1}, {"a": 1}, False),
        ([1], [1], False),
        (b"x", b"x", False),
        (math.nan, math.nan, False),
    ],
)
def test_equality(a: object, b: object, equal: bool) -> None:
    assert values_equal(a, b) is equal
    assert values_equal(b, a) is equal


@pytest.mark.parametrize("value", [1, 1.0, -0.0, "x", True, False, None, 2**70])
def test_equality_key_agrees_with_equality(value: object) -> None:
    for other in [1, 1.0, 0, "x", True, False, None, 2**70, float(2**70)]:
        if values_equal(value, other):
            assert equality_key(value) == equality_key(other)
        elif equality_key(value) == equality_key(other):
            # only a different number type of the same value may share a bucket
            assert not isinstance(value, bool | str)
            assert value is not None


def test_values_that_equal_nothing_get_the_unequal_key() -> None:
    for value in ({}, [], b"", math.nan):
        assert equality_key(value) is NOT_EQUATABLE


def test_ordering_only_between_two_numbers_or_two_strings() -> None:
    assert ordered(1, 2.5) == -1
    assert ordered("b", "a") == 1
    assert ordered("a", "a") == 0
    assert ordered(1, "1") is None
    assert ordered(True, 0) is None
    assert ordered(None, 1) is None
    assert ordered(ABSENT, 1) is None
    assert ordered(math.nan, 1) is None
    assert ordered([1], [2]) is None


def test_strings_order_by_code_point() -> None:
    assert ordered("Z", "a") == -1
    assert ordered("\uffff", "\U0001f600") == -1  # UTF-16 order would say the opposite


def test_sort_key_orders_kinds() -> None:
    values = ["a", 2, {"a": 1}, True, None, False, -1.5, ABSENT, [0], "B", math.nan]
    ranked = sorted(values, key=sort_key)
    kinds = [sort_key(v)[0] for v in ranked]
    assert kinds == sorted(kinds)
    assert ranked[2:4] == [False, True]
    assert ranked[4] != ranked[4]  # NaN leads the numbers
    assert ranked[5:7] == [-1.5, 2]
    assert ranked[7:9] == ["B", "a"]
    assert sort_key(None) == sort_key(ABSENT)


def test_canonical_json_sorts_keys_recursively_and_prints_numbers_like_js() -> None:
    value = {"b": [1.0, {"z": 1, "a": None}], "a": "é\n", "c": 1e21, "d": 0.5}
    assert canonical_json(value) == '{"a":"é\\n","b":[1,{"a":null,"z":1}],"c":1e+21,"d":0.5}'


def test_js_json_keeps_key_order_and_writes_non_finite_as_null() -> None:
    assert js_json({"b": 1, "a": math.inf}) == '{"b":1,"a":null}'
    assert js_json("\ud800") == '"\\ud800"'
    assert js_json(b"\x01\x02") == '{"0":1,"1":2}'


def test_js_json_refuses_what_is_not_a_wire_value() -> None:
    with pytest.raises(TypeError, match="set"):
        js_json({1, 2})
    with pytest.raises(TypeError, match="map keys must be strings"):
        js_json({1: 2})
