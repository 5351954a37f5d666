"""Cursor encoding and validation (§7.4): the reference format, and every way a cursor that the
server did not make for this query is turned down."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.query.cursors import (
    CURSOR_MAX_AGE_MS,
    CURSOR_MAX_LENGTH,
    CURSOR_MAX_SKEW_MS,
    check_cursor,
    encode_cursor,
    query_hash,
)
from topgun.query.sort import SortSpec

NOW = 1_795_657_160_156
SORT = SortSpec.from_wire({"score": "asc"})
P_HASH = query_hash({"cat": "odd"})
S_HASH = query_hash({"score": "asc"})


def make(
    sort: SortSpec = SORT, values: tuple[Any, ...] = (3,), key: str = "item3", **kw: Any
) -> str:
    args = {"predicate_hash": P_HASH, "sort_hash": S_HASH, "now_ms": NOW} | kw
    return encode_cursor(sort=sort, sort_values=values, key=key, **args)


def check(cursor: str | None, sort: SortSpec = SORT, **kw: Any) -> Any:
    args = {"predicate_hash": P_HASH, "sort_hash": S_HASH, "now_ms": NOW} | kw
    return check_cursor(cursor, sort=sort, **args)


def as_json(cursor: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    )
    return decoded


def encode_json(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_reference_format_for_one_sort_field() -> None:
    cursor = make()
    assert "=" not in cursor
    assert list(as_json(cursor).items()) == [
        ("nodeValues", {"local": 3}),
        ("nodeKeys", {"local": "item3"}),
        ("sortField", "score"),
        ("sortDirection", "asc"),
        ("predicateHash", 2892419938),
        ("sortHash", 498328832),
        ("timestamp", NOW),
    ]


def test_statuses() -> None:
    assert check(None).status == "none"
    valid = check(make())
    assert valid.status == "valid"
    assert valid.position == SORT.order_key_from_values((3,), "item3")
    assert check(make(), now_ms=NOW + CURSOR_MAX_AGE_MS).status == "valid"
    assert check(make(), now_ms=NOW + CURSOR_MAX_AGE_MS + 1).status == "expired"
    assert check(make(), now_ms=NOW + CURSOR_MAX_AGE_MS + 1).position is None


def test_hash_mismatch_is_invalid_even_when_also_old() -> None:
    assert check(make(), predicate_hash=P_HASH + 1).status == "invalid"
    assert check(make(), sort_hash=S_HASH + 1).status == "invalid"
    old = NOW + CURSOR_MAX_AGE_MS + 1
    assert check(make(), predicate_hash=1, now_ms=old).status == "invalid"


def test_a_cursor_from_the_future_is_invalid() -> None:
    assert check(make(now_ms=NOW + CURSOR_MAX_SKEW_MS + 1)).status == "invalid"
    assert check(make(now_ms=NOW + CURSOR_MAX_SKEW_MS)).status == "valid"


def test_another_sort_field_or_direction_is_invalid() -> None:
    assert check(make(), sort=SortSpec.from_wire({"score": "desc"})).status == "invalid"
    assert check(make(), sort=SortSpec.from_wire({"name": "asc"})).status == "invalid"


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "eyJ",  # truncated base64
        base64.b64encode(b"\xff\xfe").decode(),
        encode_json([1, 2]),
        encode_json({"nodeValues": {"local": 3}}),
        "A" * (CURSOR_MAX_LENGTH + 1),
    ],
)
def test_malformed_cursors_are_invalid(cursor: str) -> None:
    assert check(cursor).status == "invalid"


def tampered(change: dict[str, Any]) -> str:
    return encode_json(as_json(make()) | change)


@pytest.mark.parametrize(
    "change",
    [
        {"nodeValues": {"other": 3}},
        {"nodeValues": {"local": 3, "x": 1}},
        {"nodeKeys": {"local": 5}},
        {"sortDirection": "sideways"},
        {"predicateHash": "2892419938"},
        {"timestamp": 1.5},
        {"extra": True},
        {"sortValues": [3]},  # one sort field: the reference format has none
    ],
)
def test_structurally_wrong_cursors_are_invalid(change: dict[str, Any]) -> None:
    assert check(tampered(change)).status == "invalid"


def test_padding_is_tolerated() -> None:
    cursor = make()
    assert check(cursor + "=" * (-len(cursor) % 4)).status == "valid"


def test_several_sort_fields_carry_every_value() -> None:
    sort = SortSpec.from_wire({"cat": "asc", "score": "desc"})
    cursor = make(sort=sort, values=("odd", 3))
    data = as_json(cursor)
    assert data["nodeValues"] == {"local": "odd"}
    assert data["sortValues"] == ["odd", 3]
    result = check(cursor, sort=sort)
    assert result.status == "valid"
    assert result.position == sort.order_key_from_values(("odd", 3), "item3")
    assert check(encode_json(data | {"sortValues": ["odd"]}), sort=sort).status == "invalid"
    assert check(encode_json(data | {"sortValues": ["even", 3]}), sort=sort).status == "invalid"
    del data["sortValues"]
    assert check(encode_json(data), sort=sort).status == "invalid"


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_edit_of_a_cursor_is_judged_without_error(data: Any) -> None:
    cursor = make(values=("x\n\u00e9",), key="k\U0001f600")
    i = data.draw(st.integers(0, len(cursor) - 1))
    replacement = data.draw(st.sampled_from("AaZz09-_+/=\u00e9"))
    result = check(cursor[:i] + replacement + cursor[i + 1 :])
    assert result.status in ("valid", "invalid", "expired")  # an edited timestamp may be old
    assert (result.position is None) is (result.status != "valid")


@settings(max_examples=50, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53) + 1, 2**53 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    key=st.text(min_size=1),
)
def test_any_sort_value_round_trips(value: Any, key: str) -> None:
    result = check(make(values=(value,), key=key))
    assert result.status == "valid"
    assert result.position == SORT.order_key_from_values((value,), key)
