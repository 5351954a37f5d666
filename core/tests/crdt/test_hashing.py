"""FNV-1a, partitions and the hash input strings, against PROTOCOL.md §3's vectors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.crdt.hashing import (
    FNV_OFFSET,
    PARTITION_COUNT,
    fnv1a32,
    js_number,
    js_value_string,
    lww_item_hash,
    merkle_path,
    or_entry_hash,
    or_record_string,
    partition_of,
    sorted_utf16,
    stable_json,
)
from topgun.crdt.records import ORMapRecord, Timestamp

# Any string a JS peer can send, lone surrogates included (PROTOCOL.md J5).
js_strings = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None))


def reference_fnv1a32(s: str) -> int:
    """PROTOCOL.md §3.1's reference implementation, verbatim."""
    h, b = 0x811C9DC5, s.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(b), 2):
        h = ((h ^ (b[i] | b[i + 1] << 8)) * 0x01000193) & 0xFFFFFFFF
    return h


def fnv1a32_over(units: bytes | list[int]) -> int:
    h = FNV_OFFSET
    for u in units:
        h = ((h ^ u) * 0x01000193) & 0xFFFFFFFF
    return h


# (input, fnv1a32, hex, % 271, path prefix) — the §3.1 table.
VECTORS = [
    ("", 2166136261, "811c9dc5", 199, "811"),
    ("hello", 1335831723, "4f9f2cab", 95, "4f9"),
    ("key1", 927623783, "374a6a67", 268, "374"),
    ("user:1", 1830439627, "6d1a4acb", 208, "6d1"),
    ("café", 856211068, "3308be7c", 118, "330"),
    ("\U0001d11e", 3672115655, "dae009c7", 73, "dae"),
    ("a\U0001f600b", 2412414209, "8fca8501", 122, "8fc"),
]


@pytest.mark.parametrize(("text", "expected", "hex_", "partition", "path"), VECTORS)
def test_fnv1a32_matches_protocol_vectors(
    text: str, expected: int, hex_: str, partition: int, path: str
) -> None:
    h = fnv1a32(text)
    assert h == expected
    assert f"{h:08x}" == hex_
    assert partition_of(text) == partition
    assert merkle_path(h) == path


def test_partitions_of_protocol_examples() -> None:
    assert PARTITION_COUNT == 271
    assert partition_of("hello") == 95
    assert partition_of("key1") == 268


def test_negative_vectors_are_what_wrong_implementations_give() -> None:
    # Over UTF-8 bytes or code points the results differ, and ours is not among them.
    assert fnv1a32_over("café".encode()) == 2821410889
    assert fnv1a32_over([ord(c) for c in "\U0001d11e"]) == 471858369
    assert fnv1a32_over("\U0001d11e".encode()) == 997838904
    assert fnv1a32("café") != 2821410889
    assert fnv1a32("\U0001d11e") not in {471858369, 997838904}


def test_lone_surrogates_hash_as_their_code_unit() -> None:
    assert fnv1a32("\ud800") == fnv1a32_over([0xD800])
    assert fnv1a32("a\udfffb") == fnv1a32_over([0x61, 0xDFFF, 0x62])
    # A surrogate pair held as two Python code points is the same UTF-16 as the character.
    assert fnv1a32("\ud83d\ude00") == fnv1a32("\U0001f600")


@settings(max_examples=200)
@given(js_strings)
def test_fnv1a32_equals_the_reference_implementation(text: str) -> None:
    assert fnv1a32(text) == reference_fnv1a32(text)


@settings(max_examples=100)
@given(js_strings, js_strings)
def test_fnv1a32_continues_from_a_prefix_state(a: str, b: str) -> None:
    assert fnv1a32(b, fnv1a32(a)) == fnv1a32(a + b)


def test_merkle_path_is_zero_padded() -> None:
    key = next(f"k{i}" for i in range(1000) if fnv1a32(f"k{i}") < 0x10000000)
    path = merkle_path(fnv1a32(key))
    assert path.startswith("0")
    assert path == f"{fnv1a32(key):08x}"[:3]


