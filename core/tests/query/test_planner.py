"""The planner: index plans return exactly what a full scan returns, for random data and random
predicates (hypothesis), and use the indexes they should."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from topgun.query import IndexedMap, IndexSpec, parse_query, plan, run_query

NOW = 1_700_000_000_000
FIELDS = ("a", "b", "t")

ALL_INDEXES = [
    IndexSpec("hash", ("a",)),
    IndexSpec("sorted", ("a",)),
    IndexSpec("hash", ("b",)),
    IndexSpec("sorted", ("b",)),
    IndexSpec("inverted", ("t",)),
    IndexSpec("compound", ("a", "b")),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, 1.5, -2.5, float("nan")]),
    st.sampled_from(["", "x", "y", "X", "xy", "1"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.just("k"), scalars))
texts = st.lists(
    st.sampled_from(
        ["Merkle", "trees", "tree", "sync", "the", "Syncing", "ΣΑΣ", "σας", "x_y", "%"]
    ),
    max_size=5,
).map(" ".join)
row_values = st.one_of(
    st.fixed_dictionaries({}, optional={"a": values, "b": values, "t": st.one_of(texts, values)}),
    scalars,
)
rows_strategy = st.dictionaries(st.text("kpqrs", min_size=1, max_size=3), row_values, max_size=30)


def leaves() -> st.SearchStrategy[dict[str, Any]]:
    compare = st.builds(
        lambda op, attribute, value: {"op": op, "attribute": attribute, "value": value},
        st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"]),
        st.sampled_from(["a", "b"]),
        values,
    )
    words = st.sampled_from(["merkle", "tree", "sync", "the", "σας", "zzz", "mer", "x"])
    text = st.one_of(
        st.builds(
            lambda op, v: {"op": op, "attribute": "t", "value": v},
            st.sampled_from(["contains", "like"]),
            st.sampled_from(["", "tre", "TREE", "%re%", "x_y", "%rk_e%", "sync%", "ΣΑΣ", "σ"]),
        ),
        st.builds(
            lambda op, v: {"op": op, "attribute": "t", "value": v},
            st.sampled_from(["containsAll", "containsAny"]),
            st.lists(st.sampled_from(["", "tr", "merkle", "SYN", "σας"]), max_size=3),
        ),
        st.builds(
            lambda q, operator: {
                "op": "match",
                "attribute": "t",
                "query": q,
                "matchOptions": {"operator": operator},
            },
            st.lists(words, max_size=3).map(" ".join),
            st.sampled_from(["and", "or"]),
        ),
        st.builds(
            lambda q, slop: {"op": "matchPhrase", "attribute": "t", "query": q, "slop": slop},
            st.lists(words, max_size=3).map(" ".join),
            st.integers(0, 2),
        ),
        st.builds(
            lambda p: {"op": "matchPrefix", "attribute": "t", "prefix": p},
            st.sampled_from(["", "tr", "MER", "s", "q"]),
        ),
        st.builds(
            lambda p: {"op": "regex", "attribute": "t", "value": p},
            st.sampled_from(["re", "^M", "s$"]),
        ),
    )
    return st.one_of(compare, text)


predicates = st.recursive(
    leaves(),
    lambda children: st.builds(
        lambda op, kids: {"op": op, "children": kids[:1] if op == "not" else kids},
        st.sampled_from(["and", "or", "not"]),
        st.lists(children, max_size=3),
    ),
    max_leaves=6,
)
sorts = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["a", "b", "_key"]), st.sampled_from(["asc", "desc"]), max_size=2
    ),
)


def indexed(rows: dict[str, Any], specs: list[IndexSpec]) -> IndexedMap:
    table = IndexedMap(specs)
    for key, value in rows.items():
        table.set(key, value)
    return table


@settings(max_examples=150, deadline=None)
@given(
    rows=rows_strategy,
    predicate=predicates,
    sort=sorts,
    limit=st.integers(0, 4),
    specs=st.lists(st.sampled_from(ALL_INDEXES), unique=True),
)
def test_index_plans_equal_full_scans(
    rows: dict[str, Any],
    predicate: dict[str, Any],
    sort: dict[str, str] | None,
    limit: int,
    specs: list[IndexSpec],
) -> None:
    query = parse_query({"predicate": predicate, "sort": sort, "limit": limit})
    scanned = run_query(query, list(rows.items()), now_ms=NOW)
    planned = run_query(query, indexed(rows, specs), now_ms=NOW)
    assert planned == scanned
    if scanned.next_cursor is not None:
        wire = msgspec.structs.replace(query.wire, cursor=scanned.next_cursor)
        page = parse_query(wire)
        assert run_query(page, indexed(rows, specs), now_ms=NOW) == run_query(
            page, list(rows.items()), now_ms=NOW
        )


@settings(max_examples=60, deadline=None)
@given(
    before=rows_strategy,
    changes=st.lists(st.tuples(st.text("kpqrs", min_size=1, max_size=3), st.none() | row_values)),
    predicate=predicates,
)
def test_indexes_follow_updates_and_deletes(
    before: dict[str, Any], changes: list[tuple[str, Any]], predicate: dict[str, Any]
) -> None:
    table = indexed(before, ALL_INDEXES)
    rows = dict(before)
    for key, value in changes:
        if value is None:
            table.delete(key)
            rows.pop(key, None)
        else:
            table.set(key, value)
            rows[key] = value
    query = parse_query({"predicate": predicate})
    assert run_query(query, table, now_ms=NOW) == run_query(query, rows.items(), now_ms=NOW)
    assert len(table) == len(rows)


def numbered(n: int) -> IndexedMap:
    table = IndexedMap(ALL_INDEXES)
    for i in range(n):
        table.set(f"k{i:03}", {"a": i % 7, "b": i, "t": f"tree number {i}"})
    return table


def test_and_of_indexed_fields_intersects_and_applies_every_condition() -> None:
    table = numbered(100)
    query = parse_query(
        {
            "predicate": {
                "op": "and",
                "children": [
                    {"op": "eq", "attribute": "a", "value": 3},
                    {"op": "gte", "attribute": "b", "value": 50},
                    {"op": "regex", "attribute": "t", "value": "[05]$"},
                ],
            }
        }
    )
    chosen = plan(query, table)
    # the hash bucket (14 rows) is smaller than the range (50): only it is gathered
    assert chosen.steps == ("hash(a)",)
    assert chosen.keys == {f"k{i:03}" for i in range(100) if i % 7 == 3}
    result = run_query(query, table, now_ms=NOW)
    assert [k for k, _ in result.rows] == ["k080"]


def test_two_bounds_on_a_sorted_field_read_only_the_rows_between() -> None:
    """`b >= 40 and b < 45`: one span of the sorted index (5 rows), not the larger of the
    two half-open ranges."""
    table = numbered(100)
    query = parse_query(
        {
            "predicate": {
                "op": "and",
                "children": [
                    {"op": "gte", "attribute": "b", "value": 40},
                    {"op": "lt", "attribute": "b", "value": 45},
                ],
            }
        }
    )
    chosen = plan(query, table)
    assert chosen.steps == ("sorted(b) range",)
    assert chosen.keys == {f"k{i:03}" for i in range(40, 45)}
    assert [k for k, _ in run_query(query, table, now_ms=NOW).rows] == [
        f"k{i:03}" for i in range(40, 45)
    ]
    empty = parse_query(
        {
            "predicate": {
                "op": "and",
                "children": [
                    {"op": "gt", "attribute": "b", "value": 50},
                    {"op": "lt", "attribute": "b", "value": 10},
                ],
            }
        }
    )
    assert plan(empty, table).keys == set()


def test_compound_index_answers_equalities_on_all_its_fields() -> None:
    table = IndexedMap([IndexSpec("compound", ("a", "b"))])
    for i in range(50):
        table.set(f"k{i}", {"a": i % 5, "b": i % 2})
    query = parse_query({"where": {"a": 1, "b": 1}})
    assert plan(query, table).steps == ("compound(a,b)",)
    assert {k for k, _ in run_query(query, table, now_ms=NOW).rows} == {
        f"k{i}" for i in range(50) if i % 5 == 1 and i % 2 == 1
    }


def test_not_and_neq_scan_every_row() -> None:
    table = numbered(10)
    table.set("odd", "not a map")
    for predicate in (
        {"op": "neq", "attribute": "a", "value": 3},
        {"op": "not", "children": [{"op": "eq", "attribute": "a", "value": 3}]},
    ):
        query = parse_query({"predicate": predicate})
        assert plan(query, table).describe() == "full scan"
        result = {k for k, _ in run_query(query, table, now_ms=NOW).rows}
        assert "odd" in result
        assert "k003" not in result
        assert len(result) == 10


def test_or_needs_every_branch_indexed() -> None:
    table = numbered(20)
    both = parse_query(
        {
            "predicate": {
                "op": "or",
                "children": [
                    {"op": "eq", "attribute": "a", "value": 1},
                    {"op": "contains", "attribute": "t", "value": "number 19"},
                ],
            }
        }
    )
    assert plan(both, table).keys == {"k001", "k008", "k015", "k019"}
    one = parse_query(
        {
            "predicate": {
                "op": "or",
                "children": [
                    {"op": "eq", "attribute": "a", "value": 1},
                    {"op": "regex", "attribute": "t", "value": "19"},
                ],
            }
        }
    )
    assert plan(one, table).keys is None


def test_sorted_index_serves_a_limited_sort_in_order() -> None:
    table = numbered(100)
    query = parse_query({"sort": {"b": "desc"}, "limit": 3})
    chosen = plan(query, table)
    assert chosen.describe() == "ordered scan of sorted(b)"
    assert len(chosen.rows(query, table, None)) == 4  # limit + 1, then it stops
    assert [k for k, _ in run_query(query, table, now_ms=NOW).rows] == ["k099", "k098", "k097"]


def test_descending_scan_keeps_ties_by_key_ascending() -> None:
    table = IndexedMap([IndexSpec("sorted", ("a",))])
    for key, a in [("c", 1), ("a", 2), ("b", 1), ("d", 2), ("e", None)]:
        table.set(key, {"a": a})
    query = parse_query({"sort": {"a": "desc"}, "limit": 10})
    assert [k for k, _ in run_query(query, table, now_ms=NOW).rows] == ["a", "d", "b", "c", "e"]


def test_adaptive_indexing_adds_an_index_after_repeated_filters() -> None:
    table = IndexedMap(adaptive_after=3)
    for i in range(10):
        table.set(f"k{i}", {"a": i, "t": "tree"})
    eq = parse_query({"where": {"a": 4}})
    ranged = parse_query({"where": {"a": {"$gt": 4}}})
    text = parse_query({"predicate": {"op": "contains", "attribute": "t", "value": "ree"}})
    for _ in range(2):
        for q in (eq, ranged, text):
            run_query(q, table, now_ms=NOW)
    assert not table.indexes
    for q in (eq, ranged, text):
        run_query(q, table, now_ms=NOW)
    assert set(table.indexes) == {
        IndexSpec("hash", ("a",)),
        IndexSpec("sorted", ("a",)),
        IndexSpec("inverted", ("t",)),
    }
    assert plan(eq, table).steps == ("hash(a)",)
    assert [k for k, _ in run_query(eq, table, now_ms=NOW).rows] == ["k4"]


def test_without_adaptive_indexing_no_index_appears() -> None:
    table = numbered(5)
    fresh = IndexedMap()
    for key, value in table.items():
        fresh.set(key, value)
    for _ in range(10):
        run_query(parse_query({"where": {"a": 1}}), fresh, now_ms=NOW)
    assert not fresh.indexes
