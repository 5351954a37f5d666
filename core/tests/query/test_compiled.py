"""parse_query / run_query: the QUERY_SUB entry point, against golden frames 0076-0078, and
pagination (P-40, P-41)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.protocol import codec
from topgun.protocol.queries import Query, QuerySub
from topgun.query import QueryError, parse_query, run_query
from topgun.query.compiled import DEFAULT_MAX_QUERY_LIMIT, MAX_QUERY_DEPTH

from .conftest import golden_decoded, golden_frame

NOW = 1_795_657_160_156


def sub_query(number: str) -> Query:
    message = codec.decode_client_frame(golden_frame(number))
    assert isinstance(message, QuerySub)
    return message.payload.query


def keys(rows: list[tuple[str, Any]]) -> list[str]:
    return [k for k, _ in rows]


def test_golden_predicate_sort_limit_query_and_its_cursor(item_rows: list[Any]) -> None:
    # §12 example 4: the reference answered frame 0076's query with item18, item16, item14.
    query = parse_query(sub_query("0076"))
    result = run_query(query, item_rows, now_ms=1_795_657_106_362)
    assert keys(result.rows) == ["item18", "item16", "item14"]
    assert result.has_more
    assert result.cursor_status == "none"
    assert result.next_cursor == (
        "eyJub2RlVmFsdWVzIjp7ImxvY2FsIjoxNH0sIm5vZGVLZXlzIjp7ImxvY2FsIjoiaXRlbTE0In0sInNvcnRGaWVsZCI6"
        "InNjb3JlIiwic29ydERpcmVjdGlvbiI6ImRlc2MiLCJwcmVkaWNhdGVIYXNoIjozNTMxMzgwMzY4LCJzb3J0SGFzaCI6"
        "MjIxNTI3NjcyMCwidGltZXN0YW1wIjoxNzk1NjU3MTA2MzYyfQ"
    )


def test_golden_where_sort_limit_query_reproduces_frame_0078(item_rows: list[Any]) -> None:
    query = parse_query(sub_query("0077"))
    result = run_query(query, item_rows, now_ms=NOW)
    expected = golden_decoded("0078")["payload"]
    assert [{"key": k, "value": v} for k, v in result.rows] == expected["results"]
    assert result.has_more is expected["hasMore"]
    assert result.cursor_status == expected["cursorStatus"]
    assert result.next_cursor == expected["nextCursor"]


def test_empty_golden_query_returns_every_row_by_key() -> None:
    query = parse_query(sub_query("0021"))
    rows = [("b", 1), ("a", None), ("c", {"x": 1})]
    result = run_query(query, rows, now_ms=NOW)
    assert keys(result.rows) == ["a", "b", "c"]
    assert not result.has_more
    assert result.next_cursor is None


def test_the_cursor_resumes_after_the_last_row(item_rows: list[Any]) -> None:
    first = run_query(parse_query(sub_query("0077")), item_rows, now_ms=NOW)
    wire = msgspec.structs.replace(sub_query("0077"), cursor=first.next_cursor)
    second = run_query(parse_query(wire), item_rows, now_ms=NOW + 1000)
    assert second.cursor_status == "valid"
    assert keys(second.rows) == ["item5", "item7"]
    assert second.start_after is not None


def test_a_cursor_for_another_predicate_is_invalid_and_gives_the_first_page(
    item_rows: list[Any],
) -> None:
    first = run_query(parse_query(sub_query("0077")), item_rows, now_ms=NOW)
    other = parse_query(
        {
            "where": {"cat": "even"},
            "sort": {"score": "asc"},
            "limit": 2,
            "cursor": first.next_cursor,
        }
    )
    result = run_query(other, item_rows, now_ms=NOW)
    assert result.cursor_status == "invalid"
    assert keys(result.rows) == ["item0", "item2"]


def test_an_old_cursor_is_expired_and_gives_the_first_page(item_rows: list[Any]) -> None:
    first = run_query(parse_query(sub_query("0077")), item_rows, now_ms=NOW)
    wire = msgspec.structs.replace(sub_query("0077"), cursor=first.next_cursor)
    result = run_query(parse_query(wire), item_rows, now_ms=NOW + 10 * 60 * 1000 + 1)
    assert result.cursor_status == "expired"
    assert keys(result.rows) == ["item1", "item3"]


def test_limit_zero_or_absent_means_no_limit_and_large_limits_are_clamped() -> None:
    rows = [(f"k{i:05}", i) for i in range(DEFAULT_MAX_QUERY_LIMIT + 5)]
    assert parse_query({"limit": 0}).limit is None
    assert parse_query({}).limit is None
    everything = run_query(parse_query({"limit": 0}), rows, now_ms=NOW)
    assert len(everything.rows) == len(rows)
    assert not everything.has_more
    clamped = run_query(parse_query({"limit": 10**9}), rows, now_ms=NOW)
    assert len(clamped.rows) == DEFAULT_MAX_QUERY_LIMIT
    assert clamped.has_more
    assert parse_query({"limit": 50}, max_limit=10).limit == 10


def test_has_more_is_false_when_the_page_holds_the_last_row() -> None:
    rows = [("a", 1), ("b", 2)]
    result = run_query(parse_query({"limit": 2}), rows, now_ms=NOW)
    assert not result.has_more
    assert result.next_cursor is None


def test_predicate_wins_over_where() -> None:
    query = parse_query(
        {"where": {"a": 1}, "predicate": {"op": "eq", "attribute": "a", "value": 2}}
    )
    assert keys(run_query(query, [("x", {"a": 1}), ("y", {"a": 2})], now_ms=NOW).rows) == ["y"]


def test_the_filter_hash_distinguishes_absent_and_empty_where() -> None:
    assert parse_query({}).predicate_hash != parse_query({"where": {}}).predicate_hash
    assert parse_query({"sort": {"a": "asc"}}).sort_hash != parse_query({}).sort_hash


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"predicate": {"op": "between", "attribute": "a"}}, "invalid query"),
        ({"sort": {"a": "up"}}, "invalid query"),
        ({"limit": -1}, "invalid query"),
        ({"where": {"a": {"$in": [1]}}}, "unknown where operator"),
        ({"predicate": {"op": "eq", "attribute": "a"}}, "needs a value"),
        ([], "must be a map"),
    ],
)
def test_invalid_queries_raise_query_error(wire: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(wire)


def test_deeply_nested_plain_queries_are_refused() -> None:
    node: dict[str, Any] = {"op": "eq", "attribute": "a", "value": 1}
    for _ in range(MAX_QUERY_DEPTH):
        node = {"op": "not", "children": [node]}
    with pytest.raises(QueryError, match="deeper"):
        parse_query({"predicate": node})


def test_values_that_are_not_wire_values_are_refused() -> None:
    with pytest.raises(QueryError, match="invalid query value"):
        parse_query(Query(where={"a": {1, 2}}))


rows_strategy = st.dictionaries(
    st.text(alphabet="abcdef", min_size=1, max_size=4),
    st.fixed_dictionaries(
        {},
        optional={
            "n": st.one_of(st.integers(-3, 3), st.floats(-3, 3, allow_nan=False), st.none()),
            "s": st.sampled_from(["x", "y", "Y", ""]),
            "b": st.booleans(),
        },
    ),
    max_size=25,
)
sorts = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["n", "s", "b", "_key"]), st.sampled_from(["asc", "desc"]), max_size=3
    ),
)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, sort=sorts, limit=st.integers(1, 6))
def test_following_cursors_visits_every_matching_row_once(
    rows: dict[str, Any], sort: dict[str, str] | None, limit: int
) -> None:
    wire: dict[str, Any] = {
        "predicate": {"op": "neq", "attribute": "b", "value": True},
        "limit": limit,
    }
    if sort is not None:
        wire["sort"] = sort
    full = run_query(parse_query({**wire, "limit": 0}), rows.items(), now_ms=NOW)
    seen: list[str] = []
    cursor = None
    for _ in range(len(rows) + 2):
        result = run_query(parse_query({**wire, "cursor": cursor}), rows.items(), now_ms=NOW)
        assert result.cursor_status == ("none" if cursor is None else "valid")
        seen += keys(result.rows)
        if not result.has_more:
            break
        cursor = result.next_cursor
    assert seen == keys(full.rows)