def test_lww_item_hash_matches_the_worked_example() -> None:
    assert lww_item_hash("user:1", Timestamp(1700000000000, 0, "node-a")) == 1592194921
    assert lww_item_hash("user:2", Timestamp(1700000000000, 1, "node-a")) == 1166037987
    assert lww_item_hash("user:3", Timestamp(1700000000500, 0, "node-b")) == 3499988643
    assert lww_item_hash("user:2", Timestamp(1700000001000, 0, "node-a")) == 2373927129


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0, "0"),
        (-0.0, "0"),
        (5.0, "5"),
        (-5, "-5"),
        (123.456, "123.456"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e21, "1e+21"),
        (10**21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e16, "10000000000000000"),
        (2**53 - 1, "9007199254740991"),
        (2**60, "1152921504606847000"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (1.5e-5, "0.000015"),
        (1.23e-18, "1.23e-18"),
        (-1.5e300, "-1.5e+300"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (60000.0, "60000"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (10**400, "Infinity"),
    ],
)
def test_js_number_formats_like_javascript(number: float, text: str) -> None:
    assert js_number(number) == text


def test_js_number_rejects_bool() -> None:
    with pytest.raises(TypeError, match="bool"):
        js_number(True)


@settings(max_examples=200)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_js_number_round_trips_and_uses_js_layout(x: float) -> None:
    text = js_number(x)
    assert float(text) == x
    assert "e" not in text or "e+" in text or "e-" in text
    assert not text.endswith(".0")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"b": 1, "a": {"z": 1, "b": 2}}, '{"a":{"b":2},"b":1}'),
        ([3, {"a": 1}], "[3,{}]"),
        ({}, "{}"),
        ([], "[]"),
        ({"a": [1, {"a": 2, "x": 3}], "x": None}, '{"a":[1,{"a":2,"x":3}],"x":null}'),
        ({"n": [math.nan, math.inf, 1.0, -0.0, True, False]}, '{"n":[null,null,1,0,true,false]}'),
        # An array's "keys" are its indices as strings, sorted: "0","1","10","2",...
        ([{"0": "a", "1": "b", "2": "c"}, 1], '[{"0":"a","1":"b"},1]'),
        (b"\x01\x02", '{"0":1,"1":2}'),
    ],
)
def test_stable_json_reproduces_the_ts_stringify(value: object, text: str) -> None:
    assert stable_json(value) == text  # type: ignore[arg-type]


def test_stable_json_escapes_strings_as_js_does() -> None:
    # A low-then-high surrogate is two lone surrogates (escaped); high-then-low is a pair.
    value = {"s": 'q"b\\\b\f\n\r\t\x01\x1f\x7f\u2028é\udfff\ud800-\ud83d\ude00\U0001f600'}
    expected = (
        '{"s":"q\\"b\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\u2028é\\udfff\\ud800-'
        '\ud83d\ude00\U0001f600"}'
    )
    assert stable_json(value) == expected


def test_stable_json_sorts_keys_by_utf16_units() -> None:
    # U+FFFF sorts after U+1F600 by code point but before it by UTF-16 units (d83d < ffff).
    assert stable_json({"\uffff": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\uffff":1}'


def test_stable_json_rejects_values_that_are_not_msgpack() -> None:
    with pytest.raises(TypeError, match="set"):
        stable_json({"a": {1, 2}})
    with pytest.raises(TypeError, match="keys must be strings"):
        stable_json({"a": {1: "x"}})
    with pytest.raises(TypeError, match="map or an array"):
        stable_json("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (5.0, "5"),
        (1e21, "1e+21"),
        ("work", "work"),
        ('a"b', 'a"b'),
        ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
        ([1, "x"], '[1,"x"]'),
    ],
)
def test_js_value_string_follows_v(value: object, text: str) -> None:
    assert js_value_string(value) == text


def test_sorted_utf16_orders_by_code_units() -> None:
    assert sorted_utf16(["b", "a"]) == ["a", "b"]
    assert sorted_utf16(["\uffff", "\U0001f600", "a"]) == ["a", "\U0001f600", "\uffff"]


def test_or_entry_hash_matches_the_worked_example() -> None:
    work = ORMapRecord("work", Timestamp(1700000000000, 0, "node-a"), "1700000000000:0:node-a")
    nested = ORMapRecord(
        {"b": 1, "a": {"z": 1, "b": 2}},
        Timestamp(1700000000001, 0, "node-b"),
        "1700000000001:0:node-b",
        60000,
    )
    strings = {r.tag: or_record_string(r) for r in (nested, work)}
    joined = "|".join(strings[t] for t in sorted(strings))
    assert f"key:tags:1|{joined}" == (
        "key:tags:1|1700000000000:0:node-a:work:1700000000000:0:node-a|"
        '1700000000001:0:node-b:{"a":{"b":2},"b":1}:1700000000001:0:node-b:ttl=60000'
    )
    assert or_entry_hash("tags:1", strings) == 1574462118
    assert merkle_path(fnv1a32("tags:1")) == "ade"


def test_or_entry_hash_of_a_dead_key_is_zero() -> None:
    assert or_entry_hash("tags:1", {}) == 0
